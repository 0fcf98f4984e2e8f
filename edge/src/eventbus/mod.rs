//! EventBus: the edge's MQTT client, to a broker of the operator's (mosquitto, say) or to the
//! embedded one ([`broker`]), carrying KubeEdge's device topics ([`twin_api`]) and apps' messages.
//!
//! One rumqttc connection serves everything. Three tasks share it, so that none can stall another:
//! - the **poll loop** drives the connection (rumqttc reconnects on the next poll after an error)
//!   and hands each incoming message to the dispatcher without waiting; when the dispatcher is
//!   [`INCOMING_QUEUE`] messages behind, messages are dropped and counted, never the connection;
//! - the **dispatcher** starts serving KubeEdge's requests from DeviceTwin (parses each and
//!   queues its writes, in arrival order, without waiting for their commit), delivers messages to
//!   the subscriptions of pods (the `wedge:messaging` host functions, through [`BusBackend`]) and
//!   queues for the cloud what a Rule routes there ([`uploads`]); it follows the Rules the edge
//!   holds, subscribing to their filters and giving up those no rule wants any more;
//! - the **answerer** awaits each request's answer in the order the requests came (up to
//!   [`ANSWERS_IN_FLIGHT`] behind the dispatcher, which waits when it is that far ahead) and
//!   publishes it on the request's `/result` topic: a burst of twin updates shares commits, and
//!   each is still answered after its own commit, as [`twin_api`] explains;
//! - the **announcer** publishes twin changes (document, delta, data) and membership changes.
//!
//! Subscriptions are made again after every (re)connection: sessions are clean, so a broker
//! restart loses nothing EventBus asked for.
//!
//! At shutdown the poll loop hands the dispatcher nothing more, but keeps the connection up
//! while the dispatcher serves what it already received and the answerer publishes every answer
//! (at most [`DRAIN_LIMIT`]); then EventBus disconnects, behind those answers.

pub mod acl;
pub mod auth;
pub mod broker;
#[cfg(test)]
mod fuzz;
pub mod logins;
pub mod passwords;
#[cfg(test)]
mod shutdown_tests;
pub mod topics;
pub mod twin_api;
pub mod uploads;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wedge_core::backend::{BusBackend, BusError, BusMessage, MessageQueue, Qos};
use wedge_core::topic;

use crate::devicetwin::DeviceTwin;
use twin_api::Outgoing;
use uploads::Uploads;

/// How many received messages wait for the dispatcher before new ones are dropped.
pub const INCOMING_QUEUE: usize = 8192;
/// How many requests (publishes, subscriptions) wait for the connection.
const REQUEST_QUEUE: usize = 8192;
/// How many KubeEdge requests may be queued (their writes on their way to the disk) and not yet
/// answered; the dispatcher waits for the oldest answer beyond that.
pub const ANSWERS_IN_FLIGHT: usize = 64;
/// How long a shutdown waits for the messages received to be served, their answers published
/// and the disconnection sent.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Which broker EventBus talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// A broker that runs anyway (mosquitto), at `host:port`.
    External {
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
    },
    /// The embedded broker, listening here.
    Embedded(std::net::SocketAddr),
}

impl BrokerChoice {
    /// Parses `--mqtt-broker`: `host:port`, `tcp://host:port` or `mqtt://host:port`.
    pub fn external(address: &str) -> Result<Self, EventBusError> {
        let bare = address
            .strip_prefix("tcp://")
            .or_else(|| address.strip_prefix("mqtt://"))
            .unwrap_or(address);
        let (host, port) = bare
            .rsplit_once(':')
            .ok_or_else(|| EventBusError::Address(address.to_owned()))?;
        let port = port
            .parse()
            .map_err(|_| EventBusError::Address(address.to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(EventBusError::Address(address.to_owned()));
        }
        Ok(Self::External {
            host: host.to_owned(),
            port,
        })
    }
}

/// Why EventBus could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    /// `--mqtt-broker` does not parse.
    #[error("{0:?} is not a broker address (host:port, tcp://host:port)")]
    Address(String),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The bus's security settings cannot be used.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
}

/// The edge's bus; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    client: AsyncClient,
    subscriptions: Mutex<Vec<(String, Weak<MessageQueue>)>>,
    uploads: Arc<Uploads>,
    refusals: Arc<auth::Refusals>,
    logins: Arc<logins::PodLogins>,
    connected: AtomicBool,
    dropped: AtomicU64,
}

/// The connection's driver, run once by the agent.
pub struct EventBusDriver {
    bus: EventBus,
    eventloop: EventLoop,
}

impl EventBus {
    /// A bus for `node` on `broker` (starting the embedded one if chosen, guarded as `security`
    /// says), forwarding what the Rules `uploads` holds route to the cloud; refusals are counted
    /// in `refusals`. Nothing is sent until the driver runs.
    pub fn new(
        node: &str,
        broker: &BrokerChoice,
        security: &auth::BusAuthConfig,
        refusals: Arc<auth::Refusals>,
        uploads: Arc<Uploads>,
    ) -> Result<(Self, EventBusDriver), EventBusError> {
        let (host, port, login, pod_logins) = match broker {
            BrokerChoice::External { host, port } => {
                if security.password_file.is_some() {
                    return Err(auth::AuthError::NotEmbedded("--mqtt-password-file").into());
                }
                if security.acl_file.is_some() {
                    return Err(auth::AuthError::NotEmbedded("--mqtt-acl-file").into());
                }
                if security.allow_anonymous {
                    return Err(auth::AuthError::NotEmbedded("--mqtt-allow-anonymous").into());
                }
                let login = match &security.credentials_file {
                    Some(path) => Some(auth::read_credentials(path)?),
                    None => None,
                };
                match &login {
                    Some((user, _)) => {
                        tracing::info!(broker = %format!("{host}:{port}"), user = %user, "MQTT bus: an external broker; EventBus logs in")
                    }
                    None => {
                        tracing::info!(broker = %format!("{host}:{port}"), "MQTT bus: an external broker; EventBus connects without a login (no --mqtt-credentials-file)")
                    }
                }
                (
                    host.clone(),
                    *port,
                    login,
                    Arc::new(logins::PodLogins::external()),
                )
            }
            BrokerChoice::Embedded(addr) => {
                if security.credentials_file.is_some() {
                    return Err(auth::AuthError::CredentialsWithoutBroker.into());
                }
                let guard = Arc::new(auth::BusGuard::load(node, security, refusals.clone())?);
                let broker = broker::EmbeddedBroker::start(*addr, guard.clone())?;
                tracing::info!(addr = %broker.addr(), "MQTT bus: the embedded broker, authenticated: {}", guard.describe());
                let (user, password) = guard.eventbus_login();
                (
                    broker.addr().ip().to_string(),
                    broker.addr().port(),
                    Some((user.to_owned(), password.to_owned())),
                    guard.logins().clone(),
                )
            }
        };
        let mut options = MqttOptions::new(auth::eventbus_client_id(node), host, port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(broker::MAX_PAYLOAD + 4096, broker::MAX_PAYLOAD + 4096);
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        // Small packets both ways (a publish, then its PUBACK): without TCP_NODELAY, Nagle's
        // algorithm holds one until the peer's delayed ACK, up to 40 ms.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let bus = Self {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                client,
                subscriptions: Mutex::default(),
                uploads,
                refusals,
                logins: pod_logins,
                connected: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
            }),
        };
        Ok((bus.clone(), EventBusDriver { bus, eventloop }))
    }

    /// The MQTT logins pods bring (`mqtt.wedge.io/login`), which Edged keeps up to date; with
    /// an external broker, one that refuses them all, saying why.
    pub fn logins(&self) -> Arc<logins::PodLogins> {
        self.inner.logins.clone()
    }

    /// Whether the broker connection is up.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn subscriptions(&self) -> MutexGuard<'_, Vec<(String, Weak<MessageQueue>)>> {
        self.inner
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every filter to hold at the broker: KubeEdge's requests, the Rules' and pods'
    /// subscriptions.
    fn filters(&self) -> BTreeSet<String> {
        let mut filters: BTreeSet<String> = topics::request_filters(&self.inner.node)
            .into_iter()
            .chain(self.inner.uploads.filters())
            .collect();
        let mut subs = self.subscriptions();
        subs.retain(|(_, q)| q.strong_count() > 0);
        filters.extend(subs.iter().map(|(f, _)| f.clone()));
        filters
    }

    /// Delivers a message to every pod subscription whose filter matches. Filters whose pods
    /// are all gone are given up at the broker.
    fn deliver(&self, message: &BusMessage) {
        let mut subs = self.subscriptions();
        let mut dead: Vec<String> = Vec::new();
        subs.retain(|(f, q)| {
            let live = q.strong_count() > 0;
            if !live {
                dead.push(f.clone());
            }
            live
        });
        for (filter, queue) in subs.iter() {
            if topic::matches(filter, &message.topic)
                && let Some(q) = queue.upgrade()
            {
                q.push(message.clone());
            }
        }
        dead.sort_unstable();
        dead.dedup();
        for filter in dead {
            if !subs.iter().any(|(f, _)| *f == filter) {
                self.give_up(filter);
            }
        }
    }

    /// Unsubscribes from `filter` at the broker unless KubeEdge's requests or a Rule need it
    /// (callers check pods' subscriptions).
    fn give_up(&self, filter: String) {
        if topics::request_filters(&self.inner.node).contains(&filter)
            || self.inner.uploads.filters().contains(&filter)
        {
            return;
        }
        if let Err(e) = self.inner.client.try_unsubscribe(filter.clone()) {
            tracing::debug!(filter, error = %e, "cannot unsubscribe now; its messages are dropped here, and a reconnection forgets it");
        }
    }

    /// Follows the Rules the edge holds: subscribes to new filters, gives up old ones.
    async fn rules_changed(&self) {
        let changes = self.inner.uploads.reload();
        if !changes.added.is_empty() {
            tracing::info!(filters = ?changes.added, "forwarding what Rules route to the cloud");
            let filters = changes
                .added
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce))
                .collect::<Vec<_>>();
            if let Err(e) = self.inner.client.subscribe_many(filters).await {
                tracing::warn!(error = %e, "cannot subscribe at the MQTT broker; the next connection will");
            }
        }
        for filter in changes.removed {
            let used_by_pods = self
                .subscriptions()
                .iter()
                .any(|(f, q)| *f == filter && q.strong_count() > 0);
            if !used_by_pods {
                self.give_up(filter);
            }
        }
    }

    async fn publish_json(&self, out: Outgoing) {
        let payload = match serde_json::to_vec(&out.payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(topic = out.topic, error = %e, "cannot encode a message");
                return;
            }
        };
        if let Err(e) = self
            .inner
            .client
            .publish(out.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(topic = out.topic, error = %e, "cannot publish");
        }
    }
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[async_trait]
impl BusBackend for EventBus {
    async fn publish(&self, message: BusMessage, q: Qos, retain: bool) -> Result<(), BusError> {
        self.inner
            .client
            .try_publish(message.topic, qos(q), retain, message.payload)
            .map_err(|e| BusError::Unavailable(format!("the bus is backed up or closed: {e}")))
    }

    async fn subscribe(&self, filter: &str, queue: &Arc<MessageQueue>) -> Result<(), BusError> {
        let new = {
            let mut subs = self.subscriptions();
            let new = !subs
                .iter()
                .any(|(f, q)| f == filter && q.strong_count() > 0);
            subs.push((filter.to_owned(), Arc::downgrade(queue)));
            new
        };
        if new {
            self.inner
                .client
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| BusError::Unavailable(format!("cannot subscribe: {e}")))?;
        }
        Ok(())
    }
}

/// A received message, or the news that the connection is (again) up.
enum Received {
    Connected,
    Message(BusMessage),
}

impl EventBusDriver {
    /// Runs the connection, the dispatcher and the announcer until `shutdown`.
    pub async fn run(self, twin: DeviceTwin, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let (answers_tx, answers_rx) = mpsc::channel(ANSWERS_IN_FLIGHT);
        // Cancelled once every received message is served and answered: the connection may go.
        let drained = CancellationToken::new();
        let bus = self.bus;
        let serve = {
            let (bus, twin, drained) = (bus.clone(), twin.clone(), drained.clone());
            async move {
                tokio::join!(
                    dispatch(bus.clone(), twin, rx, answers_tx),
                    answer(bus.clone(), answers_rx),
                );
                // Behind every answer published: the broker gets them before the goodbye.
                if let Err(e) = bus.inner.client.try_disconnect() {
                    tracing::debug!(error = %e, "cannot say goodbye to the MQTT broker");
                }
                drained.cancel();
            }
        };
        tokio::join!(
            poll(self.eventloop, bus.clone(), tx, shutdown.clone(), drained),
            serve,
            flush_warnings(bus.inner.refusals.clone(), shutdown.clone()),
            announce(bus, twin, shutdown),
        );
        // Dropping the event loop closes the connection; the session is clean, so the broker
        // keeps nothing of it.
    }
}

/// Logs the counts of refusals whose warning interval has passed, so that a burst's tail is
/// told even when no refusal follows it.
async fn flush_warnings(refusals: Arc<auth::Refusals>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(auth::WARN_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => refusals.flush(),
        }
    }
}

/// Drives the connection and hands what arrives to the dispatcher until `shutdown`; then hands
/// nothing more but drives the connection on until the dispatcher and answerer are done
/// (`drained`) and the disconnection is sent, for at most [`DRAIN_LIMIT`].
async fn poll(
    mut eventloop: EventLoop,
    bus: EventBus,
    tx: mpsc::Sender<Received>,
    shutdown: CancellationToken,
    drained: CancellationToken,
) {
    let mut tx = Some(tx);
    let mut failures = 0u32;
    let limit = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    tokio::pin!(limit);
    loop {
        let event = tokio::select! {
            // Dropping the sender ends the dispatcher once it has served what it holds.
            () = shutdown.cancelled(), if tx.is_some() => {
                tx = None;
                continue;
            }
            () = &mut limit => {
                tracing::warn!("EventBus did not publish every answer within {DRAIN_LIMIT:?} of the shutdown");
                return;
            }
            // Everything served, and no connection to say goodbye on.
            () = drained.cancelled(), if !bus.connected() => return,
            event = eventloop.poll() => event,
        };
        let received = match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                bus.inner.connected.store(true, Ordering::Relaxed);
                tracing::info!("connected to the MQTT broker");
                Received::Connected
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => Received::Message(BusMessage {
                topic: p.topic,
                payload: p.payload.to_vec(),
                retained: p.retain,
                received_ms: wedge_core::backend::now_ms(),
            }),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if drained.is_cancelled() => {
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                if bus.inner.connected.swap(false, Ordering::Relaxed) || failures == 0 {
                    tracing::warn!(error = %e, "MQTT broker connection lost; reconnecting");
                }
                if drained.is_cancelled() {
                    // Nothing left to send: no reconnection for the goodbye alone.
                    return;
                }
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(100 * u64::from(failures.min(50)));
                tokio::select! {
                    () = &mut limit => return,
                    () = drained.cancelled() => return,
                    () = shutdown.cancelled(), if tx.is_some() => {
                        tx = None;
                        continue;
                    }
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let Some(sender) = &tx else {
            // After the shutdown: not taken, as if it had come after the process ended.
            tracing::debug!("a message arrived after the shutdown began; not taken");
            continue;
        };
        if sender.try_send(received).is_err() {
            let n = bus.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "EventBus is behind; incoming messages dropped");
            }
        }
    }
}

/// Serves what the poll loop hands over, until it hands over no more (the shutdown) and all
/// it handed over is served: KubeEdge's requests are queued and their answers handed to the
/// answerer in arrival order.
async fn dispatch(
    bus: EventBus,
    twin: DeviceTwin,
    mut rx: mpsc::Receiver<Received>,
    answers: mpsc::Sender<twin_api::Answer>,
) {
    bus.rules_changed().await;
    loop {
        let received = tokio::select! {
            () = bus.inner.uploads.changed() => {
                bus.rules_changed().await;
                continue;
            }
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        match received {
            Received::Connected => {
                let filters: Vec<_> = bus
                    .filters()
                    .into_iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce))
                    .collect();
                if let Err(e) = bus.inner.client.subscribe_many(filters).await {
                    tracing::warn!(error = %e, "cannot subscribe at the MQTT broker");
                }
            }
            Received::Message(message) => {
                if let Some(answer) =
                    twin_api::queue(&twin, &bus.inner.node, &message.topic, &message.payload).await
                {
                    // Waits while ANSWERS_IN_FLIGHT answers are ahead of it. The answerer ends
                    // only after this loop.
                    let _ = answers.send(answer).await;
                }
                if let Err(e) = bus
                    .inner
                    .uploads
                    .forward(&message.topic, &message.payload)
                    .await
                {
                    tracing::warn!(topic = message.topic, error = %e, "cannot queue a message for the cloud; dropped");
                }
                bus.deliver(&message);
            }
        }
    }
}

/// Publishes each request's answer once its writes are stored, in the order the requests came,
/// until the dispatcher has ended and every answer it handed over is published.
async fn answer(bus: EventBus, mut answers: mpsc::Receiver<twin_api::Answer>) {
    while let Some(answer) = answers.recv().await {
        let out = answer.resolve(&bus.inner.refusals).await;
        bus.publish_json(out).await;
    }
}

async fn announce(bus: EventBus, twin: DeviceTwin, shutdown: CancellationToken) {
    let mut changes = twin.subscribe();
    let mut membership = twin.membership();
    let mut members: BTreeSet<String> = twin.names().into_iter().collect();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Ok(change) => {
                    for out in twin_api::announce(&twin, &change) {
                        bus.publish_json(out).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "EventBus fell behind twin changes; some were not announced");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            changed = membership.changed() => {
                if changed.is_err() {
                    return;
                }
                let now: BTreeSet<String> = twin.names().into_iter().collect();
                let added: Vec<String> = now.difference(&members).cloned().collect();
                let removed: Vec<String> = members.difference(&now).cloned().collect();
                members = now;
                if !added.is_empty() || !removed.is_empty() {
                    bus.publish_json(twin_api::membership_updated(&bus.inner.node, &added, &removed)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse_with_or_without_a_scheme() {
        assert_eq!(
            BrokerChoice::external("tcp://127.0.0.1:1883").expect("valid"),
            BrokerChoice::External {
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(
            BrokerChoice::external("mosquitto.local:8883").expect("valid"),
            BrokerChoice::External {
                host: "mosquitto.local".into(),
                port: 8883
            }
        );
        for bad in ["1883", "host:", ":1883", "host:port"] {
            assert!(BrokerChoice::external(bad).is_err(), "{bad}");
        }
    }
}
