//! CloudHub: the TLS server edges dial.
//!
//! One port serves three things over HTTPS: the edge WebSocket (`/v1/edge`, mutual TLS: the
//! client certificate says which node the edge is), the join endpoints (`/v1/join/...`, for
//! edges that have only a bootstrap token yet) and `/healthz`. Client certificates are optional
//! at the TLS layer so that joining edges can connect; the WebSocket refuses connections
//! without one. Each edge gets one [`session`]: one multiplexed, acknowledged stream.

pub mod identity;
pub mod session;
pub mod sessions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wedge_core::protocol::{EDGE_PATH, MAX_FRAME_BYTES, Reason, SUBPROTOCOL};
use wedge_pki::Pki;

use crate::edgecontroller::{Desired, Upstream};
use crate::metrics::{Metrics, RefusedLabels};
use sessions::Sessions;

/// The largest request body the join endpoints read.
const MAX_BODY: usize = 64 << 10;

/// CloudHub's settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Unacknowledged frames in flight per edge, at most.
    pub max_in_flight: usize,
    /// How often to ping an edge; three silent intervals end its session. Told in the
    /// welcome: the edge keeps to it.
    pub ping_interval: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 10000)),
            max_in_flight: 32,
            ping_interval: Duration::from_secs(15),
        }
    }
}

/// What every session and request handler shares.
pub struct HubContext {
    /// The settings.
    pub settings: HubSettings,
    /// What each edge should hold.
    pub desired: Desired,
    /// Writes edges' reports to the API.
    pub upstream: Upstream,
    /// The connected edges.
    pub sessions: Arc<Sessions>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Joins and certificate renewals.
    pub join: crate::join::JoinContext,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Where the edges' sessions run: cloudcore waits for them at shutdown, as for the
    /// connections they came on.
    pub tasks: TaskTracker,
}

/// Why CloudHub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The TLS configuration could not be built from the certificates.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The TLS configuration: CloudHub's serving certificate, client certificates verified against
/// the CA but optional (joining edges have none yet), HTTP/1.1 only (WebSocket upgrades).
pub fn tls_config(pki: &Pki) -> Result<rustls::ServerConfig, HubError> {
    wedge_pki::server_tls::tls_config(
        pki,
        &[b"http/1.1"],
        wedge_pki::server_tls::ClientCerts::Optional,
    )
    .map_err(|e| HubError::Tls(e.to_string()))
}

/// Binds `settings.listen`; the accept loop is [`serve`].
pub async fn bind(settings: &HubSettings) -> Result<TcpListener, HubError> {
    TcpListener::bind(settings.listen)
        .await
        .map_err(|source| HubError::Listen {
            addr: settings.listen,
            source,
        })
}

/// Accepts connections until shutdown; connection tasks are tracked by `tasks`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<HubContext>,
    tasks: TaskTracker,
) {
    let shutdown = ctx.shutdown.clone();
    let limits = wedge_pki::listener::Limits::hub();
    wedge_pki::listener::accept(
        listener,
        "hub",
        limits,
        shutdown,
        tasks,
        move |tcp, peer| connection(tcp, peer, acceptor.clone(), ctx.clone()),
    )
    .await;
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<HubContext>,
) {
    let Some(tls) = wedge_pki::listener::handshake(&acceptor, tcp, peer, "hub").await else {
        return;
    };
    let node: Option<identity::EdgeIdentity> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity::identity_of_certificate(c));
    let service = service_fn(move |req: Request<Incoming>| {
        let (ctx, node) = (ctx.clone(), node.clone());
        async move { Ok::<_, Infallible>(route(req, node, peer, ctx).await) }
    });
    // The upgrade request's headers are bounded as the API server's are; after the upgrade,
    // the session's pings end an edge that is gone.
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(wedge_pki::listener::HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, "connection: {e}");
    }
}

fn json_response(status: StatusCode, reason: &Reason, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "reason": reason, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

async fn route(
    req: Request<Incoming>,
    node: Option<identity::EdgeIdentity>,
    peer: SocketAddr,
    ctx: Arc<HubContext>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => Response::new(Full::new(Bytes::from_static(b"ok"))),
        EDGE_PATH => upgrade(req, node, peer, ctx),
        _ => {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return json_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &Reason::RequestTooLarge,
                        &format!("request bodies are limited to {MAX_BODY} bytes"),
                    );
                }
            };
            match crate::join::http::handle(
                &ctx.join,
                &parts.method,
                &path,
                &parts.headers,
                body,
                node.as_ref(),
            )
            .await
            {
                Some(response) => response.map(Full::new),
                None => json_response(StatusCode::NOT_FOUND, &Reason::NotFound, "no such path"),
            }
        }
    }
}

/// Answers the WebSocket handshake of an edge with a client certificate, and starts its session
/// once the connection is upgraded.
fn upgrade(
    mut req: Request<Incoming>,
    node: Option<identity::EdgeIdentity>,
    peer: SocketAddr,
    ctx: Arc<HubContext>,
) -> Response<Full<Bytes>> {
    let refuse = |status, reason: Reason, message: &str| {
        tracing::warn!(%peer, %reason, message, "refused an edge connection");
        ctx.metrics
            .connections_refused
            .get_or_create(&RefusedLabels {
                node: String::new(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
        json_response(status, &reason, message)
    };
    let Some(identity) = node else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            Reason::Unauthorized,
            "CloudHub needs the edge's client certificate, which an edge gets by joining: run edgecore with --token (wedge token create makes one)",
        );
    };
    // A revoked certificate (its Node deleted, its node joined again, or revoked by hand) is
    // refused before anything else; the edge stops dialling.
    if let Err(message) = ctx
        .join
        .certificates
        .check(&identity.node, &identity.certificate)
    {
        ctx.metrics
            .refused(&identity.node, &Reason::CertificateRevoked);
        tracing::warn!(%peer, node = identity.node, serial = identity.certificate.serial, "refused a revoked certificate");
        return json_response(StatusCode::FORBIDDEN, &Reason::CertificateRevoked, &message);
    }
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            Reason::NotWebSocket,
            "this path is a WebSocket",
        );
    };
    let protocol_ok = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !is_upgrade {
        return refuse(
            StatusCode::BAD_REQUEST,
            Reason::NotWebSocket,
            "this path is a WebSocket",
        );
    }
    if !protocol_ok {
        return refuse(
            StatusCode::BAD_REQUEST,
            Reason::UnsupportedProtocol,
            &format!(
                "ask for the WebSocket subprotocol {SUBPROTOCOL}: this edge is too old or too new for this cloud"
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_FRAME_BYTES))
                    .max_frame_size(Some(MAX_FRAME_BYTES))
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(ws, identity, ctx).await;
            }
            Err(e) => tracing::info!(%peer, "WebSocket upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .body(Full::default())
        .unwrap_or_default()
}
