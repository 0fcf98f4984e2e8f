//! Objects by the uid of their controller, as kube-controller-manager's informers index pods
//! (`controllerUID`): a reconcile of one owner reads what it controls, not the whole store, so
//! it costs what the owner has rather than what the cluster has.
//!
//! kube-runtime's reflector [`Store`] has no indexes, so this is a small one kept from the same
//! watch events, applied *before* the store applies them (see [`ControllerIndex::apply`]).
//! It holds keys only; the objects stay in the store, read through it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::pods;

/// Keys by controller uid, and each key's controller.
struct Keys<K: Resource<DynamicType = ()>> {
    by_owner: HashMap<String, HashSet<ObjectRef<K>>>,
    owner_of: HashMap<ObjectRef<K>, String>,
}

impl<K: Resource<DynamicType = ()>> Default for Keys<K> {
    fn default() -> Self {
        Self {
            by_owner: HashMap::new(),
            owner_of: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Keys<K> {
    fn set(&mut self, key: ObjectRef<K>, owner: Option<String>) {
        if let Some(old) = self.owner_of.remove(&key)
            && let Some(set) = self.by_owner.get_mut(&old)
        {
            set.remove(&key);
            if set.is_empty() {
                self.by_owner.remove(&old);
            }
        }
        if let Some(owner) = owner {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            self.owner_of.insert(key, owner);
        }
    }
}

struct Inner<K: Resource<DynamicType = ()>> {
    keys: Keys<K>,
    /// The newest resourceVersion the watch has delivered (numeric ones; see
    /// [`ControllerIndex::seen_version`]).
    seen: u64,
    /// A relist under way: the keys it has listed so far (swapped in at its end, as the
    /// store swaps its own buffer).
    relist: Option<Keys<K>>,
}

/// Which objects each controller (by uid) controls. Cheap to clone: clones share the index.
pub struct ControllerIndex<K: Resource<DynamicType = ()>> {
    inner: Arc<RwLock<Inner<K>>>,
}

impl<K: Resource<DynamicType = ()>> Clone for ControllerIndex<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Default for ControllerIndex<K> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                keys: Keys::default(),
                seen: 0,
                relist: None,
            })),
        }
    }
}

impl<K> ControllerIndex<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Applies one event of the watch that feeds the store. Put it before the store's
    /// reflector: a reconcile woken by the store's subscribers then finds the index at least
    /// as new as the event; a key the index has and the store not yet is simply skipped by
    /// [`Self::owned`] (a pod that appears a moment later, or one that is going).
    pub fn apply(&self, event: &watcher::Event<K>) {
        let key_and_owner = |o: &K| {
            let owner = pods::controller_of(o.meta()).map(|r| r.uid.clone());
            (ObjectRef::from_obj(o), owner)
        };
        // A panic elsewhere mid-update cannot leave worse than a stale key, which the store
        // read filters out: carry on.
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if let watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) =
            event
            && let Some(v) = crate::expectations::version_of(o.meta())
        {
            inner.seen = inner.seen.max(v);
        }
        match event {
            watcher::Event::Apply(o) => {
                let (key, owner) = key_and_owner(o);
                inner.keys.set(key, owner);
            }
            watcher::Event::Delete(o) => inner.keys.set(ObjectRef::from_obj(o), None),
            watcher::Event::Init => inner.relist = Some(Keys::default()),
            watcher::Event::InitApply(o) => {
                let (key, owner) = key_and_owner(o);
                inner
                    .relist
                    .get_or_insert_with(Keys::default)
                    .set(key, owner);
            }
            watcher::Event::InitDone => {
                if let Some(keys) = inner.relist.take() {
                    inner.keys = keys;
                }
            }
        }
    }

    /// The objects in `namespace` that `owner_uid` controls, from `store` (the one this index
    /// follows). Only its namespace: a reference from elsewhere is not a controller's (the
    /// garbage collector treats it as dangling, and so does kube-controller-manager).
    pub fn owned(&self, store: &Store<K>, namespace: &str, owner_uid: &str) -> Vec<Arc<K>> {
        let keys: Vec<ObjectRef<K>> = {
            let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            inner
                .keys
                .by_owner
                .get(owner_uid)
                .map(|set| {
                    set.iter()
                        .filter(|k| k.namespace.as_deref() == Some(namespace))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        keys.iter().filter_map(|k| store.get(k)).collect()
    }

    /// The newest resourceVersion the watch has delivered: every object written at or before
    /// it has been seen (this API server's versions are one increasing counter, as etcd's
    /// revisions are).
    pub fn seen_version(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .seen
    }

    /// Whether the index holds `key` (under any controller).
    pub fn contains(&self, key: &ObjectRef<K>) -> bool {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.keys.owner_of.contains_key(key)
    }

    /// Whether `owner_uid` controls anything.
    pub fn owns_any(&self, owner_uid: &str) -> bool {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.keys.by_owner.contains_key(owner_uid)
    }
}

/// A shared reflector store with its index by controller.
pub struct Indexed<K: Resource<DynamicType = ()> + 'static> {
    /// The store.
    pub store: Store<K>,
    /// Its objects by controller uid.
    pub index: ControllerIndex<K>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Indexed<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            index: self.index.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Indexed<K> {
    /// The objects in `namespace` that `owner_uid` controls.
    pub fn owned(&self, namespace: &str, owner_uid: &str) -> Vec<Arc<K>> {
        self.index.owned(&self.store, namespace, owner_uid)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, owner: Option<&str>) -> Pod {
        let refs = owner.map(|uid| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid,
                    "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "ownerReferences": refs},
        }))
        .expect("pod")
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn follows_the_watch_and_reads_through_the_store() {
        let (store, mut writer) = reflector::store::<Pod>();
        let index = ControllerIndex::default();
        let mut both = |e: watcher::Event<Pod>| {
            index.apply(&e);
            writer.apply_watcher_event(&e);
        };
        both(watcher::Event::Init);
        both(watcher::Event::InitApply(pod("a", Some("u1"))));
        both(watcher::Event::InitApply(pod("b", Some("u2"))));
        both(watcher::Event::InitApply(pod("c", None)));
        both(watcher::Event::InitDone);
        assert_eq!(names(index.owned(&store, "default", "u1")), ["a"]);
        both(watcher::Event::Apply(pod("d", Some("u1"))));
        assert_eq!(names(index.owned(&store, "default", "u1")), ["a", "d"]);
        // Orphaned, and adopted by another.
        both(watcher::Event::Apply(pod("a", None)));
        both(watcher::Event::Apply(pod("b", Some("u1"))));
        assert_eq!(names(index.owned(&store, "default", "u1")), ["b", "d"]);
        assert!(!index.owns_any("u2"));
        both(watcher::Event::Delete(pod("d", Some("u1"))));
        assert_eq!(names(index.owned(&store, "default", "u1")), ["b"]);
        // A relist replaces everything at its end, not before.
        both(watcher::Event::Init);
        both(watcher::Event::InitApply(pod("e", Some("u1"))));
        assert_eq!(names(index.owned(&store, "default", "u1")), ["b"]);
        both(watcher::Event::InitDone);
        assert_eq!(names(index.owned(&store, "default", "u1")), ["e"]);
    }

    #[test]
    fn a_key_the_store_does_not_show_yet_is_skipped() {
        let (store, _writer) = reflector::store::<Pod>();
        let index = ControllerIndex::default();
        index.apply(&watcher::Event::Apply(pod("a", Some("u1"))));
        assert!(index.owned(&store, "default", "u1").is_empty());
        assert!(index.owns_any("u1"));
        both_namespaces(&index);
    }

    fn both_namespaces(index: &ControllerIndex<Pod>) {
        let (store, mut writer) = reflector::store::<Pod>();
        let mut elsewhere = pod("x", Some("u1"));
        elsewhere.metadata.namespace = Some("other".into());
        let e = watcher::Event::Apply(elsewhere);
        index.apply(&e);
        writer.apply_watcher_event(&e);
        assert!(index.owned(&store, "default", "u1").is_empty());
        assert_eq!(names(index.owned(&store, "other", "u1")), ["x"]);
    }
}
