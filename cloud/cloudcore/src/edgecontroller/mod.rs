//! EdgeController: the cloud's side of what edges hold and report.
//!
//! Down: one shared watch per kind (pods, ConfigMaps, Secrets) through `kube::runtime`, an
//! [`desired::Index`] of which node should hold which object, and a mark on the session of
//! every node a change concerns ([`watch`]). Up: node registration and status, lease renewals,
//! pod statuses and deletion confirmations, checked against the edge's identity and written to
//! the API ([`upstream`]), the Node's labels within what NodeRestriction lets a kubelet set
//! ([`node_restriction`]). It works the same against the embedded API server and a real one.

pub mod desired;
pub mod node_restriction;
pub mod references;
pub mod upstream;
pub mod watch;

pub use desired::Desired;
pub use upstream::{Upstream, UpstreamError};
