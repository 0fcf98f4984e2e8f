//! Nodes registered as an edge registers itself: the object, then its status.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Registers a Ready node with `labels` (merged over hostname and the Wasm runtime), `cpu`
/// allocatable, and `spec` (taints, unschedulable).
pub async fn register(client: &kube::Client, name: &str, labels: Value, cpu: &str, spec: Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut all_labels = json!({
        "kubernetes.io/hostname": name,
        "runtime.wedge.io/wasm": "true",
    });
    json_patch::merge(&mut all_labels, &labels);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": all_labels},
        "spec": spec,
    }))
    .expect("node");
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node registers");
    let mut with_status = created;
    with_status.status = Some(
        serde_json::from_value(json!({
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "EdgeReady",
                            "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
        }))
        .expect("status"),
    );
    nodes
        .replace_status(name, &PostParams::default(), &with_status)
        .await
        .expect("node status");
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
