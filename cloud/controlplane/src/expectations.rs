//! What the controllers share about their own writes, as kube-controller-manager's
//! `ControllerExpectations` do: after a reconcile creates or deletes objects, the next reconcile
//! of the same owner waits (returns, to be woken by the events its writes cause) until the
//! store shows them, so that it never acts on a store older than its own writes; an expectation
//! older than [`TTL`] is dropped with a warning, as kube's are. Also: the owners whose template
//! the API refused, so that a refusal is reported once per generation, not retried forever.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::indexes::ControllerIndex;

/// How long an unmet expectation holds an owner up before it is dropped (kube's
/// `ExpectationsTimeout`). Writes are forgotten as the watch shows them, or passes them
/// ([`Writes::forget_shown`]), so only a watch that stops delivering holds an owner this long.
pub const TTL: Duration = Duration::from_secs(300);

/// Expectations of type `E` by owner key `K`.
pub struct Expectations<K, E> {
    /// What the store holds, for the warning when an expectation expires (`pod`, `job`).
    what: &'static str,
    all: Mutex<HashMap<K, (E, tokio::time::Instant)>>,
}

impl<K: Eq + Hash + Debug, E> Expectations<K, E> {
    /// No expectations yet; `what` names the objects written.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            all: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the last writes for `key` show (`shown`, which may forget the parts that do),
    /// or there are none, or they are too old to wait for. Shown or expired ones are forgotten.
    pub fn met(&self, key: &K, shown: impl FnOnce(&mut E) -> bool) -> bool {
        let Ok(mut all) = self.all.lock() else {
            return true;
        };
        let Some((e, at)) = all.get_mut(key) else {
            return true;
        };
        let met = shown(e);
        if met || at.elapsed() > TTL {
            if !met {
                tracing::warn!(owner = ?key, "the {} store did not show the owner's writes in time", self.what);
            }
            all.remove(key);
            return true;
        }
        false
    }

    /// Records `e` as what the next reconcile of `key` must see (and forgets expired ones of
    /// owners that are never looked at again).
    pub fn expect(&self, key: K, e: E) {
        if let Ok(mut all) = self.all.lock() {
            all.retain(|_, (_, at)| at.elapsed() <= TTL);
            all.insert(key, (e, tokio::time::Instant::now()));
        }
    }
}

impl<K: Eq + Hash + Debug, E: Default> Expectations<K, E> {
    /// Adds to what the next reconcile of `key` must see (to nothing, if nothing is expected
    /// now), and restarts its clock.
    pub fn expect_also(&self, key: K, add: impl FnOnce(&mut E)) {
        if let Ok(mut all) = self.all.lock() {
            all.retain(|_, (_, at)| at.elapsed() <= TTL);
            let now = tokio::time::Instant::now();
            let (e, at) = all.entry(key).or_insert_with(|| (E::default(), now));
            add(e);
            *at = now;
        }
    }
}

/// The names a reconcile created and deleted in one namespace.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    /// Created.
    pub created: Vec<String>,
    /// Deleted.
    pub deleted: Vec<String>,
    /// The newest resourceVersion the creates were answered with: once the watch has passed
    /// it, a created object the store does not hold was created and deleted between two looks.
    pub created_version: Option<u64>,
}

impl Writes {
    /// Whether there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.deleted.is_empty()
    }

    /// Forgets the writes the watch has shown: created objects `store` holds (or that the
    /// watch, as `index` follows it, has passed and no longer holds: created and deleted
    /// meanwhile), deleted ones it no longer holds or holds terminating. Whether all are shown.
    /// Each object is looked for until it shows, not at every call.
    pub fn forget_shown<K>(
        &mut self,
        store: &Store<K>,
        index: &ControllerIndex<K>,
        namespace: &str,
    ) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let passed = self
            .created_version
            .is_some_and(|v| index.seen_version() >= v);
        self.created.retain(|n| {
            let key = ObjectRef::new(n).within(namespace);
            // The index is ahead of the store by at most the event being applied: one it
            // holds that the store does not hold yet is waited for.
            store.get(&key).is_none() && (!passed || index.contains(&key))
        });
        self.deleted.retain(|n| {
            store
                .get(&ObjectRef::new(n).within(namespace))
                .is_some_and(|o| o.meta().deletion_timestamp.is_none())
        });
        self.is_empty()
    }
}

/// How far a watch has brought its store: the newest resourceVersion among the events the
/// store has applied. Observe each event after the reflector (`.reflect(writer).inspect(..)`):
/// an object written at or before [`Self::passed`] that the store does not hold was created
/// and deleted between two looks, and is not waited for. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct WatchProgress(Arc<AtomicU64>);

impl WatchProgress {
    /// Notes one event of the watch, once the store has applied it.
    pub fn observe<K: Resource>(&self, event: &watcher::Event<K>) {
        if let watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) =
            event
            && let Some(v) = version_of(o.meta())
        {
            self.0.fetch_max(v, Ordering::SeqCst);
        }
    }

    /// Whether the store has applied every event up to `version`.
    pub fn passed(&self, version: Option<u64>) -> bool {
        version.is_some_and(|v| self.0.load(Ordering::SeqCst) >= v)
    }
}

/// The resourceVersion of an object the API answered with, as a number (this API server's
/// are; another's that are not give `None`, and created objects are then waited for in the
/// store alone).
pub fn version_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// Owners whose objects the API refused as invalid, by uid, with the generation refused: not
/// tried again until the owner changes.
#[derive(Default)]
pub struct Refusals(Mutex<HashMap<String, Option<i64>>>);

impl Refusals {
    /// Notes that `uid`'s objects are refused at `generation`.
    pub fn refuse(&self, uid: &str, generation: Option<i64>) {
        if let Ok(mut r) = self.0.lock() {
            r.insert(uid.to_owned(), generation);
        }
    }

    /// Whether `uid`'s objects were refused at `generation`.
    pub fn refused(&self, uid: &str, generation: Option<i64>) -> bool {
        self.0
            .lock()
            .is_ok_and(|r| r.get(uid).is_some_and(|g| *g == generation))
    }
}

/// What the API said, as kube-controller-manager quotes it in events.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expectations_hold_until_shown_or_expired() {
        let e: Expectations<String, u32> = Expectations::new("pod");
        assert!(e.met(&"a".to_owned(), |_| false), "nothing expected");
        e.expect("a".to_owned(), 1);
        assert!(!e.met(&"a".to_owned(), |n| *n == 2));
        assert!(e.met(&"a".to_owned(), |n| *n == 1));
        // Forgotten once met.
        assert!(e.met(&"a".to_owned(), |_| false));
        e.expect("b".to_owned(), 1);
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        assert!(e.met(&"b".to_owned(), |_| false), "expired");
    }

    #[test]
    fn writes_are_forgotten_as_the_watch_shows_or_passes_them() {
        use k8s_openapi::api::core::v1::Pod;
        let pod = |name: &str, v: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {
                "name": name, "namespace": "default", "resourceVersion": v}}))
            .expect("pod")
        };
        let (store, mut writer) = kube::runtime::reflector::store::<Pod>();
        let index = ControllerIndex::default();
        let mut watch = |e: watcher::Event<Pod>| {
            index.apply(&e);
            writer.apply_watcher_event(&e);
        };
        let mut writes = Writes {
            created: vec!["a".into(), "b".into()],
            deleted: vec!["old".into()],
            created_version: Some(11),
        };
        watch(watcher::Event::Apply(pod("old", "3")));
        assert!(!writes.forget_shown(&store, &index, "default"));
        // `a` shows; `old` goes.
        watch(watcher::Event::Apply(pod("a", "10")));
        watch(watcher::Event::Delete(pod("old", "10")));
        assert!(!writes.forget_shown(&store, &index, "default"));
        assert_eq!(writes.created, ["b"]);
        assert!(writes.deleted.is_empty());
        // `b` was created and deleted before the store showed it: once the watch passes its
        // version without holding it, it is not waited for.
        watch(watcher::Event::Apply(pod("c", "12")));
        assert!(writes.forget_shown(&store, &index, "default"));
    }

    #[test]
    fn a_watch_passes_the_versions_its_store_applied() {
        let progress = WatchProgress::default();
        assert!(!progress.passed(Some(1)));
        assert!(
            !progress.passed(None),
            "a version that is not a number is never passed"
        );
        let pod = |v: &str| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p", "resourceVersion": v}}),
            )
            .expect("pod")
        };
        progress.observe(&watcher::Event::Apply(pod("7")));
        progress.observe(&watcher::Event::Delete(pod("5")));
        assert!(progress.passed(Some(7)));
        assert!(!progress.passed(Some(8)));
    }

    #[test]
    fn refusals_hold_for_their_generation() {
        let r = Refusals::default();
        r.refuse("u", Some(2));
        assert!(r.refused("u", Some(2)));
        assert!(!r.refused("u", Some(3)));
        assert!(!r.refused("v", Some(2)));
    }
}
