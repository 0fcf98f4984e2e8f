//! Cloud to edge when things go wrong, through real processes: two edges side by side, clients
//! without certificates, a link cut while updates are on their way, frames no edgecore would
//! send (written by hand on a real connection with an edge's identity), certificates that
//! expire while the edge runs, and a second process started on a root one already runs from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wedge_core::protocol::messages::Hello;
use wedge_core::protocol::{Envelope, Operation, ResourceKind, ResourceRef};

use super::support::*;

const READY: &str = "{.status.conditions[?(@.type==\"Ready\")].status}";

/// What an edge holds of a pod in these tests: its uid and whether it is being deleted. (Not
/// its version: cloudcore does not send a pod back for a change of its status alone, which
/// the edge itself reported.)
type PodView = (String, bool);

/// The pods the API has bound to `node`, by name.
fn pods_bound(cloud: &Cloud, node: &str) -> BTreeMap<String, PodView> {
    cloud
        .kubectl_ok(&[
            "get",
            "pods",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.uid}={.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('=');
            let (name, uid, deleted) = (parts.next()?, parts.next()?, parts.next()?);
            Some((name.to_owned(), (uid.to_owned(), !deleted.is_empty())))
        })
        .collect()
}

/// The pods the edge at `edge_root` holds, by name.
fn pods_held_views(edge_root: &std::path::Path) -> BTreeMap<String, PodView> {
    let Ok(db) = wedge_edge::store::Database::inspect(&edge_root.join("edge.db")) else {
        return BTreeMap::new();
    };
    db.meta()
        .list(ResourceKind::Pod)
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let deleted = !o.object["metadata"]["deletionTimestamp"].is_null();
            (o.key.name, (o.uid, deleted))
        })
        .collect()
}

fn pinned_pod(name: &str, node: &str, registry: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - name: app\n    image: {registry}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"500\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_edges_run_only_their_own_pods_and_a_client_without_a_certificate_is_refused() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let (a_root, b_root) = (dir.path().join("edge-a"), dir.path().join("edge-b"));
    let _a = start_edge(&a_root, &cloud, "edge-a", Some(&token), &registry.host());
    let _b = start_edge(&b_root, &cloud, "edge-b", Some(&token), &registry.host());
    for node in ["node/edge-a", "node/edge-b"] {
        cloud.wait_for(node, READY, "True", Duration::from_secs(60));
    }
    cloud.apply(&pinned_pod("only-a", "edge-a", &registry.host()));
    cloud.apply(&pinned_pod("only-b", "edge-b", &registry.host()));
    cloud.apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: fleet\nspec:\n  selector: {{matchLabels: {{app: fleet}}}}\n  template:\n    metadata: {{labels: {{app: fleet}}}}\n    spec:\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: app\n        image: {}/samples/telemetry:1\n",
        registry.host()
    ));
    cloud.wait_for(
        "pod/only-a",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_for(
        "pod/only-b",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_for(
        "daemonset/fleet",
        "{.status.numberReady}",
        "2",
        Duration::from_secs(60),
    );

    // Each edge holds exactly the pods bound to it: its own, and its DaemonSet pod.
    for (node, root, own, other) in [
        ("edge-a", &a_root, "only-a", "only-b"),
        ("edge-b", &b_root, "only-b", "only-a"),
    ] {
        let bound = pods_bound(&cloud, node);
        assert_eq!(bound.len(), 2, "{node}: {bound:?}");
        assert!(bound.contains_key(own) && !bound.contains_key(other));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held: Vec<String> = pods_held(root).into_keys().collect();
            if held == bound.keys().cloned().collect::<Vec<_>>() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} holds {held:?}, bound {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A client with no certificate gets 401 and how to join, and is counted.
    let ca = cloud.root.join("cloudcore/hub/pki/ca.crt");
    let refused = raw_edge_socket(&cloud.hub, anonymous_tls(&ca))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refused.0, 401, "{refused:?}");
    assert!(
        refused.1.contains("client certificate") && refused.1.contains("wedge token create"),
        "{}",
        refused.1
    );
    assert!(cloud.metric("wedge_cloudhub_connections_refused_total", "") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_cut_mid_update_and_an_edge_restart_converge_and_the_resync_sends_only_the_difference()
 {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let link = FaultyLink::start(cloud.hub.clone()).await;
    let edge_root = dir.path().join("edge-a");
    std::fs::create_dir_all(&edge_root).expect("edge root");
    let edge = Proc::spawn(
        edgecore_at(
            &edge_root,
            &link.addr,
            "edge-a",
            Some(&token),
            &registry.host(),
        ),
        edge_root.join("edgecore.log"),
    );
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    cloud.apply(&telemetry_pod("keep", &registry.host()));
    // A pod that finishes by itself, about 6 s after it starts.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: finite\nspec:\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: {}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"300\"}}\n    - {{name: MAX_TICKS, value: \"20\"}}\n",
        registry.host()
    ));
    cloud.wait_for(
        "pod/keep",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_for(
        "pod/finite",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    let finite_uid = cloud.kubectl_ok(&["get", "pod", "finite", "-o", "jsonpath={.metadata.uid}"]);

    // A burst of pods; the link is cut as soon as the first has reached the edge.
    let burst: Vec<String> = (0..8)
        .map(|i| telemetry_pod(&format!("burst-{i}"), &registry.host()))
        .collect();
    let burst = burst.join("---\n");
    let applying = {
        let kubeconfig = cloud.kubeconfig();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut child = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["apply", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("kubectl");
            let _ = child
                .stdin
                .take()
                .expect("stdin")
                .write_all(burst.as_bytes());
            child.wait().expect("kubectl").success()
        })
    };
    eventually(
        Duration::from_secs(30),
        || {
            pods_held(&edge_root)
                .keys()
                .any(|n| n.starts_with("burst-"))
        },
        || format!("no burst pod reached the edge: {}", edge.log()),
    )
    .await;
    link.cut();
    assert!(applying.join().expect("apply thread"), "kubectl apply");

    // While the link is down: a pod deleted, another created.
    cloud.kubectl_ok(&["delete", "pod", "keep", "--wait=false"]);
    cloud.apply(&telemetry_pod("late", &registry.host()));

    // Meanwhile the finite pod ends on the edge, and edgecore is killed and restarted before
    // the cloud heard of it: the pod is not run again (its status waits in the outbox).
    let finished_on_the_edge = || {
        let key = wedge_core::protocol::ObjectKey {
            kind: ResourceKind::PodStatus,
            namespace: "default".into(),
            name: "finite".into(),
        };
        wedge_edge::store::Database::inspect(&edge_root.join("edge.db"))
            .and_then(|db| db.outbox().get(&key))
            .ok()
            .flatten()
            .is_some_and(|r| r["status"]["phase"] == "Succeeded")
    };
    eventually(Duration::from_secs(30), finished_on_the_edge, || {
        format!("the finite pod did not finish: {}", edge.log())
    })
    .await;
    let starts = |log: &str| {
        log.lines()
            .filter(|l| l.contains("pod started") && l.contains(&finite_uid))
            .count()
    };
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "finite", "-o", "jsonpath={.status.phase}"]),
        "Running",
        "the cloud has not heard that it finished"
    );
    let started_before = starts(&edge.log());
    let restarts_before = edge.log().matches("pod started").count();
    drop(edge);
    let edge = Proc::spawn(
        edgecore_at(&edge_root, &link.addr, "edge-a", None, &registry.host()),
        edge_root.join("edgecore.log"),
    );
    eventually(
        Duration::from_secs(30),
        || edge.log().matches("pod started").count() > restarts_before,
        || format!("the pods did not come back offline: {}", edge.log()),
    )
    .await;
    // Edged decides at start which pods had finished; the finite one is among them.
    eventually(
        Duration::from_secs(30),
        || {
            edge.log()
                .lines()
                .any(|l| l.contains("is not run again") && l.contains(&finite_uid))
        },
        || {
            format!(
                "the edge did not see that the pod had finished: {}",
                edge.log()
            )
        },
    )
    .await;
    assert_eq!(
        starts(&edge.log()),
        started_before,
        "the finished pod ran again: {}",
        edge.log()
    );

    eventually(
        Duration::from_secs(30),
        || pods_bound(&cloud, "edge-a").len() == 11,
        || format!("pods not all bound: {:?}", pods_bound(&cloud, "edge-a")),
    )
    .await;

    // What the resync must send: every pod the edge lacks or holds otherwise than the cloud (a
    // deletion it missed), and every pod it holds that the cloud no longer has for it; not the
    // pods whose status alone changed. Neither side changes while the link is down.
    let held = pods_held_views(&edge_root);
    let bound = pods_bound(&cloud, "edge-a");
    let differ = bound
        .iter()
        .filter(|(n, view)| held.get(*n) != Some(*view))
        .count()
        + held.keys().filter(|n| !bound.contains_key(*n)).count();
    assert!(differ >= 2, "at least keep and late: {held:?} vs {bound:?}");
    let resyncs = cloud.metric("wedge_cloudhub_resyncs_total", "edge-a");
    let frames = cloud.metric("wedge_cloudhub_resync_frames_total", "edge-a");
    let bytes = cloud.metric("wedge_cloudhub_resync_bytes_total", "edge-a");
    link.restore();
    eventually(
        Duration::from_secs(30),
        || cloud.metric("wedge_cloudhub_resyncs_total", "edge-a") > resyncs,
        || format!("no resync after the link came back: {}", edge.log()),
    )
    .await;
    let sent = cloud.metric("wedge_cloudhub_resync_frames_total", "edge-a") - frames;
    assert_eq!(sent as usize, differ, "held {held:?}\nbound {bound:?}");
    // Bytes: the changed pods only, each well under the size of the whole set.
    let sent_bytes = cloud.metric("wedge_cloudhub_resync_bytes_total", "edge-a") - bytes;
    let full_state = cloud.kubectl_ok(&["get", "pods", "-o", "json"]).len() as f64;
    assert!(
        sent_bytes > 0.0 && sent_bytes < full_state * differ as f64 / bound.len() as f64 * 1.5,
        "resync bytes {sent_bytes} for {differ} of {} pods ({full_state} bytes as JSON)",
        bound.len()
    );

    // Everything converges: all running, the finished pod Succeeded, the deleted pod gone from
    // edge and API.
    cloud.wait_for(
        "pod/finite",
        "{.status.phase}",
        "Succeeded",
        Duration::from_secs(30),
    );
    for name in (0..8).map(|i| format!("burst-{i}")).chain(["late".into()]) {
        cloud.wait_for(
            &format!("pod/{name}"),
            "{.status.phase}",
            "Running",
            Duration::from_secs(60),
        );
    }
    cloud.wait_gone("pod/keep", Duration::from_secs(30));
    eventually(
        Duration::from_secs(20),
        || pods_held_views(&edge_root) == pods_bound(&cloud, "edge-a"),
        || {
            format!(
                "edge {:?} vs API {:?}",
                pods_held_views(&edge_root),
                pods_bound(&cloud, "edge-a")
            )
        },
    )
    .await;
}

/// Reads frames until one with `operation`, acknowledging the objects the cloud sends.
async fn read_until(ws: &mut RawSocket, next_id: &mut u64, operation: Operation) -> Envelope {
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        loop {
            let message = ws
                .next()
                .await
                .expect("the hub closed the connection")
                .expect("a frame");
            let Message::Binary(bytes) = message else {
                continue;
            };
            let frame = Envelope::decode(&bytes).expect("the hub sends valid frames");
            if frame.operation == operation {
                return frame;
            }
            if matches!(
                frame.operation,
                Operation::Insert | Operation::Update | Operation::Delete
            ) {
                *next_id += 1;
                let ack = Envelope::ack(*next_id, frame.id).encode();
                ws.send(Message::Binary(ack.into())).await.expect("ack");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {operation:?} frame within {deadline:?}"))
}

/// Sends `message` (the case `what`) and returns the reason of the error frame answering it.
async fn refusal(ws: &mut RawSocket, next_id: &mut u64, what: &str, message: Message) -> String {
    ws.send(message).await.expect("send");
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        read_until(ws, next_id, Operation::Error),
    )
    .await;
    let error = answer.unwrap_or_else(|_| panic!("{what}: no error frame"));
    error.payload["reason"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_on_a_real_connection_are_refused_and_nothing_is_lost() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let mut edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), &registry.host());
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    cloud.apply(&telemetry_pod("steady", &registry.host()));
    cloud.wait_for(
        "pod/steady",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    let uid = cloud.kubectl_ok(&["get", "pod", "steady", "-o", "jsonpath={.metadata.uid}"]);
    // A pod bound to another node, whose status this edge must not write.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: elsewhere\nspec:\n  nodeName: edge-b\n  containers:\n  - {{name: app, image: {}/samples/telemetry:1}}\n",
        registry.host()
    ));
    let elsewhere_uid =
        cloud.kubectl_ok(&["get", "pod", "elsewhere", "-o", "jsonpath={.metadata.uid}"]);

    // edgecore stops; its identity now speaks by hand.
    edge.kill();
    let creds = wedge_edge::tls::EdgeCredentials::new(edge_root.join("pki"));
    let tls = wedge_edge::tls::client_config(&creds).expect("edge credentials");
    let mut ws = raw_edge_socket(&cloud.hub, tls).await.expect("accepted");
    let hello = Hello {
        node: "edge-a".into(),
        agent_version: "by-hand".into(),
        held: wedge_edge::store::Database::open(&edge_root.join("edge.db"))
            .expect("edge db")
            .meta()
            .held()
            .expect("held"),
    };
    let mut id = 1;
    let hello = Envelope::new(id, Operation::Hello)
        .with_payload(serde_json::to_value(hello).expect("hello"));
    ws.send(Message::Binary(hello.encode().into()))
        .await
        .expect("hello");
    read_until(&mut ws, &mut id, Operation::Welcome).await;
    read_until(&mut ws, &mut id, Operation::SyncDone).await;

    let pod_status = |id: u64, name: &str, uid: &str, payload: serde_json::Value| {
        Envelope::new(id, Operation::Update)
            .with_resource(ResourceRef {
                kind: ResourceKind::PodStatus,
                namespace: Some("default".into()),
                name: name.into(),
                uid: Some(uid.into()),
            })
            .with_payload(payload)
    };
    let binary = |frame: Envelope| Message::Binary(frame.encode().into());
    let raw = |text: String| Message::Binary(text.into_bytes().into());
    type Case<'a> = (&'a str, Box<dyn Fn(u64) -> Message + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not JSON",
            Box::new(|_| raw("{not json".into())),
            "MalformedFrame",
        ),
        (
            "text",
            Box::new(|_| Message::Text("hello".into())),
            "MalformedFrame",
        ),
        (
            "unknown operation",
            Box::new(|id| {
                raw(format!(
                    r#"{{"v":1,"id":{id},"timestamp":0,"operation":"explode"}}"#
                ))
            }),
            "MalformedFrame",
        ),
        (
            "another version",
            Box::new(|id| {
                raw(format!(
                    r#"{{"v":9,"id":{id},"timestamp":0,"operation":"ack"}}"#
                ))
            }),
            "UnsupportedVersion",
        ),
        (
            "an old id",
            Box::new(|_| binary(Envelope::ack(1, 1))),
            "OutOfOrder",
        ),
        (
            "another node's pod",
            Box::new(|id| {
                binary(pod_status(
                    id,
                    "elsewhere",
                    &elsewhere_uid,
                    serde_json::json!({"phase": "Failed"}),
                ))
            }),
            "Forbidden",
        ),
        (
            "a status of the wrong shape",
            Box::new(|id| {
                binary(pod_status(
                    id,
                    "steady",
                    &uid,
                    serde_json::json!({"phase": 7}),
                ))
            }),
            "Invalid",
        ),
        (
            "another node's status",
            Box::new(|id| {
                binary(
                    Envelope::new(id, Operation::Update)
                        .with_resource(ResourceRef {
                            kind: ResourceKind::NodeStatus,
                            namespace: None,
                            name: "edge-b".into(),
                            uid: None,
                        })
                        .with_payload(serde_json::json!({"status": {}})),
                )
            }),
            "Forbidden",
        ),
    ];
    for (what, message, reason) in &cases {
        id += 1;
        let message = message(id);
        assert_eq!(
            refusal(&mut ws, &mut id, what, message).await,
            *reason,
            "{what}"
        );
    }
    let refused = cloud.metric("wedge_cloudhub_frames_refused_total", "edge-a");
    assert!(refused >= 8.0, "refusals counted: {refused}");

    // A status the edge reports is written and acknowledged, and not sent back down. A pod
    // created for this edge after the acknowledgement comes down first: its event follows the
    // status's in the pod watch, so a frame for the status would have been queued before it.
    id += 1;
    let sent = id;
    let status = serde_json::json!({"phase": "Running", "message": "reported by hand"});
    ws.send(binary(pod_status(sent, "steady", &uid, status)))
        .await
        .expect("report");
    let marker = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: marker\nspec:\n  nodeName: edge-a\n  containers:\n  - {{name: app, image: {}/samples/telemetry:1}}\n",
        registry.host()
    );
    let mut frames = Vec::new();
    let mut next_pod_frame = async |ws: &mut RawSocket, id: &mut u64| loop {
        let Some(Ok(Message::Binary(bytes))) = ws.next().await else {
            panic!("the hub closed the connection");
        };
        let frame = Envelope::decode(&bytes).expect("the hub sends valid frames");
        match frame.operation {
            Operation::Ack if frame.parent == Some(sent) => cloud.apply(&marker),
            Operation::Error if frame.parent == Some(sent) => {
                panic!("the report was refused: {}", frame.payload)
            }
            Operation::Insert | Operation::Update | Operation::Delete => {
                *id += 1;
                let ack = Envelope::ack(*id, frame.id).encode();
                ws.send(Message::Binary(ack.into())).await.expect("ack");
                let name = frame.payload["metadata"]["name"].as_str().unwrap_or("");
                frames.push(format!("{:?} {name}", frame.operation));
                return frame;
            }
            _ => {}
        }
    };
    let first = tokio::time::timeout(Duration::from_secs(20), next_pod_frame(&mut ws, &mut id))
        .await
        .expect("a pod frame");
    assert_eq!(first.payload["metadata"]["name"], "marker", "{frames:?}");
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "steady", "-o", "jsonpath={.status.message}"]),
        "reported by hand"
    );
    // A change the edge cares about still comes down.
    cloud.kubectl_ok(&["label", "pod", "steady", "probe=after-the-report"]);
    let labelled = tokio::time::timeout(Duration::from_secs(20), next_pod_frame(&mut ws, &mut id))
        .await
        .expect("a pod frame");
    assert_eq!(
        labelled.payload["metadata"]["labels"]["probe"], "after-the-report",
        "{frames:?}"
    );
    cloud.kubectl_ok(&["delete", "pod", "marker", "--grace-period=0", "--force"]);

    // A message over the limit ends the connection with 1009; the session is not left behind.
    let huge = vec![b' '; wedge_core::protocol::MAX_FRAME_BYTES + 1];
    let _ = ws.send(Message::Binary(huge.into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the hub closes the connection");
    assert_eq!(closed, Some(1009));

    // Nothing changed: the pods are as they were, and the real edge carries on.
    cloud.wait_for(
        "pod/steady",
        "{.status.phase}",
        "Running",
        Duration::from_secs(5),
    );
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "elsewhere", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
    let edge = start_edge(&edge_root, &cloud, "edge-a", None, &registry.host());
    eventually(
        Duration::from_secs(30),
        || cloud.metric("wedge_cloudhub_resyncs_total", "edge-a") >= 3.0,
        || format!("edgecore did not reconnect: {}", edge.log()),
    )
    .await;
    cloud.wait_for(
        "pod/steady",
        "{.status.phase}",
        "Running",
        Duration::from_secs(30),
    );
    assert_eq!(
        cloud.kubectl_ok(&["get", "pod", "steady", "-o", "jsonpath={.metadata.uid}"]),
        uid
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_certificates_rotate_before_they_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = Cloud::start_with(
        &dir.path().join("cloud"),
        "127.0.0.1",
        &["--edge-cert-validity", "20s"],
    );
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    let creds = wedge_edge::tls::EdgeCredentials::new(edge_root.join("pki"));
    let (first_from, first_until) = wedge_edge::tls::lifetime(&creds).expect("certificate");
    assert!(
        first_until - first_from <= 25,
        "the validity the cloud chose"
    );

    // Renewed at 70-90% of its life, before it expires.
    eventually(
        Duration::from_secs(30),
        || edge.log().contains("renewed this edge's certificate"),
        || format!("no renewal: {}", edge.log()),
    )
    .await;
    let (_, until) = wedge_edge::tls::lifetime(&creds).expect("renewed certificate");
    assert!(
        until > first_until,
        "a later expiry: {until} vs {first_until}"
    );
    assert!(now() < first_until, "renewed before expiry");

    // Once the first certificate has expired, a new connection works with the renewed one.
    while now() <= first_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cloud.kill();
    cloud.restart();
    eventually(
        Duration::from_secs(30),
        || cloud.metric("wedge_cloudhub_resyncs_total", "edge-a") >= 1.0,
        || {
            format!(
                "the edge did not reconnect: {}\n{}",
                edge.log(),
                cloud.log()
            )
        },
    )
    .await;
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(30));
}

/// What a refused second process printed.
fn refusal_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_private_and_a_second_cloudcore_or_edgecore_on_it_is_refused_naming_the_first() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge");
    let edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), &registry.host());
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    cloud.apply(&pinned_pod("kept", "edge-a", &registry.host()));
    cloud.wait_for(
        "pod/kept",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );

    // What holds Secrets, tokens and keys is the process's own: directories 0700, databases
    // (and SQLite's files beside them) 0600.
    let mode = |path: std::path::PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&path).expect("state file");
        (path, meta.permissions().mode() & 0o777)
    };
    for dir in [
        cloud.root.join("apiserver"),
        cloud.root.join("apiserver/pki"),
        cloud.root.join("cloudcore/hub"),
        cloud.root.join("cloudcore/hub/pki"),
        edge_root.clone(),
        edge_root.join("pki"),
    ] {
        let (path, mode) = mode(dir);
        assert_eq!(mode, 0o700, "{}", path.display());
    }
    for file in [
        cloud.root.join("apiserver/wedge.db"),
        cloud.root.join("apiserver/wedge.db-wal"),
        edge_root.join("edge.db"),
        edge_root.join("edge.db-wal"),
    ] {
        let (path, mode) = mode(file);
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    // A second cloudcore on the same root, on other ports: refused before it serves anything.
    let cloud_pid = cloud.proc.as_ref().expect("cloudcore").child.id();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_cloudcore"));
    second
        .arg("--root")
        .arg(&cloud.root)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--apiserver-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--stream-listen", &format!("127.0.0.1:{}", free_port())]);
    let out = exits(second);
    assert!(!out.status.success());
    let said = refusal_of(&out);
    assert!(
        said.contains(&format!(
            "{} is in use by process {cloud_pid} (",
            cloud.root.join("apiserver").join("wedge.db").display()
        )) && said.contains("cloudcore --root"),
        "{said}"
    );

    // A second edgecore on the edge's root, even with a token to join with: refused, and the
    // first edge's credentials are left as they were.
    let credentials = std::fs::read(edge_root.join("pki").join("edge.crt")).ok();
    let out = exits(edgecore(
        &edge_root,
        &cloud,
        "edge-a",
        Some(&token),
        &registry.host(),
    ));
    assert!(!out.status.success());
    let said = refusal_of(&out);
    assert!(
        said.contains(&format!(
            "{} is in use by process {} (",
            edge_root.join("edge.db").display(),
            edge.child.id()
        )),
        "{said}"
    );
    assert_eq!(
        std::fs::read(edge_root.join("pki").join("edge.crt")).ok(),
        credentials
    );

    // The first two keep working: a write is served and reaches the edge, which still runs
    // its pod.
    cloud.apply(&pinned_pod("after", "edge-a", &registry.host()));
    cloud.wait_for(
        "pod/after",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_for(
        "pod/kept",
        "{.status.phase}",
        "Running",
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_cannot_give_its_node_a_role_or_a_restricted_label() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let root = dir.path().join("edge");
    std::fs::create_dir_all(&root).expect("edge root");
    let mut command = edgecore(&root, &cloud, "edge-a", Some(&token), &registry.host());
    command.args([
        "--label",
        "node-role.kubernetes.io/control-plane=",
        "--label",
        "node-restriction.kubernetes.io/trusted=yes",
        "--label",
        "example.com/rack=r1",
        "--label",
        "topology.kubernetes.io/zone=hall-2",
    ]);
    let _edge = Proc::spawn(command, root.join("edgecore.log"));
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    let labels: BTreeMap<String, String> = serde_json::from_str(&cloud.kubectl_ok(&[
        "get",
        "node",
        "edge-a",
        "-o",
        "jsonpath={.metadata.labels}",
    ]))
    .expect("labels");
    assert_eq!(
        labels.get("example.com/rack").map(String::as_str),
        Some("r1")
    );
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("hall-2")
    );
    assert_eq!(
        labels
            .get("node-role.kubernetes.io/edge")
            .map(String::as_str),
        Some(""),
        "the role cloudcore gives every edge"
    );
    assert!(
        !labels.contains_key("node-role.kubernetes.io/control-plane"),
        "{labels:?}"
    );
    assert!(
        !labels.contains_key("node-restriction.kubernetes.io/trusted"),
        "{labels:?}"
    );
    // `kubectl get nodes` shows the role.
    let table = cloud.kubectl_ok(&["get", "node", "edge-a", "--no-headers"]);
    assert!(table.split_whitespace().nth(2) == Some("edge"), "{table}");
    // Two more status reports (every 5 s here) bring the same labels: still one warning.
    let heartbeat = || {
        cloud.kubectl_ok(&[
            "get",
            "node",
            "edge-a",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}",
        ])
    };
    for _ in 0..2 {
        let before = heartbeat();
        eventually(
            Duration::from_secs(30),
            || heartbeat() != before,
            || "the edge reports its status again".to_owned(),
        )
        .await;
    }
    let log = cloud.log();
    assert_eq!(
        log.matches("the edge may not set these labels on its Node")
            .count(),
        1,
        "logged once: {log}"
    );
}

/// edgecore's log line for a report the cloud refused for good.
const DROPPED: &str = "the cloud refused a report for good";

#[tokio::test(flavor = "multi_thread")]
async fn a_report_the_api_rejects_is_dropped_once_and_the_reports_after_it_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let root = dir.path().join("edge");
    std::fs::create_dir_all(&root).expect("edge root");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut command = edgecore(&root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    // An operator's typo: a label value the API server refuses (422 Invalid), so the Node the
    // first status report would register cannot be created. One status report only (the
    // later flag wins), and a lease every 2 s after it.
    command.args([
        "--label",
        "example.com/site=north hall!",
        "--node-status-seconds",
        "3600",
        "--metrics-listen",
        &metrics,
    ]);
    let edge = Proc::spawn(command, root.join("edgecore.log"));
    eventually(
        Duration::from_secs(60),
        || edge.log().contains(DROPPED),
        || {
            format!(
                "the edge drops the rejected report\nedgecore: {}",
                edge.log()
            )
        },
    )
    .await;

    // The reports after it reach the API: the lease is renewed twice more.
    let renewed = || cloud.lease_renewed("edge-a");
    for _ in 0..2 {
        let before = renewed();
        eventually(
            Duration::from_secs(30),
            || renewed() != before,
            || format!("the lease is renewed\nedgecore: {}", edge.log()),
        )
        .await;
    }

    // Refused once, said once, counted once on each side: not sent again meanwhile.
    let log = edge.log();
    assert_eq!(log.matches(DROPPED).count(), 1, "logged once: {log}");
    let line = log
        .lines()
        .find(|l| l.contains(DROPPED))
        .unwrap_or_default();
    assert!(
        line.contains("node-status") && line.contains("Rejected") && line.contains("422"),
        "the edge says which report and why: {line}"
    );
    let counted = scrape(&metrics);
    assert!(
        counted.contains(
            r#"wedge_edge_reports_refused_total{kind="node-status",reason="Rejected"} 1"#
        ),
        "{counted}"
    );
    assert_eq!(
        wedge_testkit::metrics::sum(
            &scrape(&cloud.metrics),
            "wedge_cloudhub_frames_refused_total",
            &[("node", "edge-a"), ("reason", "Rejected")]
        ),
        1.0,
        "cloudcore refused it once: {}",
        cloud.log()
    );
    assert!(
        !cloud.kubectl(&["get", "node", "edge-a"]).status.success(),
        "the API server did refuse the Node"
    );
}
