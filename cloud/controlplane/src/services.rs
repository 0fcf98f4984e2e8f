//! What the Endpoints ([`crate::endpoints`]) and EndpointSlice ([`crate::endpointslice`])
//! controllers share: which pods a Service selects and which of them belong in its endpoints,
//! a pod's addresses of one IP family, the port a Service port reaches on a pod, the
//! `endpoints.kubernetes.io/last-change-trigger-time` each write carries, and which Services a
//! pod change concerns. As kube-controller-manager's `k8s.io/endpointslice/util` (v1.33),
//! without I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

/// The annotation with the time of the change (a pod's readiness, a Service's creation) that
/// led to a write of Endpoints or EndpointSlices.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The label of Endpoints and EndpointSlices of a Service without a cluster IP.
pub const HEADLESS: &str = "service.kubernetes.io/headless";

/// An IP family, as a Service's `ipFamilies` and an EndpointSlice's `addressType` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// From `ipFamilies` or `addressType` (`IPv4`, `IPv6`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }

    /// `IPv4` or `IPv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// The Service's selector, if it has one (`None`: the Service's endpoints are the user's). An
/// empty one counts as none: kube-apiserver drops an empty `selector: {}` when it stores the
/// Service, so kube-controller-manager never sees one.
pub fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// Whether the controllers act on the Service: it has a selector and is not `ExternalName`.
pub fn managed(service: &Service) -> bool {
    let external = service
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "ExternalName");
    !external && selector(service).is_some()
}

/// Whether a selector (a Service's: labels that must all be equal) selects `labels`. An empty
/// one selects every pod, as in Kubernetes.
pub fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pods in the Service's namespace its selector selects, in any phase.
pub fn selected_pods(pods: &Store<Pod>, service: &Service) -> Vec<Arc<Pod>> {
    let Some(selector) = selector(service) else {
        return Vec::new();
    };
    let namespace = service.namespace();
    pods.state()
        .into_iter()
        .filter(|p| p.metadata.namespace == namespace)
        .filter(|p| selects(selector, p.metadata.labels.as_ref()))
        .collect()
}

/// `publishNotReadyAddresses`.
pub fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// Whether the Service has a cluster IP (not headless).
pub fn is_service_ip_set(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// Headless (`clusterIP: None`) and without ports: endpoints carry addresses only.
pub fn headless_without_ports(service: &Service) -> bool {
    let spec = service.spec.as_ref();
    let no_ports = spec
        .and_then(|s| s.ports.as_ref())
        .is_none_or(Vec::is_empty);
    no_ports && spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The families the Service's endpoints are of: its `ipFamilies`, else its cluster IP's. Both
/// API servers fill `ipFamilies` (Wedge's since it allocates cluster IPs); a Service stored
/// without them (by an older Wedge) would get slices of both families from
/// kube-controller-manager (as for a headless Service on an old API server). Wedge's pods have
/// IPv4 addresses, so it makes IPv4 ones only.
pub fn families(service: &Service) -> BTreeSet<Family> {
    let spec = service.spec.as_ref();
    let mut out: BTreeSet<Family> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    if out.is_empty() {
        let cluster_ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        out.insert(cluster_ip.as_ref().map_or(Family::V4, Family::of));
    }
    out
}

/// Not finished, with an IP, and (unless `include_terminating`) not being deleted:
/// kube's `ShouldPodBeInEndpoints`.
pub fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if pod_ips(pod).is_empty() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// The pod's IPs (`status.podIPs`, else `status.podIP`), those that parse, in order.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    let texts = if listed.is_empty() {
        status.pod_ip.as_deref().into_iter().collect()
    } else {
        listed
    };
    texts
        .into_iter()
        .filter_map(|t| t.trim().parse::<IpAddr>().ok())
        .collect()
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    crate::pods::is_ready(pod)
}

/// kube's `FindPort`: a numeric `targetPort` is the port; a named one is the container port of
/// that name and the Service port's protocol, in the containers, then in sidecars (init
/// containers with `restartPolicy: Always`). `None`: the pod offers no such port.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// Whether an address of the pod carries its `hostname`: the pod names one and its subdomain
/// is the Service (a StatefulSet's pods under their headless Service).
pub fn hostname_for(pod: &Pod, service: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    let same = spec.subdomain.as_deref() == Some(service.name_any().as_str())
        && pod.metadata.namespace == service.metadata.namespace;
    same.then(|| hostname.to_owned())
}

/// The `targetRef` of an address of the pod.
pub fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The labels Endpoints and EndpointSlices of the Service carry besides their own: the
/// Service's, with `service.kubernetes.io/headless` for a Service without a cluster IP.
pub fn inherited_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.labels().clone();
    if is_service_ip_set(service) {
        labels.remove(HEADLESS);
    } else {
        labels.insert(HEADLESS.into(), String::new());
    }
    labels
}

/// An RFC 3339 time with nanoseconds as Go's `RFC3339Nano` writes it (trailing zeros dropped).
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

/// A watch of every Service for a controller: the store it fills, the stream of Services
/// added or changed (for `Controller::for_stream`), and the Services deleted, which a
/// controller does not reconcile (kube-runtime skips objects gone from the store) but may
/// need to clean up after.
pub fn watch(
    client: kube::Client,
) -> (
    Store<Service>,
    impl futures::Stream<Item = Result<Service, kube::runtime::watcher::Error>> + Send + 'static,
    tokio::sync::mpsc::UnboundedReceiver<Service>,
) {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(
        kube::Api::<Service>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(service) = event {
            // The receiver goes only with the controller.
            let _ = gone_tx.send(service.clone());
        }
    })
    .applied_objects();
    (store, stream, gone_rx)
}

// ---------------------------------------------------------------------------------------------
// Trigger times.

/// What [`TriggerTimes`] saw of one Service at its last sync.
#[derive(Debug, Clone, Default)]
struct Seen {
    service: Option<jiff::Timestamp>,
    pods: HashMap<String, jiff::Timestamp>,
}

/// kube's `TriggerTimeTracker`: the time of the earliest change since the last sync of a
/// Service, for the `endpoints.kubernetes.io/last-change-trigger-time` annotation. A pod's
/// change time is its Ready condition's last transition; the Service's, its creation.
#[derive(Debug, Default)]
pub struct TriggerTimes {
    seen: Mutex<HashMap<(String, String), Seen>>,
}

impl TriggerTimes {
    /// The trigger time of this sync of `service` with `pods`, and remembers what it saw:
    /// the Service's creation the first time, else the earliest pod or Service time that
    /// moved since the last call (`None`: nothing did; the annotation is removed).
    pub fn compute(&self, service: &Service, pods: &[Arc<Pod>]) -> Option<jiff::Timestamp> {
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        let Ok(mut all) = self.seen.lock() else {
            return None;
        };
        let known = all.get(&key).cloned();
        let previous = known.clone().unwrap_or_default();
        let mut earliest: Option<jiff::Timestamp> = None;
        let mut pod_times = HashMap::new();
        for pod in pods {
            if let Some(t) = ready_transition(pod) {
                let name = pod.name_any();
                if previous.pods.get(&name).is_none_or(|p| t > *p) {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
                pod_times.insert(name, t);
            }
        }
        let created = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(c) = created
            && previous.service.is_none_or(|p| c > p)
        {
            earliest = Some(earliest.map_or(c, |e| e.min(c)));
        }
        all.insert(
            key,
            Seen {
                service: created,
                pods: pod_times,
            },
        );
        if known.is_none() {
            return created;
        }
        earliest
    }

    /// Forgets a Service that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut all) = self.seen.lock() {
            all.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }
}

fn ready_transition(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

// ---------------------------------------------------------------------------------------------
// Which Services a pod change concerns.

/// The Services each pod was in at its Services' last syncs, so that a pod whose labels no
/// longer match still wakes the Service it left (the shared pod stream gives the new pod
/// only, where kube's informer hands over the old one too).
#[derive(Debug, Default)]
pub struct Members {
    inner: Mutex<MembersInner>,
}

#[derive(Debug, Default)]
struct MembersInner {
    /// Pod (namespace, name) → Service names.
    by_pod: HashMap<(String, String), BTreeSet<String>>,
    /// Service (namespace, name) → pod names, to update `by_pod` by difference.
    by_service: HashMap<(String, String), BTreeSet<String>>,
}

impl Members {
    /// Records that a sync of `service` (in `namespace`) found `pods` in it.
    pub fn record(&self, namespace: &str, service: &str, pods: &[Arc<Pod>]) {
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let inner = &mut *guard;
        let now: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
        let key = (namespace.to_owned(), service.to_owned());
        let before = inner.by_service.remove(&key).unwrap_or_default();
        for gone in before.difference(&now) {
            let pod = (namespace.to_owned(), gone.clone());
            if let Some(services) = inner.by_pod.get_mut(&pod) {
                services.remove(service);
                if services.is_empty() {
                    inner.by_pod.remove(&pod);
                }
            }
        }
        for came in now.difference(&before) {
            inner
                .by_pod
                .entry((namespace.to_owned(), came.clone()))
                .or_default()
                .insert(service.to_owned());
        }
        if !now.is_empty() {
            inner.by_service.insert(key, now);
        }
    }

    /// Forgets a Service that is gone.
    pub fn forget(&self, namespace: &str, service: &str) {
        self.record(namespace, service, &[]);
    }

    /// The Services a change of `pod` concerns: those selecting it now (from `services`) and
    /// those it was in.
    pub fn services_for(&self, services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let namespace = pod.namespace().unwrap_or_default();
        let mut names: BTreeSet<String> = self
            .inner
            .lock()
            .ok()
            .and_then(|m| m.by_pod.get(&(namespace.clone(), pod.name_any())).cloned())
            .unwrap_or_default();
        for service in services.state() {
            if service.metadata.namespace.as_deref() == Some(namespace.as_str())
                && selector(&service).is_some_and(|s| selects(s, pod.metadata.labels.as_ref()))
            {
                names.insert(service.name_any());
            }
        }
        names
            .into_iter()
            .map(|n| ObjectRef::new(&n).within(&namespace))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn named_target_ports_resolve_against_the_pods_containers_and_sidecars() {
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {
                "initContainers": [{"name": "side", "restartPolicy": "Always",
                    "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]},
                    {"name": "init", "ports": [{"name": "setup", "containerPort": 1}]}],
                "containers": [{"name": "app", "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]
            }
        }));
        let port =
            |v: serde_json::Value| -> ServicePort { serde_json::from_value(v).expect("port") };
        assert_eq!(
            find_port(&p, &port(json!({"port": 80, "targetPort": "http"}))),
            Some(8080)
        );
        assert_eq!(
            find_port(
                &p,
                &port(json!({"port": 53, "targetPort": "dns", "protocol": "UDP"}))
            ),
            Some(5353)
        );
        assert_eq!(
            find_port(&p, &port(json!({"port": 53, "targetPort": "dns"}))),
            None,
            "TCP"
        );
        assert_eq!(
            find_port(&p, &port(json!({"port": 90, "targetPort": "metrics"}))),
            Some(9090)
        );
        assert_eq!(
            find_port(&p, &port(json!({"port": 1, "targetPort": "setup"}))),
            None
        );
        assert_eq!(
            find_port(&p, &port(json!({"port": 81, "targetPort": 9000}))),
            Some(9000)
        );
        assert_eq!(find_port(&p, &port(json!({"port": 82}))), Some(82));
    }

    #[test]
    fn finished_unaddressed_and_terminating_pods_are_left_out() {
        let base =
            json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "10.0.0.1"}});
        assert!(should_be_in_endpoints(&pod(base.clone()), false));
        let mut done = base.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert!(!should_be_in_endpoints(&pod(done), true));
        let unaddressed = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}});
        assert!(!should_be_in_endpoints(&pod(unaddressed), true));
        let mut going = base;
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(!should_be_in_endpoints(&pod(going.clone()), false));
        assert!(should_be_in_endpoints(&pod(going), true));
    }

    #[test]
    fn hostnames_only_under_the_pods_subdomain() {
        let svc = service(json!({"metadata": {"name": "web", "namespace": "default"}}));
        let under = pod(
            json!({"metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"hostname": "web-0", "subdomain": "web", "containers": []}}),
        );
        let other = pod(json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"hostname": "x", "subdomain": "db", "containers": []}}));
        assert_eq!(hostname_for(&under, &svc).as_deref(), Some("web-0"));
        assert_eq!(hostname_for(&other, &svc), None);
    }

    #[test]
    fn a_pod_wakes_the_services_selecting_it_and_those_it_left() {
        let (store, mut writer) = kube::runtime::reflector::store::<Service>();
        for (name, app) in [("web", "web"), ("db", "db")] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(service(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"selector": {"app": app}}}))));
        }
        let web_pod = Arc::new(pod(
            json!({"metadata": {"name": "p", "namespace": "default",
            "labels": {"app": "web"}}}),
        ));
        let members = Members::default();
        let names = |refs: Vec<ObjectRef<Service>>| -> Vec<String> {
            refs.into_iter().map(|r| r.name).collect()
        };
        assert_eq!(names(members.services_for(&store, &web_pod)), ["web"]);
        members.record("default", "web", std::slice::from_ref(&web_pod));
        // Relabelled: db selects it now, and web, which it left, hears of it too.
        let moved = pod(json!({"metadata": {"name": "p", "namespace": "default",
            "labels": {"app": "db"}}}));
        assert_eq!(names(members.services_for(&store, &moved)), ["db", "web"]);
        members.record("default", "web", &[]);
        assert_eq!(names(members.services_for(&store, &moved)), ["db"]);
    }

    #[test]
    fn services_without_a_selector_or_external_are_left_alone() {
        let managed_of = |spec| managed(&service(json!({"spec": spec})));
        assert!(managed_of(json!({"selector": {"app": "web"}})));
        assert!(!managed_of(json!({})));
        assert!(!managed_of(json!({"selector": {}})));
        assert!(!managed_of(
            json!({"type": "ExternalName", "externalName": "x.example", "selector": {"app": "web"}})
        ));
    }

    #[test]
    fn families_from_the_service_else_ipv4() {
        let of = |v| families(&service(v)).into_iter().collect::<Vec<_>>();
        assert_eq!(of(json!({"spec": {}})), [Family::V4]);
        assert_eq!(of(json!({"spec": {"clusterIP": "fd00::1"}})), [Family::V6]);
        assert_eq!(
            of(json!({"spec": {"ipFamilies": ["IPv6", "IPv4"]}})),
            [Family::V4, Family::V6]
        );
    }

    #[test]
    fn the_trigger_time_is_the_creation_then_the_earliest_change() {
        let svc = service(json!({"metadata": {"name": "web", "namespace": "default",
            "creationTimestamp": "2026-01-01T00:00:00Z"}}));
        let ready = |name: &str, at: &str| {
            Arc::new(pod(json!({"metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at}]}})))
        };
        let times = TriggerTimes::default();
        let a = ready("a", "2026-01-01T00:01:00Z");
        assert_eq!(
            times
                .compute(&svc, std::slice::from_ref(&a))
                .map(format_time)
                .as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            times.compute(&svc, std::slice::from_ref(&a)),
            None,
            "nothing moved"
        );
        let b = ready("b", "2026-01-01T00:03:00Z");
        let a2 = ready("a", "2026-01-01T00:02:00Z");
        assert_eq!(
            times.compute(&svc, &[a2, b]).map(format_time).as_deref(),
            Some("2026-01-01T00:02:00Z")
        );
    }
}
