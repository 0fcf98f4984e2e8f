//! `kubectl port-forward` to a pod on containerd: one forwarded TCP connection, carried by
//! containerd's streaming server behind CRI's `PortForward`.
//!
//! Like `Exec`, CRI's `PortForward` carries no data: containerd answers with a one-time URL on
//! its streaming server, and dials the port from inside the sandbox's network namespace when a
//! client comes there. That is the only way in: the pod's network is containerd's, and for a
//! mixed pod it is also the Wasm containers' (they run inside that namespace), so this one path
//! reaches every listener of the pod. This module is a SPDY/3.1 client of the server's
//! port-forward protocol (`portforward.k8s.io`; the upgrade is [`streaming::connect`]'s), not of
//! its WebSocket one, for the reason exec gives: WebSocket's `v4.channel.k8s.io` has no message
//! that ends one direction, and a client that half-closes (sends a request, then its FIN, and
//! reads the answer) must be able to say so. Over SPDY our half-close is a FIN on the data stream.
//!
//! A forward, as kubectl makes one: the upgrade, then two streams with headers `streamtype`
//! (`error`, then `data`), `port` and `requestid` (0: one forward per connection, since the URL
//! serves one client). kubectl half-closes the error stream at once, as it never writes there;
//! so do we, to stay on the path the server is tested on. Bytes go both ways on the data stream.
//! The server ends a forward by closing both its streams (the data stream first), with text on
//! the error stream in between when it failed (containerd's dial error, framed as `error
//! forwarding port N to pod <sandbox>, uid : <cause>`: [`cause`] keeps the cause, and Edged frames
//! it as the kubelet does, with the pod's name); so the verdict waits for both. containerd never
//! reports the pod's half-close on its own: it copies until either direction ends, gives the
//! other a second (socat's habit, without passing our half-close on to the pod's socket), and
//! then closes everything. So the caller's `output` closes when the forward ends, and a client
//! that half-closes gets the pod's answer if it comes within that second, as it would from a
//! kubelet on containerd.
//!
//! Everything runs in the caller's future, as exec's session does ([`Forward::run`]): output
//! waits for room in the caller's channel while reading stops (the backpressure reaches the pod
//! through TCP), and input goes out beside it, so neither direction waits for the other.
//! Dropping the future drops the connection, which ends the forward at the server.

use std::convert::Infallible;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use wedge_core::runtime::{PortStreams, RuntimeError};
use wedge_core::spdy::{Codec, Frame, HeaderEncoder, RstStatus, SpdyError, StreamId};

use crate::spdy_client::{Link, StreamFrame, is_close, write_frames};
use crate::streaming::{self, MAX_DATA, STREAM_TYPE, StreamError, next_of};

/// The stream protocol of port-forward (Kubernetes has had no other).
const PROTOCOL: &str = "portforward.k8s.io";

/// The header naming the port (Go's server reads `port`).
const PORT: &str = "port";

/// The header pairing a forward's two streams (Go's server reads `requestID`, canonicalised;
/// SPDY wants names lowercase).
const REQUEST_ID: &str = "requestid";

/// The error stream: the client's first.
const ERROR_STREAM: StreamId = 1;

/// The data stream: the client's second.
const DATA_STREAM: StreamId = 3;

/// How much of the error stream's text is kept (containerd's dial errors are a few hundred
/// bytes; more is not a message).
const MAX_ERROR_TEXT: usize = 4096;

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// Reaching the streaming server, or speaking SPDY with it, failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The server could not forward: its words, without its framing ([`cause`]).
    #[error("{0}")]
    Failed(String),
    /// The server reset one of the forward's streams.
    #[error("containerd reset the port-forward's {stream} stream ({status})")]
    Reset {
        /// The stream's `streamtype`.
        stream: &'static str,
        /// The RST_STREAM's status.
        status: RstStatus,
    },
    /// The connection ended before the server ended the forward.
    #[error("containerd's streaming server closed the connection before the forward ended")]
    Cut,
}

impl From<SpdyError> for ForwardError {
    fn from(e: SpdyError) -> Self {
        Self::Stream(e.into())
    }
}

impl ForwardError {
    /// As the runtime boundary reports it; `what` names the forward ("sandbox s").
    pub(crate) fn into_runtime_error(self, what: &str) -> RuntimeError {
        match self {
            Self::Stream(e) => e.into_runtime_error(what),
            Self::Failed(message) => RuntimeError::Failed(message),
            e @ (Self::Reset { .. } | Self::Cut) => RuntimeError::Failed(format!("{what}: {e}")),
        }
    }
}

/// Connects to `url` (from CRI `PortForward` for `port`) and carries one connection between the
/// caller's `streams` and the port until the server ends it, or the future is dropped.
pub(crate) async fn run(url: &str, port: u16, streams: PortStreams) -> Result<(), ForwardError> {
    let connection = streaming::connect(url, PROTOCOL).await?;
    forward(connection, port, streams).await
}

/// The cause in the server's message, without the framing its port-forward handler puts around
/// it (`error forwarding port N to pod <id>, uid <uid>: `), which names the sandbox where the
/// user knows a pod.
fn cause(text: &str) -> &str {
    text.strip_prefix("error forwarding port ")
        .and_then(|rest| rest.split_once(", uid "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .map_or(text, |(_, cause)| cause)
}

/// Runs a forward over an upgraded connection.
async fn forward<S>(connection: S, port: u16, streams: PortStreams) -> Result<(), ForwardError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let PortStreams { input, output } = streams;
    let (read, write) = tokio::io::split(connection);
    let mut writer = FramedWrite::new(write, Codec);
    open_streams(&mut writer, port).await?;
    let (control, control_rx) = mpsc::unbounded_channel();
    // One DATA frame queued at a time: input waits in the caller's channel, not here.
    let (data, data_rx) = mpsc::channel(1);
    let forward = Forward {
        error: Incoming::default(),
        data: Incoming::default(),
        error_text: Vec::new(),
        error_fin_due: true,
        input: Some(input),
        input_state: InputState::Open,
        typed: Bytes::new(),
        link: Link::new(control),
    };
    forward
        .run(
            FramedRead::new(read, Codec),
            write_frames(writer, control_rx, data_rx),
            data,
            output,
        )
        .await
}

/// Opens the error stream and the data stream for `port`.
async fn open_streams<W>(writer: &mut FramedWrite<W, Codec>, port: u16) -> Result<(), SpdyError>
where
    W: AsyncWrite + Unpin,
{
    let mut headers = HeaderEncoder::default();
    let port = port.to_string();
    for (stream, kind) in [(ERROR_STREAM, "error"), (DATA_STREAM, "data")] {
        let block = headers.block(&[(STREAM_TYPE, kind), (PORT, &port), (REQUEST_ID, "0")])?;
        writer
            .feed(Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: block,
            })
            .await?;
    }
    writer.flush().await
}

/// The server's side of one of the forward's streams.
#[derive(Debug, Default)]
struct Incoming {
    /// Its SYN_REPLY came: the client may send on it.
    replied: bool,
    /// Its FIN came.
    ended: bool,
    /// It was reset: nothing more goes or comes.
    reset: Option<RstStatus>,
}

impl Incoming {
    fn writable(&self) -> bool {
        self.replied && self.reset.is_none()
    }

    fn done(&self) -> bool {
        self.ended || self.reset.is_some()
    }
}

/// Where the bytes towards the pod stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    /// The caller may send more.
    Open,
    /// The caller half-closed: a FIN goes once what it sent has gone.
    Ended,
    /// The FIN went, or the server reset the data stream.
    Closed,
}

/// The next DATA frame the client may send.
#[derive(Debug, Clone, Copy)]
enum Outgoing {
    /// The half-close of the error stream, which the client never writes on.
    ErrorFin,
    /// This many bytes of what the caller sent.
    Bytes(usize),
    /// The caller's half-close.
    DataFin,
}

/// The pod's bytes, read and waiting for room in the caller's channel.
struct Waiting {
    data: Bytes,
    /// The server's FIN came with them.
    fin: bool,
}

/// What a frame from the server leads to.
enum Step {
    Continue,
    Deliver(Waiting),
    End(Result<(), ForwardError>),
}

/// A forward's state, owned by its one loop.
struct Forward {
    error: Incoming,
    data: Incoming,
    /// What came on the error stream: a failure, in the server's words.
    error_text: Vec<u8>,
    /// The error stream's FIN has not gone yet.
    error_fin_due: bool,
    input: Option<mpsc::Receiver<Bytes>>,
    input_state: InputState,
    /// Taken from the caller and not sent yet: held back by the reply or the peer's window.
    typed: Bytes,
    /// Windows, and the frames that concern the connection.
    link: Link,
}

impl Forward {
    /// The loop: every branch's work is synchronous, so the branches never hold each other up,
    /// and `writing` runs beside them all.
    async fn run<R>(
        mut self,
        mut reader: FramedRead<R, Codec>,
        writing: impl Future<Output = Infallible>,
        data: mpsc::Sender<Frame>,
        output: mpsc::Sender<Bytes>,
    ) -> Result<(), ForwardError>
    where
        R: AsyncRead + Unpin,
    {
        tokio::pin!(writing);
        let mut waiting: Option<Waiting> = None;
        loop {
            let outgoing = self.outgoing();
            let wants_input = self.input_state == InputState::Open && self.typed.is_empty();
            tokio::select! {
                never = &mut writing => match never {},
                // Reading stops while the pod's bytes wait for the caller: the backpressure.
                frame = reader.next(), if waiting.is_none() => {
                    let step = match frame {
                        Some(Ok(frame)) => self.on_frame(frame),
                        None => Step::End(self.at_close()),
                        Some(Err(e)) if is_close(&e) => {
                            tracing::debug!(error = %e, "the streaming server's connection ended");
                            Step::End(self.at_close())
                        }
                        Some(Err(e)) => Step::End(Err(e.into())),
                    };
                    match step {
                        Step::Continue => {}
                        Step::Deliver(bytes) => waiting = Some(bytes),
                        Step::End(ended) => return ended,
                    }
                }
                permit = output.reserve(), if waiting.is_some() => {
                    if let Some(Waiting { data, fin }) = waiting.take() {
                        let length = data.len();
                        match permit {
                            Ok(permit) => permit.send(data),
                            Err(_) => tracing::trace!("the caller stopped reading; the pod's bytes are dropped"),
                        }
                        self.link.consumed(DATA_STREAM, length);
                        if fin && let Some(ended) = self.data_ended() {
                            return ended;
                        }
                    }
                }
                permit = data.reserve(), if outgoing.is_some() => {
                    if let (Ok(permit), Some(outgoing)) = (permit, outgoing) {
                        permit.send(self.take(outgoing));
                    }
                }
                typed = next_of(&mut self.input), if wants_input => match typed {
                    Some(typed) => self.typed = typed,
                    None => {
                        tracing::debug!("the client half-closed the forwarded connection");
                        self.input_state = InputState::Ended;
                    }
                },
            }
        }
    }

    /// What may go now: the error stream's FIN first (it is one small frame), then the caller's
    /// bytes as far as the peer's window allows, then its half-close.
    fn outgoing(&self) -> Option<Outgoing> {
        if self.error_fin_due && self.error.writable() {
            return Some(Outgoing::ErrorFin);
        }
        if !self.data.writable() {
            return None;
        }
        if !self.typed.is_empty() {
            let room = self
                .link
                .send_window
                .available(DATA_STREAM)
                .min(MAX_DATA)
                .min(self.typed.len());
            return (room > 0).then_some(Outgoing::Bytes(room));
        }
        (self.input_state == InputState::Ended).then_some(Outgoing::DataFin)
    }

    /// The DATA frame for `outgoing`, counted against the window.
    fn take(&mut self, outgoing: Outgoing) -> Frame {
        let (stream, fin, data) = match outgoing {
            Outgoing::ErrorFin => {
                self.error_fin_due = false;
                (ERROR_STREAM, true, Bytes::new())
            }
            Outgoing::Bytes(length) => {
                let length = length.min(self.typed.len());
                (DATA_STREAM, false, self.typed.split_to(length))
            }
            Outgoing::DataFin => {
                self.input_state = InputState::Closed;
                (DATA_STREAM, true, Bytes::new())
            }
        };
        self.link.send_window.sent(stream, data.len());
        Frame::Data { stream, fin, data }
    }

    fn incoming_mut(&mut self, stream: StreamId) -> Option<&mut Incoming> {
        match stream {
            ERROR_STREAM => Some(&mut self.error),
            DATA_STREAM => Some(&mut self.data),
            _ => None,
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Step {
        match self.link.on_frame(frame) {
            Some(StreamFrame::Data { stream, fin, data }) => self.on_data(stream, fin, data),
            Some(StreamFrame::Reply(stream)) => {
                match self.incoming_mut(stream) {
                    Some(incoming) => incoming.replied = true,
                    None => tracing::debug!(stream, "a SYN_REPLY for a stream never opened"),
                }
                Step::Continue
            }
            Some(StreamFrame::Reset { stream, status }) => self.on_reset(stream, status),
            None => Step::Continue,
        }
    }

    fn on_data(&mut self, stream: StreamId, fin: bool, data: Bytes) -> Step {
        match stream {
            DATA_STREAM if !self.data.done() => {
                if !data.is_empty() {
                    return Step::Deliver(Waiting { data, fin });
                }
                if fin && let Some(ended) = self.data_ended() {
                    return Step::End(ended);
                }
                return Step::Continue;
            }
            ERROR_STREAM if !self.error.done() => {
                let room = MAX_ERROR_TEXT.saturating_sub(self.error_text.len());
                self.error_text
                    .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
                if fin {
                    self.error.ended = true;
                    self.link.forget(stream);
                    if let Some(ended) = self.verdict() {
                        return Step::End(ended);
                    }
                }
            }
            _ => tracing::debug!(stream, "ignoring DATA on a stream that is not open"),
        }
        self.link.consumed(stream, data.len());
        Step::Continue
    }

    /// The server closed the data stream; the verdict if that ends the forward.
    fn data_ended(&mut self) -> Option<Result<(), ForwardError>> {
        self.data.ended = true;
        self.link.forget(DATA_STREAM);
        self.verdict()
    }

    fn on_reset(&mut self, stream: StreamId, status: RstStatus) -> Step {
        let Some(incoming) = self.incoming_mut(stream) else {
            tracing::debug!(stream, %status, "a RST_STREAM for a stream never opened");
            return Step::Continue;
        };
        incoming.reset = Some(status);
        tracing::debug!(stream, %status, "the streaming server reset a stream");
        if stream == DATA_STREAM {
            // Dropping the receiver tells the caller its bytes go nowhere.
            self.input = None;
            self.input_state = InputState::Closed;
            self.typed = Bytes::new();
        }
        self.verdict().map_or(Step::Continue, Step::End)
    }

    /// Once the server has ended both its streams, how the forward went.
    fn verdict(&self) -> Option<Result<(), ForwardError>> {
        (self.error.done() && self.data.done()).then(|| self.outcome())
    }

    fn outcome(&self) -> Result<(), ForwardError> {
        let text = String::from_utf8_lossy(&self.error_text);
        let text = text.trim();
        if !text.is_empty() {
            return Err(ForwardError::Failed(cause(text).to_owned()));
        }
        for (stream, incoming) in [("data", &self.data), ("error", &self.error)] {
            if let Some(status) = incoming.reset {
                return Err(ForwardError::Reset { stream, status });
            }
        }
        Ok(())
    }

    /// The verdict when the connection ended: a failure the server wrote, or a forward whose
    /// bytes from the pod had all come, or a cut one.
    fn at_close(&self) -> Result<(), ForwardError> {
        if !self.error_text.is_empty() || self.data.reset.is_some() || self.error.reset.is_some() {
            return self.outcome();
        }
        if self.data.ended {
            Ok(())
        } else {
            Err(ForwardError::Cut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{Context, bail, ensure};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::codec::Framed;
    use wedge_core::spdy::HeaderDecoder;

    /// A SYN_REPLY's header block as Go writes it (the client never reads it).
    const GO_REPLY_HEADERS: &[u8] = b"\x78\xbb\xdf\xa2\x51\xb2\x62\x60\x60\x60\x00\x00\x00\xff\xff";

    /// The streaming server's end of a forward.
    struct Server<T> {
        io: Framed<T, Codec>,
        headers: HeaderDecoder,
    }

    impl<T: AsyncRead + AsyncWrite + Unpin> Server<T> {
        fn new(io: T) -> Self {
            Self {
                io: Framed::new(io, Codec),
                headers: HeaderDecoder::default(),
            }
        }

        async fn send(&mut self, frame: Frame) -> anyhow::Result<()> {
            self.io.send(frame).await?;
            Ok(())
        }

        /// The next frame from the client; `None` once it has gone.
        async fn next(&mut self) -> Option<Frame> {
            self.io.next().await?.ok()
        }

        /// Reads the client's two SYN_STREAMs (their ids and headers) and answers them.
        async fn accept(&mut self) -> anyhow::Result<Vec<(StreamId, Vec<(String, String)>)>> {
            let mut opened = Vec::new();
            for _ in 0..2 {
                let frame = self.next().await.context("the client went")?;
                let Frame::SynStream {
                    stream, headers, ..
                } = frame
                else {
                    bail!("expected a SYN_STREAM, got {frame:?}");
                };
                opened.push((stream, self.headers.block(&headers)?));
            }
            for (stream, _) in &opened {
                self.send(Frame::SynReply {
                    stream: *stream,
                    fin: false,
                    headers: Bytes::from_static(GO_REPLY_HEADERS),
                })
                .await?;
            }
            // kubectl's habit: the error stream half-closed at once.
            ensure!(
                self.next().await == Some(fin(ERROR_STREAM, b"")),
                "the error stream's FIN"
            );
            Ok(opened)
        }

        /// What the client sends on the data stream until its FIN.
        async fn read_to_fin(&mut self) -> anyhow::Result<Vec<u8>> {
            let mut got = Vec::new();
            loop {
                match self.next().await.context("the client went")? {
                    Frame::Data {
                        stream: DATA_STREAM,
                        fin,
                        data,
                    } => {
                        got.extend_from_slice(&data);
                        if fin {
                            return Ok(got);
                        }
                    }
                    other => bail!("unexpected {other:?}"),
                }
            }
        }

        /// Ends the forward as containerd does: the data stream's FIN, the error text if it
        /// failed, the error stream's FIN.
        async fn end(&mut self, error: Option<&str>) -> anyhow::Result<()> {
            self.send(fin(DATA_STREAM, b"")).await?;
            if let Some(text) = error {
                self.send(data(ERROR_STREAM, text.as_bytes())).await?;
            }
            self.send(fin(ERROR_STREAM, b"")).await
        }
    }

    fn data(stream: StreamId, bytes: &[u8]) -> Frame {
        Frame::Data {
            stream,
            fin: false,
            data: Bytes::copy_from_slice(bytes),
        }
    }

    fn fin(stream: StreamId, bytes: &[u8]) -> Frame {
        Frame::Data {
            stream,
            fin: true,
            data: Bytes::copy_from_slice(bytes),
        }
    }

    /// The caller's ends of a forward.
    struct Caller {
        input: mpsc::Sender<Bytes>,
        output: mpsc::Receiver<Bytes>,
    }

    fn port_streams(capacity: usize) -> (PortStreams, Caller) {
        let (input_tx, input) = mpsc::channel(capacity);
        let (output, output_rx) = mpsc::channel(capacity);
        (
            PortStreams { input, output },
            Caller {
                input: input_tx,
                output: output_rx,
            },
        )
    }

    /// A forward to `port` over an in-memory pipe, spawned; the caller's and the server's ends.
    fn pair(
        port: u16,
    ) -> (
        tokio::task::JoinHandle<Result<(), ForwardError>>,
        Caller,
        Server<DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (streams, caller) = port_streams(4);
        (
            tokio::spawn(forward(client, port, streams)),
            caller,
            Server::new(server),
        )
    }

    /// Everything the caller gets until the forward drops its end.
    async fn read_all(output: &mut mpsc::Receiver<Bytes>) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(chunk) = output.recv().await {
            got.extend_from_slice(&chunk);
        }
        got
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn streams_name_the_port_and_bytes_flow_both_ways() -> anyhow::Result<()> {
        let (forward, mut caller, mut server) = pair(8080);
        let opened = server.accept().await?;
        assert_eq!(
            opened,
            [
                (
                    ERROR_STREAM,
                    pairs(&[
                        ("streamtype", "error"),
                        ("port", "8080"),
                        ("requestid", "0")
                    ])
                ),
                (
                    DATA_STREAM,
                    pairs(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
                ),
            ]
        );
        caller
            .input
            .send(Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"))
            .await?;
        assert_eq!(
            server.next().await,
            Some(data(DATA_STREAM, b"GET / HTTP/1.0\r\n\r\n"))
        );
        server
            .send(data(DATA_STREAM, b"HTTP/1.0 200 OK\r\n"))
            .await?;
        assert_eq!(
            caller.output.recv().await.as_deref(),
            Some(&b"HTTP/1.0 200 OK\r\n"[..])
        );
        // The caller half-closes: a FIN after what it sent; the pod's bytes still come.
        caller.input.send(Bytes::from_static(b"more")).await?;
        drop(caller.input);
        assert_eq!(server.read_to_fin().await?, b"more");
        server.send(data(DATA_STREAM, b"\r\nbye")).await?;
        server.end(None).await?;
        forward.await??;
        assert_eq!(read_all(&mut caller.output).await, b"\r\nbye");
        // Done with the connection: the client's half of it is gone.
        assert_eq!(server.next().await, None);
        Ok(())
    }

    #[tokio::test]
    async fn the_server_ending_the_forward_ends_it_while_the_caller_still_sends()
    -> anyhow::Result<()> {
        let (forward, mut caller, mut server) = pair(80);
        server.accept().await?;
        // The bytes may come with the FIN.
        server
            .send(fin(DATA_STREAM, b"HTTP/1.0 200 OK\r\n\r\nhi"))
            .await?;
        server.send(fin(ERROR_STREAM, b"")).await?;
        forward.await??;
        assert_eq!(
            read_all(&mut caller.output).await,
            b"HTTP/1.0 200 OK\r\n\r\nhi"
        );
        assert!(
            caller.input.is_closed(),
            "the caller learns its bytes go nowhere"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failure_is_containerds_cause() -> anyhow::Result<()> {
        let (forward, mut caller, mut server) = pair(8081);
        server.accept().await?;
        // As containerd 1.6.20 words a port nothing listens on.
        server
            .end(Some(
                "error forwarding port 8081 to pod 4f3c, uid : failed to execute portforward in \
                 network namespace \"/var/run/netns/cni-1\": failed to connect to localhost:8081 \
                 inside namespace \"4f3c\", IPv4: dial tcp4 127.0.0.1:8081: connect: connection \
                 refused IPv6 dial tcp6 [::1]:8081: connect: connection refused ",
            ))
            .await?;
        let ended = forward.await?;
        match &ended {
            Err(ForwardError::Failed(m)) => {
                assert!(m.starts_with("failed to execute portforward"), "{m}");
                assert!(m.ends_with("connection refused"), "{m}");
            }
            other => bail!("{other:?}"),
        }
        assert!(read_all(&mut caller.output).await.is_empty());
        assert_eq!(
            ended.err().map(|e| e.into_runtime_error("sandbox 4f3c")),
            Some(RuntimeError::Failed(
                "failed to execute portforward in network namespace \"/var/run/netns/cni-1\": \
                 failed to connect to localhost:8081 inside namespace \"4f3c\", IPv4: dial tcp4 \
                 127.0.0.1:8081: connect: connection refused IPv6 dial tcp6 [::1]:8081: connect: \
                 connection refused"
                    .into()
            ))
        );
        Ok(())
    }

    #[test]
    fn the_cause_loses_only_the_handlers_framing() {
        assert_eq!(
            cause("error forwarding port 80 to pod abc, uid : dial: refused"),
            "dial: refused"
        );
        assert_eq!(
            cause("error forwarding port 80 to pod abc, uid 1-2: a: b"),
            "a: b"
        );
        assert_eq!(
            cause("timed out waiting for streams"),
            "timed out waiting for streams"
        );
    }

    #[tokio::test]
    async fn a_caller_that_reads_slowly_does_not_hold_up_its_bytes() -> anyhow::Result<()> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (streams, mut caller) = port_streams(1);
        let forward = tokio::spawn(forward(client, 80, streams));
        let mut server = Server::new(server);
        server.accept().await?;
        // More than the caller has room for, and nobody reads yet.
        for i in 0..3 {
            server
                .send(data(DATA_STREAM, format!("{i}").as_bytes()))
                .await?;
        }
        caller.input.send(Bytes::from_static(b"typed")).await?;
        assert_eq!(server.next().await, Some(data(DATA_STREAM, b"typed")));
        server.end(None).await?;
        assert_eq!(read_all(&mut caller.output).await, b"012");
        forward.await??;
        Ok(())
    }

    #[tokio::test]
    async fn resets_and_cut_connections_fail_the_forward() -> anyhow::Result<()> {
        let (forward, caller, mut server) = pair(80);
        server.accept().await?;
        server
            .send(Frame::RstStream {
                stream: DATA_STREAM,
                status: RstStatus::InternalError,
            })
            .await?;
        server.send(fin(ERROR_STREAM, b"")).await?;
        let ended = forward.await?;
        assert!(
            matches!(
                ended,
                Err(ForwardError::Reset {
                    stream: "data",
                    status: RstStatus::InternalError
                })
            ),
            "{ended:?}"
        );
        assert!(caller.input.is_closed());

        let (forward, _caller, mut server) = pair(80);
        server.accept().await?;
        server.send(data(DATA_STREAM, b"partial")).await?;
        drop(server);
        let ended = forward.await?;
        assert!(matches!(ended, Err(ForwardError::Cut)), "{ended:?}");
        Ok(())
    }

    #[tokio::test]
    async fn pings_are_answered_and_dropping_the_forward_closes_the_connection()
    -> anyhow::Result<()> {
        let (forward, _caller, mut server) = pair(80);
        server.accept().await?;
        server.send(Frame::Ping { id: 2 }).await?;
        assert_eq!(server.next().await, Some(Frame::Ping { id: 2 }));
        forward.abort();
        assert!(forward.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(server.next().await, None);
        Ok(())
    }

    #[tokio::test]
    async fn the_upgrade_asks_for_port_forward_and_a_forward_runs_over_tcp() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/portforward/t0ken", listener.local_addr()?);
        let serving = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await?;
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await?);
            }
            tcp.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                  X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n",
            )
            .await?;
            let mut server = Server::new(tcp);
            server.accept().await?;
            let request = server.read_to_fin().await?;
            server.send(data(DATA_STREAM, b"pong")).await?;
            server.end(None).await?;
            anyhow::Ok((String::from_utf8(head)?, request))
        });
        let (streams, mut caller) = port_streams(4);
        caller.input.send(Bytes::from_static(b"ping")).await?;
        drop(caller.input);
        run(&url, 80, streams).await?;
        assert_eq!(read_all(&mut caller.output).await, b"pong");
        let (head, request) = serving.await??;
        assert_eq!(request, b"ping");
        let head = head.to_ascii_lowercase();
        ensure!(
            head.starts_with("post /portforward/t0ken http/1.1\r\n"),
            "{head}"
        );
        ensure!(
            head.contains("x-stream-protocol-version: portforward.k8s.io\r\n"),
            "{head}"
        );

        // A server that picks another protocol is refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/portforward/t0ken", listener.local_addr()?);
        let _serving = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await?;
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await?);
            }
            tcp.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                  X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            )
            .await?;
            anyhow::Ok(tcp)
        });
        let (streams, _caller) = port_streams(4);
        let chose = run(&url, 80, streams).await;
        assert!(
            matches!(&chose, Err(ForwardError::Stream(StreamError::Protocol { chosen, .. })) if chosen == "v4.channel.k8s.io"),
            "{chose:?}"
        );
        Ok(())
    }
}
