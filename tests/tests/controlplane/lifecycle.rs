//! Node lifecycle: an edge that goes silent becomes Unknown and tainted, and keeps its pods.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;

use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

const PINNED: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: pinned, labels: {app: pinned}}
spec:
  nodeName: edge-3
  # Kubernetes would evict it the moment its node is tainted unreachable.
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 0}
  containers:
  - {name: app, image: registry.local/pinned:1.0}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - {name: agent, image: registry.local/agent:1.0}
"#;

fn ready(node: &Node) -> Option<String> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some(c.status.clone())
}

fn taints(node: &Node) -> Vec<(String, String)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_edge_becomes_unknown_and_keeps_its_pods() {
    let fleet = Fleet::start().await;
    fleet.apply(PINNED);
    fleet
        .cluster
        .kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    eventually(
        Duration::from_secs(20),
        "the pinned pod running",
        || async { fleet.running("app=pinned").await.len() == 1 },
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(fleet.client.clone());
    let on_edge_3 = |list: Vec<Pod>| -> Vec<String> {
        let mut names: Vec<String> = list
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("edge-3"))
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    };
    let before = on_edge_3(pods.list(&Default::default()).await.expect("list").items);
    assert_eq!(before.len(), 2, "the pinned pod and the agent: {before:?}");

    // The edge goes offline: no lease renewals, no status.
    fleet.edges.remove("edge-3");
    let nodes: Api<Node> = Api::all(fleet.client.clone());
    eventually(
        Duration::from_secs(20),
        "edge-3 Unknown and tainted",
        || async {
            let node = nodes.get("edge-3").await.expect("node");
            ready(&node).as_deref() == Some("Unknown")
                && taints(&node)
                    .contains(&("node.kubernetes.io/unreachable".into(), "NoExecute".into()))
        },
    )
    .await;
    let table = fleet
        .cluster
        .kubectl_ok(&["get", "nodes", "edge-3", "--no-headers"]);
    assert_eq!(table.split_whitespace().nth(1), Some("NotReady"), "{table}");

    // The controller marks the pods on the silent node not ready, in the pass where Kubernetes
    // would evict the pinned pod (its toleration is 0 s): they are marked, not deleted, still
    // bound to edge-3, not Terminating, not replaced.
    let pinned_ready = |pod: Pod| {
        pod.status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status)
    };
    eventually(
        Duration::from_secs(20),
        "the pods on edge-3 marked not ready",
        || async {
            pods.get("pinned")
                .await
                .is_ok_and(|p| pinned_ready(p).as_deref() == Some("False"))
        },
    )
    .await;
    let all = pods.list(&Default::default()).await.expect("list").items;
    assert!(all.iter().all(|p| p.metadata.deletion_timestamp.is_none()));
    assert_eq!(on_edge_3(all.clone()), before);
    assert_eq!(
        all.iter()
            .filter(|p| p
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("agent-")))
            .count(),
        3
    );

    // Back online: Ready again, taints gone.
    fleet.edges.add("edge-3");
    eventually(
        Duration::from_secs(20),
        "edge-3 Ready without taints",
        || async {
            let node = nodes.get("edge-3").await.expect("node");
            ready(&node).as_deref() == Some("True") && taints(&node).is_empty()
        },
    )
    .await;
    fleet.stop().await;
}
