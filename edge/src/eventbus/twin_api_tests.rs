//! A burst of KubeEdge requests served in two steps ([`queue`], then [`Answer::resolve`]), over
//! DeviceTwin on a gated writer: every request is queued before the writer commits anything, so
//! what each answer shows is decided by the pipeline, not by timing.

use serde_json::{Value, json};
use wedge_core::twin::{DeviceState, TwinValue};

use super::{Answer, queue};
use crate::devicetwin::DeviceTwin;
use crate::devicetwin::tests::{gated_twin, refuse_desired_setpoints};
use crate::eventbus::auth::Refusals;

const NODE: &str = "edge-a";
const UPDATE: &str = "$hw/events/device/thermo-1/twin/update";
const RESULT: &str = "$hw/events/device/thermo-1/twin/update/result";

async fn request(twin: &DeviceTwin, topic: &str, payload: Value) -> Answer {
    queue(twin, NODE, topic, payload.to_string().as_bytes())
        .await
        .expect("one of KubeEdge's topics")
}

/// The answers, awaited in the order the requests came, as EventBus's answerer awaits them.
async fn answered(answers: Vec<Answer>, refusals: &Refusals) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(answers.len());
    for answer in answers {
        let answer = answer.resolve(refusals).await;
        out.push((answer.topic, answer.payload));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_twin_updates_shares_one_commit_and_each_answer_is_its_own() {
    const N: usize = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick, twin) = gated_twin(&dir).await;
    let refusals = Refusals::default();
    let before = db.write_stats();
    let mut answers = Vec::with_capacity(N);
    for i in 0..N {
        let payload = json!({"event_id": format!("e{i}"), "timestamp": 1,
            "twin": {"temperature": {"actual": {"value": format!("{}.5", 20 + i)}}}});
        answers.push(request(&twin, UPDATE, payload).await);
    }
    // Every update is queued while none is committed: none waited for the one before.
    db.until_queued(N).await;
    db.tick_one(&tick).await;
    let answers = answered(answers, &refusals).await;
    let after = db.write_stats();
    assert_eq!(
        (
            after.transactions - before.transactions,
            after.writes - before.writes
        ),
        (1, N as u64),
        "the burst's writes share one commit"
    );
    for (i, (topic, payload)) in answers.iter().enumerate() {
        assert_eq!(topic, RESULT);
        assert_eq!(
            payload["event_id"],
            format!("e{i}"),
            "in the order they came"
        );
        let temperature = &payload["twin"]["temperature"];
        assert_eq!(
            temperature["actual"]["value"],
            format!("{}.5", 20 + i),
            "its own value, not a later update's: {payload}"
        );
        assert_eq!(temperature["actual_version"]["edge"], i + 1);
        assert_eq!(temperature["metadata"]["type"], "float");
        assert!(payload.get("code").is_none(), "{payload}");
    }
    let (_, properties) = twin.document("thermo-1").expect("document");
    let stored = properties
        .iter()
        .find(|(p, _)| p == "temperature")
        .and_then(|(_, t)| t.reported.clone())
        .expect("reported");
    assert_eq!(
        (stored.value, stored.version),
        (TwinValue::Float(20.5 + (N - 1) as f64), N as u64)
    );
}

#[tokio::test(start_paused = true)]
async fn refused_requests_in_a_burst_are_refused_alone_and_answered_in_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick, twin) = gated_twin(&dir).await;
    let _sql = refuse_desired_setpoints(&dir);
    let refusals = Refusals::default();
    let update = |id: &str, twin: Value| json!({"event_id": id, "timestamp": 1, "twin": twin});
    let requests = [
        (
            UPDATE,
            update(
                "ok-1",
                json!({"temperature": {"actual": {"value": "20.5"}}}),
            ),
        ),
        // Refused by the disk, at its commit, among the others.
        (
            UPDATE,
            update("disk", json!({"setpoint": {"expected": {"value": "18"}}})),
        ),
        // Refused at once.
        (
            UPDATE,
            update("bad", json!({"temperature": {"actual": {"value": "hot"}}})),
        ),
        (
            UPDATE,
            update("unknown", json!({"humidity": {"actual": {"value": "40"}}})),
        ),
        (
            UPDATE,
            update(
                "ok-2",
                json!({"setpoint": {"actual": {"value": "19"}}, "temperature": {"actual": {"value": "21.5"}}}),
            ),
        ),
        (
            "$hw/events/device/thermo-1/state/update",
            json!({"event_id": "state", "state": "online"}),
        ),
        (
            "$hw/events/device/thermo-1/twin/get",
            json!({"event_id": "get"}),
        ),
        (
            "$hw/events/node/edge-a/membership/get",
            json!({"event_id": "members"}),
        ),
    ];
    let mut answers = Vec::new();
    for (topic, payload) in requests {
        answers.push(request(&twin, topic, payload).await);
    }
    // The update refused at once and the unknown property queue nothing; the rest do (the
    // reads too, to run in their turn).
    db.until_queued(6).await;
    db.tick_one(&tick).await;
    let answers = answered(answers, &refusals).await;
    let ids: Vec<&str> = answers
        .iter()
        .map(|(_, p)| p["event_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        [
            "ok-1", "disk", "bad", "unknown", "ok-2", "state", "get", "members"
        ]
    );
    let codes: Vec<&Value> = answers.iter().map(|(_, p)| &p["code"]).collect();
    assert_eq!(
        codes,
        [
            &Value::Null,
            &json!(500),
            &json!(400),
            &json!(404),
            &Value::Null,
            &Value::Null,
            &Value::Null,
            &Value::Null
        ],
        "{answers:?}"
    );
    let payload = |i: usize| &answers[i].1;
    assert_eq!(payload(0)["twin"]["temperature"]["actual"]["value"], "20.5");
    // The update after the refused one is stored and shows the setpoint's desired value as it
    // stands: the spec's, not the refused one.
    let ok2 = &payload(4)["twin"];
    assert_eq!(ok2["setpoint"]["actual"]["value"], "19", "{ok2}");
    assert_eq!(ok2["setpoint"]["expected"]["value"], "21", "{ok2}");
    assert_eq!(ok2["setpoint"]["expected_version"]["edge"], 1);
    assert_eq!(ok2["temperature"]["actual"]["value"], "21.5");
    assert_eq!(ok2["temperature"]["actual_version"]["edge"], 2);
    assert_eq!(payload(5)["device"]["state"], "online");
    assert_eq!(
        answers[5].0,
        "$hw/events/device/thermo-1/state/update/result"
    );
    let got = &payload(6)["twin"];
    assert_eq!(got["setpoint"]["expected"]["value"], "21", "{got}");
    assert_eq!(got["temperature"]["actual"]["value"], "21.5");
    let members = payload(7)["devices"].as_array().expect("devices");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["state"], "online", "the state queued before it");
    assert_eq!(
        twin.document("thermo-1").expect("document").0.state,
        DeviceState::Online
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_among_updates_sees_those_queued_before_it_and_none_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick, twin) = gated_twin(&dir).await;
    let refusals = Refusals::default();
    let temperature = |id: &str, v: &str| json!({"event_id": id, "twin": {"temperature": {"actual": {"value": v}}}});
    let answers = vec![
        request(&twin, UPDATE, temperature("first", "20.5")).await,
        request(
            &twin,
            "$hw/events/device/thermo-1/twin/get",
            json!({"event_id": "get"}),
        )
        .await,
        request(&twin, UPDATE, temperature("second", "30.5")).await,
    ];
    db.until_queued(3).await;
    db.tick_one(&tick).await;
    let answers = answered(answers, &refusals).await;
    assert_eq!(
        answers[1].1["twin"]["temperature"]["actual"]["value"], "20.5",
        "the update after it shares its commit, but is not in its answer: {:?}",
        answers[1].1
    );
    assert_eq!(
        answers[2].1["twin"]["temperature"]["actual"]["value"],
        "30.5"
    );
}
