//! Edged: runs the pods MetaManager holds and reports how they are.
//!
//! One task reconciles the desired pods (MetaManager's copy of what the cloud sent) with what
//! the pod workers run: it starts pods it does not run (env resolved from the ConfigMaps and
//! Secrets held here, the spec checked by [`plan`]), stops pods being deleted within their grace
//! period and confirms the deletion, stops pods the cloud no longer sends. Status changes come
//! from the workers' listener and go to the outbox at once, coalesced per pod; the node's status
//! and lease go there on their intervals, and resource usage is sampled on its own ([`usage`]).
//! Nothing here needs the cloud: with the link down, pods
//! still start after a restart and reports wait in the outbox.
//!
//! Edged does the kubelet's job once for every runtime ([`pod_workers`], [`worker`], and
//! [`logs`], [`exec`] and [`portforward`] for the streams of `kubectl`); the runtimes
//! ([`runtimes`]) only run sandboxes and containers and carry the streams' bytes.
//! Which runtime a pod runs on is decided by [`runtime_class`], in a task of its own (it may ask
//! a registry), whose answer comes back to the loop that starts the pod.

pub mod claims;
pub mod env;
pub mod exec;
pub mod log_manager;
pub mod logs;
pub mod node;
pub mod notices;
pub mod objects;
pub mod plan;
pub mod pod_workers;
pub mod portforward;
pub mod prober;
pub mod pull_secrets;
pub mod runtime_class;
pub mod runtimes;
pub mod status;
pub mod tokens;
pub mod usage;
pub mod volumes;
pub mod worker;

/// A hash of `value`, to tell whether what it was taken of changed.
fn stamp(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod edged_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod worker_tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::api::node::v1::RuntimeClass;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, ResourceKind};
use wedge_core::runtime::PullAuth;

use crate::metamanager::{MetaManager, Object};
use crate::reports::{self, Report};
use crate::store::Outbox;
use node::NodeFacts;
use pod_workers::PodWorkers;
use status::PodFacts;

/// The kinds Edged serves: pods and what they reference.
const EDGED_KINDS: [ResourceKind; 6] = [
    ResourceKind::Pod,
    ResourceKind::ConfigMap,
    ResourceKind::Secret,
    ResourceKind::RuntimeClass,
    ResourceKind::PersistentVolumeClaim,
    ResourceKind::PersistentVolume,
];

/// Resolves when `tokens` received a token (pods' projected volumes are written again); never
/// without a token manager.
async fn tokens_changed(tokens: Option<&tokens::TokenManager>) {
    match tokens {
        Some(tokens) => tokens.changed().await,
        None => std::future::pending().await,
    }
}

/// Edged's settings.
#[derive(Debug, Clone)]
pub struct EdgedConfig {
    /// The node.
    pub node: NodeFacts,
    /// How often the node status is reported.
    pub node_status_interval: Duration,
    /// How often the lease is renewed.
    pub lease_interval: Duration,
    /// How often resource usage is sampled ([`usage`]).
    pub usage_interval: Duration,
    /// The lease duration the cloud is told.
    pub lease_duration_seconds: i32,
    /// How often every pod's status is compared with what was reported, besides the runtime's
    /// change notices.
    pub status_resync: Duration,
    /// Whether containers may run `privileged` (edgecore `--allow-privileged`).
    pub allow_privileged: bool,
    /// The edge's own registry credentials, by host, for every pod's pulls wherever its
    /// `imagePullSecrets` name none ([`pull_secrets::node_credentials`]).
    pub node_credentials: std::collections::BTreeMap<String, PullAuth>,
    /// When containers' logs are rotated ([`log_manager`]).
    pub log_limits: wedge_core::logrotation::LogLimits,
}

impl EdgedConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeFacts) -> Self {
        Self {
            node,
            node_status_interval: Duration::from_secs(60),
            lease_interval: Duration::from_secs(10),
            usage_interval: Duration::from_secs(15),
            lease_duration_seconds: 40,
            status_resync: Duration::from_secs(10),
            allow_privileged: false,
            node_credentials: Default::default(),
            log_limits: Default::default(),
        }
    }
}

/// What Edged remembers of a pod it has seen.
#[derive(Debug)]
struct PodState {
    /// The pod as MetaManager last held it, refreshed at each reconcile, so status reports
    /// need no store read.
    pod: Arc<Pod>,
    namespace: String,
    name: String,
    start_time: jiff::Timestamp,
    /// Why it could not start, for which resourceVersion.
    refused: Option<(String, String)>,
    reported: Option<PodStatus>,
    /// Its runtime is being chosen (see [`runtime_class`]).
    choosing: bool,
    stopping: bool,
    confirmed: bool,
    /// What its file volumes were last written from ([`Edged::volume_inputs`] and the pod's
    /// version): while it stands, a reconcile leaves them alone.
    volumes_written_from: Option<u64>,
    /// Whether its MQTT login is accepted, if it names one (`mqtt.wedge.io/login`).
    mqtt_login: Option<crate::eventbus::logins::Outcome>,
}

/// A stop that finished.
struct Stopped {
    uid: String,
    confirm: bool,
}

/// A pod whose runtime was chosen, ready to start.
struct Chosen {
    uid: String,
    /// The resourceVersion planned.
    rv: String,
    plan: plan::PodPlan,
    auth: std::collections::BTreeMap<String, PullAuth>,
    placement: Result<pod_workers::Placement, runtime_class::ChoiceError>,
}

/// What the loop's helper tasks send back.
#[derive(Clone)]
struct Loopback {
    stopped: mpsc::UnboundedSender<Stopped>,
    chosen: mpsc::UnboundedSender<Chosen>,
}

/// What a reconcile brings up to date.
enum Scope {
    /// Every pod: at start, on the resync interval, when a token arrived or something pods
    /// reference changed.
    All,
    /// The pods of these keys, the only objects that changed.
    Pods(BTreeSet<ObjectKey>),
}

impl Scope {
    fn includes(&self, pod: &Pod) -> bool {
        match self {
            Self::All => true,
            Self::Pods(keys) => keys.contains(&ObjectKey {
                kind: ResourceKind::Pod,
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
            }),
        }
    }
}

/// The pod manager.
pub struct Edged {
    workers: PodWorkers,
    meta: MetaManager,
    outbox: Outbox,
    /// Where the resource usage samples go (EdgeHub sends them).
    usage: Arc<usage::UsageFeed>,
    config: EdgedConfig,
    pods: HashMap<String, PodState>,
    /// The pods MetaManager holds that do not parse, with the version logged.
    unparsable: HashMap<ObjectKey, String>,
    /// How many times ConfigMaps or Secrets changed, counted from MetaManager's notices: with
    /// the tokens received and a pod's own version, what its file volumes are written from.
    referenced_changes: u64,
    /// Where the kinds of images no runtime holds are asked, on edges with several runtimes.
    image_kinds: Option<Arc<dyn runtime_class::ImageKinds>>,
    /// The ServiceAccount tokens of pods' projected volumes, asked of the cloud.
    tokens: Option<Arc<tokens::TokenManager>>,
    /// The MQTT logins pods bring, kept to the pods on this edge.
    logins: Option<Arc<crate::eventbus::logins::PodLogins>>,
    /// Pods being stopped and directories being removed: waited for when Edged stops (each
    /// stop is bounded by its pod's grace period).
    stops: tokio_util::task::TaskTracker,
    /// Runtimes being chosen (registry lookups): dropped, and so aborted, when Edged stops.
    choices: tokio::task::JoinSet<()>,
}

fn grace_of(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn is_terminal(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(phase_is_terminal)
}

fn phase_is_terminal(status: &PodStatus) -> bool {
    matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// Removes a stopped pod's directory (its logs and volumes, Secrets' files among them), as the
/// kubelet does once a pod is deleted, off the async workers.
async fn remove_pod_dir(dir: std::path::PathBuf) {
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    })
    .await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error, "cannot remove a stopped pod's directory"),
        Err(error) => tracing::warn!(%error, "cannot remove a stopped pod's directory"),
    }
}

/// Removes the directories under `pods_root` of pods not in `held` (deleted while edgecore was
/// down, or left by a crash between a stop and its cleanup). Blocking.
fn remove_orphaned_pod_dirs(pods_root: &std::path::Path, held: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(pods_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(uid) = name.to_str().and_then(|n| n.rsplit('_').next()) else {
            continue;
        };
        if held.contains(uid) || !entry.path().is_dir() {
            continue;
        }
        tracing::info!(dir = %entry.path().display(), "removing the directory of a pod no longer held");
        if let Err(error) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), %error, "cannot remove an orphaned pod directory");
        }
    }
}

/// The token a volume already holds at `file`, if any.
fn held_token(file: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// Queues `report`; the outbox wakes EdgeHub, which sends it also when it waits in memory (a
/// full disk).
async fn put(outbox: &Outbox, report: &Report) {
    outbox
        .queue(&report.key, report.operation, &report.payload)
        .await;
}

/// The status this edge last reported for `pod` (this uid): the one waiting in the outbox, else
/// the last one the cloud acknowledged. The stored pod's status can be older than both: the
/// cloud sends the pod back with its new status only after it acknowledged the report, and a
/// link cut or a restart in between loses that copy until the next resync.
fn reported_status(outbox: &Outbox, pod: &Pod) -> Option<PodStatus> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let key = reports::pod_status_key(namespace, pod.metadata.name.as_deref()?);
    let uid = pod.metadata.uid.as_deref()?;
    let of_this_pod =
        |report: serde_json::Value| (report.get("uid")?.as_str()? == uid).then_some(report);
    let report = outbox
        .get(&key)
        .ok()
        .flatten()
        .and_then(of_this_pod)
        .or_else(|| {
            outbox
                .acknowledged(&key)
                .ok()
                .flatten()
                .and_then(of_this_pod)
        })?;
    match serde_json::from_value(report.get("status")?.clone()) {
        Ok(status) => Some(status),
        Err(error) => {
            tracing::warn!(%key, %error, "a reported pod status does not parse");
            None
        }
    }
}

impl Edged {
    /// Edged over `workers`, reading `meta` and writing `outbox`.
    pub fn new(
        workers: PodWorkers,
        meta: MetaManager,
        outbox: Outbox,
        usage: Arc<usage::UsageFeed>,
        config: EdgedConfig,
    ) -> Self {
        Self {
            workers,
            meta,
            outbox,
            usage,
            config,
            pods: HashMap::new(),
            unparsable: HashMap::new(),
            referenced_changes: 0,
            image_kinds: None,
            tokens: None,
            logins: None,
            stops: tokio_util::task::TaskTracker::new(),
            choices: tokio::task::JoinSet::new(),
        }
    }

    /// Keeps `logins` to the MQTT logins of the pods on this edge (`mqtt.wedge.io/login`), and
    /// reports on each such pod whether its login is accepted.
    #[must_use]
    pub fn with_logins(mut self, logins: Arc<crate::eventbus::logins::PodLogins>) -> Self {
        self.logins = Some(logins);
        self
    }

    /// Gets pods' ServiceAccount tokens through `tokens`; without it, a pod that mounts one
    /// waits, saying this edge cannot get them.
    #[must_use]
    pub fn with_tokens(mut self, tokens: Arc<tokens::TokenManager>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Asks `kinds` the kind of images no runtime here holds, to choose a pod's runtime.
    #[must_use]
    pub fn with_image_kinds(mut self, kinds: Arc<dyn runtime_class::ImageKinds>) -> Self {
        self.image_kinds = Some(kinds);
        self
    }

    /// Runs until `shutdown`, then lets go of the pods: containers keep running and are adopted
    /// at the next start.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Before the first read, so that no change after it goes unseen.
        let mut objects = self.meta.subscribe(&EDGED_KINDS);
        let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<String>();
        self.workers.watch(Arc::new(move |uid: &str| {
            let _ = changed_tx.send(uid.to_owned());
        }));
        // What the runtimes still run from before a restart is adopted, not started again;
        // what belongs to no pod held here goes.
        self.workers.take_inventory().await;
        let held: HashSet<String> = self
            .desired_pods()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.workers.remove_orphans(&held).await;
        // A pod that had finished is not run again: its sandbox stays stopped (no network) until
        // the pod is deleted.
        let finished: HashSet<String> = self
            .desired_pods()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                is_terminal(p)
                    || reported_status(&self.outbox, p).is_some_and(|s| phase_is_terminal(&s))
            })
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        for uid in &finished {
            tracing::info!(
                uid,
                "the pod had finished before this start: it is not run again"
            );
        }
        self.workers.stop_leftovers(&finished).await;
        // Directories go only with pods the edge no longer holds at all: a pod being deleted
        // keeps its volumes and logs until it has stopped.
        let pods_root = self.workers.config().pods_root.clone();
        let all: HashSet<String> = self
            .desired_pods()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        if let Err(error) =
            tokio::task::spawn_blocking(move || remove_orphaned_pod_dirs(&pods_root, &all)).await
        {
            tracing::warn!(%error, "cannot sweep orphaned pod directories");
        }
        // So do the statuses kept of pods that left while edgecore was down.
        let held: HashSet<(String, String)> = self
            .desired_pods()
            .iter()
            .map(|p| {
                let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
                (
                    namespace.to_owned(),
                    p.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let gone = match self.outbox.acknowledged_names(ResourceKind::PodStatus) {
            Ok(names) => names
                .into_iter()
                .filter(|n| !held.contains(n))
                .map(|(namespace, name)| (reports::pod_status_key(&namespace, &name), None))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list the statuses kept of pods");
                Vec::new()
            }
        };
        if let Err(error) = self.outbox.forget_acknowledged(gone).await {
            tracing::warn!(%error, "cannot forget the statuses of pods that left");
        }
        let (stopped_tx, mut stopped_rx) = mpsc::unbounded_channel::<Stopped>();
        let (chosen_tx, mut chosen_rx) = mpsc::unbounded_channel::<Chosen>();
        let loopback = Loopback {
            stopped: stopped_tx,
            chosen: chosen_tx,
        };
        // The node's status asks the runtimes (which may be slow or down): a task of its own,
        // ended with this loop.
        let mut background = tokio::task::JoinSet::new();
        background.spawn(node::report_loop(
            self.config.clone(),
            self.workers.runtimes().clone(),
            self.outbox.clone(),
        ));
        if let Some(tokens) = &self.tokens {
            background.spawn(tokens.clone().run(shutdown.clone()));
        }
        background.spawn(log_manager::run(
            self.workers.clone(),
            self.config.log_limits,
            log_manager::MONITOR_INTERVAL,
        ));
        background.spawn(usage::sample_loop(
            self.workers.clone(),
            self.config.usage_interval,
            self.usage.clone(),
        ));
        let mut lease_tick = tokio::time::interval(self.config.lease_interval);
        let mut resync_tick = tokio::time::interval(self.config.status_resync);
        let mut scope = Some(Scope::All);
        loop {
            if let Some(scope) = scope.take() {
                self.reconcile(&loopback, &scope).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                keys = objects.changed() => scope = Some(self.scope_of(keys)),
                () = tokens_changed(self.tokens.as_deref()) => scope = Some(Scope::All),
                Some(uid) = changed_rx.recv() => {
                    let mut uids = HashSet::from([uid]);
                    while let Ok(more) = changed_rx.try_recv() {
                        uids.insert(more);
                    }
                    for uid in uids {
                        self.report_status(&uid).await;
                    }
                }
                Some(stopped) = stopped_rx.recv() => self.stopped(stopped).await,
                Some(chosen) = chosen_rx.recv() => self.chosen(chosen).await,
                Some(Err(error)) = self.choices.join_next(), if !self.choices.is_empty() => {
                    // A bug: that pod waits until edgecore restarts. Said loudly, once.
                    tracing::error!(%error, "choosing a pod's runtime failed");
                }
                _ = lease_tick.tick() => {
                    let node = self.config.node.name.clone();
                    self.put(reports::lease(&node, self.config.lease_duration_seconds)).await;
                }
                _ = resync_tick.tick() => {
                    scope = Some(Scope::All);
                    let uids: Vec<String> = self.pods.keys().cloned().collect();
                    for uid in uids {
                        self.report_status(&uid).await;
                    }
                }
            }
        }
        background.shutdown().await;
        self.choices.shutdown().await;
        // Deletions under way finish (each within its pod's grace period), so a pod deleted
        // just before is not left half stopped; the rest are let go of.
        self.stops.close();
        if !self.stops.is_empty() {
            tracing::info!(
                stopping = self.stops.len(),
                "waiting for the pods being stopped"
            );
        }
        self.stops.wait().await;
        self.workers.detach_all();
    }

    async fn put(&self, report: Report) {
        put(&self.outbox, &report).await;
    }

    /// The pods MetaManager holds, each parsed once per version (MetaManager keeps them
    /// parsed): a change costs the same with one pod held or a hundred. A pod that does not
    /// parse is logged once per version and left out until a new version comes.
    fn desired_pods(&mut self) -> Vec<Arc<Pod>> {
        let held = self.meta.list(ResourceKind::Pod);
        let mut pods = Vec::with_capacity(held.len());
        let mut unparsable = HashMap::new();
        for object in held {
            match object.typed::<Pod>() {
                Ok(pod) => pods.push(pod),
                Err(error) => {
                    let rv = object.resource_version.clone();
                    if self.unparsable.get(&object.key) != Some(&rv) {
                        tracing::error!(key = %object.key, %error, "a stored pod does not parse; skipped until a new version comes");
                    }
                    unparsable.insert(object.key.clone(), rv);
                }
            }
        }
        self.unparsable = unparsable;
        pods
    }

    fn lookup(&self, kind: ResourceKind, namespace: &str, name: &str) -> Option<Arc<Object>> {
        let key = ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.meta.get(&key)
    }

    /// What a change of `keys` asks to reconcile: only the pods among them when nothing else
    /// changed; every pod when something pods reference did (a ConfigMap, Secret, claim,
    /// volume or RuntimeClass: a pod waiting for it starts, volumes written from it follow).
    fn scope_of(&mut self, keys: BTreeSet<ObjectKey>) -> Scope {
        if keys
            .iter()
            .any(|k| matches!(k.kind, ResourceKind::ConfigMap | ResourceKind::Secret))
        {
            self.referenced_changes += 1;
        }
        if keys.iter().all(|k| k.kind == ResourceKind::Pod) {
            Scope::Pods(keys)
        } else {
            Scope::All
        }
    }

    /// Brings the workers to the pods MetaManager holds: those in `scope` are started, stopped
    /// or have their volumes refreshed; a running pod MetaManager no longer holds is stopped
    /// whatever the scope.
    async fn reconcile(&mut self, loopback: &Loopback, scope: &Scope) {
        let stopped = &loopback.stopped;
        let desired = self.desired_pods();
        let running: HashSet<String> = self.workers.pods().into_iter().collect();
        // Only when some pod runs whose volumes may need it.
        let inputs = if running.is_empty() {
            None
        } else {
            Some(self.volume_inputs())
        };
        // What the runtimes still hold of pods not started since a restart (finished ones among
        // them): removed at their deletion as a running pod is stopped.
        let leftovers = self.workers.leftovers();
        let mut wanted = HashSet::new();
        for pod in desired {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            wanted.insert(uid.clone());
            if !scope.includes(&pod) {
                continue;
            }
            let state = self.pods.entry(uid.clone()).or_insert_with(|| {
                // What this edge reported is newer than the cloud's copy (a status still in the
                // outbox, or one acknowledged whose pod has not come back down yet): a pod that
                // finished must not run again after a restart.
                let reported = reported_status(&self.outbox, &pod).or_else(|| pod.status.clone());
                PodState {
                    pod: pod.clone(),
                    namespace: pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    start_time: reported
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map_or_else(jiff::Timestamp::now, |t| t.0),
                    refused: None,
                    reported,
                    choosing: false,
                    stopping: false,
                    confirmed: false,
                    volumes_written_from: None,
                    mqtt_login: None,
                }
            });
            state.pod = pod.clone();
            if pod.metadata.deletion_timestamp.is_some() {
                if running.contains(&uid) || leftovers.contains(&uid) {
                    if !state.stopping {
                        state.stopping = true;
                        let dir = plan::pod_dir(
                            &self.workers.config().pods_root,
                            &state.namespace,
                            &state.name,
                            &uid,
                        );
                        let (workers, grace, tx) =
                            (self.workers.clone(), grace_of(&pod), stopped.clone());
                        tracing::info!(pod = %format!("{}/{}", state.namespace, state.name), ?grace, "stopping a deleted pod");
                        self.stops.spawn(async move {
                            workers.stop(&uid, grace).await;
                            remove_pod_dir(dir).await;
                            let _ = tx.send(Stopped { uid, confirm: true });
                        });
                    }
                } else if !state.confirmed && !state.stopping {
                    state.confirmed = true;
                    let report = reports::pod_gone(&state.namespace, &state.name, &uid);
                    // Volumes may have been written for a pod that never ran.
                    self.stops.spawn(remove_pod_dir(plan::pod_dir(
                        &self.workers.config().pods_root,
                        &state.namespace,
                        &state.name,
                        &uid,
                    )));
                    self.put(report).await;
                }
                continue;
            }
            let finished =
                is_terminal(&pod) || state.reported.as_ref().is_some_and(phase_is_terminal);
            if running.contains(&uid) {
                // Only when something a volume is written from changed: each start wakes this
                // loop, and rendering every running pod's volumes then made starts cost more
                // the more pods ran.
                let from = inputs.map(|i| stamp(&(i, &pod.metadata.resource_version)));
                if (from.is_none() || state.volumes_written_from != from)
                    && self.refresh_volumes(&pod).await
                    && let Some(state) = self.pods.get_mut(&uid)
                {
                    state.volumes_written_from = from;
                }
                continue;
            }
            if finished || state.choosing {
                continue;
            }
            let rv = pod.metadata.resource_version.clone().unwrap_or_default();
            if state.refused.as_ref().is_some_and(|(at, _)| *at == rv) {
                continue;
            }
            let outcome = self.start(&pod, rv.clone(), &loopback.chosen).await;
            let state = self.pods.get_mut(&uid).expect("inserted above");
            match outcome {
                Ok(()) => state.choosing = true,
                Err((message, permanent)) => {
                    tracing::warn!(pod = %format!("{}/{}", state.namespace, state.name), message, "cannot start the pod");
                    // A permanent refusal waits for a new version of the pod; a missing
                    // ConfigMap or Secret is retried whenever objects change.
                    state.refused = Some((if permanent { rv } else { String::new() }, message));
                }
            }
            self.report_status(&uid).await;
        }
        for uid in running
            .union(&leftovers)
            .filter(|uid| !wanted.contains(*uid))
        {
            if self.pods.get(uid).is_some_and(|s| s.stopping) {
                continue;
            }
            if let Some(state) = self.pods.get_mut(uid) {
                state.stopping = true;
            }
            tracing::info!(uid, "stopping a pod the cloud no longer sends");
            let (workers, tx, uid) = (self.workers.clone(), stopped.clone(), uid.clone());
            let grace = self
                .pods
                .get(&uid)
                .map_or(Duration::from_secs(30), |s| grace_of(&s.pod));
            let dir = self.pods.get(&uid).map(|s| {
                plan::pod_dir(
                    &self.workers.config().pods_root,
                    &s.namespace,
                    &s.name,
                    &uid,
                )
            });
            self.stops.spawn(async move {
                workers.stop(&uid, grace).await;
                if let Some(dir) = dir {
                    remove_pod_dir(dir).await;
                }
                let _ = tx.send(Stopped {
                    uid,
                    confirm: false,
                });
            });
        }
        let mut left = Vec::new();
        self.pods.retain(|uid, s| {
            let keep = wanted.contains(uid) || s.stopping;
            if !keep {
                left.push((
                    reports::pod_status_key(&s.namespace, &s.name),
                    Some(uid.clone()),
                ));
            }
            keep
        });
        if let Err(error) = self.outbox.forget_acknowledged(left).await {
            tracing::warn!(%error, "cannot forget the statuses of pods that left");
        }
        if let Some(tokens) = &self.tokens {
            tokens.retain(&self.pods.keys().cloned().collect());
        }
        self.sync_logins().await;
    }

    /// Makes the MQTT logins those of the pods on this edge that name one (not deleted, not
    /// finished), and reports each such pod's outcome when it changes.
    async fn sync_logins(&mut self) {
        use crate::eventbus::logins::WantedLogin;
        let Some(logins) = self.logins.clone() else {
            return;
        };
        let mut wanted = Vec::new();
        for (uid, state) in &self.pods {
            let pod = &state.pod;
            let gone = state.stopping
                || state.confirmed
                || pod.metadata.deletion_timestamp.is_some()
                || is_terminal(pod)
                || state.reported.as_ref().is_some_and(phase_is_terminal);
            let annotations = pod.metadata.annotations.as_ref();
            let Some(secret_name) = annotations
                .and_then(|a| a.get(wedge_core::grants::MQTT_LOGIN))
                .map(|n| n.trim())
                .filter(|n| !gone && !n.is_empty())
            else {
                continue;
            };
            wanted.push(WantedLogin {
                uid: uid.clone(),
                pod: format!("{}/{}", state.namespace, state.name),
                secret_name: secret_name.to_owned(),
                secret: self.lookup(ResourceKind::Secret, &state.namespace, secret_name),
                grants: wedge_core::grants::PodGrants::from_annotations(
                    annotations.unwrap_or(&Default::default()),
                )
                .map_err(|e| e.to_string()),
            });
        }
        // Most edges' pods name no login: nothing to lock or report.
        if wanted.is_empty()
            && logins.is_empty()
            && self.pods.values().all(|s| s.mqtt_login.is_none())
        {
            return;
        }
        let mut outcomes: HashMap<String, _> = logins.sync(wanted).into_iter().collect();
        let mut changed = Vec::new();
        for (uid, state) in &mut self.pods {
            let outcome = outcomes.remove(uid);
            if state.mqtt_login != outcome {
                state.mqtt_login = outcome;
                changed.push(uid.clone());
            }
        }
        for uid in changed {
            self.report_status(&uid).await;
        }
    }

    /// Prepares a pod: env, volumes and pull credentials from what MetaManager holds, the spec
    /// planned, its RuntimeClass resolved; then has its runtime chosen in a task that sends the
    /// pod back on `chosen` to be started. `Err((message, permanent))`: a permanent refusal
    /// waits for a new version of the pod, a missing ConfigMap, Secret or RuntimeClass is
    /// retried whenever objects change.
    async fn start(
        &mut self,
        pod: &Pod,
        rv: String,
        chosen: &mpsc::UnboundedSender<Chosen>,
    ) -> Result<(), (String, bool)> {
        let lookup = |k, ns: &str, n: &str| self.lookup(k, ns, n);
        let resolved = env::resolve_env(pod, &lookup).map_err(|m| (m, false))?;
        let resolved = claims::resolve_claims(&resolved, &lookup).map_err(|e| match e {
            claims::ClaimError::Waiting(m) => (m, false),
            claims::ClaimError::Refused(m) => (m, true),
        })?;
        let plan = plan::plan_pod(&resolved, &self.workers.config().pods_root)
            .map_err(|e| (e.to_string(), true))?;
        if !self.config.allow_privileged
            && let Some(c) = plan.all_containers().find(|c| c.security.privileged)
        {
            return Err((
                format!(
                    "container {:?} asks to run privileged, which this edge does not allow (edgecore --allow-privileged)",
                    c.name
                ),
                true,
            ));
        }
        let class = match &plan.runtime_class {
            Some(name) => Some((name.clone(), self.runtime_class(name)?)),
            None => None,
        };
        self.write_volumes(pod, &plan)
            .await
            .map_err(|m| (m, false))?;
        let auth = pull_secrets::pull_auth(pod, &lookup, &self.config.node_credentials);
        let (runtimes, kinds, tx) = (
            self.workers.runtimes().clone(),
            self.image_kinds.clone(),
            chosen.clone(),
        );
        self.choices.spawn(async move {
            let class = class.as_ref().map(|(n, h)| (n.as_str(), h.as_str()));
            let placement =
                runtime_class::choose(&runtimes, class, &plan, &auth, kinds.as_deref()).await;
            let _ = tx.send(Chosen {
                uid: plan.uid.clone(),
                rv,
                plan,
                auth,
                placement,
            });
        });
        Ok(())
    }

    /// The handler of RuntimeClass `name`, from MetaManager (the cloud sends it with the pod).
    fn runtime_class(&self, name: &str) -> Result<String, (String, bool)> {
        let missing = || {
            (
                format!("RuntimeClass {name:?} not found on this edge (yet)"),
                false,
            )
        };
        let class = self
            .lookup(ResourceKind::RuntimeClass, "", name)
            .ok_or_else(missing)?
            .typed::<RuntimeClass>()
            .map_err(|e| (format!("RuntimeClass {name:?} does not parse: {e}"), false))?;
        Ok(class.handler.clone())
    }

    /// Starts a pod whose runtime was chosen, unless it was deleted or changed meanwhile.
    async fn chosen(&mut self, chosen: Chosen) {
        let Some(state) = self.pods.get_mut(&chosen.uid) else {
            return;
        };
        state.choosing = false;
        if state.stopping || state.confirmed || state.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let pod_name = format!("{}/{}", state.namespace, state.name);
        let outcome = chosen
            .placement
            .map_err(|e| e.to_string())
            .and_then(|placement| {
                self.workers
                    .start(chosen.plan, placement, chosen.auth)
                    .map_err(|e| e.to_string())
            });
        match outcome {
            Ok(()) => state.refused = None,
            Err(message) => {
                tracing::warn!(pod = %pod_name, message, "cannot start the pod");
                state.refused = Some((chosen.rv, message));
            }
        }
        self.report_status(&chosen.uid).await;
    }

    /// Writes the pod's ConfigMap, Secret, downward-API and projected volumes (only what
    /// changed), off the async workers.
    async fn write_volumes(&self, pod: &Pod, plan: &plan::PodPlan) -> Result<(), String> {
        let lookup = |k, ns: &str, n: &str| self.lookup(k, ns, n);
        let mut writes = Vec::new();
        for volume in plan.volumes.iter().filter(|v| v.files) {
            // A token the cloud has not answered for (it may be away) falls back to the one
            // the volume already holds, so that pods start again after an offline restart.
            let token = |key: &tokens::TokenKey, path: &std::path::Path| {
                self.tokens
                    .as_ref()
                    .and_then(|t| t.get(key))
                    .or_else(|| held_token(&volume.host_path.join(path)))
            };
            if let Some(files) = volumes::render(pod, &volume.name, &lookup, &token)? {
                writes.push((volume.host_path.clone(), files));
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            for (dir, files) in writes {
                if volumes::write_atomically(&dir, &files)
                    .map_err(|e| format!("cannot write volume {}: {e}", dir.display()))?
                {
                    tracing::debug!(volume = %dir.display(), "volume written");
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// A stamp of what file volumes are written from besides the pod itself: the ConfigMaps
    /// and Secrets MetaManager holds (their changes counted) and the tokens received.
    fn volume_inputs(&self) -> u64 {
        let received = self.tokens.as_ref().map(|t| t.received());
        stamp(&(self.referenced_changes, received))
    }

    /// Brings a running pod's file volumes up to date with MetaManager, as the kubelet's
    /// periodic sync does; a failure keeps what the volume held. Whether they are up to date.
    async fn refresh_volumes(&self, pod: &Pod) -> bool {
        // Most pods have no file volume: skip them before resolving and planning anything.
        let has_files = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(volumes::writes_files);
        if !has_files {
            return true;
        }
        let lookup = |k, ns: &str, n: &str| self.lookup(k, ns, n);
        let Ok(resolved) = env::resolve_env(pod, &lookup) else {
            return false;
        };
        let Ok(resolved) = claims::resolve_claims(&resolved, &lookup) else {
            return false;
        };
        let Ok(plan) = plan::plan_pod(&resolved, &self.workers.config().pods_root) else {
            return false;
        };
        match self.write_volumes(pod, &plan).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(pod = %plan.display_name, error, "cannot update the pod's volumes");
                false
            }
        }
    }

    async fn stopped(&mut self, stopped: Stopped) {
        let Some(state) = self.pods.get_mut(&stopped.uid) else {
            return;
        };
        state.stopping = false;
        if stopped.confirm && !state.confirmed {
            state.confirmed = true;
            let report = reports::pod_gone(&state.namespace, &state.name, &stopped.uid);
            self.put(report).await;
            tracing::info!(uid = stopped.uid, "pod stopped; deletion confirmed");
        }
    }

    async fn report_status(&mut self, uid: &str) {
        let Some(state) = self.pods.get(uid) else {
            return;
        };
        if state.stopping || state.confirmed {
            return;
        }
        let pod = &state.pod;
        let report = self.workers.status(uid);
        // A finished pod the runtime no longer tracks keeps the terminal status it had; it
        // must not fall back to Pending because the cloud's copy has not caught up.
        let finished = is_terminal(pod) || state.reported.as_ref().is_some_and(phase_is_terminal);
        if report.is_none() && state.refused.is_none() && finished {
            return;
        }
        let facts = PodFacts {
            node_ip: &self.config.node.ip,
            start_time: state.start_time,
            refused: state.refused.as_ref().map(|(_, m)| m.as_str()),
            mqtt_login: state.mqtt_login.as_ref(),
        };
        let status = status::pod_status(pod, report.as_ref(), &facts, state.reported.as_ref());
        if state.reported.as_ref() == Some(&status) {
            return;
        }
        let entry = reports::pod_status(&state.namespace, &state.name, uid, &status);
        self.put(entry).await;
        if let Some(state) = self.pods.get_mut(uid) {
            state.reported = Some(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_pods_held_survive_the_sweep() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["default_kept_u1", "default_gone_u2", "apps_gone-too_u3"] {
            std::fs::create_dir_all(dir.path().join(name).join("main")).expect("mkdir");
        }
        remove_orphaned_pod_dirs(dir.path(), &HashSet::from(["u1".to_owned()]));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["default_kept_u1"]);
    }

    #[tokio::test]
    async fn the_status_reported_is_found_for_its_pod_queued_and_once_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = crate::store::Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .outbox();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "finite", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        assert!(reported_status(&outbox, &pod).is_none());
        let finished = PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        };
        let report = reports::pod_status("default", "finite", "u1", &finished);
        outbox
            .put(&report.key, report.operation, &report.payload)
            .await
            .expect("put");
        let queued = reported_status(&outbox, &pod).expect("queued");
        assert!(phase_is_terminal(&queued));
        let mut other = pod.clone();
        other.metadata.uid = Some("u2".into());
        assert!(
            reported_status(&outbox, &other).is_none(),
            "another pod of that name"
        );

        // Acknowledged: the entry goes, the status stays (the cloud does not send it back).
        let sent = outbox.pending(0, 10).expect("pending");
        assert!(
            outbox
                .acknowledge(&report.key, sent[0].seq)
                .await
                .expect("ack")
        );
        assert!(outbox.is_empty().expect("len"));
        let kept = reported_status(&outbox, &pod).expect("kept once acknowledged");
        assert!(phase_is_terminal(&kept));
        assert!(reported_status(&outbox, &other).is_none());

        // Forgotten when its pod leaves, not when another pod of that name does.
        let key = reports::pod_status_key("default", "finite");
        outbox
            .forget_acknowledged(vec![(key.clone(), Some("u2".into()))])
            .await
            .expect("forget");
        assert!(reported_status(&outbox, &pod).is_some());
        outbox
            .forget_acknowledged(vec![(key, Some("u1".into()))])
            .await
            .expect("forget");
        assert!(reported_status(&outbox, &pod).is_none());
        assert!(
            outbox
                .acknowledged_names(ResourceKind::PodStatus)
                .expect("names")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn pods_are_parsed_again_only_when_their_version_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::Database::open(&dir.path().join("edge.db")).expect("open");
        let workers = PodWorkers::new(
            runtimes::Runtimes::new().with(runtimes::RuntimeHandle::new(Arc::new(
                fake::Fake::default(),
            ))),
            pod_workers::WorkerConfig::new(dir.path().join("pods")),
        );
        let meta = crate::metamanager::MetaManager::load(&db).expect("meta");
        let mut edged = Edged::new(
            workers,
            meta.clone(),
            db.outbox(),
            usage::feed(),
            EdgedConfig::new(NodeFacts {
                name: "edge".into(),
                ip: "127.0.0.1".into(),
                runtimes: vec!["wasm".into()],
                labels: Default::default(),
                max_pods: 110,
                ready_since: jiff::Timestamp::now(),
                local_volume_root: None,
            }),
        );
        let apply = |name: &str, uid: &str, rv: &str, image: &str| {
            let key = ObjectKey {
                kind: ResourceKind::Pod,
                namespace: "default".into(),
                name: name.into(),
            };
            let pod = serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv},
                "spec": {"containers": [{"name": "app", "image": image}]},
            });
            let (meta, uid, rv) = (meta.clone(), uid.to_owned(), rv.to_owned());
            async move {
                meta.apply(&key, &uid, &rv, &pod).await.expect("apply");
                key
            }
        };
        let image = |pods: &[Arc<Pod>], name: &str| {
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .and_then(|p| p.spec.as_ref()?.containers[0].image.clone())
        };
        apply("a", "ua", "1", "a:1").await;
        let b = apply("b", "ub", "2", "b:1").await;
        let first = edged.desired_pods();
        assert_eq!(first.len(), 2);

        // A new version of one pod is read again; the other is the one parsed before.
        apply("a", "ua", "3", "a:2").await;
        let second = edged.desired_pods();
        assert_eq!(image(&second, "a").as_deref(), Some("a:2"));
        let same = |name: &str| {
            let find = |pods: &[Arc<Pod>]| {
                pods.iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name))
                    .cloned()
                    .expect("held")
            };
            Arc::ptr_eq(&find(&first), &find(&second))
        };
        assert!(same("b"), "b did not change");
        assert!(!same("a"), "a changed");

        // Another pod of the same name (a new uid) replaces it; a deleted pod is gone.
        apply("a", "ua2", "4", "a:3").await;
        meta.delete(&b, None).await.expect("delete");
        let third = edged.desired_pods();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].metadata.uid.as_deref(), Some("ua2"));
        assert_eq!(image(&third, "a").as_deref(), Some("a:3"));

        // A version that is not a pod is left out until a version that is one comes.
        let c = ObjectKey {
            kind: ResourceKind::Pod,
            namespace: "default".into(),
            name: "c".into(),
        };
        let broken = serde_json::json!({"metadata": {"name": "c"}, "spec": {"containers": "no"}});
        meta.apply(&c, "uc", "5", &broken).await.expect("apply");
        assert_eq!(edged.desired_pods().len(), 1);
        assert_eq!(edged.desired_pods().len(), 1, "still left out");
        apply("c", "uc", "6", "c:1").await;
        assert_eq!(image(&edged.desired_pods(), "c").as_deref(), Some("c:1"));
    }
}
