//! The edge's SQLite database: MetaManager's objects, the report outbox and DeviceTwin's twins,
//! in one file.
//!
//! WAL with `synchronous=NORMAL`: a committed write survives the process being killed (kill -9,
//! a crash), which is what "stored before acknowledged" needs; only a power cut can lose the
//! last commits, and the cloud's resync brings those back.
//!
//! Writes go to one writer thread ([`writer`]) that owns the write connection and commits what
//! is queued in groups: a commit (a WAL append, an fsync at a checkpoint, a slow or full disk)
//! never runs on an async worker, and writes from every module share one commit. Callers await
//! their write's commit: EdgeHub acknowledges only what is durable. Reports the database cannot
//! take (a full disk) wait in memory ([`held`]) until it can.
//!
//! Reads run where they are called, on a second connection of their own: in WAL mode a reader
//! never waits for the writer (it reads the last commit), and the reads are index lookups and
//! short scans of a small file the page cache holds (a queued status, a page of the outbox, a
//! device's twins), cheaper than a hop to a blocking thread. The whole-table reads (MetaManager's
//! load, the re-encryption) run once at start, before the edge serves anything.

mod held;
mod meta;
mod outbox;
mod twins;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;
use wedge_core::encryption::EncryptionConfig;
use wedge_core::state::StateLock;

pub use held::HeldReport;
pub use meta::{Applied, MetaStore, StoredObject};
pub use outbox::{Appended, Outbox, OutboxEntry, Queued};
pub use twins::{StoredTwin, TwinStore};
pub(crate) use writer::Pending;
pub use writer::WriteStats;

/// The schema's version, in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    object TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS outbox (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    operation TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Version 2: DeviceTwin. One row per device property (both sides of its twin, as JSON
/// `StampedValue`s, and the last desired value read from the Device's spec, so a spec is applied
/// once, not at every resync), and one per device for its connection state.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS twins (
    device TEXT NOT NULL,
    property TEXT NOT NULL,
    reported TEXT,
    desired TEXT,
    spec_desired TEXT,
    PRIMARY KEY (device, property)
);
CREATE TABLE IF NOT EXISTS device_states (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    last_online TEXT
);
";

/// Version 3: the last report of each key the cloud acknowledged, for the kinds the edge must
/// remember once the outbox lets them go (pod statuses: what says a pod finished, after a
/// restart, even before the cloud's copy of the pod with that status has come back down).
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS acknowledged (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or prepared.
    #[error("opening the edge database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database was written by a newer edgecore.
    #[error(
        "the edge database {path} has schema version {found}; this edgecore knows up to {SCHEMA_VERSION}"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A statement failed.
    #[error("{doing}: {source}")]
    Sql {
        /// What was being done.
        doing: String,
        /// Why (shared by every write of a group whose commit failed).
        source: Arc<rusqlite::Error>,
    },
    /// The writer thread could not be started.
    #[error("starting the edge database's writer thread: {0}")]
    Thread(std::io::Error),
    /// The database takes no writes: opened to inspect, or closed.
    #[error("the edge database takes no writes (opened read-only, or closed)")]
    Closed,
    /// A write panicked (a bug): it was rolled back and refused; the writes beside it and the
    /// writer went on.
    #[error("a write to the edge database panicked (a bug) and was refused: {0}")]
    Panicked(String),
    /// Another process (an edgecore, or a `wedge up`, on the same root) has the database open.
    #[error(transparent)]
    Locked(#[from] wedge_core::state::LockError),
    /// The database's permissions could not be made private.
    #[error("making {path} private: {source}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored value does not parse.
    #[error("the stored {what} for {key} is corrupt: {message}")]
    Corrupt {
        /// What (object, report).
        what: &'static str,
        /// The key.
        key: String,
        /// Why it does not parse.
        message: String,
    },
}

/// The database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Database {
    /// The read connection.
    conn: Arc<Mutex<Connection>>,
    /// The writer thread, which owns the write connection (none for [`Database::inspect`]).
    writer: Option<Arc<writer::Writer>>,
    /// Reports it could not take, shared by every [`Outbox`] of it ([`held`]).
    held: Arc<HeldReports>,
    /// Told whenever a report is queued, in the database or in memory: EdgeHub's pump waits
    /// on it ([`Outbox::changed`]).
    queued: Arc<tokio::sync::Notify>,
    /// Held while any clone lives: one process per database (none for [`Database::inspect`]).
    _lock: Option<Arc<StateLock>>,
    /// Which of MetaManager's objects are encrypted at rest, and how ([`Database::with_encryption`]).
    encryption: Arc<EncryptionConfig>,
}

impl Database {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// Opens the database at `path` and encrypts MetaManager's objects at rest as `encryption`
    /// says (kube-apiserver's `EncryptionConfiguration`; Secrets the cloud sent, at least),
    /// bringing every stored object under it now: rows under an older key, or plain, are
    /// rewritten under the first provider's; rows no configured key reads are dropped, so the
    /// cloud's resync sends them again. That rewrite at start is the edge's half of key
    /// rotation.
    pub fn open_encrypted(path: &Path, encryption: EncryptionConfig) -> Result<Self, StoreError> {
        Self::open_with(path, Some(encryption))
    }

    fn open_with(path: &Path, encryption: Option<EncryptionConfig>) -> Result<Self, StoreError> {
        let (db, conn) = Self::prepare(path, encryption)?;
        let writer = writer::Writer::start(conn).map_err(StoreError::Thread)?;
        Ok(Self {
            writer: Some(Arc::new(writer)),
            ..db
        })
    }

    /// Opens the database with a writer whose every group waits for a tick on the returned
    /// sender: what is queued before a tick is one group (tests).
    #[cfg(test)]
    pub(crate) fn open_gated(
        path: &Path,
    ) -> Result<(Self, std::sync::mpsc::Sender<()>), StoreError> {
        let (db, conn) = Self::prepare(path, None)?;
        let (writer, tick) = writer::Writer::start_gated(conn).map_err(StoreError::Thread)?;
        Ok((
            Self {
                writer: Some(Arc::new(writer)),
                ..db
            },
            tick,
        ))
    }

    /// The database without its writer, and the write connection for it: locked, migrated,
    /// re-encrypted.
    fn prepare(
        path: &Path,
        encryption: Option<EncryptionConfig>,
    ) -> Result<(Self, Connection), StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let lock = StateLock::acquire(path)?;
        wedge_core::state::private_file(path).map_err(|source| StoreError::Permissions {
            path: path.to_owned(),
            source,
        })?;
        let mut conn = Connection::open(path).map_err(open_err)?;
        // Wait for a lock (a tool reading, a checkpoint) before the first statement that may
        // need one.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // A file system without shared memory: still safe, only slower and more locking.
            tracing::warn!(path = %path.display(), mode, "the edge database is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        let encrypted = encryption.is_some();
        let encryption = Arc::new(encryption.unwrap_or_default());
        if encrypted {
            let (rewritten, dropped) = meta::reencrypt(&mut conn, &encryption)?;
            if rewritten > 0 || dropped > 0 {
                tracing::info!(
                    rewritten,
                    dropped,
                    "brought the stored objects under the current encryption configuration"
                );
            }
        }
        let reader = Connection::open(path).map_err(open_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let db = Self {
            conn: Arc::new(Mutex::new(reader)),
            writer: None,
            held: Arc::default(),
            queued: Arc::default(),
            _lock: Some(Arc::new(lock)),
            encryption,
        };
        Ok((db, conn))
    }

    /// Opens the database of an edgecore that may be running, to read what it holds, without
    /// taking its lock: for tests and tools that look at a live edge. Writes through it fail.
    pub fn inspect(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            writer: None,
            held: Arc::default(),
            queued: Arc::default(),
            _lock: None,
            encryption: Arc::default(),
        })
    }

    /// MetaManager's objects.
    pub fn meta(&self) -> MetaStore {
        MetaStore { db: self.clone() }
    }

    /// The report outbox.
    pub fn outbox(&self) -> Outbox {
        Outbox { db: self.clone() }
    }

    /// DeviceTwin's rows.
    pub fn twins(&self) -> TwinStore {
        TwinStore { db: self.clone() }
    }

    /// The read connection.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Taken before [`Database::conn`] where both are, never after.
    fn held(&self) -> MutexGuard<'_, held::Held> {
        self.held.lock()
    }

    /// Runs `work` in the writer's next transaction, and `settled` on the writer thread once
    /// the transaction is committed or failed (told its result and whether the transaction
    /// committed), before the caller hears ([`writer`]).
    async fn write<T, W, S>(&self, work: W, settled: S) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        S: FnOnce(&Result<T, StoreError>, bool) + Send + 'static,
    {
        self.writer
            .as_ref()
            .ok_or(StoreError::Closed)?
            .write(work, settled)
            .await
    }

    /// As [`Database::write`], in two steps: returns once the write is queued (behind every
    /// write queued before it, committed and settled after them), with its answer to await.
    /// What one caller queues in order, it may await later, so its writes share commits.
    async fn queue<T, W, S>(&self, work: W, settled: S) -> Result<Pending<T>, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        S: FnOnce(&Result<T, StoreError>, bool) + Send + 'static,
    {
        self.writer
            .as_ref()
            .ok_or(StoreError::Closed)?
            .queue(work, settled)
            .await
    }

    /// Resolves once every write queued before it has settled (committed or failed, its hook
    /// run): what memory follows of the disk is then up to date with it.
    pub(crate) async fn settled(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(()), |_, _| {}).await
    }

    /// Closes the database for writes, for every handle: resolves once what was queued is
    /// committed and the write connection closed (the database's lock goes with the last
    /// handle). Writes after it fail with [`StoreError::Closed`]. Edgecore's shutdown ends with
    /// it, so nothing queued is left to a thread the process does not wait for, and no async
    /// worker waits for the disk when the last handle goes.
    pub async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }

    /// How many transactions the writer committed so far, and how many writes they held
    /// (group commit: fewer transactions than writes when writes come together).
    pub fn write_stats(&self) -> WriteStats {
        self.writer.as_ref().map_or(
            WriteStats {
                transactions: 0,
                writes: 0,
            },
            |w| w.stats(),
        )
    }

    /// Resolves once the writer thread has ended (tests).
    #[cfg(test)]
    pub(crate) fn writer_ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ended = self.writer.as_ref().map(|w| w.ended());
        async move {
            if let Some(ended) = ended {
                ended.await;
            }
        }
    }

    /// How many writes wait for the writer thread (tests).
    #[cfg(test)]
    pub(crate) fn queued_writes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.queued())
    }

    /// Waits until `n` writes wait for the writer thread (tests, with a gated writer); panics
    /// after ten seconds of the wall clock (a paused tokio clock does not move on its own).
    #[cfg(test)]
    pub(crate) async fn until_queued(&self, n: usize) {
        self.until_writes(|queued| queued >= n, "queued").await;
    }

    /// Lets one group through a gated writer and waits until the writer took it (tests): no
    /// tick is left over for a later write.
    #[cfg(test)]
    pub(crate) async fn tick_one(&self, tick: &std::sync::mpsc::Sender<()>) {
        let before = self.write_stats().transactions;
        tick.send(()).expect("the writer is gated");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.write_stats().transactions == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never took the group"
            );
            tokio::task::yield_now().await;
        }
    }

    #[cfg(test)]
    async fn until_writes(&self, done: impl Fn(usize) -> bool, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(self.queued_writes()) {
            assert!(
                std::time::Instant::now() < deadline,
                "writes never {what}: {} queued",
                self.queued_writes()
            );
            tokio::task::yield_now().await;
        }
    }

    /// Makes every commit fail as on a full disk (SQLITE_FULL), or work again.
    #[cfg(test)]
    pub(crate) fn set_full(&self, full: bool) {
        if let Some(writer) = &self.writer {
            writer.set_full(full);
        }
    }
}

/// The reports a database could not take, and the wake-up of their retry.
#[derive(Debug, Default)]
struct HeldReports {
    reports: Mutex<held::Held>,
    changed: tokio::sync::Notify,
}

impl HeldReports {
    fn lock(&self) -> MutexGuard<'_, held::Held> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction: a crash midway leaves the old
/// schema, never half of the new one. Later versions add their steps here, each guarded by the
/// version it upgrades from.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            path: path.to_owned(),
            found: version,
        });
    }
    if version < 1 {
        tx.execute_batch(SCHEMA).map_err(open_err)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2).map_err(open_err)?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_V3).map_err(open_err)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

#[cfg(test)]
mod writer_tests;

fn sql(doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let doing = doing.into();
    move |source| StoreError::Sql {
        doing,
        source: Arc::new(source),
    }
}
