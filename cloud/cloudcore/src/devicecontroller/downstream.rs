//! Devices and DeviceModels down to the edges (KubeEdge's `devicecontroller` downstream).
//!
//! A Device is bound to the node in its `spec.nodeName`, like a pod, and references its
//! DeviceModel in its namespace, like a pod references a ConfigMap. So both kinds ride on
//! EdgeController's index and session marks ([`crate::edgecontroller::desired`]): this module
//! says how a Device is indexed and runs the two watches, and the edge gets each Device with its
//! model, in that order, over the same acknowledged session as its pods.

use std::sync::Arc;

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use crate::cloudhub::sessions::Sessions;
use crate::edgecontroller::desired::{Change, Desired, key_of};
use crate::edgecontroller::watch::{bound_loop, referenced_loop, until};

/// The caches' writers, made with the other caches so that [`Desired`] reads them from the start.
pub struct DeviceWriters {
    /// Devices.
    pub devices: Writer<DynamicObject>,
    /// DeviceModels.
    pub models: Writer<DynamicObject>,
}

/// Starts the Device and DeviceModel watches, feeding `writers`' caches and marking the sessions
/// of the nodes each change concerns. The tasks end when `shutdown` is cancelled.
pub fn start(
    client: &Client,
    writers: DeviceWriters,
    desired: &Desired,
    sessions: &Arc<Sessions>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let config = watcher::Config::default().any_semantic();
    let device_api = Api::<DynamicObject>::all_with(client.clone(), &desired.devices.resource);
    let device_events = reflector(
        writers.devices,
        watcher::watcher(device_api, config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        bound_loop(
            device_events,
            ResourceKind::Device,
            desired.clone(),
            sessions.clone(),
        ),
    ));
    let model_api = Api::<DynamicObject>::all_with(client.clone(), &desired.device_models.resource);
    let model_events =
        reflector(writers.models, watcher::watcher(model_api, config)).default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        referenced_loop(
            model_events,
            ResourceKind::DeviceModel,
            desired.clone(),
            sessions.clone(),
        ),
    ));
}

/// Records a Device as the watch shows it: bound to `spec.nodeName`, referencing its
/// DeviceModel in its namespace. Returns the (node, key) pairs whose sessions must hear of it.
pub fn device_changed(desired: &Desired, device: &DynamicObject) -> Vec<Change> {
    let key = key_of(ResourceKind::Device, device);
    let refs = super::model_of(device)
        .map(|name| ObjectKey {
            kind: ResourceKind::DeviceModel,
            namespace: key.namespace.clone(),
            name,
        })
        .into_iter()
        .collect();
    let node = super::node_of(device);
    desired.with_index(|index| index.upsert_bound(key, node, refs))
}
