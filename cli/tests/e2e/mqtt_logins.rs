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
    // A count: a whole number.
    bus_refused(metrics, reason) as u64
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

/// The cloud and edge of [`OneEdge`], whose embedded broker and metrics listen on ports of the
/// test's.
struct Bus {
    one: OneEdge,
    port: u16,
    metrics: String,
}

impl std::ops::Deref for Bus {
    type Target = OneEdge;
    fn deref(&self) -> &OneEdge {
        &self.one
    }
}

impl Bus {
    async fn start() -> Self {
        let port = free_port();
        let metrics = format!("127.0.0.1:{}", free_port());
        let mqtt = format!("127.0.0.1:{port}");
        let one =
            OneEdge::start_with(&["--mqtt-listen", &mqtt, "--metrics-listen", &metrics]).await;
        Self { one, port, metrics }
    }

    fn context(&self) -> impl Fn() -> String + '_ {
        || format!("edgecore: {}", self.edge.log())
    }

    /// A client logged in as `user`, once connected.
    async fn connected(
        &self,
        id: &str,
        user: &str,
        password: &str,
    ) -> (AsyncClient, mpsc::UnboundedReceiver<Seen>) {
        let (c, mut seen) = client(self.port, id, user, password);
        expect(
            &mut seen,
            Duration::from_secs(10),
            |s| matches!(s, Seen::Connected),
            self.context(),
        )
        .await;
        (c, seen)
    }

    /// Waits until the broker has refused one more publish than `before`.
    async fn publish_refused(&self, before: u64) {
        eventually(
            Duration::from_secs(10),
            || refused(&self.metrics, "publish_acl") > before,
            || format!("no publish refused\nedgecore: {}", self.edge.log()),
        )
        .await;
    }
}

fn basic_auth(name: &str, user: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: kubernetes.io/basic-auth\nstringData:\n  username: {user}\n  password: {password}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pods_secret_logs_it_in_within_its_grants_until_the_pod_goes() {
    let bus = Bus::start().await;
    let (cloud, edge) = (&bus.cloud, &bus.edge);
    cloud.apply(&basic_auth(LOGIN, "app", "s3cret-pw"));
    cloud.apply(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: opaque-login\ntype: Opaque\nstringData:\n  username: other\n  password: pw\n",
    );
    cloud.apply(&pod("app", LOGIN, &bus.registry.host()));
    cloud.apply(&pod("wrong-type", "opaque-login", &bus.registry.host()));
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
    let context = bus.context();
    let (sub, mut sub_seen) = bus.connected("app-sub", "app", "s3cret-pw").await;
    sub.subscribe("telemetry/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    expect(
        &mut sub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::SubAck),
        &context,
    )
    .await;
    let (publisher, mut pub_seen) = bus.connected("app-pub", "app", "s3cret-pw").await;
    publisher
        .publish("telemetry/room-1", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    expect(
        &mut sub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Message(t) if t == "telemetry/room-1"),
        &context,
    )
    .await;

    // A topic outside the grants is refused, and counted.
    let before = refused(&bus.metrics, "publish_acl");
    publisher
        .publish("commands/fan", QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish");
    bus.publish_refused(before).await;

    // The Secret changes: the old password's sessions are dropped and it is refused; the new
    // one logs in.
    cloud.apply(&basic_auth(LOGIN, "app", "n3w-pw"));
    expect(
        &mut pub_seen,
        Duration::from_secs(30),
        |s| matches!(s, Seen::Dropped),
        &context,
    )
    .await;
    expect(
        &mut pub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Refused),
        &context,
    )
    .await;
    let (sub, mut sub_seen) = bus.connected("app-sub-2", "app", "n3w-pw").await;
    sub.subscribe("telemetry/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    expect(
        &mut sub_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::SubAck),
        &context,
    )
    .await;

    // The pod goes: its sessions are dropped and its login is refused from then on.
    cloud.kubectl_ok(&["delete", "pod", "app", "--wait=false"]);
    expect(
        &mut sub_seen,
        Duration::from_secs(30),
        |s| matches!(s, Seen::Dropped),
        &context,
    )
    .await;
    cloud.wait_gone("pod/app", Duration::from_secs(30));
    let bad_logins = refused(&bus.metrics, "bad_login");
    let (_late, mut late_seen) = client(bus.port, "app-late", "app", "n3w-pw");
    expect(
        &mut late_seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Refused),
        &context,
    )
    .await;
    assert!(
        refused(&bus.metrics, "bad_login") > bad_logins,
        "{}",
        scrape(&bus.metrics)
    );

    // The wrong-type login was reported once, not at every reconcile since.
    let log = edge.log();
    assert_eq!(
        log.matches("of type \"Opaque\"").count(),
        1,
        "edgecore: {log}"
    );
}

/// A device speaking KubeEdge's MQTT topics, and one beside it, with their model.
const DEVICES: &str = "apiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata:\n  name: hygrometer\nspec:\n  protocol: mqtt\n  properties:\n  - {name: humidity, type: INT, accessMode: ReadOnly, minimum: \"0\", maximum: \"100\"}\n---\napiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: hygro-1\nspec:\n  deviceModelRef: {name: hygrometer}\n  nodeName: edge-a\n  protocol: {protocolName: mqtt}\n  properties:\n  - {name: humidity, reportToCloud: true}\n---\napiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: hygro-2\nspec:\n  deviceModelRef: {name: hygrometer}\n  nodeName: edge-a\n  protocol: {protocolName: mqtt}\n  properties:\n  - {name: humidity, reportToCloud: true}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_mapper_pod_reports_its_own_device_and_no_other() {
    let bus = Bus::start().await;
    let cloud = &bus.cloud;
    cloud.apply(DEVICES);
    cloud.apply(&basic_auth("mapper-login", "hygro-mapper", "m4pper-pw"));
    // The mapper runs as a pod granted to drive hygro-1 (the telemetry app stands in for its
    // code: the login is the pod's, whatever runs in it).
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hygro-mapper\n  annotations:\n    mqtt.wedge.io/login: mapper-login\n    devices.wedge.io/write: hygro-1\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: mapper\n    image: {}/samples/telemetry:1\n",
        bus.registry.host()
    ));
    cloud.wait_for(
        "pod/hygro-mapper",
        CONDITION,
        "True",
        Duration::from_secs(60),
    );

    let context = bus.context();
    let (mapper, mut seen) = bus
        .connected("hygro-mapper-1", "hygro-mapper", "m4pper-pw")
        .await;
    let result = "$hw/events/device/hygro-1/twin/update/result";
    mapper
        .subscribe(result, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    expect(
        &mut seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::SubAck),
        &context,
    )
    .await;
    mapper
        .publish(
            "$hw/events/device/hygro-1/twin/update",
            QoS::AtLeastOnce,
            false,
            r#"{"event_id":"r1","twin":{"humidity":{"actual":{"value":"64"}}}}"#,
        )
        .await
        .expect("publish");
    // EventBus answers the mapper, and the reading reaches the Device's status in the API.
    expect(
        &mut seen,
        Duration::from_secs(10),
        |s| matches!(s, Seen::Message(t) if t == result),
        &context,
    )
    .await;
    cloud.wait_for(
        "device/hygro-1",
        "{.status.twins[?(@.propertyName==\"humidity\")].reported.value}",
        "64",
        Duration::from_secs(30),
    );

    // Another device's report is refused at the broker, and counted.
    let before = refused(&bus.metrics, "publish_acl");
    mapper
        .publish(
            "$hw/events/device/hygro-2/twin/update",
            QoS::AtLeastOnce,
            false,
            r#"{"event_id":"r2","twin":{"humidity":{"actual":{"value":"99"}}}}"#,
        )
        .await
        .expect("publish");
    bus.publish_refused(before).await;
    // Nor may it listen to the other device.
    let other = "$hw/events/device/hygro-2/twin/update/result";
    let subs_refused = refused(&bus.metrics, "subscribe_acl");
    mapper
        .subscribe(other, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually(
        Duration::from_secs(10),
        || refused(&bus.metrics, "subscribe_acl") > subs_refused,
        || format!("no subscription refused\nedgecore: {}", bus.edge.log()),
    )
    .await;
    let twin = cloud.kubectl_ok(&["get", "device", "hygro-2", "-o", "jsonpath={.status.twins}"]);
    assert!(!twin.contains("99"), "hygro-2: {twin}");
}
