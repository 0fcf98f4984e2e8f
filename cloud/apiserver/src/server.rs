//! The HTTPS server: TLS with rustls (HTTP/2 and HTTP/1.1), client certificates verified
//! against the cluster CA, bearer tokens, and the API behind them. One task accepts; one task
//! per connection serves; all of them end when the server is shut down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::services::ServiceNetwork;
use crate::api::{Api, ApiError};
use crate::auth::{self, Tokens, User};
use crate::authz::components::Component;
use crate::kubelet_client::{KubeletClient, KubeletError};
use crate::storage::{Store, StoreError};
use wedge_pki::server_tls::{ClientCerts, tls_config};
use wedge_pki::{Pki, PkiError};

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the database, certificates and kubeconfig live.
    pub data_dir: PathBuf,
    /// The address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Extra DNS names and IP addresses the serving certificate must cover.
    pub names: Vec<String>,
    /// A token file (`token,user,uid,"groups"` per line), if any.
    pub token_file: Option<PathBuf>,
    /// How many changes of each resource watches can resume from (older versions get 410
    /// Gone); all resources together keep `storage::WINDOWS` times as many.
    pub watch_history: usize,
    /// How many bytes of objects the watch history keeps (older events expire first).
    pub watch_history_bytes: usize,
    /// How many connections the listener holds, in all and per client address.
    pub connection_limits: wedge_pki::listener::Limits,
    /// How long a request's headers, or an idle connection's next request, may take.
    pub header_timeout: std::time::Duration,
    /// The CA that nodes' kubelet serving certificates must chain to (kube-apiserver's
    /// `--kubelet-certificate-authority`). Without it they are not verified, as kube-apiserver
    /// does not verify them without that flag. Read on the first request that reaches a node,
    /// not at start: in the embedded setup cloudcore writes it after the server has started.
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// Where Services' cluster IPs and node ports come from (`--service-cluster-ip-range`,
    /// `--service-node-port-range`).
    pub service_network: ServiceNetwork,
    /// The address the `kubernetes` Service's endpoints name (`--advertise-address`); without,
    /// the listen address, or the host's if that is unspecified or loopback, as kube-apiserver
    /// chooses it.
    pub advertise_address: Option<IpAddr>,
    /// An `EncryptionConfiguration` file (`--encryption-provider-config`): which resources
    /// are encrypted at rest, and with which keys. Without, everything is stored plain, as
    /// kube-apiserver stores it without the flag.
    pub encryption_provider_config: Option<PathBuf>,
}

impl ServerConfig {
    /// A server on `listen` keeping its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            names: Vec::new(),
            token_file: None,
            watch_history: crate::storage::HISTORY,
            watch_history_bytes: crate::storage::HISTORY_BYTES,
            connection_limits: wedge_pki::listener::Limits::api(),
            header_timeout: wedge_pki::listener::HEADER_TIMEOUT,
            kubelet_certificate_authority: None,
            service_network: ServiceNetwork::default(),
            advertise_address: None,
            encryption_provider_config: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The encryption configuration could not be read or is invalid.
    #[error(transparent)]
    Encryption(#[from] wedge_core::encryption::ConfigError),
    /// The API's setup.
    #[error("starting the API: {0}")]
    Api(#[from] ApiError),
    /// The token file.
    #[error(transparent)]
    Tokens(#[from] auth::TokenFileError),
    /// The ServiceAccount token signing key.
    #[error(transparent)]
    ServiceAccountKey(#[from] crate::service_account_tokens::TokenKeyError),
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] wedge_pki::server_tls::TlsConfigError),
    /// The kubelet client (its certificate or TLS setup).
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    /// Binding the listener.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    pki: Arc<Pki>,
    api: Arc<Api>,
    kubeconfig: PathBuf,
    advertise: IpAddr,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    accept: JoinHandle<()>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store, loads or creates the certificates, writes the admin kubeconfig and
    /// starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let dir = &config.data_dir;
        wedge_core::state::private_dir(dir).map_err(|source| ServerError::Io {
            path: dir.clone(),
            source,
        })?;
        // The store first: its lock keeps a second server on this directory from touching
        // the certificates or anything else here.
        let encryption = match &config.encryption_provider_config {
            Some(path) => wedge_core::encryption::EncryptionConfig::load(path)?,
            None => Default::default(),
        };
        let path = dir.join("wedge.db");
        let limits = crate::storage::HistoryLimits {
            events: config.watch_history,
            bytes: config.watch_history_bytes,
        };
        // Opening reads the whole database: off the async workers.
        let open = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Store::open_encrypted(&path, limits, encryption))
        };
        let store = Arc::new(open.await.map_err(|e| ServerError::Io {
            path,
            source: std::io::Error::other(e),
        })??);
        let pki = Arc::new(Pki::load_or_create(dir, &config.names)?);
        let shutdown = CancellationToken::new();
        let kubelet = KubeletClient::new(
            &pki,
            config.kubelet_certificate_authority.clone(),
            shutdown.clone(),
        )?;
        let service_account_tokens = crate::service_account_tokens::ServiceAccountTokens::new(
            &pki.load_or_create_key("sa")?,
        )?;
        let api = Arc::new(
            Api::new(store, shutdown.clone())
                .await?
                .with_kubelet_client(kubelet)
                .with_service_account_tokens(service_account_tokens)
                .with_service_network(config.service_network),
        );
        let tokens = match &config.token_file {
            Some(path) => Tokens::load(path)?,
            None => Tokens::default(),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let admin = pki.load_or_issue_client("admin", "kubernetes-admin", &["system:masters"])?;
        let kubeconfig = dir.join("admin.kubeconfig");
        let server_url = format!("https://{}", client_address(addr));
        crate::kubeconfig::write(&kubeconfig, &server_url, &pki.ca.cert_pem, &admin).map_err(
            |source| ServerError::Io {
                path: kubeconfig.clone(),
                source,
            },
        )?;
        // Each of Wedge's components its own identity, as kubeadm writes `scheduler.conf` and
        // `controller-manager.conf` beside `admin.conf`.
        for component in Component::ALL {
            let cert = pki.load_or_issue_client(component.file(), component.user(), &[])?;
            let path = component_kubeconfig(dir, component);
            crate::kubeconfig::write_for(
                &path,
                component.user(),
                &server_url,
                &pki.ca.cert_pem,
                &cert,
            )
            .map_err(|source| ServerError::Io { path, source })?;
        }

        let acceptor = TlsAcceptor::from(Arc::new(tls_config(
            &pki,
            &[b"h2", b"http/1.1"],
            ClientCerts::Optional,
        )?));
        let tasks = TaskTracker::new();
        let advertise = config
            .advertise_address
            .unwrap_or_else(|| crate::api::services::kubernetes::advertise_address(addr.ip()));
        api.reconcile_services(advertise, addr.port(), true).await;
        tasks.spawn(keep_services(
            api.clone(),
            advertise,
            addr.port(),
            shutdown.clone(),
        ));
        let accept = tokio::spawn(accept_loop(
            listener,
            acceptor,
            api.clone(),
            Arc::new(tokens),
            Bounds {
                limits: config.connection_limits,
                header_timeout: config.header_timeout,
            },
            shutdown.clone(),
            tasks.clone(),
        ));
        tasks.spawn(crate::token_controller::run(
            api.clone(),
            pki.ca.cert_pem.clone(),
            shutdown.clone(),
        ));
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
        Ok(Self {
            addr,
            pki,
            api,
            kubeconfig,
            advertise,
            data_dir: dir.clone(),
            shutdown,
            accept,
            tasks,
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("https://{}", client_address(self.addr))
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca.cert_pem
    }

    /// The certificates.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The admin kubeconfig's path.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig of one of Wedge's components (`<data-dir>/<component>.kubeconfig`),
    /// written at start with a certificate naming its user.
    pub fn component_kubeconfig(&self, component: Component) -> PathBuf {
        component_kubeconfig(&self.data_dir, component)
    }

    /// The address the `kubernetes` Service's endpoints name.
    pub fn advertise_address(&self) -> IpAddr {
        self.advertise
    }

    /// The API (for in-process use).
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// Stops accepting, ends every connection and watch, and waits for their tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.accept.await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Where a component's kubeconfig is kept under the data directory.
pub fn component_kubeconfig(data_dir: &Path, component: Component) -> PathBuf {
    data_dir.join(format!("{}.kubeconfig", component.file()))
}

/// The address a client on this machine dials: loopback when listening on every address.
fn client_address(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Keeps the `kubernetes` Service and its endpoints, as kube-apiserver's controller does.
async fn keep_services(api: Arc<Api>, address: IpAddr, port: u16, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(crate::api::services::kubernetes::INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Its SQLite writes go to the store's writer thread.
        api.reconcile_services(address, port, false).await;
    }
}

/// How the API server's listener is bounded.
#[derive(Clone, Copy)]
struct Bounds {
    limits: wedge_pki::listener::Limits,
    header_timeout: std::time::Duration,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    api: Arc<Api>,
    tokens: Arc<Tokens>,
    bounds: Bounds,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // Requests run in tasks of their own, tracked with the connections: `shutdown` waits for
    // them, so the store is released only once their writes are done.
    let requests = tasks.clone();
    wedge_pki::listener::accept(
        listener,
        "api",
        bounds.limits,
        shutdown,
        tasks,
        move |tcp, peer| {
            serve_connection(
                tcp,
                peer,
                acceptor.clone(),
                api.clone(),
                tokens.clone(),
                bounds.header_timeout,
                requests.clone(),
            )
        },
    )
    .await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    api: Arc<Api>,
    tokens: Arc<Tokens>,
    header_timeout: std::time::Duration,
    requests: TaskTracker,
) {
    let Some(tls) = wedge_pki::listener::handshake(&acceptor, tcp, peer, "api").await else {
        return;
    };
    let cert_user: Option<User> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| auth::user_from_certificate(c));
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (api, tokens, cert_user) = (api.clone(), tokens.clone(), cert_user.clone());
        let requests = requests.clone();
        async move {
            let user = cert_user.or_else(|| {
                let header = req
                    .headers()
                    .get(http::header::AUTHORIZATION)?
                    .to_str()
                    .ok()?;
                let token = auth::bearer_token(header)?;
                tokens
                    .user(token)
                    .cloned()
                    .or_else(|| api.authenticate_token(token))
            });
            // A request runs to its end in a task of its own even when its client goes away:
            // store writes are awaited, and a request's writes (a Service and its IPAddress, an
            // object and its namespace's quota recount) must not stop halfway.
            let handled = requests.spawn(async move { api.handle(req, user).await });
            let response = handled.await.unwrap_or_else(|error| {
                tracing::error!(%error, "a request's handler failed");
                crate::api::error_response(&crate::api::ApiError::Internal(
                    "the request's handler failed".into(),
                ))
            });
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The header timeout also ends an HTTP/1 keep-alive connection idle that long (its timer
    // runs while the server waits for the next request's headers); HTTP/2's pings end a peer
    // that is gone.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    let served = wedge_pki::listener::first_bytes_within(tls, header_timeout, |io| {
        builder.serve_connection_with_upgrades(TokioIo::new(io), service)
    })
    .await;
    match served {
        Some(Err(e)) => tracing::debug!(%peer, "connection: {e}"),
        Some(Ok(())) => {}
        None => tracing::debug!(%peer, "no request within the header timeout"),
    }
}
