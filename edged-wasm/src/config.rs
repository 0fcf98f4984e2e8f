//! The Wasm runtime's settings: the `edged.wasm` section of edgecore's configuration, and what
//! `wedge wasm run` passes.

use std::path::PathBuf;
use std::time::Duration;

use wedge_core::restart::BackoffSettings;

use crate::engine::EngineSettings;

pub use wedge_oci::RegistryHosts;

/// Settings of a [`crate::WasmRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where images (`images/`), compiled code (`compiled/`) and pod logs and volumes (`pods/`)
    /// live.
    pub root: PathBuf,
    /// Where registries are reached: mirrors and plain-HTTP registries, from containerd's
    /// `hosts.toml` directory and the insecure registries (the edge's containerd reads the same).
    pub registries: RegistryHosts,
    /// The engine.
    pub engine: EngineSettings,
    /// The crash-loop backoff (kubelet's by default).
    pub backoff: BackoffSettings,
    /// The longest a handler invocation may run before it is stopped and counted as failed.
    pub handler_timeout: Duration,
    /// Copy guests' output to this process's stdout and stderr as well as to the logs.
    pub echo_logs: bool,
    /// When guests' logs are rotated, as they are written.
    pub log_limits: wedge_core::logrotation::LogLimits,
}

impl RuntimeConfig {
    /// Defaults rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            registries: RegistryHosts::default(),
            engine: EngineSettings::default(),
            backoff: BackoffSettings::default(),
            handler_timeout: Duration::from_secs(1),
            echo_logs: false,
            log_limits: Default::default(),
        }
    }
}
