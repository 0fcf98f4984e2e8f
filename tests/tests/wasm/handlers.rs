//! Handlers and host functions: the fan handler reacting to twin changes, messages and timers,
//! and apps reaching only the devices and topics their pod grants.

use std::time::{Duration, Instant};

use serde_json::json;
use wedge_core::backend::TwinBackend;
use wedge_core::twin::{
    AccessMode, DeviceState, DeviceTwin, PropertyModel, PropertyType, TwinValue,
};
use wedge_edged_wasm::host::in_process::InProcessTwin;

use crate::wasm::harness::{TestRuntime, pod, running, terminated};

fn property(name: &str, kind: PropertyType, access: AccessMode) -> PropertyModel {
    PropertyModel {
        name: name.into(),
        kind,
        access_mode: access,
        unit: None,
        minimum: None,
        maximum: None,
    }
}

fn add_devices(twin: &InProcessTwin, temperature: PropertyType) {
    twin.add_device(DeviceTwin {
        name: "thermo-1".into(),
        model: "thermometer".into(),
        state: DeviceState::Online,
        properties: vec![property("temperature", temperature, AccessMode::ReadOnly)],
    });
    twin.add_device(DeviceTwin {
        name: "fan-1".into(),
        model: "fan".into(),
        state: DeviceState::Online,
        properties: vec![property(
            "power",
            PropertyType::Boolean,
            AccessMode::ReadWrite,
        )],
    });
}

async fn fan_desired(twin: &InProcessTwin) -> Option<TwinValue> {
    twin.property("fan-1", "power")
        .await
        .expect("fan")
        .desired
        .map(|d| d.value)
}

async fn wait_fan(twin: &InProcessTwin, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fan_desired(twin).await != Some(TwinValue::Boolean(want)) {
        assert!(
            Instant::now() < deadline,
            "the fan's desired power never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fan_pod(
    uid: &str,
    image: &str,
    annotations: serde_json::Value,
) -> k8s_openapi::api::core::v1::Pod {
    pod(
        uid,
        image,
        json!({"env": [{"name": "THRESHOLD", "value": "30"}]}),
        json!({"annotations": annotations, "restartPolicy": "Always"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_handler_drives_the_fan_from_temperature_changes() {
    let t = TestRuntime::new(&[]);
    add_devices(&t.twin, PropertyType::String);
    let image = t.local_image("fan_handler").await;
    let uid = t
        .start(fan_pod(
            "fan",
            &image,
            json!({
                "devices.wedge.io/read": "thermo-1",
                "devices.wedge.io/write": "fan-1",
                "handlers.wedge.io/twin": "thermo-1/temperature",
            }),
        ))
        .await;
    t.wait_for(&uid, "the handler to run", running).await;

    // A value the handler cannot read is a failed invocation, not a dead handler.
    t.twin
        .report("thermo-1", "temperature", TwinValue::Text("hot".into()))
        .expect("report");
    t.wait_for_log(&uid, "main", "is not a number").await;
    t.twin
        .report("thermo-1", "temperature", TwinValue::Text("35.5".into()))
        .expect("report");
    wait_fan(&t.twin, true).await;
    t.twin
        .report("thermo-1", "temperature", TwinValue::Text("20".into()))
        .expect("report");
    wait_fan(&t.twin, false).await;
    let log = t.wait_for_log(&uid, "main", "power=false").await;
    assert!(log.contains("temperature=35.5 → fan-1/power=true"), "{log}");
    let stats = t.container_stats(&uid, "main").await.expect("stats");
    assert_eq!((stats.invocations, stats.failures), (3, 1), "{stats:?}");
    assert!(running(&t.pod_status(&uid).expect("status")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_may_not_drive_devices_they_were_not_granted() {
    let t = TestRuntime::new(&[]);
    add_devices(&t.twin, PropertyType::Float);
    let image = t.local_image("fan_handler").await;
    let uid = t
        .start(fan_pod(
            "readonly-fan",
            &image,
            json!({
                "devices.wedge.io/read": "thermo-1, fan-1",
                "handlers.wedge.io/twin": "thermo-1/*",
            }),
        ))
        .await;
    t.wait_for(&uid, "the handler to run", running).await;
    t.twin
        .report("thermo-1", "temperature", TwinValue::Float(40.0))
        .expect("report");
    let log = t.wait_for_log(&uid, "main", "handler failed").await;
    assert!(
        log.contains("NotPermitted") && log.contains("devices.wedge.io/write"),
        "{log}"
    );
    assert_eq!(fan_desired(&t.twin).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_timers_call_handlers() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("fan_handler").await;
    let uid = t
        .start(fan_pod(
            "events",
            &image,
            json!({
                "messaging.wedge.io/subscribe": "commands/#",
                "handlers.wedge.io/topics": "commands/fan",
                "handlers.wedge.io/timer": "100ms",
            }),
        ))
        .await;
    t.wait_for(&uid, "the handler to run", running).await;
    t.wait_for_log(&uid, "main", "fan-handler: timer at").await;
    // Retry the injection until the handler's subscription is in place.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.bus.inject("commands/fan", b"on") == 0 {
        assert!(Instant::now() < deadline, "the handler never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        t.bus.inject("commands/other", b"x"),
        0,
        "only the trigger's filter is delivered"
    );
    t.wait_for_log(
        &uid,
        "main",
        "fan-handler: message on commands/fan (2 bytes)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_reach_only_the_devices_and_topics_their_pod_grants() {
    let t = TestRuntime::new(&[]);
    add_devices(&t.twin, PropertyType::Float);
    t.twin
        .report("thermo-1", "temperature", TwinValue::Float(21.5))
        .expect("report");
    let image = t.local_image("telemetry").await;
    let env = |max_ticks: &str| {
        json!([
            {"name": "DEVICE", "value": "thermo-1"}, {"name": "PROPERTY", "value": "temperature"},
            {"name": "TOPIC", "value": "telemetry/thermo-1"}, {"name": "INTERVAL_MS", "value": "20"},
            {"name": "COMMANDS", "value": "commands/telemetry"}, {"name": "MAX_TICKS", "value": max_ticks},
        ])
    };
    let granted = t
        .start(pod(
            "granted",
            &image,
            json!({"env": env("0")}),
            json!({"annotations": {
                "devices.wedge.io/read": "thermo-1",
                "messaging.wedge.io/publish": "telemetry/#",
                "messaging.wedge.io/subscribe": "commands/#",
            }}),
        ))
        .await;
    let log = t
        .wait_for_log(&granted, "main", "tick 3 reading 21.5")
        .await;
    assert!(
        log.contains("devices: [thermo-1 (thermometer, DeviceState::Online, writable: false)]"),
        "{log}"
    );
    let published = t.bus.published();
    assert!(published.len() >= 3, "{published:?}");
    assert!(published.iter().all(|m| m.topic == "telemetry/thermo-1"));
    assert_eq!(
        String::from_utf8_lossy(&published[0].payload),
        r#"{"tick":1,"value":21.5}"#
    );
    // The app's own subscription receives what the bus delivers on its filter.
    assert_eq!(t.bus.inject("commands/telemetry", b"recalibrate"), 1);
    t.wait_for_log(
        &granted,
        "main",
        "command on commands/telemetry: recalibrate",
    )
    .await;

    let denied = t
        .start(pod(
            "denied",
            &image,
            json!({"env": env("3")}),
            json!({"annotations": {
                "devices.wedge.io/read": "fan-1",
                "messaging.wedge.io/publish": "other/#",
            }}),
        ))
        .await;
    t.wait_for(&denied, "three ticks", terminated).await;
    let log = t.logs(&denied, "main").await;
    for refusal in [
        "devices: [fan-1 (fan, DeviceState::Online, writable: false)]",
        "reading thermo-1/temperature failed: Error::NotPermitted",
        "subscribing to commands/telemetry failed: Error::NotPermitted",
    ] {
        assert!(log.contains(refusal), "{refusal:?} not in {log}");
    }
    assert!(
        t.bus
            .published()
            .iter()
            .all(|m| m.received_ms > 0 && m.topic == "telemetry/thermo-1"),
        "the denied pod published nothing of its own"
    );
    assert_eq!(
        t.bus.inject("commands/telemetry", b"x"),
        1,
        "only the granted pod listens"
    );
}
