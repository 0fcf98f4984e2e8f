//! What a runtime reports about a pod's containers, shaped as kubelets report it.
//!
//! The states and reasons are the ones `kubectl get pods` and `kubectl describe` show for
//! containers on Kubernetes (`ErrImagePull`, `CrashLoopBackOff`, `OOMKilled`, `Completed`...), so
//! an operator reading a Wasm pod's status needs no new vocabulary. [`ContainerStatus::to_k8s`]
//! turns them into the API's types in one place.

use jiff::Timestamp;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// Reasons that kubelets use and that Wedge's runtimes report, as constants so that they are
/// spelled the same everywhere.
pub mod reason {
    /// The image could not be pulled (missing, unauthorised, unreachable, digest mismatch).
    pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
    /// The image was pulled but is not something this runtime can run.
    pub const INVALID_IMAGE: &str = "InvalidImageName";
    /// The container could not be created (bad Wasm, missing imports, bad volumes).
    pub const CREATE_CONTAINER_ERROR: &str = "CreateContainerError";
    /// The container spec is invalid (for example an unparsable resource limit).
    pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
    /// Waiting for the image to be pulled and compiled.
    pub const CONTAINER_CREATING: &str = "ContainerCreating";
    /// Waiting out the backoff after a failed pull.
    pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
    /// The container's postStart hook failed; it was killed.
    pub const POST_START_HOOK_ERROR: &str = "PostStartHookError";
    /// Waiting for the pod's init containers to complete.
    pub const POD_INITIALIZING: &str = "PodInitializing";
    /// Waiting out the restart backoff after repeated failures.
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    /// Exited with code 0.
    pub const COMPLETED: &str = "Completed";
    /// Exited with a non-zero code or trapped.
    pub const ERROR: &str = "Error";
    /// Stopped for growing past its memory limit.
    pub const OOM_KILLED: &str = "OOMKilled";
    /// Stopped because the pod was deleted or stopped.
    pub const KILLED: &str = "Killed";
}

/// The state of one container, as in `ContainerState` of the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    /// Not running yet, or waiting to be restarted.
    Waiting {
        /// A kubelet reason such as `ContainerCreating` or `CrashLoopBackOff`.
        reason: String,
        /// A human-readable explanation.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the current instance started.
        started_at: Timestamp,
    },
    /// Ran and stopped.
    Terminated {
        /// The exit code: the guest's `exit` code, 137 when killed, 1 on a trap.
        exit_code: i32,
        /// A kubelet reason such as `Completed`, `Error` or `OOMKilled`.
        reason: String,
        /// What happened, for example the trap's message.
        message: Option<String>,
        /// When the instance started.
        started_at: Timestamp,
        /// When it stopped.
        finished_at: Timestamp,
    },
}

impl ContainerState {
    /// A waiting state with a reason and message.
    pub fn waiting(reason: &str, message: impl Into<Option<String>>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// Whether this is the running state.
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running { .. })
    }

    /// The exit code if terminated.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }

    /// The reason, for waiting and terminated states.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Waiting { reason, .. } | Self::Terminated { reason, .. } => Some(reason),
            Self::Running { .. } => None,
        }
    }

    fn to_k8s(&self) -> k8s::ContainerState {
        match self {
            Self::Waiting { reason, message } => k8s::ContainerState {
                waiting: Some(k8s::ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            Self::Running { started_at } => k8s::ContainerState {
                running: Some(k8s::ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            Self::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => k8s::ContainerState {
                terminated: Some(k8s::ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: Some(Time(*started_at)),
                    finished_at: Some(Time(*finished_at)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }
}

/// The status of one container of a pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name in the pod spec.
    pub name: String,
    /// The image as written in the pod spec.
    pub image: String,
    /// The resolved image, `repo@sha256:...`, once pulled.
    pub image_id: Option<String>,
    /// The current instance, `<runtime>://<id>` (`containerd://…`, `wasmtime://…`), as the
    /// kubelet writes `containerID`.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The current state.
    pub state: ContainerState,
    /// The state of the previous instance, after a restart.
    pub last_state: Option<ContainerState>,
    /// How many times the container has been restarted.
    pub restart_count: u32,
    /// Running, and its readiness probe (if any) passes.
    #[serde(default)]
    pub ready: bool,
    /// Running, and its startup probe (if any) has passed.
    #[serde(default)]
    pub started: bool,
}

impl ContainerStatus {
    /// Whether the container counts as ready.
    pub fn ready(&self) -> bool {
        self.ready && self.state.is_running()
    }

    /// The Kubernetes API form of this status.
    pub fn to_k8s(&self) -> k8s::ContainerStatus {
        k8s::ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone().unwrap_or_default(),
            container_id: self.container_id.clone(),
            state: Some(self.state.to_k8s()),
            last_state: self.last_state.as_ref().map(ContainerState::to_k8s),
            restart_count: i32::try_from(self.restart_count).unwrap_or(i32::MAX),
            ready: self.ready(),
            started: Some(self.started && self.state.is_running()),
            ..Default::default()
        }
    }
}

/// A pod's phase, as in `PodStatus.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, but not every container has started.
    Pending,
    /// Every container started and at least one is running or restarting.
    Running,
    /// Every container terminated with success and will not be restarted.
    Succeeded,
    /// Every container terminated and at least one failed, with no restart to come.
    Failed,
}

impl PodPhase {
    /// The phase as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    /// The phase of a pod with init containers, as kubelet's `getPhase` decides it: Pending
    /// until every init container has completed, Failed when one failed for good (`Never`),
    /// then as [`PodPhase::derive`] says of the containers.
    pub fn derive_with_init(
        init: &[ContainerStatus],
        containers: &[ContainerStatus],
        init_restarts: bool,
    ) -> Self {
        let mut pending = false;
        for c in init {
            match &c.state {
                ContainerState::Terminated { exit_code: 0, .. } => {}
                ContainerState::Terminated { .. } if !init_restarts => return Self::Failed,
                _ => pending = true,
            }
        }
        if pending {
            return Self::Pending;
        }
        Self::derive(containers, |_| false)
    }

    /// Derives the phase from container statuses the way kubelet's `getPhase` does, given
    /// whether terminated containers are going to be restarted.
    pub fn derive(
        containers: &[ContainerStatus],
        will_restart: impl Fn(&ContainerStatus) -> bool,
    ) -> Self {
        if containers.is_empty() {
            return Self::Pending;
        }
        let (mut running, mut waiting, mut failed, mut restarting) = (0, 0, 0, 0);
        for c in containers {
            match &c.state {
                ContainerState::Running { .. } => running += 1,
                ContainerState::Waiting { .. } if c.last_state.is_some() => restarting += 1,
                ContainerState::Waiting { .. } => waiting += 1,
                ContainerState::Terminated { exit_code, .. } => {
                    if will_restart(c) {
                        restarting += 1;
                    } else if *exit_code != 0 {
                        failed += 1;
                    }
                }
            }
        }
        if waiting > 0 {
            Self::Pending
        } else if running > 0 || restarting > 0 {
            Self::Running
        } else if failed > 0 {
            Self::Failed
        } else {
            Self::Succeeded
        }
    }
}

/// Everything Edged knows about one pod it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusReport {
    /// The pod's phase.
    pub phase: PodPhase,
    /// One status per init container, in spec order.
    pub init_containers: Vec<ContainerStatus>,
    /// One status per container, in spec order.
    pub containers: Vec<ContainerStatus>,
    /// The pod's own IP, when its sandbox has a network of its own.
    pub pod_ip: Option<String>,
}

impl PodStatusReport {
    /// The status of the container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ContainerState, restarted: bool) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            image: "i".into(),
            image_id: None,
            container_id: None,
            last_state: restarted.then(|| state.clone()),
            state,
            restart_count: u32::from(restarted),
            ready: false,
            started: false,
        }
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: reason::ERROR.into(),
            message: None,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phase_follows_kubelet_rules() {
        let running = ContainerState::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        let creating = ContainerState::waiting(reason::CONTAINER_CREATING, None);
        assert_eq!(PodPhase::derive(&[], |_| false), PodPhase::Pending);
        assert_eq!(
            PodPhase::derive(&[status(creating, false)], |_| false),
            PodPhase::Pending
        );
        assert_eq!(
            PodPhase::derive(&[status(running.clone(), false)], |_| false),
            PodPhase::Running
        );
        assert_eq!(
            PodPhase::derive(&[status(terminated(0), false)], |_| false),
            PodPhase::Succeeded
        );
        assert_eq!(
            PodPhase::derive(&[status(terminated(3), false)], |_| false),
            PodPhase::Failed
        );
        // A failed container that will be restarted keeps the pod Running, as with Always.
        assert_eq!(
            PodPhase::derive(&[status(terminated(3), false)], |_| true),
            PodPhase::Running
        );
        let backoff = ContainerState::waiting(reason::CRASH_LOOP_BACK_OFF, None);
        assert_eq!(
            PodPhase::derive(&[status(backoff, true)], |_| true),
            PodPhase::Running
        );
        assert_eq!(
            PodPhase::derive(
                &[status(running, false), status(terminated(1), false)],
                |_| false
            ),
            PodPhase::Running
        );
    }

    #[test]
    fn init_containers_hold_the_pod_pending_or_fail_it() {
        let running = status(
            ContainerState::Running {
                started_at: Timestamp::UNIX_EPOCH,
            },
            false,
        );
        let waiting = status(
            ContainerState::waiting(reason::POD_INITIALIZING, None),
            false,
        );
        let done = status(terminated(0), false);
        let failed = status(terminated(2), false);
        assert_eq!(
            PodPhase::derive_with_init(&[running], std::slice::from_ref(&waiting), true),
            PodPhase::Pending
        );
        assert_eq!(
            PodPhase::derive_with_init(
                std::slice::from_ref(&failed),
                std::slice::from_ref(&waiting),
                false
            ),
            PodPhase::Failed
        );
        assert_eq!(
            PodPhase::derive_with_init(&[failed], &[waiting], true),
            PodPhase::Pending
        );
        assert_eq!(
            PodPhase::derive_with_init(
                std::slice::from_ref(&done),
                std::slice::from_ref(&done),
                true
            ),
            PodPhase::Succeeded
        );
    }

    #[test]
    fn k8s_form_carries_reason_and_exit_code() {
        let s = status(terminated(137), true).to_k8s();
        let t = s.state.and_then(|s| s.terminated).expect("terminated");
        assert_eq!(t.exit_code, 137);
        assert_eq!(t.reason.as_deref(), Some("Error"));
        assert_eq!(s.restart_count, 1);
        assert!(!s.ready);
    }
}
