//! Wedge's core: the types and pure logic that the cloud, the edge and the runtimes share.
//!
//! Nothing in this crate does I/O but [`state`] (the one lock every store takes on its
//! state), so everything else is unit-tested without processes, sockets or files. Start with
//! [`runtime`], the container-level boundary between Edged and the runtimes (Wasm components on
//! wasmtime, containers through containerd's CRI), then [`status`] for what
//! Edged reports of a pod.

pub mod backend;
pub mod crilog;
pub mod cron;
pub mod device;
pub mod encryption;
#[cfg(test)]
mod fuzz;
pub mod grants;
pub mod join_token;
pub mod logrotation;
pub mod protocol;
pub mod quantity;
pub mod restart;
pub mod rule;
pub mod runtime;
pub mod runtimes;
pub mod spdy;
pub mod state;
pub mod status;
pub mod storage;
pub mod tls;
pub mod topic;
pub mod twin;

pub use k8s_openapi;
