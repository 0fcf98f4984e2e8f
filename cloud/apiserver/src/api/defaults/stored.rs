//! Defaults of the kinds added for fidelity beside those Wedge first served (StatefulSets,
//! ReplicationControllers, HPAs, volumes and claims, classes, policies): kube-apiserver's
//! `SetDefaults_*` for each, so that an object read back, or compared by `kubectl apply` and
//! `kubectl diff`, looks as it would on Kubernetes.

use serde_json::{Map, Value, json};

use super::{set, template};

/// Fills in the defaults of `group`/`kind`, if it is one of these; false when it is not.
pub(super) fn apply(group: &str, kind: &str, object: &mut Value) -> bool {
    match (group, kind) {
        ("apps", "StatefulSet") => statefulset(object),
        ("", "ReplicationController") => replication_controller(object),
        ("", "PodTemplate") => {
            if let Some(t) = object.as_object_mut() {
                template(t);
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(object),
        ("", "PersistentVolume") => {
            if let Some(spec) = spec_of(object) {
                set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set(spec, "volumeMode", json!("Filesystem"));
            }
            pending(object);
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = spec_of(object) {
                set(spec, "volumeMode", json!("Filesystem"));
            }
            pending(object);
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(o) = object.as_object_mut() {
                set(o, "reclaimPolicy", json!("Delete"));
                set(o, "volumeBindingMode", json!("Immediate"));
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            if let Some(o) = object.as_object_mut() {
                set(o, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => network_policy(object),
        ("", "LimitRange") => limit_range(object),
        _ => return false,
    }
    true
}

fn spec_of(object: &mut Value) -> Option<&mut Map<String, Value>> {
    object.get_mut("spec").and_then(Value::as_object_mut)
}

/// A new volume or claim starts `Pending`.
fn pending(object: &mut Value) {
    if let Some(o) = object.as_object_mut() {
        let status = o.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            set(status, "phase", json!("Pending"));
        }
    }
}

/// `SetDefaults_StatefulSet` (apps/v1).
fn statefulset(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set(spec, "replicas", json!(1));
    set(spec, "podManagementPolicy", json!("OrderedReady"));
    set(spec, "revisionHistoryLimit", json!(10));
    let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
    if let Some(s) = strategy.as_object_mut() {
        set(s, "type", json!("RollingUpdate"));
        if s.get("type") == Some(&json!("RollingUpdate")) {
            let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
            if let Some(ru) = ru.as_object_mut() {
                set(ru, "partition", json!(0));
            }
        }
    }
    let retention = spec
        .entry("persistentVolumeClaimRetentionPolicy")
        .or_insert_with(|| json!({}));
    if let Some(r) = retention.as_object_mut() {
        set(r, "whenDeleted", json!("Retain"));
        set(r, "whenScaled", json!("Retain"));
    }
    if let Some(claims) = spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for claim in claims.iter_mut() {
            if let Some(spec) = spec_of(claim) {
                set(spec, "volumeMode", json!("Filesystem"));
            }
            pending(claim);
        }
    }
    template(spec);
}

/// `SetDefaults_ReplicationController`: the selector and the labels default to the
/// template's labels, and one replica.
fn replication_controller(object: &mut Value) {
    let labels = object.pointer("/spec/template/metadata/labels").cloned();
    if let Some(labels) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
        if let Some(spec) = spec_of(object) {
            let empty = spec
                .get("selector")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty);
            if empty {
                spec.insert("selector".into(), labels.clone());
            }
        }
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            let empty = meta
                .get("labels")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty);
            if empty {
                meta.insert("labels".into(), labels);
            }
        }
    }
    if let Some(spec) = spec_of(object) {
        set(spec, "replicas", json!(1));
        template(spec);
    }
}

/// `SetDefaults_HorizontalPodAutoscaler` (autoscaling/v2): one replica at least, and CPU at 80%
/// when no metric is named.
fn hpa(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set(spec, "minReplicas", json!(1));
    let no_metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_metrics {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
}

/// `SetDefaults_LimitRangeItem`: a container's default limit is its max, its default request
/// its default limit, else its min.
fn limit_range(object: &mut Value) {
    let Some(items) = object
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let from = |item: &Map<String, Value>, key: &str| {
            item.get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (max, min) = (from(item, "max"), from(item, "min"));
        let mut default = from(item, "default");
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        let mut request = from(item, "defaultRequest");
        for (k, v) in default.iter().chain(min.iter()) {
            request.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if !default.is_empty() {
            item.insert("default".into(), Value::Object(default));
        }
        if !request.is_empty() {
            item.insert("defaultRequest".into(), Value::Object(request));
        }
    }
}

/// `SetDefaults_NetworkPolicy`: ports are TCP, and `policyTypes` says what the policy holds.
fn network_policy(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    for rules in ["ingress", "egress"] {
        if let Some(rules) = spec.get_mut(rules).and_then(Value::as_array_mut) {
            for rule in rules.iter_mut() {
                if let Some(ports) = rule.get_mut("ports").and_then(Value::as_array_mut) {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
    let has_types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if !has_types {
        let mut types = vec![json!("Ingress")];
        if spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
        {
            types.push(json!("Egress"));
        }
        spec.insert("policyTypes".into(), Value::Array(types));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statefulsets_get_kubes_defaults() {
        let mut sts = json!({"spec": {"selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        assert!(apply("apps", "StatefulSet", &mut sts));
        assert_eq!(sts["spec"]["replicas"], 1);
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["status"]["phase"],
            "Pending"
        );
        assert_eq!(sts["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn replication_controllers_select_their_template_and_hpas_watch_cpu() {
        let mut rc = json!({"metadata": {"name": "rc"}, "spec": {"template": {"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        apply("", "ReplicationController", &mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"app": "a"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "a"}));
        assert_eq!(rc["spec"]["replicas"], 1);
        let mut hpa = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3}});
        apply("autoscaling", "HorizontalPodAutoscaler", &mut hpa);
        assert_eq!(hpa["spec"]["minReplicas"], 1);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
    }

    #[test]
    fn network_policies_name_their_types() {
        let mut np = json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        apply("networking.k8s.io", "NetworkPolicy", &mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let mut unknown = json!({"spec": {}});
        assert!(!apply("example.com", "Widget", &mut unknown));
    }
}
