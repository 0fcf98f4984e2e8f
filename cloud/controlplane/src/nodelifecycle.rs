//! Node lifecycle for edges: a node not heard from within its grace period becomes
//! `Ready=Unknown` and is tainted unreachable, but its pods are **not evicted**.
//!
//! An edge is heard from through its Lease in `kube-node-lease` (renewed every few seconds) and
//! its Ready condition's heartbeat. When neither is newer than the grace period, every
//! condition the edge reported turns `Unknown` ("Kubelet stopped posting node status.", as on
//! Kubernetes), the node gets the `node.kubernetes.io/unreachable` taints (`NoSchedule` and
//! `NoExecute`), and its pods' Ready condition turns False, with `NodeNotReady` events.
//!
//! Where Kubernetes then evicts the pods once their `NoExecute` toleration runs out (300 s by
//! default), Wedge does not: edges keep running offline (the autonomy KubeEdge promises), so
//! the pods stay bound to their node, are not recreated elsewhere, and are not left
//! Terminating; when the edge is back it reports them again. A node reporting `Ready=False`
//! gets the `not-ready` taints instead; one reporting `Ready=True` has both removed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::scheduler::fit::{TAINT_NOT_READY, TAINT_UNREACHABLE};

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the reconciler shares.
pub struct Context {
    client: Client,
    leases: Store<Lease>,
    pods: Store<Pod>,
    grace: Duration,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` resolves; `grace` is how long a node may stay silent
/// (kube-controller-manager's `--node-monitor-grace-period`).
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (leases, writer) = reflector::store();
    let lease_changes = reflector::reflector(
        writer,
        watcher(
            Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client: client.clone(),
        leases,
        pods,
        grace,
    });
    Controller::new(Api::<Node>::all(client), watcher::Config::default())
        .watches_stream(lease_changes, |lease| {
            Some(ObjectRef::new(&lease.name_any()))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "node lifecycle reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

/// When the node was last heard from: its lease renewal or its Ready heartbeat, the later.
fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<jiff::Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renewed.max(heartbeat)
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The taints a node's readiness calls for: `(key, effect)`.
fn readiness_taints(ready: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let key = match ready {
        Some("True") => return Vec::new(),
        Some("Unknown") => TAINT_UNREACHABLE,
        _ => TAINT_NOT_READY,
    };
    vec![(key, "NoSchedule"), (key, "NoExecute")]
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.name_any();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
    let heard = last_heard(&node, lease.as_deref());
    let silent_for = heard.map(|h| {
        let secs = jiff::Timestamp::now().duration_since(h).as_secs_f64();
        Duration::from_secs_f64(secs.max(0.0))
    });
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut ready = ready_condition(&node).map(|c| c.status.clone());
    let stale = silent_for.is_none_or(|s| s > ctx.grace);
    // A node that never reported is left alone until it does: it is still registering.
    if stale && heard.is_some() && ready.as_deref() != Some("Unknown") {
        mark_unknown(&node, &ctx, &api).await?;
        ready = Some("Unknown".to_owned());
    }
    sync_taints(&node, &api, ready.as_deref(), heard.is_some()).await?;
    // Look again when the grace period would run out.
    Ok(match silent_for {
        Some(s) if !stale => Action::requeue(ctx.grace - s + Duration::from_millis(100)),
        _ => Action::requeue(ctx.grace),
    })
}

/// Turns the node's conditions Unknown and its pods not Ready.
async fn mark_unknown(node: &Node, ctx: &Context, api: &Api<Node>) -> Result<(), Error> {
    let name = node.name_any();
    let now = now();
    let conditions: Vec<serde_json::Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now,
            })
        })
        .collect();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": conditions}})),
    )
    .await
    .map_err(|e| Error::api("mark unreachable", node, e))?;
    tracing::warn!(node = %name, "node stopped reporting: Ready=Unknown, its pods stay");
    ctx.recorder.record(
        node.object_ref(&()),
        EventType::Normal,
        "NodeNotReady",
        &format!("Node {name} status is now: NodeNotReady"),
    );
    let on_node: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
        .filter(|p| crate::pods::is_ready(p))
        .collect();
    for pod in on_node {
        let pods: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now, "lastProbeTime": null}
        ]}});
        match pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Err(e) if !Error::is_gone_or_conflict(&e) => {
                return Err(Error::api("mark not ready", &*pod, e));
            }
            _ => {}
        }
        ctx.recorder.record(
            pod.object_ref(&()),
            EventType::Warning,
            "NodeNotReady",
            "Node is not ready",
        );
    }
    Ok(())
}

/// Adds the taints readiness calls for and removes those it no longer does.
async fn sync_taints(
    node: &Node,
    api: &Api<Node>,
    ready: Option<&str>,
    reported: bool,
) -> Result<(), Error> {
    if !reported {
        return Ok(());
    }
    let wanted = readiness_taints(ready);
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE;
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in &wanted {
        if !taints.iter().any(|t| t.key == *key && t.effect == *effect) {
            taints.push(Taint {
                key: (*key).to_owned(),
                effect: (*effect).to_owned(),
                time_added: (*effect == "NoExecute").then(|| {
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
                }),
                value: None,
            });
        }
    }
    if taints == current {
        return Ok(());
    }
    // A merge patch with the resourceVersion: the whole list, only if no one changed it meanwhile.
    let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": taints}});
    match api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Err(e) if !Error::is_gone_or_conflict(&e) => Err(Error::api("taint", node, e)),
        _ => Ok(()),
    }
}

fn error_policy(_node: Arc<Node>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "node lifecycle reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_follow_readiness() {
        assert!(readiness_taints(Some("True")).is_empty());
        assert_eq!(
            readiness_taints(Some("Unknown")),
            [
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        assert_eq!(readiness_taints(Some("False"))[0].0, TAINT_NOT_READY);
    }

    #[test]
    fn heard_from_is_the_later_of_lease_and_heartbeat() {
        let node: Node = serde_json::from_value(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:10Z"}]}}))
        .expect("node");
        let lease: Lease =
            serde_json::from_value(json!({"spec": {"renewTime": "2026-01-01T00:00:20.000000Z"}}))
                .expect("lease");
        let heard = last_heard(&node, Some(&lease)).expect("heard");
        assert_eq!(heard.to_string(), "2026-01-01T00:00:20Z");
        assert_eq!(
            last_heard(&node, None).expect("heard").to_string(),
            "2026-01-01T00:00:10Z"
        );
    }
}
