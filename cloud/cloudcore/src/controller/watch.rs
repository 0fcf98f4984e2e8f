//! The shared watches: caches for pods, ConfigMaps and Secrets, and the task that turns each
//! watch event into marks on the sessions of the nodes it concerns.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use super::desired::{Change, Desired, key_of};
use crate::hub::sessions::Sessions;

/// Starts the watches. Returns the caches; the tasks end when `shutdown` is cancelled.
pub fn start(
    client: &Client,
    sessions: Arc<Sessions>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Desired {
    let (pods, pods_writer) = reflector::store();
    let (config_maps, cm_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let desired = Desired::new(pods, config_maps, secrets);
    let config = watcher::Config::default().any_semantic();

    let pod_events = reflector(
        pods_writer,
        watcher::watcher(Api::<Pod>::all(client.clone()), config.clone()),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        pod_loop(pod_events, desired.clone(), sessions.clone()),
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
        watcher::watcher(Api::<Secret>::all(client.clone()), config),
    )
    .default_backoff();
    tasks.spawn(until(
        shutdown.clone(),
        referenced_loop(
            secret_events,
            ResourceKind::Secret,
            desired.clone(),
            sessions,
        ),
    ));
    desired
}

async fn until(shutdown: CancellationToken, work: impl Future<Output = ()>) {
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

async fn pod_loop(
    events: impl Stream<Item = Result<Event<Pod>, watcher::Error>>,
    desired: Desired,
    sessions: Arc<Sessions>,
) {
    let mut events = std::pin::pin!(events);
    // Keys seen during a relist: bound pods not among them were deleted while the watch was
    // down, and no delete event will come for them.
    let mut relisted: Option<HashSet<ObjectKey>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "pod watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Apply(pod) => mark(&sessions, desired.pod_changed(&pod)),
            Event::Delete(pod) => {
                let key = key_of(ResourceKind::Pod, &pod);
                mark(&sessions, desired.with_index(|i| i.remove_pod(&key)));
            }
            Event::Init => relisted = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(key_of(ResourceKind::Pod, &pod));
                }
                mark(&sessions, desired.pod_changed(&pod));
            }
            Event::InitDone => {
                let seen = relisted.take().unwrap_or_default();
                let gone: Vec<ObjectKey> = desired
                    .with_index(|i| i.pod_keys())
                    .into_iter()
                    .filter(|k| !seen.contains(k))
                    .collect();
                for key in gone {
                    mark(&sessions, desired.with_index(|i| i.remove_pod(&key)));
                }
            }
        }
    }
}

/// ConfigMaps and Secrets: a change goes to every node whose pods reference the object.
async fn referenced_loop<K>(
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
