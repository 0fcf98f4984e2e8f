//! The container lifecycle: restart policies with backoff, CRI logs (`--previous`, `-f`), the WASI
//! context from the spec (args, env, volumes), and CPU limits.

use std::time::{Duration, Instant};

use serde_json::json;
use wedge_core::crilog;
use wedge_core::crilog::LogOptions;
use wedge_core::status::{ContainerState, PodPhase};

use crate::wasm::harness::{TestRuntime, pod, terminated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_follow_kubernetes() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let fail = json!({"args": ["exit", "1"]});
    let ok = json!({"args": ["print", "1"]});
    t.start(pod(
        "onfailure-fails",
        &image,
        fail.clone(),
        json!({"restartPolicy": "OnFailure"}),
    ))
    .await;
    t.start(pod(
        "onfailure-ok",
        &image,
        ok.clone(),
        json!({"restartPolicy": "OnFailure"}),
    ))
    .await;
    t.start(pod(
        "always-ok",
        &image,
        ok,
        json!({"restartPolicy": "Always"}),
    ))
    .await;
    t.start(pod(
        "never-fails",
        &image,
        fail,
        json!({"restartPolicy": "Never"}),
    ))
    .await;

    let s = t
        .wait_for("onfailure-fails", "two restarts", |s| {
            s.containers[0].restart_count >= 2
        })
        .await;
    assert_eq!(s.phase, PodPhase::Running);
    let last = s.containers[0].last_state.as_ref().expect("last state");
    assert!(
        matches!(last, ContainerState::Terminated { exit_code: 1, reason, .. } if reason == "Error"),
        "{last:?}"
    );
    let s = t
        .wait_for("onfailure-fails", "back-off", |s| {
            s.containers[0].state.reason() == Some("CrashLoopBackOff")
        })
        .await;
    assert!(
        matches!(&s.containers[0].state, ContainerState::Waiting { message: Some(m), .. } if m.contains("back-off"))
    );

    let s = t
        .wait_for("onfailure-ok", "success", |s| {
            s.phase == PodPhase::Succeeded
        })
        .await;
    assert_eq!(s.containers[0].restart_count, 0);
    let s = t
        .wait_for("always-ok", "a restart after success", |s| {
            s.containers[0].restart_count >= 1
        })
        .await;
    assert_eq!(s.phase, PodPhase::Running);
    let s = t
        .wait_for("never-fails", "failure", |s| s.phase == PodPhase::Failed)
        .await;
    assert_eq!(
        (
            s.containers[0].restart_count,
            s.containers[0].state.exit_code()
        ),
        (0, Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_written_in_the_cri_format_and_kept_across_restarts() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let uid = t
        .start(pod(
            "printer",
            &image,
            json!({"args": ["print", "3"]}),
            json!({"restartPolicy": "Always"}),
        ))
        .await;
    t.wait_for(&uid, "a restart", |s| s.containers[0].restart_count >= 1)
        .await;

    let file = t
        .root
        .path()
        .join(format!("pods/default_pod-printer_{uid}/main/0.log"));
    let raw = std::fs::read(&file).expect("log file in kubelet's layout");
    let records: Vec<_> = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| crilog::parse_record(l).expect("every line is a CRI record"))
        .collect();
    let contents: Vec<&[u8]> = records.iter().map(|r| r.content).collect();
    assert_eq!(contents, [&b"line 0"[..], b"line 1", b"line 2"]);
    assert!(
        records
            .iter()
            .all(|r| r.stream == crilog::Stream::Stdout && r.tag == crilog::Tag::Full)
    );

    let previous = LogOptions {
        previous: true,
        ..Default::default()
    };
    let log = t
        .container_logs(&uid, "main", &previous)
        .await
        .expect("previous log");
    assert_eq!(String::from_utf8_lossy(&log), "line 0\nline 1\nline 2\n");
    let tail = LogOptions {
        previous: true,
        tail_lines: Some(1),
        timestamps: true,
        ..Default::default()
    };
    let log = String::from_utf8(t.container_logs(&uid, "main", &tail).await.expect("tail"))
        .expect("utf-8");
    assert!(
        log.ends_with(" line 2\n") && log.lines().count() == 1,
        "{log}"
    );
    let e = t
        .container_logs(&uid, "nope", &LogOptions::default())
        .await
        .expect_err("no such container");
    assert!(e.to_string().contains("nope"));

    // A line longer than 16 KiB is split into partial records and joined again on reading.
    let uid = t
        .start(pod(
            "long",
            &image,
            json!({"args": ["long", "40000"]}),
            json!({}),
        ))
        .await;
    t.wait_for(&uid, "the long line", terminated).await;
    let raw = std::fs::read(
        t.root
            .path()
            .join(format!("pods/default_pod-long_{uid}/main/0.log")),
    )
    .expect("log");
    let tags: Vec<_> = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| crilog::parse_record(l).expect("record").tag)
        .collect();
    assert_eq!(
        tags,
        [
            crilog::Tag::Partial,
            crilog::Tag::Partial,
            crilog::Tag::Full
        ]
    );
    assert_eq!(
        t.logs(&uid, "main").await,
        format!("{}\n", "x".repeat(40000))
    );
}

/// `kubectl logs -f`: lines come as the guest writes them, and the follow ends when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_streams_the_guest_until_it_exits() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("telemetry").await;
    let env = json!([{"name": "INTERVAL_MS", "value": "300"}, {"name": "MAX_TICKS", "value": "4"}]);
    let uid = t
        .start(pod("follow", &image, json!({"env": env}), json!({})))
        .await;
    t.wait_for_log(&uid, "main", "tick 1 ").await;
    let options = LogOptions {
        follow: true,
        timestamps: true,
        ..Default::default()
    };
    let mut reader = t
        .workers
        .open_logs("default", "pod-follow", "main", options)
        .await
        .expect("follow");
    let followed = tokio::time::timeout(Duration::from_secs(60), async {
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next().await {
            chunks.push(String::from_utf8(chunk.expect("chunk").to_vec()).expect("utf-8"));
        }
        chunks
    })
    .await
    .expect("the follow ends when the guest exits");
    let log = followed.concat();
    assert!(followed.len() > 1, "written as it came: {followed:?}");
    assert!(log.contains(" telemetry: tick 4 "), "{log}");
    assert!(log.ends_with(" telemetry: done after 4 ticks\n"), "{log}");
    assert!(terminated(&t.pod_status(&uid).expect("status")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_env_and_volumes_reach_the_guest() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let env = json!([
        {"name": "GREETING", "value": "hello edge"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]);
    let uid = t
        .start(pod(
            "env",
            &image,
            json!({"args": ["env"], "env": env}),
            json!({}),
        ))
        .await;
    t.wait_for(&uid, "env", terminated).await;
    let log = t.logs(&uid, "main").await;
    assert!(
        log.contains("GREETING=hello edge") && log.contains("POD_NAME=pod-env"),
        "{log}"
    );

    let host = tempfile::tempdir().expect("dir");
    let volumes = json!({"volumes": [
        {"name": "data", "hostPath": {"path": host.path(), "type": "Directory"}},
        {"name": "scratch", "emptyDir": {}},
    ]});
    let mounts = |ro: bool| json!([{"name": "data", "mountPath": "/data", "readOnly": ro}, {"name": "scratch", "mountPath": "/scratch"}]);
    let w = t
        .start(pod(
            "writer",
            &image,
            json!({"args": ["write", "/data/out.txt", "from wasm"], "volumeMounts": mounts(false)}),
            volumes.clone(),
        ))
        .await;
    let s = t.wait_for(&w, "the write", terminated).await;
    assert_eq!(s.containers[0].state.exit_code(), Some(0), "{s:#?}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).expect("written on the host"),
        "from wasm"
    );

    let r = t
        .start(pod(
            "reader",
            &image,
            json!({"args": ["read", "/data/out.txt"], "volumeMounts": mounts(true)}),
            volumes.clone(),
        ))
        .await;
    t.wait_for(&r, "the read", terminated).await;
    assert!(t.logs(&r, "main").await.contains("read: from wasm"));

    let ro = t
        .start(pod(
            "ro",
            &image,
            json!({"args": ["write", "/data/nope.txt", "x"], "volumeMounts": mounts(true)}),
            volumes.clone(),
        ))
        .await;
    let s = t.wait_for(&ro, "the refused write", terminated).await;
    assert_eq!(s.containers[0].state.exit_code(), Some(1));
    assert!(t.logs(&ro, "main").await.contains("write /data/nope.txt"));
    assert!(!host.path().join("nope.txt").exists());

    let e = t
        .start(pod(
            "scratch",
            &image,
            json!({"args": ["write", "/scratch/tmp.txt", "temp"], "volumeMounts": mounts(false)}),
            volumes,
        ))
        .await;
    t.wait_for(&e, "the scratch write", terminated).await;
    let scratch = t.root.path().join(format!(
        "pods/default_pod-scratch_{e}/volumes/scratch/tmp.txt"
    ));
    assert_eq!(
        std::fs::read_to_string(scratch).expect("emptyDir lives in the pod's directory"),
        "temp"
    );
}

fn iterations(log: &str) -> u64 {
    log.lines()
        .find_map(|l| {
            l.strip_prefix("busy: ")?
                .strip_suffix(" iterations")?
                .parse()
                .ok()
        })
        .expect("busy prints its iterations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limits_throttle_guest_execution() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let busy = |cpu: Option<&str>| {
        let limits = cpu.map_or(json!({}), |c| json!({"cpu": c}));
        json!({"args": ["busy", "600"], "resources": {"limits": limits}})
    };
    let free = t.start(pod("free", &image, busy(None), json!({}))).await;
    t.wait_for(&free, "the unlimited run", terminated).await;
    let limited = t
        .start(pod("limited", &image, busy(Some("100m")), json!({})))
        .await;
    t.wait_for(&limited, "the limited run", terminated).await;

    let (free_n, limited_n) = (
        iterations(&t.logs(&free, "main").await),
        iterations(&t.logs(&limited, "main").await),
    );
    let free_cpu = t.container_stats(&free, "main").await.expect("stats").cpu;
    let limited_cpu = t
        .container_stats(&limited, "main")
        .await
        .expect("stats")
        .cpu;
    // 100m allows 10 ms of guest time per 100 ms: about 60 ms over 600 ms of wall time.
    assert!(
        limited_cpu < Duration::from_millis(250),
        "limited guest ran {limited_cpu:?}"
    );
    assert!(
        free_cpu > Duration::from_millis(300),
        "unlimited guest ran only {free_cpu:?}"
    );
    assert!(
        limited_n * 2 < free_n,
        "limited {limited_n} vs unlimited {free_n} iterations"
    );
}

/// A guest that writes far more than its log's channel holds (64 writes) and exits at once:
/// by the time its status says it exited, its log has every line, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_guests_log_has_every_line_it_wrote() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let lines = 20_000;
    let uid = t
        .start(pod(
            "burst",
            &image,
            json!({"args": ["print", lines.to_string()]}),
            json!({"restartPolicy": "Never"}),
        ))
        .await;
    t.wait_for(&uid, "the guest to exit", terminated).await;
    let log = t.logs(&uid, "main").await;
    let expected: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    assert!(
        log == expected,
        "{} lines of {lines}, the last {:?}",
        log.lines().count(),
        log.lines().last()
    );
}

/// edgecore exiting: the Wasm runtime stops every guest at once and returns once each has
/// ended, its log written out without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_guest_with_its_log_written_out() {
    use wedge_core::runtime::{ContainerState as Cri, RuntimeService};

    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let fast = t
        .start(pod(
            "fast",
            &image,
            json!({"args": ["ticks", "1"]}),
            json!({"restartPolicy": "Never"}),
        ))
        .await;
    let slow = t
        .start(pod(
            "slow",
            &image,
            json!({"args": ["ticks", "10"]}),
            json!({"restartPolicy": "Never"}),
        ))
        .await;
    t.wait_for_log(&fast, "main", "tick 200\n").await;
    t.wait_for_log(&slow, "main", "tick 2\n").await;
    // As edgecore does: Edged lets go of the pods, then the runtime stops.
    t.workers.detach_all();
    t.rt.shutdown().await;
    let containers = t.rt.list_containers(None).await.expect("list");
    assert_eq!(containers.len(), 2);
    for c in &containers {
        assert!(matches!(c.state, Cri::Exited(_)), "{c:?}");
    }
    for (uid, name) in [(&fast, "fast"), (&slow, "slow")] {
        let file = t
            .root
            .path()
            .join(format!("pods/default_pod-{name}_{uid}/main/0.log"));
        let raw = std::fs::read(&file).expect("the guest's log");
        let mut shown = Vec::new();
        let mut renderer = crilog::LogRenderer::new(&LogOptions::default());
        renderer.push(&raw, &mut shown);
        renderer.finish(&mut shown);
        let shown = String::from_utf8(shown).expect("utf-8");
        assert!(shown.ends_with('\n'), "{shown}");
        for (i, line) in shown.lines().enumerate() {
            assert_eq!(
                line,
                format!("tick {i}"),
                "no gap, no repeat in {name}'s log"
            );
        }
    }
}

/// A guest printing as fast as it can takes a bounded share of the disk: its log is rotated at
/// 10 MiB, as the kubelet rotates logs, and only the newest 5 files are kept (the defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_guests_log_is_rotated_and_bounded() {
    let limits = wedge_core::logrotation::LogLimits::default();
    let (max_bytes, max_files) = (limits.max_bytes, limits.max_files);

    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let flood = t
        .start(pod(
            "flood",
            &image,
            json!({"args": ["flood"]}),
            json!({"restartPolicy": "Never"}),
        ))
        .await;
    let dir = t
        .root
        .path()
        .join(format!("pods/default_pod-flood_{flood}/main"));
    // Every file of the log stays under the size plus one write batch, all of them together
    // under the cap, while rotated files come and the oldest go.
    let cap_per_file = max_bytes + 1024 * 1024;
    let mut rotated_seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while rotated_seen.len() <= max_files {
        assert!(
            Instant::now() < deadline,
            "the log was not rotated past {max_files} files: {rotated_seen:?}"
        );
        let files: Vec<(String, u64)> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        Some((
                            e.file_name().to_string_lossy().into_owned(),
                            e.metadata().ok()?.len(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(files.len() <= max_files, "{files:?}");
        for (name, len) in &files {
            assert!(*len <= cap_per_file, "{name}: {len} bytes");
            if name.starts_with("0.log.") {
                rotated_seen.insert(name.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.stop_pod(&flood, Duration::from_secs(1)).await;
}
