//! The boundary between Edged and the runtimes: container-level, as CRI draws it.
//!
//! Edged does the kubelet's job once, for every runtime: pod phase and conditions, init
//! containers, restart policy and CrashLoopBackOff, image-pull retries, probes, hooks, grace
//! periods, volumes and pull secrets. A runtime only does what a CRI runtime does: pod
//! sandboxes ([`RuntimeService::run_sandbox`]), containers (create, start, stop with a timeout,
//! remove, status, wait), images ([`ImageService`]) and figures ([`ContainerStats`]). The Wasm
//! runtime (`wedge-edged-wasm`, handler `wasm`) and containerd through CRI (`wedge-shims`,
//! handler `runc`) both implement these two traits, so neither copies the kubelet.
//!
//! The shapes follow CRI v1 (`runtime.v1.RuntimeService` and `ImageService`) where they can, so
//! the CRI runtime maps them field for field, with two departures: [`RuntimeService::wait_container`]
//! (CRI has none; runwasi's `Instance::wait`) so Edged learns of an exit without polling, and
//! typed errors ([`RuntimeError`], [`ImageError`]) that say which kubelet reason a failure is.
//!
//! Objects carry the labels the kubelet puts on them ([`labels`]), so that Edged can find what
//! it started after a restart of its own and adopt it instead of starting it again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

/// The labels and annotations Edged puts on sandboxes and containers, as the kubelet names them.
pub mod labels {
    /// The pod's uid, on its sandbox and containers.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// The pod's name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// The pod's namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// The container's name in the pod spec.
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// The restart count of a container instance (an annotation, as the kubelet keeps it).
    pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
}

/// Why a runtime refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// No sandbox or container with this id.
    #[error("{0} not found")]
    NotFound(String),
    /// The configuration asks for something this runtime cannot do (kubelet's
    /// `CreateContainerConfigError`); retrying the same configuration will not help.
    #[error("{field}: {message}")]
    InvalidConfig {
        /// The pod-spec field, as `kubectl explain` names it.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The container could not be created or started (kubelet's `CreateContainerError`,
    /// `RunContainerError`): a bad component, a missing mount source, the OCI runtime failing.
    #[error("{0}")]
    Failed(String),
    /// The runtime cannot be reached (containerd down or restarting): retried, and the pod
    /// keeps its last status meanwhile.
    #[error("the container runtime is unavailable: {0}")]
    Unavailable(String),
    /// The runtime has no such operation (a Wasm guest has no processes to exec into, say).
    #[error("{0}")]
    Unsupported(String),
}

/// Why an image could not be pulled or inspected. Every variant is kubelet's `ErrImagePull`
/// except where [`ImageError::reason`] says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse (`InvalidImageName`).
    #[error("invalid image reference {reference:?}: {message}")]
    InvalidReference {
        /// As written in the pod.
        reference: String,
        /// Why.
        message: String,
    },
    /// The registry has no such repository or tag.
    #[error("{reference}: {message}")]
    NotFound {
        /// The image.
        reference: String,
        /// The registry's words.
        message: String,
    },
    /// The registry wants credentials the pod did not give, or refused them.
    #[error("{reference}: {message}")]
    Unauthorized {
        /// The image.
        reference: String,
        /// The registry's words and what to do.
        message: String,
    },
    /// The registry cannot be reached: an edge that holds the image runs it anyway.
    #[error("{reference}: {message}")]
    Unreachable {
        /// The image.
        reference: String,
        /// Why.
        message: String,
    },
    /// The image is of a kind this runtime does not run (a container image on the Wasm runtime).
    #[error("{reference}: {message}")]
    WrongKind {
        /// The image.
        reference: String,
        /// Which kind it is and where it runs.
        message: String,
    },
    /// Any other failure; the message names the image.
    #[error("{message}")]
    Other {
        /// The image.
        reference: String,
        /// Why.
        message: String,
    },
    /// The runtime cannot be reached.
    #[error("the container runtime is unavailable: {0}")]
    Unavailable(String),
}

impl ImageError {
    /// The kubelet reason a container waits with after this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidReference { .. } => crate::status::reason::INVALID_IMAGE,
            _ => crate::status::reason::ERR_IMAGE_PULL,
        }
    }

    /// Whether pulling again may succeed (an invalid reference never will).
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::InvalidReference { .. })
    }
}

/// Credentials for one registry, from the pod's `imagePullSecrets`.
#[derive(Clone, PartialEq, Eq)]
pub enum PullAuth {
    /// User name and password (or token).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// A registry bearer token.
    Bearer(String),
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// An image the runtime holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's id (a digest), what containers are created from.
    pub id: String,
    /// The references that name it (`registry/repo:tag`).
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...`, what kubelets report as a container's `imageID`.
    pub repo_digests: Vec<String>,
    /// Its size on disk, for `node.status.images`.
    pub size_bytes: u64,
}

/// Pulls and keeps images (CRI's `ImageService`).
#[async_trait]
pub trait ImageService: Send + Sync {
    /// Pulls `image` with `auth`, returning the image's id.
    async fn pull_image(&self, image: &str, auth: Option<&PullAuth>) -> Result<String, ImageError>;

    /// The image if the runtime holds it.
    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, ImageError>;

    /// Every image the runtime holds.
    async fn list_images(&self) -> Result<Vec<ImageInfo>, ImageError>;

    /// Removes an image.
    async fn remove_image(&self, image: &str) -> Result<(), ImageError>;
}

/// A directory or file a container sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// On the edge (Edged creates it: emptyDir, ConfigMap and Secret volumes live in the pod's
    /// directory).
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// Whether the container may only read.
    pub read_only: bool,
}

/// A pod sandbox's settings (CRI's `PodSandboxConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// How many sandboxes this pod had before.
    pub attempt: u32,
    /// The pod's hostname.
    pub hostname: String,
    /// Where the pod's container logs go (`<root>/pods/<ns>_<pod>_<uid>`).
    pub log_directory: PathBuf,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// Labels, including [`labels::POD_UID`] and friends.
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations (the Wasm runtime reads its grants here).
    pub annotations: BTreeMap<String, String>,
    /// The cgroup the pod's cgroups go under.
    pub cgroup_parent: Option<String>,
    /// A network namespace to join instead of making one (`/var/run/netns/cni-…`): the Wasm
    /// containers of a mixed pod join the one the container runtime made for the pod, so
    /// that every container of the pod shares `localhost`.
    pub netns: Option<PathBuf>,
}

/// A sandbox, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    /// Its id.
    pub id: String,
    /// Ready (running) or not (stopped).
    pub ready: bool,
    /// The pod's IP, when it has a network of its own.
    pub ip: Option<String>,
    /// The sandbox's network namespace, when it has one of its own and the runtime says where
    /// (for the other runtime of a mixed pod to join).
    pub netns: Option<PathBuf>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its labels, as given.
    pub labels: BTreeMap<String, String>,
}

/// Resource limits of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `resources.limits.memory` in bytes.
    pub memory_bytes: Option<u64>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_millicores: Option<u64>,
    /// `resources.requests.cpu` in millicores (CPU shares).
    pub cpu_request_millicores: Option<u64>,
}

/// The `securityContext` a runtime honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Security {
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
    /// `runAsGroup`.
    pub run_as_group: Option<i64>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_fs: bool,
    /// `privileged` (Edged refuses it unless the edge allows it).
    pub privileged: bool,
}

/// A container's settings (CRI's `ContainerConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The container's name in the pod spec.
    pub name: String,
    /// Its restart count: the instance this is.
    pub attempt: u32,
    /// The image's id, as [`ImageService::pull_image`] returned it.
    pub image: String,
    /// The image as the pod names it.
    pub image_ref: String,
    /// `command` (replaces the image's entrypoint when not empty).
    pub command: Vec<String>,
    /// `args`.
    pub args: Vec<String>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// The environment, resolved to literal values, in order.
    pub env: Vec<(String, String)>,
    /// Its volumes.
    pub mounts: Vec<Mount>,
    /// Where its output goes, in the CRI log format (`<pod dir>/<name>/<attempt>.log`).
    pub log_path: PathBuf,
    /// Limits.
    pub limits: Limits,
    /// Security settings.
    pub security: Security,
    /// `stdin`.
    pub stdin: bool,
    /// `tty`.
    pub tty: bool,
    /// Labels, including [`labels::CONTAINER_NAME`].
    pub labels: BTreeMap<String, String>,
    /// Annotations, including [`labels::RESTART_COUNT`].
    pub annotations: BTreeMap<String, String>,
}

/// A container's state (CRI's `ContainerState` with its exit details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running since `started_at`.
    Running {
        /// When it started.
        started_at: Timestamp,
    },
    /// Ran and ended.
    Exited(Exit),
    /// The runtime does not know (its record is damaged or it lost the task).
    Unknown,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code (128 + the signal when killed by one).
    pub code: i32,
    /// The kubelet reason: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// What happened, if the runtime knows more.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// A container, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// Which instance (restart count).
    pub attempt: u32,
    /// `repo@sha256:...` of its image, when known.
    pub image_id: Option<String>,
    /// Its state.
    pub state: ContainerState,
    /// Its labels, as given.
    pub labels: BTreeMap<String, String>,
}

/// What a command run in a container returned (probes and hooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code.
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// A terminal's size, as `kubectl exec -t` reports it on resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The streams of an interactive exec or attach (CRI's `Exec` and `Attach`, in process).
///
/// Each is present only when the client asked for it. Channels are bounded, so a slow client
/// slows the command's output rather than filling memory. The caller closes stdin by
/// dropping its sender (the command reads end of file); with `tty`, the command's output all
/// comes on stdout, and there is no stderr.
#[derive(Debug, Default)]
pub struct ExecStreams {
    /// What the client types or pipes in; closed at its end.
    pub stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    /// The command's standard output.
    pub stdout: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    /// The command's standard error (none with a TTY).
    pub stderr: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    /// Terminal size changes (with a TTY).
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
    /// Whether the command gets a terminal.
    pub tty: bool,
}

/// One forwarded TCP connection to a port of a pod (CRI's `PortForward`, in process).
///
/// The runtime connects to the port inside the pod's network, writes what arrives on `input`
/// and sends what the pod writes on `output`. The caller half-closes the connection by
/// dropping `input`'s sender; the runtime drops `output` when the pod half-closed its side.
/// Channels are bounded, so a slow reader slows the pod's side down rather than filling memory.
#[derive(Debug)]
pub struct PortStreams {
    /// Bytes towards the pod; closed when the client's side of the connection is.
    pub input: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    /// Bytes from the pod.
    pub output: tokio::sync::mpsc::Sender<bytes::Bytes>,
}

/// A container's figures (CRI's `ContainerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used, over the container's life.
    pub cpu: Duration,
    /// Memory in use (working set) in bytes.
    pub memory_bytes: u64,
}

/// Sandboxes and containers (CRI's `RuntimeService`).
#[async_trait]
pub trait RuntimeService: Send + Sync {
    /// The handler a RuntimeClass names for this runtime (`wasm`, `runc`).
    fn handler(&self) -> &'static str;

    /// `<name>://<version>`, for `nodeInfo.containerRuntimeVersion`.
    async fn version(&self) -> Result<String, RuntimeError>;

    /// Creates and starts a pod's sandbox, returning its id.
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError>;

    /// Stops a sandbox's containers and releases its network. Stopping a stopped or unknown
    /// sandbox is not an error.
    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// Removes a stopped sandbox and its containers. Removing an unknown one is not an error.
    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// A sandbox's status.
    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError>;

    /// Every sandbox the runtime holds (for adoption after a restart).
    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError>;

    /// Creates a container in a sandbox, returning its id.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String, RuntimeError>;

    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Stops a container: SIGTERM (or the runtime's equivalent), then SIGKILL after `timeout`.
    /// Stopping a stopped container is not an error.
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;

    /// Removes a stopped container. Removing an unknown one is not an error.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// A container's status.
    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;

    /// The containers of a sandbox, or of every sandbox.
    async fn list_containers(
        &self,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// Waits until a started container has exited and says how.
    async fn wait_container(&self, id: &str) -> Result<Exit, RuntimeError>;

    /// Runs `command` in a running container and waits at most `timeout` for it.
    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError>;

    /// A container's figures.
    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;

    /// Makes a running container write to a fresh file at its log path, after the one there was
    /// renamed (CRI's `ReopenContainerLog`: how the kubelet, here Edged, rotates logs).
    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError>;

    /// Runs `command` in a running container with `streams` (`kubectl exec`), returning its
    /// exit code when it ends. Dropping the future ends the session.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        streams: ExecStreams,
    ) -> Result<i32, RuntimeError> {
        let _ = (id, command, streams);
        Err(RuntimeError::Unsupported(format!(
            "the {} runtime cannot exec into containers",
            self.handler()
        )))
    }

    /// Carries one TCP connection to `port` inside sandbox `sandbox_id`'s network
    /// (`kubectl port-forward`) until both sides have closed it, or the future is dropped. A
    /// port nothing listens on is an error that says so (the kubelet's words reach the client).
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        streams: PortStreams,
    ) -> Result<(), RuntimeError> {
        let _ = (sandbox_id, port, streams);
        Err(RuntimeError::Unsupported(format!(
            "the {} runtime cannot forward ports",
            self.handler()
        )))
    }

    /// Connects `streams` to a running container's own stdio (`kubectl attach`) until it
    /// exits or the session is dropped.
    async fn attach(&self, id: &str, streams: ExecStreams) -> Result<(), RuntimeError> {
        let _ = (id, streams);
        Err(RuntimeError::Unsupported(format!(
            "the {} runtime cannot attach to containers",
            self.handler()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_errors_name_their_kubelet_reason() {
        let invalid = ImageError::InvalidReference {
            reference: "UPPER".into(),
            message: "uppercase".into(),
        };
        assert_eq!(invalid.reason(), "InvalidImageName");
        assert!(!invalid.retryable());
        let missing = ImageError::NotFound {
            reference: "r/app:1".into(),
            message: "manifest unknown".into(),
        };
        assert_eq!(missing.reason(), "ErrImagePull");
        assert!(missing.retryable());
    }

    #[test]
    fn credentials_never_print() {
        let auth = PullAuth::Basic {
            username: "ci".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
