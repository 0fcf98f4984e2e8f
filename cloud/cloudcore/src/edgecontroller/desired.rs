//! What each edge should hold: the pods and Devices bound to its node, the Rules whose eventbus
//! source is its node, and what those reference (a pod's ConfigMaps, Secrets and RuntimeClass, a
//! Device's DeviceModel), read from shared watch caches.
//!
//! The index maps nodes to keys and keys to nodes; the objects themselves stay in the caches
//! (`kube::runtime::reflector` stores), read when a session sends. One watch per kind serves
//! every edge, however many connect. Pods, Devices and Rules are *bound* objects (a node name in
//! their spec decides their edge); everything else reaches an edge only while something bound
//! there references it, so one index rule covers both.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;
use wedge_core::protocol::sync::DesiredObject;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use super::references::pod_references;
use crate::{devicecontroller, router};

/// A (node, key) pair whose desired state changed: the node's session must look at the key.
pub type Change = (String, ObjectKey);

#[derive(Debug)]
struct Bound {
    node: String,
    refs: BTreeSet<ObjectKey>,
}

#[derive(Debug, Default)]
struct NodeEntry {
    bound: BTreeSet<ObjectKey>,
    refs: HashMap<ObjectKey, usize>,
}

/// The index: bound objects (pods, Devices), per-node keys, and which nodes reference each
/// referenced object (ConfigMap, Secret, RuntimeClass, DeviceModel).
#[derive(Debug, Default)]
pub struct Index {
    bound: HashMap<ObjectKey, Bound>,
    nodes: HashMap<String, NodeEntry>,
    referrers: HashMap<ObjectKey, HashSet<String>>,
}

impl Index {
    /// Records a bound object (a pod or a Device; bound to `node`, or unbound when `None`) with
    /// what it references, and returns what changed for which node. An object bound elsewhere
    /// before moves: the old node is told to look at it (and drop it), the new one to take it.
    pub fn upsert_bound(
        &mut self,
        key: ObjectKey,
        node: Option<String>,
        refs: BTreeSet<ObjectKey>,
    ) -> Vec<Change> {
        let mut changes = self.remove_bound(&key);
        let Some(node) = node else {
            return changes;
        };
        let entry = self.nodes.entry(node.clone()).or_default();
        entry.bound.insert(key.clone());
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
        changes.sort();
        changes.dedup();
        // What the object references goes first, so that an edge holds a pod's ConfigMaps,
        // Secrets and RuntimeClass by the time the pod arrives.
        // (An old node, when the object moved, drops the object before what it referenced.)
        changes.sort_by_key(|(n, k)| *n == node && *k == key);
        self.bound.insert(key, Bound { node, refs });
        changes
    }

    /// Forgets a bound object, returning what changed for which node.
    pub fn remove_bound(&mut self, key: &ObjectKey) -> Vec<Change> {
        let Some(old) = self.bound.remove(key) else {
            return Vec::new();
        };
        let mut changes = vec![(old.node.clone(), key.clone())];
        if let Some(entry) = self.nodes.get_mut(&old.node) {
            entry.bound.remove(key);
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
            if entry.bound.is_empty() {
                self.nodes.remove(&old.node);
            }
        }
        changes
    }

    /// The nodes whose bound objects reference `key` (a ConfigMap, Secret, RuntimeClass or
    /// DeviceModel).
    pub fn referrers(&self, key: &ObjectKey) -> Vec<String> {
        self.referrers
            .get(key)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every key `node` should hold, referenced objects before the objects that reference them.
    pub fn keys_for(&self, node: &str) -> Vec<ObjectKey> {
        self.nodes
            .get(node)
            .map(|e| e.refs.keys().chain(&e.bound).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `node` should hold `key`.
    pub fn holds(&self, node: &str, key: &ObjectKey) -> bool {
        // Keys carry their kind, so a bound key and a referenced one never collide.
        self.nodes
            .get(node)
            .is_some_and(|e| e.bound.contains(key) || e.refs.contains_key(key))
    }

    /// The keys of every bound object of `kind` (a relist forgets those it no longer sees).
    pub fn bound_keys(&self, kind: ResourceKind) -> Vec<ObjectKey> {
        self.bound
            .keys()
            .filter(|k| k.kind == kind)
            .cloned()
            .collect()
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

/// A cache of a kind cloudcore reads untyped (KubeEdge's device CRDs), with its resource.
#[derive(Clone)]
pub struct DynamicCache {
    /// Every object.
    pub store: Store<DynamicObject>,
    /// What the objects are.
    pub resource: ApiResource,
}

impl DynamicCache {
    /// The object `namespace/name`, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<DynamicObject>> {
        self.store
            .get(&ObjectRef::new_with(name, self.resource.clone()).within(namespace))
    }

    /// The object as the edge receives it: list items may come without their type, and the
    /// edge parses `apiVersion` and `kind`.
    fn current(&self, object: &DynamicObject) -> Option<Current> {
        let mut current = current(object)?;
        if let Some(map) = current.object.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                self.resource.api_version.clone().into(),
            );
            map.insert("kind".into(), self.resource.kind.clone().into());
        }
        Some(current)
    }
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
    /// Every RuntimeClass.
    pub runtime_classes: Store<RuntimeClass>,
    /// Every PersistentVolumeClaim.
    pub claims: Store<PersistentVolumeClaim>,
    /// Every PersistentVolume.
    pub volumes: Store<PersistentVolume>,
    /// Every Device.
    pub devices: DynamicCache,
    /// Every DeviceModel.
    pub device_models: DynamicCache,
    /// Every Rule.
    pub rules: DynamicCache,
    /// Every RuleEndpoint (the router reads them; edges never hold one).
    pub rule_endpoints: DynamicCache,
    index: std::sync::Arc<RwLock<Index>>,
}

/// The caches of claims and the volumes they are bound to.
pub struct VolumeStores {
    /// PersistentVolumeClaims.
    pub claims: Store<PersistentVolumeClaim>,
    /// PersistentVolumes.
    pub volumes: Store<PersistentVolume>,
}

/// The caches of the custom resources cloudcore reads untyped.
pub struct DynamicStores {
    /// Devices.
    pub devices: Store<DynamicObject>,
    /// DeviceModels.
    pub device_models: Store<DynamicObject>,
    /// Rules.
    pub rules: Store<DynamicObject>,
    /// RuleEndpoints.
    pub rule_endpoints: Store<DynamicObject>,
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

/// A cached object of a kind cloudcore reads typed.
trait Cached: Send + Sync {
    fn meta(&self) -> &kube::api::ObjectMeta;
    fn current(&self) -> Option<Current>;
}

impl<K: Resource + Serialize + Send + Sync> Cached for K {
    fn meta(&self) -> &kube::api::ObjectMeta {
        Resource::meta(self)
    }

    fn current(&self) -> Option<Current> {
        current(self)
    }
}

/// What [`Desired::found`] finds.
enum Found<'a> {
    Typed(std::sync::Arc<dyn Cached>),
    Dynamic(std::sync::Arc<DynamicObject>, &'a DynamicCache),
}

impl Desired {
    /// The index over the caches.
    pub fn new(
        pods: Store<Pod>,
        config_maps: Store<ConfigMap>,
        secrets: Store<Secret>,
        runtime_classes: Store<RuntimeClass>,
        volumes: VolumeStores,
        dynamic: DynamicStores,
    ) -> Self {
        Self {
            pods,
            config_maps,
            secrets,
            runtime_classes,
            claims: volumes.claims,
            volumes: volumes.volumes,
            devices: DynamicCache {
                store: dynamic.devices,
                resource: devicecontroller::device_resource(),
            },
            device_models: DynamicCache {
                store: dynamic.device_models,
                resource: devicecontroller::device_model_resource(),
            },
            rules: DynamicCache {
                store: dynamic.rules,
                resource: router::crds::rule_resource(),
            },
            rule_endpoints: DynamicCache {
                store: dynamic.rule_endpoints,
                resource: router::crds::rule_endpoint_resource(),
            },
            index: Default::default(),
        }
    }

    /// Waits until every cache has its first full list: before that, an edge would be told to
    /// delete what the cloud has not read yet.
    pub async fn ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
        let _ = self.runtime_classes.wait_until_ready().await;
        let _ = self.claims.wait_until_ready().await;
        let _ = self.volumes.wait_until_ready().await;
        let _ = self.devices.store.wait_until_ready().await;
        let _ = self.device_models.store.wait_until_ready().await;
        let _ = self.rules.store.wait_until_ready().await;
        let _ = self.rule_endpoints.store.wait_until_ready().await;
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
        let mut refs = pod_references(pod);
        // A claim's bound volume goes with it (cluster-scoped: no namespace).
        let bound: Vec<ObjectKey> = refs
            .iter()
            .filter(|r| r.kind == ResourceKind::PersistentVolumeClaim)
            .filter_map(|r| {
                let claim = self
                    .claims
                    .get(&ObjectRef::new(&r.name).within(&r.namespace))?;
                let volume = claim.spec.as_ref()?.volume_name.clone()?;
                (!volume.is_empty()).then(|| ObjectKey {
                    kind: ResourceKind::PersistentVolume,
                    namespace: String::new(),
                    name: volume,
                })
            })
            .collect();
        refs.extend(bound);
        self.with_index(|index| index.upsert_bound(key, node, refs))
    }

    /// Records a claim as the watch shows it: the bound pods naming it are indexed again, so
    /// that a volume bound to it after they were reaches their nodes.
    pub fn claim_changed(&self, claim: &PersistentVolumeClaim) -> Vec<Change> {
        let (namespace, name) = (
            claim.metadata.namespace.as_deref().unwrap_or_default(),
            claim.metadata.name.as_deref().unwrap_or_default(),
        );
        let users: Vec<std::sync::Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.node_name.as_deref().is_some_and(|n| !n.is_empty())
                        && s.volumes.iter().flatten().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| c.claim_name == name)
                        })
                })
            })
            .collect();
        users.iter().flat_map(|p| self.pod_changed(p)).collect()
    }

    /// Records a Rule as the watch shows it: bound to the node its eventbus source names.
    pub fn rule_changed(&self, rule: &DynamicObject) -> Vec<Change> {
        let key = key_of(ResourceKind::Rule, rule);
        let node = router::source_node(rule);
        self.with_index(|index| index.upsert_bound(key, node, BTreeSet::new()))
    }

    /// Every object `node` should hold, for the resync plan: read from the objects' metadata,
    /// without serialising them (a resync of an edge holding hundreds of objects compares
    /// versions; only the objects that differ are serialised, when sent).
    pub fn objects_for(&self, node: &str) -> Vec<DesiredObject> {
        let keys = self.with_index(|index| index.keys_for(node));
        keys.into_iter()
            .filter_map(|key| {
                let (uid, resource_version) = self.version(node, &key)?;
                Some(DesiredObject {
                    key,
                    uid,
                    resource_version,
                })
            })
            .collect()
    }

    /// The object `node` should hold under `key` now, or `None` if it should hold none.
    pub fn current(&self, node: &str, key: &ObjectKey) -> Option<Current> {
        match self.found(node, key)? {
            Found::Typed(object) => object.current(),
            Found::Dynamic(object, cache) => cache.current(&object),
        }
    }

    /// What `node` would be sent of `key` now, hashed as edges state it in their hello
    /// ([`wedge_core::protocol::sync::edge_view`]), for the kinds whose status is not sent.
    pub fn view(&self, node: &str, key: &ObjectKey) -> Option<String> {
        wedge_core::protocol::sync::edge_view(key.kind, self.current(node, key)?.object)
    }

    /// The uid and resourceVersion of what [`Desired::current`] would send, from the cached
    /// object's metadata.
    fn version(&self, node: &str, key: &ObjectKey) -> Option<(String, String)> {
        let found = self.found(node, key)?;
        let meta = match &found {
            Found::Typed(object) => object.meta(),
            Found::Dynamic(object, _) => &object.metadata,
        };
        Some((
            meta.uid.clone()?,
            meta.resource_version.clone().unwrap_or_default(),
        ))
    }

    /// The cached object `node` should hold under `key`, if any: what [`Desired::current`] and
    /// [`Desired::version`] both read, so they never disagree.
    fn found(&self, node: &str, key: &ObjectKey) -> Option<Found<'_>> {
        if !self.with_index(|index| index.holds(node, key)) {
            return None;
        }
        let (name, ns) = (key.name.as_str(), key.namespace.as_str());
        let typed = |object: std::sync::Arc<dyn Cached>| Some(Found::Typed(object));
        match key.kind {
            ResourceKind::Pod => {
                let pod = self.pods.get(&ObjectRef::new(name).within(ns))?;
                let bound_here =
                    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
                bound_here.then(|| typed(pod)).flatten()
            }
            ResourceKind::ConfigMap => {
                typed(self.config_maps.get(&ObjectRef::new(name).within(ns))?)
            }
            ResourceKind::Secret => typed(self.secrets.get(&ObjectRef::new(name).within(ns))?),
            ResourceKind::RuntimeClass => typed(self.runtime_classes.get(&ObjectRef::new(name))?),
            ResourceKind::PersistentVolumeClaim => {
                typed(self.claims.get(&ObjectRef::new(name).within(ns))?)
            }
            ResourceKind::PersistentVolume => typed(self.volumes.get(&ObjectRef::new(name))?),
            ResourceKind::Device => {
                let device = self.devices.get(ns, name)?;
                let bound_here = devicecontroller::node_of(&device).as_deref() == Some(node);
                bound_here.then_some(Found::Dynamic(device, &self.devices))
            }
            ResourceKind::DeviceModel => Some(Found::Dynamic(
                self.device_models.get(ns, name)?,
                &self.device_models,
            )),
            ResourceKind::Rule => {
                let rule = self.rules.get(ns, name)?;
                let bound_here = router::source_node(&rule).as_deref() == Some(node);
                bound_here.then_some(Found::Dynamic(rule, &self.rules))
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

        let changes = index.upsert_bound(a.clone(), Some("n1".into()), refs.clone());
        assert_eq!(
            changes,
            [("n1".into(), cm.clone()), ("n1".into(), a.clone())],
            "the ConfigMap before the pod that needs it"
        );
        let changes = index.upsert_bound(b.clone(), Some("n1".into()), refs.clone());
        assert_eq!(changes, [("n1".into(), b.clone())], "already referenced");
        assert_eq!(index.referrers(&cm), ["n1"]);

        assert_eq!(index.remove_bound(&a), [("n1".into(), a.clone())]);
        assert!(index.holds("n1", &cm));
        assert_eq!(
            index.remove_bound(&b),
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
                .upsert_bound(p.clone(), None, BTreeSet::new())
                .is_empty()
        );
        assert_eq!(
            index.upsert_bound(p.clone(), Some("n2".into()), BTreeSet::new()),
            [("n2".into(), p.clone())]
        );
        assert_eq!(index.keys_for("n2"), std::slice::from_ref(&p));
        assert!(!index.holds("n1", &p));
    }

    fn device_on(
        index: &mut Index,
        name: &str,
        node: Option<&str>,
        model: &ObjectKey,
    ) -> Vec<Change> {
        index.upsert_bound(
            key(ResourceKind::Device, name),
            node.map(str::to_owned),
            BTreeSet::from([model.clone()]),
        )
    }

    #[test]
    fn a_device_goes_to_its_node_with_its_model() {
        let mut index = Index::default();
        let model = key(ResourceKind::DeviceModel, "thermometer");
        let dev = key(ResourceKind::Device, "thermo-1");
        assert_eq!(
            device_on(&mut index, "thermo-1", Some("edge-a"), &model),
            [
                ("edge-a".into(), model.clone()),
                ("edge-a".into(), dev.clone())
            ]
        );
        let mut keys = index.keys_for("edge-a");
        keys.sort();
        assert_eq!(keys, [dev.clone(), model.clone()]);
        assert!(index.holds("edge-a", &dev) && index.holds("edge-a", &model));
        assert!(!index.holds("edge-b", &dev) && !index.holds("edge-b", &model));
        assert!(device_on(&mut index, "unbound", None, &model).is_empty());
        assert_eq!(index.bound_keys(ResourceKind::Device), [dev]);
        assert!(index.bound_keys(ResourceKind::Pod).is_empty());
    }

    #[test]
    fn a_model_shared_by_devices_on_two_nodes_reaches_both_until_its_last_device_leaves() {
        let mut index = Index::default();
        let model = key(ResourceKind::DeviceModel, "thermometer");
        device_on(&mut index, "t1", Some("edge-a"), &model);
        device_on(&mut index, "t2", Some("edge-b"), &model);
        device_on(&mut index, "t3", Some("edge-b"), &model);
        let mut nodes = index.referrers(&model);
        nodes.sort();
        assert_eq!(nodes, ["edge-a", "edge-b"]);
        // A pod on the same node is its own business.
        index.upsert_bound(
            key(ResourceKind::Pod, "p"),
            Some("edge-b".into()),
            BTreeSet::new(),
        );
        let t2 = key(ResourceKind::Device, "t2");
        assert_eq!(index.remove_bound(&t2), [("edge-b".into(), t2)]);
        assert!(index.holds("edge-b", &model), "t3 still uses it");
        let t3 = key(ResourceKind::Device, "t3");
        assert_eq!(
            index.remove_bound(&t3),
            [("edge-b".into(), t3), ("edge-b".into(), model.clone())]
        );
        assert_eq!(index.referrers(&model), ["edge-a"]);
        assert_eq!(index.keys_for("edge-b"), [key(ResourceKind::Pod, "p")]);
    }

    #[test]
    fn a_device_moved_to_another_node_leaves_the_old_one_with_its_model() {
        let mut index = Index::default();
        let model = key(ResourceKind::DeviceModel, "fan");
        let dev = key(ResourceKind::Device, "fan-1");
        device_on(&mut index, "fan-1", Some("edge-a"), &model);
        let changes = device_on(&mut index, "fan-1", Some("edge-b"), &model);
        assert_eq!(
            changes,
            [
                ("edge-a".into(), dev.clone()),
                ("edge-a".into(), model.clone()),
                ("edge-b".into(), model.clone()),
                ("edge-b".into(), dev.clone()),
            ]
        );
        assert!(index.keys_for("edge-a").is_empty());
        assert!(index.holds("edge-b", &dev) && index.holds("edge-b", &model));
        // Another model: the old one leaves, the new one comes.
        let other = key(ResourceKind::DeviceModel, "fan-v2");
        let changes = device_on(&mut index, "fan-1", Some("edge-b"), &other);
        assert!(changes.contains(&("edge-b".into(), model.clone())));
        assert!(changes.contains(&("edge-b".into(), other.clone())));
        assert!(!index.holds("edge-b", &model) && index.holds("edge-b", &other));
    }

    fn dynamic(
        resource: &ApiResource,
        name: &str,
        uid: &str,
        data: serde_json::Value,
    ) -> DynamicObject {
        let mut object = DynamicObject::new(name, resource)
            .within("default")
            .data(data);
        object.types = None; // as list items may come
        object.metadata.uid = Some(uid.into());
        object.metadata.resource_version = Some("1".into());
        object
    }

    #[test]
    fn a_deleted_model_is_taken_from_the_edge_until_it_is_re_created() {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let mut devices_w = Writer::<DynamicObject>::new(devicecontroller::device_resource());
        let mut models_w = Writer::<DynamicObject>::new(devicecontroller::device_model_resource());
        let desired = Desired::new(
            kube::runtime::reflector::store().0,
            kube::runtime::reflector::store().0,
            kube::runtime::reflector::store().0,
            kube::runtime::reflector::store().0,
            VolumeStores {
                claims: kube::runtime::reflector::store().0,
                volumes: kube::runtime::reflector::store().0,
            },
            DynamicStores {
                devices: devices_w.as_reader(),
                device_models: models_w.as_reader(),
                rules: Writer::<DynamicObject>::new(router::crds::rule_resource()).as_reader(),
                rule_endpoints:
                    Writer::<DynamicObject>::new(router::crds::rule_endpoint_resource()).as_reader(),
            },
        );
        let device = dynamic(
            &desired.devices.resource,
            "thermo-1",
            "d1",
            serde_json::json!({"spec": {"nodeName": "edge-a", "deviceModelRef": {"name": "thermometer"}}}),
        );
        let model = dynamic(
            &desired.device_models.resource,
            "thermometer",
            "m1",
            serde_json::json!({"spec": {"protocol": "modbus"}}),
        );
        devices_w.apply_watcher_event(&Event::Apply(device.clone()));
        models_w.apply_watcher_event(&Event::Apply(model.clone()));
        let model_key = key(ResourceKind::DeviceModel, "thermometer");
        let device_key = key(ResourceKind::Device, "thermo-1");
        assert!(
            devicecontroller::downstream::device_changed(&desired, &device)
                .contains(&("edge-a".into(), model_key.clone()))
        );

        let sent = desired
            .current("edge-a", &model_key)
            .expect("the model goes to edge-a");
        assert_eq!(sent.uid, "m1");
        assert_eq!(sent.object["kind"], "DeviceModel");
        assert_eq!(sent.object["apiVersion"], "devices.kubeedge.io/v1beta1");
        let sent = desired
            .current("edge-a", &device_key)
            .expect("the device goes to edge-a");
        assert_eq!(sent.object["spec"]["nodeName"], "edge-a");
        assert!(desired.current("edge-b", &device_key).is_none());
        assert!(desired.current("edge-b", &model_key).is_none());
        assert_eq!(desired.objects_for("edge-a").len(), 2);
        // The resync plan's versions, read from metadata, are those of what would be sent.
        for planned in desired.objects_for("edge-a") {
            let sent = desired.current("edge-a", &planned.key).expect("sent");
            assert_eq!(
                (planned.uid, planned.resource_version),
                (sent.uid, sent.resource_version)
            );
        }

        // Deleted: still referenced (the watch marks edge-a), but nothing to send, so the
        // session deletes the edge's copy.
        models_w.apply_watcher_event(&Event::Delete(model.clone()));
        assert_eq!(desired.with_index(|i| i.referrers(&model_key)), ["edge-a"]);
        assert!(desired.current("edge-a", &model_key).is_none());
        assert_eq!(desired.objects_for("edge-a").len(), 1);

        models_w.apply_watcher_event(&Event::Apply(model));
        assert!(desired.current("edge-a", &model_key).is_some());
    }
}
