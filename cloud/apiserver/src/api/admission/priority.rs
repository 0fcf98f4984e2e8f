//! The `Priority` admission plugin: a pod's `priorityClassName` becomes its `priority` and
//! `preemptionPolicy`; a pod without one gets the global default class's, or 0. The two system
//! classes exist from the start, as kube-apiserver creates them.

use serde_json::{Value, json};

use super::super::Api;
use super::super::error::ApiError;
use super::{forbidden, name_of};
use crate::storage::ObjectKey;

const STORAGE: &str = "priorityclasses.scheduling.k8s.io";

/// The classes kube-apiserver creates at start: name, value, description.
pub(crate) const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
];

/// The system classes as objects, for `objects::ensure_object`.
pub(crate) fn system_classes() -> impl Iterator<Item = (&'static str, Value)> {
    SYSTEM_CLASSES.iter().map(|(name, value, description)| {
        (
            *name,
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": name}, "value": value, "description": description,
                   "preemptionPolicy": "PreemptLowerPriority"}),
        )
    })
}

/// Sets a new pod's priority from its class.
pub(crate) fn admit(api: &Api, pod: &mut Value) -> Result<(), ApiError> {
    let name = name_of(pod).to_owned();
    let class_name = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    let class = match &class_name {
        Some(c) => Some(
            api.store
                .get(&ObjectKey::new(STORAGE, "", c))
                .map(|o| o.value())
                .map_err(|_| {
                    forbidden(&name, format!("no PriorityClass with name {c} was found"))
                })?,
        ),
        None => global_default(api),
    };
    let (value, policy) = match &class {
        Some(c) => (
            c.get("value").and_then(Value::as_i64).unwrap_or(0),
            c.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_owned(),
        ),
        None => (0, "PreemptLowerPriority".to_owned()),
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(forbidden(
            &name,
            format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            ),
        ));
    }
    spec.insert("priority".into(), json!(value));
    spec.insert("preemptionPolicy".into(), json!(policy));
    if class_name.is_none()
        && let Some(c) = &class
    {
        spec.insert("priorityClassName".into(), json!(name_of(c)));
    }
    Ok(())
}

/// The class marked `globalDefault`, the one with the highest value if several are.
fn global_default(api: &Api) -> Option<Value> {
    let (classes, _, _) = api.store.list(STORAGE, None, None, None, |_| true);
    classes
        .iter()
        .map(|o| o.value())
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .max_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0))
}
