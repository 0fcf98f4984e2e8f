//! Shared fixtures: a runtime on a temp dir, pods from JSON, and bounded waits on status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use wedge_core::crilog::LogOptions;
use wedge_core::restart::BackoffSettings;
use wedge_core::status::{ContainerState, PodStatusReport};
use wedge_edge::edged::logs::LogError;
use wedge_edge::edged::plan::plan_pod;
use wedge_edge::edged::pod_workers::{PodWorkers, WorkerConfig};
use wedge_edge::edged::runtimes::{RuntimeHandle, Runtimes};
use wedge_edged_wasm::compile::CacheOutcome;
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::host::in_process::{InProcessBus, InProcessTwin};
use wedge_edged_wasm::{RuntimeConfig, WasmRuntime};
use wedge_testkit::oci::{self, Image, WasmLayout};
use wedge_testkit::sample_apps::{self, SampleApps};

/// The Wasm runtime rooted in a temp dir, with in-process backends, driven by Edged's pod
/// workers with a fast crash-loop backoff.
pub struct TestRuntime {
    pub rt: WasmRuntime,
    pub workers: PodWorkers,
    pub twin: Arc<InProcessTwin>,
    pub bus: Arc<InProcessBus>,
    pub root: tempfile::TempDir,
}

impl TestRuntime {
    pub fn new(insecure: &[String]) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        Self::at(root, insecure)
    }

    pub fn at(root: tempfile::TempDir, insecure: &[String]) -> Self {
        let mut config = RuntimeConfig::new(root.path().join("wasm"));
        config.registries = wedge_edged_wasm::RegistryHosts::insecure(insecure);
        config.engine.max_instances = 100;
        let (backends, twin, bus) = Backends::in_process();
        let rt = WasmRuntime::new(config, backends).expect("runtime starts");
        let fast = BackoffSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        };
        let mut workers_config = WorkerConfig::new(root.path().join("pods"));
        workers_config.backoff = fast;
        workers_config.image_backoff = fast;
        let workers = PodWorkers::new(
            Runtimes::new().with(RuntimeHandle::new(Arc::new(rt.clone()))),
            workers_config,
        );
        Self {
            rt,
            workers,
            twin,
            bus,
            root,
        }
    }

    /// Adds a sample app's component under a local name and returns that name.
    pub async fn local_image(&self, app: &str) -> String {
        let bytes = apps().bytes(app).expect("sample app built");
        let name = format!("localhost/test/{app}:1");
        self.rt
            .images()
            .add_component(&name, bytes)
            .await
            .expect("component added");
        name
    }

    /// Starts a pod and returns its uid.
    pub async fn start(&self, pod: Pod) -> String {
        let uid = pod.metadata.uid.clone().expect("uid");
        self.start_pod(&pod).await.expect("pod accepted");
        uid
    }

    /// Plans and starts a pod, as Edged does; a refusal is Edged's message.
    pub async fn start_pod(&self, pod: &Pod) -> Result<(), String> {
        let plan = plan_pod(pod, &self.workers.config().pods_root).map_err(|e| e.to_string())?;
        self.workers
            .start(plan, Default::default(), Default::default())
            .map_err(|e| e.to_string())
    }

    /// The pod's status, if it was started.
    pub fn pod_status(&self, uid: &str) -> Option<PodStatusReport> {
        self.workers.status(uid)
    }

    /// Stops a pod within `grace`.
    pub async fn stop_pod(&self, uid: &str, grace: Duration) {
        self.workers.stop(uid, grace).await;
    }

    /// A container's log, as `kubectl logs` shows it: every chunk of the reader. The pod is one
    /// [`pod`] made (`default/pod-<uid>`).
    pub async fn container_logs(
        &self,
        uid: &str,
        c: &str,
        options: &LogOptions,
    ) -> Result<Vec<u8>, LogError> {
        let mut reader = self
            .workers
            .open_logs("default", &format!("pod-{uid}"), c, options.clone())
            .await?;
        let mut log = Vec::new();
        while let Some(chunk) = reader.next().await {
            log.extend_from_slice(&chunk?);
        }
        Ok(log)
    }

    /// A container's figures: CRI's and the Wasm runtime's.
    pub async fn container_stats(&self, uid: &str, c: &str) -> Option<Stats> {
        let cri = self.workers.stats(uid, c).await?;
        let (_, id) = self.workers.container_id(uid, c)?;
        let wasm = self.rt.wasm_stats(&id)?;
        Some(Stats {
            cpu: cri.cpu,
            memory_bytes: cri.memory_bytes,
            invocations: wasm.invocations,
            failures: wasm.failures,
            cache: Some(wasm.cache),
        })
    }

    /// Waits (bounded) until `pred` holds for the pod's status.
    pub async fn wait_for(
        &self,
        uid: &str,
        what: &str,
        pred: impl Fn(&PodStatusReport) -> bool,
    ) -> PodStatusReport {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.pod_status(uid);
            if let Some(s) = status.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole log of container `c`, as `kubectl logs` shows it.
    pub async fn logs(&self, uid: &str, c: &str) -> String {
        let bytes = self
            .container_logs(uid, c, &Default::default())
            .await
            .expect("logs");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits (bounded) until the log of container `c` contains `needle`.
    pub async fn wait_for_log(&self, uid: &str, c: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self
                .container_logs(uid, c, &Default::default())
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A container's figures, as the tests read them.
#[derive(Debug, Clone)]
pub struct Stats {
    pub cpu: Duration,
    pub memory_bytes: u64,
    pub invocations: u64,
    pub failures: u64,
    pub cache: Option<CacheOutcome>,
}

pub fn apps() -> &'static SampleApps {
    sample_apps::build().expect("sample apps build (needs the wasm32-wasip2 target)")
}

/// A one-container pod; `extra` is merged into the container spec, `annotations` into metadata.
pub fn pod(uid: &str, image: &str, container: serde_json::Value, spec: serde_json::Value) -> Pod {
    let mut c = serde_json::json!({"name": "main", "image": image});
    merge(&mut c, container);
    let mut s = serde_json::json!({"restartPolicy": "Never", "terminationGracePeriodSeconds": 2, "containers": [c]});
    merge(&mut s, spec);
    let annotations = s
        .as_object_mut()
        .and_then(|o| o.remove("annotations"))
        .unwrap_or_default();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("pod-{uid}"), "namespace": "default", "uid": uid, "annotations": annotations},
        "spec": s,
    }))
    .expect("valid pod")
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// The first container's state.
pub fn state(s: &PodStatusReport) -> &ContainerState {
    &s.containers[0].state
}

pub fn terminated(s: &PodStatusReport) -> bool {
    matches!(state(s), ContainerState::Terminated { .. })
}

pub fn running(s: &PodStatusReport) -> bool {
    state(s).is_running()
}

/// The reason and message of a waiting first container.
pub fn waiting(s: &PodStatusReport) -> Option<(&str, &str)> {
    match state(s) {
        ContainerState::Waiting { reason, message } => {
            Some((reason, message.as_deref().unwrap_or("")))
        }
        _ => None,
    }
}

impl TestRuntime {
    /// Waits (bounded) until the first container waits with `reason`; returns its message.
    pub async fn wait_waiting(&self, uid: &str, reason: &str) -> String {
        let s = self
            .wait_for(uid, reason, |s| {
                waiting(s).is_some_and(|(r, _)| r == reason)
            })
            .await;
        waiting(&s).map(|(_, m)| m.to_owned()).unwrap_or_default()
    }
}

/// Asserts the first container terminated with `code` and `reason`, its message mentioning
/// `needle`.
pub fn assert_terminated(s: &PodStatusReport, code: i32, reason: &str, needle: &str) {
    match state(s) {
        ContainerState::Terminated {
            exit_code,
            reason: r,
            message,
            ..
        } => {
            assert_eq!((*exit_code, r.as_str()), (code, reason), "{s:#?}");
            let message = message.as_deref().unwrap_or_default();
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
        }
        other => panic!("expected Terminated, got {other:?}"),
    }
}

/// Pushes the hello sample to `host` as `repository:tag` in `layout`; returns the manifest digest.
pub async fn push_hello(host: &str, repository: &str, tag: &str, layout: WasmLayout) -> String {
    let hello = apps().bytes("hello").expect("hello");
    oci::push(host, repository, tag, &Image::wasm(&hello, layout))
        .await
        .expect("push")
}
