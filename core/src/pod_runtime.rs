//! The boundary between Edged and the runtimes that run pods.
//!
//! Edged decides *which* pods run on its node; a [`PodRuntime`] runs them. The Wasm runtime
//! (`wedge-edged-wasm`) implements it today and the containerd CRI shim will implement it too, so
//! Edged picks a runtime per pod and drives both the same way. The trait is deliberately narrow,
//! like runwasi's `Instance` (start, kill, wait, delete): start a pod, stop it, say how it is,
//! read its logs. Progress and failures after `start_pod` (pulling, crashing, restarting) are
//! reported through [`PodRuntime::pod_status`], as kubelets report them, not as errors.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;

use crate::status::PodStatusReport;

/// What `kubectl logs` may ask of a container's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous instance's log, after a restart (`--previous`).
    pub previous: bool,
    /// Only the last N lines (`--tail`).
    pub tail_lines: Option<usize>,
    /// Prefix each line with its timestamp (`--timestamps`).
    pub timestamps: bool,
}

/// Why a runtime refused a request. Failures while a pod runs are statuses, not errors.
#[derive(Debug, thiserror::Error)]
pub enum PodRuntimeError {
    /// The pod spec is not one this runtime can run; nothing was started.
    #[error("pod {pod} is invalid: {message}")]
    InvalidPod {
        /// `namespace/name` of the pod.
        pod: String,
        /// What is wrong.
        message: String,
    },
    /// No pod with this uid runs here.
    #[error("no pod with uid {0} runs on this runtime")]
    UnknownPod(String),
    /// The pod has no container of this name.
    #[error("pod {pod} has no container named {container:?}")]
    UnknownContainer {
        /// The pod's uid.
        pod: String,
        /// The container asked for.
        container: String,
    },
    /// The log asked for does not exist (yet, or any more).
    #[error("no log for container {container:?} of pod {pod}: {message}")]
    NoLog {
        /// The pod's uid.
        pod: String,
        /// The container.
        container: String,
        /// Why.
        message: String,
    },
    /// The runtime failed for a reason of its own.
    #[error("{0}")]
    Runtime(String),
}

/// Called with a pod's uid whenever the status of one of its containers changes, so that Edged
/// reports a change at once instead of finding it at its next poll.
pub type StatusListener = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// A runtime that runs pods: Wasm components, or containers through CRI.
#[async_trait]
pub trait PodRuntime: Send + Sync {
    /// A short name for logs and node status, such as `wasm` or `cri`.
    fn name(&self) -> &'static str;

    /// Accepts a pod and starts its containers in the background. Returns once the spec has been
    /// checked; image pulls and crashes show in [`Self::pod_status`]. Starting a pod that already
    /// runs is a no-op.
    async fn start_pod(&self, pod: &Pod) -> Result<(), PodRuntimeError>;

    /// Stops every container of the pod, giving them at most `grace` to finish, then forgets it.
    /// Stopping an unknown pod is not an error: the pod is gone either way.
    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<(), PodRuntimeError>;

    /// The pod's status, if it runs here.
    fn pod_status(&self, uid: &str) -> Option<PodStatusReport>;

    /// Calls `listener` on every container status change of every pod started from now on,
    /// replacing any listener set before.
    fn watch_status(&self, listener: StatusListener);

    /// The uids of the pods this runtime holds.
    fn pods(&self) -> Vec<String>;

    /// A container's log, as `kubectl logs` shows it.
    async fn container_logs(
        &self,
        uid: &str,
        container: &str,
        options: &LogOptions,
    ) -> Result<Vec<u8>, PodRuntimeError>;
}
