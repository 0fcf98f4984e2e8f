//! Pod workers: one task per pod that runs it on its runtime ([`super::worker`]), and what
//! Edged asks of them: start, stop within a grace period, status, figures (logs are read in
//! [`super::logs`]).
//!
//! Named after the kubelet's `pod_workers`. Edged reconciles MetaManager's pods onto these;
//! `wedge wasm run` and the tests drive them directly. Nothing here knows which runtime a pod is
//! on beyond the handle it was started with.
//!
//! **Adoption.** Containers outlive edgecore (containerd keeps them), so before the first pod
//! starts [`PodWorkers::take_inventory`] lists what every runtime holds; a pod started
//! afterwards adopts its sandbox and containers instead of creating them again, and
//! [`PodWorkers::remove_orphans`] removes sandboxes that belong to no pod the edge holds. A pod
//! that had finished keeps a stopped sandbox (its containers and logs, no network) until it is
//! deleted: Edged does not run it again, [`PodWorkers::stop_leftovers`] makes sure its sandbox
//! is stopped, and [`PodWorkers::stop`] removes it at the pod's deletion. The Wasm runtime's
//! instances live in the process, so it has nothing to report after a restart and its pods
//! start afresh.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wedge_core::restart::{BackoffSettings, RestartPolicy};
use wedge_core::runtime::{ContainerStats, PullAuth, SandboxStatus, labels};
use wedge_core::status::{PodPhase, PodStatusReport};

use super::notices::DirNotices;
use super::plan::PodPlan;
use super::runtimes::{RuntimeHandle, Runtimes};
use super::worker::{self, Adopted, PodState};

/// Called with a pod's uid whenever one of its containers' status changes, so that Edged reports
/// a change at once instead of finding it at its next resync.
pub type StatusListener = Arc<dyn Fn(&str) + Send + Sync>;

/// How pods are run, whatever the runtime.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The directory of every pod's directory (logs, volumes).
    pub pods_root: PathBuf,
    /// The crash-loop backoff (kubelet's by default).
    pub backoff: BackoffSettings,
    /// The backoff between image pulls (kubelet's: 10 s doubling to 5 min).
    pub image_backoff: BackoffSettings,
    /// The cgroup pods' cgroups go under.
    pub cgroup_parent: Option<String>,
}

impl WorkerConfig {
    /// Kubelet's defaults, pods under `pods_root`.
    pub fn new(pods_root: impl Into<PathBuf>) -> Self {
        Self {
            pods_root: pods_root.into(),
            backoff: BackoffSettings::default(),
            image_backoff: BackoffSettings::default(),
            cgroup_parent: None,
        }
    }
}

/// Every sandbox id of `adopted`.
fn sandboxes_of(adopted: &Adopted) -> Vec<String> {
    adopted
        .sandbox
        .iter()
        .map(|(id, _)| id.clone())
        .chain(adopted.stale.iter().cloned())
        .collect()
}

/// Where a pod runs: its sandbox on one runtime, and (in a mixed pod) some containers on
/// another, inside the sandbox's network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The runtime of the sandbox and of every container not in `containers`: the one that
    /// held the pod before a restart, else the default, when `None`.
    pub sandbox: Option<&'static str>,
    /// Containers on another runtime than the sandbox's, by name.
    pub containers: BTreeMap<String, &'static str>,
}

impl Placement {
    /// Everything on `handler`.
    pub fn on(handler: &'static str) -> Self {
        Self {
            sandbox: Some(handler),
            containers: BTreeMap::new(),
        }
    }
}

/// Why a pod was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The pod asks for a runtime this edge does not have.
    #[error("runtime handler {handler:?} is not offered by this edge (it offers {offered:?})")]
    NoRuntime {
        /// What was asked for.
        handler: String,
        /// What there is.
        offered: Vec<&'static str>,
    },
}

/// A running container, as [`PodWorkers::running`] lists it.
#[derive(Clone)]
pub struct RunningContainer {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
    /// The container's name.
    pub container: String,
    /// The runtime's id of its current instance.
    pub id: String,
    /// The runtime it runs on.
    pub handle: RuntimeHandle,
    /// Where its current instance's output goes (`<pod dir>/<name>/<restart count>.log`).
    pub log_path: std::path::PathBuf,
}

struct Entry {
    state: Arc<PodState>,
    stop: CancellationToken,
    deadline: Arc<Mutex<Option<Instant>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    runtimes: Runtimes,
    config: Arc<WorkerConfig>,
    pods: Mutex<HashMap<String, Arc<Entry>>>,
    listener: RwLock<Option<StatusListener>>,
    /// What the runtimes held when Edged started, by pod uid, until adopted or removed.
    inventory: Mutex<HashMap<String, (&'static str, Adopted)>>,
    /// The watcher of the log directories followed (`kubectl logs -f`), shared by every follow.
    log_notices: DirNotices,
}

/// The pods this edge runs.
#[derive(Clone)]
pub struct PodWorkers {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PodWorkers {
    /// Workers over `runtimes`.
    pub fn new(runtimes: Runtimes, config: WorkerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtimes,
                config: Arc::new(config),
                pods: Mutex::default(),
                listener: RwLock::default(),
                inventory: Mutex::default(),
                log_notices: DirNotices::default(),
            }),
        }
    }

    /// The runtimes.
    pub fn runtimes(&self) -> &Runtimes {
        &self.inner.runtimes
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.inner.config
    }

    /// The watcher of followed log directories.
    pub(super) fn log_notices(&self) -> &DirNotices {
        &self.inner.log_notices
    }

    /// Calls `listener` on every container status change of pods started from now on.
    pub fn watch(&self, listener: StatusListener) {
        *self
            .inner
            .listener
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener);
    }

    /// Lists what every runtime holds, so that pods started afterwards adopt it. A runtime that
    /// cannot be listed (containerd down) is skipped with a warning: its pods will be started
    /// again, and the runtime's old sandboxes found as orphans later.
    pub async fn take_inventory(&self) {
        let mut found: HashMap<String, (&'static str, Adopted)> = HashMap::new();
        for handle in self.inner.runtimes.iter() {
            let rt = &handle.runtime;
            let sandboxes = match rt.list_sandboxes().await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(runtime = handle.handler(), %error, "cannot list the runtime's sandboxes: nothing adopted from it");
                    continue;
                }
            };
            let containers = rt.list_containers(None).await.unwrap_or_else(|error| {
                tracing::warn!(runtime = handle.handler(), %error, "cannot list the runtime's containers");
                Vec::new()
            });
            let mut by_pod: HashMap<String, Vec<SandboxStatus>> = HashMap::new();
            for sandbox in sandboxes {
                if let Some(uid) = sandbox.labels.get(labels::POD_UID).cloned() {
                    by_pod.entry(uid).or_default().push(sandbox);
                }
            }
            for (uid, mut sandboxes) in by_pod {
                if found.contains_key(&uid) {
                    continue;
                }
                // The pod's sandbox is its running one, else its newest; the others are stale.
                sandboxes.sort_by_key(|s| (s.ready, s.created_at));
                let Some(newest) = sandboxes.pop() else {
                    continue;
                };
                let adopted = Adopted {
                    containers: containers
                        .iter()
                        .filter(|c| c.sandbox_id == newest.id)
                        .cloned()
                        .collect(),
                    ready: newest.ready,
                    sandbox: Some((newest.id, newest.ip)),
                    stale: sandboxes.into_iter().map(|s| s.id).collect(),
                };
                found.insert(uid, (handle.handler(), adopted));
            }
        }
        tracing::info!(pods = found.len(), "took the runtimes' inventory");
        *lock(&self.inner.inventory) = found;
    }

    /// The pods the inventory still holds sandboxes of: pods not started yet, and pods that had
    /// finished before Edged restarted, which it does not run again.
    pub fn leftovers(&self) -> HashSet<String> {
        lock(&self.inner.inventory).keys().cloned().collect()
    }

    /// Stops the sandboxes the inventory holds for the pods in `finished` (which had finished
    /// before Edged restarted and are not run again): their network goes, as a finished pod's
    /// does ([`super::worker`]); their containers and logs stay until the pod is deleted
    /// ([`PodWorkers::stop`]).
    pub async fn stop_leftovers(&self, finished: &HashSet<String>) {
        let held: Vec<(&'static str, Vec<String>)> = lock(&self.inner.inventory)
            .iter()
            .filter(|(uid, _)| finished.contains(*uid))
            .map(|(_, (handler, adopted))| (*handler, sandboxes_of(adopted)))
            .collect();
        for (handler, ids) in held {
            let Some(handle) = self.inner.runtimes.get(handler) else {
                continue;
            };
            for id in ids {
                if let Err(error) = handle.runtime.stop_sandbox(&id).await {
                    tracing::warn!(sandbox = id, %error, "cannot stop a finished pod's sandbox");
                }
            }
        }
    }

    /// Stops and removes the sandboxes the inventory holds for `uid`, and forgets them.
    async fn remove_leftovers(&self, uid: &str) {
        let Some((handler, adopted)) = lock(&self.inner.inventory).remove(uid) else {
            return;
        };
        let Some(handle) = self.inner.runtimes.get(handler) else {
            return;
        };
        for id in sandboxes_of(&adopted) {
            tracing::info!(
                uid,
                sandbox = id,
                "removing the sandbox of a pod from before the restart"
            );
            if let Err(error) = handle.runtime.stop_sandbox(&id).await {
                tracing::warn!(sandbox = id, %error, "cannot stop a sandbox");
            }
            if let Err(error) = handle.runtime.remove_sandbox(&id).await {
                tracing::warn!(sandbox = id, %error, "cannot remove a sandbox");
            }
        }
    }

    /// Stops and removes every sandbox of the inventory whose pod is not in `keep` (a pod
    /// deleted while Edged was down, or a sandbox a crash left behind).
    pub async fn remove_orphans(&self, keep: &HashSet<String>) {
        let orphans: Vec<(String, &'static str)> = {
            let mut inventory = lock(&self.inner.inventory);
            let gone: Vec<String> = inventory
                .keys()
                .filter(|uid| !keep.contains(*uid))
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|uid| inventory.remove(&uid).map(|(h, _)| (uid, h)))
                .collect()
        };
        for (uid, handler) in orphans {
            let Some(handle) = self.inner.runtimes.get(handler) else {
                continue;
            };
            let sandboxes = handle.runtime.list_sandboxes().await.unwrap_or_default();
            for sandbox in sandboxes
                .into_iter()
                .filter(|s| s.labels.get(labels::POD_UID) == Some(&uid))
            {
                tracing::info!(
                    uid,
                    sandbox = sandbox.id,
                    "removing a sandbox that belongs to no pod held here"
                );
                if let Err(error) = handle.runtime.stop_sandbox(&sandbox.id).await {
                    tracing::warn!(sandbox = sandbox.id, %error, "cannot stop an orphaned sandbox");
                }
                if let Err(error) = handle.runtime.remove_sandbox(&sandbox.id).await {
                    tracing::warn!(sandbox = sandbox.id, %error, "cannot remove an orphaned sandbox");
                }
            }
        }
    }

    /// The runtime for a pod: `handler` when given, else the one holding the pod from before,
    /// else the default.
    fn choose(&self, uid: &str, handler: Option<&str>) -> Result<RuntimeHandle, StartError> {
        let runtimes = &self.inner.runtimes;
        let inherited = lock(&self.inner.inventory).get(uid).map(|(h, _)| *h);
        let wanted = handler.or(inherited);
        match wanted {
            Some(h) => runtimes
                .get(h)
                .cloned()
                .ok_or_else(|| StartError::NoRuntime {
                    handler: h.to_owned(),
                    offered: runtimes.handlers(),
                }),
            None => runtimes
                .default_handle()
                .cloned()
                .ok_or_else(|| StartError::NoRuntime {
                    handler: String::new(),
                    offered: Vec::new(),
                }),
        }
    }

    /// Starts a pod where `placement` says, with `auth` per registry host for its images.
    /// Starting a pod that runs is a no-op.
    pub fn start(
        &self,
        plan: PodPlan,
        placement: Placement,
        auth: BTreeMap<String, PullAuth>,
    ) -> Result<(), StartError> {
        let mut pods = lock(&self.inner.pods);
        if pods.contains_key(&plan.uid) {
            return Ok(());
        }
        let handle = self.choose(&plan.uid, placement.sandbox)?;
        let mut on = BTreeMap::new();
        for (container, handler) in &placement.containers {
            let other = self.choose(&plan.uid, Some(handler))?;
            on.insert(container.clone(), other);
        }
        let adopted = match lock(&self.inner.inventory).remove(&plan.uid) {
            Some((h, adopted)) if h == handle.handler() => adopted,
            _ => Adopted::default(),
        };
        let listener = self
            .inner
            .listener
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let uid = plan.uid.clone();
        tracing::info!(pod = %plan.display_name, uid, runtime = handle.handler(), adopted = adopted.sandbox.is_some(), "pod started");
        let state = Arc::new(PodState::new(plan, handle, &on, auth, listener));
        let stop = CancellationToken::new();
        let deadline = Arc::new(Mutex::new(None));
        let task = tokio::spawn(worker::run_pod(
            state.clone(),
            self.inner.config.clone(),
            adopted,
            stop.clone(),
            deadline.clone(),
        ));
        pods.insert(
            uid,
            Arc::new(Entry {
                state,
                stop,
                deadline,
                task: Mutex::new(Some(task)),
            }),
        );
        Ok(())
    }

    /// Stops a pod: each container within `grace` (SIGTERM, then SIGKILL), then its sandbox,
    /// and forgets it; or, for a pod not started since Edged restarted, removes what the
    /// runtimes held of it. Stopping an unknown pod is a no-op.
    pub async fn stop(&self, uid: &str, grace: Duration) {
        self.remove_leftovers(uid).await;
        let Some(entry) = lock(&self.inner.pods).get(uid).cloned() else {
            return;
        };
        *lock(&entry.deadline) = Some(Instant::now() + grace);
        entry.stop.cancel();
        let task = lock(&entry.task).take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            // The runtime enforces the grace period; this bounds a runtime that hangs.
            if tokio::time::timeout(grace + Duration::from_secs(30), task)
                .await
                .is_err()
            {
                tracing::error!(pod = %entry.state.plan.display_name, "the runtime did not stop the pod in time: abandoning it");
                abort.abort();
            }
        }
        lock(&self.inner.pods).remove(uid);
        tracing::info!(pod = %entry.state.plan.display_name, uid, "pod stopped");
    }

    /// Lets go of every pod without stopping it (edgecore exiting: containers keep running
    /// and are adopted at the next start; in-process Wasm instances end with the process).
    pub fn detach_all(&self) {
        for (_, entry) in lock(&self.inner.pods).drain() {
            if let Some(task) = lock(&entry.task).take() {
                task.abort();
            }
        }
    }

    /// The uids of the pods started here.
    pub fn pods(&self) -> Vec<String> {
        lock(&self.inner.pods).keys().cloned().collect()
    }

    /// The state of the pod `namespace/name` started here. A pod deleted and created again under
    /// its name may be held twice for a while (the old one stopping): the one not stopping is
    /// the pod the name means now.
    pub(super) fn find_pod(&self, namespace: &str, name: &str) -> Option<Arc<PodState>> {
        let pods = lock(&self.inner.pods);
        let named: Vec<&Arc<Entry>> = pods
            .values()
            .filter(|e| e.state.plan.namespace == namespace && e.state.plan.name == name)
            .collect();
        named
            .iter()
            .find(|e| !e.stop.is_cancelled())
            .or(named.first())
            .map(|e| e.state.clone())
    }

    /// The pod's status, if it was started here.
    pub fn status(&self, uid: &str) -> Option<PodStatusReport> {
        let entry = lock(&self.inner.pods).get(uid).cloned()?;
        let state = &entry.state;
        let status = |slot: &Arc<worker::Slot>| {
            let mut status = slot.status();
            let scheme = slot.handle.id_scheme();
            status.container_id = slot.id().map(|id| format!("{scheme}://{id}"));
            status
        };
        let init: Vec<_> = state.init.iter().map(status).collect();
        let containers: Vec<_> = state.containers.iter().map(status).collect();
        let init_restarts = state.plan.restart_policy != RestartPolicy::Never;
        Some(PodStatusReport {
            phase: PodPhase::derive_with_init(&init, &containers, init_restarts),
            init_containers: init,
            containers,
            pod_ip: state.pod_ip(),
        })
    }

    /// Waits until every container of the pod has ended for good (none will restart), and
    /// returns the final status; `None` for a pod not started here.
    pub async fn wait(&self, uid: &str) -> Option<PodStatusReport> {
        let entry = lock(&self.inner.pods).get(uid).cloned()?;
        let mut finished = entry.state.finished.subscribe();
        let _ = finished.wait_for(|f| *f).await;
        self.status(uid)
    }

    /// The runtime's id of a container's current instance.
    pub fn container_id(&self, uid: &str, container: &str) -> Option<(RuntimeHandle, String)> {
        let entry = lock(&self.inner.pods).get(uid).cloned()?;
        let slot = entry
            .state
            .init
            .iter()
            .chain(&entry.state.containers)
            .find(|s| s.plan.name == container)?;
        Some((slot.handle.clone(), slot.id()?))
    }

    /// Every container running now, of every pod and runtime, with the runtime that runs it.
    pub fn running(&self) -> Vec<RunningContainer> {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.pods).values().cloned().collect();
        let mut running = Vec::new();
        for entry in entries {
            let plan = &entry.state.plan;
            for slot in entry.state.init.iter().chain(&entry.state.containers) {
                let Some(id) = slot.id() else { continue };
                if !slot.status().state.is_running() {
                    continue;
                }
                running.push(RunningContainer {
                    namespace: plan.namespace.clone(),
                    pod: plan.name.clone(),
                    uid: plan.uid.clone(),
                    container: slot.plan.name.clone(),
                    id,
                    handle: slot.handle.clone(),
                    log_path: super::logs::log_path(
                        &plan.dir.join(&slot.plan.name),
                        slot.status().restart_count,
                    ),
                });
            }
        }
        running
    }

    /// A container's figures, from its runtime.
    pub async fn stats(&self, uid: &str, container: &str) -> Option<ContainerStats> {
        let (handle, id) = self.container_id(uid, container)?;
        handle.runtime.container_stats(&id).await.ok()
    }
}
