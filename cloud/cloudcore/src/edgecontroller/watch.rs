//! The shared watches: caches for pods, ConfigMaps, Secrets, RuntimeClasses, claims, volumes,
//! Rules and RuleEndpoints (and DeviceController's Devices and DeviceModels, started from here so
//! that every cache exists before the first session asks), and the tasks that turn each watch
//! event into marks on the sessions of the nodes it concerns (and tell the router its rules may
//! have changed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::DynamicObject;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, ResourceKind, sync};

use super::desired::{Change, Desired, DynamicStores, VolumeStores, key_of};
use crate::cloudhub::sessions::Sessions;
use crate::devicecontroller::downstream::DeviceWriters;
use crate::{devicecontroller, router};

/// Starts the watches. Returns the caches; the tasks end when `shutdown` is cancelled.
/// `routes_changed` is marked at every Rule and RuleEndpoint event.
///
/// The CRDs must be installed first (`crds::install`): a watch on a resource the server does not
/// serve only retries.
pub fn start(
    client: &Client,
    sessions: Arc<Sessions>,
    routes_changed: Arc<router::RouteChanges>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Desired {
    let (pods, pods_writer) = reflector::store();
    let (config_maps, cm_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let (runtime_classes, class_writer) = reflector::store();
    let (claims, claim_writer) = reflector::store();
    let (volumes, volume_writer) = reflector::store();
    let device_writer = Writer::<DynamicObject>::new(devicecontroller::device_resource());
    let model_writer = Writer::<DynamicObject>::new(devicecontroller::device_model_resource());
    let rule_writer = Writer::<DynamicObject>::new(router::crds::rule_resource());
    let endpoint_writer = Writer::<DynamicObject>::new(router::crds::rule_endpoint_resource());
    let desired = Desired::new(
        pods,
        config_maps,
        secrets,
        runtime_classes,
        VolumeStores { claims, volumes },
        DynamicStores {
            devices: device_writer.as_reader(),
            device_models: model_writer.as_reader(),
            rules: rule_writer.as_reader(),
            rule_endpoints: endpoint_writer.as_reader(),
        },
    );
    let config = watcher::Config::default().any_semantic();

    let pod_events = reflector(
        pods_writer,
        watcher::watcher(Api::<Pod>::all(client.clone()), config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        bound_loop(
            pod_events,
            ResourceKind::Pod,
            desired.clone(),
            sessions.clone(),
        ),
    ));
    let cm_events = reflector(
        cm_writer,
        watcher::watcher(Api::<ConfigMap>::all(client.clone()), config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        referenced_loop(
            cm_events,
            ResourceKind::ConfigMap,
            desired.clone(),
            sessions.clone(),
        ),
    ));
    let secret_events = reflector(
        secret_writer,
        watcher::watcher(Api::<Secret>::all(client.clone()), config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        referenced_loop(
            secret_events,
            ResourceKind::Secret,
            desired.clone(),
            sessions.clone(),
        ),
    ));
    let class_events = reflector(
        class_writer,
        watcher::watcher(Api::<RuntimeClass>::all(client.clone()), config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        referenced_loop(
            class_events,
            ResourceKind::RuntimeClass,
            desired.clone(),
            sessions.clone(),
        ),
    ));
    let claim_events = reflector(
        claim_writer,
        watcher::watcher(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            config.clone(),
        ),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        claim_loop(claim_events, desired.clone(), sessions.clone()),
    ));
    let volume_events = reflector(
        volume_writer,
        watcher::watcher(Api::<PersistentVolume>::all(client.clone()), config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        referenced_loop(
            volume_events,
            ResourceKind::PersistentVolume,
            desired.clone(),
            sessions.clone(),
        ),
    ));
    crate::devicecontroller::downstream::start(
        client,
        DeviceWriters {
            devices: device_writer,
            models: model_writer,
        },
        &desired,
        &sessions,
        tasks,
        shutdown,
    );
    let rule_api = Api::<DynamicObject>::all_with(client.clone(), &desired.rules.resource);
    let poke = routes_changed.clone();
    let rule_events = reflector(rule_writer, watcher::watcher(rule_api, config.clone()))
        .default_backoff()
        .inspect(move |_| poke.mark());
    tasks.spawn(until(
        shutdown.clone(),
        bound_loop(rule_events, ResourceKind::Rule, desired.clone(), sessions),
    ));
    let endpoint_api =
        Api::<DynamicObject>::all_with(client.clone(), &desired.rule_endpoints.resource);
    let endpoint_events =
        reflector(endpoint_writer, watcher::watcher(endpoint_api, config)).default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        endpoint_events.for_each(move |_| {
            routes_changed.mark();
            std::future::ready(())
        }),
    ));
    desired
}

pub(crate) async fn until(shutdown: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = work => {}
    }
}

fn mark(sessions: &Sessions, changes: Vec<Change>) {
    for (node, key) in changes {
        sessions.mark(&node, key);
    }
}

/// A kind whose objects are bound to a node by their spec.
pub(crate) trait BoundKind: kube::Resource + serde::Serialize + Sized {
    /// Indexes the object (of `kind`) as the watch shows it.
    fn changed(desired: &Desired, kind: ResourceKind, object: &Self) -> Vec<Change>;
}

impl BoundKind for Pod {
    fn changed(desired: &Desired, _: ResourceKind, pod: &Self) -> Vec<Change> {
        desired.pod_changed(pod)
    }
}

/// Devices and Rules.
impl BoundKind for DynamicObject {
    fn changed(desired: &Desired, kind: ResourceKind, object: &Self) -> Vec<Change> {
        match kind {
            ResourceKind::Rule => desired.rule_changed(object),
            _ => devicecontroller::downstream::device_changed(desired, object),
        }
    }
}

/// Pods, Devices and Rules: a change goes to the node the object is bound to (and to the one it
/// left).
pub(crate) async fn bound_loop<K: BoundKind>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    kind: ResourceKind,
    desired: Desired,
    sessions: Arc<Sessions>,
) {
    let mut events = std::pin::pin!(events);
    // Keys seen during a relist: bound objects not among them were deleted while the watch was
    // down, and no delete event will come for them.
    let mut relisted: Option<HashSet<ObjectKey>> = None;
    // What each object looks like to its edge (`sync::edge_view`): a change of the status
    // alone, which the edge (a pod's, a Device's) or cloudcore (a Rule's counts) wrote, is not
    // sent back, so the traffic of a status is not doubled.
    let mut views: HashMap<ObjectKey, String> = HashMap::new();
    let changed = |object: &K, views: &mut HashMap<ObjectKey, String>| {
        let changes = K::changed(&desired, kind, object);
        let key = key_of(kind, object);
        let view = serde_json::to_value(object)
            .ok()
            .and_then(|v| sync::edge_view(kind, v));
        if let Some(view) = view
            && views.insert(key.clone(), view.clone()).as_ref() == Some(&view)
        {
            // Only the status moved: tell nodes only about what else moved (a model, say).
            mark(
                &sessions,
                changes.into_iter().filter(|(_, k)| *k != key).collect(),
            );
            return;
        }
        mark(&sessions, changes);
    };
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, %kind, "watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Apply(object) => changed(&object, &mut views),
            Event::Delete(object) => {
                let key = key_of(kind, &object);
                views.remove(&key);
                mark(&sessions, desired.with_index(|i| i.remove_bound(&key)));
            }
            Event::Init => relisted = Some(HashSet::new()),
            Event::InitApply(object) => {
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(key_of(kind, &object));
                }
                changed(&object, &mut views);
            }
            Event::InitDone => {
                let seen = relisted.take().unwrap_or_default();
                views.retain(|k, _| seen.contains(k));
                let gone: Vec<ObjectKey> = desired
                    .with_index(|i| i.bound_keys(kind))
                    .into_iter()
                    .filter(|k| !seen.contains(k))
                    .collect();
                for key in gone {
                    mark(&sessions, desired.with_index(|i| i.remove_bound(&key)));
                }
            }
        }
    }
}

/// ConfigMaps, Secrets, RuntimeClasses and DeviceModels: a change goes to every node whose bound objects
/// reference the object.
pub(crate) async fn referenced_loop<K>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    kind: ResourceKind,
    desired: Desired,
    sessions: Arc<Sessions>,
) where
    K: kube::Resource,
{
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let object = match event {
            Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => o,
            Ok(Event::Init | Event::InitDone) => continue,
            Err(error) => {
                tracing::warn!(%error, %kind, "watch failed; retrying");
                continue;
            }
        };
        let key = key_of(kind, &object);
        for node in desired.with_index(|i| i.referrers(&key)) {
            sessions.mark(&node, key.clone());
        }
    }
}

/// PersistentVolumeClaims: referenced by pods like ConfigMaps, and a claim bound (or rebound)
/// re-indexes the pods naming it, so that its volume reaches their nodes.
async fn claim_loop(
    events: impl Stream<Item = Result<Event<PersistentVolumeClaim>, watcher::Error>>,
    desired: Desired,
    sessions: Arc<Sessions>,
) {
    let mut events = std::pin::pin!(events);
    let kind = ResourceKind::PersistentVolumeClaim;
    while let Some(event) = events.next().await {
        let (object, applied) = match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => (o, true),
            Ok(Event::Delete(o)) => (o, false),
            Ok(Event::Init | Event::InitDone) => continue,
            Err(error) => {
                tracing::warn!(%error, %kind, "watch failed; retrying");
                continue;
            }
        };
        if applied {
            mark(&sessions, desired.claim_changed(&object));
        }
        let key = key_of(kind, &object);
        for node in desired.with_index(|i| i.referrers(&key)) {
            sessions.mark(&node, key.clone());
        }
    }
}
