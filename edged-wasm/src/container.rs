//! One container of the Wasm runtime: prepared when created (image from the store, compiled,
//! linked), run once when started (an app until `wasi:cli/run` returns, a handler until it is
//! stopped), and its exit classified in kubelet's terms.
//!
//! Restarts, backoff and waiting states are not here: Edged decides them for every runtime and
//! creates a new container for each restart, as the kubelet does over CRI.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, InstancePre};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wedge_core::grants::PodGrants;
use wedge_core::runtime::{self, ContainerConfig, ExecResult, RuntimeError};
use wedge_core::status::reason;

use crate::compile::{CacheOutcome, CompileError};
use crate::handler::{self, HandlerRunner};
use crate::host::{ComponentKind, HostState, component_kind};
use crate::instance::{Exit, app_store, wasi_ctx, wasi_ctx_with};
use crate::limits::ContainerMeters;
use crate::logs::ContainerLog;
use crate::netns::PodThread;
use crate::oci::{ImageError, PulledImage};
use crate::runtime::Inner;
use crate::spec::ContainerPlan;

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
}

impl WasmContainer {
    /// Spawns `task` where the container's guests run: the pod's network-namespace thread, or
    /// the shared workers.
    fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
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
    let prepared = c
        .prepared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| RuntimeError::Failed(format!("container {} is not prepared", c.id)))?;
    let log = ContainerLog::open(&c.config.log_path, rt.config.echo_logs).map_err(|e| {
        RuntimeError::Failed(format!(
            "cannot open the container log {}: {e}",
            c.config.log_path.display()
        ))
    })?;
    let started_at = Timestamp::now();
    let run: Box<dyn FnOnce() -> JoinHandle<()> + Send> = match prepared.kind {
        ComponentKind::App => {
            let pre = c.command.clone().ok_or_else(|| {
                RuntimeError::Failed("the app's wasi:cli/run cannot be linked".to_owned())
            })?;
            let wasi = wasi_ctx(&c.plan, &log).map_err(|e| RuntimeError::Failed(e.to_string()))?;
            let (rt, c2, c3) = (rt.clone(), c.clone(), c.clone());
            Box::new(move || {
                c3.spawn(async move {
                    let mut store = app_store(
                        &rt.engine,
                        wasi,
                        &c2.plan,
                        &rt.backends,
                        &c2.grants,
                        &c2.meters,
                    );
                    let run = async {
                        let command = pre.instantiate_async(&mut store).await?;
                        command.wasi_cli_run().call_run(&mut store).await
                    };
                    let exit = tokio::select! {
                        r = run => Exit::of_run(r),
                        () = c2.cancel.cancelled() => Exit::killed("the container was stopped"),
                    };
                    log.finish();
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
                    log.finish();
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
    *c.task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
    Ok(())
}

/// Runs `command` in the container, as `kubectl exec` and exec probes do: a fresh instance of
/// the container's component with `command` as its argv, the container's env, volumes, grants
/// and limits, its output captured. Handlers have no command to run.
pub(crate) async fn exec(
    rt: &Arc<Inner>,
    c: Arc<WasmContainer>,
    command: &[String],
    timeout: Duration,
) -> Result<ExecResult, RuntimeError> {
    let pre = c.command.clone().ok_or_else(|| {
        RuntimeError::Unsupported(format!(
            "container {} is a handler: it exports no wasi:cli/run to run a command with",
            c.config.name
        ))
    })?;
    const MAX_OUTPUT: usize = 1 << 20;
    let stdout = MemoryOutputPipe::new(MAX_OUTPUT);
    let stderr = MemoryOutputPipe::new(MAX_OUTPUT);
    let wasi = wasi_ctx_with(&c.plan, command, stdout.clone(), stderr.clone())
        .map_err(|e| RuntimeError::Failed(e.to_string()))?;
    let meters = Arc::new(ContainerMeters::default());
    let (rt2, c2) = (rt.clone(), c.clone());
    // Where the container's guests run (its pod's network, for a mixed pod).
    let exit = c
        .spawn(async move {
            let mut store = app_store(
                &rt2.engine,
                wasi,
                &c2.plan,
                &rt2.backends,
                &c2.grants,
                &meters,
            );
            let run = async {
                let command = pre.instantiate_async(&mut store).await?;
                command.wasi_cli_run().call_run(&mut store).await
            };
            tokio::time::timeout(timeout, run).await
        })
        .await
        .map_err(|e| RuntimeError::Failed(format!("the command's task failed: {e}")))?
        .map_err(|_| RuntimeError::Failed(format!("command timed out after {timeout:?}")))?;
    let exit = Exit::of_run(exit);
    let mut stderr = stderr.contents().to_vec();
    if let Some(m) = exit.message {
        stderr.extend_from_slice(m.as_bytes());
    }
    Ok(ExecResult {
        exit_code: exit.code,
        stdout: stdout.contents().to_vec(),
        stderr,
    })
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
