//! `/exec/{ns}/{pod}/{container}` and `/attach/{ns}/{pod}/{container}`: Kubernetes' remote
//! command protocol over WebSocket (here) and SPDY/3.1 ([`over_spdy`]), carried to the edge as
//! a stream.
//!
//! The kubelet's streaming server speaks `v5.channel.k8s.io` (kubectl ≥ 1.30; stdin can be
//! closed), `v4.channel.k8s.io` (the exit status on the error channel as a `Status`), the older
//! `channel.k8s.io` and the base64 variants (text frames, the channel as an ASCII digit). Each
//! message's first byte is its channel, which is the stream's channel too, so the bridge only
//! re-frames. The two directions run concurrently and apart, so a command blocked writing
//! output never blocks its input, and the reverse.

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use wedge_core::protocol::mux::{Event, StreamReceiver, StreamSender};
use wedge_core::protocol::stream::{StreamIo, StreamRequest, channel};

use super::{Body, StreamContext, failure, node_of, offered, open_answered, status_response};

mod over_spdy;

/// The error channel, where the outcome is written.
const ERROR_CHANNEL: u8 = 3;
/// v5's close message: `[255, channel]` half-closes that channel.
const CLOSE_CHANNEL: u8 = 255;

/// The WebSocket subprotocols served, most preferred first (port-forward's WebSocket form
/// frames its channels as `V4` and `V4Base64` do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    V5,
    V4,
    V4Base64,
    Base64,
    V1,
}

impl Protocol {
    const ALL: [(Self, &'static str); 5] = [
        (Self::V5, "v5.channel.k8s.io"),
        (Self::V4, "v4.channel.k8s.io"),
        (Self::V4Base64, "v4.base64.channel.k8s.io"),
        (Self::Base64, "base64.channel.k8s.io"),
        (Self::V1, "channel.k8s.io"),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("channel.k8s.io", |(_, n)| n)
    }

    fn base64(self) -> bool {
        matches!(self, Self::V4Base64 | Self::Base64)
    }

    /// Whether the error channel carries a `Status` (v4 on), or the message text.
    fn status_on_error_channel(self) -> bool {
        matches!(self, Self::V5 | Self::V4 | Self::V4Base64)
    }

    /// The protocol the client offers that this end prefers; a client offering none gets
    /// `channel.k8s.io`, as from the kubelet.
    fn choose(offered: &[&str]) -> Option<Self> {
        if offered.is_empty() {
            return Some(Self::V1);
        }
        Self::ALL
            .iter()
            .find(|(_, name)| offered.contains(name))
            .map(|(p, _)| *p)
    }

    /// A message of `data` on `channel`.
    pub(super) fn message(self, channel: u8, data: &[u8]) -> Message {
        if self.base64() {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            // '0' + the channel, as apimachinery writes it (past 9 that is ':' and on).
            text.push(char::from(b'0'.saturating_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::Text(text.into())
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::Binary(bytes.into())
        }
    }

    /// A client message as (channel, payload); `None` for what carries neither.
    pub(super) fn read(self, message: Message) -> Option<(u8, Bytes)> {
        match message {
            Message::Binary(b) if !self.base64() => {
                let (&first, rest) = b.split_first()?;
                Some((first, Bytes::copy_from_slice(rest)))
            }
            Message::Text(t) if self.base64() => {
                let (first, rest) = t.as_str().split_at_checked(1)?;
                let channel = first.as_bytes()[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((channel, Bytes::from(data)))
            }
            _ => None,
        }
    }
}

/// The parameters of an exec or attach, as the kubelet reads them.
fn request_of(
    exec: bool,
    namespace: &str,
    pod: &str,
    container: &str,
    query: Option<&str>,
) -> StreamRequest {
    let mut io = StreamIo::default();
    let mut command = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let on = matches!(&*value, "1" | "true");
        match &*key {
            "command" => command.push(value.into_owned()),
            "input" | "stdin" => io.stdin = on,
            "output" | "stdout" => io.stdout = on,
            "error" | "stderr" => io.stderr = on,
            "tty" => io.tty = on,
            _ => {}
        }
    }
    let (namespace, pod, container) = (namespace.to_owned(), pod.to_owned(), container.to_owned());
    if exec {
        StreamRequest::Exec {
            namespace,
            pod,
            container,
            command,
            io,
        }
    } else {
        StreamRequest::Attach {
            namespace,
            pod,
            container,
            io,
        }
    }
}

/// The streams an exec or attach asks for.
fn io_of(request: &StreamRequest) -> StreamIo {
    match request {
        StreamRequest::Exec { io, .. } | StreamRequest::Attach { io, .. } => *io,
        StreamRequest::Logs { .. } | StreamRequest::PortForward { .. } => StreamIo::default(),
    }
}

/// Serves an exec (`exec`) or attach request.
pub(crate) async fn serve(
    ctx: &StreamContext,
    mut req: Request<Incoming>,
    exec: bool,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if upgrade.eq_ignore_ascii_case("spdy/3.1") {
        let request = request_of(exec, namespace, pod, container, req.uri().query());
        let io = io_of(&request);
        let node = match node_of(ctx, namespace, pod) {
            Ok(n) => n,
            Err(status) => return status_response(&status),
        };
        return over_spdy::serve(ctx, req, request, io, &node).await;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return failure(400, "BadRequest", "Upgrade request required");
    };
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return failure(400, "BadRequest", "Upgrade request required");
    }
    let offered = offered(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    let Some(protocol) = Protocol::choose(&offered) else {
        return failure(
            400,
            "BadRequest",
            &format!(
                "none of the offered subprotocols {offered:?} is served: v5.channel.k8s.io, v4.channel.k8s.io, \
                 v4.base64.channel.k8s.io, base64.channel.k8s.io, channel.k8s.io"
            ),
        );
    };
    let had_protocol_header = !offered.is_empty();
    let request = request_of(exec, namespace, pod, container, req.uri().query());
    let io = io_of(&request);
    let node = match node_of(ctx, namespace, pod) {
        Ok(n) => n,
        Err(status) => return status_response(&status),
    };
    let (sender, receiver) = match open_answered(&ctx.sessions, &node, request).await {
        Ok(halves) => halves,
        Err(status) => return status_response(&status),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                bridge(ws, protocol, io, sender, receiver).await;
            }
            Err(e) => tracing::info!(node, "the exec upgrade failed: {e}"),
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
    if had_protocol_header {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol.name());
    }
    response
        .body(super::whole(Bytes::new()))
        .unwrap_or_default()
}

/// Joins the client's WebSocket to the edge's stream until the client goes or the edge's end
/// of the stream has been written to it.
async fn bridge<S>(
    mut ws: WebSocketStream<S>,
    protocol: Protocol,
    io: StreamIo,
    sender: StreamSender,
    mut receiver: StreamReceiver,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Split borrowed, so that the connection can be ended properly once both halves are done.
    let (mut ws_out, mut ws_in) = (&mut ws).split();
    // Ready: an empty message on the lowest channel this end writes.
    let ready = if io.stdout {
        channel::STDOUT
    } else if io.stderr {
        channel::STDERR
    } else {
        ERROR_CHANNEL
    };
    if ws_out.send(protocol.message(ready, &[])).await.is_err() {
        return;
    }
    let inbound = async {
        while let Some(Ok(message)) = ws_in.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
            let Some((ch, data)) = protocol.read(message) else {
                continue;
            };
            let sent = match ch {
                channel::STDIN | channel::RESIZE => sender.send(ch, data).await,
                CLOSE_CHANNEL if protocol == Protocol::V5 => match data.first() {
                    Some(&closed) => sender.eof(closed),
                    None => Ok(()),
                },
                _ => Ok(()),
            };
            if sent.is_err() {
                // The edge has ended the stream (a quick command is done) while input still
                // came: its output and outcome may not be written yet. `outbound` writes them,
                // then ends the session.
                return std::future::pending().await;
            }
        }
    };
    let outbound = async {
        loop {
            match receiver.recv().await {
                Some(Event::Data { channel, data }) if !data.is_empty() => {
                    if ws_out.send(protocol.message(channel, &data)).await.is_err() {
                        return;
                    }
                }
                Some(Event::Data { .. } | Event::Eof(_)) => {}
                Some(Event::Closed(status)) => {
                    let status = status.unwrap_or_else(|| {
                        wedge_core::protocol::stream::status(
                            500,
                            "InternalError",
                            "the edge abandoned the session",
                        )
                    });
                    let success = status["status"] == "Success";
                    let payload = if protocol.status_on_error_channel() {
                        Some(status.to_string())
                    } else if success {
                        None
                    } else {
                        status["message"].as_str().map(str::to_owned)
                    };
                    if let Some(payload) = payload {
                        let _ = ws_out
                            .send(protocol.message(ERROR_CHANNEL, payload.as_bytes()))
                            .await;
                    }
                    // A normal close (1000): clients read the error channel to its end, and a
                    // close without a code is an error to them.
                    let _ = ws_out
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        })))
                        .await;
                    return;
                }
                None => return,
            }
        }
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
    drop((ws_out, ws_in));
    super::end_connection(ws.get_mut()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_offered_protocol_is_chosen() {
        assert_eq!(
            Protocol::choose(&["v4.channel.k8s.io", "v5.channel.k8s.io"]),
            Some(Protocol::V5)
        );
        assert_eq!(
            Protocol::choose(&["base64.channel.k8s.io"]),
            Some(Protocol::Base64)
        );
        assert_eq!(Protocol::choose(&[]), Some(Protocol::V1));
        assert_eq!(Protocol::choose(&["SPDY/3.1+portforward.k8s.io"]), None);
    }

    #[test]
    fn base64_frames_carry_the_channel_as_a_digit() {
        let m = Protocol::Base64.message(1, b"hi");
        assert_eq!(m, Message::Text("1aGk=".into()));
        assert_eq!(
            Protocol::Base64.read(Message::Text("0aGk=".into())),
            Some((0, Bytes::from_static(b"hi")))
        );
        assert_eq!(
            Protocol::V5.read(Message::Binary(vec![255, 0].into())),
            Some((255, Bytes::from_static(&[0])))
        );
        assert_eq!(Protocol::V4.read(Message::Binary(Vec::new().into())), None);
    }

    /// A quick command's edge ends the stream while the client is still sending (a terminal's
    /// first size, say): what the edge sent before its end still reaches the client, with the
    /// outcome and a normal close, rather than the connection dropping under it. (Which of the
    /// bridge's two directions runs first is up to the scheduler: the case is run many times.)
    #[tokio::test]
    async fn input_after_the_edge_ended_the_stream_loses_none_of_its_output() {
        use wedge_core::protocol::mux::{Mux, Role as MuxRole};
        use wedge_core::protocol::stream::{StreamFrame, status};
        let done = status(200, "", "");
        let io = StreamIo {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let resize = br#"{"Width":80,"Height":24}"#;
        for _ in 0..32 {
            let (mux, _frames) = Mux::new(MuxRole::Opener);
            let request = StreamRequest::Exec {
                namespace: "default".into(),
                pod: "p".into(),
                container: "c".into(),
                command: vec!["true".into()],
                io,
            };
            let stream = mux.open(request).expect("a stream");
            let id = stream.id();
            mux.incoming(StreamFrame::Data {
                stream: id,
                channel: channel::STDOUT,
                data: Bytes::from_static(b"out"),
            });
            mux.incoming(StreamFrame::Close {
                stream: id,
                status: Some(done.clone()),
            });
            let (client_io, server_io) = tokio::io::duplex(64 << 10);
            let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
            let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            client
                .send(Protocol::V5.message(channel::RESIZE, resize))
                .await
                .expect("the size is sent");
            let (sender, receiver) = stream.split();
            bridge(server, Protocol::V5, io, sender, receiver).await;
            let mut got = Vec::new();
            while let Some(Ok(message)) = client.next().await {
                let closed = matches!(message, Message::Close(_));
                got.push(message);
                if closed {
                    break;
                }
            }
            assert_eq!(
                got,
                [
                    Protocol::V5.message(channel::STDOUT, b""),
                    Protocol::V5.message(channel::STDOUT, b"out"),
                    Protocol::V5.message(ERROR_CHANNEL, done.to_string().as_bytes()),
                    Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })),
                ]
            );
        }
    }

    #[test]
    fn the_kubelet_parameters_become_the_request() {
        let r = request_of(
            true,
            "default",
            "web",
            "main",
            Some("command=sh&command=-c&command=echo+hi&input=1&output=1&tty=1"),
        );
        assert_eq!(
            r,
            StreamRequest::Exec {
                namespace: "default".into(),
                pod: "web".into(),
                container: "main".into(),
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                io: StreamIo {
                    stdin: true,
                    stdout: true,
                    stderr: false,
                    tty: true
                },
            }
        );
    }
}
