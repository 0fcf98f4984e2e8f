//! The `ResourceQuota` admission plugin, and the part of kube-controller-manager's quota
//! controller that keeps `status.used` current.
//!
//! What is counted, per namespace ([`evaluators`]): every namespaced kind as
//! `count/<resource>[.<group>]`, the older bare names (`pods`, `services`, `secrets`,
//! `configmaps`, `replicationcontrollers`, `resourcequotas`, `persistentvolumeclaims`), the
//! compute resources of pods that have not finished (`requests.cpu`, `limits.memory`, ...; `cpu`
//! and `memory` mean the requests), a pod's amount being the larger of its containers' sum and
//! its largest init container, as the scheduler counts it; `services.nodeports`,
//! `services.loadbalancers`; `requests.storage` of claims, also per StorageClass
//! (`<class>.storageclass.storage.k8s.io/requests.storage`). Scopes `BestEffort`,
//! `NotBestEffort`, `Terminating`, `NotTerminating` and `PriorityClass` select the pods a quota
//! counts (a scoped quota counts no other kind). Names no evaluator knows (extended resources)
//! are stored and shown, not enforced.
//!
//! A new object is charged before it is stored: every quota of its namespace that counts it is
//! checked against the usage counted from the objects stored now, and written with the new
//! usage, under the quota's resourceVersion (two objects admitted at once cannot both take the
//! last unit). One that then fails to be stored stays charged until the next recount, as on
//! Kubernetes. An update is recounted, not refused (a Service that becomes a NodePort past
//! `services.nodeports` is stored and shows over its limit). The recount ([`refresh`]) runs
//! when an object a quota counts is stored, deleted, or changes what it counts for (a pod
//! that finished), and when a quota is written.

mod evaluators;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use wedge_core::quantity::{format_milli, parse_milli};

use self::evaluators::{COMPUTE, binary, canonical, kind_of, usage};
use super::super::Api;
use super::super::error::ApiError;
use super::name_of;
use crate::storage::{ObjectKey, StoreError};

const STORAGE: &str = "resourcequotas";
/// Attempts at charging quotas that keep changing underneath.
const RETRIES: usize = 8;

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

/// Whether `quota`'s scopes select `object`, of `kind`: scopes speak of pods, so a quota with
/// any selects no other kind (kube's generic evaluator matches no scope).
fn selects(quota: &Value, kind: &str, object: &Value) -> bool {
    let scopes = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let selector = quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if kind != "pods" {
        return scopes.is_empty() && selector.is_empty();
    }
    let pod = object;
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
    if !scopes.iter().filter_map(Value::as_str).all(scope_ok) {
        return false;
    }
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

/// One hard limit of a quota.
struct Limit {
    /// The name as the quota writes it (`cpu`, `count/secrets`).
    written: String,
    /// The name it is counted under (`requests.cpu`, `secrets`).
    name: String,
    /// In thousandths.
    max: u64,
}

/// The hard limits of a quota that an evaluator counts (others are stored and shown, with
/// nothing used).
fn hard(quota: &Value) -> Vec<Limit> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(written, v)| {
                    let name = canonical(written);
                    kind_of(&name)?;
                    let max = parse_milli(v.as_str()?).ok()?;
                    Some(Limit {
                        written: written.clone(),
                        name,
                        max,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the namespace's objects count for under `quota`, for the names it limits; `except`
/// (a kind and a name) leaves out the object being charged.
fn used_by(
    api: &Api,
    namespace: &str,
    quota: &Value,
    except: Option<(&str, &str)>,
) -> BTreeMap<String, u64> {
    let limits = hard(quota);
    let names: BTreeSet<&str> = limits.iter().map(|l| l.name.as_str()).collect();
    let kinds: BTreeSet<&str> = names.iter().filter_map(|n| kind_of(n)).collect();
    let mut total = BTreeMap::new();
    for kind in kinds {
        let (objects, _, _) = api.store.list(kind, Some(namespace), None, None, |_| true);
        for object in objects.iter().map(|o| o.value()) {
            if except.is_some_and(|(k, n)| k == kind && name_of(&object) == n)
                || !selects(quota, kind, &object)
            {
                continue;
            }
            for (name, amount) in usage(kind, &object) {
                if names.contains(name.as_str()) {
                    *total.entry(name).or_default() += amount;
                }
            }
        }
    }
    total
}

/// `status` of `quota`: its hard limits as written, and what is used of each counted.
fn status(quota: &Value, used: &BTreeMap<String, u64>) -> Value {
    let hard_written = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    let mut shown = Map::new();
    for limit in hard(quota) {
        let amount = used.get(&limit.name).copied().unwrap_or(0);
        shown.insert(
            limit.written,
            json!(format_milli(amount, binary(&limit.name))),
        );
    }
    json!({"hard": hard_written, "used": shown})
}

fn pretty(pairs: &[(String, u64)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", format_milli(*v, binary(k))))
        .collect::<Vec<_>>()
        .join(",")
}

/// A 403 for `name` of `kind`, as the quota plugin words it (`configmaps "x" is forbidden:`).
fn forbidden(kind: &str, name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::Forbidden(format!("{kind} \"{name}\" is forbidden: {why}"))
}

/// Checks a new `object` of `kind` (its storage key: `pods`, `deployments.apps`) against every
/// quota of its namespace that counts it, and charges them.
pub(crate) async fn charge(
    api: &Api,
    kind: &str,
    namespace: &str,
    object: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let name = name_of(object);
    let wanted = usage(kind, object);
    for _ in 0..RETRIES {
        let (quotas, _, _) = api
            .store
            .list(STORAGE, Some(namespace), None, None, |_| true);
        let mut writes = Vec::new();
        for stored in &quotas {
            let quota = stored.value();
            let limits = hard(&quota);
            if !selects(&quota, kind, object)
                || !limits.iter().any(|l| wanted.contains_key(&l.name))
            {
                continue;
            }
            if kind == "pods" {
                let missing: Vec<String> = limits
                    .iter()
                    .filter(|l| COMPUTE.iter().any(|c| c.2 == l.name))
                    .filter_map(|l| {
                        let who = unspecified(object, &l.name);
                        (!who.is_empty()).then(|| format!("{} for: {}", l.written, who.join(",")))
                    })
                    .collect();
                if !missing.is_empty() {
                    return Err(forbidden(
                        kind,
                        name,
                        format!(
                            "failed quota: {}: must specify {}",
                            name_of(&quota),
                            missing.join("; ")
                        ),
                    ));
                }
            }
            let mut used = used_by(api, namespace, &quota, Some((kind, name)));
            let (mut requested, mut now, mut limited) = (Vec::new(), Vec::new(), Vec::new());
            for limit in &limits {
                let want = wanted.get(&limit.name).copied().unwrap_or(0);
                let have = used.get(&limit.name).copied().unwrap_or(0);
                if want > 0 && have.saturating_add(want) > limit.max {
                    requested.push((limit.written.clone(), want));
                    now.push((limit.written.clone(), have));
                    limited.push((limit.written.clone(), limit.max));
                }
            }
            if !requested.is_empty() {
                return Err(forbidden(
                    kind,
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
            for limit in &limits {
                if let Some(amount) = wanted.get(&limit.name) {
                    *used.entry(limit.name.clone()).or_default() += amount;
                }
            }
            writes.push((stored.rv, quota.clone(), status(&quota, &used)));
        }
        if dry_run || writes.is_empty() {
            return Ok(());
        }
        match write_statuses(api, namespace, writes).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, "", STORAGE)),
        }
    }
    Err(ApiError::conflict(
        "",
        STORAGE,
        namespace,
        format!("the quotas kept changing while {kind} {name:?} was charged; try again"),
    ))
}

async fn write_statuses(
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
        api.store.update(&k, quota, Some(rv)).await?;
    }
    Ok(())
}

/// Recounts the quotas of `namespace` that count `kind` (every quota when `kind` is `None`:
/// a quota was written), after an object of it came, went or changed what it counts for.
pub(crate) async fn refresh(api: &Api, namespace: &str, kind: Option<&str>) {
    for _ in 0..RETRIES {
        let (quotas, _, _) = api
            .store
            .list(STORAGE, Some(namespace), None, None, |_| true);
        let writes: Vec<_> = quotas
            .iter()
            .map(|stored| (stored, stored.value()))
            .filter(|(_, quota)| {
                kind.is_none_or(|kind| hard(quota).iter().any(|l| kind_of(&l.name) == Some(kind)))
            })
            .map(|(stored, quota)| {
                let used = used_by(api, namespace, &quota, None);
                let status = status(&quota, &used);
                (stored.rv, quota, status)
            })
            .collect();
        if writes.is_empty() {
            return;
        }
        match write_statuses(api, namespace, writes).await {
            Ok(()) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(namespace, error = %e, "recounting resource quotas");
                return;
            }
        }
    }
}

/// Whether an update of an object of `kind` changes what quotas count: a pod that finished, a
/// Service's type or ports, a claim's request. (Creates and deletes always do.)
pub(crate) fn counts_change(kind: &str, old: &Value, new: &Value) -> bool {
    match kind {
        "pods" => evaluators::finished(old) != evaluators::finished(new),
        "services" | "persistentvolumeclaims" => usage(kind, old) != usage(kind, new),
        _ => false,
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
        let mut used = BTreeMap::new();
        for pod in &pods {
            for (name, amount) in usage("pods", pod) {
                *used.entry(name).or_default() += amount;
            }
        }
        assert_eq!(used["pods"], 2000);
        assert_eq!(used["requests.cpu"], 750);
        assert_eq!(
            status(&quota, &used),
            json!({"hard": {"pods": "3", "cpu": "1", "limits.cpu": "2"},
                   "used": {"pods": "2", "cpu": "750m", "limits.cpu": "750m"}})
        );
    }

    #[test]
    fn scopes_select_the_pods_a_quota_counts() {
        let best_effort =
            json!({"metadata": {"name": "be"}, "spec": {"containers": [{"name": "c"}]}});
        let burstable = pod("b", "100m", "Running");
        let only_be = json!({"spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}});
        assert!(selects(&only_be, "pods", &best_effort));
        assert!(!selects(&only_be, "pods", &burstable));
        assert!(!selects(&only_be, "configmaps", &json!({})));
        let high = json!({"spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        let mut with_class = burstable.clone();
        with_class["spec"]["priorityClassName"] = json!("high");
        assert!(selects(&high, "pods", &with_class));
        assert!(!selects(&high, "pods", &burstable));
        assert_eq!(unspecified(&best_effort, "limits.memory"), ["c"]);
    }
}
