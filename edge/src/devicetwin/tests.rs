use serde_json::json;
use wedge_core::backend::{TwinBackend, TwinBackendError};
use wedge_core::protocol::{ObjectKey, ResourceKind};
use wedge_core::twin::{DeviceState, TwinSide, TwinValue};

use super::DeviceTwin;
use crate::metamanager::MetaManager;
use crate::store::Database;

fn key(kind: ResourceKind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn model() -> serde_json::Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "thermostat", "namespace": "default", "uid": "m1"},
        "spec": {"protocol": "modbus", "properties": [
            {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly", "minimum": "-40", "maximum": "125"},
            {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "minimum": "5", "maximum": "30"}]}})
}

fn device(setpoint: &str) -> serde_json::Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "thermo-1", "namespace": "default", "uid": "d1"},
        "spec": {"deviceModelRef": {"name": "thermostat"}, "nodeName": "edge-a",
            "properties": [{"name": "setpoint", "desired": {"value": setpoint}}]}})
}

struct Fixture {
    dir: tempfile::TempDir,
    db: Database,
    meta: MetaManager,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("edge.db")).expect("db");
        let meta = MetaManager::load(&db).expect("meta");
        meta.apply(
            &key(ResourceKind::DeviceModel, "thermostat"),
            "m1",
            "1",
            &model(),
        )
        .await
        .expect("model");
        Self { dir, db, meta }
    }

    async fn put_device(&self, setpoint: &str, rv: &str) {
        self.meta
            .apply(
                &key(ResourceKind::Device, "thermo-1"),
                "d1",
                rv,
                &device(setpoint),
            )
            .await
            .expect("device");
    }

    async fn twin(&self) -> DeviceTwin {
        DeviceTwin::new(&self.db, &self.meta).await
    }

    fn status(&self) -> serde_json::Value {
        self.db
            .outbox()
            .get(&key(ResourceKind::DeviceStatus, "thermo-1"))
            .expect("outbox")
            .expect("a status is queued")
    }
}

#[tokio::test]
async fn the_spec_desired_value_applies_once_and_survives_restarts() {
    let f = Fixture::new().await;
    f.put_device("21", "1").await;
    let twin = f.twin().await;
    let setpoint = twin.property("thermo-1", "setpoint").await.expect("twin");
    let desired = setpoint.desired.expect("the spec's desired value");
    assert_eq!(
        (desired.value, desired.version),
        (TwinValue::Integer(21), 1)
    );

    // A resync (same spec) and a restart do not apply it again.
    twin.reload().await;
    let again = f.twin().await;
    let desired = again
        .property("thermo-1", "setpoint")
        .await
        .expect("twin")
        .desired;
    assert_eq!(desired.map(|d| d.version), Some(1));

    // An app's value holds until the cloud's spec changes.
    assert_eq!(
        again
            .set_desired_value("thermo-1", "setpoint", TwinValue::Integer(18))
            .await,
        Ok(2)
    );
    again.reload().await;
    let held = again
        .property("thermo-1", "setpoint")
        .await
        .expect("twin")
        .desired;
    assert_eq!(held.map(|d| d.value), Some(TwinValue::Integer(18)));
    let mut changes = again.subscribe();
    f.put_device("25", "2").await;
    again.reload().await;
    let change = changes
        .recv()
        .await
        .expect("the cloud's change is announced");
    assert_eq!(
        (change.side, change.current.value, change.current.version),
        (TwinSide::Desired, TwinValue::Integer(25), 3)
    );
    assert_eq!(
        f.status()["status"]["twins"][1]["observedDesired"]["value"],
        "25"
    );
}

#[tokio::test]
async fn reports_are_stored_announced_and_queued_for_the_cloud() {
    let f = Fixture::new().await;
    f.put_device("21", "1").await;
    let twin = f.twin().await;
    twin.set_state("thermo-1", DeviceState::Online)
        .await
        .expect("state");
    let mut changes = twin.subscribe();
    twin.report(
        "thermo-1",
        vec![("temperature".into(), TwinValue::Float(22.5))],
    )
    .await
    .expect("report");
    let change = changes.recv().await.expect("announced");
    assert_eq!(
        (change.side, change.current.version),
        (TwinSide::Reported, 1)
    );

    // run() writes statuses as soon as it wakes; here, by hand.
    twin.flush_statuses().await;
    let queued = f.status();
    assert_eq!(queued["uid"], "d1");
    let status = &queued["status"];
    assert_eq!(status["state"], "online");
    assert!(status["lastOnlineTime"].is_string());
    // Model order, every twin.
    assert_eq!(status["twins"][0]["propertyName"], "temperature");
    assert_eq!(status["twins"][0]["reported"]["value"], "22.5");
    assert_eq!(status["twins"][0]["reported"]["metadata"]["type"], "float");
    assert_eq!(status["twins"][1]["propertyName"], "setpoint");

    // Stored: a restart sees the value and the state.
    let again = f.twin().await;
    let reported = again
        .property("thermo-1", "temperature")
        .await
        .expect("twin")
        .reported;
    assert_eq!(reported.map(|r| r.value), Some(TwinValue::Float(22.5)));
    let d = again
        .device("thermo-1")
        .await
        .expect("device")
        .expect("bound");
    assert_eq!(d.state, DeviceState::Online);
}

#[tokio::test]
async fn bad_values_are_refused_whole_and_change_nothing() {
    let f = Fixture::new().await;
    f.put_device("21", "1").await;
    let twin = f.twin().await;
    let mut changes = twin.subscribe();
    let mixed = vec![
        ("temperature".into(), TwinValue::Float(20.0)),
        ("setpoint".into(), TwinValue::Text("warm".into())),
    ];
    assert!(matches!(
        twin.report("thermo-1", mixed).await,
        Err(TwinBackendError::Value(_))
    ));
    assert!(matches!(
        twin.report(
            "thermo-9",
            vec![("temperature".into(), TwinValue::Float(1.0))]
        )
        .await,
        Err(TwinBackendError::NoSuchDevice(_))
    ));
    // Reports naming devices that are not here leave nothing behind: the names come from
    // outside, and each one used to keep a write guard for good.
    for i in 0..100 {
        let refused = twin
            .report(
                &format!("nobody-{i}"),
                vec![("temperature".into(), TwinValue::Float(1.0))],
            )
            .await;
        assert!(matches!(refused, Err(TwinBackendError::NoSuchDevice(_))));
    }
    assert!(
        twin.inner.writes.lock().expect("write guards").is_empty(),
        "write guards left behind"
    );
    assert!(matches!(
        twin.report("thermo-1", vec![("humidity".into(), TwinValue::Float(1.0))])
            .await,
        Err(TwinBackendError::NoSuchProperty { .. })
    ));
    assert!(matches!(
        twin.set_desired_value("thermo-1", "temperature", TwinValue::Float(1.0))
            .await,
        Err(TwinBackendError::ReadOnly(_))
    ));
    assert!(matches!(
        twin.set_desired_value("thermo-1", "setpoint", TwinValue::Integer(99))
            .await,
        Err(TwinBackendError::Value(_))
    ));
    assert!(changes.try_recv().is_err(), "nothing was announced");
    let temp = twin
        .property("thermo-1", "temperature")
        .await
        .expect("twin");
    assert!(temp.reported.is_none());
}

#[tokio::test]
async fn a_device_that_leaves_the_node_is_forgotten() {
    let f = Fixture::new().await;
    f.put_device("21", "1").await;
    let twin = f.twin().await;
    let membership = twin.membership();
    twin.report(
        "thermo-1",
        vec![("temperature".into(), TwinValue::Float(20.0))],
    )
    .await
    .expect("report");
    f.meta
        .delete(&key(ResourceKind::Device, "thermo-1"), Some("d1"))
        .await
        .expect("delete");
    twin.reload().await;
    assert!(membership.has_changed().expect("open"));
    assert!(twin.names().is_empty());
    assert!(f.db.twins().devices().expect("rows").is_empty());
}

#[tokio::test]
async fn a_report_whose_second_row_cannot_be_stored_changes_neither_memory_nor_disk() {
    let f = Fixture::new().await;
    f.put_device("21", "1").await;
    let twin = f.twin().await;
    twin.report(
        "thermo-1",
        vec![("temperature".into(), TwinValue::Float(20.0))],
    )
    .await
    .expect("the first report");
    // The database refuses the setpoint's row from now on, as a failing disk would: a trigger,
    // made over a connection of the test's own.
    let sql = rusqlite::Connection::open(f.dir.path().join("edge.db")).expect("a connection");
    sql.execute_batch(
        "CREATE TRIGGER refuse_setpoint BEFORE INSERT ON twins
         WHEN NEW.property = 'setpoint' AND NEW.reported IS NOT NULL
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .expect("the trigger");

    let refused = twin
        .report(
            "thermo-1",
            vec![
                ("temperature".into(), TwinValue::Float(22.5)),
                ("setpoint".into(), TwinValue::Integer(19)),
            ],
        )
        .await;
    assert!(
        matches!(refused, Err(TwinBackendError::Unavailable(_))),
        "{refused:?}"
    );
    // Before: the temperature's row was saved and both values were set in memory, so memory
    // said 22.5 and 19 while the disk said 22.5 and nothing.
    let in_memory = |property: &'static str| {
        let twin = twin.clone();
        async move {
            twin.property("thermo-1", property)
                .await
                .expect("twin")
                .reported
                .map(|r| (r.value, r.version))
        }
    };
    assert_eq!(
        in_memory("temperature").await,
        Some((TwinValue::Float(20.0), 1))
    );
    assert_eq!(in_memory("setpoint").await, None);
    let on_disk = f.db.twins().load("thermo-1").expect("rows");
    assert_eq!(
        on_disk["temperature"]
            .twin
            .reported
            .as_ref()
            .map(|r| (r.value.clone(), r.version)),
        Some((TwinValue::Float(20.0), 1))
    );
    assert_eq!(
        on_disk
            .get("setpoint")
            .and_then(|s| s.twin.reported.clone()),
        None
    );
    // A restart reads back what memory holds.
    let restarted = f.twin().await;
    assert_eq!(
        restarted
            .property("thermo-1", "temperature")
            .await
            .expect("twin")
            .reported
            .map(|r| r.value),
        Some(TwinValue::Float(20.0))
    );

    // Once the disk takes it again, the same report is taken whole.
    sql.execute_batch("DROP TRIGGER refuse_setpoint")
        .expect("drop the trigger");
    twin.report(
        "thermo-1",
        vec![
            ("temperature".into(), TwinValue::Float(22.5)),
            ("setpoint".into(), TwinValue::Integer(19)),
        ],
    )
    .await
    .expect("taken");
    assert_eq!(
        in_memory("temperature").await,
        Some((TwinValue::Float(22.5), 2))
    );
    let on_disk = f.db.twins().load("thermo-1").expect("rows");
    assert_eq!(
        on_disk["setpoint"]
            .twin
            .reported
            .as_ref()
            .map(|r| r.version),
        Some(1)
    );
}

#[tokio::test]
async fn a_state_the_disk_cannot_take_leaves_the_state_as_it_was() {
    let f = Fixture::new().await;
    f.put_device("21", "1").await;
    let twin = f.twin().await;
    twin.set_state("thermo-1", DeviceState::Online)
        .await
        .expect("online");
    let sql = rusqlite::Connection::open(f.dir.path().join("edge.db")).expect("a connection");
    sql.execute_batch(
        "CREATE TRIGGER refuse_state BEFORE INSERT ON device_states
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .expect("the trigger");
    assert!(matches!(
        twin.set_state("thermo-1", DeviceState::Offline).await,
        Err(TwinBackendError::Unavailable(_))
    ));
    let state = |t: &DeviceTwin| t.document("thermo-1").expect("document").0.state;
    assert_eq!(state(&twin), DeviceState::Online, "memory as the disk");
    assert_eq!(
        f.db.twins().state("thermo-1").expect("row").map(|(s, _)| s),
        Some("online".to_owned())
    );
    assert_eq!(
        state(&f.twin().await),
        DeviceState::Online,
        "and after a restart"
    );
}

/// Makes the database under `dir` refuse any new desired value of the thermostat's setpoint, as
/// a failing disk would: a trigger (`refuse_desired`), made over a connection of the test's own,
/// which is returned to drop it again.
pub(crate) fn refuse_desired_setpoints(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let sql = rusqlite::Connection::open(dir.path().join("edge.db")).expect("a connection");
    sql.execute_batch(
        "CREATE TRIGGER refuse_desired BEFORE UPDATE ON twins
         WHEN NEW.property = 'setpoint' AND NEW.desired IS NOT OLD.desired
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .expect("the trigger");
    sql
}

/// DeviceTwin over a gated writer (each group waits for a tick), with the thermostat bound:
/// storing the device and model and the twin's first load go through ungated. The thermostat:
/// a read-only FLOAT temperature (-40..125) and a read-write INT setpoint (5..30) whose spec
/// sets 21.
pub(crate) async fn gated_twin(
    dir: &tempfile::TempDir,
) -> (Database, std::sync::mpsc::Sender<()>, DeviceTwin) {
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("db");
    let meta = MetaManager::load(&db).expect("meta");
    let opened = async {
        meta.apply(
            &key(ResourceKind::DeviceModel, "thermostat"),
            "m1",
            "1",
            &model(),
        )
        .await
        .expect("model");
        meta.apply(
            &key(ResourceKind::Device, "thermo-1"),
            "d1",
            "1",
            &device("21"),
        )
        .await
        .expect("device");
        DeviceTwin::new(&db, &meta).await
    };
    // One tick per write, each once the writer took the one before: none is banked for the
    // test's own writes.
    let ticks = async {
        loop {
            db.until_queued(1).await;
            db.tick_one(&tick).await;
        }
    };
    let twin = tokio::select! {
        twin = opened => twin,
        () = ticks => unreachable!(),
    };
    (db, tick, twin)
}

/// A side of a property, as (value, version).
type Side = Option<(TwinValue, u64)>;

/// `property`'s `side` in memory and on disk.
fn both_sides(twin: &DeviceTwin, db: &Database, property: &str, side: TwinSide) -> (Side, Side) {
    let pick = |t: &wedge_core::twin::TwinProperty| {
        match side {
            TwinSide::Reported => t.reported.clone(),
            TwinSide::Desired => t.desired.clone(),
        }
        .map(|v| (v.value, v.version))
    };
    let (_, properties) = twin.document("thermo-1").expect("document");
    let in_memory = properties
        .iter()
        .find(|(p, _)| p == property)
        .and_then(|(_, t)| pick(t));
    let on_disk = db
        .twins()
        .load("thermo-1")
        .expect("rows")
        .get(property)
        .and_then(|s| pick(&s.twin));
    (in_memory, on_disk)
}

#[tokio::test]
async fn a_devices_reports_queued_while_one_is_written_share_one_commit_and_settle_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick, twin) = gated_twin(&dir).await;
    let mut changes = twin.subscribe();
    let report = |value: f64| {
        let twin = twin.clone();
        tokio::spawn(async move {
            twin.report(
                "thermo-1",
                vec![("temperature".into(), TwinValue::Float(value))],
            )
            .await
        })
    };
    let before = db.write_stats().transactions;
    // Each is queued while the ones before wait for their commit: the device's write guard
    // orders them as they are queued and is not held across the commit.
    let mut waiting = Vec::new();
    for (i, value) in [20.0, 30.0, 40.0].into_iter().enumerate() {
        waiting.push(report(value));
        db.until_queued(i + 1).await;
    }
    tick.send(()).expect("the commit");
    for report in waiting {
        report.await.expect("task").expect("stored");
    }
    assert_eq!(
        db.write_stats().transactions - before,
        1,
        "one commit for the three"
    );
    let announced: Vec<(TwinValue, u64)> = (0..3)
        .map(|_| changes.try_recv().expect("announced"))
        .map(|c| (c.current.value, c.current.version))
        .collect();
    assert_eq!(
        announced,
        [
            (TwinValue::Float(20.0), 1),
            (TwinValue::Float(30.0), 2),
            (TwinValue::Float(40.0), 3)
        ],
        "in order, each its own version"
    );
    let (in_memory, on_disk) = both_sides(&twin, &db, "temperature", TwinSide::Reported);
    assert_eq!(in_memory, Some((TwinValue::Float(40.0), 3)));
    assert_eq!(on_disk, in_memory, "memory as the disk");
}

#[tokio::test]
async fn a_write_refused_among_a_devices_writes_in_flight_is_refused_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick, twin) = gated_twin(&dir).await;
    let sql = refuse_desired_setpoints(&dir);
    let mut changes = twin.subscribe();
    // In one group, in this order: an app's desired value the disk refuses, then the device's
    // report on the same property (made while that value is in flight), then another report.
    let desired = {
        let twin = twin.clone();
        tokio::spawn(async move {
            twin.set_desired_value("thermo-1", "setpoint", TwinValue::Integer(18))
                .await
        })
    };
    db.until_queued(1).await;
    let reported = {
        let twin = twin.clone();
        tokio::spawn(async move {
            twin.report(
                "thermo-1",
                vec![("setpoint".into(), TwinValue::Integer(19))],
            )
            .await
        })
    };
    db.until_queued(2).await;
    let temperature = {
        let twin = twin.clone();
        tokio::spawn(async move {
            twin.report(
                "thermo-1",
                vec![("temperature".into(), TwinValue::Float(22.5))],
            )
            .await
        })
    };
    db.until_queued(3).await;
    tick.send(()).expect("the commit");
    assert!(
        matches!(
            desired.await.expect("task"),
            Err(TwinBackendError::Unavailable(_))
        ),
        "the refused write"
    );
    reported.await.expect("task").expect("the report beside it");
    temperature.await.expect("task").expect("the other report");

    // The report on the setpoint stored its side only: the refused desired value is on
    // neither the disk nor in memory.
    let (in_memory, on_disk) = both_sides(&twin, &db, "setpoint", TwinSide::Desired);
    assert_eq!(in_memory, Some((TwinValue::Integer(21), 1)), "the spec's");
    assert_eq!(on_disk, in_memory);
    let (in_memory, on_disk) = both_sides(&twin, &db, "setpoint", TwinSide::Reported);
    assert_eq!(in_memory, Some((TwinValue::Integer(19), 1)));
    assert_eq!(on_disk, in_memory);
    let (in_memory, on_disk) = both_sides(&twin, &db, "temperature", TwinSide::Reported);
    assert_eq!(in_memory, Some((TwinValue::Float(22.5), 1)));
    assert_eq!(on_disk, in_memory);
    let announced: Vec<(String, TwinSide)> = (0..2)
        .map(|_| changes.try_recv().expect("announced"))
        .map(|c| (c.property, c.side))
        .collect();
    assert_eq!(
        announced,
        [
            ("setpoint".to_owned(), TwinSide::Reported),
            ("temperature".to_owned(), TwinSide::Reported)
        ],
        "the refused value is not announced"
    );
    assert!(changes.try_recv().is_err());

    // Nothing of the refused value is left in flight: the next desired value follows the
    // stored one.
    sql.execute_batch("DROP TRIGGER refuse_desired")
        .expect("drop the trigger");
    drop(tick);
    assert_eq!(
        twin.set_desired_value("thermo-1", "setpoint", TwinValue::Integer(17))
            .await,
        Ok(2)
    );
}
