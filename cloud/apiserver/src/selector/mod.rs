//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` take them.

pub mod field;
pub mod label;

pub use field::{FieldSelector, FieldSelectorError};
pub use label::{LabelSelector, LabelSelectorError};
