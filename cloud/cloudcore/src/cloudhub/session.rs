//! One edge's session on CloudHub, from its hello to its end.
//!
//! The session task owns the WebSocket. It reads the hello, checks that the edge is the node its
//! certificate names, plans the resync from what the edge holds, then loops: frames from the
//! edge (acks free the window; reports go to a worker that writes them to the API and answers),
//! keys queued by the watches (sent while fewer than `max_in_flight` frames await their ack),
//! keepalive pings. A bad frame is refused with an error frame and the session goes on; only a
//! message over the size limit, which cannot be skipped unread, ends the connection (1009).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use wedge_core::protocol::messages::{Hello, Welcome};
use wedge_core::protocol::order::InboundOrder;
use wedge_core::protocol::stream::{self, StreamFrame};
use wedge_core::protocol::usage::UsageSample;
use wedge_core::protocol::{
    Envelope, FrameError, MAX_FRAME_BYTES, ObjectKey, Operation, Reason, ResourceRef, sync,
};

use super::HubContext;
use super::sessions::SessionHandle;
use crate::metrics::{FrameLabels, NodeLabels};

/// How long an edge has to say hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Reports queued for the API writer per session, at most. The edge keeps to the same window,
/// so a well-behaved edge never fills it.
const REPORT_QUEUE: usize = 64;

/// What the cloud believes the edge holds: uid and resourceVersion per key, from its hello and
/// the acks since.
type Held = HashMap<ObjectKey, (String, String)>;

/// A frame awaiting its ack.
struct InFlight {
    key: ObjectKey,
    /// What the edge holds once it acks: `None` for a deletion.
    holds: Option<(String, String)>,
}

/// Resync figures, until the first backlog is drained.
struct Resync {
    frames: u64,
    bytes: u64,
}

type Ws<S> = WebSocketStream<S>;

/// How long after the edge could not store an object (`StoreFailed`) it is sent again.
const STORE_RETRY: Duration = Duration::from_secs(2);

async fn send<S>(ws: &mut Ws<S>, frame: &Envelope) -> Result<usize, ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes = frame.encode();
    let len = bytes.len();
    ws.send(Message::Binary(bytes.into()))
        .await
        .map(|()| len)
        .map_err(|_| ())
}

async fn refuse<S>(ws: &mut Ws<S>, reason: Reason, message: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let close = reason.as_str().to_owned();
    let _ = send(ws, &Envelope::error(1, 0, reason, message)).await;
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: close.into(),
        }))
        .await;
}

/// Reads the edge's hello.
async fn hello<S>(ws: &mut Ws<S>) -> Result<(Hello, u64), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => return Err(format!("expected a hello frame, got {other:?}")),
                Some(Err(e)) => return Err(format!("reading the hello: {e}")),
                None => return Err("the edge closed before its hello".into()),
            }
        }
    })
    .await
    .map_err(|_| format!("no hello within {HELLO_TIMEOUT:?}"))??;
    let frame = Envelope::decode(&first).map_err(|e| e.to_string())?;
    if frame.operation != Operation::Hello {
        return Err(format!(
            "the first frame must be a hello, not {:?}",
            frame.operation
        ));
    }
    let hello: Hello =
        serde_json::from_value(frame.payload).map_err(|e| format!("hello payload: {e}"))?;
    Ok((hello, frame.id))
}

/// Runs the session of the edge whose certificate names `node`, until the edge leaves, a newer
/// connection of it replaces this one, or the hub shuts down.
pub async fn run<S>(mut ws: Ws<S>, identity: super::identity::EdgeIdentity, ctx: Arc<HubContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let node = identity.node.clone();
    let (hello, hello_id) = match hello(&mut ws).await {
        Ok(h) => h,
        Err(message) => {
            tracing::warn!(node, message, "refused an edge session");
            ctx.metrics.refused(&node, &Reason::BadHello);
            refuse(&mut ws, Reason::BadHello, &message).await;
            return;
        }
    };
    if hello.node != node {
        let message = format!(
            "this edge's certificate is for node {node}, but it says it is {}: an edge can only be the node it joined as",
            hello.node
        );
        tracing::warn!(
            node,
            claimed = hello.node,
            "refused an edge claiming another node"
        );
        ctx.metrics.refused(&node, &Reason::Forbidden);
        refuse(&mut ws, Reason::Forbidden, &message).await;
        return;
    }
    ctx.desired.ready().await;
    let (handle, stream_frames) =
        ctx.sessions
            .register(&node, identity.certificate.clone(), &ctx.shutdown);
    // Revoked between the upgrade and now: the revocation closed the sessions it found, so
    // this one is looked at again.
    ctx.sessions
        .close_revoked(&node, |c| ctx.join.certificates.check(&node, c));
    ctx.metrics.connected_edges.inc();
    tracing::info!(
        node,
        held = hello.held.len(),
        version = hello.agent_version,
        "edge connected"
    );
    let mut session = Session {
        ctx: ctx.clone(),
        handle: handle.clone(),
        node: node.clone(),
        next_id: 1,
        held: hello
            .held
            .iter()
            .map(|h| (h.key(), (h.uid.clone(), h.resource_version.clone())))
            .collect(),
        in_flight: HashMap::new(),
        resync: Some(Resync {
            frames: 0,
            bytes: 0,
        }),
        order: InboundOrder::default(),
        last_heard: Instant::now(),
    };
    let _ = session.order.accept(hello_id);
    let mut outcome = session.serve(&mut ws, hello, stream_frames).await;
    let revoked = handle.revoked();
    if revoked.is_some() {
        outcome = "its certificate was revoked";
    }
    tracing::info!(node, outcome, "edge session ended");
    ctx.sessions.unregister(&handle);
    ctx.metrics.usage.forget(&node, handle.connection);
    handle.streams.shutdown(&stream::status(
        503,
        "ServiceUnavailable",
        &format!("the connection to node {node} ended: {outcome}"),
    ));
    ctx.metrics.connected_edges.dec();
    match revoked {
        // The edge is told why, once, and stops dialling with this certificate.
        Some(message) => {
            let id = session.id();
            let reason = Reason::CertificateRevoked;
            ctx.metrics.refused(&node, &reason);
            let close = reason.as_str().to_owned();
            let _ = send(&mut ws, &Envelope::error(id, 0, reason, &message)).await;
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: close.into(),
                }))
                .await;
        }
        None => {
            let _ = ws.close(None).await;
        }
    }
}

struct Session {
    ctx: Arc<HubContext>,
    handle: Arc<SessionHandle>,
    node: String,
    next_id: u64,
    held: Held,
    in_flight: HashMap<u64, InFlight>,
    resync: Option<Resync>,
    order: InboundOrder,
    last_heard: Instant,
}

impl Session {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn serve<S>(
        &mut self,
        ws: &mut Ws<S>,
        hello: Hello,
        mut stream_frames: mpsc::UnboundedReceiver<StreamFrame>,
    ) -> &'static str
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let settings = &self.ctx.settings;
        let welcome = Welcome {
            max_in_flight: u32::try_from(settings.max_in_flight).unwrap_or(u32::MAX),
            ping_seconds: Some(
                u32::try_from(settings.ping_interval.as_secs().max(1)).unwrap_or(u32::MAX),
            ),
        };
        let welcome = Envelope::new(1, Operation::Welcome)
            .with_payload(serde_json::to_value(welcome).unwrap_or_default());
        if send(ws, &welcome).await.is_err() {
            return "the edge went away";
        }
        // The resync: every key the edge holds or should hold is looked at once; only those
        // that differ produce a frame.
        let desired = &self.ctx.desired;
        let plan = sync::plan(&hello.held, desired.objects_for(&self.node), |key| {
            desired.view(&self.node, key)
        });
        tracing::debug!(
            node = self.node,
            insert = plan.insert.len(),
            update = plan.update.len(),
            delete = plan.delete.len(),
            unchanged = plan.unchanged,
            "resync planned"
        );
        for key in plan.delete.iter().map(|h| h.key()) {
            self.handle.mark(key);
        }
        for key in plan.insert.into_iter().chain(plan.update) {
            self.handle.mark(key);
        }

        let (report_tx, report_rx) = mpsc::channel::<Envelope>(REPORT_QUEUE);
        let (answer_tx, mut answer_rx) = mpsc::channel::<Envelope>(REPORT_QUEUE);
        // Queries (token requests) are answered beside the reports, not behind them.
        let mut queries = tokio::task::JoinSet::new();
        let query_answers = answer_tx.clone();
        let writer = tokio::spawn(write_reports(
            self.ctx.clone(),
            self.handle.clone(),
            report_rx,
            answer_tx,
        ));
        let mut ping = tokio::time::interval(self.ctx.settings.ping_interval);
        ping.tick().await;
        if self.pump(ws).await.is_err() {
            writer.abort();
            return "the edge went away";
        }
        let outcome = loop {
            let window_open = self.in_flight.len() < self.ctx.settings.max_in_flight;
            tokio::select! {
                () = self.handle.closed.cancelled() => break "closed by the hub",
                message = ws.next() => {
                    self.last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            if self.inbound(ws, &bytes, &report_tx, &mut queries, &query_answers).await.is_err() {
                                break "the edge went away";
                            }
                        }
                        Some(Ok(Message::Text(_))) => {
                            self.refuse(ws, 0, FrameError::Text.reason(), &FrameError::Text.to_string()).await;
                        }
                        Some(Ok(Message::Close(_))) | None => break "the edge closed",
                        Some(Ok(_)) => {} // pings are answered by the library; pongs keep it alive
                        Some(Err(tungstenite::Error::Capacity(error))) => {
                            // The message cannot be skipped without reading it whole: the
                            // connection ends with 1009 and the edge resyncs when it is back.
                            let message = format!("{error}; frames are at most {MAX_FRAME_BYTES} bytes");
                            tracing::warn!(node = self.node, message, "refused a frame from the edge; closing");
                            self.ctx.metrics.refused(&self.node, &Reason::FrameTooLarge);
                            let _ = ws.close(Some(CloseFrame { code: CloseCode::Size, reason: Reason::FrameTooLarge.as_str().into() })).await;
                            break "frame too large";
                        }
                        Some(Err(error)) => {
                            tracing::info!(node = self.node, %error, "edge connection failed");
                            break "connection error";
                        }
                    }
                    if self.pump(ws).await.is_err() {
                        break "the edge went away";
                    }
                }
                Some(frame) = stream_frames.recv() => {
                    if ws.send(Message::Binary(frame.encode().into())).await.is_err() {
                        break "the edge went away";
                    }
                }
                answer = answer_rx.recv() => {
                    let Some(mut answer) = answer else { break "report writer ended" };
                    answer.id = self.id();
                    if send(ws, &answer).await.is_err() {
                        break "the edge went away";
                    }
                }
                () = self.handle.woken(), if window_open => {
                    if self.pump(ws).await.is_err() {
                        break "the edge went away";
                    }
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > self.ctx.settings.ping_interval * 3 {
                        tracing::warn!(node = self.node, silent = ?self.last_heard.elapsed(), "edge silent for three keepalives; closing");
                        break "keepalive timeout";
                    }
                    if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break "the edge went away";
                    }
                }
            }
        };
        writer.abort();
        queries.abort_all();
        outcome
    }

    /// Sends queued keys while the window has room; then, at the end of the first backlog,
    /// the sync-done frame.
    async fn pump<S>(&mut self, ws: &mut Ws<S>) -> Result<(), ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while self.in_flight.len() < self.ctx.settings.max_in_flight {
            let Some(key) = self.handle.next() else {
                break;
            };
            let Some((frame, holds)) = self.frame_for(&key) else {
                continue;
            };
            let len = send(ws, &frame).await?;
            self.count_sent(frame.operation, len);
            self.in_flight.insert(frame.id, InFlight { key, holds });
        }
        if self.handle.backlog() == 0
            && let Some(resync) = self.resync.take()
        {
            let id = self.id();
            let done = Envelope::new(id, Operation::SyncDone).with_payload(serde_json::json!({
                "frames": resync.frames,
                "bytes": resync.bytes,
            }));
            send(ws, &done).await?;
            let labels = NodeLabels {
                node: self.node.clone(),
            };
            let m = &self.ctx.metrics;
            m.resyncs.get_or_create(&labels).inc();
            m.resync_frames.get_or_create(&labels).inc_by(resync.frames);
            m.resync_bytes.get_or_create(&labels).inc_by(resync.bytes);
            tracing::info!(
                node = self.node,
                frames = resync.frames,
                bytes = resync.bytes,
                "resync sent"
            );
        }
        Ok(())
    }

    fn count_sent(&mut self, operation: Operation, len: usize) {
        let m = &self.ctx.metrics;
        m.frames_sent
            .get_or_create(&FrameLabels {
                node: self.node.clone(),
                operation: format!("{operation:?}").to_lowercase(),
            })
            .inc();
        m.bytes_sent
            .get_or_create(&NodeLabels {
                node: self.node.clone(),
            })
            .inc_by(len as u64);
        if let Some(resync) = &mut self.resync {
            resync.frames += 1;
            resync.bytes += len as u64;
        }
    }

    /// The frame that brings the edge's copy of `key` to the current state, if it differs.
    fn frame_for(&mut self, key: &ObjectKey) -> Option<(Envelope, Option<(String, String)>)> {
        let held = self.held.get(key);
        let resource = |uid: Option<String>| ResourceRef {
            kind: key.kind,
            namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
            name: key.name.clone(),
            uid,
        };
        match self.ctx.desired.current(&self.node, key) {
            Some(current) => {
                let now = (current.uid.clone(), current.resource_version.clone());
                let operation = match held {
                    Some(h) if *h == now => return None,
                    Some((uid, _)) if *uid == current.uid => Operation::Update,
                    _ => Operation::Insert,
                };
                let id = self.id();
                let frame = Envelope::new(id, operation)
                    .with_resource(resource(Some(current.uid)))
                    .with_resource_version(Some(current.resource_version))
                    .with_payload(current.object);
                Some((frame, Some(now)))
            }
            None => {
                let (uid, _) = held?;
                let uid = uid.clone();
                let id = self.id();
                Some((
                    Envelope::new(id, Operation::Delete).with_resource(resource(Some(uid))),
                    None,
                ))
            }
        }
    }

    async fn refuse<S>(&mut self, ws: &mut Ws<S>, parent: u64, reason: Reason, message: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tracing::warn!(
            node = self.node,
            parent,
            %reason,
            message,
            "refused a frame from the edge"
        );
        self.ctx.metrics.refused(&self.node, &reason);
        let id = self.id();
        let _ = send(ws, &Envelope::error(id, parent, reason, message)).await;
    }

    async fn inbound<S>(
        &mut self,
        ws: &mut Ws<S>,
        bytes: &bytes::Bytes,
        reports: &mpsc::Sender<Envelope>,
        queries: &mut tokio::task::JoinSet<()>,
        answers: &mpsc::Sender<Envelope>,
    ) -> Result<(), ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if stream::is_stream_frame(bytes) {
            match StreamFrame::decode_shared(bytes) {
                Ok(frame) => {
                    // The cloud opens every stream; the mux refuses an OPEN from the edge.
                    let _ = self.handle.streams.incoming(frame);
                }
                Err(error) => {
                    self.refuse(ws, 0, Reason::MalformedFrame, &error.to_string())
                        .await;
                }
            }
            return Ok(());
        }
        let frame = match Envelope::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.refuse(ws, 0, error.reason(), &error.to_string()).await;
                return Ok(());
            }
        };
        if let Err(error) = self.order.accept(frame.id) {
            self.refuse(ws, frame.id, Reason::OutOfOrder, &error.to_string())
                .await;
            return Ok(());
        }
        self.ctx
            .metrics
            .frames_received
            .get_or_create(&FrameLabels {
                node: self.node.clone(),
                operation: format!("{:?}", frame.operation).to_lowercase(),
            })
            .inc();
        match frame.operation {
            Operation::Ack => {
                if let Some(done) = frame.parent.and_then(|p| self.in_flight.remove(&p)) {
                    match done.holds {
                        Some(holds) => self.held.insert(done.key, holds),
                        None => self.held.remove(&done.key),
                    };
                }
            }
            Operation::Error => {
                let reason = frame
                    .payload
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .map(Reason::from);
                if let Some(failed) = frame.parent.and_then(|p| self.in_flight.remove(&p)) {
                    if reason.is_some_and(|r| r.retryable()) {
                        // The edge could not store it (a full disk, say): sent again shortly,
                        // with its newest version, until the edge takes it, not only at its
                        // next change. The edge logs its full disk itself.
                        tracing::debug!(node = self.node, key = %failed.key, payload = %frame.payload, "the edge could not store a frame; sent again shortly");
                        let handle = self.handle.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                () = handle.closed.cancelled() => {}
                                () = tokio::time::sleep(STORE_RETRY) => handle.mark(failed.key),
                            }
                        });
                    } else {
                        tracing::warn!(node = self.node, key = %failed.key, payload = %frame.payload, "the edge refused a frame; it is sent again at its next change or resync");
                    }
                } else {
                    tracing::warn!(node = self.node, payload = %frame.payload, "the edge reported an error");
                }
            }
            Operation::Usage => {
                // Not acknowledged: the newest sample replaces the one before, and one that
                // does not parse is refused and forgotten (the next one comes anyway).
                match serde_json::from_value::<UsageSample>(frame.payload) {
                    Ok(sample) => {
                        self.ctx
                            .metrics
                            .usage
                            .record(&self.node, self.handle.connection, sample);
                    }
                    Err(error) => {
                        let message = format!("usage payload: {error}");
                        self.refuse(ws, frame.id, Reason::Invalid, &message).await;
                    }
                }
            }
            Operation::Query => {
                // Finished answers are reaped here; a session has few queries in flight.
                while queries.try_join_next().is_some() {}
                if queries.len() >= MAX_QUERIES {
                    self.refuse(
                        ws,
                        frame.id,
                        Reason::Busy,
                        "too many queries in flight; ask again later",
                    )
                    .await;
                    return Ok(());
                }
                let (ctx, node, answers) = (self.ctx.clone(), self.node.clone(), answers.clone());
                queries.spawn(async move {
                    let answer = match ctx.upstream.query(&node, &frame).await {
                        Ok(payload) => {
                            let mut answer = Envelope::new(0, Operation::Response).with_payload(payload);
                            answer.parent = Some(frame.id);
                            answer
                        }
                        Err(error) => {
                            let reason = error.reason();
                            tracing::warn!(node, frame = frame.id, %reason, %error, "refused an edge's query");
                            ctx.metrics.refused(&node, &reason);
                            Envelope::error(0, frame.id, reason, &error.to_string())
                        }
                    };
                    let _ = answers.send(answer).await;
                });
            }
            Operation::Update | Operation::Delete => {
                if let Err(e) = reports.try_send(frame) {
                    let id = match &e {
                        mpsc::error::TrySendError::Full(f)
                        | mpsc::error::TrySendError::Closed(f) => f.id,
                    };
                    self.refuse(
                        ws,
                        id,
                        Reason::Busy,
                        "too many reports in flight; send it again later",
                    )
                    .await;
                }
            }
            other => {
                let message = format!("edges do not send {other:?} frames after their hello");
                self.refuse(ws, frame.id, Reason::UnexpectedOperation, &message)
                    .await;
            }
        }
        Ok(())
    }
}

/// How many queries of one edge are answered at once; more are refused with `Busy`.
const MAX_QUERIES: usize = 16;

/// Writes the edge's reports to the API one at a time, in order, and answers each with an ack
/// or an error frame (whose id the session fills in).
async fn write_reports(
    ctx: Arc<HubContext>,
    handle: Arc<SessionHandle>,
    mut reports: mpsc::Receiver<Envelope>,
    answers: mpsc::Sender<Envelope>,
) {
    let node = handle.node.clone();
    while let Some(frame) = reports.recv().await {
        // Nothing more is written for a certificate revoked meanwhile (its session is closing).
        if let Err(message) = ctx.join.certificates.check(&node, &handle.certificate) {
            if answers
                .send(Envelope::error(
                    0,
                    frame.id,
                    Reason::CertificateRevoked,
                    &message,
                ))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let answer = match ctx.upstream.apply(&node, &frame).await {
            Ok(()) => Envelope::ack(0, frame.id),
            Err(error) => {
                let reason = error.reason();
                tracing::warn!(node, frame = frame.id, %reason, %error, "refused an edge's report");
                ctx.metrics.refused(&node, &reason);
                Envelope::error(0, frame.id, reason, &error.to_string())
            }
        };
        if answers.send(answer).await.is_err() {
            return;
        }
    }
}
