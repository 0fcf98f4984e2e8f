//! [`WasmRuntime`]: Wasm components as the containers of pod sandboxes, behind the runtime
//! boundary Edged drives ([`wedge_core::runtime::RuntimeService`] and `ImageService`).
//!
//! One runtime per edge process holds the engine, the linker, the image store and the compile
//! cache. A sandbox is a pod's grants (from its annotations) and nothing else: Wasm guests share
//! the host's network, so there is no namespace to make. A container is compiled and linked when
//! it is created and runs as a task when it is started ([`crate::container`]); commands run in
//! it and attached clients are [`crate::exec`]'s. Everything lives in the process, so nothing
//! survives a restart of edgecore: its pods start afresh. Ports are not forwarded here: a
//! Wasm-only pod has no network for anything to listen in, and a mixed pod's network is the
//! container runtime's, which forwards them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wedge_core::grants::PodGrants;
use wedge_core::runtime::{
    self as rt, ContainerConfig, ContainerInfo, ContainerStats, ExecResult, ExecStreams, ImageInfo,
    PortStreams, PullAuth, RuntimeError, RuntimeService, SandboxConfig, SandboxStatus,
};

use crate::compile::{CacheOutcome, CompileCache, CompileError};
use crate::config::RuntimeConfig;
use crate::container::{self, PrepareError, Prepared, WasmContainer};
use crate::engine::{EngineError, EpochTicker, build_engine};
use crate::exec;
use crate::host::{Backends, HostState, linker};
use crate::netns::PodThread;
use crate::oci::{ImageError, ImageService, ImageStore, RegistryCredentials, StoreError};
use crate::spec::plan_container;

/// The version of wasmtime this runtime is built on, for `nodeInfo.containerRuntimeVersion`.
pub const WASMTIME_VERSION: &str = "48.0";

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeStartError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The host functions could not be linked.
    #[error("cannot link host functions: {0}")]
    Linker(String),
    /// The image store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The compile cache could not be opened.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The registry client could not be built.
    #[error(transparent)]
    Images(#[from] ImageError),
}

/// Wasm-specific figures of one container, beyond CRI's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmStats {
    /// Handler invocations.
    pub invocations: u64,
    /// Failed handler invocations.
    pub failures: u64,
    /// How the component was obtained when the container was created.
    pub cache: CacheOutcome,
}

struct Sandbox {
    config: SandboxConfig,
    grants: Arc<PodGrants>,
    created_at: Timestamp,
    ready: bool,
    /// For a sandbox that joins a pod's network namespace: the thread its guests run on.
    pod_thread: Option<Arc<PodThread>>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) images: ImageService,
    pub(crate) compiled: CompileCache,
    pub(crate) backends: Backends,
    pub(crate) config: RuntimeConfig,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    containers: Mutex<HashMap<String, Arc<WasmContainer>>>,
    _ticker: EpochTicker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Wasm runtime.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

impl WasmRuntime {
    /// Starts a runtime with `config`, whose guests reach `backends`.
    pub fn new(config: RuntimeConfig, backends: Backends) -> Result<Self, RuntimeStartError> {
        let engine = build_engine(&config.engine)?;
        let linker = linker(&engine).map_err(|e| RuntimeStartError::Linker(format!("{e:#}")))?;
        let store = ImageStore::open(config.root.join("images"))?;
        let images = ImageService::new(store, config.registries.clone())?;
        let compiled = CompileCache::new(engine.clone(), &config.root.join("compiled"))?;
        let ticker = EpochTicker::start(engine.clone(), config.engine.epoch_tick);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                images,
                compiled,
                backends,
                config,
                sandboxes: Mutex::default(),
                containers: Mutex::default(),
                _ticker: ticker,
            }),
        })
    }

    /// The image service (pull, import, list).
    pub fn images(&self) -> &ImageService {
        &self.inner.images
    }

    /// The engine, for tools that compile or inspect components.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The linker with every host function, for tools that run components directly.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// The backends guests reach.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Compiles and links the component of a held image without running it.
    pub async fn prepare(&self, image: &str) -> Result<Prepared, PrepareError> {
        container::prepare(&self.inner, image).await
    }

    /// A container's Wasm figures.
    pub fn wasm_stats(&self, id: &str) -> Option<WasmStats> {
        let c = lock(&self.inner.containers).get(id).cloned()?;
        use std::sync::atomic::Ordering::Relaxed;
        Some(WasmStats {
            invocations: c.meters.invocations.load(Relaxed),
            failures: c.meters.failures.load(Relaxed),
            cache: c.cache,
        })
    }

    /// Stops every container at once (the process is exiting) and waits until all have ended:
    /// an instance ends at its next epoch tick or host call (a handler finishes the event in
    /// hand, bounded by its time budget), and its end waits for its log to have every line it
    /// wrote. Guests have no signal to catch, so a pod's grace period gives them nothing to do;
    /// bound the wait from outside if it must be bounded.
    pub async fn shutdown(&self) {
        let containers: Vec<Arc<WasmContainer>> =
            lock(&self.inner.containers).values().cloned().collect();
        for c in &containers {
            c.cancel.cancel();
        }
        let tasks: Vec<_> = containers
            .iter()
            .filter_map(|c| lock(&c.task).take())
            .collect();
        // Together: the slowest sets the time, not their sum.
        futures::future::join_all(tasks).await;
    }

    fn container(&self, id: &str) -> Result<Arc<WasmContainer>, RuntimeError> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }
}

fn image_error(image: &str, e: ImageError) -> rt::ImageError {
    use crate::oci::RegistryError as R;
    match e {
        ImageError::InvalidReference { reference, detail } => rt::ImageError::InvalidReference {
            reference,
            message: detail,
        },
        ImageError::Registry(R::NotFound { reference, detail }) => rt::ImageError::NotFound {
            reference,
            message: format!("not found in the registry: {detail}"),
        },
        ImageError::Registry(R::Unauthorized { reference, detail }) => {
            rt::ImageError::Unauthorized {
                reference,
                message: format!(
                    "the registry refused access ({detail}); check the pod's imagePullSecrets"
                ),
            }
        }
        ImageError::Registry(R::Unreachable { reference, detail }) => {
            rt::ImageError::Unreachable {
                reference,
                message: format!(
                    "cannot reach the registry: {detail} (if it serves plain HTTP, list it under the insecure registries)"
                ),
            }
        }
        ImageError::NotWasm(reference) => rt::ImageError::WrongKind {
            reference,
            message: "a container image, not Wasm: run it under a RuntimeClass whose handler is runc (containerd), on an edge that runs containers".to_owned(),
        },
        other => rt::ImageError::Other {
            reference: image.to_owned(),
            message: other.to_string(),
        },
    }
}

fn image_info(image: &crate::oci::PulledImage) -> ImageInfo {
    ImageInfo {
        id: image.stored.manifest_digest.as_str().to_owned(),
        repo_tags: vec![image.stored.reference.clone()],
        repo_digests: vec![image.image_id()],
        size_bytes: std::fs::metadata(&image.wasm_path).map_or(0, |m| m.len()),
    }
}

#[async_trait]
impl rt::ImageService for WasmRuntime {
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
    ) -> Result<String, rt::ImageError> {
        let credentials = auth.map(|a| match a {
            PullAuth::Basic { username, password } => RegistryCredentials::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            PullAuth::Bearer(token) => RegistryCredentials::Bearer(token.clone()),
        });
        let pulled = self
            .inner
            .images
            .pull(image, credentials.as_ref())
            .await
            .map_err(|e| image_error(image, e))?;
        Ok(pulled.stored.manifest_digest.as_str().to_owned())
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, rt::ImageError> {
        let held = self
            .inner
            .images
            .held(image)
            .await
            .map_err(|e| image_error(image, e))?;
        Ok(held.as_ref().map(image_info))
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, rt::ImageError> {
        self.inner
            .images
            .list()
            .await
            .map_err(|e| image_error("", e))
            .map(|images| images.iter().map(image_info).collect())
    }

    async fn remove_image(&self, image: &str) -> Result<(), rt::ImageError> {
        self.inner
            .images
            .forget(image)
            .await
            .map_err(|e| image_error(image, e))
    }
}

#[async_trait]
impl RuntimeService for WasmRuntime {
    fn handler(&self) -> &'static str {
        wedge_core::runtimes::WASM
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        Ok(format!("wasmtime://{WASMTIME_VERSION}"))
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError> {
        let grants = PodGrants::from_annotations(&config.annotations).map_err(|e| {
            RuntimeError::InvalidConfig {
                field: "metadata.annotations".to_owned(),
                message: e.to_string(),
            }
        })?;
        let pod_thread = match &config.netns {
            Some(netns) => Some(Arc::new(
                PodThread::start(netns, &config.uid)
                    .await
                    .map_err(|e| RuntimeError::Failed(e.to_string()))?,
            )),
            None => None,
        };
        let id = format!("wasm-{}", uuid::Uuid::new_v4().simple());
        lock(&self.inner.sandboxes).insert(
            id.clone(),
            Sandbox {
                config: config.clone(),
                grants: Arc::new(grants),
                created_at: Timestamp::now(),
                ready: true,
                pod_thread,
            },
        );
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let ids: Vec<String> = {
            let mut sandboxes = lock(&self.inner.sandboxes);
            let Some(sandbox) = sandboxes.get_mut(id) else {
                return Ok(());
            };
            sandbox.ready = false;
            lock(&self.inner.containers)
                .values()
                .filter(|c| c.sandbox_id == id)
                .map(|c| c.id.clone())
                .collect()
        };
        for c in ids {
            self.stop_container(&c, Duration::ZERO).await?;
        }
        // A guest's instance (its memory, its sockets) goes when it ends; what a stopped sandbox
        // would hold on to beyond that is a mixed pod's thread in the pod's network namespace.
        let thread = lock(&self.inner.sandboxes)
            .get(id)
            .and_then(|s| s.pod_thread.clone());
        if let Some(thread) = thread {
            thread.stop();
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(id).await?;
        lock(&self.inner.containers).retain(|_, c| c.sandbox_id != id);
        lock(&self.inner.sandboxes).remove(id);
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        let sandboxes = lock(&self.inner.sandboxes);
        let s = sandboxes
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {id}")))?;
        Ok(SandboxStatus {
            id: id.to_owned(),
            ready: s.ready,
            ip: None,
            netns: s.pod_thread.as_ref().map(|t| t.netns().to_owned()),
            created_at: s.created_at,
            labels: s.config.labels.clone(),
        })
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        Ok(lock(&self.inner.sandboxes)
            .iter()
            .map(|(id, s)| SandboxStatus {
                id: id.clone(),
                ready: s.ready,
                ip: None,
                netns: s.pod_thread.as_ref().map(|t| t.netns().to_owned()),
                created_at: s.created_at,
                labels: s.config.labels.clone(),
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox: &SandboxConfig,
    ) -> Result<String, RuntimeError> {
        let (grants, pod_thread) = lock(&self.inner.sandboxes)
            .get(sandbox_id)
            .map(|s| (s.grants.clone(), s.pod_thread.clone()))
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {sandbox_id}")))?;
        let mut plan = plan_container(config)?;
        plan.network = pod_thread.is_some();
        let prepared = container::prepare(&self.inner, &config.image_ref)
            .await
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let command = match prepared.kind {
            crate::host::ComponentKind::App => Some(
                wasmtime_wasi::p2::bindings::CommandPre::new(prepared.pre.clone())
                    .map_err(|e| RuntimeError::Failed(format!("{e:#}")))?,
            ),
            crate::host::ComponentKind::Handler => None,
        };
        let id = format!("wasm-{}", uuid::Uuid::new_v4().simple());
        let c = WasmContainer {
            command,
            id: id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            config: config.clone(),
            plan,
            grants,
            pod_thread,
            image_id: prepared.image.image_id(),
            cache: prepared.cache,
            meters: Arc::default(),
            prepared: Mutex::new(Some(prepared)),
            state: tokio::sync::watch::Sender::new(rt::ContainerState::Created),
            cancel: CancellationToken::new(),
            task: Mutex::new(None),
            output: crate::logs::OutputTap::default(),
            stdin: Mutex::new(None),
            log: Mutex::new(None),
        };
        lock(&self.inner.containers).insert(id.clone(), Arc::new(c));
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        container::start(self.inner.clone(), self.container(id)?)
    }

    async fn stop_container(&self, id: &str, _timeout: Duration) -> Result<(), RuntimeError> {
        // A guest has no signal to catch: it stops at once (a handler finishes the event in
        // hand, bounded by its time budget).
        let Ok(c) = self.container(id) else {
            return Ok(());
        };
        c.cancel.cancel();
        let task = lock(&c.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let c = lock(&self.inner.containers).get(id).cloned();
        if let Some(c) = c {
            if matches!(*c.state.borrow(), rt::ContainerState::Running { .. }) {
                return Err(RuntimeError::Failed(format!(
                    "container {id} is running: stop it first"
                )));
            }
            lock(&self.inner.containers).remove(id);
        }
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        Ok(self.container(id)?.info())
    }

    async fn list_containers(
        &self,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(lock(&self.inner.containers)
            .values()
            .filter(|c| sandbox_id.is_none_or(|s| c.sandbox_id == s))
            .map(|c| c.info())
            .collect())
    }

    async fn wait_container(&self, id: &str) -> Result<rt::Exit, RuntimeError> {
        let c = self.container(id)?;
        let mut state = c.state.subscribe();
        let state = state
            .wait_for(|s| matches!(s, rt::ContainerState::Exited(_)))
            .await
            .map_err(|_| RuntimeError::NotFound(format!("container {id}")))?;
        match &*state {
            rt::ContainerState::Exited(exit) => Ok(exit.clone()),
            _ => Err(RuntimeError::NotFound(format!("container {id}"))),
        }
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let c = self.container(id)?;
        Ok(exec::exec_sync(&self.inner, c, command, timeout).await?)
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        streams: ExecStreams,
    ) -> Result<i32, RuntimeError> {
        let c = self.container(id)?;
        Ok(exec::exec(&self.inner, c, command, streams).await?)
    }

    async fn attach(&self, id: &str, streams: ExecStreams) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        Ok(exec::attach(c, streams).await?)
    }

    /// Refused, saying why in words for the user of `kubectl port-forward`: the guests of a
    /// Wasm-only pod get no sockets (they run in edgecore's own network, see [`crate::netns`]),
    /// so nothing of the pod's can listen; the Wasm containers of a mixed pod do listen, in the
    /// pod's network, which the container runtime owns and forwards (Edged asks it, not us).
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        streams: PortStreams,
    ) -> Result<(), RuntimeError> {
        drop(streams);
        let joined = lock(&self.inner.sandboxes)
            .get(sandbox_id)
            .map(|s| s.pod_thread.is_some())
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {sandbox_id}")))?;
        Err(RuntimeError::Unsupported(if joined {
            format!(
                "the pod's network, port {port} included, is its container runtime's: forward \
                 through that runtime's sandbox"
            )
        } else {
            format!(
                "pod runs only Wasm containers, which have no network of their own: nothing in \
                 it can listen on port {port}; give the pod a container to give it a network"
            )
        }))
    }

    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        let log = crate::container::lock(&c.log).clone();
        match log {
            Some(log) => log.reopen().await.map_err(|e| {
                RuntimeError::Failed(format!(
                    "cannot reopen the container log {}: {e}",
                    c.config.log_path.display()
                ))
            }),
            None => Err(RuntimeError::Failed(format!(
                "container {id} is not running"
            ))),
        }
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let c = self.container(id)?;
        use std::sync::atomic::Ordering::Relaxed;
        Ok(ContainerStats {
            cpu: Duration::from_nanos(c.meters.cpu_nanos.load(Relaxed)),
            memory_bytes: c.meters.memory_bytes.load(Relaxed) as u64,
        })
    }
}
