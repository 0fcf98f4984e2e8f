//! The kubelet's job as Edged does it, against a scripted runtime with paused time: restart
//! policies and the crash-loop backoff, image-pull backoff, init containers, grace periods,
//! adoption after a restart, and a runtime that goes away.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;
use wedge_core::status::{ContainerState, PodPhase, PodStatusReport};

use super::fake::{FAKE_STATS, Fake, RUN_FOR};
use super::plan::{PodPlan, plan_pod};
use super::pod_workers::{Placement, PodWorkers, WorkerConfig};
use super::runtimes::{RuntimeHandle, Runtimes};

struct Harness {
    fake: Fake,
    workers: PodWorkers,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let fake = Fake::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let workers = PodWorkers::new(
        Runtimes::new().with(RuntimeHandle::new(Arc::new(fake.clone()))),
        WorkerConfig::new(dir.path().join("pods")),
    );
    Harness {
        fake,
        workers,
        _dir: dir,
    }
}

impl Harness {
    fn plan(&self, uid: &str, spec: serde_json::Value) -> PodPlan {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("pod-{uid}"), "namespace": "default", "uid": uid},
            "spec": spec,
        }))
        .expect("pod");
        plan_pod(&pod, &self.workers.config().pods_root).expect("plan")
    }

    fn start(&self, uid: &str, spec: serde_json::Value) {
        let plan = self.plan(uid, spec);
        self.workers
            .start(plan, Default::default(), Default::default())
            .expect("started");
    }

    /// Waits (in paused time, bounded to an hour of it) until `pred` holds.
    async fn wait_for(
        &self,
        uid: &str,
        what: &str,
        pred: impl Fn(&PodStatusReport) -> bool,
    ) -> PodStatusReport {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let status = self.workers.status(uid);
            if let Some(s) = status.as_ref().filter(|s| pred(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:#?}\ncalls: {:#?}",
                self.fake.calls()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn one(container: serde_json::Value, policy: &str) -> serde_json::Value {
    let mut c = serde_json::json!({"name": "main", "image": "r/app:1"});
    if let (Some(c), serde_json::Value::Object(extra)) = (c.as_object_mut(), container) {
        c.extend(extra);
    }
    serde_json::json!({"restartPolicy": policy, "terminationGracePeriodSeconds": 30, "containers": [c]})
}

fn reason(s: &PodStatusReport) -> Option<&str> {
    s.containers[0].state.reason()
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_backs_off_as_the_kubelet_does() {
    let h = harness();
    h.fake.script("main", &[Some(1), Some(1), Some(1), None]);
    h.start("crash", one(serde_json::json!({}), "Always"));
    let t0 = Instant::now();
    let s = h
        .wait_for("crash", "the first back-off", |s| {
            reason(s) == Some("CrashLoopBackOff")
        })
        .await;
    assert_eq!(s.phase, PodPhase::Running);
    let last = s.containers[0].last_state.clone().expect("last state");
    assert!(
        matches!(last, ContainerState::Terminated { exit_code: 1, ref reason, .. } if reason == "Error")
    );
    assert!(
        matches!(&s.containers[0].state, ContainerState::Waiting { message: Some(m), .. } if m.contains("back-off 10s"))
    );
    let s = h
        .wait_for("crash", "the third instance running", |s| {
            s.containers[0].restart_count == 3 && s.containers[0].state.is_running()
        })
        .await;
    // Three runs of a second each, and back-offs of 10, 20 and 40 s between them.
    let took = t0.elapsed();
    assert!(
        took >= RUN_FOR * 3 + Duration::from_secs(70) && took < Duration::from_secs(80),
        "{took:?}"
    );
    assert_eq!(s.phase, PodPhase::Running);
    // Every instance got the next attempt number; each ended instance was removed.
    let calls = h.fake.calls();
    for attempt in 0..4 {
        assert!(
            calls.contains(&format!("create main#{attempt}")),
            "{calls:?}"
        );
    }
    assert_eq!(calls.iter().filter(|c| c.starts_with("remove ")).count(), 3);
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_the_phase() {
    let h = harness();
    h.fake.script("main", &[Some(0)]);
    h.start("ok", one(serde_json::json!({}), "OnFailure"));
    let s = h
        .wait_for("ok", "success", |s| s.phase == PodPhase::Succeeded)
        .await;
    assert_eq!(s.containers[0].restart_count, 0);
    assert_eq!(reason(&s), Some("Completed"));
    // A finished pod keeps its (stopped) sandbox and its logs until it is stopped.
    h.workers.wait("ok").await.expect("known");
    assert!(
        !h.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("remove_sandbox")),
    );
    h.workers.stop("ok", Duration::from_secs(30)).await;
    assert!(
        h.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("remove_sandbox"))
    );
    assert!(h.workers.status("ok").is_none());

    let h = harness();
    h.fake.script("main", &[Some(3)]);
    h.start("never", one(serde_json::json!({}), "Never"));
    let s = h
        .wait_for("never", "failure", |s| s.phase == PodPhase::Failed)
        .await;
    assert_eq!(s.containers[0].state.exit_code(), Some(3));
    let finished = h.workers.wait("never").await.expect("known");
    assert_eq!(finished.phase, PodPhase::Failed);
}

#[tokio::test(start_paused = true)]
async fn image_pulls_are_retried_with_backoff() {
    let h = harness();
    h.fake.fail_pulls("r/app:1", 2);
    h.start("pull", one(serde_json::json!({}), "Always"));
    let s = h
        .wait_for("pull", "ErrImagePull", |s| {
            reason(s) == Some("ErrImagePull")
        })
        .await;
    let message = match &s.containers[0].state {
        ContainerState::Waiting { message, .. } => message.clone().unwrap_or_default(),
        other => panic!("{other:?}"),
    };
    assert!(message.contains("manifest unknown"), "{message}");
    h.wait_for("pull", "ImagePullBackOff", |s| {
        reason(s) == Some("ImagePullBackOff")
    })
    .await;
    let s = h
        .wait_for("pull", "running", |s| s.containers[0].state.is_running())
        .await;
    assert_eq!(
        s.containers[0].restart_count, 0,
        "pull retries are not restarts"
    );
    let pulls = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("pull "))
        .count();
    assert_eq!(pulls, 3);

    // IfNotPresent finds it held and does not pull again; Never without it waits, saying why.
    h.start(
        "held",
        one(
            serde_json::json!({"imagePullPolicy": "IfNotPresent"}),
            "Always",
        ),
    );
    h.wait_for("held", "running", |s| s.containers[0].state.is_running())
        .await;
    assert_eq!(
        h.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("pull "))
            .count(),
        3
    );
    h.start(
        "absent",
        one(
            serde_json::json!({"image": "r/other:1", "imagePullPolicy": "Never"}),
            "Always",
        ),
    );
    let s = h
        .wait_for("absent", "ErrImagePull", |s| {
            reason(s) == Some("ErrImagePull")
        })
        .await;
    assert!(
        matches!(&s.containers[0].state, ContainerState::Waiting { message: Some(m), .. } if m.contains("imagePullPolicy is Never"))
    );
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_the_others() {
    let h = harness();
    h.fake.script("first", &[Some(0)]);
    h.fake.script("second", &[Some(1), Some(0)]);
    h.start(
        "init",
        serde_json::json!({
            "restartPolicy": "Always",
            "initContainers": [{"name": "first", "image": "r/a:1"}, {"name": "second", "image": "r/b:1"}],
            "containers": [{"name": "main", "image": "r/app:1"}]
        }),
    );
    let s = h
        .wait_for("init", "the second init container failing", |s| {
            s.init_containers[1].restart_count == 1
        })
        .await;
    assert_eq!(s.phase, PodPhase::Pending);
    assert_eq!(reason(&s), Some("PodInitializing"));
    let s = h
        .wait_for("init", "main running", |s| {
            s.containers[0].state.is_running()
        })
        .await;
    assert_eq!(s.phase, PodPhase::Running);
    let calls = h.fake.calls();
    let at = |what: &str| {
        calls
            .iter()
            .position(|c| c == what)
            .unwrap_or_else(|| panic!("{what} not in {calls:?}"))
    };
    assert!(at("create first#0") < at("create second#0"));
    assert!(at("create second#1") < at("create main#0"));

    // Under Never, a failed init container fails the pod and its containers never start.
    let h = harness();
    h.fake.script("setup", &[Some(2)]);
    h.start(
        "init-fails",
        serde_json::json!({
            "restartPolicy": "Never",
            "initContainers": [{"name": "setup", "image": "r/a:1"}],
            "containers": [{"name": "main", "image": "r/app:1"}]
        }),
    );
    let s = h
        .wait_for("init-fails", "failure", |s| s.phase == PodPhase::Failed)
        .await;
    assert_eq!(s.init_containers[0].state.exit_code(), Some(2));
    assert!(!h.fake.calls().iter().any(|c| c.starts_with("create main")));
}

#[tokio::test(start_paused = true)]
async fn a_stop_gives_each_container_the_grace_period() {
    let h = harness();
    h.fake.stubborn("main");
    h.start(
        "grace",
        serde_json::json!({"terminationGracePeriodSeconds": 7,
            "containers": [{"name": "main", "image": "r/app:1"}, {"name": "side", "image": "r/side:1"}]}),
    );
    h.wait_for("grace", "both running", |s| {
        s.containers.iter().all(|c| c.state.is_running())
    })
    .await;
    let t0 = Instant::now();
    h.workers.stop("grace", Duration::from_secs(7)).await;
    let took = t0.elapsed();
    // The stubborn container takes the whole grace period; the other stops at once, in parallel.
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let calls = h.fake.calls();
    assert!(
        calls
            .iter()
            .filter(|c| c.starts_with("stop c") && c.ends_with(" 7s"))
            .count()
            == 2,
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c.starts_with("remove_sandbox")));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_edge_adopts_what_runs() {
    let h = harness();
    h.fake.preexisting("adopt", "main", 4);
    h.fake.preexisting("orphan", "main", 0);
    h.workers.take_inventory().await;
    h.workers.remove_orphans(&["adopt".to_owned()].into()).await;
    h.start("adopt", one(serde_json::json!({}), "Always"));
    let s = h
        .wait_for("adopt", "running", |s| s.containers[0].state.is_running())
        .await;
    assert_eq!(s.containers[0].restart_count, 4);
    assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.9"));
    let calls = h.fake.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("create") || c.starts_with("run_sandbox")),
        "nothing is created again: {calls:?}"
    );
    assert!(calls.contains(&"remove_sandbox sb-old-orphan".to_owned()));
    assert!(!calls.contains(&"remove_sandbox sb-old-adopt".to_owned()));
}

/// The sandboxes the fake holds: id and whether it runs.
async fn sandboxes(fake: &Fake) -> Vec<(String, bool)> {
    use wedge_core::runtime::RuntimeService as _;
    let mut all: Vec<(String, bool)> = fake
        .list_sandboxes()
        .await
        .expect("listed")
        .into_iter()
        .map(|s| (s.id, s.ready))
        .collect();
    all.sort();
    all
}

/// What `kubectl logs` shows of the pod's `main` container.
async fn logs(workers: &PodWorkers, pod: &str) -> String {
    let mut reader = workers
        .open_logs("default", pod, "main", Default::default())
        .await
        .expect("logs open");
    let mut text = Vec::new();
    while let Some(chunk) = reader.next().await {
        text.extend_from_slice(&chunk.expect("read"));
    }
    String::from_utf8(text).expect("utf-8")
}

#[tokio::test(start_paused = true)]
async fn a_finished_pod_stops_its_sandbox_keeps_its_logs_and_goes_at_deletion() {
    // Succeeded, Failed, and Succeeded after a failure: each pod's sandbox stops (its network
    // goes) as soon as nothing will run in it again, not before.
    for (policy, exits, phase) in [
        ("Never", vec![Some(0)], PodPhase::Succeeded),
        ("Never", vec![Some(3)], PodPhase::Failed),
        ("OnFailure", vec![Some(1), Some(0)], PodPhase::Succeeded),
    ] {
        let h = harness();
        h.fake.script("main", &exits);
        h.start("job", one(serde_json::json!({}), policy));
        let running = h
            .wait_for("job", "running", |s| s.containers[0].state.is_running())
            .await;
        assert_eq!(running.phase, PodPhase::Running);
        assert_eq!(sandboxes(&h.fake).await, [("sb1".to_owned(), true)]);
        let finished = h.workers.wait("job").await.expect("known");
        assert_eq!(finished.phase, phase, "{policy} {exits:?}");
        let code = exits.last().copied().flatten();
        assert_eq!(finished.containers[0].state.exit_code(), code);
        assert_eq!(
            sandboxes(&h.fake).await,
            [("sb1".to_owned(), false)],
            "stopped, not removed: {:?}",
            h.fake.calls()
        );
        // What the user reads is unchanged: the status and exit code, and the log.
        let after = h.workers.status("job").expect("known");
        assert_eq!(after, finished);
        assert_eq!(after.pod_ip.as_deref(), Some("10.88.0.1"));
        let attempt = exits.len() - 1;
        assert!(
            logs(&h.workers, "pod-job")
                .await
                .contains(&format!("main#{attempt} started")),
        );
        h.workers.stop("job", Duration::from_secs(30)).await;
        assert!(sandboxes(&h.fake).await.is_empty());
        assert!(h.fake.calls().contains(&"remove_sandbox sb1".to_owned()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_fails_to_stop_a_finished_pods_sandbox_is_asked_again() {
    let h = harness();
    h.fake.script("main", &[Some(0)]);
    h.start("job", one(serde_json::json!({}), "Never"));
    h.wait_for("job", "running", |s| s.containers[0].state.is_running())
        .await;
    h.fake.set_down(true);
    h.wait_for("job", "succeeded", |s| s.phase == PodPhase::Succeeded)
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while h
        .fake
        .calls()
        .iter()
        .filter(|c| *c == "stop_sandbox sb1")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:?}", h.fake.calls());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.fake.set_down(false);
    h.workers.wait("job").await.expect("known");
    assert_eq!(sandboxes(&h.fake).await, [("sb1".to_owned(), false)]);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_edge_runs_no_finished_pod_again_and_removes_it_at_deletion() {
    let h = harness();
    // Finished before the restart: its sandbox stopped, its container exited 0.
    h.fake.preexisting_exited("done", "main", 0, false);
    // Finished, but the restart came before its sandbox was stopped.
    h.fake.preexisting_exited("late", "main", 0, true);
    // Stopped before it finished (the host restarted): it runs again.
    h.fake.preexisting_exited("cut", "main", 1, false);
    h.workers.take_inventory().await;
    assert_eq!(
        h.workers.leftovers(),
        ["done", "late", "cut"].map(str::to_owned).into()
    );

    // Edged does not start a pod whose status says it finished; its sandbox stops.
    h.workers.stop_leftovers(&["late".to_owned()].into()).await;
    assert!(
        h.fake
            .calls()
            .contains(&"stop_sandbox sb-old-late".to_owned())
    );

    // A pod whose status had not yet said so is found finished in the runtime, and its log is
    // the one its container wrote before the restart.
    let plan = h.plan("done", one(serde_json::json!({}), "Never"));
    let log = plan.dir.join("main").join("0.log");
    std::fs::create_dir_all(log.parent().expect("dir")).expect("mkdir");
    std::fs::write(&log, "2026-12-05T10:00:00.000000000Z stdout F all done\n").expect("log");
    h.workers
        .start(plan, Default::default(), Default::default())
        .expect("started");
    let s = h.workers.wait("done").await.expect("known");
    assert_eq!(s.phase, PodPhase::Succeeded);
    assert_eq!(reason(&s), Some("Completed"));
    assert_eq!(logs(&h.workers, "pod-done").await, "all done\n");

    h.start("cut", one(serde_json::json!({}), "Always"));
    h.wait_for("cut", "running again", |s| {
        s.containers[0].state.is_running()
    })
    .await;
    let calls = h.fake.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("run_sandbox"))
            .count(),
        1,
        "only the pod cut short gets a new sandbox: {calls:?}"
    );
    assert!(calls.contains(&"remove_sandbox sb-old-cut".to_owned()));
    assert!(
        !calls
            .iter()
            .any(|c| c == "remove_sandbox sb-old-done" || c == "remove_sandbox sb-old-late")
    );

    // Deleted: the finished pods' sandboxes go, whether Edged ran the pod again or not.
    h.workers.stop("done", Duration::from_secs(30)).await;
    h.workers.stop("late", Duration::from_secs(30)).await;
    let left: Vec<String> = sandboxes(&h.fake)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, ["sb1"], "{:?}", h.fake.calls());
    assert!(h.workers.leftovers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_goes_away_is_waited_for() {
    let h = harness();
    h.fake.set_down(true);
    h.start("down", one(serde_json::json!({}), "Always"));
    h.wait_for("down", "the runtime's absence, said", |s| {
        matches!(&s.containers[0].state, ContainerState::Waiting { reason, message: Some(m) }
            if reason == "ContainerCreating" && m.contains("unavailable"))
    })
    .await;
    h.fake.set_down(false);
    let s = h
        .wait_for("down", "running once it is back", |s| {
            s.containers[0].state.is_running()
        })
        .await;
    assert_eq!(s.containers[0].restart_count, 0);
}

#[tokio::test(start_paused = true)]
async fn readiness_gates_ready_and_liveness_restarts() {
    let h = harness();
    // Readiness fails twice, then passes; liveness passes until three failures in a row.
    h.fake.exec_codes("main", &[1, 1]);
    h.fake.exec_codes("live", &[0, 1, 1, 1]);
    h.start(
        "probed",
        serde_json::json!({"restartPolicy": "Always", "terminationGracePeriodSeconds": 5, "containers": [
            {"name": "main", "image": "r/app:1",
             "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 5}},
            {"name": "live", "image": "r/app:1",
             "livenessProbe": {"exec": {"command": ["alive"]}, "periodSeconds": 10, "initialDelaySeconds": 3}}
        ]}),
    );
    let s = h
        .wait_for("probed", "running", |s| {
            s.containers.iter().all(|c| c.state.is_running())
        })
        .await;
    assert!(!s.containers[0].ready, "not ready before its probe passes");
    assert!(
        s.containers[1].ready,
        "no readiness probe: ready when running"
    );
    let t0 = Instant::now();
    h.wait_for("probed", "ready", |s| s.containers[0].ready)
        .await;
    // Two failures and a success, five seconds apart.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(11),
        "{took:?}"
    );

    let s = h
        .wait_for("probed", "the liveness restart", |s| {
            s.containers[1].restart_count == 1
        })
        .await;
    let last = s.containers[1].last_state.clone().expect("last state");
    assert!(
        matches!(&last, ContainerState::Terminated { message: Some(m), .. } if m.contains("Liveness probe failed")),
        "{last:?}"
    );
    assert_eq!(
        s.containers[0].restart_count, 0,
        "the other container is left alone"
    );
}

#[tokio::test(start_paused = true)]
async fn pre_stop_runs_before_the_stop_and_post_start_failures_restart() {
    let h = harness();
    h.start(
        "hooks",
        one(
            serde_json::json!({"lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}}),
            "Always",
        ),
    );
    h.wait_for("hooks", "running", |s| s.containers[0].state.is_running())
        .await;
    h.workers.stop("hooks", Duration::from_secs(30)).await;
    let calls = h.fake.calls();
    let drain = calls
        .iter()
        .position(|c| c.starts_with("exec ") && c.ends_with("drain"))
        .expect("preStop ran");
    let stop = calls
        .iter()
        .position(|c| c.starts_with("stop c"))
        .expect("stopped");
    assert!(drain < stop, "{calls:?}");

    let h = harness();
    h.fake.exec_codes("main", &[1]);
    h.start(
        "poststart",
        one(
            serde_json::json!({"lifecycle": {"postStart": {"exec": {"command": ["setup"]}}}}),
            "Always",
        ),
    );
    // As under the kubelet: the instance is killed, its exit names the hook's failure, and the
    // restart policy starts the next one, which counts as a restart.
    let s = h
        .wait_for("poststart", "running after the restart", |s| {
            s.containers[0].state.is_running() && s.containers[0].restart_count == 1
        })
        .await;
    assert!(
        matches!(&s.containers[0].last_state, Some(ContainerState::Terminated { message: Some(m), .. })
            if m.contains("PostStartHookError") && m.contains("not yet")),
        "{:?}",
        s.containers[0].last_state
    );

    // Under `Never` the killed instance stays terminated: the pod fails.
    let h = harness();
    h.fake.exec_codes("main", &[1]);
    h.start(
        "never",
        one(
            serde_json::json!({"lifecycle": {"postStart": {"exec": {"command": ["setup"]}}}}),
            "Never",
        ),
    );
    let s = h
        .wait_for("never", "failed", |s| s.phase == PodPhase::Failed)
        .await;
    assert!(
        matches!(&s.containers[0].state, ContainerState::Terminated { message: Some(m), .. } if m.contains("PostStartHookError")),
        "{:?}",
        s.containers[0].state
    );
    assert_eq!(s.containers[0].restart_count, 0);
}

#[tokio::test(start_paused = true)]
async fn a_mixed_pod_runs_each_container_on_its_runtime_inside_one_network() {
    let (runc, wasm) = (Fake::with_handler("runc"), Fake::with_handler("wasm"));
    let dir = tempfile::tempdir().expect("tempdir");
    let workers = PodWorkers::new(
        Runtimes::new()
            .with(RuntimeHandle::new(Arc::new(wasm.clone())))
            .with(RuntimeHandle::new(Arc::new(runc.clone()))),
        WorkerConfig::new(dir.path().join("pods")),
    );
    let h = Harness {
        fake: runc.clone(),
        workers: workers.clone(),
        _dir: dir,
    };
    runc.script("sidecar", &[Some(0)]);
    wasm.script("app", &[Some(0)]);
    let plan = h.plan(
        "m1",
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [
                {"name": "app", "image": "r/app:1"},
                {"name": "sidecar", "image": "r/box:1"}
            ]
        }),
    );
    let placement = Placement {
        sandbox: Some("runc"),
        containers: [("app".to_owned(), "wasm")].into(),
    };
    workers
        .start(plan, placement, Default::default())
        .expect("started");
    let status = h
        .wait_for("m1", "both containers ran", |s| {
            s.phase == PodPhase::Succeeded
        })
        .await;
    // The pod's address is the container runtime's sandbox's; each container reports the
    // runtime it ran on.
    assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.1"));
    let id_of = |name: &str| {
        status
            .container(name)
            .and_then(|c| c.container_id.clone())
            .unwrap_or_default()
    };
    assert!(id_of("app").starts_with("wasmtime://"), "{}", id_of("app"));
    assert!(
        id_of("sidecar").starts_with("containerd://"),
        "{}",
        id_of("sidecar")
    );
    // The Wasm runtime's sandbox joined the network the container runtime made.
    assert!(runc.calls().contains(&"run_sandbox pod-m1".to_owned()));
    assert!(
        wasm.calls()
            .contains(&"run_sandbox pod-m1 in /var/run/netns/runc-sb1".to_owned()),
        "{:?}",
        wasm.calls()
    );
    assert!(wasm.calls().iter().any(|c| c == "create app#0"));
    assert!(!runc.calls().iter().any(|c| c == "create app#0"));
    assert!(runc.calls().iter().any(|c| c == "create sidecar#0"));

    workers.stop("m1", Duration::from_secs(5)).await;
    for fake in [&runc, &wasm] {
        let calls = fake.calls();
        assert!(
            calls.iter().any(|c| c.starts_with("remove_sandbox")),
            "{calls:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn usage_is_sampled_for_every_running_container_on_its_interval() {
    let h = harness();
    h.fake.script("main", &[None]);
    h.start("busy", one(serde_json::json!({}), "Always"));
    h.wait_for("busy", "running", |s| s.containers[0].state.is_running())
        .await;
    let feed = super::usage::feed();
    let mut samples = feed.subscribe();
    let interval = Duration::from_secs(15);
    let sampler = tokio::spawn(super::usage::sample_loop(
        h.workers.clone(),
        interval,
        feed.clone(),
    ));
    samples.changed().await.expect("the first sample, at once");
    let first = samples.borrow_and_update().clone().expect("a sample");
    let t0 = Instant::now();
    assert_eq!(first.containers.len(), 1, "{first:?}");
    let c = &first.containers[0];
    assert_eq!(
        (
            c.namespace.as_str(),
            c.pod.as_str(),
            c.uid.as_str(),
            c.container.as_str()
        ),
        ("default", "pod-busy", "busy", "main")
    );
    assert!(!c.id.is_empty());
    assert_eq!(
        (c.measurement.cpu_nanos, c.measurement.memory_bytes),
        (250_000_000, FAKE_STATS.memory_bytes)
    );
    // The next one comes an interval later; a stopped container is in it no more.
    h.workers.stop("busy", Duration::from_secs(1)).await;
    samples.changed().await.expect("the second sample");
    assert!(t0.elapsed() <= interval, "{:?}", t0.elapsed());
    let second = samples.borrow_and_update().clone().expect("a sample");
    assert!(second.containers.is_empty(), "{second:?}");
    sampler.abort();
}
