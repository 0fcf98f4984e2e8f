//! The stream multiplexer: many byte streams over one connection, each with its own window, so a
//! stalled reader stalls only its own stream.
//!
//! Each end of a connection has one [`Mux`]. The connection's task hands it every stream frame
//! it reads ([`Mux::incoming`]) and writes every frame the mux puts on its outgoing queue. The
//! mux never blocks the connection: what arrives for a stream is queued for that stream, and a
//! peer that keeps to its window can queue at most [`WINDOW`] bytes there; the receiver grants
//! more only as its consumer takes bytes out, so backpressure reaches the sender, stream by
//! stream. A sender waits for window, never the connection.
//!
//! The cloud opens streams ([`Mux::open`]); the edge accepts them (`incoming` hands back the new
//! stream and its request). When the connection ends, [`Mux::shutdown`] closes every stream with
//! a status saying why, so no client hangs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use super::stream::{MAX_CHUNK, StreamFrame, StreamRequest, WINDOW, status};

/// Which end of the connection this mux is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (the cloud).
    Opener,
    /// Accepts streams (the edge).
    Acceptor,
}

/// What a stream's reader gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Bytes on a channel.
    Data {
        /// The channel.
        channel: u8,
        /// The bytes.
        data: Bytes,
    },
    /// The peer ended a channel.
    Eof(u8),
    /// The stream ended: the peer's status, or the mux's when the connection went away.
    Closed(Option<Value>),
}

/// The stream has ended; nothing more can be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stream is closed")]
pub struct StreamClosed;

/// A new stream cannot be opened because the connection is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the connection has ended")]
pub struct MuxClosed;

/// One stream's state, shared by the mux and the stream's two halves.
#[derive(Debug)]
struct StreamState {
    /// Events for the reader. Unbounded in type, bounded in fact: DATA past the window closes
    /// the stream instead of being queued.
    events: mpsc::UnboundedSender<Event>,
    inner: Mutex<Window>,
    credit_arrived: Notify,
}

#[derive(Debug)]
struct Window {
    /// Bytes this end may still send.
    send: u32,
    /// Bytes the peer may still send.
    receive: u32,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    role: Role,
    streams: Mutex<Option<HashMap<u32, Arc<StreamState>>>>,
    out: mpsc::UnboundedSender<StreamFrame>,
    next_id: AtomicU32,
}

impl Shared {
    fn send(&self, frame: StreamFrame) {
        // The receiver is the connection's writer; once it is gone, frames have nowhere to go.
        let _ = self.out.send(frame);
    }

    fn remove(&self, id: u32) -> Option<Arc<StreamState>> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()?
            .remove(&id)
    }

    fn get(&self, id: u32) -> Option<Arc<StreamState>> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()?
            .get(&id)
            .cloned()
    }
}

/// Registers stream `id` and makes its handle.
fn register(shared: &Arc<Shared>, id: u32) -> Result<Stream, MuxClosed> {
    let (events, rx) = mpsc::unbounded_channel();
    let state = Arc::new(StreamState {
        events,
        inner: Mutex::new(Window {
            send: WINDOW,
            receive: WINDOW,
            closed: false,
        }),
        credit_arrived: Notify::new(),
    });
    let mut streams = shared
        .streams
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let streams = streams.as_mut().ok_or(MuxClosed)?;
    streams.insert(id, state.clone());
    Ok(Stream::new(id, state, rx, shared.clone()))
}

/// One end of a connection's streams.
#[derive(Debug, Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl Mux {
    /// A mux for one connection, and the queue of frames the connection must write.
    pub fn new(role: Role) -> (Self, mpsc::UnboundedReceiver<StreamFrame>) {
        let (out, rx) = mpsc::unbounded_channel();
        let mux = Self {
            shared: Arc::new(Shared {
                role,
                streams: Mutex::new(Some(HashMap::new())),
                out,
                next_id: AtomicU32::new(1),
            }),
        };
        (mux, rx)
    }

    /// Opens a stream for `request`.
    pub fn open(&self, request: StreamRequest) -> Result<Stream, MuxClosed> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = register(&self.shared, id)?;
        self.shared.send(StreamFrame::Open {
            stream: id,
            request,
        });
        Ok(stream)
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, HashMap::len)
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a frame read from the connection. An OPEN accepted by an acceptor returns the new
    /// stream and what it asks for; the caller serves it. Anything a peer should not have sent
    /// (an OPEN to an opener, a reused id, DATA past the window) closes that stream with a
    /// status saying why; frames for streams that ended here already are dropped.
    pub fn incoming(&self, frame: StreamFrame) -> Option<(Stream, StreamRequest)> {
        let shared = &self.shared;
        match frame {
            StreamFrame::Open { stream, request } => {
                let refusal = if shared.role == Role::Opener {
                    Some("this end does not accept streams")
                } else if shared.get(stream).is_some() {
                    Some("the stream id is in use")
                } else {
                    None
                };
                if let Some(message) = refusal {
                    shared.send(StreamFrame::Close {
                        stream,
                        status: Some(status(400, "BadRequest", message)),
                    });
                    return None;
                }
                match register(shared, stream) {
                    Ok(s) => Some((s, request)),
                    Err(MuxClosed) => None,
                }
            }
            StreamFrame::Data {
                stream,
                channel,
                data,
            } => {
                let state = shared.get(stream)?;
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let overrun = {
                    let mut w = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
                    if w.receive < len {
                        true
                    } else {
                        w.receive -= len;
                        false
                    }
                };
                if overrun {
                    let status = status(400, "BadRequest", "the peer sent past its window");
                    self.close_stream(stream, &state, Some(status.clone()));
                    shared.send(StreamFrame::Close {
                        stream,
                        status: Some(status),
                    });
                } else {
                    let _ = state.events.send(Event::Data { channel, data });
                }
                None
            }
            StreamFrame::Credit { stream, bytes } => {
                let state = shared.get(stream)?;
                let mut w = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
                w.send = w.send.saturating_add(bytes);
                drop(w);
                state.credit_arrived.notify_waiters();
                None
            }
            StreamFrame::Eof { stream, channel } => {
                let state = shared.get(stream)?;
                let _ = state.events.send(Event::Eof(channel));
                None
            }
            StreamFrame::Close { stream, status } => {
                let state = shared.get(stream)?;
                self.close_stream(stream, &state, status);
                None
            }
        }
    }

    fn close_stream(&self, id: u32, state: &StreamState, status: Option<Value>) {
        self.shared.remove(id);
        mark_closed(state);
        let _ = state.events.send(Event::Closed(status));
    }

    /// Ends every stream with `status` (the connection has gone) and refuses new ones.
    pub fn shutdown(&self, status: &Value) {
        let streams = self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for state in streams.into_iter().flat_map(HashMap::into_values) {
            mark_closed(&state);
            let _ = state.events.send(Event::Closed(Some(status.clone())));
        }
    }
}

fn mark_closed(state: &StreamState) {
    state
        .inner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .closed = true;
    state.credit_arrived.notify_waiters();
}

/// Closes the stream when the last half of it is dropped without closing it.
#[derive(Debug)]
struct Guard {
    id: u32,
    shared: Arc<Shared>,
    state: Arc<StreamState>,
}

impl Guard {
    /// Ends the stream from this end, once.
    fn close(&self, status: Option<Value>) {
        let was_open = {
            let mut w = self
                .state
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            !std::mem::replace(&mut w.closed, true)
        };
        self.state.credit_arrived.notify_waiters();
        if was_open {
            self.shared.remove(self.id);
            self.shared.send(StreamFrame::Close {
                stream: self.id,
                status,
            });
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.close(None);
    }
}

/// One stream: a sender and a receiver, which can be used apart ([`Stream::split`]).
#[derive(Debug)]
pub struct Stream {
    /// Sends on the stream.
    pub sender: StreamSender,
    /// Receives from the stream.
    pub receiver: StreamReceiver,
}

impl Stream {
    fn new(
        id: u32,
        state: Arc<StreamState>,
        rx: mpsc::UnboundedReceiver<Event>,
        shared: Arc<Shared>,
    ) -> Self {
        let guard = Arc::new(Guard { id, shared, state });
        Self {
            sender: StreamSender {
                guard: guard.clone(),
            },
            receiver: StreamReceiver {
                guard,
                events: rx,
                to_grant: 0,
            },
        }
    }

    /// The stream's id on its connection.
    pub fn id(&self) -> u32 {
        self.sender.guard.id
    }

    /// The two halves.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.sender, self.receiver)
    }
}

/// Sends on a stream, keeping to the window the peer granted.
#[derive(Debug, Clone)]
pub struct StreamSender {
    guard: Arc<Guard>,
}

impl StreamSender {
    /// Sends `data` on `channel`, in chunks of at most [`MAX_CHUNK`], waiting for window.
    pub async fn send(&self, channel: u8, mut data: Bytes) -> Result<(), StreamClosed> {
        let state = &self.guard.state;
        while !data.is_empty() {
            let notified = state.credit_arrived.notified();
            let grant = {
                let mut w = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
                if w.closed {
                    return Err(StreamClosed);
                }
                let n = (w.send as usize).min(MAX_CHUNK).min(data.len());
                w.send -= n as u32;
                n
            };
            if grant == 0 {
                notified.await;
                continue;
            }
            self.guard.shared.send(StreamFrame::Data {
                stream: self.guard.id,
                channel,
                data: data.split_to(grant),
            });
        }
        Ok(())
    }

    /// Sends an empty DATA on `channel`: a signal that costs no window (the edge's "served").
    pub fn signal(&self, channel: u8) -> Result<(), StreamClosed> {
        if self.is_closed() {
            return Err(StreamClosed);
        }
        self.guard.shared.send(StreamFrame::Data {
            stream: self.guard.id,
            channel,
            data: Bytes::new(),
        });
        Ok(())
    }

    /// Ends `channel` from this end (stdin's end of input).
    pub fn eof(&self, channel: u8) -> Result<(), StreamClosed> {
        if self.is_closed() {
            return Err(StreamClosed);
        }
        self.guard.shared.send(StreamFrame::Eof {
            stream: self.guard.id,
            channel,
        });
        Ok(())
    }

    /// Ends the stream with `status` (its outcome, or none when abandoned).
    pub fn close(&self, status: Option<Value>) {
        self.guard.close(status);
    }

    /// Completes once the stream has ended, from either end. For a task that waits on something
    /// else (room towards a consumer that stalled) and must still notice the peer going away.
    pub async fn closed(&self) {
        let state = &self.guard.state;
        loop {
            // Made before the check, so a close between the check and the wait still wakes it.
            let notified = state.credit_arrived.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.guard
            .state
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }
}

/// Receives from a stream, granting the peer window as bytes are taken.
#[derive(Debug)]
pub struct StreamReceiver {
    guard: Arc<Guard>,
    events: mpsc::UnboundedReceiver<Event>,
    to_grant: u32,
}

impl StreamReceiver {
    /// The next event; `None` once the stream has closed and its last event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.events.recv().await?;
        if let Event::Data { data, .. } = &event {
            self.to_grant += u32::try_from(data.len()).unwrap_or(u32::MAX);
            // Grant in batches: a frame per half window, not per chunk.
            if self.to_grant >= WINDOW / 2 {
                self.grant();
            }
        }
        Some(event)
    }

    fn grant(&mut self) {
        let bytes = std::mem::take(&mut self.to_grant);
        let state = &self.guard.state;
        {
            let mut w = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if w.closed {
                return;
            }
            w.receive = w.receive.saturating_add(bytes);
        }
        self.guard.shared.send(StreamFrame::Credit {
            stream: self.guard.id,
            bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::stream::{LogParams, channel};

    fn logs() -> StreamRequest {
        StreamRequest::Logs {
            namespace: "default".into(),
            pod: "web".into(),
            container: "main".into(),
            options: LogParams::default(),
        }
    }

    /// Two muxes wired back to back, as the cloud and the edge are over a WebSocket.
    struct Pair {
        cloud: Mux,
        edge: Mux,
        to_edge: mpsc::UnboundedReceiver<StreamFrame>,
        to_cloud: mpsc::UnboundedReceiver<StreamFrame>,
    }

    impl Pair {
        fn new() -> Self {
            let (cloud, to_edge) = Mux::new(Role::Opener);
            let (edge, to_cloud) = Mux::new(Role::Acceptor);
            Self {
                cloud,
                edge,
                to_edge,
                to_cloud,
            }
        }

        /// Delivers every queued frame both ways (through their bytes, as the wire would);
        /// returns the streams the edge accepted.
        fn pump(&mut self) -> Vec<(Stream, StreamRequest)> {
            let mut accepted = Vec::new();
            loop {
                let mut moved = false;
                while let Ok(f) = self.to_edge.try_recv() {
                    let f = StreamFrame::decode(&f.encode()).expect("decodes");
                    accepted.extend(self.edge.incoming(f));
                    moved = true;
                }
                while let Ok(f) = self.to_cloud.try_recv() {
                    let f = StreamFrame::decode(&f.encode()).expect("decodes");
                    assert!(self.cloud.incoming(f).is_none());
                    moved = true;
                }
                if !moved {
                    return accepted;
                }
            }
        }
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_the_close_carries_the_status() {
        let mut p = Pair::new();
        let mut cloud = p.cloud.open(logs()).expect("opens");
        let mut accepted = p.pump();
        assert_eq!(accepted.len(), 1);
        let (mut edge, request) = accepted.remove(0);
        assert_eq!(request, logs());
        cloud
            .sender
            .send(channel::STDIN, Bytes::from_static(b"ping"))
            .await
            .expect("sends");
        cloud.sender.eof(channel::STDIN).expect("open");
        p.pump();
        assert_eq!(
            edge.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDIN,
                data: Bytes::from_static(b"ping")
            })
        );
        assert_eq!(edge.receiver.recv().await, Some(Event::Eof(channel::STDIN)));
        edge.sender
            .send(channel::STDOUT, Bytes::from_static(b"pong"))
            .await
            .expect("sends");
        edge.sender.close(Some(status(200, "", "")));
        p.pump();
        assert!(matches!(
            cloud.receiver.recv().await,
            Some(Event::Data { channel: 1, .. })
        ));
        assert!(matches!(
            cloud.receiver.recv().await,
            Some(Event::Closed(Some(s))) if s["status"] == "Success"
        ));
        assert!(p.cloud.is_empty() && p.edge.is_empty());
        assert_eq!(
            cloud.sender.send(0, Bytes::from_static(b"late")).await,
            Err(StreamClosed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_reader_holds_its_own_stream_only() {
        let mut p = Pair::new();
        let mut stalled = p.cloud.open(logs()).expect("opens");
        let mut flowing = p.cloud.open(logs()).expect("opens");
        let mut accepted = p.pump();
        let (edge_flowing, _) = accepted.pop().expect("second");
        let (edge_stalled, _) = accepted.pop().expect("first");

        // The stalled stream's sender fills the window and then waits.
        let big = Bytes::from(vec![7u8; WINDOW as usize + 1000]);
        let sender = edge_stalled.sender.clone();
        let writer = tokio::spawn(async move { sender.send(channel::STDOUT, big).await });
        tokio::task::yield_now().await;
        p.pump();
        assert!(!writer.is_finished(), "past the window the sender waits");

        // The other stream is not held up by it.
        edge_flowing
            .sender
            .send(channel::STDOUT, Bytes::from_static(b"still here"))
            .await
            .expect("sends");
        p.pump();
        assert_eq!(
            flowing.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDOUT,
                data: Bytes::from_static(b"still here")
            })
        );

        // Once the stalled reader reads, window returns and the rest arrives.
        let mut got = 0;
        while got < WINDOW as usize + 1000 {
            p.pump();
            tokio::task::yield_now().await;
            if let Ok(Some(Event::Data { data, .. })) = tokio::time::timeout(
                std::time::Duration::from_millis(10),
                stalled.receiver.recv(),
            )
            .await
            {
                got += data.len();
            }
        }
        assert_eq!(writer.await.expect("joins"), Ok(()));
        drop(edge_stalled);
    }

    #[tokio::test]
    async fn closed_completes_when_the_peer_closes_not_on_credit() {
        let mut p = Pair::new();
        let cloud = p.cloud.open(logs()).expect("opens");
        let (edge, _) = p.pump().pop().expect("accepted");
        let edge_sender = edge.sender.clone();
        let waiting = tokio::spawn(async move { edge_sender.closed().await });
        // Credit wakes the waiter, which finds the stream open and waits on.
        p.edge.incoming(StreamFrame::Credit {
            stream: edge.id(),
            bytes: 10,
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "still open");
        drop(cloud);
        p.pump();
        waiting.await.expect("completes once the cloud closed");
        assert!(edge.sender.is_closed());
    }

    #[tokio::test]
    async fn a_peer_past_its_window_loses_the_stream() {
        let (edge, to_cloud) = Mux::new(Role::Acceptor);
        let (stream, _) = edge
            .incoming(StreamFrame::Open {
                stream: 9,
                request: logs(),
            })
            .expect("accepted");
        let mut receiver = stream.receiver;
        edge.incoming(StreamFrame::Data {
            stream: 9,
            channel: 0,
            data: Bytes::from(vec![0; WINDOW as usize + 1]),
        });
        assert!(matches!(
            receiver.recv().await,
            Some(Event::Closed(Some(s))) if s["reason"] == "BadRequest"
        ));
        drop(to_cloud);
    }

    #[tokio::test]
    async fn opens_are_refused_by_the_opener_and_dropping_a_stream_closes_it() {
        let (cloud, mut out) = Mux::new(Role::Opener);
        assert!(
            cloud
                .incoming(StreamFrame::Open {
                    stream: 1,
                    request: logs()
                })
                .is_none()
        );
        assert!(matches!(
            out.try_recv(),
            Ok(StreamFrame::Close {
                stream: 1,
                status: Some(_)
            })
        ));
        let stream = cloud.open(logs()).expect("opens");
        let id = stream.id();
        assert!(matches!(out.try_recv(), Ok(StreamFrame::Open { .. })));
        drop(stream);
        assert_eq!(
            out.try_recv(),
            Ok(StreamFrame::Close {
                stream: id,
                status: None
            })
        );
        assert!(cloud.is_empty());
    }

    #[tokio::test]
    async fn shutdown_ends_every_stream_with_its_reason() {
        let (cloud, _out) = Mux::new(Role::Opener);
        let mut a = cloud.open(logs()).expect("opens");
        let b = cloud.open(logs()).expect("opens");
        cloud.shutdown(&status(503, "ServiceUnavailable", "the edge went away"));
        assert!(matches!(
            a.receiver.recv().await,
            Some(Event::Closed(Some(s))) if s["message"] == "the edge went away"
        ));
        assert_eq!(
            b.sender.send(0, Bytes::from_static(b"x")).await,
            Err(StreamClosed)
        );
        assert_eq!(cloud.open(logs()).err(), Some(MuxClosed));
    }
}
