//! The device loop through real processes: `cloudcore` (embedded API server and control plane),
//! `edgecore` with its embedded MQTT broker and Modbus mapper, a Modbus TCP device (the sample
//! simulator), the real `kubectl`, and the sample `fan-handler` Wasm component from a real
//! registry. KubeEdge manifests are applied; what is asserted is what users see: the Device's
//! status in the API and the device's registers.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wedge_mapper_modbus::{SimConfig, Simulator};

use super::support::*;

fn manifest(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../sample-apps/manifests/devices")
            .join(name),
    )
    .expect("a sample manifest")
}

/// The Device's reported value of `property`, as `kubectl` shows it.
fn reported(cloud: &Cloud, device: &str, property: &str) -> String {
    let out = cloud.kubectl(&[
        "get",
        "device",
        device,
        "-o",
        &format!("jsonpath={{.status.twins[?(@.propertyName==\"{property}\")].reported.value}}"),
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A device speaking KubeEdge's MQTT topics directly, with a model of its own.
const MQTT_DEVICE: &str = "apiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: hygro-1\nspec:\n  deviceModelRef: {name: hygrometer}\n  nodeName: edge-a\n  protocol: {protocolName: mqtt}\n  properties:\n  - {name: humidity, reportToCloud: true}\n---\napiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata:\n  name: hygrometer\nspec:\n  protocol: mqtt\n  properties:\n  - {name: humidity, type: INT, accessMode: ReadOnly, minimum: \"0\", maximum: \"100\"}\n";

/// The edge bus's users: each device logs in with its own name and may report only itself
/// (mosquitto's `password_file` and `acl_file` formats, read by the embedded broker).
fn bus_users(edge_root: &std::path::Path, command: &mut std::process::Command) {
    let passwd = edge_root.join("mqtt-passwd");
    let acl = edge_root.join("mqtt-acl");
    let line = format!(
        "hygro-1:{}\n",
        wedge_edge::eventbus::passwords::hash("hygro-secret")
    );
    std::fs::write(&passwd, line).expect("password file");
    std::fs::write(
        &acl,
        "pattern write $hw/events/device/%u/twin/update\npattern read $hw/events/device/%u/#\n",
    )
    .expect("acl file");
    command
        .env("WEDGE_MQTT_PASSWORD_FILE", &passwd)
        .env("WEDGE_MQTT_ACL_FILE", &acl);
}

/// What `pod`'s fan-handler container wrote, from its log files on the edge (kubelet's layout).
fn handler_logs(edge_root: &std::path::Path, pod: &str) -> String {
    let mut out = String::new();
    let pods = edge_root.join("pods");
    let prefix = format!("default_{pod}_");
    for dir in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        if !dir.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for log in std::fs::read_dir(dir.path().join("fan-handler"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push_str(&std::fs::read_to_string(log.path()).unwrap_or_default());
        }
    }
    out
}

async fn mqtt_client(port: u16, login: Option<(&str, &str)>) -> AsyncClient {
    let mut options = MqttOptions::new("hygro-1", "127.0.0.1", port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Disconnect)) => return,
                // Refused at CONNECT: this client stays out.
                Err(rumqttc::ConnectionError::ConnectionRefused(_)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_loop_runs_from_kubectl_to_the_register_and_back_and_survives_the_cloud_going_away()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_samples().await;
    let mut cloud = Cloud::start(&dir.path().join("cloud"));

    // The room starts just under the fan-handler's threshold (30 °C) and warms 1 °C a second.
    let sim = Simulator::bind(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig {
            start: 28.0,
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    let stop_sim = CancellationToken::new();
    sim.spawn(stop_sim.clone());
    let port = sim.local_addr().port().to_string();

    let mqtt_port = free_port();
    let edge_root = dir.path().join("edge-a");
    std::fs::create_dir_all(&edge_root).expect("edge root");
    let token = cloud.token("1h");
    let mut command = edgecore(&edge_root, &cloud, "edge-a", Some(&token), &registry.host());
    command.env("WEDGE_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"));
    bus_users(&edge_root, &mut command);
    let metrics = format!("127.0.0.1:{}", free_port());
    command.env("WEDGE_EDGE_METRICS_LISTEN", &metrics);
    let edge = Proc::spawn(command, edge_root.join("edgecore.log"));
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );

    // KubeEdge's manifests, pointed at the simulator.
    cloud.apply(&manifest("models.yaml"));
    cloud.apply(&manifest("devices.yaml").replace("port: 5020", &format!("port: {port}")));
    cloud.apply(MQTT_DEVICE);

    // The mapper reads the input register; the Device's status shows the temperature.
    eventually(
        Duration::from_secs(30),
        || {
            reported(&cloud, "thermo-1", "temperature")
                .parse::<f64>()
                .is_ok()
        },
        || {
            format!(
                "no temperature in thermo-1's status\nedgecore: {}",
                edge.log()
            )
        },
    )
    .await;
    cloud.wait_for(
        "device/thermo-1",
        "{.status.state}",
        "online",
        Duration::from_secs(10),
    );
    let table = cloud.kubectl_ok(&["get", "devices"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("thermo-1") && l.contains("edge-a") && l.contains("online")),
        "{table}"
    );

    // A handler granted only to read the fan is refused when it tries to drive it, with the
    // reason in its log; the fan stays off.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: intruder\n  annotations:\n    devices.wedge.io/read: thermo-1, fan-1\n    handlers.wedge.io/twin: thermo-1/temperature\nspec:\n  containers:\n  - name: fan-handler\n    image: {}/samples/fan-handler:1\n    env:\n    - {{name: THRESHOLD, value: \"0\"}}\n",
        registry.host()
    ));
    eventually(
        Duration::from_secs(60),
        || handler_logs(&edge_root, "intruder").contains("handler failed"),
        || format!("the intruder was not refused\nedgecore: {}", edge.log()),
    )
    .await;
    let refused = handler_logs(&edge_root, "intruder");
    assert!(refused.contains("devices.wedge.io/write"), "{refused}");
    assert!(!sim.fan(), "an ungranted pod switched the fan on");
    assert_eq!(reported(&cloud, "fan-1", "power"), "false");

    // The fan-handler component sets fan-1's desired power when the temperature passes 30 °C;
    // the mapper writes the coil and reads it back; the status follows.
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fan-handler\n  annotations:\n    devices.wedge.io/read: thermo-1\n    devices.wedge.io/write: fan-1\n    handlers.wedge.io/twin: thermo-1/temperature\nspec:\n  containers:\n  - name: fan-handler\n    image: {}/samples/fan-handler:1\n    env:\n    - {{name: THRESHOLD, value: \"30\"}}\n",
        registry.host()
    ));
    eventually(
        Duration::from_secs(60),
        || sim.fan(),
        || format!("the fan's coil was never written\nedgecore: {}", edge.log()),
    )
    .await;
    assert!(sim.writes() >= 1);
    eventually(
        Duration::from_secs(30),
        || reported(&cloud, "fan-1", "power") == "true",
        || {
            format!(
                "fan-1's reported power did not follow: {:?}",
                reported(&cloud, "fan-1", "power")
            )
        },
    )
    .await;
    let logs = handler_logs(&edge_root, "fan-handler");
    assert!(logs.contains("fan-1/power=true"), "{logs}");

    // The cloud goes away. The mapper keeps reading, and a device speaking MQTT reports.
    let before = reported(&cloud, "thermo-1", "temperature");
    cloud.kill();
    // A process without the device's login cannot report for it: refused at CONNECT, and
    // counted.
    let intruder = mqtt_client(mqtt_port, None).await;
    let _ = intruder.try_publish(
        "$hw/events/device/hygro-1/twin/update",
        QoS::AtLeastOnce,
        false,
        r#"{"event_id":"forged","twin":{"humidity":{"actual":{"value":"99"}}}}"#,
    );
    eventually(
        Duration::from_secs(10),
        || bus_refused(&metrics, "anonymous") >= 1.0,
        || format!("no anonymous refusal counted\nedgecore: {}", edge.log()),
    )
    .await;
    let log = edge.log();
    assert!(
        log.contains("MQTT bus: the embedded broker, authenticated: 1 user(s) from the password file, limited by the ACL file, anonymous clients refused"),
        "edgecore says which mode its bus runs in: {log}"
    );
    let device = mqtt_client(mqtt_port, Some(("hygro-1", "hygro-secret"))).await;
    device
        .publish(
            "$hw/events/device/hygro-1/twin/update",
            QoS::AtLeastOnce,
            false,
            r#"{"event_id":"offline-1","twin":{"humidity":{"actual":{"value":"64"}}}}"#,
        )
        .await
        .expect("publish");
    // Both wait at the edge: the device's report, and the mapper's readings made offline.
    let waiting = |device: &str| {
        reports_waiting(&edge_root, wedge_core::protocol::ResourceKind::DeviceStatus)
            .into_iter()
            .any(|(name, _)| name == device)
    };
    eventually(
        Duration::from_secs(30),
        || waiting("hygro-1") && waiting("thermo-1"),
        || {
            format!(
                "the offline reports are not waiting at the edge: {:?}\nedgecore: {}",
                reports_waiting(&edge_root, wedge_core::protocol::ResourceKind::DeviceStatus),
                edge.log()
            )
        },
    )
    .await;
    let during = sim.temperature();
    cloud.restart();

    // After reconnecting, the reports made meanwhile reach the Device's status.
    eventually(
        Duration::from_secs(60),
        || reported(&cloud, "hygro-1", "humidity") == "64",
        || {
            format!(
                "hygro-1's offline report did not arrive\nedgecore: {}",
                edge.log()
            )
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        || {
            let now = reported(&cloud, "thermo-1", "temperature");
            now != before && now.parse::<f64>().is_ok()
        },
        || format!("thermo-1's status did not move on from {before} (device at {during})"),
    )
    .await;
    // The handler switches the fan off again once the room cooled: the fan follows what the
    // edge wants, and the status shows both sides agreeing with the coil.
    eventually(
        Duration::from_secs(30),
        || {
            let out = cloud.kubectl_ok(&["get", "device", "fan-1", "-o", "json"]);
            let status: Value = serde_json::from_str(&out).unwrap_or_default();
            let twin = &status["status"]["twins"][0];
            twin["observedDesired"]["value"].is_string()
                && twin["observedDesired"]["value"] == twin["reported"]["value"]
                && twin["reported"]["value"] == if sim.fan() { "true" } else { "false" }
        },
        || cloud.kubectl_ok(&["get", "device", "fan-1", "-o", "jsonpath={.status}"]),
    )
    .await;
    stop_sim.cancel();
}
