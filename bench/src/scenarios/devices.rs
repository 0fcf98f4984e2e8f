//! Devices, measured through the real parts.
//!
//! Through the release `cloudcore` and `edgecore` (embedded MQTT broker, built-in Modbus mapper)
//! and the Modbus simulator in this process:
//! - **report → status**: a device speaking KubeEdge's MQTT topics reports a new value; timed
//!   from the publish to the watch event showing it in the Device's status in the API (EventBus,
//!   DeviceTwin's SQLite, the outbox, CloudHub, DeviceController's status patch, the watch).
//!   Side by side: the sensor logged in and held to its device by an ACL (the default bus), and
//!   anonymous on a second edge that allows it with no ACL: what the bus's security costs.
//! - **desired → register**: a Device's `spec.properties[].desired.value` is patched through the
//!   API; timed from the patch request until the simulator's coil holds the value (the hub, the
//!   edge's store, DeviceTwin, the mapper's Modbus write). Polled every millisecond (tokio's timer
//!   resolution), so the figures are good to about 1 ms.
//!
//! - **upload → HTTP service**: a Rule (eventbus → rest) routes a topic on the edge's bus to an
//!   HTTP service in this process; timed from the publish to the service receiving the POST
//!   (EventBus, the outbox, CloudHub, the router, one POST), one message at a time; and the
//!   messages per second a burst of them arrives at.
//!
//! In this process, over the edge's real DeviceTwin (SQLite) and the Wasm runtime:
//! - **handler invocations per second**: reported temperatures drive the sample fan-handler (each
//!   call a fresh instance that reads the fan's twin), counted from the first report to the last
//!   invocation: with the device's reports queued up to 64 ahead of their commits (as a burst
//!   from a mapper or over MQTT comes), and with each awaited before the next. Alone, without
//!   the processes: the `devices-handlers` scenario.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, ResourceKind};
use wedge_core::twin::TwinValue;
use wedge_edge::devicetwin::DeviceTwin;
use wedge_edge::metamanager::MetaManager;
use wedge_edge::store::Database;
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::{RuntimeConfig, WasmRuntime};
use wedge_mapper_modbus::{SimConfig, Simulator};

use super::processes::{CloudAndEdge, free_port, wait_listening};
use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "devices";
const NODE: &str = "bench-edge";
const REPORTS: usize = 200;
const WRITES: usize = 100;
const HANDLER_EVENTS: usize = 20_000;
/// A device's reports queued and not yet stored, at most, in the pipelined handler run.
const REPORTS_IN_FLIGHT: usize = 64;
const UPLOADS: usize = 200;
const UPLOAD_BURST: usize = 2_000;

pub(super) fn thermometer() -> Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "thermometer", "namespace": "default", "uid": "m1"},
        "spec": {"properties": [{"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"}]}})
}

fn fan_model() -> Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "fan", "namespace": "default", "uid": "m2"},
        "spec": {"properties": [{"name": "power", "type": "BOOLEAN", "accessMode": "ReadWrite"}]}})
}

fn fan_properties(on: bool) -> Value {
    json!([{"name": "power", "desired": {"value": on.to_string()},
        "collectCycle": 1_000_000_000u64, "reportCycle": 1_000_000_000u64,
        "visitors": {"protocolName": "modbus", "configData": {"register": "CoilRegister", "offset": 0, "limit": 1}}}])
}

fn fan_device(sim: std::net::SocketAddr) -> Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "fan-1", "namespace": "default"},
        "spec": {"deviceModelRef": {"name": "fan"}, "nodeName": NODE,
            "protocol": {"protocolName": "modbus", "configData": {"ip": sim.ip().to_string(), "port": sim.port(), "slaveID": 1}},
            "properties": fan_properties(false)}})
}

pub(super) fn sensor_device() -> Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "sensor-1", "namespace": "default"},
        "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": NODE,
            "protocol": {"protocolName": "mqtt"}}})
}

/// Watches Devices; sends (name, first twin's reported value, when seen).
fn reported_values(api: Api<DynamicObject>) -> mpsc::UnboundedReceiver<(String, String, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(device)) = events.next().await {
            let value = device.data["status"]["twins"][0]["reported"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = device.metadata.name.unwrap_or_default();
            if tx.send((name, value, Instant::now())).is_err() {
                return;
            }
        }
    });
    rx
}

async fn seen(
    rx: &mut mpsc::UnboundedReceiver<(String, String, Instant)>,
    name: &str,
    value: &str,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (n, v, at) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{name}={value} never reached the API"))?
            .ok_or_else(|| anyhow::anyhow!("the Device watch ended"))?;
        if n == name && v == value {
            return Ok(at);
        }
    }
}

/// The bench sensor's login, `bench-sensor`, and an ACL that lets it report only its device
/// (mosquitto's formats): the password file's and the ACL file's paths.
fn bus_users(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let passwd = dir.join("mqtt-passwd");
    let acl = dir.join("mqtt-acl");
    std::fs::write(
        &passwd,
        format!(
            "bench-sensor:{}\n",
            wedge_edge::eventbus::passwords::hash("bench-secret")
        ),
    )?;
    std::fs::write(
        &acl,
        "user bench-sensor\ntopic write $hw/events/device/sensor-1/twin/update\ntopic write default/bench/up\n",
    )?;
    Ok((passwd.display().to_string(), acl.display().to_string()))
}

/// A sensor speaking KubeEdge's topics reports [`REPORTS`] values one at a time; the time from
/// each publish to the watch event showing it. Returns the client, kept for more.
async fn sensor_reports(
    mqtt_port: u16,
    login: Option<(&str, &str)>,
    watch: &mut mpsc::UnboundedReceiver<(String, String, Instant)>,
    stop: CancellationToken,
) -> anyhow::Result<(AsyncClient, Vec<Duration>)> {
    let mut options = MqttOptions::new("bench-sensor", "127.0.0.1", mqtt_port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (mqtt, mut eventloop) = AsyncClient::new(options, 64);
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let report = |value: String| {
        let mqtt = mqtt.clone();
        async move {
            let payload =
                json!({"event_id": value, "twin": {"temperature": {"actual": {"value": value}}}});
            mqtt.publish(
                "$hw/events/device/sensor-1/twin/update",
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
        }
    };
    // Warm-up: the edge has joined and holds the device once a report arrives.
    let warm = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        report("0.5".into()).await?;
        if tokio::time::timeout(Duration::from_secs(1), seen(watch, "sensor-1", "0.5"))
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < warm,
            "the sensor's reports never reached the API"
        );
    }
    let mut samples = Vec::with_capacity(REPORTS);
    for i in 1..=REPORTS {
        // Unique values, written as DeviceTwin formats them back.
        let value = format!("{i}.5");
        let sent = Instant::now();
        report(value.clone()).await?;
        let at = seen(watch, "sensor-1", &value).await?;
        samples.push(at.duration_since(sent));
    }
    Ok((mqtt, samples))
}

/// [`sensor_reports`] from an anonymous sensor, on a cloud and edge of their own whose bus lets
/// anonymous clients in (`--mqtt-allow-anonymous`, no password or ACL file).
async fn anonymous_reports(stop: CancellationToken) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let mqtt_port = free_port()?;
    let mqtt_listen = format!("127.0.0.1:{mqtt_port}");
    let CloudAndEdge {
        cloud: _cloud,
        edge: _edge,
        client,
    } = CloudAndEdge::start(
        dir.path(),
        NODE,
        &[],
        &["--mqtt-listen", &mqtt_listen, "--mqtt-allow-anonymous"],
    )
    .await?;
    wait_listening(&mqtt_listen, Duration::from_secs(60)).await?;
    let models: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &wedge_cloudcore::devicecontroller::device_model_resource(),
    );
    let devices: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &wedge_cloudcore::devicecontroller::device_resource(),
    );
    models
        .create(
            &PostParams::default(),
            &serde_json::from_value(thermometer())?,
        )
        .await?;
    devices
        .create(
            &PostParams::default(),
            &serde_json::from_value(sensor_device())?,
        )
        .await?;
    let mut watch = reported_values(devices);
    let (_mqtt, samples) = sensor_reports(mqtt_port, None, &mut watch, stop).await?;
    Ok(samples)
}

/// Latencies through the processes.
async fn through_processes() -> anyhow::Result<()> {
    let sim = Simulator::bind(([127, 0, 0, 1], 0).into(), SimConfig::default()).await?;
    let stop = CancellationToken::new();
    let _sim_task = sim.spawn(stop.clone());
    let dir = tempfile::tempdir()?;
    let mqtt_port = free_port()?;
    let mqtt_listen = format!("127.0.0.1:{mqtt_port}");
    let (passwd, acl) = bus_users(dir.path())?;
    let CloudAndEdge {
        cloud: _cloud,
        edge: _edge,
        client,
    } = CloudAndEdge::start(
        dir.path(),
        NODE,
        &[],
        &[
            "--mqtt-listen",
            &mqtt_listen,
            "--mqtt-password-file",
            &passwd,
            "--mqtt-acl-file",
            &acl,
        ],
    )
    .await?;
    wait_listening(&mqtt_listen, Duration::from_secs(60)).await?;

    let models: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &wedge_cloudcore::devicecontroller::device_model_resource(),
    );
    let devices: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &wedge_cloudcore::devicecontroller::device_resource(),
    );
    for model in [thermometer(), fan_model()] {
        models
            .create(&PostParams::default(), &serde_json::from_value(model)?)
            .await?;
    }
    for device in [fan_device(sim.local_addr()), sensor_device()] {
        devices
            .create(&PostParams::default(), &serde_json::from_value(device)?)
            .await?;
    }
    let mut watch = reported_values(devices.clone());
    let login = ("bench-sensor", "bench-secret");
    let (mqtt, mut samples) =
        sensor_reports(mqtt_port, Some(login), &mut watch, stop.clone()).await?;
    // The same reports from an anonymous device, on an edge whose bus lets anonymous clients
    // in with no ACL: what the login and the ACL cost.
    let mut anonymous = anonymous_reports(stop.clone()).await?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figure(
            SCENARIO,
            &format!("device report to Device status {name}, login + ACL"),
            millis(quantile(&mut samples, q)),
            "ms",
        );
        figure(
            SCENARIO,
            &format!("device report to Device status {name}, anonymous, no ACL"),
            millis(quantile(&mut anonymous, q)),
            "ms",
        );
    }

    // Warm-up: the fan's mapper is connected once the coil follows a first change.
    let mut samples = Vec::with_capacity(WRITES);
    for i in 0..=WRITES {
        let on = i % 2 == 0;
        let sent = Instant::now();
        devices
            .patch(
                "fan-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"properties": fan_properties(on)}})),
            )
            .await?;
        let limit = if i == 0 { 60 } else { 10 };
        while sim.fan() != on {
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(limit),
                "the coil did not follow the desired value"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i > 0 {
            samples.push(sent.elapsed());
        }
    }
    figure(
        SCENARIO,
        "desired value in the API to register written p50",
        millis(quantile(&mut samples, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "desired value in the API to register written p99",
        millis(quantile(&mut samples, 0.99)),
        "ms",
    );
    uploads(&client, &mqtt).await
}

/// Waits until the sink holds `count` requests.
async fn received(
    sink: &wedge_testkit::http_sink::HttpSink,
    count: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while sink.count() < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} uploads arrived",
            sink.count()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Uploads: a Rule routes `bench/up` on the edge's bus to an HTTP service here.
async fn uploads(client: &kube::Client, mqtt: &AsyncClient) -> anyhow::Result<()> {
    let sink = wedge_testkit::http_sink::HttpSink::start().await?;
    let endpoints: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &wedge_cloudcore::router::crds::rule_endpoint_resource(),
    );
    let rules: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &wedge_cloudcore::router::crds::rule_resource(),
    );
    for (name, kind) in [("bench-bus", "eventbus"), ("bench-rest", "rest")] {
        let endpoint = json!({"apiVersion": "rules.kubeedge.io/v1", "kind": "RuleEndpoint",
            "metadata": {"name": name}, "spec": {"ruleEndpointType": kind}});
        endpoints
            .create(&PostParams::default(), &serde_json::from_value(endpoint)?)
            .await?;
    }
    let rule = json!({"apiVersion": "rules.kubeedge.io/v1", "kind": "Rule",
        "metadata": {"name": "bench-up"},
        "spec": {"source": "bench-bus", "sourceResource": {"topic": "bench/up", "node_name": NODE},
                 "target": "bench-rest", "targetResource": {"resource": sink.url("/up")}}});
    rules
        .create(&PostParams::default(), &serde_json::from_value(rule)?)
        .await?;
    let publish = |i: usize| {
        mqtt.publish(
            "default/bench/up",
            QoS::AtLeastOnce,
            false,
            json!({"n": i}).to_string(),
        )
    };
    // Warm-up: the rule has reached the edge once a message arrives.
    let warm = Instant::now() + Duration::from_secs(60);
    while sink.count() == 0 {
        anyhow::ensure!(Instant::now() < warm, "no upload ever arrived");
        publish(0).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(UPLOADS);
    for i in 1..=UPLOADS {
        let before = sink.count();
        let sent = Instant::now();
        publish(i).await?;
        received(&sink, before + 1, Duration::from_secs(30)).await?;
        samples.push(sent.elapsed());
    }
    figure(
        SCENARIO,
        "upload published at the edge to HTTP service p50",
        millis(quantile(&mut samples, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "upload published at the edge to HTTP service p99",
        millis(quantile(&mut samples, 0.99)),
        "ms",
    );
    let before = sink.count();
    let started = Instant::now();
    for i in 0..UPLOAD_BURST {
        publish(i).await?;
    }
    received(&sink, before + UPLOAD_BURST, Duration::from_secs(120)).await?;
    figure(
        SCENARIO,
        "uploads delivered per second, one rule, a burst of 2000",
        UPLOAD_BURST as f64 / started.elapsed().as_secs_f64(),
        "msg/s",
    );
    Ok(())
}

/// Handler throughput over the real DeviceTwin.
async fn handler_throughput() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Database::open(&dir.path().join("edge.db"))?;
    let meta = MetaManager::load(&db)?;
    let key = |kind, name: &str| ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    };
    let mut fan = fan_device(([127, 0, 0, 1], 9).into());
    fan["metadata"]["uid"] = "d1".into();
    let mut sensor = sensor_device();
    sensor["metadata"]["uid"] = "d2".into();
    meta.apply(
        &key(ResourceKind::DeviceModel, "thermometer"),
        "m1",
        "1",
        &thermometer(),
    )
    .await?;
    meta.apply(
        &key(ResourceKind::DeviceModel, "fan"),
        "m2",
        "1",
        &fan_model(),
    )
    .await?;
    meta.apply(&key(ResourceKind::Device, "fan-1"), "d1", "1", &fan)
        .await?;
    meta.apply(&key(ResourceKind::Device, "sensor-1"), "d2", "1", &sensor)
        .await?;
    let twin = DeviceTwin::new(&db, &meta).await;
    // As in edgecore: DeviceTwin's task writes the statuses to the outbox.
    let stop = CancellationToken::new();
    let _twin_task = tokio::spawn(twin.clone().run(stop.clone()));

    let (in_process, _, _) = Backends::in_process();
    let backends = Backends {
        twin: Arc::new(twin.clone()),
        bus: in_process.bus,
    };
    let mut config = RuntimeConfig::new(dir.path().join("wasm"));
    config.engine.max_instances = 100;
    let rt = WasmRuntime::new(config, backends)?;
    let image = super::sample_image(&rt, "fan_handler").await?;
    let annotations = json!({"devices.wedge.io/read": "sensor-1, fan-1", "devices.wedge.io/write": "fan-1",
        "handlers.wedge.io/twin": "sensor-1/temperature"});
    let (pod, _) = super::pod("handler", &image, &[("THRESHOLD", "1000")], annotations)?;
    let workers = super::workers(&rt, dir.path());
    super::start(&workers, &pod)?;
    let invocations = || super::wasm_stats(&workers, &rt, "handler").map_or(0, |s| s.invocations);
    let deadline = Instant::now() + Duration::from_secs(60);
    while invocations() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the handler never ran");
        twin.report(
            "sensor-1",
            vec![("temperature".into(), TwinValue::Float(20.0))],
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A device whose reports come faster than a commit (a mapper's burst, an MQTT stream)
    // queues each behind the one before without waiting for its commit, so they share commits;
    // then, for comparison, the same reports each awaited before the next is made.
    for (figure_name, in_flight) in [
        (
            "handler invocations per second on twin changes (DeviceTwin in SQLite; a device's reports queued, up to 64 in flight)",
            REPORTS_IN_FLIGHT,
        ),
        (
            "handler invocations per second on twin changes (DeviceTwin in SQLite; each report awaited before the next)",
            1,
        ),
    ] {
        let base = invocations();
        let started = Instant::now();
        let mut queued = std::collections::VecDeque::with_capacity(in_flight);
        for i in 0..HANDLER_EVENTS {
            let stored = twin
                .queue_report(
                    "sensor-1",
                    vec![(
                        "temperature".into(),
                        TwinValue::Float(20.0 + (i % 100) as f64 / 10.0),
                    )],
                )
                .await?;
            queued.push_back(stored);
            if queued.len() >= in_flight
                && let Some(oldest) = queued.pop_front()
            {
                oldest.await?;
            }
            // Stay within the change channel's capacity (4096): a handler that falls further
            // behind skips changes, and skipped changes are not invocations.
            while (i as u64 + 1).saturating_sub(invocations() - base) > 2048 {
                tokio::task::yield_now().await;
            }
        }
        for stored in queued {
            stored.await?;
        }
        let want = base + HANDLER_EVENTS as u64;
        while invocations() < want {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "only {} of {HANDLER_EVENTS} invocations",
                invocations() - base
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = started.elapsed();
        figure(
            SCENARIO,
            figure_name,
            HANDLER_EVENTS as f64 / elapsed.as_secs_f64(),
            "1/s",
        );
    }
    stop.cancel();
    db.close().await;
    Ok(())
}

/// Only the handler invocations per second (the `devices-handlers` scenario): DeviceTwin's
/// write path without cloudcore and edgecore.
pub async fn run_handlers() -> anyhow::Result<()> {
    handler_throughput().await
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    handler_throughput().await?;
    through_processes().await
}
