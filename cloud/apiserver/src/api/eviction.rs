//! `pods/eviction`: a pod deleted only if its PodDisruptionBudget allows it, as
//! kube-apiserver's eviction subresource does (what `kubectl drain` posts).
//!
//! A pod that has finished, is Pending or is already being deleted goes at once. Otherwise the
//! one budget that selects it (two are an error, as on Kubernetes) must have been processed by
//! the disruption controller at its current generation and allow a disruption: the eviction
//! then takes one (`disruptionsAllowed` down, the pod in `disruptedPods`, written under the
//! budget's resourceVersion so two evictions cannot both take the last one) before the pod is
//! deleted with the eviction's `deleteOptions`. A budget that allows none gives 429, which
//! `kubectl drain` retries. An unready pod may go when the budget is healthy
//! (`unhealthyPodEvictionPolicy: IfHealthyBudget`, the default) or always (`AlwaysAllow`).

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::objects::{self, DeleteOptions, store_err};
use super::request::ResourcePath;
use super::{Api, Body, Call, value_response};
use crate::registry::ResourceInfo;
use crate::selector::LabelSelector;
use crate::storage::{ObjectKey, StoreError};

const BUDGETS: &str = "poddisruptionbudgets.policy";
/// Attempts at taking a disruption from a budget that keeps changing.
const RETRIES: usize = 8;
/// What kube-apiserver says when a budget stops an eviction.
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// How many pods a budget may hold in `disruptedPods` before evictions are refused.
const MAX_DISRUPTED: usize = 2000;

/// POST of an Eviction for pod `name`.
pub(crate) async fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let eviction = call.object()?;
    let named = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if named != name {
        return Err(ApiError::BadRequest(
            "name in URL does not match name in Eviction object".into(),
        ));
    }
    let options =
        DeleteOptions::from_body(eviction.get("deleteOptions").unwrap_or(&Value::Null), call)?;
    let namespace = path.namespace.as_deref().unwrap_or_default();
    let k = objects::key(info, Some(namespace), name);
    for _ in 0..RETRIES {
        let pod = api.store.get(&k).map_err(store_err(info))?.value();
        if !ignores_budgets(&pod) {
            match take_disruption(api, namespace, &pod).await? {
                Taken::Yes | Taken::NotNeeded => {}
                Taken::Raced => continue,
            }
        }
        objects::delete_object(api, call, info, &k, &options).await?;
        return Ok(value_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ));
    }
    Err(ApiError::conflict(
        "policy",
        "poddisruptionbudgets",
        name,
        "the disruption budget kept changing while the pod was evicted; try again",
    ))
}

/// A pod no budget protects: finished, not started, or already going.
fn ignores_budgets(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed" | "Pending")
    ) || pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

enum Taken {
    /// A disruption was taken from the budget.
    Yes,
    /// No budget selects the pod, or its policy lets it go without taking one.
    NotNeeded,
    /// The budget changed under the write: read again.
    Raced,
}

fn refused(detail: String) -> ApiError {
    ApiError::TooManyRequests {
        message: REFUSED.into(),
        causes: vec![Cause {
            reason: "DisruptionBudget",
            field: String::new(),
            message: detail,
        }],
    }
}

/// Takes one disruption from the budget that selects `pod`, if one does.
async fn take_disruption(api: &Api, namespace: &str, pod: &Value) -> Result<Taken, ApiError> {
    let labels = pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let (budgets, _, _) = api
        .store
        .list(BUDGETS, Some(namespace), None, None, |_| true);
    let selecting: Vec<_> = budgets
        .into_iter()
        .filter(|b| {
            b.value()
                .pointer("/spec/selector")
                .and_then(|s| LabelSelector::from_k8s(s).ok())
                .is_some_and(|s| s.matches(&labels))
        })
        .collect();
    let stored = match selecting.as_slice() {
        [] => return Ok(Taken::NotNeeded),
        [one] => one,
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
    };
    let mut budget = stored.value();
    let budget_name = budget
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let number = |ptr: &str| budget.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
    let generation = number("/metadata/generation");
    let observed = number("/status/observedGeneration");
    if budget.get("status").is_none_or(Value::is_null) || observed < generation {
        return Err(refused(format!(
            "The disruption budget {budget_name} is still being processed by the server."
        )));
    }
    let (healthy, desired, allowed) = (
        number("/status/currentHealthy"),
        number("/status/desiredHealthy"),
        number("/status/disruptionsAllowed"),
    );
    if !ready(pod) {
        let policy = budget
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            .unwrap_or("IfHealthyBudget");
        if policy == "AlwaysAllow" || healthy >= desired {
            return Ok(Taken::NotNeeded);
        }
    }
    if allowed < 0 {
        return Err(ApiError::Forbidden(
            "pdb disruptions allowed is negative".into(),
        ));
    }
    let disrupted = budget
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED {
        return Err(ApiError::Forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller".into(),
        ));
    }
    if allowed == 0 {
        return Err(refused(format!(
            "The disruption budget {budget_name} needs {desired} healthy pods and has {healthy} currently"
        )));
    }
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    budget["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !budget["status"]["disruptedPods"].is_object() {
        budget["status"]["disruptedPods"] = json!({});
    }
    budget["status"]["disruptedPods"][pod_name] = json!(super::meta::now());
    let k = ObjectKey::new(BUDGETS, namespace, &budget_name);
    match api.store.update(&k, budget, Some(stored.rv)).await {
        Ok(_) => Ok(Taken::Yes),
        Err(StoreError::Conflict { .. }) => Ok(Taken::Raced),
        Err(e) => Err(ApiError::from_store(e, "policy", "poddisruptionbudgets")),
    }
}
