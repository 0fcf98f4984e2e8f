//! Bad input gets the status code and reason Kubernetes gives, and changes nothing stored.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::apiserver::harness::Cluster;

/// Sends a raw request and returns the status code and the Status body's reason.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .expect("request");
    match client.request_text(req).await {
        Ok(text) => (200, text),
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_invalid_missing_and_too_large_requests() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let keep: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "keep"}, "data": {"a": "1"}}))
            .expect("cm");
    let kept = cms
        .create(&PostParams::default(), &keep)
        .await
        .expect("create");

    let path = "/api/v1/namespaces/default/configmaps";
    assert_eq!(
        raw(
            &client,
            "POST",
            path,
            "application/json",
            b"{\"metadata\": ".to_vec()
        )
        .await,
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(
            &client,
            "POST",
            path,
            "application/yaml",
            b"metadata: [unclosed".to_vec()
        )
        .await,
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(
            &client,
            "GET",
            "/apis/example.com/v1/widgets",
            "application/json",
            vec![]
        )
        .await,
        (404, "NotFound".into())
    );
    assert_eq!(
        raw(
            &client,
            "GET",
            "/apis/apps/v9/deployments",
            "application/json",
            vec![]
        )
        .await,
        (404, "NotFound".into())
    );
    let wrong_version =
        json!({"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "x"}}).to_string();
    assert_eq!(
        raw(
            &client,
            "POST",
            path,
            "application/json",
            wrong_version.into_bytes()
        )
        .await,
        (400, "BadRequest".into())
    );
    let bad_name =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Valid"}})
            .to_string();
    assert_eq!(
        raw(
            &client,
            "POST",
            path,
            "application/json",
            bad_name.into_bytes()
        )
        .await,
        (422, "Invalid".into())
    );
    let elsewhere =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}).to_string();
    assert_eq!(
        raw(
            &client,
            "POST",
            "/api/v1/namespaces/nowhere/configmaps",
            "application/json",
            elsewhere.into_bytes()
        )
        .await,
        (404, "NotFound".into())
    );
    let huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"}, "data": {"a": "x".repeat(4 << 20)}}).to_string();
    assert_eq!(
        raw(&client, "POST", path, "application/json", huge.into_bytes()).await,
        (413, "RequestEntityTooLarge".into())
    );
    let wrong_type = json!({"data": "not a map"}).to_string();
    assert_eq!(
        raw(
            &client,
            "PATCH",
            &format!("{path}/keep"),
            "application/merge-patch+json",
            wrong_type.into_bytes()
        )
        .await,
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(
            &client,
            "PATCH",
            &format!("{path}/keep"),
            "text/plain",
            b"{}".to_vec()
        )
        .await,
        (415, "UnsupportedMediaType".into())
    );
    // A truncated protobuf body is a 400; CBOR is not decoded at all.
    let mut truncated = b"k8s\0\x0a\x0c\x0a\x02v1\x12\x09Config".to_vec();
    truncated.truncate(12);
    assert_eq!(
        raw(
            &client,
            "POST",
            path,
            "application/vnd.kubernetes.protobuf",
            truncated
        )
        .await,
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(&client, "POST", path, "application/cbor", vec![0xa0]).await,
        (415, "UnsupportedMediaType".into())
    );

    let after = cms.get("keep").await.expect("still there");
    assert_eq!(
        after.metadata.resource_version, kept.metadata.resource_version,
        "nothing stored changed"
    );
    assert!(cms.get_opt("huge").await.expect("get").is_none());
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_conflict_and_a_compacted_watch_is_gone() {
    let cluster = Cluster::start_with(|c| c.watch_history = 5).await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let base = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"n": "0"}}))
                .expect("cm"),
        )
        .await
        .expect("create");
    let start_rv = base.metadata.resource_version.clone().expect("rv");

    // Two writers replace from the same version: exactly one wins.
    let (mut a, mut b) = (base.clone(), base.clone());
    a.data = Some([("n".to_owned(), "a".to_owned())].into());
    b.data = Some([("n".to_owned(), "b".to_owned())].into());
    let pp = PostParams::default();
    let (ra, rb) = tokio::join!(cms.replace("c", &pp, &a), cms.replace("c", &pp, &b));
    let results = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        results.iter().filter(|ok| **ok).count(),
        1,
        "one writer wins"
    );
    for r in [ra, rb] {
        if let Err(kube::Error::Api(s)) = r {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
        }
    }

    // Push the first version out of the watch history.
    for i in 0..10 {
        cms.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": i.to_string()}})),
        )
        .await
        .expect("patch");
    }
    let mut stream = cms
        .watch(&WatchParams::default(), &start_rv)
        .await
        .expect("watch")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_are_refused_and_tokens_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret,ops,1,\"system:masters\"\n").expect("tokens");
    let cluster = Cluster::start_with(|c| c.token_file = Some(tokens.clone())).await;
    let ca = cluster.server.pki().ca_cert_path();
    let write_config = |name: &str, user: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user: {user}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                cluster.server.url(),
                ca.display()
            ),
        )
        .expect("kubeconfig");
        path
    };
    // No credentials at all: 401, through the kube crate with no user.
    let mut config = kube::Config::new(cluster.server.url().parse().expect("url"));
    config.root_cert = Some(vec![rustls_pemfile_der(cluster.server.ca_pem())]);
    let anonymous = kube::Client::try_from(config).expect("client");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(anonymous);
    match namespaces.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized")),
        other => panic!("expected 401, got {other:?}"),
    }
    // A wrong token: kubectl says the user must log in.
    let wrong = write_config("wrong", "{token: wrong}");
    let out = crate::apiserver::harness::kubectl_with(&wrong, &["get", "ns"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("You must be logged in to the server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_token = write_config("token", "{token: s3cret}");
    let out = crate::apiserver::harness::kubectl_with(
        &with_token,
        &["get", "ns", "default", "-o", "name"],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/default"
    );
    cluster.server.shutdown().await;
}

/// The DER bytes of a PEM certificate.
fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    wedge_pki::pem_to_der(pem).expect("CA PEM")
}
