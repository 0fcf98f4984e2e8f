//! The writer thread: every write of a store goes through one thread that owns its SQLite
//! connection, in groups.
//!
//! A commit is blocking I/O (the WAL written, an fsync at each checkpoint, a slow or full disk),
//! so it must not run on the async workers that serve requests and watches. Callers queue a
//! write (the key, what kind, and a `decide` that sees the object as it stands) and await the
//! answer. The thread takes every write queued (up to [`MAX_GROUP`]), decides each against the
//! state with the group's earlier writes in it, gives the accepted ones consecutive versions and
//! commits them in one transaction (group commit: one WAL append for many writes). Only then
//! are they applied to the history and the state and published, in version order, and each
//! caller answered. A write refused by its `decide` (a conflict, an object that exists) is
//! answered with its error and takes no version; a failed commit answers every write of its
//! group with the error and nothing of it is applied or published, so the next group reuses
//! the versions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde_json::Value;
use tokio::sync::oneshot;
use wedge_core::encryption::EncryptionConfig;

use super::history::Trims;
use super::{
    Event, EventType, HistoryLimits, MAX_OBJECT_BYTES, ObjectKey, Shared, State, StoreError,
    StoredObject, db, stamp,
};

/// The most writes one transaction commits.
pub const MAX_GROUP: usize = 256;

/// What a write decides from the object as it stands: the new object, or `None` to delete.
pub(super) type Decide =
    Box<dyn FnOnce(&ObjectKey, Option<&StoredObject>) -> Result<Option<Value>, StoreError> + Send>;

/// The answer to a write.
pub(super) type Answer = oneshot::Receiver<Result<StoredObject, StoreError>>;

/// One queued write.
struct Request {
    key: ObjectKey,
    kind: EventType,
    decide: Decide,
    reply: oneshot::Sender<Result<StoredObject, StoreError>>,
}

/// The queue to the writer thread, and the thread.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Request>>,
    /// In tests, each group waits for a tick here (see `Store::open_gated`).
    gate: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread owns.
struct Thread {
    shared: Arc<Shared>,
    conn: rusqlite::Connection,
    limits: HistoryLimits,
    encryption: EncryptionConfig,
}

/// A write accepted into a group: its event and the bytes that go to disk.
struct Accepted {
    reply: oneshot::Sender<Result<StoredObject, StoreError>>,
    event: Arc<Event>,
    on_disk: Vec<u8>,
}

impl Writer {
    /// Starts the thread. With `gated`, each group waits for a tick on the returned sender
    /// (tests: what is queued before a tick is one group).
    pub(super) fn start(
        shared: Arc<Shared>,
        conn: rusqlite::Connection,
        limits: HistoryLimits,
        encryption: EncryptionConfig,
        gated: bool,
    ) -> std::io::Result<Self> {
        let (queue, requests) = mpsc::channel();
        let (gate, ticks) = if gated {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let thread = Thread {
            shared,
            conn,
            limits,
            encryption,
        };
        let thread = std::thread::Builder::new()
            .name("wedge-store-writer".into())
            .spawn(move || thread.run(&requests, ticks))?;
        Ok(Self {
            queue: Some(queue),
            gate,
            thread: Some(thread),
        })
    }

    /// Queues a write; its answer comes on the returned receiver.
    pub(super) fn submit(
        &self,
        key: &ObjectKey,
        kind: EventType,
        decide: Decide,
    ) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key: key.clone(),
            kind,
            decide,
            reply,
        };
        self.queue
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(request)
            .map_err(|_| StoreError::Closed)?;
        Ok(answer)
    }

    /// Lets one group through (tests).
    #[cfg(test)]
    pub(super) fn tick(&self) {
        if let Some(gate) = &self.gate {
            let _ = gate.send(());
        }
    }

    /// Stops taking writes and waits for the thread to finish what it took.
    pub(super) fn stop(&mut self) {
        self.queue = None;
        self.gate = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store's writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Thread {
    fn run(mut self, requests: &mpsc::Receiver<Request>, mut ticks: Option<mpsc::Receiver<()>>) {
        loop {
            if let Some(gate) = &ticks
                && gate.recv().is_err()
            {
                ticks = None;
            }
            let Ok(first) = requests.recv() else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            // A `decide` that panics loses its group (the callers see the store closed), not the
            // writer: nothing of a group is applied before its commit.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(group)));
            if outcome.is_err() {
                tracing::error!("a write panicked in the store's writer; its group was dropped");
            }
        }
    }

    /// Decides, commits, applies and answers one group.
    fn commit(&mut self, group: Vec<Request>) {
        let accepted = self.decide(group);
        let Some(last) = accepted.last().map(|a| a.event.rv) else {
            return;
        };
        let new: Vec<(&str, usize, u64)> = accepted
            .iter()
            .map(|a| {
                let e = &a.event;
                (e.key.resource.as_str(), e.object.json.len(), e.rv)
            })
            .collect();
        // What the history drops for these events is dropped from disk in the same transaction.
        let trims: Trims = self.shared.history().plan(self.limits, &new);
        let writes: Vec<db::Write<'_>> = accepted
            .iter()
            .map(|a| db::Write {
                key: &a.event.key,
                rv: a.event.rv,
                kind: a.event.kind,
                data: &a.on_disk,
            })
            .collect();
        let committed = db::commit(
            &mut self.conn,
            &writes,
            last,
            trims.iter().map(|(r, (_, since))| (r.as_str(), *since)),
        );
        drop(writes);
        match committed {
            Ok(()) => {
                let events: Vec<Arc<Event>> = accepted.iter().map(|a| a.event.clone()).collect();
                self.shared.apply(&events, &trims);
                for a in accepted {
                    let _ = a.reply.send(Ok(a.event.object.clone()));
                }
            }
            Err(error) => {
                tracing::error!(%error, writes = accepted.len(), "a commit failed; its writes are refused");
                let error = Arc::new(error);
                for a in accepted {
                    let _ = a.reply.send(Err(StoreError::Db(error.clone())));
                }
            }
        }
    }

    /// Decides each write of a group against the state with the group's earlier writes in it;
    /// answers those refused, and returns the others with consecutive versions.
    fn decide(&self, group: Vec<Request>) -> Vec<Accepted> {
        let state = self.shared.state();
        let mut rv = state.rv;
        // The group's writes so far: the object as it now stands, `None` once deleted.
        let mut written: HashMap<ObjectKey, Option<StoredObject>> = HashMap::new();
        let mut accepted = Vec::with_capacity(group.len());
        for request in group {
            let existing = match written.get(&request.key) {
                Some(object) => object.clone(),
                None => state.objects.get(&request.key).cloned(),
            };
            let Request {
                key,
                kind,
                decide,
                reply,
            } = request;
            match self.prepare(&state, key, kind, decide, existing, rv + 1) {
                Ok((event, on_disk)) => {
                    rv = event.rv;
                    let now = match event.kind {
                        EventType::Deleted => None,
                        _ => Some(event.object.clone()),
                    };
                    written.insert(event.key.clone(), now);
                    accepted.push(Accepted {
                        reply,
                        event,
                        on_disk,
                    });
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        accepted
    }

    /// One write's event at version `rv`, and its bytes on disk: encrypted when a rule lists
    /// the resource (the object row and the history row alike), the JSON itself otherwise.
    fn prepare(
        &self,
        state: &State,
        key: ObjectKey,
        kind: EventType,
        decide: Decide,
        existing: Option<StoredObject>,
        rv: u64,
    ) -> Result<(Arc<Event>, Vec<u8>), StoreError> {
        if let Some(source) = state.unreadable.get(&key) {
            return Err(StoreError::Transform {
                key,
                source: Box::new(source.clone()),
            });
        }
        let stored = match decide(&key, existing.as_ref())? {
            Some(object) => stamp(object, rv)?,
            None => {
                // The deleted object as it was, at the deletion's version.
                let last = existing
                    .as_ref()
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                stamp(last.value(), rv)?
            }
        };
        if stored.json.len() > MAX_OBJECT_BYTES {
            return Err(StoreError::TooLarge {
                key,
                size: stored.json.len(),
            });
        }
        let on_disk = self
            .encryption
            .encrypt_for(&key.resource, &stored.json, key.storage_key().as_bytes())
            .map_err(|source| StoreError::Transform {
                key: key.clone(),
                source: Box::new(source),
            })?;
        let event = Arc::new(Event {
            rv,
            kind,
            key,
            object: stored,
            prev: existing,
        });
        Ok((event, on_disk))
    }
}
