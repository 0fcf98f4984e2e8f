//! [`WasmRuntime`]: the pod runtime Edged drives for Wasm pods.
//!
//! One runtime per edge process holds the engine, the linker, the image store and the compile
//! cache, and one task per container. `start_pod` checks the spec, then each container is
//! prepared and run in the background ([`crate::container`]); `pod_status` reads what they
//! report; `stop_pod` cancels them and waits at most the grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wedge_core::pod_runtime::{LogOptions, PodRuntime, PodRuntimeError, StatusListener};
use wedge_core::status::{PodPhase, PodStatusReport};

use crate::compile::{CacheOutcome, CompileCache, CompileError};
use crate::config::RuntimeConfig;
use crate::container::{self, ContainerSlot, PrepareError, Prepared};
use crate::engine::{EngineError, EpochTicker, build_engine};
use crate::host::{Backends, HostState, linker};
use crate::oci::{ImageService, ImageStore, RegistryCredentials, StoreError};
use crate::spec::{ContainerPlan, PodPlan, plan_pod};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
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
    Images(#[from] crate::oci::ImageError),
    /// The pods directory could not be created.
    #[error("pods directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Figures of one container, as CRI's `ContainerStats` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    /// Guest execution time over all instances.
    pub cpu: Duration,
    /// Linear memory of the current (or last) instance.
    pub memory_bytes: usize,
    /// Handler invocations.
    pub invocations: u64,
    /// Failed handler invocations.
    pub failures: u64,
    /// How the component was obtained at its last start.
    pub cache: Option<CacheOutcome>,
}

struct PodEntry {
    plan: Arc<PodPlan>,
    containers: Vec<Arc<ContainerSlot>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) images: ImageService,
    pub(crate) compiled: CompileCache,
    pub(crate) backends: Backends,
    pub(crate) config: RuntimeConfig,
    credentials: RwLock<HashMap<String, RegistryCredentials>>,
    pods: Mutex<HashMap<String, Arc<PodEntry>>>,
    listener: RwLock<Option<StatusListener>>,
    _ticker: EpochTicker,
}

impl Inner {
    pub(crate) fn credentials_for(&self, image: &str) -> Option<RegistryCredentials> {
        let registry = crate::oci::service::parse_reference(image)
            .ok()?
            .resolve_registry()
            .to_owned();
        self.credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&registry)
            .cloned()
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PodEntry>>> {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Wasm pod runtime.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

impl WasmRuntime {
    /// Starts a runtime with `config`, whose guests reach `backends`.
    pub fn new(config: RuntimeConfig, backends: Backends) -> Result<Self, RuntimeError> {
        let engine = build_engine(&config.engine)?;
        let linker = linker(&engine).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        let store = ImageStore::open(config.root.join("images"))?;
        let images = ImageService::new(store, &config.insecure_registries)?;
        let compiled = CompileCache::new(engine.clone(), &config.root.join("compiled"))?;
        std::fs::create_dir_all(config.root.join("pods"))?;
        let ticker = EpochTicker::start(engine.clone(), config.engine.epoch_tick);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                images,
                compiled,
                backends,
                config,
                credentials: RwLock::default(),
                pods: Mutex::default(),
                listener: RwLock::default(),
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

    /// Uses `credentials` for every image from `registry` (`host[:port]`), as pull secrets do.
    pub fn set_registry_credentials(&self, registry: &str, credentials: RegistryCredentials) {
        self.inner
            .credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(registry.to_owned(), credentials);
    }

    /// Pulls, compiles and links one container's component without running it.
    pub async fn prepare(&self, plan: &ContainerPlan) -> Result<Prepared, PrepareError> {
        container::prepare(&self.inner, plan).await
    }

    /// A container's figures.
    pub fn container_stats(&self, uid: &str, container: &str) -> Option<ContainerStats> {
        let pod = self.inner.pods().get(uid).cloned()?;
        let slot = pod.containers.iter().find(|c| c.plan.name == container)?;
        let m = &slot.meters;
        use std::sync::atomic::Ordering::Relaxed;
        Some(ContainerStats {
            cpu: Duration::from_nanos(m.cpu_nanos.load(Relaxed)),
            memory_bytes: m.memory_bytes.load(Relaxed),
            invocations: m.invocations.load(Relaxed),
            failures: m.failures.load(Relaxed),
            cache: *slot
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        })
    }

    /// Waits until every container of the pod has ended for good (none will restart), and
    /// returns the final status.
    pub async fn wait_pod(&self, uid: &str) -> Option<PodStatusReport> {
        let pod = self.inner.pods().get(uid).cloned()?;
        let handles: Vec<JoinHandle<()>> = std::mem::take(
            &mut *pod
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for h in handles {
            let _ = h.await;
        }
        self.pod_status(uid)
    }

    /// Stops every pod, each within its grace period.
    pub async fn shutdown(&self) {
        let uids = self.pods();
        for uid in uids {
            let _ = self.stop_pod(&uid, Duration::from_secs(30)).await;
        }
    }
}

#[async_trait]
impl PodRuntime for WasmRuntime {
    fn name(&self) -> &'static str {
        "wasm"
    }

    async fn start_pod(&self, pod: &Pod) -> Result<(), PodRuntimeError> {
        let pods_root = self.inner.config.root.join("pods");
        let plan = plan_pod(pod, &pods_root).map_err(|e| PodRuntimeError::InvalidPod {
            pod: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            ),
            message: e.to_string(),
        })?;
        let plan = Arc::new(plan);
        let mut pods = self.inner.pods();
        if pods.contains_key(&plan.uid) {
            return Ok(());
        }
        let cancel = CancellationToken::new();
        let listener = self
            .inner
            .listener
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let containers: Vec<Arc<ContainerSlot>> = plan
            .containers
            .iter()
            .map(|c| Arc::new(ContainerSlot::new(c.clone(), &plan, listener.clone())))
            .collect();
        let tasks = containers
            .iter()
            .map(|slot| {
                tokio::spawn(container::supervise(
                    self.inner.clone(),
                    plan.clone(),
                    slot.clone(),
                    cancel.clone(),
                ))
            })
            .collect();
        tracing::info!(pod = %plan.display_name, uid = %plan.uid, "pod started");
        pods.insert(
            plan.uid.clone(),
            Arc::new(PodEntry {
                plan,
                containers,
                cancel,
                tasks: Mutex::new(tasks),
            }),
        );
        Ok(())
    }

    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<(), PodRuntimeError> {
        let Some(pod) = self.inner.pods().remove(uid) else {
            return Ok(());
        };
        pod.cancel.cancel();
        let handles: Vec<JoinHandle<()>> = std::mem::take(
            &mut *pod
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(handles))
            .await
            .is_err()
        {
            tracing::warn!(pod = %pod.plan.display_name, ?grace, "containers outlived the grace period: killing them");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        tracing::info!(pod = %pod.plan.display_name, uid, "pod stopped");
        Ok(())
    }

    fn pod_status(&self, uid: &str) -> Option<PodStatusReport> {
        let pod = self.inner.pods().get(uid).cloned()?;
        let containers: Vec<_> = pod.containers.iter().map(|c| c.status()).collect();
        Some(PodStatusReport {
            phase: PodPhase::derive(&containers, |_| false),
            containers,
        })
    }

    fn pods(&self) -> Vec<String> {
        self.inner.pods().keys().cloned().collect()
    }

    fn watch_status(&self, listener: StatusListener) {
        *self
            .inner
            .listener
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener);
    }

    async fn container_logs(
        &self,
        uid: &str,
        container: &str,
        options: &LogOptions,
    ) -> Result<Vec<u8>, PodRuntimeError> {
        let pod = self
            .inner
            .pods()
            .get(uid)
            .cloned()
            .ok_or_else(|| PodRuntimeError::UnknownPod(uid.to_owned()))?;
        let slot = pod
            .containers
            .iter()
            .find(|c| c.plan.name == container)
            .ok_or_else(|| PodRuntimeError::UnknownContainer {
                pod: uid.to_owned(),
                container: container.to_owned(),
            })?;
        let restarts = slot.status().restart_count;
        let no_log = |message: String| PodRuntimeError::NoLog {
            pod: uid.to_owned(),
            container: container.to_owned(),
            message,
        };
        let n = if options.previous {
            restarts
                .checked_sub(1)
                .ok_or_else(|| no_log("the container has not been restarted".into()))?
        } else {
            restarts
        };
        let path = slot.log_path(n);
        let file = tokio::fs::read(&path)
            .await
            .map_err(|e| no_log(format!("{}: {e}", path.display())))?;
        let options = options.clone();
        tokio::task::spawn_blocking(move || crate::logs::render(&file, &options))
            .await
            .map_err(|e| PodRuntimeError::Runtime(e.to_string()))
    }
}
