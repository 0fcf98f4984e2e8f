//! The container-runtime flags of an edge, the kubelet's names for them: one definition for
//! `edgecore` and for the local edge of `wedge up`, so both take the same flags alike.

use std::path::PathBuf;

use clap::Args;
use wedge_edge::agent::{AgentConfig, ContainerRuntime, PodNetwork};

/// How an edge runs container pods beside its Wasm pods.
#[derive(Args, Debug, Clone)]
pub struct ContainerArgs {
    /// containerd's CRI socket, to run container pods beside Wasm ones (`none`: Wasm only).
    /// Default: containerd's usual socket, used if containerd answers there at start.
    #[arg(long, env = "WEDGE_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,
    /// The cgroup container pods' cgroups go under (default: containerd's).
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// Let containers run privileged (refused by default).
    #[arg(long)]
    pub allow_privileged: bool,
    /// How many pods this node accepts, Wasm and container pods together.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// containerd's CNI config directory: a bridge network is written there when it holds none.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The container pods' subnet on this edge, for that bridge network.
    #[arg(long, default_value = "10.88.0.0/16")]
    pub pod_cidr: String,
    /// The size past which a container's log is rotated, Wasm and containers alike (the
    /// kubelet's `containerLogMaxSize`).
    #[arg(long, default_value = "10Mi", value_parser = log_size)]
    pub container_log_max_size: u64,
    /// How many files a container's log keeps, the one being written included (the kubelet's
    /// `containerLogMaxFiles`; at least 2).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    pub container_log_max_files: u32,
}

/// A log size, a Kubernetes quantity (`10Mi`, `500Ki`, `1G`), at least 1 KiB.
fn log_size(s: &str) -> Result<u64, String> {
    let bytes = wedge_core::quantity::parse_bytes(s).map_err(|e| e.to_string())?;
    if bytes < 1024 {
        return Err(format!("{s} is less than 1Ki"));
    }
    Ok(bytes)
}

impl ContainerArgs {
    /// Sets these flags on an edge's config.
    pub fn apply(self, config: &mut AgentConfig) {
        config.container_runtime = match self.container_runtime_endpoint.as_deref() {
            None => ContainerRuntime::Detect,
            Some("" | "none") => ContainerRuntime::None,
            Some(endpoint) => ContainerRuntime::Endpoint(endpoint.to_owned()),
        };
        config.cgroup_root = self.cgroup_root;
        config.allow_privileged = self.allow_privileged;
        config.max_pods = self.max_pods;
        config.log_limits = wedge_core::logrotation::LogLimits {
            max_bytes: self.container_log_max_size,
            max_files: usize::try_from(self.container_log_max_files).unwrap_or(usize::MAX),
        };
        config.pod_network = Some(PodNetwork {
            conf_dir: self.cni_conf_dir,
            subnet: self.pod_cidr,
            ..PodNetwork::default()
        });
    }
}
