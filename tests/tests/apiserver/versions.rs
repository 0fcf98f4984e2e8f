//! Where kube-apiserver's answers about versions and media types are exact: a garbage or future
//! `resourceVersion`, a `text/plain` body, and paged lists that read every page at the first
//! page's version, with `remainingItemCount`.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use crate::apiserver::harness::Cluster;

/// A raw GET or POST: the status code and the body as JSON.
async fn raw(client: &kube::Client, method: &str, path: &str, content_type: &str) -> (u16, Value) {
    let body = if method == "POST" {
        b"{\"metadata\": {\"name\": \"plain\"}}".to_vec()
    } else {
        Vec::new()
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .expect("request");
    match client.request_text(req).await {
        Ok(text) => (200, serde_json::from_str(&text).expect("json")),
        Err(kube::Error::Api(s)) => (s.code, serde_json::to_value(&s).expect("status")),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value}})).expect("cm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_future_resource_versions_and_plain_text_bodies_get_kubes_answers() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let path = "/api/v1/namespaces/default/configmaps";

    let (code, status) = raw(&client, "GET", &format!("{path}?resourceVersion=abc"), "").await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        r#"invalid resource version: resourceVersion: Invalid value: "abc": strconv.ParseUint: parsing "abc": invalid syntax"#
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let listed = cms.list(&ListParams::default()).await.expect("list");
    let current: u64 = listed
        .metadata
        .resource_version
        .expect("rv")
        .parse()
        .expect("number");
    let future = current + 1000;
    // Through kubectl: kube-rs's client retries a 504 with backoff before it reports it.
    let out = cluster.kubectl(&["get", "--raw", &format!("{path}?resourceVersion={future}")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "Error from server (Timeout): Timeout: Too large resource version: {future}, current: {current}"
        )),
        "{said}"
    );

    // A watch from the future gets the same status as its one event, then ends.
    let mut events = cms
        .watch(&WatchParams::default(), &future.to_string())
        .await
        .expect("watch")
        .boxed();
    match events.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (504, "Timeout"), "{e:?}");
            assert!(e.message.contains("Too large resource version"), "{e:?}");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(
        events.next().await.is_none(),
        "the watch ends after its error"
    );

    // A body in a media type kube-apiserver has no serializer for.
    let (code, status) = raw(&client, "POST", path, "text/plain").await;
    assert_eq!(code, 415, "{status}");
    assert_eq!(status["reason"], "UnsupportedMediaType");
    assert!(
        cms.get_opt("plain").await.expect("get").is_none(),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_a_list_is_read_at_the_first_pages_version() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..6 {
        cms.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i}"), "old"),
        )
        .await
        .expect("create");
    }
    // kube-root-ca.crt and the like may be there too: count what the list says.
    let all = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    let first = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    let rv = first.metadata.resource_version.clone().expect("rv");
    assert_eq!(first.metadata.remaining_item_count, Some(all as i64 - 2));
    let token = first.metadata.continue_.clone().expect("continue");

    // Between the pages: one changed, one deleted, one added, all after the first page.
    let mut changed = cms.get("cm-3").await.expect("get");
    changed.data = Some([("v".to_owned(), "new".to_owned())].into());
    cms.replace("cm-3", &PostParams::default(), &changed)
        .await
        .expect("replace");
    cms.delete("cm-4", &Default::default())
        .await
        .expect("delete");
    cms.create(&PostParams::default(), &config_map("cm-9", "new"))
        .await
        .expect("create");

    let mut seen: Vec<ConfigMap> = first.items;
    let mut token = Some(token);
    while let Some(t) = token {
        let page = cms
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .expect("next page");
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        seen.extend(page.items);
    }
    let names: Vec<String> = seen
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), all, "{names:?}");
    assert!(
        names.contains(&"cm-4".to_owned()),
        "deleted after: still in this list"
    );
    assert!(
        !names.contains(&"cm-9".to_owned()),
        "added after: not in this list"
    );
    let three = seen
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("cm-3"))
        .expect("cm-3");
    assert_eq!(
        three.data.as_ref().expect("data")["v"],
        "old",
        "as it was at {rv}"
    );

    // A new list sees the changes.
    let now: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(now.contains(&"cm-9".to_owned()) && !now.contains(&"cm-4".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continue_older_than_the_history_is_gone() {
    let cluster = Cluster::start_with(|c| c.watch_history = 4).await;
    let client = cluster.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        cms.create(&PostParams::default(), &config_map(&format!("cm-{i}"), "v"))
            .await
            .expect("create");
    }
    let first = cms
        .list(&ListParams::default().limit(1))
        .await
        .expect("page 1");
    let token = first.metadata.continue_.clone().expect("continue");
    for i in 0..6 {
        cms.create(
            &PostParams::default(),
            &config_map(&format!("more-{i}"), "v"),
        )
        .await
        .expect("create");
    }
    match cms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{s:?}");
            assert!(
                s.message
                    .starts_with("The provided continue parameter is too old"),
                "{s:?}"
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
}
