//! `kubectl port-forward` to pods with Wasm containers, as Edged serves it. A Wasm-only pod has
//! no network, so the refusal must say so in words a user can act on. A mixed pod's network is
//! containerd's, and a Wasm guest listening in it is reached through containerd's port-forward:
//! that test runs a real containerd (`wedge_testkit::containerd`, which removes its sandboxes when
//! dropped, even after a failure) and opens the streams as the cloud does, through EdgeStream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::mpsc;
use wedge_core::protocol::mux::{Event, Mux, Role};
use wedge_core::protocol::stream::{StreamRequest, channel};
use wedge_core::runtime::PortStreams;
use wedge_edge::edged::plan::plan_pod;
use wedge_edge::edged::pod_workers::{Placement, PodWorkers, WorkerConfig};
use wedge_edge::edged::runtimes::{RuntimeHandle, Runtimes};
use wedge_edge::edgestream::EdgeStream;
use wedge_shims::CriRuntime;
use wedge_testkit::container_images::{self, BUSYBOX_IMAGE};
use wedge_testkit::containerd::Containerd;

use crate::wasm::harness::{TestRuntime, pod, terminated};

/// The bound of every wait here.
const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_only_pod_has_nothing_to_forward_to_and_says_so() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    // A guest that tries to listen: without a network of its own, it cannot.
    let uid = t
        .start(pod(
            "pf",
            &image,
            json!({"args": ["serve", "8080"]}),
            json!({}),
        ))
        .await;
    t.wait_for(&uid, "the server to give up", terminated).await;
    let log = t.logs(&uid, "main").await;
    assert!(
        log.contains("serve: cannot listen on port \"8080\""),
        "{log}"
    );

    let target = t
        .workers
        .port_forward_target("default", &format!("pod-{uid}"))
        .expect("the pod and its sandbox are there");
    let (_to_pod, input) = mpsc::channel::<Bytes>(1);
    let (output, _from_pod) = mpsc::channel(1);
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        target.forward(8080, PortStreams { input, output }),
    )
    .await
    .expect("answers at once")
    .expect_err("refused");
    assert_eq!(refused.status_code(), 400, "a bad request, not a failure");
    assert_eq!(
        refused.to_string(),
        "pod runs only Wasm containers, which have no network of their own: nothing in it can \
         listen on port 8080; give the pod a container to give it a network"
    );
    t.stop_pod(&uid, Duration::from_secs(2)).await;
}

/// The cloud's end of an edge's streams, wired in process to EdgeStream over `workers`.
fn cloud_of(workers: PodWorkers) -> (Mux, tokio::task::JoinHandle<()>) {
    let server = EdgeStream::new(workers);
    let (cloud, mut to_edge) = Mux::new(Role::Opener);
    let (edge, mut to_cloud) = Mux::new(Role::Acceptor);
    let cloud_in = cloud.clone();
    let pump = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(frame) = to_edge.recv() => {
                    if let Some((stream, request)) = edge.incoming(frame) {
                        server.spawn(stream, request);
                    }
                }
                Some(frame) = to_cloud.recv() => {
                    let _ = cloud_in.incoming(frame);
                }
                else => return,
            }
        }
    });
    (cloud, pump)
}

/// An HTTP/1.0 `GET /` over a port-forward stream to `port` of pod `mixed`, half-closed after
/// the request as a client may: what came back, and the stream's closing status.
async fn get(cloud: &Mux, port: u16) -> (String, serde_json::Value) {
    let mut stream = cloud
        .open(StreamRequest::PortForward {
            namespace: "default".into(),
            pod: "mixed".into(),
            port,
        })
        .expect("opens");
    stream
        .sender
        .send(
            channel::STDIN,
            Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
        )
        .await
        .expect("sent");
    stream.sender.eof(channel::STDIN).expect("open");
    let mut answer = Vec::new();
    let reading = async {
        loop {
            match stream.receiver.recv().await.expect("an event") {
                Event::Data { data, .. } => answer.extend_from_slice(&data),
                Event::Eof(_) => {}
                Event::Closed(status) => return status.expect("a status"),
            }
        }
    };
    let status = tokio::time::timeout(LONG, reading)
        .await
        .expect("the forward ends");
    (String::from_utf8_lossy(&answer).into_owned(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_wasm_listener_in_a_mixed_pod_through_containerd() {
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .expect("join")
        .expect("containerd starts");
    let archive =
        tokio::task::spawn_blocking(|| container_images::busybox().map(|b| b.docker_archive()))
            .await
            .expect("join")
            .expect("busybox builds");
    containerd.import_image(&archive).expect("busybox imported");
    let cri = CriRuntime::connect(&containerd.endpoint()).expect("endpoint");
    let t = TestRuntime::new(&[]);
    let wasm_image = t.local_image("misbehave").await;
    let mut config = WorkerConfig::new(t.root.path().join("mixed-pods"));
    config.cgroup_parent = Some(containerd.cgroup_parent().to_owned());
    let workers = PodWorkers::new(
        Runtimes::new()
            .with(RuntimeHandle::new(Arc::new(cri)))
            .with(RuntimeHandle::new(Arc::new(t.rt.clone()))),
        config,
    );
    // A container, so the pod has a network (containerd's), and beside it a Wasm guest that
    // listens in it.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "mixed", "namespace": "default", "uid": "pf-mixed"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "box", "image": BUSYBOX_IMAGE, "command": ["sleep", "1000"]},
                {"name": "app", "image": wasm_image, "args": ["serve", "8080"]},
            ],
        },
    }))
    .expect("pod");
    let plan = plan_pod(&pod, &workers.config().pods_root).expect("plan");
    let placement = Placement {
        sandbox: Some(wedge_core::runtimes::RUNC),
        containers: BTreeMap::from([("app".to_owned(), wedge_core::runtimes::WASM)]),
    };
    workers
        .start(plan, placement, Default::default())
        .expect("started");
    let deadline = Instant::now() + LONG;
    while !workers
        .status("pf-mixed")
        .is_some_and(|s| s.containers.iter().all(|c| c.state.is_running()))
    {
        assert!(
            Instant::now() < deadline,
            "not running: {:#?}",
            workers.status("pf-mixed")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (cloud, _pump) = cloud_of(workers.clone());
    // The guest listens a moment after it starts.
    let deadline = Instant::now() + LONG;
    let (answer, status) = loop {
        let (answer, status) = get(&cloud, 8080).await;
        if status["status"] == "Success" || Instant::now() > deadline {
            break (answer, status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["status"], "Success", "{status}");
    assert!(
        answer.starts_with("HTTP/1.0 200 OK\r\n")
            && answer.ends_with("\r\n\r\nmisbehave on 8080\n"),
        "{answer:?}"
    );

    // Nothing listens on port 9: the kubelet's framing with the pod's name, containerd's cause.
    let (answer, status) = get(&cloud, 9).await;
    assert!(answer.is_empty(), "{answer:?}");
    assert_eq!(status["code"], 500, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "error forwarding port 9 to pod mixed, uid pf-mixed: failed to execute portforward"
        ) && message.contains("127.0.0.1:9: connect: connection refused"),
        "{message}"
    );
    workers.stop("pf-mixed", Duration::from_secs(2)).await;
}
