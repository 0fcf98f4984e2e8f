//! Defaulting, as kube-apiserver does it for the built-in types (its `SetDefaults_*` functions
//! and the admission plugins every cluster runs: ServiceAccount, Priority,
//! DefaultTolerationSeconds), so that a pod read back looks as it would on Kubernetes.

use serde_json::{Map, Value, json};

mod stored;

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
        ("batch", "Job") => job(object, creating),
        ("batch", "CronJob") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(job_spec) = spec
                    .get_mut("jobTemplate")
                    .and_then(|t| t.get_mut("spec"))
                    .and_then(Value::as_object_mut)
                {
                    job_spec_defaults(job_spec);
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                // `SetDefaults_Service`.
                set(spec, "type", json!("ClusterIP"));
                set(spec, "sessionAffinity", json!("None"));
                let kind = spec.get("type").and_then(Value::as_str).unwrap_or("");
                let (external_name, node_ports, balancer) = (
                    kind == "ExternalName",
                    matches!(kind, "NodePort" | "LoadBalancer"),
                    kind == "LoadBalancer",
                );
                if !external_name {
                    set(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if node_ports {
                    set(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if balancer {
                    set(spec, "allocateLoadBalancerNodePorts", json!(true));
                }
                if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
                    let config = spec
                        .entry("sessionAffinityConfig")
                        .or_insert_with(|| json!({}));
                    if let Some(client_ip) = config
                        .as_object_mut()
                        .map(|c| c.entry("clientIP").or_insert_with(|| json!({})))
                        .and_then(Value::as_object_mut)
                    {
                        set(client_ip, "timeoutSeconds", json!(10800));
                    }
                }
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
        _ => {
            stored::apply(group, kind, object);
        }
    }
}

/// The label and selector key naming a Job's uid, and the one naming the Job.
pub const JOB_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// See [`JOB_CONTROLLER_UID`].
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// `SetDefaults_Job`, and on create the Job strategy's `generateSelector`: unless
/// `manualSelector` is true, the template gets `batch.kubernetes.io/controller-uid` and
/// `batch.kubernetes.io/job-name` (and their legacy unprefixed twins) from the Job's uid and
/// name, and the selector matches the uid. A Job without labels takes its template's, as
/// kube-apiserver's defaulting on read gives it.
fn job(object: &mut Value, creating: bool) {
    let name = object.pointer("/metadata/name").cloned();
    let uid = object.pointer("/metadata/uid").cloned();
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    job_spec_defaults(spec);
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if creating
        && !manual
        && let (Some(Value::String(name)), Some(Value::String(uid))) = (name, uid)
    {
        if let Some(template) = spec.get_mut("template").and_then(Value::as_object_mut) {
            let meta = template.entry("metadata").or_insert_with(|| json!({}));
            if !meta.is_object() {
                *meta = json!({});
            }
            if let Some(meta) = meta.as_object_mut() {
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                if let Some(labels) = labels.as_object_mut() {
                    for key in ["job-name", JOB_NAME] {
                        set(labels, key, json!(name));
                    }
                    for key in ["controller-uid", JOB_CONTROLLER_UID] {
                        set(labels, key, json!(uid));
                    }
                }
            }
        }
        let selector = spec.entry("selector").or_insert_with(|| json!({}));
        if !selector.is_object() {
            *selector = json!({});
        }
        if let Some(selector) = selector.as_object_mut() {
            let by_label = selector.entry("matchLabels").or_insert_with(|| json!({}));
            if let Some(by_label) = by_label.as_object_mut() {
                set(by_label, JOB_CONTROLLER_UID, json!(uid));
            }
        }
    }
    let template_labels = spec
        .get("template")
        .and_then(|t| t.pointer("/metadata/labels"))
        .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
        .cloned();
    if let (Some(labels), Some(meta)) = (
        template_labels,
        object.get_mut("metadata").and_then(Value::as_object_mut),
    ) && meta
        .get("labels")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
    {
        meta.insert("labels".into(), labels);
    }
}

/// The defaults of a Job's spec (also a CronJob's `jobTemplate`): parallelism and completions
/// 1 when both are unset (a Job with parallelism and no completions is a work queue and keeps
/// none), backoffLimit 6, NonIndexed, not suspended, pods replaced once terminating or failed.
fn job_spec_defaults(spec: &mut Map<String, Value>) {
    let unset = |spec: &Map<String, Value>, k: &str| spec.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    if unset(spec, "backoffLimit") {
        let limit = if unset(spec, "backoffLimitPerIndex") {
            6
        } else {
            i32::MAX
        };
        spec.insert("backoffLimit".into(), json!(limit));
    }
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    let replacement = if unset(spec, "podFailurePolicy") {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set(spec, "podReplacementPolicy", json!(replacement));
    // A pod condition pattern without a status means True.
    if let Some(rules) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut)
    {
        for pattern in rules
            .iter_mut()
            .filter_map(|r| r.get_mut("onPodConditions")?.as_array_mut())
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            set(pattern, "status", json!("True"));
        }
    }
    set(spec, "manualSelector", json!(false));
    template(spec);
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

/// What admission adds to a new pod: the tolerations of not-ready and unreachable nodes for
/// 300 s (its service account, token volume, priority and the namespace's limits:
/// `api::admission`). The deprecated `serviceAccount` says the same as `serviceAccountName`,
/// as v1's conversion keeps them.
fn pod_admission(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let named = |spec: &serde_json::Map<String, Value>, key: &str| {
        spec.get(key)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    };
    if named(spec, "serviceAccountName").is_none()
        && let Some(old) = named(spec, "serviceAccount")
    {
        spec.insert("serviceAccountName".into(), json!(old));
    }
    if let Some(sa) = named(spec, "serviceAccountName") {
        spec.insert("serviceAccount".into(), json!(sa));
    }
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
        assert!(
            spec.get("serviceAccountName").is_none(),
            "admission names the account"
        );
        assert_eq!(qos_class(&pod), "Burstable");
    }

    #[test]
    fn jobs_get_kubes_defaults_and_a_selector_from_their_uid() {
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "a", "image": "x:1"}]}}}});
        apply("batch", "Job", &mut job, true);
        let spec = &job["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["manualSelector"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {JOB_CONTROLLER_UID: "u-1"}})
        );
        let labels = json!({"batch.kubernetes.io/controller-uid": "u-1",
            "batch.kubernetes.io/job-name": "pi", "controller-uid": "u-1", "job-name": "pi"});
        assert_eq!(spec["template"]["metadata"]["labels"], labels);
        assert_eq!(job["metadata"]["labels"], labels);
        assert_eq!(spec["template"]["spec"]["dnsPolicy"], "ClusterFirst");

        // A work queue (parallelism, no completions) keeps no completions.
        let mut queue = json!({"metadata": {"name": "q", "uid": "u-2"},
            "spec": {"parallelism": 3, "manualSelector": true, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}});
        apply("batch", "Job", &mut queue, true);
        assert!(queue["spec"].get("completions").is_none());
        assert_eq!(
            queue["spec"]["selector"],
            json!({"matchLabels": {"a": "b"}})
        );
        // Unset, the pod template's restart policy is Always, which validation refuses.
        assert_eq!(queue["spec"]["template"]["spec"]["restartPolicy"], "Always");
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
