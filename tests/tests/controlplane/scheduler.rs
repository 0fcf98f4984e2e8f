//! The scheduler: pods land on nodes that fit them, spread; a pod that fits nowhere says why,
//! as kube-scheduler says it, and lands when a node that fits registers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controlplane::harness::{Cluster, eventually};
use crate::controlplane::nodes::register;

const PODS: &str = r#"apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: wasm}
handler: wasm
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: runc}
handler: runc
"#;

fn pod(name: &str, spec: serde_json::Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "telemetry"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/telemetry:1.0"}]},
    });
    json_patch::merge(&mut pod["spec"], &spec);
    format!("---\n{}\n", serde_json::to_string(&pod).expect("json"))
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name)
        .await
        .ok()
        .and_then(|p| p.spec.and_then(|s| s.node_name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_fitting_pods_and_says_why_the_others_wait() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(wedge_controlplane::scheduler::run(
        cluster
            .component_client(wedge_apiserver::Component::Scheduler)
            .await,
        Vec::new(),
        shutdown.clone(),
    ));
    register(&client, "edge-a", json!({"zone": "a"}), "2", json!({})).await;
    register(&client, "edge-b", json!({"zone": "b"}), "2", json!({})).await;
    register(
        &client,
        "edge-gpu",
        json!({"zone": "b", "runtime.wedge.io/wasm": null, "runtime.wedge.io/runc": "true"}),
        "8",
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;

    let mut manifests = PODS.to_owned();
    for i in 0..6 {
        manifests += &pod(&format!("wasm-{i}"), json!({"runtimeClassName": "wasm"}));
    }
    manifests += &pod("zone-c", json!({"nodeSelector": {"zone": "c"}}));
    manifests += &pod(
        "huge",
        json!({"runtimeClassName": "wasm", "containers": [{"name": "app", "image": "x", "resources": {"requests": {"cpu": "3"}}}]}),
    );
    manifests += &pod("containers", json!({"runtimeClassName": "runc"}));
    manifests += &pod(
        "tolerant",
        json!({"runtimeClassName": "runc", "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    );
    let applied = cluster.kubectl_stdin(&["apply", "-f", "-"], &manifests);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    eventually(
        Duration::from_secs(20),
        "the wasm pods to be bound",
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=telemetry"))
                .await;
            list.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("wasm-"))
                    })
                    .all(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            })
        },
    )
    .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        let node = node_of(&pods, &format!("wasm-{i}")).await.expect("bound");
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(
        per_node,
        [("edge-a".to_owned(), 3), ("edge-b".to_owned(), 3)].into(),
        "Wasm pods go to Wasm nodes only, spread evenly"
    );
    eventually(
        Duration::from_secs(10),
        "the tolerant pod to land",
        || async { node_of(&pods, "tolerant").await.as_deref() == Some("edge-gpu") },
    )
    .await;

    // Those that fit nowhere say why, in kube-scheduler's words.
    let why = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let pod = pods.get(name).await.ok()?;
            let c = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
                .then_some(c.message?)
        }
    };
    let expected = [
        (
            "zone-c",
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
        ),
        (
            "huge",
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}.",
        ),
        (
            "containers",
            "0/3 nodes are available: 2 node(s) didn't offer the runtime \"runc\", 1 node(s) had untolerated taint {dedicated: gpu}.",
        ),
    ];
    for (name, message) in expected {
        eventually(
            Duration::from_secs(10),
            &format!("{name} to say why"),
            || async { why(name).await.is_some() },
        )
        .await;
        assert_eq!(why(name).await.as_deref(), Some(message), "{name}");
    }
    // Events are written behind the scheduler's work, as kube-scheduler's are.
    let describe = || cluster.kubectl_ok(&["describe", "pod", "zone-c"]);
    eventually(
        Duration::from_secs(10),
        "zone-c's FailedScheduling event",
        || async { describe().contains("FailedScheduling") },
    )
    .await;
    let described = describe();
    assert!(
        described.contains("didn't match Pod's node affinity/selector"),
        "{described}"
    );

    // A node that fits registers: the waiting pod lands on it without anyone asking.
    register(&client, "edge-c", json!({"zone": "c"}), "2", json!({})).await;
    eventually(
        Duration::from_secs(10),
        "zone-c to land on edge-c",
        || async { node_of(&pods, "zone-c").await.as_deref() == Some("edge-c") },
    )
    .await;
    assert_eq!(node_of(&pods, "huge").await, None);
    eventually(
        Duration::from_secs(10),
        "zone-c's Scheduled event",
        || async { describe().contains("Successfully assigned default/zone-c to edge-c") },
    )
    .await;

    shutdown.cancel();
    scheduler.await.expect("scheduler stops");
}

/// Without a RuntimeClass, the registry says what each image is, and the pod goes to a node
/// with that runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_the_runtime_from_the_image_without_a_runtime_class() {
    use wedge_testkit::oci::{self, Image, WasmLayout};
    let registry = wedge_testkit::registry::Registry::start().expect("registry");
    let host = registry.host();
    let wasm = b"\0asm\x0d\x00\x01\x00";
    oci::push(
        &host,
        "apps/artifact",
        "1",
        &Image::wasm(wasm, WasmLayout::CncfArtifact),
    )
    .await
    .expect("push");
    oci::push(
        &host,
        "apps/tar",
        "1",
        &Image::wasm(wasm, WasmLayout::ImageTar),
    )
    .await
    .expect("push");
    oci::push(&host, "apps/busybox", "1", &Image::container())
        .await
        .expect("push");

    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(wedge_controlplane::scheduler::run(
        cluster
            .component_client(wedge_apiserver::Component::Scheduler)
            .await,
        vec![host.clone()],
        shutdown.clone(),
    ));
    register(&client, "edge-wasm", json!({}), "2", json!({})).await;
    register(
        &client,
        "edge-runc",
        json!({"runtime.wedge.io/wasm": null, "runtime.wedge.io/runc": "true"}),
        "2",
        json!({}),
    )
    .await;
    let image = |name: &str| json!({"containers": [{"name": "app", "image": format!("{host}/apps/{name}:1")}]});
    let mut manifests = String::new();
    // Three of each, so that chance cannot place them all right.
    for repo in ["artifact", "tar", "busybox"] {
        for i in 0..3 {
            manifests += &pod(&format!("{repo}-{i}"), image(repo));
        }
    }
    let applied = cluster.kubectl_stdin(&["apply", "-f", "-"], &manifests);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for (repo, node) in [
        ("artifact", "edge-wasm"),
        ("tar", "edge-wasm"),
        ("busybox", "edge-runc"),
    ] {
        for i in 0..3 {
            let name = format!("{repo}-{i}");
            eventually(
                Duration::from_secs(20),
                &format!("{name} on {node}"),
                || async { node_of(&pods, &name).await.as_deref() == Some(node) },
            )
            .await;
        }
    }
    shutdown.cancel();
    scheduler.await.expect("scheduler stops");
}
