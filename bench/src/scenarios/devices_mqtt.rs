//! KubeEdge's twin API over MQTT, driven as a mapper drives it: the `devices-mqtt` scenario.
//!
//! In this process, the edge's real DeviceTwin (SQLite, its writer thread) and EventBus, on the
//! embedded broker (what edgecore runs by default) and on Debian's mosquitto (an operator's
//! broker); a client in this process plays a mapper outside edgecore that speaks KubeEdge's
//! topics. Measured: the twin updates answered per second on `.../twin/update/result`,
//! - **a burst**: the mapper publishes [`BURST`] updates of one device without waiting for
//!   answers, up to [`WINDOW`] unanswered (QoS 1, rumqttc's default window of 100 publishes
//!   the broker has not acknowledged), timed from the first publish to the last answer; every
//!   answer is checked (in order, not refused);
//! - **each awaited**: the mapper publishes the next update only once the answer to the one
//!   before has arrived ([`AWAITED`] of them): the round trip through the broker, EventBus,
//!   DeviceTwin's commit and back.
//!
//! Every update is also announced as KubeEdge does (`twin/update/document` and
//! `$ke/events/device/<id>/data/update`), so each costs the edge three publishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{ObjectKey, ResourceKind};
use wedge_edge::devicetwin::DeviceTwin;
use wedge_edge::eventbus::auth::{BusAuthConfig, Refusals};
use wedge_edge::eventbus::uploads::{MAX_PENDING, Uploads};
use wedge_edge::eventbus::{BrokerChoice, EventBus};
use wedge_edge::metamanager::MetaManager;
use wedge_edge::store::Database;

use super::devices::{sensor_device, thermometer};
use super::processes::free_port;
use crate::report::figure;

const SCENARIO: &str = "devices";
const NODE: &str = "bench-edge";
/// Updates in the burst.
const BURST: usize = 20_000;
/// Updates the mapper sends ahead of their answers, at most.
const WINDOW: usize = 1_000;
/// Updates sent one at a time, each after the answer to the one before.
const AWAITED: usize = 2_000;
const UPDATE: &str = "$hw/events/device/sensor-1/twin/update";
const RESULT: &str = "$hw/events/device/sensor-1/twin/update/result";

/// An edge's DeviceTwin and EventBus on `broker`, and the stop of their tasks.
struct Edge {
    _dir: tempfile::TempDir,
    db: Database,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Edge {
    async fn start(broker: &BrokerChoice) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = Database::open(&dir.path().join("edge.db"))?;
        let meta = MetaManager::load(&db)?;
        let key = |kind, name: &str| ObjectKey {
            kind,
            namespace: "default".into(),
            name: name.into(),
        };
        let mut sensor = sensor_device();
        sensor["metadata"]["uid"] = "d2".into();
        meta.apply(
            &key(ResourceKind::DeviceModel, "thermometer"),
            "m1",
            "1",
            &thermometer(),
        )
        .await?;
        meta.apply(&key(ResourceKind::Device, "sensor-1"), "d2", "1", &sensor)
            .await?;
        let twin = DeviceTwin::new(&db, &meta).await;
        let uploads = Arc::new(Uploads::new(meta.clone(), db.outbox(), MAX_PENDING));
        // The embedded broker lets the bench's client in without a login; mosquitto's is
        // anonymous as it runs here.
        let security = BusAuthConfig {
            allow_anonymous: matches!(broker, BrokerChoice::Embedded(_)),
            ..BusAuthConfig::default()
        };
        let (bus, driver) = EventBus::new(
            NODE,
            broker,
            &security,
            Arc::new(Refusals::default()),
            uploads,
        )?;
        let stop = CancellationToken::new();
        // As in edgecore: DeviceTwin's task writes the statuses to the outbox.
        let tasks = vec![
            tokio::spawn(twin.clone().run(stop.clone())),
            tokio::spawn(driver.run(twin, stop.clone())),
        ];
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bus.connected() {
            anyhow::ensure!(Instant::now() < deadline, "EventBus never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            _dir: dir,
            db,
            stop,
            tasks,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.db.close().await;
    }
}

/// The mapper: a client publishing to the device's `twin/update`, and the answers it gets.
struct Mapper {
    client: AsyncClient,
    answers: mpsc::UnboundedReceiver<Value>,
    stop: CancellationToken,
}

impl Mapper {
    async fn connect(port: u16) -> anyhow::Result<Self> {
        let options = MqttOptions::new("bench-mapper", "127.0.0.1", port);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        // As EventBus's own connection: without it, each small publish can wait for the
        // broker's delayed ACK (Nagle's algorithm), up to 40 ms.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, answers) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stopped.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == RESULT => {
                        let answer = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if tx.send(answer).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client.subscribe(RESULT, QoS::AtLeastOnce).await?;
        tokio::time::timeout(Duration::from_secs(30), subscribed.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the result topic was never subscribed"))?;
        Ok(Self {
            client,
            answers,
            stop,
        })
    }

    async fn update(&self, i: usize) -> anyhow::Result<()> {
        let payload = json!({"event_id": format!("e{i}"), "timestamp": 1,
            "twin": {"temperature": {"actual": {"value": format!("{}.5", i % 100)}}}});
        self.client
            .publish(UPDATE, QoS::AtLeastOnce, false, payload.to_string())
            .await?;
        Ok(())
    }

    /// The next answer, which must be `i`'s and not a refusal.
    async fn answer(&mut self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let answer = tokio::time::timeout(limit, self.answers.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to update {i} within {limit:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the mapper's connection ended"))?;
        anyhow::ensure!(
            answer["event_id"] == format!("e{i}") && answer.get("code").is_none(),
            "update {i} answered with {answer}"
        );
        Ok(())
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Answered updates per second on `broker` (the mapper connects to `port`): a burst, and each
/// awaited, and the writes per commit in the burst.
async fn answered_per_second(broker: BrokerChoice, port: u16) -> anyhow::Result<(f64, f64, f64)> {
    let edge = Edge::start(&broker).await?;
    let mut mapper = Mapper::connect(port).await?;
    // Warm-up: EventBus has subscribed once an update is answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut warm = 0;
    loop {
        mapper.update(warm).await?;
        if mapper
            .answer(warm, Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no update was ever answered");
        // An answer that comes late would be taken for the next one's.
        while mapper.answers.try_recv().is_ok() {}
        warm += 1;
    }
    let before = edge.db.write_stats();
    let started = Instant::now();
    let mut answered = 0;
    for i in 0..BURST {
        // A burst past what the edge takes in fills its incoming queue, whose overflow is
        // dropped (and counted): the mapper keeps at most WINDOW unanswered.
        while i - answered >= WINDOW {
            mapper.answer(answered, Duration::from_secs(60)).await?;
            answered += 1;
        }
        mapper.update(i).await?;
    }
    for i in answered..BURST {
        mapper.answer(i, Duration::from_secs(60)).await?;
    }
    let burst = BURST as f64 / started.elapsed().as_secs_f64();
    let after = edge.db.write_stats();
    // Every write of the edge's database in the burst: the twin updates, and the statuses
    // DeviceTwin puts in the outbox.
    let per_commit = (after.writes - before.writes) as f64
        / (after.transactions - before.transactions).max(1) as f64;
    let started = Instant::now();
    for i in 0..AWAITED {
        mapper.update(i).await?;
        mapper.answer(i, Duration::from_secs(10)).await?;
    }
    let awaited = AWAITED as f64 / started.elapsed().as_secs_f64();
    drop(mapper);
    edge.stop().await;
    Ok((burst, awaited, per_commit))
}

/// Runs the scenario: the embedded broker, then mosquitto.
pub async fn run() -> anyhow::Result<()> {
    let port = free_port()?;
    let embedded = answered_per_second(BrokerChoice::Embedded(([127, 0, 0, 1], port).into()), port);
    report("embedded broker", embedded.await?);
    let mosquitto = wedge_testkit::mosquitto::Mosquitto::start()?;
    let broker = BrokerChoice::external(&format!("127.0.0.1:{}", mosquitto.port()))?;
    report(
        "mosquitto",
        answered_per_second(broker, mosquitto.port()).await?,
    );
    Ok(())
}

fn report(broker: &str, (burst, awaited, per_commit): (f64, f64, f64)) {
    figure(
        SCENARIO,
        &format!(
            "MQTT twin updates answered per second, {broker} (a mapper's burst of {BURST}, up to {WINDOW} unanswered, one device)"
        ),
        burst,
        "1/s",
    );
    figure(
        SCENARIO,
        &format!(
            "MQTT twin updates answered per second, {broker} (each sent once the one before is answered)"
        ),
        awaited,
        "1/s",
    );
    figure(
        SCENARIO,
        &format!("edge database writes per commit in the MQTT burst, {broker}"),
        per_commit,
        "writes",
    );
}
