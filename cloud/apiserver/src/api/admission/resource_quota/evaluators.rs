//! What one object counts for under a quota's names: kube's quota evaluators
//! (`pkg/quota/v1/evaluator/core` and the generic object-count evaluator), in thousandths.
//!
//! Every namespaced kind is counted as `count/<resource>[.<group>]`; the kinds Kubernetes
//! counted before that form existed answer to their bare names too (`pods`, `services`,
//! `secrets`, ...: `count/secrets` is `secrets`). Pods add their compute resources, Services
//! their node ports and load balancers, claims the storage they request (also per
//! StorageClass). A finished pod counts for nothing.

use std::collections::BTreeMap;

use serde_json::Value;
use wedge_core::quantity::parse_milli;

/// The compute resources pods are charged, by the field they come from and their name.
pub(super) const COMPUTE: [(&str, &str, &str); 6] = [
    ("requests", "cpu", "requests.cpu"),
    ("requests", "memory", "requests.memory"),
    (
        "requests",
        "ephemeral-storage",
        "requests.ephemeral-storage",
    ),
    ("limits", "cpu", "limits.cpu"),
    ("limits", "memory", "limits.memory"),
    ("limits", "ephemeral-storage", "limits.ephemeral-storage"),
];

/// The kinds counted under their bare names (kube's legacy object-count names).
const LEGACY: [&str; 7] = [
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
];

const STORAGE_CLASS: &str = ".storageclass.storage.k8s.io/";

/// The name a hard limit is counted under: `cpu` is `requests.cpu`, `count/pods` is `pods`.
pub(super) fn canonical(resource: &str) -> String {
    match resource {
        "cpu" | "memory" | "ephemeral-storage" => format!("requests.{resource}"),
        _ => match resource.strip_prefix("count/") {
            Some(kind) if LEGACY.contains(&kind) => kind.to_owned(),
            _ => resource.to_owned(),
        },
    }
}

/// The kind (storage key: `plural` or `plural.group`) whose objects a canonical name counts,
/// or `None` for a name no evaluator knows (extended resources, hugepages: stored, not
/// enforced).
pub(super) fn kind_of(name: &str) -> Option<&str> {
    if COMPUTE.iter().any(|c| c.2 == name) {
        return Some("pods");
    }
    if let Some(kind) = LEGACY.iter().find(|k| **k == name) {
        return Some(kind);
    }
    match name {
        "services.nodeports" | "services.loadbalancers" => Some("services"),
        "requests.storage" => Some("persistentvolumeclaims"),
        _ if name.contains(STORAGE_CLASS) => Some("persistentvolumeclaims"),
        _ => name.strip_prefix("count/").filter(|k| !k.is_empty()),
    }
}

/// Whether `resource` is measured in bytes (shown as `Mi`, `Gi`).
pub(super) fn binary(resource: &str) -> bool {
    resource.contains("memory") || resource.contains("storage")
}

/// Whether `pod` has finished (quotas stop counting it).
pub(super) fn finished(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// What `object`, of `kind`, counts for, by canonical name.
pub(super) fn usage(kind: &str, object: &Value) -> BTreeMap<String, u64> {
    match kind {
        "pods" => pod(object),
        "services" => service(object),
        "persistentvolumeclaims" => claim(object),
        _ if LEGACY.contains(&kind) => BTreeMap::from([(kind.to_owned(), 1000)]),
        _ => BTreeMap::from([(format!("count/{kind}"), 1000)]),
    }
}

fn pod(pod: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if finished(pod) {
        return out;
    }
    out.insert("pods".to_owned(), 1000);
    let list = |l: &str| {
        pod.pointer(&format!("/spec/{l}"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    for (field, resource, name) in COMPUTE {
        let amount = |c: &Value| {
            c.get("resources")
                .and_then(|r| r.get(field))
                .and_then(|r| r.get(resource))
                .and_then(Value::as_str)
                .and_then(|q| parse_milli(q).ok())
                .unwrap_or(0)
        };
        let sum: u64 = list("containers").iter().map(amount).sum();
        let init = list("initContainers").iter().map(amount).max().unwrap_or(0);
        out.insert(name.to_owned(), sum.max(init));
    }
    out
}

/// A Service: itself, its node ports (every port of a NodePort Service; of a LoadBalancer
/// unless it allocates none, then those it names) and whether it is a load balancer.
fn service(service: &Value) -> BTreeMap<String, u64> {
    let spec = service.get("spec");
    let kind = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let allocates = spec
        .and_then(|s| s.get("allocateLoadBalancerNodePorts"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let node_ports = match kind {
        "NodePort" => ports.len(),
        "LoadBalancer" if allocates => ports.len(),
        "LoadBalancer" => ports
            .iter()
            .filter(|p| p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) != 0)
            .count(),
        _ => 0,
    };
    let balancers = u64::from(kind == "LoadBalancer");
    BTreeMap::from([
        ("services".to_owned(), 1000),
        ("services.nodeports".to_owned(), node_ports as u64 * 1000),
        ("services.loadbalancers".to_owned(), balancers * 1000),
    ])
}

/// A PersistentVolumeClaim: itself and the storage it requests, in all and per StorageClass.
fn claim(claim: &Value) -> BTreeMap<String, u64> {
    let storage = claim
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(|q| parse_milli(q).ok())
        .unwrap_or(0);
    let mut out = BTreeMap::from([
        ("persistentvolumeclaims".to_owned(), 1000),
        ("requests.storage".to_owned(), storage),
    ]);
    if let Some(class) = claim
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        out.insert(
            format!("{class}{STORAGE_CLASS}persistentvolumeclaims"),
            1000,
        );
        out.insert(format!("{class}{STORAGE_CLASS}requests.storage"), storage);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_resolve_to_the_kind_they_count() {
        assert_eq!(canonical("cpu"), "requests.cpu");
        assert_eq!(canonical("count/secrets"), "secrets");
        assert_eq!(
            canonical("count/deployments.apps"),
            "count/deployments.apps"
        );
        assert_eq!(kind_of("requests.cpu"), Some("pods"));
        assert_eq!(kind_of("configmaps"), Some("configmaps"));
        assert_eq!(kind_of("count/deployments.apps"), Some("deployments.apps"));
        assert_eq!(kind_of("services.nodeports"), Some("services"));
        assert_eq!(
            kind_of("fast.storageclass.storage.k8s.io/requests.storage"),
            Some("persistentvolumeclaims")
        );
        assert_eq!(kind_of("requests.nvidia.com/gpu"), None);
        assert_eq!(kind_of("count/"), None);
    }

    #[test]
    fn objects_count_as_kube_evaluators_count_them() {
        assert_eq!(
            usage("deployments.apps", &json!({})),
            BTreeMap::from([("count/deployments.apps".to_owned(), 1000)])
        );
        assert_eq!(usage("secrets", &json!({}))["secrets"], 1000);
        let node_port =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(usage("services", &node_port)["services.nodeports"], 2000);
        assert_eq!(usage("services", &node_port)["services.loadbalancers"], 0);
        let balancer = json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 81}]}});
        assert_eq!(usage("services", &balancer)["services.nodeports"], 1000);
        assert_eq!(usage("services", &balancer)["services.loadbalancers"], 1000);
        let claim = json!({"spec": {"storageClassName": "local-path",
            "resources": {"requests": {"storage": "1Gi"}}}});
        let counted = usage("persistentvolumeclaims", &claim);
        assert_eq!(counted["requests.storage"], 1024 * 1024 * 1024 * 1000);
        assert_eq!(
            counted["local-path.storageclass.storage.k8s.io/persistentvolumeclaims"],
            1000
        );
        let done = json!({"spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Failed"}});
        assert!(usage("pods", &done).is_empty());
    }
}
