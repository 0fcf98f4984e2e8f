//! `wedge up`: the all-in-one cluster on one machine, in one process.
//!
//! The embedded API server, the control plane, cloudcore and one local edge, started together;
//! the admin kubeconfig written and printed; the sample Wasm apps (`sample-apps/manifests/`)
//! applied so that `kubectl get pods` shows them Running, and, when the edge found containerd,
//! the sample container pod `web` beside them. The local edge is provisioned with a
//! certificate from the hub's CA directly (it runs beside the cloud); remote edges join with a
//! token (`wedge token create`).
//!
//! The device loop comes with the samples: a Modbus TCP simulator (a room that warms while its
//! fan is off), the thermometer and fan Devices pointing at it (KubeEdge manifests, bound to the
//! local edge), and the `fan-handler` pod, which sets the fan's desired power when the
//! temperature crosses its threshold; edgecore's Modbus mapper writes the coil and reads it back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;
use wedge_cloudcore::{CloudCore, CloudCoreConfig};
use wedge_edge::agent::{self, AgentConfig};
use wedge_edge::eventbus::BrokerChoice;
use wedge_edge::tls::EdgeCredentials;
use wedge_mapper_modbus::{SimConfig, Simulator};

/// The sample apps `wedge up` runs: manifest, image name in it, component file name.
const SAMPLES: [(&str, &str, &str); 2] = [
    (
        include_str!("../../../sample-apps/manifests/telemetry.yaml"),
        "registry.local/wedge/telemetry:0.1.0",
        "telemetry.wasm",
    ),
    (
        include_str!("../../../sample-apps/manifests/fan-handler.yaml"),
        "registry.local/wedge/fan-handler:0.1.0",
        "fan_handler.wasm",
    ),
];

/// The sample container pods, applied when the local edge found containerd: `web`, busybox's
/// httpd (the image `scripts/demo` imports into its containerd, or containerd pulls).
const CONTAINER_SAMPLES: [&str; 1] = [include_str!("../../../sample-apps/manifests/web.yaml")];

/// The sample devices: KubeEdge DeviceModels and Devices (bound to the local edge when applied).
const DEVICE_MANIFESTS: [&str; 2] = [
    include_str!("../../../sample-apps/manifests/devices/models.yaml"),
    include_str!("../../../sample-apps/manifests/devices/devices.yaml"),
];

/// Options of `wedge up`.
#[derive(Args)]
pub struct UpArgs {
    /// Where the API server listens.
    #[arg(long, default_value = "127.0.0.1:6443")]
    apiserver_listen: SocketAddr,
    /// Where CloudHub listens for edges.
    #[arg(long, default_value = "127.0.0.1:10000")]
    hub_listen: SocketAddr,
    /// Where CloudStream, the edges' kubelet endpoint (logs, exec, port-forward), listens.
    #[arg(long, default_value = "127.0.0.1:10350")]
    stream_listen: SocketAddr,
    /// The local edge's node name.
    #[arg(long, default_value = "edge-local")]
    node: String,
    /// Where the built sample components are (`cargo sample-apps` puts them here).
    #[arg(long, default_value = "sample-apps/target/wasm32-wasip2/release")]
    samples: PathBuf,
    /// Do not apply the sample apps.
    #[arg(long)]
    no_samples: bool,
    /// A registry (host:port) reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// containerd's registry host directory (`<registry>/hosts.toml` mirrors), read by the
    /// local edge's Wasm runtime as containerd's `config_path` is.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    registry_config_dir: PathBuf,
    /// How long a silent edge stays Ready, in seconds.
    #[arg(long, default_value_t = 40)]
    node_grace: u64,
    /// Where the embedded MQTT broker listens (KubeEdge's device topics, apps' messages).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// An MQTT broker to use (host:port, e.g. mosquitto) instead of the embedded one.
    #[arg(long)]
    mqtt_broker: Option<String>,
    /// Who may use the embedded broker (edgecore's flags). Without a password file, a user
    /// `wedge` is made with its password under the root.
    #[command(flatten)]
    mqtt_auth: wedge_cli::mqtt_args::MqttAuthArgs,
    /// Where the sample Modbus TCP device simulator listens.
    #[arg(long, default_value = "127.0.0.1:5020")]
    modbus_sim_listen: SocketAddr,
    /// The local edge's container runtime (edgecore's flags).
    #[command(flatten)]
    containers: wedge_cli::container_args::ContainerArgs,
    /// The embedded API server's Service ranges.
    #[command(flatten)]
    services: wedge_cli::service_args::ServiceArgs,
    /// The HorizontalPodAutoscaler controller.
    #[command(flatten)]
    podautoscaler: wedge_cli::podautoscaler_args::PodAutoscalerArgs,
    /// An `EncryptionConfiguration` for Secrets (and what else it lists) at rest, in the API
    /// server and the local edge. Without it, one with a new aesgcm key for secrets is made
    /// once at <root>/encryption-config.yaml and used from then on.
    #[arg(long, conflicts_with = "no_encryption")]
    encryption_provider_config: Option<PathBuf>,
    /// Store Secrets plain, as kube-apiserver does without --encryption-provider-config.
    #[arg(long)]
    no_encryption: bool,
}

/// The encryption configuration `wedge up` uses: the operator's, else the one it made under
/// `root` (made now if missing), else none.
fn encryption_config(root: &Path, args: &UpArgs) -> anyhow::Result<Option<PathBuf>> {
    if args.no_encryption {
        return Ok(None);
    }
    if let Some(path) = &args.encryption_provider_config {
        return Ok(Some(path.clone()));
    }
    let path = root.join("encryption-config.yaml");
    if !path.exists() {
        let text = wedge_core::encryption::generate(&["secrets"], "key1");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            wedge_core::state::private_dir(root)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write().with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "Secrets are encrypted at rest with a new key in {} (keep it with backups of the state; --no-encryption to store them plain)",
            path.display()
        );
    }
    Ok(Some(path))
}

/// The RuntimeClasses of Wedge's two runtimes, as `kubectl get runtimeclass` lists them: a pod
/// names one to choose its runtime (without one, its images' kind decides).
async fn apply_runtime_classes(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::node::v1::RuntimeClass;
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    for handler in [wedge_core::runtimes::WASM, wedge_core::runtimes::RUNC] {
        let class = RuntimeClass {
            metadata: kube::api::ObjectMeta {
                name: Some(handler.to_owned()),
                ..Default::default()
            },
            handler: handler.to_owned(),
            ..Default::default()
        };
        match classes.create(&PostParams::default(), &class).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating the RuntimeClass {handler}"));
            }
        }
    }
    Ok(())
}

/// Applies the sample DeviceModels and Devices, bound to `node` and pointing at the simulator.
async fn apply_devices(
    client: &kube::Client,
    node: &str,
    sim: SocketAddr,
) -> anyhow::Result<Vec<String>> {
    use kube::api::DynamicObject;
    use serde::Deserialize;
    let mut names = Vec::new();
    for manifest in DEVICE_MANIFESTS {
        for document in serde_yaml_ng::Deserializer::from_str(manifest) {
            let mut object =
                serde_json::Value::deserialize(document).context("a sample device manifest")?;
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            let resource = if kind == "Device" {
                object["spec"]["nodeName"] = node.into();
                object["spec"]["protocol"]["configData"]["ip"] = sim.ip().to_string().into();
                object["spec"]["protocol"]["configData"]["port"] = sim.port().into();
                wedge_cloudcore::devicecontroller::device_resource()
            } else {
                wedge_cloudcore::devicecontroller::device_model_resource()
            };
            let object: DynamicObject =
                serde_json::from_value(object).context("a sample device manifest")?;
            let name = object.metadata.name.clone().unwrap_or_default();
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), "default", &resource);
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("applying the sample {kind} {name}"));
                }
            }
            if kind == "Device" {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// Applies the pod `manifests` (an existing pod is left as it is); returns their names.
async fn apply_pods(client: &kube::Client, manifests: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for manifest in manifests {
        let pod: Pod = serde_yaml_ng::from_str(manifest).context("a sample manifest")?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("applying the sample pod {name}")),
        }
        names.push(name);
    }
    Ok(names)
}

fn preload(samples: &Path) -> Vec<(String, PathBuf)> {
    SAMPLES
        .iter()
        .map(|(_, image, file)| ((*image).to_owned(), samples.join(file)))
        .collect()
}

/// The runtimes the local edge reports (`nodeInfo.containerRuntimeVersion`) in its first node
/// status since `since` (the state of an earlier run says what that run found): waited for on
/// a watch, at most [`NODE_REPORT`].
async fn edge_runtimes(
    client: &kube::Client,
    node: &str,
    since: jiff::Timestamp,
) -> Option<String> {
    use k8s_openapi::api::core::v1::Node;
    let versions = move |n: Option<&Node>| {
        let status = n?.status.as_ref()?;
        let fresh = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .is_some_and(|t| t.0 >= since);
        status
            .node_info
            .as_ref()
            .map(|i| i.container_runtime_version.clone())
            .filter(|v| fresh && !v.is_empty())
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let reported =
        kube::runtime::wait::await_condition(nodes, node, |n: Option<&Node>| versions(n).is_some());
    match tokio::time::timeout(NODE_REPORT, reported).await {
        Ok(Ok(n)) => versions(n.as_ref()),
        _ => None,
    }
}

/// How long `wedge up` waits for the local edge's first node report.
const NODE_REPORT: Duration = Duration::from_secs(20);

/// Runs the all-in-one cluster until Ctrl-C or SIGTERM.
pub async fn run(root: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let mut config =
        wedge_apiserver::ServerConfig::new(root.join("apiserver"), args.apiserver_listen);
    // The API server reaches the edge through CloudStream, whose certificate the hub's CA signs.
    config.kubelet_certificate_authority = Some(root.join("cloudcore/hub/pki/ca.crt"));
    config.service_network = args.services.network();
    let encryption = encryption_config(root, &args)?;
    config.encryption_provider_config.clone_from(&encryption);
    let controllers = wedge_controlplane::ControllersConfig {
        node_grace: Duration::from_secs(args.node_grace.max(1)),
        insecure_registries: args.insecure_registries.clone(),
        podautoscaler: args.podautoscaler.config(),
        ..Default::default()
    };
    let identity = format!("wedge-up-{}", std::process::id());
    let mut cluster =
        wedge_cli::EmbeddedCluster::start(config, controllers, identity, &shutdown).await?;
    let client = cluster.client.clone();
    apply_runtime_classes(&client).await?;

    let mut hub = CloudCoreConfig::new(root.join("cloudcore").join("hub"));
    hub.hub.listen = args.hub_listen;
    let stream = wedge_cli::stream_args::StreamArgs {
        stream_listen: args.stream_listen,
        stream_advertise_address: None,
        stream_node_domain: None,
        kubelet_client_ca: None,
    };
    let stream = stream.settings(cluster.server.kubeconfig_path(), &[])?;
    hub.stream = Some(stream);
    let cloudcore = CloudCore::start(cluster.cloudcore_client.clone(), hub)
        .await
        .context("starting cloudcore")?;

    let edge_root = root.join("edge");
    let creds = EdgeCredentials::new(edge_root.join("pki"));
    // The local edge's certificate is the operator's to give: a new one when there is none,
    // or when the one it has was revoked (its Node deleted, or `wedge node revoke`).
    let revoked = creds.exists()
        && match std::fs::read_to_string(creds.cert_path()) {
            Ok(pem) => match cloudcore.edge_certificate_usable(&pem) {
                Ok(()) => false,
                Err(why) => {
                    eprintln!(
                        "the local edge's certificate is no longer valid ({why}): issuing a new one"
                    );
                    true
                }
            },
            Err(_) => false,
        };
    if !creds.exists() || revoked {
        let cert = cloudcore.issue_edge_certificate(&args.node).await?;
        creds
            .save(cloudcore.ca_pem(), &cert.cert_pem, &cert.key_pem)
            .with_context(|| {
                format!(
                    "writing the local edge's credentials to {}",
                    creds.dir().display()
                )
            })?;
    }
    let mut edge = AgentConfig::new(&edge_root, cloudcore.local_addr().to_string(), &args.node);
    edge.insecure_registries = args.insecure_registries.clone();
    if let Some(path) = &encryption {
        edge.encryption = wedge_core::encryption::EncryptionConfig::load(path)?;
    }
    edge.registry_config_dir = Some(args.registry_config_dir.clone());
    edge.node_ip = Some("127.0.0.1".into());
    // All in one machine, as k3s: claims get local storage out of the box.
    edge.local_volume_root = std::path::absolute(edge_root.join("storage")).ok();
    args.containers.apply(&mut edge);
    edge.mqtt = match &args.mqtt_broker {
        Some(address) => BrokerChoice::external(address).context("--mqtt-broker")?,
        None => BrokerChoice::Embedded(args.mqtt_listen),
    };
    let mut mqtt_auth = args.mqtt_auth.clone();
    let mut local_mqtt_password = None;
    if args.mqtt_broker.is_none() && mqtt_auth.mqtt_password_file.is_none() {
        let (passwd, password) = wedge_cli::mqtt_args::local_user(&edge_root.join("mqtt"))
            .context("writing the local MQTT user's password file")?;
        mqtt_auth.mqtt_password_file = Some(passwd);
        local_mqtt_password = Some(password);
    }
    mqtt_auth.apply(&mut edge);
    let mut simulator = None;
    if !args.no_samples {
        let sim = Simulator::bind(args.modbus_sim_listen, SimConfig::default())
            .await
            .with_context(|| {
                format!(
                    "the sample Modbus simulator cannot listen on {} (pass --modbus-sim-listen, or --no-samples)",
                    args.modbus_sim_listen
                )
            })?;
        sim.spawn(shutdown.clone());
        simulator = Some(sim.local_addr());
        let preload = preload(&args.samples);
        if let Some((_, missing)) = preload.iter().find(|(_, path)| !path.exists()) {
            anyhow::bail!(
                "the sample component {} is missing: build the samples with `cargo sample-apps` (or pass --no-samples)",
                missing.display()
            );
        }
        edge.preload = preload;
    }
    // Node reports carry whole seconds: a report from the second before counts as this run's.
    let edge_started = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let edge_task = tokio::spawn(agent::run(edge, shutdown.clone()));

    let (mut samples, devices) = match simulator {
        None => (Vec::new(), Vec::new()),
        Some(sim) => (
            apply_pods(&client, &SAMPLES.map(|(manifest, _, _)| manifest)).await?,
            apply_devices(&client, &args.node, sim).await?,
        ),
    };
    println!("Wedge is up.");
    println!("  API server   {}", cluster.server.url());
    println!("  CloudHub     {}", cloudcore.local_addr());
    println!(
        "  local edge   {} (node {})",
        edge_root.display(),
        args.node
    );
    let runtimes = edge_runtimes(&client, &args.node, edge_started).await;
    let containers = runtimes
        .as_deref()
        .is_some_and(|v| v.contains("containerd"));
    if containers && simulator.is_some() {
        samples.extend(apply_pods(&client, &CONTAINER_SAMPLES).await?);
    }
    match runtimes {
        Some(versions) if containers => {
            println!("  runtimes     {versions}: Wasm and container pods");
        }
        Some(versions) => println!(
            "  runtimes     {versions}: Wasm pods only (no containerd answered; --container-runtime-endpoint names one)"
        ),
        None => println!("  runtimes     not reported yet (see the node's status)"),
    }
    println!();
    println!(
        "  export KUBECONFIG={}",
        cluster.server.kubeconfig_path().display()
    );
    println!("  kubectl get nodes,pods -o wide");
    if !samples.is_empty() {
        println!("  kubectl get pod {} -o yaml", samples.join(" "));
    }
    if containers && simulator.is_some() {
        println!(
            "  curl http://$(kubectl get pod web -o jsonpath='{{.status.podIP}}'):8080/   # the container sample"
        );
    }
    if let Some(sim) = simulator {
        println!(
            "  kubectl get devices -o wide --watch      # {} (Modbus simulator at {sim})",
            devices.join(", ")
        );
        println!(
            "  tail -f {}/pods/default_fan-handler_*/fan-handler/*.log   # the handler switching the fan",
            edge_root.display()
        );
        if args.mqtt_broker.is_none() {
            let login = match &local_mqtt_password {
                Some(p) => format!(
                    " -u {} -P \"$(cat {})\"",
                    wedge_cli::mqtt_args::LOCAL_USER,
                    p.display()
                ),
                None => String::new(),
            };
            println!(
                "  mosquitto_sub -h {} -p {}{login} -t '$hw/events/device/+/twin/update/document'",
                args.mqtt_listen.ip(),
                args.mqtt_listen.port()
            );
        }
    }
    println!();
    println!(
        "Ctrl-C stops everything; the state under {} is kept.",
        root.display()
    );

    tokio::select! {
        () = wedge_cli::terminated() => wedge_cli::stop_or_exit_on_second_signal(),
        error = cluster.control_plane_stopped() => {
            shutdown.cancel();
            cloudcore.shutdown().await;
            cluster.stop().await;
            return Err(error);
        }
        result = edge_task => {
            shutdown.cancel();
            cloudcore.shutdown().await;
            cluster.stop().await;
            return match result {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => Err(e).context("the local edge"),
                Err(e) => Err(e).context("the local edge task"),
            };
        }
    }
    shutdown.cancel();
    cloudcore.shutdown().await;
    cluster.stop().await;
    Ok(ExitCode::SUCCESS)
}
