//! EventBus through real brokers: Debian's mosquitto and the embedded rumqttd. A peer MQTT client
//! plays what KubeEdge users already have (a mapper, a device speaking the KubeEdge topics, an
//! app), and sees the twin requests answered, changes announced, bad input refused with a reason
//! while the rest goes on, and pods' messages flowing both ways.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wedge_core::backend::TwinBackend;
use wedge_core::backend::{BusBackend, BusMessage, MessageQueue, Qos};
use wedge_core::protocol::{ObjectKey, ResourceKind};
use wedge_core::twin::TwinValue;
use wedge_edge::devicetwin::DeviceTwin;
use wedge_edge::eventbus::auth::{BusAuthConfig, Refusal, Refusals};
use wedge_edge::eventbus::uploads::{MAX_PENDING, Uploads};
use wedge_edge::eventbus::{BrokerChoice, EventBus};
use wedge_edge::metamanager::MetaManager;
use wedge_edge::store::Database;

const NODE: &str = "edge-a";
const WAIT: Duration = Duration::from_secs(10);

fn key(kind: ResourceKind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

/// The thermometer and fan of the samples, as MetaManager holds them after the cloud sent them.
async fn put_devices(meta: &MetaManager) {
    let objects = [
        (
            ResourceKind::DeviceModel,
            "thermometer",
            json!({"kind": "DeviceModel",
            "metadata": {"name": "thermometer", "namespace": "default", "uid": "m1"},
            "spec": {"properties": [{"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly",
                "minimum": "-40", "maximum": "125"}]}}),
        ),
        (
            ResourceKind::DeviceModel,
            "fan",
            json!({"kind": "DeviceModel",
            "metadata": {"name": "fan", "namespace": "default", "uid": "m2"},
            "spec": {"properties": [{"name": "power", "type": "BOOLEAN", "accessMode": "ReadWrite"}]}}),
        ),
        (
            ResourceKind::Device,
            "thermo-1",
            json!({"kind": "Device",
            "metadata": {"name": "thermo-1", "namespace": "default", "uid": "d1"},
            "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": NODE,
                "protocol": {"protocolName": "mqtt"}}}),
        ),
        (
            ResourceKind::Device,
            "fan-1",
            json!({"kind": "Device",
            "metadata": {"name": "fan-1", "namespace": "default", "uid": "d2"},
            "spec": {"deviceModelRef": {"name": "fan"}, "nodeName": NODE,
                "protocol": {"protocolName": "mqtt"}}}),
        ),
    ];
    for (kind, name, object) in objects {
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        meta.apply(&key(kind, name), &uid, "1", &object)
            .await
            .expect("stored");
    }
}

/// An MQTT client outside Wedge: what it receives arrives on a channel.
struct Peer {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<(String, Value)>,
    /// Messages received while waiting on another topic, oldest first: the edge's answers and
    /// its announcements go out on different topics in no set order.
    skipped: Vec<(String, Value)>,
}

impl Peer {
    async fn connect(port: u16, filters: &[&str]) -> Self {
        Self::connect_as(port, None, filters).await
    }

    /// A peer logging in as `login` (username, password).
    async fn connect_as(port: u16, login: Option<(&str, &str)>, filters: &[&str]) -> Self {
        let mut options = MqttOptions::new(format!("peer-{}", fastrand_id()), "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, received) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let payload = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&p.payload).into())
                        });
                        if tx.send((p.topic, payload)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        for filter in filters {
            client
                .subscribe(*filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            tokio::time::timeout(WAIT, subscribed.recv())
                .await
                .expect("subscribed in time");
        }
        Self {
            client,
            received,
            skipped: Vec::new(),
        }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// The next message on `topic`; those on other topics are kept for their own turn.
    async fn next_on(&mut self, topic: &str) -> Value {
        if let Some(at) = self.skipped.iter().position(|(t, _)| t == topic) {
            return self.skipped.remove(at).1;
        }
        tokio::time::timeout(WAIT, async {
            loop {
                let (t, payload) = self.received.recv().await.expect("peer connection");
                if t == topic {
                    return payload;
                }
                self.skipped.push((t, payload));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing on {topic} within {WAIT:?}"))
    }
}

fn fastrand_id() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct Edge {
    _dir: tempfile::TempDir,
    db: Database,
    meta: MetaManager,
    twin: DeviceTwin,
    bus: EventBus,
    refusals: Arc<Refusals>,
    shutdown: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An edge whose embedded broker lets anonymous clients in, as before the bus had logins.
async fn edge(broker: BrokerChoice) -> Edge {
    let security = BusAuthConfig {
        allow_anonymous: matches!(broker, BrokerChoice::Embedded(_)),
        ..BusAuthConfig::default()
    };
    edge_with(broker, &security).await
}

async fn edge_with(broker: BrokerChoice, security: &BusAuthConfig) -> Edge {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("edge.db")).expect("db");
    let meta = MetaManager::load(&db).expect("meta");
    put_devices(&meta).await;
    let twin = DeviceTwin::new(&db, &meta).await;
    let uploads = Arc::new(Uploads::new(meta.clone(), db.outbox(), MAX_PENDING));
    let refusals = Arc::new(Refusals::default());
    let (bus, driver) =
        EventBus::new(NODE, &broker, security, refusals.clone(), uploads).expect("EventBus starts");
    let shutdown = CancellationToken::new();
    tokio::spawn(driver.run(twin.clone(), shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bus.connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "EventBus did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its subscriptions follow the connection: give them a moment to be acknowledged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Edge {
        _dir: dir,
        db,
        meta,
        twin,
        bus,
        refusals,
        shutdown,
    }
}

async fn kubeedge_topics_are_served(broker: BrokerChoice, port: u16) {
    let edge = edge(broker).await;
    let mut peer = Peer::connect(
        port,
        &[
            "$hw/events/device/+/twin/update/result",
            "$hw/events/device/+/twin/get/result",
            "$hw/events/device/+/twin/update/delta",
            "$hw/events/device/+/state/update/result",
            "$ke/events/device/+/data/update",
            "$hw/events/node/edge-a/membership/get/result",
        ],
    )
    .await;

    // A device reports over MQTT: answered, stored, announced as data for apps.
    peer.publish(
        "$hw/events/device/thermo-1/twin/update",
        r#"{"event_id":"e1","timestamp":1,"twin":{"temperature":{"actual":{"value":"31.5"},"metadata":{"type":"Updated"}}}}"#,
    )
    .await;
    let result = peer
        .next_on("$hw/events/device/thermo-1/twin/update/result")
        .await;
    assert_eq!(result["event_id"], "e1", "{result}");
    assert_eq!(result["twin"]["temperature"]["actual"]["value"], "31.5");
    assert_eq!(result["twin"]["temperature"]["metadata"]["type"], "float");
    let data = peer.next_on("$ke/events/device/thermo-1/data/update").await;
    assert_eq!(data["data"]["temperature"]["value"], "31.5", "{data}");
    let stored = edge
        .twin
        .property("thermo-1", "temperature")
        .await
        .expect("twin");
    assert_eq!(
        stored.reported.map(|r| r.value),
        Some(TwinValue::Float(31.5))
    );

    // Bad input: each refused with a code and a reason, nothing changed, the bus goes on.
    let refusals = [
        ("thermo-1", "{not json", 400, "malformed twin update"),
        (
            "thermo-1",
            r#"{"event_id":"e3","twin":{"temperature":{"actual":{"value":"hot"}}}}"#,
            400,
            "temperature",
        ),
        (
            "thermo-1",
            r#"{"event_id":"e4","twin":{"temperature":{"expected":{"value":"20"}}}}"#,
            400,
            "read-only",
        ),
        (
            "thermo-1",
            r#"{"event_id":"e5","twin":{"humidity":{"actual":{"value":"40"}}}}"#,
            404,
            "humidity",
        ),
        (
            "ghost",
            r#"{"event_id":"e6","twin":{"temperature":{"actual":{"value":"20"}}}}"#,
            404,
            "ghost",
        ),
    ];
    for (device, payload, code, reason) in refusals {
        peer.publish(&format!("$hw/events/device/{device}/twin/update"), payload)
            .await;
        let result = peer
            .next_on(&format!("$hw/events/device/{device}/twin/update/result"))
            .await;
        assert_eq!(result["code"], code, "{payload} → {result}");
        let why = result["reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{payload} → {why}");
    }
    let stored = edge
        .twin
        .property("thermo-1", "temperature")
        .await
        .expect("twin");
    assert_eq!(
        stored.reported.map(|r| (r.value, r.version)),
        Some((TwinValue::Float(31.5), 1)),
        "refused updates changed nothing"
    );

    // An app sets the fan's expected value over MQTT: the delta tells the fan's mapper.
    peer.publish(
        "$hw/events/device/fan-1/twin/update",
        r#"{"event_id":"e7","twin":{"power":{"expected":{"value":"true"}}}}"#,
    )
    .await;
    let delta = peer
        .next_on("$hw/events/device/fan-1/twin/update/delta")
        .await;
    assert_eq!(delta["delta"]["power"], "true", "{delta}");
    assert_eq!(delta["twin"]["power"]["expected"]["value"], "true");

    // A device says it is online; the membership lists both devices with their twins.
    peer.publish(
        "$hw/events/device/fan-1/state/update",
        r#"{"event_id":"e8","state":"online"}"#,
    )
    .await;
    let state = peer
        .next_on("$hw/events/device/fan-1/state/update/result")
        .await;
    assert_eq!(state["device"]["state"], "online", "{state}");
    peer.publish(
        "$hw/events/node/edge-a/membership/get",
        r#"{"event_id":"e9"}"#,
    )
    .await;
    let members = peer
        .next_on("$hw/events/node/edge-a/membership/get/result")
        .await;
    let mut names: Vec<&str> = members["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["fan-1", "thermo-1"], "{members}");
    let fan = members["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "fan-1"))
        .expect("fan-1");
    assert_eq!(fan["state"], "online");
    assert_eq!(fan["twin"]["power"]["expected"]["value"], "true");
}

async fn pods_messages_flow_both_ways(broker: BrokerChoice, port: u16) {
    let edge = edge(broker).await;
    let queue = Arc::new(MessageQueue::default());
    edge.bus
        .subscribe("commands/#", &queue)
        .await
        .expect("subscribed");
    let mut peer = Peer::connect(port, &["alerts/#"]).await;
    // The subscription is made at the broker asynchronously: retry until the first arrives.
    let mut arrived = None;
    for _ in 0..50 {
        peer.publish("commands/fan", "on").await;
        if let Some(m) = queue.next(Duration::from_millis(100)).await {
            arrived = Some(m);
            break;
        }
    }
    let arrived = arrived.expect("a pod's subscription receives");
    assert_eq!(
        (arrived.topic.as_str(), arrived.payload.as_slice()),
        ("commands/fan", b"on".as_slice())
    );
    edge.bus
        .publish(
            BusMessage {
                topic: "alerts/heat".into(),
                payload: b"31.5".to_vec(),
                retained: false,
                received_ms: 0,
            },
            Qos::AtLeastOnce,
            false,
        )
        .await
        .expect("published");
    assert_eq!(peer.next_on("alerts/heat").await, json!(31.5));
}

/// A Rule the cloud sends makes EventBus subscribe to its filter; what is published there waits
/// in the outbox for the cloud, and what no rule routes does not.
/// `rule_topic` as a Rule writes it; `topic` the MQTT topic it stands for.
async fn rules_route_messages_to_the_outbox(
    broker: BrokerChoice,
    port: u16,
    rule_topic: &str,
    topic: &str,
) {
    let edge = edge(broker).await;
    let peer = Peer::connect(port, &[]).await;
    let rule = json!({"apiVersion": "rules.kubeedge.io/v1", "kind": "Rule",
        "metadata": {"name": "to-rest", "namespace": "default", "uid": "r1", "resourceVersion": "1"},
        "spec": {"source": "my-eventbus", "sourceResource": {"topic": rule_topic, "node_name": NODE},
                 "target": "my-rest", "targetResource": {"resource": "http://127.0.0.1:9/"}}});
    edge.meta
        .apply(&key(ResourceKind::Rule, "to-rest"), "r1", "1", &rule)
        .await
        .expect("store the rule");
    let outbox = edge.db.outbox();
    let uploads = || -> Vec<Value> {
        outbox
            .pending(0, 100)
            .expect("outbox")
            .into_iter()
            .filter(|e| e.key.kind == ResourceKind::Upload)
            .map(|e| e.payload)
            .collect()
    };
    // The subscription follows the rule asynchronously: publish until the first one lands.
    let deadline = tokio::time::Instant::now() + WAIT;
    while uploads().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rule's topic was never forwarded"
        );
        peer.publish(topic, r#"{"edgemsg":"first"}"#).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = uploads().len();
    peer.publish("default/other", "not routed").await;
    peer.publish(topic, r#"{"edgemsg":"second"}"#).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while uploads().len() < before + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second message lost"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = uploads().pop().expect("an upload");
    assert_eq!(
        last,
        json!({"topic": topic, "payload": r#"{"edgemsg":"second"}"#})
    );
    assert!(
        uploads().iter().all(|u| u["topic"] == topic),
        "only the rule's topic is forwarded: {:?}",
        uploads()
    );
}

/// A mapper's burst of twin updates, sent without waiting for answers, with refused ones among
/// them: each answered on its result topic in the order sent, with its own value, the refused
/// ones with their reason, and none lost.
async fn a_burst_of_updates_is_answered_in_order(broker: BrokerChoice, port: u16) {
    const BURST: usize = 300;
    let edge = edge(broker).await;
    let mut peer = Peer::connect(port, &["$hw/events/device/+/twin/update/result"]).await;
    let refused = |i: usize| match i {
        100 => Some((r#"{"humidity":{"actual":{"value":"40"}}}"#, 404)),
        200 => Some((r#"{"temperature":{"actual":{"value":"hot"}}}"#, 400)),
        _ => None,
    };
    // Within the model's range (up to 125), and each one's own.
    let value = |i: usize| format!("{}.{}5", i / 10, i % 10);
    for i in 0..BURST {
        let twin = refused(i).map_or_else(
            || {
                format!(
                    r#"{{"temperature":{{"actual":{{"value":"{}"}}}}}}"#,
                    value(i)
                )
            },
            |(twin, _)| twin.to_owned(),
        );
        peer.publish(
            "$hw/events/device/thermo-1/twin/update",
            format!(r#"{{"event_id":"e{i}","timestamp":1,"twin":{twin}}}"#),
        )
        .await;
    }
    let mut version = 0;
    for i in 0..BURST {
        let result = peer
            .next_on("$hw/events/device/thermo-1/twin/update/result")
            .await;
        assert_eq!(result["event_id"], format!("e{i}"), "in order: {result}");
        match refused(i) {
            Some((_, code)) => assert_eq!(result["code"], code, "{result}"),
            None => {
                version += 1;
                let temperature = &result["twin"]["temperature"];
                assert_eq!(temperature["actual"]["value"], value(i), "{result}");
                assert_eq!(temperature["actual_version"]["edge"], version, "{result}");
            }
        }
    }
    let stored = edge
        .twin
        .property("thermo-1", "temperature")
        .await
        .expect("twin")
        .reported
        .expect("reported");
    assert_eq!(
        (stored.value, stored.version),
        (
            TwinValue::Float(value(BURST - 1).parse().expect("a number")),
            version
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeedge_topics_through_mosquitto() {
    let mosquitto = wedge_testkit::mosquitto::Mosquitto::start().expect("mosquitto");
    let broker = BrokerChoice::external(&format!("127.0.0.1:{}", mosquitto.port())).expect("addr");
    kubeedge_topics_are_served(broker.clone(), mosquitto.port()).await;
    a_burst_of_updates_is_answered_in_order(broker.clone(), mosquitto.port()).await;
    pods_messages_flow_both_ways(broker.clone(), mosquitto.port()).await;
    rules_route_messages_to_the_outbox(broker, mosquitto.port(), "test", "default/test").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeedge_topics_through_the_embedded_broker() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let broker = BrokerChoice::Embedded(([127, 0, 0, 1], port).into());
    kubeedge_topics_are_served(broker, port).await;
    // The embedded broker lives as long as the process, and its EventBus's client id stays
    // taken by it: each part gets a broker of its own.
    let port = free_port();
    a_burst_of_updates_is_answered_in_order(
        BrokerChoice::Embedded(([127, 0, 0, 1], port).into()),
        port,
    )
    .await;
    let port = free_port();
    pods_messages_flow_both_ways(BrokerChoice::Embedded(([127, 0, 0, 1], port).into()), port).await;
    let port = free_port();
    let upload = "$hw/events/upload/alarms";
    rules_route_messages_to_the_outbox(
        BrokerChoice::Embedded(([127, 0, 0, 1], port).into()),
        port,
        upload,
        upload,
    )
    .await;
}

use wedge_testkit::wait::free_port;

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("edge.db")).expect("db");
    let meta = MetaManager::load(&db).expect("meta");
    let uploads = Arc::new(Uploads::new(meta, db.outbox(), MAX_PENDING));
    let err = EventBus::new(
        NODE,
        &BrokerChoice::Embedded(addr),
        &BusAuthConfig::default(),
        Arc::default(),
        uploads,
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on {addr}")),
        "{err}"
    );
}

/// Waits until `refusals` counted `n` of `why`: the event that proves a refusal happened.
async fn refused(refusals: &Refusals, why: Refusal, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while refusals.total(why) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why:?} refusals: {} (wanted {n})",
            refusals.total(why)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that only connects: its eventloop runs until the broker closes the connection.
fn connect_only(port: u16, client_id: &str, login: Option<(&str, &str)>) -> AsyncClient {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((u, p)) = login {
        options.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

const MAPPER_ACL: &str = "user thermo-mapper\n\
    topic write $hw/events/device/thermo-1/twin/update\n\
    topic read $hw/events/device/thermo-1/#\n";

/// A password file naming `thermo-mapper` (password `m4pper`) and the ACL above, in `dir`.
fn mapper_security(dir: &std::path::Path) -> BusAuthConfig {
    let passwd = dir.join("passwd");
    let acl = dir.join("acl");
    std::fs::write(
        &passwd,
        format!(
            "thermo-mapper:{}\n",
            wedge_edge::eventbus::passwords::hash("m4pper")
        ),
    )
    .expect("passwd");
    std::fs::write(&acl, MAPPER_ACL).expect("acl");
    BusAuthConfig {
        password_file: Some(passwd),
        acl_file: Some(acl),
        ..BusAuthConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_takes_logins_only_and_holds_each_to_its_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let edge = edge_with(
        BrokerChoice::Embedded(([127, 0, 0, 1], port).into()),
        &mapper_security(dir.path()),
    )
    .await;
    let temperature = || async {
        edge.twin
            .property("thermo-1", "temperature")
            .await
            .expect("twin")
            .reported
    };

    // An anonymous device is refused at CONNECT: its reading cannot change the twin.
    let anonymous = connect_only(port, "sensor", None);
    let _ = anonymous.try_publish(
        "$hw/events/device/thermo-1/twin/update",
        QoS::AtLeastOnce,
        false,
        r#"{"twin":{"temperature":{"actual":{"value":"99"}}}}"#,
    );
    refused(&edge.refusals, Refusal::Anonymous, 1).await;
    assert_eq!(temperature().await, None);
    // So is a wrong password.
    let _wrong = connect_only(port, "sensor", Some(("thermo-mapper", "guess")));
    refused(&edge.refusals, Refusal::BadLogin, 1).await;

    // The mapper reports its device; another device's topic is refused by the ACL, and what
    // it published first is dropped (the answer to its own report comes after).
    let mut mapper = Peer::connect_as(
        port,
        Some(("thermo-mapper", "m4pper")),
        &["$hw/events/device/thermo-1/twin/update/result"],
    )
    .await;
    mapper
        .publish(
            "$hw/events/device/fan-1/twin/update",
            r#"{"event_id":"x","twin":{"power":{"actual":{"value":"true"}}}}"#,
        )
        .await;
    mapper
        .publish(
            "$hw/events/device/thermo-1/twin/update",
            r#"{"event_id":"ok","twin":{"temperature":{"actual":{"value":"21.5"}}}}"#,
        )
        .await;
    let result = mapper
        .next_on("$hw/events/device/thermo-1/twin/update/result")
        .await;
    assert_eq!(result["event_id"], "ok", "{result}");
    refused(&edge.refusals, Refusal::Publish, 1).await;
    let fan = edge.twin.property("fan-1", "power").await.expect("twin");
    assert_eq!(fan.reported, None);
    // Subscribing beyond its devices is refused too.
    mapper
        .client
        .subscribe("$hw/events/device/+/twin/update/delta", QoS::AtLeastOnce)
        .await
        .expect("subscribe sent");
    refused(&edge.refusals, Refusal::Subscribe, 1).await;

    // EventBus's client id is its own: a valid login asking for it is refused, and EventBus
    // keeps serving.
    let _thief = connect_only(
        port,
        &format!("wedge-edge-{NODE}"),
        Some(("thermo-mapper", "m4pper")),
    );
    refused(&edge.refusals, Refusal::ClientId, 1).await;
    mapper
        .publish(
            "$hw/events/device/thermo-1/twin/update",
            r#"{"event_id":"after","twin":{"temperature":{"actual":{"value":"22"}}}}"#,
        )
        .await;
    let result = mapper
        .next_on("$hw/events/device/thermo-1/twin/update/result")
        .await;
    assert_eq!(result["event_id"], "after", "{result}");
    assert!(edge.bus.connected());
}

/// Sends an anonymous MQTT 3.1.1 CONNECT on a raw socket; true if the broker accepts it.
async fn raw_connect(port: u16, client_id: &str) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let id = client_id.as_bytes();
    let mut packet = vec![
        0x10,
        (12 + id.len()) as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        60,
    ];
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    tcp.write_all(&packet).await.ok()?;
    let mut ack = [0u8; 4];
    tcp.read_exact(&mut ack).await.ok()?;
    (ack == [0x20, 2, 0, 0]).then_some(tcp)
}

#[tokio::test(flavor = "multi_thread")]
async fn held_anonymous_connections_leave_room_for_the_edges_own_clients() {
    use wedge_edge::eventbus::auth::RESERVED_SLOTS;
    use wedge_edge::eventbus::broker::MAX_CONNECTIONS;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut security = mapper_security(dir.path());
    security.acl_file = None;
    security.allow_anonymous = true;
    let edge = edge_with(
        BrokerChoice::Embedded(([127, 0, 0, 1], port).into()),
        &security,
    )
    .await;

    // Anonymous clients take every slot they may (EventBus holds one already).
    let mut held = Vec::new();
    for i in 0.. {
        match raw_connect(port, &format!("holder-{i}")).await {
            Some(tcp) => held.push(tcp),
            None => break,
        }
        assert!(held.len() <= MAX_CONNECTIONS, "no cap on anonymous clients");
    }
    assert_eq!(held.len(), MAX_CONNECTIONS - RESERVED_SLOTS - 1);
    refused(&edge.refusals, Refusal::Full, 1).await;

    // A mapper with a login still gets in and is served.
    let mut mapper = Peer::connect_as(
        port,
        Some(("thermo-mapper", "m4pper")),
        &["$hw/events/device/thermo-1/twin/update/result"],
    )
    .await;
    mapper
        .publish(
            "$hw/events/device/thermo-1/twin/update",
            r#"{"event_id":"in","twin":{"temperature":{"actual":{"value":"20"}}}}"#,
        )
        .await;
    let result = mapper
        .next_on("$hw/events/device/thermo-1/twin/update/result")
        .await;
    assert_eq!(result["event_id"], "in", "{result}");
    assert!(edge.bus.connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn eventbus_logs_in_to_mosquitto_which_refuses_anonymous_clients() {
    use wedge_edge::eventbus::passwords::hash;
    // The same formats as the embedded broker's: a password file hashed by Wedge and read by
    // mosquitto, and mosquitto's ACL patterns.
    let passwd = format!(
        "edge-a:{}\nthermo-mapper:{}\n",
        hash("bus-secret"),
        hash("m4pper")
    );
    let acl = format!(
        "user edge-a\ntopic readwrite $hw/#\ntopic readwrite $ke/#\ntopic readwrite #\n{MAPPER_ACL}"
    );
    let mosquitto =
        wedge_testkit::mosquitto::Mosquitto::start_secured(&passwd, &acl).expect("mosquitto");
    let port = mosquitto.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(&credentials, "edge-a:bus-secret\n").expect("credentials");
    let broker = BrokerChoice::external(&format!("127.0.0.1:{port}")).expect("addr");
    let edge = edge_with(
        broker,
        &BusAuthConfig {
            credentials_file: Some(credentials),
            ..BusAuthConfig::default()
        },
    )
    .await;

    // The mapper logs in and is answered by EventBus.
    let mut mapper = Peer::connect_as(
        port,
        Some(("thermo-mapper", "m4pper")),
        &["$hw/events/device/thermo-1/twin/update/result"],
    )
    .await;
    mapper
        .publish(
            "$hw/events/device/thermo-1/twin/update",
            r#"{"event_id":"m","twin":{"temperature":{"actual":{"value":"19"}}}}"#,
        )
        .await;
    let result = mapper
        .next_on("$hw/events/device/thermo-1/twin/update/result")
        .await;
    assert_eq!(result["event_id"], "m", "{result}");

    // Anonymous and wrong logins are refused at CONNECT, as mosquitto says in its CONNACK.
    for login in [None, Some(("thermo-mapper", "guess"))] {
        let mut options = MqttOptions::new("intruder", "127.0.0.1", port);
        if let Some((u, p)) = login {
            options.set_credentials(u, p);
        }
        let (_client, mut eventloop) = AsyncClient::new(options, 8);
        let outcome = tokio::time::timeout(WAIT, eventloop.poll())
            .await
            .expect("mosquitto answers");
        assert!(
            matches!(
                outcome,
                Err(rumqttc::ConnectionError::ConnectionRefused(
                    rumqttc::ConnectReturnCode::NotAuthorized
                        | rumqttc::ConnectReturnCode::BadUserNamePassword
                ))
            ),
            "{login:?}: {outcome:?}"
        );
    }
    let stored = edge
        .twin
        .property("thermo-1", "temperature")
        .await
        .expect("twin");
    assert_eq!(
        stored.reported.map(|r| r.value),
        Some(TwinValue::Float(19.0))
    );
}
