//! An acknowledged write survives `kill -9` of the server process, and watches resume from a
//! version given before the crash.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::apiserver::harness::{client_for, eventually};

fn spawn_server(data: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wedge-apiserver-test"))
        .arg(data)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server process")
}

use wedge_testkit::wait::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let mut server = spawn_server(dir.path(), port);
    eventually(
        Duration::from_secs(20),
        "the server to write its kubeconfig",
        || {
            let ready =
                kubeconfig.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            async move { ready }
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&kubeconfig).await, "default");
    let mut last_rv = String::new();
    for i in 0..20 {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("c{i}")}, "data": {"i": i.to_string()}}),
        )
        .expect("cm");
        let created = cms
            .create(&PostParams::default(), &cm)
            .await
            .expect("acknowledged");
        if i == 9 {
            last_rv = created.metadata.resource_version.expect("rv");
        }
    }
    server.kill().expect("kill -9");
    let _ = server.wait();

    let mut server = spawn_server(dir.path(), port);
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&kubeconfig).await, "default");
    eventually(Duration::from_secs(20), "the server to come back", || {
        let cms = cms.clone();
        async move { cms.list(&Default::default()).await.is_ok() }
    })
    .await;
    let names = cms
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(names, 20, "every acknowledged create is there");
    // A watch from a version before the crash replays what came after it.
    let mut events = cms
        .watch(&WatchParams::default(), &last_rv)
        .await
        .expect("watch")
        .boxed();
    match events.next().await {
        Some(Ok(WatchEvent::Added(cm))) => assert_eq!(cm.metadata.name.as_deref(), Some("c10")),
        other => panic!("expected c10, got {other:?}"),
    }
    let _ = server.kill();
    let _ = server.wait();
}
