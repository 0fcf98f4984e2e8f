//! One module per scenario, plus what they share.

pub mod apiserver;
pub mod app_start;
pub mod devices;
pub mod devices_mqtt;
pub mod edge;
pub mod handler_invoke;
pub mod hub_fanout;
pub mod idle_rss;
pub mod jobs;
pub mod mixed;
pub mod port_forward;
pub mod processes;
pub mod scheduler;
pub mod secrets_at_rest;
pub mod streams;

use k8s_openapi::api::core::v1::Pod;
use wedge_core::runtime::ContainerConfig;
use wedge_edge::edged::plan::plan_pod;
use wedge_edge::edged::pod_workers::{PodWorkers, WorkerConfig};
use wedge_edge::edged::runtimes::{RuntimeHandle, Runtimes};
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::spec::{ContainerPlan, plan_container};
use wedge_edged_wasm::{RuntimeConfig, WasmRuntime};

/// A runtime on a fresh temp dir with in-process backends.
pub fn runtime(max_instances: u32) -> anyhow::Result<(WasmRuntime, Backends, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = RuntimeConfig::new(dir.path());
    config.engine.max_instances = max_instances;
    let (backends, _, _) = Backends::in_process();
    Ok((WasmRuntime::new(config, backends.clone())?, backends, dir))
}

/// Adds a sample app to the runtime's store and returns its image name.
pub async fn sample_image(rt: &WasmRuntime, app: &str) -> anyhow::Result<String> {
    let apps = tokio::task::spawn_blocking(wedge_testkit::sample_apps::build).await??;
    let name = format!("localhost/bench/{app}:1");
    rt.images().add_component(&name, apps.bytes(app)?).await?;
    Ok(name)
}

/// A pod running `image` with `env`, and the Wasm plan of its container.
pub fn pod(
    uid: &str,
    image: &str,
    env: &[(&str, &str)],
    annotations: serde_json::Value,
) -> anyhow::Result<(Pod, ContainerPlan)> {
    let env_json: Vec<_> = env
        .iter()
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bench-{uid}"), "namespace": "bench", "uid": uid, "annotations": annotations},
        "spec": {"containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "env": env_json}]}
    }))?;
    let config = ContainerConfig {
        name: "main".to_owned(),
        attempt: 0,
        image: image.to_owned(),
        image_ref: image.to_owned(),
        command: Vec::new(),
        args: Vec::new(),
        working_dir: None,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        mounts: Vec::new(),
        log_path: std::path::PathBuf::from("/nonexistent/main/0.log"),
        limits: Default::default(),
        security: Default::default(),
        stdin: false,
        tty: false,
        labels: Default::default(),
        annotations: Default::default(),
    };
    Ok((pod, plan_container(&config)?))
}

/// Pod workers (Edged's kubelet logic) over the Wasm runtime, pods under `dir`.
pub fn workers(rt: &WasmRuntime, dir: &std::path::Path) -> PodWorkers {
    PodWorkers::new(
        Runtimes::new().with(RuntimeHandle::new(std::sync::Arc::new(rt.clone()))),
        WorkerConfig::new(dir.join("pods")),
    )
}

/// Starts `pod` on `workers`.
pub fn start(workers: &PodWorkers, pod: &Pod) -> anyhow::Result<()> {
    let plan = plan_pod(pod, &workers.config().pods_root)?;
    workers.start(plan, Default::default(), Default::default())?;
    Ok(())
}

/// The Wasm figures of a pod's container `main`.
pub fn wasm_stats(
    workers: &PodWorkers,
    rt: &WasmRuntime,
    uid: &str,
) -> Option<wedge_edged_wasm::WasmStats> {
    let (_, id) = workers.container_id(uid, "main")?;
    rt.wasm_stats(&id)
}
