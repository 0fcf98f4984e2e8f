//! Garbage collection and namespace deletion: `kubectl delete --cascade` does what it says.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams};

use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

fn deployment(name: &str, namespace: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: app, image: registry.local/{name}:1.0}}
"#
    )
}

async fn count<K>(api: &Api<K>, selector: &str) -> usize
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(selector))
        .await
        .map_or(usize::MAX, |l| l.items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascades_background_foreground_and_orphan() {
    let fleet = Fleet::start().await;
    let pods: Api<Pod> = Api::default_namespaced(fleet.client.clone());
    let sets: Api<ReplicaSet> = Api::default_namespaced(fleet.client.clone());
    let deployments: Api<Deployment> = Api::default_namespaced(fleet.client.clone());
    for name in ["back", "fore", "orphan"] {
        fleet.apply(&deployment(name, "default"));
    }
    for name in ["back", "fore", "orphan"] {
        fleet.cluster.kubectl_ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ]);
    }

    // Background: the Deployment goes at once, the collector removes the rest.
    fleet.cluster.kubectl_ok(&["delete", "deployment", "back"]);
    eventually(
        Duration::from_secs(20),
        "back's replicaset and pods gone",
        || async { count(&sets, "app=back").await == 0 && count(&pods, "app=back").await == 0 },
    )
    .await;

    // Foreground: kubectl waits until the children are gone, then the Deployment is.
    fleet.cluster.kubectl_ok(&[
        "delete",
        "deployment",
        "fore",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert_eq!(count(&pods, "app=fore").await, 0, "children first");
    assert_eq!(count(&sets, "app=fore").await, 0);
    assert!(deployments.get_opt("fore").await.expect("get").is_none());

    // Orphan: the Deployment and its ReplicaSet go; the pods stay, owned by no one.
    fleet
        .cluster
        .kubectl_ok(&["delete", "deployment", "orphan", "--cascade=orphan"]);
    eventually(
        Duration::from_secs(20),
        "orphan's deployment gone",
        || async {
            deployments
                .get_opt("orphan")
                .await
                .is_ok_and(|d| d.is_none())
        },
    )
    .await;
    assert_eq!(count(&sets, "app=orphan").await, 1, "the replicaset stays");
    let rs = sets
        .list(&ListParams::default().labels("app=orphan"))
        .await
        .expect("list")
        .items
        .remove(0);
    assert!(rs.metadata.owner_references.unwrap_or_default().is_empty());
    let rs_name = rs.metadata.name.expect("name");
    fleet
        .cluster
        .kubectl_ok(&["delete", "rs", &rs_name, "--cascade=orphan"]);
    eventually(Duration::from_secs(20), "pods orphaned", || async {
        let list = pods.list(&ListParams::default().labels("app=orphan")).await;
        list.is_ok_and(|l| {
            l.items.len() == 2
                && l.items.iter().all(|p| {
                    p.metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(Vec::is_empty)
                })
        })
    })
    .await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_what_it_holds() {
    let fleet = Fleet::start().await;
    fleet.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: team}\ndata: {a: b}\n",
    );
    fleet.apply(&deployment("app", "team"));
    fleet.cluster.kubectl_ok(&[
        "-n",
        "team",
        "rollout",
        "status",
        "deployment/app",
        "--timeout=60s",
    ]);

    // kubectl waits for the namespace to be gone.
    fleet
        .cluster
        .kubectl_ok(&["delete", "namespace", "team", "--timeout=60s"]);
    let namespaces: Api<Namespace> = Api::all(fleet.client.clone());
    assert!(namespaces.get_opt("team").await.expect("get").is_none());
    let pods: Api<Pod> = Api::namespaced(fleet.client.clone(), "team");
    let maps: Api<ConfigMap> = Api::namespaced(fleet.client.clone(), "team");
    assert_eq!(count(&pods, "app=app").await, 0);
    assert_eq!(
        maps.get_opt("settings")
            .await
            .expect("get")
            .map(|m| m.metadata.name),
        None
    );
    fleet.stop().await;
}
