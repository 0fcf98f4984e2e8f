//! Containers beside Wasm, end to end: cloudcore, an edgecore given a containerd of its own
//! (`wedge_testkit::containerd`, real containerd 1.6 with runc and CNI), kubectl, and a registry
//! holding both a Wasm sample and a busybox image built here. The containerd fixture removes
//! every sandbox, bridge and cgroup when dropped, even after a failure; the edge is declared
//! after it so that it is killed first.

use std::path::Path;
use std::time::Duration;

use wedge_core::runtime::{RuntimeService, labels};
use wedge_shims::CriRuntime;
use wedge_testkit::container_images;
use wedge_testkit::containerd::Containerd;
use wedge_testkit::registry::Registry;

use super::support::*;

/// The bound of waits that include a container image pull.
const PULL: Duration = Duration::from_secs(120);

/// A cloud, a registry with the samples and busybox, a containerd that pulls from it, and an
/// edge (`edge-mixed`) offering both runtimes.
struct MixedEdge {
    registry: Registry,
    busybox: String,
    containerd: Containerd,
    cloud: Cloud,
    root: std::path::PathBuf,
    extra: Vec<String>,
    edge: Proc,
    _dir: tempfile::TempDir,
}

async fn mixed_edge(extra: &[&str]) -> MixedEdge {
    mixed_edge_on(Containerd::start, extra).await
}

/// [`mixed_edge`] on the containerd `start` starts.
async fn mixed_edge_on(start: fn() -> anyhow::Result<Containerd>, extra: &[&str]) -> MixedEdge {
    let registry = registry_with_samples().await;
    let containerd = tokio::task::spawn_blocking(start)
        .await
        .expect("join")
        .expect("containerd starts");
    let host = registry.host();
    containerd
        .add_registry_host(&host, &format!("http://{host}"))
        .expect("registry host");
    let busybox =
        container_images::push_busybox(&registry, "tools/busybox:1").expect("busybox pushed");
    let dir = tempfile::tempdir().expect("tempdir");
    // The cloud's scheduler reads image kinds from the registry, as it would with a
    // registry it can reach.
    let cloud = Cloud::start_with(
        &dir.path().join("cloud"),
        "127.0.0.1",
        &["--insecure-registry", &host],
    );
    let token = cloud.token("1h");
    let root = dir.path().join("edge-mixed");
    std::fs::create_dir_all(&root).expect("edge root");
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let edge = spawn_edge(&root, &cloud, &containerd, &host, Some(&token), &extra);
    cloud.wait_for(
        "node/edge-mixed",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    MixedEdge {
        registry,
        busybox,
        containerd,
        cloud,
        root,
        extra,
        edge,
        _dir: dir,
    }
}

/// edgecore for `edge-mixed`, on `containerd`.
fn spawn_edge(
    root: &Path,
    cloud: &Cloud,
    containerd: &Containerd,
    registry: &str,
    token: Option<&str>,
    extra: &[String],
) -> Proc {
    let mut command = edgecore(root, cloud, "edge-mixed", token, registry);
    command
        .args(["--container-runtime-endpoint", &containerd.endpoint()])
        .args(["--cgroup-root", containerd.cgroup_parent()])
        // The fixture's containerd has a network config of its own: nothing is written.
        .arg("--cni-conf-dir")
        .arg(root.join("unused-cni"))
        // The registry hosts (mirrors) its containerd reads: both runtimes pull alike.
        .arg("--registry-config-dir")
        .arg(containerd.certs_dir())
        .args(extra);
    Proc::spawn(command, root.join("edgecore.log"))
}

impl MixedEdge {
    /// Kills edgecore (SIGKILL) and starts it again, joined already.
    fn restart_edge(&mut self) {
        self.edge.kill();
        self.edge = spawn_edge(
            &self.root,
            &self.cloud,
            &self.containerd,
            &self.registry.host(),
            None,
            &self.extra,
        );
    }

    /// The ids of the containers containerd runs for pod `uid`.
    async fn containers_of(&self, uid: &str) -> Vec<String> {
        let sandboxes = self.sandboxes_of(uid).await;
        let cri = CriRuntime::connect(&self.containerd.endpoint()).expect("endpoint");
        let all = cri.list_containers(None).await.expect("list containers");
        cri.shutdown().await;
        let mut ids: Vec<String> = all
            .into_iter()
            .filter(|c| sandboxes.iter().any(|s| s.id == c.sandbox_id))
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    }

    fn uid(&self, pod: &str) -> String {
        self.cloud
            .kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"])
    }

    /// The current log of `container` of `pod` on the edge, in the kubelet's layout.
    fn log(&self, pod: &str, container: &str) -> String {
        let uid = self.uid(pod);
        let dir = self
            .root
            .join(format!("pods/default_{pod}_{uid}"))
            .join(container);
        read_logs(&dir)
    }

    fn jsonpath(&self, object: &str, path: &str) -> String {
        self.cloud
            .kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")])
    }

    /// The sandboxes containerd holds for pod `uid`.
    async fn sandboxes_of(&self, uid: &str) -> Vec<wedge_core::runtime::SandboxStatus> {
        let cri = CriRuntime::connect(&self.containerd.endpoint()).expect("endpoint");
        let all = cri.list_sandboxes().await.expect("list sandboxes");
        cri.shutdown().await;
        all.into_iter()
            .filter(|s| s.labels.get(labels::POD_UID).map(String::as_str) == Some(uid))
            .collect()
    }

    fn runtime_classes(&self) {
        self.cloud.apply(
            "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: runc\nhandler: runc\n---\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: wasm\nhandler: wasm\n",
        );
    }
}

fn read_logs(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            text.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_edge_runs_container_pods_beside_wasm_pods() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    // The node offers both runtimes, names both versions and lists the images it holds.
    let labels = env.jsonpath("node/edge-mixed", "{.metadata.labels}");
    assert!(
        labels.contains("\"runtime.wedge.io/runc\":\"true\""),
        "{labels}"
    );
    assert!(
        labels.contains("\"runtime.wedge.io/wasm\":\"true\""),
        "{labels}"
    );
    let versions = env.jsonpath(
        "node/edge-mixed",
        "{.status.nodeInfo.containerRuntimeVersion}",
    );
    assert!(
        versions.contains("wasmtime://") && versions.contains("containerd://"),
        "{versions}"
    );
    env.runtime_classes();

    // A container pod under the runc RuntimeClass, with env and a volume from a ConfigMap.
    cloud.kubectl_ok(&[
        "create",
        "configmap",
        "box-config",
        "--from-literal=GREETING=hello-from-config",
    ]);
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'echo \"env=$GREETING\"; while true; do echo \"file=$(cat /config/GREETING)\"; sleep 1; done']\n    env:\n    - name: GREETING\n      valueFrom: {{configMapKeyRef: {{name: box-config, key: GREETING}}}}\n    volumeMounts:\n    - {{name: config, mountPath: /config}}\n  volumes:\n  - name: config\n    configMap: {{name: box-config}}\n",
        env.busybox
    ));
    cloud.wait_for("pod/box", "{.status.phase}", "Running", PULL);
    let ip = env.jsonpath("pod/box", "{.status.podIP}");
    let ip: std::net::Ipv4Addr = ip.parse().expect("a pod IP");
    assert!(
        env.containerd.in_pod_subnet(ip),
        "{ip} is in the pod network"
    );
    eventually(
        Duration::from_secs(30),
        || env.log("box", "main").contains("file=hello-from-config"),
        || format!("the log: {}", env.log("box", "main")),
    )
    .await;
    assert!(env.log("box", "main").contains("env=hello-from-config"));

    // A ConfigMap update reaches the running container's volume.
    cloud.kubectl_ok(&[
        "patch",
        "configmap",
        "box-config",
        "-p",
        "{\"data\":{\"GREETING\":\"updated\"}}",
    ]);
    eventually(
        Duration::from_secs(60),
        || env.log("box", "main").contains("file=updated"),
        || format!("the log: {}", env.log("box", "main")),
    )
    .await;

    // Without a RuntimeClass, the image's kind decides: busybox runs on containerd, the
    // Wasm sample on wasmtime, side by side on the one edge.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: exits\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'echo bye; exit 3']\n",
        env.busybox
    ));
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {}/samples/hello:1\n",
        env.registry.host()
    ));
    cloud.wait_for("pod/exits", "{.status.phase}", "Failed", PULL);
    assert_eq!(
        env.jsonpath(
            "pod/exits",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    assert!(env.log("exits", "main").contains("bye"));
    cloud.wait_for("pod/hello", "{.status.phase}", "Succeeded", PULL);
    // The node's images, at its next status report.
    eventually(
        Duration::from_secs(30),
        || {
            env.jsonpath("node/edge-mixed", "{.status.images[*].names}")
                .contains("tools/busybox:1")
        },
        || env.jsonpath("node/edge-mixed", "{.status.images}"),
    )
    .await;

    // Deleting the container pod stops it within its grace period and removes its sandbox.
    let uid = env.uid("box");
    assert_eq!(env.sandboxes_of(&uid).await.len(), 1);
    cloud.kubectl_ok(&["delete", "pod", "box", "--wait=false"]);
    cloud.wait_gone("pod/box", Duration::from_secs(60));
    assert!(
        env.sandboxes_of(&uid).await.is_empty(),
        "the sandbox is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_mixed_edge_cannot_run_gets_a_clear_status_and_disturbs_nothing() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    // A pod that runs, to show that the refusals around it leave it alone.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: steady\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sleep, '3600']\n",
        env.busybox
    ));
    // A Wasm image under the runc RuntimeClass.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wasm-as-runc\nspec:\n  runtimeClassName: runc\n  containers:\n  - name: app\n    image: {}/samples/hello:1\n",
        env.registry.host()
    ));
    // A privileged container on an edge that does not allow it.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: privileged\nspec:\n  runtimeClassName: runc\n  containers:\n  - name: main\n    image: {}\n    securityContext: {{privileged: true}}\n",
        env.busybox
    ));
    // A tag that does not exist.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: missing\nspec:\n  runtimeClassName: runc\n  containers:\n  - name: main\n    image: {}/tools/busybox:no-such-tag\n",
        env.registry.host()
    ));
    // A RuntimeClass whose handler the edge does not have: the scheduler keeps it off.
    cloud.apply(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: kata\nhandler: kata\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: kata\nspec:\n  runtimeClassName: kata\n  containers:\n  - name: main\n    image: r/x:1\n",
    );

    let waiting = |pod: &str| {
        env.jsonpath(
            &format!("pod/{pod}"),
            "{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
        )
    };
    let settle = |pod: &'static str, reason: &'static str, needle: &'static str| {
        let waiting = &waiting;
        async move {
            eventually(
                PULL,
                || {
                    let w = waiting(pod);
                    w.starts_with(reason) && w.contains(needle)
                },
                || format!("{pod}: {}", waiting(pod)),
            )
            .await;
        }
    };
    settle(
        "wasm-as-runc",
        "CreateContainerConfigError",
        "is a Wasm component",
    )
    .await;
    settle("privileged", "CreateContainerConfigError", "privileged").await;
    eventually(
        PULL,
        || {
            let w = waiting("missing");
            (w.starts_with("ErrImagePull") || w.starts_with("ImagePullBackOff"))
                && w.contains("no-such-tag")
        },
        || format!("missing: {}", waiting("missing")),
    )
    .await;
    cloud.wait_for(
        "pod/kata",
        "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
        "0/1 nodes are available: 1 node(s) didn't offer the runtime \"kata\".",
        Duration::from_secs(30),
    );
    cloud.wait_for("pod/steady", "{.status.phase}", "Running", PULL);
    assert_eq!(
        env.jsonpath("pod/steady", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn edgecore_killed_with_the_cloud_away_adopts_its_containers_when_it_restarts() {
    let mut env = mixed_edge(&[]).await;
    env.runtime_classes();
    env.cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: survivor\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'echo started; exec sleep 3600']\n",
        env.busybox
    ));
    env.cloud
        .wait_for("pod/survivor", "{.status.phase}", "Running", PULL);
    let uid = env.uid("survivor");
    let container_id = env.jsonpath("pod/survivor", "{.status.containerStatuses[0].containerID}");
    let before = env.containers_of(&uid).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(container_id, format!("containerd://{}", before[0]));

    // The cloud goes away, then edgecore dies without a chance to clean up, and comes back.
    env.cloud.kill();
    env.restart_edge();
    eventually(
        Duration::from_secs(60),
        || env.edge.log().contains("adopted a running container"),
        || {
            let log: Vec<String> = env
                .edge
                .log()
                .lines()
                .filter(|l| !l.contains("no link to the cloud"))
                .map(str::to_owned)
                .collect();
            format!("edgecore's log: {}", log.join("\n"))
        },
    )
    .await;
    assert_eq!(
        env.containers_of(&uid).await,
        before,
        "nothing created again"
    );

    // The cloud back: the pod is still the one that started, never restarted.
    env.cloud.restart();
    env.cloud.wait_for(
        "node/edge-mixed",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    env.cloud
        .wait_for("pod/survivor", "{.status.phase}", "Running", PULL);
    assert_eq!(
        env.jsonpath(
            "pod/survivor",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    assert_eq!(
        env.jsonpath("pod/survivor", "{.status.containerStatuses[0].containerID}"),
        container_id
    );
    assert_eq!(env.log("survivor", "main").matches("started").count(), 1);
}

/// edgecore told to stop while a pod is being deleted finishes that deletion first (within the
/// pod's grace period) instead of leaving it half done; a second signal exits at once, so a
/// stop that takes long never holds an operator.
#[tokio::test(flavor = "multi_thread")]
async fn edgecore_stopping_finishes_a_deletion_under_way_and_a_second_signal_exits_at_once() {
    let mut env = mixed_edge(&[]).await;
    env.runtime_classes();
    env.cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stubborn\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 600\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'trap \"\" TERM; echo started; while true; do sleep 1; done']\n",
        env.busybox
    ));
    env.cloud
        .wait_for("pod/stubborn", "{.status.phase}", "Running", PULL);
    env.cloud
        .kubectl(&["delete", "pod", "stubborn", "--wait=false"]);
    eventually(
        Duration::from_secs(60),
        || env.edge.log().contains("stopping a deleted pod"),
        || format!("edgecore's log: {}", env.edge.log()),
    )
    .await;

    env.edge.terminate();
    eventually(
        Duration::from_secs(30),
        || {
            env.edge
                .log()
                .contains("waiting for the pods being stopped")
        },
        || format!("edgecore's log: {}", env.edge.log()),
    )
    .await;
    // It waits for the container, which ignores SIGTERM, until the pod's 600 s are up...
    assert!(
        env.edge.child.try_wait().expect("try_wait").is_none(),
        "edgecore exited before the deletion under way had finished:\n{}",
        env.edge.log()
    );
    // ...unless told again.
    env.edge.terminate();
    let status = env.edge.exited(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "{}", env.edge.log());
    assert!(
        env.edge.log().contains("second signal"),
        "{}",
        env.edge.log()
    );
}

/// A container printing without end holds a bounded share of the disk: past
/// `--container-log-max-size` Edged renames its log and has containerd reopen it, keeping
/// `--container-log-max-files` files, and `kubectl logs -f` follows across the rotations without
/// losing or repeating a line.
#[tokio::test(flavor = "multi_thread")]
async fn a_chatty_containers_log_is_rotated_and_followed_across_rotations() {
    let env = mixed_edge(&[
        "--container-log-max-size",
        "4Ki",
        "--container-log-max-files",
        "2",
    ])
    .await;
    env.runtime_classes();
    env.cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: chatty\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'i=0; while true; do echo line $i; i=$((i+1)); usleep 20000; done']\n",
        env.busybox
    ));
    env.cloud
        .wait_for("pod/chatty", "{.status.phase}", "Running", PULL);
    let dir = env
        .root
        .join(format!("pods/default_chatty_{}", env.uid("chatty")))
        .join("main");
    let mut follow = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.cloud.kubeconfig())
        .args(["logs", "-f", "chatty"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let lines = lines_of(&mut follow);

    // Two rotations, and never more files than the limit.
    let mut rotated_seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while rotated_seen.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not rotated twice: {rotated_seen:?}\n{}",
            env.edge.log()
        );
        let files: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(files.len() <= 2, "{files:?}");
        rotated_seen.extend(files.into_iter().filter(|f| f.starts_with("0.log.")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the follow printed runs on without a gap or a repeat across both rotations, past the
    // last line of the newest rotated file (written before the second rotation).
    let newest = rotated_seen.last().expect("rotated");
    let raw = std::fs::read_to_string(dir.join(newest)).unwrap_or_default();
    let target: u64 = raw
        .lines()
        .filter_map(|record| record.splitn(4, ' ').nth(3))
        .filter_map(|content| content.strip_prefix("line ")?.parse().ok())
        .next_back()
        .map_or(0, |n: u64| n + 1);
    let mut expected = None;
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("kubectl logs -f goes on");
        let n: u64 = line
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a numbered line: {line:?}"));
        if let Some(want) = expected {
            assert_eq!(n, want, "lost or repeated lines across a rotation");
        }
        expected = Some(n + 1);
        if n >= target {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

/// What Edged does for every runtime, seen on container pods: OOMKilled at the memory limit,
/// a SIGTERM handler given its grace period, CrashLoopBackOff, readiness gating Ready and a
/// failing liveness probe restarting the container.
#[tokio::test(flavor = "multi_thread")]
async fn container_pods_live_and_die_as_under_a_kubelet() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    let pod = |name: &str, restart: &str, grace: u32, container: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: runc\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: main\n    image: {}\n{container}",
            env.busybox
        )
    };
    // The shell doubles a string until the cgroup's limit stops it.
    cloud.apply(&pod(
        "hog",
        "Never",
        1,
        "    command: [sh, -c, 'x=a; while true; do x=$x$x; done']\n    resources: {limits: {memory: 16Mi}}\n",
    ));
    cloud.apply(&pod(
        "graceful",
        "Always",
        20,
        "    command: [sh, -c, 'trap \"echo got TERM; sleep 2; echo cleaned up; exit 0\" TERM; echo up; while true; do sleep 0.2; done']\n",
    ));
    cloud.apply(&pod(
        "crash",
        "Always",
        1,
        "    command: [sh, -c, 'echo crashing; exit 4']\n",
    ));
    // Ready once /tmp/ready exists (made after 2 s); alive while /tmp/alive exists (removed
    // after 4 s, so the liveness probe fails and the container restarts).
    cloud.apply(&pod(
        "probed",
        "Always",
        1,
        "    command: [sh, -c, 'touch /tmp/alive; sleep 2; touch /tmp/ready; sleep 2; rm /tmp/alive; sleep 3600']\n    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}\n    livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2}\n",
    ));

    cloud.wait_for("pod/hog", "{.status.phase}", "Failed", PULL);
    assert_eq!(
        env.jsonpath(
            "pod/hog",
            "{.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "OOMKilled 137"
    );

    cloud.wait_for(
        "pod/crash",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CrashLoopBackOff",
        PULL,
    );
    assert_eq!(
        env.jsonpath(
            "pod/crash",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "4"
    );
    // `kubectl logs` reaches the container's log through CloudStream; `--previous` too.
    assert_eq!(
        cloud.kubectl_ok(&["logs", "crash", "--previous"]),
        "crashing\n"
    );

    cloud.wait_for(
        "pod/probed",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        PULL,
    );
    cloud.wait_for(
        "pod/probed",
        "{.status.containerStatuses[0].restartCount}",
        "1",
        Duration::from_secs(60),
    );

    cloud.wait_for("pod/graceful", "{.status.phase}", "Running", PULL);
    eventually(
        Duration::from_secs(30),
        || env.log("graceful", "main").contains("up"),
        || env.log("graceful", "main"),
    )
    .await;
    let uid = env.uid("graceful");
    let pod_dir = env.root.join(format!("pods/default_graceful_{uid}"));
    // `kubectl logs -f` follows the container until it stops: its last words arrive, and
    // kubectl ends by itself.
    let mut follow = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig())
        .args(["logs", "-f", "graceful"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let lines = lines_of(&mut follow);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(30)).as_deref(),
        Ok("up")
    );
    cloud.kubectl_ok(&["delete", "pod", "graceful", "--wait=false"]);
    let followed: Vec<String> = lines.iter().collect();
    assert_eq!(followed, ["got TERM", "cleaned up"]);
    assert!(follow.wait().expect("kubectl ends").success());
    // The TERM handler runs to its end (2 s), well within the grace period.
    eventually(
        Duration::from_secs(30),
        || read_logs(&pod_dir.join("main")).contains("cleaned up"),
        || read_logs(&pod_dir.join("main")),
    )
    .await;
    assert!(read_logs(&pod_dir.join("main")).contains("got TERM"));
    cloud.wait_gone("pod/graceful", Duration::from_secs(60));
    // Once the pod is gone its directory goes too (logs and volumes), as with a kubelet.
    eventually(
        Duration::from_secs(10),
        || !pod_dir.exists(),
        || format!("{} is still there", pod_dir.display()),
    )
    .await;
}

/// A fleet of a Wasm-only edge and a mixed one: each pod lands where its runtime is (by its
/// RuntimeClass, or by its image's kind as the registry says), Deployments and DaemonSets
/// included, and a private image runs with its pull secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_fleet_places_each_pod_where_its_runtime_is() {
    let mut env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    let host = env.registry.host();
    let token = cloud.token("1h");
    let wasm_root = env.root.with_file_name("edge-wasm");
    let _wasm_edge = start_edge(&wasm_root, cloud, "edge-wasm", Some(&token), &host);
    cloud.wait_for(
        "node/edge-wasm",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    assert_eq!(
        env.jsonpath(
            "node/edge-wasm",
            "{.metadata.labels.runtime\\.wedge\\.io/runc}"
        ),
        "false"
    );

    // A Deployment of containers, no RuntimeClass: only the mixed edge runs them.
    cloud.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: boxes\nspec:\n  replicas: 3\n  selector: {{matchLabels: {{app: boxes}}}}\n  template:\n    metadata: {{labels: {{app: boxes}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {}\n        command: [sleep, '3600']\n",
        env.busybox
    ));
    // A Wasm DaemonSet runs on both edges; a container DaemonSet only where containers run,
    // whether it names the runc RuntimeClass or its image's kind says so.
    cloud.apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: wasm-everywhere\nspec:\n  selector: {{matchLabels: {{app: wasm-everywhere}}}}\n  template:\n    metadata: {{labels: {{app: wasm-everywhere}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        image: {host}/samples/telemetry:1\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: box-daemon\nspec:\n  selector: {{matchLabels: {{app: box-daemon}}}}\n  template:\n    metadata: {{labels: {{app: box-daemon}}}}\n    spec:\n      runtimeClassName: runc\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {}\n        command: [sleep, '3600']\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: plain-box-daemon\nspec:\n  selector: {{matchLabels: {{app: plain-box-daemon}}}}\n  template:\n    metadata: {{labels: {{app: plain-box-daemon}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {}\n        command: [sleep, '3600']\n",
        env.busybox, env.busybox
    ));
    let placed = |selector: &str| {
        let out = cloud.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}={.status.phase} {end}",
        ]);
        let mut pods: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        pods.sort();
        pods
    };
    eventually(
        PULL,
        || placed("app=boxes") == ["edge-mixed=Running"; 3],
        || format!("{:?}", placed("app=boxes")),
    )
    .await;
    eventually(
        PULL,
        || placed("app=wasm-everywhere") == ["edge-mixed=Running", "edge-wasm=Running"],
        || format!("{:?}", placed("app=wasm-everywhere")),
    )
    .await;
    for daemon in ["app=box-daemon", "app=plain-box-daemon"] {
        // The controller makes every node's pod in one pass: one on edge-wasm would be
        // listed beside edge-mixed's.
        eventually(
            PULL,
            || placed(daemon) == ["edge-mixed=Running"],
            || format!("{daemon}: {:?}", placed(daemon)),
        )
        .await;
    }

    // A private image: it runs with the pull secret, and without it says why.
    let private = Registry::start_with_auth("alice", "s3cret").expect("private registry");
    let private_host = private.host();
    env.containerd
        .add_registry_host(&private_host, &format!("http://{private_host}"))
        .expect("registry host");
    let image =
        container_images::push_busybox_with_auth(&private, "private/box:1", "alice", "s3cret")
            .expect("push");
    cloud.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={private_host}"),
        "--docker-username=alice",
        "--docker-password=s3cret",
    ]);
    let private_pod = |name: &str, secrets: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n{secrets}  containers:\n  - name: main\n    image: {image}\n    command: [sleep, '3600']\n"
        )
    };
    // Without first: once the image is on the edge, a pod that may use it needs no secret
    // (as on a kubelet without AlwaysPullImages).
    cloud.apply(&private_pod("without-secret", ""));
    eventually(
        PULL,
        || {
            let reason = env.jsonpath(
                "pod/without-secret",
                "{.status.containerStatuses[0].state.waiting.reason}",
            );
            reason == "ErrImagePull" || reason == "ImagePullBackOff"
        },
        || env.jsonpath("pod/without-secret", "{.status.containerStatuses}"),
    )
    .await;
    cloud.apply(&private_pod(
        "with-secret",
        "  imagePullSecrets: [{name: regcred}]\n",
    ));
    cloud.wait_for("pod/with-secret", "{.status.phase}", "Running", PULL);

    // The edge's own credentials, a docker config.json in its root (where the kubelet reads
    // /var/lib/kubelet/config.json), read at start: a pod naming no secret pulls a private
    // image the edge does not hold yet.
    let tag2 =
        container_images::push_busybox_with_auth(&private, "private/box:2", "alice", "s3cret")
            .expect("push");
    std::fs::write(
        env.root.join("config.json"),
        serde_json::json!({"auths": {private_host.clone(): {"username": "alice", "password": "s3cret"}}})
            .to_string(),
    )
    .expect("config.json");
    env.restart_edge();
    env.cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: edge-credentials\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {tag2}\n    command: [sleep, '3600']\n"
    ));
    env.cloud
        .wait_for("pod/edge-credentials", "{.status.phase}", "Running", PULL);
}

/// containerd restarted under running container pods: they keep running (containerd's shims
/// hold them), their statuses stay, and pods created afterwards start.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_restarted_under_running_pods_disturbs_none_of_them() {
    let mut env = mixed_edge(&[]).await;
    env.runtime_classes();
    let sleeper = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sleep, '3600']\n",
            env.busybox
        )
    };
    env.cloud.apply(&sleeper("before"));
    env.cloud
        .wait_for("pod/before", "{.status.phase}", "Running", PULL);
    let uid = env.uid("before");
    let containers = env.containers_of(&uid).await;

    tokio::task::block_in_place(|| env.containerd.restart()).expect("containerd restarts");
    env.cloud.apply(&sleeper("after"));
    env.cloud
        .wait_for("pod/after", "{.status.phase}", "Running", PULL);
    assert_eq!(
        env.containers_of(&uid).await,
        containers,
        "the same container"
    );
    assert_eq!(
        env.jsonpath(
            "pod/before",
            "{.status.phase} {.status.containerStatuses[0].restartCount}"
        ),
        "Running 0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_in_hosts_toml_serves_docker_hub_names_to_both_runtimes() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    // The local registry stands in for Docker Hub (an air-gapped edge): one hosts.toml in the
    // directory that containerd and edgecore both read, written while both run.
    let host = env.registry.host();
    env.containerd
        .add_mirror("docker.io", &format!("http://{host}"))
        .expect("mirror");
    container_images::push_busybox(&env.registry, "library/busybox:1.35").expect("busybox");

    // A container pod naming Docker Hub's busybox: containerd pulls it from the mirror.
    cloud.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hub-box\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: docker.io/library/busybox:1.35\n    command: [sh, -c, 'echo from-the-mirror; sleep 3600']\n",
    );
    // A Wasm pod whose image only the mirror serves (there is no docker.io/samples/hello): the
    // Wasm runtime pulls it through the same hosts.toml.
    cloud.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hub-hello\nspec:\n  runtimeClassName: wasm\n  restartPolicy: Never\n  containers:\n  - name: hello\n    image: docker.io/samples/hello:1\n",
    );
    cloud.wait_for("pod/hub-box", "{.status.phase}", "Running", PULL);
    eventually(
        Duration::from_secs(30),
        || env.log("hub-box", "main").contains("from-the-mirror"),
        || format!("the log: {}", env.log("hub-box", "main")),
    )
    .await;
    cloud.wait_for("pod/hub-hello", "{.status.phase}", "Succeeded", PULL);
    assert_eq!(
        env.jsonpath(
            "pod/hub-hello",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0"
    );
    // Both were asked of the mirror on Docker Hub's behalf (`?ns=docker.io`, as containerd asks).
    let log = std::fs::read_to_string(env.registry.log_path()).unwrap_or_default();
    for repository in ["library/busybox", "samples/hello"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("/v2/{repository}/manifests/"))
                    && l.contains("ns=docker.io")),
            "the registry's log shows {repository} asked for docker.io:\n{log}"
        );
    }
}

/// `wedge image import` against an edge root and a containerd.
fn wedge_image_import(root: &Path, containerd: &Containerd, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(root)
        .args(["image", "import"])
        .args(args)
        .args(["--container-runtime-endpoint", &containerd.endpoint()])
        .output()
        .expect("wedge runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn image_import_puts_container_archives_into_containerd() {
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .expect("join")
        .expect("containerd starts");
    let busybox = tokio::task::spawn_blocking(container_images::busybox)
        .await
        .expect("join")
        .expect("busybox builds");
    let archive = busybox.docker_archive();
    let root = tempfile::tempdir().expect("tempdir");
    let archive_arg = archive.to_str().expect("utf-8 path");

    // A docker archive, given a name pods will use (normalised as CRI names images).
    let out = wedge_image_import(
        root.path(),
        &containerd,
        &[archive_arg, "--name", "offline/box:7"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("imported docker.io/offline/box:7 into containerd"),
        "{stdout}"
    );
    // CRI sees it under that name (a moment later: it learns of images from events), so a pod
    // naming it runs with no registry at all.
    let mut images = containerd.image_client().await.expect("image client");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = images
            .image_status(wedge_testkit::containerd::cri::ImageStatusRequest {
                image: Some(wedge_testkit::containerd::cri::ImageSpec {
                    image: "docker.io/offline/box:7".into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("image status")
            .into_inner();
        if status.image.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRI does not list docker.io/offline/box:7"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing went to the Wasm store.
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(root.path())
        .args(["image", "list"])
        .output()
        .expect("wedge runs");
    assert!(!String::from_utf8_lossy(&list.stdout).contains("box"));

    // No containerd at the socket: said plainly, nothing imported.
    let gone = std::process::Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(root.path())
        .args([
            "image",
            "import",
            archive_arg,
            "--container-runtime-endpoint",
        ])
        .arg(root.path().join("no-such.sock"))
        .output()
        .expect("wedge runs");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(!gone.status.success());
    assert!(stderr.contains("containerd is not running at"), "{stderr}");

    // No ctr on PATH: said plainly.
    let no_ctr = std::process::Command::new(env!("CARGO_BIN_EXE_wedge"))
        .env("PATH", root.path())
        .arg("--root")
        .arg(root.path())
        .args(["image", "import", archive_arg])
        .args(["--container-runtime-endpoint", &containerd.endpoint()])
        .output()
        .expect("wedge runs");
    let stderr = String::from_utf8_lossy(&no_ctr.stderr);
    assert!(!no_ctr.status.success());
    assert!(
        stderr.contains("ctr, containerd's client, is not installed"),
        "{stderr}"
    );
}

/// A pod with a Wasm container beside a container: a Wasm init container writes a page into
/// the pod's emptyDir, busybox's httpd serves it on the pod's localhost, and the Wasm app
/// fetches it from there over `wasi:sockets`. Each container has its own status and log.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_pod_shares_localhost_and_volumes_between_wasm_and_a_container() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    let host = env.registry.host();
    push_misbehave(&env.registry).await;
    // No RuntimeClass: the images' kinds make it a mixed pod.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mixed\nspec:\n  restartPolicy: OnFailure\n  terminationGracePeriodSeconds: 1\n  initContainers:\n  - name: page\n    image: {host}/samples/misbehave:1\n    command: [misbehave, write, /shared/index.html, hello-from-wasm]\n    volumeMounts: [{{name: shared, mountPath: /shared}}]\n  containers:\n  - name: web\n    image: {}\n    command: [httpd, -f, -p, '8080', -h, /shared]\n    volumeMounts: [{{name: shared, mountPath: /shared}}]\n  - name: app\n    image: {host}/samples/misbehave:1\n    command: [misbehave, fetch, '127.0.0.1:8080', /index.html]\n  volumes:\n  - name: shared\n    emptyDir: {{}}\n",
        env.busybox
    ));
    eventually(
        PULL,
        || {
            env.jsonpath(
                "pod/mixed",
                "{.status.containerStatuses[?(@.name==\"app\")].state.terminated.exitCode}",
            ) == "0"
        },
        || {
            let log: Vec<String> = env
                .edge
                .log()
                .lines()
                .filter(|l| l.contains("mixed") || l.contains("WARN") || l.contains("ERROR"))
                .map(str::to_owned)
                .collect();
            format!(
                "{}\napp: {}\nedgecore: {}",
                env.jsonpath("pod/mixed", "{.status}"),
                env.log("mixed", "app"),
                log.join("\n")
            )
        },
    )
    .await;
    let app_log = env.log("mixed", "app");
    assert!(
        app_log.contains("fetched: hello-from-wasm"),
        "the Wasm app reached the container on localhost: {app_log}"
    );
    assert!(
        env.log("mixed", "page")
            .contains("wrote /shared/index.html")
    );
    assert_eq!(
        env.jsonpath(
            "pod/mixed",
            "{.status.phase} {.status.containerStatuses[?(@.name==\"web\")].ready}"
        ),
        "Running true"
    );
    let ids = env.jsonpath(
        "pod/mixed",
        "{.status.initContainerStatuses[0].containerID} {.status.containerStatuses[*].containerID}",
    );
    assert!(
        ids.contains("wasmtime://") && ids.contains("containerd://"),
        "{ids}"
    );
    let ip: std::net::Ipv4Addr = env
        .jsonpath("pod/mixed", "{.status.podIP}")
        .parse()
        .expect("pod IP");
    assert!(
        env.containerd.in_pod_subnet(ip),
        "the sandbox's address: {ip}"
    );

    let uid = env.uid("mixed");
    cloud.kubectl_ok(&["delete", "pod", "mixed", "--wait=false"]);
    cloud.wait_gone("pod/mixed", Duration::from_secs(60));
    assert!(env.sandboxes_of(&uid).await.is_empty());
}

/// `wedge up`, the README's main job, on a machine with containerd (as `scripts/demo` prepares
/// it: busybox imported under the name the sample uses): the Wasm samples and the container
/// sample `web` run side by side on the local edge, and `web` serves its page on its pod IP.
#[tokio::test(flavor = "multi_thread")]
async fn wedge_up_runs_the_container_sample_beside_the_wasm_samples() {
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .expect("join")
        .expect("containerd starts");
    let apps = tokio::task::spawn_blocking(wedge_testkit::sample_apps::build)
        .await
        .expect("join")
        .expect("sample apps build");
    let busybox = tokio::task::spawn_blocking(container_images::busybox)
        .await
        .expect("join")
        .expect("busybox builds");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let archive = busybox.docker_archive();
    let imported = wedge_image_import(
        &root.join("edge"),
        &containerd,
        &[
            archive.to_str().expect("utf-8 path"),
            "--name",
            "docker.io/library/busybox:1.35",
        ],
    );
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    let api = free_port();
    let hub = format!("127.0.0.1:{}", free_port());
    let stream = format!("127.0.0.1:{}", free_port());
    let stdout_path = root.join("up.out");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wedge"));
    command
        .arg("--root")
        .arg(root)
        .arg("up")
        .args(["--apiserver-listen", &format!("127.0.0.1:{api}")])
        .args(["--hub-listen", &hub])
        .args(["--stream-listen", &stream])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--modbus-sim-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--samples")
        .arg(
            apps.path("telemetry")
                .parent()
                .expect("the samples' directory"),
        )
        .args(["--container-runtime-endpoint", &containerd.endpoint()])
        .args(["--cgroup-root", containerd.cgroup_parent()])
        // The fixture's containerd has a network config of its own: nothing is written.
        .arg("--cni-conf-dir")
        .arg(root.join("unused-cni"))
        .arg("--registry-config-dir")
        .arg(containerd.certs_dir())
        .env("RUST_LOG", "info,kube=warn,wedge_apiserver=warn")
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(root.join("up.log")).expect("log file"));
    // What it prints is checked too, so not `Proc::spawn` (which discards stdout).
    let up = Proc {
        child: command.spawn().expect("wedge runs"),
        log: root.join("up.log"),
    };
    // `wedge up` keeps its state where cloudcore does: a Cloud handle reads it with kubectl.
    let cloud = Cloud {
        root: root.to_owned(),
        hub,
        api,
        metrics: String::new(),
        stream,
        extra: Vec::new(),
        proc: None,
    };
    let printed = || std::fs::read_to_string(&stdout_path).unwrap_or_default();
    eventually(
        Duration::from_secs(120),
        || printed().contains("Ctrl-C stops everything"),
        || format!("wedge up printed: {}\nlog: {}", printed(), up.log()),
    )
    .await;
    assert!(
        printed().contains("Wasm and container pods"),
        "{}",
        printed()
    );
    for pod in ["telemetry", "fan-handler", "web"] {
        cloud.wait_for(
            &format!("pod/{pod}"),
            "{.status.phase}",
            "Running",
            Duration::from_secs(60),
        );
    }
    // `web` is a container (its id says which runtime runs it), Ready once httpd answers its
    // probe, and serves the page its command wrote from the downward API.
    cloud.wait_for(
        "pod/web",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    let id = cloud.kubectl_ok(&[
        "get",
        "pod/web",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    assert!(id.starts_with("containerd://"), "{id}");
    let telemetry = cloud.kubectl_ok(&[
        "get",
        "pod/telemetry",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    assert!(telemetry.starts_with("wasmtime://"), "{telemetry}");
    let ip = cloud.kubectl_ok(&["get", "pod/web", "-o", "jsonpath={.status.podIP}"]);
    let page = http_get(&format!("{ip}:8080"), "/");
    assert!(
        page.contains("Hello from web, a container on edge-local beside Wasm pods."),
        "{page}"
    );
    drop(up);
}

/// The whole response to a plain HTTP/1.0 GET of `path` on `addr`.
fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).expect("an HTTP answer")
}

/// [`http_get`], failing with the reason.
fn try_http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)?;
    Ok(response)
}

/// edgecore killed (-9) and restarted under a mixed pod: the container, which containerd kept,
/// is adopted (same id, no restart), and the Wasm container, which died with edgecore, runs
/// again as a new instance in the same sandbox and network.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_pod_keeps_its_container_and_restarts_its_wasm_part_when_edgecore_is_killed() {
    let mut env = mixed_edge(&[]).await;
    let host = env.registry.host();
    env.cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pair\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: side\n    image: {}\n    command: [sh, -c, 'echo started; exec httpd -f -p 8080']\n  - name: app\n    image: {host}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"200\"}}\n",
        env.busybox
    ));
    let running = "{.status.containerStatuses[?(@.name==\"side\")].state.running.startedAt}";
    let app_running = "{.status.containerStatuses[?(@.name==\"app\")].state.running.startedAt}";
    eventually(
        PULL,
        || {
            !env.jsonpath("pod/pair", running).is_empty()
                && !env.jsonpath("pod/pair", app_running).is_empty()
        },
        || env.jsonpath("pod/pair", "{.status}"),
    )
    .await;
    let side_id = env.jsonpath(
        "pod/pair",
        "{.status.containerStatuses[?(@.name==\"side\")].containerID}",
    );
    let app_id = "{.status.containerStatuses[?(@.name==\"app\")].containerID}";
    let app_before = env.jsonpath("pod/pair", app_id);
    let ip = env.jsonpath("pod/pair", "{.status.podIP}");
    let uid = env.uid("pair");
    let sandboxes = env.sandboxes_of(&uid).await;
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");

    env.restart_edge();
    // The Wasm container runs again: a new instance (the runtime kept no record of the old
    // one, so its restart count starts again, as a kubelet's does for a container its runtime
    // lost).
    eventually(
        Duration::from_secs(60),
        || {
            let now = env.jsonpath("pod/pair", app_id);
            now.starts_with("wasmtime://")
                && now != app_before
                && !env.jsonpath("pod/pair", app_running).is_empty()
        },
        || {
            format!(
                "{}\nedgecore: {}",
                env.jsonpath("pod/pair", "{.status}"),
                env.edge.log()
            )
        },
    )
    .await;
    assert!(env.edge.log().contains("adopted a running container"));
    // The container and the sandbox are the ones from before.
    assert_eq!(
        env.jsonpath(
            "pod/pair",
            "{.status.containerStatuses[?(@.name==\"side\")].containerID}"
        ),
        side_id
    );
    assert_eq!(
        env.jsonpath(
            "pod/pair",
            "{.status.containerStatuses[?(@.name==\"side\")].restartCount}"
        ),
        "0"
    );
    assert_eq!(env.log("pair", "side").matches("started").count(), 1);
    assert_eq!(env.jsonpath("pod/pair", "{.status.podIP}"), ip);
    let after = env.sandboxes_of(&uid).await;
    assert_eq!(
        after.iter().map(|s| &s.id).collect::<Vec<_>>(),
        sandboxes.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    assert_eq!(env.jsonpath("pod/pair", "{.status.phase}"), "Running");
}

/// Runs kubectl with `stdin` piped in; its output.
fn kubectl_with_input(cloud: &Cloud, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("kubectl ends")
}

/// Runs `command` in `pod` through the Python Kubernetes client's `stream` (WebSocket
/// `v4.channel.k8s.io`): its exit code, stdout and stderr.
fn python_exec(cloud: &Cloud, pod: &str, command: &[&str]) -> (Option<i32>, String, String) {
    const SCRIPT: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
resp = stream(api.connect_get_namespaced_pod_exec, sys.argv[2], "default", command=sys.argv[3:],
              stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
resp.run_forever(timeout=60)
sys.stdout.write(resp.read_stdout())
sys.stderr.write(resp.read_stderr())
sys.exit(resp.returncode)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(cloud.kubeconfig())
        .arg(pod)
        .args(command)
        .output()
        .expect("python3 runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl exec`, `attach` and `cp` reach container and Wasm pods through CloudStream, with
/// exit codes, stdin piped and closed, stdout and stderr apart.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_attach_and_cp_reach_container_and_wasm_pods() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    let host = env.registry.host();
    push_misbehave(&env.registry).await;
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shell\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'while true; do echo tick; sleep 0.2; done']\n",
        env.busybox
    ));
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wasm\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {host}/samples/misbehave:1\n    command: [misbehave, sleep]\n    env: [{{name: GREETING, value: from-the-pod}}]\n"
    ));
    cloud.wait_for("pod/shell", "{.status.phase}", "Running", PULL);
    cloud.wait_for("pod/wasm", "{.status.phase}", "Running", PULL);

    // A container: the exit code, stdout and stderr apart.
    let out = cloud.kubectl(&[
        "exec",
        "shell",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    // stdin piped, then closed: cat sees its end.
    let cat = kubectl_with_input(cloud, &["exec", "-i", "shell", "--", "cat"], b"piped in\n");
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "piped in\n");
    // kubectl cp is tar through exec, both ways.
    let local = env.root.join("to-copy.txt");
    std::fs::write(&local, "copied through exec\n").expect("local file");
    cloud.kubectl_ok(&[
        "cp",
        local.to_str().expect("utf-8"),
        "shell:/tmp/copied.txt",
    ]);
    assert_eq!(
        cloud.kubectl_ok(&["exec", "shell", "--", "cat", "/tmp/copied.txt"]),
        "copied through exec\n"
    );
    let back = env.root.join("copied-back.txt");
    cloud.kubectl_ok(&["cp", "shell:/tmp/copied.txt", back.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("copied back"),
        "copied through exec\n"
    );
    // kubectl's SPDY fallback: the exit code and piped stdin the same.
    let spdy = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cloud.kubeconfig())
            .args(args)
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("input");
        drop(stdin);
        child.wait_with_output().expect("kubectl ends")
    };
    let out = spdy(
        &[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    let cat = spdy(&["exec", "-i", "shell", "--", "cat"], b"piped over spdy\n");
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "piped over spdy\n");

    // attach: the container's own output, live.
    let mut attach = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig())
        .args(["attach", "shell"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(env.root.join("attach.err")).expect("a file"))
        .spawn()
        .expect("kubectl runs");
    let lines = lines_of(&mut attach);
    for _ in 0..3 {
        assert_eq!(
            lines.recv_timeout(Duration::from_secs(20)).as_deref(),
            Ok("tick"),
            "kubectl attach: {}",
            std::fs::read_to_string(env.root.join("attach.err")).unwrap_or_default()
        );
    }
    let _ = attach.kill();
    let _ = attach.wait();

    // A Wasm container: a fresh instance of its component runs the command, with the pod's
    // env, and its exit status comes back (WASI 0.2 commands exit with success or failure:
    // a Rust guest's `exit(7)` is 1).
    let out = cloud.kubectl(&["exec", "wasm", "--", "misbehave", "exit", "7"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cloud
            .kubectl_ok(&["exec", "wasm", "--", "misbehave", "env"])
            .contains("GREETING=from-the-pod")
    );
    let out = cloud.kubectl(&["exec", "wasm", "--", "misbehave", "stderr", "to-stderr"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    let cat = kubectl_with_input(
        cloud,
        &["exec", "-i", "wasm", "--", "misbehave", "cat"],
        b"into wasm\n",
    );
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "into wasm\n");
    // The Python client's stream (v4 over WebSocket) reaches both.
    let (code, out, err) = python_exec(
        cloud,
        "shell",
        &["sh", "-c", "echo py; echo pyerr >&2; exit 2"],
    );
    assert_eq!((code, out.as_str()), (Some(2), "py\n"), "{err}");
    assert!(err.contains("pyerr"), "{err}");
    let (code, out, err) = python_exec(cloud, "wasm", &["misbehave", "print", "2"]);
    assert_eq!((code, out.as_str()), (Some(0), "line 0\nline 1\n"), "{err}");

    // From a real terminal (a pty of 24 rows by 80 columns), `exec -it` gives the container's
    // command a terminal of that size, through containerd's pty: its lines end CR LF, and the
    // exit code comes back. The size comes as kubectl's first resize, which may land after the
    // command starts (so on a kubelet too): the command waits for it, for 5 s at most.
    let (code, shown) = kubectl_on_a_terminal(
        cloud,
        "exec -it shell -- sh -c 'tty; i=0; until [ \"$(stty size 2>/dev/null)\" = \"24 80\" ] || [ $i -ge 50 ]; do i=$((i+1)); sleep 0.1; done; stty size; exit 3'",
    );
    assert_eq!(code, Some(3), "{shown:?}");
    assert!(
        shown.starts_with("/dev/pts/0\r\n24 80\r\n"),
        "the terminal showed {shown:?}"
    );

    // What cannot be exec'd says why.
    let missing = cloud.kubectl(&["exec", "wasm", "-c", "nope", "--", "misbehave"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("container nope is not valid for pod wasm"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// A running `kubectl port-forward`, and the local ports it listens on, in the order asked.
struct PortForward {
    child: std::process::Child,
    ports: Vec<u16>,
    stderr: std::path::PathBuf,
    /// kubectl's stdout, still read: it prints a line per connection, and would die of
    /// SIGPIPE if nothing read them.
    _stdout: std::sync::mpsc::Receiver<String>,
}

impl PortForward {
    /// Starts `kubectl port-forward pod/<pod> :<port>...` on 127.0.0.1, over SPDY when
    /// `spdy` (kubectl's fallback; WebSocket otherwise), and waits until it listens.
    fn start(env: &MixedEdge, pod: &str, remote: &[u16], spdy: bool) -> Self {
        let stderr = env
            .root
            .join(format!("port-forward-{pod}-{}.err", remote[0]));
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(env.cloud.kubeconfig())
            .args(["port-forward", "--address", "127.0.0.1"])
            .arg(format!("pod/{pod}"))
            .args(remote.iter().map(|p| format!(":{p}")))
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if spdy { "false" } else { "true" },
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a file"));
        let mut child = command.spawn().expect("kubectl runs");
        let lines = lines_of(&mut child);
        let mut ports = vec![0; remote.len()];
        while ports.contains(&0) {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!(
                        "kubectl port-forward did not listen: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    )
                });
            // "Forwarding from 127.0.0.1:41234 -> 8080"
            let Some((local, to)) = line
                .strip_prefix("Forwarding from 127.0.0.1:")
                .and_then(|rest| rest.split_once(" -> "))
            else {
                continue;
            };
            let (local, to): (u16, u16) = (
                local.parse().expect("a local port"),
                to.trim().parse().expect("a remote port"),
            );
            if let Some(i) = remote.iter().position(|&p| p == to) {
                ports[i] = local;
            }
        }
        Self {
            child,
            ports,
            stderr,
            _stdout: lines,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl port-forward` reaches a container's port and a Wasm container's (in a mixed pod,
/// whose network the container runtime makes), over WebSocket and over SPDY, with connections
/// at once; the Python client's WebSocket form too. A port nothing listens on, and a Wasm-only
/// pod (no network of its own), say why on kubectl's error output.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_port_forward_reaches_container_and_wasm_ports() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    let host = env.registry.host();
    push_misbehave(&env.registry).await;
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: served\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {}\n    command: [sh, -c, 'mkdir -p /www && echo page-from-the-container > /www/index.html && exec httpd -f -p 8080 -h /www']\n  - name: app\n    image: {host}/samples/misbehave:1\n    command: [misbehave, serve, '9090']\n",
        env.busybox
    ));
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wasm-only\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {host}/samples/misbehave:1\n    command: [misbehave, sleep]\n"
    ));
    cloud.wait_for("pod/served", "{.status.phase}", "Running", PULL);
    cloud.wait_for("pod/wasm-only", "{.status.phase}", "Running", PULL);

    // kubectl's WebSocket (SPDY tunnelled through the API server): both ports, and two
    // connections to one port at once.
    let forward = PortForward::start(&env, "served", &[8080, 9090], false);
    let web = format!("127.0.0.1:{}", forward.ports[0]);
    let app = format!("127.0.0.1:{}", forward.ports[1]);
    // Both servers start with the pod; wait until the container's answers.
    eventually(
        Duration::from_secs(30),
        || try_http_get(&web, "/index.html").is_ok_and(|a| a.contains("page-from-the-container")),
        || forward.stderr(),
    )
    .await;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| try_http_get(&web, "/index.html"));
        let b = s.spawn(|| try_http_get(&web, "/index.html"));
        (a.join().expect("join"), b.join().expect("join"))
    });
    for answer in [a, b] {
        let answer = answer.unwrap_or_else(|e| panic!("{e}: {}", forward.stderr()));
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains("page-from-the-container"),
            "{answer}"
        );
    }
    eventually(
        Duration::from_secs(30),
        || try_http_get(&app, "/").is_ok_and(|a| a.contains("misbehave on 9090")),
        || forward.stderr(),
    )
    .await;
    drop(forward);

    // kubectl's SPDY, passed through to CloudStream.
    let forward = PortForward::start(&env, "served", &[8080], true);
    let answer = http_get(&format!("127.0.0.1:{}", forward.ports[0]), "/index.html");
    assert!(answer.contains("page-from-the-container"), "{answer}");
    drop(forward);

    // The Python client's WebSocket form (`?ports=`).
    const SCRIPT: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "served", "default", ports="8080")
sock = pf.socket(8080)
sock.setblocking(True)
sock.sendall(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
answer = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
    if b"page-from-the-container" in answer:
        break
sys.stdout.write(answer.decode())
sock.close()
error = pf.error(8080)
if error:
    sys.stderr.write(error)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(cloud.kubeconfig())
        .output()
        .expect("python3 runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("page-from-the-container"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A port nothing listens on: the connection ends, and kubectl says why.
    let forward = PortForward::start(&env, "served", &[9999], false);
    let _ = try_http_get(&format!("127.0.0.1:{}", forward.ports[0]), "/");
    eventually(
        Duration::from_secs(30),
        || forward.stderr().contains("error forwarding port 9999"),
        || forward.stderr(),
    )
    .await;
    drop(forward);
    // A Wasm-only pod has no network: nothing in it can listen.
    let forward = PortForward::start(&env, "wasm-only", &[8080], false);
    let _ = try_http_get(&format!("127.0.0.1:{}", forward.ports[0]), "/");
    eventually(
        Duration::from_secs(30),
        || forward.stderr().contains("no network"),
        || forward.stderr(),
    )
    .await;
}

/// The usage of a pod as the metrics API serves it: container name → (CPU, memory) quantities.
fn pod_metrics(cloud: &Cloud, pod: &str) -> Option<Vec<(String, String, String)>> {
    let out = cloud.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{pod}"),
    ]);
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let containers = raw["containers"].as_array()?;
    Some(
        containers
            .iter()
            .map(|c| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (
                    text(&c["name"]),
                    text(&c["usage"]["cpu"]),
                    text(&c["usage"]["memory"]),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_top_shows_container_pods_beside_wasm_pods() {
    let env = mixed_edge(&["--usage-interval", "1s"]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: busy\nspec:\n  runtimeClassName: runc\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'while true; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 0.1; done']\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: tel\nspec:\n  runtimeClassName: wasm\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"50\"}}\n",
        env.busybox,
        env.registry.host()
    ));
    cloud.wait_for("pod/busy", "{.status.phase}", "Running", PULL);
    cloud.wait_for("pod/tel", "{.status.phase}", "Running", PULL);
    // Both runtimes' containers are measured: containerd's from the container's cgroup, the
    // Wasm runtime's from its own meters.
    for pod in ["busy", "tel"] {
        eventually(
            Duration::from_secs(30),
            || pod_metrics(cloud, pod).is_some(),
            || {
                format!(
                    "no metrics for {pod}: {:?}",
                    cloud.kubectl(&["top", "pod", pod])
                )
            },
        )
        .await;
    }
    let busy = pod_metrics(cloud, "busy").expect("busy's metrics");
    assert_eq!(busy.len(), 1, "{busy:?}");
    let (name, cpu, memory) = &busy[0];
    assert_eq!(name, "main");
    assert!(
        !cpu.is_empty() && cpu != "0",
        "a shell loop uses CPU: {busy:?}"
    );
    assert!(!memory.is_empty() && memory != "0", "{busy:?}");
    let tel = pod_metrics(cloud, "tel").expect("tel's metrics");
    assert!(
        tel.iter().any(|(n, _, m)| n == "app" && m != "0"),
        "{tel:?}"
    );
    // kubectl top lists both, each under its pod.
    let top = cloud.kubectl_ok(&["top", "pods", "--containers"]);
    assert!(
        top.lines()
            .any(|l| l.split_whitespace().take(2).eq(["busy", "main"])),
        "{top}"
    );
    assert!(
        top.lines()
            .any(|l| l.split_whitespace().take(2).eq(["tel", "app"])),
        "{top}"
    );
}

/// Jobs run container pods as they run Wasm pods (cli/tests/e2e/jobs.rs): a Job of busybox
/// pods completes two at a time, one whose pods exit 3 fails with `BackoffLimitExceeded`, and
/// a Job of Wasm pods completes beside them on the same edge.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_container_pods_to_completion_or_failure() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    let job = |name: &str, spec: &str, image: &str, command: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        command: {command}\n"
        )
    };
    cloud.apply(&job(
        "boxes",
        "  completions: 2\n  parallelism: 2\n",
        &env.busybox,
        "[sh, -c, 'echo job done']",
    ));
    cloud.apply(&job(
        "broken",
        "  backoffLimit: 0\n",
        &env.busybox,
        "[sh, -c, 'exit 3']",
    ));
    cloud.apply(&job(
        "wasm",
        "",
        &format!("{}/samples/hello:1", env.registry.host()),
        "[hello]",
    ));
    let wait = |name: &str, condition: &str| {
        let out = cloud.kubectl(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("job/{name}"),
            &format!("--timeout={}s", PULL.as_secs()),
        ]);
        assert!(
            out.status.success(),
            "job/{name} is not {condition}: {}\n{}\nedge: {}",
            String::from_utf8_lossy(&out.stderr),
            cloud.kubectl_ok(&["get", "jobs,pods", "-o", "yaml"]),
            env.edge.log()
        );
    };
    wait("boxes", "complete");
    wait("broken", "failed");
    wait("wasm", "complete");
    assert_eq!(env.jsonpath("job/boxes", "{.status.succeeded}"), "2");
    let logs = cloud.kubectl_ok(&["logs", "job/boxes"]);
    assert!(logs.contains("job done"), "{logs}");
    assert_eq!(
        env.jsonpath(
            "job/broken",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "BackoffLimitExceeded"
    );
    assert_eq!(
        env.jsonpath(
            "pods",
            "{.items[?(@.metadata.labels.job-name==\"broken\")].status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
}

/// Pod network addresses of the edge in [`a_job_of_more_container_pods_than_addresses_completes`].
const ADDRESSES: u8 = 8;

/// A finished container pod gives its address back, as under a kubelet (its sandbox is stopped,
/// its logs kept): a Job of more pods than the pod network has addresses completes on one edge,
/// and `kubectl logs` of its finished pods still works. After a restart of edgecore the finished
/// pods are not run again, and deleting the Job removes every sandbox they left.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_of_more_container_pods_than_addresses_completes() {
    let mut env = mixed_edge_on(|| Containerd::start_with_pod_addresses(ADDRESSES), &[]).await;
    let completions = usize::from(ADDRESSES) * 5 / 2;
    let busybox = env.busybox.clone();
    let job = |name: &str, completions: usize| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  completions: {completions}\n  parallelism: 4\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {}\n        command: [sh, -c, 'echo job done']\n",
            busybox
        )
    };
    let wait_complete = |env: &MixedEdge, name: &str| {
        let out = env.cloud.kubectl(&[
            "wait",
            "--for=condition=complete",
            &format!("job/{name}"),
            "--timeout=300s",
        ]);
        assert!(
            out.status.success(),
            "job/{name} is not complete: {}\n{}\nedge: {}",
            String::from_utf8_lossy(&out.stderr),
            env.cloud.kubectl_ok(&["get", "pods", "-o", "wide"]),
            env.edge.log()
        );
    };
    env.cloud.apply(&job("many", completions));
    wait_complete(&env, "many");
    assert_eq!(
        env.jsonpath("job/many", "{.status.succeeded}"),
        completions.to_string()
    );
    let names = env.jsonpath(
        "pods",
        "{range .items[?(@.metadata.labels.job-name==\"many\")]}{.metadata.name} {.status.phase} {.status.containerStatuses[0].state.terminated.exitCode}{\"\\n\"}{end}",
    );
    let pods: Vec<&str> = names.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(pods.len(), completions, "{names}");
    let ips = env.jsonpath(
        "pods",
        "{range .items[?(@.metadata.labels.job-name==\"many\")]}{.status.podIP}{\"\\n\"}{end}",
    );
    let distinct: std::collections::BTreeSet<&str> = ips.lines().collect();
    assert!(
        distinct.len() <= usize::from(ADDRESSES) && ips.lines().all(|ip| ip.starts_with("10.")),
        "{completions} pods on {ADDRESSES} addresses, each given back and used again: {ips}"
    );
    assert!(
        names.lines().all(|l| l.ends_with(" Succeeded 0")),
        "{names}"
    );
    // More pods ran than there are addresses: each finished pod gave its own back, and kept
    // its log.
    assert_eq!(env.cloud.kubectl_ok(&["logs", pods[0]]), "job done\n");
    let all = env
        .cloud
        .kubectl_ok(&["logs", "-l", "job-name=many", "--tail=-1"]);
    assert_eq!(all.matches("job done").count(), completions, "{all}");
    let uids: Vec<String> = pods.iter().map(|p| env.uid(p)).collect();
    let mut containers = Vec::new();
    for uid in &uids {
        let sandboxes = env.sandboxes_of(uid).await;
        assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
        assert!(!sandboxes[0].ready, "a finished pod's sandbox is stopped");
        containers.extend(env.containers_of(uid).await);
    }
    assert_eq!(containers.len(), completions);

    // edgecore restarted: the finished pods stay finished; a new Job runs beside them.
    env.restart_edge();
    env.cloud.apply(&job("after", 2));
    wait_complete(&env, "after");
    let mut again = Vec::new();
    for uid in &uids {
        again.extend(env.containers_of(uid).await);
    }
    assert_eq!(again, containers, "no finished pod ran again");

    // Deleted, the Jobs leave nothing in containerd, before the restart or after.
    env.cloud
        .kubectl_ok(&["delete", "job", "many", "after", "--cascade=foreground"]);
    let cri = CriRuntime::connect(&env.containerd.endpoint()).expect("endpoint");
    eventually(
        Duration::from_secs(120),
        || {
            let pods = env.cloud.kubectl_ok(&["get", "pods", "-o", "name"]);
            pods.trim().is_empty()
        },
        || env.cloud.kubectl_ok(&["get", "pods", "-o", "wide"]),
    )
    .await;
    let left = cri.list_sandboxes().await.expect("list sandboxes");
    cri.shutdown().await;
    assert!(left.is_empty(), "{left:?}");
}

/// `ip pod` of each line `ip pod status` whose status is `True`.
fn ready_lines(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_suffix(" True"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_over_container_pods_lists_each_sandbox_ip_once_its_probe_passes() {
    let env = mixed_edge(&[]).await;
    let cloud = &env.cloud;
    env.runtime_classes();
    // Ready once /tmp/ready exists, made after 2 s.
    cloud.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: boxes}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: boxes}}}}
  template:
    metadata: {{labels: {{app: boxes}}}}
    spec:
      runtimeClassName: runc
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {}
        command: [sh, -c, 'sleep 2; touch /tmp/ready; sleep 3600']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: boxes}}
spec:
  selector: {{app: boxes}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#,
        env.busybox
    ));
    let pods = || {
        env.jsonpath(
            "pods",
            "{range .items[?(@.metadata.labels.app==\"boxes\")]}{.status.podIP} {.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        )
    };
    let endpoints = || {
        let text = env.jsonpath(
            "endpoints/boxes",
            "{range .subsets[*].addresses[*]}{.ip} {.targetRef.name} True{\"\\n\"}{end}",
        );
        ready_lines(&text)
    };
    let slices = || {
        let text = cloud.kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=boxes",
            "-o",
            "jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {.targetRef.name} {.conditions.ready}{\"\\n\"}{end}",
        ]);
        ready_lines(&text.replace(" true", " True"))
    };
    let state = || {
        format!(
            "{}\nedge: {}",
            cloud.kubectl_ok(&["get", "pods,endpoints,endpointslices", "-o", "yaml"]),
            env.edge.log()
        )
    };
    // Both pods pass their probe: each is listed at its own sandbox's IP.
    eventually(PULL, || ready_lines(&pods()).len() == 2, state).await;
    let ready = ready_lines(&pods());
    let ips: std::collections::BTreeSet<&str> =
        ready.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(ips.len(), 2, "two sandboxes, two IPs: {ready:?}");
    eventually(PULL, || endpoints() == ready && slices() == ready, state).await;
    let table = cloud.kubectl_ok(&["get", "endpoints", "boxes"]);
    for ip in &ips {
        assert!(table.contains(&format!("{ip}:8080")), "{table}");
    }
    // Scaled to one: the pod that goes leaves both.
    cloud.kubectl_ok(&["scale", "deployment/boxes", "--replicas=1"]);
    eventually(
        PULL,
        || pods().lines().filter(|l| !l.trim().is_empty()).count() == 1,
        state,
    )
    .await;
    let left = ready_lines(&pods());
    assert_eq!(left.len(), 1, "{left:?}");
    eventually(PULL, || endpoints() == left && slices() == left, state).await;
}

/// Who a token is, by a TokenReview (`""`: not authenticated).
fn whose_token(cloud: &Cloud, token: &str) -> String {
    let review = format!(
        "{{\"apiVersion\": \"authentication.k8s.io/v1\", \"kind\": \"TokenReview\", \"spec\": {{\"token\": \"{token}\"}}}}"
    );
    let out = kubectl_with_input(
        cloud,
        &[
            "create",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.user.username}",
        ],
        review.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// ServiceAccount tokens, as Kubernetes gives them: a Wasm pod and a container pod each read
/// a token bound to them (asked of the cloud by the edge) from kube's projected volume, with
/// the cluster CA and their namespace; `automountServiceAccountToken: false` mounts nothing; a
/// legacy token Secret is filled and authenticates; a pod naming a missing account is refused
/// with kube's message.
#[tokio::test(flavor = "multi_thread")]
async fn pods_on_an_edge_read_their_service_account_token() {
    let env = mixed_edge(&[]).await;
    push_misbehave(&env.registry).await;
    let cloud = &env.cloud;
    cloud.apply(&misbehave_pod("wasm-sa", &env.registry.host(), &["sleep"]));
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box-sa\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sleep, '3600']\n",
        env.busybox
    ));
    cloud.wait_for("pod/wasm-sa", "{.status.phase}", "Running", PULL);
    cloud.wait_for("pod/box-sa", "{.status.phase}", "Running", PULL);
    let ca = std::fs::read_to_string(cloud.root.join("apiserver/pki/ca.crt")).expect("the CA");

    // The container reads the files with busybox's cat.
    let read = |pod: &str, file: &str| {
        cloud.kubectl_ok(&["exec", pod, "--", "cat", &format!("{SA_DIR}/{file}")])
    };
    let token = read("box-sa", "token");
    assert_eq!(
        whose_token(cloud, token.trim()),
        "system:serviceaccount:default:default"
    );
    assert_eq!(read("box-sa", "namespace"), "default");
    assert_eq!(read("box-sa", "ca.crt").trim(), ca.trim());

    // The Wasm guest reads its own through its preopened volume.
    let wasm_read = |file: &str| {
        let out = cloud.kubectl_ok(&[
            "exec",
            "wasm-sa",
            "--",
            "misbehave",
            "read",
            &format!("{SA_DIR}/{file}"),
        ]);
        match out.trim().strip_prefix("read: ") {
            Some(content) => content.to_owned(),
            None => panic!("kubectl exec wasm-sa -- misbehave read {file} printed {out:?}"),
        }
    };
    let wasm_token = wasm_read("token");
    assert_ne!(wasm_token, token.trim(), "each pod has a token of its own");
    assert_eq!(
        whose_token(cloud, &wasm_token),
        "system:serviceaccount:default:default",
        "the Wasm pod's token {wasm_token:?}"
    );
    assert_eq!(wasm_read("namespace"), "default");
    // Bound to the pod: once the pod is gone, so is the token.
    cloud.kubectl_ok(&["delete", "pod", "wasm-sa", "--wait=true"]);
    assert_eq!(whose_token(cloud, &wasm_token), "");

    // automountServiceAccountToken: false mounts nothing.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: no-token\nspec:\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    command: [sleep, '3600']\n",
        env.busybox
    ));
    cloud.wait_for("pod/no-token", "{.status.phase}", "Running", PULL);
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "no-token", "-o", "jsonpath={.spec.volumes}"]),
        ""
    );
    let listed = cloud.kubectl(&["exec", "no-token", "--", "ls", SA_DIR]);
    assert!(!listed.status.success(), "nothing is mounted");

    // A legacy token Secret is filled by the token controller and authenticates.
    cloud.apply(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: default-token\n  annotations:\n    kubernetes.io/service-account.name: default\ntype: kubernetes.io/service-account-token\n",
    );
    let mut legacy = String::new();
    eventually(
        Duration::from_secs(30),
        || {
            legacy = cloud.kubectl_ok(&[
                "get",
                "secret",
                "default-token",
                "-o",
                "jsonpath={.data.token}",
            ]);
            !legacy.is_empty()
        },
        || "the Secret was not filled".to_owned(),
    )
    .await;
    use base64::Engine as _;
    let legacy = base64::engine::general_purpose::STANDARD
        .decode(legacy.trim())
        .expect("base64");
    let legacy = String::from_utf8(legacy).expect("utf8");
    assert_eq!(
        whose_token(cloud, &legacy),
        "system:serviceaccount:default:default"
    );

    // A pod naming an account that does not exist is refused as kube refuses it.
    let out = kubectl_with_input(
        cloud,
        &["create", "-f", "-"],
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: ghostly\nspec:\n  serviceAccountName: ghost\n  containers:\n  - name: main\n    image: busybox\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "pods \"ghostly\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        ),
        "{stderr}"
    );
}
