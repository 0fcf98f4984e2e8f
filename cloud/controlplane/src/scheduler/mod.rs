//! The scheduler: binds each pod without a node to the node that fits it best, as
//! kube-scheduler does for pods whose `schedulerName` is `default-scheduler`.
//!
//! Watches feed it. Nodes and all pods keep the [`cache::Cache`] current (what each node
//! offers and what its pods take); RuntimeClasses sit in a reflector store. Pods with no
//! `spec.nodeName` drive a `kube::runtime` [`Controller`]. Run alone ([`run`]), the scheduler
//! watches nodes once and pods twice itself (all of them for the cache, those without a node
//! for the controller); in the control plane ([`shared`]) it reads the pod and node watches the
//! controllers share, so that each event is decoded once. The reconciler decides under the
//! cache's lock (filter, score, pick, assume), then binds through the `binding` subresource
//! outside it, so decisions are serial and bindings overlap. A bound pod gets kube-scheduler's
//! `Scheduled` event ("Successfully assigned ns/pod to node").
//!
//! The runtime a pod needs comes from its RuntimeClass, or else from its images: the
//! registry's manifest says whether each is Wasm or a container image ([`wedge_oci::kinds`]).
//! Its PersistentVolumeClaims, from two more stores, say where its volumes are or may be made
//! ([`volumes`]); a local volume is made and bound on the chosen node before the pod is bound.
//!
//! A pod that fits nowhere gets `PodScheduled=False` with reason `Unschedulable` and
//! kube-scheduler's message, and a `FailedScheduling` event; it is tried again when a node
//! changes in a way that could make it fit, when a bound pod goes away, and every minute.
//!
//! Start reading at [`run`], then [`fit`] for the rules.

pub mod cache;
pub mod fit;
pub mod resources;
pub mod volumes;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::events::{EventType, Recorder};
use cache::Cache;
use fit::PodNeeds;
use wedge_oci::{ImageKind, ImageKinds};

/// The scheduler name pods get by default, and the one this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How often an unschedulable pod is tried again when nothing else prompts it.
const RETRY: Duration = Duration::from_secs(60);
/// How long the scheduler waits for a registry to say what an image is.
const IMAGE_LOOKUP: Duration = Duration::from_secs(5);
/// How many bindings may be in flight at once.
const CONCURRENCY: u16 = 16;

/// What the reconciler shares.
struct Context {
    client: Client,
    cache: Arc<Mutex<Cache>>,
    runtime_classes: Store<RuntimeClass>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    /// True once nodes and pods have been listed: no decision before the cache is whole.
    synced: watch::Receiver<bool>,
    recorder: Recorder,
    /// Asks registries what a pod's images are, for pods without a RuntimeClass.
    image_kinds: Option<ImageKinds>,
}

/// Where the scheduler's pods and nodes come from.
enum PodSource<S> {
    /// Watches of its own: nodes and all pods for the cache, pods without a node for the
    /// controller.
    Own,
    /// Watches shared with the controllers ([`crate::informer::Informer`]s): their events
    /// reach the cache through [`CacheFeeds`], the pod changes (a subscriber) drive the
    /// controller.
    Shared { store: Store<Pod>, changes: S },
}

/// The scheduler's state before it runs: its cache and what tells it the cache changed.
struct State {
    cache: Arc<Mutex<Cache>>,
    retry_tx: mpsc::Sender<()>,
    retry_rx: mpsc::Receiver<()>,
    synced: Arc<Synced>,
}

impl State {
    fn new() -> Self {
        // A channel of one: a retry already queued absorbs the next request for one.
        let (retry_tx, retry_rx) = mpsc::channel::<()>(1);
        Self {
            cache: Arc::new(Mutex::new(Cache::default())),
            retry_tx,
            retry_rx,
            synced: Arc::new(Synced::default()),
        }
    }

    fn feed<K: Cached>(&self) -> Feed<K> {
        Feed {
            cache: self.cache.clone(),
            buffer: Vec::new(),
            retry: self.retry_tx.clone(),
            synced: self.synced.clone(),
        }
    }
}

/// Whether nodes and pods have both been listed: no decision before the cache is whole.
#[derive(Default)]
struct Synced {
    nodes: AtomicBool,
    pods: AtomicBool,
    whole: watch::Sender<bool>,
}

impl Synced {
    fn mark(&self, listed: &AtomicBool) {
        listed.store(true, SeqCst);
        if self.nodes.load(SeqCst) && self.pods.load(SeqCst) {
            self.whole.send_replace(true);
        }
    }
}

/// What the cache keeps of a watched kind: pods (what they take of their node) and nodes (what
/// they offer).
trait Cached: Clone + Send + 'static {
    /// Whether this kind has been listed since start.
    fn listed(synced: &Synced) -> &AtomicBool;
    /// Replaces every object of this kind with a listing.
    fn reset(cache: &mut Cache, listed: Vec<Self>);
    /// Counts one object in; whether room may have appeared.
    fn apply(cache: &mut Cache, object: &Self) -> bool;
    /// Counts one object out; whether room may have appeared.
    fn delete(cache: &mut Cache, object: &Self) -> bool;
}

impl Cached for Pod {
    fn listed(synced: &Synced) -> &AtomicBool {
        &synced.pods
    }
    fn reset(cache: &mut Cache, listed: Vec<Self>) {
        cache.reset_pods(&listed);
    }
    fn apply(cache: &mut Cache, pod: &Self) -> bool {
        cache.apply_pod(pod)
    }
    fn delete(cache: &mut Cache, pod: &Self) -> bool {
        cache.delete_pod(pod)
    }
}

impl Cached for Node {
    fn listed(synced: &Synced) -> &AtomicBool {
        &synced.nodes
    }
    fn reset(cache: &mut Cache, listed: Vec<Self>) {
        cache.reset_nodes(listed.into_iter().map(Arc::new).collect());
    }
    fn apply(cache: &mut Cache, node: &Self) -> bool {
        cache.apply_node(Arc::new(node.clone()))
    }
    fn delete(cache: &mut Cache, node: &Self) -> bool {
        cache.delete_node(&node.name_any());
        false
    }
}

/// Counts a pod or node watch's events in the cache; asks for a retry of pending pods when
/// room appears.
struct Feed<K> {
    cache: Arc<Mutex<Cache>>,
    /// The objects of a listing under way, counted when it is done.
    buffer: Vec<K>,
    retry: mpsc::Sender<()>,
    synced: Arc<Synced>,
}

impl<K: Cached> Feed<K> {
    fn apply(&mut self, event: &watcher::Event<K>) {
        // A panic elsewhere while holding the lock cannot leave the counts worse than stopping
        // scheduling would: carry on with them.
        let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let wake = match event {
            watcher::Event::Init => {
                self.buffer.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                self.buffer.push(o.clone());
                false
            }
            watcher::Event::InitDone => {
                K::reset(&mut c, std::mem::take(&mut self.buffer));
                self.synced.mark(K::listed(&self.synced));
                true
            }
            watcher::Event::Apply(o) => K::apply(&mut c, o),
            watcher::Event::Delete(o) => K::delete(&mut c, o),
        };
        drop(c);
        if wake {
            let _ = self.retry.try_send(());
        }
    }
}

/// The scheduler's end of the pod and node watches someone else runs
/// ([`crate::run_controllers`]' informers): give it every event of those watches, as the
/// informers' hooks. It is fed from the events rather than from subscribers because a relist
/// must replace its counts whole.
#[derive(Clone)]
pub struct CacheFeeds {
    pods: Arc<Mutex<Feed<Pod>>>,
    nodes: Arc<Mutex<Feed<Node>>>,
}

impl CacheFeeds {
    /// Counts one event of the shared pod watch.
    pub fn pod(&self, event: &watcher::Event<Pod>) {
        Self::apply(&self.pods, event);
    }

    /// Counts one event of the shared node watch.
    pub fn node(&self, event: &watcher::Event<Node>) {
        Self::apply(&self.nodes, event);
    }

    fn apply<K: Cached>(feed: &Mutex<Feed<K>>, event: &watcher::Event<K>) {
        feed.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(event);
    }
}

/// A scheduler that reads the pod and node watches shared with the controllers instead of
/// running three of its own (each pod event decoded once in the process instead of three
/// times, each node heartbeat once instead of twice); made by [`shared`].
pub struct SharedScheduler(State);

/// A scheduler on shared watches: feed the pod and node watches' events to the
/// [`CacheFeeds`] and run the [`SharedScheduler`] on the pod watch's store and subscriber.
pub fn shared() -> (CacheFeeds, SharedScheduler) {
    let state = State::new();
    let feeds = CacheFeeds {
        pods: Arc::new(Mutex::new(state.feed())),
        nodes: Arc::new(Mutex::new(state.feed())),
    };
    (feeds, SharedScheduler(state))
}

impl SharedScheduler {
    /// Runs the scheduler until `shutdown` is cancelled, binding through `client` (its own
    /// identity: the shared watch may be another's, the pods are the same). `pods` is the
    /// shared pod informer's store, `changes` a subscriber of it.
    pub async fn run(
        self,
        client: Client,
        insecure_registries: Vec<String>,
        pods: Store<Pod>,
        changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
        shutdown: CancellationToken,
    ) {
        let source = PodSource::Shared {
            store: pods,
            changes,
        };
        run_from(client, insecure_registries, self.0, source, shutdown).await;
    }
}

/// Runs the scheduler, with watches of its own, until `shutdown` is cancelled.
/// `insecure_registries` (`host:port`) are asked about images over plain HTTP.
pub async fn run(client: Client, insecure_registries: Vec<String>, shutdown: CancellationToken) {
    let own = PodSource::<futures::stream::Empty<Arc<Pod>>>::Own;
    run_from(client, insecure_registries, State::new(), own, shutdown).await;
}

async fn run_from<S>(
    client: Client,
    insecure_registries: Vec<String>,
    state: State,
    source: PodSource<S>,
    shutdown: CancellationToken,
) where
    S: futures::Stream<Item = Arc<Pod>> + Send + 'static,
{
    let image_kinds = image_kinds(&insecure_registries);
    let retry_tx = state.retry_tx.clone();
    // Each watch in a task of its own, on any worker; dropping the set stops them.
    let mut parts = tokio::task::JoinSet::new();

    let (runtime_classes, rc_writer) = reflector::store();
    parts.spawn(
        reflector::reflector(
            rc_writer,
            watcher(
                Api::<RuntimeClass>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each({
            let retry = retry_tx.clone();
            move |_| {
                let _ = retry.clone().try_send(());
                futures::future::ready(())
            }
        }),
    );

    // Claims and volumes: a claim made, bound or deleted, or a volume going, may let a pod in.
    let (claims, claim_writer) = reflector::store();
    // Claims going and volumes appearing are what the reclaimer looks at (deletions too).
    let (reclaim_tx, reclaim_rx) = mpsc::channel::<()>(1);
    parts.spawn(
        reflector::reflector(
            claim_writer,
            watcher(
                Api::<PersistentVolumeClaim>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each({
            let (retry, reclaim) = (retry_tx.clone(), reclaim_tx.clone());
            move |_| {
                let _ = retry.clone().try_send(());
                let _ = reclaim.clone().try_send(());
                futures::future::ready(())
            }
        }),
    );
    let (volume_store, volume_writer) = reflector::store();
    parts.spawn(
        reflector::reflector(
            volume_writer,
            watcher(
                Api::<PersistentVolume>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each({
            let (retry, reclaim) = (retry_tx.clone(), reclaim_tx);
            move |_| {
                let _ = retry.clone().try_send(());
                let _ = reclaim.clone().try_send(());
                futures::future::ready(())
            }
        }),
    );
    parts.spawn(volumes::reclaim(
        client.clone(),
        claims.clone(),
        volume_store.clone(),
        reclaim_rx,
    ));

    volumes::ensure_storage_class(&client).await;
    let controller = match source {
        PodSource::Own => {
            parts.spawn(feed(client.clone(), state.feed::<Node>()));
            parts.spawn(feed(client.clone(), state.feed::<Pod>()));
            let pending = watcher::Config::default().fields("spec.nodeName=");
            Controller::new(Api::<Pod>::all(client.clone()), pending)
        }
        PodSource::Shared { store, changes } => {
            // Only pods to place wake the controller; bound ones change all the time.
            let pending = changes.filter(|pod| futures::future::ready(wants_scheduling(pod)));
            Controller::for_shared_stream(pending, store)
        }
    };
    let context = Arc::new(Context {
        client: client.clone(),
        cache: state.cache,
        runtime_classes,
        claims,
        volumes: volume_store,
        synced: state.synced.whole.subscribe(),
        recorder: Recorder::new(client, SCHEDULER_NAME),
        image_kinds,
    });
    // A retry looks at every pod of the store: with a shared store, bound ones return at once.
    let controller = controller
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_all_on(state.retry_rx)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(error) = result {
                tracing::debug!(%error, "scheduling attempt failed");
            }
            futures::future::ready(())
        });
    parts.spawn(controller);
    tokio::select! {
        _ = parts.join_next() => {}
        () = shutdown.cancelled() => {}
    }
    // The controller stops on shutdown by itself; the watches are aborted.
    parts.shutdown().await;
}

/// Keeps the cache current from a pod or node watch of the scheduler's own.
async fn feed<K>(client: Client, mut feed: Feed<K>)
where
    K: Cached + kube::Resource<DynamicType = ()> + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Sync,
{
    watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(event) => feed.apply(&event),
                Err(error) => tracing::warn!(%error, "scheduler's watch failed; retrying"),
            }
            futures::future::ready(())
        })
        .await;
}

/// Whether this scheduler should place the pod now.
fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.node_name.as_deref().unwrap_or_default().is_empty()
        && pod.metadata.deletion_timestamp.is_none()
        && spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !wants_scheduling(&pod) {
        return Ok(Action::await_change());
    }
    let mut synced = ctx.synced.clone();
    // The sender lives as long as the scheduler; if it is gone we are shutting down.
    if synced.wait_for(|s| *s).await.is_err() {
        return Ok(Action::await_change());
    }
    let runtime_class = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
        .and_then(|n| ctx.runtime_classes.get(&ObjectRef::new(n)));
    let claimed = claim_needs(&ctx, &pod).await;
    let needs = match PodNeeds::of(&pod, runtime_class.as_deref()).and_then(|mut needs| {
        needs.volumes = claimed?;
        Ok(needs)
    }) {
        Ok(mut needs) => {
            if needs.runtimes.is_empty()
                && let Some(kinds) = &ctx.image_kinds
            {
                needs.runtimes = image_runtimes(kinds, &pod).await;
            }
            needs
        }
        Err(e) => {
            unschedulable(&ctx, &pod, &e.to_string()).await?;
            return Ok(Action::requeue(RETRY));
        }
    };
    let uid = pod.uid().unwrap_or_default();
    let choice = {
        let mut cache = ctx.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.pick(&needs) {
            Ok(node) => {
                cache.assume(&uid, &node, &needs);
                Ok(node)
            }
            Err(reasons) => Err(fit::unschedulable_message(cache.node_count(), &reasons)),
        }
    };
    match choice {
        Ok(node) => match prebind_and_bind(&ctx, &pod, &node, &needs).await {
            Ok(()) => {
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                );
                ctx.recorder.record(
                    pod.object_ref(&()),
                    EventType::Normal,
                    "Scheduled",
                    &message,
                );
                Ok(Action::await_change())
            }
            Err(e) => {
                ctx.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(&uid);
                // Bound meanwhile, being deleted, or gone: nothing left to do.
                if Error::is_gone_or_conflict(&e) {
                    Ok(Action::await_change())
                } else {
                    Err(Error::api("bind", &*pod, e))
                }
            }
        },
        Err(message) => {
            unschedulable(&ctx, &pod, &message).await?;
            Ok(Action::requeue(RETRY))
        }
    }
}

/// What the pod's claims ask of its node, from the claim and volume stores; a claim or volume
/// they do not show yet (a StatefulSet makes a claim just before its pod, and the watches race)
/// is asked of the API before the pod is called unschedulable for it.
async fn claim_needs(
    ctx: &Context,
    pod: &Pod,
) -> Result<Vec<volumes::VolumeNeed>, fit::NeedsError> {
    let namespace = pod.namespace().unwrap_or_default();
    let from_stores = volumes::needs(
        pod,
        |name| ctx.claims.get(&ObjectRef::new(name).within(&namespace)),
        |name| ctx.volumes.get(&ObjectRef::new(name)),
    );
    if !matches!(
        from_stores,
        Err(fit::NeedsError::NoClaim(_) | fit::NeedsError::NoVolume { .. })
    ) {
        return from_stores;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut fetched_claims = std::collections::HashMap::new();
    let mut fetched_volumes = std::collections::HashMap::new();
    let names = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    for name in names {
        let Ok(Some(claim)) = claims.get_opt(&name).await else {
            continue;
        };
        let bound = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        if let Some(volume) = bound.filter(|v| !v.is_empty())
            && let Ok(Some(pv)) = pvs.get_opt(&volume).await
        {
            fetched_volumes.insert(volume, Arc::new(pv));
        }
        fetched_claims.insert(name, Arc::new(claim));
    }
    volumes::needs(
        pod,
        |name| fetched_claims.get(name).cloned(),
        |name| {
            fetched_volumes
                .get(name)
                .cloned()
                .or_else(|| ctx.volumes.get(&ObjectRef::new(name)))
        },
    )
}

/// A resolver of image kinds for pods without a RuntimeClass; `None` (logged) if no registry
/// client can be made, and then such pods may go to any node.
pub(crate) fn image_kinds(insecure_registries: &[String]) -> Option<ImageKinds> {
    match ImageKinds::new(wedge_oci::RegistryHosts::insecure(insecure_registries)) {
        Ok(kinds) => Some(kinds),
        Err(error) => {
            tracing::warn!(%error, "no registry client: pods without a RuntimeClass may go to any node");
            None
        }
    }
}

/// The runtimes a pod's images need, asked of their registries: `wasm` for a Wasm image,
/// `runc` for a container image, both for a pod with both (a mixed pod). An image of unknown
/// kind (unreachable, private, imported by hand on the edge) needs nothing known: a pod whose
/// images are all unknown may go to any node.
pub(crate) async fn image_runtimes(kinds: &ImageKinds, pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let images = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.image.as_deref());
    let mut runtimes: Vec<String> = Vec::new();
    for image in images {
        let asked = tokio::time::timeout(IMAGE_LOOKUP, kinds.kind_of(image)).await;
        let this = match asked {
            Ok(Ok(ImageKind::Wasm { .. })) => wedge_core::runtimes::WASM,
            Ok(Ok(ImageKind::Container)) => wedge_core::runtimes::RUNC,
            Ok(Ok(ImageKind::Unsupported { .. })) => continue,
            Ok(Err(error)) => {
                tracing::debug!(%error, image, "image kind unknown");
                continue;
            }
            Err(_) => {
                tracing::debug!(image, "image kind lookup timed out");
                continue;
            }
        };
        if !runtimes.iter().any(|r| r == this) {
            runtimes.push(this.to_owned());
        }
    }
    runtimes.sort();
    runtimes
}

fn error_policy(_pod: Arc<Pod>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "scheduling failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Makes and binds the pod's local volumes on `node` (if it has any to make), then binds the
/// pod.
async fn prebind_and_bind(
    ctx: &Context,
    pod: &Pod,
    node: &str,
    needs: &PodNeeds,
) -> Result<(), kube::Error> {
    let local = needs
        .volumes
        .iter()
        .any(|v| matches!(v, volumes::VolumeNeed::Local { .. }));
    if local {
        let chosen = ctx
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .node(node);
        if let Some(chosen) = chosen {
            volumes::provision(&ctx.client, pod, &chosen, &needs.volumes).await?;
        }
    }
    bind(&ctx.client, pod, node).await
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let binding = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(drop)
}

/// Says on the pod, and in an event, why it fits nowhere; once per distinct reason.
async fn unschedulable(ctx: &Context, pod: &Pod, message: &str) -> Result<(), Error> {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
        return Ok(());
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(patch),
    )
    .await
    .map_err(|e| Error::api("mark unschedulable", pod, e))?;
    tracing::info!(pod = %pod.name_any(), %message, "pod is unschedulable");
    ctx.recorder.record(
        pod.object_ref(&()),
        EventType::Warning,
        "FailedScheduling",
        message,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(uid: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}
        }))
        .expect("pod")
    }

    #[test]
    fn shared_watches_list_count_and_give_a_deleted_pods_room_back() {
        let (feeds, SharedScheduler(mut state)) = shared();
        let whole = state.synced.whole.subscribe();
        let node = |cpu: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "a"},
                "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("node")
        };
        let needs = PodNeeds::of(&pod("p2", None), None).expect("needs");
        let pick = |state: &State| state.cache.lock().expect("cache").pick(&needs);

        feeds.node(&watcher::Event::Init);
        feeds.node(&watcher::Event::InitApply(node("1")));
        assert!(pick(&state).is_err(), "no node counted mid-listing");
        feeds.node(&watcher::Event::InitDone);
        assert_eq!(pick(&state), Ok("a".to_owned()));
        assert!(state.retry_rx.try_recv().is_ok(), "retried");
        assert!(!*whole.borrow(), "nodes listed, pods not yet");

        feeds.pod(&watcher::Event::Init);
        feeds.pod(&watcher::Event::InitApply(pod("p1", Some("a"))));
        assert_eq!(pick(&state), Ok("a".to_owned()), "not counted mid-listing");
        feeds.pod(&watcher::Event::InitDone);
        assert!(pick(&state).is_err(), "the listed pod takes the node");
        assert!(state.retry_rx.try_recv().is_ok(), "retried");
        assert!(*whole.borrow(), "both listed");

        // A deletion gives the room back; so does a node that grew.
        feeds.pod(&watcher::Event::Delete(pod("p1", Some("a"))));
        assert_eq!(pick(&state), Ok("a".to_owned()));
        assert!(state.retry_rx.try_recv().is_ok(), "retried");
        feeds.pod(&watcher::Event::Apply(pod("p3", Some("a"))));
        assert!(pick(&state).is_err(), "p3 takes the node");
        feeds.node(&watcher::Event::Apply(node("2")));
        assert_eq!(pick(&state), Ok("a".to_owned()));
        assert!(state.retry_rx.try_recv().is_ok(), "retried");
    }
}
