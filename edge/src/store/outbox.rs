//! The outbox: reports for the cloud that survive restarts and disconnections.
//!
//! One entry per key: a newer report replaces the older one (the cloud needs a pod's newest
//! status, not its history) and takes a new sequence number, so entries leave in the order of
//! their latest change. An acknowledgement removes an entry only if it still has the sequence
//! that was sent: a report replaced while its predecessor was in flight is not lost.

use rusqlite::{OptionalExtension, params};
use wedge_core::protocol::{ObjectKey, Operation, ResourceKind};

use super::{Database, StoreError, sql};

/// A report waiting for the cloud's acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Its place in the order of sending.
    pub seq: u64,
    /// What it is about.
    pub key: ObjectKey,
    /// Update or delete.
    pub operation: Operation,
    /// The report.
    pub payload: serde_json::Value,
}

/// The outbox.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub(super) db: Database,
}

fn decode<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
    key: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// What [`Outbox::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The new entry's sequence number.
    pub seq: u64,
    /// Whether the oldest entry of its kind was dropped to make room.
    pub dropped: bool,
}

/// The next value of a counter that never goes back, even when the table empties, so numbers
/// are never reused across restarts.
fn next(tx: &rusqlite::Transaction<'_>, counter: &str) -> Result<i64, StoreError> {
    tx.query_row(
        "INSERT INTO counters (name, value) VALUES (?1, 1)
         ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
        [counter],
        |r| r.get(0),
    )
    .map_err(sql("numbering a report"))
}

fn insert(
    tx: &rusqlite::Transaction<'_>,
    key: &ObjectKey,
    operation: Operation,
    payload: &serde_json::Value,
) -> Result<u64, StoreError> {
    let seq = next(tx, "outbox")?;
    tx.execute(
        "INSERT OR REPLACE INTO outbox (kind, namespace, name, seq, operation, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            key.kind.as_str(),
            key.namespace,
            key.name,
            seq,
            serde_json::to_string(&operation).unwrap_or_default(),
            payload.to_string()
        ],
    )
    .map_err(sql(format!("queueing a report on {key}")))?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

impl Outbox {
    /// Queues a report, replacing any queued for the same key. Returns its sequence number.
    pub fn put(
        &self,
        key: &ObjectKey,
        operation: Operation,
        payload: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction()
            .map_err(sql("starting an outbox write"))?;
        let seq = insert(&tx, key, operation, payload)?;
        tx.commit().map_err(sql("committing a report"))?;
        Ok(seq)
    }

    /// Queues a report of `kind` under a key of its own, which nothing replaces (uploads: every
    /// message counts, not only the newest). At most `cap` of `kind` wait: past that the oldest
    /// is dropped, so an edge cut off from the cloud for days keeps its latest messages and a
    /// bounded file.
    pub fn append(
        &self,
        kind: ResourceKind,
        payload: &serde_json::Value,
        cap: usize,
    ) -> Result<Appended, StoreError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction()
            .map_err(sql("starting an outbox write"))?;
        let number = next(&tx, kind.as_str())?;
        let waiting: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE kind = ?1",
                [kind.as_str()],
                |r| r.get(0),
            )
            .map_err(sql("counting queued reports"))?;
        let dropped = usize::try_from(waiting).unwrap_or(usize::MAX) >= cap.max(1);
        if dropped {
            // Names are zero-padded numbers, so the primary key's order is their age.
            tx.execute(
                "DELETE FROM outbox WHERE kind = ?1 AND name =
                   (SELECT name FROM outbox WHERE kind = ?1 ORDER BY name LIMIT 1)",
                [kind.as_str()],
            )
            .map_err(sql("dropping the oldest queued report"))?;
        }
        let key = ObjectKey {
            kind,
            namespace: String::new(),
            name: format!("{number:020}"),
        };
        let seq = insert(&tx, &key, Operation::Update, payload)?;
        tx.commit().map_err(sql("committing a report"))?;
        Ok(Appended { seq, dropped })
    }

    /// Up to `limit` entries with a sequence above `after`, oldest first.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT seq, kind, namespace, name, operation, payload FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sql("reading the outbox"))?;
        let rows: Vec<(i64, String, String, String, String, String)> = statement
            .query_map(
                params![
                    i64::try_from(after).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .and_then(Iterator::collect)
            .map_err(sql("reading the outbox"))?;
        rows.into_iter()
            .map(|(seq, kind, namespace, name, operation, payload)| {
                let display = format!("{kind} {namespace}/{name}");
                Ok(OutboxEntry {
                    seq: u64::try_from(seq).unwrap_or(0),
                    key: ObjectKey {
                        kind: decode(&format!("\"{kind}\""), "report kind", &display)?,
                        namespace,
                        name,
                    },
                    operation: decode(&operation, "report operation", &display)?,
                    payload: decode(&payload, "report", &display)?,
                })
            })
            .collect()
    }

    /// The payload queued for `key`, if a report waits for it.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<String> = self
            .db
            .conn()
            .query_row(
                "SELECT payload FROM outbox WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![key.kind.as_str(), key.namespace, key.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(format!("reading the report on {key}")))?;
        text.map(|t| decode(&t, "report", &key.to_string()))
            .transpose()
    }

    /// Removes the entry of `key` if it still has `seq`. Returns whether it did.
    pub fn acknowledge(&self, key: &ObjectKey, seq: u64) -> Result<bool, StoreError> {
        let removed = self
            .db
            .conn()
            .execute(
                "DELETE FROM outbox WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND seq = ?4",
                params![
                    key.kind.as_str(),
                    key.namespace,
                    key.name,
                    i64::try_from(seq).unwrap_or(-1)
                ],
            )
            .map_err(sql(format!("removing the report on {key}")))?;
        Ok(removed > 0)
    }

    /// How many reports wait.
    pub fn len(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .db
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .optional()
            .map_err(sql("counting the outbox"))?
            .unwrap_or(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Whether no report waits.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::PodStatus,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn reports_coalesce_to_the_newest_in_the_order_of_their_latest_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .outbox();
        outbox
            .put(&key("a"), Operation::Update, &json!({"phase": "Pending"}))
            .expect("put");
        outbox
            .put(&key("b"), Operation::Update, &json!({"phase": "Pending"}))
            .expect("put");
        outbox
            .put(&key("a"), Operation::Update, &json!({"phase": "Running"}))
            .expect("put");
        let pending = outbox.pending(0, 10).expect("pending");
        let order: Vec<(&str, &serde_json::Value)> = pending
            .iter()
            .map(|e| (e.key.name.as_str(), &e.payload))
            .collect();
        assert_eq!(
            order,
            [
                ("b", &json!({"phase": "Pending"})),
                ("a", &json!({"phase": "Running"}))
            ]
        );
        assert_eq!(
            outbox.pending(pending[0].seq, 10).expect("pending").len(),
            1,
            "after a cursor"
        );
        assert_eq!(outbox.pending(0, 1).expect("pending").len(), 1, "limited");
    }

    #[test]
    fn an_ack_of_a_replaced_report_keeps_the_newer_one_and_numbers_survive_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.db");
        let last = {
            let outbox = Database::open(&path).expect("open").outbox();
            let sent = outbox
                .put(&key("a"), Operation::Update, &json!(1))
                .expect("put");
            let newer = outbox
                .put(&key("a"), Operation::Update, &json!(2))
                .expect("put");
            assert!(!outbox.acknowledge(&key("a"), sent).expect("ack"));
            assert_eq!(outbox.len().expect("len"), 1);
            assert!(outbox.acknowledge(&key("a"), newer).expect("ack"));
            assert!(outbox.is_empty().expect("empty"));
            newer
        };
        let outbox = Database::open(&path).expect("reopen").outbox();
        let next = outbox
            .put(&key("z"), Operation::Delete, &json!({"uid": "u"}))
            .expect("put");
        assert!(next > last, "{next} after {last}");
        let entry = &outbox.pending(0, 10).expect("pending")[0];
        assert_eq!(entry.operation, Operation::Delete);
    }

    #[test]
    fn appended_reports_are_never_replaced_and_the_oldest_go_past_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .outbox();
        outbox
            .put(&key("a"), Operation::Update, &json!("status"))
            .expect("put");
        for i in 0..5 {
            let appended = outbox
                .append(ResourceKind::Upload, &json!(i), 3)
                .expect("append");
            assert_eq!(appended.dropped, i >= 3, "message {i}");
        }
        let payloads: Vec<serde_json::Value> = outbox
            .pending(0, 10)
            .expect("pending")
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(payloads, [json!("status"), json!(2), json!(3), json!(4)]);
    }
}
