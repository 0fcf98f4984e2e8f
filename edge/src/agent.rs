//! The whole edge agent: what `edgecore` and `wedge up` run.
//!
//! Joins the cloud on first start (with a bootstrap token), then runs EdgeHub, Edged, DeviceTwin,
//! EventBus (with the uploads Rules route to the cloud), the built-in mappers and the certificate
//! rotation over one SQLite database, until shutdown. Pods run on the in-process Wasm runtime
//! and, when the edge has containerd, on containerd through CRI
//! ([`ContainerRuntime`]). Pods reach devices and topics through DeviceTwin and EventBus (the
//! `wedge:device` and `wedge:messaging` host functions).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::join_token::JoinToken;
use wedge_core::runtime::RuntimeService;
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::{RuntimeConfig, WasmRuntime};
use wedge_shims::CriRuntime;

use crate::devicetwin::DeviceTwin;
use crate::edged::node::NodeFacts;
use crate::edged::pod_workers::{PodWorkers, WorkerConfig};
use crate::edged::runtimes::{RuntimeHandle, Runtimes};
use crate::edged::{Edged, EdgedConfig};
use crate::edgehub::{EdgeHub, EdgeHubConfig};
use crate::eventbus::uploads::Uploads;
use crate::eventbus::{BrokerChoice, EventBus};
use crate::metamanager::MetaManager;
use crate::store::Database;
use crate::tls::EdgeCredentials;

/// kubelet's default CRI endpoint: containerd's socket.
pub const DEFAULT_CRI_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// Whether the edge runs containers, and through which containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRuntime {
    /// Wasm only.
    None,
    /// containerd at [`DEFAULT_CRI_ENDPOINT`] if it answers at start, else Wasm only.
    Detect,
    /// containerd at this endpoint, offered even while it is down (pods wait for it).
    Endpoint(String),
}

/// The pod network written for containerd when it has none (see `wedge_shims::cni`).
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// containerd's CNI config directory.
    pub conf_dir: PathBuf,
    /// The pods' subnet.
    pub subnet: String,
    /// The bridge's name.
    pub bridge: String,
}

impl Default for PodNetwork {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            subnet: "10.88.0.0/16".into(),
            bridge: "wedge0".into(),
        }
    }
}

/// edgecore's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the database, certificates, images and pod logs live.
    pub root: PathBuf,
    /// CloudHub's address, `host:port`.
    pub cloud: String,
    /// This edge's node name.
    pub node: String,
    /// This node's address; found from the route to the cloud when not given.
    pub node_ip: Option<String>,
    /// A bootstrap token, to join on first start.
    pub token: Option<String>,
    /// Registries reached over plain HTTP (shorthand for a `hosts.toml` whose server is
    /// `http://<registry>`).
    pub insecure_registries: Vec<String>,
    /// containerd's registry host directory (`config_path`: `<registry>/hosts.toml` files with
    /// mirrors), read by the Wasm runtime too. edgecore's flag defaults to containerd's usual
    /// `/etc/containerd/certs.d`; `None` reads no files.
    pub registry_config_dir: Option<PathBuf>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Copy pods' output to this process's output.
    pub echo_logs: bool,
    /// How often the node status is reported.
    pub node_status_interval: Duration,
    /// How often the lease is renewed.
    pub lease_interval: Duration,
    /// How often resource usage is sampled and sent (`kubectl top`).
    pub usage_interval: Duration,
    /// The longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// The MQTT broker EventBus uses: the operator's, or the embedded one listening here.
    pub mqtt: BrokerChoice,
    /// Which of MetaManager's stored objects are encrypted at rest (`--encryption-provider-config`,
    /// kube-apiserver's `EncryptionConfiguration`); empty: none.
    pub encryption: wedge_core::encryption::EncryptionConfig,
    /// Who may use the bus (the embedded broker's users and ACLs), or EventBus's login to the
    /// operator's broker.
    pub mqtt_auth: crate::eventbus::auth::BusAuthConfig,
    /// Where edgecore serves its Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Components to add to the image store under a name before anything starts, as
    /// `wedge image import` does (the samples of `wedge up`).
    pub preload: Vec<(String, PathBuf)>,
    /// Containers through containerd, or not.
    pub container_runtime: ContainerRuntime,
    /// The cgroup pods' cgroups go under (kubelet's `--cgroup-root`).
    pub cgroup_root: Option<String>,
    /// Whether containers may run privileged.
    pub allow_privileged: bool,
    /// How many pods the node accepts (kubelet's `--max-pods`).
    pub max_pods: u32,
    /// When containers' logs are rotated, for both runtimes (`--container-log-max-size`,
    /// `--container-log-max-files`).
    pub log_limits: wedge_core::logrotation::LogLimits,
    /// The network written for containerd when its CNI directory holds none; `None` writes
    /// nothing.
    pub pod_network: Option<PodNetwork>,
    /// The directory local volumes live under, if this edge offers local storage to claims
    /// (`wedge_core::storage`).
    pub local_volume_root: Option<PathBuf>,
}

impl AgentConfig {
    /// Defaults for `node` under `root`, dialling `cloud`.
    pub fn new(
        root: impl Into<PathBuf>,
        cloud: impl Into<String>,
        node: impl Into<String>,
    ) -> Self {
        Self {
            root: root.into(),
            cloud: cloud.into(),
            node: node.into(),
            node_ip: None,
            token: None,
            insecure_registries: Vec::new(),
            registry_config_dir: None,
            labels: BTreeMap::new(),
            echo_logs: false,
            encryption: Default::default(),
            node_status_interval: Duration::from_secs(60),
            lease_interval: Duration::from_secs(10),
            usage_interval: Duration::from_secs(15),
            preload: Vec::new(),
            mqtt: BrokerChoice::Embedded(std::net::SocketAddr::from(([127, 0, 0, 1], 1883))),
            mqtt_auth: Default::default(),
            metrics_listen: None,
            reconnect_max: Duration::from_secs(30),
            container_runtime: ContainerRuntime::Detect,
            cgroup_root: None,
            allow_privileged: false,
            max_pods: 110,
            log_limits: Default::default(),
            pod_network: Some(PodNetwork::default()),
            local_volume_root: None,
        }
    }
}

/// Why the agent could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The edge has no certificate and no token to get one.
    #[error(
        "this edge has not joined a cloud yet ({0} holds no certificate): start it once with --token (`wedge token create` on the cloud makes one)"
    )]
    NotJoined(PathBuf),
    /// The token does not parse.
    #[error("the token is not valid: {0}")]
    Token(String),
    /// Joining failed.
    #[error(transparent)]
    Join(#[from] crate::join::JoinError),
    /// A component could not be preloaded.
    #[error("preloading {0}: {1}")]
    Preload(String, String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The task reading MetaManager's objects at start ended without an answer.
    #[error("reading the stored objects failed: {0}")]
    Load(String),
    /// EventBus could not start.
    #[error(transparent)]
    EventBus(#[from] crate::eventbus::EventBusError),
    /// `--metrics-listen` cannot be listened on.
    #[error("--metrics-listen {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] wedge_edged_wasm::RuntimeStartError),
    /// The container runtime endpoint is not usable.
    #[error("--container-runtime-endpoint: {0}")]
    ContainerRuntime(#[from] wedge_shims::ConnectError),
    /// A task of the agent panicked; the others were stopped.
    #[error("the edge's {task} task failed: {why}")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// Its panic.
        why: String,
    },
    /// A directory could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The address this machine uses to reach `cloud` (no packet is sent: a UDP socket is only
/// connected, which picks the route).
pub fn route_ip(cloud: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let target = cloud.to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// Runs the agent until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    wedge_core::state::private_dir(&config.root).map_err(|source| AgentError::Io {
        path: config.root.clone(),
        source,
    })?;
    // The database first: its lock keeps a second edgecore on this root from joining over
    // this one's credentials or running its pods.
    let db = Database::open_encrypted(&config.root.join("edge.db"), config.encryption.clone())?;
    if let Some(volumes) = &config.local_volume_root {
        std::fs::create_dir_all(volumes).map_err(|source| AgentError::Io {
            path: volumes.clone(),
            source,
        })?;
        tracing::info!(root = %volumes.display(), "offering local storage to claims");
    }
    let creds = EdgeCredentials::new(config.root.join("pki"));
    if !creds.exists() {
        let token = config
            .token
            .as_deref()
            .ok_or_else(|| AgentError::NotJoined(creds.dir().to_owned()))?;
        let token: JoinToken = token
            .parse()
            .map_err(|e: wedge_core::join_token::TokenError| AgentError::Token(e.to_string()))?;
        crate::join::join(&config.cloud, &token, &config.node, &creds).await?;
        tracing::info!(node = config.node, cloud = config.cloud, "joined the cloud");
    }

    let mut runtime_config = RuntimeConfig::new(config.root.join("wasm"));
    // One registry configuration for the Wasm runtime and the image-kind resolver, from the
    // directory the edge's containerd reads: mirrors and plain-HTTP registries agree.
    let registries = wedge_oci::RegistryHosts::new(
        config.registry_config_dir.clone(),
        &config.insecure_registries,
    );
    if let Some(dir) = &config.registry_config_dir {
        if tokio::fs::try_exists(dir).await.unwrap_or(false) {
            tracing::info!(dir = %dir.display(), "registry hosts (mirrors) read from this directory, as containerd's config_path");
        } else {
            tracing::debug!(dir = %dir.display(), "no registry hosts directory: registries are reached directly");
        }
    }
    runtime_config.registries = registries.clone();
    runtime_config.echo_logs = config.echo_logs;
    runtime_config.log_limits = config.log_limits;
    // Every object is read (and decrypted) once, here: off the async workers.
    let meta = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || MetaManager::load(&db))
            .await
            .map_err(|e| AgentError::Load(e.to_string()))??
    };
    let usage = crate::edged::usage::feed();
    let twin = DeviceTwin::new(&db, &meta).await;
    let uploads = Arc::new(Uploads::new(
        meta.clone(),
        db.outbox(),
        crate::eventbus::uploads::MAX_PENDING,
    ));
    let refusals = Arc::new(crate::eventbus::auth::Refusals::default());
    let (bus, bus_driver) = EventBus::new(
        &config.node,
        &config.mqtt,
        &config.mqtt_auth,
        refusals.clone(),
        uploads,
    )?;
    let pod_logins = bus.logins();
    let backends = Backends {
        twin: Arc::new(twin.clone()),
        bus: Arc::new(bus),
    };
    let runtime = WasmRuntime::new(runtime_config, backends)?;
    for (name, path) in &config.preload {
        let wasm = std::fs::read(path).map_err(|source| AgentError::Io {
            path: path.clone(),
            source,
        })?;
        runtime
            .images()
            .add_component(name, wasm)
            .await
            .map_err(|e| AgentError::Preload(name.clone(), e.to_string()))?;
    }

    let mut runtimes = Runtimes::new().with(RuntimeHandle::new(Arc::new(runtime.clone())));
    let cri = containerd(&config).await?;
    if let Some(cri) = &cri {
        runtimes = runtimes.with(RuntimeHandle::new(Arc::new(cri.clone())));
    }
    tracing::info!(runtimes = ?runtimes.handlers(), "runtimes offered");
    let mut worker_config = WorkerConfig::new(config.root.join("pods"));
    worker_config.cgroup_parent = config.cgroup_root.clone();
    let workers = PodWorkers::new(runtimes.clone(), worker_config);

    let node_ip = config
        .node_ip
        .clone()
        .or_else(|| route_ip(&config.cloud))
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut edged_config = EdgedConfig::new(NodeFacts {
        name: config.node.clone(),
        ip: node_ip,
        runtimes: runtimes.handlers().into_iter().map(str::to_owned).collect(),
        labels: config.labels.clone(),
        max_pods: config.max_pods,
        ready_since: jiff::Timestamp::now(),
        local_volume_root: config.local_volume_root.clone(),
    });
    edged_config.node_status_interval = config.node_status_interval;
    edged_config.lease_interval = config.lease_interval;
    edged_config.usage_interval = config.usage_interval;
    edged_config.allow_privileged = config.allow_privileged;
    edged_config.log_limits = config.log_limits;
    let files = credential_files(&config.root);
    edged_config.node_credentials =
        tokio::task::spawn_blocking(move || crate::edged::pull_secrets::node_credentials(&files))
            .await
            .unwrap_or_default();
    let streams = crate::edgestream::EdgeStream::new(workers.clone());
    // Pods' ServiceAccount tokens are asked of the cloud over EdgeHub's connection.
    let (token_queries, token_answers) = tokio::sync::mpsc::channel(64);
    let tokens = crate::edged::tokens::TokenManager::new(token_queries);
    let mut edged = Edged::new(
        workers,
        meta.clone(),
        db.outbox(),
        usage.clone(),
        edged_config,
    )
    .with_tokens(tokens)
    .with_logins(pod_logins);
    if cri.is_some() {
        // Two runtimes: a pod without a RuntimeClass goes where its images' kind says.
        match wedge_oci::ImageKinds::new(registries.clone()) {
            Ok(kinds) => edged = edged.with_image_kinds(Arc::new(kinds)),
            Err(error) => {
                tracing::warn!(%error, "cannot ask registries for image kinds: pods without a RuntimeClass run on Wasm unless containerd holds their images");
            }
        }
    }
    let tls_creds = creds.clone();
    let mut hub_config = EdgeHubConfig::new(
        config.cloud.clone(),
        config.node.clone(),
        Arc::new(move || {
            crate::tls::client_config(&tls_creds)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        }),
    );
    hub_config.backoff_max = config.reconnect_max;
    let refused_reports = hub_config.refused.clone();
    let retry = crate::reports::retry_held(db.outbox(), shutdown.clone());
    let hub = EdgeHub::new(hub_config, meta, db.outbox(), usage)
        .with_streams(streams)
        .with_token_queries(token_answers);
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::MetricsListen { addr, source })?;
            tracing::info!(%addr, "serving metrics at /metrics");
            Some(listener)
        }
        None => None,
    };
    let mut tasks = Supervisor::default();
    tasks.spawn("edged", edged.run(shutdown.clone()));
    tasks.spawn("edgehub", hub.run(shutdown.clone()));
    tasks.spawn("outbox retry", retry);
    tasks.spawn("devicetwin", twin.clone().run(shutdown.clone()));
    tasks.spawn("eventbus", bus_driver.run(twin.clone(), shutdown.clone()));
    if let Some(listener) = metrics {
        tasks.spawn(
            "metrics",
            crate::metrics::serve(listener, refusals, refused_reports, shutdown.clone()),
        );
    }
    tasks.spawn("mappers", crate::mappers::run(twin, shutdown.clone()));
    tasks.spawn(
        "certificate rotation",
        crate::rotation::run(config.cloud.clone(), creds, shutdown.clone()),
    );
    tracing::info!(node = config.node, cloud = config.cloud, "edgecore running");
    let outcome = tasks.run(&shutdown).await;
    // Edged has let go of the pods: containers keep running for the next start to adopt, as
    // the kubelet's do across its restarts. Wasm guests live in this process and end with it:
    // all at once, each log written out to its last line.
    if tokio::time::timeout(WASM_STOP_LIMIT, runtime.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            limit = ?WASM_STOP_LIMIT,
            "Wasm pods did not all stop in time: exiting without them"
        );
    }
    if let Some(cri) = cri {
        cri.shutdown().await;
    }
    // Last, once nothing writes any more: what is queued is committed before the process
    // exits, waited for here rather than by whichever task drops the last handle.
    db.close().await;
    outcome
}

/// The most edgecore waits at exit for its Wasm pods to end. They end at their next epoch
/// tick, a handler once the event in hand is done (bounded by its own time budget): this only
/// bounds a bug.
const WASM_STOP_LIMIT: Duration = Duration::from_secs(30);

/// The agent's long-running tasks, each named for the log. Each runs until shutdown; one that
/// panics is a bug that restarting inside the process would only repeat, so the supervisor says
/// so loudly and stops the others: edgecore exits with an error and its service manager starts
/// it again, to adopt its pods. A task may end early on its own (the certificate rotation once
/// the cloud has revoked the edge, which it reports itself): that is logged, and the rest run on.
#[derive(Default)]
struct Supervisor {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task to end: the first to panic cancels `shutdown` and is the error.
    async fn run(mut self, shutdown: &CancellationToken) -> Result<(), AgentError> {
        let mut failed = None;
        while let Some(ended) = self.set.join_next_with_id().await {
            let (id, panic) = match ended {
                Ok((id, ())) => (id, None),
                Err(error) => (error.id(), error.is_panic().then(|| error.to_string())),
            };
            let task = self.names.get(&id).copied().unwrap_or("a task");
            match panic {
                Some(why) => {
                    tracing::error!(task, why, "an edge task failed: stopping edgecore");
                    shutdown.cancel();
                    failed.get_or_insert(AgentError::TaskFailed { task, why });
                }
                None if !shutdown.is_cancelled() => {
                    tracing::warn!(task, "an edge task ended before shutdown; the rest go on");
                }
                None => {}
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// How long containerd may take to answer at start.
const CRI_PROBE: Duration = Duration::from_secs(3);

/// containerd through CRI, as the settings ask: detected at the default socket (used only if it
/// answers), or at the endpoint given (used even while down). Writes the pod network when
/// containerd has none.
async fn containerd(config: &AgentConfig) -> Result<Option<CriRuntime>, AgentError> {
    let (endpoint, required) = match &config.container_runtime {
        ContainerRuntime::None => return Ok(None),
        ContainerRuntime::Detect => (DEFAULT_CRI_ENDPOINT, false),
        ContainerRuntime::Endpoint(endpoint) => (endpoint.as_str(), true),
    };
    if !required && !wedge_shims::socket_path(endpoint)?.exists() {
        tracing::info!(
            endpoint,
            "no containerd found: this edge runs Wasm pods only"
        );
        return Ok(None);
    }
    let cri = CriRuntime::connect(endpoint)?;
    let answer = match tokio::time::timeout(CRI_PROBE, cri.version()).await {
        Ok(Ok(version)) => Ok(version),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CRI_PROBE:?}")),
    };
    match answer {
        Ok(version) => tracing::info!(
            endpoint,
            version,
            "containerd found: this edge runs container pods too"
        ),
        Err(error) if required => tracing::warn!(
            endpoint,
            error,
            "containerd does not answer yet: container pods wait for it"
        ),
        Err(error) => {
            tracing::info!(
                endpoint,
                error,
                "containerd does not answer: this edge runs Wasm pods only"
            );
            cri.shutdown().await;
            return Ok(None);
        }
    }
    if let Some(network) = &config.pod_network {
        let data_dir = config.root.join("cni");
        match wedge_shims::cni::write_bridge_config(
            &network.conf_dir,
            &network.bridge,
            &network.subnet,
            &data_dir,
        ) {
            Ok(Some(file)) => {
                tracing::info!(file = %file.display(), subnet = network.subnet, "wrote a pod network for containerd (it had none)")
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot write a pod network for containerd: pods without hostNetwork will not start until one exists")
            }
        }
    }
    Ok(Some(cri))
}

/// Where the edge's own registry credentials are read, in order: `config.json` in its root (as
/// the kubelet reads `/var/lib/kubelet/config.json`), then the user's `~/.docker/config.json`.
fn credential_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("config.json")];
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".docker").join("config.json"));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until `shutdown`, as every agent task does.
    async fn until(shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_stops_the_others_and_is_the_error() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("steady", until(shutdown.clone()));
        tasks.spawn("faulty", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            panic!("a bug");
        });
        let outcome = tasks.run(&shutdown).await;
        assert!(shutdown.is_cancelled(), "the others were told to stop");
        match outcome {
            Err(AgentError::TaskFailed { task, why }) => {
                assert_eq!(task, "faulty");
                assert!(why.contains("panicked"), "{why}");
            }
            other => panic!("expected the failed task, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_ending_on_its_own_leaves_the_rest_running_until_shutdown() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("steady", until(shutdown.clone()));
        tasks.spawn("done early", async {});
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.cancel();
        });
        let started = tokio::time::Instant::now();
        tasks.run(&shutdown).await.expect("a clean stop");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(60),
            "ran until shutdown"
        );
    }
}
