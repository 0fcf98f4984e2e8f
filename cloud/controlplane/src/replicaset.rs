//! The ReplicaSet controller: keeps `spec.replicas` active pods made from the template, and
//! the status (`replicas`, `readyReplicas`, `availableReplicas`, `observedGeneration`) that the
//! Deployment controller and `kubectl get rs` read.
//!
//! A reconcile counts the pods the ReplicaSet controls (by controller owner reference) in the
//! shared pod store, creates or deletes the difference, and waits until the store shows its
//! own changes before returning, so the next reconcile of the same ReplicaSet never counts a
//! pod twice or misses one (what kube-controller-manager's "expectations" are for). Pods to
//! delete are chosen unassigned first, then not running, not ready, newest
//! ([`crate::pods::deletion_order`]).

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::pods;

/// How many pod creations or deletions one reconcile has in flight.
pub(crate) const BURST: usize = 16;
/// How long a reconcile waits for the pod store to show its changes.
const SETTLE: Duration = Duration::from_secs(5);

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` resolves. `pods` is the shared pod store and
/// `pod_changes` its subscription.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        client: client.clone(),
        pods,
    });
    Controller::new(Api::<ReplicaSet>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_changes)
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "replicaset reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

/// The pods `owner` controls, active ones only.
pub fn owned_pods(store: &Store<Pod>, namespace: &str, owner_uid: &str) -> Vec<Arc<Pod>> {
    let mut owned = all_owned_pods(store, namespace, owner_uid);
    owned.retain(|p| pods::is_active(p));
    owned
}

/// Every pod the owner controls, finished and terminating ones included.
fn all_owned_pods(store: &Store<Pod>, namespace: &str, owner_uid: &str) -> Vec<Arc<Pod>> {
    store
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| pods::controller_of(&p.metadata).is_some_and(|o| o.uid == owner_uid))
        .collect()
}

/// Waits until `done` holds for the store, or [`SETTLE`] passes.
async fn settle(store: &Store<Pod>, done: impl Fn(&Store<Pod>) -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !done(store) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn owner_reference(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.name_any(),
        uid: rs.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{}-", rs.name_any()));
    meta.namespace = rs.namespace();
    meta.owner_references = Some(vec![owner_reference(rs)]);
    Pod {
        metadata: meta,
        spec: template.spec,
        status: None,
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let active = owned_pods(&ctx.pods, &namespace, &uid);

    if active.len() < want {
        let template = pod_from_template(&rs);
        let created: Vec<String> = futures::stream::iter(0..want - active.len())
            .map(|_| {
                let (api, template) = (api.clone(), template.clone());
                async move { api.create(&PostParams::default(), &template).await }
            })
            .buffer_unordered(BURST)
            .map_ok(|p| p.name_any())
            .try_collect()
            .await
            .map_err(|e| Error::api("create pod for", &*rs, e))?;
        for name in &created {
            let message = format!("Created pod: {name}");
            ctx.recorder
                .record(
                    rs.object_ref(&()),
                    EventType::Normal,
                    "SuccessfulCreate",
                    &message,
                )
                .await;
        }
        settle(&ctx.pods, |s| {
            created
                .iter()
                .all(|n| s.get(&ObjectRef::new(n).within(&namespace)).is_some())
        })
        .await;
    } else if active.len() > want {
        let mut doomed = active.clone();
        doomed.sort_by(|a, b| pods::deletion_order(a, b));
        doomed.truncate(active.len() - want);
        let names: Vec<String> = doomed.iter().map(|p| p.name_any()).collect();
        futures::stream::iter(names.clone())
            .map(|name| {
                let api = api.clone();
                async move {
                    match api.delete(&name, &DeleteParams::default()).await {
                        Err(e) if !Error::is_gone_or_conflict(&e) => Err(e),
                        _ => Ok(name),
                    }
                }
            })
            .buffer_unordered(BURST)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| Error::api("delete pod of", &*rs, e))?;
        for name in &names {
            let message = format!("Deleted pod: {name}");
            ctx.recorder
                .record(
                    rs.object_ref(&()),
                    EventType::Normal,
                    "SuccessfulDelete",
                    &message,
                )
                .await;
        }
        settle(&ctx.pods, |s| {
            names.iter().all(|n| {
                s.get(&ObjectRef::new(n).within(&namespace))
                    .is_none_or(|p| !pods::is_active(&p))
            })
        })
        .await;
    }
    update_status(&rs, &ctx).await
}

/// Writes the status the pods show, if it changed; requeues to see pods become available.
async fn update_status(rs: &ReplicaSet, ctx: &Context) -> Result<Action, Error> {
    let namespace = rs.namespace().unwrap_or_default();
    let owned = all_owned_pods(&ctx.pods, &namespace, &rs.uid().unwrap_or_default());
    let terminating = owned
        .iter()
        .any(|p| p.metadata.deletion_timestamp.is_some());
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let ready = active.iter().filter(|p| pods::is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    let labelled = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labelled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            labelled
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let status = serde_json::json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labelled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation,
    });
    let current = rs.status.as_ref().map(|s| {
        serde_json::json!({
            "replicas": s.replicas,
            "fullyLabeledReplicas": s.fully_labeled_replicas.unwrap_or(0),
            "readyReplicas": s.ready_replicas.unwrap_or(0),
            "availableReplicas": s.available_replicas.unwrap_or(0),
            "observedGeneration": s.observed_generation,
        })
    });
    if current.as_ref() != Some(&status) {
        Api::<ReplicaSet>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .map_err(|e| Error::api("update status of", rs, e))?;
    }
    // Ready pods waiting out minReadySeconds become available without an event: look again.
    // So does a set short of its replicas or with pods still terminating: the shared pod
    // stream does not deliver deletions (kube-rs #1590).
    let wanted = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if i32::try_from(active.len()).ok() != Some(wanted) || terminating {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if ready > available {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready.max(1)).unwrap_or(1),
        )));
    }
    Ok(Action::await_change())
}

fn error_policy(_rs: Arc<ReplicaSet>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "replicaset reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
