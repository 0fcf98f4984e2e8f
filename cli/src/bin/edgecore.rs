//! `edgecore`: the edge agent. Joins the cloud with a bootstrap token on first start, then
//! runs its pods and keeps them running with or without the cloud.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use wedge_edge::agent::{self, AgentConfig};
use wedge_edge::eventbus::BrokerChoice;

#[derive(Parser)]
#[command(
    name = "edgecore",
    version,
    about = "Wedge's edge agent",
    args_override_self = true
)]
struct Args {
    /// Where the database, certificates, images and pod logs live.
    #[arg(long, env = "WEDGE_EDGE_ROOT", default_value = "/var/lib/wedge/edge")]
    root: PathBuf,
    /// CloudHub's address, host:port.
    #[arg(long, env = "WEDGE_CLOUD")]
    cloud: String,
    /// This edge's node name (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// A bootstrap token from `wedge token create`, to join on first start.
    #[arg(long, env = "WEDGE_TOKEN")]
    token: Option<String>,
    /// This node's address (default: the one that routes to the cloud).
    #[arg(long)]
    node_ip: Option<String>,
    /// A registry (host:port) reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// containerd's registry host directory (its CRI `config_path`): `<registry>/hosts.toml`
    /// files naming mirrors and plain-HTTP servers, read by the Wasm runtime too, so both
    /// runtimes pull from the same places. Point containerd's `config_path` at the same one.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    registry_config_dir: PathBuf,
    /// An `EncryptionConfiguration` file (kube-apiserver's format): the stored objects of the
    /// resources it lists (secrets, at least) are encrypted at rest; at start, rows under an
    /// older key are rewritten under the first provider's.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// An extra node label, key=value (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Seconds between node status reports.
    #[arg(long, default_value_t = 60)]
    node_status_seconds: u64,
    /// The longest wait between reconnection attempts, in seconds.
    #[arg(long, default_value_t = 30)]
    reconnect_max_seconds: u64,
    /// Seconds between lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_seconds: u64,
    /// How often CPU and memory usage is sampled and sent to the cloud (`kubectl top`), like
    /// metrics-server's resolution: 15s, 1m.
    #[arg(long, default_value = "15s", value_parser = wedge_cli::parse_duration)]
    usage_interval: Duration,
    /// An MQTT broker to use (host:port, e.g. a local mosquitto) instead of the embedded one.
    #[arg(long, env = "WEDGE_MQTT_BROKER")]
    mqtt_broker: Option<String>,
    /// Where the embedded MQTT broker listens, when no --mqtt-broker is given (port 0: any).
    #[arg(long, env = "WEDGE_MQTT_LISTEN", default_value = "127.0.0.1:1883")]
    mqtt_listen: std::net::SocketAddr,
    /// Offer local storage to PersistentVolumeClaims (class `local-path`, or none): a
    /// directory per claim under this one, as k3s's local-path provisioner keeps them. Without
    /// it, pods with claims are not scheduled here.
    #[arg(long, env = "WEDGE_LOCAL_VOLUME_ROOT")]
    local_volume_root: Option<PathBuf>,
    #[command(flatten)]
    containers: wedge_cli::container_args::ContainerArgs,
    #[command(flatten)]
    mqtt_auth: wedge_cli::mqtt_args::MqttAuthArgs,
    /// Serve Prometheus metrics (what the MQTT bus refused) at /metrics here, e.g.
    /// 127.0.0.1:9092 (off by default).
    #[arg(long, env = "WEDGE_EDGE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    wedge_cli::init_tracing("info");
    let node = args.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "edge".into())
    });
    let mut config = AgentConfig::new(&args.root, &args.cloud, node);
    config.token = args.token;
    config.node_ip = args.node_ip;
    config.insecure_registries = args.insecure_registries;
    config.registry_config_dir = Some(args.registry_config_dir);
    if let Some(path) = &args.encryption_provider_config {
        match wedge_core::encryption::EncryptionConfig::load(path) {
            Ok(encryption) => config.encryption = encryption,
            Err(e) => {
                eprintln!("edgecore: --encryption-provider-config: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for label in &args.labels {
        let Some((k, v)) = label.split_once('=') else {
            eprintln!("edgecore: --label {label}: expected key=value");
            return ExitCode::from(2);
        };
        config.labels.insert(k.to_owned(), v.to_owned());
    }
    config.mqtt = match &args.mqtt_broker {
        Some(address) => match BrokerChoice::external(address) {
            Ok(broker) => broker,
            Err(e) => {
                eprintln!("edgecore: --mqtt-broker: {e}");
                return ExitCode::from(2);
            }
        },
        None => BrokerChoice::Embedded(args.mqtt_listen),
    };
    if let Some(root) = &args.local_volume_root {
        if !root.is_absolute() {
            eprintln!(
                "edgecore: --local-volume-root {}: must be an absolute path",
                root.display()
            );
            return ExitCode::from(2);
        }
        config.local_volume_root = Some(root.clone());
    }
    args.containers.apply(&mut config);
    args.mqtt_auth.apply(&mut config);
    config.metrics_listen = args.metrics_listen;
    config.node_status_interval = Duration::from_secs(args.node_status_seconds.max(1));
    config.lease_interval = Duration::from_secs(args.lease_seconds.max(1));
    config.usage_interval = args.usage_interval;
    config.reconnect_max = Duration::from_secs(args.reconnect_max_seconds.max(1));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgecore: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wedge_cli::terminated().await;
            wedge_cli::stop_or_exit_on_second_signal();
            stop.cancel();
        });
        agent::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgecore: {e}");
            ExitCode::FAILURE
        }
    }
}
