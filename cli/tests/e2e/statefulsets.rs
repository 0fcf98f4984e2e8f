//! A StatefulSet of Wasm pods on a real edge: made one at a time in ordinal order (each once
//! the one before runs and is Ready), scaled down from the highest ordinal, rolled to a new
//! template and back with the real `kubectl rollout undo`, as a `kubectl get pods --watch`
//! sees it. cloudcore runs the embedded API server and control plane; edgecore runs the pods.

use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::support::{Killed, OneEdge, lines_of};

/// A StatefulSet `counter` of `misbehave sleep` pods.
fn counter(registry: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: counter}}
spec:
  replicas: {replicas}
  serviceName: counter
  selector: {{matchLabels: {{app: counter}}}}
  template:
    metadata: {{labels: {{app: counter}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {registry}/samples/misbehave:1
        command: [misbehave, sleep]
"#
    )
}

/// `kubectl get pods --watch` of the set's pods, one line per change: `ADDED counter-0 `,
/// `MODIFIED counter-0 True` (Ready), `DELETED counter-2 ...`.
struct Watch {
    _kubectl: Killed,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn start(env: &OneEdge) -> Self {
        let mut child = env
            .cloud
            .kubectl_command(&[
                "get",
                "pods",
                "-l",
                "app=counter",
                "--watch",
                "--output-watch-events",
                "-o",
                "jsonpath={.type} {.object.metadata.name} {.object.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch runs");
        let lines = lines_of(&mut child);
        Self {
            _kubectl: Killed(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads what the watch printed until now.
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line.trim().to_owned());
        }
        &self.seen
    }

    /// Waits until a line `line` comes after position `from`; its position.
    fn until(&mut self, line: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let matches = |l: &String| l == line || l.starts_with(&format!("{line} "));
            if let Some(i) = self.drain().iter().skip(from).position(matches) {
                return from + i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {line:?} in {:?}", self.seen);
            if let Ok(l) = self.lines.recv_timeout(left) {
                self.seen.push(l.trim().to_owned());
            }
        }
    }

    /// Where a line starting with `prefix` first is at or after `from`.
    fn first(&mut self, prefix: &str, from: usize) -> Option<usize> {
        self.drain()
            .iter()
            .skip(from)
            .position(|l| l.starts_with(prefix))
            .map(|i| from + i)
    }
}

/// `kubectl rollout status sts/counter` until it is rolled out.
fn rolled_out(env: &OneEdge) -> String {
    let out = env
        .cloud
        .kubectl(&["rollout", "status", "sts/counter", "--timeout=120s"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let state = env
            .cloud
            .kubectl(&["get", "sts,pods,controllerrevisions", "-o", "yaml"]);
        panic!(
            "sts/counter did not roll out: {said}{}\n{}\ncloudcore: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&state.stdout),
            env.cloud.log()
        );
    }
    said
}

fn jsonpath(env: &OneEdge, object: &str, path: &str) -> String {
    env.cloud
        .kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")])
}

/// The `MODE` env of each pod, in name order.
fn modes(env: &OneEdge) -> Vec<String> {
    let text = jsonpath(
        env,
        "pods",
        "{range .items[?(@.metadata.labels.app==\"counter\")]}{.metadata.name}={.spec.containers[0].env[?(@.name==\"MODE\")].value}{\"\\n\"}{end}",
    );
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_of_wasm_pods_scales_in_order_and_rolls_back() {
    let env = OneEdge::start().await;
    let registry = env.registry.host();
    let mut watch = Watch::start(&env);
    let minute = Duration::from_secs(60);

    // Made in order: each pod once the one before is Running and Ready.
    env.cloud.apply(&counter(&registry, 3));
    let said = rolled_out(&env);
    assert!(said.contains("3 new pods have been updated"), "{said}");
    let ready0 = watch.until("MODIFIED counter-0 True", 0, minute);
    let made1 = watch.until("ADDED counter-1", 0, minute);
    let ready1 = watch.until("MODIFIED counter-1 True", 0, minute);
    let made2 = watch.until("ADDED counter-2", 0, minute);
    assert!(ready0 < made1 && ready1 < made2, "{:?}", watch.seen);
    let placed = jsonpath(
        &env,
        "pods",
        "{range .items[?(@.metadata.labels.app==\"counter\")]}{.metadata.name} {.status.phase} {.spec.nodeName} {.spec.hostname}{\"\\n\"}{end}",
    );
    assert_eq!(
        placed.lines().collect::<Vec<_>>(),
        [
            "counter-0 Running edge-a counter-0",
            "counter-1 Running edge-a counter-1",
            "counter-2 Running edge-a counter-2",
        ]
    );
    let table = env.cloud.kubectl_ok(&["get", "sts", "counter"]);
    assert!(table.contains("3/3"), "{table}");

    // Scaled down to one: counter-2 goes first, then counter-1.
    let mark = watch.drain().len();
    env.cloud
        .kubectl_ok(&["scale", "sts/counter", "--replicas=1"]);
    let gone2 = watch.until("DELETED counter-2", mark, minute);
    let gone1 = watch.until("DELETED counter-1", mark, minute);
    assert!(gone2 < gone1, "{:?}", watch.seen);
    env.cloud
        .wait_for("sts/counter", "{.status.replicas}", "1", minute);
    // And up again.
    env.cloud
        .kubectl_ok(&["scale", "sts/counter", "--replicas=3"]);
    rolled_out(&env);

    // A new template rolls from the highest ordinal down.
    let first = jsonpath(&env, "sts/counter", "{.status.updateRevision}");
    let mark = watch.drain().len();
    env.cloud
        .kubectl_ok(&["set", "env", "sts/counter", "MODE=two"]);
    rolled_out(&env);
    let deadline = Instant::now() + minute;
    while modes(&env) != ["counter-0=two", "counter-1=two", "counter-2=two"] {
        assert!(Instant::now() < deadline, "{:?}", modes(&env));
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone: Vec<Option<usize>> = [
        "DELETED counter-2",
        "DELETED counter-1",
        "DELETED counter-0",
    ]
    .iter()
    .map(|l| watch.first(l, mark))
    .collect();
    assert!(
        gone.iter().all(Option::is_some) && gone[0] < gone[1] && gone[1] < gone[2],
        "{:?}",
        watch.seen
    );
    let second = jsonpath(&env, "sts/counter", "{.status.updateRevision}");
    assert_ne!(first, second);
    let history = env.cloud.kubectl_ok(&["rollout", "history", "sts/counter"]);
    assert!(
        history.lines().any(|l| l.trim_start().starts_with('2')),
        "{history}"
    );

    // The real `kubectl rollout undo` takes it back to the first template.
    let undone = env.cloud.kubectl_ok(&["rollout", "undo", "sts/counter"]);
    assert!(undone.contains("rolled back"), "{undone}");
    rolled_out(&env);
    let deadline = Instant::now() + minute;
    while modes(&env) != ["counter-0=", "counter-1=", "counter-2="] {
        assert!(Instant::now() < deadline, "{:?}", modes(&env));
        std::thread::sleep(Duration::from_millis(200));
    }
    env.cloud.wait_for(
        "sts/counter",
        "{.status.currentRevision} {.status.updateRevision}",
        &format!("{first} {first}"),
        minute,
    );
    let history = env.cloud.kubectl_ok(&["rollout", "history", "sts/counter"]);
    let numbers: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(numbers, ["2", "3"], "{history}");

    // A template the edge refuses: its first pod says why, and nothing more is made or retried.
    let refused = counter(&registry, 2)
        .replace("name: counter", "name: refused")
        .replace("app: counter", "app: refused")
        .replace("serviceName: counter", "serviceName: refused")
        .replace(
            "        command: [misbehave, sleep]\n",
            "        command: [misbehave, sleep]\n        volumeMounts: [{name: share, mountPath: /share}]\n      volumes: [{name: share, nfs: {server: 10.0.0.1, path: /}}]\n",
        );
    env.cloud.apply(&refused);
    env.cloud.wait_for(
        "pod/refused-0",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CreateContainerConfigError",
        minute,
    );
    let why = jsonpath(
        &env,
        "pod/refused-0",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(why.contains("edges mount"), "{why}");
    let made = jsonpath(
        &env,
        "events",
        "{range .items[?(@.involvedObject.name==\"refused\")]}{.reason}{\"\\n\"}{end}",
    );
    assert_eq!(
        made.lines().filter(|r| *r == "SuccessfulCreate").count(),
        1,
        "{made}"
    );
    assert!(
        !env.cloud
            .kubectl(&["get", "pod", "refused-1"])
            .status
            .success(),
        "refused-1 waits for refused-0 to be Ready"
    );
    assert_eq!(
        jsonpath(
            &env,
            "sts/refused",
            "{.status.replicas}/{.status.readyReplicas}"
        ),
        "1/"
    );
}

/// A StatefulSet `notes` of one `misbehave sleep` pod with a claim `data` mounted at `/data`.
fn notes(registry: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: notes}}
spec:
  replicas: 1
  serviceName: notes
  selector: {{matchLabels: {{app: notes}}}}
  template:
    metadata: {{labels: {{app: notes}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {registry}/samples/misbehave:1
        command: [misbehave, sleep]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claims_file_survives_its_pod_on_the_edges_local_storage() {
    let volumes = tempfile::tempdir().expect("volume root");
    let root = volumes.path().to_str().expect("utf-8 path").to_owned();
    let env = OneEdge::start_with(&["--local-volume-root", &root]).await;
    let minute = Duration::from_secs(60);
    // The edge says it offers local storage, and where.
    env.cloud.wait_for(
        "node/edge-a",
        "{.metadata.annotations.storage\\.wedge\\.io/local-path-root}",
        &root,
        minute,
    );
    assert_eq!(
        jsonpath(
            &env,
            "node/edge-a",
            "{.metadata.labels.storage\\.wedge\\.io/local-path}"
        ),
        "true"
    );

    env.cloud.apply(&notes(&env.registry.host()));
    env.cloud
        .wait_for("pod/notes-0", "{.status.phase}", "Running", minute);
    // The claim is bound to a volume on edge-a, under the edge's root.
    let claim_uid = jsonpath(&env, "pvc/data-notes-0", "{.metadata.uid}");
    assert_eq!(
        jsonpath(
            &env,
            "pvc/data-notes-0",
            "{.status.phase} {.spec.volumeName}"
        ),
        format!("Bound pvc-{claim_uid}")
    );
    let dir = format!("{root}/pvc-{claim_uid}_default_data-notes-0");
    assert_eq!(
        jsonpath(
            &env,
            &format!("pv/pvc-{claim_uid}"),
            "{.spec.hostPath.path} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.status.phase}"
        ),
        format!("{dir} edge-a Bound")
    );

    // A file written in the pod is on the edge's disk.
    let wrote = env.cloud.kubectl_ok(&[
        "exec",
        "notes-0",
        "--",
        "misbehave",
        "write",
        "/data/note.txt",
        "kept",
    ]);
    assert!(wrote.contains("wrote"), "{wrote}");
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/note.txt")).expect("the file on the edge"),
        "kept"
    );

    // The pod deleted and made again reads it back, from the same claim.
    let first = jsonpath(&env, "pod/notes-0", "{.metadata.uid}");
    // Not waited for by kubectl: its wait lists the pods after its first look, and when the
    // edge confirms the deletion and the set makes notes-0 again in between, it sees only the
    // new pod and waits for a deletion it already missed. The loop below waits instead.
    env.cloud
        .kubectl_ok(&["delete", "pod", "notes-0", "--wait=false"]);
    let deadline = Instant::now() + minute;
    loop {
        let now = env.cloud.kubectl(&[
            "get",
            "pod",
            "notes-0",
            "-o",
            "jsonpath={.metadata.uid} {.status.phase}",
        ]);
        let said = String::from_utf8_lossy(&now.stdout).into_owned();
        if !said.starts_with(&first) && said.ends_with("Running") {
            break;
        }
        assert!(Instant::now() < deadline, "notes-0 not back: {said}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let read = env.cloud.kubectl_ok(&[
        "exec",
        "notes-0",
        "--",
        "misbehave",
        "read",
        "/data/note.txt",
    ]);
    assert!(read.contains("read: kept"), "{read}");
    assert_eq!(
        jsonpath(&env, "pvc/data-notes-0", "{.metadata.uid}"),
        claim_uid,
        "the same claim"
    );
}
