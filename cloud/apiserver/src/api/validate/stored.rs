//! Validation of the kinds added for fidelity (StatefulSets, ReplicationControllers, pod
//! templates, HPAs, disruption budgets, volumes, claims, classes, ingresses, slices): the checks
//! of kube-apiserver's `Validate*` functions whose absence would let a broken object reach a
//! controller or an edge, worded and placed as it words and places them.

use serde_json::{Map, Value};

use super::super::error::Cause;
use super::{pod_spec, workload};

/// The causes an object of `group`/`kind` is invalid for, if it is one of these kinds; `None`
/// when it is not.
pub(super) fn validate(
    group: &str,
    kind: &str,
    object: &Value,
    old: Option<&Value>,
) -> Option<Vec<Cause>> {
    let mut causes = Vec::new();
    let spec = object.get("spec").unwrap_or(&Value::Null);
    let old_spec = old.map(|o| o.get("spec").unwrap_or(&Value::Null));
    match (group, kind) {
        ("apps", "StatefulSet") => {
            workload(kind, object, &mut causes);
            statefulset(spec, &mut causes);
            if let Some(old) = old_spec {
                statefulset_update(old, spec, &mut causes);
            }
        }
        ("", "ReplicationController") => replication_controller(spec, &mut causes),
        ("", "PodTemplate") => match object.pointer("/template/spec") {
            Some(pod) => pod_spec(pod, "template.spec", &mut causes),
            None => causes.push(Cause::required("template.spec", "")),
        },
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(spec, &mut causes),
        ("policy", "PodDisruptionBudget") => pdb(spec, &mut causes),
        ("", "PersistentVolume") => persistent_volume(spec, &mut causes),
        ("", "PersistentVolumeClaim") => {
            claim(spec, "spec", &mut causes);
            if let Some(old) = old_spec {
                claim_update(old, spec, &mut causes);
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => priority_class(object, old, &mut causes),
        ("networking.k8s.io", "Ingress") => ingress(spec, &mut causes),
        ("networking.k8s.io", "IngressClass") => {
            required_string(spec, "controller", "spec.controller", &mut causes);
            immutable(old_spec, spec, "controller", "spec.controller", &mut causes);
        }
        ("storage.k8s.io", "StorageClass") => {
            required_string(object, "provisioner", "provisioner", &mut causes);
            for field in [
                "parameters",
                "provisioner",
                "reclaimPolicy",
                "volumeBindingMode",
            ] {
                if let Some(old) = old
                    && old.get(field) != object.get(field)
                {
                    causes.push(Cause::forbidden(
                        field,
                        &format!("updates to {field} are forbidden."),
                    ));
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            match object.get("addressType") {
                None | Some(Value::Null) => causes.push(Cause::required("addressType", "")),
                Some(t) if !matches!(t.as_str(), Some("IPv4" | "IPv6" | "FQDN")) => causes.push(
                    Cause::not_supported("addressType", t, &["FQDN", "IPv4", "IPv6"]),
                ),
                Some(_) => {}
            }
            immutable(old, object, "addressType", "addressType", &mut causes);
        }
        _ => return None,
    }
    Some(causes)
}

fn required_string(o: &Value, key: &str, field: &str, causes: &mut Vec<Cause>) {
    if o.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
        causes.push(Cause::required(field, ""));
    }
}

fn immutable(old: Option<&Value>, new: &Value, key: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(old) = old
        && old.get(key) != new.get(key)
    {
        causes.push(Cause::immutable(
            field,
            new.get(key).unwrap_or(&Value::Null),
        ));
    }
}

fn non_negative(o: &Value, key: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = o.get(key)
        && v.as_i64().is_none_or(|n| n < 0)
    {
        causes.push(Cause::invalid(
            field,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

fn statefulset(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(p) = spec.get("podManagementPolicy")
        && !matches!(p.as_str(), Some("OrderedReady" | "Parallel"))
    {
        causes.push(Cause::not_supported(
            "spec.podManagementPolicy",
            p,
            &["OrderedReady", "Parallel"],
        ));
    }
    if let Some(t) = spec.pointer("/updateStrategy/type")
        && !matches!(t.as_str(), Some("RollingUpdate" | "OnDelete"))
    {
        causes.push(Cause::not_supported(
            "spec.updateStrategy.type",
            t,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    if let Some(ru) = spec.pointer("/updateStrategy/rollingUpdate") {
        non_negative(
            ru,
            "partition",
            "spec.updateStrategy.rollingUpdate.partition",
            causes,
        );
    }
    for key in ["minReadySeconds", "revisionHistoryLimit"] {
        non_negative(spec, key, &format!("spec.{key}"), causes);
    }
    if let Some(ordinals) = spec.get("ordinals") {
        non_negative(ordinals, "start", "spec.ordinals.start", causes);
    }
    let claims = spec
        .get("volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, c) in claims.iter().enumerate() {
        let at = format!("spec.volumeClaimTemplates[{i}]");
        if c.pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(
                format!("{at}.metadata.name"),
                "name or generateName is required",
            ));
        }
        claim(
            c.get("spec").unwrap_or(&Value::Null),
            &format!("{at}.spec"),
            causes,
        );
    }
}

/// A StatefulSet's spec may change only in the fields the controller rolls out.
fn statefulset_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    const MUTABLE: [&str; 7] = [
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
        "revisionHistoryLimit",
    ];
    let strip = |spec: &Value| -> Map<String, Value> {
        let mut s = spec.as_object().cloned().unwrap_or_default();
        s.retain(|k, _| !MUTABLE.contains(&k.as_str()));
        s
    };
    if strip(old) != strip(new) {
        causes.push(Cause::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', \
             'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and \
             'minReadySeconds' are forbidden",
        ));
    }
}

/// `ValidateReplicationControllerSpec`: a selector of labels its template carries.
fn replication_controller(spec: &Value, causes: &mut Vec<Cause>) {
    non_negative(spec, "replicas", "spec.replicas", causes);
    let selector = spec.get("selector").and_then(Value::as_object);
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    match selector {
        Some(sel) if !sel.is_empty() => {
            let selected = sel
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
            if !selected {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &labels.cloned().map(Value::Object).unwrap_or(Value::Null),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        _ => causes.push(Cause::required("spec.selector", "")),
    }
    match spec.pointer("/template/spec") {
        Some(pod) => {
            pod_spec(pod, "spec.template.spec", causes);
            if let Some(policy) = pod.get("restartPolicy")
                && policy.as_str() != Some("Always")
            {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    policy,
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template", "")),
    }
}

/// `validateHorizontalPodAutoscalerSpec` (autoscaling/v2).
fn hpa(spec: &Value, causes: &mut Vec<Cause>) {
    for key in ["kind", "name"] {
        if spec
            .pointer(&format!("/scaleTargetRef/{key}"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("spec.scaleTargetRef.{key}"), ""));
        }
    }
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    if min < 1 {
        causes.push(Cause::invalid(
            "spec.minReplicas",
            &Value::from(min),
            "must be greater than or equal to 1",
        ));
    }
    let max = spec.get("maxReplicas");
    match max.and_then(Value::as_i64) {
        None => causes.push(Cause::required("spec.maxReplicas", "")),
        Some(m) if m < min => causes.push(Cause::invalid(
            "spec.maxReplicas",
            &Value::from(m),
            "must be greater than or equal to `minReplicas`",
        )),
        Some(_) => {}
    }
    let metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, m) in metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        let source = match m.get("type").and_then(Value::as_str) {
            Some("Resource") => "resource",
            Some("ContainerResource") => "containerResource",
            Some("Pods") => "pods",
            Some("Object") => "object",
            Some("External") => "external",
            other => {
                causes.push(Cause::not_supported(
                    format!("{at}.type"),
                    &other.map_or(Value::Null, Value::from),
                    &[
                        "ContainerResource",
                        "External",
                        "Object",
                        "Pods",
                        "Resource",
                    ],
                ));
                continue;
            }
        };
        let Some(src) = m.get(source).filter(|s| s.is_object()) else {
            causes.push(Cause::required(
                format!("{at}.{source}"),
                &format!("must populate information for the given metric source (only allowed when type is {})", m["type"].as_str().unwrap_or_default()),
            ));
            continue;
        };
        let target = &src["target"];
        match target.get("type").and_then(Value::as_str) {
            Some("Utilization") => {
                if target
                    .get("averageUtilization")
                    .and_then(Value::as_i64)
                    .is_none_or(|u| u <= 0)
                {
                    causes.push(Cause::required(
                        format!("{at}.{source}.target.averageUtilization"),
                        "must set either a target raw value or a target utilization",
                    ));
                }
            }
            Some("AverageValue" | "Value") => {}
            other => causes.push(Cause::not_supported(
                format!("{at}.{source}.target.type"),
                &other.map_or(Value::Null, Value::from),
                &["AverageValue", "Utilization", "Value"],
            )),
        }
    }
}

/// `ValidatePodDisruptionBudgetSpec`.
fn pdb(spec: &Value, causes: &mut Vec<Cause>) {
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if let (Some(_), Some(_)) = (min, max) {
        causes.push(Cause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (key, value) in [("minAvailable", min), ("maxUnavailable", max)] {
        let field = format!("spec.{key}");
        match value {
            None => {}
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => {}
            Some(Value::Number(n)) => causes.push(Cause::invalid(
                &field,
                &Value::Number(n.clone()),
                "must be greater than or equal to 0",
            )),
            Some(Value::String(p)) => {
                match p.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) if n <= 100 => {}
                    Some(_) => causes.push(Cause::invalid(&field, &Value::from(p.as_str()), "must not be greater than 100%")),
                    None => causes.push(Cause::invalid(
                        &field,
                        &Value::from(p.as_str()),
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    )),
                }
            }
            Some(other) => causes.push(Cause::invalid(
                &field,
                other,
                "must be an integer or a percentage",
            )),
        }
    }
}

/// The volume sources a PersistentVolume may have; exactly one is required.
const VOLUME_SOURCES: [&str; 18] = [
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "cephfs",
    "rbd",
    "cinder",
    "flexVolume",
    "flocker",
    "glusterfs",
    "portworxVolume",
    "vsphereVolume",
];

/// `ValidatePersistentVolumeSpec`: a capacity, access modes and exactly one source.
fn persistent_volume(spec: &Value, causes: &mut Vec<Cause>) {
    if spec.pointer("/capacity/storage").is_none_or(Value::is_null) {
        causes.push(Cause::required("spec.capacity", ""));
    }
    access_modes(spec, "spec.accessModes", causes);
    let sources = VOLUME_SOURCES
        .iter()
        .filter(|s| spec.get(**s).is_some_and(|v| !v.is_null()))
        .count();
    match sources {
        0 => causes.push(Cause::required("spec", "must specify a volume type")),
        1 => {}
        _ => causes.push(Cause::forbidden(
            "spec",
            "may not specify more than 1 volume type",
        )),
    }
    if let Some(host) = spec.get("hostPath") {
        required_string(host, "path", "spec.hostPath.path", causes);
    }
    if let Some(local) = spec.get("local") {
        required_string(local, "path", "spec.local.path", causes);
    }
}

fn access_modes(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    let modes = spec
        .get("accessModes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause::required(field, "at least 1 access mode is required"));
    }
    for m in &modes {
        if !matches!(
            m.as_str(),
            Some("ReadWriteOnce" | "ReadOnlyMany" | "ReadWriteMany" | "ReadWriteOncePod")
        ) {
            causes.push(Cause::not_supported(
                field,
                m,
                &[
                    "ReadOnlyMany",
                    "ReadWriteMany",
                    "ReadWriteOnce",
                    "ReadWriteOncePod",
                ],
            ));
        }
    }
}

/// `ValidatePersistentVolumeClaimSpec`: access modes and a storage request.
fn claim(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    access_modes(spec, &format!("{at}.accessModes"), causes);
    if spec
        .pointer("/resources/requests/storage")
        .is_none_or(Value::is_null)
    {
        causes.push(Cause::required(format!("{at}.resources[storage]"), ""));
    }
}

/// A claim's spec is immutable but for its storage request and volume attributes class (and
/// `volumeName`, which binding sets once).
fn claim_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let strip = |spec: &Value| {
        let mut s = spec.as_object().cloned().unwrap_or_default();
        s.remove("volumeAttributesClassName");
        if s.get("volumeName").and_then(Value::as_str).is_some() {
            s.remove("volumeName");
        }
        if let Some(Value::Object(r)) = s.get_mut("resources")
            && let Some(Value::Object(req)) = r.get_mut("requests")
        {
            req.remove("storage");
        }
        s
    };
    let old_name = old.get("volumeName").and_then(Value::as_str).unwrap_or("");
    let new_name = new.get("volumeName").and_then(Value::as_str).unwrap_or("");
    if strip(old) != strip(new) || (!old_name.is_empty() && old_name != new_name) {
        causes.push(Cause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
}

/// `ValidatePriorityClass`: user classes stay below the system ones, and the value is fixed.
fn priority_class(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let system = name.starts_with("system-");
    match object.get("value") {
        None | Some(Value::Null) => causes.push(Cause::required("value", "")),
        Some(v) => match v.as_i64() {
            Some(n) if !system && n > HIGHEST_USER_DEFINABLE => causes.push(Cause::forbidden(
                "value",
                &format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"
                ),
            )),
            Some(_) => {}
            None => causes.push(Cause::invalid("value", v, "must be an integer")),
        },
    }
    if system
        && old.is_none()
        && !matches!(name, "system-cluster-critical" | "system-node-critical")
    {
        causes.push(Cause::forbidden(
            "metadata.name",
            "priority class names with 'system-' prefix are reserved for system use only",
        ));
    }
    immutable(old, object, "value", "value", causes);
    if let Some(p) = object.get("preemptionPolicy")
        && !matches!(p.as_str(), Some("PreemptLowerPriority" | "Never"))
    {
        causes.push(Cause::not_supported(
            "preemptionPolicy",
            p,
            &["Never", "PreemptLowerPriority"],
        ));
    }
}

/// `ValidateIngressSpec`: a backend or rules, and every path with a type and a backend.
fn ingress(spec: &Value, causes: &mut Vec<Cause>) {
    let rules = spec
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if rules.is_empty() && spec.get("defaultBackend").is_none_or(Value::is_null) {
        causes.push(Cause::invalid(
            "spec",
            &Value::Null,
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let paths = rule
            .pointer("/http/paths")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, p) in paths.iter().enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            match p.get("pathType") {
                None | Some(Value::Null) => causes.push(Cause::required(
                    format!("{at}.pathType"),
                    "pathType must be specified",
                )),
                Some(t)
                    if !matches!(
                        t.as_str(),
                        Some("Exact" | "Prefix" | "ImplementationSpecific")
                    ) =>
                {
                    causes.push(Cause::not_supported(
                        format!("{at}.pathType"),
                        t,
                        &["Exact", "ImplementationSpecific", "Prefix"],
                    ))
                }
                Some(_) => {}
            }
            let backend = p.get("backend").unwrap_or(&Value::Null);
            if backend.get("service").is_none_or(Value::is_null)
                && backend.get("resource").is_none_or(Value::is_null)
            {
                causes.push(Cause::required(
                    format!("{at}.backend"),
                    "one of `service` or `resource` must be specified",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(group: &str, kind: &str, o: &Value, old: Option<&Value>) -> Vec<String> {
        validate(group, kind, o, old)
            .expect("a kind validated here")
            .into_iter()
            .map(|c| c.field)
            .collect()
    }

    #[test]
    fn statefulsets_change_only_what_rolls_out() {
        let sts = json!({"spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(fields("apps", "StatefulSet", &sts, None).is_empty());
        let mut scaled = sts.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert!(fields("apps", "StatefulSet", &scaled, Some(&sts)).is_empty());
        let mut renamed = sts.clone();
        renamed["spec"]["serviceName"] = json!("other");
        assert_eq!(
            fields("apps", "StatefulSet", &renamed, Some(&sts)),
            ["spec"]
        );
        let mut bad = sts.clone();
        bad["spec"]["podManagementPolicy"] = json!("Sometimes");
        bad["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"}, "spec": {}}]);
        assert_eq!(
            fields("apps", "StatefulSet", &bad, None),
            [
                "spec.podManagementPolicy",
                "spec.volumeClaimTemplates[0].spec.accessModes",
                "spec.volumeClaimTemplates[0].spec.resources[storage]"
            ]
        );
    }

    #[test]
    fn budgets_autoscalers_and_classes_are_checked_as_kube_checks_them() {
        let pdb = json!({"spec": {"minAvailable": 1, "maxUnavailable": "120%"}});
        assert_eq!(
            fields("policy", "PodDisruptionBudget", &pdb, None),
            ["spec", "spec.maxUnavailable"]
        );
        let hpa = json!({"spec": {"scaleTargetRef": {"kind": "Deployment"}, "minReplicas": 3, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]}});
        assert_eq!(
            fields("autoscaling", "HorizontalPodAutoscaler", &hpa, None),
            [
                "spec.scaleTargetRef.name",
                "spec.maxReplicas",
                "spec.metrics[0].resource.target.averageUtilization"
            ]
        );
        let pc = json!({"metadata": {"name": "high"}, "value": 2_000_000_000});
        assert_eq!(
            fields("scheduling.k8s.io", "PriorityClass", &pc, None),
            ["value"]
        );
        let ok = json!({"metadata": {"name": "high"}, "value": 1000});
        let mut changed = ok.clone();
        changed["value"] = json!(10);
        assert_eq!(
            fields("scheduling.k8s.io", "PriorityClass", &changed, Some(&ok)),
            ["value"]
        );
    }

    #[test]
    fn volumes_claims_and_ingresses_need_what_kube_needs() {
        let pv =
            json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        assert_eq!(fields("", "PersistentVolume", &pv, None), ["spec"]);
        let claim = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        assert!(fields("", "PersistentVolumeClaim", &claim, None).is_empty());
        let mut grown = claim.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(fields("", "PersistentVolumeClaim", &grown, Some(&claim)).is_empty());
        let mut remoded = claim.clone();
        remoded["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(
            fields("", "PersistentVolumeClaim", &remoded, Some(&claim)),
            ["spec"]
        );
        let ing = json!({"spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        assert_eq!(
            fields("networking.k8s.io", "Ingress", &ing, None),
            ["spec.rules[0].http.paths[0].pathType"]
        );
        assert!(validate("example.com", "Widget", &ing, None).is_none());
    }
}
