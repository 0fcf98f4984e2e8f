//! The Wasm runtime's settings: the `edged.wasm` section of edgecore's configuration, and what
//! `wedge wasm run` passes.

use std::path::PathBuf;
use std::time::Duration;

use wedge_core::restart::BackoffSettings;

use crate::engine::EngineSettings;

/// Settings of a [`crate::WasmRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where images (`images/`), compiled code (`compiled/`) and pod logs and volumes (`pods/`)
    /// live.
    pub root: PathBuf,
    /// Registries (`host:port`) reached over plain HTTP; all others over HTTPS.
    pub insecure_registries: Vec<String>,
    /// The engine.
    pub engine: EngineSettings,
    /// The crash-loop backoff (kubelet's by default).
    pub backoff: BackoffSettings,
    /// The longest a handler invocation may run before it is stopped and counted as failed.
    pub handler_timeout: Duration,
    /// Copy guests' output to this process's stdout and stderr as well as to the logs.
    pub echo_logs: bool,
}

impl RuntimeConfig {
    /// Defaults rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            insecure_registries: Vec::new(),
            engine: EngineSettings::default(),
            backoff: BackoffSettings::default(),
            handler_timeout: Duration::from_secs(1),
            echo_logs: false,
        }
    }
}
