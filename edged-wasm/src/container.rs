//! One container of the Wasm runtime: prepared when created (image from the store, compiled,
//! linked), run once when started (an app until `wasi:cli/run` returns, a handler until it is
//! stopped), and its exit classified in kubelet's terms.
//!
//! An app's instance and the commands run in its container ([`crate::exec`]) are built and run
//! by the one `run_command`, so that a command sees what the app sees.
//!
//! Restarts, backoff and waiting states are not here: Edged decides them for every runtime and
//! creates a new container for each restart, as the kubelet does over CRI.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, InstancePre};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wedge_core::grants::PodGrants;
use wedge_core::runtime::{self, ContainerConfig, RuntimeError};
use wedge_core::status::reason;

use crate::compile::{CacheOutcome, CompileError};
use crate::handler::{self, HandlerRunner};
use crate::host::{ComponentKind, HostState, component_kind};
use crate::instance::{Exit, app_store, wasi_ctx_with};
use crate::limits::ContainerMeters;
use crate::logs::{ContainerLog, OutputTap};
use crate::netns::PodThread;
use crate::oci::{ImageError, PulledImage};
use crate::runtime::Inner;
use crate::spec::ContainerPlan;
use crate::stdio::ChannelStdin;

/// How many writes of attached clients an app's stdin holds before they wait for it to read.
const STDIN_CHUNKS: usize = 16;

/// Why a container could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The image is not in the store or is not a Wasm component.
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

/// Compiles and links the component of `image`, which must be in the store.
pub(crate) async fn prepare(rt: &Inner, image: &str) -> Result<Prepared, PrepareError> {
    let image = rt
        .images
        .held(image)
        .await?
        .ok_or_else(|| ImageError::NeverPull(image.to_owned()))?;
    let (component, cache) = rt
        .compiled
        .component(&image.stored.wasm_digest, &image.wasm_path)
        .await?;
    let pre = rt
        .linker
        .instantiate_pre(&component)
        .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
    let kind = component_kind(&rt.engine, &component).ok_or(PrepareError::NotRunnable)?;
    tracing::debug!(image = %image.stored.reference, ?cache, ?kind, "container prepared");
    Ok(Prepared {
        image,
        component,
        cache,
        kind,
        pre,
    })
}

/// A created container.
pub(crate) struct WasmContainer {
    pub(crate) id: String,
    pub(crate) sandbox_id: String,
    pub(crate) config: ContainerConfig,
    pub(crate) plan: ContainerPlan,
    pub(crate) grants: Arc<PodGrants>,
    /// The thread of the pod's network namespace, for a mixed pod's guests.
    pub(crate) pod_thread: Option<Arc<PodThread>>,
    pub(crate) image_id: String,
    pub(crate) cache: CacheOutcome,
    pub(crate) meters: Arc<ContainerMeters>,
    /// Taken when the container starts.
    pub(crate) prepared: Mutex<Option<Prepared>>,
    /// An app's command, kept to run commands in the container (`exec`: a fresh instance).
    pub(crate) command: Option<CommandPre<HostState>>,
    pub(crate) state: tokio::sync::watch::Sender<runtime::ContainerState>,
    pub(crate) cancel: CancellationToken,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
    /// Every write of the instance to its log, for attached clients.
    pub(crate) output: OutputTap,
    /// The running app's stdin, for attached clients: set when it starts, if the container
    /// asked for one (`stdin: true`).
    pub(crate) stdin: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// The running instance's log, for Edged's rotation (`reopen_container_log`): set when it
    /// starts.
    pub(crate) log: Mutex<Option<ContainerLog>>,
}

impl WasmContainer {
    /// Spawns `task` where the container's guests run: the pod's network-namespace thread, or
    /// the shared workers.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.pod_thread {
            Some(thread) => thread.handle().spawn(task),
            None => tokio::spawn(task),
        }
    }

    pub(crate) fn info(&self) -> runtime::ContainerInfo {
        runtime::ContainerInfo {
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            name: self.config.name.clone(),
            attempt: self.config.attempt,
            image_id: Some(self.image_id.clone()),
            state: self.state.borrow().clone(),
            labels: self.config.labels.clone(),
        }
    }
}

/// Starts the container's instance in a task of its own.
pub(crate) fn start(rt: Arc<Inner>, c: Arc<WasmContainer>) -> Result<(), RuntimeError> {
    if !matches!(*c.state.borrow(), runtime::ContainerState::Created) {
        return Err(RuntimeError::Failed(format!(
            "container {} was started before",
            c.id
        )));
    }
    let prepared = lock(&c.prepared)
        .take()
        .ok_or_else(|| RuntimeError::Failed(format!("container {} is not prepared", c.id)))?;
    let log = ContainerLog::open_limited(
        &c.config.log_path,
        rt.config.echo_logs,
        c.output.clone(),
        rt.config.log_limits,
    )
    .map_err(|e| {
        RuntimeError::Failed(format!(
            "cannot open the container log {}: {e}",
            c.config.log_path.display()
        ))
    })?;
    *lock(&c.log) = Some(log.clone());
    let started_at = Timestamp::now();
    let run: Box<dyn FnOnce() -> JoinHandle<()> + Send> = match prepared.kind {
        ComponentKind::App => {
            let pre = c.command.clone().ok_or_else(|| {
                RuntimeError::Failed("the app's wasi:cli/run cannot be linked".to_owned())
            })?;
            // Attached clients type into a channel; without `stdin: true` stdin is empty.
            let stdin = c.config.stdin.then(|| {
                let (tx, rx) = mpsc::channel(STDIN_CHUNKS);
                *lock(&c.stdin) = Some(tx);
                rx
            });
            let wasi = wasi_ctx_with(
                &c.plan,
                &c.plan.argv,
                ChannelStdin::new(stdin, false),
                log.stdout(),
                log.stderr(),
            )
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
            let (rt, c2, c3) = (rt.clone(), c.clone(), c.clone());
            Box::new(move || {
                c3.spawn(async move {
                    let outcome = run_command(&rt, &c2, pre, wasi, &c2.meters, &c2.cancel).await;
                    let exit = match outcome {
                        Some(r) => Exit::of_run(r),
                        None => Exit::killed("the container was stopped"),
                    };
                    // Everything the guest wrote is in its log before its status says it
                    // exited: `kubectl logs` of a finished pod has every line.
                    log.close().await;
                    exited(&c2, exit, started_at);
                })
            })
        }
        ComponentKind::Handler => {
            let runner = HandlerRunner::new(
                &rt.engine,
                prepared.pre,
                c.plan.clone(),
                rt.backends.clone(),
                c.grants.clone(),
                log.clone(),
                rt.config.handler_timeout,
                rt.config.engine.epoch_tick,
                c.meters.clone(),
            )
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
            let (rt, c2, c3) = (rt.clone(), c.clone(), c.clone());
            Box::new(move || {
                c3.spawn(async move {
                    handler::serve(&runner, &c2.grants.triggers, &rt.backends, &c2.cancel).await;
                    log.close().await;
                    // A handler has no exit of its own: it ends when stopped, having finished
                    // the event in hand.
                    let exit = Exit {
                        code: 0,
                        reason: reason::COMPLETED,
                        message: Some("the container was stopped".to_owned()),
                    };
                    exited(&c2, exit, started_at);
                })
            })
        }
    };
    c.state
        .send_replace(runtime::ContainerState::Running { started_at });
    let task = run();
    *lock(&c.task) = Some(task);
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sender of the running app's stdin, if it has one.
pub(crate) fn stdin_of(c: &WasmContainer) -> Option<mpsc::Sender<Bytes>> {
    lock(&c.stdin).clone()
}

/// What became of an instance of the container's command: `None` when it was stopped.
pub(crate) type RunOutcome = Option<wasmtime::Result<Result<(), ()>>>;

/// Runs one instance of the container's command (`wasi:cli/run`) until it returns or `cancel`
/// fires: the app itself, or a command run in its container. Either way the instance has the
/// container's linker, grants and limits; `wasi` (argv, streams) is what differs, and `meters`
/// is where its figures go. Call it where the container's guests run ([`WasmContainer::spawn`]).
pub(crate) async fn run_command(
    rt: &Inner,
    c: &WasmContainer,
    pre: CommandPre<HostState>,
    wasi: WasiCtx,
    meters: &Arc<ContainerMeters>,
    cancel: &CancellationToken,
) -> RunOutcome {
    let mut store = app_store(&rt.engine, wasi, &c.plan, &rt.backends, &c.grants, meters);
    let run = async {
        let command = pre.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    };
    tokio::select! {
        r = run => Some(r),
        () = cancel.cancelled() => None,
    }
}

fn exited(c: &WasmContainer, exit: Exit, started_at: Timestamp) {
    tracing::info!(container = %c.config.name, id = %c.id, code = exit.code, reason = exit.reason, "instance ended");
    c.state
        .send_replace(runtime::ContainerState::Exited(runtime::Exit {
            code: exit.code,
            reason: exit.reason.to_owned(),
            message: exit.message,
            started_at,
            finished_at: Timestamp::now(),
        }));
}
