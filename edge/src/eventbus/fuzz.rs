//! Fuzz test of KubeEdge's twin messages over MQTT ([`super::twin_api`]): any local client may
//! publish them, so every topic and payload must get an answer or be ignored, never a panic,
//! and a refused request must change nothing, as the module promises. See `wedge_testkit_fuzz`
//! for how the test runs.

use std::panic::AssertUnwindSafe;

use serde_json::{Value, json};
use wedge_core::protocol::{ObjectKey, ResourceKind};
use wedge_testkit_fuzz::Mutation;

use super::auth::Refusals;
use super::twin_api;
use crate::devicetwin::DeviceTwin;
use crate::store::Database;

const NODE: &str = "edge-a";

const TOPICS: &[&str] = &[
    "$hw/events/device/thermo-1/twin/update",
    "$hw/events/device/thermo-1/twin/get",
    "$hw/events/device/thermo-1/state/update",
    "$hw/events/node/edge-a/membership/get",
    "$hw/events/node/edge-a/membership/detail",
];

const PAYLOADS: &[&str] = &[
    r#"{"event_id":"e1","timestamp":1764950400000,"twin":{"temperature":{"actual":{"value":"21.5"}}}}"#,
    r#"{"event_id":"e2","timestamp":1764950400000,"twin":{"setpoint":{"expected":{"value":"22"}},"temperature":{"actual":{"value":20}}}}"#,
    r#"{"event_id":"e3","timestamp":1764950400000,"state":"online"}"#,
    r#"{"event_id":"e4"}"#,
];

fn key(kind: ResourceKind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

/// An edge database holding one thermostat: a read-only temperature, a bounded setpoint.
async fn database(dir: &std::path::Path) -> (Database, crate::metamanager::MetaManager) {
    let db = Database::open(&dir.join("edge.db")).expect("db");
    let model = json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "thermostat", "namespace": "default", "uid": "m1"},
        "spec": {"protocol": "modbus", "properties": [
            {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly", "minimum": "-40", "maximum": "125"},
            {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "minimum": "5", "maximum": "30"}]}});
    let device = json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "thermo-1", "namespace": "default", "uid": "d1"},
        "spec": {"deviceModelRef": {"name": "thermostat"}, "nodeName": NODE}});
    let meta = crate::metamanager::MetaManager::load(&db).expect("meta");
    meta.apply(
        &key(ResourceKind::DeviceModel, "thermostat"),
        "m1",
        "1",
        &model,
    )
    .await
    .expect("model");
    meta.apply(&key(ResourceKind::Device, "thermo-1"), "d1", "1", &device)
        .await
        .expect("device");
    (db, meta)
}

/// The twin and state as a `twin/get` and a membership detail answer them, without the
/// answers' own stamps.
fn observed(rt: &tokio::runtime::Runtime, twin: &DeviceTwin, refusals: &Refusals) -> Vec<Value> {
    [
        "$hw/events/device/thermo-1/twin/get",
        "$hw/events/node/edge-a/membership/detail",
    ]
    .iter()
    .map(|topic| {
        let mut answer = rt
            .block_on(twin_api::serve(twin, NODE, topic, b"{}", refusals))
            .expect("one of KubeEdge's topics")
            .payload;
        if let Some(m) = answer.as_object_mut() {
            m.remove("event_id");
            m.remove("timestamp");
        }
        answer
    })
    .collect()
}

#[test]
fn twin_requests_are_answered_and_a_refused_one_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The twin API is async (its writes await their commit); the fuzzer's closure is not.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (db, meta) = rt.block_on(database(dir.path()));
    let twin = rt.block_on(DeviceTwin::new(&db, &meta));
    let refusals = Refusals::default();
    for topic in TOPICS {
        for payload in PAYLOADS {
            let answer = rt.block_on(twin_api::serve(
                &twin,
                NODE,
                topic,
                payload.as_bytes(),
                &refusals,
            ));
            assert!(answer.is_some(), "{topic}");
        }
    }
    // A panic ends the test: nothing is observed after one.
    let (twin, refusals, rt) = (
        AssertUnwindSafe(&twin),
        AssertUnwindSafe(&refusals),
        AssertUnwindSafe(&rt),
    );
    bolero::check!()
        .with_type::<(Mutation, Mutation)>()
        .for_each(|(topic, payload)| {
            let topic = topic.apply_str(TOPICS);
            let payload = payload.apply(&PAYLOADS.iter().map(|p| p.as_bytes()).collect::<Vec<_>>());
            let before = observed(*rt, *twin, *refusals);
            let Some(answer) =
                rt.block_on(twin_api::serve(*twin, NODE, &topic, &payload, *refusals))
            else {
                // Not a twin topic of this node: nothing to answer.
                return;
            };
            assert!(answer.topic.ends_with("/result"), "{}", answer.topic);
            if let Some(code) = answer.payload.get("code") {
                assert!(
                    code.as_u64().is_some_and(|c| (400..600).contains(&c)),
                    "{answer:?}"
                );
                assert_eq!(
                    observed(*rt, *twin, *refusals),
                    before,
                    "refused ({answer:?}) yet changed: {topic} {}",
                    String::from_utf8_lossy(&payload)
                );
            }
        });
}
