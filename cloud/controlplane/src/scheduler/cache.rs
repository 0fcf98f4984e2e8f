//! The scheduler's view of the cluster: every node with what its pods take, kept current from
//! watch events rather than recounted per decision, so a decision costs one pass over the nodes
//! however many pods there are.
//!
//! A pod the scheduler has just bound is *assumed* onto its node at once, before the watch shows
//! it bound, so the next decision already counts it (kube-scheduler's assume cache); the watch
//! event then replaces the assumption, and a failed binding forgets it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::fit::{self, NodeInfo, PodNeeds};
use super::resources::{Resources, pod_requests};

/// A pod counted on a node.
#[derive(Debug, Clone)]
struct Placed {
    node: String,
    requests: Resources,
    owner: Option<String>,
    /// Counted by the scheduler, not yet seen bound on the watch.
    assumed: bool,
}

/// Nodes and the pods on them.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<String, Placed>,
}

/// Whether a node change can make a pending pod fit where it did not.
fn relevant_change(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.taints.clone(), s.unschedulable));
    old.metadata.labels != new.metadata.labels
        || spec(old) != spec(new)
        || fit::effective_taints(old) != fit::effective_taints(new)
        || old.status.as_ref().and_then(|s| s.allocatable.clone())
            != new.status.as_ref().and_then(|s| s.allocatable.clone())
}

impl Cache {
    /// Adds or updates a node; true if pending pods should be tried again.
    pub fn apply_node(&mut self, node: Arc<Node>) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        match self.nodes.get_mut(&name) {
            Some(info) => {
                let changed = relevant_change(&info.node, &node);
                let (allocatable, max_pods) = super::resources::node_allocatable(&node);
                info.taints = fit::effective_taints(&node);
                info.node = node;
                info.allocatable = allocatable;
                info.max_pods = max_pods;
                changed
            }
            None => {
                let mut info = NodeInfo::new(node);
                for p in self.pods.values().filter(|p| p.node == name) {
                    info.account(&p.requests, p.owner.as_deref(), 1);
                }
                self.nodes.insert(name, info);
                true
            }
        }
    }

    /// Forgets a node (its pods stay counted, should it come back).
    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Replaces the nodes with a fresh list (after a watch restarts).
    pub fn reset_nodes(&mut self, nodes: Vec<Arc<Node>>) {
        self.nodes.clear();
        for n in nodes {
            self.apply_node(n);
        }
    }

    fn place(&mut self, uid: String, placed: Option<Placed>) -> bool {
        let old = match placed {
            Some(p) => {
                if let Some(info) = self.nodes.get_mut(&p.node) {
                    info.account(&p.requests, p.owner.as_deref(), 1);
                }
                self.pods.insert(uid, p)
            }
            None => self.pods.remove(&uid),
        };
        match old {
            Some(old) => {
                if let Some(info) = self.nodes.get_mut(&old.node) {
                    info.account(&old.requests, old.owner.as_deref(), -1);
                }
                true
            }
            None => false,
        }
    }

    /// Counts a pod from the watch: bound and not finished, it takes room on its node. True if
    /// it gave room back.
    pub fn apply_pod(&mut self, pod: &Pod) -> bool {
        let Some(uid) = pod.metadata.uid.clone() else {
            return false;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        match node {
            Some(node) if !finished => {
                let owner = pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true))
                    .map(|o| o.uid.clone());
                let placed = Placed {
                    node,
                    requests: pod_requests(pod),
                    owner,
                    assumed: false,
                };
                self.place(uid, Some(placed));
                false
            }
            // Not bound yet on the watch: an assumption made meanwhile stands (the event that
            // binds it follows).
            None if !finished && self.pods.get(&uid).is_some_and(|p| p.assumed) => false,
            _ => self.place(uid, None),
        }
    }

    /// A pod is gone; true if it gave room back.
    pub fn delete_pod(&mut self, pod: &Pod) -> bool {
        pod.metadata
            .uid
            .clone()
            .is_some_and(|uid| self.place(uid, None))
    }

    /// Replaces the pods with a fresh list (after a watch restarts).
    pub fn reset_pods(&mut self, pods: &[Pod]) {
        for p in std::mem::take(&mut self.pods).into_values() {
            if let Some(info) = self.nodes.get_mut(&p.node) {
                info.account(&p.requests, p.owner.as_deref(), -1);
            }
        }
        for p in pods {
            self.apply_pod(p);
        }
    }

    /// Counts a pod on the node it is being bound to.
    pub fn assume(&mut self, uid: &str, node: &str, needs: &PodNeeds) {
        self.place(
            uid.to_owned(),
            Some(Placed {
                node: node.to_owned(),
                requests: needs.requests.clone(),
                owner: needs.owner.clone(),
                assumed: true,
            }),
        );
    }

    /// Forgets an assumption whose binding failed.
    pub fn forget(&mut self, uid: &str) {
        self.place(uid.to_owned(), None);
    }

    /// The node called `name`, if known.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(name).map(|info| info.node.clone())
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The best node for the pod, or why none fits: how many nodes failed for each reason.
    pub fn pick(&self, needs: &PodNeeds) -> Result<String, BTreeMap<String, usize>> {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(&String, i64)> = None;
        let mut ties = 0u32;
        // A pod pinned by name (a daemon pod) is checked against its nodes only; the others
        // fail its affinity, as the full pass would say.
        let candidates: Box<dyn Iterator<Item = (&String, &NodeInfo)>> = match needs.pinned_nodes()
        {
            Some(names) => {
                let pinned: Vec<(&String, &NodeInfo)> = names
                    .into_iter()
                    .filter_map(|n| self.nodes.get_key_value(n))
                    .collect();
                let others = self.nodes.len() - pinned.len();
                if others > 0 {
                    reasons.insert(fit::Unfit::Selector.to_string(), others);
                }
                Box::new(pinned.into_iter())
            }
            None => Box::new(self.nodes.iter()),
        };
        for (name, info) in candidates {
            if let Err(unfit) = fit::filter(needs, info) {
                *reasons.entry(unfit.to_string()).or_default() += 1;
                continue;
            }
            let score = fit::score(needs, info);
            match best {
                Some((_, b)) if score < b => {}
                Some((_, b)) if score == b => {
                    // Reservoir sampling among equals, as kube-scheduler breaks ties.
                    ties += 1;
                    if fastrand::u32(0..=ties) == 0 {
                        best = Some((name, score));
                    }
                }
                _ => {
                    best = Some((name, score));
                    ties = 0;
                }
            }
        }
        best.map(|(n, _)| n.clone()).ok_or(reasons)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("node"),
        )
    }

    fn pod(uid: &str, node: Option<&str>, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
        }))
        .expect("pod")
    }

    #[test]
    fn assumed_and_watched_pods_take_room_and_give_it_back() {
        let mut cache = Cache::default();
        assert!(cache.apply_node(node("a", "1")));
        let needs = PodNeeds::of(&pod("p1", None, "600m"), None).expect("needs");
        assert_eq!(cache.pick(&needs), Ok("a".to_owned()));
        cache.assume("p1", "a", &needs);
        let full = cache.pick(&needs).expect_err("no room");
        assert_eq!(full.get("Insufficient cpu"), Some(&1));
        // The watch shows the binding: still counted once.
        cache.apply_pod(&pod("p1", Some("a"), "600m"));
        assert!(cache.pick(&needs).is_err());
        // Deleted: room again, and the caller is told to retry pending pods.
        assert!(cache.delete_pod(&pod("p1", Some("a"), "600m")));
        assert_eq!(cache.pick(&needs), Ok("a".to_owned()));
    }

    #[test]
    fn a_failed_binding_is_forgotten_and_heartbeats_do_not_retry() {
        let mut cache = Cache::default();
        cache.apply_node(node("a", "1"));
        let needs = PodNeeds::of(&pod("p1", None, "1"), None).expect("needs");
        cache.assume("p1", "a", &needs);
        cache.forget("p1");
        assert_eq!(cache.pick(&needs), Ok("a".to_owned()));
        assert!(!cache.apply_node(node("a", "1")), "no change, no retry");
        assert!(cache.apply_node(node("a", "2")), "more room: retry");
    }

    #[test]
    fn a_pod_pinned_by_name_is_placed_on_its_node_or_told_why_not() {
        let mut cache = Cache::default();
        for n in ["a", "b", "c"] {
            cache.apply_node(node(n, "1"));
        }
        let pinned = |names: &[&str], cpu: &str| {
            let mut p = serde_json::to_value(pod("p", None, cpu)).expect("pod");
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": names}]}]}}});
            PodNeeds::of(&serde_json::from_value(p).expect("pod"), None).expect("needs")
        };
        for _ in 0..20 {
            assert_eq!(cache.pick(&pinned(&["b"], "100m")), Ok("b".to_owned()));
        }
        let too_big = cache.pick(&pinned(&["b"], "2")).expect_err("no room");
        assert_eq!(too_big.get("Insufficient cpu"), Some(&1));
        assert_eq!(
            too_big.get("node(s) didn't match Pod's node affinity/selector"),
            Some(&2)
        );
        let gone = cache
            .pick(&pinned(&["z"], "100m"))
            .expect_err("no such node");
        assert_eq!(
            fit::unschedulable_message(cache.node_count(), &gone),
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn a_node_added_later_counts_pods_already_bound_to_it() {
        let mut cache = Cache::default();
        cache.apply_pod(&pod("p1", Some("b"), "1"));
        cache.apply_node(node("b", "1"));
        let needs = PodNeeds::of(&pod("p2", None, "1"), None).expect("needs");
        assert!(cache.pick(&needs).is_err());
    }
}
