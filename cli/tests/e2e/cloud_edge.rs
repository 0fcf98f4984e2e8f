//! Cloud to edge through real processes: `cloudcore` (embedded API server, control plane,
//! CloudHub), `edgecore` joined with a token from `wedge token create`, the real `kubectl`, a
//! real registry serving the sample apps. Each test gets its own ports and directories.
//! [`super::containers`] adds a containerd of its own to the edge.

use std::process::Command;
use std::time::{Duration, Instant};

use super::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_lands_on_its_edge_with_its_config_and_leaves_when_deleted() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), &registry.host());
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    let labels = cloud.kubectl_ok(&["get", "node", "edge-a", "-o", "jsonpath={.metadata.labels}"]);
    assert!(labels.contains("runtime.wedge.io/wasm"), "{labels}");

    // A pod with env from a ConfigMap and a Secret runs on the edge and says what it got.
    cloud.kubectl_ok(&[
        "create",
        "configmap",
        "greeting",
        "--from-literal=NAME=edge-world",
    ]);
    cloud.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=TOKEN=s3cr3t",
    ]);
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {}/samples/hello:1\n    env:\n    - name: NAME\n      valueFrom: {{configMapKeyRef: {{name: greeting, key: NAME}}}}\n    - name: TOKEN\n      valueFrom: {{secretKeyRef: {{name: creds, key: TOKEN}}}}\n",
        registry.host()
    ));
    cloud.wait_for(
        "pod/hello",
        "{.status.phase}",
        "Succeeded",
        Duration::from_secs(90),
    );
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "hello", "-o", "jsonpath={.spec.nodeName}"]),
        "edge-a"
    );
    let uid = cloud.kubectl_ok(&["get", "pod", "hello", "-o", "jsonpath={.metadata.uid}"]);
    let log =
        std::fs::read_to_string(edge_root.join(format!("pods/default_hello_{uid}/hello/0.log")))
            .expect("the pod's log on the edge");
    assert!(log.contains("edge-world"), "env from the ConfigMap: {log}");

    // A ConfigMap update reaches the edge's store.
    cloud.kubectl_ok(&[
        "patch",
        "configmap",
        "greeting",
        "-p",
        "{\"data\":{\"NAME\":\"changed\"}}",
    ]);
    let meta = wedge_edge::store::Database::inspect(&edge_root.join("edge.db"))
        .expect("edge db")
        .meta();
    let key = wedge_core::protocol::ObjectKey {
        kind: wedge_core::protocol::ResourceKind::ConfigMap,
        namespace: "default".into(),
        name: "greeting".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = meta
            .get(&key)
            .expect("read")
            .map(|o| o.object["data"]["NAME"].clone());
        if held == Some(serde_json::json!("changed")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update did not reach the edge: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A long-running pod: Running with the node's name and address, then deleted: the edge
    // stops it and confirms, and it is gone from the API.
    cloud.apply(&telemetry_pod("telemetry", &registry.host()));
    cloud.wait_for(
        "pod/telemetry",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "telemetry", "-o", "jsonpath={.status.podIP}"]),
        "127.0.0.1"
    );
    cloud.wait_for(
        "pod/telemetry",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(10),
    );
    cloud.kubectl_ok(&["delete", "pod", "telemetry", "--wait=false"]);
    cloud.wait_gone("pod/telemetry", Duration::from_secs(30));
    assert!(
        edge.log().contains("pod stopped; deletion confirmed"),
        "{}",
        edge.log()
    );
    // Deleting the pods that referenced them takes the ConfigMap and Secret off the edge.
    cloud.kubectl_ok(&["delete", "pod", "hello"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while meta.get(&key).expect("read").is_some() {
        assert!(
            Instant::now() < deadline,
            "the ConfigMap stayed on the edge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_edge_keeps_its_pods_without_the_cloud_and_the_resync_sends_only_changes() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let mut edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), &registry.host());
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    cloud.apply(&telemetry_pod("keep", &registry.host()));
    cloud.apply(&telemetry_pod("drop", &registry.host()));
    cloud.wait_for(
        "pod/keep",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_for(
        "pod/drop",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    let keep_uid = cloud.kubectl_ok(&["get", "pod", "keep", "-o", "jsonpath={.metadata.uid}"]);

    // The edge dies; meanwhile one pod is deleted and another created for it.
    edge.kill();
    cloud.kubectl_ok(&["delete", "pod", "drop", "--wait=false"]);
    cloud.apply(&telemetry_pod("new", &registry.host()));
    cloud.wait_for(
        "pod/new",
        "{.spec.nodeName}",
        "edge-a",
        Duration::from_secs(20),
    );

    // The cloud dies too; the edge restarts alone and brings its pods back from SQLite.
    cloud.kill();
    let before = edge.log().matches("pod started").count();
    let edge = start_edge(&edge_root, &cloud, "edge-a", None, &registry.host());
    let deadline = Instant::now() + Duration::from_secs(30);
    while edge.log().matches("pod started").count() < before + 2 {
        assert!(
            Instant::now() < deadline,
            "pods did not restart offline: {}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The cloud comes back: the resync sends the deletion and the new pod, nothing else.
    cloud.restart();
    cloud.wait_for(
        "pod/new",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_gone("pod/drop", Duration::from_secs(30));
    assert_eq!(cloud.metric("wedge_cloudhub_resyncs_total", "edge-a"), 1.0);
    assert_eq!(
        cloud.metric("wedge_cloudhub_resync_frames_total", "edge-a"),
        2.0,
        "only the deleted and the new pod are sent\n{}",
        cloud.log()
    );
    let bytes = cloud.metric("wedge_cloudhub_resync_bytes_total", "edge-a");
    assert!(bytes > 0.0 && bytes < 16_000.0, "resync bytes {bytes}");
    cloud.wait_for(
        "pod/keep",
        "{.status.phase}",
        "Running",
        Duration::from_secs(10),
    );
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "keep", "-o", "jsonpath={.metadata.uid}"]),
        keep_uid,
        "the pod was not recreated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_that_cannot_work_say_why_and_edges_are_only_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let run = |name: &str, token: &str| -> String {
        let root = dir.path().join(name);
        let command = edgecore(&root, &cloud, name, Some(token), "127.0.0.1:1");
        let out = exits(command);
        assert!(!out.status.success(), "{name} must fail");
        assert!(
            !root.join("pki/edge.crt").exists(),
            "{name} got no certificate"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (hash, rest) = token.split_once('.').expect("token");
    let (id, _) = rest.split_once('.').expect("token");

    let wrong_secret = run("wrong-secret", &format!("{hash}.{id}.0000000000000000"));
    assert!(wrong_secret.contains("wrong secret"), "{wrong_secret}");
    let unknown = run("unknown", &format!("{hash}.zzzzzz.0000000000000000"));
    assert!(unknown.contains("unknown token zzzzzz"), "{unknown}");
    let other_ca = run("other-ca", &format!("{}.{rest}", "0".repeat(64)));
    assert!(
        other_ca.contains("presented a CA whose hash is"),
        "{other_ca}"
    );
    // A cluster's other bootstrap tokens (here one shaped like kubeadm's for kubelets) cannot
    // join edges, even with the right secret.
    cloud.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "bootstrap-token-kubelt",
        "-n",
        "kube-system",
        "--type=bootstrap.kubernetes.io/token",
        "--from-literal=token-id=kubelt",
        "--from-literal=token-secret=0123456789abcdef",
        "--from-literal=usage-bootstrap-authentication=true",
        "--from-literal=auth-extra-groups=system:bootstrappers:kubeadm:default-node-token",
    ]);
    let kubelet = run("kubelet-token", &format!("{hash}.kubelt.0123456789abcdef"));
    assert!(kubelet.contains("cannot join edges"), "{kubelet}");
    let short = cloud.token("1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = run("expired", &short);
    assert!(
        expired.contains("expired") && expired.contains("wedge token create"),
        "{expired}"
    );
    // A hub dialled at an address its certificate does not cover: the edge says which flag
    // fixes it. (127.0.0.2 is loopback, but not among the names the certificate lists.)
    let unnamed_cloud = Cloud::start_on(&dir.path().join("cloud-2"), "127.0.0.2");
    let unnamed_token = unnamed_cloud.token("1h");
    let out = exits(edgecore(
        &dir.path().join("unnamed"),
        &unnamed_cloud,
        "unnamed",
        Some(&unnamed_token),
        "127.0.0.1:1",
    ));
    let unnamed = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{unnamed}");
    assert!(
        unnamed.contains("does not cover 127.0.0.2")
            && unnamed.contains("--advertise-address 127.0.0.2"),
        "{unnamed}"
    );
    assert!(!dir.path().join("unnamed/pki/edge.crt").exists());
    drop(unnamed_cloud);
    let never = Command::new(env!("CARGO_BIN_EXE_edgecore"))
        .arg("--root")
        .arg(dir.path().join("never"))
        .args(["--cloud", &cloud.hub])
        .output()
        .expect("edgecore");
    assert!(String::from_utf8_lossy(&never.stderr).contains("has not joined"));

    // A joined edge that claims to be another node is refused and the other node untouched.
    let b_root = dir.path().join("edge-b");
    let edge_b = start_edge(&b_root, &cloud, "edge-b", Some(&token), "127.0.0.1:1");
    cloud.wait_for(
        "node/edge-b",
        "{.metadata.name}",
        "edge-b",
        Duration::from_secs(60),
    );
    drop(edge_b);
    let liar = Proc::spawn(
        edgecore(&b_root, &cloud, "edge-a", None, "127.0.0.1:1"),
        b_root.join("liar.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !liar.log().contains("Forbidden") {
        assert!(Instant::now() < deadline, "not refused: {}", liar.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        liar.log().contains("certificate is for node edge-b"),
        "{}",
        liar.log()
    );
    assert!(
        !cloud.kubectl(&["get", "node", "edge-a"]).status.success(),
        "edge-a was never registered"
    );
    assert!(cloud.metric("wedge_cloudhub_frames_refused_total", "edge-b") >= 1.0);
}

/// The number after "tick " in a telemetry log line.
fn tick_of(line: &str) -> Option<u64> {
    line.split("tick ").nth(1)?.split(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_reaches_edge_pods_through_cloudstream() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let mut edge = start_edge(
        &dir.path().join("edge-a"),
        &cloud,
        "edge-a",
        Some(&token),
        &registry.host(),
    );
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    // The edge's Node sends the API server to CloudStream; its own IP stays its InternalIP.
    let port = cloud.stream.rsplit(':').next().expect("a port").to_owned();
    cloud.wait_for(
        "node/edge-a",
        "{.status.daemonEndpoints.kubeletEndpoint.Port}",
        &port,
        Duration::from_secs(30),
    );
    assert_eq!(
        cloud.kubectl_ok(&[
            "get",
            "node",
            "edge-a",
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalDNS\")].address}"
        ]),
        "127.0.0.1"
    );

    // A finished pod's log, whole.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {}/samples/hello:1\n    args: [one, two]\n",
        registry.host()
    ));
    cloud.wait_for(
        "pod/hello",
        "{.status.phase}",
        "Succeeded",
        Duration::from_secs(90),
    );
    assert_eq!(
        cloud.kubectl_ok(&["logs", "hello"]),
        "Hello from Wedge!\nargs: one two\nhello: done\n"
    );
    assert_eq!(
        cloud.kubectl_ok(&["logs", "hello", "--tail=1"]),
        "hello: done\n"
    );
    assert_eq!(
        cloud.kubectl_ok(&["logs", "hello", "--limit-bytes=5"]),
        "Hello"
    );
    let stamped = cloud.kubectl_ok(&["logs", "hello", "--timestamps"]);
    let first = stamped.lines().next().unwrap_or_default();
    let (time, text) = first.split_once(' ').expect("a timestamp, then the line");
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "{first}");
    assert_eq!(text, "Hello from Wedge!");
    assert!(
        cloud
            .kubectl_ok(&["logs", "hello", "--since=1h"])
            .contains("args: one two")
    );
    assert_eq!(
        cloud.kubectl_ok(&["logs", "hello", "--since-time=2099-01-01T00:00:00Z"]),
        ""
    );
    // What does not exist says so, as a kubelet says it.
    let previous = cloud.kubectl(&["logs", "hello", "--previous"]);
    assert!(!previous.status.success());
    assert!(
        String::from_utf8_lossy(&previous.stderr)
            .contains("previous terminated container \"hello\" in pod \"hello\" not found"),
        "{}",
        String::from_utf8_lossy(&previous.stderr)
    );

    // Two running pods with one label: `-l --prefix` reads both, `-f` follows as lines come.
    for name in ["tel-a", "tel-b"] {
        cloud.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: tel}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: {}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"200\"}}\n",
            registry.host()
        ));
    }
    for name in ["tel-a", "tel-b"] {
        cloud.wait_for(
            &format!("pod/{name}"),
            "{.status.phase}",
            "Running",
            Duration::from_secs(60),
        );
    }
    eventually(
        Duration::from_secs(20),
        || {
            let out = cloud.kubectl_ok(&["logs", "-l", "app=tel", "--prefix"]);
            out.contains("[pod/tel-a/app] telemetry: tick")
                && out.contains("[pod/tel-b/app] telemetry: tick")
        },
        || cloud.kubectl_ok(&["logs", "-l", "app=tel", "--prefix"]),
    )
    .await;
    let mut follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig())
        .args(["logs", "-f", "tel-a", "--tail=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let lines = lines_of(&mut follow);
    let mut ticks = Vec::new();
    while ticks.len() < 4 {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("followed lines keep coming");
        ticks.extend(tick_of(&line));
    }
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ticks, as written: {ticks:?}"
    );
    assert!(
        follow.try_wait().expect("status").is_none(),
        "still following"
    );

    // The edge going away ends the follow with an error, not a hang; new requests are told
    // the node is not connected, and since when.
    edge.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = follow.try_wait().expect("status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl logs -f hung after the edge went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(follow.stderr.as_mut().expect("piped stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "an error, not a clean end: {stderr}");
    let gone = cloud.kubectl(&["logs", "tel-b"]);
    let said = String::from_utf8_lossy(&gone.stderr).into_owned();
    assert!(
        !gone.status.success()
            && said.contains("node edge-a is not connected to cloudcore: its connection ended at"),
        "{said}"
    );
}

/// The row of `kubectl top ...` whose first cells are `first`, split into cells.
fn top_row(cloud: &Cloud, args: &[&str], first: &[&str]) -> Option<Vec<String>> {
    let out = cloud.kubectl(args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let cells: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            cells
                .starts_with(&first.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .then_some(cells)
        })
}

/// Whole mebibytes in a `kubectl top` memory cell (`12Mi`).
fn mebibytes(cell: &str) -> u64 {
    cell.strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{cell:?} is not kubectl top's memory"))
}

/// Millicores in a `kubectl top` CPU cell (`3m`).
fn millicores(cell: &str) -> u64 {
    cell.strip_suffix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{cell:?} is not kubectl top's CPU"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_top_shows_edge_nodes_and_pods_from_the_usage_edges_push() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let root = dir.path().join("edge-a");
    std::fs::create_dir_all(&root).expect("edge root");
    let mut command = edgecore(&root, &cloud, "edge-a", Some(&token), &registry.host());
    command.args(["--usage-interval", "1s"]);
    let edge = Proc::spawn(command, root.join("edgecore.log"));
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    // Discovery names the metrics API, as metrics-server's registration does.
    let resources = cloud.kubectl_ok(&["api-resources", "--api-group=metrics.k8s.io"]);
    assert!(
        resources.contains("nodes") && resources.contains("NodeMetrics"),
        "{resources}"
    );
    assert!(resources.contains("PodMetrics"), "{resources}");

    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tel\n  labels: {{app: tel}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: {}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"50\"}}\n",
        registry.host()
    ));
    // A pod no node can take: it exists, but nothing measures it.
    cloud.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nowhere\nspec:\n  nodeSelector: {no-such-label: x}\n  containers:\n  - name: app\n    image: example.invalid/app:1\n",
    );
    cloud.wait_for(
        "pod/tel",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    let top_nodes = ["top", "nodes"];
    eventually(
        Duration::from_secs(30),
        || top_row(&cloud, &top_nodes, &["edge-a"]).is_some(),
        || {
            format!(
                "kubectl top nodes: {:?}\n{}",
                cloud.kubectl(&top_nodes),
                edge.log()
            )
        },
    )
    .await;
    // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%): the machine's own figures.
    let node = top_row(&cloud, &top_nodes, &["edge-a"]).expect("edge-a listed");
    let _ = millicores(&node[1]);
    assert!(mebibytes(&node[3]) > 0, "{node:?}");

    let top_pods = ["top", "pods", "-A"];
    eventually(
        Duration::from_secs(30),
        || top_row(&cloud, &top_pods, &["default", "tel"]).is_some(),
        || format!("kubectl top pods -A: {:?}", cloud.kubectl(&top_pods)),
    )
    .await;
    // NAMESPACE NAME CPU(cores) MEMORY(bytes): a Rust guest's linear memory is over a MiB.
    let pod = top_row(&cloud, &top_pods, &["default", "tel"]).expect("tel listed");
    let _ = millicores(&pod[2]);
    assert!(mebibytes(&pod[3]) >= 1, "{pod:?}");
    let by_container = top_row(
        &cloud,
        &["top", "pod", "tel", "--containers"],
        &["tel", "app"],
    )
    .expect("tel's container listed");
    assert!(mebibytes(&by_container[3]) >= 1, "{by_container:?}");
    assert!(top_row(&cloud, &["top", "pods", "-l", "app=tel"], &["tel"]).is_some());
    assert!(top_row(&cloud, &["top", "pods", "-l", "app=other"], &["tel"]).is_none());
    // The telemetry app works every 50 ms: its CPU shows, in the raw API as metrics-server
    // writes it.
    let raw: serde_json::Value = serde_json::from_str(&cloud.kubectl_ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/tel",
    ]))
    .expect("PodMetrics JSON");
    assert_eq!(raw["kind"], "PodMetrics");
    assert_eq!(raw["metadata"]["labels"]["app"], "tel");
    assert!(
        raw["window"].as_str().is_some_and(|w| w.ends_with('s')),
        "{raw}"
    );
    assert!(
        raw["timestamp"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
        "{raw}"
    );
    let cpu = raw["containers"][0]["usage"]["cpu"]
        .as_str()
        .unwrap_or_default();
    assert!(!cpu.is_empty() && cpu != "0", "{raw}");

    // What is not measured says so, as metrics-server does.
    let missing = cloud.kubectl(&["top", "pod", "nowhere"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("podmetrics.metrics.k8s.io \"default/nowhere\" not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // The same usage in cloudcore's Prometheus metrics.
    eventually(
        Duration::from_secs(10),
        || {
            cloud.metric("wedge_node_memory_working_set_bytes", "edge-a") > 0.0
                && cloud.metric("wedge_container_memory_working_set_bytes", "edge-a") > 0.0
        },
        || "no usage gauges in cloudcore's metrics".to_owned(),
    )
    .await;
}

/// `kubectl exec -it` from a real terminal reaches a Wasm command as a terminal: the command
/// is told its stdin, stdout and stderr are one, the user's terminal shows its lines as a
/// terminal session does (CR LF: kubectl puts the local terminal in raw mode, so the remote end
/// must end lines as a pty would), and the exit status comes back.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_with_a_terminal_reaches_a_wasm_command() {
    let env = OneEdge::start().await;
    let cloud = &env.cloud;
    env.running("wasm", &["sleep"]);

    // kubectl may log a line of its own after the session (its terminal-size sender racing
    // the end of a command this quick): what the command showed comes first.
    let (code, shown) = kubectl_on_a_terminal(cloud, "exec -it wasm -- misbehave tty");
    assert_eq!(code, Some(0), "{shown:?}");
    assert!(
        shown.starts_with("stdin: terminal\r\nstdout: terminal\r\nstderr: terminal\r\n"),
        "the terminal showed {shown:?}"
    );
    let (code, shown) = kubectl_on_a_terminal(cloud, "exec -it wasm -- misbehave print 3");
    assert_eq!(code, Some(0), "{shown:?}");
    assert!(
        shown.starts_with("line 0\r\nline 1\r\nline 2\r\n"),
        "the terminal showed {shown:?}"
    );
    // Without -t the same command has pipes, and its lines are its own.
    assert_eq!(
        cloud.kubectl_ok(&["exec", "wasm", "--", "misbehave", "tty"]),
        "stdin: not a terminal\nstdout: not a terminal\nstderr: not a terminal\n"
    );
    // A command that fails: its status comes back through the terminal session (a WASI 0.2
    // command exits with success or failure, so exit(7) is 1).
    let (code, shown) = kubectl_on_a_terminal(cloud, "exec -it wasm -- misbehave exit 7");
    assert_eq!(code, Some(1), "{shown:?}");
    assert!(
        shown.contains("command terminated with exit code 1"),
        "{shown:?}"
    );
}

/// An edge going away in the middle of `kubectl exec -i` ends the session with an error, over
/// WebSocket (kubectl's default) and over SPDY (its fallback) alike, within a bound: not a
/// hang, though stdin is still open and the command would have run on.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_ends_with_an_error_when_its_edge_goes_away() {
    use std::io::Write as _;
    let mut env = OneEdge::start().await;
    env.running("wasm", &["sleep"]);
    let mut sessions = Vec::new();
    for (name, websockets) in [("websocket", "true"), ("spdy", "false")] {
        let (err, file) = env.stderr_file(&format!("exec-{name}"));
        let mut child = Killed(
            env.cloud
                .kubectl_command(&["exec", "-i", "wasm", "--", "misbehave", "cat"])
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(file)
                .spawn()
                .expect("kubectl runs"),
        );
        let lines = lines_of(&mut child);
        // The session is up: a line goes round through the command.
        let line = format!("before the edge goes, over {name}");
        writeln!(child.stdin.as_mut().expect("piped stdin"), "{line}").expect("stdin");
        assert_eq!(
            lines.recv_timeout(Duration::from_secs(20)).as_deref(),
            Ok(line.as_str()),
            "{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        sessions.push((name, child, lines, err));
    }

    env.edge.kill();
    for (name, mut child, _lines, err) in sessions {
        let status = exit_within(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("kubectl exec over {name} hung after its edge went away"));
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(!status.success(), "over {name}, an error, not a clean end");
        assert!(
            said.contains("the connection to node edge-a ended"),
            "over {name}, kubectl said: {said:?}"
        );
    }
}

/// Whether a thread of process `pid` waits in the kernel to write into a full pipe (its reader
/// has stopped reading): the kernel names the wait `pipe_write` (`anon_pipe_write` lately).
fn blocked_writing_a_pipe(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.contains("pipe_write"))
    })
}

/// One of the streams that must keep working beside the stalled one.
enum Working {
    /// `kubectl exec -i ... misbehave cat`: a line written comes back.
    Exec {
        child: Killed,
        lines: std::sync::mpsc::Receiver<String>,
        err: std::path::PathBuf,
    },
    /// `kubectl logs -f` of a pod ticking every 100 ms: new ticks keep coming.
    Follow {
        _child: Killed,
        lines: std::sync::mpsc::Receiver<String>,
        err: std::path::PathBuf,
        last: Option<u64>,
    },
}

impl Working {
    /// A round trip through an exec, two new consecutive ticks from a follow.
    fn works(&mut self, round: usize, i: usize) {
        use std::io::Write as _;
        let within = Duration::from_secs(20);
        match self {
            Self::Exec { child, lines, err } => {
                let line = format!("round {round}, exec {i}");
                writeln!(child.stdin.as_mut().expect("piped stdin"), "{line}").expect("stdin");
                assert_eq!(
                    lines.recv_timeout(within).as_deref(),
                    Ok(line.as_str()),
                    "exec {i} in round {round}: {}",
                    std::fs::read_to_string(err).unwrap_or_default()
                );
            }
            Self::Follow {
                lines, err, last, ..
            } => {
                let mut new = 0;
                while new < 2 {
                    let line = lines.recv_timeout(within).unwrap_or_else(|e| {
                        panic!(
                            "follow {i} in round {round}: {e}; {}",
                            std::fs::read_to_string(&*err).unwrap_or_default()
                        )
                    });
                    let Some(tick) = tick_of(&line) else { continue };
                    if let Some(before) = *last {
                        assert_eq!(tick, before + 1, "follow {i}: ticks in order, none lost");
                        new += 1;
                    }
                    *last = Some(tick);
                }
            }
        }
    }
}

/// 20 streams at once to one edge, one of them stalled: `kubectl exec` of a command that writes
/// without end, to a kubectl whose stdout nobody reads, so that every window on its way fills
/// and its sender at the edge waits. Meanwhile 12 `kubectl exec -i` sessions keep answering, 7
/// `kubectl logs -f` keep following, and pod statuses keep flowing both ways (a pod created
/// runs to Succeeded, a pod deleted is confirmed gone by the edge). The stalled stream lost
/// nothing: read at last, its output is whole and in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_holds_up_neither_other_streams_nor_pod_statuses() {
    let env = OneEdge::start().await;
    let cloud = &env.cloud;
    env.running("wasm", &["sleep"]);
    env.running("ticker", &["ticks", "100"]);

    let (stalled_err, file) = env.stderr_file("stalled");
    let mut stalled = Killed(
        cloud
            .kubectl_command(&["exec", "wasm", "--", "misbehave", "flood"])
            .stdout(std::process::Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("kubectl runs"),
    );
    let stalled_pid = stalled.id();
    eventually(
        Duration::from_secs(30),
        || blocked_writing_a_pipe(stalled_pid),
        || {
            format!(
                "kubectl did not fill its stdout: {}",
                std::fs::read_to_string(&stalled_err).unwrap_or_default()
            )
        },
    )
    .await;

    // 19 more streams, all open at once beside the stalled one.
    let mut working = Vec::new();
    for i in 0..12 {
        let (err, file) = env.stderr_file(&format!("exec-{i}"));
        let mut child = Killed(
            cloud
                .kubectl_command(&["exec", "-i", "wasm", "--", "misbehave", "cat"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(file)
                .spawn()
                .expect("kubectl runs"),
        );
        let lines = lines_of(&mut child);
        working.push(Working::Exec { child, lines, err });
    }
    for i in 0..7 {
        let (err, file) = env.stderr_file(&format!("follow-{i}"));
        let mut child = Killed(
            cloud
                .kubectl_command(&["logs", "-f", "ticker", "--tail=1"])
                .stdout(std::process::Stdio::piped())
                .stderr(file)
                .spawn()
                .expect("kubectl runs"),
        );
        let lines = lines_of(&mut child);
        working.push(Working::Follow {
            _child: child,
            lines,
            err,
            last: None,
        });
    }
    for (i, stream) in working.iter_mut().enumerate() {
        stream.works(1, i);
    }

    // Pod statuses flow while the stall holds: a new pod runs to its end, and a deletion is
    // carried out and confirmed by the edge.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {}/samples/misbehave:1\n    command: [misbehave, print, \"1\"]\n",
        env.registry.host()
    ));
    cloud.wait_for(
        "pod/once",
        "{.status.phase}",
        "Succeeded",
        Duration::from_secs(60),
    );
    cloud.kubectl_ok(&["delete", "pod", "once", "--wait=false"]);
    cloud.wait_gone("pod/once", Duration::from_secs(30));

    for (i, stream) in working.iter_mut().enumerate() {
        stream.works(2, i);
    }
    // The sessions end as asked: stdin closed, each command ends, each kubectl exits cleanly.
    for (i, stream) in working.iter_mut().enumerate() {
        if let Working::Exec { child, err, .. } = stream {
            drop(child.stdin.take());
            let status = exit_within(child, Duration::from_secs(20))
                .unwrap_or_else(|| panic!("exec {i} did not end when its stdin did"));
            assert!(
                status.success(),
                "exec {i}: {}",
                std::fs::read_to_string(&*err).unwrap_or_default()
            );
        }
    }

    // The stall held all along (nothing read the stalled kubectl's stdout) and lost nothing:
    // read now, its output is whole and in order.
    assert!(
        blocked_writing_a_pipe(stalled_pid),
        "the stalled kubectl is still stalled: {}",
        std::fs::read_to_string(&stalled_err).unwrap_or_default()
    );
    let flood = lines_of(&mut stalled);
    for n in 0..200_000u64 {
        let line = flood
            .recv_timeout(Duration::from_secs(20))
            .expect("the stalled output flows once read");
        assert_eq!(line, format!("line {n}"));
    }
}
