//! What workload controllers ask of a pod: is it active, ready, available; who controls it;
//! which to remove first when scaling down.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The owner reference that marks `meta`'s controller.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// Not finished and not being deleted: counts towards a workload's replicas.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// When the pod's Ready condition became True, if it is.
fn ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => now.duration_since(since).as_secs() >= i64::from(min_ready_seconds),
    }
}

/// The order in which to delete pods when scaling down, first to go first: unassigned before
/// assigned, pending before running, not ready before ready, newer before older (the gist of
/// kube-controller-manager's `ActivePods` ordering).
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then(running(a).cmp(&running(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then(created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn unready_and_unassigned_pods_go_first() {
        let ready = pod(
            serde_json::json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        let running = pod(
            serde_json::json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running"}}),
        );
        let pending = pod(serde_json::json!({"spec": {"containers": []}}));
        let mut pods = [ready.clone(), running.clone(), pending.clone()];
        pods.sort_by(deletion_order);
        assert_eq!(pods.to_vec(), [pending, running, ready.clone()]);
        assert!(is_available(&ready, 0, jiff::Timestamp::now()));
        assert!(
            !is_available(&ready, 5, jiff::Timestamp::now()),
            "no transition time: not yet"
        );
    }
}
