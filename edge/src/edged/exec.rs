//! `kubectl exec` and `kubectl attach` at the edge: which runtime and which container instance
//! a request means. The session itself is the runtime's (`RuntimeService::exec`/`attach`):
//! containerd's streaming server for containers, a fresh component instance for Wasm.

use std::sync::Arc;

use wedge_core::runtime::{ExecStreams, RuntimeError, RuntimeService};
use wedge_core::status::ContainerState;

use super::pod_workers::PodWorkers;

/// Why an exec or attach cannot start, worded as the kubelet words it.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No pod of this name runs on this edge.
    #[error("pod {pod:?} does not exist")]
    PodNotFound {
        /// The pod asked for.
        pod: String,
    },
    /// The pod has no container of this name.
    #[error("container {container:?} not found in pod {pod:?}")]
    ContainerNotFound {
        /// The pod.
        pod: String,
        /// The container asked for.
        container: String,
    },
    /// The container is not running.
    #[error("container {container:?} in pod {pod:?} is not running")]
    NotRunning {
        /// The pod.
        pod: String,
        /// The container.
        container: String,
    },
    /// The runtime could not run it.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl ExecError {
    /// The HTTP code the API server answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::PodNotFound { .. } => 404,
            Self::ContainerNotFound { .. } | Self::NotRunning { .. } => 400,
            Self::Runtime(RuntimeError::Unsupported(_)) => 400,
            Self::Runtime(_) => 500,
        }
    }
}

/// A running container instance, found for an exec or attach.
pub struct ExecTarget {
    runtime: Arc<dyn RuntimeService>,
    id: String,
}

impl ExecTarget {
    /// Runs `command` in it; its exit code.
    pub async fn exec(&self, command: &[String], streams: ExecStreams) -> Result<i32, ExecError> {
        Ok(self.runtime.exec(&self.id, command, streams).await?)
    }

    /// Attaches to its stdio until it exits or the session is dropped.
    pub async fn attach(&self, streams: ExecStreams) -> Result<(), ExecError> {
        Ok(self.runtime.attach(&self.id, streams).await?)
    }
}

impl PodWorkers {
    /// The running instance of `container` in the pod `namespace/pod`.
    pub fn exec_target(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<ExecTarget, ExecError> {
        let state = self
            .find_pod(namespace, pod)
            .ok_or_else(|| ExecError::PodNotFound {
                pod: pod.to_owned(),
            })?;
        let slot = state
            .init
            .iter()
            .chain(&state.containers)
            .find(|s| s.plan.name == container)
            .ok_or_else(|| ExecError::ContainerNotFound {
                pod: pod.to_owned(),
                container: container.to_owned(),
            })?;
        let not_running = || ExecError::NotRunning {
            pod: pod.to_owned(),
            container: container.to_owned(),
        };
        if !matches!(slot.status().state, ContainerState::Running { .. }) {
            return Err(not_running());
        }
        let id = slot.id().ok_or_else(not_running)?;
        Ok(ExecTarget {
            runtime: slot.handle.runtime.clone(),
            id,
        })
    }
}
