//! One connection: dial, hello, then frames both ways until the link ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::messages::{ErrorPayload, Hello, Welcome};
use wedge_core::protocol::mux::{Mux, Role};
use wedge_core::protocol::order::InboundOrder;
use wedge_core::protocol::stream::{self, StreamFrame};
use wedge_core::protocol::{
    EDGE_PATH, Envelope, MAX_FRAME_BYTES, ObjectKey, Operation, Reason, ResourceKind, SUBPROTOCOL,
};

use super::{EdgeHubConfig, LinkError};
use crate::edged::tokens::TokenQuery;
use crate::edged::usage::UsageFeed;
use crate::edgestream::EdgeStream;
use crate::metamanager::MetaManager;
use crate::reports;
use crate::store::{Applied, Outbox, Pending};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the cloud asks to send a report again later, wait this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Object frames received together stored as one run at most ([`Link::store_objects`]): the
/// writer's group size.
const OBJECTS_TOGETHER: usize = 256;

/// What one read of the socket gives.
type Received = Option<Result<Message, tungstenite::Error>>;

/// Whether a frame carries an object the edge stores.
fn is_object(frame: &Envelope) -> bool {
    matches!(
        frame.operation,
        Operation::Insert | Operation::Update | Operation::Delete
    )
}

/// An object frame's write, queued.
enum StoredObject {
    Applied(Pending<Applied>),
    Deleted(Pending<bool>),
}

impl StoredObject {
    /// Resolves once the write is settled.
    async fn wait(self) -> Result<(), crate::store::StoreError> {
        match self {
            Self::Applied(pending) => pending.wait().await.map(drop),
            Self::Deleted(pending) => pending.wait().await.map(drop),
        }
    }
}

/// The WebSocket a session runs on: over TLS to the cloud, or in memory in the tests.
type Ws<S> = WebSocketStream<S>;

/// What a session's WebSocket runs over.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Transport for T {}

async fn dial(
    config: &EdgeHubConfig,
) -> Result<Ws<tokio_rustls::client::TlsStream<TcpStream>>, LinkError> {
    let cloud = &config.cloud;
    let host = cloud
        .rsplit_once(':')
        .map_or(cloud.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(cloud.as_str()))
        .await
        .map_err(|_| LinkError::Connect(format!("connecting to the cloud at {cloud} timed out")))?
        .map_err(|e| {
            LinkError::Connect(format!(
                "cannot reach the cloud at {cloud}: {e}; check the address and that cloudcore listens there"
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone())
        .map_err(|e| LinkError::Connect(format!("{host} is not a valid server name: {e}")))?;
    let tls_config = (config.tls)().map_err(LinkError::Connect)?;
    let tls = TlsConnector::from(tls_config)
        .connect(name, tcp)
        .await
        .map_err(|e| LinkError::Connect(crate::tls::explain(&e, cloud)))?;
    let mut request = format!("wss://{cloud}{EDGE_PATH}")
        .into_client_request()
        .map_err(|e| LinkError::Connect(format!("bad cloud address {cloud}: {e}")))?;
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(SUBPROTOCOL),
    );
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(16 << 10);
    let (ws, _) = client_async_with_config(request, tls, Some(ws_config))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => {
                let payload = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<ErrorPayload>(b).ok());
                match payload {
                    Some(p) if p.reason == Reason::CertificateRevoked => {
                        LinkError::Revoked(p.message)
                    }
                    Some(p) => LinkError::Refused(p.message),
                    None => LinkError::Refused(response.status().to_string()),
                }
            }
            other => LinkError::Connect(format!("WebSocket handshake with {cloud}: {other}")),
        })?;
    Ok(ws)
}

struct Link<'a> {
    config: &'a EdgeHubConfig,
    meta: &'a MetaManager,
    outbox: &'a Outbox,
    usage: &'a UsageFeed,
    /// The streams the cloud opened on this connection, and who serves them.
    streams: Mux,
    server: Option<&'a EdgeStream>,
    next_id: u64,
    order: InboundOrder,
    /// Reports awaiting their ack: frame id → (key, outbox seq).
    in_flight: HashMap<u64, (ObjectKey, u64)>,
    /// Reports sent from memory (the database could not take them) awaiting their ack: frame
    /// id → (key, generation).
    held_in_flight: HashMap<u64, (ObjectKey, u64)>,
    /// The generation of each report sent from memory on this connection.
    held_sent: HashMap<ObjectKey, u64>,
    /// The outbox sequence sent up to.
    cursor: u64,
    /// Whether the last object from the cloud could not be stored (a full disk).
    store_failing: bool,
    /// The earliest sequence to send again after a retryable refusal, and when.
    retry: Option<(u64, Instant)>,
    last_heard: Instant,
    /// Unacknowledged reports in flight at most: the edge's setting, or the cloud's window
    /// from the welcome if smaller.
    max_in_flight: usize,
    /// How often to ping: the cloud's interval from the welcome, or the edge's setting.
    ping_interval: Duration,
    /// Queries sent and not answered yet: frame id → who waits. Dropped with the connection,
    /// which tells the asker to ask again.
    queries: HashMap<u64, tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>>,
}

/// What a connection works with: EdgeHub's settings, MetaManager, the outbox, the usage feed, and who
/// serves the streams the cloud opens.
pub(super) struct Parts<'a> {
    pub config: &'a EdgeHubConfig,
    pub meta: &'a MetaManager,
    pub outbox: &'a Outbox,
    pub usage: &'a UsageFeed,
    pub server: Option<&'a EdgeStream>,
}

/// Runs one connection. `Ok` only when `shutdown` ended it.
pub(super) async fn run(
    parts: &Parts<'_>,
    token_queries: Option<&mut tokio::sync::mpsc::Receiver<TokenQuery>>,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let ws = dial(parts.config).await?;
    converse(ws, parts, token_queries, shutdown).await
}

/// Says hello on `ws`, then serves it until the link ends or `shutdown`.
async fn converse<S: Transport>(
    mut ws: Ws<S>,
    parts: &Parts<'_>,
    token_queries: Option<&mut tokio::sync::mpsc::Receiver<TokenQuery>>,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let Parts {
        config,
        meta,
        outbox,
        usage,
        server,
    } = *parts;
    let (streams, mut stream_frames) = Mux::new(Role::Acceptor);
    let mut link = Link {
        config,
        meta,
        outbox,
        usage,
        streams,
        server,
        next_id: 0,
        order: InboundOrder::default(),
        in_flight: HashMap::new(),
        held_in_flight: HashMap::new(),
        held_sent: HashMap::new(),
        store_failing: false,
        cursor: 0,
        retry: None,
        last_heard: Instant::now(),
        max_in_flight: config.max_in_flight,
        ping_interval: config.ping_interval,
        queries: HashMap::new(),
    };
    let hello = Hello {
        node: config.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        held: meta.held(),
    };
    let held = hello.held.len();
    let id = link.id();
    link.send(
        &mut ws,
        &Envelope::new(id, Operation::Hello)
            .with_payload(serde_json::to_value(hello).unwrap_or_default()),
    )
    .await?;
    link.welcome(&mut ws).await?;
    tracing::info!(cloud = config.cloud, held, "connected to the cloud");
    let result = link
        .serve(&mut ws, &mut stream_frames, token_queries, shutdown)
        .await;
    let _ = ws.close(None).await;
    link.streams.shutdown(&stream::status(
        503,
        "ServiceUnavailable",
        "the edge's connection to the cloud ended",
    ));
    result
}

fn lost(e: impl std::fmt::Display) -> LinkError {
    LinkError::Lost(e.to_string())
}

impl Link<'_> {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn send<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        frame: &Envelope,
    ) -> Result<(), LinkError> {
        ws.send(Message::Binary(frame.encode().into()))
            .await
            .map_err(lost)
    }

    async fn welcome<S: Transport>(&mut self, ws: &mut Ws<S>) -> Result<(), LinkError> {
        let frame = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        return Envelope::decode(&bytes).map_err(lost);
                    }
                    Some(Ok(Message::Close(close))) => {
                        return Err(lost(format!("closed before the welcome: {close:?}")));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(lost(e)),
                    None => return Err(lost("closed before the welcome")),
                }
            }
        })
        .await
        .map_err(|_| lost("no welcome from the cloud"))??;
        let _ = self.order.accept(frame.id);
        match frame.operation {
            Operation::Welcome => {
                // What the cloud decides wins; a welcome that does not parse leaves the
                // edge's own settings.
                let welcome = serde_json::from_value::<Welcome>(frame.payload)
                    .map_err(|e| tracing::warn!(error = %e, "a welcome that does not parse; keeping this edge's settings"))
                    .ok();
                if let Some(welcome) = welcome {
                    if welcome.max_in_flight > 0 {
                        let cloud = usize::try_from(welcome.max_in_flight).unwrap_or(usize::MAX);
                        self.max_in_flight = self.max_in_flight.min(cloud);
                    }
                    if let Some(seconds) = welcome.ping_seconds.filter(|s| *s > 0) {
                        self.ping_interval = Duration::from_secs(u64::from(seconds));
                    }
                }
                Ok(())
            }
            Operation::Error => {
                let p: ErrorPayload =
                    serde_json::from_value(frame.payload).unwrap_or(ErrorPayload {
                        reason: Reason::Other("Unknown".into()),
                        message: "no message".into(),
                    });
                Err(LinkError::Session {
                    reason: p.reason,
                    message: p.message,
                })
            }
            other => Err(lost(format!("expected a welcome, got {other:?}"))),
        }
    }

    async fn serve<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        stream_frames: &mut tokio::sync::mpsc::UnboundedReceiver<StreamFrame>,
        mut token_queries: Option<&mut tokio::sync::mpsc::Receiver<TokenQuery>>,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.tick().await;
        // A fresh receiver has seen the sample taken before this connection: samples missed
        // while away are not sent late, the next one is.
        let mut usage = self.usage.subscribe();
        self.pump(ws).await?;
        loop {
            let window_open = self.unacknowledged() < self.max_in_flight;
            let retry_at = self.retry.map(|(_, at)| at);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = ws.next() => {
                    self.last_heard = Instant::now();
                    self.received(ws, message).await?;
                    self.pump(ws).await?;
                }
                () = self.outbox.changed(), if window_open => self.pump(ws).await?,
                Some(query) = async {
                    match token_queries.as_mut() {
                        Some(queries) => queries.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.ask(ws, query).await?,
                Some(frame) = stream_frames.recv() => {
                    // One flush a frame: batching frames into one flush measured worse here
                    // (edgecore's CPU per MiB forwarded 1.2 ms to 1.8, one run under load),
                    // likely because tungstenite writes its buffer out by draining the front
                    // of a Vec, moving what TLS did not take yet again at each write.
                    ws.send(Message::Binary(frame.encode().into())).await.map_err(lost)?;
                }
                // The feed lives as long as the agent, so the sender is never dropped here.
                Ok(()) = usage.changed() => {
                    let sample = usage.borrow_and_update().clone();
                    if let Some(sample) = sample {
                        self.send_usage(ws, &sample).await?;
                    }
                }
                () = async { tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now).into()).await }, if retry_at.is_some() => {
                    if let Some((from, _)) = self.retry.take() {
                        self.cursor = self.cursor.min(from);
                    }
                    self.pump(ws).await?;
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > self.ping_interval * 3 {
                        return Err(lost("the cloud was silent for three keepalives"));
                    }
                    ws.send(Message::Ping(Vec::new().into())).await.map_err(lost)?;
                }
            }
        }
    }

    /// Sends a question to the cloud, remembering who waits for the answer; one whose asker
    /// already gave up is not sent.
    async fn ask<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        query: TokenQuery,
    ) -> Result<(), LinkError> {
        if query.reply.is_closed() {
            return Ok(());
        }
        let id = self.id();
        let frame = Envelope::new(id, Operation::Query)
            .with_resource(wedge_core::protocol::ResourceRef {
                kind: ResourceKind::ServiceAccountToken,
                namespace: Some(query.namespace),
                name: query.account,
                uid: None,
            })
            .with_payload(query.request);
        self.queries.insert(id, query.reply);
        self.send(ws, &frame).await
    }

    /// Sends a usage sample: not tracked, not acknowledged (the cloud keeps the newest).
    async fn send_usage<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        sample: &wedge_core::protocol::usage::UsageSample,
    ) -> Result<(), LinkError> {
        let id = self.id();
        let frame = Envelope::new(id, Operation::Usage)
            .with_payload(serde_json::to_value(sample).unwrap_or_default());
        self.send(ws, &frame).await
    }

    /// Reports awaiting their ack.
    fn unacknowledged(&self) -> usize {
        self.in_flight.len() + self.held_in_flight.len()
    }

    /// Sends outbox entries after the cursor while the window has room, then the reports
    /// waiting in memory (a full disk) not sent yet on this connection: the cloud still hears
    /// of the lease, the node and the pods. An entry of the database whose key has a newer
    /// report in memory is skipped; the newer one replaces it there once written.
    async fn pump<S: Transport>(&mut self, ws: &mut Ws<S>) -> Result<(), LinkError> {
        let mut room = self.max_in_flight.saturating_sub(self.unacknowledged());
        if room == 0 {
            return Ok(());
        }
        let held = self.outbox.held();
        let entries = self.outbox.pending(self.cursor, room)?;
        for entry in entries {
            self.cursor = self.cursor.max(entry.seq);
            if held.iter().any(|h| h.key == entry.key) {
                continue;
            }
            let id = self.id();
            let frame = reports::frame(id, &entry.key, entry.operation, &entry.payload);
            self.send(ws, &frame).await?;
            self.in_flight.insert(id, (entry.key, entry.seq));
            room -= 1;
        }
        for report in held {
            if room == 0 {
                break;
            }
            if self.held_sent.get(&report.key) == Some(&report.generation) {
                continue;
            }
            let id = self.id();
            let frame = reports::frame(id, &report.key, report.operation, &report.payload);
            self.send(ws, &frame).await?;
            self.held_sent.insert(report.key.clone(), report.generation);
            self.held_in_flight
                .insert(id, (report.key, report.generation));
            room -= 1;
        }
        Ok(())
    }

    async fn refuse<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        parent: u64,
        reason: Reason,
        message: &str,
    ) -> Result<(), LinkError> {
        tracing::warn!(parent, %reason, message, "refused a frame from the cloud");
        let id = self.id();
        self.send(ws, &Envelope::error(id, parent, reason, message))
            .await
    }

    /// Handles what came from the socket, and what a run of objects read after it
    /// ([`Link::store_objects`]).
    async fn received<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        mut message: Received,
    ) -> Result<(), LinkError> {
        loop {
            match message {
                Some(Ok(Message::Binary(bytes))) => match self.inbound(ws, &bytes).await? {
                    Some(next) => message = next,
                    None => return Ok(()),
                },
                Some(Ok(Message::Close(Some(close))))
                    if close.reason.as_str() == Reason::CertificateRevoked.as_str() =>
                {
                    return Err(LinkError::Revoked("the cloud closed the session".into()));
                }
                Some(Ok(Message::Close(close))) => {
                    return Err(lost(format!("the cloud closed the connection: {close:?}")));
                }
                None => return Err(lost("the cloud closed the connection")),
                Some(Ok(_)) => return Ok(()),
                Some(Err(e)) => return Err(lost(e)),
            }
        }
    }

    /// Handles one binary message. Returns what was read from the socket after it and is not
    /// handled yet (a run of objects stops at the first other message).
    async fn inbound<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        bytes: &bytes::Bytes,
    ) -> Result<Option<Received>, LinkError> {
        if stream::is_stream_frame(bytes) {
            return match StreamFrame::decode_shared(bytes) {
                Ok(frame) => {
                    if let Some((opened, request)) = self.streams.incoming(frame) {
                        match self.server {
                            Some(server) => server.spawn(opened, request),
                            None => opened.sender.close(Some(stream::status(
                                503,
                                "ServiceUnavailable",
                                &format!("edge {} does not serve streams", self.config.node),
                            ))),
                        }
                    }
                    Ok(None)
                }
                Err(e) => self
                    .refuse(ws, 0, Reason::MalformedFrame, &e.to_string())
                    .await
                    .map(|()| None),
            };
        }
        let frame = match Envelope::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .refuse(ws, 0, e.reason(), &e.to_string())
                    .await
                    .map(|()| None);
            }
        };
        if is_object(&frame) {
            return self.store_objects(ws, frame).await;
        }
        self.frame(ws, frame).await.map(|()| None)
    }

    /// Stores an object frame and the object frames right behind it that were received
    /// already (a resync comes as a burst of them, up to the cloud's window), queued together
    /// so that they share commits; then answers each, in order, once its write is settled: an
    /// ack only for what is durable. Returns the first message read that is not one of them.
    async fn store_objects<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        first: Envelope,
    ) -> Result<Option<Received>, LinkError> {
        let mut queued = vec![self.queue_object(first).await];
        let mut after = None;
        while queued.len() < OBJECTS_TOGETHER {
            // Only what is here already: the run is answered before waiting for more.
            let Some(message) = ws.next().now_or_never() else {
                break;
            };
            let frame = match &message {
                Some(Ok(Message::Binary(bytes))) if !stream::is_stream_frame(bytes) => {
                    Envelope::decode(bytes).ok().filter(is_object)
                }
                _ => None,
            };
            match frame {
                Some(frame) => queued.push(self.queue_object(frame).await),
                None => {
                    after = Some(message);
                    break;
                }
            }
        }
        for (id, stored) in queued {
            let outcome = match stored {
                Ok(stored) => stored
                    .wait()
                    .await
                    .map_err(|e| (Reason::StoreFailed, e.to_string())),
                Err(refused) => Err(refused),
            };
            self.answer_object(ws, id, outcome).await?;
        }
        Ok(after)
    }

    /// Checks an object frame and queues its write; the frame's id and the write's answer,
    /// or why it is refused.
    async fn queue_object(
        &mut self,
        frame: Envelope,
    ) -> (u64, Result<StoredObject, (Reason, String)>) {
        if let Err(e) = self.order.accept(frame.id) {
            return (frame.id, Err((Reason::OutOfOrder, e.to_string())));
        }
        (frame.id, self.store(&frame).await)
    }

    /// Answers an object frame: an ack once it is stored, else an error the cloud acts on.
    async fn answer_object<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        parent: u64,
        outcome: Result<(), (Reason, String)>,
    ) -> Result<(), LinkError> {
        match outcome {
            Ok(()) => {
                if std::mem::take(&mut self.store_failing) {
                    tracing::info!("objects from the cloud are stored again");
                }
                // MetaManager told its subscribers when it stored the object.
                let id = self.id();
                self.send(ws, &Envelope::ack(id, parent)).await
            }
            Err((Reason::StoreFailed, message)) => {
                // The cloud sends it again shortly: said once, not at every try.
                if !std::mem::replace(&mut self.store_failing, true) {
                    tracing::warn!(
                        message,
                        "cannot store objects from the cloud (is the disk full?); the cloud sends them again until they are stored"
                    );
                }
                let id = self.id();
                self.send(
                    ws,
                    &Envelope::error(id, parent, Reason::StoreFailed, &message),
                )
                .await
            }
            Err((reason, message)) => self.refuse(ws, parent, reason, &message).await,
        }
    }

    /// Handles a frame from the cloud other than an object.
    async fn frame<S: Transport>(
        &mut self,
        ws: &mut Ws<S>,
        frame: Envelope,
    ) -> Result<(), LinkError> {
        if let Err(e) = self.order.accept(frame.id) {
            return self
                .refuse(ws, frame.id, Reason::OutOfOrder, &e.to_string())
                .await;
        }
        match frame.operation {
            // `inbound` hands objects to `store_objects`, never here.
            Operation::Insert | Operation::Update | Operation::Delete => Ok(()),
            Operation::Ack => {
                if let Some((key, seq)) = frame.parent.and_then(|p| self.in_flight.remove(&p)) {
                    self.outbox.acknowledge(&key, seq).await?;
                }
                // A report sent from memory stays there until the database takes it (and it
                // is sent once more then): dropped now, an older entry of its key could follow.
                if let Some(parent) = frame.parent {
                    self.held_in_flight.remove(&parent);
                }
                Ok(())
            }
            Operation::Response => {
                if let Some(reply) = frame.parent.and_then(|p| self.queries.remove(&p)) {
                    let _ = reply.send(Ok(frame.payload));
                }
                Ok(())
            }
            Operation::Error => {
                let payload: ErrorPayload = serde_json::from_value(frame.payload.clone())
                    .unwrap_or(ErrorPayload {
                        reason: Reason::Other(String::new()),
                        message: frame.payload.to_string(),
                    });
                if payload.reason == Reason::CertificateRevoked {
                    return Err(LinkError::Revoked(payload.message));
                }
                if let Some(reply) = frame.parent.and_then(|p| self.queries.remove(&p)) {
                    let _ = reply.send(Err(format!("{}: {}", payload.reason, payload.message)));
                    return Ok(());
                }
                if let Some((key, generation)) =
                    frame.parent.and_then(|p| self.held_in_flight.remove(&p))
                {
                    if payload.reason.retryable() {
                        self.held_sent.remove(&key);
                        let at = Instant::now() + RETRY_AFTER;
                        let from = self.cursor;
                        self.retry = Some(self.retry.map_or((from, at), |(f, a)| (f.min(from), a)));
                    } else {
                        self.outbox.forget_held(&key, generation);
                        self.dropped(&key, &payload);
                    }
                    return Ok(());
                }
                let Some((key, seq)) = frame.parent.and_then(|p| self.in_flight.remove(&p)) else {
                    tracing::warn!(
                        reason = %payload.reason,
                        message = payload.message,
                        "the cloud reported an error"
                    );
                    return Ok(());
                };
                if payload.reason.retryable() {
                    let from = seq.saturating_sub(1);
                    let at = Instant::now() + RETRY_AFTER;
                    self.retry = Some(self.retry.map_or((from, at), |(f, a)| (f.min(from), a)));
                    tracing::info!(%key, reason = %payload.reason, "the cloud asked to send a report again later");
                } else {
                    self.outbox.acknowledge(&key, seq).await?;
                    self.dropped(&key, &payload);
                }
                Ok(())
            }
            Operation::SyncDone => {
                tracing::info!(received = %frame.payload, "resync from the cloud complete");
                Ok(())
            }
            other => {
                self.refuse(
                    ws,
                    frame.id,
                    Reason::UnexpectedOperation,
                    &format!("the cloud does not send {other:?} here"),
                )
                .await
            }
        }
    }

    /// A report the cloud refused for good, dropped: said once (it is not sent again) and
    /// counted in edgecore's metrics.
    fn dropped(&self, key: &ObjectKey, refusal: &ErrorPayload) {
        tracing::warn!(%key, reason = %refusal.reason, message = refusal.message, "the cloud refused a report for good; dropped, not sent again");
        self.config.refused.count(key.kind, &refusal.reason);
    }

    /// Queues an object frame's write to MetaManager (whose answer resolves once it is durable,
    /// so the ack after it is true), or says why not.
    async fn store(&self, frame: &Envelope) -> Result<StoredObject, (Reason, String)> {
        let resource = frame
            .resource
            .as_ref()
            .ok_or((Reason::IncompleteFrame, "no resource".to_owned()))?;
        if !ResourceKind::DOWNSTREAM.contains(&resource.kind) {
            return Err((
                Reason::UnexpectedResource,
                format!("the cloud does not send {} objects", resource.kind),
            ));
        }
        let key = resource.key();
        let uid = resource.uid.clone().unwrap_or_default();
        if frame.operation == Operation::Delete {
            return self
                .meta
                .queue_delete(&key, (!uid.is_empty()).then_some(uid.as_str()))
                .await
                .map(StoredObject::Deleted)
                .map_err(|e| (Reason::StoreFailed, e.to_string()));
        }
        self.check_object(resource.kind, &frame.payload, &uid)
            .map_err(|m| (Reason::InvalidObject, format!("{key}: {m}")))?;
        let rv = frame
            .resource_version
            .clone()
            .or_else(|| {
                frame
                    .payload
                    .pointer("/metadata/resourceVersion")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        self.meta
            .queue_apply(&key, &uid, &rv, &frame.payload)
            .await
            .map(StoredObject::Applied)
            .map_err(|e| (Reason::StoreFailed, e.to_string()))
    }

    /// An object must parse as its kind, carry the uid the frame names, and (for pods) be
    /// bound to this node.
    fn check_object(
        &self,
        kind: ResourceKind,
        object: &serde_json::Value,
        uid: &str,
    ) -> Result<(), String> {
        let meta_uid = object
            .pointer("/metadata/uid")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if uid.is_empty() || meta_uid != uid {
            return Err(format!(
                "the frame names uid {uid:?} but the object has {meta_uid:?}"
            ));
        }
        match kind {
            ResourceKind::Pod => {
                let pod: Pod = serde_json::from_value(object.clone())
                    .map_err(|e| format!("not a pod: {e}"))?;
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .unwrap_or("");
                if node != self.config.node {
                    return Err(format!("the pod is bound to {node:?}, not to this node"));
                }
            }
            ResourceKind::ConfigMap => {
                serde_json::from_value::<ConfigMap>(object.clone())
                    .map_err(|e| format!("not a ConfigMap: {e}"))?;
            }
            ResourceKind::Secret => {
                serde_json::from_value::<Secret>(object.clone())
                    .map_err(|e| format!("not a Secret: {e}"))?;
            }
            ResourceKind::Device => {
                let device: wedge_core::device::Device = serde_json::from_value(object.clone())
                    .map_err(|e| format!("not a Device: {e}"))?;
                if device.spec.node_name != self.config.node {
                    return Err(format!(
                        "the device is bound to {:?}, not to this node",
                        device.spec.node_name
                    ));
                }
            }
            ResourceKind::DeviceModel => {
                let model: wedge_core::device::DeviceModel = serde_json::from_value(object.clone())
                    .map_err(|e| format!("not a DeviceModel: {e}"))?;
                model.property_models().map_err(|e| e.to_string())?;
            }
            ResourceKind::RuntimeClass => {
                let class: RuntimeClass = serde_json::from_value(object.clone())
                    .map_err(|e| format!("not a RuntimeClass: {e}"))?;
                if class.handler.is_empty() {
                    return Err("the RuntimeClass names no handler".to_owned());
                }
            }
            ResourceKind::PersistentVolumeClaim => {
                serde_json::from_value::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(
                    object.clone(),
                )
                .map_err(|e| format!("not a PersistentVolumeClaim: {e}"))?;
            }
            ResourceKind::PersistentVolume => {
                serde_json::from_value::<k8s_openapi::api::core::v1::PersistentVolume>(
                    object.clone(),
                )
                .map_err(|e| format!("not a PersistentVolume: {e}"))?;
            }
            ResourceKind::Rule => {
                let rule: wedge_core::rule::Rule = serde_json::from_value(object.clone())
                    .map_err(|e| format!("not a Rule: {e}"))?;
                let node = rule.spec.source_node();
                if node != Some(self.config.node.as_str()) {
                    return Err(format!(
                        "the rule's source is the bus of {node:?}, not of this node"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
