//! Versions of one resource: every object is stored in one version and shown in the version it
//! is asked for, as kube-apiserver converts through its storage version.
//!
//! - `autoscaling/v1` and `autoscaling/v2` HorizontalPodAutoscalers are one resource, stored as
//!   v2. What v1 cannot say (metrics other than CPU utilisation, behaviour, conditions, current
//!   metrics) travels in the `autoscaling.alpha.kubernetes.io/*` annotations, as Kubernetes
//!   carries it, so a v2 object read and written back through v1 loses nothing.
//! - `events.k8s.io/v1` Events are core/v1 Events under other field names (`regarding`,
//!   `note`, `deprecatedCount`...), stored with them: `kubectl get events` shows what a
//!   controller recorded through either API.
//! - A custom resource is stored in its CRD's storage version; its other versions differ in
//!   `apiVersion` only (the `None` conversion strategy; Wedge calls no conversion webhooks).
//!
//! Stored JSON has its keys sorted, so `apiVersion` leads: an object already in the version
//! asked for is passed on as stored, without being parsed.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::Api;
use super::error::ApiError;
use crate::registry::ResourceInfo;
use crate::storage::StoredObject;

/// The annotations autoscaling/v1 carries what it has no fields for in.
const HPA_METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const HPA_BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const HPA_CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const HPA_CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// The version objects of `info`'s resource are stored in.
pub(crate) fn storage_version(api: &Api, info: &ResourceInfo) -> String {
    match (
        info.crd.is_some(),
        info.group.as_str(),
        info.plural.as_str(),
    ) {
        (false, "autoscaling", "horizontalpodautoscalers") => "autoscaling/v2".into(),
        (false, "events.k8s.io", "events") => "v1".into(),
        (true, group, plural) if !info.preferred => api
            .registry
            .all()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural && r.preferred)
            .map_or_else(|| info.api_version(), |r| r.api_version()),
        _ => info.api_version(),
    }
}

/// `object`, written through `info`, in the version it is stored in.
pub(crate) fn to_storage(api: &Api, info: &ResourceInfo, object: Value) -> Result<Value, ApiError> {
    let target = storage_version(api, info);
    if target == info.api_version() {
        return Ok(object);
    }
    convert(object, &target)
}

/// A stored object as `info`'s version shows it.
pub(crate) fn present<'a>(info: &ResourceInfo, obj: &'a StoredObject) -> Cow<'a, StoredObject> {
    Presenter::new(info).present(obj)
}

/// Shows stored objects in one version: made once per list or watch, so that each object
/// costs a prefix compare when it is already in that version.
pub(crate) struct Presenter {
    wanted: String,
    /// `{"apiVersion":"<wanted>"`, how stored JSON in that version begins.
    prefix: Vec<u8>,
}

impl Presenter {
    /// Shows objects in `info`'s version.
    pub(crate) fn new(info: &ResourceInfo) -> Self {
        let wanted = info.api_version();
        let mut prefix = Vec::with_capacity(wanted.len() + 20);
        prefix.extend_from_slice(b"{\"apiVersion\":\"");
        prefix.extend_from_slice(wanted.as_bytes());
        prefix.push(b'"');
        Self { wanted, prefix }
    }

    /// `obj` in this version.
    pub(crate) fn present<'a>(&self, obj: &'a StoredObject) -> Cow<'a, StoredObject> {
        if obj.json.starts_with(&self.prefix) {
            return Cow::Borrowed(obj);
        }
        let value = obj.value();
        if value.get("apiVersion").and_then(Value::as_str) == Some(self.wanted.as_str()) {
            return Cow::Borrowed(obj);
        }
        match convert(value, &self.wanted)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok())
        {
            Some(json) => Cow::Owned(StoredObject {
                rv: obj.rv,
                json: json.into(),
                labels: obj.labels.clone(),
            }),
            None => Cow::Borrowed(obj),
        }
    }
}

/// A parsed object as `info`'s version shows it (what a patch is applied to).
pub(crate) fn to_version(info: &ResourceInfo, object: Value) -> Value {
    let wanted = info.api_version();
    if object.get("apiVersion").and_then(Value::as_str) == Some(wanted.as_str()) {
        return object;
    }
    match convert(object.clone(), &wanted) {
        Ok(v) => v,
        Err(_) => object,
    }
}

/// `object` in `to`.
fn convert(mut object: Value, to: &str) -> Result<Value, ApiError> {
    let from = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if from == to {
        return Ok(object);
    }
    match (kind.as_str(), from.as_str(), to) {
        ("HorizontalPodAutoscaler", "autoscaling/v2", "autoscaling/v1") => {
            hpa_v2_to_v1(&mut object)
        }
        ("HorizontalPodAutoscaler", "autoscaling/v1", "autoscaling/v2") => {
            hpa_v1_to_v2(&mut object)?
        }
        ("Event", "v1", "events.k8s.io/v1") => rename(&mut object, &CORE_TO_EVENTS),
        ("Event", "events.k8s.io/v1", "v1") => {
            rename(&mut object, &CORE_TO_EVENTS.map(|(a, b)| (b, a)))
        }
        _ => {}
    }
    if let Some(o) = object.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(to.to_owned()));
    }
    Ok(object)
}

/// core/v1 Event fields and their events.k8s.io/v1 names (`pkg/apis/events/v1/conversion.go`).
const CORE_TO_EVENTS: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(object: &mut Value, names: &[(&str, &str)]) {
    let Some(o) = object.as_object_mut() else {
        return;
    };
    let moved: Vec<(&str, Value)> = names
        .iter()
        .filter_map(|(from, to)| o.remove(*from).map(|v| (*to, v)))
        .collect();
    for (to, v) in moved {
        o.insert(to.to_owned(), v);
    }
}

fn annotations(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = object.get_mut("metadata")?.as_object_mut()?;
    let a = meta.entry("annotations").or_insert_with(|| json!({}));
    a.as_object_mut()
}

/// Whether a v2 metric is the one v1 has a field for: CPU utilisation of the pods.
fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m.pointer("/resource/name") == Some(&json!("cpu"))
        && m.pointer("/resource/target/type") == Some(&json!("Utilization"))
}

/// `Convert_autoscaling_HorizontalPodAutoscaler_To_v1_HorizontalPodAutoscaler`.
fn hpa_v2_to_v1(object: &mut Value) {
    let spec = object.get("spec").cloned().unwrap_or(json!({}));
    let status = object.get("status").cloned();
    let metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let cpu = metrics
        .iter()
        .find(|m| is_cpu_utilization(m))
        .and_then(|m| m.pointer("/resource/target/averageUtilization").cloned());
    let others: Vec<Value> = metrics
        .iter()
        .filter(|m| !is_cpu_utilization(m))
        .cloned()
        .collect();
    let mut v1 = Map::new();
    for key in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(key) {
            v1.insert(key.into(), v.clone());
        }
    }
    if let Some(cpu) = cpu {
        v1.insert("targetCPUUtilizationPercentage".into(), cpu);
    }
    let mut carried: Vec<(&str, Value)> = Vec::new();
    if !others.is_empty() {
        carried.push((HPA_METRICS, Value::Array(others)));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        carried.push((HPA_BEHAVIOR, b.clone()));
    }
    let mut v1_status = Map::new();
    if let Some(status) = &status {
        for key in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = status.get(key) {
                v1_status.insert(key.into(), v.clone());
            }
        }
        let current = status
            .get("currentMetrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(cpu) = current
            .iter()
            .find(|m| m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu")))
            .and_then(|m| m.pointer("/resource/current/averageUtilization"))
        {
            v1_status.insert("currentCPUUtilizationPercentage".into(), cpu.clone());
        }
        if !current.is_empty() {
            carried.push((HPA_CURRENT_METRICS, Value::Array(current)));
        }
        if let Some(c) = status
            .get("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            carried.push((HPA_CONDITIONS, c.clone()));
        }
    }
    if !carried.is_empty()
        && let Some(a) = annotations(object)
    {
        for (key, value) in carried {
            a.insert(key.into(), Value::String(value.to_string()));
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.insert("spec".into(), Value::Object(v1));
        if status.is_some() {
            o.insert("status".into(), Value::Object(v1_status));
        }
    }
}

/// `Convert_v1_HorizontalPodAutoscaler_To_autoscaling_HorizontalPodAutoscaler`.
fn hpa_v1_to_v2(object: &mut Value) -> Result<(), ApiError> {
    let spec = object.get("spec").cloned().unwrap_or(json!({}));
    let status = object.get("status").cloned();
    let mut carried = Map::new();
    if let Some(a) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for key in [
            HPA_METRICS,
            HPA_BEHAVIOR,
            HPA_CONDITIONS,
            HPA_CURRENT_METRICS,
        ] {
            if let Some(v) = a.remove(key) {
                let parsed: Value = v
                    .as_str()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "metadata.annotations[{key}]: not the JSON autoscaling/v2 carries there"
                        ))
                    })?;
                carried.insert(key.to_owned(), parsed);
            }
        }
        if a.is_empty()
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("annotations");
        }
    }
    let mut v2 = Map::new();
    for key in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(key) {
            v2.insert(key.into(), v.clone());
        }
    }
    let mut metrics = Vec::new();
    if let Some(cpu) = spec.get("targetCPUUtilizationPercentage") {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}));
    }
    if let Some(Value::Array(others)) = carried.remove(HPA_METRICS) {
        metrics.extend(others);
    }
    if !metrics.is_empty() {
        v2.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = carried.remove(HPA_BEHAVIOR) {
        v2.insert("behavior".into(), b);
    }
    if let Some(o) = object.as_object_mut() {
        o.insert("spec".into(), Value::Object(v2));
    }
    if let Some(status) = status {
        let mut v2_status = Map::new();
        for key in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = status.get(key) {
                v2_status.insert(key.into(), v.clone());
            }
        }
        match carried.remove(HPA_CURRENT_METRICS) {
            Some(current) => {
                v2_status.insert("currentMetrics".into(), current);
            }
            None => {
                if let Some(cpu) = status.get("currentCPUUtilizationPercentage") {
                    v2_status.insert(
                        "currentMetrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu",
                            "current": {"averageUtilization": cpu}}}]),
                    );
                }
            }
        }
        if let Some(c) = carried.remove(HPA_CONDITIONS) {
            v2_status.insert("conditions".into(), c);
        }
        if let Some(o) = object.as_object_mut() {
            o.insert("status".into(), Value::Object(v2_status));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hpa_survives_a_round_trip_through_v1() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {"team": "a"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}});
        let v1 = convert(v2.clone(), "autoscaling/v1").expect("to v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 70);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["metadata"]["annotations"]["team"], "a");
        assert!(
            v1["metadata"]["annotations"][HPA_METRICS]
                .as_str()
                .is_some_and(|m| m.contains("100Mi"))
        );
        let back = convert(v1, "autoscaling/v2").expect("back to v2");
        assert_eq!(back, v2);
    }

    #[test]
    fn a_v1_hpa_gets_its_cpu_target_as_a_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3,
                     "targetCPUUtilizationPercentage": 50}});
        let v2 = convert(v1, "autoscaling/v2").expect("to v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        let broken = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {HPA_METRICS: "not json"}}, "spec": {}});
        assert!(convert(broken, "autoscaling/v2").is_err());
    }

    #[test]
    fn events_rename_their_fields_between_the_two_apis() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "pulled", "reason": "Pulled",
            "count": 2, "source": {"component": "kubelet"}, "type": "Normal"});
        let events = convert(core.clone(), "events.k8s.io/v1").expect("to events.k8s.io");
        assert_eq!(events["regarding"]["name"], "p");
        assert_eq!(events["note"], "pulled");
        assert_eq!(events["deprecatedCount"], 2);
        assert_eq!(events["reason"], "Pulled");
        assert!(events.get("message").is_none());
        assert_eq!(convert(events, "v1").expect("back"), core);
    }

    #[test]
    fn an_object_in_the_version_asked_for_is_not_parsed_again() {
        let info = crate::registry::Registry::builtin()
            .get("autoscaling", "v1", "horizontalpodautoscalers")
            .expect("autoscaling/v1");
        let v1 = StoredObject {
            rv: 3,
            json: br#"{"apiVersion":"autoscaling/v1","kind":"HorizontalPodAutoscaler","metadata":{"name":"a"}}"#
                .to_vec()
                .into(),
            labels: Default::default(),
        };
        assert!(matches!(present(&info, &v1), Cow::Borrowed(_)));
        let v2 = StoredObject {
            json: br#"{"apiVersion":"autoscaling/v2","kind":"HorizontalPodAutoscaler","metadata":{"name":"a"},"spec":{"maxReplicas":2}}"#
                .to_vec()
                .into(),
            ..v1
        };
        let shown = present(&info, &v2);
        assert_eq!(shown.value()["apiVersion"], "autoscaling/v1");
        assert_eq!(shown.value()["spec"]["maxReplicas"], 2);
        assert_eq!(shown.rv, 3);
    }
}
