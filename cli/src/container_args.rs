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
        config.pod_network = Some(PodNetwork {
            conf_dir: self.cni_conf_dir,
            subnet: self.pod_cidr,
            ..PodNetwork::default()
        });
    }
}
