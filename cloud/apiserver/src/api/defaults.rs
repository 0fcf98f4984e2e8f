//! Defaulting, as kube-apiserver does it for the built-in types (its `SetDefaults_*` functions
//! and the admission plugins every cluster runs: ServiceAccount, Priority,
//! DefaultTolerationSeconds), so that a pod read back looks as it would on Kubernetes.

use serde_json::{Map, Value, json};

/// Fills in the defaults of an object of `kind` in `group`, on create and update.
pub fn apply(group: &str, kind: &str, object: &mut Value, creating: bool) {
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = object.get_mut("spec") {
                pod_spec(spec);
                if creating {
                    pod_admission(spec);
                }
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set(spec, "replicas", json!(1));
                set(spec, "revisionHistoryLimit", json!(10));
                set(spec, "progressDeadlineSeconds", json!(600));
                let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                if let Some(s) = strategy.as_object_mut() {
                    set(s, "type", json!("RollingUpdate"));
                    if s.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set(ru, "maxUnavailable", json!("25%"));
                            set(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
                template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set(spec, "revisionHistoryLimit", json!(10));
                let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
                if let Some(s) = strategy.as_object_mut() {
                    set(s, "type", json!("RollingUpdate"));
                    if s.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set(ru, "maxUnavailable", json!(1));
                            set(ru, "maxSurge", json!(0));
                        }
                    }
                }
                template(spec);
            }
        }
        ("", "Service") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set(spec, "type", json!("ClusterIP"));
                set(spec, "sessionAffinity", json!("None"));
                set(spec, "internalTrafficPolicy", json!("Cluster"));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set(port, "protocol", json!("TCP"));
                        if let Some(p) = port.get("port").cloned() {
                            set(port, "targetPort", p);
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            if let Some(obj) = object.as_object_mut() {
                let spec = obj.entry("spec").or_insert_with(|| json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    set(spec, "finalizers", json!(["kubernetes"]));
                }
            }
        }
        ("", "Secret") => {
            secret_string_data(object);
            if let Some(obj) = object.as_object_mut() {
                set(obj, "type", json!("Opaque"));
            }
        }
        _ => {}
    }
}

/// Sets `key` unless present (and not null).
/// `stringData` is write-only: its keys are merged into `data` (base64, overriding), and it is
/// dropped, as kube-apiserver's Secret strategy does.
fn secret_string_data(object: &mut Value) {
    use base64::Engine;
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

fn set(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(key.to_owned(), value);
        }
    }
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec(pod);
    }
}

/// `SetDefaults_PodSpec` and `SetDefaults_Container`.
fn pod_spec(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    let pull = match c.get("image").and_then(Value::as_str) {
        Some(image) if image_tag_is_latest(image) => "Always",
        _ => "IfNotPresent",
    };
    set(c, "imagePullPolicy", json!(pull));
    set(c, "resources", json!({}));
    if let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut)
        && let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned()
    {
        let requests = resources.entry("requests").or_insert_with(|| json!({}));
        if let Some(requests) = requests.as_object_mut() {
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(port, "protocol", json!("TCP"));
        }
    }
}

/// Whether an image reference has no tag or `:latest` (and no digest).
fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// What admission adds to a new pod: its service account, priority, and the tolerations of
/// not-ready and unreachable nodes for 300 s.
fn pod_admission(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    set(spec, "serviceAccountName", json!("default"));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set(spec, "serviceAccount", sa);
    }
    set(spec, "priority", json!(0));
    set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = list.iter().any(|t| {
                (t.get("key").and_then(Value::as_str) == Some(key)
                    || t.get("operator") == Some(&json!("Exists")) && t.get("key").is_none())
                    && t.get("effect")
                        .and_then(Value::as_str)
                        .is_none_or(|e| e == "NoExecute")
            });
            if !has {
                list.push(json!({
                    "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300,
                }));
            }
        }
    }
}

/// A new pod's status: Pending, with its QoS class.
pub fn initial_pod_status(pod: &Value) -> Value {
    json!({ "phase": "Pending", "qosClass": qos_class(pod) })
}

/// The QoS class of a pod: Guaranteed when every container has equal CPU and memory requests
/// and limits, BestEffort when none has any, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| pod.get("spec")?.get(*l)?.as_array())
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        for r in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(r));
            if limit.is_none()
                || requests
                    .and_then(|q| q.get(r))
                    .is_some_and(|q| Some(q) != limit)
            {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_data_lands_in_data() {
        let mut secret = json!({"data": {"a": "eA=="}, "stringData": {"a": "over", "b": "bee"}});
        apply("", "Secret", &mut secret, true);
        assert_eq!(
            secret,
            json!({"data": {"a": "b3Zlcg==", "b": "YmVl"}, "type": "Opaque"})
        );
    }

    #[test]
    fn pods_get_what_kubernetes_gives_them() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "reg/app"}, {"name": "b", "image": "reg/app:1.0", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        apply("", "Pod", &mut pod, true);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            spec["containers"][1]["resources"]["requests"]["memory"],
            "1Gi"
        );
        assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(qos_class(&pod), "Burstable");
    }

    #[test]
    fn workloads_get_their_strategies() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply("apps", "Deployment", &mut d, true);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let mut ds = json!({"spec": {"updateStrategy": {"type": "OnDelete"}}});
        apply("apps", "DaemonSet", &mut ds, true);
        assert!(ds["spec"]["updateStrategy"].get("rollingUpdate").is_none());
    }
}
