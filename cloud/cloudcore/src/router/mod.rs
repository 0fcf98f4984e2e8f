//! Router: KubeEdge's Rule and RuleEndpoint in the cloud, serving the route edge apps use to send
//! data up: a message published on an edge's MQTT bus, POSTed to an HTTP service.
//!
//! The pieces, in the order a message meets them:
//! - the Rule reaches the edge its eventbus source names (`edgecontroller::desired` binds it to that
//!   node as it binds Devices), and EventBus there forwards what matches it as an `upload` report
//!   through the outbox, so messages published while the cloud is away arrive later;
//! - `edgecontroller::upstream` hands each upload to [`Router::route`], which matches it against the
//!   routes [`routes::resolve`] made of every Rule and queues it for each matching rule; the
//!   edge is acknowledged then, so a slow target never holds up the edge's pod statuses;
//! - one task per rule POSTs its messages in order ([`rest`]), and [`stats`] counts what was
//!   delivered and what failed into the Rule's status, with the latest errors.
//!
//! A Rule that cannot be served (a missing endpoint, a route KubeEdge does not have, a topic or
//! URL that does not parse) says why in its status `errors`, checked again whenever a Rule or
//! RuleEndpoint changes. Routes from rest sources (cloud to edge) are not served yet.

pub mod crds;
pub mod rest;
pub mod routes;
pub mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wedge_core::protocol::messages::Upload;
use wedge_core::rule::{Rule, RuleEndpoint, RuleStatus};
use wedge_core::topic;

use crate::edgecontroller::desired::{Desired, DynamicCache};
use rest::{Delivery, RestClient};
use routes::Route;
use stats::{RuleRef, RuleStats};

/// How many messages may wait for one rule's target before new ones fail.
pub const QUEUE_PER_RULE: usize = 1024;
/// How often counts are written to the Rules' statuses.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a rule's delivery task waits for work before it ends (it starts again on demand).
const IDLE: Duration = Duration::from_secs(60);

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for rest targets: {0}")]
    Http(String),
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The topic is not a topic name.
    #[error("upload topic: {0}")]
    Topic(#[from] wedge_core::topic::TopicError),
    /// The base64 payload does not decode.
    #[error("upload payload: {0}")]
    Payload(#[from] base64::DecodeError),
}

/// The node a Rule's eventbus source names (`spec.sourceResource.node_name`), if any, read
/// without parsing the whole Rule (the watch asks at every event).
pub fn source_node(rule: &DynamicObject) -> Option<String> {
    rule.data
        .pointer("/spec/sourceResource")
        .and_then(|r| r.get(wedge_core::rule::SOURCE_NODE_KEY))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// News that Rules or RuleEndpoints changed, from the watches to the router. The routes are
/// compiled again before the next upload is matched, or soon after by the router's task,
/// whichever comes first, so no upload is matched against routes older than the caches.
#[derive(Debug, Default)]
pub struct RouteChanges {
    stale: AtomicBool,
    notify: Notify,
}

impl RouteChanges {
    /// Something changed.
    pub fn mark(&self) {
        self.stale.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn take(&self) -> bool {
        self.stale.swap(false, Ordering::AcqRel)
    }
}

/// The router; cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    rules: DynamicCache,
    endpoints: DynamicCache,
    rest: RestClient,
    stats: RuleStats,
    routes: RwLock<Vec<(RuleRef, Route)>>,
    changes: Arc<RouteChanges>,
    workers: Mutex<HashMap<RuleRef, Worker>>,
    next_worker: AtomicU64,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A rule's delivery task, as the router reaches it.
struct Worker {
    id: u64,
    tx: mpsc::Sender<Delivery>,
}

fn typed<T: serde::de::DeserializeOwned>(object: &DynamicObject) -> Result<T, String> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

fn rule_ref(object: &DynamicObject) -> RuleRef {
    RuleRef {
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        uid: object.uid().unwrap_or_default(),
    }
}

impl Router {
    /// A router over the Rules and RuleEndpoints `desired` caches, told of their changes through
    /// `changes`, writing statuses through `client`. Its tasks end at `shutdown`.
    pub fn new(
        client: Client,
        desired: &Desired,
        changes: Arc<RouteChanges>,
        shutdown: CancellationToken,
    ) -> Result<Self, RouterError> {
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                rules: desired.rules.clone(),
                endpoints: desired.rule_endpoints.clone(),
                rest: RestClient::new().map_err(RouterError::Http)?,
                stats: RuleStats::default(),
                routes: RwLock::default(),
                changes,
                workers: Mutex::default(),
                next_worker: AtomicU64::new(0),
                tasks: TaskTracker::new(),
                shutdown,
            }),
        })
    }

    /// Routes one upload from `node`'s edge to every rule whose source is that node's bus and
    /// whose filter matches. Returns how many rules took it. What happens next is counted in the
    /// rules' statuses; only a malformed upload is an error (the edge drops it).
    pub fn route(&self, node: &str, upload: &Upload) -> Result<usize, UploadError> {
        topic::validate_name(&upload.topic)?;
        let body = upload.bytes()?;
        if self.inner.changes.take() {
            self.check();
        }
        let matching: Vec<(RuleRef, String)> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, r)| r.node == node && topic::matches(&r.filter, &upload.topic))
            .map(|(rule, r)| (rule.clone(), r.url.clone()))
            .collect();
        if matching.is_empty() {
            tracing::debug!(node, topic = upload.topic, "no rule routes this upload");
        }
        for (rule, url) in &matching {
            self.enqueue(
                rule,
                Delivery {
                    url: url.clone(),
                    rule: rule.to_string(),
                    node: node.to_owned(),
                    topic: upload.topic.clone(),
                    body: body.clone(),
                },
            );
        }
        Ok(matching.len())
    }

    fn stored_status(&self, rule: &RuleRef) -> Option<RuleStatus> {
        let object = self.inner.rules.get(&rule.namespace, &rule.name)?;
        (object.uid().as_deref() == Some(rule.uid.as_str()))
            .then(|| object.data.get("status").cloned())
            .flatten()
            .and_then(|s| serde_json::from_value(s).ok())
    }

    fn enqueue(&self, rule: &RuleRef, delivery: Delivery) {
        let mut workers = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let worker = workers.entry(rule.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_PER_RULE);
            let id = self.inner.next_worker.fetch_add(1, Ordering::Relaxed);
            self.inner
                .tasks
                .spawn(deliver(self.clone(), rule.clone(), id, rx));
            Worker { id, tx }
        });
        match worker.tx.try_send(delivery) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let error = format!(
                    "the target is {QUEUE_PER_RULE} messages behind; a message from {} was dropped",
                    rule
                );
                tracing::warn!(rule = %rule, "{error}");
                self.inner
                    .stats
                    .failed(rule, || self.stored_status(rule), &error);
            }
            Err(mpsc::error::TrySendError::Closed(delivery)) => {
                // Only at shutdown: an idle task leaves the map before it closes.
                tracing::debug!(rule = %rule, topic = delivery.topic, "router stopping; upload dropped");
            }
        }
    }

    /// Resolves every Rule again: the routes uploads are matched against, refusals recorded
    /// in the statuses, and the tasks and counts of rules that are gone dropped.
    pub fn check(&self) {
        let endpoint = |namespace: &str, name: &str| -> Option<RuleEndpoint> {
            self.inner
                .endpoints
                .get(namespace, name)
                .and_then(|o| typed(&o).ok())
        };
        let rules = self.inner.rules.store.state();
        let mut routes = Vec::new();
        for object in &rules {
            let rule_ref = rule_ref(object);
            let resolved = typed::<Rule>(object).and_then(|rule| {
                routes::resolve(&rule, &rule_ref.namespace, |name| {
                    endpoint(&rule_ref.namespace, name)
                })
            });
            match resolved {
                Ok(route) => routes.push((rule_ref, route)),
                Err(error) => {
                    tracing::warn!(rule = %rule_ref, %error, "the rule cannot be served");
                    self.inner
                        .stats
                        .refused(&rule_ref, || self.stored_status(&rule_ref), &error);
                }
            }
        }
        let live: HashSet<RuleRef> = rules.iter().map(|o| rule_ref(o)).collect();
        self.inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|rule, _| live.contains(rule));
        self.inner.stats.retain(&live);
        *self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner) = routes;
    }

    /// Writes the counts that changed to the Rules' status subresources.
    async fn flush(&self) {
        for (rule, status) in self.inner.stats.take_dirty() {
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.inner.client.clone(),
                &rule.namespace,
                &self.inner.rules.resource,
            );
            // The uid makes the server refuse it if the Rule was re-created meanwhile.
            let patch = json!({"metadata": {"uid": rule.uid}, "status": status});
            match api
                .patch_status(&rule.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    self.inner.stats.forget(&rule);
                }
                Err(error) => {
                    tracing::warn!(rule = %rule, %error, "cannot write the rule's status; trying again");
                    self.inner.stats.unwritten(&rule);
                }
            }
        }
    }

    /// Checks the rules whenever they change and flushes counts every [`FLUSH_INTERVAL`], until
    /// shutdown; then waits for the delivery tasks and flushes once more.
    pub async fn run(self) {
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changes = self.inner.changes.clone();
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => break,
                () = changes.notify.notified() => {
                    if changes.take() {
                        self.check();
                    }
                }
                _ = flush.tick() => self.flush().await,
            }
        }
        self.inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.flush().await;
    }
}

/// Delivers one rule's messages in order until the rule is gone, the router stops, or nothing
/// came for [`IDLE`].
async fn deliver(router: Router, rule: RuleRef, id: u64, mut rx: mpsc::Receiver<Delivery>) {
    loop {
        let next = tokio::select! {
            () = router.inner.shutdown.cancelled() => None,
            next = tokio::time::timeout(IDLE, rx.recv()) => match next {
                Ok(next) => next,
                Err(_) => {
                    // Idle: leave the map (under its lock no one sends), then deliver what
                    // came in before that; the next upload starts a new task.
                    {
                        let mut workers = router.inner.workers.lock().unwrap_or_else(PoisonError::into_inner);
                        if workers.get(&rule).is_some_and(|w| w.id == id) {
                            workers.remove(&rule);
                        }
                    }
                    rx.close();
                    rx.recv().await
                }
            },
        };
        let Some(delivery) = next else { return };
        match router.inner.rest.post(&delivery).await {
            Ok(()) => router
                .inner
                .stats
                .delivered(&rule, || router.stored_status(&rule)),
            Err(error) => {
                tracing::warn!(rule = %rule, %error, "cannot deliver a message");
                router
                    .inner
                    .stats
                    .failed(&rule, || router.stored_status(&rule), &error);
            }
        }
    }
}
