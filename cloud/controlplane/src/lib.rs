//! Wedge's embedded control plane: what kube-scheduler and kube-controller-manager do, for a
//! cluster with no Kubernetes behind it (the embedded API server, `wedge up`). Against a real
//! cluster it stays off: that cluster has its own.
//!
//! Everything here is a client of the API through the `kube` crate and `kube::runtime`
//! (watchers, reflector stores, controllers with idempotent reconcilers), so it works against
//! any API server. Start at [`run`]. Modules:
//!
//! - [`leader`]: leader election through a Lease; only the leader runs the controllers;
//! - [`scheduler`]: binds pending pods to nodes (filters, scores, kube-scheduler's messages);
//! - [`replicaset`]: keeps a ReplicaSet's pods;
//! - [`deployment`]: rolls Deployments through ReplicaSets;
//! - [`daemonset`]: one pod per matching node;
//! - [`job`]: runs a Job's pods to completion (and deletes it after its TTL);
//! - [`cronjob`]: makes a CronJob's Jobs on its schedule;
//! - [`statefulset`]: pods with stable names and ordinals, their claims, rolled in order;
//! - [`endpoints`]: a Service's Endpoints, from the pods it selects and their readiness;
//! - [`endpointslice`]: a Service's EndpointSlices, the same, packed with little churn;
//! - [`disruption`]: each PodDisruptionBudget's status, which evictions read;
//! - [`podautoscaler`]: HorizontalPodAutoscalers scale their targets on the metrics API's usage;
//! - [`gc`]: garbage collection by owner references (background, foreground, orphan);
//! - [`namespace`]: empties a namespace being deleted, then finalizes it;
//! - [`nodelifecycle`]: silent edges become Unknown and tainted, their pods stay;
//! - [`rootca`]: the `kube-root-ca.crt` ConfigMap in every namespace;
//! - [`informer`], [`events`], [`expectations`], [`indexes`], [`pods`], [`selector`],
//!   [`resources`], [`clock`]: what the controllers share ([`services`]: what the two endpoints controllers
//!   share).

pub mod clock;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod error;
pub mod events;
pub mod expectations;
#[cfg(test)]
mod fake_api;
pub mod gc;
pub mod indexes;
pub mod informer;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod nodelifecycle;
pub mod podautoscaler;
pub mod pods;
pub mod replicaset;
pub mod resources;
pub mod rootca;
pub mod scheduler;
pub mod selector;
pub mod services;
pub mod statefulset;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use leader::{LeaderConfig, LeaderError};

/// How the controllers behave.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// How long a node may stay silent before it is `Ready=Unknown`
    /// (kube-controller-manager's `--node-monitor-grace-period`).
    pub node_grace: std::time::Duration,
    /// Registries (`host:port`) the scheduler asks about images over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The CA the client trusts the API server with (PEM), published in every namespace as
    /// `kube-root-ca.crt` ([`rootca`]); none, nothing is published.
    pub root_ca: Option<String>,
    /// The HorizontalPodAutoscaler controller's settings (its sync period...).
    pub podautoscaler: podautoscaler::Config,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        Self {
            node_grace: std::time::Duration::from_secs(40),
            insecure_registries: Vec::new(),
            root_ca: None,
            podautoscaler: podautoscaler::Config::default(),
        }
    }
}

/// The clients the control plane acts through: the scheduler's and the controllers' (each its
/// own identity, kube-scheduler's and kube-controller-manager's, so each holds only its
/// roles). One client for both (`From<Client>`) suits an API server that trusts it with both.
#[derive(Clone)]
pub struct Clients {
    /// The scheduler's.
    pub scheduler: Client,
    /// The controllers' (and the leader election's).
    pub controllers: Client,
}

impl From<Client> for Clients {
    fn from(client: Client) -> Self {
        Self {
            scheduler: client.clone(),
            controllers: client,
        }
    }
}

/// Runs the control plane under leader election until `shutdown` is cancelled.
pub async fn run(
    clients: impl Into<Clients>,
    config: ControllersConfig,
    leader: LeaderConfig,
    shutdown: CancellationToken,
) -> Result<(), LeaderError> {
    let clients = clients.into();
    leader::run_elected(clients.controllers.clone(), leader, shutdown, move |term| {
        run_controllers(clients.clone(), config.clone(), term)
    })
    .await
}

/// A controller (or a watch feeding them) ended on its own, before shutdown: the control plane
/// is no longer whole, and says which part stopped rather than idling on.
#[derive(Debug, thiserror::Error)]
#[error("the control plane's {0} ended on its own")]
pub struct ControllerEnded(pub String);

/// Runs every controller (no election) until `shutdown` is cancelled, or until one of them ends
/// on its own ([`ControllerEnded`]).
pub async fn run_controllers(
    clients: impl Into<Clients>,
    config: ControllersConfig,
    shutdown: CancellationToken,
) -> Result<(), ControllerEnded> {
    run_controllers_at(clients, config, clock::Clock::system(), shutdown).await
}

/// [`run_controllers`], with the controllers that follow the wall clock (CronJobs,
/// HorizontalPodAutoscalers) reading it from `clock`.
pub async fn run_controllers_at(
    clients: impl Into<Clients>,
    config: ControllersConfig,
    clock: clock::Clock,
    shutdown: CancellationToken,
) -> Result<(), ControllerEnded> {
    let Clients {
        scheduler: scheduler_client,
        controllers: client,
    } = clients.into();
    // One watch each of pods, ReplicaSets and nodes for every part that follows them.
    let mut pod_informer = informer::Informer::<Pod>::new("pod");
    let pods = pod_informer.store();
    let replicaset_pods = pod_informer.subscribe();
    let daemonset_pods = pod_informer.subscribe();
    let job_pods = pod_informer.subscribe();
    let statefulset_pods = pod_informer.subscribe();
    let endpoints_pods = pod_informer.subscribe();
    let endpointslice_pods = pod_informer.subscribe();
    let disruption_pods = pod_informer.subscribe();
    let scheduler_pods = pod_informer.subscribe();
    // The index by controller and the scheduler's cache follow the same events, applied
    // before the store's. The watch lists with the controllers' identity; the scheduler's is
    // allowed the same pods, and binds with its own.
    let pod_index = indexes::ControllerIndex::default();
    pod_informer.on_event({
        let index = pod_index.clone();
        move |event| index.apply(event)
    });
    let (scheduler_feeds, shared_scheduler) = scheduler::shared();
    pod_informer.on_event({
        let feeds = scheduler_feeds.clone();
        move |event| feeds.pod(event)
    });

    let mut rs_informer = informer::Informer::<ReplicaSet>::new("replicaset");
    let replicasets = rs_informer.store();
    let deployment_sets = rs_informer.subscribe();
    let rs_index = indexes::ControllerIndex::default();
    rs_informer.on_event({
        let index = rs_index.clone();
        move |event| index.apply(event)
    });

    let mut node_informer = informer::Informer::<Node>::new("node");
    let nodes = node_informer.store();
    let daemonset_nodes = node_informer.subscribe();
    // The scheduler's cache follows the nodes too.
    node_informer.on_event(move |event| scheduler_feeds.node(event));
    // RuntimeClasses say which runtime a daemon needs (the scheduler keeps its own store).
    let (runtime_classes, rc_writer) = reflector::store();
    let rc_feed = watcher(
        Api::<RuntimeClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(rc_writer)
    .for_each(|event| {
        if let Err(error) = event {
            tracing::warn!(%error, "runtimeclass watch failed; retrying");
        }
        futures::future::ready(())
    });
    let indexed_pods = indexes::Indexed {
        store: pods.clone(),
        index: pod_index,
    };
    let indexed_sets = indexes::Indexed {
        store: replicasets,
        index: rs_index,
    };
    let root_ca = config.root_ca.clone();
    let stop = || shutdown.clone().cancelled_owned();
    // Each part in a task of its own, so that the scheduler, the controllers and the watches
    // that feed them run on every worker instead of taking turns in one task. The set aborts
    // them all when this future ends or is dropped (shutdown, or leadership lost).
    let mut parts = Parts::default();
    let all = || watcher::Config::default();
    parts.spawn(
        "pod watch",
        pod_informer.run(Api::all(client.clone()), all()),
    );
    parts.spawn(
        "scheduler",
        shared_scheduler.run(
            scheduler_client,
            config.insecure_registries.clone(),
            pods.clone(),
            scheduler_pods,
            shutdown.clone(),
        ),
    );
    parts.spawn(
        "replicaset watch",
        rs_informer.run(Api::all(client.clone()), all()),
    );
    parts.spawn(
        "replicaset controller",
        replicaset::run(
            client.clone(),
            indexed_pods.clone(),
            replicaset_pods,
            stop(),
        ),
    );
    parts.spawn(
        "job controller",
        job::run(client.clone(), indexed_pods.clone(), job_pods, stop()),
    );
    parts.spawn(
        "disruption controller",
        disruption::run(client.clone(), pods.clone(), disruption_pods, stop()),
    );
    parts.spawn(
        "cronjob controller",
        cronjob::run(client.clone(), clock.clone(), stop()),
    );
    parts.spawn(
        "horizontal pod autoscaler",
        podautoscaler::run(client.clone(), config.podautoscaler, clock, stop()),
    );
    parts.spawn(
        "statefulset controller",
        statefulset::run(
            client.clone(),
            indexed_pods.clone(),
            statefulset_pods,
            stop(),
        ),
    );
    parts.spawn(
        "endpoints controller",
        endpoints::run(client.clone(), pods.clone(), endpoints_pods, stop()),
    );
    parts.spawn(
        "endpointslice controller",
        endpointslice::run(
            client.clone(),
            pods.clone(),
            endpointslice_pods,
            nodes.clone(),
            stop(),
        ),
    );
    parts.spawn(
        "node watch",
        node_informer.run(Api::all(client.clone()), all()),
    );
    parts.spawn("runtimeclass watch", rc_feed);
    parts.spawn(
        "garbage collector",
        gc::run(client.clone(), shutdown.clone()),
    );
    parts.spawn(
        "node lifecycle controller",
        nodelifecycle::run(client.clone(), pods.clone(), config.node_grace, stop()),
    );
    parts.spawn(
        "namespace controller",
        namespace::run(client.clone(), stop()),
    );
    parts.spawn("root CA publisher", {
        let (client, stopped) = (client.clone(), stop());
        async move {
            match root_ca {
                Some(ca) => rootca::run(client, ca, stopped).await,
                None => std::future::pending().await,
            }
        }
    });
    parts.spawn(
        "daemonset controller",
        daemonset::run(
            client.clone(),
            indexed_pods.clone(),
            daemonset_pods,
            nodes.clone(),
            placement_changes(nodes.clone(), daemonset_nodes),
            daemonset::RuntimeSources {
                runtime_classes,
                image_kinds: scheduler::image_kinds(&config.insecure_registries),
            },
            stop(),
        ),
    );
    parts.spawn(
        "deployment controller",
        deployment::run(
            client.clone(),
            indexed_sets,
            deployment_sets,
            indexed_pods,
            stop(),
        ),
    );
    let ended = tokio::select! {
        ended = parts.next_ended() => ended,
        () = shutdown.cancelled() => None,
    };
    // Stopping for shutdown ends the controllers too, maybe before their end is seen above.
    parts.stop().await;
    match ended {
        Some(part) if !shutdown.is_cancelled() => Err(ControllerEnded(part)),
        _ => Ok(()),
    }
}

/// The control plane's parts, each a task, by name. Dropping it aborts them all.
#[derive(Default)]
struct Parts {
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Parts {
    fn spawn(&mut self, name: &'static str, part: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(part).id();
        self.names.insert(id, name);
    }

    /// Which part ended first, and how, once one has (`None` if none was running).
    async fn next_ended(&mut self) -> Option<String> {
        let (id, how) = match self.tasks.join_next_with_id().await? {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(error)),
        };
        let name = self.names.get(&id).copied().unwrap_or("unnamed part");
        Some(match how {
            None => name.to_owned(),
            Some(error) => format!("{name} (its task failed: {error})"),
        })
    }

    /// Aborts every part and waits until each has stopped.
    async fn stop(&mut self) {
        self.tasks.shutdown().await;
    }
}

/// How often the workload controllers look at every object even without an event, as
/// client-go informers resync: what no event announces (the wall clock passing a
/// `minReadySeconds` its requeue missed, a write refused after the reconcile that made it) is
/// then acted on within this time.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(10);

/// Ticks every [`RESYNC`], the first after one period.
fn resync_ticks() -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((), |()| async {
        tokio::time::sleep(RESYNC).await;
        Some(((), ()))
    })
}

/// Fires when a node appears, goes, or changes what placement depends on (labels, taints,
/// cordon, readiness), and not on heartbeats: with many edges, status updates are constant.
fn placement_changes(
    store: reflector::Store<Node>,
    nodes: impl futures::Stream<Item = std::sync::Arc<Node>> + Send + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    nodes.filter_map(move |node| {
        let name = kube::ResourceExt::name_any(node.as_ref());
        let present = store
            .get(&reflector::ObjectRef::from_obj(node.as_ref()))
            .is_some();
        let fingerprint = present.then(|| {
            let taints = scheduler::fit::effective_taints(&node);
            let spec = node.spec.as_ref().map(|s| s.unschedulable);
            serde_json::json!([node.metadata.labels, taints, spec]).to_string()
        });
        let changed = match fingerprint {
            Some(f) => seen.insert(name, f.clone()).as_ref() != Some(&f),
            None => seen.remove(&name).is_some(),
        };
        futures::future::ready(changed.then_some(()))
    })
}
