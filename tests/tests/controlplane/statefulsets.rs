//! The StatefulSet controller through kubectl, on edges that report pods Running and Ready
//! (or finished, as their `EXIT` annotation says): pods made one at a time in ordinal order
//! and removed from the highest, stable names and identity labels, a rolling update from the
//! highest ordinal and its `kubectl rollout undo`, ControllerRevisions as `kubectl rollout
//! history` lists them, Parallel sets with a partition, claims made per pod and deleted with
//! it under `whenScaled: Delete`, and a failing pod made again with a warning.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::controlplane::edge::EXIT;
use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

/// A StatefulSet `name` of `image`, with more spec lines.
fn statefulset(name: &str, spec: &str, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}-svc
  selector: {{matchLabels: {{app: {name}}}}}
{spec}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: main, image: "{image}"}}
"#
    )
}

/// What happened to a set's pods, in the order the watch saw it: `<pod> made`, `<pod> ready`,
/// `<pod> gone`.
struct History {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    fn start(fleet: &Fleet, app: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pods: Api<Pod> = Api::default_namespaced(fleet.client.clone());
        let config = watcher::Config::default().labels(&format!("app={app}"));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let (mut made, mut ready) = (
                std::collections::BTreeSet::new(),
                std::collections::BTreeSet::new(),
            );
            let mut stream = watcher(pods, config).default_backoff().boxed();
            while let Some(Ok(event)) = stream.next().await {
                let mut log = log.lock().expect("history");
                match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        let name = p.name_any();
                        if made.insert(p.uid().unwrap_or_default()) {
                            log.push(format!("{name} made"));
                        }
                        let is_ready = p
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        if is_ready && ready.insert(p.uid().unwrap_or_default()) {
                            log.push(format!("{name} ready"));
                        }
                    }
                    watcher::Event::Delete(p) => log.push(format!("{} gone", p.name_any())),
                    _ => {}
                }
            }
        });
        Self { seen, task }
    }

    fn events(&self) -> Vec<String> {
        self.seen.lock().expect("history").clone()
    }

    /// Where `entry` first is after position `from`.
    fn position(&self, entry: &str, from: usize) -> Option<usize> {
        self.events()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, e)| *e == entry)
            .map(|(i, _)| i)
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for `kubectl rollout status sts/<name>` to say the set is rolled out.
fn rolled_out(fleet: &Fleet, name: &str) -> String {
    let out =
        fleet
            .cluster
            .kubectl(&["rollout", "status", &format!("sts/{name}"), "--timeout=60s"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let state = fleet
            .cluster
            .kubectl(&["get", "sts,pods,controllerrevisions", "-o", "yaml"]);
        panic!(
            "sts/{name} did not roll out: {said}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&state.stdout)
        );
    }
    said
}

async fn pods_of(fleet: &Fleet, app: &str) -> Vec<Pod> {
    let mut pods = Api::<Pod>::default_namespaced(fleet.client.clone())
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items;
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    pods.sort_by_key(|p| p.name_any());
    pods
}

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

async fn status(fleet: &Fleet, name: &str) -> k8s_openapi::api::apps::v1::StatefulSetStatus {
    Api::<StatefulSet>::default_namespaced(fleet.client.clone())
        .get(name)
        .await
        .expect("statefulset")
        .status
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_statefulsets_scale_in_order_roll_and_undo() {
    let fleet = Fleet::start().await;
    let history = History::start(&fleet, "web");

    // Made one at a time, each once the one before is Ready.
    fleet.apply(&statefulset(
        "web",
        "  replicas: 3",
        "registry.local/web:1.0",
    ));
    let said = rolled_out(&fleet, "web");
    assert!(
        said.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{said}"
    );
    eventually(Duration::from_secs(10), "web-2 seen ready", || async {
        history.position("web-2 ready", 0).is_some()
    })
    .await;
    let order = history.events();
    let at = |e: &str| {
        history
            .position(e, 0)
            .unwrap_or_else(|| panic!("{e} in {order:?}"))
    };
    assert!(at("web-0 ready") < at("web-1 made"), "{order:?}");
    assert!(at("web-1 ready") < at("web-2 made"), "{order:?}");

    // Stable names, identity labels, hostname and subdomain, one controller.
    let pods = pods_of(&fleet, "web").await;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    let first_revision = status(&fleet, "web")
        .await
        .update_revision
        .expect("updateRevision");
    for (i, pod) in pods.iter().enumerate() {
        let labels = pod.labels();
        assert_eq!(
            labels.get("statefulset.kubernetes.io/pod-name"),
            Some(&pod.name_any())
        );
        assert_eq!(
            labels.get("apps.kubernetes.io/pod-index"),
            Some(&i.to_string())
        );
        assert_eq!(
            labels.get("controller-revision-hash"),
            Some(&first_revision)
        );
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some(pod.name_any().as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web-svc"));
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("StatefulSet", Some(true))
        );
    }
    let s = status(&fleet, "web").await;
    assert_eq!(
        (
            s.replicas,
            s.ready_replicas,
            s.available_replicas,
            s.current_replicas,
            s.updated_replicas
        ),
        (3, Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(s.current_revision.as_deref(), Some(first_revision.as_str()));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(s.collision_count, Some(0));
    let table = fleet.cluster.kubectl_ok(&["get", "sts", "web"]);
    assert!(table.contains("3/3"), "{table}");

    // Scaled down: the highest goes first, one at a time.
    let mark = history.events().len();
    fleet
        .cluster
        .kubectl_ok(&["scale", "sts/web", "--replicas=1"]);
    eventually(Duration::from_secs(30), "web scaled to 1", || async {
        pods_of(&fleet, "web").await.len() == 1 && status(&fleet, "web").await.replicas == 1
    })
    .await;
    let two = history.position("web-2 gone", mark).expect("web-2 gone");
    let one = history.position("web-1 gone", mark).expect("web-1 gone");
    assert!(two < one, "{:?}", history.events());
    assert_eq!(pods_of(&fleet, "web").await[0].name_any(), "web-0");

    // And up again, in order.
    fleet
        .cluster
        .kubectl_ok(&["scale", "sts/web", "--replicas=3"]);
    rolled_out(&fleet, "web");
    assert_eq!(pods_of(&fleet, "web").await.len(), 3);

    // A rolling update from the highest ordinal down.
    let mark = history.events().len();
    fleet
        .cluster
        .kubectl_ok(&["set", "image", "sts/web", "main=registry.local/web:2.0"]);
    let said = rolled_out(&fleet, "web");
    assert!(said.contains("3 new pods have been updated"), "{said}");
    eventually(Duration::from_secs(30), "every pod at 2.0", || async {
        let pods = pods_of(&fleet, "web").await;
        pods.len() == 3 && pods.iter().all(|p| image_of(p).ends_with(":2.0"))
    })
    .await;
    let gone: Vec<usize> = ["web-2 gone", "web-1 gone", "web-0 gone"]
        .iter()
        .map(|e| history.position(e, mark).unwrap_or(usize::MAX))
        .collect();
    assert!(
        gone[0] < gone[1] && gone[1] < gone[2],
        "{:?}",
        history.events()
    );
    let s = status(&fleet, "web").await;
    let second_revision = s.update_revision.clone().expect("updateRevision");
    assert_ne!(second_revision, first_revision);
    eventually(
        Duration::from_secs(10),
        "the update revision current",
        || async {
            status(&fleet, "web").await.current_revision.as_deref()
                == Some(second_revision.as_str())
        },
    )
    .await;

    // Two revisions, as `kubectl rollout history` lists them.
    let revisions = Api::<ControllerRevision>::default_namespaced(fleet.client.clone())
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("revisions")
        .items;
    let mut numbers: Vec<(i64, String)> = revisions
        .iter()
        .map(|r| (r.revision, r.name_any()))
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        [(1, first_revision.clone()), (2, second_revision.clone())]
    );
    let listed = fleet.cluster.kubectl_ok(&["rollout", "history", "sts/web"]);
    let rows: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows, ["1", "2"], "{listed}");
    let table = fleet.cluster.kubectl_ok(&["get", "controllerrevisions"]);
    assert!(table.contains("statefulset.apps/web"), "{table}");

    // `kubectl rollout undo` patches the set back to revision 1, which comes back as 3.
    let undone = fleet.cluster.kubectl_ok(&["rollout", "undo", "sts/web"]);
    assert!(undone.contains("rolled back"), "{undone}");
    rolled_out(&fleet, "web");
    eventually(Duration::from_secs(30), "every pod back at 1.0", || async {
        let pods = pods_of(&fleet, "web").await;
        pods.len() == 3 && pods.iter().all(|p| image_of(p).ends_with(":1.0"))
    })
    .await;
    let s = status(&fleet, "web").await;
    assert_eq!(s.update_revision.as_deref(), Some(first_revision.as_str()));
    let listed = fleet.cluster.kubectl_ok(&["rollout", "history", "sts/web"]);
    let rows: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows, ["2", "3"], "{listed}");

    // History beyond revisionHistoryLimit goes; the revision in use stays.
    fleet.cluster.kubectl_ok(&[
        "patch",
        "sts",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"revisionHistoryLimit":0}}"#,
    ]);
    eventually(Duration::from_secs(30), "one revision left", || async {
        let names: Vec<String> =
            Api::<ControllerRevision>::default_namespaced(fleet.client.clone())
                .list(&ListParams::default().labels("app=web"))
                .await
                .map(|l| l.items.iter().map(|r| r.name_any()).collect())
                .unwrap_or_default();
        names == [first_revision.clone()]
    })
    .await;

    // Deleting the set takes its pods and revisions with it.
    fleet.cluster.kubectl_ok(&["delete", "sts", "web"]);
    eventually(
        Duration::from_secs(30),
        "web's pods and revisions gone",
        || async {
            let revisions = Api::<ControllerRevision>::default_namespaced(fleet.client.clone())
                .list(&ListParams::default().labels("app=web"))
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            pods_of(&fleet, "web").await.is_empty() && revisions == 0
        },
    )
    .await;
    drop(history);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sets_partitions_claims_and_failing_pods() {
    let fleet = Fleet::start().await;

    // One edge offers local storage: the set's pods go there, each claim bound to a volume on it.
    fleet.cluster.kubectl_ok(&[
        "annotate",
        "node",
        "edge-2",
        "storage.wedge.io/local-path-root=/srv/volumes",
    ]);
    fleet.cluster.kubectl_ok(&[
        "label",
        "node",
        "edge-2",
        "storage.wedge.io/local-path=true",
    ]);

    // Parallel, from ordinal 1, with a claim per pod deleted when its pod is scaled away.
    fleet.apply(&statefulset(
        "db",
        "  replicas: 3\n  podManagementPolicy: Parallel\n  ordinals: {start: 1}\n  persistentVolumeClaimRetentionPolicy: {whenScaled: Delete}\n  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: 2}}\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}",
        "registry.local/db:1.0",
    ));
    rolled_out(&fleet, "db");
    let names: Vec<String> = pods_of(&fleet, "db")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names, ["db-1", "db-2", "db-3"]);
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(fleet.client.clone());
    let claim_names = || async {
        let mut names: Vec<String> = claims
            .list(&ListParams::default().labels("app=db"))
            .await
            .map(|l| l.items.iter().map(|c| c.name_any()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(claim_names().await, ["data-db-1", "data-db-2", "data-db-3"]);
    let pod = &pods_of(&fleet, "db").await[0];
    let volume = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == "data"))
        .and_then(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    assert_eq!(volume.as_deref(), Some("data-db-1"));
    for pod in pods_of(&fleet, "db").await {
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("edge-2"),
            "{} goes where storage is",
            pod.name_any()
        );
    }
    // Each claim Bound to a hostPath volume on edge-2, both ways.
    let claim = claims.get("data-db-1").await.expect("claim");
    let bound_to = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .expect("volumeName");
    assert_eq!(bound_to, format!("pvc-{}", claim.uid().unwrap_or_default()));
    assert_eq!(
        claim.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound")
    );
    let volume = Api::<PersistentVolume>::all(fleet.client.clone())
        .get(&bound_to)
        .await
        .expect("volume");
    let spec = volume.spec.clone().expect("spec");
    assert_eq!(
        spec.host_path.as_ref().map(|h| h.path.clone()),
        Some(format!(
            "/srv/volumes/pvc-{}_default_data-db-1",
            claim.uid().unwrap_or_default()
        ))
    );
    assert_eq!(
        spec.claim_ref.as_ref().and_then(|c| c.name.as_deref()),
        Some("data-db-1")
    );
    let affinity = serde_json::to_value(&spec.node_affinity).expect("affinity");
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
        "edge-2"
    );
    assert_eq!(
        volume.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound")
    );
    let table = fleet.cluster.kubectl_ok(&["get", "pvc", "data-db-1"]);
    assert!(
        table.contains("Bound") && table.contains(&bound_to),
        "{table}"
    );

    // A pod deleted comes back on the same node, to the same claim.
    fleet
        .cluster
        .kubectl_ok(&["delete", "pod", "db-1", "--wait=false"]);
    eventually(Duration::from_secs(30), "db-1 made again", || async {
        pods_of(&fleet, "db").await.iter().any(|p| {
            p.name_any() == "db-1"
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.metadata.uid != pod.metadata.uid
        })
    })
    .await;
    let again = claims.get("data-db-1").await.expect("claim");
    assert_eq!(again.uid(), claim.uid(), "the claim is kept");

    // The partition: only ordinals from start + 2 (db-3) are updated.
    fleet
        .cluster
        .kubectl_ok(&["set", "image", "sts/db", "main=registry.local/db:2.0"]);
    let said = rolled_out(&fleet, "db");
    assert!(
        said.contains("partitioned roll out complete: 1 new pods have been updated"),
        "{said}"
    );
    eventually(Duration::from_secs(30), "db-3 updated alone", || async {
        let images: Vec<String> = pods_of(&fleet, "db").await.iter().map(image_of).collect();
        images
            == [
                "registry.local/db:1.0",
                "registry.local/db:1.0",
                "registry.local/db:2.0",
            ]
    })
    .await;
    let s = status(&fleet, "db").await;
    assert_eq!((s.current_replicas, s.updated_replicas), (Some(2), Some(1)));
    assert_ne!(s.current_revision, s.update_revision);

    // Scaled down: db-3's claim goes with it (and its volume); those of the pods kept stay.
    let db3 = claims.get("data-db-3").await.expect("claim of db-3");
    let db3_volume = format!("pvc-{}", db3.uid().unwrap_or_default());
    fleet
        .cluster
        .kubectl_ok(&["scale", "sts/db", "--replicas=2"]);
    eventually(
        Duration::from_secs(30),
        "db-3, its claim and volume gone",
        || async {
            let volume = Api::<PersistentVolume>::all(fleet.client.clone())
                .get_opt(&db3_volume)
                .await
                .ok()
                .flatten();
            pods_of(&fleet, "db").await.len() == 2
                && claim_names().await == ["data-db-1", "data-db-2"]
                && volume.is_none()
        },
    )
    .await;

    // whenDeleted: Delete, set afterwards: the claims go with the set.
    fleet.cluster.kubectl_ok(&[
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}"#,
    ]);
    eventually(
        Duration::from_secs(30),
        "db's claims owned by db",
        || async {
            claims
                .list(&ListParams::default().labels("app=db"))
                .await
                .map(|l| {
                    l.items.iter().all(|c| {
                        c.owner_references()
                            .iter()
                            .any(|o| o.kind == "StatefulSet" && o.name == "db")
                    })
                })
                .unwrap_or(false)
        },
    )
    .await;
    fleet.cluster.kubectl_ok(&["delete", "sts", "db"]);
    eventually(
        Duration::from_secs(30),
        "db's claims gone with it",
        || async { claim_names().await.is_empty() },
    )
    .await;

    // A pod that fails is made again, with a warning, and not at once a second time.
    let failing = statefulset("crash", "  replicas: 1", "registry.local/crash:1.0").replace(
        "    metadata: {labels: {app: crash}}",
        &format!("    metadata: {{labels: {{app: crash}}, annotations: {{{EXIT}: \"1\"}}}}"),
    );
    fleet.apply(&failing);
    let events: Api<Event> = Api::default_namespaced(fleet.client.clone());
    let warnings = || async {
        events
            .list(&ListParams::default().fields("involvedObject.name=crash"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some("RecreatingFailedPod"))
                    .filter_map(|e| Some((e.message?, e.count.unwrap_or(1))))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(30),
        "a RecreatingFailedPod warning",
        || async { !warnings().await.is_empty() },
    )
    .await;
    assert_eq!(
        warnings().await[0].0,
        "StatefulSet default/crash is recreating failed Pod crash-0"
    );
    // The pod is made again, fails again, and then waits out its backoff (10 s).
    let creates = || async {
        events
            .list(&ListParams::default().fields("involvedObject.name=crash"))
            .await
            .map(|l| {
                // The same event again is counted on the first, as kube's recorder does.
                l.items
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
                    .map(|e| e.count.unwrap_or(1))
                    .sum::<i32>()
            })
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(30),
        "crash-0 made again and failed",
        || async {
            let pods = pods_of(&fleet, "crash").await;
            creates().await == 2
                && pods.len() == 1
                && pods[0].status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        },
    )
    .await;
    let warned: i32 = warnings().await.iter().map(|(_, n)| n).sum();
    assert_eq!(warned, 1, "the second remake waits");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_without_local_storage_are_refused_with_a_message() {
    let fleet = Fleet::start().await;
    fleet.apply(&statefulset(
        "cache",
        "  replicas: 1\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}",
        "registry.local/cache:1.0",
    ));
    let pods: Api<Pod> = Api::default_namespaced(fleet.client.clone());
    let message = || async {
        pods.get_opt("cache-0")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "PodScheduled"))
            .filter(|c| c.status == "False")
            .and_then(|c| c.message)
    };
    eventually(Duration::from_secs(30), "cache-0 unschedulable", || async {
        message().await.is_some()
    })
    .await;
    let said = message().await.unwrap_or_default();
    for node in ["edge-1", "edge-2", "edge-3"] {
        assert!(
            said.contains(&format!(
                "1 node(s) offered no local storage (edgecore --local-volume-root) for PersistentVolumeClaim \"data-cache-0\": {node}"
            )),
            "{said}"
        );
    }
    assert!(said.starts_with("0/3 nodes are available: "), "{said}");
    let events: Api<Event> = Api::default_namespaced(fleet.client.clone());
    let failed = || async {
        events
            .list(&ListParams::default().fields("involvedObject.name=cache-0"))
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .map(|e| e.count.unwrap_or(1))
            .sum::<i32>()
    };
    // Events are written behind the scheduler's work.
    eventually(
        Duration::from_secs(10),
        "a FailedScheduling event",
        || async { failed().await > 0 },
    )
    .await;
    assert_eq!(failed().await, 1, "said once, not in a loop");
    // The claim waits, Pending, unbound; the StatefulSet says one pod made, none ready.
    let claim = Api::<PersistentVolumeClaim>::default_namespaced(fleet.client.clone())
        .get("data-cache-0")
        .await
        .expect("claim");
    assert_eq!(
        claim.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    let s = status(&fleet, "cache").await;
    assert_eq!((s.replicas, s.ready_replicas.unwrap_or(0)), (1, 0));

    // Once an edge offers storage the pod goes there.
    fleet.cluster.kubectl_ok(&[
        "annotate",
        "node",
        "edge-3",
        "storage.wedge.io/local-path-root=/srv/volumes",
    ]);
    fleet.cluster.kubectl_ok(&[
        "label",
        "node",
        "edge-3",
        "storage.wedge.io/local-path=true",
    ]);
    rolled_out(&fleet, "cache");
    let placed = pods
        .get("cache-0")
        .await
        .expect("pod")
        .spec
        .and_then(|s| s.node_name);
    assert_eq!(placed.as_deref(), Some("edge-3"));
    fleet.stop().await;
}
