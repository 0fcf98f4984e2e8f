//! Subresources: `status` (the object, written only in its status), `scale` (an
//! `autoscaling/v1` Scale view of a workload's replicas), `binding` (a pod assigned to a node,
//! once), a namespace's `finalize`, and a pod's `log`, `exec` and `portforward`. Those three
//! are checked here as kube-apiserver checks them (a node assigned; for log and exec, a
//! container the pod has, or its only one), then get a 503 that says so until edges serve them
//! through CloudHub (issue 16).

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::objects::{self, store_err};
use super::patch::{self, PatchType};
use super::request::ResourcePath;
use super::{Api, Body, Call, value_response};
use crate::registry::ResourceInfo;
use crate::selector::LabelSelector;

/// Serves `path`'s subresource `sub`.
pub(crate) async fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let name = path.name.as_deref().ok_or(ApiError::NoSuchPath)?;
    match (sub, call.method.clone()) {
        ("status", Method::GET) => objects::get(api, call, info, path, name),
        ("status", Method::PUT) => objects::update(api, call, info, path, name, Some("status")),
        ("status", Method::PATCH) => {
            patch::serve(api, call, info, path, name, Some("status")).await
        }
        ("scale", Method::GET) => {
            let obj = api
                .store
                .get(&objects::key(info, path.namespace.as_deref(), name))
                .map_err(store_err(info))?;
            Ok(value_response(StatusCode::OK, &scale_of(&obj.value())))
        }
        ("scale", Method::PUT | Method::PATCH) => scale(api, call, info, path, name),
        ("binding", Method::POST) => bind(api, call, info, path, name),
        ("finalize", Method::PUT) => objects::update(api, call, info, path, name, Some("finalize")),
        ("log" | "exec" | "portforward", _) => {
            let obj = api
                .store
                .get(&objects::key(info, path.namespace.as_deref(), name))
                .map_err(store_err(info))?;
            let value = obj.value();
            if sub != "portforward" {
                container_of(&value, name, call.query.get("container"))?;
            }
            let node = value
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if node.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            Err(ApiError::Unavailable(format!(
                "pods/{sub} for pod {name} on node {node} is not available: this API server has no connection to the \
                 node's agent (edges serve logs, exec and port-forward through CloudHub)"
            )))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The Scale view of a workload.
/// The container a log or exec request is for, checked as kube-apiserver checks it before it
/// reaches the node: the one named, which the pod must have; or, when none is named, the pod's
/// only container. A pod with several gets a 400 that lists them all (init containers first),
/// as kube-apiserver's does.
fn container_of(pod: &Value, name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let names_in = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let containers = names_in("containers");
    let all: Vec<String> = names_in("initContainers")
        .into_iter()
        .chain(containers.iter().cloned())
        .chain(names_in("ephemeralContainers"))
        .collect();
    match wanted.filter(|w| !w.is_empty()) {
        Some(wanted) if all.iter().any(|c| c == wanted) => Ok(wanted.to_owned()),
        Some(wanted) => Err(ApiError::BadRequest(format!(
            "container {wanted} is not valid for pod {name}"
        ))),
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                all.join(" ")
            ))),
        },
    }
}

fn scale_of(o: &Value) -> Value {
    let selector = o
        .pointer("/spec/selector")
        .map(LabelSelector::format_k8s)
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"),
            "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"),
            "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": o.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

/// PUT or PATCH of a Scale: sets the workload's `spec.replicas`.
fn scale(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let k = objects::key(info, path.namespace.as_deref(), name);
    let body = call.object()?;
    for _ in 0..8 {
        let old = api.store.get(&k).map_err(store_err(info))?;
        let current = scale_of(&old.value());
        let wanted = if *call.method == Method::PATCH {
            let kind = match call.content_type() {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml" => PatchType::Merge,
                _ => {
                    return Err(ApiError::UnsupportedMediaType(
                        "application/json-patch+json, application/merge-patch+json".into(),
                    ));
                }
            };
            patch::apply_patch(info, kind, &current, &body)?
        } else {
            if let Some(rv) = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && !rv.is_empty()
                && rv != old.rv.to_string()
            {
                return Err(ApiError::from_store(
                    crate::storage::StoreError::Conflict {
                        key: k.clone(),
                        expected: 0,
                        found: old.rv,
                    },
                    &info.group,
                    &info.plural,
                ));
            }
            body.clone()
        };
        let Some(replicas) = wanted.pointer("/spec/replicas").and_then(Value::as_i64) else {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![super::error::Cause::required("spec.replicas", "")],
            ));
        };
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![super::error::Cause::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut updated = old.value();
        updated["spec"]["replicas"] = json!(replicas);
        match objects::update_object(api, call, info, &k, &old, updated, None, false) {
            Ok((_, obj)) => return Ok(value_response(StatusCode::OK, &scale_of(&obj.value()))),
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(
        "the object kept changing while it was being scaled; try again".into(),
    ))
}

/// POST of a Binding: assigns an unassigned pod to a node.
fn bind(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let binding = call.object()?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            vec![super::error::Cause::required("target.name", "")],
        ));
    }
    let k = objects::key(info, path.namespace.as_deref(), name);
    for _ in 0..8 {
        let old = api.store.get(&k).map_err(store_err(info))?;
        let mut pod = old.value();
        if let Some(current) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        if pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": super::meta::now()}));
        pod["status"]["conditions"] = json!(conditions);
        // A binding writes both spec and status: write the object directly, as the registry does.
        match api.store.update(&k, pod, Some(old.rv)) {
            Ok(_) => {
                return Ok(value_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            Err(crate::storage::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &info.group, &info.plural)),
        }
    }
    Err(ApiError::Internal(
        "the pod kept changing while it was being bound; try again".into(),
    ))
}
