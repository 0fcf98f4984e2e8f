//! Uploads through real processes: `cloudcore`, `edgecore` on Debian's mosquitto, the real
//! `kubectl` applying KubeEdge's router manifests, an MQTT client publishing as an edge app does,
//! and an HTTP service receiving what the Rules deliver. What is asserted is what users see: the
//! requests the service gets and the Rules' status in the API.

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use wedge_testkit::http_sink::HttpSink;
use wedge_testkit::mosquitto::Mosquitto;

use super::support::*;

/// KubeEdge's router sample: an eventbus endpoint, a rest endpoint, and a rule between them
/// (`topic: test` on the node's bus, POSTed to the sink).
fn kubeedge_rule(sink: &HttpSink) -> String {
    format!(
        "apiVersion: rules.kubeedge.io/v1\nkind: RuleEndpoint\nmetadata:\n  name: my-eventbus\n  labels: {{description: test}}\nspec:\n  ruleEndpointType: eventbus\n  properties: {{}}\n---\napiVersion: rules.kubeedge.io/v1\nkind: RuleEndpoint\nmetadata:\n  name: my-rest\n  labels: {{description: test}}\nspec:\n  ruleEndpointType: rest\n  properties: {{}}\n---\napiVersion: rules.kubeedge.io/v1\nkind: Rule\nmetadata:\n  name: my-rule-eventbus-rest\n  labels: {{description: test}}\nspec:\n  source: my-eventbus\n  sourceResource: {{topic: test, node_name: edge-a}}\n  target: my-rest\n  targetResource: {{resource: \"{}\"}}\n---\napiVersion: rules.kubeedge.io/v1\nkind: Rule\nmetadata:\n  name: alarms\nspec:\n  source: my-eventbus\n  sourceResource: {{topic: \"$hw/events/upload/alarms\", node_name: edge-a}}\n  target: my-rest\n  targetResource: {{resource: \"{}\"}}\n",
        sink.url("/abc"),
        sink.url("/alarms"),
    )
}

/// Rules that cannot be served, each for a reason its status must give.
const BAD_RULES: &str = "apiVersion: rules.kubeedge.io/v1\nkind: Rule\nmetadata:\n  name: nowhere\nspec:\n  source: my-eventbus\n  sourceResource: {topic: x, node_name: edge-a}\n  target: missing-endpoint\n  targetResource: {resource: \"http://127.0.0.1:1/\"}\n---\napiVersion: rules.kubeedge.io/v1\nkind: Rule\nmetadata:\n  name: bad-topic\nspec:\n  source: my-eventbus\n  sourceResource: {topic: \"a/#/b\", node_name: edge-a}\n  target: my-rest\n  targetResource: {resource: \"http://127.0.0.1:1/\"}\n";

fn rule_field(cloud: &Cloud, rule: &str, jsonpath: &str) -> String {
    let out = cloud.kubectl(&["get", "rule", rule, "-o", &format!("jsonpath={jsonpath}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn successes(cloud: &Cloud, rule: &str) -> u64 {
    rule_field(cloud, rule, "{.status.successMessages}")
        .parse()
        .unwrap_or(0)
}

async fn app(port: u16) -> AsyncClient {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("edge-app", "127.0.0.1", port), 64);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
}

async fn publish(app: &AsyncClient, topic: &str, payload: impl Into<Vec<u8>>) {
    app.publish(topic, QoS::AtLeastOnce, false, payload.into())
        .await
        .expect("publish");
}

/// Publishes `payload` on `topic` every 200 ms until `arrived` (a rule's subscription reaches
/// the edge's broker a moment after the rule reaches the edge). Publishes are awaited, so
/// whatever is published next goes after them.
async fn publish_until(
    app: &AsyncClient,
    topic: &str,
    payload: &[u8],
    arrived: impl Fn() -> bool,
    what: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !arrived() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        publish(app, topic, payload.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bodies the sink accepted on `path`, as text.
fn bodies(sink: &HttpSink, path: &str) -> Vec<String> {
    sink.received()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| r.text())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_published_at_the_edge_reach_an_http_service_and_the_rule_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mosquitto = Mosquitto::start().expect("mosquitto");
    let sink = HttpSink::start().await.expect("http sink");
    let mut cloud = Cloud::start(&dir.path().join("cloud"));
    let edge_root = dir.path().join("edge-a");
    std::fs::create_dir_all(&edge_root).expect("edge root");
    let token = cloud.token("1h");
    let mut command = edgecore(&edge_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    command.env(
        "WEDGE_MQTT_BROKER",
        format!("127.0.0.1:{}", mosquitto.port()),
    );
    let edge = Proc::spawn(command, edge_root.join("edgecore.log"));
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );

    cloud.apply(&kubeedge_rule(&sink));
    let app = app(mosquitto.port()).await;

    // The rule reaches the edge, which subscribes to `default/test`: publish until the first
    // message arrives, then a numbered run that must arrive whole and in order.
    publish_until(
        &app,
        "default/test",
        b"hello",
        || !bodies(&sink, "/abc").is_empty(),
        || format!("nothing reached the service\nedgecore: {}", edge.log()),
    )
    .await;
    let first = sink.received()[0].clone();
    assert_eq!(first.text(), "hello");
    assert_eq!(first.header("x-wedge-node").as_deref(), Some("edge-a"));
    assert_eq!(
        first.header("x-wedge-topic").as_deref(),
        Some("default/test")
    );
    assert_eq!(
        first.header("x-wedge-rule").as_deref(),
        Some("default/my-rule-eventbus-rest")
    );
    for i in 0..20 {
        publish(&app, "default/test", format!(r#"{{"n":{i}}}"#)).await;
    }
    publish(&app, "default/not-routed", "stays at the edge").await;
    let expected: Vec<String> = (0..20).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    eventually(
        Duration::from_secs(30),
        || bodies(&sink, "/abc").ends_with(&expected),
        || {
            format!(
                "the run did not arrive in order: {:?}",
                bodies(&sink, "/abc")
            )
        },
    )
    .await;
    let json = sink
        .received()
        .into_iter()
        .rfind(|r| r.path == "/abc")
        .expect("a request");
    assert_eq!(
        json.header("content-type").as_deref(),
        Some("application/json")
    );

    // The counts reach the Rule's status, and kubectl shows them.
    let delivered = bodies(&sink, "/abc").len() as u64;
    eventually(
        Duration::from_secs(10),
        || successes(&cloud, "my-rule-eventbus-rest") == delivered,
        || {
            format!(
                "successMessages is not {delivered}: {}",
                rule_field(&cloud, "my-rule-eventbus-rest", "{.status}")
            )
        },
    )
    .await;
    let table = cloud.kubectl_ok(&["get", "rules"]);
    assert!(
        table.lines().any(|l| l.starts_with("my-rule-eventbus-rest")
            && l.contains("my-eventbus")
            && l.contains(&delivered.to_string())),
        "{table}"
    );

    // KubeEdge's upload topic, with a payload that is not text: the bytes arrive as published.
    let bytes = vec![0xde, 0xad, 0x00, 0xbe, 0xef];
    publish_until(
        &app,
        "$hw/events/upload/alarms",
        &bytes,
        || sink.received().iter().any(|r| r.path == "/alarms"),
        || format!("no alarm reached the service\nedgecore: {}", edge.log()),
    )
    .await;
    let alarm = sink
        .received()
        .into_iter()
        .find(|r| r.path == "/alarms")
        .expect("an alarm");
    assert_eq!(alarm.body, bytes);
    assert_eq!(
        alarm.header("content-type").as_deref(),
        Some("application/octet-stream")
    );

    // Rules that cannot be served say why in their status; the others go on.
    cloud.apply(BAD_RULES);
    eventually(
        Duration::from_secs(10),
        || {
            rule_field(&cloud, "nowhere", "{.status.errors}")
                .contains("target RuleEndpoint default/missing-endpoint does not exist")
                && rule_field(&cloud, "bad-topic", "{.status.errors}")
                    .contains("is not a valid MQTT topic filter")
        },
        || {
            format!(
                "no refusal in the statuses: {} / {}",
                rule_field(&cloud, "nowhere", "{.status}"),
                rule_field(&cloud, "bad-topic", "{.status}")
            )
        },
    )
    .await;

    // A service that fails is counted and its answer recorded; nothing else stops.
    sink.answer_with(500);
    publish(&app, "default/test", "refused").await;
    eventually(
        Duration::from_secs(30),
        || rule_field(&cloud, "my-rule-eventbus-rest", "{.status.failMessages}") == "1",
        || rule_field(&cloud, "my-rule-eventbus-rest", "{.status}"),
    )
    .await;
    assert!(
        rule_field(&cloud, "my-rule-eventbus-rest", "{.status.errors}")
            .contains("the target answered 500 Internal Server Error"),
        "{}",
        rule_field(&cloud, "my-rule-eventbus-rest", "{.status}")
    );
    sink.answer_with(200);

    // The cloud goes away; what is published meanwhile waits at the edge and arrives after.
    cloud.kill();
    let offline: Vec<String> = (0..5).map(|i| format!("offline-{i}")).collect();
    for body in &offline {
        publish(&app, "default/test", body.clone()).await;
    }
    // They wait in the edge's outbox before the cloud comes back.
    eventually(
        Duration::from_secs(30),
        || {
            let waiting = reports_waiting(&edge_root, wedge_core::protocol::ResourceKind::Upload);
            offline.iter().all(|body| {
                waiting
                    .iter()
                    .any(|(_, upload)| upload.to_string().contains(body.as_str()))
            })
        },
        || {
            format!(
                "the offline messages are not waiting at the edge: {:?}",
                reports_waiting(&edge_root, wedge_core::protocol::ResourceKind::Upload)
            )
        },
    )
    .await;
    cloud.restart();
    eventually(
        Duration::from_secs(60),
        || bodies(&sink, "/abc").ends_with(&offline),
        || {
            format!(
                "the offline messages did not arrive in order: {:?}\nedgecore: {}",
                bodies(&sink, "/abc"),
                edge.log()
            )
        },
    )
    .await;
    // The count goes on from what the status said before the restart.
    let delivered = bodies(&sink, "/abc").len() as u64;
    eventually(
        Duration::from_secs(10),
        || successes(&cloud, "my-rule-eventbus-rest") == delivered,
        || rule_field(&cloud, "my-rule-eventbus-rest", "{.status}"),
    )
    .await;
    // (That the edge does not even send it up is edge/tests/eventbus.rs's to check.)
    assert!(
        !bodies(&sink, "/abc").contains(&"stays at the edge".to_owned()),
        "a message no rule routes reached the service"
    );
}
