//! The main path, measured through the real binaries: a `cloudcore` (embedded API server,
//! control plane, CloudHub) and an `edgecore` joined with a token, a registry serving the
//! telemetry sample.
//!
//! Latency: each of 100 pods is created through the API (one at a time, the image already
//! pulled and compiled by a warm-up pod) and timed from its create request to the watch event
//! that shows it Running: scheduling, the hub, the edge's store, the Wasm start and the status
//! on its way back. Memory: edgecore's VmRSS once joined and idle with no pod, and with the 100
//! pods running.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use wedge_testkit::oci::{Image, WasmLayout, push};
use wedge_testkit::registry::Registry;

use super::processes::CloudAndEdge;
use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "edge";
const PODS: usize = 100;
const NODE: &str = "bench-edge";
/// Left for the processes to settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(5);

/// A pod running the telemetry sample from `registry`.
pub(super) fn pod(name: &str, registry: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": format!("{registry}/samples/telemetry:1"),
                "env": [{"name": "INTERVAL_MS", "value": "60000"}]
            }]
        }
    }))?)
}

/// Sends each pod's name and when the watch first saw it Running.
pub(super) fn running_pods(pods: Api<Pod>) -> mpsc::UnboundedReceiver<(String, Instant)> {
    running_pods_task(pods).0
}

/// [`running_pods`], and the watch's task, to stop it before the API server goes away (else the
/// watch logs its failed reconnections).
pub(super) fn running_pods_task(
    pods: Api<Pod>,
) -> (
    mpsc::UnboundedReceiver<(String, Instant)>,
    tokio::task::AbortHandle,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut events = std::pin::pin!(
            watcher(pods, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        while let Some(Ok(pod)) = events.next().await {
            let at = Instant::now();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let name = pod.metadata.name.unwrap_or_default();
            if running && seen.insert(name.clone()) && tx.send((name, at)).is_err() {
                return;
            }
        }
    });
    (rx, task.abort_handle())
}

/// When `name` was first seen Running.
pub(super) async fn running_at(
    rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    early: &mut HashMap<String, Instant>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(at) = early.remove(name) {
            return Ok(at);
        }
        let (seen, at) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{name} not Running within {timeout:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the pod watch ended"))?;
        early.insert(seen, at);
    }
}

/// Waits until `node` is Ready.
pub(super) async fn node_ready(
    client: &kube::Client,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let ready = nodes.get_opt(node).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{node} not Ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let apps = tokio::task::spawn_blocking(wedge_testkit::sample_apps::build).await??;
    let image = Image::wasm(&apps.bytes("telemetry")?, WasmLayout::CncfArtifact);
    push(&registry.host(), "samples/telemetry", "1", &image).await?;

    let dir = tempfile::tempdir()?;
    let registry_host = registry.host();
    let CloudAndEdge {
        cloud: _cloud,
        mut edge,
        client,
    } = CloudAndEdge::start(
        dir.path(),
        NODE,
        &["--insecure-registry", &registry_host],
        &[
            "--insecure-registry",
            &registry_host,
            "--mqtt-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    node_ready(&client, NODE, Duration::from_secs(60)).await?;
    tokio::time::sleep(SETTLE).await;
    let idle = edge.rss_kib()?;
    figure(
        SCENARIO,
        "edgecore RSS, joined, 0 pods",
        idle as f64 / 1024.0,
        "MiB",
    );
    let (anon, file) = edge.rss_split_kib()?;
    figure(
        SCENARIO,
        "of which anonymous (heap, stacks)",
        anon as f64 / 1024.0,
        "MiB",
    );
    figure(
        SCENARIO,
        "of which file-backed (binary, libraries)",
        file as f64 / 1024.0,
        "MiB",
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut running = running_pods(pods.clone());
    let mut early = HashMap::new();
    // The warm-up pulls and compiles the image; the measured pods start from the cache.
    pods.create(&PostParams::default(), &pod("warm-up", &registry.host())?)
        .await?;
    running_at(
        &mut running,
        &mut early,
        "warm-up",
        Duration::from_secs(120),
    )
    .await?;
    pods.delete("warm-up", &DeleteParams::default()).await?;

    let mut samples = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("app-{i:03}");
        let sent = Instant::now();
        pods.create(&PostParams::default(), &pod(&name, &registry.host())?)
            .await?;
        let at = running_at(&mut running, &mut early, &name, Duration::from_secs(30)).await?;
        samples.push(at.duration_since(sent));
    }
    figure(
        SCENARIO,
        "create to Running p50 (image cached)",
        millis(quantile(&mut samples, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "create to Running p99 (image cached)",
        millis(quantile(&mut samples, 0.99)),
        "ms",
    );
    tokio::time::sleep(SETTLE).await;
    let full = edge.rss_kib()?;
    figure(
        SCENARIO,
        &format!("edgecore RSS, {PODS} Wasm pods running"),
        full as f64 / 1024.0,
        "MiB",
    );
    figure(
        SCENARIO,
        "edgecore RSS added per running pod",
        full.saturating_sub(idle) as f64 / PODS as f64,
        "KiB",
    );

    // What the ServiceAccount token costs a pod's start (the edge asks the cloud for it): the
    // same pods again with `automountServiceAccountToken: false`, side by side in one run,
    // once the first ones are gone (the node takes 110 pods).
    for i in 0..PODS {
        pods.delete(&format!("app-{i:03}"), &DeleteParams::default())
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while pods.list(&Default::default()).await?.items.iter().any(|p| {
        p.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("app-"))
    }) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first pods were not gone within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut plain = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("plain-{i:03}");
        let mut spec = pod(&name, &registry.host())?;
        if let Some(spec) = spec.spec.as_mut() {
            spec.automount_service_account_token = Some(false);
        }
        let sent = Instant::now();
        pods.create(&PostParams::default(), &spec).await?;
        let at = running_at(&mut running, &mut early, &name, Duration::from_secs(30)).await?;
        plain.push(at.duration_since(sent));
    }
    figure(
        SCENARIO,
        "create to Running p50, no token volume (image cached)",
        millis(quantile(&mut plain, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "create to Running p99, no token volume (image cached)",
        millis(quantile(&mut plain, 0.99)),
        "ms",
    );
    Ok(())
}
