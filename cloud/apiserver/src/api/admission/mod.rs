//! Admission of pods: what kube-apiserver's admission plugins every cluster runs do to a pod
//! before it is stored, named as they are named there.
//!
//! Mutating first (`service_account` names the pod's account and mounts its token, `priority`
//! resolves the PriorityClass, `limit_ranger` fills the namespace's default requests and
//! limits), then the object's validation, then validating (`limit_ranger`'s minimums and
//! maximums, and `resource_quota` last, which charges the namespace's quotas: for every kind,
//! not only pods). A refusal is a 403 worded as kube-apiserver words it (`pods "x" is
//! forbidden: ...`). `resource_quota` also keeps each quota's `status.used` current as objects
//! come and go (kube-controller-manager's quota controller's job), since only the API server
//! sees every write.

use serde_json::Value;

use super::Api;
use super::error::ApiError;
use crate::registry::ResourceInfo;

pub(crate) mod limit_ranger;
pub(crate) mod priority;
mod resource_quota;
pub(crate) mod service_account;

/// A 403 for pod `name`, as admission plugins word it.
fn forbidden(name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::Forbidden(format!("pods \"{name}\" is forbidden: {why}"))
}

/// The mutating plugins, on a new pod in `namespace`.
pub(crate) fn mutate_pod(api: &Api, namespace: &str, pod: &mut Value) -> Result<(), ApiError> {
    service_account::admit(api, namespace, pod)?;
    priority::admit(api, pod)?;
    limit_ranger::default(api, namespace, pod);
    Ok(())
}

/// The validating plugins but the quota, on a new pod in `namespace`.
pub(crate) fn validate_pod(api: &Api, namespace: &str, pod: &Value) -> Result<(), ApiError> {
    limit_ranger::validate(api, namespace, pod)
}

/// The quota plugin, last, on a new object of `info` in `namespace` (cluster-scoped objects
/// are not counted); `dry_run` charges nothing.
pub(crate) async fn charge_quota(
    api: &Api,
    info: &ResourceInfo,
    namespace: &str,
    object: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    if !info.namespaced {
        return Ok(());
    }
    resource_quota::charge(api, &info.storage_key(), namespace, object, dry_run).await
}

/// Whether `info` is core pods.
pub(crate) fn is_pods(info: &ResourceInfo) -> bool {
    info.crd.is_none() && info.group.is_empty() && info.plural == "pods"
}

/// After a write in `namespace`: recounts the quotas that count `info`'s kind when an object
/// of it came, went or changed what it counts for (`counts_changed`), and every quota when a
/// quota itself was written.
pub(crate) async fn after_write(
    api: &Api,
    info: &ResourceInfo,
    namespace: &str,
    counts_changed: bool,
) {
    if !info.namespaced {
        return;
    }
    let kind = info.storage_key();
    if kind == "resourcequotas" {
        resource_quota::refresh(api, namespace, None).await;
    } else if counts_changed {
        resource_quota::refresh(api, namespace, Some(&kind)).await;
    }
}

/// Whether an update of an object of `info` changes what quotas count.
pub(crate) fn counts_change(info: &ResourceInfo, old: &Value, new: &Value) -> bool {
    resource_quota::counts_change(&info.storage_key(), old, new)
}

/// The container lists of a pod spec.
fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|list| {
            pod.pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
        })
        .flatten()
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}
