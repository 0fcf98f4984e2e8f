//! Reports the database could not take (a full disk: SQLITE_FULL), kept in memory until a write
//! succeeds again.
//!
//! Without this a full disk silenced the edge: its lease and status could not be queued, and
//! the node went NotReady a minute later although it ran fine. What waits here is coalesced as
//! the outbox coalesces: one report per key, a newer one replacing the older (a lease and a node
//! status are latest-wins anyway, a pod's newest status is all the cloud needs), so memory is
//! bounded by the objects the edge reports on; uploads, which nothing replaces, wait at most
//! their cap, the oldest dropped. Acknowledgements the database could not write wait here too,
//! and the rows they name are not sent again meanwhile. EdgeHub sends what waits here over the
//! live connection, and [`crate::reports::retry_held`] writes it into the outbox once the disk
//! takes it. One line is logged when the database stops taking reports, one when it takes them
//! again: not one per report.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use wedge_core::protocol::{ObjectKey, Operation, ResourceKind};

use super::StoreError;

/// A report waiting for the database.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Waiting {
    /// One that replaces any of its key ([`super::Outbox::put`]).
    Put {
        key: ObjectKey,
        operation: Operation,
        payload: serde_json::Value,
    },
    /// One under a key of its own ([`super::Outbox::append`]).
    Append {
        kind: ResourceKind,
        payload: serde_json::Value,
        cap: usize,
    },
}

/// A report that waits in memory, as EdgeHub sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldReport {
    /// Changes with every newer report of the key: an answer about an older one is ignored.
    pub generation: u64,
    /// What it is about.
    pub key: ObjectKey,
    /// Update or delete.
    pub operation: Operation,
    /// The report.
    pub payload: serde_json::Value,
}

/// An acknowledged row: its key and sequence number.
pub(super) type Ack = (ObjectKey, u64);

/// What waits, in the order it came (generation order).
#[derive(Debug, Default)]
pub(super) struct Held {
    reports: BTreeMap<u64, Waiting>,
    by_key: HashMap<ObjectKey, u64>,
    /// The generations of the uploads, oldest first.
    appended: VecDeque<u64>,
    /// Acknowledged rows (key, seq) the database could not delete yet.
    pub(super) acks: HashSet<(ObjectKey, u64)>,
    /// What the writer's open transaction writes of what waits here (reports by generation,
    /// acknowledgements): still waiting until it commits, not written twice by it.
    writing: BTreeSet<u64>,
    writing_acks: HashSet<(ObjectKey, u64)>,
    next: u64,
    /// Since when the database refuses writes, if it does.
    since: Option<Instant>,
    /// Reports that could not be stored in this stretch, and uploads dropped past their cap.
    waited: usize,
    dropped: usize,
}

impl Held {
    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.acks.is_empty()
    }

    /// How many reports wait.
    pub(super) fn len(&self) -> usize {
        self.reports.len()
    }

    /// Notes that the database refused a write; the first refusal of a stretch is logged.
    pub(super) fn refused(&mut self, error: &StoreError) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(%error, "the edge database takes no more reports (is the disk full?); they wait in memory, are sent from there and are stored once it takes them again");
        }
    }

    fn generation(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Keeps a report that replaces any of its key.
    pub(super) fn put(&mut self, key: ObjectKey, operation: Operation, payload: serde_json::Value) {
        self.waited += 1;
        let generation = self.generation();
        if let Some(older) = self.by_key.insert(key.clone(), generation) {
            self.reports.remove(&older);
        }
        self.reports.insert(
            generation,
            Waiting::Put {
                key,
                operation,
                payload,
            },
        );
    }

    /// Keeps an upload; past `cap` waiting, the oldest goes.
    pub(super) fn append(&mut self, kind: ResourceKind, payload: serde_json::Value, cap: usize) {
        self.waited += 1;
        while self.appended.len() >= cap.max(1) {
            let Some(oldest) = self.appended.pop_front() else {
                break;
            };
            self.reports.remove(&oldest);
            self.dropped += 1;
        }
        let generation = self.generation();
        self.appended.push_back(generation);
        self.reports
            .insert(generation, Waiting::Append { kind, payload, cap });
    }

    /// What waits and the open transaction does not write yet: acknowledgements, then reports
    /// oldest first.
    pub(super) fn unwritten(&self) -> (Vec<Ack>, Vec<(u64, Waiting)>) {
        let acks = self
            .acks
            .iter()
            .filter(|a| !self.writing_acks.contains(*a))
            .cloned()
            .collect();
        let reports = self
            .reports
            .iter()
            .filter(|(g, _)| !self.writing.contains(*g))
            .map(|(g, w)| (*g, w.clone()))
            .collect();
        (acks, reports)
    }

    /// Notes that the open transaction writes these.
    pub(super) fn writing(&mut self, acks: Vec<Ack>, generations: Vec<u64>) {
        self.writing_acks.extend(acks);
        self.writing.extend(generations);
    }

    /// The open transaction ended: what it wrote leaves when it committed, else waits on.
    /// Returns how many reports left.
    pub(super) fn written(&mut self, committed: bool) -> usize {
        let acks = std::mem::take(&mut self.writing_acks);
        let generations = std::mem::take(&mut self.writing);
        if !committed {
            return 0;
        }
        for ack in acks {
            self.acks.remove(&ack);
        }
        let mut left = 0;
        for generation in generations {
            // Forgotten meanwhile (refused by the cloud), or already gone: nothing to do.
            if self.reports.contains_key(&generation) {
                self.remove(generation);
                left += 1;
            }
        }
        left
    }

    /// Forgets the report of `generation` (stored, or refused by the cloud).
    pub(super) fn remove(&mut self, generation: u64) {
        match self.reports.remove(&generation) {
            Some(Waiting::Put { key, .. }) => {
                self.by_key.remove(&key);
            }
            Some(Waiting::Append { .. }) => self.appended.retain(|g| *g != generation),
            None => {}
        }
    }

    /// The report waiting for `key`, if one does.
    pub(super) fn get(&self, key: &ObjectKey) -> Option<HeldReport> {
        let generation = *self.by_key.get(key)?;
        self.report(generation)
    }

    fn report(&self, generation: u64) -> Option<HeldReport> {
        match self.reports.get(&generation)? {
            Waiting::Put {
                key,
                operation,
                payload,
            } => Some(HeldReport {
                generation,
                key: key.clone(),
                operation: *operation,
                payload: payload.clone(),
            }),
            Waiting::Append { .. } => None,
        }
    }

    /// The reports with a key of their own (not uploads), oldest first.
    pub(super) fn reports(&self) -> Vec<HeldReport> {
        self.reports
            .keys()
            .filter_map(|generation| self.report(*generation))
            .collect()
    }

    /// Ends the stretch once nothing waits, saying how many reports waited.
    pub(super) fn settle(&mut self) {
        if !self.is_empty() {
            return;
        }
        if let Some(since) = self.since.take() {
            tracing::info!(
                waited = self.waited,
                dropped_uploads = self.dropped,
                after = ?since.elapsed(),
                "the edge database takes reports again; those that waited in memory are stored"
            );
            self.waited = 0;
            self.dropped = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(kind: ResourceKind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: String::new(),
            name: name.into(),
        }
    }

    #[test]
    fn a_newer_report_of_a_key_replaces_the_older_and_moves_to_the_back() {
        let mut held = Held::default();
        let lease = key(ResourceKind::Lease, "n");
        let status = key(ResourceKind::NodeStatus, "n");
        held.put(lease.clone(), Operation::Update, json!(1));
        held.put(status.clone(), Operation::Update, json!("s"));
        held.put(lease.clone(), Operation::Update, json!(2));
        let reports = held.reports();
        let order: Vec<(&ObjectKey, &serde_json::Value)> =
            reports.iter().map(|r| (&r.key, &r.payload)).collect();
        assert_eq!(order, [(&status, &json!("s")), (&lease, &json!(2))]);
        assert_eq!(held.get(&lease).map(|r| r.payload), Some(json!(2)));
        held.remove(reports[1].generation);
        assert_eq!(held.get(&lease), None);
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn uploads_wait_up_to_their_cap_the_oldest_dropped_and_are_not_sent_from_memory() {
        let mut held = Held::default();
        for i in 0..5 {
            held.append(ResourceKind::Upload, json!(i), 3);
        }
        assert_eq!(held.len(), 3);
        assert_eq!(held.dropped, 2);
        assert!(held.reports().is_empty(), "uploads have no key yet");
        let (_, unwritten) = held.unwritten();
        let (generation, first) = unwritten.first().cloned().expect("one waits");
        assert_eq!(
            first,
            Waiting::Append {
                kind: ResourceKind::Upload,
                payload: json!(2),
                cap: 3
            }
        );
        held.remove(generation);
        assert_eq!(held.appended.len(), 2);
    }

    #[test]
    fn what_the_open_transaction_writes_waits_until_it_commits_and_is_not_written_twice() {
        let mut held = Held::default();
        let lease = key(ResourceKind::Lease, "n");
        held.put(lease.clone(), Operation::Update, json!(1));
        held.acks.insert((lease.clone(), 7));
        let (acks, reports) = held.unwritten();
        let generations = reports.iter().map(|(g, _)| *g).collect();
        held.writing(acks, generations);
        assert_eq!(
            held.unwritten(),
            (vec![], vec![]),
            "claimed by the transaction"
        );
        assert!(!held.is_empty(), "still waiting until it commits");
        assert_eq!(
            held.written(false),
            0,
            "a failed commit leaves them waiting"
        );
        assert_eq!(held.unwritten().1.len(), 1);
        let (acks, reports) = held.unwritten();
        held.writing(acks, reports.iter().map(|(g, _)| *g).collect());
        // A newer report of the key comes while the older is being written: it stays.
        held.put(lease.clone(), Operation::Update, json!(2));
        assert_eq!(held.written(true), 0, "the older was replaced meanwhile");
        assert!(held.acks.is_empty());
        assert_eq!(held.get(&lease).map(|r| r.payload), Some(json!(2)));
    }
}
