//! The edge's SQLite database: MetaManager's objects, the report outbox and DeviceTwin's twins,
//! in one file.
//!
//! WAL with `synchronous=NORMAL`: a committed write survives the process being killed (kill -9,
//! a crash), which is what "stored before acknowledged" needs; only a power cut can lose the
//! last commits, and the cloud's resync brings those back. Every call is a short synchronous
//! statement on a shared connection; callers run them inline. Reports the database cannot take
//! (a full disk) wait in memory ([`held`]) until it can.

mod held;
mod meta;
mod outbox;
mod twins;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;
use wedge_core::encryption::EncryptionConfig;
use wedge_core::state::StateLock;

pub use held::HeldReport;
pub use meta::{Applied, MetaStore, StoredObject};
pub use outbox::{Appended, Outbox, OutboxEntry, Queued};
pub use twins::{StoredTwin, TwinStore};

/// The schema's version, in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

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
        /// Why.
        source: rusqlite::Error,
    },
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
    conn: Arc<Mutex<Connection>>,
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
        // Wait for a lock (another process reading, a checkpoint) before the first statement
        // that may need one.
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            held: Arc::default(),
            queued: Arc::default(),
            _lock: Some(Arc::new(lock)),
            encryption: Arc::default(),
        })
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
            held: Arc::default(),
            queued: Arc::default(),
            _lock: None,
            encryption: Arc::default(),
        })
    }

    /// Encrypts MetaManager's objects at rest as `encryption` says (kube-apiserver's
    /// `EncryptionConfiguration`; Secrets the cloud sent, at least), and brings every stored
    /// object under it now: rows under an older key, or plain, are rewritten under the first
    /// provider's; rows no configured key reads are dropped, so the cloud's resync sends them
    /// again. That rewrite at start is the edge's half of key rotation.
    pub fn with_encryption(mut self, encryption: EncryptionConfig) -> Result<Self, StoreError> {
        self.encryption = Arc::new(encryption);
        let (rewritten, dropped) = self.meta().reencrypt()?;
        if rewritten > 0 || dropped > 0 {
            tracing::info!(
                rewritten,
                dropped,
                "brought the stored objects under the current encryption configuration"
            );
        }
        Ok(self)
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

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Taken before [`Database::conn`] where both are, never after.
    fn held(&self) -> MutexGuard<'_, held::Held> {
        self.held
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every outbox write fail as on a full disk (SQLITE_FULL), or work again.
    #[cfg(test)]
    pub(crate) fn set_full(&self, full: bool) {
        self.held
            .full
            .store(full, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fails as a full disk does while [`Database::set_full`] says so.
    #[cfg(test)]
    fn writable(&self) -> Result<(), StoreError> {
        if self.held.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Sql {
                doing: "writing (a full disk, in a test)".into(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    None,
                ),
            });
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline]
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The reports a database could not take, and the wake-up of their retry.
#[derive(Debug, Default)]
struct HeldReports {
    reports: Mutex<held::Held>,
    changed: tokio::sync::Notify,
    #[cfg(test)]
    full: std::sync::atomic::AtomicBool,
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
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

fn sql(doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let doing = doing.into();
    move |source| StoreError::Sql { doing, source }
}
