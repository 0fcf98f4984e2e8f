//! Bad input gets a clear reason, and the rest keeps running: bad images and components, and
//! guests that trap, loop or eat memory.

use std::time::{Duration, Instant};

use serde_json::json;
use wedge_testkit::oci::{self, Blob, Image, WasmLayout, media_type};
use wedge_testkit::registry::Registry;

use crate::wasm::harness::{
    TestRuntime, apps, assert_terminated, pod, push_hello, running, terminated,
};

/// A healthy app that logs every 50 ms: it must keep running whatever the others do.
async fn start_bystander(t: &TestRuntime) -> String {
    let image = t.local_image("telemetry").await;
    let uid = t
        .start(pod(
            "bystander",
            &image,
            json!({"env": [{"name": "INTERVAL_MS", "value": "50"}]}),
            json!({}),
        ))
        .await;
    t.wait_for_log(&uid, "main", "tick 2 ").await;
    uid
}

async fn assert_bystander_alive(t: &TestRuntime, uid: &str) {
    let s = t.pod_status(uid).expect("bystander known");
    assert!(running(&s), "the bystander stopped: {s:#?}");
    // Still ticking: the tick after the last one logged so far arrives.
    let last = t
        .logs(uid, "main")
        .await
        .lines()
        .filter_map(|l| {
            l.split("tick ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("the bystander has ticked");
    t.wait_for_log(uid, "main", &format!("tick {} ", last + 1))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_components_get_clear_reasons() {
    let registry = Registry::start().expect("registry");
    let host = registry.host();
    let t = TestRuntime::new(std::slice::from_ref(&host));
    let bystander = start_bystander(&t).await;
    let hello = apps().bytes("hello").expect("hello");

    push_hello(&host, "apps/hello", "1", WasmLayout::CncfArtifact).await;
    let corrupt = Image::wasm(&hello, WasmLayout::ComponentLayer);
    oci::push(&host, "apps/corrupt", "1", &corrupt)
        .await
        .expect("push");
    registry
        .corrupt_blob(&corrupt.layers[0].digest())
        .expect("corrupted");
    let not_wasm = Image::custom(
        Blob::new(media_type::WASM_CONFIG, b"{}".to_vec()),
        vec![Blob::new(
            media_type::WASM,
            b"#!/bin/sh\necho hi\n".to_vec(),
        )],
    );
    oci::push(&host, "apps/not-wasm", "1", &not_wasm)
        .await
        .expect("push");
    oci::push(&host, "apps/busybox", "1", &Image::container())
        .await
        .expect("push");
    let unknown = Image::custom(
        Blob::new(
            media_type::OCI_CONFIG,
            br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
        ),
        vec![Blob::new("application/x-something-else", b"??".to_vec())],
    );
    oci::push(&host, "apps/unknown", "1", &unknown)
        .await
        .expect("push");
    let core = wat::parse_str("(module)").expect("wat");
    oci::push(
        &host,
        "apps/core",
        "1",
        &Image::wasm(&core, WasmLayout::CncfArtifact),
    )
    .await
    .expect("push");
    let malformed = b"\0asm\x0d\0\x01\0 this is not a component".to_vec();
    oci::push(
        &host,
        "apps/malformed",
        "1",
        &Image::wasm(&malformed, WasmLayout::CncfArtifact),
    )
    .await
    .expect("push");
    let missing_import = wat::parse_str(
        r#"(component (import "acme:missing/thing@1.0.0" (instance (export "poke" (func)))))"#,
    )
    .expect("wat");
    oci::push(
        &host,
        "apps/missing-import",
        "1",
        &Image::wasm(&missing_import, WasmLayout::CncfArtifact),
    )
    .await
    .expect("push");
    let inert = wat::parse_str("(component)").expect("wat");
    oci::push(
        &host,
        "apps/inert",
        "1",
        &Image::wasm(&inert, WasmLayout::CncfArtifact),
    )
    .await
    .expect("push");

    let cases = [
        ("missing-tag", "apps/hello:2", "ErrImagePull", "not found"),
        (
            "missing-repo",
            "apps/nothing:1",
            "ErrImagePull",
            "not found",
        ),
        ("digest", "apps/corrupt:1", "ErrImagePull", "digest"),
        (
            "not-wasm",
            "apps/not-wasm:1",
            "ErrImagePull",
            "does not hold a Wasm binary",
        ),
        (
            "container",
            "apps/busybox:1",
            "ErrImagePull",
            "container image, not Wasm",
        ),
        ("unknown", "apps/unknown:1", "ErrImagePull", "no Wasm layer"),
        ("core", "apps/core:1", "ErrImagePull", "core Wasm module"),
        (
            "malformed",
            "apps/malformed:1",
            "CreateContainerError",
            "invalid Wasm component",
        ),
        (
            "import",
            "apps/missing-import:1",
            "CreateContainerError",
            "acme:missing/thing",
        ),
        (
            "inert",
            "apps/inert:1",
            "CreateContainerError",
            "exports neither",
        ),
    ];
    for (uid, image, _, _) in &cases {
        t.start(pod(uid, &format!("{host}/{image}"), json!({}), json!({})))
            .await;
    }
    for (uid, _, reason, needle) in &cases {
        let message = t.wait_waiting(uid, reason).await;
        assert!(
            message.contains(needle),
            "{uid}: {message:?} should mention {needle:?}"
        );
    }
    assert_bystander_alive(&t, &bystander).await;

    // A spec the runtime cannot honour is refused before anything starts.
    let bad = pod(
        "bad-spec",
        "x:1",
        json!({"resources": {"limits": {"memory": "a lot"}}}),
        json!({}),
    );
    let e = t.start_pod(&bad).await.expect_err("refused");
    assert!(e.to_string().contains("resources.limits.memory"), "{e}");
    assert!(t.pod_status("bad-spec").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_guests_are_stopped_and_the_rest_keeps_running() {
    let t = TestRuntime::new(&[]);
    let bystander = start_bystander(&t).await;
    let image = t.local_image("misbehave").await;

    t.start(pod("trap", &image, json!({"args": ["trap"]}), json!({})))
        .await;
    t.start(pod(
        "bomb",
        &image,
        json!({"args": ["membomb"], "resources": {"limits": {"memory": "32Mi"}}}),
        json!({}),
    ))
    .await;
    t.start(pod("spin", &image, json!({"args": ["spin"]}), json!({})))
        .await;

    let s = t.wait_for("trap", "the trap", terminated).await;
    assert_terminated(&s, 134, "Error", "unreachable");
    assert!(t.logs("trap", "main").await.contains("about to trap"));

    let s = t.wait_for("bomb", "the OOM kill", terminated).await;
    assert_terminated(&s, 137, "OOMKilled", "memory limit");
    let stats = t.container_stats("bomb", "main").await.expect("stats");
    assert!(stats.memory_bytes <= 32 << 20, "{stats:?}");

    // The spinning guest holds no thread to itself: the bystander still ticks.
    t.wait_for_log("spin", "main", "spinning").await;
    assert_bystander_alive(&t, &bystander).await;
    assert!(running(&t.pod_status("spin").expect("spin")));

    // Deleting the pod stops the loop within the grace period.
    let started = Instant::now();
    t.stop_pod("spin", Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(t.pod_status("spin").is_none());
    assert!(t.container_stats("spin", "main").await.is_none());
    assert_bystander_alive(&t, &bystander).await;
}
