//! One module per `wedge` subcommand.

pub mod apiserver;
pub mod controllers;
pub mod image;
pub mod kubeconfig;
pub mod node;
pub mod rbac;
pub mod token;
pub mod up;
pub mod wasm;

use std::path::Path;

use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::{RegistryHosts, RuntimeConfig, WasmRuntime};

/// A runtime over the edge's root with in-process twin and bus backends.
pub fn runtime(root: &Path, insecure: &[String], echo: bool) -> anyhow::Result<WasmRuntime> {
    let mut config = RuntimeConfig::new(root);
    config.registries = RegistryHosts::insecure(insecure);
    config.echo_logs = echo;
    let (backends, _, _) = Backends::in_process();
    Ok(WasmRuntime::new(config, backends)?)
}
