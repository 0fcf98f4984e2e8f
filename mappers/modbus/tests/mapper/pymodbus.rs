//! The mapper against a Modbus server nobody here wrote: pymodbus, started from
//! `scripts/pymodbus-server.py`. Checks that reads decode what a third-party server holds and that
//! desired writes land where another client (tokio-modbus, directly) finds them.
//!
//! Needs `python3` with pymodbus 3.x (`python3 -m pip install 'pymodbus>=3.6,<4'`; `scripts/test`
//! installs it). Without it the test fails, saying so, rather than skipping.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Running, WAIT, modbus_device, near};
use serde_json::json;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use wedge_core::twin::{DeviceState, TwinValue};
use wedge_mapper_modbus::ModbusDevice;

const MS: i64 = 1_000_000;

/// The python server; killed on drop, its stderr kept for failure messages.
struct PyServer {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
}

impl PyServer {
    fn start() -> Self {
        let import = Command::new("python3")
            .args(["-c", "import pymodbus"])
            .output();
        match import {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "this test needs pymodbus 3.x: run `python3 -m pip install 'pymodbus>=3.6,<4'` (scripts/test does): {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => panic!("this test needs python3 with pymodbus 3.x: {err}"),
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pymodbus-server.py");
        let log = std::env::temp_dir().join(format!(
            "wedge-pymodbus-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new("python3")
            .arg(&script)
            .arg(addr.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start python3");
        let mut server = Self { child, log, addr };
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("pymodbus server exited with {status}: {}", server.stderr());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pymodbus server did not listen on {addr} within {WAIT:?}: {}",
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn plant(addr: SocketAddr) -> ModbusDevice {
    let model = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "plant"},
        "spec": {"protocol": "modbus", "properties": [
            {"name": "setpoint", "type": "FLOAT", "accessMode": "ReadWrite", "unit": "celsius"},
            {"name": "gain", "type": "FLOAT", "accessMode": "ReadWrite"},
            {"name": "level", "type": "INT", "accessMode": "ReadWrite"},
            {"name": "pump", "type": "BOOLEAN", "accessMode": "ReadWrite"},
            {"name": "pressure", "type": "INT", "accessMode": "ReadOnly"},
            {"name": "swapped", "type": "INT", "accessMode": "ReadOnly"},
            {"name": "alarm", "type": "BOOLEAN", "accessMode": "ReadOnly"}
        ]}
    });
    let visitor =
        |config: serde_json::Value| json!({"protocolName": "modbus", "configData": config});
    let prop = |name: &str, config: serde_json::Value| json!({"name": name, "collectCycle": 100 * MS, "reportCycle": 200 * MS, "visitors": visitor(config)});
    let device = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "plant-1"},
        "spec": {"deviceModelRef": {"name": "plant"}, "nodeName": "edge-a",
            "protocol": {"protocolName": "modbus",
                "configData": {"ip": "127.0.0.1", "port": addr.port().to_string(), "slaveID": 1}},
            "properties": [
                prop("setpoint", json!({"register": "HoldingRegister", "offset": 0, "limit": 1, "scale": 0.1})),
                prop("gain", json!({"register": "HoldingRegister", "offset": 2, "limit": 2})),
                prop("level", json!({"register": "HoldingRegister", "offset": 4})),
                prop("pump", json!({"register": "CoilRegister", "offset": 0})),
                prop("pressure", json!({"register": "InputRegister", "offset": 0})),
                prop("swapped", json!({"register": "InputRegister", "offset": 1, "isSwap": true})),
                prop("alarm", json!({"register": "DiscreteInputRegister", "offset": 1}))
            ]}
    });
    modbus_device(device, model)
}

async fn client(addr: SocketAddr) -> Context {
    tokio_modbus::client::tcp::connect(addr)
        .await
        .expect("connect to pymodbus")
}

async fn holding(ctx: &mut Context, addr: u16, n: u16) -> Vec<u16> {
    ctx.read_holding_registers(addr, n)
        .await
        .expect("transport")
        .expect("no exception")
}

#[tokio::test]
async fn reads_and_writes_a_pymodbus_server() {
    let server = PyServer::start();
    let mapper = Running::start(plant(server.addr));
    let rec = mapper.recorder.clone();

    rec.wait("online", |s| {
        s.states.contains(&DeviceState::Online).then_some(())
    })
    .await;
    rec.wait("all seven properties reported", |s| {
        (s.latest.len() == 7).then_some(())
    })
    .await;
    assert!(
        near(rec.latest("setpoint").as_ref(), 21.5),
        "{:?}",
        rec.latest("setpoint")
    );
    assert_eq!(rec.latest("gain"), Some(TwinValue::Float(12.5)));
    assert_eq!(rec.latest("level"), Some(TwinValue::Integer(-7)));
    assert_eq!(rec.latest("pump"), Some(TwinValue::Boolean(true)));
    assert_eq!(rec.latest("pressure"), Some(TwinValue::Integer(42)));
    assert_eq!(rec.latest("swapped"), Some(TwinValue::Integer(1)));
    assert_eq!(rec.latest("alarm"), Some(TwinValue::Boolean(true)));

    // Desired writes: each lands on the server and comes back in a report.
    let sent = Instant::now();
    mapper.set("setpoint", TwinValue::Float(23.4)).await;
    mapper.set("gain", TwinValue::Float(-3.25)).await;
    mapper.set("level", TwinValue::Integer(-300)).await;
    mapper.set("pump", TwinValue::Boolean(false)).await;
    // Refused: read-only on an input register, and a value the codec cannot encode.
    mapper.set("pressure", TwinValue::Integer(7)).await;
    mapper.set("level", TwinValue::Text("high".into())).await;
    rec.wait("the written values reported", |s| {
        let ok = near(s.latest.get("setpoint"), 23.4)
            && s.latest.get("gain") == Some(&TwinValue::Float(-3.25))
            && s.latest.get("level") == Some(&TwinValue::Integer(-300))
            && s.latest.get("pump") == Some(&TwinValue::Boolean(false));
        ok.then_some(())
    })
    .await;
    println!("four desired writes reported back in {:?}", sent.elapsed());

    let mut ctx = client(server.addr).await;
    assert_eq!(holding(&mut ctx, 0, 1).await, vec![234]);
    assert_eq!(holding(&mut ctx, 2, 2).await, {
        let b = (-3.25f32).to_bits();
        vec![(b >> 16) as u16, b as u16]
    });
    assert_eq!(holding(&mut ctx, 4, 1).await, vec![(-300i16) as u16]);
    let coils = ctx
        .read_coils(0, 1)
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(coils, vec![false]);
    let inputs = ctx
        .read_input_registers(0, 1)
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(inputs, vec![42], "the refused write changed nothing");

    // The mapper keeps running after the refusals: its next report still holds the input, and a
    // change made by another client shows up.
    use tokio_modbus::client::Writer;
    ctx.write_single_register(4, 99)
        .await
        .expect("transport")
        .expect("no exception");
    rec.wait("another client's write reported", |s| {
        (s.latest.get("level") == Some(&TwinValue::Integer(99))
            && s.latest.get("pressure") == Some(&TwinValue::Integer(42)))
        .then_some(())
    })
    .await;
    assert_eq!(rec.state(), Some(DeviceState::Online));
    mapper.stop().await;
    drop(server);
}
