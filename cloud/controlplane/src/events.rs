//! Kubernetes events (core/v1), recorded as kube-controller-manager and kube-scheduler record
//! them, so `kubectl describe` and `kubectl get events` show why something happened.
//!
//! Recording is best effort: a failed event is logged and never fails the reconcile that
//! recorded it. As client-go's recorder does, each recorder lets a burst of [`SPAM_BURST`]
//! events about one object through, then one every [`SPAM_REFILL`]
//! (`EventSourceObjectSpamFilter`): a DaemonSet that creates 10,000 pods shows its first
//! `SuccessfulCreate` events, as on Kubernetes, not 10,000 writes to the API.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

/// How many events about one object a recorder writes at once (client-go's `defaultSpamBurst`).
pub const SPAM_BURST: u32 = 25;
/// How often one more is allowed after the burst (client-go's `defaultSpamQPS`, 1/300).
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// How many objects the filter remembers (client-go's `maxLruCacheEntries`).
const SPAM_OBJECTS: usize = 4096;

/// Whether an event is routine or a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something happened as it should.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// A token bucket per object: client-go's spam filter, keyed as `getSpamKey` keys it (the
/// source and the involved object, not the reason or message). The oldest object is forgotten
/// first once [`SPAM_OBJECTS`] are remembered (client-go keeps an LRU cache).
#[derive(Default)]
struct SpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
    order: VecDeque<String>,
}

impl SpamFilter {
    /// Whether one more event about `key` may be written now (and takes its token).
    fn allow(&mut self, key: &str, now: Instant) -> bool {
        if !self.buckets.contains_key(key) {
            if self.order.len() >= SPAM_OBJECTS
                && let Some(oldest) = self.order.pop_front()
            {
                self.buckets.remove(&oldest);
            }
            self.order.push_back(key.to_owned());
        }
        let (tokens, at) = self
            .buckets
            .entry(key.to_owned())
            .or_insert((f64::from(SPAM_BURST), now));
        let refilled = now.saturating_duration_since(*at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(f64::from(SPAM_BURST));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Records events in the name of one component (`default-scheduler`, `deployment-controller`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
    spam: Arc<Mutex<SpamFilter>>,
}

impl Recorder {
    /// A recorder for `component`.
    pub fn new(client: Client, component: &'static str) -> Self {
        Self {
            client,
            component,
            spam: Arc::default(),
        }
    }

    /// Whether the spam filter lets one more event about `object` through.
    fn allowed(&self, object: &ObjectReference) -> bool {
        let key = [
            self.component,
            object.kind.as_deref().unwrap_or_default(),
            object.namespace.as_deref().unwrap_or_default(),
            object.name.as_deref().unwrap_or_default(),
            object.uid.as_deref().unwrap_or_default(),
            object.api_version.as_deref().unwrap_or_default(),
        ]
        .join("/");
        // A poisoned lock only means a panic elsewhere mid-update: the counts are still usable.
        self.spam
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(&key, Instant::now())
    }

    /// Records an event about `object`.
    pub async fn record(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if !self.allowed(&object) {
            tracing::debug!(reason, message, "event dropped by the spam filter");
            return;
        }
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let now = jiff::Timestamp::now();
        let name = format!(
            "{}.{:x}",
            object.name.as_deref().unwrap_or("object"),
            now.as_nanosecond()
        );
        let time = serde_json::json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let event = serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": object,
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
        });
        let result = match serde_json::from_value::<Event>(event) {
            Ok(event) => Api::<Event>::namespaced(self.client.clone(), &namespace)
                .create(&PostParams::default(), &event)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, reason, "could not record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_per_object_then_one_per_refill() {
        let mut filter = SpamFilter::default();
        let now = Instant::now();
        let allowed = (0..100).filter(|_| filter.allow("ds/a", now)).count();
        assert_eq!(allowed, SPAM_BURST as usize);
        assert!(
            filter.allow("ds/b", now),
            "another object has its own bucket"
        );
        assert!(!filter.allow("ds/a", now + SPAM_REFILL / 2));
        assert!(filter.allow("ds/a", now + SPAM_REFILL));
        assert!(!filter.allow("ds/a", now + SPAM_REFILL));
    }

    #[tokio::test(start_paused = true)]
    async fn the_filter_remembers_a_bounded_number_of_objects() {
        let mut filter = SpamFilter::default();
        let now = Instant::now();
        for i in 0..SPAM_OBJECTS + 10 {
            assert!(filter.allow(&format!("pod/{i}"), now));
        }
        assert!(filter.buckets.len() <= SPAM_OBJECTS);
    }
}
