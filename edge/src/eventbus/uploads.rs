//! Uploads: messages on this edge's bus that a Rule routes to the cloud.
//!
//! The cloud sends an edge the Rules whose eventbus source is its node (KubeEdge's Rule and
//! RuleEndpoint, see `wedge_core::rule`); each stands for an MQTT filter. EventBus subscribes to
//! those filters, and a message matching one goes into the outbox as an `upload` report, under
//! a key of its own so that none replaces another. The outbox survives disconnections and
//! restarts, so what is published while the cloud is away reaches it later; past
//! [`MAX_PENDING`] waiting uploads the oldest are dropped (and counted), so a chatty publisher
//! cannot fill the gateway's disk.
//!
//! Messages no Rule asks for stay on the edge: unlike KubeEdge, which sends every
//! `$hw/events/upload/...` message up whether the cloud routes it or not, an edge here spends its
//! uplink only on what some Rule delivers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use wedge_core::protocol::ResourceKind;
use wedge_core::protocol::messages::Upload;
use wedge_core::rule::Rule;
use wedge_core::topic;

use crate::metamanager::{MetaManager, Subscription};
use crate::store::{Outbox, StoreError};

/// How many uploads may wait for the cloud before the oldest are dropped.
pub const MAX_PENDING: usize = 10_000;
/// The largest upload, encoded, that is queued: half a frame, so its frame always fits (payloads
/// up to half of this, since encoding may double them).
pub const MAX_UPLOAD_BYTES: usize = wedge_core::protocol::MAX_FRAME_BYTES / 2;

/// The rules' filters and the outbox they feed.
pub struct Uploads {
    meta: MetaManager,
    /// Which Rules changed (one reader: EventBus's dispatcher).
    rules: tokio::sync::Mutex<Subscription>,
    outbox: Outbox,
    cap: usize,
    filters: RwLock<Vec<String>>,
    dropped: AtomicU64,
}

/// How the filters moved on a reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FilterChanges {
    /// Filters no rule had before.
    pub added: Vec<String>,
    /// Filters no rule has any more.
    pub removed: Vec<String>,
}

impl Uploads {
    /// Uploads for the rules in `meta`, queued in `outbox` (at most `cap` waiting). The rules
    /// are read on [`Uploads::reload`].
    pub fn new(meta: MetaManager, outbox: Outbox, cap: usize) -> Self {
        Self {
            rules: tokio::sync::Mutex::new(meta.subscribe(&[ResourceKind::Rule])),
            meta,
            outbox,
            cap,
            filters: RwLock::default(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Reads the stored Rules again. A Rule whose topic makes no filter is skipped with a
    /// warning (the cloud reports the same error in the Rule's status).
    pub fn reload(&self) -> FilterChanges {
        let mut wanted: Vec<String> = self
            .meta
            .list(ResourceKind::Rule)
            .into_iter()
            .filter_map(|o| {
                let rule: Arc<Rule> = match o.typed() {
                    Ok(rule) => rule,
                    Err(e) => {
                        tracing::warn!(rule = %o.key, error = %e, "a stored Rule does not parse");
                        return None;
                    }
                };
                match rule.spec.eventbus_source(&o.key.namespace) {
                    Ok(source) => Some(source.filter),
                    Err(e) => {
                        tracing::warn!(rule = %o.key, error = %e, "the rule cannot be served");
                        None
                    }
                }
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut filters = self.filters.write().unwrap_or_else(PoisonError::into_inner);
        let changes = FilterChanges {
            added: wanted
                .iter()
                .filter(|f| !filters.contains(f))
                .cloned()
                .collect(),
            removed: filters
                .iter()
                .filter(|f| !wanted.contains(f))
                .cloned()
                .collect(),
        };
        *filters = wanted;
        changes
    }

    /// Resolves when EdgeHub has stored or forgotten a Rule. Cancel-safe.
    pub async fn changed(&self) {
        self.rules.lock().await.changed().await;
    }

    /// The filters the rules stand for.
    pub fn filters(&self) -> Vec<String> {
        self.filters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether some rule routes messages on `topic`.
    pub fn wants(&self, topic_name: &str) -> bool {
        self.filters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|f| topic::matches(f, topic_name))
    }

    /// Queues the message for the cloud if some rule routes it. Returns whether it was queued.
    pub async fn forward(&self, topic_name: &str, payload: &[u8]) -> Result<bool, StoreError> {
        if !self.wants(topic_name) {
            return Ok(false);
        }
        // `Upload` at most doubles a payload (see its doc), so the raw size bounds the encoded
        // one without encoding it twice.
        let bound = topic_name.len() + 2 * payload.len();
        if bound > MAX_UPLOAD_BYTES {
            // Queued, it would never fit a frame and would block every report behind it.
            tracing::warn!(
                topic = topic_name,
                size = payload.len(),
                limit = MAX_UPLOAD_BYTES / 2,
                "a message too large to send to the cloud was dropped"
            );
            return Ok(false);
        }
        let upload = serde_json::to_value(Upload::new(topic_name, payload)).unwrap_or_default();
        let (_, dropped) = self
            .outbox
            .queue_appended(ResourceKind::Upload, &upload, self.cap)
            .await;
        if dropped {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    waiting = self.cap,
                    "uploads are waiting for the cloud; the oldest were dropped"
                );
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wedge_core::protocol::ObjectKey;

    use super::*;
    use crate::store::Database;

    fn rule(name: &str, topic: &str, node: &str) -> (ObjectKey, serde_json::Value) {
        (
            ObjectKey {
                kind: ResourceKind::Rule,
                namespace: "default".into(),
                name: name.into(),
            },
            json!({
                "apiVersion": "rules.kubeedge.io/v1", "kind": "Rule",
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "1"},
                "spec": {"source": "bus", "sourceResource": {"topic": topic, "node_name": node},
                         "target": "rest", "targetResource": {"resource": "http://127.0.0.1:1/x"}}
            }),
        )
    }

    #[tokio::test]
    async fn messages_a_rule_routes_wait_in_the_outbox_and_others_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("edge.db")).expect("open");
        let meta = crate::metamanager::MetaManager::load(&db).expect("meta");
        for (key, object) in [
            rule("telemetry", "telemetry/#", "edge-a"),
            rule("alarms", "$hw/events/upload/alarms", "edge-a"),
            rule("broken", "a/#/b", "edge-a"),
        ] {
            let uid = format!("uid-{}", key.name);
            meta.apply(&key, &uid, "1", &object)
                .await
                .expect("store the rule");
        }
        let uploads = Uploads::new(meta.clone(), db.outbox(), 2);
        let changes = uploads.reload();
        assert_eq!(
            changes.added,
            ["$hw/events/upload/alarms", "default/telemetry/#"]
        );
        assert!(
            uploads
                .forward("default/telemetry/t1", b"21.5")
                .await
                .expect("q")
        );
        assert!(
            uploads
                .forward("$hw/events/upload/alarms", &[0xff])
                .await
                .expect("q")
        );
        assert!(!uploads.forward("default/other", b"x").await.expect("q"));
        assert!(
            !uploads
                .forward(
                    "default/telemetry/big",
                    &vec![b'x'; MAX_UPLOAD_BYTES / 2 + 1]
                )
                .await
                .expect("q"),
            "too large to send"
        );
        let pending = db.outbox().pending(0, 10).expect("pending");
        let queued: Vec<Upload> = pending
            .iter()
            .map(|e| serde_json::from_value(e.payload.clone()).expect("an upload"))
            .collect();
        assert_eq!(
            queued,
            [
                Upload::new("default/telemetry/t1", b"21.5"),
                Upload::new("$hw/events/upload/alarms", &[0xff])
            ]
        );
        assert!(
            uploads
                .forward("default/telemetry/t2", b"22")
                .await
                .expect("q")
        );
        assert_eq!(db.outbox().len().expect("len"), 2, "capped at two");

        meta.delete(&rule("telemetry", "", "").0, Some("uid-telemetry"))
            .await
            .expect("delete");
        assert_eq!(
            uploads.reload(),
            FilterChanges {
                added: vec![],
                removed: vec!["default/telemetry/#".into()]
            }
        );
        assert!(!uploads.wants("default/telemetry/t1"));
    }
}
