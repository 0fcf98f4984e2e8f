//! CloudHub at fleet scale: N simulated edges ([`sim`]) from this process against a real
//! `cloudcore` process, which talks to the embedded API server in a process of its own (as
//! `apiserver` starts it) while the control plane runs here. Only cloudcore's memory is
//! measured, so neither the API server's nor the simulator's counts against it.
//!
//! Figures: the time to connect and register N edges; cloudcore's VmRSS per connected edge;
//! the time from creating a DaemonSet to every edge holding its pod (the control plane creates
//! and binds N pods, the hub sends each to its edge); the time for one change of a ConfigMap
//! those pods use to reach every edge (the hub's fan-out alone); and the RSS per edge with its
//! pod and ConfigMap held in the cloud's caches.

mod sim;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use super::apiserver::ServerProcess;
use super::processes::{Daemon, free_port, wait_listening};
use crate::report::figure;

const SCENARIO: &str = "hub-fanout";
/// Edges connecting at once.
const CONNECTING: usize = 64;
const SETTLE: Duration = Duration::from_secs(5);

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// A client config per edge: each has its own certificate from the hub's CA, as joining gives.
fn credentials(
    pki: &wedge_pki::Pki,
    edges: usize,
) -> anyhow::Result<Vec<Arc<rustls::ClientConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes())?)?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    (0..edges)
        .map(|i| {
            let issued =
                pki.issue_client(&format!("system:node:{}", node_name(i)), &["system:nodes"])?;
            let chain = vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?];
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain, key)?;
            Ok(Arc::new(config))
        })
        .collect()
}

/// Waits until `counter` reaches `want`; returns how long it took from `since`.
async fn reached(
    counter: &AtomicUsize,
    want: usize,
    since: Instant,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    loop {
        let got = counter.load(Ordering::Relaxed);
        if got >= want {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            since.elapsed() < timeout,
            "{what}: {got} of {want} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn daemonset() -> anyhow::Result<DaemonSet> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "fleet"},
        "spec": {
            "selector": {"matchLabels": {"app": "fleet"}},
            "template": {
                "metadata": {"labels": {"app": "fleet"}},
                "spec": {
                    "runtimeClassName": "wasm",
                    "containers": [{
                        "name": "app",
                        "image": "registry.invalid/fleet/telemetry:1",
                        "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "fleet-config", "key": "MODE"}}}]
                    }]
                }
            }
        }
    }))?)
}

pub async fn run(edges: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let api = ServerProcess::start(&dir.path().join("apiserver"))?;
    let client = api.client().await?;
    let shutdown = CancellationToken::new();
    let controllers = wedge_controlplane::ControllersConfig {
        // The simulated edges register once and renew no lease: no node goes Unknown here.
        node_grace: Duration::from_secs(3600),
        ..Default::default()
    };
    let control_plane = tokio::spawn(wedge_controlplane::run_controllers(
        client.clone(),
        controllers,
        shutdown.clone(),
    ));

    // The hub's CA is made here first, so that this process can issue the edges' certificates.
    let cloud_root = dir.path().join("cloud");
    let pki = wedge_pki::Pki::load_or_create(&cloud_root.join("cloudcore/hub"), &[])?;
    let hub = format!("127.0.0.1:{}", free_port()?);
    let stream = format!("127.0.0.1:{}", free_port()?);
    let mut cloud = Daemon::spawn(
        "cloudcore",
        &[
            "--stream-listen",
            &stream,
            "--root",
            &cloud_root.display().to_string(),
            "--kubeconfig",
            api.kubeconfig(),
            "--listen",
            &hub,
        ],
        &dir.path().join("cloudcore.log"),
    )?;
    wait_listening(&hub, Duration::from_secs(60)).await?;
    let credentials = tokio::task::spawn_blocking(move || credentials(&pki, edges)).await??;
    tokio::time::sleep(SETTLE).await;
    let base = cloud.rss_kib()?;
    figure(
        SCENARIO,
        "cloudcore RSS, no edge",
        base as f64 / 1024.0,
        "MiB",
    );

    let counts = Arc::new(sim::Counts::default());
    let started = Instant::now();
    let sessions: Vec<_> = futures::stream::iter(credentials.into_iter().enumerate())
        .map(|(i, tls)| {
            let (hub, counts) = (hub.clone(), counts.clone());
            async move {
                let ws = sim::connect(&hub, &node_name(i), tls).await?;
                counts.registered.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(tokio::spawn(sim::serve(ws, counts)))
            }
        })
        .buffer_unordered(CONNECTING)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    figure(
        SCENARIO,
        "edges connected and registered",
        edges as f64,
        "edges",
    );
    figure(
        SCENARIO,
        "time to connect and register them",
        started.elapsed().as_secs_f64(),
        "s",
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let registered = nodes
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    anyhow::ensure!(
        registered == edges,
        "{registered} nodes in the API, {edges} edges"
    );
    tokio::time::sleep(SETTLE).await;
    let connected = cloud.rss_kib()?;
    figure(
        SCENARIO,
        "cloudcore RSS per connected edge",
        connected.saturating_sub(base) as f64 / edges as f64,
        "KiB",
    );

    let wasm: RuntimeClass = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "wasm"}, "handler": "wasm"}),
    )?;
    let _ = Api::<RuntimeClass>::all(client.clone())
        .create(&PostParams::default(), &wasm)
        .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let config: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "fleet-config"}, "data": {"MODE": "a"}}),
    )?;
    configmaps.create(&PostParams::default(), &config).await?;
    let timeout = Duration::from_secs(600);
    let created = Instant::now();
    Api::<DaemonSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &daemonset()?)
        .await?;
    let fanned = reached(&counts.pods, edges, created, timeout, "pods at edges").await?;
    figure(
        SCENARIO,
        "DaemonSet created to its pod at every edge",
        fanned.as_secs_f64(),
        "s",
    );
    let changed = Instant::now();
    configmaps
        .patch(
            "fleet-config",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"MODE": "b"}})),
        )
        .await?;
    let fanned = reached(
        &counts.config_updates,
        edges,
        changed,
        timeout,
        "ConfigMap updates",
    )
    .await?;
    figure(
        SCENARIO,
        "ConfigMap change to every edge",
        fanned.as_secs_f64(),
        "s",
    );
    tokio::time::sleep(SETTLE).await;
    let loaded = cloud.rss_kib()?;
    figure(
        SCENARIO,
        "cloudcore RSS per edge, its pod and ConfigMap cached",
        loaded.saturating_sub(base) as f64 / edges as f64,
        "KiB",
    );

    drop(cloud);
    for session in sessions {
        session.abort();
    }
    shutdown.cancel();
    let _ = control_plane.await;
    Ok(())
}
