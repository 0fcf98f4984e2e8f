//! EventBus's shutdown with requests in flight, on the embedded broker and a gated writer:
//! what was received is stored and answered before EventBus says goodbye.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wedge_core::backend::TwinBackend;
use wedge_core::twin::TwinValue;

use super::auth::{BusAuthConfig, Refusals};
use super::uploads::{MAX_PENDING, Uploads};
use super::{BrokerChoice, EventBus};
use crate::devicetwin::tests::gated_twin;
use crate::metamanager::MetaManager;

const UPDATE: &str = "$hw/events/device/thermo-1/twin/update";
const RESULT: &str = "$hw/events/device/thermo-1/twin/update/result";
const WAIT: Duration = Duration::from_secs(10);

/// A client of the broker at `port` subscribed to [`RESULT`]: the answers' payloads.
async fn peer(port: u16) -> (AsyncClient, mpsc::UnboundedReceiver<Value>) {
    let options = MqttOptions::new("shutdown-peer", "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let (tx, answers) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
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
    client
        .subscribe(RESULT, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(WAIT, subscribed.recv())
        .await
        .expect("subscribed in time");
    (client, answers)
}

#[tokio::test(flavor = "multi_thread")]
async fn at_shutdown_the_requests_received_are_stored_and_answered_before_the_goodbye() {
    const N: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick, twin) = gated_twin(&dir).await;
    let meta = MetaManager::load(&db).expect("meta");
    let uploads = Arc::new(Uploads::new(meta, db.outbox(), MAX_PENDING));
    let port = wedge_testkit::wait::free_port();
    let security = BusAuthConfig {
        allow_anonymous: true,
        ..BusAuthConfig::default()
    };
    let (_bus, driver) = EventBus::new(
        "edge-a",
        &BrokerChoice::Embedded(([127, 0, 0, 1], port).into()),
        &security,
        Arc::new(Refusals::default()),
        uploads,
    )
    .expect("EventBus starts");
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(driver.run(twin.clone(), shutdown.clone()));
    let (client, mut answers) = peer(port).await;
    let publish = |payload: String| {
        let client = client.clone();
        async move {
            client
                .publish(UPDATE, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };

    // EventBus serves the twin topics once a malformed update (refused at once, nothing
    // queued for the gated writer) is answered.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish("{not json".into()).await;
        if let Ok(Some(answer)) =
            tokio::time::timeout(Duration::from_millis(500), answers.recv()).await
        {
            assert_eq!(answer["code"], 400, "{answer}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "EventBus never served"
        );
    }

    // A burst, all of it queued for the disk and none committed, when the shutdown comes.
    for i in 0..N {
        publish(format!(
            r#"{{"event_id":"e{i}","twin":{{"temperature":{{"actual":{{"value":"{i}.5"}}}}}}}}"#
        ))
        .await;
    }
    db.until_queued(N).await;
    shutdown.cancel();
    db.tick_one(&tick).await;
    tokio::time::timeout(WAIT, driver)
        .await
        .expect("EventBus ends once it has answered")
        .expect("EventBus's task");

    let mut ids = Vec::with_capacity(N);
    while ids.len() < N {
        let answer = tokio::time::timeout(WAIT, answers.recv())
            .await
            .expect("every answer arrives")
            .expect("the peer's connection");
        // Answers to warm-up requests that came late have no event id.
        if answer["event_id"] == "" {
            continue;
        }
        assert!(answer.get("code").is_none(), "{answer}");
        ids.push(answer["event_id"].as_str().unwrap_or_default().to_owned());
    }
    let expected: Vec<String> = (0..N).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected, "each answered, in order");
    let stored = twin
        .property("thermo-1", "temperature")
        .await
        .expect("twin")
        .reported
        .expect("reported");
    assert_eq!(
        (stored.value, stored.version),
        (TwinValue::Float((N - 1) as f64 + 0.5), N as u64)
    );
}
