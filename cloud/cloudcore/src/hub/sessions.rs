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

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::ObjectKey;

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
    /// Cancelled when the session must end (replaced by a newer connection, or shutdown).
    pub closed: CancellationToken,
}

impl SessionHandle {
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
#[derive(Debug, Default)]
pub struct Sessions {
    by_node: RwLock<HashMap<String, Arc<SessionHandle>>>,
    next_connection: AtomicU64,
}

impl Sessions {
    /// Registers a new connection of `node`. An older connection of the same node is closed:
    /// the newest one wins, so an edge that reconnects before the cloud noticed its old
    /// connection died is not refused.
    pub fn register(&self, node: &str, shutdown: &CancellationToken) -> Arc<SessionHandle> {
        let handle = Arc::new(SessionHandle {
            node: node.to_owned(),
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed) + 1,
            dirty: Mutex::default(),
            wake: Notify::new(),
            closed: shutdown.child_token(),
        });
        let old = self
            .by_node
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_owned(), handle.clone());
        if let Some(old) = old {
            tracing::info!(node, "a newer connection replaces the edge's previous one");
            old.closed.cancel();
        }
        handle
    }

    /// Forgets `handle`, unless a newer connection of its node replaced it already.
    pub fn unregister(&self, handle: &SessionHandle) {
        let mut by_node = self.by_node.write().unwrap_or_else(PoisonError::into_inner);
        if by_node
            .get(&handle.node)
            .is_some_and(|h| h.connection == handle.connection)
        {
            by_node.remove(&handle.node);
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
        let edge = sessions.register("edge-1", &shutdown);
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
        let first = sessions.register("edge-1", &shutdown);
        let second = sessions.register("edge-1", &shutdown);
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
}
