//! What an edge may say about its own Node: kube-apiserver's NodeRestriction admission, as it
//! applies to a kubelet's labels.
//!
//! An edge writes its Node through cloudcore, so cloudcore applies the rule a kubelet meets: a
//! label outside the `kubernetes.io` and `k8s.io` namespaces is the edge's to set; inside them,
//! only the ones a kubelet sets of itself (hostname, OS, architecture, instance type, zone and
//! region, and the `kubelet.kubernetes.io/` and `node.kubernetes.io/` prefixes). So an edge
//! cannot make itself `node-role.kubernetes.io/control-plane`, nor claim a
//! `node-restriction.kubernetes.io/` label that an operator uses to steer workloads to trusted
//! nodes. The one role an edge has, `node-role.kubernetes.io/edge` (KubeEdge's), cloudcore sets
//! itself. Refused labels are dropped, not the report, and logged once per change.

use std::collections::BTreeMap;

/// The role label every edge's Node carries, set by cloudcore, as KubeEdge's edges carry it.
pub const EDGE_ROLE: &str = "node-role.kubernetes.io/edge";

/// The labels in Kubernetes' namespaces that a kubelet may set (NodeRestriction's list).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// The prefixes within Kubernetes' namespaces a kubelet may set any label under.
const KUBELET_PREFIXES: [&str; 2] = ["kubelet.kubernetes.io/", "node.kubernetes.io/"];

/// Whether an edge may set the label `key` on its own Node.
pub fn edge_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        // No prefix: not in Kubernetes' namespaces.
        return true;
    };
    let kubernetes = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if !kubernetes("kubernetes.io") && !kubernetes("k8s.io") {
        return true;
    }
    KUBELET_LABELS.contains(&key) || KUBELET_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The labels of an edge's report as they go on its Node: those it may set, and its role; the
/// refused ones apart.
pub fn node_labels(reported: &BTreeMap<String, String>) -> (BTreeMap<String, String>, Vec<String>) {
    let (kept, refused): (BTreeMap<_, _>, BTreeMap<_, _>) = reported
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| edge_may_set(k));
    let mut kept = kept;
    kept.insert(EDGE_ROLE.to_owned(), String::new());
    // Edges before this rule sent their role themselves: it is the one cloudcore sets anyway.
    let refused = refused.into_keys().filter(|k| k != EDGE_ROLE).collect();
    (kept, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_sets_what_a_kubelet_may_and_is_given_its_role() {
        for allowed in [
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "runtime.wedge.io/wasm",
            "example.com/rack",
            "plain",
        ] {
            assert!(edge_may_set(allowed), "{allowed}");
        }
        for refused in [
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/edge",
            "node-restriction.kubernetes.io/trusted",
            "kubernetes.io/role",
            "k8s.io/anything",
            "example.k8s.io/x",
        ] {
            assert!(!edge_may_set(refused), "{refused}");
        }
        let reported = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), "edge-a".to_owned()),
            (
                "node-role.kubernetes.io/control-plane".to_owned(),
                String::new(),
            ),
            (EDGE_ROLE.to_owned(), String::new()),
        ]);
        let (labels, refused) = node_labels(&reported);
        assert_eq!(refused, ["node-role.kubernetes.io/control-plane"]);
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["kubernetes.io/hostname", EDGE_ROLE]
        );
    }
}
