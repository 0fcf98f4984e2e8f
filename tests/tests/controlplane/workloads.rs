//! Workload controllers through kubectl: ReplicaSets keep their pods, Deployments roll,
//! DaemonSets cover their nodes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controlplane::edge::Edges;
use crate::controlplane::harness::{Cluster, eventually};
use crate::controlplane::nodes::register;

/// A cluster with three Ready nodes whose edges answer, and the controllers running.
pub struct Fleet {
    pub cluster: Cluster,
    pub client: kube::Client,
    pub edges: Edges,
    shutdown: CancellationToken,
    controllers: tokio::task::JoinHandle<Result<(), wedge_controlplane::ControllerEnded>>,
}

impl Fleet {
    pub async fn start() -> Self {
        Self::start_at(wedge_controlplane::clock::Clock::system()).await
    }

    /// [`Fleet::start`], with the control plane reading the time from `clock`.
    pub async fn start_at(clock: wedge_controlplane::clock::Clock) -> Self {
        let cluster = Cluster::start().await;
        let client = cluster.client().await;
        for (name, zone) in [("edge-1", "a"), ("edge-2", "a"), ("edge-3", "b")] {
            register(&client, name, json!({"zone": zone}), "4", json!({})).await;
        }
        // The edges report through cloudcore, and the control plane acts, each as its own
        // identity: what they may not do fails here as it would in `wedge up`.
        let cloudcore = cluster
            .component_client(wedge_apiserver::Component::CloudCore)
            .await;
        let edges = Edges::start(cloudcore, &["edge-1", "edge-2", "edge-3"]);
        let shutdown = CancellationToken::new();
        // A short grace period, so that the node lifecycle test does not wait 40 s.
        let config = wedge_controlplane::ControllersConfig {
            node_grace: Duration::from_secs(3),
            ..Default::default()
        };
        let controllers = tokio::spawn(wedge_controlplane::run_controllers_at(
            cluster.control_plane_clients().await,
            config,
            clock,
            shutdown.clone(),
        ));
        Self {
            cluster,
            client,
            edges,
            shutdown,
            controllers,
        }
    }

    pub fn apply(&self, manifest: &str) {
        let out = self.cluster.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The Running pods with `selector`.
    pub async fn running(&self, selector: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::default_namespaced(self.client.clone());
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods");
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect()
    }

    /// Waits for `kubectl rollout status` of `object` to succeed; on failure the panic shows
    /// the pods, ReplicaSets, workloads and nodes as they were.
    pub fn rolled_out(&self, object: &str) {
        let out = self
            .cluster
            .kubectl(&["rollout", "status", object, "--timeout=60s"]);
        let status = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && status.contains("successfully rolled out") {
            return;
        }
        let state = self.cluster.kubectl(&[
            "get",
            "pods,replicasets,deployments,daemonsets,nodes",
            "-o",
            "wide",
            "--show-labels",
        ]);
        let yaml = self.cluster.kubectl(&["get", object, "-o", "yaml"]);
        panic!(
            "{object} did not roll out: {status}{}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&state.stdout),
            String::from_utf8_lossy(&yaml.stdout)
        );
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.controllers
            .await
            .expect("controllers stop")
            .expect("no controller ended on its own");
    }
}

const REPLICASET: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: sensors}
spec:
  replicas: 3
  selector: {matchLabels: {app: sensors}}
  template:
    metadata: {labels: {app: sensors}}
    spec:
      containers:
      - {name: app, image: registry.local/sensors:1.0}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_keeps_its_pods_and_scales() {
    let fleet = Fleet::start().await;
    fleet.apply(REPLICASET);
    eventually(Duration::from_secs(20), "3 running pods", || async {
        fleet.running("app=sensors").await.len() == 3
    })
    .await;
    let sets: Api<ReplicaSet> = Api::default_namespaced(fleet.client.clone());
    eventually(Duration::from_secs(10), "readyReplicas 3", || async {
        sets.get("sensors")
            .await
            .ok()
            .and_then(|r| r.status)
            .and_then(|s| s.ready_replicas)
            == Some(3)
    })
    .await;

    // A pod deleted by hand is replaced.
    let victim = fleet.running("app=sensors").await[0]
        .metadata
        .name
        .clone()
        .expect("name");
    fleet.cluster.kubectl_ok(&["delete", "pod", &victim]);
    eventually(
        Duration::from_secs(20),
        "the pod to be replaced",
        || async {
            let running = fleet.running("app=sensors").await;
            running.len() == 3
                && running
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(&victim))
        },
    )
    .await;

    fleet
        .cluster
        .kubectl_ok(&["scale", "rs", "sensors", "--replicas=1"]);
    eventually(Duration::from_secs(20), "1 pod left", || async {
        fleet.running("app=sensors").await.len() == 1
    })
    .await;
    eventually(Duration::from_secs(10), "kubectl to show 1/1", || async {
        let table = fleet
            .cluster
            .kubectl_ok(&["get", "rs", "sensors", "--no-headers"]);
        table.split_whitespace().collect::<Vec<_>>()[1..4] == ["1", "1", "1"]
    })
    .await;
    fleet.stop().await;
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: registry.local/web:1.0}
"#;

/// The images of the Running pods with `selector`.
async fn images(fleet: &Fleet, selector: &str) -> Vec<String> {
    let mut images: Vec<String> = fleet
        .running(selector)
        .await
        .iter()
        .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
        .collect();
    images.sort();
    images
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_scales_rolls_and_rolls_back() {
    let fleet = Fleet::start().await;
    fleet.apply(DEPLOYMENT);
    fleet.rolled_out("deployment/web");
    assert_eq!(
        images(&fleet, "app=web").await,
        vec!["registry.local/web:1.0"; 3]
    );

    fleet
        .cluster
        .kubectl_ok(&["scale", "deployment", "web", "--replicas=5"]);
    eventually(Duration::from_secs(20), "5 pods", || async {
        fleet.running("app=web").await.len() == 5
    })
    .await;
    fleet
        .cluster
        .kubectl_ok(&["scale", "deployment", "web", "--replicas=2"]);
    eventually(Duration::from_secs(20), "2 pods", || async {
        fleet.running("app=web").await.len() == 2
    })
    .await;

    fleet.cluster.kubectl_ok(&[
        "set",
        "image",
        "deployment/web",
        "app=registry.local/web:2.0",
    ]);
    fleet.rolled_out("deployment/web");
    eventually(Duration::from_secs(20), "only new pods", || async {
        images(&fleet, "app=web").await == vec!["registry.local/web:2.0"; 2]
    })
    .await;
    let history = fleet
        .cluster
        .kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    fleet
        .cluster
        .kubectl_ok(&["rollout", "undo", "deployment/web"]);
    fleet.rolled_out("deployment/web");
    eventually(Duration::from_secs(20), "the old image back", || async {
        images(&fleet, "app=web").await == vec!["registry.local/web:1.0"; 2]
    })
    .await;
    let sets = fleet
        .cluster
        .kubectl_ok(&["get", "rs", "-l", "app=web", "--no-headers"]);
    assert_eq!(
        sets.lines().count(),
        2,
        "the rollback reuses the first ReplicaSet: {sets}"
    );
    let history = fleet
        .cluster
        .kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(history.lines().any(|l| l.starts_with('3')), "{history}");
    fleet.stop().await;
}

/// A daemon for zone a's nodes, naming its runtime through a RuntimeClass (the nodes offer
/// Wasm).
const DAEMONSET: &str = r#"apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: wasm}
handler: wasm
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {zone: a}
      runtimeClassName: wasm
      containers:
      - {name: agent, image: registry.local/agent:1.0}
"#;

/// The nodes the Running pods with `selector` are on.
async fn nodes_of(fleet: &Fleet, selector: &str) -> Vec<String> {
    let mut nodes: Vec<String> = fleet
        .running(selector)
        .await
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_covers_matching_nodes_and_nodes_that_join() {
    let fleet = Fleet::start().await;
    fleet.apply(DAEMONSET);
    fleet.rolled_out("daemonset/agent");
    assert_eq!(nodes_of(&fleet, "app=agent").await, ["edge-1", "edge-2"]);

    // An edge joins the zone: it gets the agent too; one in another zone does not.
    register(
        &fleet.client,
        "edge-4",
        json!({"zone": "a"}),
        "4",
        json!({}),
    )
    .await;
    register(
        &fleet.client,
        "edge-5",
        json!({"zone": "b"}),
        "4",
        json!({}),
    )
    .await;
    fleet.edges.add("edge-4");
    fleet.edges.add("edge-5");
    eventually(Duration::from_secs(20), "the agent on edge-4", || async {
        nodes_of(&fleet, "app=agent").await == ["edge-1", "edge-2", "edge-4"]
    })
    .await;
    eventually(Duration::from_secs(10), "DESIRED 3 READY 3", || async {
        let table = fleet
            .cluster
            .kubectl_ok(&["get", "ds", "agent", "--no-headers"]);
        let cols: Vec<&str> = table.split_whitespace().collect();
        cols.get(1..4) == Some(&["3", "3", "3"][..])
    })
    .await;

    // A new image rolls over every node.
    fleet.cluster.kubectl_ok(&[
        "set",
        "image",
        "daemonset/agent",
        "agent=registry.local/agent:2.0",
    ]);
    fleet.rolled_out("daemonset/agent");
    eventually(Duration::from_secs(20), "only new agents", || async {
        images(&fleet, "app=agent").await == vec!["registry.local/agent:2.0"; 3]
    })
    .await;
    fleet.stop().await;
}
