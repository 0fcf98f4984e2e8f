//! The scheduler binding 10,000 pods over 1,000 nodes, against the embedded API server in a
//! process of its own (as `apiserver` starts it), through HTTPS and the `kube` crate.
//!
//! Throughput: the pods are created first with no scheduler running, then the scheduler starts
//! and the clock runs until a watch has seen every pod bound (its first lists and watches
//! included). Latency: with the scheduler running, 1,000 more pods are created (16 requests in
//! flight) and each is timed from its create request to the watch event that shows it bound.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use tokio_util::sync::CancellationToken;

use super::apiserver::ServerProcess;
use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "scheduler";
const NODES: usize = 1_000;
const PODS: usize = 10_000;
const LATENCY_PODS: usize = 1_000;
const IN_FLIGHT: usize = 16;
const NAMESPACE: &str = "bench";

fn node(i: usize) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("edge-{i:04}"), "labels": {
            "kubernetes.io/hostname": format!("edge-{i:04}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % 10),
            "runtime.wedge.io/wasm": "true",
        }},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))?)
}

fn pod(name: String) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "telemetry"}},
        "spec": {
            "nodeSelector": {"runtime.wedge.io/wasm": "true"},
            "containers": [{
                "name": "main",
                "image": "localhost:5000/wedge/telemetry:1.0",
                "resources": {"requests": {"memory": "16Mi", "cpu": "10m"}}
            }]
        }
    }))?)
}

/// Creates `names` as pods, `IN_FLIGHT` at a time; returns when each create was sent.
async fn create_pods(
    pods: &Api<Pod>,
    names: Vec<String>,
) -> anyhow::Result<HashMap<String, Instant>> {
    futures::stream::iter(names)
        .map(|name| {
            let pods = pods.clone();
            async move {
                let sent = Instant::now();
                pods.create(&PostParams::default(), &pod(name.clone())?)
                    .await?;
                anyhow::Ok((name, sent))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}

/// Watches pods from `rv` and records when each is first seen bound, until `want` are.
fn watch_bindings(
    pods: Api<Pod>,
    rv: String,
    want: usize,
) -> tokio::task::JoinHandle<anyhow::Result<HashMap<String, Instant>>> {
    tokio::spawn(async move {
        let mut bound = HashMap::new();
        let params = WatchParams::default().timeout(290);
        let mut stream = pods.watch(&params, &rv).await?.boxed();
        while bound.len() < want {
            match stream.try_next().await? {
                Some(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                    if p.spec.and_then(|s| s.node_name).is_some() {
                        let name = p.metadata.name.unwrap_or_default();
                        bound.entry(name).or_insert_with(Instant::now);
                    }
                }
                Some(WatchEvent::Error(e)) => anyhow::bail!("watch error: {e}"),
                Some(_) => {}
                None => anyhow::bail!("watch ended with {} of {want} bound", bound.len()),
            }
        }
        Ok(bound)
    })
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(dir.path())?;
    let client = server.client().await?;
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..NODES)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let node = node(i)?;
                let created = nodes.create(&PostParams::default(), &node).await?;
                let mut with_status = created;
                with_status.status = node.status;
                let name = with_status.metadata.name.clone().unwrap_or_default();
                nodes
                    .replace_status(&name, &PostParams::default(), &with_status)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let names = (0..PODS).map(|i| format!("telemetry-{i:05}")).collect();
    create_pods(&pods, names).await?;

    // Throughput: every pod pending, then the scheduler starts.
    let rv = pods
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let watch = watch_bindings(pods.clone(), rv, PODS);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let scheduler = tokio::spawn(wedge_controlplane::scheduler::run(
        client.clone(),
        Vec::new(),
        shutdown.clone(),
    ));
    let bound = watch.await??;
    let last = bound.values().max().copied().unwrap_or(started);
    let elapsed = last.duration_since(started);
    figure(
        SCENARIO,
        "bound-per-second",
        PODS as f64 / elapsed.as_secs_f64(),
        "1/s",
    );
    figure(SCENARIO, "bind-all-10k", millis(elapsed), "ms");

    // Latency: create → bound, with the scheduler running.
    let rv = pods
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let watch = watch_bindings(pods.clone(), rv, LATENCY_PODS);
    let names = (0..LATENCY_PODS).map(|i| format!("late-{i:05}")).collect();
    let sent = create_pods(&pods, names).await?;
    let bound = watch.await??;
    let mut latencies: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, at)| sent.get(name).map(|s| at.duration_since(*s)))
        .collect();
    anyhow::ensure!(latencies.len() == LATENCY_PODS, "some pods were not timed");
    figure(
        SCENARIO,
        "create-to-bound-p50",
        millis(quantile(&mut latencies, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "create-to-bound-p99",
        millis(quantile(&mut latencies, 0.99)),
        "ms",
    );

    shutdown.cancel();
    scheduler.await?;
    Ok(())
}
