//! `kubectl port-forward` at the edge: which runtime carries a connection to a pod's port, and
//! how its failures are worded.
//!
//! A port belongs to the pod's network, and the pod's network to its sandbox: the sandbox's
//! runtime forwards (`RuntimeService::port_forward`), whichever runtime runs the container that
//! listens. In a mixed pod containerd owns the sandbox and its network namespace, so CRI's
//! `PortForward` reaches the Wasm containers' listeners too; a Wasm-only pod has no network of its
//! own, and the Wasm runtime says so. Errors are worded as the kubelet words them, because
//! kubectl shows them as they are.

use std::sync::Arc;

use wedge_core::runtime::{PortStreams, RuntimeError, RuntimeService};

use super::pod_workers::PodWorkers;

/// Why a port cannot be forwarded, worded as the kubelet words it.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// No pod of this name runs on this edge.
    #[error("pod {pod:?} does not exist")]
    PodNotFound {
        /// The pod asked for.
        pod: String,
    },
    /// The pod is held here but has no sandbox (yet, or any more): the kubelet's words for a
    /// pod its runtime does not hold.
    #[error("pod not found (\"{pod}_{namespace}\")")]
    NoSandbox {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
    },
    /// The pod's runtime cannot forward ports at all (a Wasm-only pod has no network): its
    /// own words, which say what to do.
    #[error("{0}")]
    Unsupported(String),
    /// The connection could not be made or broke (nothing listens on the port, say).
    #[error("error forwarding port {port} to pod {pod}, uid {uid}: {source}")]
    Forward {
        /// The port.
        port: u16,
        /// The pod's name.
        pod: String,
        /// The pod's uid.
        uid: String,
        /// The runtime's account.
        source: RuntimeError,
    },
}

impl PortForwardError {
    /// The HTTP code the API server answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::PodNotFound { .. } => 404,
            Self::Unsupported(_) => 400,
            Self::NoSandbox { .. } | Self::Forward { .. } => 500,
        }
    }
}

/// A pod's sandbox and the runtime that forwards its ports.
pub struct PortForwardTarget {
    runtime: Arc<dyn RuntimeService>,
    sandbox: String,
    pod: String,
    uid: String,
}

impl PortForwardTarget {
    /// Carries one connection to `port` until both sides closed it (see
    /// `RuntimeService::port_forward`); dropping the future ends it.
    pub async fn forward(&self, port: u16, streams: PortStreams) -> Result<(), PortForwardError> {
        match self
            .runtime
            .port_forward(&self.sandbox, port, streams)
            .await
        {
            Ok(()) => Ok(()),
            Err(RuntimeError::Unsupported(message)) => Err(PortForwardError::Unsupported(message)),
            Err(source) => Err(PortForwardError::Forward {
                port,
                pod: self.pod.clone(),
                uid: self.uid.clone(),
                source,
            }),
        }
    }
}

impl PodWorkers {
    /// The sandbox of the pod `namespace/pod`, and its runtime.
    pub fn port_forward_target(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<PortForwardTarget, PortForwardError> {
        let state = self
            .find_pod(namespace, pod)
            .ok_or_else(|| PortForwardError::PodNotFound {
                pod: pod.to_owned(),
            })?;
        let sandbox = state
            .sandbox_id()
            .ok_or_else(|| PortForwardError::NoSandbox {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
            })?;
        Ok(PortForwardTarget {
            runtime: state.handle.runtime.clone(),
            sandbox,
            pod: state.plan.name.clone(),
            uid: state.plan.uid.clone(),
        })
    }
}
