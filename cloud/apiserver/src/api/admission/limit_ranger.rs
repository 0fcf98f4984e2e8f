//! The `LimitRanger` admission plugin: a namespace's LimitRanges give a new pod's containers
//! the requests and limits they leave out (`default`, `defaultRequest`), and refuse containers
//! and pods outside their `min`, `max` and `maxLimitRequestRatio`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use wedge_core::quantity::{format_milli, parse_milli};

use super::super::Api;
use super::super::error::ApiError;
use super::{forbidden, name_of};

const STORAGE: &str = "limitranges";
/// The annotation that says what LimitRanger set.
const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The namespace's limit items of `kind` (`Container`, `Pod`).
fn items(api: &Api, namespace: &str, kind: &str) -> Vec<Value> {
    let (ranges, _, _) = api
        .store
        .list(STORAGE, Some(namespace), None, None, |_| true);
    ranges
        .iter()
        .flat_map(|r| {
            r.value()
                .pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|item| item.get("type").and_then(Value::as_str) == Some(kind))
        .collect()
}

/// Fills each container's missing requests and limits from the `Container` items.
pub(crate) fn default(api: &Api, namespace: &str, pod: &mut Value) {
    let items = items(api, namespace, "Container");
    if items.is_empty() {
        return;
    }
    let mut said = Vec::new();
    for (list, what) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        let Some(containers) = pod
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in containers.iter_mut() {
            let name = name_of_container(c);
            let Some(resources) = c
                .as_object_mut()
                .map(|c| {
                    c.entry("resources")
                        .or_insert_with(|| Value::Object(Map::new()))
                })
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (field, from, word) in [
                ("requests", "defaultRequest", "request"),
                ("limits", "default", "limit"),
            ] {
                let mut set = Vec::new();
                for item in &items {
                    let Some(defaults) = item.get(from).and_then(Value::as_object) else {
                        continue;
                    };
                    let target = resources
                        .entry(field)
                        .or_insert_with(|| Value::Object(Map::new()));
                    let Some(target) = target.as_object_mut() else {
                        continue;
                    };
                    for (resource, quantity) in defaults {
                        if !target.contains_key(resource) {
                            target.insert(resource.clone(), quantity.clone());
                            set.push(resource.clone());
                        }
                    }
                }
                set.sort();
                if !set.is_empty() {
                    said.push(format!("{} {word} for {what} {name}", set.join(", ")));
                }
            }
        }
    }
    if said.is_empty() {
        return;
    }
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(
                ANNOTATION.into(),
                Value::String(format!("LimitRanger plugin set: {}", said.join("; "))),
            );
        }
    }
}

fn name_of_container(c: &Value) -> String {
    c.get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Requests or limits as thousandths, resource by resource (unparseable ones left out: the
/// schema walk has already refused them).
fn amounts(resources: Option<&Value>) -> BTreeMap<String, u64> {
    resources
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), parse_milli(v.as_str()?).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn binary(resource: &str) -> bool {
    resource.contains("memory")
        || resource.contains("storage")
        || resource.starts_with("hugepages-")
}

/// Checks one set of requests and limits against one item; `per` is `Container` or `Pod`.
fn check(
    item: &Value,
    per: &str,
    requests: &BTreeMap<String, u64>,
    limits: &BTreeMap<String, u64>,
    problems: &mut Vec<String>,
) {
    let show = |r: &str, v: u64| format_milli(v, binary(r));
    // Each constraint yields its first failure only, as LimitRanger's `minConstraint`,
    // `maxConstraint` and `limitRequestRatioConstraint` return.
    for (resource, min) in amounts(item.get("min")) {
        let min_s = show(&resource, min);
        let problem = match (requests.get(&resource), limits.get(&resource)) {
            (None, _) => Some(format!(
                "minimum {resource} usage per {per} is {min_s}.  No request is specified"
            )),
            (Some(&r), _) if r < min => Some(format!(
                "minimum {resource} usage per {per} is {min_s}, but request is {}",
                show(&resource, r)
            )),
            (_, Some(&l)) if l < min => Some(format!(
                "minimum {resource} usage per {per} is {min_s}, but limit is {}",
                show(&resource, l)
            )),
            _ => None,
        };
        problems.extend(problem);
    }
    for (resource, max) in amounts(item.get("max")) {
        let max_s = show(&resource, max);
        let problem = match (requests.get(&resource), limits.get(&resource)) {
            (_, None) => Some(format!(
                "maximum {resource} usage per {per} is {max_s}.  No limit is specified"
            )),
            (_, Some(&l)) if l > max => Some(format!(
                "maximum {resource} usage per {per} is {max_s}, but limit is {}",
                show(&resource, l)
            )),
            (Some(&r), _) if r > max => Some(format!(
                "maximum {resource} usage per {per} is {max_s}, but request is {}",
                show(&resource, r)
            )),
            _ => None,
        };
        problems.extend(problem);
    }
    for (resource, ratio) in amounts(item.get("maxLimitRequestRatio")) {
        let ratio_s = show(&resource, ratio);
        let problem = match (requests.get(&resource), limits.get(&resource)) {
            (None | Some(0), _) => Some(format!(
                "{resource} max limit to request ratio per {per} is {ratio_s}, but no request is specified or request is 0"
            )),
            (_, None | Some(0)) => Some(format!(
                "{resource} max limit to request ratio per {per} is {ratio_s}, but no limit is specified or limit is 0"
            )),
            (Some(&r), Some(&l)) => {
                let provided = l as f64 / r as f64;
                (provided * 1000.0 > ratio as f64).then(|| {
                    format!(
                        "{resource} max limit to request ratio per {per} is {ratio_s}, but provided ratio is {provided:.6}"
                    )
                })
            }
        };
        problems.extend(problem);
    }
}

/// Refuses a pod outside the namespace's `Container` and `Pod` items.
pub(crate) fn validate(api: &Api, namespace: &str, pod: &Value) -> Result<(), ApiError> {
    let containers = items(api, namespace, "Container");
    let pods = items(api, namespace, "Pod");
    if containers.is_empty() && pods.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    let mut pod_requests: BTreeMap<String, u64> = BTreeMap::new();
    let mut pod_limits: BTreeMap<String, u64> = BTreeMap::new();
    for c in super::containers(pod) {
        let requests = amounts(c.pointer("/resources/requests"));
        let limits = amounts(c.pointer("/resources/limits"));
        for item in &containers {
            check(item, "Container", &requests, &limits, &mut problems);
        }
        for (r, v) in requests {
            *pod_requests.entry(r).or_default() += v;
        }
        for (r, v) in limits {
            *pod_limits.entry(r).or_default() += v;
        }
    }
    for item in &pods {
        check(item, "Pod", &pod_requests, &pod_limits, &mut problems);
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(forbidden(name_of(pod), &problems[0])),
        _ => Err(forbidden(
            name_of(pod),
            format!("[{}]", problems.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn limits_are_checked_as_limit_ranger_words_it() {
        let item = json!({"type": "Container", "max": {"memory": "1Gi"}, "min": {"cpu": "100m"},
                          "maxLimitRequestRatio": {"memory": "2"}});
        let requests = BTreeMap::from([("memory".to_owned(), 256u64 * 1024 * 1024 * 1000)]);
        let limits = BTreeMap::from([("memory".to_owned(), 2048u64 * 1024 * 1024 * 1000)]);
        let mut problems = Vec::new();
        check(&item, "Container", &requests, &limits, &mut problems);
        assert_eq!(
            problems,
            [
                "minimum cpu usage per Container is 100m.  No request is specified",
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "memory max limit to request ratio per Container is 2, but provided ratio is 8.000000",
            ]
        );
    }
}
