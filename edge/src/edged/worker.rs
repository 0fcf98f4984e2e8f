//! One pod's life on a runtime, as the kubelet lives it: the sandbox, init containers one after
//! the other, then every container in a loop of its own (pull by policy, create, start, wait,
//! restart by policy after the crash-loop backoff), and the stop (each container within what is
//! left of the grace period, then the sandbox).
//!
//! The runtime only runs what it is told ([`wedge_core::runtime`]); everything a user reads in
//! `kubectl get pod` (phase, reasons, restarts, last states) is decided here, once, for every
//! runtime. Container statuses live in [`Slot`]s that [`super::pod_workers`] reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wedge_core::restart::{CrashLoopBackoff, RestartPolicy};
use wedge_core::runtime::{
    self, ContainerConfig, ContainerInfo, ImageError, PullAuth, RuntimeError, SandboxConfig, labels,
};
use wedge_core::status::{ContainerState, ContainerStatus, reason};

use super::plan::{ContainerPlan, Handler, PodPlan, ProbePlan, PullPolicy};
use super::pod_workers::{StatusListener, WorkerConfig};
use super::prober::{self, Counter, Outcome, Target, Verdict};
use super::runtimes::RuntimeHandle;

/// What Edged found of a pod in the runtime when it (re)started: the pod's sandbox and its
/// containers, to adopt instead of starting again.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    /// The sandbox's id and IP.
    pub sandbox: Option<(String, Option<String>)>,
    /// Whether that sandbox still runs. A stopped one is a finished pod's (Edged stops those),
    /// or one the host's restart stopped.
    pub ready: bool,
    /// Its containers, every instance.
    pub containers: Vec<ContainerInfo>,
    /// The pod's other sandboxes (older, stopped), removed when the pod starts.
    pub stale: Vec<String>,
}

/// One container's status, and the id of its current instance.
pub struct Slot {
    pub(crate) plan: ContainerPlan,
    /// The runtime it runs on (in a mixed pod, not the sandbox's for every container).
    pub(crate) handle: RuntimeHandle,
    status: Mutex<ContainerStatus>,
    id: Mutex<Option<String>>,
    /// The current instance's readiness probe passes (or it has none).
    ready: AtomicBool,
    /// The current instance's startup probe has passed (or it has none).
    started: AtomicBool,
    /// Sent at every change of `status`, for whoever waits on one (a log follow).
    changes: tokio::sync::watch::Sender<()>,
}

impl Slot {
    pub(crate) fn new(plan: ContainerPlan, initial: &str, handle: RuntimeHandle) -> Self {
        let status = ContainerStatus {
            name: plan.name.clone(),
            image: plan.image.clone(),
            image_id: None,
            container_id: None,
            state: ContainerState::waiting(initial, None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        };
        Self {
            plan,
            handle,
            status: Mutex::new(status),
            id: Mutex::new(None),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Marked changed at every change of the status from now on.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changes.subscribe()
    }

    pub(crate) fn status(&self) -> ContainerStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let running = status.state.is_running();
        status.ready = running && self.ready.load(Ordering::Relaxed);
        status.started = running && self.started.load(Ordering::Relaxed);
        status
    }

    pub(crate) fn id(&self) -> Option<String> {
        self.id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_id(&self, id: Option<String>) {
        *self
            .id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = id;
    }
}

/// A pod's shared state: what the worker task writes and status reads see.
pub struct PodState {
    pub(crate) plan: PodPlan,
    /// The runtime of the pod's sandbox (its network, its IP).
    pub(crate) handle: RuntimeHandle,
    pub(crate) auth: BTreeMap<String, PullAuth>,
    pub(crate) init: Vec<Arc<Slot>>,
    pub(crate) containers: Vec<Arc<Slot>>,
    sandbox: Mutex<Option<(String, Option<String>)>>,
    /// In a mixed pod, the sandboxes the other runtimes made inside the pod's network: by
    /// handler, the runtime and the sandbox's id.
    joined: Mutex<BTreeMap<&'static str, (RuntimeHandle, String)>>,
    listener: Option<StatusListener>,
    /// Set once every container has ended for good (the pod is Succeeded or Failed).
    pub(crate) finished: tokio::sync::watch::Sender<bool>,
}

impl PodState {
    /// The state of `plan` with its sandbox on `handle`, and each container on the runtime
    /// `on` names (else on `handle`'s).
    pub(crate) fn new(
        plan: PodPlan,
        handle: RuntimeHandle,
        on: &BTreeMap<String, RuntimeHandle>,
        auth: BTreeMap<String, PullAuth>,
        listener: Option<StatusListener>,
    ) -> Self {
        let runtime_of = |c: &ContainerPlan| on.get(&c.name).unwrap_or(&handle).clone();
        let init = plan
            .init_containers
            .iter()
            .map(|c| {
                Arc::new(Slot::new(
                    c.clone(),
                    reason::POD_INITIALIZING,
                    runtime_of(c),
                ))
            })
            .collect();
        let initial = if plan.init_containers.is_empty() {
            reason::CONTAINER_CREATING
        } else {
            reason::POD_INITIALIZING
        };
        let containers = plan
            .containers
            .iter()
            .map(|c| Arc::new(Slot::new(c.clone(), initial, runtime_of(c))))
            .collect();
        Self {
            plan,
            handle,
            auth,
            init,
            containers,
            sandbox: Mutex::new(None),
            joined: Mutex::default(),
            listener,
            finished: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The sandbox `slot`'s container is created in: the pod's, or the one its runtime made
    /// inside the pod's network.
    fn sandbox_of(&self, slot: &Slot, primary: &str) -> String {
        if slot.handle.handler() == self.handle.handler() {
            return primary.to_owned();
        }
        self.joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(slot.handle.handler())
            .map_or_else(|| primary.to_owned(), |(_, id)| id.clone())
    }

    /// The id of the pod's sandbox (on [`PodState::handle`]'s runtime), once it has one.
    pub(crate) fn sandbox_id(&self) -> Option<String> {
        self.sandbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// The pod's IP, once its sandbox has one.
    pub(crate) fn pod_ip(&self) -> Option<String> {
        self.sandbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|(_, ip)| ip.clone())
    }

    fn update(&self, slot: &Slot, f: impl FnOnce(&mut ContainerStatus)) {
        f(&mut slot
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
        slot.changes.send_replace(());
        self.notify();
    }

    fn notify(&self) {
        if let Some(listener) = &self.listener {
            listener(&self.plan.uid);
        }
    }

    fn sandbox_config(&self, config: &WorkerConfig) -> SandboxConfig {
        let plan = &self.plan;
        SandboxConfig {
            name: plan.name.clone(),
            namespace: plan.namespace.clone(),
            uid: plan.uid.clone(),
            attempt: 0,
            hostname: plan.hostname.clone(),
            log_directory: plan.dir.clone(),
            host_network: plan.host_network,
            labels: BTreeMap::from([
                (labels::POD_UID.to_owned(), plan.uid.clone()),
                (labels::POD_NAME.to_owned(), plan.name.clone()),
                (labels::POD_NAMESPACE.to_owned(), plan.namespace.clone()),
            ]),
            annotations: plan.annotations.clone(),
            cgroup_parent: config.cgroup_parent.clone(),
            netns: None,
        }
    }
}

/// The credentials for `image` among the pod's, by registry host.
fn auth_for<'a>(auth: &'a BTreeMap<String, PullAuth>, image: &str) -> Option<&'a PullAuth> {
    auth.get(&super::plan::registry_of(image))
}

/// Why a container could not be made to run this time round.
enum Failure {
    /// Waiting with this reason and message; retried after the backoff.
    Waiting(&'static str, String),
    /// The runtime is unavailable: the status stays as it was, retried after the backoff.
    Unavailable(String),
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unavailable(m) => Self::Unavailable(m),
            RuntimeError::InvalidConfig { .. } => {
                Self::Waiting(reason::CREATE_CONTAINER_CONFIG_ERROR, e.to_string())
            }
            other => Self::Waiting(reason::CREATE_CONTAINER_ERROR, other.to_string()),
        }
    }
}

/// How a container's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code and will not be restarted.
    Exited(i32),
    /// The pod is being stopped.
    Stopped,
}

/// Runs the pod until it ends for good or `stop` fires; on `stop`, stops it within `grace_until`.
pub(crate) async fn run_pod(
    pod: Arc<PodState>,
    config: Arc<WorkerConfig>,
    adopted: Adopted,
    stop: CancellationToken,
    deadline: Arc<Mutex<Option<Instant>>>,
) {
    let adopted = sort_adopted(&pod, adopted).await;
    if !adopted.ready
        && let Some((sandbox_id, _)) = adopted.sandbox.clone()
    {
        adopt_finished(&pod, adopted);
        finish(&pod, &sandbox_id, &config, &stop).await;
        return;
    }
    let Some(sandbox_id) = ensure_sandbox(&pod, &config, adopted.sandbox, &stop).await else {
        return;
    };
    if !join_sandboxes(&pod, &config, &sandbox_id, &stop).await {
        finish(&pod, &sandbox_id, &config, &stop).await;
        return;
    }
    let adopted = Arc::new(adopted.containers);
    let all_init_done = pod.init.iter().all(|slot| {
        latest(&adopted, &slot.plan.name)
            .is_some_and(|c| matches!(&c.state, runtime::ContainerState::Exited(e) if e.code == 0))
    }) || !pod
        .containers
        .iter()
        .all(|s| latest(&adopted, &s.plan.name).is_none());
    if all_init_done {
        for slot in &pod.init {
            if let Some(c) = latest(&adopted, &slot.plan.name)
                && let runtime::ContainerState::Exited(e) = &c.state
            {
                let (c, e) = (c.clone(), e.clone());
                pod.update(slot, |s| {
                    s.restart_count = c.attempt;
                    s.image_id.clone_from(&c.image_id);
                    s.state = terminated(&e);
                });
            }
        }
    } else {
        for slot in &pod.init {
            let slot_sandbox = pod.sandbox_of(slot, &sandbox_id);
            let run = ContainerRun {
                pod: &pod,
                slot,
                config: &config,
                sandbox_id: &slot_sandbox,
                stop: &stop,
                deadline: &deadline,
                init: true,
            };
            match run.run(None).await {
                Ended::Exited(0) => {}
                Ended::Exited(_) | Ended::Stopped => {
                    // A failed init container under `Never` fails the pod; its containers
                    // never start.
                    let message = format!("init container {:?} did not complete", slot.plan.name);
                    for c in &pod.containers {
                        pod.update(c, |s| {
                            s.state =
                                ContainerState::waiting(reason::POD_INITIALIZING, message.clone())
                        });
                    }
                    finish(&pod, &sandbox_id, &config, &stop).await;
                    return;
                }
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for slot in pod.containers.clone() {
        let (pod, config, sandbox_id, stop, deadline, adopted) = (
            pod.clone(),
            config.clone(),
            sandbox_id.clone(),
            stop.clone(),
            deadline.clone(),
            adopted.clone(),
        );
        tasks.spawn(async move {
            let slot_sandbox = pod.sandbox_of(&slot, &sandbox_id);
            let run = ContainerRun {
                pod: &pod,
                slot: &slot,
                config: &config,
                sandbox_id: &slot_sandbox,
                stop: &stop,
                deadline: &deadline,
                init: false,
            };
            run.run(latest(&adopted, &slot.plan.name).cloned()).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(pod = %pod.plan.display_name, error = %e, "a container task failed");
        }
    }
    finish(&pod, &sandbox_id, &config, &stop).await;
}

/// What of `adopted` the pod takes on. Stale sandboxes go. A stopped sandbox is kept only for a
/// pod that had finished (as the kubelet, which does not make a finished pod's sandbox again):
/// every container's last instance ended for good, or an init container failed under
/// `restartPolicy: Never`. Otherwise it goes with its containers, and the pod starts afresh.
async fn sort_adopted(pod: &PodState, mut adopted: Adopted) -> Adopted {
    let rt = &pod.handle.runtime;
    let mut remove = std::mem::take(&mut adopted.stale);
    if !adopted.ready
        && let Some((id, _)) = &adopted.sandbox
        && !finished_before(&pod.plan, &adopted.containers)
    {
        tracing::info!(pod = %pod.plan.display_name, sandbox = id, "the pod's sandbox was stopped before it finished: starting it afresh");
        remove.push(id.clone());
        adopted = Adopted::default();
    }
    for id in remove {
        if let Err(e) = rt.stop_sandbox(&id).await {
            tracing::warn!(pod = %pod.plan.display_name, sandbox = id, error = %e, "cannot stop an old sandbox");
        }
        if let Err(e) = rt.remove_sandbox(&id).await {
            tracing::warn!(pod = %pod.plan.display_name, sandbox = id, error = %e, "cannot remove an old sandbox");
        }
    }
    adopted
}

/// Whether `containers` (every instance the runtime held) show that the pod had finished: none
/// of its containers will run again.
fn finished_before(plan: &PodPlan, containers: &[ContainerInfo]) -> bool {
    let exit_code = |name: &str| match latest(containers, name).map(|c| &c.state) {
        Some(runtime::ContainerState::Exited(e)) => Some(e.code),
        _ => None,
    };
    let policy = plan.restart_policy;
    let init_failed = policy == RestartPolicy::Never
        && plan
            .init_containers
            .iter()
            .any(|c| exit_code(&c.name).is_some_and(|code| code != 0));
    init_failed
        || plan
            .containers
            .iter()
            .all(|c| exit_code(&c.name).is_some_and(|code| !policy.restarts_after(code)))
}

/// Takes on the stopped sandbox of a pod that had finished before Edged restarted: each
/// container's status is its last instance's, and nothing runs again.
fn adopt_finished(pod: &PodState, adopted: Adopted) {
    *pod.sandbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = adopted.sandbox;
    let failed_init = pod.init.iter().find(|slot| {
        latest(&adopted.containers, &slot.plan.name)
            .is_some_and(|c| matches!(&c.state, runtime::ContainerState::Exited(e) if e.code != 0))
    });
    let message = failed_init.map_or_else(
        || "an init container did not complete".to_owned(),
        |slot| format!("init container {:?} did not complete", slot.plan.name),
    );
    for slot in pod.init.iter().chain(&pod.containers) {
        match latest(&adopted.containers, &slot.plan.name) {
            Some(c) => {
                let state = match &c.state {
                    runtime::ContainerState::Exited(e) => terminated(e),
                    _ => ContainerState::waiting(reason::CONTAINER_CREATING, None),
                };
                slot.set_id(Some(c.id.clone()));
                let c = c.clone();
                pod.update(slot, |s| {
                    s.restart_count = c.attempt;
                    s.image_id.clone_from(&c.image_id);
                    s.state = state;
                });
            }
            // A container that never ran: its init container failed.
            None => pod.update(slot, |s| {
                s.state = ContainerState::waiting(reason::POD_INITIALIZING, message.clone());
            }),
        }
    }
    tracing::info!(pod = %pod.plan.display_name, "adopted a pod that had finished");
}

/// The newest instance of container `name` among `containers`.
fn latest<'a>(containers: &'a [ContainerInfo], name: &str) -> Option<&'a ContainerInfo> {
    containers
        .iter()
        .filter(|c| c.name == name)
        .max_by_key(|c| c.attempt)
}

/// After the last container ended.
///
/// A pod that finished by itself (every container ended for good, none will restart) has its
/// sandboxes stopped at once, as the kubelet stops them: the runtime lets go of the pod's
/// network (a container pod's IP goes back to the pool, through CNI `DEL`) and of whatever ran
/// there, while the containers, their exit statuses and their logs stay readable for
/// `kubectl get` and `kubectl logs`. Only then is the pod marked finished. Without this, a Job
/// of a few hundred container pods on one edge would run out of addresses on pods the Job
/// controller has not yet deleted. Everything is removed when the pod is stopped (deleted).
async fn finish(pod: &PodState, sandbox_id: &str, config: &WorkerConfig, stop: &CancellationToken) {
    if !stop.is_cancelled() {
        stop_sandboxes(pod, sandbox_id, config, stop).await;
    }
    pod.finished.send_replace(true);
    stop.cancelled().await;
    for slot in pod.init.iter().chain(&pod.containers) {
        if let Some(id) = slot.id()
            && let Err(e) = slot
                .handle
                .runtime
                .stop_container(&id, Duration::ZERO)
                .await
        {
            tracing::debug!(container = id, error = %e, "stopping an ended container");
        }
    }
    // The sandboxes made inside the pod's network go before the one that owns it.
    let joined = std::mem::take(
        &mut *pod
            .joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (handle, id) in joined.into_values() {
        let rt = &handle.runtime;
        if let Err(e) = rt.stop_sandbox(&id).await {
            tracing::warn!(pod = %pod.plan.display_name, error = %e, "cannot stop a joined sandbox");
        }
        if let Err(e) = rt.remove_sandbox(&id).await {
            tracing::warn!(pod = %pod.plan.display_name, error = %e, "cannot remove a joined sandbox");
        }
    }
    let rt = &pod.handle.runtime;
    if let Err(e) = rt.stop_sandbox(sandbox_id).await {
        tracing::warn!(pod = %pod.plan.display_name, error = %e, "cannot stop the sandbox");
    }
    if let Err(e) = rt.remove_sandbox(sandbox_id).await {
        tracing::warn!(pod = %pod.plan.display_name, error = %e, "cannot remove the sandbox");
    }
}

/// Stops a finished pod's sandboxes (the joined ones first), retried with backoff while the
/// runtime fails, until they are stopped or the pod is.
async fn stop_sandboxes(
    pod: &PodState,
    sandbox_id: &str,
    config: &WorkerConfig,
    stop: &CancellationToken,
) {
    let mut sandboxes: Vec<(RuntimeHandle, String)> = pod
        .joined
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    sandboxes.push((pod.handle.clone(), sandbox_id.to_owned()));
    let mut backoff = CrashLoopBackoff::new(config.backoff);
    for (handle, id) in sandboxes {
        loop {
            let stopped = tokio::select! {
                () = stop.cancelled() => return,
                stopped = handle.runtime.stop_sandbox(&id) => stopped,
            };
            match stopped {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %pod.plan.display_name, sandbox = id, error = %e, "cannot stop a finished pod's sandbox");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.after_exit(Duration::ZERO)) => {}
                    }
                }
            }
        }
    }
    tracing::info!(pod = %pod.plan.display_name, "pod finished: its sandbox is stopped");
}

/// The pod's sandbox: adopted, or run (retried with backoff while it fails). `None` when the pod
/// was stopped first.
async fn ensure_sandbox(
    pod: &PodState,
    config: &WorkerConfig,
    adopted: Option<(String, Option<String>)>,
    stop: &CancellationToken,
) -> Option<String> {
    if let Some((id, ip)) = adopted {
        *pod.sandbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((id.clone(), ip));
        return Some(id);
    }
    let sandbox = pod.sandbox_config(config);
    let mut backoff = CrashLoopBackoff::new(config.backoff);
    loop {
        let made = async {
            let id = pod.handle.runtime.run_sandbox(&sandbox).await?;
            let status = pod.handle.runtime.sandbox_status(&id).await?;
            Ok::<_, RuntimeError>((id, status.ip))
        };
        let made = tokio::select! {
            () = stop.cancelled() => return None,
            made = made => made,
        };
        match made {
            Ok((id, ip)) => {
                *pod.sandbox
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((id.clone(), ip));
                pod.notify();
                return Some(id);
            }
            Err(e) => {
                tracing::warn!(pod = %pod.plan.display_name, error = %e, "cannot create the pod sandbox");
                let message = format!("failed to create the pod sandbox: {e}");
                let why = if matches!(e, RuntimeError::InvalidConfig { .. }) {
                    reason::CREATE_CONTAINER_CONFIG_ERROR
                } else {
                    reason::CONTAINER_CREATING
                };
                for slot in pod.init.iter().chain(&pod.containers) {
                    pod.update(slot, |s| {
                        s.state = ContainerState::waiting(why, message.clone())
                    });
                }
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(backoff.after_exit(Duration::ZERO)) => {}
                }
            }
        }
    }
}

/// In a mixed pod, has every other runtime make a sandbox inside the network namespace of the
/// pod's sandbox, so that all containers share `localhost` (retried with backoff while it
/// fails). `false` when the pod was stopped first.
async fn join_sandboxes(
    pod: &PodState,
    config: &WorkerConfig,
    primary: &str,
    stop: &CancellationToken,
) -> bool {
    let mut others: Vec<RuntimeHandle> = Vec::new();
    for slot in pod.init.iter().chain(&pod.containers) {
        let handler = slot.handle.handler();
        if handler != pod.handle.handler() && !others.iter().any(|h| h.handler() == handler) {
            others.push(slot.handle.clone());
        }
    }
    let mut backoff = CrashLoopBackoff::new(config.backoff);
    for handle in others {
        loop {
            let made = async {
                // hostNetwork: no namespace of the pod's own, nothing to join.
                let netns = pod.handle.runtime.sandbox_status(primary).await?.netns;
                let mut sandbox = pod.sandbox_config(config);
                sandbox.netns = netns;
                handle.runtime.run_sandbox(&sandbox).await
            };
            let made = tokio::select! {
                () = stop.cancelled() => return false,
                made = made => made,
            };
            match made {
                Ok(id) => {
                    pod.joined
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(handle.handler(), (handle.clone(), id));
                    break;
                }
                Err(e) => {
                    tracing::warn!(pod = %pod.plan.display_name, runtime = handle.handler(), error = %e, "cannot join the pod's network");
                    let message = format!(
                        "failed to join the pod's network ({} runtime): {e}",
                        handle.handler()
                    );
                    for slot in pod.init.iter().chain(&pod.containers) {
                        if slot.handle.handler() == handle.handler() {
                            pod.update(slot, |s| {
                                s.state = ContainerState::waiting(
                                    reason::CONTAINER_CREATING,
                                    message.clone(),
                                )
                            });
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(backoff.after_exit(Duration::ZERO)) => {}
                    }
                }
            }
        }
    }
    true
}

fn terminated(e: &runtime::Exit) -> ContainerState {
    ContainerState::Terminated {
        exit_code: e.code,
        reason: e.reason.clone(),
        message: e.message.clone(),
        started_at: e.started_at,
        finished_at: e.finished_at,
    }
}

/// One container's loop.
struct ContainerRun<'a> {
    pod: &'a PodState,
    slot: &'a Slot,
    config: &'a WorkerConfig,
    sandbox_id: &'a str,
    stop: &'a CancellationToken,
    deadline: &'a Mutex<Option<Instant>>,
    init: bool,
}

impl ContainerRun<'_> {
    fn restarts_after(&self, code: i32) -> bool {
        let policy = self.pod.plan.restart_policy;
        if self.init {
            // Init containers run until they succeed, unless the pod never restarts.
            code != 0 && policy != RestartPolicy::Never
        } else {
            policy.restarts_after(code)
        }
    }

    /// Runs the container until it ends for good or the pod stops; `adopted` is its newest
    /// instance found in the runtime after a restart of Edged.
    async fn run(&self, mut adopted: Option<ContainerInfo>) -> Ended {
        let (pod, slot) = (self.pod, self.slot);
        let mut crash = CrashLoopBackoff::new(self.config.backoff);
        let mut pull = CrashLoopBackoff::new(self.config.image_backoff);
        loop {
            let (id, started) = match adopted.take() {
                Some(found) => {
                    pod.update(slot, |s| {
                        s.restart_count = found.attempt;
                        s.image_id.clone_from(&found.image_id);
                    });
                    slot.set_id(Some(found.id.clone()));
                    match found.state {
                        runtime::ContainerState::Running { started_at } => {
                            self.reset_probes();
                            pod.update(slot, |s| s.state = ContainerState::Running { started_at });
                            tracing::info!(pod = %pod.plan.display_name, container = %slot.plan.name, "adopted a running container");
                            (found.id, Instant::now())
                        }
                        runtime::ContainerState::Exited(exit) => {
                            match self.after_exit(&exit, Duration::MAX, &mut crash).await {
                                Some(ended) => return ended,
                                None => continue,
                            }
                        }
                        runtime::ContainerState::Created | runtime::ContainerState::Unknown => {
                            self.remove(&found.id).await;
                            continue;
                        }
                    }
                }
                None => match self.start_instance(&mut pull).await {
                    Ok(Some((id, started))) => {
                        if let Some(exit) = self.post_start(&id).await {
                            match self.after_exit(&exit, started.elapsed(), &mut crash).await {
                                Some(ended) => return ended,
                                None => continue,
                            }
                        }
                        (id, started)
                    }
                    Ok(None) => return Ended::Stopped,
                    Err(failure) => {
                        let wait = crash.after_exit(Duration::ZERO);
                        if let Failure::Waiting(why, message) = failure {
                            tracing::warn!(pod = %pod.plan.display_name, container = %slot.plan.name, reason = why, message, "container not started");
                            pod.update(slot, |s| s.state = ContainerState::waiting(why, message));
                        } else if let Failure::Unavailable(message) = failure {
                            tracing::warn!(pod = %pod.plan.display_name, container = %slot.plan.name, message, "runtime unavailable");
                        }
                        tokio::select! {
                            () = self.stop.cancelled() => return Ended::Stopped,
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                },
            };
            let exit = tokio::select! {
                exit = slot.handle.runtime.wait_container(&id) => exit,
                message = self.probe(&id) => {
                    // A failed liveness or startup probe: killed as a deletion would, then
                    // restarted by policy.
                    tracing::info!(pod = %pod.plan.display_name, container = %slot.plan.name, message, "killing the container");
                    let grace = Instant::now() + pod.plan.grace;
                    self.kill(&id, grace).await.map(|mut exit| {
                        exit.message = Some(message);
                        exit
                    })
                }
                () = self.stop.cancelled() => {
                    self.stop_instance(&id).await;
                    return Ended::Stopped;
                }
            };
            let exit = match exit {
                Ok(exit) => exit,
                Err(e) => {
                    // The runtime lost the container (or is down): ask again after a while; a
                    // container that is gone is started again.
                    tracing::warn!(pod = %pod.plan.display_name, container = %slot.plan.name, error = %e, "cannot wait for the container");
                    tokio::select! {
                        () = self.stop.cancelled() => {
                            self.stop_instance(&id).await;
                            return Ended::Stopped;
                        }
                        () = tokio::time::sleep(self.config.backoff.initial) => {}
                    }
                    match slot.handle.runtime.container_status(&id).await {
                        Ok(info) => adopted = Some(info),
                        Err(RuntimeError::NotFound(_)) => slot.set_id(None),
                        Err(_) => {
                            adopted = Some(ContainerInfo {
                                state: runtime::ContainerState::Running {
                                    started_at: Timestamp::now(),
                                },
                                ..self.placeholder(&id)
                            });
                        }
                    }
                    continue;
                }
            };
            if let Some(ended) = self.after_exit(&exit, started.elapsed(), &mut crash).await {
                return ended;
            }
        }
    }

    fn placeholder(&self, id: &str) -> ContainerInfo {
        let s = self.slot.status();
        ContainerInfo {
            id: id.to_owned(),
            sandbox_id: self.sandbox_id.to_owned(),
            name: self.slot.plan.name.clone(),
            attempt: s.restart_count,
            image_id: s.image_id,
            state: runtime::ContainerState::Unknown,
            labels: BTreeMap::new(),
        }
    }

    /// Records an exit; waits out the backoff when the container is to run again (`None`), or
    /// says how it ended for good.
    async fn after_exit(
        &self,
        exit: &runtime::Exit,
        ran_for: Duration,
        crash: &mut CrashLoopBackoff,
    ) -> Option<Ended> {
        let (pod, slot) = (self.pod, self.slot);
        let state = terminated(exit);
        tracing::info!(pod = %pod.plan.display_name, container = %slot.plan.name, code = exit.code, reason = %exit.reason, "container exited");
        if self.stop.is_cancelled() || !self.restarts_after(exit.code) {
            pod.update(slot, |s| s.state = state);
            return Some(if self.stop.is_cancelled() {
                Ended::Stopped
            } else {
                Ended::Exited(exit.code)
            });
        }
        let wait = crash.after_exit(ran_for);
        let message = format!(
            "back-off {}s restarting failed container={} pod={}({})",
            wait.as_secs(),
            slot.plan.name,
            pod.plan.display_name,
            pod.plan.uid
        );
        pod.update(slot, |s| {
            s.last_state = Some(state);
            s.state = ContainerState::waiting(reason::CRASH_LOOP_BACK_OFF, message);
        });
        tokio::select! {
            () = self.stop.cancelled() => return Some(Ended::Stopped),
            () = tokio::time::sleep(wait) => {}
        }
        // The instance that ended goes before the next is created; its log file stays, for
        // `kubectl logs --previous`. The restart count moves on only when the next instance
        // runs (`start_instance`): until then it names the instance that ended, whose log is
        // the one `kubectl logs` reads.
        if let Some(id) = slot.id() {
            self.remove(&id).await;
            slot.set_id(None);
        }
        None
    }

    async fn remove(&self, id: &str) {
        if let Err(e) = self.slot.handle.runtime.remove_container(id).await {
            tracing::debug!(container = id, error = %e, "cannot remove an old instance");
        }
    }

    /// Runs the preStop hook, then stops the instance (SIGTERM, SIGKILL at `deadline`), and
    /// says how it ended, if the runtime knows.
    async fn kill(&self, id: &str, deadline: Instant) -> Result<runtime::Exit, RuntimeError> {
        let rt = &self.slot.handle.runtime;
        if let Some(hook) = &self.slot.plan.probes.pre_stop {
            let budget = deadline.saturating_duration_since(Instant::now());
            if let Outcome::Failure(message) = self.run_handler(hook, id, budget).await {
                tracing::warn!(pod = %self.pod.plan.display_name, container = %self.slot.plan.name, message, "the preStop hook failed");
            }
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = rt.stop_container(id, timeout).await {
            tracing::warn!(pod = %self.pod.plan.display_name, container = %self.slot.plan.name, error = %e, "cannot stop the container");
        }
        match rt.container_status(id).await? {
            ContainerInfo {
                state: runtime::ContainerState::Exited(exit),
                ..
            } => Ok(exit),
            other => Err(RuntimeError::Failed(format!(
                "container {id} did not stop: {:?}",
                other.state
            ))),
        }
    }

    /// Stops the running instance within what is left of the grace period.
    async fn stop_instance(&self, id: &str) {
        let deadline = self
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwrap_or_else(Instant::now);
        let state = match self.kill(id, deadline).await {
            Ok(exit) => terminated(&exit),
            Err(_) => {
                let started_at = match self.slot.status().state {
                    ContainerState::Running { started_at } => started_at,
                    _ => Timestamp::now(),
                };
                ContainerState::Terminated {
                    exit_code: 137,
                    reason: reason::KILLED.to_owned(),
                    message: Some("the pod was stopped".to_owned()),
                    started_at,
                    finished_at: Timestamp::now(),
                }
            }
        };
        self.pod.update(self.slot, |s| s.state = state);
    }

    /// Pulls, creates and starts an instance. `Ok(None)` when the pod was stopped meanwhile.
    async fn start_instance(
        &self,
        pull: &mut CrashLoopBackoff,
    ) -> Result<Option<(String, Instant)>, Failure> {
        let (pod, slot) = (self.pod, self.slot);
        let Some(image_id) = self.ensure_image(pull).await? else {
            return Ok(None);
        };
        let dirs = slot.plan.create_dirs.clone();
        let log_dir = pod.plan.dir.join(&slot.plan.name);
        tokio::task::spawn_blocking(move || {
            for d in dirs.iter().chain([&log_dir]) {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            }
            Ok::<_, String>(())
        })
        .await
        .map_err(|e| Failure::Waiting(reason::CREATE_CONTAINER_ERROR, e.to_string()))?
        .map_err(|m| Failure::Waiting(reason::CREATE_CONTAINER_ERROR, m))?;
        // The kubelet's attempt: the count of instances that ran before this one. The status
        // keeps the last instance's count until this one runs, as the kubelet's does.
        let attempt = {
            let s = slot.status();
            s.restart_count + u32::from(s.last_state.is_some())
        };
        let config = self.container_config(attempt, &image_id);
        let sandbox = pod.sandbox_config(self.config);
        let rt = &slot.handle.runtime;
        let id = rt
            .create_container(self.sandbox_id, &config, &sandbox)
            .await?;
        slot.set_id(Some(id.clone()));
        if let Err(e) = rt.start_container(&id).await {
            self.remove(&id).await;
            slot.set_id(None);
            return Err(e.into());
        }
        let info = rt.container_status(&id).await.ok();
        let started_at = match info.as_ref().map(|i| &i.state) {
            Some(runtime::ContainerState::Running { started_at }) => *started_at,
            _ => Timestamp::now(),
        };
        let image_id = info.and_then(|i| i.image_id);
        self.reset_probes();
        pod.update(slot, |s| {
            s.state = ContainerState::Running { started_at };
            s.restart_count = attempt;
            if image_id.is_some() {
                s.image_id = image_id;
            }
        });
        Ok(Some((id, Instant::now())))
    }

    /// Runs the postStart hook of the instance `id` that just started. If it fails the
    /// instance is killed, as the kubelet kills it, and its exit (its message naming the hook's
    /// failure) is returned, for the restart policy to decide on like any other exit.
    async fn post_start(&self, id: &str) -> Option<runtime::Exit> {
        let (pod, slot) = (self.pod, self.slot);
        let hook = slot.plan.probes.post_start.as_ref()?;
        let Outcome::Failure(message) = self.run_handler(hook, id, pod.plan.grace).await else {
            return None;
        };
        tracing::warn!(pod = %pod.plan.display_name, container = %slot.plan.name, message, "the postStart hook failed: killing the container");
        let message = format!(
            "{}: postStart hook failed: {message}",
            reason::POST_START_HOOK_ERROR
        );
        let now = Timestamp::now();
        let mut exit = self
            .kill(id, Instant::now() + pod.plan.grace)
            .await
            .unwrap_or(runtime::Exit {
                code: 137,
                reason: "Error".to_owned(),
                message: None,
                started_at: now,
                finished_at: now,
            });
        exit.message = Some(message);
        Some(exit)
    }

    /// A new instance starts with its probes not yet passed (or passed, where it has none).
    fn reset_probes(&self) {
        let probes = &self.slot.plan.probes;
        let started = probes.startup.is_none();
        self.slot.started.store(started, Ordering::Relaxed);
        self.slot
            .ready
            .store(started && probes.readiness.is_none(), Ordering::Relaxed);
    }

    fn pod_ip(&self) -> String {
        self.pod.pod_ip().unwrap_or_else(|| "127.0.0.1".to_owned())
    }

    async fn run_handler(&self, handler: &Handler, id: &str, timeout: Duration) -> Outcome {
        let ip = self.pod_ip();
        let target = Target {
            runtime: self.slot.handle.runtime.as_ref(),
            container_id: id,
            pod_ip: &ip,
        };
        prober::run(handler, target, timeout).await
    }

    /// Runs one probe on its period until it crosses a threshold; `on` hears each verdict and
    /// says whether to go on.
    async fn probe_loop(&self, id: &str, plan: &ProbePlan, mut on: impl FnMut(Verdict) -> bool) {
        let mut counter = Counter::new(plan.clone());
        tokio::time::sleep(plan.initial_delay).await;
        loop {
            let outcome = self.run_handler(&plan.handler, id, plan.timeout).await;
            if !on(counter.record(outcome)) {
                return;
            }
            tokio::time::sleep(plan.period).await;
        }
    }

    /// The instance's probes, as the kubelet's prober runs them. Returns only when the
    /// instance is to be killed (a failed startup or liveness probe), with why.
    async fn probe(&self, id: &str) -> String {
        let (pod, slot) = (self.pod, self.slot);
        let probes = &slot.plan.probes;
        if let Some(startup) = &probes.startup {
            let mut failed = None;
            self.probe_loop(id, startup, |v| match v {
                Verdict::Passed => false,
                Verdict::Failed(m) => {
                    failed = Some(m);
                    false
                }
                Verdict::Unchanged => true,
            })
            .await;
            if let Some(m) = failed {
                return format!("Startup probe failed: {m}");
            }
            slot.started.store(true, Ordering::Relaxed);
            if probes.readiness.is_none() {
                slot.ready.store(true, Ordering::Relaxed);
            }
            pod.notify();
        }
        let readiness = async {
            match &probes.readiness {
                Some(plan) => {
                    self.probe_loop(id, plan, |v| {
                        let ready = match v {
                            Verdict::Passed => true,
                            Verdict::Failed(_) => false,
                            Verdict::Unchanged => return true,
                        };
                        slot.ready.store(ready, Ordering::Relaxed);
                        pod.notify();
                        true
                    })
                    .await;
                }
                None => std::future::pending().await,
            }
        };
        let liveness = async {
            match &probes.liveness {
                Some(plan) => {
                    let mut failed = String::new();
                    self.probe_loop(id, plan, |v| match v {
                        Verdict::Failed(m) => {
                            failed = m;
                            false
                        }
                        _ => true,
                    })
                    .await;
                    format!("Liveness probe failed: {failed}")
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = readiness => std::future::pending().await,
            message = liveness => message,
        }
    }

    /// The image, by pull policy; pull failures wait with `ErrImagePull`, then
    /// `ImagePullBackOff` while the backoff runs. `Ok(None)` when the pod was stopped meanwhile.
    async fn ensure_image(&self, pull: &mut CrashLoopBackoff) -> Result<Option<String>, Failure> {
        let (pod, slot) = (self.pod, self.slot);
        let images = &slot.handle.images;
        let image = slot.plan.image.as_str();
        loop {
            let held = images.image_status(image).await;
            let outcome = match (slot.plan.pull_policy, held) {
                (_, Err(ImageError::Unavailable(m))) => return Err(Failure::Unavailable(m)),
                (PullPolicy::IfNotPresent | PullPolicy::Never, Ok(Some(info))) => Ok(info.id),
                (PullPolicy::Never, _) => Err(ImageError::NotFound {
                    reference: image.to_owned(),
                    message: "the image is not present on this edge and imagePullPolicy is Never: import it first (wedge image import)".to_owned(),
                }),
                (_, held) => {
                    let auth = auth_for(&pod.auth, image);
                    pod.update(slot, |s| {
                        if !s.state.is_running() && s.last_state.is_none() {
                            s.state = ContainerState::waiting(reason::CONTAINER_CREATING, None);
                        }
                    });
                    match images.pull_image(image, auth).await {
                        Ok(id) => Ok(id),
                        // An edge that cannot reach the registry runs what it holds.
                        Err(ImageError::Unreachable { message, .. })
                            if matches!(held, Ok(Some(_))) =>
                        {
                            tracing::warn!(image, message, "registry unreachable: running the image held here");
                            Ok(held.ok().flatten().map(|i| i.id).unwrap_or_default())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match outcome {
                Ok(id) => return Ok(Some(id)),
                Err(ImageError::Unavailable(m)) => return Err(Failure::Unavailable(m)),
                Err(e) => {
                    let why = e.reason();
                    tracing::warn!(pod = %pod.plan.display_name, container = %slot.plan.name, error = %e, "image not pulled");
                    let message = e.to_string();
                    pod.update(slot, |s| {
                        s.state = ContainerState::waiting(why, message.clone())
                    });
                    if !e.retryable() {
                        // An invalid reference never pulls: wait for the pod to change.
                        self.stop.cancelled().await;
                        return Ok(None);
                    }
                    // As the kubelet shows it: ErrImagePull, then ImagePullBackOff until the
                    // next try.
                    let wait = pull.after_exit(Duration::ZERO) / 2;
                    tokio::select! {
                        () = self.stop.cancelled() => return Ok(None),
                        () = tokio::time::sleep(wait) => {}
                    }
                    pod.update(slot, |s| {
                        s.state = ContainerState::waiting(
                            reason::IMAGE_PULL_BACK_OFF,
                            format!("Back-off pulling image {image:?}: {message}"),
                        )
                    });
                    tokio::select! {
                        () = self.stop.cancelled() => return Ok(None),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    fn container_config(&self, attempt: u32, image_id: &str) -> ContainerConfig {
        let (plan, c) = (&self.pod.plan, &self.slot.plan);
        ContainerConfig {
            name: c.name.clone(),
            attempt,
            image: image_id.to_owned(),
            image_ref: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            env: c.env.clone(),
            mounts: c.mounts.clone(),
            log_path: super::logs::log_path(&plan.dir.join(&c.name), attempt),
            limits: c.limits,
            security: c.security,
            stdin: c.stdin,
            tty: c.tty,
            labels: BTreeMap::from([
                (labels::POD_UID.to_owned(), plan.uid.clone()),
                (labels::POD_NAME.to_owned(), plan.name.clone()),
                (labels::POD_NAMESPACE.to_owned(), plan.namespace.clone()),
                (labels::CONTAINER_NAME.to_owned(), c.name.clone()),
            ]),
            annotations: BTreeMap::from([(labels::RESTART_COUNT.to_owned(), attempt.to_string())]),
        }
    }
}
