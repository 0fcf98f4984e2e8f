//! CloudStream: the kubelet's streaming endpoint for every edge, served by cloudcore.
//!
//! kube-apiserver reaches a node's logs, exec, attach and port-forward at the node's kubelet
//! endpoint (the Node's `status.addresses` and `daemonEndpoints.kubeletEndpoint.Port`), presenting
//! its kubelet client certificate. Edges sit behind NAT and dial out, so cloudcore serves that
//! endpoint for all of them: it makes each edge's Node point here (see [`node_endpoint`]), finds
//! the pod's node, and carries the request to the edge as a stream on the connection the edge
//! already has (`docs/PROTOCOL.md`, streams). Nothing to configure on the API server's hosts:
//! no second tunnel, no iptables. The embedded API server reaches nodes the same way, so one
//! path serves both setups.
//!
//! Resource usage (`kubectl top`) is served per node under `/nodes/{node}/...`: a kubelet path
//! names no node, and here one address serves them all (see [`usage`]).
//!
//! Who may call: any client whose certificate chains to the kubelet client CA (the API
//! server's; kube-apiserver presents `--kubelet-client-certificate`). The API server has already
//! authorised the user for the subresource, as it does for kubelets.

mod logs;
pub mod node_endpoint;
mod remotecommand;
mod usage;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wedge_apiserver::pki::Pki;

use crate::controller::Desired;
use crate::hub::sessions::Sessions;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The response body: whole for errors, streamed for logs. A stream that breaks off (its edge
/// went away) ends the body in an error, so the client sees a failure, not a clean end.
pub(crate) type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Why a streamed body broke off.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A whole body.
pub(crate) fn whole(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Where CloudStream listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Where to listen (kubelet's port by default, 10250).
    pub listen: SocketAddr,
    /// The address the API server dials to reach it: what edges' Nodes say.
    pub advertise: String,
    /// The CA that signs the API server's kubelet client certificate (DER).
    pub client_ca: Vec<Vec<u8>>,
}

/// Why CloudStream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The TLS configuration.
    #[error("CloudStream TLS setup: {0}")]
    Tls(String),
    /// The port.
    #[error("CloudStream cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the request handlers share.
pub(crate) struct StreamContext {
    pub sessions: Arc<Sessions>,
    pub desired: Desired,
    /// The usage edges push, for `/nodes/{node}/usage` and `.../metrics/resource`.
    pub usage: Arc<crate::usage::UsageStore>,
}

/// TLS: the hub's serving certificate; client certificates required, chained to `client_ca`.
fn tls_config(pki: &Pki, client_ca: &[Vec<u8>]) -> Result<rustls::ServerConfig, StreamError> {
    let tls = |e: &dyn std::fmt::Display| StreamError::Tls(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving.key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut roots = RootCertStore::empty();
    for ca in client_ca {
        roots
            .add(CertificateDer::from(ca.clone()))
            .map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A running CloudStream listener.
pub(crate) struct Listening {
    /// The bound address.
    pub addr: SocketAddr,
}

/// Binds `settings.listen` and serves until `shutdown`; connections are tracked by `tasks`.
pub(crate) async fn start(
    settings: &StreamSettings,
    pki: &Pki,
    ctx: Arc<StreamContext>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Listening, StreamError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(pki, &settings.client_ca)?));
    let listen = settings.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StreamError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StreamError::Listen {
            addr: listen,
            source,
        })?;
    tasks.spawn(accept(listener, acceptor, ctx, shutdown, tasks.clone()));
    tracing::info!(%addr, advertise = settings.advertise, "CloudStream (the edges' kubelet endpoint) listening");
    Ok(Listening { addr })
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<StreamContext>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("CloudStream accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, ctx, shutdown) = (acceptor.clone(), ctx.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = connection(tcp, peer, acceptor, ctx) => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<StreamContext>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, "CloudStream TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "CloudStream TLS handshake timed out");
            return;
        }
    };
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(req, &ctx).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, "CloudStream connection: {e}");
    }
}

/// A `metav1.Status` response.
pub(crate) fn status_response(status: &serde_json::Value) -> Response<Body> {
    let code = status
        .get("code")
        .and_then(serde_json::Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(whole(Bytes::from(status.to_string())))
        .unwrap_or_default()
}

/// A failure Status response.
pub(crate) fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    status_response(&wedge_core::protocol::stream::status(code, reason, message))
}

async fn route(req: Request<Incoming>, ctx: &StreamContext) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&http::Method::GET, ["healthz"]) => Response::new(whole(Bytes::from_static(b"ok"))),
        (&http::Method::GET, ["containerLogs", namespace, pod, container]) => {
            logs::serve(ctx, namespace, pod, container, req.uri().query()).await
        }
        (
            &http::Method::GET | &http::Method::POST,
            [sub @ ("exec" | "attach"), namespace, pod, container],
        ) => {
            let (exec, namespace, pod, container) = (
                *sub == "exec",
                (*namespace).to_owned(),
                (*pod).to_owned(),
                (*container).to_owned(),
            );
            remotecommand::serve(ctx, req, exec, &namespace, &pod, &container).await
        }
        (&http::Method::GET, ["nodes", node, "usage"]) => usage::usage(ctx, node),
        (&http::Method::GET, ["nodes", node, "metrics", "resource"]) => {
            usage::resource_metrics(ctx, node)
        }
        (&http::Method::GET, ["metrics", "resource"]) => usage::unattributed(),
        (_, ["containerLogs", ..]) => failure(
            405,
            "MethodNotAllowed",
            "/containerLogs/{namespace}/{pod}/{container} takes GET",
        ),
        _ => failure(404, "NotFound", &format!("no such path: {path}")),
    }
}

/// The node a pod is bound to, or the `Status` that says why there is none.
pub(crate) fn node_of(
    ctx: &StreamContext,
    namespace: &str,
    pod: &str,
) -> Result<String, serde_json::Value> {
    let failure = wedge_core::protocol::stream::status;
    let Some(found) = ctx.desired.pod(namespace, pod) else {
        return Err(failure(
            404,
            "NotFound",
            &format!("pods \"{pod}\" not found in namespace {namespace} on any edge"),
        ));
    };
    found
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            failure(
                400,
                "BadRequest",
                &format!("pod {pod} does not have a host assigned"),
            )
        })
}
