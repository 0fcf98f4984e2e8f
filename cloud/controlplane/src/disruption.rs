//! The disruption controller: keeps each PodDisruptionBudget's status, which the API server's
//! `pods/eviction` reads to allow or refuse an eviction (`kubectl drain`), as
//! kube-controller-manager's does (v1.33).
//!
//! For a budget, the pods its selector picks in its namespace are counted ([`decide`], pure):
//! - **expected pods**: with an integer `minAvailable`, the pods there are; with a percentage,
//!   or with `maxUnavailable`, the replicas their controllers want (a ReplicaSet's, or its
//!   Deployment's; a StatefulSet's; a ReplicationController's), read through each controller
//!   once; a pod with no such controller makes the count fail, reported as a
//!   `CalculateExpectedPodCountFailed` event and no disruption allowed, as kube does;
//! - **desired healthy**: `minAvailable` (a percentage rounded up), or the expected pods less
//!   `maxUnavailable` (rounded up);
//! - **current healthy**: pods Ready, not being deleted and not just evicted (`disruptedPods`,
//!   which an eviction fills and this controller empties when the pod is seen going, or after
//!   two minutes, when it wakes again);
//! - **disruptions allowed**: current less desired healthy, never below 0 (0 with no pods
//!   expected); the `DisruptionAllowed` condition says `SufficientPods` or `InsufficientPods`.
//!
//! A budget is looked at when it changes and when a pod of its namespace that it selects
//! changes, and the status is written only when it differs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::events::{EventType, Recorder};

/// How long an evicted pod counts as disrupted without being seen going (kube's
/// `DeletionTimeout`).
const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

struct Context {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "controllermanager"),
        client: client.clone(),
        pods,
    });
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client),
        watcher::Config::default(),
    );
    let budgets = controller.store();
    controller
        .watches_shared_stream(pod_changes, move |pod: Arc<Pod>| {
            let namespace = pod.namespace().unwrap_or_default();
            budgets
                .state()
                .into_iter()
                .filter(|b| b.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|b| selects(b, &pod))
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "disruption budget reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

/// Whether `budget`'s selector picks `pod` (a budget without a selector picks nothing; an
/// empty one, everything, as policy/v1 reads it).
fn selects(budget: &PodDisruptionBudget, pod: &Pod) -> bool {
    budget
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| crate::selector::matches(sel, pod.metadata.labels.as_ref()))
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `IntOrString` scaled against `total`, percentages rounded up
/// (`GetScaledValueFromIntOrPercent(.., true)`); `None` for a malformed percentage.
fn scaled(value: &IntOrString, total: i32) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.parse().ok()?;
            let total = i64::from(total);
            i32::try_from((percent * total + 99) / 100).ok()
        }
    }
}

/// What a budget's status says, from its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Pods the budget expects.
    pub expected: i32,
    /// Healthy pods wanted.
    pub desired_healthy: i32,
    /// Healthy pods now.
    pub current_healthy: i32,
    /// Evictions allowed now.
    pub disruptions_allowed: i32,
    /// Evicted pods not yet seen going, with when they were evicted.
    pub disrupted: BTreeMap<String, String>,
    /// The earliest an entry of `disrupted` expires.
    pub next_expiry: Option<jiff::Timestamp>,
}

/// Counts a budget's pods. `scale` is what their controllers want (needed for a percentage or
/// `maxUnavailable`; `None` when it could not be had); `now` is the time.
pub fn decide(
    budget: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    scale: Option<i32>,
    now: jiff::Timestamp,
) -> Counts {
    let spec = budget.spec.clone().unwrap_or_default();
    let recorded: BTreeMap<String, String> = budget
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, at)| (name, at.0.to_string()))
        .collect();
    // An evicted pod stays counted as disrupted until it is seen going, or for two minutes.
    let mut disrupted = BTreeMap::new();
    let mut next_expiry: Option<jiff::Timestamp> = None;
    for (name, at) in recorded {
        let going = pods
            .iter()
            .find(|p| p.name_any() == name)
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        let Ok(at_time) = at.parse::<jiff::Timestamp>() else {
            continue;
        };
        let expires =
            at_time + jiff::SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or_default();
        if going || expires <= now {
            continue;
        }
        next_expiry = Some(next_expiry.map_or(expires, |e: jiff::Timestamp| e.min(expires)));
        disrupted.insert(name, at);
    }
    let current_healthy = pods
        .iter()
        .filter(|p| {
            ready(p)
                && p.metadata.deletion_timestamp.is_none()
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let pod_count = pods.len() as i32;
    let (expected, desired_healthy) = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(min)), _) => (pod_count, *min),
        (Some(min @ IntOrString::String(_)), _) => match scale {
            Some(total) => (total, scaled(min, total).unwrap_or(total)),
            None => (0, 0),
        },
        (None, Some(max)) => match scale {
            Some(total) => (total, (total - scaled(max, total).unwrap_or(0)).max(0)),
            None => (0, 0),
        },
        (None, None) => (pod_count, 1),
    };
    let disruptions_allowed = if expected <= 0 || (scale.is_none() && needs_scale(budget)) {
        0
    } else {
        (current_healthy - desired_healthy).max(0)
    };
    Counts {
        expected,
        desired_healthy,
        current_healthy,
        disruptions_allowed,
        disrupted,
        next_expiry,
    }
}

/// Whether the budget counts against its pods' controllers' scale.
fn needs_scale(budget: &PodDisruptionBudget) -> bool {
    let spec = budget.spec.as_ref();
    spec.and_then(|s| s.max_unavailable.as_ref()).is_some()
        || matches!(
            spec.and_then(|s| s.min_available.as_ref()),
            Some(IntOrString::String(_))
        )
}

/// What the pods' controllers want in all, each counted once; why not, if a pod has none
/// that has a scale.
async fn controllers_scale(
    client: &Client,
    namespace: &str,
    pods: &[Arc<Pod>],
) -> Result<i32, String> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for pod in pods {
        let Some(owner) = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .cloned()
        else {
            return Err(format!("found no controllers for pod {:?}", pod.name_any()));
        };
        let (group, kind, name) = match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => {
                // A Deployment's ReplicaSet counts as its Deployment.
                let rs: Value =
                    get(client, "apps", "v1", "replicasets", namespace, &owner.name).await?;
                match rs
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|o| o["controller"] == true && o["kind"] == "Deployment")
                    })
                    .and_then(|o| o["name"].as_str())
                {
                    Some(d) => ("apps", "deployments", d.to_owned()),
                    None => ("apps", "replicasets", owner.name.clone()),
                }
            }
            ("apps/v1", "StatefulSet") => ("apps", "statefulsets", owner.name.clone()),
            ("v1", "ReplicationController") => ("", "replicationcontrollers", owner.name.clone()),
            (_, kind) => {
                return Err(format!(
                    "{kind} {:?} has no scale the budget can count",
                    owner.name
                ));
            }
        };
        if !seen.insert((kind, name.clone())) {
            continue;
        }
        let object: Value = get(client, group, "v1", kind, namespace, &name).await?;
        total += object
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .and_then(|r| i32::try_from(r).ok())
            .unwrap_or(1);
    }
    Ok(total)
}

async fn get(
    client: &Client,
    group: &str,
    version: &str,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Value, String> {
    let gvk = kube::api::GroupVersionKind::gvk(group, version, "");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    let object = api
        .get(name)
        .await
        .map_err(|e| format!("reading {plural} {name:?}: {e}"))?;
    serde_json::to_value(object).map_err(|e| format!("reading {plural} {name:?}: {e}"))
}

async fn reconcile(budget: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    if budget.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = budget.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && selects(&budget, p))
        .collect();
    let scale = if needs_scale(&budget) {
        match controllers_scale(&ctx.client, &namespace, &pods).await {
            Ok(total) => Some(total),
            Err(why) => {
                ctx.recorder.record(
                    budget.object_ref(&()),
                    EventType::Warning,
                    "CalculateExpectedPodCountFailed",
                    &format!("Failed to calculate the number of expected pods: {why}"),
                );
                None
            }
        }
    } else {
        None
    };
    let now = jiff::Timestamp::now();
    let counts = decide(&budget, &pods, scale, now);
    let allowed = counts.disruptions_allowed > 0;
    let condition = json!({
        "type": "DisruptionAllowed",
        "status": if allowed { "True" } else { "False" },
        "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
        "message": "",
        "observedGeneration": budget.metadata.generation,
    });
    let old = budget.status.clone().unwrap_or_default();
    let old_condition = old
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let same_condition = old_condition.is_some_and(|c| {
        c.status == condition["status"]
            && c.reason == condition["reason"]
            && c.observed_generation == budget.metadata.generation
    });
    let old_disrupted: BTreeMap<String, String> = old
        .disrupted_pods
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0.to_string()))
        .collect();
    let unchanged = same_condition
        && old.observed_generation == budget.metadata.generation
        && old.expected_pods == counts.expected
        && old.desired_healthy == counts.desired_healthy
        && old.current_healthy == counts.current_healthy
        && old.disruptions_allowed == counts.disruptions_allowed
        && old_disrupted == counts.disrupted;
    if !unchanged {
        let transition = match old_condition {
            Some(c) if same_condition => json!(c.last_transition_time),
            _ => json!(now.to_string()),
        };
        let mut condition = condition;
        condition["lastTransitionTime"] = transition;
        let status = json!({"status": {
            "observedGeneration": budget.metadata.generation,
            "expectedPods": counts.expected,
            "desiredHealthy": counts.desired_healthy,
            "currentHealthy": counts.current_healthy,
            "disruptionsAllowed": counts.disruptions_allowed,
            "disruptedPods": counts.disrupted,
            "conditions": [condition],
        }});
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &namespace);
        // A merge patch replaces disruptedPods' keys one by one: write it whole with a null
        // for each entry dropped.
        let mut status = status;
        for name in old_disrupted
            .keys()
            .filter(|n| !counts.disrupted.contains_key(*n))
        {
            status["status"]["disruptedPods"][name] = Value::Null;
        }
        match api
            .patch_status(
                &budget.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if Error::is_gone_or_conflict(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::api("update status of", &*budget, e)),
        }
    }
    Ok(match counts.next_expiry {
        Some(at) => {
            let wait = Duration::try_from(now.duration_until(at)).unwrap_or_default();
            Action::requeue(wait.max(Duration::from_millis(100)))
        }
        None => Action::await_change(),
    })
}

fn error_policy(_budget: Arc<PodDisruptionBudget>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "disruption budget reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(spec: Value, disrupted: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": spec, "status": {"disruptedPods": disrupted, "currentHealthy": 0, "desiredHealthy": 0,
            "disruptionsAllowed": 0, "expectedPods": 0}}))
        .expect("a budget")
    }

    fn pod(name: &str, ready: bool, deleting: bool) -> Arc<Pod> {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-12-05T10:00:00Z");
        }
        Arc::new(serde_json::from_value(p).expect("a pod"))
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("a time")
    }

    #[test]
    fn min_available_counts_the_ready_pods_there_are() {
        let b = budget(
            json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
            json!({}),
        );
        let pods = [
            pod("a", true, false),
            pod("b", true, false),
            pod("c", true, false),
            pod("d", false, false),
        ];
        let c = decide(&b, &pods, None, at("2026-12-05T10:00:00Z"));
        assert_eq!(
            (
                c.expected,
                c.desired_healthy,
                c.current_healthy,
                c.disruptions_allowed
            ),
            (4, 2, 3, 1)
        );
        // A pod being deleted is not healthy.
        let pods = [pod("a", true, false), pod("b", true, true)];
        assert_eq!(
            decide(&b, &pods, None, at("2026-12-05T10:00:00Z")).disruptions_allowed,
            0
        );
    }

    #[test]
    fn percentages_and_max_unavailable_count_against_the_controllers_scale() {
        let b = budget(json!({"maxUnavailable": "25%", "selector": {}}), json!({}));
        let pods = [
            pod("a", true, false),
            pod("b", true, false),
            pod("c", true, false),
            pod("d", true, false),
            pod("e", true, false),
        ];
        // 25% of 5 rounds up to 2 unavailable: 3 healthy wanted.
        let c = decide(&b, &pods, Some(5), at("2026-12-05T10:00:00Z"));
        assert_eq!(
            (c.expected, c.desired_healthy, c.disruptions_allowed),
            (5, 3, 2)
        );
        // Without the scale nothing may go.
        assert_eq!(
            decide(&b, &pods, None, at("2026-12-05T10:00:00Z")).disruptions_allowed,
            0
        );
        let min = budget(json!({"minAvailable": "50%", "selector": {}}), json!({}));
        let c = decide(&min, &pods, Some(5), at("2026-12-05T10:00:00Z"));
        assert_eq!((c.desired_healthy, c.disruptions_allowed), (3, 2));
    }

    #[test]
    fn an_evicted_pod_counts_as_disrupted_until_seen_going_or_two_minutes_pass() {
        let b = budget(
            json!({"minAvailable": 1, "selector": {}}),
            json!({"a": "2026-12-05T10:00:00Z", "gone": "2026-12-05T10:00:00Z"}),
        );
        let pods = [pod("a", true, false), pod("b", true, false)];
        let c = decide(&b, &pods, None, at("2026-12-05T10:01:00Z"));
        assert_eq!(c.disrupted.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!((c.current_healthy, c.disruptions_allowed), (1, 0));
        assert_eq!(c.next_expiry, Some(at("2026-12-05T10:02:00Z")));
        let later = decide(&b, &pods, None, at("2026-12-05T10:02:01Z"));
        assert!(later.disrupted.is_empty());
        assert_eq!(later.disruptions_allowed, 1);
    }
}
