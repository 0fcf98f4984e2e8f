//! What the edge reports to the cloud, as outbox entries and as frames.
//!
//! The outbox keeps one entry per key: a pod's status (key kind `pod-status`), a pod's deletion
//! confirmation (kind `pod`), the node's status and its lease. Entries carry the uid next to the
//! payload so the frame can name it. Reports the database cannot take (a full disk) wait in
//! memory and [`retry_held`] writes them once it takes them again.

use serde_json::{Value, json};
use wedge_core::protocol::messages::{LeaseRenewal, NodeReport};
use wedge_core::protocol::{Envelope, ObjectKey, Operation, ResourceKind, ResourceRef};

/// One report, before it goes into the outbox.
#[derive(Debug, Clone)]
pub struct Report {
    /// The key it coalesces under.
    pub key: ObjectKey,
    /// Update or delete.
    pub operation: Operation,
    /// What the outbox stores.
    pub payload: Value,
}

/// The key a pod's status reports coalesce under.
pub fn pod_status_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: ResourceKind::PodStatus,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// A pod's status.
pub fn pod_status(
    namespace: &str,
    name: &str,
    uid: &str,
    status: &impl serde::Serialize,
) -> Report {
    Report {
        key: pod_status_key(namespace, name),
        operation: Operation::Update,
        payload: json!({ "uid": uid, "status": status }),
    }
}

/// The confirmation that a pod is gone from the edge.
pub fn pod_gone(namespace: &str, name: &str, uid: &str) -> Report {
    Report {
        key: ObjectKey {
            kind: ResourceKind::Pod,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        operation: Operation::Delete,
        payload: json!({ "uid": uid }),
    }
}

/// The node's status.
pub fn node_status(node: &str, report: &NodeReport) -> Report {
    Report {
        key: ObjectKey {
            kind: ResourceKind::NodeStatus,
            namespace: String::new(),
            name: node.to_owned(),
        },
        operation: Operation::Update,
        payload: serde_json::to_value(report).unwrap_or_default(),
    }
}

/// A lease renewal.
pub fn lease(node: &str, duration_seconds: i32) -> Report {
    Report {
        key: ObjectKey {
            kind: ResourceKind::Lease,
            namespace: String::new(),
            name: node.to_owned(),
        },
        operation: Operation::Update,
        payload: serde_json::to_value(LeaseRenewal { duration_seconds }).unwrap_or_default(),
    }
}

/// The frame for an outbox entry.
pub fn frame(id: u64, key: &ObjectKey, operation: Operation, payload: &Value) -> Envelope {
    let uid = payload
        .get("uid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let resource = ResourceRef {
        kind: key.kind,
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        name: key.name.clone(),
        uid,
    };
    let body = match key.kind {
        ResourceKind::PodStatus | ResourceKind::DeviceStatus => {
            payload.get("status").cloned().unwrap_or(Value::Null)
        }
        ResourceKind::Pod => Value::Null,
        _ => payload.clone(),
    };
    Envelope::new(id, operation)
        .with_resource(resource)
        .with_payload(body)
}

/// The first delay before writing again what the database refused; it doubles up to
/// [`RETRY_MAX`]. A refused write costs little, and the reports should be stored soon after
/// space returns.
pub const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest delay between two tries.
pub const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the reports waiting in memory into the outbox whenever some wait, with backoff from
/// [`RETRY_MIN`] to [`RETRY_MAX`], until `shutdown`; wakes EdgeHub for what it wrote. Any
/// report queued meanwhile tries too, so this only matters while nothing else is reported.
pub async fn retry_held(
    outbox: crate::store::Outbox,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = outbox.held_changed() => {}
        }
        let mut delays = crate::edgehub::backoff(RETRY_MIN, RETRY_MAX);
        while outbox.is_holding() {
            let delay = delays.next().unwrap_or(RETRY_MAX);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            // What it writes wakes EdgeHub (`Outbox::changed`).
            outbox.retry().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_name_the_uid_and_carry_only_what_the_cloud_reads() {
        let status = pod_status("default", "p", "u1", &json!({"phase": "Running"}));
        let f = frame(3, &status.key, status.operation, &status.payload);
        assert_eq!(
            f.resource.as_ref().and_then(|r| r.uid.as_deref()),
            Some("u1")
        );
        assert_eq!(f.payload, json!({"phase": "Running"}));
        assert!(Envelope::decode(&f.encode()).is_ok());

        let gone = pod_gone("default", "p", "u1");
        let f = frame(4, &gone.key, gone.operation, &gone.payload);
        assert_eq!(f.operation, Operation::Delete);
        assert!(f.payload.is_null());
        assert!(Envelope::decode(&f.encode()).is_ok());

        let l = lease("edge-1", 40);
        let f = frame(5, &l.key, l.operation, &l.payload);
        assert_eq!(f.payload, json!({"durationSeconds": 40}));
        assert!(Envelope::decode(&f.encode()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reports_held_through_a_full_disk_are_written_soon_after_it_takes_writes_again() {
        use std::time::Duration;

        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::Database::open(&dir.path().join("edge.db")).expect("open");
        let outbox = db.outbox();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(retry_held(outbox.clone(), shutdown.clone()));
        db.set_full(true);
        let renewal = lease("edge-1", 40);
        assert_eq!(
            outbox
                .queue(&renewal.key, renewal.operation, &renewal.payload)
                .await,
            crate::store::Queued::Held
        );
        // The queueing itself woke EdgeHub (it sends held reports too): taken here, so that
        // the next wake-up is the retry's.
        outbox.changed().await;
        // A minute with the disk full: tried again and again, nothing written, nothing lost.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(outbox.is_holding());
        assert_eq!(outbox.held().len(), 1);

        db.set_full(false);
        let freed = tokio::time::Instant::now();
        outbox.changed().await;
        assert!(
            freed.elapsed() <= RETRY_MAX,
            "written {:?} after the disk took writes again",
            freed.elapsed()
        );
        assert!(!outbox.is_holding());
        let pending = outbox.pending(0, 10).expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].key, renewal.key);

        shutdown.cancel();
        task.await.expect("the retry task ends with shutdown");
    }
}
