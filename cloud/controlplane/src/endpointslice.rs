//! The EndpointSlice controller: for every Service with a selector, `discovery.k8s.io/v1`
//! EndpointSlices listing the pods it selects, as kube-controller-manager's endpointslice
//! controller does (v1.33, `pkg/controller/endpointslice` and `k8s.io/endpointslice`).
//!
//! What a reconcile writes is one pure function, [`plan`], from the Service, its pods, the
//! nodes' zones and the slices this controller made for it before:
//!
//! - **endpoints**: one per selected pod that has not finished and has an IP of the slice's
//!   family (terminating pods included), with `conditions.ready` (Ready and not terminating,
//!   or always with `publishNotReadyAddresses`), `serving` (Ready), `terminating`,
//!   `nodeName`, `zone` (the node's `topology.kubernetes.io/zone` label, if any), `targetRef`,
//!   and `hostname` for a pod whose `subdomain` is the Service;
//! - **slices**: grouped by the ports the Service's ports resolve to on each pod (named
//!   `targetPort`s are looked up per pod), at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each,
//!   named `<service>-<random>` (`generateName`), labelled `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io` (and the
//!   Service's own labels, and `service.kubernetes.io/headless` without a cluster IP), owned
//!   by the Service (the garbage collector deletes them with it), of `addressType` `IPv4`
//!   (see [`crate::services::families`]), annotated with
//!   `endpoints.kubernetes.io/last-change-trigger-time`;
//! - **little churn**, as kube's reconciler: endpoints stay in the slice they are in and are
//!   updated in place; a slice whose endpoints all went is deleted, or reused for a slice that
//!   would be created; new endpoints fill the slices being updated anyway, then the unchanged
//!   slice closest to full that can take them all, and only then new slices; a Service with
//!   no endpoints keeps one empty placeholder slice.
//!
//! A Service without a selector, or of type `ExternalName`, is left alone (its slices are the
//! user's, or the mirroring controller's in kube, which Wedge does not run). A pod on a node
//! that does not exist is left out (unless `publishNotReadyAddresses`) and the Service looked
//! at again, as kube does.
//!
//! **Expectations**: what a reconcile created, updated (the generation written) and deleted
//! is remembered, and the next reconcile of the Service waits until the slice store shows it
//! (kube's `EndpointSliceTracker`), so a stale store never makes a second slice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, WatchProgress, version_of};
use crate::services::{self, Family, Members, TriggerTimes};

/// kube-controller-manager's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The node label an endpoint's zone comes from.
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// How soon a Service waiting on something no event announces is looked at again.
const RECHECK: Duration = Duration::from_secs(1);
/// How many slices the slice store buffers for this controller.
const BURST: usize = crate::replicaset::BURST;

// ---------------------------------------------------------------------------------------------
// What to write: pure.

/// What a node is to an endpoint: missing, or present with its zone label (if any).
pub type NodeZone = Option<Option<String>>;

/// The writes that bring a Service's slices to what its pods say.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// Slices to create (named by `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Slices to replace, at the version read.
    pub update: Vec<EndpointSlice>,
    /// Slices to delete.
    pub delete: Vec<EndpointSlice>,
    /// Pods left out because their node does not exist.
    pub missing_nodes: Vec<String>,
}

/// A port list as a comparable key (sorted; no name is an empty name).
type PortsKey = Vec<(String, i32, String, String)>;

fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    let mut key: PortsKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
                p.app_protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    key.sort();
    key
}

/// The ports of a group of endpoints, and its endpoints.
type Group = (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>);

/// What identifies an endpoint (kube's `endpointHash`): its addresses, hostname and pod, so
/// that a change of conditions, node or zone is an update in place.
type EndpointKey = (Vec<String>, String, String, String);

fn endpoint_key(e: &Endpoint) -> EndpointKey {
    let mut addresses = e.addresses.clone();
    addresses.sort();
    let target = e.target_ref.as_ref();
    (
        addresses,
        e.hostname.clone().unwrap_or_default(),
        target.and_then(|t| t.namespace.clone()).unwrap_or_default(),
        target.and_then(|t| t.name.clone()).unwrap_or_default(),
    )
}

/// kube's `EndpointsEqualBeyondHash`: node, zone, conditions and pod (uid included).
fn equal_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    let target = |e: &Endpoint| {
        e.target_ref.as_ref().map(|t| {
            let mut t = t.clone();
            t.resource_version = None;
            t
        })
    };
    let conditions = |e: &Endpoint| e.conditions.clone().unwrap_or_default();
    a.node_name == b.node_name
        && a.zone == b.zone
        && conditions(a) == conditions(b)
        && target(a) == target(b)
}

/// The ports a pod's endpoint offers under the Service: kube's `getEndpointPorts`.
fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    ports
        .iter()
        .filter_map(|port| {
            let number = services::find_port(pod, port)?;
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                port: Some(number),
                protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint of `pod`: kube's `podToEndpoint`.
fn endpoint(pod: &Pod, zone: Option<String>, service: &Service, family: Family) -> Endpoint {
    let serving = services::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = services::publish_not_ready(service) || (serving && !terminating);
    Endpoint {
        addresses: services::pod_ips(pod)
            .iter()
            .filter(|ip| Family::of(ip) == family)
            .map(ToString::to_string)
            .collect(),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(services::target_ref(pod)),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        zone: zone.filter(|z| !z.is_empty()),
        hostname: services::hostname_for(pod, service),
        ..Endpoint::default()
    }
}

/// Whether `slice` is owned by `service`.
fn owned_by(slice: &EndpointSlice, service: &Service) -> bool {
    let uid = service.metadata.uid.as_deref();
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid && o.kind == "Service" && o.api_version == "v1")
}

/// kube's `setEndpointSliceLabels`: the labels the slice should have, and whether the
/// Service's own ones differ from the slice's.
fn slice_labels(slice: &EndpointSlice, service: &Service) -> (BTreeMap<String, String>, bool) {
    let reserved = |k: &String| k == SERVICE_NAME || k == MANAGED_BY || k == services::HEADLESS;
    let mine: BTreeMap<String, String> = slice
        .labels()
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut wanted: BTreeMap<String, String> = service
        .labels()
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let changed = mine != wanted;
    if !services::is_service_ip_set(service) {
        wanted.insert(services::HEADLESS.into(), String::new());
    }
    wanted.insert(SERVICE_NAME.into(), service.name_any());
    wanted.insert(MANAGED_BY.into(), CONTROLLER_NAME.into());
    (wanted, changed)
}

fn owner_reference(service: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: service.name_any(),
        uid: service.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new, empty slice of the Service (kube's `newEndpointSlice`).
fn new_slice(service: &Service, ports: Vec<EndpointPort>, family: Family) -> EndpointSlice {
    let mut slice = EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", service.name_any())),
            namespace: service.namespace(),
            owner_references: Some(vec![owner_reference(service)]),
            ..ObjectMeta::default()
        },
        address_type: family.as_str().into(),
        endpoints: Vec::new(),
        ports: Some(ports),
    };
    slice.metadata.labels = Some(slice_labels(&slice, service).0);
    slice
}

/// Whether `slice` is the placeholder the Service would get (no endpoints, no ports).
fn is_placeholder(slice: &EndpointSlice, service: &Service, family: Family) -> bool {
    let placeholder = new_slice(service, Vec::new(), family);
    slice.endpoints.is_empty()
        && slice.ports.as_ref().is_none_or(Vec::is_empty)
        && slice.address_type == family.as_str()
        && slice.metadata.namespace == placeholder.metadata.namespace
        && slice.labels() == placeholder.labels()
        && slice.metadata.owner_references == placeholder.metadata.owner_references
}

/// The slices of one Service and one family, after [`reconcile_ports`] per group of ports.
#[derive(Default)]
struct Changes {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<EndpointSlice>,
}

/// kube's `reconcileByPortMapping`: the changes that bring `existing` slices (of one group of
/// ports) to `desired` endpoints, moving as few endpoints as it can.
fn reconcile_ports(
    service: &Service,
    existing: &[Arc<EndpointSlice>],
    mut desired: BTreeMap<EndpointKey, Endpoint>,
    ports: &[EndpointPort],
    family: Family,
    max: usize,
) -> Changes {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();
    let mut to_delete: BTreeSet<String> = BTreeSet::new();

    // 1. Keep the endpoints still wanted where they are, updated; drop the others.
    for slice in existing {
        let name = slice.name_any();
        let mut kept = Vec::new();
        let mut changed = false;
        for e in &slice.endpoints {
            if let Some(want) = desired.remove(&endpoint_key(e)) {
                changed |= !equal_beyond_key(&want, e);
                kept.push(want);
            }
        }
        let (labels, labels_changed) = slice_labels(slice, service);
        if changed || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                to_delete.insert(name.clone());
                by_name.insert(name, (**slice).clone());
            } else {
                let mut copy = (**slice).clone();
                copy.endpoints = kept;
                copy.metadata.labels = Some(labels);
                by_name.insert(name.clone(), copy);
                to_update.insert(name);
            }
        } else if labels_changed {
            let mut copy = (**slice).clone();
            copy.metadata.labels = Some(labels);
            by_name.insert(name.clone(), copy);
            to_update.insert(name);
        } else {
            by_name.insert(name.clone(), (**slice).clone());
            unchanged.insert(name);
        }
    }

    // 2. Fill the slices being updated anyway, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut names: Vec<String> = to_update.iter().cloned().collect();
        names.sort_by_key(|n| std::cmp::Reverse(by_name.get(n).map_or(0, |s| s.endpoints.len())));
        for name in names {
            if let Some(slice) = by_name.get_mut(&name) {
                while slice.endpoints.len() < max {
                    let Some((_, e)) = desired.pop_first() else {
                        break;
                    };
                    slice.endpoints.push(e);
                }
            }
        }
    }

    // 3. The rest: into the unchanged slice closest to full that takes them all, else new ones.
    let mut create = Vec::new();
    while !desired.is_empty() {
        let fill = if desired.len() < max {
            unchanged
                .iter()
                .filter_map(|n| {
                    by_name
                        .get(n)
                        .map(|s| (n, max as i64 - (desired.len() + s.endpoints.len()) as i64))
                })
                .filter(|(_, room)| *room >= 0)
                .min_by_key(|(_, room)| *room)
                .map(|(n, _)| n.clone())
        } else {
            None
        };
        let mut slice = match fill.as_ref().and_then(|n| by_name.get(n)) {
            Some(s) => s.clone(),
            None => new_slice(service, ports.to_vec(), family),
        };
        while slice.endpoints.len() < max {
            let Some((_, e)) = desired.pop_first() else {
                break;
            };
            slice.endpoints.push(e);
        }
        match fill {
            Some(name) => {
                unchanged.remove(&name);
                to_update.insert(name.clone());
                by_name.insert(name, slice);
            }
            None => create.push(slice),
        }
    }
    let take = |names: &BTreeSet<String>| -> Vec<EndpointSlice> {
        names
            .iter()
            .filter_map(|n| by_name.get(n).cloned())
            .collect()
    };
    Changes {
        create,
        update: take(&to_update),
        delete: take(&to_delete),
    }
}

/// The writes that bring the slices `existing` (those this controller manages for the
/// Service, not being deleted) to what `pods` (those the selector selects) say: kube's
/// `Reconcile`. `node_zone` tells whether a node exists and its zone; `trigger` is this
/// sync's trigger time.
pub fn plan(
    service: &Service,
    pods: &[Arc<Pod>],
    node_zone: impl Fn(&str) -> NodeZone,
    existing: &[Arc<EndpointSlice>],
    max: usize,
    trigger: Option<jiff::Timestamp>,
) -> Plan {
    let max = max.max(1);
    let families = services::families(service);
    let mut out = Plan::default();
    let mut by_family: BTreeMap<Family, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in existing {
        match Family::parse(&slice.address_type).filter(|f| families.contains(f)) {
            Some(f) => by_family.entry(f).or_default().push(slice.clone()),
            None => out.delete.push((**slice).clone()),
        }
    }
    let publish = services::publish_not_ready(service);
    let mut missing: BTreeSet<String> = BTreeSet::new();
    for family in families {
        let existing = by_family.remove(&family).unwrap_or_default();
        let mut changes = Changes::default();
        let mut owned: BTreeMap<PortsKey, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in &existing {
            if owned_by(slice, service) {
                owned
                    .entry(ports_key(slice.ports.as_deref().unwrap_or_default()))
                    .or_default()
                    .push(slice.clone());
            } else {
                changes.delete.push((**slice).clone());
            }
        }
        // The endpoints wanted, by group of ports.
        let mut wanted: BTreeMap<PortsKey, Group> = BTreeMap::new();
        for pod in pods {
            if !services::should_be_in_endpoints(pod, true) {
                continue;
            }
            let ports = endpoint_ports(service, pod);
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default();
            let zone = match node_zone(node) {
                Some(zone) => zone,
                None if publish => None,
                None => {
                    missing.insert(pod.name_any());
                    continue;
                }
            };
            let e = endpoint(pod, zone, service, family);
            let group = wanted
                .entry(ports_key(&ports))
                .or_insert_with(|| (ports, BTreeMap::new()));
            if !e.addresses.is_empty() {
                group.1.insert(endpoint_key(&e), e);
            }
        }
        for (key, (ports, endpoints)) in &wanted {
            let slices = owned.get(key).cloned().unwrap_or_default();
            let c = reconcile_ports(service, &slices, endpoints.clone(), ports, family, max);
            changes.create.extend(c.create);
            changes.update.extend(c.update);
            changes.delete.extend(c.delete);
        }
        for (key, slices) in &owned {
            if !wanted.contains_key(key) {
                changes.delete.extend(slices.iter().map(|s| (**s).clone()));
            }
        }
        // No endpoints at all: one empty placeholder slice.
        if existing.len() == changes.delete.len() && changes.create.is_empty() {
            if changes.delete.len() == 1 && is_placeholder(&changes.delete[0], service, family) {
                changes.delete.clear();
            } else {
                changes.create.push(new_slice(service, Vec::new(), family));
            }
        }
        // kube's `finalize`: a slice to create replaces one to delete, as an update.
        let mut i = 0;
        while i < changes.delete.len() && !changes.create.is_empty() {
            let doomed = &changes.delete[i];
            if Family::parse(&doomed.address_type) == Some(family) && owned_by(doomed, service) {
                let doomed = changes.delete.remove(i);
                if let Some(mut slice) = changes.create.pop() {
                    slice.metadata.name = doomed.metadata.name.clone();
                    slice.metadata.resource_version = doomed.metadata.resource_version.clone();
                    slice.metadata.uid = doomed.metadata.uid.clone();
                    slice.metadata.annotations = doomed.metadata.annotations.clone();
                    changes.update.push(slice);
                }
            } else {
                i += 1;
            }
        }
        out.create.extend(changes.create);
        out.update.extend(changes.update);
        out.delete.extend(changes.delete);
    }
    // Creating slices for a Service being deleted would race the garbage collector.
    if service.metadata.deletion_timestamp.is_some() {
        out.create.clear();
    }
    for slice in out.create.iter_mut().chain(out.update.iter_mut()) {
        let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match trigger {
            Some(t) => annotations.insert(
                services::LAST_CHANGE_TRIGGER_TIME.into(),
                services::format_time(t),
            ),
            None => annotations.remove(services::LAST_CHANGE_TRIGGER_TIME),
        };
        if annotations.is_empty() {
            slice.metadata.annotations = None;
        }
        slice.metadata.managed_fields = None;
    }
    out.missing_nodes = missing.into_iter().collect();
    out
}

// ---------------------------------------------------------------------------------------------
// The controller.

/// What a reconcile wrote, which the slice store must show before the next one.
#[derive(Debug, Clone)]
struct Expectation {
    created: Vec<String>,
    /// The newest resourceVersion the creates were answered with.
    created_version: Option<u64>,
    /// Name → generation written.
    updated: Vec<(String, Option<i64>)>,
    deleted: Vec<String>,
}

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    /// How far the slice watch has brought the store.
    progress: WatchProgress,
    recorder: Recorder,
    triggers: TriggerTimes,
    members: Arc<Members>,
    max: usize,
    /// By (namespace, Service name).
    expectations: Expectations<(String, String), Expectation>,
}

impl Context {
    fn expectations_met(&self, key: &(String, String)) -> bool {
        self.expectations.met(key, |e| {
            let seen = |n: &String| self.slices.get(&ObjectRef::new(n).within(&key.0));
            // Created: shown, or created and deleted before the store showed it.
            let passed = self.progress.passed(e.created_version);
            e.created.iter().all(|n| passed || seen(n).is_some())
                && e.deleted.iter().all(|n| seen(n).is_none())
                && e.updated.iter().all(|(n, generation)| {
                    seen(n).is_none_or(|s| s.metadata.generation >= *generation)
                })
        })
    }

    fn expect(&self, key: (String, String), e: Expectation) {
        if e.created.is_empty() && e.updated.is_empty() && e.deleted.is_empty() {
            return;
        }
        self.expectations.expect(key, e);
    }

    fn node_zone(&self, name: &str) -> NodeZone {
        if name.is_empty() {
            return None;
        }
        let node = self.nodes.get(&ObjectRef::new(name))?;
        Some(node.labels().get(ZONE).cloned())
    }

    /// The slices this controller manages for the Service, not being deleted.
    fn slices_of(&self, namespace: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .filter(|s| s.labels().get(SERVICE_NAME).map(String::as_str) == Some(name))
            .filter(|s| s.labels().get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME))
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect()
    }
}

/// Runs the controller until `shutdown` resolves. `pods` and `nodes` are the shared stores and
/// `pod_changes` the pod store's subscription.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    nodes: Store<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (slices, slice_writer) = reflector::store();
    let progress = WatchProgress::default();
    let slice_changes = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER_NAME}")),
    )
    .default_backoff()
    .reflect(slice_writer)
    .inspect({
        let progress = progress.clone();
        move |event| {
            if let Ok(event) = event {
                progress.observe(event);
            }
        }
    })
    .touched_objects();
    let (services, service_changes, mut gone) = services::watch(client.clone());
    let members = Arc::new(Members::default());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "endpoint-slice-controller"),
        client: client.clone(),
        pods,
        nodes,
        slices,
        progress,
        triggers: TriggerTimes::default(),
        members: members.clone(),
        max: MAX_ENDPOINTS_PER_SLICE,
        expectations: Expectations::new("endpointslice"),
    });
    let mapper_services = services.clone();
    let controller = Controller::for_stream(service_changes, services)
        .watches_shared_stream(pod_changes, move |pod: Arc<Pod>| {
            members.services_for(&mapper_services, &pod)
        })
        .watches_stream(slice_changes, |slice: EndpointSlice| {
            let service = slice.labels().get(SERVICE_NAME)?.clone();
            Some(ObjectRef::<Service>::new(&service).within(&slice.namespace().unwrap_or_default()))
        })
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown);
    let forget = {
        let context = context.clone();
        async move {
            while let Some(service) = gone.recv().await {
                let (namespace, name) =
                    (service.namespace().unwrap_or_default(), service.name_any());
                context.triggers.forget(&namespace, &name);
                context.members.forget(&namespace, &name);
            }
        }
    };
    let controller = controller
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "endpointslice reconcile failed");
            }
            futures::future::ready(())
        });
    tokio::select! {
        () = controller => {}
        () = forget => {}
    }
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !services::managed(&service) {
        return Ok(Action::await_change());
    }
    // Stores still loading would drop endpoints for a moment. (Waited for here, not before
    // the controller runs: the controller keeps draining its subscription of the shared pod
    // stream meanwhile, which the stream needs to go on.)
    let loaded = ctx.pods.wait_until_ready().await.is_ok()
        && ctx.nodes.wait_until_ready().await.is_ok()
        && ctx.slices.wait_until_ready().await.is_ok();
    if !loaded {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let key = (namespace.clone(), name.clone());
    if !ctx.expectations_met(&key) {
        return Ok(Action::requeue(RECHECK));
    }
    let pods = services::selected_pods(&ctx.pods, &service);
    ctx.members.record(&namespace, &name, &pods);
    let trigger = ctx.triggers.compute(&service, &pods);
    let existing = ctx.slices_of(&namespace, &name);
    let plan = plan(
        &service,
        &pods,
        |node| ctx.node_zone(node),
        &existing,
        ctx.max,
        trigger,
    );
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut expectation = Expectation {
        created: Vec::new(),
        created_version: None,
        updated: Vec::new(),
        deleted: Vec::new(),
    };
    let result = write(&api, &plan, &mut expectation).await;
    ctx.expect(key, expectation);
    if let Err(e) = result {
        if crate::endpoints::namespace_terminating(&e) {
            return Ok(Action::await_change());
        }
        if matches!(&e, kube::Error::Api(s) if s.code == 409 || s.code == 404) {
            // The store is behind (a slice changed or deleted meanwhile): its events bring the
            // next look.
            return Ok(Action::requeue(RECHECK));
        }
        ctx.recorder.record(
            service.object_ref(&()),
            EventType::Warning,
            "FailedToUpdateEndpointSlices",
            &format!("Error updating Endpoint Slices for Service {namespace}/{name}: {e}"),
        );
        return Err(Error::api("update endpoint slices of", service.as_ref(), e));
    }
    if !plan.missing_nodes.is_empty() {
        tracing::info!(%namespace, service = %name, pods = ?plan.missing_nodes, "skipping pods whose node is not found");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    // Terminating pods go away without an event this controller sees.
    if pods.iter().any(|p| p.metadata.deletion_timestamp.is_some()) {
        return Ok(Action::requeue(RECHECK));
    }
    Ok(Action::await_change())
}

/// Creates, updates, then deletes what `plan` says, noting each done in `expectation`.
async fn write(
    api: &Api<EndpointSlice>,
    plan: &Plan,
    expectation: &mut Expectation,
) -> Result<(), kube::Error> {
    let created: Vec<Result<EndpointSlice, kube::Error>> =
        futures::stream::iter(plan.create.clone())
            .map(|slice| {
                let api = api.clone();
                async move { api.create(&PostParams::default(), &slice).await }
            })
            .buffer_unordered(BURST)
            .collect()
            .await;
    let updated: Vec<Result<EndpointSlice, kube::Error>> =
        futures::stream::iter(plan.update.clone())
            .map(|slice| {
                let api = api.clone();
                async move {
                    api.replace(&slice.name_any(), &PostParams::default(), &slice)
                        .await
                }
            })
            .buffer_unordered(BURST)
            .collect()
            .await;
    let mut failure = None;
    for r in created {
        match r {
            Ok(s) => {
                expectation.created_version =
                    expectation.created_version.max(version_of(&s.metadata));
                expectation.created.push(s.name_any());
            }
            Err(e) => failure = Some(e),
        }
    }
    for r in updated {
        match r {
            Ok(s) => expectation
                .updated
                .push((s.name_any(), s.metadata.generation)),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    for slice in &plan.delete {
        let name = slice.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => expectation.deleted.push(name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn error_policy(_service: Arc<Service>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "endpointslice reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn service(spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                         "labels": {"app": "web"}},
            "spec": spec,
        }))
        .expect("service")
    }

    fn web() -> Service {
        service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}))
    }

    fn pod(name: &str, ip: &str, ready: bool, port: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                             "labels": {"app": "web"}},
                "spec": {"nodeName": "edge-a", "containers": [{"name": "app",
                    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            }))
            .expect("pod"),
        )
    }

    fn pods(n: usize) -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 256, i % 256),
                    true,
                    8080,
                )
            })
            .collect()
    }

    fn zone_a(node: &str) -> NodeZone {
        (node == "edge-a").then(|| Some("zone-a".to_owned()))
    }

    /// What the API would store: the plan's writes applied to `existing`, names given.
    fn apply(existing: &[Arc<EndpointSlice>], plan: &Plan) -> Vec<Arc<EndpointSlice>> {
        let mut out: BTreeMap<String, EndpointSlice> = existing
            .iter()
            .map(|s| (s.name_any(), (**s).clone()))
            .collect();
        for s in &plan.delete {
            out.remove(&s.name_any());
        }
        for s in &plan.update {
            out.insert(s.name_any(), s.clone());
        }
        for (i, s) in plan.create.iter().enumerate() {
            let mut s = s.clone();
            let name = format!("web-new{}-{i}", out.len());
            s.metadata.name = Some(name.clone());
            out.insert(name, s);
        }
        out.into_values().map(Arc::new).collect()
    }

    fn names_in(slices: &[Arc<EndpointSlice>]) -> BTreeSet<String> {
        slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect()
    }

    #[test]
    fn a_service_gets_a_labelled_owned_slice_of_its_pods() {
        let p = plan(
            &web(),
            &[
                pod("a", "10.0.0.1", true, 8080),
                pod("b", "10.0.0.2", false, 8080),
            ],
            zone_a,
            &[],
            100,
            None,
        );
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 0, 0));
        let slice = &p.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.address_type, "IPv4");
        let labels = slice.labels();
        assert_eq!(labels.get(SERVICE_NAME).map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(MANAGED_BY).map(String::as_str),
            Some(CONTROLLER_NAME)
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let owner = &slice.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "svc-uid", Some(true))
        );
        let port = &slice.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080))
        );
        let b = slice
            .endpoints
            .iter()
            .find(|e| e.addresses == ["10.0.0.2"])
            .expect("b");
        let c = b.conditions.clone().expect("conditions");
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(false), Some(false))
        );
        assert_eq!(b.zone.as_deref(), Some("zone-a"));
        assert_eq!(b.node_name.as_deref(), Some("edge-a"));
    }

    #[test]
    fn terminating_pods_stay_as_terminating_and_missing_nodes_are_skipped() {
        let mut going = (*pod("a", "10.0.0.1", true, 8080)).clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().expect("time"),
            ));
        let mut elsewhere = (*pod("b", "10.0.0.2", true, 8080)).clone();
        if let Some(s) = elsewhere.spec.as_mut() {
            s.node_name = Some("gone".into());
        }
        let p = plan(
            &web(),
            &[Arc::new(going), Arc::new(elsewhere)],
            zone_a,
            &[],
            100,
            None,
        );
        assert_eq!(p.missing_nodes, ["b"]);
        let e = &p.create[0].endpoints;
        assert_eq!(e.len(), 1);
        let c = e[0].conditions.clone().expect("conditions");
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
    }

    #[test]
    fn at_most_a_hundred_endpoints_per_slice() {
        let p = plan(&web(), &pods(250), zone_a, &[], 100, None);
        let sizes: Vec<usize> = p.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn an_unchanged_service_writes_nothing() {
        let all = pods(150);
        let first = apply(&[], &plan(&web(), &all, zone_a, &[], 100, None));
        let again = plan(&web(), &all, zone_a, &first, 100, None);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
    }

    #[test]
    fn changes_touch_only_the_slices_they_concern() {
        let all = pods(150);
        let first = apply(&[], &plan(&web(), &all, zone_a, &[], 100, None));
        // One pod turns unready: its slice is updated in place, the other left alone.
        let mut changed = all.clone();
        changed[3] = pod("p3", "10.0.0.3", false, 8080);
        let p = plan(&web(), &changed, zone_a, &first, 100, None);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        let second = apply(&first, &p);
        assert_eq!(names_in(&second).len(), 150);
        // Ten pods of one slice go and three come: the three fill the slice that lost pods.
        let leaving: BTreeSet<String> = names_in(&second[..1]).into_iter().take(10).collect();
        let mut next: Vec<Arc<Pod>> = changed
            .iter()
            .filter(|p| !leaving.contains(&p.name_any()))
            .cloned()
            .collect();
        next.extend((0..3).map(|i| pod(&format!("n{i}"), &format!("10.1.0.{i}"), true, 8080)));
        let p = plan(&web(), &next, zone_a, &second, 100, None);
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 1, 0),
            "{p:?}"
        );
        let third = apply(&second, &p);
        assert_eq!(names_in(&third).len(), 143);
        // New pods that fit go into the unchanged slice closest to full.
        let mut more = next.clone();
        more.extend((0..5).map(|i| pod(&format!("m{i}"), &format!("10.2.0.{i}"), true, 8080)));
        let p = plan(&web(), &more, zone_a, &third, 100, None);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert_eq!(names_in(&apply(&third, &p)).len(), 148);
    }

    #[test]
    fn a_service_without_endpoints_keeps_one_placeholder() {
        let p = plan(&web(), &[], zone_a, &[], 100, None);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
        let stored = apply(&[], &p);
        let again = plan(&web(), &[], zone_a, &stored, 100, None);
        assert!(
            again.create.is_empty() && again.update.is_empty() && again.delete.is_empty(),
            "{again:?}"
        );
        // Pods come: the placeholder is reused, not deleted and made again.
        let p = plan(&web(), &pods(2), zone_a, &stored, 100, None);
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 1, 0),
            "{p:?}"
        );
        // And all go: back to a placeholder, in the same slice.
        let full = apply(&stored, &p);
        let p = plan(&web(), &[], zone_a, &full, 100, None);
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 1, 0),
            "{p:?}"
        );
        assert!(p.update[0].endpoints.is_empty());
    }

    #[test]
    fn pods_with_other_ports_get_other_slices_and_slices_of_others_go() {
        let mixed = [
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", true, 9090),
        ];
        let p = plan(&web(), &mixed, zone_a, &[], 100, None);
        assert_eq!(p.create.len(), 2);
        let mut foreign = p.create[0].clone();
        foreign.metadata.name = Some("web-old".into());
        if let Some(o) = foreign.metadata.owner_references.as_mut() {
            o[0].uid = "an-earlier-service".into();
        }
        let p = plan(&web(), &mixed, zone_a, &[Arc::new(foreign)], 100, None);
        // The stale slice is reused only if owned; here it is another Service's: deleted.
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.create.len(), 2);
    }

    #[test]
    fn the_trigger_time_is_written_on_each_write() {
        let t: jiff::Timestamp = "2026-01-01T00:00:30.5Z".parse().expect("time");
        let p = plan(&web(), &pods(1), zone_a, &[], 100, Some(t));
        assert_eq!(
            p.create[0]
                .annotations()
                .get(services::LAST_CHANGE_TRIGGER_TIME)
                .map(String::as_str),
            Some("2026-01-01T00:00:30.5Z")
        );
    }
}
