//! What one object and the watch history may hold, as kube-apiserver and etcd bound them: a
//! ConfigMap's data at 1 MiB (422), any object at etcd's 1.5 MiB (413), and a history that
//! expires its oldest events by bytes, so a watch from before them is told to relist (410).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::apiserver::harness::Cluster;

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

/// A TLS client of the server that trusts its CA.
fn tls_connector(cluster: &Cluster) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let der = wedge_pki::pem_to_der(cluster.server.ca_pem()).expect("CA");
    roots.add(der.into()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A connection from `source` (a loopback address) that completes its TLS handshake, or
/// `None` when the server closes it first.
async fn connect_from(
    connector: &tokio_rustls::TlsConnector,
    source: std::net::IpAddr,
    server: std::net::SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((source, 0).into()).expect("bind");
    let tcp = socket.connect(server).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    connector.connect(name, tcp).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_from_one_address_leaves_room_for_everyone_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start_with(|c| {
        c.connection_limits = wedge_pki::listener::Limits {
            connections: 64,
            per_client: Some(8),
        };
        c.header_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let server: std::net::SocketAddr = cluster
        .server
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("addr");
    let connector = tls_connector(&cluster);
    let flood: std::net::IpAddr = [127, 0, 0, 2].into();
    // 30 connections from one address: 8 are served, the others closed at once.
    let mut held = Vec::new();
    for _ in 0..30 {
        if let Some(tls) = connect_from(&connector, flood, server).await {
            held.push(tls);
        }
    }
    assert_eq!(held.len(), 8, "the per-address cap");
    // Everyone else is served meanwhile.
    let out = cluster.kubectl_ok(&["get", "namespace", "default", "-o", "name"]);
    assert_eq!(out.trim(), "namespace/default");
    // A request whose headers never end, and connections that never send one, are closed by
    // the header timeout: each reads its end.
    held[0]
        .write_all(b"GET /api HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial request");
    for tls in &mut held {
        let mut buf = [0_u8; 512];
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the server closed the connection");
    }
    drop(held);
    // Their places came back.
    let again = connect_from(&connector, flood, server).await;
    assert!(again.is_some(), "a place for the address again");
}
