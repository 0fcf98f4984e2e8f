//! `cloudcore`: the cloud side of Wedge.
//!
//! With no `--kubeconfig` it embeds everything one machine needs: the Kubernetes-compatible API
//! server on SQLite, the control plane (scheduler and controllers) and CloudHub. With
//! `--kubeconfig` it runs CloudHub and EdgeController against that cluster, whose own
//! scheduler and controllers do the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use wedge_cloudcore::{CloudCore, CloudCoreConfig};

#[derive(Parser)]
#[command(
    name = "cloudcore",
    version,
    about = "Wedge's cloud side: CloudHub and EdgeController, with an embedded API server unless --kubeconfig is given"
)]
struct Args {
    /// Where state lives: the hub's certificates under `cloudcore/hub/`, and, embedded, the API
    /// server's database and admin kubeconfig under `apiserver/` (as `wedge up` keeps them).
    #[arg(long, env = "WEDGE_ROOT", default_value = "/var/lib/wedge")]
    root: PathBuf,
    /// A real cluster's kubeconfig; without it the embedded API server and control plane run.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where CloudHub listens for edges.
    #[arg(long, default_value = "0.0.0.0:10000")]
    listen: SocketAddr,
    /// A name or address edges dial CloudHub at (repeatable): the certificate covers it.
    #[arg(long = "advertise-address")]
    advertise: Vec<String>,
    /// Where the embedded API server listens.
    #[arg(long, default_value = "127.0.0.1:6443")]
    apiserver_listen: SocketAddr,
    /// Encryption at rest for the embedded API server (kube-apiserver's
    /// `EncryptionConfiguration`); ignored with --kubeconfig.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP here.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Registries (`host:port`) the scheduler reaches over plain HTTP (embedded mode).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// How long a silent edge stays Ready before it is Unknown, in seconds (embedded mode).
    #[arg(long, default_value_t = 40)]
    node_grace: u64,
    /// How long the client certificates signed for edges are valid (`365d`, `12h`...); edges
    /// renew theirs at 70–90% of it.
    #[arg(long, default_value = "365d", value_parser = wedge_cli::parse_duration)]
    edge_cert_validity: Duration,
    /// Seconds between keepalive pings to each edge.
    #[arg(long, default_value_t = 15)]
    ping_interval: u64,
    #[command(flatten)]
    stream: wedge_cli::stream_args::StreamArgs,
    #[command(flatten)]
    services: wedge_cli::service_args::ServiceArgs,
    /// The HorizontalPodAutoscaler controller (embedded mode).
    #[command(flatten)]
    podautoscaler: wedge_cli::podautoscaler_args::PodAutoscalerArgs,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut embedded = None;
    let mut kubeconfig = args.kubeconfig.clone();
    let client = match &args.kubeconfig {
        Some(path) => wedge_cli::kube_client(path).await?,
        None => {
            let mut config = wedge_apiserver::ServerConfig::new(
                args.root.join("apiserver"),
                args.apiserver_listen,
            );
            config.names.clone_from(&args.advertise);
            config.service_network = args.services.network();
            config
                .encryption_provider_config
                .clone_from(&args.encryption_provider_config);
            // The `kubernetes` Service's endpoints name the first address given, if any.
            config.advertise_address = args.advertise.iter().find_map(|a| a.parse().ok());
            // The API server reaches edges through CloudStream, whose certificate the hub's
            // CA signs (written when cloudcore starts, read at the first request).
            config.kubelet_certificate_authority = Some(args.root.join("cloudcore/hub/pki/ca.crt"));
            let controllers = wedge_controlplane::ControllersConfig {
                node_grace: Duration::from_secs(args.node_grace.max(1)),
                insecure_registries: args.insecure_registries.clone(),
                podautoscaler: args.podautoscaler.config(),
                ..Default::default()
            };
            let identity = format!("cloudcore-{}", std::process::id());
            let cluster =
                wedge_cli::EmbeddedCluster::start(config, controllers, identity, &shutdown).await?;
            println!("API server listening on {}", cluster.server.url());
            println!(
                "kubectl: export KUBECONFIG={}",
                cluster.server.kubeconfig_path().display()
            );
            let client = cluster.cloudcore_client.clone();
            kubeconfig = Some(cluster.server.kubeconfig_path().to_path_buf());
            embedded = Some(cluster);
            client
        }
    };
    let mut config = CloudCoreConfig::new(args.root.join("cloudcore").join("hub"));
    config.hub.listen = args.listen;
    config.hub.ping_interval = Duration::from_secs(args.ping_interval.max(1));
    let kubeconfig = kubeconfig.unwrap_or_default();
    let stream = args.stream.settings(&kubeconfig, &args.advertise)?;
    config.advertise = args.advertise;
    config.stream = Some(stream);
    config.cert_validity = args.edge_cert_validity;
    config.metrics_listen = args.metrics_listen;
    let cloudcore = CloudCore::start(client, config)
        .await
        .context("starting CloudHub")?;
    println!("CloudHub listening on {}", cloudcore.local_addr());
    println!("edges pin the CA {}", cloudcore.ca_path().display());
    if let Some(addr) = cloudcore.stream_addr() {
        println!("CloudStream (the edges' kubelet endpoint) listening on {addr}");
    }
    if let Some(addr) = cloudcore.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    // Embedded, a control plane that stops on its own stops cloudcore too, loudly.
    let stopped = async {
        match embedded.as_mut() {
            Some(cluster) => Some(cluster.control_plane_stopped().await),
            None => std::future::pending().await,
        }
    };
    let failure = tokio::select! {
        () = wedge_cli::terminated() => {
            wedge_cli::stop_or_exit_on_second_signal();
            None
        }
        error = stopped => error,
    };
    shutdown.cancel();
    cloudcore.shutdown().await;
    if let Some(cluster) = embedded {
        cluster.stop().await;
    }
    failure.map_or(Ok(()), Err)
}

fn main() -> ExitCode {
    let args = Args::parse();
    wedge_cli::init_tracing("info");
    // Every edge holds a connection open: lift the soft limit on open files to the hard one,
    // as servers for many clients do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(error) => tracing::warn!(%error, "cannot raise the limit on open files"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cloudcore: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudcore: {e:#}");
            ExitCode::FAILURE
        }
    }
}
