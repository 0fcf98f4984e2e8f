//! The DaemonSet controller: one pod per node that should run it, nodes that join later
//! included. This is how a fleet of edges gets the same app.
//!
//! A node should run a daemon pod when the template's nodeSelector, required node affinity,
//! runtime and tolerations allow it (the scheduler's placement filters, without resources; the
//! runtime from the RuntimeClass, else from the images' kinds, as the scheduler reads them), with
//! the tolerations Kubernetes adds to every daemon pod (not-ready and unreachable `NoExecute`,
//! so daemon pods stay on edges that go offline; cordoned and pressure `NoSchedule`). A pod
//! already running where a `NoSchedule` taint appeared stays, as on Kubernetes.
//!
//! Pods are created pinned to their node by required node affinity on `metadata.name` and
//! bound by the scheduler, as Kubernetes does since 1.12 (the scheduler looks only at the
//! pinned node: [`crate::scheduler::fit::PodNeeds::pinned_nodes`]). As kube-controller-manager
//! does, one reconcile creates at most [`BURST_REPLICAS`] pods, in slow-start batches, and
//! keeps what it wrote as an expectation ([`crate::expectations`]): until the pod watch shows
//! them, later reconciles of the set return at once, and the pod events wake it for the next
//! batch. The pods come from the shared store's index by controller, not a scan of it. The template's hash goes in the
//! `controller-revision-hash` label; `RollingUpdate` replaces out-of-date pods at most
//! `maxUnavailable` nodes at a time, `OnDelete` only when the user deletes them. (Kubernetes
//! also keeps ControllerRevision objects for `kubectl rollout history`; this server does not
//! serve them, so daemon sets have no history to undo to.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::deployment::{resolve, template_hash};
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, Writes, version_of};
use crate::indexes::{ControllerIndex, Indexed};
use crate::pods;
use crate::replicaset::{BURST, slow_start};
use crate::scheduler::fit::{self, NodeInfo, PodNeeds, Unfit};

/// The label holding the hash of the template a daemon pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// How many pods one reconcile creates or deletes at most. kube-controller-manager's
/// `BurstReplicas` for DaemonSets is 250, with client QPS limits, to spare etcd; here the API
/// server commits whatever is queued in one transaction and one reconcile has at most
/// `BATCH_IN_FLIGHT` (64) creates in flight whatever the burst, so the burst only says how much
/// is written before the set looks at the watch again. At 250 a 10k-node set took 40 passes,
/// each walking every node (a third of a second at 10k) and writing its status, and the passes
/// were most of its time. What bounds it here is the pod watch's window (10,000 events a
/// resource): a burst's creates and their bindings (5,000 events) fit in it, so a watcher that
/// falls behind during a burst catches up from the window instead of relisting. The slow start
/// is kept: a failed batch stops the rest.
pub const BURST_REPLICAS: usize = 2500;
/// How soon after a pass that had nothing to create or delete the set is walked again, when
/// its spec has not changed. Every binding and status change of its pods wakes the set, and
/// at 10k nodes each pass took a third of a second of CPU (when the controllers and the
/// scheduler still shared one task), so back-to-back passes while the scheduler binds the last
/// batch slowed the binding they waited for. A node joining or a pod going waits at most this
/// long.
const IDLE_PASS: Duration = Duration::from_secs(1);

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    index: ControllerIndex<Pod>,
    expectations: Expectations<String, Writes>,
    nodes: Store<Node>,
    runtime_classes: Store<RuntimeClass>,
    /// Asks registries what the template's images are, for templates without a RuntimeClass.
    image_kinds: Option<wedge_oci::ImageKinds>,
    recorder: Recorder,
    /// Sets whose last pass had nothing to write: the generation it saw and when it ended.
    idle: std::sync::Mutex<HashMap<String, (Option<i64>, tokio::time::Instant)>>,
}

impl Context {
    /// How long the set `uid` at `generation` should wait before its next pass, if its last
    /// pass, of the same generation, had nothing to write and ended less than [`IDLE_PASS`] ago.
    fn idle_wait(&self, uid: &str, generation: Option<i64>) -> Option<Duration> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, at) = idle.get(uid)?;
        let left = IDLE_PASS.checked_sub(at.elapsed())?;
        (*seen == generation && !left.is_zero()).then_some(left)
    }

    /// Records whether the pass of `uid` that just ended wrote nothing.
    fn pass_ended(&self, uid: &str, generation: Option<i64>, wrote: bool) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, (_, at)| at.elapsed() < IDLE_PASS);
        if !wrote {
            idle.insert(uid.to_owned(), (generation, tokio::time::Instant::now()));
        }
    }
}

/// What says which runtime a daemon needs: its RuntimeClass, else its images' kinds.
pub struct RuntimeSources {
    /// The RuntimeClasses, kept from a watch.
    pub runtime_classes: Store<RuntimeClass>,
    /// Asks registries what images are (`None`: no registry client, templates without a
    /// RuntimeClass go to every node).
    pub image_kinds: Option<wedge_oci::ImageKinds>,
}

/// Runs the controller until `shutdown` resolves. `node_changes` fires when a node appears,
/// goes, or changes in a way that can change where daemons run.
pub async fn run(
    client: Client,
    pods: Indexed<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    nodes: Store<Node>,
    node_changes: impl futures::Stream<Item = ()> + Send + 'static,
    runtimes: RuntimeSources,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
        client: client.clone(),
        pods: pods.store,
        index: pods.index,
        expectations: Expectations::new("pod"),
        nodes,
        runtime_classes: runtimes.runtime_classes,
        image_kinds: runtimes.image_kinds,
        idle: std::sync::Mutex::default(),
    });
    Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_changes)
        .reconcile_all_on(futures::stream::select(node_changes, crate::resync_ticks()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "daemonset reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

/// The tolerations Kubernetes gives every daemon pod.
fn daemon_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    vec![
        exists(fit::TAINT_NOT_READY, "NoExecute"),
        exists(fit::TAINT_UNREACHABLE, "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists(fit::TAINT_UNSCHEDULABLE, "NoSchedule"),
    ]
}

/// The daemon pod's template, with the daemon tolerations added.
fn daemon_pod(ds: &DaemonSet, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{}-", ds.name_any()));
    meta.namespace = ds.namespace();
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_HASH.to_owned(), hash.to_owned());
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: ds.name_any(),
        uid: ds.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let mut spec = template.spec.unwrap_or_default();
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// `pod` pinned to `node` by required node affinity, as Kubernetes pins daemon pods.
fn pinned(mut pod: Pod, node: &str) -> Pod {
    let mut value = serde_json::to_value(&pod.spec).unwrap_or_default();
    value["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}
        ]}]
    });
    pod.spec = serde_json::from_value(value).ok().or(pod.spec);
    pod
}

/// The node a daemon pod runs on or is pinned to.
fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// Whether a node should run the daemon (`Ok(true)`), may keep one it has (`Ok(false)`: a
/// `NoSchedule` taint it tolerates once running), or must not (`Err`).
fn placement(needs: &PodNeeds, node: &Arc<Node>) -> Result<bool, Unfit> {
    // Placement reads the node and its taints only: its allocatable resources (which
    // `NodeInfo::new` parses, quantity by quantity) would be parsed for nothing, on every node
    // at every pass.
    let info = NodeInfo {
        taints: fit::effective_taints(node),
        node: node.clone(),
        allocatable: Default::default(),
        max_pods: 0,
        requested: Default::default(),
        requested_non_zero: (0, 0),
        pods: 0,
        by_owner: HashMap::new(),
    };
    match fit::placement(needs, &info) {
        Ok(()) => Ok(true),
        Err(Unfit::Taint { effect, .. }) if effect == "NoSchedule" => Ok(false),
        Err(e) => Err(e),
    }
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    if !ctx
        .expectations
        .met(&uid, |w| w.forget_shown(&ctx.pods, &ctx.index, &namespace))
    {
        // Its last batch does not show yet: the pod events it causes (creations and
        // deletions) wake the set again. (kube writes the status meanwhile; here a pass walks
        // every node, and the batch's own events would run it back to back, so the status
        // waits for the batch.)
        return Ok(Action::await_change());
    }
    if let Some(wait) = ctx.idle_wait(&uid, ds.metadata.generation) {
        return Ok(Action::requeue(wait));
    }
    let started = tokio::time::Instant::now();
    let template = serde_json::to_value(ds.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    let hash = template_hash(
        &template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let pod = daemon_pod(&ds, &hash);
    // The runtime the daemon needs comes from its RuntimeClass, when it names one, else from
    // its images' kinds: a container daemon does not go to edges that run only Wasm.
    let runtime_class = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
        .and_then(|n| ctx.runtime_classes.get(&ObjectRef::new(n)));
    let needs = match PodNeeds::of(&pod, runtime_class.as_deref()) {
        Ok(mut needs) => {
            if needs.runtimes.is_empty()
                && let Some(kinds) = &ctx.image_kinds
            {
                needs.runtimes = crate::scheduler::image_runtimes(kinds, &pod).await;
            }
            needs
        }
        Err(e) => {
            tracing::warn!(daemonset = %ds.name_any(), error = %e, "cannot place daemon pods");
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in ctx.index.owned(&ctx.pods, &namespace, &uid) {
        if !pods::is_active(&p) {
            continue;
        }
        if let Some(n) = node_of(&p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let nodes = ctx.nodes.state();
    let mut create = Vec::new();
    let mut delete = Vec::new();
    let mut wanted = BTreeSet::new();
    for node in &nodes {
        let name = node.name_any();
        let existing = by_node.get(&name).map(Vec::as_slice).unwrap_or_default();
        match placement(&needs, node) {
            Ok(should_run) if should_run || !existing.is_empty() => {
                wanted.insert(name.clone());
                if existing.is_empty() {
                    create.push(name);
                } else {
                    // One per node: the extras go.
                    delete.extend(existing.iter().skip(1).cloned());
                }
            }
            _ => delete.extend(existing.iter().cloned()),
        }
    }
    // Pods on nodes that no longer exist.
    for (n, ps) in &by_node {
        if ctx.nodes.get(&ObjectRef::new(n)).is_none() {
            delete.extend(ps.iter().cloned());
        }
    }
    // Out-of-date pods, at most maxUnavailable nodes down at a time.
    let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete") {
        let max_unavailable = resolve(
            strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            "1",
            i32::try_from(wanted.len()).unwrap_or(i32::MAX),
            false,
        )
        .max(1);
        let now = jiff::Timestamp::now();
        let min_ready = ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let unavailable = wanted
            .iter()
            .filter(|n| {
                by_node
                    .get(*n)
                    .and_then(|ps| ps.first())
                    .is_none_or(|p| !pods::is_available(p, min_ready, now))
            })
            .count();
        let mut budget = usize::try_from(max_unavailable)
            .unwrap_or(1)
            .saturating_sub(unavailable);
        for n in &wanted {
            let Some(p) = by_node.get(n).and_then(|ps| ps.first()) else {
                continue;
            };
            let current = p.labels().get(REVISION_HASH) == Some(&hash);
            if current {
                continue;
            }
            // Unavailable old pods go at once; available ones within the budget.
            if !pods::is_available(p, min_ready, now) {
                delete.push(p.clone());
            } else if budget > 0 {
                budget -= 1;
                delete.push(p.clone());
            }
        }
    }
    let scanned = started.elapsed();
    let wrote = !create.is_empty() || !delete.is_empty();
    apply_changes(&ds, &ctx, &pod, &create, &delete).await?;
    let action = write_status(&ds, &ctx, &hash, &wanted).await;
    ctx.pass_ended(&uid, ds.metadata.generation, wrote);
    tracing::debug!(daemonset = %ds.name_any(), to_create = create.len(), to_delete = delete.len(),
        ?scanned, took = ?started.elapsed(), "daemonset pass");
    action
}

/// Creates the pods of up to [`BURST_REPLICAS`] nodes of `create` and deletes up to as many
/// of `delete`, with their events, and expects what it wrote.
async fn apply_changes(
    ds: &DaemonSet,
    ctx: &Context,
    pod: &Pod,
    create: &[String],
    delete: &[Arc<Pod>],
) -> Result<(), Error> {
    let namespace = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let create = &create[..create.len().min(BURST_REPLICAS)];
    let (created, create_failure) = slow_start(create.len(), |i| {
        let (api, pod) = (api.clone(), pinned(pod.clone(), &create[i]));
        async move { create_with_fresh_name(&api, &pod).await }
    })
    .await;
    let delete = &delete[..delete.len().min(BURST_REPLICAS)];
    let names: Vec<String> = delete.iter().map(|p| p.name_any()).collect();
    let results: Vec<Result<Option<String>, kube::Error>> = futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => Ok(Some(name)),
                    Err(e) if Error::is_gone_or_conflict(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    let (mut deleted, mut delete_failure) = (Vec::new(), None);
    for r in results {
        match r {
            Ok(name) => deleted.extend(name),
            Err(e) => delete_failure = delete_failure.or(Some(e)),
        }
    }
    let writes = Writes {
        created: created.iter().map(ResourceExt::name_any).collect(),
        deleted,
        created_version: created.iter().filter_map(|p| version_of(&p.metadata)).max(),
    };
    if !writes.is_empty() {
        ctx.expectations.expect(uid, writes.clone());
    }
    let reference = ds.object_ref(&());
    for (reason, names) in [
        ("SuccessfulCreate", &writes.created),
        ("SuccessfulDelete", &writes.deleted),
    ] {
        let verb = if reason == "SuccessfulCreate" {
            "Created"
        } else {
            "Deleted"
        };
        for name in names {
            let message = format!("{verb} pod: {name}");
            ctx.recorder
                .record(reference.clone(), EventType::Normal, reason, &message);
        }
    }
    if let Some(e) = create_failure {
        return Err(Error::api("create daemon pod for", ds, e));
    }
    if let Some(e) = delete_failure {
        return Err(Error::api("delete daemon pod of", ds, e));
    }
    Ok(())
}

/// Creates `pod`, asking again when its generated name was taken: with thousands of pods of
/// one DaemonSet, five random characters collide now and then (the API answers 409, as
/// Kubernetes does, and clients retry).
async fn create_with_fresh_name(api: &Api<Pod>, pod: &Pod) -> Result<Pod, kube::Error> {
    let mut attempts = 0;
    loop {
        match api.create(&PostParams::default(), pod).await {
            Ok(p) => return Ok(p),
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

async fn write_status(
    ds: &DaemonSet,
    ctx: &Context,
    hash: &str,
    wanted: &BTreeSet<String>,
) -> Result<Action, Error> {
    let namespace = ds.namespace().unwrap_or_default();
    let mut owned = ctx
        .index
        .owned(&ctx.pods, &namespace, &ds.uid().unwrap_or_default());
    owned.retain(|p| pods::is_active(p));
    let scheduled: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .collect();
    let now = jiff::Timestamp::now();
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    // Scheduled pods on nodes that should run them.
    let placed: Vec<&Arc<Pod>> = scheduled
        .iter()
        .copied()
        .filter(|p| node_of(p).is_some_and(|n| wanted.contains(&n)))
        .collect();
    let current: BTreeSet<String> = placed.iter().filter_map(|p| node_of(p)).collect();
    let ready = placed.iter().filter(|p| pods::is_ready(p)).count();
    let available = placed
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    let updated = placed
        .iter()
        .filter(|p| p.labels().get(REVISION_HASH).map(String::as_str) == Some(hash))
        .count();
    let status = json!({
        "currentNumberScheduled": current.len(),
        "numberMisscheduled": scheduled.len() - placed.len(),
        "desiredNumberScheduled": wanted.len(),
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": wanted.len().saturating_sub(available),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
    });
    let old = serde_json::to_value(&ds.status).unwrap_or_default();
    let changed = status.as_object().into_iter().flatten().any(|(k, v)| {
        let o = old.get(k).cloned().unwrap_or(json!(0));
        o != *v && !(o.is_null() && v == &json!(0))
    });
    if changed {
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map_err(|e| Error::api("update status of", ds, e))?;
    }
    if ready > available {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready.max(1)).unwrap_or(1),
        )));
    }
    // Anything else that moves a rollout on (a pod bound, ready, gone; a node's placement
    // changed) is an event that wakes the set.
    Ok(Action::await_change())
}

fn error_policy(_ds: Arc<DaemonSet>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "daemonset reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;

    use super::*;
    use crate::fake_api::FakeApi;

    fn ready_node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("node")
    }

    fn fleet() -> Arc<DaemonSet> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}},
                         "template": {"metadata": {"labels": {"app": "agent"}},
                                      "spec": {"containers": [{"name": "a", "image": "i"}]}}}
            }))
            .expect("daemonset"),
        )
    }

    struct Harness {
        api: FakeApi,
        ctx: Arc<Context>,
        pod_writer: reflector::store::Writer<Pod>,
        node_writer: reflector::store::Writer<Node>,
    }

    impl Harness {
        fn new(nodes: usize) -> Self {
            let api = FakeApi::default();
            let client = api.client();
            let (pods, pod_writer) = reflector::store();
            let (node_store, mut node_writer) = reflector::store();
            for i in 0..nodes {
                node_writer
                    .apply_watcher_event(&watcher::Event::Apply(ready_node(&format!("edge-{i}"))));
            }
            let (runtime_classes, _) = reflector::store();
            let ctx = Arc::new(Context {
                recorder: Recorder::new(client.clone(), "daemonset-controller"),
                client,
                pods,
                index: ControllerIndex::default(),
                expectations: Expectations::new("pod"),
                nodes: node_store,
                runtime_classes,
                image_kinds: None,
                idle: std::sync::Mutex::default(),
            });
            Self {
                api,
                ctx,
                pod_writer,
                node_writer,
            }
        }

        fn watch_catches_up(&mut self) {
            for pod in self.api.pods() {
                let event = watcher::Event::Apply(pod);
                self.ctx.index.apply(&event);
                self.pod_writer.apply_watcher_event(&event);
            }
        }

        /// Nodes that have a daemon pod in the API, and how many each.
        fn pods_per_node(&self) -> BTreeMap<String, usize> {
            let mut per = BTreeMap::new();
            for p in self.api.pods() {
                *per.entry(node_of(&p).unwrap_or_default()).or_default() += 1;
            }
            per
        }
    }

    #[tokio::test(start_paused = true)]
    async fn daemon_pods_are_created_once_per_node_across_reconciles() {
        let mut h = Harness::new(3);
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(
            h.pods_per_node().values().copied().collect::<Vec<_>>(),
            [1, 1, 1]
        );
        // Before the watch shows them, and after: no second pod on any node.
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        h.watch_catches_up();
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(
            h.pods_per_node().values().copied().collect::<Vec<_>>(),
            [1, 1, 1]
        );
        // A node joins: its pod, and only its, once the last pass (which had nothing to
        // write) is IDLE_PASS old.
        h.node_writer
            .apply_watcher_event(&watcher::Event::Apply(ready_node("edge-9")));
        let action = reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(action, Action::requeue(IDLE_PASS), "an idle set waits");
        assert_eq!(h.pods_per_node().len(), 3);
        tokio::time::advance(IDLE_PASS).await;
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        let per = h.pods_per_node();
        assert_eq!(per.len(), 4);
        assert!(per.values().all(|n| *n == 1), "{per:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_creates_at_most_a_burst_and_the_watch_releases_the_next() {
        let mut h = Harness::new(BURST_REPLICAS + 50);
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(h.api.pods().len(), BURST_REPLICAS);
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(
            h.api.pods().len(),
            BURST_REPLICAS,
            "the watch has not shown them"
        );
        h.watch_catches_up();
        reconcile(fleet(), h.ctx.clone()).await.expect("reconcile");
        let per = h.pods_per_node();
        assert_eq!(per.len(), BURST_REPLICAS + 50);
        assert!(per.values().all(|n| *n == 1));
    }

    #[test]
    fn daemon_pods_are_pinned_and_tolerate_offline_nodes() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "a"}]}}}
        }))
        .expect("ds");
        let pod = daemon_pod(&ds, "h1");
        let needs = PodNeeds::of(&pod, None).expect("needs");
        let pinned = pinned(pod, "edge-7");
        assert_eq!(node_of(&pinned).as_deref(), Some("edge-7"));
        assert_eq!(
            pinned.labels().get(REVISION_HASH).map(String::as_str),
            Some("h1")
        );
        let offline: Node = serde_json::from_value(json!({
            "metadata": {"name": "edge-7"},
            "spec": {"taints": [{"key": fit::TAINT_UNREACHABLE, "effect": "NoExecute"},
                                {"key": fit::TAINT_UNREACHABLE, "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }))
        .expect("node");
        // Not placed anew on an unreachable node, but one already there stays.
        assert_eq!(placement(&needs, &Arc::new(offline)), Ok(false));
        let elsewhere: Node = serde_json::from_value(json!({"metadata": {"name": "edge-8"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("node");
        assert_eq!(placement(&needs, &Arc::new(elsewhere)), Ok(true));
    }
}
