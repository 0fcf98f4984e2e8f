//! The `wedge` binary as operators use it: real processes, a real registry.

use std::process::{Command, Output};

use wedge_testkit::oci::{self, Image, WasmLayout};
use wedge_testkit::registry::Registry;
use wedge_testkit::sample_apps;

fn wedge(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("wedge runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn wasm_run_keeps_compiled_components_across_process_restarts() {
    let apps = sample_apps::build().expect("sample apps");
    let root = tempfile::tempdir().expect("dir");
    let hello = apps.path("hello");
    let hello = hello.to_str().expect("utf-8 path");

    let first = wedge(root.path(), &["wasm", "run", hello, "--", "one", "two"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("Hello from Wedge!\nargs: one two"),
        "{}",
        text(&first.stdout)
    );
    assert!(
        text(&first.stderr).contains("component compiled now"),
        "{}",
        text(&first.stderr)
    );

    let second = wedge(root.path(), &["wasm", "run", "-e", "NAME=edge", hello]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(text(&second.stdout).contains("Hello from edge!"));
    assert!(
        text(&second.stderr).contains("loaded precompiled from the cache"),
        "{}",
        text(&second.stderr)
    );

    let trap = wedge(
        root.path(),
        &[
            "wasm",
            "run",
            apps.path("misbehave").to_str().expect("path"),
            "--",
            "trap",
        ],
    );
    assert_eq!(trap.status.code(), Some(134), "{}", text(&trap.stderr));
    assert!(text(&trap.stderr).contains("unreachable"));

    let bomb = wedge(
        root.path(),
        &[
            "wasm",
            "run",
            "--memory",
            "16Mi",
            apps.path("misbehave").to_str().expect("path"),
            "--",
            "membomb",
        ],
    );
    assert_eq!(bomb.status.code(), Some(137));
    assert!(
        text(&bomb.stderr).contains("OOMKilled"),
        "{}",
        text(&bomb.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_run_pulls_and_image_import_serves_air_gapped_edges() {
    let apps = sample_apps::build().expect("sample apps");
    let registry = Registry::start().expect("registry");
    let host = registry.host();
    let hello = apps.bytes("hello").expect("hello");
    oci::push(
        &host,
        "apps/hello",
        "1",
        &Image::wasm(&hello, WasmLayout::ComponentLayer),
    )
    .await
    .expect("push");
    let root = tempfile::tempdir().expect("dir");

    let image = format!("{host}/apps/hello:1");
    let out = wedge(
        root.path(),
        &["wasm", "run", "--insecure-registry", &host, &image],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Hello from Wedge!"));

    let missing = format!("{host}/apps/hello:2");
    let out = wedge(
        root.path(),
        &["wasm", "run", "--insecure-registry", &host, &missing],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found in the registry"),
        "{}",
        text(&out.stderr)
    );

    let work = tempfile::tempdir().expect("dir");
    let tar = work.path().join("hello.tar");
    oci::write_layout_tar(&tar, "9", &Image::wasm(&hello, WasmLayout::CncfArtifact)).expect("tar");
    let out = wedge(
        root.path(),
        &[
            "image",
            "import",
            tar.to_str().expect("path"),
            "--name",
            "offline.example/hello:9",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = wedge(root.path(), &["image", "list"]);
    assert!(
        text(&out.stdout).contains("offline.example/hello:9"),
        "{}",
        text(&out.stdout)
    );
    let out = wedge(
        root.path(),
        &["wasm", "run", "--pull", "Never", "offline.example/hello:9"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Hello from Wedge!"));
}
