//! MetaManager: the objects the cloud sent for this node, and who hears of their changes.
//!
//! KubeEdge's MetaManager sits between EdgeHub and the edge's modules: what the cloud sends is
//! stored, then handed on. Here it owns the objects in two places: the `objects` table of the
//! edge's database ([`MetaStore`], so that an edge keeps and restarts its pods with the cloud
//! gone) and a copy in memory, read by everyone else. The copy is what makes a change cheap:
//! a reader lists what it needs without touching SQLite, and each object is parsed into its
//! Rust type once per version ([`Object::typed`]), not at every reconcile.
//!
//! Readers subscribe to the kinds they serve ([`MetaManager::subscribe`]) and are told which
//! keys changed: Edged pods and what they reference, DeviceTwin Devices and DeviceModels,
//! EventBus Rules. A subscription gathers keys until it is read, so a slow reader gets one
//! wake-up with everything that changed meanwhile and no change is ever dropped.

mod subscription;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use serde::de::DeserializeOwned;
use wedge_core::protocol::messages::HeldObject;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use crate::store::{Applied, Database, MetaStore, Pending, StoreError};
use subscription::Subscriber;
pub use subscription::Subscription;

/// An object parsed into one type, or why it does not parse.
type Parsed = Result<Arc<dyn Any + Send + Sync>, String>;

/// An object as MetaManager holds it.
pub struct Object {
    /// Its key.
    pub key: ObjectKey,
    /// Its uid.
    pub uid: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// The object, as the cloud sent it.
    pub object: serde_json::Value,
    /// The object in the Rust types it was read as, each parsed at its first [`Object::typed`].
    typed: Mutex<Vec<(TypeId, Parsed)>>,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("key", &self.key)
            .field("uid", &self.uid)
            .field("resource_version", &self.resource_version)
            .finish_non_exhaustive()
    }
}

impl Object {
    fn new(
        key: ObjectKey,
        uid: String,
        resource_version: String,
        object: serde_json::Value,
    ) -> Self {
        Self {
            key,
            uid,
            resource_version,
            object,
            typed: Mutex::default(),
        }
    }

    /// The object as a `T`, parsed once per version and type: every reader after the first
    /// gets the same `Arc`. One object may be read as several types (a Secret as
    /// `k8s_openapi`'s `Secret` by EventBus's logins, as its decoded data by Edged's volumes);
    /// each is parsed once. An object that does not parse as `T` says why, the same way each
    /// time, until a new version comes.
    pub fn typed<T: DeserializeOwned + Send + Sync + 'static>(&self) -> Result<Arc<T>, String> {
        let id = TypeId::of::<T>();
        let mut views = self.typed.lock().unwrap_or_else(PoisonError::into_inner);
        let parsed = match views.iter().find(|(t, _)| *t == id) {
            Some((_, parsed)) => parsed.clone(),
            None => {
                let parsed = T::deserialize(&self.object)
                    .map(|t| Arc::new(t) as Arc<dyn Any + Send + Sync>)
                    .map_err(|e| e.to_string());
                views.push((id, parsed.clone()));
                parsed
            }
        };
        drop(views);
        // Found by `T`'s TypeId, so always a `T`.
        parsed?.downcast::<T>().map_err(|_| {
            let wanted = std::any::type_name::<T>();
            format!("{} was stored as another type than {wanted}", self.key)
        })
    }
}

/// An object as MetaManager would hold it, for other modules' unit tests.
#[cfg(test)]
pub(crate) fn held(
    kind: ResourceKind,
    namespace: &str,
    name: &str,
    object: serde_json::Value,
) -> Arc<Object> {
    Arc::new(Object::new(
        ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        format!("uid-{name}"),
        "1".to_owned(),
        object,
    ))
}

/// MetaManager; cheap to clone.
#[derive(Clone)]
pub struct MetaManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: MetaStore,
    objects: RwLock<BTreeMap<ObjectKey, Arc<Object>>>,
    subscribers: Mutex<Vec<Weak<Subscriber>>>,
}

impl std::fmt::Debug for MetaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaManager").finish_non_exhaustive()
    }
}

impl MetaManager {
    /// MetaManager over `db`'s objects, read into memory now. A row that cannot be read (damaged,
    /// or under a key no longer configured) is logged and left out: the edge does not hold it,
    /// so the cloud's resync sends it again.
    pub fn load(db: &Database) -> Result<Self, StoreError> {
        let store = db.meta();
        let mut objects = BTreeMap::new();
        for kind in ResourceKind::DOWNSTREAM {
            for stored in store.list(kind)? {
                let object = Object::new(
                    stored.key.clone(),
                    stored.uid,
                    stored.resource_version,
                    stored.object,
                );
                objects.insert(stored.key, Arc::new(object));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                objects: RwLock::new(objects),
                subscribers: Mutex::default(),
            }),
        })
    }

    /// Stores `object` unless the edge holds this version (or a newer one) of the same uid;
    /// then the copy in memory is replaced and the subscribers of its kind are told. Stored
    /// first: what a reader sees survives a crash. The copy changes on the database's writer
    /// thread right after the commit, in the order of the writes, so two applies of one key
    /// racing leave memory as they leave the disk.
    pub async fn apply(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        object: &serde_json::Value,
    ) -> Result<Applied, StoreError> {
        self.queue_apply(key, uid, resource_version, object)
            .await?
            .wait()
            .await
    }

    /// As [`MetaManager::apply`], returning once the write is queued (behind those queued
    /// before it, applied after them), with its answer to await: objects received together
    /// (a resync) are queued together and share a commit.
    pub(crate) async fn queue_apply(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        object: &serde_json::Value,
    ) -> Result<Pending<Applied>, StoreError> {
        let held = Arc::new(Object::new(
            key.clone(),
            uid.to_owned(),
            resource_version.to_owned(),
            object.clone(),
        ));
        let inner = Arc::downgrade(&self.inner);
        let value = Arc::new(object.clone());
        self.inner
            .store
            .queue_apply_then(
                key.clone(),
                uid.to_owned(),
                resource_version.to_owned(),
                value,
                move |applied| {
                    if applied == Applied::Unchanged {
                        return;
                    }
                    if let Some(inner) = inner.upgrade() {
                        let key = held.key.clone();
                        inner.write().insert(key.clone(), held);
                        inner.changed(&key);
                    }
                },
            )
            .await
    }

    /// Forgets an object, only if it has `uid` (when given). Returns whether one was removed.
    /// Memory follows the disk as in [`MetaManager::apply`].
    pub async fn delete(&self, key: &ObjectKey, uid: Option<&str>) -> Result<bool, StoreError> {
        self.queue_delete(key, uid).await?.wait().await
    }

    /// As [`MetaManager::delete`], returning once the write is queued, with its answer to
    /// await ([`MetaManager::queue_apply`]).
    pub(crate) async fn queue_delete(
        &self,
        key: &ObjectKey,
        uid: Option<&str>,
    ) -> Result<Pending<bool>, StoreError> {
        let inner = Arc::downgrade(&self.inner);
        let gone = key.clone();
        self.inner
            .store
            .queue_delete_then(key.clone(), uid.map(str::to_owned), move |removed| {
                if removed && let Some(inner) = inner.upgrade() {
                    inner.write().remove(&gone);
                    inner.changed(&gone);
                }
            })
            .await
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.read().get(key).cloned()
    }

    /// One object in its Rust type: `None` when not held, an error when it does not parse.
    pub fn get_typed<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &ObjectKey,
    ) -> Option<Result<Arc<T>, String>> {
        self.get(key).map(|o| o.typed())
    }

    /// Every object of a kind, by namespace and name.
    pub fn list(&self, kind: ResourceKind) -> Vec<Arc<Object>> {
        let first = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.read()
            .range(first..)
            .take_while(|(k, _)| k.kind == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// What the edge holds, for the hello: with each pod's, Device's and Rule's view, so that
    /// the cloud does not send again what changed only in their status.
    pub fn held(&self) -> Vec<HeldObject> {
        self.read()
            .values()
            .map(|o| HeldObject {
                kind: o.key.kind,
                namespace: o.key.namespace.clone(),
                name: o.key.name.clone(),
                uid: o.uid.clone(),
                resource_version: o.resource_version.clone(),
                view: wedge_core::protocol::sync::edge_view(o.key.kind, o.object.clone()),
            })
            .collect()
    }

    /// Tells the returned subscription which keys of `kinds` change from now on.
    pub fn subscribe(&self, kinds: &[ResourceKind]) -> Subscription {
        let (subscription, subscriber) = Subscription::new(kinds);
        let mut subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.push(Arc::downgrade(&subscriber));
        subscription
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ObjectKey, Arc<Object>>> {
        self.inner.read()
    }
}

impl Inner {
    fn changed(&self, key: &ObjectKey) {
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for subscriber in subscribers.iter().filter_map(Weak::upgrade) {
            subscriber.changed(key);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ObjectKey, Arc<Object>>> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ObjectKey, Arc<Object>>> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
