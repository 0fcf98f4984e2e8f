//! Whether a pod fits a node, and how well: kube-scheduler's default filters and scores, as
//! pure functions of a pod's needs and a node's state, so they are tested without an API.
//!
//! Filters (in kube-scheduler's plugin order): the node is not cordoned (NodeUnschedulable),
//! nodeSelector and required node affinity match (NodeAffinity), the pod tolerates the node's
//! NoSchedule and NoExecute taints (TaintToleration), the node offers the pod's runtime (ours),
//! and its requests fit in what is left of allocatable (NodeResourcesFit). A node whose Ready
//! condition is not True counts as tainted `not-ready` or `unreachable` even before the node
//! lifecycle controller has tainted it, so a pod never lands on a node that just went away.
//!
//! The reasons a node is unfit are kube-scheduler's own strings, so the message on an
//! unschedulable pod reads as it does on Kubernetes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PreferredSchedulingTerm, Taint,
    Toleration,
};
use k8s_openapi::api::node::v1::RuntimeClass;

use super::resources::{Resources, node_allocatable, pod_requests};

/// The taint a node that is not Ready carries.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint a node not heard from carries.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a cordoned node.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// What a pod needs of a node, worked out once per scheduling attempt.
#[derive(Debug, Clone)]
pub struct PodNeeds {
    /// Resource requests.
    pub requests: Resources,
    /// nodeSelector, with the RuntimeClass's merged in.
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: the node must match one term (none: any node).
    pub required: Vec<NodeSelectorTerm>,
    /// Preferred node affinity.
    pub preferred: Vec<PreferredSchedulingTerm>,
    /// Tolerations, with the RuntimeClass's added.
    pub tolerations: Vec<Toleration>,
    /// The runtime handlers the pod needs: its RuntimeClass's, else those its images' kinds
    /// need (both, for a pod with Wasm and container images).
    pub runtimes: Vec<String>,
    /// The controller that owns the pod, whose pods are spread apart.
    pub owner: Option<String>,
    /// What its PersistentVolumeClaims ask of the node ([`super::volumes`]).
    pub volumes: Vec<super::volumes::VolumeNeed>,
}

/// Why a pod's needs could not be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeedsError {
    /// The pod names a RuntimeClass that does not exist.
    #[error("RuntimeClass \"{0}\" not found")]
    NoRuntimeClass(String),
    /// A claim the pod names does not exist.
    #[error("persistentvolumeclaim \"{0}\" not found")]
    NoClaim(String),
    /// A claim the pod names is being deleted.
    #[error("persistentvolumeclaim \"{0}\" is being deleted")]
    ClaimDeleting(String),
    /// A claim is bound to a volume that does not exist.
    #[error(
        "persistentvolumeclaim \"{claim}\" bound to non-existent persistentvolume \"{volume}\""
    )]
    NoVolume {
        /// The claim.
        claim: String,
        /// The volume it names.
        volume: String,
    },
    /// A claim of a class Wedge does not provision is not bound yet.
    #[error("pod has unbound immediate PersistentVolumeClaims")]
    UnboundImmediate,
}

impl PodNeeds {
    /// The needs of `pod`, whose RuntimeClass (if it names one) is `runtime_class`.
    pub fn of(pod: &Pod, runtime_class: Option<&RuntimeClass>) -> Result<Self, NeedsError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let node_affinity = spec.affinity.and_then(|a| a.node_affinity);
        let mut needs = Self {
            requests: pod_requests(pod),
            node_selector: spec.node_selector.unwrap_or_default(),
            required: node_affinity
                .as_ref()
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .map(|s| s.node_selector_terms)
                .unwrap_or_default(),
            preferred: node_affinity
                .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
                .unwrap_or_default(),
            tolerations: spec.tolerations.unwrap_or_default(),
            runtimes: Vec::new(),
            owner: pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            volumes: Vec::new(),
        };
        if let Some(name) = spec.runtime_class_name.filter(|n| !n.is_empty()) {
            let rc = runtime_class.ok_or(NeedsError::NoRuntimeClass(name))?;
            needs.runtimes = vec![rc.handler.clone()];
            if let Some(s) = &rc.scheduling {
                needs
                    .node_selector
                    .extend(s.node_selector.clone().unwrap_or_default());
                needs
                    .tolerations
                    .extend(s.tolerations.clone().unwrap_or_default());
            }
        }
        Ok(needs)
    }
}

impl PodNeeds {
    /// The only nodes the required node affinity allows by name, when every term names them
    /// (`matchFields` `metadata.name In`, as daemon pods are pinned): kube-scheduler's
    /// NodeAffinity PreFilter, so that placing a daemon pod looks at its node, not at every
    /// node. `None`: any node may match.
    pub fn pinned_nodes(&self) -> Option<std::collections::BTreeSet<&str>> {
        let mut names = std::collections::BTreeSet::new();
        if self.required.is_empty() {
            return None;
        }
        for term in &self.required {
            // The requirements of a term are ANDed: the names all of them allow.
            let mut term_names: Option<std::collections::BTreeSet<&str>> = None;
            for r in term.match_fields.iter().flatten() {
                if r.key == "metadata.name" && r.operator == "In" {
                    let these = r.values.iter().flatten().map(String::as_str).collect();
                    term_names = Some(match term_names {
                        None => these,
                        Some(before) => before.intersection(&these).copied().collect(),
                    });
                }
            }
            // A term without a name allows any node (terms are ORed).
            names.extend(term_names?);
        }
        Some(names)
    }
}

/// A node as the scheduler sees it: the object and what its pods already take.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node.
    pub node: std::sync::Arc<Node>,
    /// Its allocatable resources.
    pub allocatable: Resources,
    /// How many pods it takes.
    pub max_pods: u64,
    /// Its taints, with those its Ready condition implies ([`effective_taints`]).
    pub taints: Vec<Taint>,
    /// What the pods bound to it request.
    pub requested: Resources,
    /// The same, with kube-scheduler's non-zero defaults (for scoring).
    pub requested_non_zero: (u64, u64),
    /// How many pods are bound to it.
    pub pods: u64,
    /// How many of them each controller owns.
    pub by_owner: HashMap<String, u32>,
}

impl NodeInfo {
    /// A node with no pods yet.
    pub fn new(node: std::sync::Arc<Node>) -> Self {
        let (allocatable, max_pods) = node_allocatable(&node);
        Self {
            taints: effective_taints(&node),
            node,
            allocatable,
            max_pods,
            requested: Resources::default(),
            requested_non_zero: (0, 0),
            pods: 0,
            by_owner: HashMap::new(),
        }
    }

    /// Counts a pod as bound here (`sign` 1) or no longer (`-1`).
    pub fn account(&mut self, requests: &Resources, owner: Option<&str>, sign: i8) {
        let (cpu, mem) = requests.non_zero();
        if sign > 0 {
            self.requested.add(requests);
            self.requested_non_zero.0 += cpu;
            self.requested_non_zero.1 += mem;
            self.pods += 1;
            if let Some(o) = owner {
                *self.by_owner.entry(o.to_owned()).or_default() += 1;
            }
        } else {
            self.requested.subtract(requests);
            self.requested_non_zero.0 = self.requested_non_zero.0.saturating_sub(cpu);
            self.requested_non_zero.1 = self.requested_non_zero.1.saturating_sub(mem);
            self.pods = self.pods.saturating_sub(1);
            if let Some(o) = owner
                && let Some(n) = self.by_owner.get_mut(o)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_owner.remove(o);
                }
            }
        }
    }
}

/// Why a pod does not fit a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unfit {
    /// The node is cordoned.
    Cordoned,
    /// nodeSelector or required affinity does not match.
    Selector,
    /// A taint the pod does not tolerate.
    Taint {
        /// The taint's key.
        key: String,
        /// Its value.
        value: String,
        /// Its effect (`NoSchedule` or `NoExecute`).
        effect: String,
    },
    /// The node does not offer the pod's runtime.
    Runtime(String),
    /// Not enough of a resource left.
    Insufficient(String),
    /// The node holds as many pods as it takes.
    TooManyPods,
    /// A bound volume of the pod is not reachable from the node.
    VolumeNodeConflict,
    /// The node offers no local storage for an unbound claim of the pod.
    NoLocalStorage {
        /// The node.
        node: String,
        /// The claim.
        claim: String,
    },
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cordoned => f.write_str("node(s) were unschedulable"),
            Self::Selector => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Self::Taint { key, value, .. } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Self::Runtime(handler) => write!(f, "node(s) didn't offer the runtime \"{handler}\""),
            Self::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Self::TooManyPods => f.write_str("Too many pods"),
            Self::VolumeNodeConflict => f.write_str("node(s) had volume node affinity conflict"),
            Self::NoLocalStorage { node, claim } => write!(
                f,
                "node(s) offered no local storage (edgecore --local-volume-root) for PersistentVolumeClaim \"{claim}\": {node}"
            ),
        }
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches the node (all its requirements; an empty term matches
/// nothing, as in Kubernetes).
pub(crate) fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name")
                .then_some(node.metadata.name.as_deref())
                .flatten();
            requirement_matches(r, value)
        })
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The node's taints, with `not-ready`/`unreachable` added when its Ready condition says so
/// and the node lifecycle controller has not tainted it yet.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let implied = match ready {
        Some("True") => None,
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => Some(TAINT_NOT_READY),
    };
    if let Some(key) = implied
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(Taint {
            key: key.to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        });
    }
    taints
}

/// Whether the pod fits the node, and if not the first reason why (kube-scheduler stops at the
/// first failing filter too).
pub fn filter(needs: &PodNeeds, info: &NodeInfo) -> Result<(), Unfit> {
    placement(needs, info)?;
    fit_resources(needs, info)
}

/// The filters that do not count resources: cordon, selectors and affinity, taints, runtime.
/// What the DaemonSet controller asks to decide whether a node should run a daemon pod.
pub fn placement(needs: &PodNeeds, info: &NodeInfo) -> Result<(), Unfit> {
    let node = &*info.node;
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if cordoned
        && !needs.tolerations.iter().any(|t| {
            tolerates(
                t,
                &Taint {
                    key: TAINT_UNSCHEDULABLE.into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                },
            )
        })
    {
        return Err(Unfit::Cordoned);
    }
    let labels = node.metadata.labels.as_ref();
    let selector_ok = needs
        .node_selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !selector_ok
        || !(needs.required.is_empty() || needs.required.iter().any(|t| term_matches(t, node)))
    {
        return Err(Unfit::Selector);
    }
    for taint in &info.taints {
        if taint.effect == "PreferNoSchedule" || (cordoned && taint.key == TAINT_UNSCHEDULABLE) {
            continue;
        }
        if !needs.tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err(Unfit::Taint {
                key: taint.key.clone(),
                value: taint.value.clone().unwrap_or_default(),
                effect: taint.effect.clone(),
            });
        }
    }
    if let Some(handler) = needs
        .runtimes
        .iter()
        .find(|h| !wedge_core::runtimes::offers(labels, h))
    {
        return Err(Unfit::Runtime(handler.clone()));
    }
    super::volumes::fits(&needs.volumes, node)
}

fn fit_resources(needs: &PodNeeds, info: &NodeInfo) -> Result<(), Unfit> {
    if info.pods + 1 > info.max_pods {
        return Err(Unfit::TooManyPods);
    }
    let (want, have, used) = (&needs.requests, &info.allocatable, &info.requested);
    let short = |w: u64, h: u64, u: u64| w > 0 && w > h.saturating_sub(u);
    if short(want.milli_cpu, have.milli_cpu, used.milli_cpu) {
        return Err(Unfit::Insufficient("cpu".into()));
    }
    if short(want.memory, have.memory, used.memory) {
        return Err(Unfit::Insufficient("memory".into()));
    }
    if short(
        want.ephemeral_storage,
        have.ephemeral_storage,
        used.ephemeral_storage,
    ) {
        return Err(Unfit::Insufficient("ephemeral-storage".into()));
    }
    for (name, w) in &want.extended {
        let h = have.extended.get(name).copied().unwrap_or(0);
        let u = used.extended.get(name).copied().unwrap_or(0);
        if short(*w, h, u) {
            return Err(Unfit::Insufficient(name.clone()));
        }
    }
    Ok(())
}

/// How well the pod fits a node it passed the filters for: higher is better. The sum of
/// kube-scheduler's default scores, each 0..=100: least allocated CPU and memory after the
/// pod, spreading a controller's pods, preferred node affinity, and avoiding PreferNoSchedule
/// taints the pod does not tolerate.
pub fn score(needs: &PodNeeds, info: &NodeInfo) -> i64 {
    let (cpu, mem) = needs.requests.non_zero();
    let free = |want: u64, used: u64, have: u64| -> i64 {
        if have == 0 {
            return 0;
        }
        let after = used.saturating_add(want).min(have);
        ((have - after) * 100 / have) as i64
    };
    let least_allocated = (free(cpu, info.requested_non_zero.0, info.allocatable.milli_cpu)
        + free(mem, info.requested_non_zero.1, info.allocatable.memory))
        / 2;
    let spread = match &needs.owner {
        Some(owner) => {
            let mine = i64::from(info.by_owner.get(owner).copied().unwrap_or(0));
            100 - (mine * 10).min(100)
        }
        None => 100,
    };
    let total_weight: i64 = needs.preferred.iter().map(|p| i64::from(p.weight)).sum();
    let affinity = if total_weight == 0 {
        0
    } else {
        let matched: i64 = needs
            .preferred
            .iter()
            .filter(|p| term_matches(&p.preference, &info.node))
            .map(|p| i64::from(p.weight))
            .sum();
        matched * 100 / total_weight
    };
    let intolerable = info
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !needs.tolerations.iter().any(|tol| tolerates(tol, t)))
        .count() as i64;
    least_allocated + spread + affinity + 100 - (intolerable * 50).min(100)
}

/// The message of a pod that fits no node, as kube-scheduler words it:
/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node
/// affinity/selector.`
pub fn unschedulable_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn node(v: serde_json::Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": "edge-1", "labels": {"zone": "a", "runtime.wedge.io/wasm": "true"}},
            "status": {
                "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "3"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        json_patch::merge(&mut n, &v);
        NodeInfo::new(Arc::new(serde_json::from_value(n).expect("node")))
    }

    fn needs(v: serde_json::Value) -> PodNeeds {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        json_patch::merge(&mut p, &v);
        PodNeeds::of(&serde_json::from_value(p).expect("pod"), None).expect("needs")
    }

    #[test]
    fn selectors_and_affinity() {
        let n = node(json!({}));
        assert_eq!(
            filter(&needs(json!({"spec": {"nodeSelector": {"zone": "a"}}})), &n),
            Ok(())
        );
        assert_eq!(
            filter(&needs(json!({"spec": {"nodeSelector": {"zone": "b"}}})), &n),
            Err(Unfit::Selector)
        );
        let affinity = |op: &str, values: serde_json::Value| {
            needs(
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": op, "values": values}]}
                ]}}}}}),
            )
        };
        assert_eq!(filter(&affinity("In", json!(["a", "c"])), &n), Ok(()));
        assert_eq!(
            filter(&affinity("NotIn", json!(["a"])), &n),
            Err(Unfit::Selector)
        );
        assert_eq!(filter(&affinity("Exists", json!([])), &n), Ok(()));
        assert_eq!(
            filter(&affinity("DoesNotExist", json!([])), &n),
            Err(Unfit::Selector)
        );
        let by_name = needs(
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["edge-2"]}]}]}}}}}),
        );
        assert_eq!(filter(&by_name, &n), Err(Unfit::Selector));
    }

    #[test]
    fn taints_tolerations_and_readiness() {
        let tainted = node(
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            filter(&needs(json!({})), &tainted),
            Err(Unfit::Taint {
                key: "dedicated".into(),
                value: "gpu".into(),
                effect: "NoSchedule".into(),
            })
        );
        let tolerant = needs(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}}),
        );
        assert_eq!(filter(&tolerant, &tainted), Ok(()));
        let exists = needs(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert_eq!(filter(&exists, &tainted), Ok(()));

        let unknown =
            node(json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}));
        assert_eq!(
            filter(&needs(json!({})), &unknown),
            Err(Unfit::Taint {
                key: TAINT_UNREACHABLE.into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            })
        );
        let cordoned = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(filter(&needs(json!({})), &cordoned), Err(Unfit::Cordoned));
    }

    #[test]
    fn resources_pod_count_and_runtime() {
        let mut n = node(json!({}));
        let big = needs(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}]}}),
        );
        assert_eq!(filter(&big, &n), Err(Unfit::Insufficient("cpu".into())));
        let small = needs(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "1Gi"}}}]}}),
        );
        assert_eq!(filter(&small, &n), Ok(()));
        n.account(&small.requests, None, 1);
        n.account(&small.requests, None, 1);
        assert_eq!(
            filter(&small, &n),
            Err(Unfit::Insufficient("memory".into()))
        );
        n.account(&small.requests, None, -1);
        assert_eq!(filter(&small, &n), Ok(()));
        n.account(&Resources::default(), None, 1);
        n.account(&Resources::default(), None, 1);
        assert_eq!(filter(&needs(json!({})), &n), Err(Unfit::TooManyPods));

        let wasm: RuntimeClass =
            serde_json::from_value(json!({"metadata": {"name": "wasm"}, "handler": "wasm"}))
                .expect("rc");
        let runc: RuntimeClass =
            serde_json::from_value(json!({"metadata": {"name": "runc"}, "handler": "runc"}))
                .expect("rc");
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"runtimeClassName": "x", "containers": []}}))
                .expect("pod");
        let fresh = node(json!({}));
        assert_eq!(
            filter(&PodNeeds::of(&pod, Some(&wasm)).expect("needs"), &fresh),
            Ok(())
        );
        assert_eq!(
            filter(&PodNeeds::of(&pod, Some(&runc)).expect("needs"), &fresh),
            Err(Unfit::Runtime("runc".into()))
        );
        assert_eq!(
            PodNeeds::of(&pod, None).err(),
            Some(NeedsError::NoRuntimeClass("x".into()))
        );
        // A mixed pod needs both runtimes.
        let mut mixed = needs(json!({}));
        mixed.runtimes = vec!["runc".into(), "wasm".into()];
        assert_eq!(filter(&mixed, &fresh), Err(Unfit::Runtime("runc".into())));
    }

    #[test]
    fn scores_prefer_emptier_nodes_and_spread_owners() {
        let pod = needs(
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u1", "controller": true}]}}),
        );
        let empty = node(json!({}));
        let mut busy = node(json!({}));
        busy.account(&pod.requests, pod.owner.as_deref(), 1);
        assert!(score(&pod, &empty) > score(&pod, &busy));
        let preferred = needs(
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}]}}}}),
        );
        let zone_b = node(json!({"metadata": {"labels": {"zone": "b"}}}));
        assert!(score(&preferred, &zone_b) > score(&preferred, &empty));
    }

    #[test]
    fn message_reads_as_kube_scheduler_writes_it() {
        let reasons: BTreeMap<String, usize> = [
            (Unfit::Selector.to_string(), 2),
            (Unfit::Insufficient("cpu".into()).to_string(), 1),
        ]
        .into();
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            unschedulable_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
