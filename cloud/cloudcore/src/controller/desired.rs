//! What each edge should hold: the pods bound to its node and the ConfigMaps and Secrets those
//! pods reference, read from shared watch caches.
//!
//! The index maps nodes to keys and keys to nodes; the objects themselves stay in the caches
//! (`kube::runtime::reflector` stores), read when a session sends. One watch per kind serves
//! every edge, however many connect.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;
use wedge_core::protocol::sync::DesiredObject;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use super::references::pod_references;

/// A (node, key) pair whose desired state changed: the node's session must look at the key.
pub type Change = (String, ObjectKey);

#[derive(Debug)]
struct BoundPod {
    node: String,
    refs: BTreeSet<ObjectKey>,
}

#[derive(Debug, Default)]
struct NodeEntry {
    pods: BTreeSet<ObjectKey>,
    refs: HashMap<ObjectKey, usize>,
}

/// The index: bound pods, per-node keys, and which nodes reference each ConfigMap or Secret.
#[derive(Debug, Default)]
pub struct Index {
    pods: HashMap<ObjectKey, BoundPod>,
    nodes: HashMap<String, NodeEntry>,
    referrers: HashMap<ObjectKey, HashSet<String>>,
}

impl Index {
    /// Records `pod` (bound to `node`, or unbound when `None`) with its references, and returns
    /// what changed for which node.
    pub fn upsert_pod(
        &mut self,
        key: ObjectKey,
        node: Option<String>,
        refs: BTreeSet<ObjectKey>,
    ) -> Vec<Change> {
        let mut changes = self.remove_pod(&key);
        let Some(node) = node else {
            return changes;
        };
        let entry = self.nodes.entry(node.clone()).or_default();
        entry.pods.insert(key.clone());
        changes.push((node.clone(), key.clone()));
        for r in &refs {
            let count = entry.refs.entry(r.clone()).or_default();
            *count += 1;
            if *count == 1 {
                changes.push((node.clone(), r.clone()));
                self.referrers
                    .entry(r.clone())
                    .or_default()
                    .insert(node.clone());
            }
        }
        self.pods.insert(key, BoundPod { node, refs });
        changes.sort();
        changes.dedup();
        changes
    }

    /// Forgets a pod, returning what changed for which node.
    pub fn remove_pod(&mut self, key: &ObjectKey) -> Vec<Change> {
        let Some(old) = self.pods.remove(key) else {
            return Vec::new();
        };
        let mut changes = vec![(old.node.clone(), key.clone())];
        if let Some(entry) = self.nodes.get_mut(&old.node) {
            entry.pods.remove(key);
            for r in &old.refs {
                if let Some(count) = entry.refs.get_mut(r) {
                    *count -= 1;
                    if *count == 0 {
                        entry.refs.remove(r);
                        changes.push((old.node.clone(), r.clone()));
                        if let Some(nodes) = self.referrers.get_mut(r) {
                            nodes.remove(&old.node);
                            if nodes.is_empty() {
                                self.referrers.remove(r);
                            }
                        }
                    }
                }
            }
            if entry.pods.is_empty() {
                self.nodes.remove(&old.node);
            }
        }
        changes
    }

    /// The nodes whose pods reference a ConfigMap or Secret.
    pub fn referrers(&self, key: &ObjectKey) -> Vec<String> {
        self.referrers
            .get(key)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every key `node` should hold.
    pub fn keys_for(&self, node: &str) -> Vec<ObjectKey> {
        self.nodes
            .get(node)
            .map(|e| e.pods.iter().chain(e.refs.keys()).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `node` should hold `key`.
    pub fn holds(&self, node: &str, key: &ObjectKey) -> bool {
        self.nodes.get(node).is_some_and(|e| match key.kind {
            ResourceKind::Pod => e.pods.contains(key),
            _ => e.refs.contains_key(key),
        })
    }

    /// The keys of every bound pod.
    pub fn pod_keys(&self) -> Vec<ObjectKey> {
        self.pods.keys().cloned().collect()
    }
}

/// An object as a session sends it.
#[derive(Debug, Clone)]
pub struct Current {
    /// Its uid.
    pub uid: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// The object, as JSON.
    pub object: serde_json::Value,
}

/// The watch caches and the index over them.
#[derive(Clone)]
pub struct Desired {
    /// Every pod.
    pub pods: Store<Pod>,
    /// Every ConfigMap.
    pub config_maps: Store<ConfigMap>,
    /// Every Secret.
    pub secrets: Store<Secret>,
    index: std::sync::Arc<RwLock<Index>>,
}

/// The key of a namespaced object in the protocol.
pub fn key_of<K: Resource>(kind: ResourceKind, object: &K) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
    }
}

fn current<K: Resource + Serialize>(object: &K) -> Option<Current> {
    Some(Current {
        uid: object.meta().uid.clone()?,
        resource_version: object.meta().resource_version.clone().unwrap_or_default(),
        object: serde_json::to_value(object).ok()?,
    })
}

impl Desired {
    /// The index over three caches.
    pub fn new(pods: Store<Pod>, config_maps: Store<ConfigMap>, secrets: Store<Secret>) -> Self {
        Self {
            pods,
            config_maps,
            secrets,
            index: Default::default(),
        }
    }

    /// Waits until every cache has its first full list: before that, an edge would be told to
    /// delete what the cloud has not read yet.
    pub async fn ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    /// Runs `f` on the index.
    pub fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> T) -> T {
        f(&mut self.index.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records a pod as the watch shows it.
    pub fn pod_changed(&self, pod: &Pod) -> Vec<Change> {
        let key = key_of(ResourceKind::Pod, pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let refs = pod_references(pod);
        self.with_index(|index| index.upsert_pod(key, node, refs))
    }

    /// Every object `node` should hold, for the resync plan.
    pub fn objects_for(&self, node: &str) -> Vec<DesiredObject> {
        let keys = self.with_index(|index| index.keys_for(node));
        keys.into_iter()
            .filter_map(|key| {
                let current = self.current(node, &key)?;
                Some(DesiredObject {
                    key,
                    uid: current.uid,
                    resource_version: current.resource_version,
                })
            })
            .collect()
    }

    /// The object `node` should hold under `key` now, or `None` if it should hold none.
    pub fn current(&self, node: &str, key: &ObjectKey) -> Option<Current> {
        if !self.with_index(|index| index.holds(node, key)) {
            return None;
        }
        let object_ref = |name: &str| (name.to_owned(), key.namespace.clone());
        match key.kind {
            ResourceKind::Pod => {
                let (name, ns) = object_ref(&key.name);
                let pod = self.pods.get(&ObjectRef::new(&name).within(&ns))?;
                let bound_here =
                    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
                bound_here.then(|| current(pod.as_ref())).flatten()
            }
            ResourceKind::ConfigMap => {
                let (name, ns) = object_ref(&key.name);
                current(
                    self.config_maps
                        .get(&ObjectRef::new(&name).within(&ns))?
                        .as_ref(),
                )
            }
            ResourceKind::Secret => {
                let (name, ns) = object_ref(&key.name);
                current(
                    self.secrets
                        .get(&ObjectRef::new(&name).within(&ns))?
                        .as_ref(),
                )
            }
            _ => None,
        }
    }

    /// A pod from the cache.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: ResourceKind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_config_map_goes_to_a_node_while_one_of_its_pods_references_it() {
        let mut index = Index::default();
        let cm = key(ResourceKind::ConfigMap, "settings");
        let (a, b) = (key(ResourceKind::Pod, "a"), key(ResourceKind::Pod, "b"));
        let refs = BTreeSet::from([cm.clone()]);

        let changes = index.upsert_pod(a.clone(), Some("n1".into()), refs.clone());
        assert_eq!(
            changes,
            [("n1".into(), a.clone()), ("n1".into(), cm.clone())]
        );
        let changes = index.upsert_pod(b.clone(), Some("n1".into()), refs.clone());
        assert_eq!(changes, [("n1".into(), b.clone())], "already referenced");
        assert_eq!(index.referrers(&cm), ["n1"]);

        assert_eq!(index.remove_pod(&a), [("n1".into(), a.clone())]);
        assert!(index.holds("n1", &cm));
        assert_eq!(
            index.remove_pod(&b),
            [("n1".into(), b.clone()), ("n1".into(), cm.clone())]
        );
        assert!(!index.holds("n1", &cm));
        assert!(index.referrers(&cm).is_empty());
        assert!(index.keys_for("n1").is_empty());
    }

    #[test]
    fn an_unbound_pod_is_nobodys_and_binding_moves_it() {
        let mut index = Index::default();
        let p = key(ResourceKind::Pod, "p");
        assert!(
            index
                .upsert_pod(p.clone(), None, BTreeSet::new())
                .is_empty()
        );
        assert_eq!(
            index.upsert_pod(p.clone(), Some("n2".into()), BTreeSet::new()),
            [("n2".into(), p.clone())]
        );
        assert_eq!(index.keys_for("n2"), std::slice::from_ref(&p));
        assert!(!index.holds("n1", &p));
    }
}
