//! A session against a fake cloud over an in-memory WebSocket, with paused time: what the edge
//! does with the cloud's answers to its reports.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{Envelope, ObjectKey, Operation, Reason, ResourceKind};

use super::{Parts, converse};
use crate::edgehub::EdgeHubConfig;
use crate::store::Database;

/// The cloud's end of the connection.
struct FakeCloud {
    ws: WebSocketStream<DuplexStream>,
    next_id: u64,
}

impl FakeCloud {
    /// The next envelope from the edge, if one comes within `wait` (of paused time).
    async fn next(&mut self, wait: Duration) -> Option<Envelope> {
        tokio::time::timeout(wait, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        return Envelope::decode(&bytes).expect("the edge sends envelopes");
                    }
                    Some(Ok(_)) => continue, // pings
                    other => panic!("the edge's side ended: {other:?}"),
                }
            }
        })
        .await
        .ok()
    }

    /// The time until the edge's next ping, and the envelopes it sent before it.
    async fn until_ping(&mut self) -> (Duration, Vec<Envelope>) {
        let started = tokio::time::Instant::now();
        let mut before = Vec::new();
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Ping(_))) => return (started.elapsed(), before),
                Some(Ok(Message::Binary(bytes))) => {
                    before.push(Envelope::decode(&bytes).expect("an envelope"));
                }
                Some(Ok(_)) => continue,
                other => panic!("the edge's side ended: {other:?}"),
            }
        }
    }

    /// The next report (usage samples aside).
    async fn report(&mut self, wait: Duration) -> Option<Envelope> {
        loop {
            let frame = self.next(wait).await?;
            if frame.operation != Operation::Usage {
                return Some(frame);
            }
        }
    }

    async fn send(&mut self, frame: Envelope) {
        self.ws
            .send(Message::Binary(frame.encode().into()))
            .await
            .expect("send to the edge");
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn ack(&mut self, report: &Envelope) {
        let id = self.id();
        self.send(Envelope::ack(id, report.id)).await;
    }

    async fn refuse(&mut self, report: &Envelope, reason: Reason) {
        let id = self.id();
        let message = "the API server refused it: 422 Invalid: metadata.labels: Invalid value";
        self.send(Envelope::error(id, report.id, reason, message))
            .await;
    }
}

fn key(kind: ResourceKind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: String::new(),
        name: name.into(),
    }
}

fn named(frame: &Envelope) -> String {
    frame
        .resource
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default()
}

/// Runs an edge session whose outbox holds a node status (`edge-a`) and a lease (`lease-a`)
/// against `cloud`, which answers the first report with `reason` and acks the rest; returns
/// what the edge sent after that.
struct Run {
    cloud: FakeCloud,
    db: Database,
    config: EdgeHubConfig,
    shutdown: CancellationToken,
    edge: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// What cloudcore's welcome said before the edge honoured it (and still says to old edges'
/// eyes): node status and lease intervals, which the edge ignores, and the window.
fn old_welcome() -> serde_json::Value {
    serde_json::json!({"nodeStatusSeconds": 60, "leaseRenewSeconds": 10, "maxInFlight": 32})
}

async fn start() -> Run {
    start_with(old_welcome()).await
}

async fn start_with(welcome: serde_json::Value) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("edge.db")).expect("database");
    queue_reports(&db).await;
    start_on(dir, db, welcome).await
}

/// A session over a database whose writer waits for a tick before each group, and the ticks.
async fn start_gated() -> (Run, std::sync::mpsc::Sender<()>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tick) = Database::open_gated(&dir.path().join("edge.db")).expect("database");
    // The reports go through ungated: one tick per write, each once the writer took the one
    // before, so none is banked for the test's own writes.
    let ticks = async {
        loop {
            db.until_queued(1).await;
            db.tick_one(&tick).await;
        }
    };
    tokio::select! {
        () = queue_reports(&db) => {}
        () = ticks => unreachable!(),
    }
    (start_on(dir, db, old_welcome()).await, tick)
}

/// The node status (`edge-a`) and lease (`edge-a-lease`) in the outbox.
async fn queue_reports(db: &Database) {
    let outbox = db.outbox();
    outbox
        .put(
            &key(ResourceKind::NodeStatus, "edge-a"),
            Operation::Update,
            &serde_json::json!({"labels": {"bad": "not a valid value!"}, "status": {}}),
        )
        .await
        .expect("queued");
    outbox
        .put(
            &key(ResourceKind::Lease, "edge-a-lease"),
            Operation::Update,
            &serde_json::json!({"durationSeconds": 40}),
        )
        .await
        .expect("queued");
}

async fn start_on(dir: tempfile::TempDir, db: Database, welcome: serde_json::Value) -> Run {
    let (edge_end, cloud_end) = tokio::io::duplex(1 << 20);
    let config = EdgeHubConfig::new(
        "cloud.invalid:10000",
        "edge-a",
        Arc::new(|| Err("no TLS in memory".to_owned())),
    );
    let shutdown = CancellationToken::new();
    let edge = {
        let (config, meta, outbox, usage, shutdown) = (
            config.clone(),
            crate::metamanager::MetaManager::load(&db).expect("meta"),
            db.outbox(),
            crate::edged::usage::feed(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(edge_end, Role::Client, None).await;
            let parts = Parts {
                config: &config,
                meta: &meta,
                outbox: &outbox,
                usage: &usage,
                server: None,
            };
            let _ = converse(ws, &parts, None, &shutdown).await;
        })
    };
    let mut cloud = FakeCloud {
        ws: WebSocketStream::from_raw_socket(cloud_end, Role::Server, None).await,
        next_id: 0,
    };
    let hello = cloud.next(Duration::from_secs(5)).await.expect("a hello");
    assert_eq!(hello.operation, Operation::Hello);
    let id = cloud.id();
    cloud
        .send(Envelope::new(id, Operation::Welcome).with_payload(welcome))
        .await;
    Run {
        cloud,
        db,
        config,
        shutdown,
        edge,
        _dir: dir,
    }
}

impl Run {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.edge.await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_report_the_api_rejects_is_dropped_counted_and_never_sent_again() {
    let mut run = start().await;
    let wait = Duration::from_secs(30);
    let node = run.cloud.report(wait).await.expect("the node status");
    assert_eq!(named(&node), "edge-a");
    let lease = run.cloud.report(wait).await.expect("the lease");
    assert_eq!(named(&lease), "edge-a-lease");
    run.cloud.refuse(&node, Reason::Rejected).await;
    run.cloud.ack(&lease).await;

    // Before: the edge sent the rejected node status again every 2 s, forever. Now nothing
    // comes in 30 s (paused time: the edge's retry timer would have fired many times)...
    assert_eq!(
        run.cloud.report(wait).await.map(|f| named(&f)),
        None,
        "a rejected report is not sent again"
    );
    assert_eq!(
        run.config
            .refused
            .get(ResourceKind::NodeStatus, &Reason::Rejected),
        1
    );
    assert!(
        run.config.refused.encode().contains(
            r#"wedge_edge_reports_refused_total{kind="node-status",reason="Rejected"} 1"#
        ),
        "{}",
        run.config.refused.encode()
    );
    assert!(run.db.outbox().is_empty().expect("outbox"), "dropped");

    // ...and the reports after it go: the next one is the new lease, not the old status.
    let queued = run
        .db
        .outbox()
        .queue(
            &key(ResourceKind::Lease, "edge-a-lease"),
            Operation::Update,
            &serde_json::json!({"durationSeconds": 41}),
        )
        .await;
    assert_eq!(queued, crate::store::Queued::Stored);
    let next = run.cloud.report(wait).await.expect("the next report");
    assert_eq!(named(&next), "edge-a-lease");
    assert_eq!(next.payload["durationSeconds"], 41);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_report_the_api_could_not_take_is_sent_again_until_it_is_acknowledged() {
    let mut run = start().await;
    let wait = Duration::from_secs(30);
    let node = run.cloud.report(wait).await.expect("the node status");
    let lease = run.cloud.report(wait).await.expect("the lease");
    run.cloud.refuse(&node, Reason::ApiUnavailable).await;
    run.cloud.ack(&lease).await;
    let started = tokio::time::Instant::now();
    let again = run.cloud.report(wait).await.expect("sent again");
    assert_eq!(named(&again), "edge-a");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "after the retry delay"
    );
    run.cloud.ack(&again).await;
    assert_eq!(run.cloud.report(wait).await.map(|f| named(&f)), None);
    assert!(run.db.outbox().is_empty().expect("outbox"));
    assert_eq!(
        run.config
            .refused
            .get(ResourceKind::NodeStatus, &Reason::ApiUnavailable),
        0,
        "not counted as dropped"
    );
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_edge_keeps_to_the_window_and_the_keepalive_the_welcome_gives() {
    // Before: the edge used its own window (32) and ping interval (15 s) whatever the cloud said.
    let mut run = start_with(serde_json::json!({"maxInFlight": 1, "pingSeconds": 2})).await;
    let (first_ping, sent) = run.cloud.until_ping().await;
    assert_eq!(first_ping, Duration::from_secs(2), "the cloud's interval");
    let (second_ping, more) = run.cloud.until_ping().await;
    assert_eq!(second_ping, Duration::from_secs(2));
    let reports: Vec<Envelope> = sent
        .into_iter()
        .chain(more)
        .filter(|f| f.operation != Operation::Usage)
        .collect();
    assert_eq!(
        reports.iter().map(named).collect::<Vec<_>>(),
        ["edge-a"],
        "one report in flight, the cloud's window"
    );
    run.cloud.ack(&reports[0]).await;
    let next = run
        .cloud
        .report(Duration::from_secs(30))
        .await
        .expect("the next report once the first is acknowledged");
    assert_eq!(named(&next), "edge-a-lease");
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_older_clouds_welcome_leaves_the_edge_its_own_keepalive() {
    let mut run = start().await;
    let (first_ping, sent) = run.cloud.until_ping().await;
    assert_eq!(first_ping, run.config.ping_interval);
    assert_eq!(
        sent.iter()
            .filter(|f| f.operation != Operation::Usage)
            .count(),
        2,
        "both reports within the window"
    );
    run.stop().await;
}

/// A ConfigMap frame of the cloud's, `cm-<i>`.
fn config_map(id: u64, i: usize) -> Envelope {
    let (name, uid) = (format!("cm-{i}"), format!("uid-{i}"));
    Envelope::new(id, Operation::Insert)
        .with_resource(wedge_core::protocol::ResourceRef {
            kind: ResourceKind::ConfigMap,
            namespace: Some("default".into()),
            name: name.clone(),
            uid: Some(uid.clone()),
        })
        .with_resource_version(Some("1".into()))
        .with_payload(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "1"},
            "data": {"i": i.to_string()}}))
}

#[tokio::test(start_paused = true)]
async fn a_resyncs_objects_received_together_share_one_commit_and_each_is_acked_once_stored() {
    let (mut run, tick) = start_gated().await;
    let before = run.db.write_stats();
    // A burst, as a resync sends it: all of it arrives before the edge reads the first.
    let mut sent = Vec::new();
    for i in 0..20 {
        let id = run.cloud.id();
        run.cloud.send(config_map(id, i)).await;
        sent.push(id);
    }
    // The edge queues all twenty before it waits for the first one's commit (before, it
    // read the next frame only once the one before was committed and acked).
    run.db.until_queued(sent.len()).await;
    run.db.tick_one(&tick).await;
    let mut acked = Vec::new();
    while acked.len() < sent.len() {
        let frame = run
            .cloud
            .report(Duration::from_secs(30))
            .await
            .expect("an answer for every object");
        if frame.operation != Operation::Ack {
            continue; // the outbox's reports
        }
        let parent = frame.parent.expect("an ack names its frame");
        let i = sent
            .iter()
            .position(|id| *id == parent)
            .expect("an ack of an object sent");
        // Acknowledged only once it is durable.
        let stored = run
            .db
            .meta()
            .get(&ObjectKey {
                kind: ResourceKind::ConfigMap,
                namespace: "default".into(),
                name: format!("cm-{i}"),
            })
            .expect("read");
        assert!(stored.is_some(), "cm-{i} acked before it was stored");
        acked.push(parent);
    }
    assert_eq!(acked, sent, "acked in the order received");
    let after = run.db.write_stats();
    assert_eq!(after.writes - before.writes, 20);
    assert_eq!(after.transactions - before.transactions, 1, "one commit");
    drop(tick);
    run.stop().await;
}
