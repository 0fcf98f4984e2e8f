//! PodDisruptionBudgets through kubectl: the disruption controller keeps their status, the API
//! server's `pods/eviction` honours it, and `kubectl drain` moves pods off a node without
//! taking more than the budget allows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.local/web:1
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 2
  selector:
    matchLabels:
      app: web
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_and_drains_keep_to_the_budget() {
    let fleet = Fleet::start().await;
    fleet.apply(WEB);
    fleet.rolled_out("deployment/web");
    let allowed = |fleet: &Fleet| {
        fleet.cluster.kubectl_ok(&[
            "get", "pdb", "web", "-o",
            "jsonpath={.status.currentHealthy} {.status.desiredHealthy} {.status.disruptionsAllowed} {.status.conditions[0].reason}",
        ])
    };
    eventually(
        Duration::from_secs(30),
        "the budget counts three healthy pods",
        || async { allowed(&fleet) == "3 2 1 SufficientPods" },
    )
    .await;

    // One eviction is allowed; the next, before a replacement is Ready, is refused with 429.
    let pods: Api<Pod> = Api::default_namespaced(fleet.client.clone());
    let names: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let evict = |name: &str| {
        let body = format!(
            r#"{{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {{"name": "{name}", "namespace": "default"}}}}"#
        );
        fleet.cluster.kubectl_stdin(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/{name}/eviction"),
                "-f",
                "-",
            ],
            &body,
        )
    };
    // Stop the replacement from becoming Ready: cordon every node first.
    for node in ["edge-1", "edge-2", "edge-3"] {
        fleet.cluster.kubectl_ok(&["cordon", node]);
    }
    let first = evict(&names[0]);
    assert!(first.status.success(), "{}", text(&first));
    let second = evict(&names[1]);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{}",
        text(&second)
    );
    let status = fleet.cluster.kubectl_ok(&[
        "get",
        "pdb",
        "web",
        "-o",
        "jsonpath={.status.disruptionsAllowed}",
    ]);
    assert_eq!(status, "0");

    // With room again, a drain evicts what is on the node, one budget's worth at a time.
    for node in ["edge-1", "edge-2", "edge-3"] {
        fleet.cluster.kubectl_ok(&["uncordon", node]);
    }
    fleet.rolled_out("deployment/web");
    eventually(
        Duration::from_secs(30),
        "the budget is whole again",
        || async { allowed(&fleet) == "3 2 1 SufficientPods" },
    )
    .await;
    let drained = fleet.cluster.kubectl(&[
        "drain",
        "edge-1",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=90s",
    ]);
    assert!(drained.status.success(), "{}", text(&drained));
    fleet.rolled_out("deployment/web");
    let on_edge_1 = pods
        .list(
            &ListParams::default()
                .labels("app=web")
                .fields("spec.nodeName=edge-1"),
        )
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(on_edge_1, 0);
    fleet.stop().await;
}
