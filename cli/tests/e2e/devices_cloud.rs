//! DeviceController through real processes: `cloudcore` (embedded API server, control plane,
//! CloudHub) installs KubeEdge's device CRDs, the real `kubectl` applies KubeEdge manifests
//! (`sample-apps/manifests/devices/`), and an edge's identity speaks the protocol by hand, so
//! what the cloud sends and accepts is seen frame by frame.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wedge_core::protocol::messages::Hello;
use wedge_core::protocol::{Envelope, Operation, ResourceKind, ResourceRef};

use super::support::*;

fn manifest(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-apps/manifests/devices")
        .join(name)
        .display()
        .to_string()
}

/// The next frame from the hub, acknowledging the objects it sends as an edge does.
async fn next_frame(ws: &mut RawSocket, next_id: &mut u64) -> Envelope {
    let frame = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let message = ws
                .next()
                .await
                .expect("the hub closed the connection")
                .expect("a frame");
            if let Message::Binary(bytes) = message {
                return Envelope::decode(&bytes).expect("the hub sends valid frames");
            }
        }
    })
    .await
    .expect("a frame within 20 s");
    if matches!(
        frame.operation,
        Operation::Insert | Operation::Update | Operation::Delete
    ) {
        *next_id += 1;
        let ack = Envelope::ack(*next_id, frame.id).encode();
        ws.send(Message::Binary(ack.into())).await.expect("ack");
    }
    frame
}

fn described(frame: &Envelope) -> String {
    let r = frame.resource.as_ref().expect("a resource");
    format!(
        "{:?} {}:{}/{}",
        frame.operation,
        r.kind,
        r.namespace.as_deref().unwrap_or(""),
        r.name
    )
}

fn device_status(id: u64, name: &str, uid: Option<String>, value: &str) -> Message {
    let frame = Envelope::new(id, Operation::Update)
        .with_resource(ResourceRef {
            kind: ResourceKind::DeviceStatus,
            namespace: Some("default".into()),
            name: name.into(),
            uid,
        })
        .with_payload(serde_json::json!({
            "twins": [{"propertyName": "temperature",
                       "reported": {"value": value, "metadata": {"timestamp": "1795000000000"}}}],
            "state": "online",
            "lastOnlineTime": "2026-11-18T10:00:00Z",
        }));
    Message::Binary(frame.encode().into())
}

/// Sends `message` (frame `id`) and returns the ack or error frame answering it, with the
/// object frames that came before it.
async fn answer(
    ws: &mut RawSocket,
    next_id: &mut u64,
    id: u64,
    message: Message,
) -> (Envelope, Vec<Envelope>) {
    ws.send(message).await.expect("send");
    let mut before = Vec::new();
    loop {
        let frame = next_frame(ws, next_id).await;
        if matches!(frame.operation, Operation::Ack | Operation::Error) && frame.parent == Some(id)
        {
            return (frame, before);
        }
        before.push(frame);
    }
}

/// `kubectl get devices` as column → value for the row `name` (cells cut at the header's column
/// starts, since empty cells leave only spaces).
fn device_row(cloud: &Cloud, name: &str, wide: bool) -> std::collections::BTreeMap<String, String> {
    let mut args = vec!["get", "devices"];
    if wide {
        args.extend(["-o", "wide"]);
    }
    let table = cloud.kubectl_ok(&args);
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{table}"));
    let starts: Vec<(usize, &str)> = header
        .split_whitespace()
        .scan(0, |from, column| {
            let at = header[*from..].find(column).map(|i| i + *from)?;
            *from = at + column.len();
            Some((at, column))
        })
        .collect();
    let cell = |from: usize, to: usize| row.get(from..to.min(row.len())).unwrap_or("").trim();
    starts
        .iter()
        .enumerate()
        .map(|(i, (at, column))| {
            let end = starts.get(i + 1).map_or(row.len(), |(next, _)| *next);
            ((*column).to_owned(), cell(*at, end).to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_reach_their_edge_and_their_status_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));

    // cloudcore installed the CRDs before it listened; KubeEdge's manifests apply unchanged.
    let crds = cloud.kubectl_ok(&["get", "crd", "-o", "name"]);
    for crd in [
        "devices.devices.kubeedge.io",
        "devicemodels.devices.kubeedge.io",
    ] {
        assert!(crds.contains(crd), "{crd} in {crds}");
    }
    cloud.kubectl_ok(&["apply", "-f", &manifest("models.yaml")]);
    cloud.kubectl_ok(&["apply", "-f", &manifest("devices.yaml")]);
    // A device on another node, of a model edge-a also uses.
    cloud.apply(
        "apiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: elsewhere\nspec:\n  deviceModelRef: {name: thermometer}\n  nodeName: edge-b\n  protocol: {protocolName: modbus}\n",
    );
    let uid =
        |name: &str| cloud.kubectl_ok(&["get", "device", name, "-o", "jsonpath={.metadata.uid}"]);
    let (thermo_uid, elsewhere_uid) = (uid("thermo-1"), uid("elsewhere"));

    // edge-a joins with a token and speaks by hand: a hello holding nothing.
    let token = cloud.token("1h").parse().expect("a join token");
    let creds = wedge_edge::tls::EdgeCredentials::new(dir.path().join("edge-a/pki"));
    wedge_edge::join::join(&cloud.hub, &token, "edge-a", &creds)
        .await
        .expect("edge-a joins");
    let tls = wedge_edge::tls::client_config(&creds).expect("edge credentials");
    let mut ws = raw_edge_socket(&cloud.hub, tls).await.expect("accepted");
    let hello = Hello {
        node: "edge-a".into(),
        agent_version: "by-hand".into(),
        held: Vec::new(),
    };
    let mut id = 1;
    let hello = Envelope::new(id, Operation::Hello)
        .with_payload(serde_json::to_value(hello).expect("hello"));
    ws.send(Message::Binary(hello.encode().into()))
        .await
        .expect("hello");

    // The resync inserts exactly edge-a's two devices and their two models.
    let mut inserted = BTreeSet::new();
    loop {
        let frame = next_frame(&mut ws, &mut id).await;
        match frame.operation {
            Operation::Welcome => continue,
            Operation::SyncDone => break,
            Operation::Insert => {
                let r = frame.resource.as_ref().expect("a resource");
                if r.name == "thermo-1" {
                    let device: wedge_core::device::Device =
                        serde_json::from_value(frame.payload.clone()).expect("a Device");
                    assert_eq!(device.spec.node_name, "edge-a");
                    assert_eq!(device.spec.properties[0].collect_cycle, Some(1_000_000_000));
                    assert_eq!(r.uid.as_deref(), Some(thermo_uid.as_str()));
                }
                if r.name == "thermometer" {
                    let model: wedge_core::device::DeviceModel =
                        serde_json::from_value(frame.payload.clone()).expect("a DeviceModel");
                    let props = model.property_models().expect("a valid model");
                    assert_eq!(
                        (props[0].minimum, props[0].maximum),
                        (Some(-40.0), Some(125.0))
                    );
                    assert_eq!(frame.payload["kind"], "DeviceModel");
                }
                inserted.insert(described(&frame));
            }
            _ => panic!("unexpected {} in the resync", described(&frame)),
        }
    }
    assert_eq!(
        inserted,
        BTreeSet::from(
            [
                "Insert device:default/fan-1",
                "Insert device:default/thermo-1",
                "Insert device-model:default/fan",
                "Insert device-model:default/thermometer",
            ]
            .map(str::to_owned)
        )
    );

    // thermo-1's status comes up, is acknowledged, and kubectl shows it.
    id += 1;
    let report = device_status(id, "thermo-1", Some(thermo_uid.clone()), "31.5");
    let sent = id;
    let (ack, _) = answer(&mut ws, &mut id, sent, report).await;
    assert_eq!(ack.operation, Operation::Ack, "{}", ack.payload);
    let status = cloud.kubectl_ok(&["get", "device", "thermo-1", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["status"]["state"], "online");
    assert_eq!(status["status"]["lastOnlineTime"], "2026-11-18T10:00:00Z");
    assert_eq!(status["status"]["twins"][0]["reported"]["value"], "31.5");
    let row = device_row(&cloud, "thermo-1", false);
    assert_eq!(
        (
            row["NODE"].as_str(),
            row["STATE"].as_str(),
            row["REPORTED"].as_str()
        ),
        ("edge-a", "online", "31.5"),
        "{row:?}"
    );
    assert_eq!(row["MODEL"], "thermometer");
    assert_eq!(row["PROPERTY"], "temperature");
    let wide = device_row(&cloud, "thermo-1", true);
    assert_eq!(wide["PROTOCOL"], "modbus", "{wide:?}");

    // Another node's device is not edge-a's to write.
    id += 1;
    let report = device_status(id, "elsewhere", Some(elsewhere_uid), "99");
    let sent = id;
    let (refused, _) = answer(&mut ws, &mut id, sent, report).await;
    assert_eq!(refused.operation, Operation::Error);
    assert_eq!(
        refused.payload["reason"], "Forbidden",
        "{}",
        refused.payload
    );
    assert_eq!(
        cloud.kubectl_ok(&["get", "device", "elsewhere", "-o", "jsonpath={.status}"]),
        ""
    );

    // A new desired value reaches the edge as an update; the status written above did not come
    // back down (the edge wrote it).
    cloud.kubectl_ok(&[
        "patch",
        "device",
        "fan-1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"properties":[{"name":"power","desired":{"value":"true"},"collectCycle":1000000000,"reportCycle":1000000000,"visitors":{"protocolName":"modbus","configData":{"register":"CoilRegister","offset":0,"limit":1}}}]}}"#,
    ]);
    let mut seen = Vec::new();
    let update = loop {
        let frame = next_frame(&mut ws, &mut id).await;
        if frame.operation == Operation::Update
            && frame.resource.as_ref().is_some_and(|r| r.name == "fan-1")
        {
            break frame;
        }
        if frame.resource.is_some() {
            seen.push(described(&frame));
        }
    };
    assert_eq!(
        update.payload["spec"]["properties"][0]["desired"]["value"],
        "true"
    );
    assert!(seen.is_empty(), "frames before fan-1's update: {seen:?}");

    // A model change reaches every edge with a device of that model.
    cloud.kubectl_ok(&["label", "devicemodel", "thermometer", "tier=test"]);
    let update = loop {
        let frame = next_frame(&mut ws, &mut id).await;
        if frame.resource.is_some() {
            break frame;
        }
    };
    assert_eq!(
        described(&update),
        "Update device-model:default/thermometer"
    );
    assert_eq!(update.payload["metadata"]["labels"]["tier"], "test");

    // Moved to another node, a device leaves edge-a, its model with it when it was the last.
    cloud.kubectl_ok(&[
        "patch",
        "device",
        "fan-1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"nodeName":"edge-b"}}"#,
    ]);
    let mut gone = BTreeSet::new();
    while gone.len() < 2 {
        let frame = next_frame(&mut ws, &mut id).await;
        if frame.resource.is_some() {
            gone.insert(described(&frame));
        }
    }
    assert_eq!(
        gone,
        BTreeSet::from(
            [
                "Delete device:default/fan-1",
                "Delete device-model:default/fan"
            ]
            .map(str::to_owned)
        )
    );
}
