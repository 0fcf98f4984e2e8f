//! `/portForward/{ns}/{pod}`: the kubelet's port-forward, carried to the edge as one stream per
//! TCP connection (`docs/PROTOCOL.md`, port-forward).
//!
//! Two forms, as the kubelet serves them:
//! - **SPDY/3.1**, stream protocol `portforward.k8s.io`: what kube-apiserver sends (also when
//!   kubectl ≥ 1.31 tunnels SPDY through a WebSocket to it, and our API server does the same),
//!   and what older kubectl sends. Ports are not in the URL: for each TCP connection kubectl
//!   makes locally, it opens an `error` and a `data` stream with the same `requestid` and the
//!   `port`. A pair becomes one edge stream; the data stream carries the bytes both ways (a FIN
//!   is a half-close, each way), the error stream carries the failure's text, if any, and ends.
//! - **WebSocket** with `?port=` (the Python client's `portforward`): one connection per port,
//!   for the WebSocket's life; for the i-th port, channel 2i carries data both ways and 2i+1
//!   errors, and both start with the port as a little-endian u16.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, SelectAll};
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use wedge_core::protocol::mux::{Event, StreamReceiver, StreamSender};
use wedge_core::protocol::stream::{StreamRequest, channel};

use super::remotecommand::Protocol;
use super::spdy::{self, ClientStream, StreamWriter};
use super::{Body, StreamContext, failure, node_of, offered, open_answered, status_response};
use crate::cloudhub::sessions::Sessions;

/// The SPDY stream protocol for port-forward.
const SPDY_PROTOCOL: &str = "portforward.k8s.io";

/// How long the second stream of a pair may take to come (the kubelet's stream creation
/// timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// The WebSocket subprotocols served (the kubelet's), and whether each is base64.
const WS_PROTOCOLS: [(&str, bool); 2] = [
    ("v4.channel.k8s.io", false),
    ("v4.base64.channel.k8s.io", true),
];

/// The most ports one WebSocket carries: each takes two of the 256 channel numbers.
const MAX_WS_PORTS: usize = 128;

/// Serves a port-forward request.
pub(crate) async fn serve(
    ctx: &StreamContext,
    mut req: Request<Incoming>,
    namespace: &str,
    pod: &str,
) -> Response<Body> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let spdy = upgrade.eq_ignore_ascii_case("spdy/3.1");
    let websocket = upgrade.eq_ignore_ascii_case("websocket");
    if !spdy && !websocket {
        return failure(400, "BadRequest", "Upgrade request required");
    }
    let node = match node_of(ctx, namespace, pod) {
        Ok(n) => n,
        Err(status) => return status_response(&status),
    };
    if spdy {
        let offered = offered(headers, "x-stream-protocol-version");
        if !offered.contains(&SPDY_PROTOCOL) {
            return failure(
                403,
                "Forbidden",
                &format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{SPDY_PROTOCOL}\"]"
                ),
            );
        }
        if let Err(e) = ctx.sessions.ensure_connected(&node) {
            return failure(503, "ServiceUnavailable", &e.to_string());
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let target = Target {
            sessions: ctx.sessions.clone(),
            node,
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        };
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve_spdy(TokioIo::new(upgraded), target).await,
                Err(e) => {
                    tracing::info!(node = target.node, "the port-forward upgrade failed: {e}")
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("x-stream-protocol-version", SPDY_PROTOCOL)
            .body(super::whole(Bytes::new()))
            .unwrap_or_default();
    }
    serve_websocket(ctx, req, namespace, pod, &node).await
}

/// Where a port-forward's connections go.
#[derive(Clone)]
pub(crate) struct Target {
    pub sessions: Arc<Sessions>,
    pub node: String,
    pub namespace: String,
    pub pod: String,
}

impl Target {
    /// Opens the edge stream for one connection to `port` and waits for the edge's answer:
    /// the stream's halves, or the `Status` saying why not.
    async fn connect(
        &self,
        port: u16,
    ) -> Result<(StreamSender, StreamReceiver), serde_json::Value> {
        let request = StreamRequest::PortForward {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            port,
        };
        open_answered(&self.sessions, &self.node, request).await
    }
}

/// A failure Status's message (what the kubelet writes on the error stream).
fn message_of(status: &serde_json::Value) -> String {
    status["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map_or_else(|| status.to_string(), str::to_owned)
}

/// One SPDY port-forward connection: pairs the client's streams and forwards each pair.
async fn serve_spdy<S>(io: S, target: Target)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (streams_tx, mut streams) = mpsc::channel(spdy::NEW_STREAMS);
    let session = spdy::serve(io, streams_tx);
    tokio::pin!(session);
    // The first stream of each request, waiting for its partner.
    let mut waiting: HashMap<String, oneshot::Sender<ClientStream>> = HashMap::new();
    // Forwards end with the connection: their client is gone.
    let mut forwards = JoinSet::new();
    loop {
        tokio::select! {
            ended = &mut session => {
                if let Err(e) = ended {
                    tracing::info!(node = target.node, pod = target.pod, "a port-forward client broke the SPDY protocol: {e}");
                }
                return;
            }
            Some(stream) = streams.recv() => {
                let id = match request_id(&stream) {
                    Ok(id) => id,
                    Err(message) => {
                        refuse(stream, &message).await;
                        continue;
                    }
                };
                match waiting.remove(&id) {
                    Some(partner) => {
                        // Its pair's task may have given up waiting: then this one is alone.
                        if let Err(stream) = partner.send(stream) {
                            refuse(stream, &format!("timed out waiting for the other stream of request {id}")).await;
                        }
                    }
                    None => {
                        let (tx, rx) = oneshot::channel();
                        waiting.insert(id.clone(), tx);
                        forwards.spawn(pair(stream, rx, id, target.clone()));
                    }
                }
                waiting.retain(|_, tx| !tx.is_closed());
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

/// The request a stream belongs to: its `requestid` header, or, from clients too old to send
/// one, a pseudo id from the stream ids as the kubelet derives it (an error stream's own id,
/// the data stream's id less 2: the pair's ids are consecutive odd numbers).
fn request_id(stream: &ClientStream) -> Result<String, String> {
    if let Some(id) = stream.header("requestid").filter(|id| !id.is_empty()) {
        return Ok(id.to_owned());
    }
    match stream.header("streamtype") {
        Some("error") => Ok(stream.id.to_string()),
        Some("data") => Ok(stream.id.saturating_sub(2).to_string()),
        other => Err(format!("invalid stream type {:?}", other.unwrap_or(""))),
    }
}

/// Writes `message` on a stream that cannot be served, and ends it.
async fn refuse(stream: ClientStream, message: &str) {
    let _ = stream
        .out
        .send(Bytes::copy_from_slice(message.as_bytes()))
        .await;
    let _ = stream.out.finish().await;
}

/// One request's streams: waits for the second, checks the pair, and forwards it.
async fn pair(
    first: ClientStream,
    partner: oneshot::Receiver<ClientStream>,
    id: String,
    target: Target,
) {
    let second = match tokio::time::timeout(PAIR_TIMEOUT, partner).await {
        Ok(Ok(second)) => second,
        _ => {
            return refuse(
                first,
                &format!("timed out waiting for the other stream of request {id}"),
            )
            .await;
        }
    };
    let (error, data) = match (first.header("streamtype"), second.header("streamtype")) {
        (Some("error"), Some("data")) => (first, second),
        (Some("data"), Some("error")) => (second, first),
        (a, b) => {
            let message = format!(
                "request {id} needs one error and one data stream, not {:?} and {:?}",
                a.unwrap_or(""),
                b.unwrap_or("")
            );
            refuse(second, &message).await;
            return refuse(first, &message).await;
        }
    };
    let port = match data.header("port").map(str::parse::<u16>) {
        Some(Ok(port)) if port > 0 => port,
        Some(_) => {
            let message = format!(
                "invalid port {:?} in request {id}",
                data.header("port").unwrap_or("")
            );
            return refuse(error, &message).await;
        }
        None => {
            return refuse(error, &format!("no port in request {id}")).await;
        }
    };
    forward(error.out, data, port, &target).await;
}

/// Carries one connection: the data stream's bytes to the edge and back, half-closes both
/// ways, and the outcome's text on the error stream.
async fn forward(error: StreamWriter, mut data: ClientStream, port: u16, target: &Target) {
    let (sender, mut receiver) = match target.connect(port).await {
        Ok(halves) => halves,
        Err(status) => {
            let _ = error.send(Bytes::from(message_of(&status))).await;
            let _ = error.finish().await;
            let _ = data.out.finish().await;
            return;
        }
    };
    let towards_pod = async {
        while let Some(bytes) = data.inbound.recv().await {
            if sender.send(channel::STDIN, bytes).await.is_err() {
                return;
            }
        }
        // The client half-closed (or reset): so does the edge's connection to the pod.
        let _ = sender.eof(channel::STDIN);
    };
    let from_pod = async {
        let mut finished = false;
        loop {
            match receiver.recv().await {
                Some(Event::Data {
                    channel: channel::STDOUT,
                    data: bytes,
                }) if !bytes.is_empty() => {
                    if data.out.send(bytes).await.is_err() {
                        return;
                    }
                }
                Some(Event::Eof(channel::STDOUT)) if !finished => {
                    finished = true;
                    let _ = data.out.finish().await;
                }
                Some(Event::Data { .. } | Event::Eof(_)) => {}
                Some(Event::Closed(status)) => {
                    if let Some(status) = status.filter(|s| s["status"] != "Success") {
                        let _ = error.send(Bytes::from(message_of(&status))).await;
                    }
                    let _ = error.finish().await;
                    if !finished {
                        let _ = data.out.finish().await;
                    }
                    return;
                }
                None => return,
            }
        }
    };
    // The edge's CLOSE ends the connection; the client's half-close does not.
    tokio::select! {
        () = from_pod => {}
        () = async { towards_pod.await; std::future::pending::<()>().await } => {}
    }
}

/// The ports of a WebSocket port-forward: `?port=80&port=443` or `?port=80,443`.
fn ports_of(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "port" {
            continue;
        }
        for text in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let port: u16 = text
                .parse()
                .map_err(|e| format!("unable to parse {text:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {text:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".to_owned());
    }
    // Two channels a port, numbered by one byte.
    if ports.len() > MAX_WS_PORTS {
        return Err(format!(
            "{} ports asked for; at most {MAX_WS_PORTS} fit one connection",
            ports.len()
        ));
    }
    Ok(ports)
}

/// The WebSocket form: every port's connection made before the upgrade is answered, so a
/// refused one is an HTTP error; then the channels are joined to them.
async fn serve_websocket(
    ctx: &StreamContext,
    mut req: Request<Incoming>,
    namespace: &str,
    pod: &str,
    node: &str,
) -> Response<Body> {
    let headers = req.headers();
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return failure(400, "BadRequest", "Upgrade request required");
    };
    let offered = offered(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    // No subprotocol at all is the kubelet's binary default.
    let chosen = if offered.is_empty() {
        None
    } else {
        match WS_PROTOCOLS.iter().find(|(name, _)| offered.contains(name)) {
            Some(found) => Some(*found),
            None => {
                return failure(
                    400,
                    "BadRequest",
                    &format!(
                        "none of the offered subprotocols {offered:?} is served: v4.channel.k8s.io, v4.base64.channel.k8s.io"
                    ),
                );
            }
        }
    };
    let protocol = if chosen.is_some_and(|(_, base64)| base64) {
        Protocol::V4Base64
    } else {
        Protocol::V4
    };
    let ports = match ports_of(req.uri().query()) {
        Ok(p) => p,
        Err(message) => return failure(400, "BadRequest", &message),
    };
    let target = Target {
        sessions: ctx.sessions.clone(),
        node: node.to_owned(),
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
    };
    let mut connections = Vec::with_capacity(ports.len());
    for &port in &ports {
        match target.connect(port).await {
            Ok(halves) => connections.push((port, halves)),
            Err(status) => return status_response(&status),
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node = node.to_owned();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                bridge(ws, protocol, connections).await;
            }
            Err(e) => tracing::info!(node, "the port-forward upgrade failed: {e}"),
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        );
    if let Some((name, _)) = chosen {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, name);
    }
    response
        .body(super::whole(Bytes::new()))
        .unwrap_or_default()
}

/// What one port's edge stream says, tagged with the port's index.
enum FromPod {
    Data(usize, Bytes),
    Failed(usize, String),
    Ended,
}

/// Joins the WebSocket's channels to the ports' edge streams until the client leaves or every
/// connection has ended.
async fn bridge<S>(
    mut ws: WebSocketStream<S>,
    protocol: Protocol,
    connections: Vec<(u16, (StreamSender, StreamReceiver))>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Split borrowed, so that the connection can be ended properly once both halves are done.
    let (mut ws_out, mut ws_in) = (&mut ws).split();
    let mut senders = Vec::with_capacity(connections.len());
    let mut events: SelectAll<_> = SelectAll::new();
    for (index, (port, (sender, receiver))) in connections.into_iter().enumerate() {
        let (data_channel, error_channel) = channels_of(index);
        // Each channel starts with its port.
        for ch in [data_channel, error_channel] {
            if ws_out
                .send(protocol.message(ch, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
        senders.push(sender);
        events.push(
            stream::unfold(Some(receiver), move |receiver| async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Some(Event::Data {
                            channel: channel::STDOUT,
                            data,
                        }) if !data.is_empty() => {
                            return Some((FromPod::Data(index, data), Some(receiver)));
                        }
                        Some(Event::Data { .. } | Event::Eof(_)) => {}
                        Some(Event::Closed(Some(status))) if status["status"] != "Success" => {
                            return Some((FromPod::Failed(index, message_of(&status)), None));
                        }
                        Some(Event::Closed(_)) | None => return Some((FromPod::Ended, None)),
                    }
                }
            })
            .boxed(),
        );
    }
    let mut open = senders.len();
    let inbound = async {
        while let Some(Ok(message)) = ws_in.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
            let Some((ch, data)) = protocol.read(message) else {
                continue;
            };
            // Only data channels carry bytes towards the pod.
            let Some(sender) = senders.get(usize::from(ch / 2)).filter(|_| ch % 2 == 0) else {
                continue;
            };
            if !data.is_empty() && sender.send(channel::STDIN, data).await.is_err() {
                continue;
            }
        }
    };
    let outbound = async {
        while let Some(event) = events.next().await {
            let message = match event {
                FromPod::Data(index, data) => protocol.message(channels_of(index).0, &data),
                FromPod::Failed(index, text) => {
                    open -= 1;
                    protocol.message(channels_of(index).1, text.as_bytes())
                }
                FromPod::Ended => {
                    open -= 1;
                    if open == 0 {
                        break;
                    }
                    continue;
                }
            };
            if ws_out.send(message).await.is_err() {
                return;
            }
        }
        let _ = ws_out.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
    drop((ws_out, ws_in));
    super::end_connection(ws.get_mut()).await;
}

/// The data and error channels of the `index`-th port.
fn channels_of(index: usize) -> (u8, u8) {
    let data = u8::try_from(index * 2).unwrap_or(u8::MAX - 1);
    (data, data.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_ports_come_repeated_or_comma_separated() {
        assert_eq!(ports_of(Some("port=80&port=443")), Ok(vec![80, 443]));
        assert_eq!(ports_of(Some("port=80,8080")), Ok(vec![80, 8080]));
        assert_eq!(
            ports_of(None),
            Err("query parameter \"port\" is required".to_owned())
        );
        assert!(ports_of(Some("port=http")).is_err_and(|e| e.contains("unable to parse")));
        assert!(ports_of(Some("port=0")).is_err_and(|e| e.contains("must be > 0")));
        assert!(ports_of(Some("port=70000")).is_err());
    }

    #[test]
    fn each_port_has_a_data_and_an_error_channel() {
        assert_eq!(channels_of(0), (0, 1));
        assert_eq!(channels_of(2), (4, 5));
    }
}
