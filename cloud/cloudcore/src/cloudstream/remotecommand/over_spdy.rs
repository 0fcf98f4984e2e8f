//! Exec and attach over SPDY/3.1: kubectl's fallback when the WebSocket upgrade fails, and what
//! older clients and kube-apiserver proxies of them send.
//!
//! The client offers stream protocols in `X-Stream-Protocol-Version` headers; this end takes
//! the newest it serves (`v4.channel.k8s.io`: the outcome is a JSON `Status` on the error
//! stream; before v4, only a failure's message is written there, and before v3 there is no
//! resize stream). Then the client opens one stream per channel, named by its `streamtype`
//! header, exactly those its request asked for; once all have come, they are joined to the
//! edge's stream as the WebSocket form joins its channels. The edge stream is opened before the
//! upgrade is answered, so an unknown container is an HTTP error the client shows as such.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use wedge_core::protocol::mux::{Event, StreamReceiver, StreamSender};
use wedge_core::protocol::stream::{StreamIo, StreamRequest, channel};

use super::super::spdy::{self, ClientStream};
use super::super::{Body, StreamContext, failure, offered, open_answered, status_response};

/// The stream protocols served, newest (preferred) first.
const VERSIONS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long the client may take to open its streams (the kubelet's stream creation timeout).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the connection is kept for the client to read the outcome and leave.
const LINGER: Duration = Duration::from_secs(10);

/// What the chosen version changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    /// The outcome is a JSON `Status` on the error stream, success included (v4).
    status_json: bool,
    /// A TTY session has a resize stream (v3 on).
    resize: bool,
}

impl Version {
    fn of(name: &str) -> Self {
        Self {
            status_json: name == VERSIONS[0],
            resize: name == VERSIONS[0] || name == VERSIONS[1],
        }
    }
}

/// Serves an exec or attach whose client asked to upgrade to SPDY/3.1.
pub(crate) async fn serve(
    ctx: &StreamContext,
    mut req: Request<Incoming>,
    request: StreamRequest,
    io: StreamIo,
    node: &str,
) -> Response<Body> {
    let offered = offered(req.headers(), "x-stream-protocol-version");
    let Some(chosen) = VERSIONS.iter().find(|v| offered.contains(v)) else {
        return failure(
            403,
            "Forbidden",
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {VERSIONS:?}"
            ),
        );
    };
    let version = Version::of(chosen);
    let (sender, receiver) = match open_answered(&ctx.sessions, node, request).await {
        Ok(halves) => halves,
        Err(status) => return status_response(&status),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node = node.to_owned();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                session(TokioIo::new(upgraded), version, io, sender, receiver).await;
            }
            Err(e) => tracing::info!(node, "the exec upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", *chosen)
        .body(super::super::whole(Bytes::new()))
        .unwrap_or_default()
}

/// The client's streams, by type.
#[derive(Default)]
struct Streams {
    error: Option<ClientStream>,
    stdin: Option<ClientStream>,
    stdout: Option<ClientStream>,
    stderr: Option<ClientStream>,
    resize: Option<ClientStream>,
}

impl Streams {
    /// Files `stream` under its type; its type when it is not one this request has.
    fn take(&mut self, stream: ClientStream, io: StreamIo, version: Version) -> Result<(), String> {
        let kind = stream.header("streamtype").unwrap_or("").to_owned();
        let slot = match kind.as_str() {
            "error" => &mut self.error,
            "stdin" if io.stdin => &mut self.stdin,
            "stdout" if io.stdout => &mut self.stdout,
            "stderr" if io.stderr && !io.tty => &mut self.stderr,
            "resize" if io.tty && version.resize => &mut self.resize,
            _ => return Err(kind),
        };
        *slot = Some(stream);
        Ok(())
    }

    /// Whether every stream the request asked for has come.
    fn complete(&self, io: StreamIo, version: Version) -> bool {
        self.error.is_some()
            && (!io.stdin || self.stdin.is_some())
            && (!io.stdout || self.stdout.is_some())
            && (!io.stderr || io.tty || self.stderr.is_some())
            && (!(io.tty && version.resize) || self.resize.is_some())
    }
}

/// Collects the client's streams, then joins them to the edge's stream until either ends.
async fn session<S>(
    io_stream: S,
    version: Version,
    io: StreamIo,
    sender: StreamSender,
    receiver: StreamReceiver,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (streams_tx, mut incoming) = mpsc::channel(spdy::NEW_STREAMS);
    let connection = spdy::serve(io_stream, streams_tx);
    tokio::pin!(connection);
    let mut streams = Streams::default();
    let deadline = tokio::time::sleep(STREAMS_TIMEOUT);
    tokio::pin!(deadline);
    while !streams.complete(io, version) {
        tokio::select! {
            _ = &mut connection => return,
            () = &mut deadline => {
                tracing::info!("an exec client did not open its streams in {STREAMS_TIMEOUT:?}");
                return;
            }
            Some(stream) = incoming.recv() => {
                if let Err(kind) = streams.take(stream, io, version) {
                    tracing::info!(kind, "an exec client opened a stream its request did not ask for");
                    return;
                }
            }
        }
    }
    tokio::select! {
        _ = &mut connection => {}
        () = bridge(streams, version, sender, receiver) => {
            // What was written goes before the connection is dropped: the client ends it once
            // it has read the error stream to its end.
            let _ = tokio::time::timeout(LINGER, connection).await;
        }
    }
}

/// Joins the streams to the edge's: input up, output down, the outcome on the error stream.
async fn bridge(
    mut streams: Streams,
    version: Version,
    sender: StreamSender,
    mut receiver: StreamReceiver,
) {
    let Some(error) = streams.error.take() else {
        return;
    };
    let (stdout, stderr) = (streams.stdout.take(), streams.stderr.take());
    let input = async {
        let stdin = async {
            if let Some(mut stdin) = streams.stdin.take() {
                while let Some(bytes) = stdin.inbound.recv().await {
                    if sender.send(channel::STDIN, bytes).await.is_err() {
                        return;
                    }
                }
                let _ = sender.eof(channel::STDIN);
            }
        };
        let resize = async {
            if let Some(mut resize) = streams.resize.take() {
                while let Some(bytes) = resize.inbound.recv().await {
                    if sender.send(channel::RESIZE, bytes).await.is_err() {
                        return;
                    }
                }
            }
        };
        tokio::join!(stdin, resize);
        std::future::pending::<()>().await;
    };
    let output = async {
        loop {
            let (target, bytes) = match receiver.recv().await {
                Some(Event::Data {
                    channel: channel::STDOUT,
                    data,
                }) => (stdout.as_ref(), data),
                Some(Event::Data {
                    channel: channel::STDERR,
                    data,
                }) => (stderr.as_ref(), data),
                Some(Event::Data { .. } | Event::Eof(_)) => continue,
                Some(Event::Closed(status)) => {
                    let status = status.unwrap_or_else(|| {
                        wedge_core::protocol::stream::status(
                            500,
                            "InternalError",
                            "the edge abandoned the session",
                        )
                    });
                    let text = if version.status_json {
                        Some(status.to_string())
                    } else if status["status"] == "Success" {
                        None
                    } else {
                        status["message"].as_str().map(str::to_owned)
                    };
                    if let Some(text) = text {
                        let _ = error.out.send(Bytes::from(text)).await;
                    }
                    for stream in [Some(&error), stdout.as_ref(), stderr.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        let _ = stream.out.finish().await;
                    }
                    return;
                }
                None => return,
            };
            if let Some(target) = target
                && !bytes.is_empty()
                && target.out.send(bytes).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = input => {}
        () = output => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_change_the_status_and_the_resize_stream() {
        assert_eq!(
            Version::of("v4.channel.k8s.io"),
            Version {
                status_json: true,
                resize: true
            }
        );
        assert_eq!(
            Version::of("v3.channel.k8s.io"),
            Version {
                status_json: false,
                resize: true
            }
        );
        assert_eq!(
            Version::of("channel.k8s.io"),
            Version {
                status_json: false,
                resize: false
            }
        );
    }
}
