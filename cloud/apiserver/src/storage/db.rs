//! The SQLite side of the store: schema, loading at start, and the commit of a group of writes.
//!
//! WAL mode with `synchronous = NORMAL`: a committed transaction survives the process being
//! killed (the WAL is written before commit returns); only a power cut can lose the last ones.
//!
//! `meta` holds the current version (`rv`), the version after which the history was complete
//! when per-resource windows were introduced (`floor`), and where each resource's window
//! starts (`since/<resource>`, see `history`).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{EventType, ObjectKey};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    resource  TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    rv        INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (resource, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rv        INTEGER PRIMARY KEY,
    type      TEXT    NOT NULL,
    resource  TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    data      BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_resource ON events (resource, rv);
";

const SINCE: &str = "since/";

pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

type Row = (ObjectKey, u64, Vec<u8>);

/// The current version and every object.
pub(super) fn load(conn: &Connection) -> rusqlite::Result<(u64, Vec<Row>)> {
    let rv: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'rv'", [], |r| r.get(0))
        .optional()?;
    let mut stmt = conn.prepare("SELECT resource, namespace, name, rv, data FROM objects")?;
    let rows = stmt
        .query_map([], |r| {
            let key = ObjectKey {
                resource: r.get(0)?,
                namespace: r.get(1)?,
                name: r.get(2)?,
            };
            Ok((key, r.get::<_, i64>(3)?.unsigned_abs(), r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((rv.map_or(0, i64::unsigned_abs), rows))
}

/// One stored event: its version, type name, object key and object JSON.
pub(super) type HistoryRow = (u64, String, ObjectKey, Vec<u8>);

/// Every stored event, oldest first.
pub(super) fn load_history(conn: &Connection) -> rusqlite::Result<Vec<HistoryRow>> {
    let mut stmt =
        conn.prepare("SELECT rv, type, resource, namespace, name, data FROM events ORDER BY rv")?;
    let rows: Vec<_> = stmt
        .query_map([], |r| {
            let key = ObjectKey {
                resource: r.get(2)?,
                namespace: r.get(3)?,
                name: r.get(4)?,
            };
            Ok((
                r.get::<_, i64>(0)?.unsigned_abs(),
                r.get(1)?,
                key,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Each resource's `since`.
pub(super) type Sinces = Vec<(String, u64)>;

/// Where the history starts: the `floor` (none before the first open with per-resource
/// windows) and each resource's `since`.
pub(super) fn load_windows(conn: &Connection) -> rusqlite::Result<(Option<u64>, Sinces)> {
    let floor: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'floor'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let mut stmt = conn.prepare("SELECT key, value FROM meta WHERE key LIKE 'since/%'")?;
    let sinces = stmt
        .query_map([], |r| {
            let key: String = r.get(0)?;
            let resource = key.strip_prefix(SINCE).unwrap_or(&key).to_owned();
            Ok((resource, r.get::<_, i64>(1)?.unsigned_abs()))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((floor.map(i64::unsigned_abs), sinces))
}

/// Records the `floor` (when given) and drops each listed resource's events up to its new
/// `since`, recording it: what open does when the limits shrank or an event cannot be read.
pub(super) fn trim(
    conn: &mut Connection,
    floor: Option<u64>,
    trims: &[(String, u64)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    if let Some(floor) = floor {
        set_meta(&tx, "floor", floor)?;
    }
    for (resource, since) in trims {
        trim_resource(&tx, resource, *since)?;
    }
    tx.commit()
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, i64::try_from(value).unwrap_or(i64::MAX)])?;
    Ok(())
}

fn trim_resource(tx: &Transaction<'_>, resource: &str, since: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM events WHERE resource = ?1 AND rv <= ?2")?
        .execute(params![resource, i64::try_from(since).unwrap_or(i64::MAX)])?;
    set_meta(tx, &format!("{SINCE}{resource}"), since)
}

/// One write of a group: the object (or its removal) and its event.
pub(super) struct Write<'a> {
    /// Where.
    pub key: &'a ObjectKey,
    /// Its version.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The bytes to store (encrypted, where a rule says so).
    pub data: &'a [u8],
}

/// Commits a group of writes in one transaction: each object (or its removal) and its event,
/// the new version, and the trim of each resource's history to what `trims` keeps (resource,
/// the version its window now starts after).
pub(super) fn commit<'a>(
    conn: &mut Connection,
    writes: &[Write<'_>],
    rv: u64,
    trims: impl IntoIterator<Item = (&'a str, u64)>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for w in writes {
        let rv = i64::try_from(w.rv).unwrap_or(i64::MAX);
        let key = w.key;
        match w.kind {
            EventType::Deleted => {
                tx.prepare_cached(
                    "DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
                )?
                .execute(params![key.resource, key.namespace, key.name])?;
            }
            EventType::Added | EventType::Modified => {
                tx.prepare_cached(
                    "INSERT INTO objects (resource, namespace, name, rv, data) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (resource, namespace, name) DO UPDATE SET rv = excluded.rv, data = excluded.data",
                )?
                .execute(params![key.resource, key.namespace, key.name, rv, w.data])?;
            }
        }
        tx.prepare_cached(
            "INSERT INTO events (rv, type, resource, namespace, name, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![rv, w.kind.as_str(), key.resource, key.namespace, key.name, w.data])?;
    }
    set_meta(&tx, "rv", rv)?;
    for (resource, since) in trims {
        trim_resource(&tx, resource, since)?;
    }
    tx.commit()
}
