//! The ReplicaSet controller: keeps `spec.replicas` active pods made from the template, and
//! the status (`replicas`, `readyReplicas`, `availableReplicas`, `observedGeneration`) that the
//! Deployment controller and `kubectl get rs` read.
//!
//! A reconcile counts the pods the ReplicaSet controls (by controller owner reference, through
//! the [`ControllerIndex`] of the shared pod store: what this set has, not the whole store) and
//! creates or deletes the difference, at most [`BURST_REPLICAS`] at a time in slow-start
//! batches, as kube-controller-manager does. What it wrote is kept as an *expectation*
//! ([`crate::expectations`]): until the pod watch shows those pods, later reconciles of the
//! same set only write its status, so a pod is never counted twice or missed; the pod events
//! the writes cause wake it, and nothing waits inside a reconcile. Pods to delete are chosen
//! unassigned first, then not running, not ready, newest ([`crate::pods::deletion_order`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, Writes, version_of};
use crate::indexes::{ControllerIndex, Indexed};
use crate::pods;

/// How many pod deletions one reconcile has in flight (and the other controllers' creations).
pub(crate) const BURST: usize = 16;
/// How many pods one reconcile creates or deletes at most (kube-controller-manager's
/// `BurstReplicas` for ReplicaSets).
pub const BURST_REPLICAS: usize = 500;
/// How many creations of one slow-start batch are in flight at once: kube sends a whole batch
/// at once; a bound keeps the connections to the API server few.
const BATCH_IN_FLIGHT: usize = 64;

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    index: ControllerIndex<Pod>,
    expectations: Expectations<String, Writes>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` resolves. `pods` is the shared pod store and
/// `pod_changes` its subscription.
pub async fn run(
    client: Client,
    pods: Indexed<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        client: client.clone(),
        pods: pods.store,
        index: pods.index,
        expectations: Expectations::new("pod"),
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

/// Runs `create` for `count` objects in slow-start batches (1, 2, 4, ...), as
/// kube-controller-manager's `slowStartBatch` does: a template the API refuses fails one
/// request, not hundreds. Stops after a batch with a failure; returns what was made and the
/// first failure.
pub(crate) async fn slow_start<T, F, Fut>(count: usize, create: F) -> (Vec<T>, Option<kube::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut made = Vec::with_capacity(count);
    let (mut done, mut batch) = (0, 1);
    while done < count {
        let size = batch.min(count - done);
        // The batch's futures made up front: a stream holding `&create` would not be `Send`
        // for every lifetime the controller asks of it.
        let batch_futures: Vec<Fut> = (done..done + size).map(&create).collect();
        let results: Vec<Result<T, kube::Error>> = futures::stream::iter(batch_futures)
            .buffer_unordered(BATCH_IN_FLIGHT)
            .collect()
            .await;
        let mut failure = None;
        for r in results {
            match r {
                Ok(t) => made.push(t),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if failure.is_some() {
            return (made, failure);
        }
        done += size;
        batch *= 2;
    }
    (made, None)
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
    let synced = ctx
        .expectations
        .met(&uid, |w| w.forget_shown(&ctx.pods, &ctx.index, &namespace));
    if synced {
        manage_replicas(&rs, &ctx, &namespace, &uid).await?;
    }
    let action = update_status(&rs, &ctx).await?;
    // Not synced: the pod events its writes cause (creations and deletions) wake it.
    Ok(if synced {
        action
    } else {
        Action::await_change()
    })
}

/// Creates or deletes pods towards `spec.replicas`, and expects what it wrote.
async fn manage_replicas(
    rs: &ReplicaSet,
    ctx: &Context,
    namespace: &str,
    uid: &str,
) -> Result<(), Error> {
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut active = ctx.index.owned(&ctx.pods, namespace, uid);
    active.retain(|p| pods::is_active(p));
    if active.len() < want {
        let template = pod_from_template(rs);
        let (created, failure) = slow_start((want - active.len()).min(BURST_REPLICAS), |_| {
            let (api, template) = (api.clone(), template.clone());
            async move { api.create(&PostParams::default(), &template).await }
        })
        .await;
        let writes = Writes {
            created: created.iter().map(ResourceExt::name_any).collect(),
            deleted: Vec::new(),
            created_version: created.iter().filter_map(|p| version_of(&p.metadata)).max(),
        };
        if !writes.is_empty() {
            ctx.expectations.expect(uid.to_owned(), writes.clone());
        }
        for name in &writes.created {
            let message = format!("Created pod: {name}");
            ctx.recorder.record(
                rs.object_ref(&()),
                EventType::Normal,
                "SuccessfulCreate",
                &message,
            );
        }
        if let Some(e) = failure {
            return Err(Error::api("create pod for", rs, e));
        }
    } else if active.len() > want {
        let mut doomed = active.clone();
        doomed.sort_by(|a, b| pods::deletion_order(a, b));
        doomed.truncate((active.len() - want).min(BURST_REPLICAS));
        let names: Vec<String> = doomed.iter().map(|p| p.name_any()).collect();
        let results: Vec<Result<String, kube::Error>> = futures::stream::iter(names)
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
            .collect()
            .await;
        let (mut deleted, mut failure) = (Vec::new(), None);
        for r in results {
            match r {
                Ok(name) => deleted.push(name),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let writes = Writes {
            deleted,
            ..Writes::default()
        };
        if !writes.is_empty() {
            ctx.expectations.expect(uid.to_owned(), writes.clone());
        }
        for name in &writes.deleted {
            let message = format!("Deleted pod: {name}");
            ctx.recorder.record(
                rs.object_ref(&()),
                EventType::Normal,
                "SuccessfulDelete",
                &message,
            );
        }
        if let Some(e) = failure {
            return Err(Error::api("delete pod of", rs, e));
        }
    }
    Ok(())
}

/// Writes the status the pods show, if it changed; requeues to see pods become available.
async fn update_status(rs: &ReplicaSet, ctx: &Context) -> Result<Action, Error> {
    let owned = ctx.index.owned(
        &ctx.pods,
        &rs.namespace().unwrap_or_default(),
        &rs.uid().unwrap_or_default(),
    );
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
        Api::<ReplicaSet>::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default())
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .map_err(|e| Error::api("update status of", rs, e))?;
    }
    // Ready pods waiting out minReadySeconds become available without an event: look again.
    // Anything else that changes the counts is a pod event, which wakes the set.
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

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;
    use crate::fake_api::FakeApi;

    fn replicaset(replicas: i32) -> Arc<ReplicaSet> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default", "uid": "rs-uid"},
                "spec": {"replicas": replicas,
                         "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "c", "image": "i"}]}}}
            }))
            .expect("replicaset"),
        )
    }

    struct Harness {
        api: FakeApi,
        ctx: Arc<Context>,
        writer: reflector::store::Writer<Pod>,
    }

    impl Harness {
        fn new() -> Self {
            let api = FakeApi::default();
            let client = api.client();
            let (store, writer) = reflector::store();
            let ctx = Arc::new(Context {
                recorder: Recorder::new(client.clone(), "replicaset-controller"),
                client,
                pods: store,
                index: ControllerIndex::default(),
                expectations: Expectations::new("pod"),
            });
            Self { api, ctx, writer }
        }

        /// The watch delivers what the API holds now.
        fn watch_catches_up(&mut self) {
            for pod in self.api.pods() {
                let event = watcher::Event::Apply(pod);
                self.ctx.index.apply(&event);
                self.writer.apply_watcher_event(&event);
            }
        }

        /// The watch delivers a pod's deletion.
        fn watch_sees_deleted(&mut self, pod: Pod) {
            let event = watcher::Event::Delete(pod);
            self.ctx.index.apply(&event);
            self.writer.apply_watcher_event(&event);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pods_created_are_not_created_again_before_the_watch_shows_them() {
        let mut h = Harness::new();
        reconcile(replicaset(3), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 3);
        // The watch has not shown them: another reconcile creates nothing.
        reconcile(replicaset(3), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 3, "created twice");
        h.watch_catches_up();
        reconcile(replicaset(3), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 3);
        // Scaled up: only the difference.
        reconcile(replicaset(5), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn pods_deleted_are_not_replaced_before_the_watch_shows_them_gone() {
        let mut h = Harness::new();
        reconcile(replicaset(4), h.ctx.clone())
            .await
            .expect("reconcile");
        h.watch_catches_up();
        reconcile(replicaset(2), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 2);
        // The store still shows the two deleted pods: a reconcile at 4 (say, scaled back at
        // once) waits for the deletions to show before it counts.
        reconcile(replicaset(4), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 2, "counted pods that are gone");
        let held: Vec<String> = h.api.pods().iter().map(ResourceExt::name_any).collect();
        let gone: Vec<Pod> = h
            .ctx
            .pods
            .state()
            .iter()
            .filter(|p| !held.contains(&p.name_any()))
            .map(|p| (**p).clone())
            .collect();
        for pod in gone {
            h.watch_sees_deleted(pod);
        }
        reconcile(replicaset(4), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_created_and_deleted_before_the_store_showed_it_counts_as_seen() {
        let mut h = Harness::new();
        reconcile(replicaset(1), h.ctx.clone())
            .await
            .expect("reconcile");
        let pod = h.api.pods().pop().expect("a pod");
        // The watch delivers its creation and its deletion before anyone looks.
        h.watch_catches_up();
        h.watch_sees_deleted(pod.clone());
        // Deleted by someone else in the API too.
        let client = h.ctx.client.clone();
        Api::<Pod>::namespaced(client, "default")
            .delete(&pod.name_any(), &DeleteParams::default())
            .await
            .expect("delete");
        reconcile(replicaset(1), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 1, "replaced at once, not after the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_the_watch_never_shows_are_given_up_after_the_ttl() {
        let h = Harness::new();
        reconcile(replicaset(2), h.ctx.clone())
            .await
            .expect("reconcile");
        // Lost from the API without the watch saying so (a relist would): the set waits for
        // them, then, after the TTL, acts on the store as it is.
        for pod in h.api.pods() {
            Api::<Pod>::namespaced(h.ctx.client.clone(), "default")
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
                .expect("delete");
        }
        reconcile(replicaset(2), h.ctx.clone())
            .await
            .expect("reconcile");
        assert!(h.api.pods().is_empty());
        tokio::time::advance(crate::expectations::TTL + Duration::from_secs(1)).await;
        reconcile(replicaset(2), h.ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(h.api.pods().len(), 2);
    }

    #[tokio::test]
    async fn slow_start_doubles_its_batches_and_stops_at_a_failure() {
        let (made, failure) = slow_start(10, |i| async move { Ok::<usize, kube::Error>(i) }).await;
        assert_eq!(made.len(), 10);
        assert!(failure.is_none());
        let refused = || {
            kube::Error::SerdeError(serde_json::from_str::<i32>("refused").expect_err("not json"))
        };
        let (made, failure) = slow_start(100, |i| async move {
            if i == 5 { Err(refused()) } else { Ok(i) }
        })
        .await;
        // Batches of 1, 2 and 4 (0..7): the third fails at 5, and no batch starts after it.
        assert_eq!(made.len(), 6);
        assert!(failure.is_some());
    }
}
