//! Wedge's core: the types and pure logic that the cloud, the edge and the runtimes share.
//!
//! Nothing in this crate does I/O, so everything here is unit-tested without processes, sockets or
//! files. Start with [`pod_runtime`], the boundary between Edged and the runtimes (Wasm today,
//! containers through CRI later), then [`status`] for what a runtime reports.

pub mod crilog;
pub mod device;
pub mod grants;
pub mod join_token;
pub mod pod_runtime;
pub mod protocol;
pub mod quantity;
pub mod restart;
pub mod rule;
pub mod runtime;
pub mod runtimes;
pub mod status;
pub mod topic;
pub mod twin;

pub use k8s_openapi;
