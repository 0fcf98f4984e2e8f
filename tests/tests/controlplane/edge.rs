//! A stand-in for edges in these tests: for each of its nodes it renews the node's Lease and
//! does what Edged does with the API, without running anything: a pod bound to one of its nodes
//! is reported Running and Ready (or, if its [`EXIT`] annotation says how it exits, Succeeded or
//! Failed at once), and a pod being deleted is confirmed gone. Stopping it is an edge going
//! offline.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// The annotation of a pod that finishes at once with this exit code (`"0"`: Succeeded).
pub const EXIT: &str = "test.wedge.io/exit";

/// Edges that answer for a set of nodes, until stopped.
pub struct Edges {
    nodes: Arc<Mutex<BTreeSet<String>>>,
    task: JoinHandle<()>,
    leases: JoinHandle<()>,
}

/// Now, as a `Time` (seconds).
fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Now, as a `MicroTime`.
fn now_micros() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

impl Edges {
    /// Starts answering for `nodes`.
    pub fn start(client: Client, nodes: &[&str]) -> Self {
        let nodes = Arc::new(Mutex::new(
            nodes
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<BTreeSet<_>>(),
        ));
        let task = tokio::spawn(run_pods(client.clone(), nodes.clone()));
        let leases = tokio::spawn(renew_leases(client, nodes.clone()));
        Self {
            nodes,
            task,
            leases,
        }
    }

    /// Starts answering for one more node.
    pub fn add(&self, node: &str) {
        self.nodes.lock().expect("nodes").insert(node.to_owned());
    }

    /// Stops answering for a node: its edge went offline.
    pub fn remove(&self, node: &str) {
        self.nodes.lock().expect("nodes").remove(node);
    }
}

impl Drop for Edges {
    fn drop(&mut self) {
        self.task.abort();
        self.leases.abort();
    }
}

async fn renew_leases(client: Client, nodes: Arc<Mutex<BTreeSet<String>>>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let node_api: Api<Node> = Api::all(client);
    loop {
        let names: Vec<String> = nodes.lock().expect("nodes").iter().cloned().collect();
        for name in names {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micros()},
            });
            let params = PatchParams::apply("edge").force();
            if let Err(e) = leases.patch(&name, &params, &Patch::Apply(lease)).await {
                eprintln!("lease renewal of {name} failed: {e}");
            }
            // Back after being away: report Ready again, as Edged does.
            let ready = node_api.get(&name).await.ok().and_then(|n| {
                let c = n
                    .status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                Some(c.status)
            });
            if ready.is_some_and(|r| r != "True") {
                let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                    "reason": "EdgeReady", "message": "edge is posting ready status",
                    "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
                let _ = node_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run_pods(client: Client, nodes: Arc<Mutex<BTreeSet<String>>>) {
    let all: Api<Pod> = Api::all(client.clone());
    watcher(all, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .for_each(|pod| {
            let (client, nodes) = (client.clone(), nodes.clone());
            async move {
                let Ok(pod) = pod else { return };
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                if !node.is_some_and(|n| nodes.lock().expect("nodes").contains(&n)) {
                    return;
                }
                let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
                if pod.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                        .await;
                    return;
                }
                if matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Running" | "Succeeded" | "Failed")
                ) {
                    return;
                }
                // A pod that says how it exits (`EXIT` annotation) finishes at once.
                if let Some(code) = pod.annotations().get(EXIT).and_then(|c| c.parse::<i32>().ok()) {
                    let (phase, reason) = if code == 0 {
                        ("Succeeded", "Completed")
                    } else {
                        ("Failed", "Error")
                    };
                    let containers: Vec<_> = pod
                        .spec
                        .iter()
                        .flat_map(|s| &s.containers)
                        .map(|c| {
                            json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                                "restartCount": 0, "started": false,
                                "state": {"terminated": {"exitCode": code, "reason": reason,
                                    "startedAt": now(), "finishedAt": now()}}})
                        })
                        .collect();
                    let status = json!({"status": {
                        "phase": phase,
                        "conditions": [
                            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()},
                        ],
                        "containerStatuses": containers,
                        "startTime": now(),
                    }});
                    let _ = api
                        .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(status))
                        .await;
                    return;
                }
                let containers: Vec<_> = pod
                    .spec
                    .iter()
                    .flat_map(|s| &s.containers)
                    .map(|c| {
                        json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                                    "restartCount": 0, "started": true,
                                    "state": {"running": {"startedAt": now()}}})
                    })
                    .collect();
                let status = json!({"status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now()},
                    ],
                    "containerStatuses": containers,
                    "startTime": now(),
                }});
                let _ = api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Strategic(status),
                    )
                    .await;
            }
        })
        .await;
}
