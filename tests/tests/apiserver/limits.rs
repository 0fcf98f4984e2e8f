//! What one object and the watch history may hold, as kube-apiserver and etcd bound them: a
//! ConfigMap's data at 1 MiB (422), any object at etcd's 1.5 MiB (413), and a history that
//! expires its oldest events by bytes, so a watch from before them is told to relist (410).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::harness::Cluster;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_kubes_limits_are_refused_in_its_words() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("blob");
    std::fs::write(&file, "x".repeat(1024 * 1024 + 1)).expect("blob");
    let out = cluster.kubectl(&[
        "create",
        "configmap",
        "big",
        &format!("--from-file=blob={}", file.display()),
    ]);
    assert!(
        stderr(&out).contains(
            r#"ConfigMap "big" is invalid: data: Too long: must have at most 1048576 bytes"#
        ),
        "{}",
        stderr(&out)
    );
    // A PodTemplate has no limit of its own: etcd's request limit is the one it meets.
    let template = json!({"apiVersion": "v1", "kind": "PodTemplate",
        "metadata": {"name": "huge"},
        "template": {"spec": {"containers": [{"name": "c", "image": "app:1",
            "env": [{"name": "BLOB", "value": "y".repeat(1_600_000)}]}]}}});
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], &template.to_string());
    assert!(
        stderr(&out).contains("etcdserver: request is too large"),
        "{}",
        stderr(&out)
    );
    let gone = cluster.kubectl(&["get", "podtemplate", "huge"]);
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_past_its_byte_budget_sends_old_watchers_to_relist() {
    let cluster = Cluster::start_with(|c| c.watch_history_bytes = 256 * 1024).await;
    let client = cluster.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let with = |i: usize| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "fat"},
            "data": {"i": i.to_string(), "blob": "z".repeat(100 * 1024)}}))
        .expect("cm")
    };
    let first = cms
        .create(&PostParams::default(), &with(0))
        .await
        .expect("create");
    let from = first.metadata.resource_version.expect("rv");
    for i in 1..6 {
        cms.replace("fat", &PostParams::default(), &with(i))
            .await
            .expect("replace");
    }
    let mut events = cms
        .watch(&WatchParams::default(), &from)
        .await
        .expect("watch")
        .boxed();
    match events.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_patch_cannot_grow_a_document_without_bound() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "configmap", "seed", "--from-literal=a=0123456789"]);
    // Each copy doubles `data`: 23 of them, about 1 KB of request, would make gigabytes.
    let bomb: Vec<_> = (0..23)
        .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/k{i}")}))
        .collect();
    let bomb = serde_json::to_string(&bomb).expect("patch");
    assert!(bomb.len() < 2048);
    let out = cluster.kubectl(&["patch", "configmap", "seed", "--type=json", "-p", &bomb]);
    assert!(
        stderr(&out).contains("Unable to copy, length")
            && stderr(&out).contains("exceeds limit 3145728"),
        "{}",
        stderr(&out)
    );
    // Too many operations: refused before any is applied.
    let many: Vec<_> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/data/a", "value": "0123456789"}))
        .collect();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("many.json");
    std::fs::write(&file, serde_json::to_string(&many).expect("patch")).expect("file");
    let out = cluster.kubectl(&[
        "patch",
        "configmap",
        "seed",
        "--type=json",
        &format!("--patch-file={}", file.display()),
    ]);
    assert!(
        stderr(&out).contains("The allowed maximum operations in a JSON patch is 10000, got 10001"),
        "{}",
        stderr(&out)
    );
    // The object is as it was, and the server still answers.
    let data = cluster.kubectl_ok(&["get", "configmap", "seed", "-o", "jsonpath={.data}"]);
    assert_eq!(data, r#"{"a":"0123456789"}"#);
}
