//! `pods/log` through the API server to a node's kubelet endpoint, as kube-apiserver sends it:
//! the Node's preferred address and kubelet port, the kubelet client certificate, the options
//! as query parameters, the stream passed on as it arrives, and the kubelet's errors, an
//! unreachable node and bad options answered as Statuses.

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, core::Status};
use serde_json::json;

use crate::fake_kubelet::{self, FakeKubelet};
use crate::harness::Cluster;

const WAIT: Duration = Duration::from_secs(10);

/// Registers Node `name` with `status` (addresses, daemon endpoints).
async fn node(client: &Client, name: &str, status: serde_json::Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("node status");
}

/// A Node whose kubelet endpoint is `kubelet`'s; an ExternalIP that goes nowhere comes first
/// in the list, so only the preferred-type order picks the right one.
async fn node_at(client: &Client, name: &str, addr: std::net::SocketAddr) {
    let status = json!({
        "addresses": [
            {"type": "ExternalIP", "address": "192.0.2.1"},
            {"type": "InternalIP", "address": addr.ip().to_string()},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": addr.port()}},
    });
    node(client, name, status).await;
}

/// Pod `name` in `default`, bound to `node`, with `containers`.
async fn pod(client: &Client, name: &str, node: &str, containers: &[&str]) {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "registry.local/app:1"}))
        .collect();
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": containers},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

/// The Status a failed request got.
fn status_of<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected a Status, got {other:?}"),
    }
}

/// A raw GET of a pod's log subresource with `query`.
async fn raw_log(client: &Client, pod: &str, query: &str) -> Result<String, kube::Error> {
    let request = http::Request::get(format!("/api/v1/namespaces/default/pods/{pod}/log?{query}"))
        .body(Vec::new())
        .expect("request");
    client.request_text(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_reach_the_kubelet_with_the_options_sent_and_follow_streams() {
    let cluster = Cluster::start_with(|_, _| {}).await;
    let client = cluster.client().await;
    let mut kubelet = FakeKubelet::start(cluster.server.ca_pem()).await;
    node_at(&client, "edge-1", kubelet.addr).await;
    pod(&client, "web", "edge-1", &["app", "sidecar"]).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // Followed: every option set arrives, in kube-apiserver's order, with the kubelet client
    // certificate; chunks come through while the kubelet is still sending.
    let params = LogParams {
        container: Some("app".into()),
        follow: true,
        timestamps: true,
        previous: true,
        since_seconds: Some(30),
        tail_lines: Some(5),
        limit_bytes: Some(4096),
        ..LogParams::default()
    };
    let stream = pods.log_stream("web", &params).await.expect("log stream");
    let request = kubelet.next_request().await;
    let expected = "/containerLogs/default/web/app?follow=true&limitBytes=4096&previous=true\
                    &sinceSeconds=30&tailLines=5&timestamps=true";
    assert_eq!(request.target, expected);
    let user = request.user.as_ref().expect("a client certificate");
    assert_eq!(user.name, "kube-apiserver-kubelet-client");
    // No group: kube's `system:kubelet-api-admin` is bound to the user, not `system:masters`.
    assert!(user.groups.is_empty(), "{:?}", user.groups);

    let mut lines = stream.lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next())
            .await
            .expect("a line in time")
            .expect("the stream goes on")
            .expect("a readable line")
    };
    assert_eq!(next_line().await, format!("GET {expected}"));
    for text in ["first line", "second line"] {
        request
            .chunks
            .send(format!("{text}\n").into())
            .await
            .expect("the API server reads on");
        assert_eq!(next_line().await, text, "passed on before the kubelet ends");
    }
    // A client that goes away drops the kubelet connection too.
    drop(lines);
    tokio::time::timeout(WAIT, request.chunks.closed())
        .await
        .expect("the kubelet's stream is dropped when the client goes");

    // Not followed: the whole log, ended by the kubelet; sinceTime goes on in RFC 3339 UTC to
    // the second, as kube-apiserver formats it.
    let pods_for_task = pods.clone();
    let whole = tokio::spawn(async move {
        pods_for_task
            .logs(
                "web",
                &LogParams {
                    container: Some("sidecar".into()),
                    since_time: Some("2026-05-06T07:08:09Z".parse().expect("time")),
                    ..LogParams::default()
                },
            )
            .await
    });
    let request = kubelet.next_request().await;
    assert_eq!(
        request.target,
        "/containerLogs/default/web/sidecar?sinceTime=2026-05-06T07%3A08%3A09Z"
    );
    request
        .chunks
        .send("only line\n".into())
        .await
        .expect("send");
    drop(request);
    let text = whole.await.expect("task").expect("logs");
    assert_eq!(
        text,
        "GET /containerLogs/default/web/sidecar?sinceTime=2026-05-06T07%3A08%3A09Z\nonly line\n"
    );

    // Options decoded as kube-apiserver decodes them: a bare flag is set, `false` is not, a
    // sinceTime with an offset and a fraction goes on in UTC, truncated.
    let raw = tokio::spawn({
        let client = client.clone();
        async move {
            raw_log(
                &client,
                "web",
                "container=app&follow&previous=false&sinceTime=2026-05-06T09%3A08%3A09.75%2B02%3A00",
            )
            .await
        }
    });
    let request = kubelet.next_request().await;
    assert_eq!(
        request.target,
        "/containerLogs/default/web/app?follow=true&sinceTime=2026-05-06T07%3A08%3A09Z"
    );
    drop(request);
    raw.await.expect("task").expect("raw logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_errors_come_back_as_statuses() {
    let cluster = Cluster::start_with(|_, _| {}).await;
    let client = cluster.client().await;
    let kubelet = FakeKubelet::start(cluster.server.ca_pem()).await;
    node_at(&client, "edge-1", kubelet.addr).await;
    pod(
        &client,
        "web",
        "edge-1",
        &[
            fake_kubelet::WAITING_CONTAINER,
            fake_kubelet::BROKEN_CONTAINER,
        ],
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let logs_of = |container: &str| LogParams {
        container: Some(container.into()),
        ..LogParams::default()
    };

    // A JSON Status from the kubelet is the answer, code and all.
    let status = status_of(
        pods.logs("web", &logs_of(fake_kubelet::WAITING_CONTAINER))
            .await,
    );
    assert_eq!(status.code, 400);
    assert_eq!(status.reason, "BadRequest");
    assert_eq!(status.message, fake_kubelet::WAITING_MESSAGE);

    // Plain text becomes the message of a Status with the kubelet's code.
    let status = status_of(
        pods.logs("web", &logs_of(fake_kubelet::BROKEN_CONTAINER))
            .await,
    );
    assert_eq!(status.code, 500);
    assert_eq!(status.reason, "InternalError");
    assert_eq!(status.message, fake_kubelet::BROKEN_TEXT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_be_reached_is_a_503_naming_it() {
    let cluster = Cluster::start_with(|_, _| {}).await;
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // Nothing listens on the port the Node reports.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    node_at(&client, "edge-gone", closed).await;
    pod(&client, "lost", "edge-gone", &["app"]).await;
    let status = status_of(pods.logs("lost", &LogParams::default()).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (503, "ServiceUnavailable")
    );
    assert!(
        status.message.contains("node edge-gone"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains(&closed.to_string()),
        "names the address tried: {}",
        status.message
    );

    // A Node with no address of a type kube-apiserver dials.
    node(
        &client,
        "edge-bare",
        json!({"addresses": [{"type": "Other", "address": "somewhere"}]}),
    )
    .await;
    pod(&client, "bare", "edge-bare", &["app"]).await;
    let status = status_of(pods.logs("bare", &LogParams::default()).await);
    assert_eq!(status.code, 503);
    assert!(
        status.message.contains("node edge-bare has no address"),
        "{}",
        status.message
    );

    // No Node object at all.
    pod(&client, "orphan", "edge-missing", &["app"]).await;
    let status = status_of(pods.logs("orphan", &LogParams::default()).await);
    assert_eq!(status.code, 503);
    assert!(
        status
            .message
            .contains("node \"edge-missing\" is not registered"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_log_options_are_refused_before_the_node_is_asked() {
    let cluster = Cluster::start_with(|_, _| {}).await;
    let client = cluster.client().await;
    // The pod's node does not exist: a request that got past the options would be a 503.
    pod(&client, "web", "edge-missing", &["app"]).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // Values that parse but that PodLogOptions validation refuses: 422 Invalid, as from
    // kube-apiserver.
    let status = status_of(
        pods.logs(
            "web",
            &LogParams {
                tail_lines: Some(-1),
                ..LogParams::default()
            },
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
    );
    for (query, expected) in [
        (
            "limitBytes=0",
            "limitBytes: Invalid value: 0: must be greater than 0",
        ),
        (
            "sinceSeconds=0",
            "sinceSeconds: Invalid value: 0: must be greater than 0",
        ),
        (
            "sinceSeconds=5&sinceTime=2026-01-01T00%3A00%3A00Z",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ),
    ] {
        let status = status_of(raw_log(&client, "web", query).await);
        assert_eq!(status.code, 422, "{query}: {}", status.message);
        assert!(
            status.message.contains(expected),
            "{query}: {}",
            status.message
        );
    }

    // Values that do not parse: 400.
    for (query, expected) in [
        ("tailLines=ten", "tailLines"),
        ("sinceTime=yesterday", "sinceTime"),
        ("sinceTime=2026-01-01", "sinceTime"),
    ] {
        let status = status_of(raw_log(&client, "web", query).await);
        assert_eq!(
            (status.code, status.reason.as_str()),
            (400, "BadRequest"),
            "{query}: {}",
            status.message
        );
        assert!(
            status.message.contains(expected),
            "{query}: {}",
            status.message
        );
    }
}

/// With `kubelet_certificate_authority` set, the kubelet's serving certificate must chain to
/// it; the file is read when first needed, so it may appear after the server started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_ca_is_read_when_first_needed_and_enforced() {
    let cluster = Cluster::start_with(|config, dir| {
        config.kubelet_certificate_authority = Some(dir.join("kubelet-ca.crt"));
    })
    .await;
    let ca_path = cluster.dir.path().join("kubelet-ca.crt");
    let client = cluster.client().await;
    let mut kubelet = FakeKubelet::start(cluster.server.ca_pem()).await;
    node_at(&client, "edge-1", kubelet.addr).await;
    pod(&client, "web", "edge-1", &["app"]).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // Not written yet: a 503 that says which file.
    let status = status_of(pods.logs("web", &LogParams::default()).await);
    assert_eq!(status.code, 503);
    assert!(
        status.message.contains("kubelet-ca.crt"),
        "{}",
        status.message
    );

    // Written: the kubelet is verified against it, and answers.
    std::fs::write(&ca_path, &kubelet.ca_pem).expect("write the kubelet CA");
    let pods_for_task = pods.clone();
    let whole = tokio::spawn(async move { pods_for_task.logs("web", &LogParams::default()).await });
    drop(kubelet.next_request().await);
    let text = whole.await.expect("task").expect("verified logs");
    assert_eq!(text, "GET /containerLogs/default/web/app\n");

    // A kubelet whose certificate another CA signed is refused...
    let mut impostor = FakeKubelet::start(cluster.server.ca_pem()).await;
    node_at(&client, "edge-2", impostor.addr).await;
    pod(&client, "other", "edge-2", &["app"]).await;
    let status = status_of(pods.logs("other", &LogParams::default()).await);
    assert_eq!(status.code, 503);
    assert!(
        status.message.contains("TLS handshake with node edge-2"),
        "{}",
        status.message
    );

    // ...unless the request asks not to verify it (insecureSkipTLSVerifyBackend).
    let raw = tokio::spawn({
        let client = client.clone();
        async move { raw_log(&client, "other", "insecureSkipTLSVerifyBackend=true").await }
    });
    drop(impostor.next_request().await);
    assert_eq!(
        raw.await.expect("task").expect("unverified logs"),
        "GET /containerLogs/default/other/app\n"
    );
}
