//! Wedge's `cloudcore`: what edges talk to.
//!
//! - [`cloudhub`]: CloudHub, the TLS WebSocket server edges dial, one acknowledged session per edge.
//! - [`cloudstream`]: the kubelet endpoint of every edge (logs, exec, port-forward), carried
//!   to the edges over their CloudHub connections.
//! - [`edgecontroller`]: EdgeController, the shared watches that say what each edge should hold and
//!   the writer of what edges report.
//! - [`devicecontroller`]: DeviceController, KubeEdge's Device and DeviceModel CRDs, installed at start.
//! - [`router`]: KubeEdge's Rule and RuleEndpoint CRDs, and the route from edges' MQTT buses to
//!   HTTP services.
//! - [`crds`]: what those CRDs share, and their installation.
//! - [`join`]: bootstrap tokens, certificate signing for joining edges, renewals.
//! - [`metrics`]: Prometheus metrics per edge.
//! - [`usage`]: the CPU and memory usage edges push, kept for `kubectl top` and the metrics.
//!
//! [`CloudCore::start`] runs all of it against any API server a `kube::Client` reaches: the
//! embedded one (in-process in `cloudcore` and `wedge up`) or a real cluster's.

pub mod cloudhub;
pub mod cloudstream;
pub mod crds;
pub mod devicecontroller;
pub mod edgecontroller;
pub mod join;
pub mod metrics;
pub mod router;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wedge_pki::{CertifiedKey, Pki, PkiError};

use crate::cloudhub::{HubContext, HubError, HubSettings};
use crate::edgecontroller::Upstream;
use crate::metrics::Metrics;

/// cloudcore's settings.
#[derive(Debug, Clone)]
pub struct CloudCoreConfig {
    /// Where CloudHub's CA and certificates live (`<data_dir>/pki/`).
    pub data_dir: PathBuf,
    /// The hub's settings.
    pub hub: HubSettings,
    /// Names and addresses edges dial the hub at: the serving certificate covers them.
    pub advertise: Vec<String>,
    /// Where to serve Prometheus metrics over plain HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long the certificates edges get are valid (they renew at 70–90% of it).
    pub cert_validity: std::time::Duration,
    /// CloudStream, the edges' kubelet endpoint, if served.
    pub stream: Option<cloudstream::StreamSettings>,
}

impl CloudCoreConfig {
    /// Defaults with the PKI under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            hub: HubSettings::default(),
            advertise: Vec::new(),
            metrics_listen: None,
            cert_validity: std::time::Duration::from_secs(365 * 24 * 3600),
            stream: None,
        }
    }
}

/// Why cloudcore could not start.
#[derive(Debug, thiserror::Error)]
pub enum CloudCoreError {
    /// The certificates.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The hub.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Another cloudcore has this hub's directory.
    #[error(transparent)]
    Locked(#[from] wedge_core::state::LockError),
    /// The hub's directory cannot be made.
    #[error("creating {path}: {source}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CRDs could not be installed (cloudcore needs them before its watches start).
    #[error("cannot install the CustomResourceDefinitions cloudcore serves: {0}")]
    Crds(#[from] crds::CrdError),
    /// The router could not start.
    #[error(transparent)]
    Router(#[from] router::RouterError),
    /// CloudStream could not start.
    #[error(transparent)]
    Stream(#[from] cloudstream::StreamError),
    /// The records of edges' certificates could not be read, or one could not be written.
    #[error("edge certificates: {0}")]
    Certificates(#[from] join::JoinError),
    /// The metrics listener.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The common name of the hub's CA, which signs edges' certificates and the hub's own: not the
/// API server's (`wedge-apiserver-ca`), so an operator can tell which a certificate chains to.
pub const HUB_CA: &str = "wedge-cloudhub-ca";

/// A running cloudcore.
pub struct CloudCore {
    /// Held while cloudcore runs: one cloudcore per hub directory.
    _lock: wedge_core::state::StateLock,
    addr: SocketAddr,
    stream_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    pki: Arc<Pki>,
    certificates: Arc<join::certificates::Certificates>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    watches: JoinSet<()>,
}

impl CloudCore {
    /// Loads or creates the hub's PKI, installs the device and rule CRDs, starts the watches and
    /// the router, and listens.
    pub async fn start(
        client: kube::Client,
        config: CloudCoreConfig,
    ) -> Result<Self, CloudCoreError> {
        wedge_core::state::private_dir(&config.data_dir).map_err(|source| CloudCoreError::Io {
            path: config.data_dir.clone(),
            source,
        })?;
        let lock = wedge_core::state::StateLock::acquire(&config.data_dir)?;
        // The hub's certificate also serves CloudStream: it covers CloudStream's names too.
        let mut names = config.advertise.clone();
        names.extend(
            config
                .stream
                .iter()
                .flat_map(cloudstream::StreamSettings::certificate_names),
        );
        let pki = Arc::new(Pki::load_or_create_with_ca(
            &config.data_dir,
            HUB_CA,
            &names,
        )?);
        let mut definitions = devicecontroller::definitions();
        definitions.extend(router::crds::definitions());
        crds::install(&client, &definitions).await?;
        let shutdown = CancellationToken::new();
        let sessions = Arc::new(cloudhub::sessions::Sessions::default());
        let mut watches = JoinSet::new();
        let routes_changed = Arc::new(router::RouteChanges::default());
        let desired = edgecontroller::watch::start(
            &client,
            sessions.clone(),
            routes_changed.clone(),
            &mut watches,
            &shutdown,
        );
        let router =
            router::Router::new(client.clone(), &desired, routes_changed, shutdown.clone())?;
        let tasks = TaskTracker::new();
        tasks.spawn(router.clone().run());
        let certificates = join::certificates::Certificates::start(
            client.clone(),
            sessions.clone(),
            config.cert_validity,
            &tasks,
            &shutdown,
        )
        .await?;
        let metrics = Arc::new(Metrics::default());
        let (stream_addr, kubelet_endpoint) = match &config.stream {
            Some(settings) => {
                let context = Arc::new(cloudstream::StreamContext {
                    sessions: sessions.clone(),
                    desired: desired.clone(),
                    usage: metrics.usage.clone(),
                    node_domain: settings.node_domain.clone(),
                });
                let listening =
                    cloudstream::start(settings, &pki, context, shutdown.clone(), &tasks).await?;
                let endpoint = settings.kubelet_endpoint(listening.addr.port());
                (Some(listening.addr), Some(endpoint))
            }
            None => (None, None),
        };
        let ctx = Arc::new(HubContext {
            settings: config.hub.clone(),
            upstream: Upstream::new(client.clone(), desired.clone(), router, kubelet_endpoint)
                .with_certificates(certificates.clone()),
            desired,
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            join: join::JoinContext {
                client,
                pki: pki.clone(),
                cert_validity: config.cert_validity,
                certificates: certificates.clone(),
                sessions,
            },
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        });
        let listener = cloudhub::bind(&config.hub).await?;
        let addr = listener.local_addr().map_err(|source| HubError::Listen {
            addr: config.hub.listen,
            source,
        })?;
        let acceptor = TlsAcceptor::from(Arc::new(cloudhub::tls_config(&pki)?));
        tasks.spawn(cloudhub::serve(
            listener,
            acceptor,
            ctx.clone(),
            tasks.clone(),
        ));
        let metrics_addr = match config.metrics_listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|source| CloudCoreError::Metrics {
                        addr: listen,
                        source,
                    })?;
                let bound = listener.local_addr().ok();
                tasks.spawn(wedge_pki::metrics::serve(
                    listener,
                    move || metrics.encode(),
                    shutdown.clone(),
                    tasks.clone(),
                ));
                bound
            }
            None => None,
        };
        tracing::info!(%addr, "CloudHub listening");
        Ok(Self {
            _lock: lock,
            addr,
            stream_addr,
            metrics_addr,
            pki,
            certificates,
            shutdown,
            tasks,
            watches,
        })
    }

    /// The address CloudHub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address CloudStream (the edges' kubelet endpoint) listens on, if it does.
    pub fn stream_addr(&self) -> Option<SocketAddr> {
        self.stream_addr
    }

    /// The address metrics are served on, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The CA edges pin, as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca.cert_pem
    }

    /// The CA certificate's file.
    pub fn ca_path(&self) -> PathBuf {
        self.pki.ca_cert_path()
    }

    /// Issues a client certificate for the edge `node`, as joining does, for edges provisioned
    /// by the cloud's operator directly (the local edge of `wedge up`). It is recorded as a
    /// join's is, and the node's earlier certificates are revoked.
    pub async fn issue_edge_certificate(&self, node: &str) -> Result<CertifiedKey, CloudCoreError> {
        let certified = self
            .pki
            .issue_client(&format!("system:node:{node}"), &["system:nodes"])?;
        let issued = join::signer::issued(&certified.cert_pem, "issued by wedge up".into())?;
        self.certificates
            .update(node, |record| {
                let now = jiff::Timestamp::now();
                record.revoke_all(now, "wedge up issued the node a new certificate", false);
                record.add(issued.clone(), now);
                Ok(true)
            })
            .await?;
        Ok(certified)
    }

    /// Whether the edge certificate in `pem` may still be used (`Err`: why not).
    pub fn edge_certificate_usable(&self, pem: &str) -> Result<(), String> {
        let identity = wedge_pki::pem_to_der(pem)
            .and_then(|der| cloudhub::identity::identity_of_certificate(&der))
            .ok_or("not an edge certificate")?;
        self.certificates
            .check(&identity.node, &identity.certificate)
    }

    /// Closes every session and stops.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.watches.shutdown().await;
    }
}
