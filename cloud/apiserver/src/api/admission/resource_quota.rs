//! The `ResourceQuota` admission plugin, and the part of kube-controller-manager's quota
//! controller that keeps `status.used` current.
//!
//! What is counted, per namespace: `pods` (and `count/pods`) and the compute resources of pods
//! that have not finished (`requests.cpu`, `requests.memory`, `limits.cpu`, `limits.memory`,
//! the same for `ephemeral-storage`, `cpu` and `memory` meaning the requests), a pod's amount
//! being the larger of its containers' sum and its largest init container, as the scheduler
//! counts it. Scopes `BestEffort`, `NotBestEffort`, `Terminating`, `NotTerminating` and
//! `PriorityClass` select the pods a quota counts. Other hard limits (object counts of other
//! kinds) are stored and shown, not enforced.
//!
//! A new pod is charged before it is stored: every quota of its namespace is checked against
//! the usage counted from the pods stored now, and written with the new usage, under the
//! quota's resourceVersion (two pods admitted at once cannot both take the last unit). A pod
//! that then fails to be stored stays charged until the next recount, as on Kubernetes. The
//! recount ([`refresh`]) runs when a pod is stored, deleted, or finishes, and when a quota is
//! written.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use wedge_core::quantity::{format_milli, parse_milli};

use super::super::Api;
use super::super::error::ApiError;
use super::{forbidden, name_of};
use crate::storage::{ObjectKey, StoreError};

const STORAGE: &str = "resourcequotas";
/// Attempts at charging quotas that keep changing underneath.
const RETRIES: usize = 8;

/// The compute resources counted, and the name each is summed under.
const COMPUTE: [(&str, &str, &str); 6] = [
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

/// The name a hard limit is counted under (`cpu` is `requests.cpu`).
fn canonical(resource: &str) -> &str {
    match resource {
        "cpu" => "requests.cpu",
        "memory" => "requests.memory",
        "ephemeral-storage" => "requests.ephemeral-storage",
        "count/pods" => "pods",
        other => other,
    }
}

fn binary(resource: &str) -> bool {
    resource.contains("memory") || resource.contains("storage")
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// What one pod counts for, in thousandths, by canonical name.
fn usage(pod: &Value) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    if finished(pod) {
        return out;
    }
    out.insert("pods", 1000);
    for (field, resource, name) in COMPUTE {
        let amount = |c: &Value| {
            c.pointer(&format!("/resources/{field}/{resource}"))
                .and_then(Value::as_str)
                .and_then(|q| parse_milli(q).ok())
                .unwrap_or(0)
        };
        let list = |l: &str| {
            pod.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let sum: u64 = list("containers").iter().map(amount).sum();
        let init = list("initContainers").iter().map(amount).max().unwrap_or(0);
        out.insert(name, sum.max(init));
    }
    out
}

/// Whether a container of `pod` leaves out what a hard limit on `name` needs it to say.
fn unspecified(pod: &Value, name: &str) -> Vec<String> {
    let Some((field, resource)) = name.split_once('.') else {
        return Vec::new();
    };
    super::containers(pod)
        .filter(|c| {
            c.pointer(&format!("/resources/{field}/{resource}"))
                .is_none_or(Value::is_null)
        })
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Whether `quota`'s scopes select `pod`.
fn selects(quota: &Value, pod: &Value) -> bool {
    let best_effort = super::super::defaults::qos_class(pod) == "BestEffort";
    let terminating = pod
        .pointer("/spec/activeDeadlineSeconds")
        .is_some_and(|v| !v.is_null());
    let scope_ok = |scope: &str| match scope {
        "BestEffort" => best_effort,
        "NotBestEffort" => !best_effort,
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        _ => true,
    };
    let scopes = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !scopes.iter().filter_map(Value::as_str).all(scope_ok) {
        return false;
    }
    let selector = quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    selector.iter().all(|e| {
        let scope = e["scopeName"].as_str().unwrap_or_default();
        if scope != "PriorityClass" {
            return scope_ok(scope);
        }
        let class = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty());
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str() {
            Some("In") => class.is_some_and(|c| values.contains(&c)),
            Some("NotIn") => class.is_none_or(|c| !values.contains(&c)),
            Some("Exists") => class.is_some(),
            Some("DoesNotExist") => class.is_none(),
            _ => false,
        }
    })
}

/// The hard limits of a quota, by canonical name, with the name it was written under.
fn hard(quota: &Value) -> Vec<(String, &'static str, u64)> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let name = COMPUTE
                        .iter()
                        .map(|c| c.2)
                        .chain(["pods"])
                        .find(|n| *n == canonical(k))?;
                    Some((k.clone(), name, parse_milli(v.as_str()?).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the namespace's pods (but `except`) count for under `quota`.
fn used_by(pods: &[Value], quota: &Value, except: Option<&str>) -> BTreeMap<&'static str, u64> {
    let mut total = BTreeMap::new();
    for pod in pods
        .iter()
        .filter(|p| except.is_none_or(|n| name_of(p) != n) && selects(quota, p))
    {
        for (name, amount) in usage(pod) {
            *total.entry(name).or_default() += amount;
        }
    }
    total
}

/// `status` of `quota`: its hard limits as written, and what is used of each.
fn status(quota: &Value, used: &BTreeMap<&'static str, u64>) -> Value {
    let hard_written = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    let mut shown = Map::new();
    for (written, name, _) in hard(quota) {
        let amount = used.get(name).copied().unwrap_or(0);
        shown.insert(written.clone(), json!(format_milli(amount, binary(name))));
    }
    json!({"hard": hard_written, "used": shown})
}

fn pods_of(api: &Api, namespace: &str) -> Vec<Value> {
    let (pods, _, _) = api
        .store
        .list("pods", Some(namespace), None, None, |_| true);
    pods.iter().map(|p| p.value()).collect()
}

fn pretty(pairs: &[(String, u64)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", format_milli(*v, binary(k))))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks a new pod against every quota of its namespace and charges them.
pub(crate) fn charge(
    api: &Api,
    namespace: &str,
    pod: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let name = name_of(pod);
    for _ in 0..RETRIES {
        let (quotas, _, _) = api
            .store
            .list(STORAGE, Some(namespace), None, None, |_| true);
        if quotas.is_empty() {
            return Ok(());
        }
        let pods = pods_of(api, namespace);
        let wanted = usage(pod);
        let mut writes = Vec::new();
        for stored in &quotas {
            let quota = stored.value();
            if !selects(&quota, pod) {
                continue;
            }
            let limits = hard(&quota);
            let missing: Vec<String> = limits
                .iter()
                .filter(|(_, n, _)| *n != "pods")
                .filter_map(|(written, n, _)| {
                    let who = unspecified(pod, n);
                    (!who.is_empty()).then(|| format!("{written} for: {}", who.join(",")))
                })
                .collect();
            if !missing.is_empty() {
                return Err(forbidden(
                    name,
                    format!(
                        "failed quota: {}: must specify {}",
                        name_of(&quota),
                        missing.join("; ")
                    ),
                ));
            }
            let mut used = used_by(&pods, &quota, Some(name));
            let (mut requested, mut now, mut limited) = (Vec::new(), Vec::new(), Vec::new());
            for (written, n, max) in &limits {
                let want = wanted.get(n).copied().unwrap_or(0);
                let have = used.get(n).copied().unwrap_or(0);
                if want > 0 && have.saturating_add(want) > *max {
                    requested.push((written.clone(), want));
                    now.push((written.clone(), have));
                    limited.push((written.clone(), *max));
                }
            }
            if !requested.is_empty() {
                return Err(forbidden(
                    name,
                    format!(
                        "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                        name_of(&quota),
                        pretty(&requested),
                        pretty(&now),
                        pretty(&limited)
                    ),
                ));
            }
            for (n, amount) in &wanted {
                *used.entry(n).or_default() += amount;
            }
            writes.push((stored.rv, quota.clone(), status(&quota, &used)));
        }
        if dry_run {
            return Ok(());
        }
        match write_statuses(api, namespace, writes) {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, "", STORAGE)),
        }
    }
    Err(ApiError::conflict(
        "",
        STORAGE,
        namespace,
        format!("the quotas kept changing while pod {name:?} was charged; try again"),
    ))
}

fn write_statuses(
    api: &Api,
    namespace: &str,
    writes: Vec<(u64, Value, Value)>,
) -> Result<(), StoreError> {
    for (rv, mut quota, status) in writes {
        if quota.get("status") == Some(&status) {
            continue;
        }
        quota["status"] = status;
        let k = ObjectKey::new(STORAGE, namespace, name_of(&quota));
        api.store.update(&k, quota, Some(rv))?;
    }
    Ok(())
}

/// Recounts every quota of `namespace` from its pods (after a pod was stored, deleted or
/// finished, or a quota written).
pub(crate) fn refresh(api: &Api, namespace: &str) {
    for _ in 0..RETRIES {
        let (quotas, _, _) = api
            .store
            .list(STORAGE, Some(namespace), None, None, |_| true);
        if quotas.is_empty() {
            return;
        }
        let pods = pods_of(api, namespace);
        let writes = quotas
            .iter()
            .map(|stored| {
                let quota = stored.value();
                let used = used_by(&pods, &quota, None);
                let status = status(&quota, &used);
                (stored.rv, quota, status)
            })
            .collect();
        match write_statuses(api, namespace, writes) {
            Ok(()) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(namespace, error = %e, "recounting resource quotas");
                return;
            }
        }
    }
}

/// Whether a pod write changes what quotas count: a pod stored or deleted, or one that
/// finished.
pub(crate) fn counts_change(old: Option<&Value>, new: Option<&Value>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => finished(old) != finished(new),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}]},
            "status": {"phase": phase}})
    }

    #[test]
    fn quotas_count_running_pods_and_their_requests() {
        let quota = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "3", "cpu": "1", "limits.cpu": "2"}}});
        let pods = [
            pod("a", "250m", "Running"),
            pod("b", "500m", "Pending"),
            pod("c", "1", "Succeeded"),
        ];
        let used = used_by(&pods, &quota, None);
        assert_eq!(used["pods"], 2000);
        assert_eq!(used["requests.cpu"], 750);
        assert_eq!(
            status(&quota, &used),
            json!({"hard": {"pods": "3", "cpu": "1", "limits.cpu": "2"},
                   "used": {"pods": "2", "cpu": "750m", "limits.cpu": "750m"}})
        );
        assert_eq!(used_by(&pods, &quota, Some("a"))["pods"], 1000);
    }

    #[test]
    fn scopes_select_the_pods_a_quota_counts() {
        let best_effort =
            json!({"metadata": {"name": "be"}, "spec": {"containers": [{"name": "c"}]}});
        let burstable = pod("b", "100m", "Running");
        let only_be = json!({"spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}});
        assert!(selects(&only_be, &best_effort));
        assert!(!selects(&only_be, &burstable));
        let high = json!({"spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        let mut with_class = burstable.clone();
        with_class["spec"]["priorityClassName"] = json!("high");
        assert!(selects(&high, &with_class));
        assert!(!selects(&high, &burstable));
        assert_eq!(unspecified(&best_effort, "limits.memory"), ["c"]);
    }
}
