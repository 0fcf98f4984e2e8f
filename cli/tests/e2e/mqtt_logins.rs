//! A pod's own MQTT login, through real processes: `cloudcore` (embedded API server), `edgecore`
//! with its embedded broker, the real `kubectl`, a Wasm pod from a real registry, and rumqttc as
//! the pod's MQTT client would be. The pod names a `kubernetes.io/basic-auth` Secret
//! (`mqtt.wedge.io/login`); what is asserted is what users see: the pod's condition, messages
//! arriving or not, the broker's refusal counters, logins refused once the pod is gone.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

use super::support::*;

/// What a client's connection saw.
#[derive(Debug)]
enum Seen {
    Connected,
    SubAck,
    Message(String),
    /// The broker closed the connection.
    Dropped,
    /// A (re)connection was refused at CONNECT.
    Refused,
}

/// A client logging in as `user`, reporting what its connection sees; it stops at the first
/// refused CONNECT.
fn client(
    port: u16,
    id: &str,
    user: &str,
    password: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Seen>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let seen = match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => Seen::Connected,
                Ok(Event::Incoming(Incoming::SubAck(_))) => Seen::SubAck,
                Ok(Event::Incoming(Incoming::Publish(p))) => Seen::Message(p.topic),
                Ok(_) => continue,
                Err(rumqttc::ConnectionError::ConnectionRefused(_)) => {
                    let _ = tx.send(Seen::Refused);
                    return;
                }
                Err(_) => {
                    // rumqttc reconnects at the next poll: not at once, not in a spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Seen::Dropped
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (client, rx)
}

/// Waits for what `want` accepts, skipping the rest; panics with `context()` after `timeout`.
async fn expect(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    timeout: Duration,
    want: impl Fn(&Seen) -> bool,
    context: impl Fn() -> String,
) {
    let wait = async {
        while let Some(seen) = rx.recv().await {
            if want(&seen) {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(timeout, wait).await.unwrap_or(false);
    assert!(found, "{}", context());
}

/// edgecore's count of what its bus refused for `reason`.
fn refused(metrics: &str, reason: &str) -> u64 {
    let needle = format!("wedge_edge_mqtt_refused_total{{reason=\"{reason}\"}} ");
    scrape(metrics)
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.parse().ok())
        .unwrap_or(0)
}

const LOGIN: &str = "app-login";
const CONDITION: &str = "{.status.conditions[?(@.type==\"mqtt.wedge.io/Login\")].status}";
const REASON: &str = "{.status.conditions[?(@.type==\"mqtt.wedge.io/Login\")].reason}";

/// A telemetry pod naming `secret` as its login, granted `telemetry/#`; its container reads the
/// same Secret the ordinary way (env `secretKeyRef`), as a mapper would.
fn pod(name: &str, secret: &str, registry: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    mqtt.wedge.io/login: {secret}\n    messaging.wedge.io/publish: telemetry/#\n    messaging.wedge.io/subscribe: telemetry/#\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: {registry}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"1000\"}}\n    - name: MQTT_USERNAME\n      valueFrom: {{secretKeyRef: {{name: {secret}, key: username}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pods_secret_logs_it_in_within_its_grants_until_the_pod_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_samples().await;
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let root = dir.path().join("edge-a");
    std::fs::create_dir_all(&root).expect("edge root");
    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut command = edgecore(&root, &cloud, "edge-a", Some(&token), &registry.host());
    command
        .env("WEDGE_MQTT_LISTEN", format!("127.0.0.1:{port}"))
        .env("WEDGE_EDGE_METRICS_LISTEN", &metrics);
    let edge = Proc::spawn(command, root.join("edgecore.log"));
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );

    cloud.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {LOGIN}\ntype: kubernetes.io/basic-auth\nstringData:\n  username: app\n  password: s3cret-pw\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: opaque-login\ntype: Opaque\nstringData:\n  username: other\n  password: pw\n"
    ));
    cloud.apply(&pod("app", LOGIN, &registry.host()));
    cloud.apply(&pod("wrong-type", "opaque-login", &registry.host()));
    cloud.wait_for(
        "pod/app",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    cloud.wait_for("pod/app", CONDITION, "True", Duration::from_secs(30));
    // A Secret of another type is refused, and the pod says why.
    cloud.wait_for(
        "pod/wrong-type",
        CONDITION,
        "False",
        Duration::from_secs(60),
    );
    cloud.wait_for(
        "pod/wrong-type",
        REASON,
        "WrongSecretType",
        Duration::from_secs(5),
    );

    // The pod's login publishes on a granted topic, and a subscriber with it receives it.
    let context = || format!("edgecore: {}", edge.log());
    let (sub, mut sub_seen) = client(port, "app-sub", "app", "s3cret-pw");
    expect(
        &mut sub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Connected),
        context,
    )
    .await;
    sub.subscribe("telemetry/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    expect(
        &mut sub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::SubAck),
        context,
    )
    .await;
    let (publisher, mut pub_seen) = client(port, "app-pub", "app", "s3cret-pw");
    expect(
        &mut pub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Connected),
        context,
    )
    .await;
    publisher
        .publish("telemetry/room-1", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    expect(
        &mut sub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Message(t) if t == "telemetry/room-1"),
        context,
    )
    .await;

    // A topic outside the grants is refused, and counted.
    let before = refused(&metrics, "publish_acl");
    publisher
        .publish("commands/fan", QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish");
    eventually(
        Duration::from_secs(10),
        || refused(&metrics, "publish_acl") > before,
        || format!("no publish refused\nedgecore: {}", edge.log()),
    )
    .await;

    // The pod goes: its sessions are dropped and its login is refused from then on.
    cloud.kubectl_ok(&["delete", "pod", "app", "--wait=false"]);
    expect(
        &mut sub_seen,
        Duration::from_secs(30),
        |s| matches!(s, Seen::Dropped),
        context,
    )
    .await;
    cloud.wait_gone("pod/app", Duration::from_secs(30));
    let bad_logins = refused(&metrics, "bad_login");
    let (_late, mut late_seen) = client(port, "app-late", "app", "s3cret-pw");
    expect(
        &mut late_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Refused),
        context,
    )
    .await;
    assert!(
        refused(&metrics, "bad_login") > bad_logins,
        "{}",
        scrape(&metrics)
    );

    // The wrong-type login was reported once, not at every reconcile since.
    let log = edge.log();
    assert_eq!(
        log.matches("of type \"Opaque\"").count(),
        1,
        "edgecore: {log}"
    );
    drop(edge);
}
