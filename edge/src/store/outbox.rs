//! The outbox: reports for the cloud that survive restarts and disconnections.
//!
//! One entry per key: a newer report replaces the older one (the cloud needs a pod's newest
//! status, not its history) and takes a new sequence number, so entries leave in the order of
//! their latest change. An acknowledgement removes an entry only if it still has the sequence
//! that was sent: a report replaced while its predecessor was in flight is not lost.
//!
//! [`Outbox::queue`] and [`Outbox::queue_appended`] are how the edge reports: what the
//! database cannot take (a full disk) waits in memory ([`super::held`]) and is written by the
//! next write that succeeds or by [`Outbox::retry`]; an acknowledgement it cannot write waits
//! there too. What waits in memory is changed only on the writer thread (in the writes' work
//! and settle hooks), so it follows the order the writes were queued in, and a report leaves
//! memory only once the transaction that stored it committed.

use rusqlite::{OptionalExtension, params};
use wedge_core::protocol::{ObjectKey, Operation, ResourceKind};

use rusqlite::Connection;

use super::held::{HeldReport, Waiting};
use super::{Database, HeldReports, StoreError, sql};

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

/// Where [`Outbox::queue`] put a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In the database.
    Stored,
    /// In memory: the database refused it, or others wait before it.
    Held,
}

/// The next value of a counter that never goes back, even when the table empties, so numbers
/// are never reused across restarts.
fn next(tx: &Connection, counter: &str) -> Result<i64, StoreError> {
    tx.query_row(
        "INSERT INTO counters (name, value) VALUES (?1, 1)
         ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
        [counter],
        |r| r.get(0),
    )
    .map_err(sql("numbering a report"))
}

fn insert(
    tx: &Connection,
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

/// Queues a report in the writer's transaction, replacing any queued for the same key.
fn put_in(
    tx: &Connection,
    key: &ObjectKey,
    operation: Operation,
    payload: &serde_json::Value,
) -> Result<u64, StoreError> {
    insert(tx, key, operation, payload)
}

/// Appends a report in the writer's transaction ([`Outbox::append`]).
fn append_in(
    tx: &Connection,
    kind: ResourceKind,
    payload: &serde_json::Value,
    cap: usize,
) -> Result<Appended, StoreError> {
    let number = next(tx, kind.as_str())?;
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
    let seq = insert(tx, &key, Operation::Update, payload)?;
    Ok(Appended { seq, dropped })
}

/// Removes the entry of `key` in the writer's transaction if it still has `seq`.
fn delete_in(tx: &Connection, key: &ObjectKey, seq: u64) -> Result<bool, StoreError> {
    if remembered(key.kind) {
        tx.execute(
            "INSERT OR REPLACE INTO acknowledged (kind, namespace, name, payload)
             SELECT kind, namespace, name, payload FROM outbox
             WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND seq = ?4",
            params![
                key.kind.as_str(),
                key.namespace,
                key.name,
                i64::try_from(seq).unwrap_or(-1)
            ],
        )
        .map_err(sql(format!("remembering the report on {key}")))?;
    }
    let removed = tx
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

/// The two tables that hold reports by key.
enum Table {
    /// Reports waiting for the cloud.
    Outbox,
    /// The last report of each key the cloud acknowledged, for the kinds [`remembered`].
    Acknowledged,
}

/// Whether the last acknowledged report of `kind` is kept after its entry goes
/// ([`Outbox::acknowledged`]): pod statuses, which Edged reads at a restart.
fn remembered(kind: ResourceKind) -> bool {
    kind == ResourceKind::PodStatus
}

/// What waits in memory that a write wrote in the writer's transaction.
struct Claims {
    acks: Vec<super::held::Ack>,
    generations: Vec<u64>,
}

impl Claims {
    /// Notes them as written by the open transaction: called once every statement of the
    /// write succeeded (a write that fails is rolled back whole, these included).
    fn register(self, held: &HeldReports) -> usize {
        let written = self.generations.len();
        held.lock().writing(self.acks, self.generations);
        written
    }
}

/// Writes in the writer's transaction what waits in memory and this transaction does not
/// write yet, oldest first.
fn write_held_in(tx: &Connection, held: &HeldReports) -> Result<Claims, StoreError> {
    let (acks, reports) = held.lock().unwritten();
    for (key, seq) in &acks {
        delete_in(tx, key, *seq)?;
    }
    for (_, waiting) in &reports {
        match waiting {
            Waiting::Put {
                key,
                operation,
                payload,
            } => put_in(tx, key, *operation, payload).map(drop)?,
            Waiting::Append { kind, payload, cap } => {
                append_in(tx, *kind, payload, *cap).map(drop)?;
            }
        }
    }
    Ok(Claims {
        acks,
        generations: reports.into_iter().map(|(g, _)| g).collect(),
    })
}

/// What a report does once its transaction ended: what waited in memory and was written
/// leaves it; a report the database refused waits there (`hold`).
fn settle_held(
    held: &HeldReports,
    committed: bool,
    refused: Option<&StoreError>,
    hold: impl FnOnce(&mut super::held::Held),
) {
    let mut waiting = held.lock();
    waiting.written(committed);
    match refused {
        None => waiting.settle(),
        Some(error) => {
            waiting.refused(error);
            hold(&mut waiting);
            held.changed.notify_one();
        }
    }
}

impl Outbox {
    /// Queues a report, replacing any queued for the same key. Returns its sequence number
    /// once it is stored.
    pub async fn put(
        &self,
        key: &ObjectKey,
        operation: Operation,
        payload: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let (key, payload) = (key.clone(), payload.clone());
        self.db
            .write(move |tx| put_in(tx, &key, operation, &payload), |_, _| {})
            .await
    }

    /// Queues a report of `kind` under a key of its own, which nothing replaces (uploads: every
    /// message counts, not only the newest). At most `cap` of `kind` wait: past that the oldest
    /// is dropped, so an edge cut off from the cloud for days keeps its latest messages and a
    /// bounded file.
    pub async fn append(
        &self,
        kind: ResourceKind,
        payload: &serde_json::Value,
        cap: usize,
    ) -> Result<Appended, StoreError> {
        let payload = payload.clone();
        self.db
            .write(move |tx| append_in(tx, kind, &payload, cap), |_, _| {})
            .await
    }

    /// Up to `limit` entries with a sequence above `after`, oldest first.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        // Before the connection: the lock order is held, then connection.
        let acked = self.db.held().acks.clone();
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
            .filter(|entry| {
                entry
                    .as_ref()
                    .map_or(true, |e| !acked.contains(&(e.key.clone(), e.seq)))
            })
            .collect()
    }

    /// The payload queued for `key`, if a report waits for it.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<serde_json::Value>, StoreError> {
        if let Some(held) = self.db.held().get(key) {
            return Ok(Some(held.payload));
        }
        self.payload_in(Table::Outbox, key)
    }

    /// The last report on `key` the cloud acknowledged, for the kinds kept after their entry
    /// goes (pod statuses).
    pub fn acknowledged(&self, key: &ObjectKey) -> Result<Option<serde_json::Value>, StoreError> {
        self.payload_in(Table::Acknowledged, key)
    }

    /// The payload `table` holds for `key`, read on the read connection.
    fn payload_in(
        &self,
        table: Table,
        key: &ObjectKey,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let (query, doing) = match table {
            Table::Outbox => (
                "SELECT payload FROM outbox WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                "reading the report",
            ),
            Table::Acknowledged => (
                "SELECT payload FROM acknowledged WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                "reading the acknowledged report",
            ),
        };
        let text: Option<String> = self
            .db
            .conn()
            .query_row(
                query,
                params![key.kind.as_str(), key.namespace, key.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(format!("{doing} on {key}")))?;
        text.map(|t| decode(&t, "report", &key.to_string()))
            .transpose()
    }

    /// Forgets the acknowledged reports of `keys` (their pods left the edge): each only if it
    /// is about that uid, when one is given (a pod of the same name may have come since).
    pub async fn forget_acknowledged(
        &self,
        keys: Vec<(ObjectKey, Option<String>)>,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.db
            .write(
                move |tx| {
                    for (key, uid) in &keys {
                        tx.execute(
                            "DELETE FROM acknowledged WHERE kind = ?1 AND namespace = ?2 AND name = ?3
                             AND (?4 IS NULL OR json_extract(payload, '$.uid') = ?4)",
                            params![key.kind.as_str(), key.namespace, key.name, uid],
                        )
                        .map_err(sql(format!("forgetting the report on {key}")))?;
                    }
                    Ok(())
                },
                |_, _| {},
            )
            .await
    }

    /// The (namespace, name) of every acknowledged report of `kind` kept.
    pub fn acknowledged_names(
        &self,
        kind: ResourceKind,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare("SELECT namespace, name FROM acknowledged WHERE kind = ?1")
            .map_err(sql("listing acknowledged reports"))?;
        statement
            .query_map([kind.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(sql("listing acknowledged reports"))
    }

    /// Removes the entry of `key` if it still has `seq`. Returns whether it did. When the
    /// database cannot take the deletion (a full disk), the entry is held back from
    /// [`Outbox::pending`] and deleted at the next [`Outbox::retry`].
    pub async fn acknowledge(&self, key: &ObjectKey, seq: u64) -> Result<bool, StoreError> {
        let held = self.db.held.clone();
        let acked = key.clone();
        let key = key.clone();
        let removed = self
            .db
            .write(
                move |tx| delete_in(tx, &key, seq),
                move |result, _| {
                    if let Err(error) = result {
                        let mut waiting = held.lock();
                        waiting.refused(error);
                        waiting.acks.insert((acked, seq));
                        held.changed.notify_one();
                    }
                },
            )
            .await;
        match removed {
            Ok(removed) => Ok(removed),
            // Held back (above) until it can be written.
            Err(StoreError::Closed) => Err(StoreError::Closed),
            Err(_) => Ok(true),
        }
    }

    /// Queues a report as [`Outbox::put`] does, once it is stored, and wakes EdgeHub
    /// ([`Outbox::changed`]); when the database cannot take it, it waits in memory (replacing
    /// any waiting for its key) and is written with the next write that succeeds. Never fails:
    /// the first refusal of a stretch is logged, not each report.
    pub async fn queue(
        &self,
        key: &ObjectKey,
        operation: Operation,
        payload: &serde_json::Value,
    ) -> Queued {
        let (held, settled) = (self.db.held.clone(), self.db.held.clone());
        let (key, payload) = (key.clone(), payload.clone());
        let (held_key, held_payload) = (key.clone(), payload.clone());
        let stored = self
            .db
            .write(
                // Behind those waiting, so that reports reach the database in the order they
                // came.
                move |tx| {
                    let claims = write_held_in(tx, &held)?;
                    let seq = put_in(tx, &key, operation, &payload)?;
                    claims.register(&held);
                    Ok(seq)
                },
                move |result, committed| {
                    settle_held(&settled, committed, result.as_ref().err(), |waiting| {
                        waiting.put(held_key, operation, held_payload);
                    });
                },
            )
            .await;
        self.db.queued.notify_one();
        if stored.is_ok() {
            Queued::Stored
        } else {
            Queued::Held
        }
    }

    /// Appends a report as [`Outbox::append`] does, or keeps it in memory as
    /// [`Outbox::queue`] does (at most `cap` uploads wait there too). Returns where it went,
    /// and whether the oldest queued in the database was dropped for it.
    pub async fn queue_appended(
        &self,
        kind: ResourceKind,
        payload: &serde_json::Value,
        cap: usize,
    ) -> (Queued, bool) {
        let (held, settled) = (self.db.held.clone(), self.db.held.clone());
        let payload = payload.clone();
        let held_payload = payload.clone();
        let appended = self
            .db
            .write(
                move |tx| {
                    let claims = write_held_in(tx, &held)?;
                    let appended = append_in(tx, kind, &payload, cap)?;
                    claims.register(&held);
                    Ok(appended)
                },
                move |result, committed| {
                    settle_held(&settled, committed, result.as_ref().err(), |waiting| {
                        waiting.append(kind, held_payload, cap);
                    });
                },
            )
            .await;
        self.db.queued.notify_one();
        match appended {
            Ok(appended) => (Queued::Stored, appended.dropped),
            Err(_) => (Queued::Held, false),
        }
    }

    /// Writes what waits in memory into the database. Returns how many reports it wrote;
    /// `Queued::Held` when some still wait.
    pub async fn retry(&self) -> (usize, Queued) {
        if !self.is_holding() {
            return (0, Queued::Stored);
        }
        let (held, settled) = (self.db.held.clone(), self.db.held.clone());
        let written = self
            .db
            .write(
                move |tx| Ok(write_held_in(tx, &held)?.register(&held)),
                move |result, committed| {
                    let mut waiting = settled.lock();
                    waiting.written(committed);
                    match result {
                        Ok(_) => waiting.settle(),
                        Err(error) => {
                            waiting.refused(error);
                            settled.changed.notify_one();
                        }
                    }
                },
            )
            .await
            .unwrap_or(0);
        if written > 0 {
            self.db.queued.notify_one();
        }
        let queued = if self.is_holding() {
            Queued::Held
        } else {
            Queued::Stored
        };
        (written, queued)
    }

    /// Resolves when a report was queued since the last call returned (one waiter: EdgeHub's
    /// pump; a report queued while nobody waits is remembered).
    pub async fn changed(&self) {
        self.db.queued.notified().await;
    }

    /// The reports waiting in memory that have keys (not uploads), oldest first, for EdgeHub
    /// to send over a live connection.
    pub fn held(&self) -> Vec<HeldReport> {
        self.db.held().reports()
    }

    /// Forgets a report waiting in memory if it is still of `generation` (the cloud refused
    /// it for good).
    pub fn forget_held(&self, key: &ObjectKey, generation: u64) {
        let mut held = self.db.held();
        if held.get(key).is_some_and(|r| r.generation == generation) {
            // The stretch ends with the next write that succeeds, not here.
            held.remove(generation);
        }
    }

    /// Whether anything waits in memory (reports or acknowledgements).
    pub fn is_holding(&self) -> bool {
        !self.db.held().is_empty()
    }

    /// Resolves when something new waits in memory ([`crate::reports::retry_held`]).
    pub async fn held_changed(&self) {
        self.db.held.changed.notified().await;
    }

    /// How many reports wait, in the database and in memory.
    pub fn len(&self) -> Result<usize, StoreError> {
        let held = self.db.held().len();
        let n: i64 = self
            .db
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .optional()
            .map_err(sql("counting the outbox"))?
            .unwrap_or(0);
        Ok(usize::try_from(n).unwrap_or(0) + held)
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

    #[tokio::test]
    async fn reports_coalesce_to_the_newest_in_the_order_of_their_latest_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .outbox();
        outbox
            .put(&key("a"), Operation::Update, &json!({"phase": "Pending"}))
            .await
            .expect("put");
        outbox
            .put(&key("b"), Operation::Update, &json!({"phase": "Pending"}))
            .await
            .expect("put");
        outbox
            .put(&key("a"), Operation::Update, &json!({"phase": "Running"}))
            .await
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

    #[tokio::test]
    async fn the_last_acknowledged_pod_status_is_kept_also_in_a_database_from_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.db");
        // A database as schema version 2 left it.
        {
            let conn = Connection::open(&path).expect("sqlite");
            conn.execute_batch(super::super::SCHEMA)
                .and_then(|()| conn.execute_batch(super::super::SCHEMA_V2))
                .and_then(|()| conn.pragma_update(None, "user_version", 2))
                .expect("version 2");
        }
        let outbox = Database::open(&path).expect("open").outbox();
        let node = ObjectKey {
            kind: ResourceKind::NodeStatus,
            namespace: String::new(),
            name: "edge".into(),
        };
        for (k, phase) in [(key("a"), "Running"), (node.clone(), "Ready")] {
            outbox
                .put(&k, Operation::Update, &json!({"phase": phase}))
                .await
                .expect("put");
        }
        for entry in outbox.pending(0, 10).expect("pending") {
            assert!(
                outbox
                    .acknowledge(&entry.key, entry.seq)
                    .await
                    .expect("ack")
            );
        }
        assert!(outbox.is_empty().expect("empty"));
        assert_eq!(
            outbox.acknowledged(&key("a")).expect("read"),
            Some(json!({"phase": "Running"}))
        );
        assert_eq!(
            outbox.acknowledged(&node).expect("read"),
            None,
            "only pod statuses"
        );
        assert_eq!(
            outbox
                .acknowledged_names(ResourceKind::PodStatus)
                .expect("names"),
            [("default".to_owned(), "a".to_owned())]
        );
    }

    #[tokio::test]
    async fn an_ack_of_a_replaced_report_keeps_the_newer_one_and_numbers_survive_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.db");
        let last = {
            let outbox = Database::open(&path).expect("open").outbox();
            let sent = outbox
                .put(&key("a"), Operation::Update, &json!(1))
                .await
                .expect("put");
            let newer = outbox
                .put(&key("a"), Operation::Update, &json!(2))
                .await
                .expect("put");
            assert!(!outbox.acknowledge(&key("a"), sent).await.expect("ack"));
            assert_eq!(outbox.len().expect("len"), 1);
            assert!(outbox.acknowledge(&key("a"), newer).await.expect("ack"));
            assert!(outbox.is_empty().expect("empty"));
            newer
        };
        let outbox = Database::open(&path).expect("reopen").outbox();
        let next = outbox
            .put(&key("z"), Operation::Delete, &json!({"uid": "u"}))
            .await
            .expect("put");
        assert!(next > last, "{next} after {last}");
        let entry = &outbox.pending(0, 10).expect("pending")[0];
        assert_eq!(entry.operation, Operation::Delete);
    }

    #[tokio::test]
    async fn appended_reports_are_never_replaced_and_the_oldest_go_past_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .outbox();
        outbox
            .put(&key("a"), Operation::Update, &json!("status"))
            .await
            .expect("put");
        for i in 0..5 {
            let appended = outbox
                .append(ResourceKind::Upload, &json!(i), 3)
                .await
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

    fn lease(node: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::Lease,
            namespace: String::new(),
            name: node.into(),
        }
    }

    #[tokio::test]
    async fn reports_a_full_disk_refuses_wait_in_memory_coalesced_and_are_written_in_order_with_the_next_write_that_succeeds()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("edge.db")).expect("open");
        let outbox = db.outbox();
        assert_eq!(
            outbox
                .queue(&key("a"), Operation::Update, &json!("a1"))
                .await,
            Queued::Stored
        );
        db.set_full(true);
        assert_eq!(
            outbox
                .queue(&lease("n"), Operation::Update, &json!(1))
                .await,
            Queued::Held
        );
        outbox
            .queue(&key("a"), Operation::Update, &json!("a2"))
            .await;
        outbox
            .queue(&lease("n"), Operation::Update, &json!(2))
            .await;
        // What waits in memory, newest per key, in the order of the latest change; the
        // database still holds the older status of `a`, which a reader of `get` does not see.
        let held: Vec<(String, serde_json::Value)> = outbox
            .held()
            .into_iter()
            .map(|h| (h.key.name, h.payload))
            .collect();
        assert_eq!(held, [("a".into(), json!("a2")), ("n".into(), json!(2))]);
        assert_eq!(outbox.get(&key("a")).expect("get"), Some(json!("a2")));
        assert_eq!(
            outbox.len().expect("len"),
            3,
            "one in the database, two in memory"
        );
        assert_eq!(
            outbox.retry().await,
            (0, Queued::Held),
            "the disk is still full"
        );
        db.set_full(false);
        // The next report written writes those waiting first.
        assert_eq!(
            outbox
                .queue(&key("b"), Operation::Update, &json!("b1"))
                .await,
            Queued::Stored
        );
        assert!(!outbox.is_holding());
        assert!(outbox.held().is_empty());
        let order: Vec<(String, serde_json::Value)> = outbox
            .pending(0, 10)
            .expect("pending")
            .into_iter()
            .map(|e| (e.key.name, e.payload))
            .collect();
        assert_eq!(
            order,
            [
                ("a".into(), json!("a2")),
                ("n".into(), json!(2)),
                ("b".into(), json!("b1"))
            ]
        );
    }

    #[tokio::test]
    async fn an_acknowledgement_a_full_disk_refuses_hides_the_entry_until_it_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("edge.db")).expect("open");
        let outbox = db.outbox();
        let seq = outbox
            .put(&key("a"), Operation::Update, &json!(1))
            .await
            .expect("put");
        outbox
            .put(&key("b"), Operation::Update, &json!(1))
            .await
            .expect("put");
        db.set_full(true);
        assert!(outbox.acknowledge(&key("a"), seq).await.expect("ack"));
        let names: Vec<String> = outbox
            .pending(0, 10)
            .expect("pending")
            .into_iter()
            .map(|e| e.key.name)
            .collect();
        assert_eq!(names, ["b"], "not sent again after its ack");
        assert!(outbox.is_holding());
        db.set_full(false);
        assert_eq!(outbox.retry().await, (0, Queued::Stored));
        assert!(!outbox.is_holding());
        let reopened = Database::inspect(&dir.path().join("edge.db"))
            .expect("inspect")
            .outbox();
        assert_eq!(
            reopened.len().expect("len"),
            1,
            "the row is gone from the file"
        );
    }

    #[tokio::test]
    async fn uploads_a_full_disk_refuses_wait_up_to_their_cap_and_get_keys_when_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("edge.db")).expect("open");
        let outbox = db.outbox();
        db.set_full(true);
        for i in 0..4 {
            assert_eq!(
                outbox
                    .queue_appended(ResourceKind::Upload, &json!(i), 3)
                    .await,
                (Queued::Held, false)
            );
        }
        assert!(outbox.held().is_empty(), "uploads are not sent from memory");
        db.set_full(false);
        assert_eq!(outbox.retry().await, (3, Queued::Stored));
        let payloads: Vec<serde_json::Value> = outbox
            .pending(0, 10)
            .expect("pending")
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(payloads, [json!(1), json!(2), json!(3)]);
    }
}
