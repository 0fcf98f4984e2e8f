//! What a pod asks for and what a node can give, in the units the scheduler adds up:
//! millicores, bytes, and plain counts for extended resources (`example.com/gpu`).
//!
//! A pod's request is what kube-scheduler computes: the sum over its containers, or the largest
//! init container's if that is more (init containers run one at a time, before the others),
//! plus the RuntimeClass's pod overhead. Quantities are parsed leniently: the API server already
//! checked them, and one a node reports wrongly counts as zero rather than stopping scheduling.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use wedge_core::quantity::{parse_bytes, parse_millicores};

/// CPU a pod without requests is counted as using when nodes are scored (kube-scheduler's
/// non-zero default), so that such pods still spread.
const DEFAULT_MILLI_CPU: u64 = 100;
/// Memory counted likewise: 200 MiB.
const DEFAULT_MEMORY: u64 = 200 << 20;

/// An amount of every resource the scheduler counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: u64,
    /// Extended resources (anything else: `example.com/gpu`), in thousandths.
    pub extended: BTreeMap<String, u64>,
}

impl Resources {
    /// Reads a resource list (`requests`, `limits`, `allocatable`, `overhead`).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Self::default();
        for (name, q) in list {
            match name.as_str() {
                "cpu" => r.milli_cpu = parse_millicores(&q.0).unwrap_or(0),
                "memory" => r.memory = parse_bytes(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = parse_bytes(&q.0).unwrap_or(0),
                // Counted by the pod count, not as a resource.
                "pods" => {}
                other if other.starts_with("hugepages-") || other.contains('/') => {
                    r.extended
                        .insert(other.to_owned(), parse_millicores(&q.0).unwrap_or(0));
                }
                _ => {}
            }
        }
        r
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() += v;
        }
    }

    /// Takes `other` away from this (never below zero).
    pub fn subtract(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (k, v) in &other.extended {
            if let Some(mine) = self.extended.get_mut(k) {
                *mine = mine.saturating_sub(*v);
            }
        }
    }

    /// Each resource's largest of the two.
    fn max(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.extended {
            let mine = self.extended.entry(k.clone()).or_default();
            *mine = (*mine).max(*v);
        }
    }

    /// This with kube-scheduler's non-zero defaults for CPU and memory, for scoring.
    pub fn non_zero(&self) -> (u64, u64) {
        (
            if self.milli_cpu == 0 {
                DEFAULT_MILLI_CPU
            } else {
                self.milli_cpu
            },
            if self.memory == 0 {
                DEFAULT_MEMORY
            } else {
                self.memory
            },
        )
    }
}

fn container_requests(c: &Container) -> Resources {
    let Some(res) = &c.resources else {
        return Resources::default();
    };
    // The API server defaults requests to limits; a client-side object may not have been.
    match (&res.requests, &res.limits) {
        (Some(req), _) if !req.is_empty() => Resources::from_list(req),
        (_, Some(lim)) => Resources::from_list(lim),
        _ => Resources::default(),
    }
}

/// What a pod needs of a node.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    for c in spec.init_containers.iter().flatten() {
        // Sidecars (restartPolicy Always) run beside the app containers.
        if c.restart_policy.as_deref() == Some("Always") {
            sum.add(&container_requests(c));
        } else {
            sum.max(&container_requests(c));
        }
    }
    if let Some(overhead) = &spec.overhead {
        sum.add(&Resources::from_list(overhead));
    }
    sum
}

/// What a node offers: its allocatable resources and how many pods it takes.
pub fn node_allocatable(node: &Node) -> (Resources, u64) {
    let Some(alloc) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) else {
        return (Resources::default(), 0);
    };
    let pods = alloc
        .get("pods")
        .and_then(|q| parse_millicores(&q.0).ok())
        .map_or(0, |m| m / 1000);
    (Resources::from_list(alloc), pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn sums_containers_and_takes_the_largest_init_container() {
        let p = pod(serde_json::json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "example.com/gpu": "1"}}},
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}},
            ],
            "overhead": {"memory": "1Mi"}
        }}));
        let r = pod_requests(&p);
        assert_eq!(r.milli_cpu, 2000);
        assert_eq!(r.memory, 65 << 20);
        assert_eq!(r.extended.get("example.com/gpu"), Some(&1000));
    }

    #[test]
    fn a_pod_without_requests_scores_with_the_defaults() {
        let r = pod_requests(&pod(
            serde_json::json!({"spec": {"containers": [{"name": "a"}]}}),
        ));
        assert_eq!(r, Resources::default());
        assert_eq!(r.non_zero(), (100, 200 << 20));
    }

    #[test]
    fn reads_node_allocatable_and_pod_count() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110", "bogus": "x"}}
        }))
        .expect("node");
        let (r, pods) = node_allocatable(&node);
        assert_eq!((r.milli_cpu, r.memory, pods), (2000, 4 << 30, 110));
    }
}
