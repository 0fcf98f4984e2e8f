//! Interactive exec and attach (`kubectl exec`, `kubectl attach`, `kubectl cp`): the streams
//! behind CRI's `Exec` and `Attach`.
//!
//! Those two calls carry no data. containerd answers each with a one-time URL on its streaming
//! server (127.0.0.1, a random port, plain HTTP: Kubernetes' `kubelet/pkg/cri/streaming`, copied
//! into containerd), and the session happens there. That server speaks WebSocket and SPDY/3.1;
//! this module is a SPDY/3.1 client (the framing is [`wedge_core::spdy`]), because only SPDY can end
//! the command's stdin while the session goes on: WebSocket's `v4.channel.k8s.io`, the newest
//! containerd 1.6 serves (it refuses `v5.channel.k8s.io`), has no message that ends one channel,
//! so a command reading to end of file (`cat`, `tar x` under `kubectl cp`) would never finish.
//! Over SPDY each stream half-closes with a FIN.
//!
//! A session: an HTTP/1.1 `POST` upgraded to `SPDY/3.1`, asking for stream protocol
//! `v4.channel.k8s.io` ([`connect`]); then the client opens one stream per channel, each named
//! by a `streamtype` header ([`Channel`]), exactly those the CRI request asked for, since the
//! server waits for that many. Stdin and terminal sizes go up as DATA; stdout and stderr come
//! down; the error stream brings one JSON `metav1.Status` when the command ends, which says its
//! exit code ([`Status::outcome`]). When the caller drops stdin's sender, a FIN on the stdin
//! stream closes the command's stdin, and the rest of its output and its status still come.
//!
//! Everything runs in the caller's future, without spawned tasks: [`Session::run`] reads frames
//! and hands output to the caller's bounded channels, waiting for room and reading nothing
//! meanwhile (so a slow reader slows the command down, through TCP), while it pulls stdin and
//! resizes, answers pings and grants window back. Writing is a future of its own beside it
//! ([`write_frames`]): if the server stops taking input (it feeds the command's stdin no faster
//! than the command reads), output must still be read, or `cat` of a large file would deadlock
//! with the command blocked on its stdout. Dropping the future drops the connection, which the
//! server sees as the client leaving: an attached container keeps running, an exec'd command
//! loses its stdin.
//!
//! The upgrade ([`connect`]) is shared with `kubectl port-forward`'s session,
//! [`crate::portforward`]; windows, the connection's frames and the writer are
//! [`crate::spdy_client`]'s, for both.
//!
//! Start reading at [`run`].

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderName};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use wedge_core::runtime::{ExecStreams, RuntimeError, TerminalSize};

use wedge_core::spdy::{Codec, Frame, HeaderEncoder, RstStatus, SpdyError, StreamId};

use crate::spdy_client::{Link, StreamFrame, is_close, write_frames};

/// The upgrade token the streaming server answers to.
const UPGRADE: &str = "SPDY/3.1";

/// The stream protocol exec and attach ask for: a JSON Status on the error stream at the end.
const STREAM_PROTOCOL: &str = "v4.channel.k8s.io";

/// The header that offers, and in the answer names, the stream protocol.
const PROTOCOL_HEADER: HeaderName = HeaderName::from_static("x-stream-protocol-version");

/// The header naming a stream's channel (Go's server reads `streamType`; it canonicalises
/// names, and SPDY wants them lowercase).
pub(crate) const STREAM_TYPE: &str = "streamtype";

/// How long connecting to the streaming server and upgrading may take. It is containerd on
/// 127.0.0.1: a slow answer means a stuck containerd.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most stdin one DATA frame carries.
pub(crate) const MAX_DATA: usize = 32 * 1024;

/// How much of a refusal's body goes into the error.
const REFUSAL_BODY_LIMIT: usize = 1024;

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// containerd returned a URL this client cannot use.
    #[error("containerd returned streaming URL {url:?}: {reason}")]
    BadUrl {
        /// As returned.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered at the URL.
    #[error("connecting to containerd's streaming server at {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The streaming server did not answer within [`HANDSHAKE_TIMEOUT`].
    #[error(
        "containerd's streaming server at {address} did not answer within {HANDSHAKE_TIMEOUT:?}"
    )]
    Timeout {
        /// `host:port`.
        address: String,
    },
    /// The HTTP exchange before the upgrade failed.
    #[error("upgrading {url} to {UPGRADE}: {source}")]
    Upgrade {
        /// The streaming URL.
        url: String,
        /// hyper's account.
        source: hyper::Error,
    },
    /// The server answered with something other than the upgrade (an expired or used token
    /// answers 404).
    #[error("containerd's streaming server refused the upgrade at {url}: {status} {body:?}")]
    Refused {
        /// The streaming URL.
        url: String,
        /// Its answer.
        status: hyper::StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    /// The server upgraded but chose another stream protocol, or none.
    #[error(
        "containerd's streaming server at {url} chose stream protocol {chosen:?}, not {wanted}"
    )]
    Protocol {
        /// The streaming URL.
        url: String,
        /// What was asked for.
        wanted: &'static str,
        /// What it chose (empty: none).
        chosen: String,
    },
    /// The connection broke mid-session.
    #[error("the stream broke: {0}")]
    Socket(#[source] std::io::Error),
    /// The server sent something that is not SPDY/3.
    #[error("containerd's streaming server broke the SPDY protocol: {0}")]
    Spdy(#[source] SpdyError),
    /// The server reset the stream the command's status comes on.
    #[error("containerd reset the {stream} stream ({status})")]
    Reset {
        /// The stream's `streamtype`.
        stream: &'static str,
        /// The RST_STREAM's status.
        status: RstStatus,
    },
    /// The server closed the stream without saying how the command ended.
    #[error("containerd closed the stream without the command's exit status")]
    NoStatus,
    /// The error stream held something other than a Status.
    #[error("containerd sent an unreadable status {text:?}: {source}")]
    BadStatus {
        /// What it sent.
        text: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// The command could not run, or the attach failed: containerd's words.
    #[error("{0}")]
    Failed(String),
}

impl From<SpdyError> for StreamError {
    fn from(e: SpdyError) -> Self {
        match e {
            SpdyError::Io(e) => Self::Socket(e),
            e => Self::Spdy(e),
        }
    }
}

impl StreamError {
    /// As the runtime boundary reports it; `what` names the session ("exec in container c").
    /// containerd's own verdicts keep their words; the streaming server being unreachable is
    /// containerd being unavailable (it went away between the CRI call and the connection).
    pub(crate) fn into_runtime_error(self, what: &str) -> RuntimeError {
        match self {
            Self::Failed(message) => RuntimeError::Failed(message),
            e @ (Self::Connect { .. } | Self::Timeout { .. }) => {
                RuntimeError::Unavailable(format!("{what}: {e}"))
            }
            e => RuntimeError::Failed(format!("{what}: {e}")),
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The command ended with this exit code (an attach ends with 0 when the container exits).
    Exited(i32),
    /// The caller dropped the receivers of every output stream it had asked for.
    CallerGone,
}

/// Connects to `url` (from CRI `Exec` or `Attach`) and runs the session with the caller's
/// `streams` until the command ends, the caller goes, or the future is dropped.
pub(crate) async fn run(url: &str, streams: ExecStreams) -> Result<Ended, StreamError> {
    let connection = connect(url, STREAM_PROTOCOL).await?;
    session(connection, streams).await
}

/// The SPDY/3.1 upgrade at `url`, asking for stream protocol `protocol` (exec's
/// [`STREAM_PROTOCOL`], or port-forward's).
pub(crate) async fn connect(
    url: &str,
    protocol: &'static str,
) -> Result<TokioIo<Upgraded>, StreamError> {
    let bad = |reason: String| StreamError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: hyper::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    // containerd serves TLS only when configured with a certificate, which Wedge never does.
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "only plain http:// streaming servers are supported".to_owned()
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("no host".to_owned()))?
        .as_str()
        .to_owned();
    let host = uri
        .host()
        .ok_or_else(|| bad("no host".to_owned()))?
        // An IPv6 literal comes bracketed.
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let address = format!("{host}:{port}");

    let handshake = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| StreamError::Connect {
                address: address.clone(),
                source,
            })?;
        // Keystrokes go out one by one.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%address, error = %e, "could not set TCP_NODELAY");
        }
        upgrade(url, protocol, tcp, &authority, &path).await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| StreamError::Timeout {
            address: address.clone(),
        })?
}

/// The HTTP/1.1 exchange on `tcp`: `POST path` with the upgrade headers, a 101 naming
/// `protocol`, and the connection handed over (with anything the server sent after its answer).
async fn upgrade(
    url: &str,
    protocol: &'static str,
    tcp: TcpStream,
    authority: &str,
    path: &str,
) -> Result<TokioIo<Upgraded>, StreamError> {
    let failed = |source| StreamError::Upgrade {
        url: url.to_owned(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(failed)?;
    // Driven here beside the request rather than in a task: it ends with the upgrade.
    let mut connection = std::pin::pin!(connection.with_upgrades());
    let request = hyper::Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, UPGRADE)
        .header(PROTOCOL_HEADER, protocol)
        .body(Empty::<Bytes>::new())
        .map_err(|e| StreamError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    // The connection can end (at the upgrade, or the server closing) in the same poll as the
    // answer arrives: it is never polled again once it has, and the answer still counts.
    let mut connection_ended = false;
    let response = {
        let mut response = std::pin::pin!(sender.send_request(request));
        loop {
            tokio::select! {
                response = response.as_mut() => break response.map_err(failed)?,
                ended = connection.as_mut(), if !connection_ended => {
                    connection_ended = true;
                    ended.map_err(failed)?;
                }
            }
        }
    };

    let status = response.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        // The body says why (Go's `http.Error`); the connection has to run for it to come.
        let mut body = std::pin::pin!(read_prefix(response.into_body(), REFUSAL_BODY_LIMIT));
        let body = loop {
            tokio::select! {
                body = body.as_mut() => break body,
                _ = connection.as_mut(), if !connection_ended => connection_ended = true,
            }
        };
        return Err(StreamError::Refused {
            url: url.to_owned(),
            status,
            body,
        });
    }
    let chosen = response
        .headers()
        .get(&PROTOCOL_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    // Without it the server falls back to its first protocol: for exec, one without a Status at
    // the end.
    if chosen != protocol {
        return Err(StreamError::Protocol {
            url: url.to_owned(),
            wanted: protocol,
            chosen,
        });
    }
    // The connection hands itself over as it ends.
    let upgraded = hyper::upgrade::on(response);
    if !connection_ended {
        connection.await.map_err(failed)?;
    }
    Ok(TokioIo::new(upgraded.await.map_err(failed)?))
}

/// Up to `limit` bytes of `body`, as text.
async fn read_prefix(mut body: hyper::body::Incoming, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    bytes.truncate(limit);
    String::from_utf8_lossy(&bytes).trim_end().to_owned()
}

/// A session's streams, by the kubelet's `streamType` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// A JSON `metav1.Status` when the command ends.
    Error,
    /// The command's stdin (client to server).
    Stdin,
    /// The command's stdout (with a TTY, all its output).
    Stdout,
    /// The command's stderr (none with a TTY).
    Stderr,
    /// Terminal sizes, JSON `{"Width":…,"Height":…}` (client to server; with a TTY).
    Resize,
}

impl Channel {
    /// The `streamtype` header's value.
    fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Resize => "resize",
        }
    }

    /// The streams to open, in kubectl's order: exactly what the CRI request asked for (see
    /// `CriRuntime::exec`), since the server waits for that many streams and never answers one
    /// more (which would also stall its handling of other streams).
    fn for_request(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Vec<Self> {
        let mut channels = vec![Self::Error];
        if stdin {
            channels.push(Self::Stdin);
        }
        if stdout {
            channels.push(Self::Stdout);
        }
        if stderr && !tty {
            channels.push(Self::Stderr);
        }
        if tty {
            channels.push(Self::Resize);
        }
        channels
    }
}

/// A stream the client opened.
#[derive(Debug)]
struct Opened {
    channel: Channel,
    id: StreamId,
    /// The server's SYN_REPLY came: input may go.
    replied: bool,
    /// The server reset it: nothing more goes or comes.
    reset: bool,
}

/// Opens a stream per channel (odd ids from 1, as a client's are).
async fn open_streams<W>(
    writer: &mut FramedWrite<W, Codec>,
    channels: &[Channel],
) -> Result<Vec<Opened>, StreamError>
where
    W: AsyncWrite + Unpin,
{
    let mut headers = HeaderEncoder::default();
    let mut opened = Vec::with_capacity(channels.len());
    for (&channel, id) in channels.iter().zip((1..).step_by(2)) {
        let block = headers.block(&[(STREAM_TYPE, channel.name())])?;
        writer
            .feed(Frame::SynStream {
                stream: id,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: block,
            })
            .await?;
        opened.push(Opened {
            channel,
            id,
            replied: false,
            reset: false,
        });
    }
    writer.flush().await?;
    Ok(opened)
}

/// Runs a session over an upgraded connection until the command's status arrives, the
/// connection closes, or the caller goes.
async fn session<S>(connection: S, streams: ExecStreams) -> Result<Ended, StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        resize,
        tty,
    } = streams;
    let channels = Channel::for_request(stdin.is_some(), stdout.is_some(), stderr.is_some(), tty);
    let (read, write) = tokio::io::split(connection);
    let mut writer = FramedWrite::new(write, Codec);
    let opened = open_streams(&mut writer, &channels).await?;
    let (control, control_rx) = mpsc::unbounded_channel();
    // One DATA frame queued at a time: stdin waits in the caller's channel, not here.
    let (data, data_rx) = mpsc::channel(1);
    let session = Session {
        opened,
        status: Vec::new(),
        input: Input {
            stdin_state: if stdin.is_some() {
                StdinState::Open
            } else {
                StdinState::Closed
            },
            stdin,
            typed: Bytes::new(),
            resize,
            size: None,
        },
        link: Link::new(control),
    };
    session
        .run(
            FramedRead::new(read, Codec),
            write_frames(writer, control_rx, data_rx),
            data,
            Outputs { stdout, stderr },
        )
        .await
}

/// Where the command's stdin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinState {
    /// The caller may send more.
    Open,
    /// The caller closed it: a FIN goes once what it typed has gone.
    Ended,
    /// The FIN went, or the server reset the stream, or there never was stdin.
    Closed,
}

/// The caller's input, and what of it waits to go.
struct Input {
    stdin: Option<mpsc::Receiver<Bytes>>,
    stdin_state: StdinState,
    /// Read from stdin and not sent yet: held back by the stream's reply or the peer's window.
    typed: Bytes,
    resize: Option<mpsc::Receiver<TerminalSize>>,
    /// The latest terminal size not sent yet (a newer one replaces it).
    size: Option<Bytes>,
}

impl Input {
    /// Whether to take more from the caller's stdin.
    fn wants_stdin(&self) -> bool {
        self.stdin_state == StdinState::Open && self.typed.is_empty()
    }
}

/// The next DATA frame the input side may send.
#[derive(Debug, Clone, Copy)]
enum Outgoing {
    /// The pending terminal size, on this stream.
    Size(StreamId),
    /// This many bytes of what was typed.
    Stdin(StreamId, usize),
    /// End of stdin.
    Fin(StreamId),
}

/// Output read from the connection, waiting for room in the caller's channel.
struct Waiting {
    channel: Channel,
    stream: StreamId,
    data: Bytes,
}

/// What a frame from the server leads to.
enum Step {
    Continue,
    Deliver(Waiting),
    End(Result<Ended, StreamError>),
}

/// A session's state, owned by its one loop (the caller's output channels are beside it,
/// since the loop lends them out while it waits for room).
struct Session {
    opened: Vec<Opened>,
    /// The error stream's bytes: one JSON Status, which could in principle come in pieces.
    status: Vec<u8>,
    input: Input,
    /// Windows, and the frames that concern the connection.
    link: Link,
}

impl Session {
    /// The loop: every branch's work is synchronous, so the branches never hold each other up,
    /// and `writing` runs beside them all.
    async fn run<R>(
        mut self,
        mut reader: FramedRead<R, Codec>,
        writing: impl Future<Output = Infallible>,
        data: mpsc::Sender<Frame>,
        outputs: Outputs,
    ) -> Result<Ended, StreamError>
    where
        R: AsyncRead + Unpin,
    {
        tokio::pin!(writing);
        let mut waiting: Option<Waiting> = None;
        loop {
            let outgoing = self.outgoing();
            let waiting_on = waiting.as_ref().map(|w| w.channel);
            tokio::select! {
                never = &mut writing => match never {},
                // Reading stops while output waits for the caller: that is the backpressure.
                frame = reader.next(), if waiting.is_none() => {
                    let step = match frame {
                        Some(Ok(frame)) => self.on_frame(frame, &outputs),
                        None => Step::End(Status::at_close(&self.status)),
                        Some(Err(e)) if is_close(&e) => {
                            tracing::debug!(error = %e, "the streaming server's connection ended");
                            Step::End(Status::at_close(&self.status))
                        }
                        Some(Err(e)) => Step::End(Err(e.into())),
                    };
                    match step {
                        Step::Continue => {}
                        Step::Deliver(output) => waiting = Some(output),
                        Step::End(ended) => return ended,
                    }
                }
                permit = outputs.room(waiting_on), if waiting.is_some() => {
                    if let Some(Waiting { channel, stream, data }) = waiting.take() {
                        let length = data.len();
                        match permit {
                            Some(permit) => permit.send(data),
                            None => tracing::trace!(
                                channel = channel.name(),
                                "the caller stopped reading this stream; output dropped"
                            ),
                        }
                        self.link.consumed(stream, length);
                    }
                }
                () = outputs.all_closed() => return Ok(Ended::CallerGone),
                permit = data.reserve(), if outgoing.is_some() => {
                    if let (Ok(permit), Some(outgoing)) = (permit, outgoing) {
                        permit.send(self.take(outgoing));
                    }
                }
                typed = next_of(&mut self.input.stdin), if self.input.wants_stdin() => match typed {
                    Some(typed) => self.input.typed = typed,
                    None => {
                        tracing::debug!("the caller closed stdin; the command reads end of file");
                        self.input.stdin_state = StdinState::Ended;
                    }
                },
                size = next_of(&mut self.input.resize) => {
                    if let Some(size) = size {
                        self.input.size = Some(Bytes::from(resize_payload(size)));
                    }
                }
            }
        }
    }

    /// The open stream of `channel` input may go on: answered, and not reset.
    fn writable(&self, channel: Channel) -> Option<StreamId> {
        self.opened
            .iter()
            .find(|o| o.channel == channel && o.replied && !o.reset)
            .map(|o| o.id)
    }

    fn opened_mut(&mut self, stream: StreamId) -> Option<&mut Opened> {
        self.opened.iter_mut().find(|o| o.id == stream)
    }

    fn channel_of(&self, stream: StreamId) -> Option<Channel> {
        self.opened
            .iter()
            .find(|o| o.id == stream && !o.reset)
            .map(|o| o.channel)
    }

    /// What the input side may send now: a terminal size before stdin (it is small, and the
    /// user sees it), stdin as far as the peer's window allows, then the FIN.
    fn outgoing(&self) -> Option<Outgoing> {
        if let (Some(size), Some(id)) = (&self.input.size, self.writable(Channel::Resize))
            && self.link.send_window.available(id) >= size.len()
        {
            return Some(Outgoing::Size(id));
        }
        let id = self.writable(Channel::Stdin)?;
        if !self.input.typed.is_empty() {
            let room = self
                .link
                .send_window
                .available(id)
                .min(MAX_DATA)
                .min(self.input.typed.len());
            return (room > 0).then_some(Outgoing::Stdin(id, room));
        }
        (self.input.stdin_state == StdinState::Ended).then_some(Outgoing::Fin(id))
    }

    /// The DATA frame for `outgoing`, counted against the window.
    fn take(&mut self, outgoing: Outgoing) -> Frame {
        let (stream, fin, data) = match outgoing {
            Outgoing::Size(id) => (id, false, self.input.size.take().unwrap_or_default()),
            Outgoing::Stdin(id, length) => {
                let length = length.min(self.input.typed.len());
                (id, false, self.input.typed.split_to(length))
            }
            Outgoing::Fin(id) => {
                self.input.stdin_state = StdinState::Closed;
                (id, true, Bytes::new())
            }
        };
        self.link.send_window.sent(stream, data.len());
        Frame::Data { stream, fin, data }
    }

    fn on_frame(&mut self, frame: Frame, outputs: &Outputs) -> Step {
        match self.link.on_frame(frame) {
            Some(StreamFrame::Data { stream, fin, data }) => {
                self.on_data(stream, fin, data, outputs)
            }
            Some(StreamFrame::Reply(stream)) => {
                match self.opened_mut(stream) {
                    Some(opened) => opened.replied = true,
                    None => tracing::debug!(stream, "a SYN_REPLY for a stream never opened"),
                }
                Step::Continue
            }
            Some(StreamFrame::Reset { stream, status }) => self.on_reset(stream, status),
            None => Step::Continue,
        }
    }

    fn on_data(&mut self, stream: StreamId, fin: bool, data: Bytes, outputs: &Outputs) -> Step {
        if fin {
            self.link.forget(stream);
        }
        match self.channel_of(stream) {
            Some(channel @ (Channel::Stdout | Channel::Stderr)) => {
                if !data.is_empty() && outputs.wants(channel) {
                    return Step::Deliver(Waiting {
                        channel,
                        stream,
                        data,
                    });
                }
            }
            Some(Channel::Error) => {
                self.status.extend_from_slice(&data);
                // The server sends the status after the last of the output (containerd waits
                // for the output to drain before it reports the exit), so it ends the session.
                if let Ok(parsed) = serde_json::from_slice::<Status>(&self.status) {
                    return Step::End(parsed.outcome());
                }
            }
            other => {
                tracing::debug!(stream, channel = ?other, "ignoring DATA on a stream that carries none down")
            }
        }
        self.link.consumed(stream, data.len());
        Step::Continue
    }

    fn on_reset(&mut self, stream: StreamId, status: RstStatus) -> Step {
        let Some(opened) = self.opened_mut(stream) else {
            tracing::debug!(stream, %status, "a RST_STREAM for a stream never opened");
            return Step::Continue;
        };
        opened.reset = true;
        let channel = opened.channel;
        tracing::debug!(stream = channel.name(), %status, "the streaming server reset a stream");
        match channel {
            Channel::Error => {
                return Step::End(Err(StreamError::Reset {
                    stream: channel.name(),
                    status,
                }));
            }
            Channel::Stdin => {
                // Dropping the receiver tells the caller its input goes nowhere.
                self.input.stdin = None;
                self.input.stdin_state = StdinState::Closed;
                self.input.typed = Bytes::new();
            }
            Channel::Resize => {
                self.input.resize = None;
                self.input.size = None;
            }
            Channel::Stdout | Channel::Stderr => {}
        }
        Step::Continue
    }
}

/// The next item of an optional channel; `None` once when it closes, then pending forever, as
/// is an absent one (so a `select!` simply stops hearing from it).
pub(crate) async fn next_of<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    let Some(receiver) = rx else {
        return std::future::pending().await;
    };
    let item = receiver.recv().await;
    if item.is_none() {
        *rx = None;
    }
    item
}

/// A resize message's payload, as the server's `remotecommand.TerminalSize` decodes it.
fn resize_payload(size: TerminalSize) -> String {
    format!(r#"{{"Width":{},"Height":{}}}"#, size.width, size.height)
}

/// The caller's output channels.
struct Outputs {
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
}

impl Outputs {
    fn sender(&self, channel: Channel) -> Option<&mpsc::Sender<Bytes>> {
        match channel {
            Channel::Stdout => self.stdout.as_ref(),
            Channel::Stderr => self.stderr.as_ref(),
            Channel::Error | Channel::Stdin | Channel::Resize => None,
        }
    }

    /// Whether the caller still reads `channel`.
    fn wants(&self, channel: Channel) -> bool {
        self.sender(channel).is_some_and(|tx| !tx.is_closed())
    }

    /// Room for one message in `channel`; `None` at once if the caller stopped reading it.
    async fn room(&self, channel: Option<Channel>) -> Option<mpsc::Permit<'_, Bytes>> {
        let tx = channel.and_then(|c| self.sender(c))?;
        tx.reserve().await.ok()
    }

    /// Completes once the caller has dropped the receiver of every output stream it asked
    /// for; never when it asked for none (a stdin-only session ends with the command).
    async fn all_closed(&self) {
        if self.stdout.is_none() && self.stderr.is_none() {
            return std::future::pending().await;
        }
        futures::future::join(closed(&self.stdout), closed(&self.stderr)).await;
    }
}

/// Completes when `tx`'s receiver is gone (at once for an absent stream).
async fn closed(tx: &Option<mpsc::Sender<Bytes>>) {
    if let Some(tx) = tx {
        tx.closed().await;
    }
}

/// The part of a `metav1.Status` the error stream's verdict needs.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Status {
    /// `Success` or `Failure`.
    status: String,
    message: String,
    /// `NonZeroExitCode` when the command ran and failed; `InternalError` when it could not
    /// run.
    reason: String,
    details: Option<StatusDetails>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct StatusDetails {
    causes: Vec<StatusCause>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct StatusCause {
    reason: String,
    message: String,
}

impl Status {
    /// What the Status says: an exit code, or why the command did not run.
    fn outcome(self) -> Result<Ended, StreamError> {
        if self.status == "Success" {
            return Ok(Ended::Exited(0));
        }
        if self.reason == "NonZeroExitCode" {
            let code = self
                .details
                .iter()
                .flat_map(|d| &d.causes)
                .find(|c| c.reason == "ExitCode")
                .and_then(|c| c.message.trim().parse::<i32>().ok());
            if let Some(code) = code {
                return Ok(Ended::Exited(code));
            }
        }
        Err(StreamError::Failed(if self.message.is_empty() {
            format!("the command failed ({} {})", self.status, self.reason)
        } else {
            self.message
        }))
    }

    /// The verdict when the connection closed: whatever the error stream held by then.
    fn at_close(bytes: &[u8]) -> Result<Ended, StreamError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(StreamError::NoStatus);
        }
        serde_json::from_slice::<Status>(bytes)
            .map_err(|source| StreamError::BadStatus {
                text: String::from_utf8_lossy(bytes).into_owned(),
                source,
            })?
            .outcome()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{Context, bail, ensure};
    use bytes::Buf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::codec::Framed;
    use wedge_core::spdy::SETTINGS_INITIAL_WINDOW_SIZE;

    fn outcome(json: &str) -> Result<Ended, StreamError> {
        Status::at_close(json.as_bytes())
    }

    #[test]
    fn statuses_give_exit_codes_or_failures() {
        assert_eq!(
            outcome(r#"{"metadata":{},"status":"Success"}"#).ok(),
            Some(Ended::Exited(0))
        );
        let non_zero = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(outcome(non_zero).ok(), Some(Ended::Exited(3)));
        // As containerd 1.6.20 reports a binary that is not there.
        let internal = r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: error executing command in container: failed to exec in container: failed to start exec \"f\": OCI runtime exec failed: exec failed: unable to start container process: exec: \"/no/such\": stat /no/such: no such file or directory: unknown","reason":"InternalError","details":{"causes":[{"message":"error executing command in container"}]},"code":500}"#;
        match outcome(internal) {
            Err(StreamError::Failed(m)) => {
                assert!(m.contains("no such file or directory"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        // A NonZeroExitCode without a readable code is a failure, not a made-up code.
        let garbled = r#"{"status":"Failure","message":"exit ?","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"x"}]}}"#;
        assert!(matches!(outcome(garbled), Err(StreamError::Failed(m)) if m == "exit ?"));
        assert!(matches!(outcome(""), Err(StreamError::NoStatus)));
        assert!(matches!(
            outcome("command failed"),
            Err(StreamError::BadStatus { .. })
        ));
    }

    #[test]
    fn resizes_are_the_servers_json() {
        assert_eq!(
            resize_payload(TerminalSize {
                width: 100,
                height: 30
            }),
            r#"{"Width":100,"Height":30}"#
        );
    }

    #[test]
    fn the_streams_opened_are_the_ones_asked_for() {
        use Channel::*;
        assert_eq!(
            Channel::for_request(true, true, true, false),
            [Error, Stdin, Stdout, Stderr]
        );
        // containerd gives a terminal no stderr, and waits for a resize stream instead.
        assert_eq!(
            Channel::for_request(true, true, true, true),
            [Error, Stdin, Stdout, Resize]
        );
        assert_eq!(Channel::for_request(false, false, false, false), [Error]);
    }

    #[test]
    fn errors_map_to_the_runtime_boundary() {
        let refused = StreamError::Connect {
            address: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(matches!(
            refused.into_runtime_error("exec in container c"),
            RuntimeError::Unavailable(m) if m.starts_with("exec in container c: ")
        ));
        assert_eq!(
            StreamError::Failed("Internal error occurred: x".into())
                .into_runtime_error("exec in container c"),
            RuntimeError::Failed("Internal error occurred: x".into())
        );
        assert!(matches!(
            StreamError::NoStatus.into_runtime_error("attach to container c"),
            RuntimeError::Failed(m) if m.starts_with("attach to container c: ")
        ));
        assert!(matches!(
            StreamError::from(SpdyError::Io(std::io::ErrorKind::BrokenPipe.into())),
            StreamError::Socket(_)
        ));
        assert!(matches!(
            StreamError::from(SpdyError::UnsupportedVersion(2)),
            StreamError::Spdy(_)
        ));
    }

    /// What a SYN_REPLY's header block looks like from Go (compressed against the dictionary,
    /// which the client never reads).
    const GO_REPLY_HEADERS: &[u8] = b"\x78\xbb\xdf\xa2\x51\xb2\x62\x60\x60\x60\x00\x00\x00\xff\xff";

    /// The streaming server's end of a session.
    struct Server<T> {
        io: Framed<T, Codec>,
        /// The client's header stream, read as Go's server reads it.
        inflater: flate2::Decompress,
    }

    impl<T: AsyncRead + AsyncWrite + Unpin> Server<T> {
        fn new(io: Framed<T, Codec>) -> Self {
            Self {
                io,
                inflater: flate2::Decompress::new(true),
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

        /// The next frame other than a WINDOW_UPDATE.
        async fn next_not_window(&mut self) -> Option<Frame> {
            loop {
                match self.next().await? {
                    Frame::WindowUpdate { .. } => {}
                    frame => return Some(frame),
                }
            }
        }

        /// The client's first `count` frames, which must be SYN_STREAMs: their ids and
        /// `streamtype`s.
        async fn opened(&mut self, count: usize) -> anyhow::Result<Vec<(StreamId, String)>> {
            let mut opened = Vec::new();
            for _ in 0..count {
                let frame = self.next().await.context("the client went")?;
                let Frame::SynStream {
                    stream, headers, ..
                } = frame
                else {
                    bail!("expected a SYN_STREAM, got {frame:?}");
                };
                opened.push((stream, self.stream_type(&headers)?));
            }
            Ok(opened)
        }

        async fn reply(&mut self, streams: &[(StreamId, String)]) -> anyhow::Result<()> {
            for (stream, _) in streams {
                self.send(Frame::SynReply {
                    stream: *stream,
                    fin: false,
                    headers: Bytes::from_static(GO_REPLY_HEADERS),
                })
                .await?;
            }
            Ok(())
        }

        /// Opens and answers `count` streams; their `streamtype`s in order.
        async fn accept(&mut self, count: usize) -> anyhow::Result<Vec<String>> {
            let opened = self.opened(count).await?;
            self.reply(&opened).await?;
            let ids: Vec<StreamId> = opened.iter().map(|(id, _)| *id).collect();
            let odd: Vec<StreamId> = (0..count)
                .map(|i| 1 + 2 * u32::try_from(i).unwrap_or(0))
                .collect();
            ensure!(ids == odd, "stream ids {ids:?}");
            Ok(opened.into_iter().map(|(_, t)| t).collect())
        }

        /// The only header of a SYN_STREAM, which must be `streamtype`.
        fn stream_type(&mut self, block: &[u8]) -> anyhow::Result<String> {
            let mut raw = Vec::with_capacity(4096);
            self.inflater
                .decompress_vec(block, &mut raw, flate2::FlushDecompress::Sync)?;
            let mut raw = Bytes::from(raw);
            ensure!(raw.try_get_u32()? == 1, "one header");
            let mut take = || -> anyhow::Result<Bytes> {
                let length = usize::try_from(raw.try_get_u32()?)?;
                ensure!(raw.len() >= length, "short header block");
                Ok(raw.split_to(length))
            };
            let (name, value) = (take()?, take()?);
            ensure!(name.as_ref() == b"streamtype", "header {name:?}");
            Ok(String::from_utf8(value.to_vec())?)
        }

        /// Stdin the client sends on `stream` until its FIN (skipping window updates).
        async fn read_stdin(&mut self, stream: StreamId) -> anyhow::Result<Vec<u8>> {
            let mut got = Vec::new();
            loop {
                match self.next_not_window().await.context("the client went")? {
                    Frame::Data {
                        stream: s,
                        fin,
                        data,
                    } if s == stream => {
                        got.extend_from_slice(&data);
                        if fin {
                            return Ok(got);
                        }
                    }
                    other => bail!("unexpected {other:?}"),
                }
            }
        }

        async fn status(&mut self, json: &str) -> anyhow::Result<()> {
            self.send(Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from(json.to_owned()),
            })
            .await
        }
    }

    fn data(stream: StreamId, bytes: &'static [u8]) -> Frame {
        Frame::Data {
            stream,
            fin: false,
            data: Bytes::from_static(bytes),
        }
    }

    const EXIT_3: &str = r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
    const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

    /// A session over an in-memory pipe, spawned, and the server's end of it.
    fn pair(
        streams: ExecStreams,
    ) -> (
        tokio::task::JoinHandle<Result<Ended, StreamError>>,
        Server<DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        (
            tokio::spawn(session(client, streams)),
            Server::new(Framed::new(server, Codec)),
        )
    }

    #[tokio::test]
    async fn both_directions_flow_and_the_status_ends_the_session() -> anyhow::Result<()> {
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let (stdout_tx, mut stdout_rx) = mpsc::channel(4);
        let (stderr_tx, mut stderr_rx) = mpsc::channel(4);
        let (resize_tx, resize_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            stdout: Some(stdout_tx),
            stderr: Some(stderr_tx),
            resize: Some(resize_rx),
            tty: false,
        };
        let (session, mut server) = pair(streams);
        assert_eq!(
            server.accept(4).await?,
            ["error", "stdin", "stdout", "stderr"]
        );
        stdin_tx.send(Bytes::from_static(b"hi\n")).await?;
        // Without a terminal there is no resize stream: sizes go nowhere.
        resize_tx
            .send(TerminalSize {
                width: 80,
                height: 24,
            })
            .await?;
        assert_eq!(server.next().await, Some(data(3, b"hi\n")));
        server.send(data(5, b"")).await?;
        server.send(data(5, b"got hi\n")).await?;
        server.send(data(7, b"oops\n")).await?;
        server.send(data(9, b"ignored")).await?;
        server
            .send(Frame::Unknown {
                kind: 10,
                flags: 0,
                body: Bytes::from_static(b"credential"),
            })
            .await?;
        // The status in two pieces.
        let (head, tail) = EXIT_3.split_at(20);
        server.status(head).await?;
        server.status(tail).await?;
        assert_eq!(session.await??, Ended::Exited(3));
        assert_eq!(stdout_rx.recv().await.as_deref(), Some(&b"got hi\n"[..]));
        assert_eq!(stdout_rx.recv().await, None, "empty DATA is not output");
        assert_eq!(stderr_rx.recv().await.as_deref(), Some(&b"oops\n"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn a_terminal_session_sends_sizes_on_its_resize_stream() -> anyhow::Result<()> {
        let (stdout_tx, _stdout_rx) = mpsc::channel(4);
        let (stderr_tx, _stderr_rx) = mpsc::channel(4);
        let (resize_tx, resize_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdout: Some(stdout_tx),
            stderr: Some(stderr_tx),
            resize: Some(resize_rx),
            tty: true,
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        assert_eq!(server.accept(3).await?, ["error", "stdout", "resize"]);
        resize_tx
            .send(TerminalSize {
                width: 80,
                height: 24,
            })
            .await?;
        assert_eq!(
            server.next().await,
            Some(data(5, br#"{"Width":80,"Height":24}"#))
        );
        server.status(SUCCESS).await?;
        assert_eq!(session.await??, Ended::Exited(0));
        Ok(())
    }

    #[tokio::test]
    async fn closing_stdin_sends_a_fin_and_the_output_still_comes() -> anyhow::Result<()> {
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let (stdout_tx, mut stdout_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        stdin_tx.send(Bytes::from_static(b"a\n")).await?;
        drop(stdin_tx);
        let (session, mut server) = pair(streams);
        assert_eq!(server.accept(3).await?, ["error", "stdin", "stdout"]);
        assert_eq!(server.next().await, Some(data(3, b"a\n")));
        assert_eq!(
            server.next().await,
            Some(Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::new()
            })
        );
        server.send(data(5, b"a\nafter-eof\n")).await?;
        server.status(EXIT_3).await?;
        assert_eq!(session.await??, Ended::Exited(3));
        assert_eq!(
            stdout_rx.recv().await.as_deref(),
            Some(&b"a\nafter-eof\n"[..])
        );
        Ok(())
    }

    /// Nothing from the client within a while (time is paused: this takes no real time).
    async fn silent<T: AsyncRead + AsyncWrite + Unpin>(server: &mut Server<T>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn input_waits_for_its_streams_reply() -> anyhow::Result<()> {
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        let opened = server.opened(2).await?;
        stdin_tx.send(Bytes::from_static(b"early")).await?;
        assert!(silent(&mut server).await, "stdin before the SYN_REPLY");
        server.reply(&opened).await?;
        assert_eq!(server.next().await, Some(data(3, b"early")));
        server.status(SUCCESS).await?;
        assert_eq!(session.await??, Ended::Exited(0));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_windows_holds_stdin_back() -> anyhow::Result<()> {
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        let opened = server.opened(2).await?;
        server
            .send(Frame::Settings {
                clear: false,
                settings: vec![wedge_core::spdy::Setting {
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    flags: 0,
                    value: 4,
                }],
            })
            .await?;
        server.reply(&opened).await?;
        stdin_tx.send(Bytes::from_static(b"0123456789")).await?;
        drop(stdin_tx);
        assert_eq!(server.next().await, Some(data(3, b"0123")));
        assert!(silent(&mut server).await, "stdin beyond the window");
        server
            .send(Frame::WindowUpdate {
                stream: 3,
                delta: 3,
            })
            .await?;
        assert_eq!(server.next().await, Some(data(3, b"456")));
        server
            .send(Frame::WindowUpdate {
                stream: 3,
                delta: 100,
            })
            .await?;
        assert_eq!(server.read_stdin(3).await?, b"789");
        server.status(SUCCESS).await?;
        assert_eq!(session.await??, Ended::Exited(0));
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_without_windows_gets_input_and_no_window_updates() -> anyhow::Result<()> {
        // containerd's spdystream: no SETTINGS, no WINDOW_UPDATE. Far more than a window
        // goes both ways, the output while the input is still being sent, and nothing but
        // stdin comes back: a WINDOW_UPDATE would be unread at the server's close, and lose
        // the status (see the `spdy` module docs).
        const SIZE: usize = 256 * 1024;
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let (stdout_tx, mut stdout_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        server.accept(3).await?;
        let input: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let typing = {
            let input = input.clone();
            async move {
                for chunk in input.chunks(10_000) {
                    stdin_tx.send(Bytes::copy_from_slice(chunk)).await?;
                }
                anyhow::Ok(())
            }
        };
        let reading = async {
            let mut got = 0;
            while let Some(chunk) = stdout_rx.recv().await {
                got += chunk.len();
            }
            got
        };
        let serving = async {
            // Echo what comes, as `cat` would.
            let mut echoed = Vec::new();
            loop {
                match server.next().await.context("the client went")? {
                    Frame::Data {
                        stream: 3,
                        fin,
                        data,
                    } => {
                        echoed.extend_from_slice(&data);
                        if !data.is_empty() {
                            server
                                .send(Frame::Data {
                                    stream: 5,
                                    fin: false,
                                    data,
                                })
                                .await?;
                        }
                        if fin {
                            break;
                        }
                    }
                    other => bail!("unexpected {other:?}"),
                }
            }
            server.status(SUCCESS).await?;
            anyhow::Ok((echoed, server))
        };
        let (typed, got, served, ended) = tokio::join!(typing, reading, serving, session);
        typed?;
        let (echoed, mut server) = served?;
        assert!(echoed == input, "stdin arrives whole");
        assert_eq!(got, SIZE);
        assert_eq!(ended??, Ended::Exited(0));
        // The session is over and its half of the pipe gone, with nothing more sent.
        assert_eq!(server.next().await, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_that_keeps_windows_is_granted_what_the_caller_consumed() -> anyhow::Result<()> {
        let (stdout_tx, mut stdout_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        server.accept(2).await?;
        // 40 KB before the peer says it keeps windows: granted as soon as it does.
        for _ in 0..4 {
            server.send(data(3, &[b'x'; 10_000])).await?;
        }
        for _ in 0..4 {
            assert_eq!(stdout_rx.recv().await.map(|d| d.len()), Some(10_000));
        }
        server
            .send(Frame::Settings {
                clear: false,
                settings: vec![wedge_core::spdy::Setting {
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    flags: 0,
                    value: 65_536,
                }],
            })
            .await?;
        assert_eq!(
            server.next().await,
            Some(Frame::WindowUpdate {
                stream: 3,
                delta: 40_000
            })
        );
        assert_eq!(
            server.next().await,
            Some(Frame::WindowUpdate {
                stream: 0,
                delta: 40_000
            })
        );
        // Then by half windows as the caller reads.
        server.send(data(3, &[b'y'; 32_768])).await?;
        assert_eq!(stdout_rx.recv().await.map(|d| d.len()), Some(32_768));
        assert_eq!(
            server.next().await,
            Some(Frame::WindowUpdate {
                stream: 3,
                delta: 32_768
            })
        );
        server.status(SUCCESS).await?;
        assert_eq!(session.await??, Ended::Exited(0));
        Ok(())
    }

    #[tokio::test]
    async fn pings_are_answered_and_server_streams_refused() -> anyhow::Result<()> {
        let (session, mut server) = pair(ExecStreams::default());
        server.accept(1).await?;
        // An odd id is a client's: not answered.
        server.send(Frame::Ping { id: 1 }).await?;
        server.send(Frame::Ping { id: 2 }).await?;
        assert_eq!(server.next().await, Some(Frame::Ping { id: 2 }));
        server
            .send(Frame::SynStream {
                stream: 2,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: Bytes::from_static(GO_REPLY_HEADERS),
            })
            .await?;
        assert_eq!(
            server.next().await,
            Some(Frame::RstStream {
                stream: 2,
                status: RstStatus::RefusedStream
            })
        );
        server
            .send(Frame::GoAway {
                last_good: 0,
                status: 0,
            })
            .await?;
        server.status(SUCCESS).await?;
        assert_eq!(session.await??, Ended::Exited(0));
        Ok(())
    }

    #[tokio::test]
    async fn a_close_without_status_is_an_error() -> anyhow::Result<()> {
        let (stdout_tx, _stdout_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        server.accept(2).await?;
        server.send(data(3, b"partial")).await?;
        drop(server);
        let ended = session.await?;
        assert!(matches!(ended, Err(StreamError::NoStatus)), "{ended:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_reset_error_stream_or_garbage_fails_the_session() -> anyhow::Result<()> {
        let (session, mut server) = pair(ExecStreams::default());
        server.accept(1).await?;
        server
            .send(Frame::RstStream {
                stream: 1,
                status: RstStatus::InternalError,
            })
            .await?;
        let ended = session.await?;
        assert!(
            matches!(
                ended,
                Err(StreamError::Reset {
                    stream: "error",
                    status: RstStatus::InternalError
                })
            ),
            "{ended:?}"
        );

        let (session, mut server) = pair(ExecStreams::default());
        server.accept(1).await?;
        server
            .io
            .get_mut()
            .write_all(b"\x80\x02\x00\x01garbage")
            .await?;
        let ended = session.await?;
        assert!(
            matches!(
                ended,
                Err(StreamError::Spdy(SpdyError::UnsupportedVersion(2)))
            ),
            "{ended:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_reader_does_not_stall_stdin_and_a_gone_one_ends_the_session()
    -> anyhow::Result<()> {
        let (stdin_tx, stdin_rx) = mpsc::channel(1);
        let (stdout_tx, mut stdout_rx) = mpsc::channel(1);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        server.accept(3).await?;
        // The server sends more than the caller has room for; nobody reads it yet.
        for i in 0..3 {
            server
                .send(Frame::Data {
                    stream: 5,
                    fin: false,
                    data: Bytes::from(format!("{i}")),
                })
                .await?;
        }
        // Stdin still gets through while the output waits for room.
        stdin_tx.send(Bytes::from_static(b"typed")).await?;
        assert_eq!(server.next().await, Some(data(3, b"typed")));
        // The caller reads one message, then goes.
        assert_eq!(stdout_rx.recv().await.as_deref(), Some(&b"0"[..]));
        drop(stdout_rx);
        assert_eq!(session.await??, Ended::CallerGone);
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_session_closes_the_connection() -> anyhow::Result<()> {
        let (stdout_tx, _stdout_rx) = mpsc::channel(1);
        let streams = ExecStreams {
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        let (session, mut server) = pair(streams);
        server.accept(2).await?;
        session.abort();
        assert!(session.await.is_err_and(|e| e.is_cancelled()));
        // The server's read ends: the client's half of the pipe is gone.
        assert_eq!(server.next().await, None);
        Ok(())
    }

    #[tokio::test]
    async fn urls_other_than_plain_http_are_refused() {
        for url in [
            "https://127.0.0.1:1/exec/x",
            "127.0.0.1:1/exec/x",
            "/exec/x",
        ] {
            assert!(
                matches!(
                    connect(url, STREAM_PROTOCOL).await,
                    Err(StreamError::BadUrl { .. })
                ),
                "{url}"
            );
        }
        // Nothing listens on port 1.
        assert!(matches!(
            connect("http://127.0.0.1:1/exec/x", STREAM_PROTOCOL).await,
            Err(StreamError::Connect { .. })
        ));
    }

    /// A one-connection streaming server on 127.0.0.1: reads the request head, writes `answer`
    /// and hands back the request and the connection.
    async fn answer_once(
        answer: &'static [u8],
    ) -> anyhow::Result<(
        String,
        tokio::task::JoinHandle<anyhow::Result<(String, TcpStream)>>,
    )> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/exec/t0ken", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await?;
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await?);
            }
            tcp.write_all(answer).await?;
            anyhow::Ok((String::from_utf8(head)?, tcp))
        });
        Ok((url, server))
    }

    #[tokio::test]
    async fn the_upgrade_is_a_post_that_must_name_the_protocol() -> anyhow::Result<()> {
        // An expired token, as Go's server answers it.
        let (url, server) = answer_once(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 19\r\n\r\n404 page not found\n",
        )
        .await?;
        let refused = connect(&url, STREAM_PROTOCOL).await;
        assert!(
            matches!(&refused, Err(StreamError::Refused { status, body, .. })
                if status.as_u16() == 404 && body == "404 page not found"),
            "{refused:?}"
        );
        let (request, _tcp) = server.await??;
        let lower = request.to_ascii_lowercase();
        ensure!(
            request.starts_with("POST /exec/t0ken HTTP/1.1\r\n"),
            "{request}"
        );
        for line in [
            "connection: upgrade\r\n",
            "upgrade: spdy/3.1\r\n",
            "x-stream-protocol-version: v4.channel.k8s.io\r\n",
        ] {
            ensure!(lower.contains(line), "{line:?} in {request}");
        }

        // Upgraded, but to the first protocol (no Status at the end).
        let (url, _server) = answer_once(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
        )
        .await?;
        let chose = connect(&url, STREAM_PROTOCOL).await;
        assert!(
            matches!(&chose, Err(StreamError::Protocol { chosen, .. }) if chosen.is_empty()),
            "{chose:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_session_over_tcp_from_upgrade_to_status() -> anyhow::Result<()> {
        // A PING right behind the answer, in the same write: hyper hands it over with the
        // connection.
        let (url, server) = answer_once(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n\
              \x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x02",
        )
        .await?;
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let (stdout_tx, mut stdout_rx) = mpsc::channel(4);
        let streams = ExecStreams {
            stdin: Some(stdin_rx),
            stdout: Some(stdout_tx),
            ..Default::default()
        };
        stdin_tx.send(Bytes::from_static(b"hello\n")).await?;
        drop(stdin_tx);
        let session = tokio::spawn(async move { run(&url, streams).await });
        let (_request, tcp) = server.await??;
        let mut server = Server::new(Framed::new(tcp, Codec));
        assert_eq!(server.accept(3).await?, ["error", "stdin", "stdout"]);
        // The PING's answer may come before or after the stdin.
        let mut stdin = Vec::new();
        let mut pinged = false;
        while !pinged || stdin.len() < 6 {
            match server.next().await.context("the client went")? {
                Frame::Ping { id: 2 } => pinged = true,
                Frame::Data {
                    stream: 3, data, ..
                } => stdin.extend_from_slice(&data),
                other => bail!("unexpected {other:?}"),
            }
        }
        assert_eq!(stdin, b"hello\n");
        server.send(data(5, b"hello\n")).await?;
        server.status(SUCCESS).await?;
        assert_eq!(session.await??, Ended::Exited(0));
        assert_eq!(stdout_rx.recv().await.as_deref(), Some(&b"hello\n"[..]));
        Ok(())
    }
}
