//! DeviceTwin: every device bound to this node, both sides of each property's twin, and the
//! device's state, kept in SQLite and reported to the cloud as the Device's status.
//!
//! Who owns what (the conflict rule):
//! - **desired** belongs to the cloud. A change of a Device's `spec.properties[].desired.value`
//!   becomes the property's desired value, once (the spec value last applied is stored, so a
//!   resync or restart does not apply it again). Apps granted `devices.wedge.io/write` may set a
//!   desired value at the edge, which acts at once, offline too, and holds until the cloud's spec
//!   changes. The status's `observedDesired` shows the value the edge acts on.
//! - **reported** belongs to the device: its mapper (or the device itself over MQTT) reports
//!   values; apps and the cloud never set them.
//!
//! Every change is stored before it is announced, and memory changes only once its rows are
//! committed: a report's rows are made under DeviceTwin's lock and queued for the database's
//! writer thread, and its settle hook applies them to memory and announces the change on that
//! thread once they are committed, in queue order. A device's writes are put in order when
//! they are queued ([`staged`]): its write guard is held while a report is made and queued, not
//! across the commit, so a device can have many reports in flight sharing one commit; each is
//! made on top of those before it (versions never repeat), memory ends as the disk does, and a
//! report the database refuses is refused alone. The device's whole status then goes into the
//! outbox under one key, written by [`DeviceTwin::run`] as soon as it wakes (a burst of changes
//! costs one outbox write, not one each): changes made while the cloud is away coalesce into the
//! newest status, which reaches the cloud after reconnect, once. A status not yet written when
//! the process dies is rebuilt from the stored twins at the next start.
//!
//! Producers that must answer each write (KubeEdge's MQTT requests, see
//! [`crate::eventbus::twin_api`]) queue them in arrival order and await later:
//! [`DeviceTwin::queue_twin_update`] resolves to the document its settle hook took right after
//! its own values were in memory, [`DeviceTwin::queue_state`] stages a state as values are, and
//! [`DeviceTwin::queue_read`] runs a read on the writer thread between the writes queued before
//! and after it; so each answer is the one a request awaited before the next gets.

mod report;
mod staged;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use async_trait::async_trait;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wedge_core::backend::{TwinBackend, TwinBackendError};
use wedge_core::device::{self, Device, DeviceModel};
use wedge_core::protocol::{ObjectKey, Operation, ResourceKind};
use wedge_core::twin::{
    AccessMode, DeviceState, StampedValue, TwinChange, TwinProperty, TwinSide, TwinValue,
};

use crate::metamanager::{MetaManager, Subscription};
use crate::store::{Database, Outbox, StoreError, StoredTwin, TwinStore};

/// One device as DeviceTwin holds it.
#[derive(Debug, Clone)]
struct Entry {
    namespace: String,
    uid: String,
    device: Device,
    model: DeviceModel,
    twin: wedge_core::twin::DeviceTwin,
    /// What is committed: memory follows the disk.
    properties: BTreeMap<String, StoredTwin>,
    /// What the device's writes in flight set, on top of `properties`.
    staged: staged::Staged,
    last_online: Option<String>,
}

impl Entry {
    /// `property`'s `side` as the next write finds it: the last value in flight, else the
    /// committed one.
    fn current(&self, side: TwinSide, property: &str) -> Option<StampedValue> {
        if let Some(value) = self.staged.get(side, property) {
            return Some(value.clone());
        }
        let stored = self.properties.get(property)?;
        match side {
            TwinSide::Reported => stored.twin.reported.clone(),
            TwinSide::Desired => stored.twin.desired.clone(),
        }
    }
}

/// A device bound to this node, with its model: what mappers are started from.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundDevice {
    /// The Device.
    pub device: Device,
    /// Its DeviceModel.
    pub model: DeviceModel,
}

/// The device twin service; cheap to clone.
#[derive(Clone)]
pub struct DeviceTwin {
    inner: Arc<Inner>,
}

struct Inner {
    meta: MetaManager,
    twins: TwinStore,
    outbox: Outbox,
    /// Which Devices and DeviceModels changed: made before the first load, taken by `run`.
    subscription: Mutex<Option<Subscription>>,
    devices: Mutex<BTreeMap<String, Entry>>,
    changes: broadcast::Sender<TwinChange>,
    /// Bumped whenever the set of devices or a device's spec or model changes.
    membership: watch::Sender<u64>,
    /// Devices whose status changed since it was last put in the outbox.
    dirty: Mutex<BTreeSet<String>>,
    /// Wakes `run` to write the dirty statuses.
    status_due: Notify,
    /// Each device's write guard: held while a device's rows are made and queued (a reload:
    /// until they are in memory).
    writes: WriteGuards,
    /// Numbers the writes of reports and desired values ([`staged`]).
    next_write: AtomicU64,
    /// Held while statuses are made and queued, so that an older one never follows a newer.
    flushing: tokio::sync::Mutex<()>,
}

impl Inner {
    fn mark_dirty(&self, device: &str) {
        let new = self
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_owned());
        if new {
            self.status_due.notify_one();
        }
    }
}

fn unavailable(e: StoreError) -> TwinBackendError {
    TwinBackendError::Unavailable(e.to_string())
}

fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

fn parse_state(text: &str) -> DeviceState {
    device::parse_state(text).unwrap_or(DeviceState::Unknown)
}

/// A device's write guard, held. Its entry leaves the map when no one else holds or waits for
/// it: device names come from outside (a report names any device), and the map must not grow
/// with every name ever seen.
struct WriteGuard<'a> {
    writes: &'a WriteGuards,
    device: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Each device's write guard, by name.
type WriteGuards = Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>;

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.held.take());
        // Under the map's lock no one can take the mutex from it: only the map holds it now
        // unless another task already took it to wait.
        if writes
            .get(&self.device)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            writes.remove(&self.device);
        }
    }
}

impl DeviceTwin {
    /// DeviceTwin over the edge's database, loaded from the Devices and DeviceModels `meta`
    /// holds.
    pub async fn new(db: &Database, meta: &MetaManager) -> Self {
        let subscription = meta.subscribe(&[ResourceKind::Device, ResourceKind::DeviceModel]);
        let twin = Self {
            inner: Arc::new(Inner {
                meta: meta.clone(),
                twins: db.twins(),
                outbox: db.outbox(),
                subscription: Mutex::new(Some(subscription)),
                devices: Mutex::default(),
                changes: broadcast::channel(4096).0,
                membership: watch::channel(0).0,
                dirty: Mutex::default(),
                status_due: Notify::new(),
                writes: Mutex::default(),
                next_write: AtomicU64::new(1),
                flushing: tokio::sync::Mutex::const_new(()),
            }),
        };
        twin.reload().await;
        twin
    }

    /// Waits for `device`'s write guard.
    async fn guard(&self, device: &str) -> WriteGuard<'_> {
        let mutex = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(device.to_owned())
            .or_default()
            .clone();
        WriteGuard {
            writes: &self.inner.writes,
            device: device.to_owned(),
            held: Some(mutex.lock_owned().await),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows MetaManager until `shutdown` (each change of Devices or DeviceModels reloads) and
    /// puts changed statuses in the outbox.
    pub async fn run(self, shutdown: CancellationToken) {
        let taken = self
            .inner
            .subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut changes) = taken else {
            tracing::error!("DeviceTwin runs once; a second run does nothing");
            return;
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = changes.changed() => self.reload().await,
                () = self.inner.status_due.notified() => self.flush_statuses().await,
            }
        }
        self.flush_statuses().await;
    }

    /// Puts the status of every device changed since the last call in the outbox.
    pub async fn flush_statuses(&self) {
        let _flushing = self.inner.flushing.lock().await;
        let dirty = std::mem::take(
            &mut *self
                .inner
                .dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if dirty.is_empty() {
            return;
        }
        let statuses: Vec<(ObjectKey, serde_json::Value)> = {
            let devices = self.lock();
            dirty
                .iter()
                .filter_map(|name| devices.get(name).map(|entry| status_report(name, entry)))
                .collect()
        };
        for (key, payload) in statuses {
            self.inner
                .outbox
                .queue(&key, Operation::Update, &payload)
                .await;
        }
    }

    fn mark_dirty(&self, device: &str) {
        self.inner.mark_dirty(device);
    }

    /// Every change from now on, in the order they were made. A receiver that falls behind
    /// loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<TwinChange> {
        self.inner.changes.subscribe()
    }

    /// A counter bumped whenever devices come, go, or change spec or model.
    pub fn membership(&self) -> watch::Receiver<u64> {
        self.inner.membership.subscribe()
    }

    /// The devices bound to this node, by name.
    pub fn bound(&self) -> Vec<BoundDevice> {
        self.lock()
            .values()
            .map(|e| BoundDevice {
                device: e.device.clone(),
                model: e.model.clone(),
            })
            .collect()
    }

    /// The names of the devices bound to this node.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Both sides of every property of `device`, in model order.
    pub fn document(&self, device: &str) -> Result<Document, TwinBackendError> {
        let devices = self.lock();
        let entry = devices
            .get(device)
            .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
        Ok(document_of(entry, None))
    }

    /// Reads MetaManager's Devices and DeviceModels again: new devices get twins (their stored
    /// values, if they had some), gone ones are forgotten, and changed spec desired values apply.
    pub async fn reload(&self) {
        let meta = &self.inner.meta;
        let models: BTreeMap<(String, String), Arc<DeviceModel>> = meta
            .list(ResourceKind::DeviceModel)
            .into_iter()
            .filter_map(|o| match o.typed::<DeviceModel>() {
                Ok(m) => Some(((o.key.namespace.clone(), o.key.name.clone()), m)),
                Err(e) => {
                    tracing::warn!(model = o.key.name, error = %e, "a stored DeviceModel does not parse");
                    None
                }
            })
            .collect();
        let mut wanted: BTreeMap<String, Entry> = BTreeMap::new();
        for o in meta.list(ResourceKind::Device) {
            let device: Device = match o.typed::<Device>() {
                Ok(d) => Device::clone(&d),
                Err(e) => {
                    tracing::warn!(device = o.key.name, error = %e, "a stored Device does not parse");
                    continue;
                }
            };
            let model_key = (
                o.key.namespace.clone(),
                device.spec.device_model_ref.name.clone(),
            );
            let Some(model) = models.get(&model_key) else {
                tracing::debug!(
                    device = o.key.name,
                    model = model_key.1,
                    "waiting for the device's model"
                );
                continue;
            };
            let twin = match device.twin(model, DeviceState::Unknown) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(device = o.key.name, error = %e, "the device cannot have a twin");
                    continue;
                }
            };
            if let Some(other) = wanted.get(&o.key.name) {
                tracing::warn!(
                    device = o.key.name,
                    namespace = o.key.namespace,
                    kept = other.namespace,
                    "two devices of one name on this node; twins are named by device, keeping the first"
                );
                continue;
            }
            wanted.insert(
                o.key.name.clone(),
                Entry {
                    namespace: o.key.namespace.clone(),
                    uid: o.uid.clone(),
                    device,
                    model: DeviceModel::clone(model),
                    twin,
                    properties: BTreeMap::new(),
                    staged: staged::Staged::default(),
                    last_online: None,
                },
            );
        }
        self.apply_membership(wanted).await;
    }

    async fn apply_membership(&self, wanted: BTreeMap<String, Entry>) {
        // The write guard of every device that may change, in name order (one order for all:
        // no two reloads wait for each other), so no report is between making and applying
        // its rows meanwhile.
        let names: BTreeSet<String> = self.lock().keys().chain(wanted.keys()).cloned().collect();
        let mut guards = Vec::with_capacity(names.len());
        for name in &names {
            guards.push(self.guard(name).await);
        }
        // Reports queued before the guards were taken settle first: memory is then what the
        // disk holds, and the rows below are made from it.
        if let Err(e) = self.inner.twins.settled().await {
            tracing::debug!(error = %e, "waiting for the reports in flight");
        }
        let mut changed_membership = false;
        let mut announce = Vec::new();
        let mut forget = Vec::new();
        let mut rows: Vec<(String, Vec<(String, StoredTwin)>)> = Vec::new();
        {
            let mut devices = self.lock();
            let gone: Vec<String> = devices
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect();
            for name in gone {
                devices.remove(&name);
                changed_membership = true;
                tracing::info!(device = name, "device left this node");
                forget.push(name);
            }
            for (name, mut entry) in wanted {
                let existing = devices.get(&name);
                let same = existing.is_some_and(|e| {
                    e.uid == entry.uid && e.device == entry.device && e.model == entry.model
                });
                if same {
                    continue;
                }
                changed_membership = true;
                match existing {
                    // Same device, new spec or model: keep its values and state.
                    Some(e) if e.uid == entry.uid => {
                        entry.properties = e.properties.clone();
                        entry.staged = e.staged.clone();
                        entry.twin.state = e.twin.state;
                        entry.last_online = e.last_online.clone();
                    }
                    _ => {
                        match self.inner.twins.load(&name) {
                            Ok(p) => entry.properties = p,
                            Err(e) => {
                                tracing::warn!(device = name, error = %e, "cannot read the device's twins")
                            }
                        }
                        if let Ok(Some((state, last))) = self.inner.twins.state(&name) {
                            entry.twin.state = parse_state(&state);
                            entry.last_online = last;
                        }
                        tracing::info!(
                            device = name,
                            model = entry.twin.model,
                            "device bound to this node"
                        );
                    }
                }
                let (changes, spec_rows) = apply_spec_desired(&name, &mut entry);
                announce.extend(changes);
                if !spec_rows.is_empty() {
                    rows.push((name.clone(), spec_rows));
                }
                self.mark_dirty(&name);
                devices.insert(name, entry);
            }
        }
        for name in forget {
            if let Err(e) = self.inner.twins.forget(&name).await {
                tracing::warn!(device = name, error = %e, "cannot forget the device's twins");
            }
        }
        // Unlike a report, the cloud's value acts even when its row cannot be stored: its
        // source, the Device's spec, is in MetaManager, so a restart only applies it again
        // (one version later), where holding it back would ignore the cloud until then.
        for (name, spec_rows) in rows {
            if let Err(e) = self.inner.twins.save_all(&name, spec_rows).await {
                tracing::warn!(device = name, error = %e, "cannot store a desired value");
            }
        }
        drop(guards);
        self.flush_statuses().await;
        for change in announce {
            let _ = self.inner.changes.send(change);
        }
        if changed_membership {
            self.inner.membership.send_modify(|g| *g += 1);
        }
    }
}

/// Applies the spec's desired values that changed since last applied. Returns the changes and
/// the rows to store.
fn apply_spec_desired(
    name: &str,
    entry: &mut Entry,
) -> (Vec<TwinChange>, Vec<(String, StoredTwin)>) {
    let mut changes = Vec::new();
    let mut rows = Vec::new();
    for model in entry.twin.properties.clone() {
        let Some(text) = entry.device.desired(&model.name).map(str::to_owned) else {
            continue;
        };
        let stored = entry.properties.entry(model.name.clone()).or_default();
        if stored.spec_desired.as_deref() == Some(text.as_str()) {
            continue;
        }
        stored.spec_desired = Some(text.clone());
        let checked = device::parse_value(&text, model.kind)
            .map_err(|e| e.to_string())
            .and_then(|v| model.check(&v).map(|()| v).map_err(|e| e.to_string()));
        match (checked, model.access_mode) {
            (Ok(value), AccessMode::ReadWrite) => {
                let previous = stored.twin.desired.clone();
                let current = StampedValue {
                    value,
                    timestamp_ms: now_ms(),
                    version: previous.as_ref().map_or(1, |p| p.version + 1),
                };
                stored.twin.desired = Some(current.clone());
                changes.push(TwinChange {
                    device: name.to_owned(),
                    property: model.name.clone(),
                    side: TwinSide::Desired,
                    previous,
                    current,
                });
            }
            (Ok(_), AccessMode::ReadOnly) => tracing::warn!(
                device = name,
                property = model.name,
                "the Device's spec sets a desired value on a read-only property; ignored"
            ),
            (Err(e), _) => tracing::warn!(
                device = name,
                property = model.name,
                error = e,
                "the Device's spec sets a desired value that does not fit its model; ignored"
            ),
        }
        rows.push((model.name.clone(), stored.clone()));
    }
    (changes, rows)
}

/// A device's model and both sides of its properties (all, or those a request names), in
/// model order.
pub type Document = (wedge_core::twin::DeviceTwin, Vec<(String, TwinProperty)>);

/// `entry`'s document: every property, or only those `only` names.
fn document_of(entry: &Entry, only: Option<&[String]>) -> Document {
    let props = entry
        .twin
        .properties
        .iter()
        .filter(|p| only.is_none_or(|o| o.contains(&p.name)))
        .map(|p| {
            let twin = entry
                .properties
                .get(&p.name)
                .map(|s| s.twin.clone())
                .unwrap_or_default();
            (p.name.clone(), twin)
        })
        .collect();
    (entry.twin.clone(), props)
}

/// Where a settled write's document goes: the properties to show, and the answer's sender.
type DocumentAnswer = (Vec<String>, oneshot::Sender<Document>);

/// A queued write's values, settled into memory on the writer thread ([`staged`]). Its slots
/// in the device's staged values are given back however the write ends: settled, or dropped
/// unrun (the database closed).
struct Settle {
    twin: Weak<Inner>,
    device: String,
    write: u64,
    /// The values in the write's order (a property named twice, twice), each with its side.
    set: Vec<(TwinSide, String, StampedValue)>,
    /// A twin update's answer: the document of the properties it names, taken right after
    /// its values are in memory and before any later write's are (what a request answered
    /// before the next is made would show).
    answer: Option<DocumentAnswer>,
}

impl Settle {
    /// The write's group has settled: `stored` says whether this write is on the disk.
    fn settled(mut self, stored: bool) {
        let Some(inner) = self.twin.upgrade() else {
            return;
        };
        let set = std::mem::take(&mut self.set);
        let mut changes = Vec::new();
        {
            let mut devices = inner.devices.lock().unwrap_or_else(PoisonError::into_inner);
            // Gone meanwhile: its rows are stored, and come back if it binds again.
            let Some(entry) = devices.get_mut(&self.device) else {
                return;
            };
            for (side, property, _) in &set {
                entry.staged.unstage(*side, property, self.write);
            }
            if !stored {
                return;
            }
            let mut reported = false;
            for (side, property, current) in set {
                let row = entry.properties.entry(property.clone()).or_default();
                let slot = match side {
                    TwinSide::Reported => &mut row.twin.reported,
                    TwinSide::Desired => &mut row.twin.desired,
                };
                let previous = slot.replace(current.clone());
                reported |= side == TwinSide::Reported;
                changes.push(TwinChange {
                    device: self.device.clone(),
                    property,
                    side,
                    previous,
                    current,
                });
            }
            if reported && entry.twin.state == DeviceState::Online {
                entry.last_online = Some(jiff::Timestamp::now().to_string());
            }
            if let Some((names, answer)) = self.answer.take() {
                let _ = answer.send(document_of(entry, Some(&names)));
            }
        }
        inner.mark_dirty(&self.device);
        for change in changes {
            let _ = inner.changes.send(change);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        // Not settled (the write never ran): its slots go, or they would hold the device's
        // versions ahead of the disk for good.
        if self.set.is_empty() {
            return;
        }
        let Some(inner) = self.twin.upgrade() else {
            return;
        };
        let mut devices = inner.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = devices.get_mut(&self.device) {
            for (side, property, _) in &self.set {
                entry.staged.unstage(*side, property, self.write);
            }
        }
    }
}

/// A queued state write, settled into memory on the writer thread as [`Settle`] settles values.
struct SettleState {
    twin: Weak<Inner>,
    device: String,
    write: u64,
    state: DeviceState,
    last_online: Option<String>,
}

impl SettleState {
    fn settled(self, stored: bool) {
        let Some(inner) = self.twin.upgrade() else {
            return;
        };
        {
            let mut devices = inner.devices.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = devices.get_mut(&self.device) else {
                return;
            };
            entry.staged.unstage_state(self.write);
            if !stored {
                return;
            }
            entry.twin.state = self.state;
            entry.last_online = self.last_online.clone();
        }
        inner.mark_dirty(&self.device);
    }
}

impl Drop for SettleState {
    fn drop(&mut self) {
        // Settled or not, its staged state goes (a no-op once settled).
        let Some(inner) = self.twin.upgrade() else {
            return;
        };
        let mut devices = inner.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = devices.get_mut(&self.device) {
            entry.staged.unstage_state(self.write);
        }
    }
}

/// The outbox entry of `entry`'s status.
fn status_report(name: &str, entry: &Entry) -> (ObjectKey, serde_json::Value) {
    let key = ObjectKey {
        kind: ResourceKind::DeviceStatus,
        namespace: entry.namespace.clone(),
        name: name.to_owned(),
    };
    let status = report::status(entry);
    (key, serde_json::json!({"uid": entry.uid, "status": status}))
}

impl DeviceTwin {
    /// Sets one side of properties, stores it, queues the status and announces the change.
    async fn update(
        &self,
        device: &str,
        values: Vec<(String, TwinValue)>,
        side: TwinSide,
    ) -> Result<Vec<u64>, TwinBackendError> {
        let values = values.into_iter().map(|(p, v)| (side, p, v)).collect();
        let (versions, stored) = self.queue_update(device, values, None).await?;
        stored.await?;
        Ok(versions)
    }

    /// Checks `values` (each on its side) against the device's model and queues them for the
    /// database as one write, behind the device's writes queued before ([`staged`]). Returns
    /// their versions once queued, and what resolves once they are stored: applied to memory,
    /// announced and the status marked to be sent, on the writer thread, before it does. With
    /// `answer`, the document of the properties it names goes there once the values are in
    /// memory.
    async fn queue_update(
        &self,
        device: &str,
        values: Vec<(TwinSide, String, TwinValue)>,
        answer: Option<DocumentAnswer>,
    ) -> Result<
        (
            Vec<u64>,
            impl Future<Output = Result<(), TwinBackendError>> + Send + 'static,
        ),
        TwinBackendError,
    > {
        let guard = self.guard(device).await;
        let write = self.inner.next_write.fetch_add(1, Ordering::Relaxed);
        let mut versions = Vec::with_capacity(values.len());
        let (rows, set) = {
            let mut devices = self.lock();
            let entry = devices
                .get_mut(device)
                .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
            // Check everything first: a write is taken whole or refused whole.
            for (side, property, value) in &values {
                let model = entry.twin.property(property).ok_or_else(|| {
                    TwinBackendError::NoSuchProperty {
                        device: device.to_owned(),
                        property: property.clone(),
                    }
                })?;
                if *side == TwinSide::Desired && model.access_mode == AccessMode::ReadOnly {
                    return Err(TwinBackendError::ReadOnly(property.clone()));
                }
                model.check(value)?;
            }
            // The values are made on top of what is committed and in flight, stored in one
            // write, and become the twin in memory only once that write is committed: a failed
            // write leaves memory and disk as they were, together.
            let now = now_ms();
            let mut set: Vec<(TwinSide, String, StampedValue)> = Vec::with_capacity(values.len());
            for (side, property, value) in values {
                let version = entry
                    .current(side, &property)
                    .map_or(1, |previous| previous.version + 1);
                let current = StampedValue {
                    value,
                    timestamp_ms: now,
                    version,
                };
                entry.staged.stage(side, &property, write, current.clone());
                versions.push(version);
                set.push((side, property, current));
            }
            // One row per property and side, with its last value when the write names it twice.
            let mut rows: Vec<(TwinSide, String, StampedValue)> = Vec::with_capacity(set.len());
            for (side, property, value) in &set {
                match rows.iter_mut().find(|(s, p, _)| s == side && p == property) {
                    Some(row) => row.2 = value.clone(),
                    None => rows.push((*side, property.clone(), value.clone())),
                }
            }
            (rows, set)
        };
        let settle = Settle {
            twin: Arc::downgrade(&self.inner),
            device: device.to_owned(),
            write,
            set,
            answer,
        };
        let queued = self
            .inner
            .twins
            .queue_sides(device, rows, move |result, _| {
                settle.settled(result.is_ok());
            })
            .await;
        // The device's next write is made on top of this one and queued behind it from here.
        drop(guard);
        let pending = queued.map_err(unavailable)?;
        Ok((versions, async move {
            pending.wait().await.map_err(unavailable)
        }))
    }

    /// Values the device reported (from its mapper, or itself over MQTT), checked against the
    /// model and taken whole or refused whole.
    pub async fn report(
        &self,
        device: &str,
        values: Vec<(String, TwinValue)>,
    ) -> Result<(), TwinBackendError> {
        self.update(device, values, TwinSide::Reported)
            .await
            .map(drop)
    }

    /// Queues values the device reported, as [`DeviceTwin::report`] stores them, and returns
    /// once they are queued behind the device's reports before: what is returned resolves once
    /// they are stored (and in memory). A device whose reports come faster than a commit (a
    /// mapper's burst, an MQTT stream) queues the next without waiting, and they share commits.
    pub async fn queue_report(
        &self,
        device: &str,
        values: Vec<(String, TwinValue)>,
    ) -> Result<impl Future<Output = Result<(), TwinBackendError>> + Send + 'static, TwinBackendError>
    {
        let values = values
            .into_iter()
            .map(|(p, v)| (TwinSide::Reported, p, v))
            .collect();
        let (_, stored) = self.queue_update(device, values, None).await?;
        Ok(stored)
    }

    /// Queues a twin update as KubeEdge's `twin/update` carries it: values the device reported
    /// and desired values set at the edge, checked against the model and stored as one write,
    /// taken whole or refused whole, behind the device's writes queued before. Returns once
    /// queued; what is returned resolves, once the write is stored, to the document of the
    /// `named` properties as that write left them (before any write queued after it is in
    /// memory): the answer a request gets when each is answered before the next is made.
    pub async fn queue_twin_update(
        &self,
        device: &str,
        reported: Vec<(String, TwinValue)>,
        desired: Vec<(String, TwinValue)>,
        named: Vec<String>,
    ) -> Result<
        impl Future<Output = Result<Document, TwinBackendError>> + Send + 'static,
        TwinBackendError,
    > {
        let values = reported
            .into_iter()
            .map(|(p, v)| (TwinSide::Reported, p, v))
            .chain(desired.into_iter().map(|(p, v)| (TwinSide::Desired, p, v)))
            .collect();
        let (tx, rx) = oneshot::channel();
        let (_, stored) = self.queue_update(device, values, Some((named, tx))).await?;
        let device = device.to_owned();
        Ok(async move {
            stored.await?;
            // Stored, but the device left this node before its values were in memory.
            rx.await.map_err(|_| TwinBackendError::NoSuchDevice(device))
        })
    }

    /// Runs `read` once every write to the database queued before this call has settled (its
    /// values in memory, or refused), and before any write queued after it settles, on the
    /// database's writer thread: what `read` sees of DeviceTwin is what a caller that awaited
    /// each write before making the next would see. Returns once queued, with what resolves
    /// to `read`'s result (`None` only if `read` panicked). When the database takes no more
    /// writes (closed), `read` runs when that is awaited.
    pub async fn queue_read<T, F>(
        &self,
        read: F,
    ) -> impl Future<Output = Option<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&DeviceTwin) -> T + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(Some(read)));
        let (tx, rx) = oneshot::channel();
        let hook = {
            let slot = slot.clone();
            let twin = Arc::downgrade(&self.inner);
            move || {
                let Some(inner) = twin.upgrade() else {
                    return;
                };
                let read = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(read) = read {
                    let _ = tx.send(read(&DeviceTwin { inner }));
                }
            }
        };
        let queued = self.inner.twins.queue_after(hook).await;
        let twin = self.clone();
        async move {
            if let Ok(pending) = queued {
                // Its result is that of its group's commit, which a read does not depend on.
                let _ = pending.wait().await;
                if let Ok(value) = rx.await {
                    return Some(value);
                }
            }
            let read = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            read.map(|read| read(&twin))
        }
    }

    /// A desired value set at the edge (an app, or an MQTT client).
    pub async fn set_desired_value(
        &self,
        device: &str,
        property: &str,
        value: TwinValue,
    ) -> Result<u64, TwinBackendError> {
        let versions = self
            .update(
                device,
                vec![(property.to_owned(), value)],
                TwinSide::Desired,
            )
            .await?;
        Ok(versions.first().copied().unwrap_or(0))
    }

    /// Parses KubeEdge's string form of a value for `device`'s `property`.
    pub fn parse(
        &self,
        device: &str,
        property: &str,
        text: &str,
    ) -> Result<TwinValue, TwinBackendError> {
        let kind = {
            let devices = self.lock();
            let entry = devices
                .get(device)
                .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
            entry
                .twin
                .property(property)
                .ok_or_else(|| TwinBackendError::NoSuchProperty {
                    device: device.to_owned(),
                    property: property.to_owned(),
                })?
                .kind
        };
        device::parse_value(text, kind).map_err(|e| {
            TwinBackendError::Value(wedge_core::twin::ValueError::TypeMismatch {
                property: property.to_owned(),
                expected: e.kind,
                got: TwinValue::Text(e.value),
            })
        })
    }

    /// Records the device's connection state, as its mapper saw it.
    pub async fn set_state(
        &self,
        device: &str,
        state: DeviceState,
    ) -> Result<(), TwinBackendError> {
        self.queue_state(device, state).await?.await
    }

    /// Queues the device's connection state, as [`DeviceTwin::set_state`] stores it, behind
    /// the device's writes queued before; returns once queued, with what resolves once it is
    /// stored (and in memory). A state equal to the last one set (in flight or stored) is not
    /// written again, except `online`, which moves the last-online time.
    pub async fn queue_state(
        &self,
        device: &str,
        state: DeviceState,
    ) -> Result<impl Future<Output = Result<(), TwinBackendError>> + Send + 'static, TwinBackendError>
    {
        let guard = self.guard(device).await;
        let write = self.inner.next_write.fetch_add(1, Ordering::Relaxed);
        let last_online = {
            let mut devices = self.lock();
            let entry = devices
                .get_mut(device)
                .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
            let (current, last) = match entry.staged.state() {
                Some((state, last)) => (state, last.cloned()),
                None => (entry.twin.state, entry.last_online.clone()),
            };
            if current == state && state != DeviceState::Online {
                None
            } else {
                let last_online = match state {
                    DeviceState::Online => Some(jiff::Timestamp::now().to_string()),
                    _ => last,
                };
                entry.staged.stage_state(write, state, last_online.clone());
                Some(last_online)
            }
        };
        let queued = match last_online {
            None => None,
            Some(last_online) => {
                // Stored first, as reports are: memory changes only with the disk.
                let settle = SettleState {
                    twin: Arc::downgrade(&self.inner),
                    device: device.to_owned(),
                    write,
                    state,
                    last_online: last_online.clone(),
                };
                let queued = self
                    .inner
                    .twins
                    .queue_state(
                        device,
                        device::state_name(state),
                        last_online.as_deref(),
                        move |result, _| settle.settled(result.is_ok()),
                    )
                    .await;
                Some(queued.map_err(unavailable)?)
            }
        };
        drop(guard);
        Ok(async move {
            match queued {
                Some(pending) => pending.wait().await.map_err(unavailable),
                None => Ok(()),
            }
        })
    }
}

#[async_trait]
impl TwinBackend for DeviceTwin {
    async fn device(
        &self,
        name: &str,
    ) -> Result<Option<wedge_core::twin::DeviceTwin>, TwinBackendError> {
        Ok(self.lock().get(name).map(|e| e.twin.clone()))
    }

    async fn property(
        &self,
        device: &str,
        property: &str,
    ) -> Result<TwinProperty, TwinBackendError> {
        let devices = self.lock();
        let entry = devices
            .get(device)
            .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
        if entry.twin.property(property).is_none() {
            return Err(TwinBackendError::NoSuchProperty {
                device: device.to_owned(),
                property: property.to_owned(),
            });
        }
        Ok(entry
            .properties
            .get(property)
            .map(|s| s.twin.clone())
            .unwrap_or_default())
    }

    async fn set_desired(
        &self,
        device: &str,
        property: &str,
        value: TwinValue,
    ) -> Result<u64, TwinBackendError> {
        self.set_desired_value(device, property, value).await
    }

    fn changes(&self) -> broadcast::Receiver<TwinChange> {
        self.subscribe()
    }
}

#[cfg(test)]
pub(crate) mod tests;
