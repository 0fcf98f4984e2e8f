//! The mapper against the crate's own simulator: reads, desired writes, read-back reports, the
//! simulated physics, and reconnecting when the device goes away and comes back.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{Running, eventually, modbus_device};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wedge_core::twin::{DeviceState, TwinValue};
use wedge_mapper_modbus::{ModbusDevice, SimConfig, Simulator};

const MS: i64 = 1_000_000;

fn thermometer(addr: SocketAddr) -> ModbusDevice {
    let model = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "thermometer"},
        "spec": {"protocol": "modbus", "properties": [
            {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly", "unit": "celsius"},
            {"name": "fan", "type": "BOOLEAN", "accessMode": "ReadWrite"},
            {"name": "fan-register", "type": "INT", "accessMode": "ReadOnly"}
        ]}
    });
    let device = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "thermo-1"},
        "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": "edge-a",
            "protocol": {"protocolName": "modbus",
                "configData": {"ip": addr.ip().to_string(), "port": addr.port(), "slaveID": 1}},
            "properties": [
                {"name": "temperature", "collectCycle": 50 * MS, "reportCycle": 100 * MS,
                 "visitors": {"protocolName": "modbus", "configData":
                    {"register": "InputRegister", "offset": 0, "limit": 1, "scale": 0.1}}},
                {"name": "fan", "collectCycle": 50 * MS, "reportCycle": 100 * MS,
                 "visitors": {"protocolName": "modbus", "configData":
                    {"register": "CoilRegister", "offset": 0}}},
                {"name": "fan-register", "collectCycle": 50 * MS, "reportCycle": 100 * MS,
                 "visitors": {"protocolName": "modbus", "configData":
                    {"register": "HoldingRegister", "offset": 1}}}
            ]}
    });
    modbus_device(device, model)
}

fn config() -> SimConfig {
    SimConfig {
        tick: Duration::from_millis(20),
        rise_per_tick: 0.1,
        fall_per_tick: 0.5,
        start: 30.0,
        ambient_min: 15.0,
    }
}

fn temperature(v: Option<TwinValue>) -> f64 {
    match v {
        Some(TwinValue::Float(f)) => f,
        other => panic!("temperature is not a float: {other:?}"),
    }
}

#[tokio::test]
async fn desired_fan_turns_the_coil_and_the_room_cools() {
    let sim = Simulator::bind("127.0.0.1:0".parse().expect("addr"), config())
        .await
        .expect("bind");
    let sim_cancel = CancellationToken::new();
    let sim_task = sim.spawn(sim_cancel.clone());
    let mapper = Running::start(thermometer(sim.local_addr()));
    let rec = mapper.recorder.clone();

    rec.wait("online", |s| {
        s.states.contains(&DeviceState::Online).then_some(())
    })
    .await;
    rec.wait("temperature and fan reported", |s| {
        (s.latest.contains_key("temperature")
            && s.latest.get("fan") == Some(&TwinValue::Boolean(false)))
        .then_some(())
    })
    .await;
    let t = temperature(rec.latest("temperature"));
    assert!(
        (29.9..=40.0).contains(&t),
        "temperature {t} read from the simulator"
    );
    assert!(!sim.fan());

    // A write to a read-only property is skipped; the mapper keeps going.
    mapper.set("temperature", TwinValue::Float(0.0)).await;
    mapper.set("fan-register", TwinValue::Integer(1)).await;

    let writes = sim.writes();
    let sent = Instant::now();
    mapper.set("fan", TwinValue::Boolean(true)).await;
    let reported = rec
        .wait("fan reported on", |s| {
            (s.latest.get("fan") == Some(&TwinValue::Boolean(true))).then(|| s.at["fan"])
        })
        .await;
    let latency = reported - sent;
    println!("desired fan=true → coil written → reported in {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "the read-back report is immediate, took {latency:?}"
    );
    assert!(sim.fan(), "the coil is on");
    assert_eq!(
        sim.writes(),
        writes + 1,
        "exactly the fan write reached the device"
    );
    rec.wait("holding register 1 follows the coil", |s| {
        (s.latest.get("fan-register") == Some(&TwinValue::Integer(1))).then_some(())
    })
    .await;

    // The fan cools the room, and the reported temperature follows.
    let hot = sim.temperature();
    eventually("the simulator cools by 2 °C", || async {
        sim.temperature() < hot - 2.0
    })
    .await;
    rec.wait("reported temperature falls", |s| {
        match s.latest.get("temperature") {
            Some(TwinValue::Float(f)) if *f < hot - 2.0 => Some(()),
            _ => None,
        }
    })
    .await;

    mapper.set("fan", TwinValue::Boolean(false)).await;
    eventually("fan off", || async { !sim.fan() }).await;
    let cool = sim.temperature();
    eventually("the room warms again", || async {
        sim.temperature() > cool + 0.5
    })
    .await;

    mapper.stop().await;
    sim_cancel.cancel();
    sim_task.await.expect("sim task").expect("sim ran");
}

#[tokio::test]
async fn offline_while_the_device_is_gone_online_when_it_returns() {
    // A port with nothing behind it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mapper = Running::start(thermometer(addr));
    let rec = mapper.recorder.clone();
    rec.wait("offline", |s| {
        (s.states.last() == Some(&DeviceState::Offline)).then_some(())
    })
    .await;
    assert_eq!(rec.report_count(), 0);
    // Desired values sent while offline are written after connecting.
    mapper.set("fan", TwinValue::Boolean(true)).await;

    let sim = Simulator::bind(addr, config())
        .await
        .expect("bind the same port");
    let cancel = CancellationToken::new();
    let task = sim.spawn(cancel.clone());
    rec.wait("online", |s| {
        (s.states.last() == Some(&DeviceState::Online)).then_some(())
    })
    .await;
    eventually("the queued fan write lands", || async { sim.fan() }).await;
    rec.wait("temperature reported", |s| {
        s.latest.get("temperature").cloned()
    })
    .await;

    // The device goes away: offline again, and the mapper keeps trying.
    cancel.cancel();
    task.await.expect("sim task").expect("sim ran");
    drop(sim);
    rec.wait("offline after the device went away", |s| {
        (s.states.last() == Some(&DeviceState::Offline)).then_some(())
    })
    .await;
    assert_eq!(rec.state(), Some(DeviceState::Offline));
    mapper.stop().await;
}
