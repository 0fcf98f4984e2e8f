//! `componentstatuses` (core v1, deprecated since Kubernetes 1.19 but still served): the health
//! of the control plane's parts, computed at each request, never stored.
//!
//! kube-apiserver probes the scheduler's and the controller manager's `/healthz` and etcd. Wedge
//! has no etcd, and its scheduler and controllers run in one control plane that holds a Lease
//! while it leads, so the answers are its own: `storage` is healthy when the SQLite store
//! answers; `scheduler` and `controller-manager` are healthy while a control plane holds an
//! unexpired Lease `kube-system/wedge-controlplane` (whichever process runs it: `wedge up`, or
//! a `cloudcore` beside a separate API server).

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::ResourcePath;
use super::{Api, Body, Call, value_response};
use crate::registry::ResourceInfo;
use crate::storage::{ObjectKey, StoredObject};

/// The Lease the control plane holds while it leads (`wedge_controlplane::LeaderConfig`'s default).
const CONTROLPLANE_LEASE: (&str, &str) = ("kube-system", "wedge-controlplane");

/// The components, in the order kubectl lists them.
const COMPONENTS: [&str; 3] = ["controller-manager", "scheduler", "storage"];

/// Answers `get` and `list` of `componentstatuses`.
pub(crate) fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    if call.method != Method::GET || path.legacy_watch || call.query.flag("watch") {
        return Err(ApiError::MethodNotAllowed);
    }
    let now = jiff::Timestamp::now();
    let mut items: Vec<Value> = match path.name.as_deref() {
        None => COMPONENTS.iter().map(|c| status_of(api, c, now)).collect(),
        Some(name) if COMPONENTS.contains(&name) => vec![status_of(api, name, now)],
        Some(name) => {
            return Err(ApiError::NotFound {
                group: String::new(),
                resource: "componentstatuses".into(),
                name: name.into(),
            });
        }
    };
    if super::table::wanted(call) {
        let rows: Vec<StoredObject> = items.iter().filter_map(stored).collect();
        return Ok(value_response(
            StatusCode::OK,
            &super::table::render(api, call, info, &rows, None),
        ));
    }
    let body = match (path.name.as_deref(), items.pop()) {
        (Some(_), Some(item)) => item,
        (_, last) => {
            items.extend(last);
            json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items})
        }
    };
    Ok(value_response(StatusCode::OK, &body))
}

fn stored(item: &Value) -> Option<StoredObject> {
    Some(StoredObject {
        rv: 0,
        json: serde_json::to_vec(item).ok()?.into(),
        labels: Default::default(),
    })
}

/// One component's `ComponentStatus`.
fn status_of(api: &Api, component: &str, now: jiff::Timestamp) -> Value {
    let problem = match component {
        "storage" => api
            .store
            .get(&ObjectKey::new("namespaces", "", "default"))
            .err()
            .map(|e| format!("the store does not answer: {e}")),
        _ => controlplane_problem(api, now),
    };
    let (healthy, message, error) = match problem {
        None => ("True", "ok", None),
        Some(p) => ("False", "", Some(p)),
    };
    let mut condition = json!({"type": "Healthy", "status": healthy, "message": message});
    if let Some(error) = error {
        condition["error"] = json!(error);
    }
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": component},
        "conditions": [condition],
    })
}

/// Why no control plane is leading, if none is.
fn controlplane_problem(api: &Api, now: jiff::Timestamp) -> Option<String> {
    let (namespace, name) = CONTROLPLANE_LEASE;
    let no_leader = || format!("no control plane holds the Lease {namespace}/{name}");
    let Ok(lease) = api.store.get(&ObjectKey::new(
        "leases.coordination.k8s.io",
        namespace,
        name,
    )) else {
        return Some(no_leader());
    };
    let lease = lease.value();
    let holder = lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("");
    let renewed = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let duration = lease
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    match renewed {
        Some(at)
            if !holder.is_empty() && at.as_second().saturating_add(duration) >= now.as_second() =>
        {
            None
        }
        Some(at) if !holder.is_empty() => Some(format!(
            "the Lease {namespace}/{name} held by {holder} expired; last renewed at {at}"
        )),
        _ => Some(no_leader()),
    }
}
