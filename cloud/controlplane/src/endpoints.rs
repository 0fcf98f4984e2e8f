//! The Endpoints controller: for every Service with a selector, an `Endpoints` object of the
//! same name listing the addresses of the pods it selects, as kube-controller-manager's
//! endpoints controller does (v1.33, `pkg/controller/endpoint`).
//!
//! What a reconcile writes is one pure function, [`desired`], from the Service and its pods:
//!
//! - **which pods**: those the selector selects in the Service's namespace that have not
//!   finished, have an IP, and are not being deleted (being deleted too with
//!   `publishNotReadyAddresses`);
//! - **where**: Ready pods' addresses in `addresses`, the others' in `notReadyAddresses` (all
//!   in `addresses` with `publishNotReadyAddresses`); an address is the pod's IP of the
//!   Service's family (its `ipFamilies`, else its cluster IP's, else the pod's own), with
//!   `nodeName`, `targetRef` and, for a pod whose `subdomain` is the Service, its `hostname`;
//! - **ports**: each Service port's `targetPort` resolved on each pod (a name against the
//!   pods' container ports of the same protocol, [`crate::services::find_port`]); a pod
//!   offering none of a port is not listed under it; subsets are repacked as kube's
//!   `RepackSubsets` packs them (addresses with the same ports together, one address per IP
//!   and pod, not-ready winning), sorted so that equal contents compare equal. A headless
//!   Service without ports lists its pods' addresses with no ports;
//! - **metadata**: the Service's labels, plus `service.kubernetes.io/headless` when it has no
//!   cluster IP; `endpoints.kubernetes.io/last-change-trigger-time` (see
//!   [`crate::services::TriggerTimes`]); more than 1000 addresses are truncated, ready ones
//!   kept first, each subset keeping its share, and annotated
//!   `endpoints.kubernetes.io/over-capacity: truncated`.
//!
//! Nothing is written when the addresses, ports and labels are as stored. A Service without a
//! selector (its Endpoints are the user's) or of type `ExternalName` is left alone, as is what
//! it had. A deleted Service takes its Endpoints with it (deleted directly, as kube does: they
//! have no owner); at start, Endpoints whose Service is gone are deleted too (kube's
//! `checkLeftoverEndpoints`), but for leader-election records.
//!
//! **Expectations**: after a write, the Endpoints' replaced resourceVersion (or their absence,
//! after a create) is remembered; a reconcile that still sees it in the store waits for the
//! watch to bring the write (as kube's `staleEndpointsTracker` makes it), instead of writing
//! from a stale copy.
//!
//! Pods are read from the shared pod store; a pod's change wakes the Services that select it
//! and those it was in ([`crate::services::Members`]), deletions included.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, WatchProgress, version_of};
use crate::services::{self, Family, Members, TriggerTimes};

/// How many addresses Endpoints hold at most (kube's `maxCapacity`).
pub const MAX_CAPACITY: usize = 1000;
/// The annotation of truncated Endpoints.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// The annotation of leader-election records kept in Endpoints, which have no Service.
const LEADER_RECORD: &str = "control-plane.alpha.kubernetes.io/leader";
/// How soon a Service waiting on something no event announces is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// What to write: pure.

/// An address of a pod under one port (or none), ready or not, before repacking.
#[derive(Debug, Clone)]
struct Entry {
    address: EndpointAddress,
    ready: bool,
    port: Option<EndpointPort>,
}

/// The IP of `pod` the Endpoints of `service` list: kube's `podToEndpointAddressForService`.
fn address_ip(service: &Service, pod: &Pod) -> Option<IpAddr> {
    let ips = services::pod_ips(pod);
    let spec = service.spec.as_ref();
    let family = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
        .and_then(|f| Family::parse(f))
        .or_else(|| {
            services::is_service_ip_set(service)
                .then(|| services::families(service).into_iter().next())
                .flatten()
        })
        .or_else(|| ips.first().map(Family::of))?;
    ips.into_iter().find(|ip| Family::of(ip) == family)
}

/// The address of `pod` in the Endpoints of `service`, if it belongs there.
fn address(service: &Service, pod: &Pod) -> Option<EndpointAddress> {
    if !services::should_be_in_endpoints(pod, services::publish_not_ready(service)) {
        return None;
    }
    let ip = address_ip(service, pod)?;
    Some(EndpointAddress {
        ip: ip.to_string(),
        hostname: services::hostname_for(pod, service),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(services::target_ref(pod)),
    })
}

/// A port as a comparable key.
type PortKey = (String, i32, String, String);

fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_default(),
        p.app_protocol.clone().unwrap_or_default(),
    )
}

/// A port (none: a headless Service without ports) and each address under it, ready or not.
type PortAddresses = (Option<EndpointPort>, BTreeMap<AddressKey, bool>);

/// An address as a key: IP and pod uid (pods sharing their node's IP, as Wasm pods do, stay
/// apart).
type AddressKey = (String, String);

fn address_key(a: &EndpointAddress) -> AddressKey {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|t| t.uid.clone())
            .unwrap_or_default(),
    )
}

/// The subsets of the Endpoints of `service` with `pods` (any the selector selects): kube's
/// `syncService` computation and `RepackSubsets`, before truncation.
pub fn desired(service: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let tolerate = services::publish_not_ready(service);
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut entries = Vec::new();
    for pod in pods {
        let Some(address) = address(service, pod) else {
            continue;
        };
        let ready = tolerate || services::is_ready(pod);
        if ports.is_empty() {
            if services::headless_without_ports(service) {
                entries.push(Entry {
                    address,
                    ready,
                    port: None,
                });
            }
            continue;
        }
        for port in &ports {
            let Some(number) = services::find_port(pod, port) else {
                tracing::debug!(pod = %pod.name_any(), service = %service.name_any(), port = port.port, "pod offers no port for the service's");
                continue;
            };
            entries.push(Entry {
                address: address.clone(),
                ready,
                port: Some(EndpointPort {
                    name: port.name.clone(),
                    port: number,
                    protocol: port.protocol.clone(),
                    app_protocol: port.app_protocol.clone(),
                }),
            });
        }
    }
    repack(entries)
}

/// kube's `RepackSubsets`: addresses grouped by the set of ports they offer, each address once
/// per port (by IP and pod), not ready when any entry says so; sorted. Entries without a port
/// (a headless Service without ports) make one subset of their own.
fn repack(entries: Vec<Entry>) -> Vec<EndpointSubset> {
    let mut addresses: BTreeMap<AddressKey, EndpointAddress> = BTreeMap::new();
    // Port (or none) → address → ready.
    let mut by_port: BTreeMap<Option<PortKey>, PortAddresses> = BTreeMap::new();
    for e in entries {
        let key = address_key(&e.address);
        addresses.entry(key.clone()).or_insert(e.address);
        let slot = by_port
            .entry(e.port.as_ref().map(port_key))
            .or_insert_with(|| (e.port.clone(), BTreeMap::new()));
        let ready = slot.1.entry(key).or_insert(e.ready);
        *ready = *ready && e.ready;
    }
    // Address sets → the ports offering exactly them.
    let mut by_set: BTreeMap<Vec<(AddressKey, bool)>, Vec<EndpointPort>> = BTreeMap::new();
    let mut portless = None;
    for (key, (port, set)) in by_port {
        let set: Vec<(AddressKey, bool)> = set.into_iter().collect();
        match (key, port) {
            (Some(_), Some(port)) => by_set.entry(set).or_default().push(port),
            _ => portless = Some(set),
        }
    }
    let subset = |set: Vec<(AddressKey, bool)>, ports: Vec<EndpointPort>| {
        let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
        for (key, is_ready) in set {
            if let Some(a) = addresses.get(&key) {
                if is_ready {
                    ready.push(a.clone());
                } else {
                    not_ready.push(a.clone());
                }
            }
        }
        EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        }
    };
    let mut out: Vec<EndpointSubset> = by_set
        .into_iter()
        .map(|(set, mut ports)| {
            ports.sort_by_key(port_key);
            subset(set, ports)
        })
        .collect();
    out.sort_by_key(|s| s.ports.iter().flatten().map(port_key).collect::<Vec<_>>());
    if let Some(set) = portless {
        out.push(subset(set, Vec::new()));
    }
    out
}

/// kube's `truncateEndpoints`: at most [`MAX_CAPACITY`] addresses, ready ones first, each
/// subset keeping its share (rounded up). Whether anything was cut.
pub fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let count = |s: &EndpointSubset| {
        (
            s.addresses.as_ref().map_or(0, Vec::len),
            s.not_ready_addresses.as_ref().map_or(0, Vec::len),
        )
    };
    let (ready, not_ready) = subsets
        .iter()
        .map(count)
        .fold((0, 0), |(a, b), (r, n)| (a + r, b + n));
    if ready + not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = ready > MAX_CAPACITY;
    let (max, total) = if truncate_ready {
        (MAX_CAPACITY, ready)
    } else {
        (MAX_CAPACITY - ready, not_ready)
    };
    let mut room = max;
    for subset in subsets.iter_mut() {
        let (r, n) = count(subset);
        let mine = if truncate_ready { r } else { n };
        let share = (mine * max).div_ceil(total.max(1)).min(room);
        if truncate_ready {
            if let Some(a) = subset.addresses.as_mut() {
                a.truncate(share);
            }
            subset.not_ready_addresses = None;
            room -= subset.addresses.as_ref().map_or(0, Vec::len);
        } else {
            if let Some(a) = subset.not_ready_addresses.as_mut() {
                a.truncate(share);
            }
            room -= subset.not_ready_addresses.as_ref().map_or(0, Vec::len);
        }
    }
    true
}

/// Subsets as compared: empty lists as none, and no `resourceVersion` in target references
/// (a pod's update that changes nothing here writes nothing).
fn normalized(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    let clean = |list: &Option<Vec<EndpointAddress>>| {
        list.as_ref().filter(|l| !l.is_empty()).map(|l| {
            l.iter()
                .cloned()
                .map(|mut a| {
                    if let Some(t) = a.target_ref.as_mut() {
                        t.resource_version = None;
                    }
                    a
                })
                .collect()
        })
    };
    subsets
        .iter()
        .map(|s| EndpointSubset {
            addresses: clean(&s.addresses),
            not_ready_addresses: clean(&s.not_ready_addresses),
            ports: s.ports.clone().filter(|p| !p.is_empty()),
        })
        .collect()
}

/// The Endpoints to write for `service` with `pods`, given what is stored (`current`), or
/// `None` when what is stored is right. `trigger` is this sync's trigger time.
pub fn plan(
    service: &Service,
    pods: &[Arc<Pod>],
    current: Option<&Endpoints>,
    trigger: Option<jiff::Timestamp>,
) -> Option<Endpoints> {
    let mut subsets = desired(service, pods);
    let truncated = truncate(&mut subsets);
    let labels = services::inherited_labels(service);
    if let Some(current) = current {
        let mut stored_labels = current.labels().clone();
        stored_labels.remove(services::HEADLESS);
        let mut wanted_labels = labels.clone();
        wanted_labels.remove(services::HEADLESS);
        let same_subsets =
            normalized(current.subsets.as_deref().unwrap_or_default()) == normalized(&subsets);
        let capacity_noted = current.annotations().contains_key(OVER_CAPACITY);
        if same_subsets && stored_labels == wanted_labels && capacity_noted == truncated {
            return None;
        }
    }
    let mut meta = current.map(|c| c.metadata.clone()).unwrap_or(ObjectMeta {
        name: service.metadata.name.clone(),
        namespace: service.metadata.namespace.clone(),
        ..ObjectMeta::default()
    });
    meta.labels = Some(labels);
    let mut annotations = meta.annotations.take().unwrap_or_default();
    match trigger {
        Some(t) => annotations.insert(
            services::LAST_CHANGE_TRIGGER_TIME.into(),
            services::format_time(t),
        ),
        None => annotations.remove(services::LAST_CHANGE_TRIGGER_TIME),
    };
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY);
    }
    meta.annotations = (!annotations.is_empty()).then_some(annotations);
    meta.managed_fields = None;
    Some(Endpoints {
        metadata: meta,
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

// ---------------------------------------------------------------------------------------------
// The controller.

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    recorder: Recorder,
    triggers: TriggerTimes,
    members: Arc<Members>,
    /// What each Service's last write replaced and wrote, by (namespace, name).
    written: Expectations<(String, String), Written>,
    /// How far the Endpoints watch has brought the store.
    progress: WatchProgress,
}

/// One write of a Service's Endpoints, as the next reconcile waits for it in the store.
struct Written {
    /// The resourceVersion it replaced (none: it created).
    replaced: Option<String>,
    /// The resourceVersion it was answered with.
    version: Option<u64>,
}

impl Context {
    /// Whether the store shows the last write for the Service (or it is too old to wait for).
    fn caught_up(&self, key: &(String, String), stored: Option<&Endpoints>) -> bool {
        self.written.met(key, |w| match (&w.replaced, stored) {
            // Created: shown, or created and deleted before the store showed it.
            (None, None) => self.progress.passed(w.version),
            (Some(old), Some(s)) => s.metadata.resource_version.as_ref() != Some(old),
            _ => true,
        })
    }

    fn wrote(&self, key: (String, String), written: Written) {
        self.written.expect(key, written);
    }
}

/// Runs the controller until `shutdown` resolves. `pods` is the shared pod store and
/// `pod_changes` its subscription.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (endpoints, ep_writer) = reflector::store();
    let progress = WatchProgress::default();
    let endpoint_changes = watcher(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(ep_writer)
    .inspect({
        let progress = progress.clone();
        move |event| {
            if let Ok(event) = event {
                progress.observe(event);
            }
        }
    })
    .touched_objects();
    let (services, service_changes, gone_rx) = services::watch(client.clone());
    let members = Arc::new(Members::default());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "endpoint-controller"),
        client: client.clone(),
        pods,
        endpoints,
        triggers: TriggerTimes::default(),
        members: members.clone(),
        written: Expectations::new("endpoints"),
        progress,
    });
    let mapper_services = services.clone();
    let controller = Controller::for_stream(service_changes, services.clone())
        .watches_shared_stream(pod_changes, move |pod: Arc<Pod>| {
            members.services_for(&mapper_services, &pod)
        })
        .watches_stream(endpoint_changes, |ep: Endpoints| {
            Some(
                ObjectRef::<Service>::new(&ep.name_any())
                    .within(&ep.namespace().unwrap_or_default()),
            )
        })
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown);
    let sweeper = sweep(context.clone(), services, gone_rx);
    let controller = controller
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "endpoints reconcile failed");
            }
            futures::future::ready(())
        });
    tokio::select! {
        () = controller => {}
        () = sweeper => {}
    }
}

/// Deletes the Endpoints of deleted Services, and at start those whose Service is gone.
async fn sweep(
    ctx: Arc<Context>,
    services: Store<Service>,
    mut gone: tokio::sync::mpsc::UnboundedReceiver<Service>,
) {
    if services.wait_until_ready().await.is_ok() && ctx.endpoints.wait_until_ready().await.is_ok() {
        for ep in ctx.endpoints.state() {
            let key = ObjectRef::<Service>::new(&ep.name_any())
                .within(&ep.namespace().unwrap_or_default());
            if services.get(&key).is_none() && !ep.annotations().contains_key(LEADER_RECORD) {
                delete(
                    &ctx,
                    &ep.namespace().unwrap_or_default(),
                    &ep.name_any(),
                    ep.uid(),
                )
                .await;
            }
        }
    }
    while let Some(service) = gone.recv().await {
        let (namespace, name) = (service.namespace().unwrap_or_default(), service.name_any());
        ctx.triggers.forget(&namespace, &name);
        ctx.members.forget(&namespace, &name);
        let key = ObjectRef::<Endpoints>::new(&name).within(&namespace);
        if let Some(ep) = ctx.endpoints.get(&key) {
            delete(&ctx, &namespace, &name, ep.uid()).await;
        }
    }
}

/// Deletes Endpoints, only those with `uid` (a Service and Endpoints made again meanwhile
/// stay).
async fn delete(ctx: &Context, namespace: &str, name: &str, uid: Option<String>) {
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match Api::<Endpoints>::namespaced(ctx.client.clone(), namespace)
        .delete(name, &params)
        .await
    {
        Ok(_) => {
            tracing::info!(%namespace, endpoints = name, "deleted the endpoints of a deleted service")
        }
        Err(e) if Error::is_gone_or_conflict(&e) => {}
        Err(error) => {
            tracing::warn!(%namespace, endpoints = name, %error, "could not delete the endpoints of a deleted service");
        }
    }
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !services::managed(&service) {
        return Ok(Action::await_change());
    }
    // A pod store still loading would empty every Endpoints for a moment. (Waited for here,
    // not before the controller runs: the controller keeps draining its subscription of the
    // shared pod stream meanwhile, which the stream needs to go on.)
    if ctx.pods.wait_until_ready().await.is_err() || ctx.endpoints.wait_until_ready().await.is_err()
    {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let key = (namespace.clone(), name.clone());
    let stored = ctx.endpoints.get(&ObjectRef::new(&name).within(&namespace));
    if !ctx.caught_up(&key, stored.as_deref()) {
        return Ok(Action::requeue(RECHECK));
    }
    let pods = services::selected_pods(&ctx.pods, &service);
    ctx.members.record(&namespace, &name, &pods);
    let trigger = ctx.triggers.compute(&service, &pods);
    let Some(endpoints) = plan(&service, &pods, stored.as_deref(), trigger) else {
        return Ok(Action::await_change());
    };
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &namespace);
    let (result, verb, reason) = match stored.as_deref() {
        None => (
            api.create(&PostParams::default(), &endpoints).await,
            "create",
            "FailedToCreateEndpoint",
        ),
        Some(_) => (
            api.replace(&name, &PostParams::default(), &endpoints).await,
            "update",
            "FailedToUpdateEndpoint",
        ),
    };
    match result {
        Ok(written) => {
            tracing::debug!(%namespace, service = %name, resource_version = ?written.metadata.resource_version, "wrote endpoints");
            let replaced = stored.and_then(|s| s.metadata.resource_version.clone());
            if written.metadata.resource_version != replaced {
                let version = version_of(&written.metadata);
                ctx.wrote(key, Written { replaced, version });
            }
            Ok(Action::await_change())
        }
        // The store is behind (made, changed or deleted meanwhile): its event brings the next
        // look.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::requeue(RECHECK)),
        Err(e) if namespace_terminating(&e) => Ok(Action::await_change()),
        Err(e) => {
            let message = if verb == "create" {
                format!("Failed to create endpoint for service {namespace}/{name}: {e}")
            } else {
                format!("Failed to update endpoint {namespace}/{name}: {e}")
            };
            ctx.recorder.record(
                endpoints_ref(&endpoints),
                EventType::Warning,
                reason,
                &message,
            );
            Err(Error::api(
                if verb == "create" {
                    "create endpoints for"
                } else {
                    "update endpoints of"
                },
                service.as_ref(),
                e,
            ))
        }
    }
}

/// Whether the API refused a write because the namespace is being deleted.
pub(crate) fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
}

fn endpoints_ref(endpoints: &Endpoints) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Endpoints".into()),
        name: endpoints.metadata.name.clone(),
        namespace: endpoints.metadata.namespace.clone(),
        uid: endpoints.metadata.uid.clone(),
        ..Default::default()
    }
}

fn error_policy(_service: Arc<Service>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "endpoints reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The addresses (IP and pod name) in `subsets`, ready and not, for tests and logs.
pub fn addresses(subsets: &[EndpointSubset]) -> (BTreeSet<String>, BTreeSet<String>) {
    let names = |list: &Option<Vec<EndpointAddress>>| -> BTreeSet<String> {
        list.iter()
            .flatten()
            .map(|a| {
                let pod = a
                    .target_ref
                    .as_ref()
                    .and_then(|t| t.name.clone())
                    .unwrap_or_default();
                format!("{} {pod}", a.ip)
            })
            .collect()
    };
    subsets.iter().fold(
        (BTreeSet::new(), BTreeSet::new()),
        |(mut ready, mut not_ready), s| {
            ready.extend(names(&s.addresses));
            not_ready.extend(names(&s.not_ready_addresses));
            (ready, not_ready)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn service(spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
        }))
        .expect("service")
    }

    /// A pod `name` at `ip` on `node`, Ready or not, with an `http` port 8080 (or `port`).
    fn pod(name: &str, ip: &str, ready: bool, port: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                             "labels": {"app": "web"}},
                "spec": {"nodeName": "edge-a", "containers": [{"name": "app",
                    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                                    "lastTransitionTime": "2026-01-01T00:00:10Z"}]},
            }))
            .expect("pod"),
        )
    }

    fn web() -> Service {
        service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}))
    }

    #[test]
    fn ready_pods_are_addresses_and_the_others_not_ready() {
        let pods = [
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", false, 8080),
            pod("c", "10.0.0.3", true, 8080),
        ];
        let subsets = desired(&web(), &pods);
        assert_eq!(subsets.len(), 1, "{subsets:?}");
        let (ready, not_ready) = addresses(&subsets);
        assert_eq!(
            ready.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1 a", "10.0.0.3 c"]
        );
        assert_eq!(not_ready.into_iter().collect::<Vec<_>>(), ["10.0.0.2 b"]);
        let port = &subsets[0].ports.as_ref().expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
        let a = &subsets[0].addresses.as_ref().expect("addresses")[0];
        assert_eq!(a.node_name.as_deref(), Some("edge-a"));
        let target = a.target_ref.as_ref().expect("targetRef");
        assert_eq!(
            (target.kind.as_deref(), target.uid.as_deref()),
            (Some("Pod"), Some("uid-a"))
        );

        // publishNotReadyAddresses: every pod is an address.
        let mut publish = web();
        if let Some(spec) = publish.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        let (ready, not_ready) = addresses(&desired(&publish, &pods));
        assert_eq!(ready.len(), 3);
        assert!(not_ready.is_empty());
    }

    #[test]
    fn pods_resolving_a_named_port_differently_get_subsets_of_their_own() {
        let pods = [
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", true, 9090),
            pod("c", "10.0.0.3", true, 8080),
        ];
        let subsets = desired(&web(), &pods);
        let summary: Vec<(i32, usize)> = subsets
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().expect("ports")[0].port,
                    s.addresses.as_ref().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(summary, [(8080, 2), (9090, 1)]);
    }

    #[test]
    fn pods_sharing_their_nodes_ip_are_listed_apart() {
        // Wasm pods report their node's IP.
        let pods = [
            pod("a", "192.168.1.5", true, 8080),
            pod("b", "192.168.1.5", true, 8080),
        ];
        let (ready, _) = addresses(&desired(&web(), &pods));
        assert_eq!(
            ready.into_iter().collect::<Vec<_>>(),
            ["192.168.1.5 a", "192.168.1.5 b"]
        );
    }

    #[test]
    fn headless_services_without_ports_list_addresses_and_hostnames() {
        let svc = service(json!({"clusterIP": "None", "selector": {"app": "web"}}));
        let mut p = (*pod("web-0", "10.0.0.1", true, 8080)).clone();
        if let Some(spec) = p.spec.as_mut() {
            spec.hostname = Some("web-0".into());
            spec.subdomain = Some("web".into());
        }
        let subsets = desired(&svc, &[Arc::new(p)]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        let a = &subsets[0].addresses.as_ref().expect("addresses")[0];
        assert_eq!(a.hostname.as_deref(), Some("web-0"));
        let planned = plan(&svc, &[], None, None).expect("created");
        assert_eq!(
            planned.labels().get(services::HEADLESS).map(String::as_str),
            Some("")
        );
        // A Service with a cluster IP and no ports has no endpoints.
        let plain = service(json!({"selector": {"app": "web"}}));
        assert!(desired(&plain, &[pod("a", "10.0.0.1", true, 80)]).is_empty());
    }

    #[test]
    fn an_unchanged_service_writes_nothing_and_a_change_is_written() {
        let pods = vec![pod("a", "10.0.0.1", true, 8080)];
        let first = plan(&web(), &pods, None, None).expect("created");
        assert_eq!(first.metadata.name.as_deref(), Some("web"));
        assert_eq!(first.labels().get("app").map(String::as_str), Some("web"));
        assert!(plan(&web(), &pods, Some(&first), None).is_none());
        let t = "2026-01-01T00:00:30Z".parse().expect("time");
        let more = vec![pods[0].clone(), pod("b", "10.0.0.2", true, 8080)];
        let second = plan(&web(), &more, Some(&first), Some(t)).expect("updated");
        assert_eq!(
            second
                .annotations()
                .get(services::LAST_CHANGE_TRIGGER_TIME)
                .map(String::as_str),
            Some("2026-01-01T00:00:30Z")
        );
        // Without a trigger time the annotation goes.
        let third = plan(&web(), &pods, Some(&second), None).expect("updated");
        assert!(
            !third
                .annotations()
                .contains_key(services::LAST_CHANGE_TRIGGER_TIME)
        );
    }

    #[test]
    fn more_than_a_thousand_addresses_are_truncated_ready_first() {
        let pods: Vec<Arc<Pod>> = (0..1200)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                    i < 900,
                    8080,
                )
            })
            .collect();
        let planned = plan(&web(), &pods, None, None).expect("created");
        let subsets = planned.subsets.clone().unwrap_or_default();
        let (ready, not_ready) = addresses(&subsets);
        assert_eq!((ready.len(), not_ready.len()), (900, 100));
        assert_eq!(
            planned.annotations().get(OVER_CAPACITY).map(String::as_str),
            Some("truncated")
        );
        // Stored as planned: nothing to write.
        assert!(plan(&web(), &pods, Some(&planned), None).is_none());
    }

    #[test]
    fn finished_pods_and_pods_without_an_ip_are_left_out() {
        let mut done = (*pod("done", "10.0.0.9", false, 8080)).clone();
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        let mut pending = (*pod("pending", "10.0.0.8", false, 8080)).clone();
        if let Some(s) = pending.status.as_mut() {
            s.pod_ip = None;
            s.pod_ips = None;
        }
        assert!(desired(&web(), &[Arc::new(done), Arc::new(pending)]).is_empty());
    }
}
