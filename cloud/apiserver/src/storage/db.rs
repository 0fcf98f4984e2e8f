//! The SQLite side of the store: schema, loading at start, and the commit of one write.
//!
//! WAL mode with `synchronous = NORMAL`: a committed transaction survives the process being
//! killed (the WAL is written before commit returns); only a power cut can lose the last ones.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

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
";

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

/// The newest `limit` events, oldest first.
pub(super) fn load_history(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<HistoryRow>> {
    let mut stmt = conn.prepare(
        "SELECT rv, type, resource, namespace, name, data FROM events ORDER BY rv DESC LIMIT ?1",
    )?;
    let mut rows: Vec<_> = stmt
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
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
    rows.reverse();
    Ok(rows)
}

/// Commits one write: the object (or its removal), its event, the new version, and the trim of
/// the history to the events from `keep_from` on.
pub(super) fn commit(
    conn: &mut Connection,
    key: &ObjectKey,
    rv: u64,
    kind: EventType,
    json: &[u8],
    keep_from: u64,
) -> rusqlite::Result<()> {
    let rv = i64::try_from(rv).unwrap_or(i64::MAX);
    let tx = conn.transaction()?;
    match kind {
        EventType::Deleted => {
            tx.execute(
                "DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
                params![key.resource, key.namespace, key.name],
            )?;
        }
        EventType::Added | EventType::Modified => {
            tx.execute(
                "INSERT INTO objects (resource, namespace, name, rv, data) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (resource, namespace, name) DO UPDATE SET rv = excluded.rv, data = excluded.data",
                params![key.resource, key.namespace, key.name, rv, json],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO events (rv, type, resource, namespace, name, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![rv, kind.as_str(), key.resource, key.namespace, key.name, json],
    )?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('rv', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![rv],
    )?;
    tx.execute(
        "DELETE FROM events WHERE rv < ?1",
        params![i64::try_from(keep_from).unwrap_or(i64::MAX)],
    )?;
    tx.commit()
}
