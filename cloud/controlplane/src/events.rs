//! Kubernetes events (core/v1), recorded as kube-controller-manager and kube-scheduler record
//! them, so `kubectl describe` and `kubectl get events` show why something happened.
//!
//! Recording is best effort and never holds up the reconcile that records: [`Recorder::record`]
//! queues the event and returns. As client-go's broadcaster does, the queue holds
//! [`QUEUED_EVENTS`] and drops what does not fit (`DropIfChannelFull`), and one task per
//! recorder writes the queue to the API in order; a write that fails is logged, not retried.
//! Before writing, the task correlates as client-go's `EventCorrelator` does:
//! - the same event again (same object, reason and message) raises the `count` and
//!   `lastTimestamp` of the one already written, by a patch, instead of writing another
//!   (`kubectl get events` shows `x5 over 2m`);
//! - the [`AGGREGATE_AFTER`]th event about one object with the same reason but another message
//!   within [`AGGREGATE_WINDOW`] becomes one event "(combined from similar events): …", counted
//!   from then on (`EventAggregator`);
//! - each object gets a burst of [`SPAM_BURST`] writes, then one every [`SPAM_REFILL`]
//!   (`EventSourceObjectSpamFilter`): a DaemonSet that creates 10,000 pods shows its first
//!   `SuccessfulCreate` events, as on Kubernetes, not 10,000 writes to the API.

use std::collections::HashSet;
use std::time::Duration;

use hashlink::LruCache;
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many events wait to be written before more are dropped (client-go's `maxQueuedEvents`).
pub const QUEUED_EVENTS: usize = 1000;
/// How many events about one object a recorder writes at once (client-go's `defaultSpamBurst`).
pub const SPAM_BURST: u32 = 25;
/// How often one more is allowed after the burst (client-go's `defaultSpamQPS`, 1/300).
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// How many similar events (same object and reason, other messages) are written apart before
/// they are combined into one (client-go's `defaultAggregateMaxEvents`).
pub const AGGREGATE_AFTER: usize = 10;
/// How long similar events count towards combining (client-go's
/// `defaultAggregateIntervalInSeconds`).
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// How many keys each of the correlator's caches remembers (client-go's `maxLruCacheEntries`).
const CACHE_ENTRIES: usize = 4096;
/// What a combined event's message starts with (client-go's `EventAggregatorByReasonMessageFunc`).
const COMBINED: &str = "(combined from similar events): ";

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

/// Records events in the name of one component (`default-scheduler`, `deployment-controller`).
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Recorded>,
}

/// One call of [`Recorder::record`], as queued.
struct Recorded {
    object: ObjectReference,
    kind: EventType,
    reason: String,
    message: String,
}

impl Recorder {
    /// A recorder for `component`, with the task that writes its events; the task ends once
    /// every clone of the recorder is dropped and the queue is written.
    pub fn new(client: Client, component: &'static str) -> Self {
        let (queue, events) = mpsc::channel(QUEUED_EVENTS);
        tokio::spawn(write_to_api(client, component, events));
        Self { queue }
    }

    /// Records an event about `object`: queues it, or drops it if the queue is full.
    pub fn record(&self, object: ObjectReference, kind: EventType, reason: &str, message: &str) {
        let recorded = Recorded {
            object,
            kind,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        if self.queue.try_send(recorded).is_err() {
            tracing::debug!(reason, message, "event dropped: the event queue is full");
        }
    }
}

/// Writes `events` to the API in order, as the correlator says, until the queue closes.
async fn write_to_api(
    client: Client,
    component: &'static str,
    mut events: mpsc::Receiver<Recorded>,
) {
    let mut correlator = Correlator::new(component);
    // A stretch of failures (the API server away) is logged at its first failure and its end,
    // not at every event.
    let mut failing = false;
    while let Some(recorded) = events.recv().await {
        let Some(write) = correlator.correlate(recorded, Instant::now(), jiff::Timestamp::now())
        else {
            continue;
        };
        let reason = write.event.reason.clone().unwrap_or_default();
        match write_one(&client, &write).await {
            Ok(written) => {
                correlator.written(&write.key, &written);
                if std::mem::take(&mut failing) {
                    tracing::info!(component, "events are recorded again");
                }
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, component, reason, "could not record an event; the next failures are logged at debug");
            }
            Err(error) => tracing::debug!(%error, component, reason, "could not record an event"),
        }
    }
}

/// One event as it goes to the API.
struct Write {
    /// The correlator's key for it (its whole content, or its aggregate once combined).
    key: String,
    event: Event,
    /// Whether the event was written before and is patched (its count and last timestamp).
    again: bool,
}

/// Writes an event: patches the one written before, or creates it (also when the one written
/// before is gone, as client-go does).
async fn write_one(client: &Client, write: &Write) -> Result<Event, kube::Error> {
    let namespace = write
        .event
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default");
    let api = Api::<Event>::namespaced(client.clone(), namespace);
    let name = write.event.metadata.name.as_deref().unwrap_or_default();
    if write.again {
        let patch = serde_json::json!({
            "count": write.event.count,
            "lastTimestamp": write.event.last_timestamp,
            "message": write.event.message,
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            done => return done,
        }
    }
    let mut event = write.event.clone();
    event.metadata.resource_version = None;
    api.create(&PostParams::default(), &event).await
}

/// What the correlator remembers of an event it wrote (client-go's `eventLog`).
#[derive(Clone)]
struct Observed {
    count: i32,
    first: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    name: String,
}

/// Similar events seen about one object and reason (client-go's `aggregateRecord`).
struct Similar {
    messages: HashSet<String>,
    last: Instant,
}

/// client-go's `EventCorrelator`: combines similar events, counts repeated ones and filters
/// spam, each with a bounded LRU cache.
struct Correlator {
    component: &'static str,
    similar: LruCache<String, Similar>,
    observed: LruCache<String, Observed>,
    spam: LruCache<String, (f64, Instant)>,
}

impl Correlator {
    fn new(component: &'static str) -> Self {
        Self {
            component,
            similar: LruCache::new(CACHE_ENTRIES),
            observed: LruCache::new(CACHE_ENTRIES),
            spam: LruCache::new(CACHE_ENTRIES),
        }
    }

    /// What to write for `recorded` seen at `now` (`time` on the wall clock), or nothing if the
    /// spam filter holds it back.
    fn correlate(
        &mut self,
        recorded: Recorded,
        now: Instant,
        time: jiff::Timestamp,
    ) -> Option<Write> {
        let object = object_key(&recorded.object);
        let aggregate = [
            self.component,
            &object,
            recorded.kind.as_str(),
            &recorded.reason,
        ]
        .join("/");
        if self
            .similar
            .peek(&aggregate)
            .is_none_or(|s| now.saturating_duration_since(s.last) > AGGREGATE_WINDOW)
        {
            let fresh = Similar {
                messages: HashSet::new(),
                last: now,
            };
            self.similar.insert(aggregate.clone(), fresh);
        }
        let similar = self.similar.get_mut(&aggregate)?;
        similar.messages.insert(recorded.message.clone());
        similar.last = now;
        let combined = similar.messages.len() >= AGGREGATE_AFTER;
        if combined {
            // Kept below the limit, as client-go's `PopAny` keeps it: combined from now on.
            if let Some(any) = similar.messages.iter().next().cloned() {
                similar.messages.remove(&any);
            }
        }
        let (key, message) = if !combined {
            (
                format!("{aggregate}/{}", recorded.message),
                recorded.message,
            )
        } else {
            (aggregate, format!("{COMBINED}{}", recorded.message))
        };

        let stamp = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(time);
        let previous = self.observed.get(&key).cloned();
        let again = previous.is_some();
        let observed = previous.map_or_else(
            || Observed {
                count: 1,
                first: Some(stamp.clone()),
                name: format!(
                    "{}.{:x}",
                    recorded.object.name.as_deref().unwrap_or("object"),
                    time.as_nanosecond()
                ),
            },
            |o| Observed {
                count: o.count.saturating_add(1),
                ..o
            },
        );
        self.observed.insert(key.clone(), observed.clone());
        if !self.allow(&object, now) {
            tracing::debug!(reason = recorded.reason, "event dropped by the spam filter");
            return None;
        }

        let namespace = recorded
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(observed.name),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: recorded.object,
            reason: Some(recorded.reason),
            message: Some(message),
            type_: Some(recorded.kind.as_str().to_owned()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(self.component.to_owned()),
                host: None,
            }),
            reporting_component: Some(self.component.to_owned()),
            reporting_instance: Some(self.component.to_owned()),
            first_timestamp: observed.first,
            last_timestamp: Some(stamp),
            count: Some(observed.count),
            ..Default::default()
        };
        Some(Write { key, event, again })
    }

    /// The spam filter, keyed as client-go's `getSpamKey` keys it (the source and the object,
    /// not the reason or message): whether one more event about `object` may be written now
    /// (and takes its token).
    fn allow(&mut self, object: &str, now: Instant) -> bool {
        let full = f64::from(SPAM_BURST);
        if !self.spam.contains_key(object) {
            self.spam.insert(object.to_owned(), (full, now));
        }
        let Some((tokens, at)) = self.spam.get_mut(object) else {
            return true;
        };
        let refilled = now.saturating_duration_since(*at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(full);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Notes what the API holds after a write under `key` (its name, if the create after a
    /// vanished event made a new one).
    fn written(&mut self, key: &str, event: &Event) {
        if let (Some(observed), Some(name)) = (self.observed.get_mut(key), &event.metadata.name) {
            observed.name.clone_from(name);
        }
    }
}

/// The involved object as client-go keys it.
fn object_key(object: &ObjectReference) -> String {
    [
        object.kind.as_deref(),
        object.namespace.as_deref(),
        object.name.as_deref(),
        object.uid.as_deref(),
        object.api_version.as_deref(),
        object.field_path.as_deref(),
    ]
    .map(Option::unwrap_or_default)
    .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::FakeApi;

    fn pod(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            api_version: Some("v1".into()),
            ..Default::default()
        }
    }

    fn recorded(object: &str, reason: &str, message: &str) -> Recorded {
        Recorded {
            object: pod(object),
            kind: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn time(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_790_000_000 + seconds).expect("a valid time")
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_event_again_counts_on_the_first() {
        let mut c = Correlator::new("default-scheduler");
        let start = Instant::now();
        let first = c
            .correlate(
                recorded("a", "FailedScheduling", "no nodes"),
                start,
                time(0),
            )
            .expect("written");
        assert!(!first.again);
        assert_eq!(first.event.count, Some(1));
        let later = start + Duration::from_secs(60);
        let second = c
            .correlate(
                recorded("a", "FailedScheduling", "no nodes"),
                later,
                time(60),
            )
            .expect("written");
        assert!(second.again, "patched, not created");
        assert_eq!(second.event.metadata.name, first.event.metadata.name);
        assert_eq!(second.event.count, Some(2));
        assert_eq!(second.event.first_timestamp, first.event.first_timestamp);
        assert_ne!(second.event.last_timestamp, first.event.last_timestamp);

        let other = c
            .correlate(
                recorded("b", "FailedScheduling", "no nodes"),
                later,
                time(60),
            )
            .expect("written");
        assert!(!other.again, "another object's event is its own");
    }

    #[tokio::test(start_paused = true)]
    async fn similar_events_are_combined_from_the_tenth() {
        let mut c = Correlator::new("node-controller");
        let now = Instant::now();
        let writes: Vec<Write> = (0..12)
            .filter_map(|i| {
                c.correlate(recorded("a", "Evicted", &format!("pod-{i}")), now, time(i))
            })
            .collect();
        assert_eq!(writes.len(), 12);
        for w in &writes[..AGGREGATE_AFTER - 1] {
            assert!(!w.again);
            assert!(
                !w.event
                    .message
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with(COMBINED)
            );
        }
        let combined = &writes[AGGREGATE_AFTER - 1];
        assert_eq!(
            combined.event.message.as_deref(),
            Some("(combined from similar events): pod-9")
        );
        assert!(!combined.again, "the combined event is new");
        let next = &writes[AGGREGATE_AFTER];
        assert!(next.again, "later similar events count on the combined one");
        assert_eq!(next.event.metadata.name, combined.event.metadata.name);
        assert_eq!(next.event.count, Some(2));
        assert_eq!(
            next.event.message.as_deref(),
            Some("(combined from similar events): pod-10")
        );

        // Past the window, similar events are told apart again.
        let after = now + AGGREGATE_WINDOW + Duration::from_secs(1);
        let fresh = c
            .correlate(recorded("a", "Evicted", "pod-20"), after, time(700))
            .expect("written");
        assert_eq!(fresh.event.message.as_deref(), Some("pod-20"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_per_object_then_one_per_refill() {
        let mut c = Correlator::new("daemonset-controller");
        let now = Instant::now();
        let message = |i: usize| format!("Created pod: p-{i}");
        let written = (0..100)
            .filter(|i| {
                c.correlate(
                    recorded("ds", "SuccessfulCreate", &message(*i)),
                    now,
                    time(0),
                )
                .is_some()
            })
            .count();
        assert_eq!(written, SPAM_BURST as usize);
        assert!(
            c.correlate(recorded("other", "SuccessfulCreate", "x"), now, time(0))
                .is_some(),
            "another object has its own bucket"
        );
        let half = now + SPAM_REFILL / 2;
        assert!(
            c.correlate(recorded("ds", "SuccessfulCreate", "y"), half, time(150))
                .is_none()
        );
        let refilled = now + SPAM_REFILL;
        assert!(
            c.correlate(recorded("ds", "SuccessfulCreate", "y"), refilled, time(300))
                .is_some()
        );
        assert!(
            c.correlate(recorded("ds", "SuccessfulCreate", "z"), refilled, time(300))
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_caches_are_bounded() {
        let mut c = Correlator::new("scheduler");
        let now = Instant::now();
        for i in 0..CACHE_ENTRIES + 10 {
            let name = format!("pod-{i}");
            assert!(
                c.correlate(recorded(&name, "Scheduled", "ok"), now, time(0))
                    .is_some()
            );
        }
        assert!(c.similar.len() <= CACHE_ENTRIES);
        assert!(c.observed.len() <= CACHE_ENTRIES);
        assert!(c.spam.len() <= CACHE_ENTRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recorder_writes_once_and_patches_the_count() {
        let api = FakeApi::default();
        let recorder = Recorder::new(api.client(), "default-scheduler");
        for _ in 0..3 {
            recorder.record(pod("a"), EventType::Warning, "FailedScheduling", "no nodes");
        }
        drop(recorder);
        // The writer ends once the queue is written: wait for that, not for a while.
        let mut counts = Vec::new();
        for _ in 0..1000 {
            counts = api.events().iter().map(|e| e.count).collect();
            if counts == [Some(3)] {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(counts, [Some(3)], "one event, counted three times");
        let event = &api.events()[0];
        assert_eq!(event.reason.as_deref(), Some("FailedScheduling"));
        assert_eq!(event.involved_object.name.as_deref(), Some("a"));
        assert_eq!(
            event.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("default-scheduler")
        );
    }
}
