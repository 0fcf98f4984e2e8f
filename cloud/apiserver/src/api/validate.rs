//! Validation of the built-in kinds: the checks whose absence would let a broken object reach
//! a controller or an edge (a pod without containers, a Deployment whose selector does not
//! select its template). Each failure is a [`Cause`] naming the field as Kubernetes does.

use serde_json::Value;

use super::error::Cause;
use super::meta::{NameRule, name_problem};
use crate::selector::LabelSelector;

mod stored;

/// The causes an object of `kind` is invalid for (empty when valid). `old` is the stored object
/// on update.
pub fn validate(group: &str, kind: &str, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    match (group, kind) {
        ("", "Pod") => {
            match object.get("spec") {
                Some(spec) => pod_spec(spec, "spec", &mut causes),
                None => causes.push(Cause::required("spec", "")),
            }
            if let (Some(old), Some(new)) = (old.and_then(|o| o.get("spec")), object.get("spec")) {
                pod_update(old, new, &mut causes);
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => workload(kind, object, &mut causes),
        ("batch", "Job") => {
            workload(kind, object, &mut causes);
            if let Some(spec) = object.get("spec") {
                job_spec(spec, "spec", &mut causes);
            }
            if let (Some(old), Some(new)) = (old.and_then(|o| o.get("spec")), object.get("spec")) {
                job_update(old, new, &mut causes);
            }
        }
        ("batch", "CronJob") => {
            cron_job(object, old, &mut causes);
            if let Some(spec) = object.pointer("/spec/jobTemplate/spec") {
                job_spec(spec, "spec.jobTemplate.spec", &mut causes);
            }
        }
        ("", "ConfigMap") => {
            for field in ["data", "binaryData"] {
                keys(object.get(field), field, &mut causes);
            }
            let size =
                data_size(object.get("data"), false) + data_size(object.get("binaryData"), true);
            too_big(size, &mut causes);
        }
        ("", "Secret") => {
            keys(object.get("data"), "data", &mut causes);
            too_big(data_size(object.get("data"), true), &mut causes);
            let token_type = crate::token_controller::TOKEN_TYPE;
            let annotation = crate::token_controller::NAME_ANNOTATION;
            if object.get("type").and_then(Value::as_str) == Some(token_type)
                && object
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(annotation))
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(
                    format!("metadata.annotations[{annotation}]"),
                    "",
                ));
            }
            if let Some(data) = object.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    let ok = v.as_str().is_some_and(|s| {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !ok {
                        causes.push(Cause::invalid(
                            format!("data[{k}]"),
                            v,
                            "must be a base64-encoded string",
                        ));
                    }
                }
            }
        }
        _ => {
            if let Some(more) = stored::validate(group, kind, object, old) {
                causes.extend(more);
            }
        }
    }
    causes
}

/// The most a ConfigMap's or a Secret's data may hold (Kubernetes' `MaxSecretSize`).
const MAX_DATA_BYTES: usize = 1024 * 1024;

/// The bytes a `data` map holds: its strings' lengths, or their base64 decodings' (`binary`).
fn data_size(data: Option<&Value>, binary: bool) -> usize {
    data.and_then(Value::as_object)
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .map(|v| if binary { v.len() / 4 * 3 } else { v.len() })
                .sum()
        })
        .unwrap_or(0)
}

/// A ConfigMap or Secret whose data is over [`MAX_DATA_BYTES`], as kube-apiserver refuses it.
fn too_big(size: usize, causes: &mut Vec<Cause>) {
    if size > MAX_DATA_BYTES {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "data".into(),
            message: format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        });
    }
}

fn keys(map: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(map) = map.and_then(Value::as_object) else {
        return;
    };
    for k in map.keys() {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            causes.push(Cause::invalid(
                field,
                &Value::String(k.clone()),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or \
                 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

fn pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        Some(list) if !list.is_empty() => {}
        _ => causes.push(Cause::required(format!("{at}.containers"), "")),
    }
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = format!("{at}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{path}.name"), "")),
                Some(name) => {
                    if let Some(p) = name_problem(name, NameRule::Label) {
                        causes.push(Cause::invalid(
                            format!("{path}.name"),
                            &Value::String(name.into()),
                            &p,
                        ));
                    } else if names.contains(&name) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{path}.name"),
                            message: format!("Duplicate value: \"{name}\""),
                        });
                    }
                    names.push(name);
                }
            }
            match c.get("image").and_then(Value::as_str) {
                Some(image) if !image.trim().is_empty() => {}
                _ => causes.push(Cause::required(format!("{path}.image"), "")),
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy")
        && !matches!(policy.as_str(), Some("Always" | "OnFailure" | "Never"))
    {
        causes.push(Cause::not_supported(
            format!("{at}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(grace) = spec.get("terminationGracePeriodSeconds")
        && grace.as_i64().is_none_or(|g| g < 0)
    {
        causes.push(Cause::invalid(
            format!("{at}.terminationGracePeriodSeconds"),
            grace,
            "must be greater than or equal to 0",
        ));
    }
}

/// A pod's spec is immutable but for images, activeDeadlineSeconds, tolerations (added to) and
/// terminationGracePeriodSeconds.
fn pod_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        if let Some(o) = s.as_object_mut() {
            for k in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                o.remove(k);
            }
            for list in ["initContainers", "containers"] {
                if let Some(cs) = o.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        s
    };
    if strip(old) != strip(new) {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,\
             `spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),\
             `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

fn workload(kind: &str, object: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = object.get("spec") else {
        causes.push(Cause::required("spec", ""));
        return;
    };
    if let Some(replicas) = spec.get("replicas")
        && replicas.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            replicas,
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec.get("selector");
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .cloned()
        .unwrap_or(Value::Null);
    match selector {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector", "")),
        Some(sel) => match LabelSelector::from_k8s(sel) {
            Err(e) => causes.push(Cause::invalid("spec.selector", sel, &e.to_string())),
            Ok(s) if s.is_empty() => causes.push(Cause::invalid(
                "spec.selector",
                sel,
                "empty selector is invalid for deployment",
            )),
            Ok(s) => {
                let labels = template_labels
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                if !s.matches(&labels) {
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        &template_labels,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    match spec.pointer("/template/spec") {
        Some(pod) => {
            pod_spec(pod, "spec.template.spec", causes);
            if kind != "Job"
                && let Some(policy) = pod.get("restartPolicy")
                && policy.as_str() != Some("Always")
            {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    policy,
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec", "")),
    }
}

/// `ValidateCronJobCreate`/`Update`'s own checks: a name that leaves room for the Job's
/// `-<minutes>` suffix, a schedule robfig/cron parses (with no `TZ=` in it unless the stored
/// one had it), a time zone Go can load (checked when it changes), a known concurrency policy,
/// and no negative deadline or history limit.
fn cron_job(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").unwrap_or(&Value::Null);
    let old_spec = old.and_then(|o| o.get("spec"));
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.schedule", "")),
        Some(schedule) => {
            let value = Value::String(schedule.to_owned());
            let allow_tz = old_spec
                .and_then(|o| o.get("schedule"))
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains("TZ"));
            if let Err(e) = wedge_core::cron::Schedule::parse(schedule, jiff::tz::TimeZone::UTC) {
                causes.push(Cause::invalid("spec.schedule", &value, &e.to_string()));
            }
            let zoned = spec.get("timeZone").is_some_and(|z| !z.is_null());
            if allow_tz && schedule.contains("TZ") && zoned {
                causes.push(Cause::invalid(
                    "spec.schedule",
                    &value,
                    "cannot use both timeZone field and TZ or CRON_TZ in schedule",
                ));
            } else if !allow_tz && schedule.contains("TZ") {
                causes.push(Cause::invalid(
                    "spec.schedule",
                    &value,
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            }
        }
    }
    if let Some(v) = spec.get("startingDeadlineSeconds").filter(|v| !v.is_null())
        && v.as_i64().is_none_or(|n| n < 0)
    {
        causes.push(Cause::invalid(
            "spec.startingDeadlineSeconds",
            v,
            "must be greater than or equal to 0",
        ));
    }
    let zone = spec.get("timeZone").filter(|z| !z.is_null());
    if old_spec
        .and_then(|o| o.get("timeZone"))
        .filter(|z| !z.is_null())
        != zone
        && let Some(zone) = zone
    {
        time_zone(zone, causes);
    }
    match spec.get("concurrencyPolicy").and_then(Value::as_str) {
        Some("Allow" | "Forbid" | "Replace") => {}
        None | Some("") => causes.push(Cause::required("spec.concurrencyPolicy", "")),
        Some(other) => causes.push(Cause::not_supported(
            "spec.concurrencyPolicy",
            &Value::String(other.to_owned()),
            &["Allow", "Forbid", "Replace"],
        )),
    }
    for field in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        if let Some(v) = spec.get(field).filter(|v| !v.is_null())
            && v.as_i64().is_none_or(|n| n < 0)
        {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
    if old.is_none()
        && let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str)
        && name.len() > 52
    {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::String(name.to_owned()),
            "must be no more than 52 characters",
        ));
    }
}

/// `validateTimeZone`: the IANA file-name rules, not `Local`, and a zone Go can load.
fn time_zone(zone: &Value, causes: &mut Vec<Cause>) {
    let Some(name) = zone.as_str() else {
        causes.push(Cause::invalid("spec.timeZone", zone, "must be a string"));
        return;
    };
    if name.is_empty() {
        causes.push(Cause::invalid(
            "spec.timeZone",
            zone,
            "timeZone must be nil or non-empty string",
        ));
        return;
    }
    let part_ok = |p: &str| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && (1..=14).contains(&p.len())
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'+'))
    };
    if !name.split('/').all(part_ok) {
        causes.push(Cause::invalid(
            "spec.timeZone",
            zone,
            &format!("unknown time zone {name}"),
        ));
        return;
    }
    if name.eq_ignore_ascii_case("Local") {
        causes.push(Cause::invalid(
            "spec.timeZone",
            zone,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    }
    if let Err(e) = wedge_core::cron::time_zone(name) {
        causes.push(Cause::invalid("spec.timeZone", zone, &e.to_string()));
    }
}

/// `ValidateJobSpec`'s checks: counts not negative, a known completion mode (Indexed needs
/// completions), and a pod template that does not restart forever.
fn job_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    for field in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if let Some(v) = spec.get(field).filter(|v| !v.is_null())
            && v.as_i64().is_none_or(|n| n < 0)
        {
            causes.push(Cause::invalid(
                format!("{at}.{field}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
    match spec.get("completionMode").and_then(Value::as_str) {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.get("completions").is_none_or(Value::is_null) {
                causes.push(Cause::required(
                    format!("{at}.completions"),
                    "when completion mode is Indexed",
                ));
            }
        }
        Some(other) => causes.push(Cause::not_supported(
            format!("{at}.completionMode"),
            &Value::String(other.to_owned()),
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(policy) = spec.get("podFailurePolicy").filter(|p| !p.is_null()) {
        pod_failure_policy(policy, &format!("{at}.podFailurePolicy"), causes);
        let restart = spec.pointer("/template/spec/restartPolicy");
        if let Some(p) = restart.filter(|p| p.as_str() == Some("OnFailure")) {
            causes.push(Cause::invalid(
                format!("{at}.template.spec.restartPolicy"),
                p,
                r#"only "Never" is supported when podFailurePolicy is specified"#,
            ));
        }
    }
    let field = format!("{at}.template.spec.restartPolicy");
    match spec.pointer("/template/spec/restartPolicy") {
        None | Some(Value::Null) => causes.push(Cause::required(
            field,
            r#"valid values: "OnFailure", "Never""#,
        )),
        Some(Value::String(p)) if p.is_empty() || p == "Always" => causes.push(Cause::required(
            field,
            r#"valid values: "OnFailure", "Never""#,
        )),
        Some(Value::String(p)) if p == "OnFailure" || p == "Never" => {}
        Some(p) => causes.push(Cause::not_supported(field, p, &["OnFailure", "Never"])),
    }
}

/// `validatePodFailurePolicy`'s checks of what a controller needs to read a rule: an action
/// it knows, one of `onExitCodes` (an operator, values, none 0 for `In`) and `onPodConditions`
/// (each with a type).
fn pod_failure_policy(policy: &Value, at: &str, causes: &mut Vec<Cause>) {
    let Some(rules) = policy.get("rules").and_then(Value::as_array) else {
        causes.push(Cause::required(format!("{at}.rules"), ""));
        return;
    };
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{at}.rules[{i}]");
        match rule.get("action") {
            None | Some(Value::Null) => causes.push(Cause::required(
                format!("{at}.action"),
                r#"valid values: ["Count" "FailIndex" "FailJob" "Ignore"]"#,
            )),
            Some(Value::String(a))
                if ["Count", "FailIndex", "FailJob", "Ignore"].contains(&a.as_str()) => {}
            Some(a) => causes.push(Cause::not_supported(
                format!("{at}.action"),
                a,
                &["Count", "FailIndex", "FailJob", "Ignore"],
            )),
        }
        let codes = rule.get("onExitCodes").filter(|c| !c.is_null());
        let conditions = rule
            .get("onPodConditions")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        if let Some(codes) = codes {
            let operator = codes.get("operator").and_then(Value::as_str);
            if !matches!(operator, Some("In" | "NotIn")) {
                causes.push(Cause::not_supported(
                    format!("{at}.onExitCodes.operator"),
                    codes.get("operator").unwrap_or(&Value::Null),
                    &["In", "NotIn"],
                ));
            }
            match codes.get("values").and_then(Value::as_array) {
                Some(values) if !values.is_empty() => {
                    for (j, v) in values.iter().enumerate() {
                        if operator == Some("In") && v.as_i64() == Some(0) {
                            causes.push(Cause::invalid(
                                format!("{at}.onExitCodes.values[{j}]"),
                                v,
                                "must not be 0 for the In operator",
                            ));
                        }
                    }
                }
                _ => causes.push(Cause::invalid(
                    format!("{at}.onExitCodes.values"),
                    codes.get("values").unwrap_or(&Value::Null),
                    "at least one value is required",
                )),
            }
        }
        for (j, pattern) in conditions.into_iter().flatten().enumerate() {
            if pattern
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(
                    format!("{at}.onPodConditions[{j}].type"),
                    "",
                ));
            }
        }
        if codes.is_some() == conditions.is_some() {
            let detail = if codes.is_some() {
                "specifying both OnExitCodes and OnPodConditions is not supported"
            } else {
                "specifying one of OnExitCodes and OnPodConditions is required"
            };
            causes.push(Cause::invalid(at.clone(), &Value::Null, detail));
        }
    }
}

/// What a Job's update may not change: its selector, its completion mode, its template (kube
/// lets a suspended Job that never started change scheduling directives; not here), and its
/// completions (except, in Indexed mode, together with parallelism).
fn job_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    for field in ["selector", "completionMode", "template"] {
        if old.get(field) != new.get(field) {
            causes.push(Cause::immutable(
                format!("spec.{field}"),
                new.get(field).unwrap_or(&Value::Null),
            ));
        }
    }
    if old.get("completions") != new.get("completions") {
        let elastic = new.get("completionMode").and_then(Value::as_str) == Some("Indexed")
            && new.get("completions") == new.get("parallelism");
        if !elastic {
            causes.push(Cause::immutable(
                "spec.completions",
                new.get("completions").unwrap_or(&Value::Null),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn jobs_must_not_restart_forever_nor_change_their_template() {
        let job = |policy: &str| {
            json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "completions": 1, "parallelism": 1,
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "x"}]}}}})
        };
        assert!(validate("batch", "Job", &job("Never"), None).is_empty());
        let always = validate("batch", "Job", &job("Always"), None);
        assert_eq!(fields(&always), ["spec.template.spec.restartPolicy"]);
        assert_eq!(
            always[0].message,
            r#"Required value: valid values: "OnFailure", "Never""#
        );
        let mut negative = job("OnFailure");
        negative["spec"]["backoffLimit"] = json!(-1);
        negative["spec"]["completionMode"] = json!("Indexed");
        negative["spec"]["completions"] = Value::Null;
        assert_eq!(
            fields(&validate("batch", "Job", &negative, None)),
            ["spec.backoffLimit", "spec.completions"]
        );
        let mut policy = job("OnFailure");
        policy["spec"]["podFailurePolicy"] = json!({"rules": [
            {"onExitCodes": {"operator": "In", "values": [0]}},
            {"action": "Ignore", "onPodConditions": [{"status": "True"}]},
        ]});
        assert_eq!(
            fields(&validate("batch", "Job", &policy, None)),
            [
                "spec.podFailurePolicy.rules[0].action",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
                "spec.podFailurePolicy.rules[1].onPodConditions[0].type",
                "spec.template.spec.restartPolicy"
            ]
        );
        let mut changed = job("Never");
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        changed["spec"]["completions"] = json!(2);
        changed["spec"]["parallelism"] = json!(2);
        assert_eq!(
            fields(&validate("batch", "Job", &changed, Some(&job("Never")))),
            ["spec.template", "spec.completions"]
        );
    }

    #[test]
    fn cron_jobs_need_a_schedule_and_zone_kubernetes_reads() {
        let cron = |schedule: &str, zone: Value| {
            json!({"metadata": {"name": "nightly"}, "spec": {"schedule": schedule, "timeZone": zone,
                "concurrencyPolicy": "Allow", "jobTemplate": {"spec": {"template": {"spec":
                    {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}})
        };
        assert!(validate("batch", "CronJob", &cron("*/1 * * * *", Value::Null), None).is_empty());
        assert!(
            validate(
                "batch",
                "CronJob",
                &cron("@every 90s", json!("Europe/Paris")),
                None
            )
            .is_empty()
        );
        let bad = validate(
            "batch",
            "CronJob",
            &cron("61 * * * *", json!("Mars/Base")),
            None,
        );
        assert_eq!(fields(&bad), ["spec.schedule", "spec.timeZone"]);
        assert_eq!(
            bad[0].message,
            r#"Invalid value: "61 * * * *": end of range (61) above maximum (59): 61"#
        );
        assert_eq!(
            bad[1].message,
            r#"Invalid value: "Mars/Base": unknown time zone Mars/Base"#
        );
        let tz = validate(
            "batch",
            "CronJob",
            &cron("TZ=UTC 0 * * * *", Value::Null),
            None,
        );
        assert_eq!(
            tz[0].message,
            r#"Invalid value: "TZ=UTC 0 * * * *": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"#
        );
        // A stored schedule with TZ may stay, as long as no timeZone is added to it.
        let legacy = cron("TZ=UTC 0 * * * *", Value::Null);
        assert!(validate("batch", "CronJob", &legacy, Some(&legacy)).is_empty());
        let local = validate("batch", "CronJob", &cron("0 * * * *", json!("Local")), None);
        assert_eq!(fields(&local), ["spec.timeZone", "spec.timeZone"]);
        let mut long = cron("0 * * * *", Value::Null);
        long["metadata"]["name"] = json!("n".repeat(53));
        long["spec"]["concurrencyPolicy"] = json!("Sometimes");
        long["spec"]["startingDeadlineSeconds"] = json!(-1);
        assert_eq!(
            fields(&validate("batch", "CronJob", &long, None)),
            [
                "spec.startingDeadlineSeconds",
                "spec.concurrencyPolicy",
                "metadata.name"
            ]
        );
    }

    #[test]
    fn pods_need_named_containers_with_images() {
        let ok = json!({"spec": {"containers": [{"name": "app", "image": "x"}]}});
        assert!(validate("", "Pod", &ok, None).is_empty());
        let bad = json!({"spec": {"containers": [{"name": "App"}, {"image": "y"}], "restartPolicy": "Sometimes"}});
        assert_eq!(
            fields(&validate("", "Pod", &bad, None)),
            [
                "spec.containers[0].name",
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.restartPolicy"
            ]
        );
        let changed = json!({"spec": {"containers": [{"name": "other", "image": "x"}]}});
        assert_eq!(fields(&validate("", "Pod", &changed, Some(&ok))), ["spec"]);
        let new_image = json!({"spec": {"containers": [{"name": "app", "image": "x:2"}]}});
        assert!(validate("", "Pod", &new_image, Some(&ok)).is_empty());
    }

    #[test]
    fn deployments_select_their_template() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(
            fields(&validate("apps", "Deployment", &d, None)),
            ["spec.template.metadata.labels"]
        );
    }
}
