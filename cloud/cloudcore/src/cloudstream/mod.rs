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
//! Resource usage (`kubectl top`) is served per node under `/nodes/{node}/...`, and at the
//! kubelet's `/metrics/resource` for a request sent to an edge's own name (see [`usage`] and
//! [`node_endpoint`]): a kubelet path that names no pod names no node.
//!
//! Who may call: any client whose certificate chains to the kubelet client CA (the API
//! server's; kube-apiserver presents `--kubelet-client-certificate`). The API server has already
//! authorised the user for the subresource, as it does for kubelets.

mod logs;
pub mod node_endpoint;
mod portforward;
mod remotecommand;
mod spdy;
mod usage;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wedge_pki::Pki;
use wedge_pki::server_tls::ClientCerts;

use wedge_core::protocol::mux::{Event, StreamReceiver, StreamSender};

use crate::cloudhub::sessions::Sessions;
use crate::edgecontroller::Desired;

/// The most streams one HTTP/2 connection carries: the API server follows every log of every
/// edge on one connection, so this is the bound on logs followed at once, not a few hundred as
/// HTTP/2 servers usually allow.
const MAX_STREAMS_PER_CONNECTION: u32 = 100_000;
/// An HTTP/2 stream's window (requests carry no bodies; this is the client's upload room).
const STREAM_WINDOW: u32 = 64 << 10;
/// An HTTP/2 connection's window.
const CONNECTION_WINDOW: u32 = 1 << 20;

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
    /// With a domain, each edge's Node names `<node>.<domain>` instead (a wildcard DNS record
    /// sends them all here), and requests say by that name which edge they are for.
    pub node_domain: Option<String>,
    /// The CA that signs the API server's kubelet client certificate (DER).
    pub client_ca: Vec<Vec<u8>>,
}

impl StreamSettings {
    /// The names CloudStream's serving certificate (the hub's) must cover: the advertised
    /// address, and every name under the node domain.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![self.advertise.clone()];
        names.extend(self.node_domain.iter().map(|d| format!("*.{d}")));
        names
    }

    /// What edges' Nodes are told, once CloudStream listens on `port`.
    pub fn kubelet_endpoint(&self, port: u16) -> node_endpoint::KubeletEndpoint {
        node_endpoint::KubeletEndpoint {
            advertise: self.advertise.clone(),
            node_domain: self.node_domain.clone(),
            port,
        }
    }
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
    /// The node domain, if edges have names of their own ([`StreamSettings::node_domain`]).
    pub node_domain: Option<String>,
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
    // The hub's serving certificate; client certificates required, chained to `client_ca`.
    let tls = wedge_pki::server_tls::tls_config(
        pki,
        &[b"h2", b"http/1.1"],
        ClientCerts::Required(&settings.client_ca),
    )
    .map_err(|e| StreamError::Tls(e.to_string()))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
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
    tasks.spawn(wedge_pki::listener::accept(
        listener,
        "stream",
        wedge_pki::listener::Limits::api(),
        shutdown,
        tasks.clone(),
        move |tcp, peer| connection(tcp, peer, acceptor.clone(), ctx.clone()),
    ));
    tracing::info!(%addr, advertise = settings.advertise, "CloudStream (the edges' kubelet endpoint) listening");
    Ok(Listening { addr })
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<StreamContext>,
) {
    let Some(tls) = wedge_pki::listener::handshake(&acceptor, tcp, peer, "stream").await else {
        return;
    };
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(req, &ctx).await) }
    });
    // HTTP/1.1 for the upgrades (exec, attach, port-forward); HTTP/2 for the API server's
    // shared connection, which carries every log it follows as one stream.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(wedge_pki::listener::HEADER_TIMEOUT);
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let served =
        wedge_pki::listener::first_bytes_within(tls, wedge_pki::listener::HEADER_TIMEOUT, |io| {
            builder.serve_connection_with_upgrades(TokioIo::new(io), service)
        })
        .await;
    if let Some(Err(e)) = served {
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

/// The node the request was sent to by name (`<node>.<domain>`), if edges have names.
fn addressed_node(req: &Request<Incoming>, ctx: &StreamContext) -> Option<String> {
    let domain = ctx.node_domain.as_deref()?;
    // HTTP/2 carries the name as `:authority`, HTTP/1.1 as `Host`.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })?;
    node_endpoint::addressed_node(&host, domain)
}

async fn route(req: Request<Incoming>, ctx: &StreamContext) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let addressed = addressed_node(&req, ctx);
    // A request sent to one edge's name for a pod on another is for a pod that node does not
    // have, as a kubelet would answer it.
    if let (
        Some(addressed),
        [
            "containerLogs" | "exec" | "attach" | "portForward",
            namespace,
            pod,
            ..,
        ],
    ) = (&addressed, segments.as_slice())
        && let Ok(node) = node_of(ctx, namespace, pod)
        && node != *addressed
    {
        return failure(
            404,
            "NotFound",
            &format!("pod {namespace}/{pod} is on node {node}, not on {addressed}"),
        );
    }
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
        (&http::Method::GET | &http::Method::POST, ["portForward", namespace, pod]) => {
            let (namespace, pod) = ((*namespace).to_owned(), (*pod).to_owned());
            portforward::serve(ctx, req, &namespace, &pod).await
        }
        (&http::Method::GET, ["nodes", node, "usage"]) => usage::usage(ctx, node),
        (&http::Method::GET, ["nodes", node, "metrics", "resource"]) => {
            usage::resource_metrics(ctx, node)
        }
        (&http::Method::GET, ["metrics", "resource"]) => match &addressed {
            Some(node) => usage::resource_metrics(ctx, node),
            None => usage::unattributed(),
        },
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

/// How long ending an upgraded connection may take.
const END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends an upgraded connection as TLS should: a close_notify, then the socket's end. Dropping
/// it instead makes the API server's copy of it fail with an unexpected EOF, which may cut what
/// it has not yet passed on to the client.
pub(crate) async fn end_connection<S>(io: &mut S)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(END_TIMEOUT, io.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("ending a stream connection: {e}"),
        Err(_) => tracing::debug!("ending a stream connection timed out"),
    }
}

/// The values of header `name`, comma-separated lists split, each trimmed, empty ones left out:
/// the protocols a client offers (`Sec-WebSocket-Protocol`, `X-Stream-Protocol-Version`).
pub(crate) fn offered<'h>(headers: &'h http::HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Opens a stream to `node`'s edge for `request` and waits for the edge's answer: the stream's
/// halves when it serves the request, else the `Status` for the client (the edge's refusal, a
/// 503 when the node is not connected, a 502 when the edge closed without answering).
pub(crate) async fn open_answered(
    sessions: &Sessions,
    node: &str,
    request: wedge_core::protocol::stream::StreamRequest,
) -> Result<(StreamSender, StreamReceiver), serde_json::Value> {
    let status = wedge_core::protocol::stream::status;
    let stream = sessions
        .open_stream(node, request)
        .map_err(|e| status(503, "ServiceUnavailable", &e.to_string()))?;
    let (sender, mut receiver) = stream.split();
    // The edge's first frame: served (an empty DATA) or refused (a CLOSE with its Status).
    match receiver.recv().await {
        Some(Event::Data { .. }) => Ok((sender, receiver)),
        Some(Event::Closed(Some(refused))) => Err(refused),
        _ => Err(status(
            502,
            "BadGateway",
            &format!("node {node} closed the stream without an answer"),
        )),
    }
}
