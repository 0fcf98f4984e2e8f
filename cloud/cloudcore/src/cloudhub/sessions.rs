//! The connected edges, and for each the objects it must be sent.
//!
//! What an edge is owed is kept as a queue of *keys*, not of messages: when the session sends,
//! it reads the object's current version from the shared watch cache. Ten updates to a pod
//! before the edge reads them cost one queue entry and one frame (the coalescing the protocol
//! promises), and a slow or dead edge holds at most one key per object bound to it, never a
//! backlog of copies: the cloud's memory cannot grow without bound with the edge's lag.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::ObjectKey;
use wedge_core::protocol::mux::{self, Mux, Stream};
use wedge_core::protocol::stream::{StreamFrame, StreamRequest};

use crate::join::certificates::Presented;

/// Keys owed to one edge, oldest first, each at most once.
#[derive(Debug, Default)]
struct DirtyQueue {
    order: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
}

/// One connected edge, as the rest of the cloud sees it.
#[derive(Debug)]
pub struct SessionHandle {
    /// The edge's node name.
    pub node: String,
    /// Tells this connection apart from an earlier or later one of the same node.
    pub connection: u64,
    dirty: Mutex<DirtyQueue>,
    wake: Notify,
    /// The client certificate the edge connected with.
    pub certificate: Presented,
    /// Cancelled when the session must end (replaced by a newer connection, its certificate
    /// revoked, or shutdown).
    pub closed: CancellationToken,
    /// Why it was closed, when the edge is to be told (a revoked certificate).
    revoked: Mutex<Option<String>>,
    /// The byte streams (logs, exec, port-forward) on this connection.
    pub streams: Mux,
}

impl SessionHandle {
    /// Why the session was closed for a revoked certificate, if it was.
    pub fn revoked(&self) -> Option<String> {
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Queues `key` to be sent, unless it is queued already (coalescing).
    pub fn mark(&self, key: ObjectKey) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        if dirty.queued.insert(key.clone()) {
            dirty.order.push_back(key);
            drop(dirty);
            self.wake.notify_one();
        }
    }

    /// Takes the oldest queued key.
    pub fn next(&self) -> Option<ObjectKey> {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        let key = dirty.order.pop_front()?;
        dirty.queued.remove(&key);
        Some(key)
    }

    /// How many keys are queued.
    pub fn backlog(&self) -> usize {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .order
            .len()
    }

    /// Waits until a key is queued (returns at once if one was queued since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// The registry of connected edges.
#[derive(Debug)]
pub struct Sessions {
    by_node: RwLock<HashMap<String, Arc<SessionHandle>>>,
    next_connection: AtomicU64,
    /// When each node that is not connected left (since this cloudcore started).
    left: Mutex<HashMap<String, SystemTime>>,
    started: SystemTime,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            by_node: RwLock::default(),
            next_connection: AtomicU64::default(),
            left: Mutex::default(),
            started: SystemTime::now(),
        }
    }
}

/// A stream cannot be opened: the node is not connected to this cloudcore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct NotConnected {
    /// The node.
    pub node: String,
    /// When its connection ended, if it was connected since this cloudcore started.
    pub since: Option<SystemTime>,
    /// When this cloudcore started.
    pub started: SystemTime,
}

impl NotConnected {
    fn message(&self) -> String {
        let at = |t: SystemTime| {
            jiff::Timestamp::try_from(t).map_or_else(|_| "?".to_owned(), |t| t.to_string())
        };
        match self.since {
            Some(since) => format!(
                "node {} is not connected to cloudcore: its connection ended at {}",
                self.node,
                at(since)
            ),
            None => format!(
                "node {} is not connected to cloudcore: it has not connected since cloudcore started at {}",
                self.node,
                at(self.started)
            ),
        }
    }
}

impl Sessions {
    /// Registers a new connection of `node`, with the queue of stream frames its session
    /// writes. An older connection of the same node is closed: the newest one wins, so an
    /// edge that reconnects before the cloud noticed its old connection died is not refused.
    pub fn register(
        &self,
        node: &str,
        certificate: Presented,
        shutdown: &CancellationToken,
    ) -> (Arc<SessionHandle>, mpsc::UnboundedReceiver<StreamFrame>) {
        let (streams, frames) = Mux::new(mux::Role::Opener);
        let handle = Arc::new(SessionHandle {
            node: node.to_owned(),
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed) + 1,
            dirty: Mutex::default(),
            wake: Notify::new(),
            certificate,
            closed: shutdown.child_token(),
            revoked: Mutex::default(),
            streams,
        });
        self.left
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node);
        let old = self
            .by_node
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_owned(), handle.clone());
        if let Some(old) = old {
            tracing::info!(node, "a newer connection replaces the edge's previous one");
            old.closed.cancel();
        }
        (handle, frames)
    }

    /// Closes `node`'s session if `check` refuses its certificate now, telling the edge why.
    pub fn close_revoked(&self, node: &str, check: impl Fn(&Presented) -> Result<(), String>) {
        let session = self
            .by_node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .cloned();
        let Some(session) = session else { return };
        if let Err(message) = check(&session.certificate) {
            tracing::info!(
                node,
                serial = session.certificate.serial,
                message,
                "closing the session of a revoked certificate"
            );
            *session
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(message);
            session.closed.cancel();
        }
    }

    /// Whether `node`'s edge is connected now.
    pub fn is_connected(&self, node: &str) -> bool {
        self.by_node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(node)
    }

    /// Opens a stream to `node`'s edge.
    pub fn open_stream(&self, node: &str, request: StreamRequest) -> Result<Stream, NotConnected> {
        let session = self
            .by_node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .cloned();
        session
            .ok_or_else(|| self.not_connected(node))?
            .streams
            .open(request)
            .map_err(|_| self.not_connected(node))
    }

    /// Whether `node`'s edge is connected now, for a request that opens its streams later
    /// (port-forward opens one per connection its client makes).
    pub fn ensure_connected(&self, node: &str) -> Result<(), NotConnected> {
        if self
            .by_node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(node)
        {
            Ok(())
        } else {
            Err(self.not_connected(node))
        }
    }

    fn not_connected(&self, node: &str) -> NotConnected {
        NotConnected {
            node: node.to_owned(),
            since: self
                .left
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(node)
                .copied(),
            started: self.started,
        }
    }

    /// Forgets `handle`, unless a newer connection of its node replaced it already.
    pub fn unregister(&self, handle: &SessionHandle) {
        let mut by_node = self.by_node.write().unwrap_or_else(PoisonError::into_inner);
        if by_node
            .get(&handle.node)
            .is_some_and(|h| h.connection == handle.connection)
        {
            by_node.remove(&handle.node);
            self.left
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(handle.node.clone(), SystemTime::now());
        }
    }

    /// Queues `key` for `node`, if it is connected. Edges not connected get the object in the
    /// resync when they come back.
    pub fn mark(&self, node: &str, key: ObjectKey) {
        let session = self
            .by_node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .cloned();
        if let Some(session) = session {
            session.mark(key);
        }
    }

    /// How many edges are connected.
    pub fn len(&self) -> usize {
        self.by_node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no edge is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use wedge_core::protocol::ResourceKind;

    use super::*;

    fn cert(serial: &str) -> Presented {
        Presented {
            serial: serial.into(),
            not_before: 0,
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::Pod,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn repeated_marks_coalesce_and_keep_their_first_place() {
        let sessions = Sessions::default();
        let shutdown = CancellationToken::new();
        let (edge, _) = sessions.register("edge-1", cert("aa"), &shutdown);
        for name in ["a", "b", "a", "a", "c", "b"] {
            sessions.mark("edge-1", key(name));
        }
        sessions.mark("edge-2", key("x"));
        assert_eq!(edge.backlog(), 3);
        let order: Vec<_> = std::iter::from_fn(|| edge.next()).map(|k| k.name).collect();
        assert_eq!(order, ["a", "b", "c"]);
        sessions.mark("edge-1", key("a"));
        assert_eq!(edge.next(), Some(key("a")), "sent keys can be queued again");
    }

    #[test]
    fn a_newer_connection_closes_the_older_one() {
        let sessions = Sessions::default();
        let shutdown = CancellationToken::new();
        let (first, _) = sessions.register("edge-1", cert("aa"), &shutdown);
        let (second, _) = sessions.register("edge-1", cert("aa"), &shutdown);
        assert!(first.closed.is_cancelled());
        assert!(!second.closed.is_cancelled());
        sessions.unregister(&first);
        assert_eq!(
            sessions.len(),
            1,
            "the old one leaving does not remove the new"
        );
        sessions.unregister(&second);
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_stream_to_a_node_not_connected_says_since_when() {
        let sessions = Sessions::default();
        let shutdown = CancellationToken::new();
        let request = || StreamRequest::Logs {
            namespace: "default".into(),
            pod: "p".into(),
            container: "c".into(),
            options: Default::default(),
        };
        let never = sessions
            .open_stream("edge-1", request())
            .expect_err("not connected");
        assert!(never.since.is_none());
        assert!(
            never
                .to_string()
                .contains("has not connected since cloudcore started at"),
            "{never}"
        );
        let (edge, _frames) = sessions.register("edge-1", cert("aa"), &shutdown);
        assert!(sessions.open_stream("edge-1", request()).is_ok());
        sessions.unregister(&edge);
        let gone = sessions.open_stream("edge-1", request()).expect_err("gone");
        assert!(gone.since.is_some());
        assert!(
            gone.to_string().contains("its connection ended at"),
            "{gone}"
        );
    }

    #[test]
    fn a_session_on_a_revoked_certificate_is_closed_with_the_reason() {
        let sessions = Sessions::default();
        let shutdown = CancellationToken::new();
        let (edge, _frames) = sessions.register("edge-1", cert("aa"), &shutdown);
        sessions.close_revoked("edge-1", |c| {
            if c.serial == "bb" {
                Err("bb is revoked".into())
            } else {
                Ok(())
            }
        });
        assert!(!edge.closed.is_cancelled(), "another serial's revocation");
        assert!(edge.revoked().is_none());
        sessions.close_revoked("edge-1", |_| Err("revoked by hand".into()));
        assert!(edge.closed.is_cancelled());
        assert_eq!(edge.revoked().as_deref(), Some("revoked by hand"));
    }
}
