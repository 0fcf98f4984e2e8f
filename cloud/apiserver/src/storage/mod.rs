//! The versioned object store: SQLite on disk, an index in memory, and a watch history.
//!
//! Every write takes the next value of one cluster-wide resourceVersion counter, is committed to
//! SQLite (WAL) before it is acknowledged, so an acknowledged write survives `kill -9`, and is then
//! applied to the in-memory index and announced to watchers. Writes are async: one thread per
//! store owns the SQLite connection and commits what is queued in groups (`writer`), so a slow
//! disk stalls no async worker. Reads (get, list) are served from memory: a 10k-object list
//! never touches the disk. Objects are kept as their JSON bytes, with their labels parsed
//! beside them for selectors.
//!
//! The store knows nothing of Kubernetes semantics beyond versions and preconditions: defaulting,
//! validation, finalizers and graceful deletion live in the layer above, which calls
//! [`Store::create`], [`Store::update`] and [`Store::delete`] with the objects it has decided on.
//!
//! Watches read the history and then follow live events, both per resource (`history`: each
//! resource has its own window of the history and its own live channel, so a storm of one
//! resource's writes lags no watcher of another); the history is kept in SQLite too so clients
//! can resume after a restart. Asking for a version older than a resource's window holds is
//! [`StoreError::Gone`], the API's 410.
//!
//! With an `EncryptionConfiguration` ([`Store::open_encrypted`]), the objects of the resources
//! it lists are encrypted on their way to SQLite, in the object rows and the history rows alike,
//! and decrypted once at open: memory holds them plain, as kube-apiserver's watch cache does.
//! An object no configured key can read stays out of memory and answers every read and write
//! with [`StoreError::Transform`] (a 500 naming the key it was written with).

mod db;
mod history;
mod snapshot;
mod watch;
mod writer;

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use serde_json::Value;
use wedge_core::encryption::{EncryptionConfig, TransformError};
use wedge_core::state::StateLock;

use history::{History, Trims};

pub use history::{LIVE_EVENTS, WINDOWS};
pub use watch::{WatchEnded, WatchStream};
pub use writer::MAX_GROUP;

/// How many events of each resource the watch history keeps by default (all resources
/// together: [`WINDOWS`] times as many).
pub const HISTORY: usize = 10_000;
/// How many bytes of objects the watch history keeps by default: a few large objects written
/// often (a 1 MiB ConfigMap updated in a loop) expire the oldest events instead of holding
/// gigabytes, in memory and on disk. A watch or continue from an expired version gets 410 and
/// relists, as from etcd after compaction.
pub const HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// The largest object the store keeps: etcd's default request limit (`--max-request-bytes`,
/// 1.5 MiB), which kube-apiserver's objects live under.
pub const MAX_OBJECT_BYTES: usize = 1_572_864;

/// The watch history's limits.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Events kept of each resource ([`WINDOWS`] times as many of all together).
    pub events: usize,
    /// Bytes of their objects kept, all resources together.
    pub bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            events: HISTORY,
            bytes: HISTORY_BYTES,
        }
    }
}

/// Where an object lives: its resource (`pods`, `deployments.apps`), namespace (empty for
/// cluster-scoped resources) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `resource` for the core group, `resource.group` otherwise.
    pub resource: String,
    /// The namespace, or empty.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Where kube-apiserver would keep it in etcd (`/registry/secrets/default/name`): the
    /// authenticated data its encrypted bytes are sealed with, and how errors name it.
    pub fn storage_key(&self) -> String {
        if self.namespace.is_empty() {
            format!("/registry/{}/{}", self.resource, self.name)
        } else {
            format!(
                "/registry/{}/{}/{}",
                self.resource, self.namespace, self.name
            )
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {:?}", self.resource, self.name)
        } else {
            write!(
                f,
                "{} {:?} in namespace {:?}",
                self.resource, self.name, self.namespace
            )
        }
    }
}

/// An object as stored: its version, its JSON (with `metadata.resourceVersion` set) and its
/// labels.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// The version of its last write.
    pub rv: u64,
    /// The object's JSON.
    pub json: Bytes,
    /// `metadata.labels`.
    pub labels: Arc<BTreeMap<String, String>>,
}

impl StoredObject {
    /// Parses the JSON (the store wrote it, so it parses).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted (the object as it was last).
    Deleted,
}

impl EventType {
    /// The watch event type's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }

    fn from_db(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(Self::Added),
            "MODIFIED" => Some(Self::Modified),
            "DELETED" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// One change, as watchers receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The change's version.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// To which object.
    pub key: ObjectKey,
    /// The object after the change (before it, for deletions, with the deletion's version).
    pub object: StoredObject,
    /// The object before the change, when known (not for events replayed after a restart):
    /// what tells a filtered watch that an object left or entered its selection.
    pub prev: Option<StoredObject>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of an object that exists.
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    /// Read, update or delete of an object that does not exist.
    #[error("{0} not found")]
    NotFound(ObjectKey),
    /// The object changed since the version the caller based its write on.
    #[error(
        "the object has been modified; please apply your changes to the latest version and try again ({key}: expected resourceVersion {expected}, found {found})"
    )]
    Conflict {
        /// The object.
        key: ObjectKey,
        /// The version the caller expected.
        expected: u64,
        /// The version stored.
        found: u64,
    },
    /// A watch from a version older than the history holds.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// The version asked for.
        requested: u64,
        /// The oldest version a watch can start from.
        oldest: u64,
    },
    /// The object is larger than the store keeps ([`MAX_OBJECT_BYTES`]).
    #[error("etcdserver: request is too large")]
    TooLarge {
        /// The object.
        key: ObjectKey,
        /// Its size in bytes.
        size: usize,
    },
    /// The object is not a JSON object with `metadata`.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// SQLite failed (shared: a failed group commit answers each of its writes with it).
    #[error("storage: {0}")]
    Db(Arc<rusqlite::Error>),
    /// The store has closed (the server is stopping).
    #[error("storage: the store has closed")]
    Closed,
    /// The writer thread could not be started.
    #[error("starting the store's writer thread: {source}")]
    Writer {
        /// Why.
        source: std::io::Error,
    },
    /// Another process has the database open.
    #[error(transparent)]
    Locked(#[from] wedge_core::state::LockError),
    /// The database's permissions could not be made private.
    #[error("making {path} private: {source}")]
    Permissions {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The object's stored bytes could not be decrypted (or encrypted) with the configured
    /// providers: kube-apiserver's "unable to transform key".
    #[error("unable to transform key {:?}: {source}", key.storage_key())]
    Transform {
        /// The object.
        key: ObjectKey,
        /// What failed, naming the key the data was written with (boxed: it is rare, and
        /// every `Result` of the store carries its size).
        source: Box<TransformError>,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Db(Arc::new(error))
    }
}

struct State {
    objects: BTreeMap<ObjectKey, StoredObject>,
    rv: u64,
    /// The version of each resource's last write since the store opened.
    changed: HashMap<String, u64>,
    /// Objects stored that no configured provider reads, and why.
    unreadable: BTreeMap<ObjectKey, TransformError>,
    /// Objects read with a provider other than the first (or plain where a rule now
    /// encrypts): an update writes them even when nothing changed, which is how
    /// `kubectl replace` moves them under the current key.
    stale: HashSet<ObjectKey>,
}

/// What [`Store::derived`] keeps: a value and the versions of the resources it was built from.
type Derived = (Vec<u64>, Arc<dyn Any + Send + Sync>);

/// What the store's reads, its writes and its watches share.
struct Shared {
    state: RwLock<State>,
    history: Mutex<History>,
    /// The newest version whose event has been sent on its resource's channel: a watch that
    /// has read everything its channel held has seen every event of its resource up to it.
    published: AtomicU64,
}

impl Shared {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes committed events seen: each in its resource's window of the history first, then
    /// in the state (whoever reads the state at a version finds every event up to it in the
    /// history, `snapshot`), then on its channel, in version order.
    fn apply(&self, events: &[Arc<Event>], trims: &Trims) {
        let live = self.history().push(events, trims);
        {
            let mut state = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for event in events {
                state.rv = event.rv;
                state.changed.insert(event.key.resource.clone(), event.rv);
                state.stale.remove(&event.key);
                match event.kind {
                    EventType::Deleted => state.objects.remove(&event.key),
                    _ => state
                        .objects
                        .insert(event.key.clone(), event.object.clone()),
                };
            }
        }
        for (event, live) in events.iter().zip(live) {
            // No receivers is fine.
            let _ = live.send(event.clone());
        }
        if let Some(last) = events.last() {
            self.published.store(last.rv, Ordering::Release);
        }
    }
}

/// The store.
pub struct Store {
    writer: writer::Writer,
    shared: Arc<Shared>,
    derived: Mutex<HashMap<&'static str, Derived>>,
    /// Held while the store is open, released after the writer has stopped: one process per
    /// database.
    _lock: StateLock,
}

impl Drop for Store {
    fn drop(&mut self) {
        // What was queued is committed and answered before the lock is released.
        self.writer.stop();
        // Watches end (`WatchEnded::Closed`) rather than wait for events that will not come.
        self.shared.history().close();
    }
}

/// The precondition of updates and deletes: the object exists and, with `expected`, is at that
/// version.
fn check_version(
    key: &ObjectKey,
    existing: Option<&StoredObject>,
    expected: Option<u64>,
) -> Result<(), StoreError> {
    let found = existing
        .ok_or_else(|| StoreError::NotFound(key.clone()))?
        .rv;
    match expected {
        Some(expected) if expected != found => Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            found,
        }),
        _ => Ok(()),
    }
}

/// Sets `metadata.resourceVersion` and returns the bytes and labels to store.
fn stamp(mut object: Value, rv: u64) -> Result<StoredObject, StoreError> {
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid("the object has no metadata".into()))?;
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    let labels: BTreeMap<String, String> = meta
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let json = serde_json::to_vec(&object).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(StoredObject {
        rv,
        json: Bytes::from(json),
        labels: Arc::new(labels),
    })
}

fn labels_of(json: &[u8]) -> BTreeMap<String, String> {
    serde_json::from_slice::<Value>(json)
        .ok()
        .and_then(|v| {
            v.get("metadata")?.get("labels")?.as_object().map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
        })
        .unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the store in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_history(path, HistoryLimits::default())
    }

    /// Opens the store keeping the events `limits` allow for watches to resume from.
    pub fn open_with_history(path: &Path, limits: HistoryLimits) -> Result<Self, StoreError> {
        Self::open_encrypted(path, limits, EncryptionConfig::default())
    }

    /// Opens the store, encrypting at rest what `encryption` lists. It reads the whole
    /// database: call it off the async workers (`spawn_blocking`) where that matters.
    pub fn open_encrypted(
        path: &Path,
        limits: HistoryLimits,
        encryption: EncryptionConfig,
    ) -> Result<Self, StoreError> {
        Self::open_with(path, limits, encryption, false)
    }

    /// A store whose writer commits one group per [`Store::let_group_through`]: what is queued
    /// before it is one group.
    #[cfg(test)]
    fn open_gated(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(
            path,
            HistoryLimits::default(),
            EncryptionConfig::default(),
            true,
        )
    }

    #[cfg(test)]
    fn let_group_through(&self) {
        self.writer.tick();
    }

    fn open_with(
        path: &Path,
        limits: HistoryLimits,
        encryption: EncryptionConfig,
        gated: bool,
    ) -> Result<Self, StoreError> {
        let limits = HistoryLimits {
            events: limits.events.max(1),
            bytes: limits.bytes,
        };
        let lock = StateLock::acquire(path)?;
        wedge_core::state::private_file(path).map_err(|source| StoreError::Permissions {
            path: path.to_owned(),
            source,
        })?;
        let mut conn = db::open(path)?;
        if !encryption.is_empty() {
            // Deleted rows (a rotated-away key's bytes, plain copies from before) are
            // overwritten rather than left in free pages.
            conn.pragma_update(None, "secure_delete", "ON")?;
        }
        let (rv, rows) = db::load(&conn)?;
        let mut objects = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        let mut stale = HashSet::new();
        for (key, rv, stored) in rows {
            match encryption.decrypt_for(&key.resource, &stored, key.storage_key().as_bytes()) {
                Ok(plain) => {
                    if plain.stale {
                        stale.insert(key.clone());
                    }
                    let labels = Arc::new(labels_of(&plain.data));
                    let json = Bytes::from(plain.data);
                    objects.insert(key, StoredObject { rv, json, labels });
                }
                Err(error) => {
                    tracing::error!(key = %key.storage_key(), %error, "an object cannot be decrypted; reads and writes of it fail until its key is configured");
                    unreadable.insert(key, error);
                }
            }
        }
        let history = Self::load_history(&mut conn, rv, limits, &encryption)?;
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                objects,
                rv,
                changed: HashMap::new(),
                unreadable,
                stale,
            }),
            history: Mutex::new(history),
            published: AtomicU64::new(rv),
        });
        let writer = writer::Writer::start(shared.clone(), conn, limits, encryption, gated)
            .map_err(|source| StoreError::Writer { source })?;
        Ok(Self {
            writer,
            shared,
            derived: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// Reads the history back into each resource's window, and drops from disk what no longer
    /// fits (the limits shrank) or comes before an event that cannot be decrypted (a watch
    /// from before it gets 410 and relists rather than miss it).
    fn load_history(
        conn: &mut rusqlite::Connection,
        rv: u64,
        limits: HistoryLimits,
        encryption: &EncryptionConfig,
    ) -> Result<History, StoreError> {
        let (floor, sinces) = db::load_windows(conn)?;
        let rows = db::load_history(conn)?;
        // A database from before per-resource windows was trimmed as one history: complete
        // after its oldest event, or after the current version when it held none.
        let new_floor = match floor {
            Some(_) => None,
            None => Some(rows.first().map_or(rv, |row| row.0.saturating_sub(1))),
        };
        let mut history = History::new(floor.or(new_floor).unwrap_or(0));
        let kept: HashMap<String, u64> = sinces.into_iter().collect();
        for (resource, since) in &kept {
            history.set_since(resource, *since);
        }
        for (rv, kind, key, stored) in rows {
            let Some(kind) = EventType::from_db(&kind) else {
                continue;
            };
            if rv <= history.since(&key.resource) {
                continue;
            }
            match encryption.decrypt_for(&key.resource, &stored, key.storage_key().as_bytes()) {
                Ok(plain) => {
                    let labels = Arc::new(labels_of(&plain.data));
                    let json = Bytes::from(plain.data);
                    let event = Arc::new(Event {
                        rv,
                        kind,
                        key,
                        object: StoredObject { rv, json, labels },
                        prev: None,
                    });
                    history.load(event, limits);
                }
                Err(_) => history.reset(&key.resource, rv),
            }
        }
        let floor = history.floor();
        let moved: Vec<(String, u64)> = history
            .sinces()
            .filter(|(resource, since)| kept.get(*resource).copied().unwrap_or(floor) != *since)
            .map(|(resource, since)| (resource.to_owned(), since))
            .collect();
        if new_floor.is_some() || !moved.is_empty() {
            db::trim(conn, new_floor, &moved)?;
        }
        Ok(history)
    }

    /// Whether the object is stored under an older key (or plain where its resource is now
    /// encrypted): an update rewrites it even when nothing changed.
    pub fn is_stale(&self, key: &ObjectKey) -> bool {
        self.shared.state().stale.contains(key)
    }

    /// The first object of `resource` (in `namespace` if given) that cannot be decrypted, as
    /// the error a list of them answers.
    fn unreadable_in(state: &State, resource: &str, namespace: Option<&str>) -> Option<StoreError> {
        state
            .unreadable
            .iter()
            .find(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(key, source)| StoreError::Transform {
                key: key.clone(),
                source: Box::new(source.clone()),
            })
    }

    /// The newest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.shared.state().rv
    }

    /// The version of the last write to `resource` since the store was opened (0 if none):
    /// what a value built from its objects compares to know it is current.
    pub fn last_write(&self, resource: &str) -> u64 {
        self.shared
            .state()
            .changed
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    /// Reads one object.
    pub fn get(&self, key: &ObjectKey) -> Result<StoredObject, StoreError> {
        let state = self.shared.state();
        if let Some(source) = state.unreadable.get(key) {
            return Err(StoreError::Transform {
                key: key.clone(),
                source: Box::new(source.clone()),
            });
        }
        state
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.clone()))
    }

    /// A value built by `build` from the objects of `resources`, kept and handed out again until
    /// one of them is written (what the RBAC authorizer reads at every request, parsed once per
    /// change of the roles and bindings rather than once per request). `name` tells the values
    /// apart; each name must always give the same type.
    pub fn derived<T: Send + Sync + 'static>(
        &self,
        name: &'static str,
        resources: &[&str],
        build: impl FnOnce(&Store) -> T,
    ) -> Arc<T> {
        // Versions first, then the build: a value is never newer-tagged than what it read.
        let versions: Vec<u64> = {
            let state = self.shared.state();
            resources
                .iter()
                .map(|r| state.changed.get(*r).copied().unwrap_or(0))
                .collect()
        };
        let lock = || {
            self.derived
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((at, value)) = lock().get(name)
            && *at == versions
            && let Ok(value) = value.clone().downcast::<T>()
        {
            return value;
        }
        let value = Arc::new(build(self));
        lock().insert(name, (versions, value.clone()));
        value
    }

    /// Objects of `resource` (in `namespace` if given) in key order, starting after `after`
    /// (a name, or `namespace/name` across namespaces), at most `limit` of those `keep` accepts.
    /// Returns them, the version they were read at, and whether more remain.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&ObjectKey>,
        limit: Option<usize>,
        keep: impl Fn(&StoredObject) -> bool,
    ) -> (Vec<StoredObject>, u64, bool) {
        let state = self.shared.state();
        let start = ObjectKey::new(resource, namespace.unwrap_or(""), "");
        let lower = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Included(start),
        };
        let mut out = Vec::new();
        let mut more = false;
        for (key, obj) in state.objects.range((lower, Bound::Unbounded)) {
            if key.resource != resource || namespace.is_some_and(|ns| key.namespace != ns) {
                break;
            }
            if !keep(obj) {
                continue;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                more = true;
                break;
            }
            out.push(obj.clone());
        }
        (out, state.rv, more)
    }

    /// Creates an object; fails if one exists under `key`. The write is queued when this is
    /// called (writes are committed in the order they are queued); the future answers once it
    /// is committed and visible to reads.
    pub fn create(
        &self,
        key: &ObjectKey,
        object: Value,
    ) -> impl Future<Output = Result<StoredObject, StoreError>> + Send + 'static + use<> {
        self.write(
            key,
            EventType::Added,
            Box::new(move |key, existing| match existing {
                Some(_) => Err(StoreError::AlreadyExists(key.clone())),
                None => Ok(Some(object)),
            }),
        )
    }

    /// Replaces an object. With `expected`, fails with a conflict unless the stored version is
    /// that one (checked when the write's turn comes). Queued as [`Store::create`].
    pub fn update(
        &self,
        key: &ObjectKey,
        object: Value,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<StoredObject, StoreError>> + Send + 'static + use<> {
        self.write(
            key,
            EventType::Modified,
            Box::new(move |key, existing| {
                check_version(key, existing, expected)?;
                Ok(Some(object))
            }),
        )
    }

    /// Deletes an object, returning it as it was (stamped with the deletion's version). With
    /// `expected`, fails with a conflict unless the stored version is that one. Queued as
    /// [`Store::create`].
    pub fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<StoredObject, StoreError>> + Send + 'static + use<> {
        self.write(
            key,
            EventType::Deleted,
            Box::new(move |key, existing| {
                check_version(key, existing, expected)?;
                Ok(None)
            }),
        )
    }

    /// The one write path: queued to the writer thread, which decides, commits, applies and
    /// announces (`writer`).
    fn write(
        &self,
        key: &ObjectKey,
        kind: EventType,
        decide: writer::Decide,
    ) -> impl Future<Output = Result<StoredObject, StoreError>> + Send + 'static + use<> {
        let answer = self.writer.submit(key, kind, decide);
        async move { answer?.await.unwrap_or(Err(StoreError::Closed)) }
    }

    /// Watches `resource` (in `namespace` if given) for changes after version `from`.
    pub fn watch(
        &self,
        resource: &str,
        namespace: Option<&str>,
        from: u64,
    ) -> Result<WatchStream, StoreError> {
        let mut history = self.shared.history();
        let since = history.since(resource);
        if from < since {
            return Err(StoreError::Gone {
                requested: from,
                oldest: since,
            });
        }
        // Subscribed under the history's lock: an event is in the backlog, or on the channel
        // (or, between the two, in both: the stream skips what it has seen).
        let Some(live) = history.subscribe(resource) else {
            return Err(StoreError::Closed);
        };
        let backlog: Vec<Arc<Event>> = history
            .window(resource)
            .and_then(|w| w.after(from).ok())
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        drop(history);
        Ok(WatchStream::new(
            self.shared.clone(),
            resource,
            namespace,
            from,
            backlog,
            live,
        ))
    }
}

#[cfg(test)]
mod encryption_tests;
#[cfg(test)]
mod tests;
