//! One container's life: prepare (pull, compile, link), run, and restart by policy.
//!
//! The container's status is kept as kubelet reports it: `Waiting/ContainerCreating` while it is
//! prepared, `Waiting/ErrImagePull` or `CreateContainerError` (retried with backoff) when that
//! fails, `Running`, then `Terminated` with exit code and reason, and `Waiting/CrashLoopBackOff`
//! with the previous instance in `lastState` while a restart waits out its backoff.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, InstancePre};
use wasmtime_wasi::p2::bindings::CommandPre;
use wedge_core::pod_runtime::StatusListener;
use wedge_core::restart::CrashLoopBackoff;
use wedge_core::status::{ContainerState, ContainerStatus, reason};

use crate::compile::{CacheOutcome, CompileError};
use crate::handler::{self, HandlerRunner};
use crate::host::{ComponentKind, HostState, component_kind};
use crate::instance::{Exit, app_store, wasi_ctx};
use crate::limits::ContainerMeters;
use crate::logs::ContainerLog;
use crate::oci::{ImageError, PulledImage};
use crate::runtime::Inner;
use crate::spec::{ContainerPlan, PodPlan};

/// Why a container could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The image could not be pulled or is not a Wasm component.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The component does not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The component imports something the host does not provide.
    #[error("the component cannot be linked: {0}")]
    Link(String),
    /// The component exports neither `wasi:cli/run` nor `wedge:app/event-handler`.
    #[error(
        "the component exports neither wasi:cli/run (an app) nor wedge:app/event-handler (a handler): nothing to run"
    )]
    NotRunnable,
}

impl PrepareError {
    /// The kubelet reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Image(_) => reason::ERR_IMAGE_PULL,
            Self::Compile(_) | Self::Link(_) | Self::NotRunnable => reason::CREATE_CONTAINER_ERROR,
        }
    }
}

/// A container ready to run.
pub struct Prepared {
    /// The image it came from.
    pub image: PulledImage,
    /// The compiled component.
    pub component: Component,
    /// Whether compiling was needed.
    pub cache: CacheOutcome,
    /// App or handler.
    pub kind: ComponentKind,
    /// Linked and type-checked, ready to instantiate.
    pub pre: InstancePre<HostState>,
}

/// Pulls, compiles and links a container's component.
pub(crate) async fn prepare(rt: &Inner, plan: &ContainerPlan) -> Result<Prepared, PrepareError> {
    let credentials = rt.credentials_for(&plan.image);
    let image = rt
        .images
        .ensure(&plan.image, plan.pull_policy, credentials.as_ref())
        .await?;
    let (component, cache) = rt
        .compiled
        .component(&image.stored.wasm_digest, &image.wasm_path)
        .await?;
    let pre = rt
        .linker
        .instantiate_pre(&component)
        .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
    let kind = component_kind(&rt.engine, &component).ok_or(PrepareError::NotRunnable)?;
    tracing::debug!(image = %plan.image, ?cache, ?kind, "container prepared");
    Ok(Prepared {
        image,
        component,
        cache,
        kind,
        pre,
    })
}

/// A container's shared state: what the runtime reports about it.
pub(crate) struct ContainerSlot {
    pub(crate) plan: ContainerPlan,
    pub(crate) status: Mutex<ContainerStatus>,
    pub(crate) meters: Arc<ContainerMeters>,
    pub(crate) cache: Mutex<Option<CacheOutcome>>,
    pub(crate) log_dir: PathBuf,
    /// Told of every status change, with the pod's uid.
    listener: Option<(String, StatusListener)>,
}

impl ContainerSlot {
    pub(crate) fn new(
        plan: ContainerPlan,
        pod: &PodPlan,
        listener: Option<StatusListener>,
    ) -> Self {
        let status = ContainerStatus {
            name: plan.name.clone(),
            image: plan.image.clone(),
            image_id: None,
            state: ContainerState::waiting(reason::CONTAINER_CREATING, None),
            last_state: None,
            restart_count: 0,
        };
        let log_dir = pod.dir.join(&plan.name);
        Self {
            plan,
            status: Mutex::new(status),
            meters: Arc::default(),
            cache: Mutex::new(None),
            log_dir,
            listener: listener.map(|l| (pod.uid.clone(), l)),
        }
    }

    pub(crate) fn status(&self) -> ContainerStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut ContainerStatus)) {
        f(&mut self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
        if let Some((uid, listener)) = &self.listener {
            listener(uid);
        }
    }

    pub(crate) fn log_path(&self, restart: u32) -> PathBuf {
        self.log_dir.join(format!("{restart}.log"))
    }
}

/// Runs a container until it ends for good or `cancel` fires.
pub(crate) async fn supervise(
    rt: Arc<Inner>,
    pod: Arc<PodPlan>,
    slot: Arc<ContainerSlot>,
    cancel: CancellationToken,
) {
    let mut backoff = CrashLoopBackoff::new(rt.config.backoff);
    let prepared = loop {
        match prepare(&rt, &slot.plan).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(pod = %pod.display_name, container = %slot.plan.name, error = %e, "container not prepared");
                let reason = e.reason();
                let message = e.to_string();
                slot.update(|s| s.state = ContainerState::waiting(reason, Some(message.clone())));
                let wait = backoff.after_exit(Duration::ZERO);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    *slot
        .cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(prepared.cache);
    slot.update(|s| s.image_id = Some(prepared.image.image_id()));
    match prepared.kind {
        ComponentKind::App => run_app(&rt, &pod, &slot, prepared.pre, &cancel).await,
        ComponentKind::Handler => run_handler(&rt, &pod, &slot, prepared.pre, &cancel).await,
    }
}

async fn run_app(
    rt: &Inner,
    pod: &PodPlan,
    slot: &ContainerSlot,
    pre: InstancePre<HostState>,
    cancel: &CancellationToken,
) {
    let pre = match CommandPre::new(pre) {
        Ok(p) => p,
        Err(e) => return fail_create(slot, format!("{e:#}")),
    };
    let mut backoff = CrashLoopBackoff::new(rt.config.backoff);
    loop {
        let restart = slot.status().restart_count;
        let log = match ContainerLog::open(&slot.log_path(restart), rt.config.echo_logs) {
            Ok(l) => l,
            Err(e) => return fail_create(slot, format!("cannot open the container log: {e}")),
        };
        let wasi = match wasi_ctx(&slot.plan, &log) {
            Ok(w) => w,
            Err(e) => return fail_create(slot, e.to_string()),
        };
        let mut store = app_store(
            &rt.engine,
            wasi,
            &slot.plan,
            &rt.backends,
            &pod.grants,
            &slot.meters,
        );
        let started_at = Timestamp::now();
        let started = Instant::now();
        slot.update(|s| s.state = ContainerState::Running { started_at });
        let run = async {
            let command = pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        };
        let (exit, stopped) = tokio::select! {
            r = run => (Exit::of_run(r), false),
            () = cancel.cancelled() => (Exit::killed("the pod was stopped"), true),
        };
        log.finish();
        let terminated = ContainerState::Terminated {
            exit_code: exit.code,
            reason: exit.reason.to_owned(),
            message: exit.message,
            started_at,
            finished_at: Timestamp::now(),
        };
        tracing::info!(pod = %pod.display_name, container = %slot.plan.name, code = exit.code, reason = exit.reason, "instance ended");
        if stopped || !pod.restart_policy.restarts_after(exit.code) {
            slot.update(|s| s.state = terminated);
            return;
        }
        let wait = backoff.after_exit(started.elapsed());
        let message = format!(
            "back-off {}s restarting failed container={} pod={}({})",
            wait.as_secs(),
            slot.plan.name,
            pod.display_name,
            pod.uid
        );
        slot.update(|s| {
            s.last_state = Some(terminated);
            s.state = ContainerState::waiting(reason::CRASH_LOOP_BACK_OFF, Some(message));
        });
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        slot.update(|s| s.restart_count += 1);
    }
}

async fn run_handler(
    rt: &Inner,
    pod: &PodPlan,
    slot: &ContainerSlot,
    pre: InstancePre<HostState>,
    cancel: &CancellationToken,
) {
    let log = match ContainerLog::open(&slot.log_path(0), rt.config.echo_logs) {
        Ok(l) => l,
        Err(e) => return fail_create(slot, format!("cannot open the container log: {e}")),
    };
    let runner = HandlerRunner::new(
        &rt.engine,
        pre,
        slot.plan.clone(),
        rt.backends.clone(),
        pod.grants.clone(),
        log.clone(),
        rt.config.handler_timeout,
        rt.config.engine.epoch_tick,
        slot.meters.clone(),
    );
    let runner = match runner {
        Ok(r) => r,
        Err(e) => return fail_create(slot, e.to_string()),
    };
    let started_at = Timestamp::now();
    slot.update(|s| s.state = ContainerState::Running { started_at });
    handler::serve(&runner, &pod.grants.triggers, &rt.backends, cancel).await;
    log.finish();
    // A handler has no exit of its own: it ends when its pod is stopped, having finished the
    // event in hand.
    slot.update(|s| {
        s.state = ContainerState::Terminated {
            exit_code: 0,
            reason: reason::COMPLETED.to_owned(),
            message: Some("the pod was stopped".to_owned()),
            started_at,
            finished_at: Timestamp::now(),
        }
    });
}

fn fail_create(slot: &ContainerSlot, message: String) {
    tracing::warn!(container = %slot.plan.name, %message, "container cannot start");
    slot.update(|s| {
        s.state = ContainerState::waiting(reason::CREATE_CONTAINER_ERROR, Some(message))
    });
}
