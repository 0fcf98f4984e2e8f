use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::*;

fn key(kind: ResourceKind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}})
}

/// Only an object's metadata: another type to read a pod as.
#[derive(serde::Deserialize)]
struct PartialObjectMeta {
    metadata: ObjectMeta,
}

fn open() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("edge.db")).expect("open");
    (dir, db)
}

#[tokio::test]
async fn an_object_is_parsed_once_per_version() {
    let (_dir, db) = open();
    let meta = MetaManager::load(&db).expect("load");
    let web = key(ResourceKind::Pod, "web");
    meta.apply(&web, "u1", "1", &pod("web"))
        .await
        .expect("apply");

    let first: Arc<Pod> = meta.get_typed(&web).expect("held").expect("parses");
    let again: Arc<Pod> = meta.get_typed(&web).expect("held").expect("parses");
    assert!(Arc::ptr_eq(&first, &again), "parsed once");
    assert_eq!(first.metadata.name.as_deref(), Some("web"));

    meta.apply(&web, "u1", "2", &pod("web"))
        .await
        .expect("apply");
    let newer: Arc<Pod> = meta.get_typed(&web).expect("held").expect("parses");
    assert!(
        !Arc::ptr_eq(&first, &newer),
        "a new version is parsed again"
    );

    // Read as another type too: a view of its own, also parsed once.
    let view = |meta: &MetaManager| -> Arc<PartialObjectMeta> {
        meta.get_typed(&web).expect("held").expect("parses")
    };
    let (meta_only, again) = (view(&meta), view(&meta));
    assert!(Arc::ptr_eq(&meta_only, &again), "parsed once");
    assert_eq!(meta_only.metadata.name.as_deref(), Some("web"));
    assert!(
        meta.get_typed::<Pod>(&web).expect("held").is_ok(),
        "the first view stays"
    );
}

#[tokio::test]
async fn an_object_that_does_not_parse_says_why_each_time() {
    let (_dir, db) = open();
    let meta = MetaManager::load(&db).expect("load");
    let broken = key(ResourceKind::Pod, "broken");
    meta.apply(
        &broken,
        "u1",
        "1",
        &json!({"spec": {"containers": "not a list"}}),
    )
    .await
    .expect("apply");
    let error = meta
        .get_typed::<Pod>(&broken)
        .expect("held")
        .expect_err("does not parse");
    assert!(error.contains("invalid type"), "{error}");
    assert_eq!(
        meta.get_typed::<Pod>(&broken)
            .expect("held")
            .expect_err("still not"),
        error
    );
}

#[tokio::test]
async fn what_is_stored_is_read_again_at_the_next_start() {
    let (dir, db) = open();
    {
        let meta = MetaManager::load(&db).expect("load");
        meta.apply(&key(ResourceKind::Pod, "web"), "u1", "7", &pod("web"))
            .await
            .expect("apply");
        meta.apply(
            &key(ResourceKind::ConfigMap, "conf"),
            "c1",
            "3",
            &json!({"data": {}}),
        )
        .await
        .expect("apply");
    }
    drop(db);
    let db = Database::open(&dir.path().join("edge.db")).expect("open again");
    let meta = MetaManager::load(&db).expect("load");
    let pods = meta.list(ResourceKind::Pod);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].resource_version, "7");
    assert_eq!(meta.list(ResourceKind::ConfigMap).len(), 1);
    let mut held: Vec<(ResourceKind, String)> = meta
        .held()
        .into_iter()
        .map(|h| (h.kind, h.resource_version))
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            (ResourceKind::Pod, "7".to_owned()),
            (ResourceKind::ConfigMap, "3".to_owned())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn subscribers_hear_the_keys_of_their_kinds_gathered_until_read() {
    let (_dir, db) = open();
    let meta = MetaManager::load(&db).expect("load");
    let mut pods = meta.subscribe(&[ResourceKind::Pod]);
    let mut devices = meta.subscribe(&[ResourceKind::Device, ResourceKind::DeviceModel]);
    let web = key(ResourceKind::Pod, "web");
    let db_pod = key(ResourceKind::Pod, "db");
    for rv in 1..=50 {
        meta.apply(&web, "u1", &rv.to_string(), &pod("web"))
            .await
            .expect("apply");
    }
    meta.apply(&db_pod, "u2", "1", &pod("db"))
        .await
        .expect("apply");
    // Nothing changed for it: no wake-up, no key.
    assert_eq!(
        meta.apply(&db_pod, "u2", "1", &pod("db"))
            .await
            .expect("apply"),
        Applied::Unchanged
    );

    assert_eq!(pods.changed().await, [db_pod.clone(), web.clone()].into());
    assert!(devices.take().is_empty(), "pods are not its kind");

    let thermo = key(ResourceKind::Device, "thermo");
    meta.apply(&thermo, "d1", "1", &json!({}))
        .await
        .expect("apply");
    assert_eq!(devices.changed().await, [thermo.clone()].into());

    assert!(!meta.delete(&web, Some("other-uid")).await.expect("delete"));
    assert!(pods.take().is_empty(), "nothing was deleted");
    assert!(meta.delete(&web, Some("u1")).await.expect("delete"));
    assert_eq!(pods.changed().await, [web.clone()].into());
    assert!(meta.get(&web).is_none());

    // Dropped: no longer told, and no longer kept.
    drop(devices);
    meta.apply(&thermo, "d1", "2", &json!({}))
        .await
        .expect("apply");
    assert_eq!(
        meta.inner
            .subscribers
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.strong_count() > 0)
            .count(),
        1
    );
}
