//! One module per scenario, plus what they share.

pub mod apiserver;
pub mod app_start;
pub mod devices;
pub mod edge;
pub mod handler_invoke;
pub mod hub_fanout;
pub mod idle_rss;
pub mod processes;
pub mod scheduler;

use k8s_openapi::api::core::v1::Pod;
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::spec::{ContainerPlan, plan_pod};
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

/// A pod running `image` with `env`, and the plan of its container.
pub fn pod(
    uid: &str,
    image: &str,
    env: &[(&str, &str)],
    annotations: serde_json::Value,
) -> anyhow::Result<(Pod, ContainerPlan)> {
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bench-{uid}"), "namespace": "bench", "uid": uid, "annotations": annotations},
        "spec": {"containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "env": env}]}
    }))?;
    let plan = plan_pod(&pod, std::path::Path::new("/nonexistent"))?;
    let container = plan
        .containers
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no container"))?;
    Ok((pod, container))
}
