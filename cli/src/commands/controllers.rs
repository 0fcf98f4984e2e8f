//! `wedge controllers`: the embedded control plane (scheduler, workload controllers, garbage
//! collector, namespace and node lifecycle controllers) against an API server named by a
//! kubeconfig, under leader election, so several can run and one acts. `wedge apiserver
//! --controllers` runs the same in-process beside the embedded server.
//!
//! Not for real clusters: they have kube-scheduler and kube-controller-manager already.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use wedge_controlplane::{ControllersConfig, LeaderConfig};

/// How the control plane runs (shared by `wedge controllers` and `wedge apiserver`).
#[derive(Args, Clone)]
pub struct ControlPlaneArgs {
    /// Who this process is in the leader election (default: hostname and process id).
    #[arg(long)]
    identity: Option<String>,
    /// How long the leader's lease lasts without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// How long a node may stay silent before it is Ready=Unknown, in seconds.
    #[arg(long, default_value_t = 40)]
    node_grace: u64,
    /// A registry (`host:port`) reached over plain HTTP when the scheduler asks what an image
    /// is (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    #[command(flatten)]
    podautoscaler: wedge_cli::podautoscaler_args::PodAutoscalerArgs,
    /// The CA bundle (PEM) published in every namespace as the `kube-root-ca.crt` ConfigMap,
    /// which pods' token volumes carry (kube-controller-manager's `--root-ca-file`). Default:
    /// the CA the kubeconfig trusts (`wedge controllers`), the server's own (`wedge apiserver
    /// --controllers`).
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// The CA used without `--root-ca-file`.
    #[arg(skip)]
    default_root_ca: Option<String>,
}

impl ControlPlaneArgs {
    /// Publishes `pem` as the root CA unless `--root-ca-file` names another.
    pub fn default_root_ca(mut self, pem: Option<String>) -> Self {
        self.default_root_ca = pem;
        self
    }
}

/// Options of `wedge controllers`.
#[derive(Args)]
pub struct ControllersArgs {
    /// The kubeconfig of the API server to control, for the controllers (the embedded API
    /// server writes `controller-manager.kubeconfig`, as `system:kube-controller-manager`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The scheduler's kubeconfig (`scheduler.kubeconfig`, as `system:kube-scheduler`);
    /// default: --kubeconfig.
    #[arg(long)]
    scheduler_kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    control_plane: ControlPlaneArgs,
}

/// A kube client from a kubeconfig file.
pub use wedge_cli::kube_client as client_for;

/// Runs the control plane until `shutdown` is cancelled.
pub async fn run_control_plane(
    clients: wedge_controlplane::Clients,
    args: ControlPlaneArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = Duration::from_secs(args.lease_duration.max(2));
    let mut leader = LeaderConfig::new(identity);
    leader.lease_duration = lease;
    leader.renew_before = lease / 3;
    let root_ca = match &args.root_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --root-ca-file {}", path.display()))?,
        ),
        None => args.default_root_ca,
    };
    let config = ControllersConfig {
        node_grace: Duration::from_secs(args.node_grace.max(1)),
        insecure_registries: args.insecure_registries,
        podautoscaler: args.podautoscaler.config(),
        root_ca,
    };
    wedge_controlplane::run(clients, config, leader, shutdown)
        .await
        .context("leader election")
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: ControllersArgs) -> anyhow::Result<ExitCode> {
    let controllers = client_for(&args.kubeconfig).await?;
    let scheduler = match &args.scheduler_kubeconfig {
        Some(path) => client_for(path).await?,
        None => controllers.clone(),
    };
    let clients = wedge_controlplane::Clients {
        scheduler,
        controllers,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wedge_cli::terminated().await;
        stop.cancel();
    });
    eprintln!("wedge controllers: waiting for the lease, then controlling");
    let ca = wedge_cli::kubeconfig_ca(&args.kubeconfig).await;
    run_control_plane(clients, args.control_plane.default_root_ca(ca), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
