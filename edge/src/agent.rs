//! The whole edge agent: what `edgecore` and `wedge up` run.
//!
//! Joins the cloud on first start (with a bootstrap token), then runs EdgeHub, Edged, DeviceTwin,
//! EventBus (with the uploads Rules route to the cloud), the built-in mappers and the certificate rotation over one SQLite database and one
//! Wasm runtime, until shutdown. Pods reach devices and topics through DeviceTwin and EventBus
//! (the `wedge:device` and `wedge:messaging` host functions).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::join_token::JoinToken;
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::{RuntimeConfig, WasmRuntime};

use crate::devicetwin::DeviceTwin;
use crate::edged::node::NodeFacts;
use crate::edged::pod_workers::{PodWorkers, WorkerConfig};
use crate::edged::runtimes::{RuntimeHandle, Runtimes};
use crate::edged::{Edged, EdgedConfig, Signals};
use crate::edgehub::{EdgeHub, EdgeHubConfig};
use crate::eventbus::uploads::Uploads;
use crate::eventbus::{BrokerChoice, EventBus};
use crate::store::Database;
use crate::tls::EdgeCredentials;

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
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Copy pods' output to this process's output.
    pub echo_logs: bool,
    /// How often the node status is reported.
    pub node_status_interval: Duration,
    /// How often the lease is renewed.
    pub lease_interval: Duration,
    /// The longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// The MQTT broker EventBus uses: the operator's, or the embedded one listening here.
    pub mqtt: BrokerChoice,
    /// Components to add to the image store under a name before anything starts, as
    /// `wedge image import` does (the samples of `wedge up`).
    pub preload: Vec<(String, PathBuf)>,
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
            labels: BTreeMap::new(),
            echo_logs: false,
            node_status_interval: Duration::from_secs(60),
            lease_interval: Duration::from_secs(10),
            preload: Vec::new(),
            mqtt: BrokerChoice::Embedded(std::net::SocketAddr::from(([127, 0, 0, 1], 1883))),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Why the agent could not start.
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
    /// EventBus could not start.
    #[error(transparent)]
    EventBus(#[from] crate::eventbus::EventBusError),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] wedge_edged_wasm::RuntimeStartError),
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
    std::fs::create_dir_all(&config.root).map_err(|source| AgentError::Io {
        path: config.root.clone(),
        source,
    })?;
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
    runtime_config.insecure_registries = config.insecure_registries.clone();
    runtime_config.echo_logs = config.echo_logs;
    let db = Database::open(&config.root.join("edge.db"))?;
    let signals = Arc::new(Signals::default());
    let twin = DeviceTwin::new(&db, signals.clone());
    let uploads = Arc::new(Uploads::new(
        db.meta(),
        db.outbox(),
        signals.clone(),
        crate::eventbus::uploads::MAX_PENDING,
    ));
    let (bus, bus_driver) = EventBus::new(&config.node, &config.mqtt, uploads)?;
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

    let runtimes = Runtimes::new().with(RuntimeHandle::new(Arc::new(runtime.clone())));
    let workers = PodWorkers::new(
        runtimes.clone(),
        WorkerConfig::new(config.root.join("pods")),
    );

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
        max_pods: 110,
        ready_since: jiff::Timestamp::now(),
    });
    edged_config.node_status_interval = config.node_status_interval;
    edged_config.lease_interval = config.lease_interval;
    let edged = Edged::new(
        workers,
        db.meta(),
        db.outbox(),
        signals.clone(),
        edged_config,
    );
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
    let hub = EdgeHub::new(hub_config, db.meta(), db.outbox(), signals);
    let mut tasks = JoinSet::new();
    tasks.spawn(edged.run(shutdown.clone()));
    tasks.spawn(hub.run(shutdown.clone()));
    tasks.spawn(twin.clone().run(shutdown.clone()));
    tasks.spawn(bus_driver.run(twin.clone(), shutdown.clone()));
    tasks.spawn(crate::mappers::run(twin, shutdown.clone()));
    tasks.spawn(crate::rotation::run(
        config.cloud.clone(),
        creds,
        shutdown.clone(),
    ));
    tracing::info!(node = config.node, cloud = config.cloud, "edgecore running");
    while tasks.join_next().await.is_some() {}
    runtime.shutdown();
    Ok(())
}
