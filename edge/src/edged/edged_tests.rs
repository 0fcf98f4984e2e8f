//! Edged's loop as edgecore runs it, against the scripted runtime with paused time: pods from
//! MetaManager onto the workers, their statuses into the outbox, a deletion stopped within the
//! pod's grace period and confirmed, and a shutdown that finishes the deletions under way while
//! letting go of the pods that keep running.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, Operation, ResourceKind};

use super::fake::Fake;
use super::node::NodeFacts;
use super::pod_workers::{PodWorkers, WorkerConfig};
use super::runtimes::{RuntimeHandle, Runtimes};
use super::{Edged, EdgedConfig, usage};
use crate::metamanager::MetaManager;
use crate::store::{Database, OutboxEntry};

struct Edge {
    fake: Fake,
    meta: MetaManager,
    db: Database,
    shutdown: CancellationToken,
    edged: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

fn start() -> Edge {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("edge.db")).expect("open");
    start_on(db, dir)
}

/// Edged on `db` with a runtime that holds nothing, as edgecore starts.
fn start_on(db: Database, dir: tempfile::TempDir) -> Edge {
    let meta = MetaManager::load(&db).expect("meta");
    let fake = Fake::default();
    let workers = PodWorkers::new(
        Runtimes::new().with(RuntimeHandle::new(Arc::new(fake.clone()))),
        WorkerConfig::new(dir.path().join("pods")),
    );
    let config = EdgedConfig::new(NodeFacts {
        name: "edge".into(),
        ip: "127.0.0.1".into(),
        runtimes: vec!["fake".into()],
        labels: Default::default(),
        max_pods: 110,
        ready_since: jiff::Timestamp::now(),
        local_volume_root: None,
    });
    let edged = Edged::new(workers, meta.clone(), db.outbox(), usage::feed(), config);
    let shutdown = CancellationToken::new();
    let edged = tokio::spawn(edged.run(shutdown.clone()));
    Edge {
        fake,
        meta,
        db,
        shutdown,
        edged,
        dir,
    }
}

fn key(kind: ResourceKind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

/// Pod `name` at version `rv`, one container, bound to this edge.
fn pod(name: &str, rv: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "resourceVersion": rv},
        "spec": {"nodeName": "edge", "terminationGracePeriodSeconds": 30,
            "containers": [{"name": name, "image": "r/app:1"}]},
    })
}

impl Edge {
    /// Stops Edged and starts it again on the same database, with a runtime that holds
    /// nothing: edgecore restarted after its pods' sandboxes went (a reboot).
    async fn restart(self) -> Edge {
        self.shutdown.cancel();
        self.edged.await.expect("Edged ends");
        start_on(self.db, self.dir)
    }

    /// Stores pod `name` as EdgeHub would, at version `rv`; `deleted` gives it a
    /// deletionTimestamp with that grace period.
    async fn put_pod(&self, name: &str, rv: &str, deleted: Option<i64>) {
        let mut pod = pod(name, rv);
        if let Some(grace) = deleted {
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            pod["metadata"]["deletionGracePeriodSeconds"] = grace.into();
        }
        self.store(ResourceKind::Pod, name, rv, &pod).await;
    }

    /// Stores `object` (kind `kind`, named `name`, uid `uid-<name>`) as EdgeHub would.
    async fn store(&self, kind: ResourceKind, name: &str, rv: &str, object: &serde_json::Value) {
        self.meta
            .apply(&key(kind, name), &format!("uid-{name}"), rv, object)
            .await
            .expect("stored");
    }

    fn outbox(&self) -> Vec<OutboxEntry> {
        self.db.outbox().pending(0, 1000).expect("outbox")
    }

    /// Waits (in paused time, bounded to an hour of it) until the outbox holds an entry
    /// `pred` accepts.
    async fn reported(&self, what: &str, pred: impl Fn(&OutboxEntry) -> bool) -> OutboxEntry {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if let Some(entry) = self.outbox().into_iter().find(|e| pred(e)) {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "never reported: {what}\noutbox: {:#?}\ncalls: {:#?}",
                self.outbox(),
                self.fake.calls()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn running(&self, name: &str) {
        self.reported(&format!("{name} running"), |e| {
            e.key == key(ResourceKind::PodStatus, name)
                && e.payload["status"]["phase"] == "Running"
                && e.payload["status"]["containerStatuses"][0]["ready"] == true
        })
        .await;
    }

    async fn confirmed_gone(&self, name: &str) {
        self.reported(&format!("{name} gone"), |e| {
            e.key == key(ResourceKind::Pod, name) && e.operation == Operation::Delete
        })
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_metamanager_holds_runs_and_its_status_is_reported() {
    let edge = start();
    edge.put_pod("web", "1", None).await;
    edge.running("web").await;
    let status = edge
        .outbox()
        .into_iter()
        .find(|e| e.key == key(ResourceKind::PodStatus, "web"))
        .expect("a status");
    assert_eq!(status.payload["uid"], "uid-web");
    assert_eq!(status.payload["status"]["hostIP"], "127.0.0.1");
    edge.shutdown.cancel();
    edge.edged.await.expect("Edged ends");
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_finished_is_not_run_again_after_a_restart_from_the_status_it_reported() {
    let edge = start();
    edge.fake.script("job", &[Some(0)]);
    let mut job = pod("job", "1");
    job["spec"]["restartPolicy"] = "Never".into();
    edge.store(ResourceKind::Pod, "job", "1", &job).await;
    let done = edge
        .reported("job succeeded", |e| {
            e.key == key(ResourceKind::PodStatus, "job")
                && e.payload["status"]["phase"] == "Succeeded"
        })
        .await;
    // The cloud acknowledges the status; the pod with that status has not come back down (the
    // link went, or edgecore stopped, first): the stored pod has no status.
    let outbox = edge.db.outbox();
    assert!(outbox.acknowledge(&done.key, done.seq).await.expect("ack"));
    assert!(!edge.outbox().iter().any(|e| e.key == done.key));

    let edge = edge.restart().await;
    edge.put_pod("web", "1", None).await;
    edge.running("web").await;
    // Both pods were looked at in that start's first pass: only web was created.
    let calls = edge.fake.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("create web#")),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("create job#")),
        "{calls:?}"
    );
    edge.shutdown.cancel();
    edge.edged.await.expect("Edged ends");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_is_stopped_within_its_grace_period_then_confirmed() {
    let edge = start();
    edge.fake.stubborn("web");
    edge.put_pod("web", "1", None).await;
    edge.running("web").await;

    let deleted = Instant::now();
    edge.put_pod("web", "2", Some(20)).await;
    edge.confirmed_gone("web").await;
    // It ignored SIGTERM: the SIGKILL came at the end of the pod's own grace period (20 s),
    // not the spec's 30 s.
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(20) && took < Duration::from_secs(21),
        "{took:?}"
    );
    assert!(
        edge.fake.calls().iter().any(|c| c.ends_with(" 20s")),
        "{:?}",
        edge.fake.calls()
    );
    edge.shutdown.cancel();
    edge.edged.await.expect("Edged ends");
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_deletions_under_way_and_lets_the_other_pods_run() {
    let edge = start();
    edge.fake.stubborn("doomed");
    edge.put_pod("doomed", "1", None).await;
    edge.put_pod("stays", "1", None).await;
    edge.running("doomed").await;
    edge.running("stays").await;

    edge.put_pod("doomed", "2", Some(20)).await;
    let stopping = Instant::now();
    let deadline = stopping + Duration::from_secs(3600);
    while !edge.fake.calls().iter().any(|c| c.starts_with("stop ")) {
        assert!(Instant::now() < deadline, "{:?}", edge.fake.calls());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    edge.shutdown.cancel();
    edge.edged.await.expect("Edged ends");

    // Edged ended only once the stop had run its course (the SIGKILL at 20 s), and the pod's
    // directory was removed; the other pod was let go of, still running.
    assert!(stopping.elapsed() >= Duration::from_secs(20));
    let calls = edge.fake.calls();
    let started = |pod: &str| {
        let created = calls
            .iter()
            .position(|c| *c == format!("create {pod}#0"))
            .expect("created");
        calls[created..]
            .iter()
            .find_map(|c| c.strip_prefix("start "))
            .expect("started")
            .to_owned()
    };
    let (doomed, stays) = (started("doomed"), started("stays"));
    assert!(calls.contains(&format!("stop {doomed} 20s")), "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with(&format!("stop {stays} "))),
        "{calls:?}"
    );
    let sandbox_stops = calls
        .iter()
        .filter(|c| c.starts_with("stop_sandbox "))
        .count();
    assert_eq!(
        sandbox_stops, 1,
        "only the deleted pod's sandbox: {calls:?}"
    );
    let dirs: Vec<String> = std::fs::read_dir(edge.dir.path().join("pods"))
        .expect("pods dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dirs.iter().all(|d| !d.contains("doomed")), "{dirs:?}");
    assert!(dirs.iter().any(|d| d.contains("stays")), "{dirs:?}");
}

impl Edge {
    /// Stores ConfigMap `settings` holding `MODE`, at version `rv`.
    async fn put_settings(&self, mode: &str, rv: &str) {
        let map = json!({"metadata": {"name": "settings", "namespace": "default",
            "uid": "uid-settings", "resourceVersion": rv}, "data": {"MODE": mode}});
        self.store(ResourceKind::ConfigMap, "settings", rv, &map)
            .await;
    }

    /// Stores pod `name` mounting ConfigMap `settings` at version `rv`.
    async fn put_configured_pod(&self, name: &str, rv: &str) {
        let mut pod = pod(name, rv);
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "config", "mountPath": "/config"}]);
        pod["spec"]["volumes"] = json!([{"name": "config", "configMap": {"name": "settings"}}]);
        self.store(ResourceKind::Pod, name, rv, &pod).await;
    }

    /// Waits (bounded) until pod `name`'s ConfigMap volume says `MODE` is `mode`.
    async fn configured(&self, name: &str, mode: &str) {
        let file = super::plan::pod_dir(
            &self.dir.path().join("pods"),
            "default",
            name,
            &format!("uid-{name}"),
        )
        .join("volumes/config/MODE");
        let deadline = Instant::now() + Duration::from_secs(3600);
        while std::fs::read_to_string(&file).ok().as_deref() != Some(mode) {
            assert!(
                Instant::now() < deadline,
                "{name}'s MODE never became {mode}: {:?}",
                std::fs::read_to_string(&file)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_waiting_for_its_configmap_starts_when_it_comes_and_follows_its_changes() {
    let edge = start();
    edge.put_pod("plain", "1", None).await;
    edge.put_configured_pod("one", "1").await;
    edge.running("plain").await;
    // Waiting for the ConfigMap it mounts, as the kubelet says it.
    edge.reported("one waiting for its ConfigMap", |e| {
        e.key == key(ResourceKind::PodStatus, "one")
            && e.payload["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("configmap \"settings\" not found"))
    })
    .await;
    // A change of another pod alone leaves it waiting; the ConfigMap's coming starts it.
    edge.put_pod("plain", "2", None).await;
    edge.put_settings("fast", "1").await;
    edge.running("one").await;
    edge.configured("one", "fast").await;

    // A second pod mounting it, then a change of the ConfigMap: both volumes follow.
    edge.put_configured_pod("two", "1").await;
    edge.running("two").await;
    edge.configured("two", "fast").await;
    // A change that makes Edged look at every pod without touching what volumes are written
    // from (a RuntimeClass): both running pods are seen as up to date. The paused clock moves
    // on only once Edged has nothing left to do, so the look has happened after this sleep.
    edge.meta
        .apply(
            &ObjectKey {
                kind: ResourceKind::RuntimeClass,
                namespace: String::new(),
                name: "unrelated".into(),
            },
            "uid-rc",
            "1",
            &json!({"metadata": {"name": "unrelated"}, "handler": "fake"}),
        )
        .await
        .expect("stored");
    tokio::time::sleep(Duration::from_secs(1)).await;
    edge.put_settings("slow", "2").await;
    edge.configured("one", "slow").await;
    edge.configured("two", "slow").await;
    edge.shutdown.cancel();
    edge.edged.await.expect("Edged ends");
}
