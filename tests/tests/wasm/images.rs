//! Images: every Wasm layout pulled from a real registry, OCI layout import, credentials,
//! plain HTTP only where allowed, and the compile cache.

use serde_json::json;
use wedge_core::runtime::PullAuth;
use wedge_core::status::ContainerState;
use wedge_edge::edged::plan::plan_pod;
use wedge_edged_wasm::compile::CacheOutcome;
use wedge_testkit::oci::{self, Image, WasmLayout};
use wedge_testkit::registry::Registry;

use crate::wasm::harness::{TestRuntime, apps, pod, push_hello, terminated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_every_wasm_layout_from_a_real_registry() {
    let registry = Registry::start().expect("registry");
    let host = registry.host();
    let hello = apps().bytes("hello").expect("hello");
    let t = TestRuntime::new(std::slice::from_ref(&host));
    let mut expected = Vec::new();
    for (i, layout) in WasmLayout::ALL.into_iter().enumerate() {
        let image = Image::wasm(&hello, layout);
        let tag = format!("v{i}");
        let digest = if layout == WasmLayout::ImageTar {
            // Plain OCI images go through skopeo, as users push them.
            let dir = tempfile::tempdir().expect("dir");
            oci::write_layout(dir.path(), &tag, &image).expect("layout");
            oci::skopeo_copy_layout(dir.path(), &tag, &host, "apps/hello")
                .await
                .expect("skopeo push");
            image.manifest_json().1
        } else {
            oci::push(&host, "apps/hello", &tag, &image)
                .await
                .expect("push")
        };
        let uid = format!("layout-{i}");
        t.start(pod(
            &uid,
            &format!("{host}/apps/hello:{tag}"),
            json!({"args": [format!("{layout:?}")]}),
            json!({}),
        ))
        .await;
        expected.push((uid, layout, digest));
    }
    for (uid, layout, digest) in expected {
        let s = t.wait_for(&uid, "hello to finish", terminated).await;
        let c = &s.containers[0];
        assert!(
            matches!(&c.state, ContainerState::Terminated { exit_code: 0, reason, .. } if reason == "Completed"),
            "{layout:?}: {c:#?}"
        );
        assert_eq!(
            c.image_id.as_deref(),
            Some(format!("{host}/apps/hello@{digest}").as_str()),
            "{layout:?}"
        );
        let log = t.logs(&uid, "main").await;
        assert!(
            log.contains("Hello from Wedge!") && log.contains(&format!("args: {layout:?}")),
            "{layout:?}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_oci_layouts_for_air_gapped_edges() {
    let hello = apps().bytes("hello").expect("hello");
    let t = TestRuntime::new(&[]);
    let work = tempfile::tempdir().expect("dir");
    let dir = work.path().join("layout");
    oci::write_layout(&dir, "1.0", &Image::wasm(&hello, WasmLayout::CncfArtifact)).expect("layout");
    let tar = work.path().join("image.tar");
    oci::write_layout_tar(&tar, "2.0", &Image::wasm(&hello, WasmLayout::ImageTar)).expect("tar");

    let imported =
        t.rt.images()
            .import(&dir, Some("registry.example/edge/hello:1.0"))
            .await
            .expect("dir import");
    assert_eq!(
        imported[0].stored.reference,
        "registry.example/edge/hello:1.0"
    );
    t.rt.images()
        .import(&tar, Some("registry.example/edge/hello:2.0"))
        .await
        .expect("tar import");

    // No registry exists at registry.example: these run from the store alone.
    for (uid, tag) in [("air-1", "1.0"), ("air-2", "2.0")] {
        let image = format!("registry.example/edge/hello:{tag}");
        t.start(pod(
            uid,
            &image,
            json!({"imagePullPolicy": "Never"}),
            json!({}),
        ))
        .await;
        let s = t
            .wait_for(uid, "imported hello to finish", terminated)
            .await;
        assert_eq!(s.containers[0].state.exit_code(), Some(0), "{s:#?}");
        assert!(t.logs(uid, "main").await.contains("Hello from Wedge!"));
    }
    let listed = t.rt.images().store().list().expect("list");
    assert_eq!(listed.len(), 2);

    t.start(pod(
        "air-3",
        "registry.example/edge/other:1",
        json!({"imagePullPolicy": "Never"}),
        json!({}),
    ))
    .await;
    let message = t.wait_waiting("air-3", "ErrImagePull").await;
    assert!(message.contains("imagePullPolicy is Never"), "{message}");

    let bad = work.path().join("not-a-layout");
    std::fs::create_dir_all(&bad).expect("dir");
    let e =
        t.rt.images()
            .import(&bad, Some("x:1"))
            .await
            .expect_err("not a layout");
    assert!(e.to_string().contains("oci-layout"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_are_used_when_given() {
    let registry = Registry::start_with_auth("edge", "s3cret").expect("registry");
    let host = registry.host();
    let hello = apps().bytes("hello").expect("hello");
    oci::push_with_auth(
        &host,
        "private/hello",
        "1",
        &Image::wasm(&hello, WasmLayout::CncfArtifact),
        "edge",
        "s3cret",
    )
    .await
    .expect("push");
    let t = TestRuntime::new(std::slice::from_ref(&host));
    let image = format!("{host}/private/hello:1");
    t.start(pod("anon", &image, json!({}), json!({}))).await;
    let message = t.wait_waiting("anon", "ErrImagePull").await;
    assert!(message.contains("refused access"), "{message}");
    t.stop_pod("anon", std::time::Duration::from_secs(1)).await;

    let auth = PullAuth::Basic {
        username: "edge".into(),
        password: "s3cret".into(),
    };
    let plan = plan_pod(
        &pod("authed", &image, json!({}), json!({})),
        &t.workers.config().pods_root,
    )
    .expect("plan");
    t.workers
        .start(plan, Default::default(), [(host.clone(), auth)].into())
        .expect("started");
    let s = t.wait_for("authed", "hello to finish", terminated).await;
    assert_eq!(s.containers[0].state.exit_code(), Some(0), "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_for_registries_named_insecure() {
    let registry = Registry::start().expect("registry");
    let host = registry.host();
    push_hello(&host, "apps/hello", "1", WasmLayout::CncfArtifact).await;
    let t = TestRuntime::new(&[]);
    t.start(pod(
        "tls",
        &format!("{host}/apps/hello:1"),
        json!({}),
        json!({}),
    ))
    .await;
    let message = t.wait_waiting("tls", "ErrImagePull").await;
    assert!(
        message.contains("cannot reach the registry") && message.contains("insecure"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_loses_its_registry_runs_what_it_holds() {
    let registry = Registry::start().expect("registry");
    let host = registry.host();
    push_hello(&host, "apps/hello", "latest", WasmLayout::CncfArtifact).await;
    let t = TestRuntime::new(std::slice::from_ref(&host));
    // `:latest` means imagePullPolicy Always.
    let image = format!("{host}/apps/hello:latest");
    t.start(pod("online", &image, json!({}), json!({}))).await;
    t.wait_for("online", "the first run", terminated).await;

    drop(registry);
    t.start(pod("offline", &image, json!({}), json!({}))).await;
    let s = t.wait_for("offline", "the offline run", terminated).await;
    assert_eq!(s.containers[0].state.exit_code(), Some(0), "{s:#?}");
    assert!(
        t.logs("offline", "main")
            .await
            .contains("Hello from Wedge!")
    );

    // An image it never held still fails, saying why.
    t.start(pod(
        "never-held",
        &format!("{host}/apps/other:latest"),
        json!({}),
        json!({}),
    ))
    .await;
    let message = t.wait_waiting("never-held", "ErrImagePull").await;
    assert!(message.contains("cannot reach the registry"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached_on_disk_and_in_memory() {
    let root = tempfile::tempdir().expect("dir");
    let root_path = root.path().to_owned();
    let t = TestRuntime::at(root, &[]);
    let image = t.local_image("hello").await;
    async fn cache_of(t: &TestRuntime, uid: &str) -> Option<CacheOutcome> {
        t.container_stats(uid, "main").await.and_then(|s| s.cache)
    }

    t.start(pod("first", &image, json!({}), json!({}))).await;
    t.wait_for("first", "first run", terminated).await;
    assert_eq!(cache_of(&t, "first").await, Some(CacheOutcome::Compiled));
    t.start(pod("second", &image, json!({}), json!({}))).await;
    t.wait_for("second", "second run", terminated).await;
    assert_eq!(cache_of(&t, "second").await, Some(CacheOutcome::Memory));
    let artifacts: Vec<_> = walk(&root_path.join("wasm/compiled"))
        .into_iter()
        .filter(|p| p.ends_with(".cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");

    // A new runtime on the same root, as after a restart of the edge: loaded, not compiled.
    let TestRuntime {
        rt, root, workers, ..
    } = t;
    workers.detach_all();
    rt.shutdown().await;
    drop((rt, workers));
    let t = TestRuntime::at(root, &[]);
    t.start(pod(
        "third",
        &image,
        json!({"imagePullPolicy": "Never"}),
        json!({}),
    ))
    .await;
    let s = t.wait_for("third", "third run", terminated).await;
    assert_eq!(s.containers[0].state.exit_code(), Some(0));
    assert_eq!(cache_of(&t, "third").await, Some(CacheOutcome::Disk));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
