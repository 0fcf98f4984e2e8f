//! The `kube` crate against the embedded server: what every Wedge component will do.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

use crate::apiserver::harness::{Cluster, WIDGET_CRD, eventually};

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/hello:1.0"}]},
    }))
    .expect("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_crud_with_defaults_selectors_and_optimistic_concurrency() {
    let cluster = Cluster::start().await;
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, "default");

    let created = pods
        .create(&PostParams::default(), &pod("a", "web"))
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(
        meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some()
    );
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(
        spec.restart_policy.as_deref(),
        Some("Always"),
        "defaulted as Kubernetes does"
    );
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    pods.create(&PostParams::default(), &pod("b", "db"))
        .await
        .expect("create b");

    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    assert_eq!(web.items.len(), 1);
    let not_web = pods
        .list(&ListParams::default().labels("app notin (web)"))
        .await
        .expect("list");
    assert_eq!(
        not_web
            .items
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .expect("list");
    assert_eq!(by_name.items.len(), 1);

    // A replace based on a stale version is a 409 Conflict; the stored object is untouched.
    let mut stale = created.clone();
    let mut fresh = pods.get("a").await.expect("get");
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "1".into());
    pods.replace("a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "stale".into());
    match pods.replace("a", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        pods.get("a")
            .await
            .expect("get")
            .metadata
            .labels
            .expect("labels")["v"],
        "1"
    );

    // Unbound pods go at once; generateName names them.
    let generated = pods
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"generateName": "gen-"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]},
        })).expect("pod"))
        .await
        .expect("create");
    let name = generated.metadata.name.expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    assert!(pods.get_opt(&name).await.expect("get").is_none());
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_type_and_server_side_apply() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "a:1"}, {"name": "side", "image": "s:1"}]}}},
    }))
    .expect("deployment");
    deploys
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");

    let pp = PatchParams::default();
    // Strategic merge: containers merge by name.
    let smp =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "s:2"}]}}}});
    let d = deploys
        .patch("web", &pp, &Patch::Strategic(smp))
        .await
        .expect("strategic");
    let images: Vec<String> = d
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers
        .into_iter()
        .filter_map(|c| c.image)
        .collect();
    assert_eq!(images, ["a:1", "s:2"]);
    assert_eq!(
        d.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    // Merge patch: lists are replaced.
    let merge = json!({"metadata": {"labels": {"team": "edge"}}, "spec": {"replicas": 3}});
    let d = deploys
        .patch("web", &pp, &Patch::Merge(merge))
        .await
        .expect("merge");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));

    // JSON patch.
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]))
            .expect("ops");
    let d = deploys
        .patch("web", &pp, &Patch::Json::<()>(ops))
        .await
        .expect("json patch");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(4));

    // Status is written only through /status.
    let status = json!({"status": {"replicas": 4, "readyReplicas": 2}});
    let d = deploys
        .patch_status("web", &pp, &Patch::Merge(&status))
        .await
        .expect("status");
    assert_eq!(d.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 9}})),
        )
        .await
        .expect("merge");
    assert_eq!(
        d.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2),
        "status ignored on the main resource"
    );

    // Server-side apply: ownership, conflicts, force.
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |m: &str, v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {m: v}});
    let alice = PatchParams::apply("alice");
    cms.patch("cfg", &alice, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"shared": "a", "mine": "1"}})))
        .await
        .expect("apply creates");
    match cms
        .patch(
            "cfg",
            &PatchParams::apply("bob"),
            &Patch::Apply(apply("shared", "b")),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"alice\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The same value is no conflict: carol shares "mine" with alice.
    let shared = cms
        .patch(
            "cfg",
            &PatchParams::apply("carol"),
            &Patch::Apply(apply("mine", "1")),
        )
        .await
        .expect("the same value is shared");
    let owners_of_mine: Vec<String> = shared
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:data/f:mine").is_some())
        })
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(owners_of_mine, ["alice", "carol"]);
    // carol lets go of it again.
    cms.patch(
        "cfg",
        &PatchParams::apply("carol"),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}),
        ),
    )
    .await
    .expect("apply");
    let forced = cms
        .patch(
            "cfg",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(apply("shared", "b")),
        )
        .await
        .expect("forced");
    assert_eq!(forced.data.as_ref().expect("data")["shared"], "b");
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["alice", "bob"]);
    // Alice stops applying "mine": it is removed, as no one else owns it.
    let cm = cms
        .patch(
            "cfg",
            &alice,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}),
            ),
        )
        .await
        .expect("apply");
    assert_eq!(
        cm.data.unwrap_or_default().into_iter().collect::<Vec<_>>(),
        [("shared".to_owned(), "b".to_owned())]
    );
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_and_reflector_follow_every_change() {
    let cluster = Cluster::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let (reader, writer) = reflector::store();
    let stream =
        reflector(writer, watcher(cms.clone(), watcher::Config::default())).applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.expect("initial list");

    for i in 0..3 {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("c{i}")}, "data": {"i": i.to_string()}}),
        )
        .expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    cms.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"i": "changed"}})),
    )
    .await
    .expect("patch");
    cms.delete("c2", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(10), "the reflector to converge", || {
        let reader = reader.clone();
        async move {
            let mut names: Vec<String> = reader
                .state()
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            names.sort();
            let changed = reader
                .state()
                .iter()
                .any(|c| c.data.as_ref().is_some_and(|d| d["i"] == "changed"));
            names == ["c0", "c1"] && changed
        }
    })
    .await;
    task.abort();
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_round_trip_with_the_dynamic_api() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(WIDGET_CRD).expect("crd yaml");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    let established = crds.get("widgets.example.com").await.expect("get CRD");
    let conditions = established
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}})).expect("w");
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget");
    assert_eq!(
        created.data["spec"]["mode"], "slow",
        "the schema's default applied"
    );

    let bad: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 0}})).expect("w");
    match widgets.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("expected 422, got {other:?}"),
    }
    let with_status = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .expect("status");
    assert_eq!(with_status.data["status"]["ready"], true);
    let listed = widgets.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);

    // Deleting the CRD deletes its objects and stops serving them.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .expect("delete CRD");
    match widgets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404, "no longer served"),
        other => panic!("expected 404 once the CRD is gone, got {other:?}"),
    }
    // Defined again, the resource starts empty: its objects went with the CRD.
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create the CRD again");
    let relisted = widgets.list(&ListParams::default()).await.expect("list");
    assert!(
        relisted.items.is_empty(),
        "objects of a deleted CRD are deleted"
    );
    cluster.server.shutdown().await;
}

/// A CRD whose scale subresource keeps the replicas at `.spec.size` and `.status.size` and the
/// selector at `.status.selector`.
const SCALED_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: pools.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: pools, singular: pool, kind: Pool}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.size, labelSelectorPath: .status.selector}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {size: {type: integer}, selector: {type: string}}}
"#;

/// A custom resource's Scale reads and writes where its CRD says, as a HorizontalPodAutoscaler
/// reads and writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_resources_scale_follows_its_crds_paths() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(SCALED_CRD).expect("crd yaml");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Pool"),
        "pools",
    );
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let pool: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1",
        "kind": "Pool", "metadata": {"name": "p"}, "spec": {"size": 2}}))
    .expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    pools
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"size": 2, "selector": "app=pool"}})),
        )
        .await
        .expect("status");
    let scale = pools.get_scale("p").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let status = scale.status.expect("scale status");
    assert_eq!(status.replicas, 2);
    assert_eq!(status.selector.as_deref(), Some("app=pool"));
    let scaled = pools
        .patch_scale(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("patch scale");
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
    let read = pools.get("p").await.expect("pool");
    assert_eq!(read.data["spec"]["size"], 5);
    assert!(read.data["spec"].get("replicas").is_none());
    cluster.server.shutdown().await;
}
