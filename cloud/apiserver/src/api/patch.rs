//! PATCH: JSON merge patch (RFC 7386) and JSON patch (RFC 6902) through the `json-patch`
//! crate, strategic merge patch for the built-in types (what `kubectl apply`, `edit`, `label`,
//! `annotate`, `scale` and `rollout restart` send), and server-side apply.
//!
//! A patch is applied to the object as stored, then written as an update based on that
//! version; if the object changed in between, the patch is applied again to the new version.
//!
//! A patch is bounded as kube-apiserver bounds it, since a small one can do much work: a JSON
//! patch has at most [`MAX_JSON_PATCH_OPERATIONS`] operations (413), and its `copy` operations
//! may copy [`MAX_JSON_PATCH_COPY_BYTES`] in all (422), so a kilobyte of doubling copies cannot
//! grow a document to gigabytes. Patches are applied on the blocking pool, off the async
//! workers that serve every other request.

use http::Response;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::objects::{self, object_response, store_err};
use super::request::ResourcePath;
use super::{Api, Body, Call};
use crate::registry::ResourceInfo;
use crate::schema::{self, ListKind};
use crate::storage::StoreError;

/// How many times a patch is re-applied when the object changes under it.
const RETRIES: usize = 8;
/// The most operations a JSON patch may have (kube-apiserver's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// The most bytes a JSON patch's `copy` operations may copy in all (kube-apiserver's
/// `--json-patch-max-copy-bytes` default, as `AccumulatedCopySizeLimit`).
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// The media types PATCH accepts.
const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json";

/// The kind of patch, from the Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902.
    Json,
    /// RFC 7386.
    Merge,
    /// Kubernetes' strategic merge patch.
    Strategic,
    /// Server-side apply.
    Apply,
}

impl PatchType {
    fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match ct {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType(PATCH_TYPES.into())),
        }
    }
}

/// Reacts to the unknown fields a request's object had, as `fieldValidation` asks: `Strict`
/// refuses them, `Warn` (the default) warns, `Ignore` says nothing.
pub(crate) fn check_field_validation(
    call: &Call<'_>,
    unknown: Vec<String>,
) -> Result<(), ApiError> {
    if unknown.is_empty() {
        return Ok(());
    }
    match call.query.get("fieldValidation").unwrap_or("Warn") {
        "Strict" => Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        "Ignore" => Ok(()),
        _ => {
            call.warn(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            Ok(())
        }
    }
}

/// PATCH of an object (or, with `sub`, of its status or scale view).
pub(crate) async fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let kind = PatchType::from_content_type(call.content_type())?;
    let k = objects::key(info, path.namespace.as_deref(), name);
    if kind == PatchType::Apply {
        return super::apply::serve(api, call, info, path, &k, sub).await;
    }
    let patch = call.object()?;
    if kind == PatchType::Strategic && info.crd.is_some() {
        return Err(ApiError::UnsupportedMediaType(
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (strategic merge \
             patch is not supported for custom resources)"
                .into(),
        ));
    }
    let patch = std::sync::Arc::new(patch);
    for _ in 0..RETRIES {
        let old = api.store.get(&k).map_err(store_err(info))?;
        let original = super::conversion::to_version(info, old.value());
        let (owned_info, owned_patch) = (info.clone(), patch.clone());
        let patched = tokio::task::spawn_blocking(move || {
            apply_patch(&owned_info, kind, &original, &owned_patch)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("applying the patch: {e}")))??;
        match objects::update_object(api, call, info, &k, &old, patched, sub, false).await {
            Ok((status, obj)) => return Ok(object_response(info, status, &obj)),
            Err(ApiError::Conflict { .. }) if !patch_has_version(&patch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::from_store(
        StoreError::Conflict {
            key: k,
            expected: 0,
            found: 0,
        },
        &info.group,
        &info.plural,
    ))
}

/// Whether the patch itself carries a resourceVersion (then a conflict is the client's).
fn patch_has_version(patch: &Value) -> bool {
    patch
        .pointer("/metadata/resourceVersion")
        .is_some_and(|v| !v.is_null())
}

/// Applies a patch of `kind` to `original`.
pub fn apply_patch(
    info: &ResourceInfo,
    kind: PatchType,
    original: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let mut doc = original.clone();
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(ApiError::ObjectTooLarge(format!(
                    "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                    ops.0.len()
                )));
            }
            let invalid = |message: String| ApiError::Invalid {
                group: info.group.clone(),
                kind: info.kind.clone(),
                name: original
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                causes: vec![super::error::Cause {
                    reason: "FieldValueInvalid",
                    field: String::new(),
                    message,
                }],
            };
            // One operation at a time, so that what each copy copies is counted before it is.
            let mut copied = 0usize;
            for op in &ops.0 {
                if let json_patch::PatchOperation::Copy(copy) = op
                    && let Some(value) = doc.pointer(copy.from.as_str())
                {
                    copied = copied.saturating_add(json_size(value));
                    if copied > MAX_JSON_PATCH_COPY_BYTES {
                        return Err(invalid(format!(
                            "Unable to copy, length {copied} exceeds limit {MAX_JSON_PATCH_COPY_BYTES}"
                        )));
                    }
                }
                json_patch::patch(&mut doc, std::slice::from_ref(op))
                    .map_err(|e| invalid(e.to_string()))?;
            }
        }
        PatchType::Strategic => {
            let schema = schema::schema_for(&info.group, &info.version, &info.kind);
            doc = strategic_merge(original, patch, schema).map_err(|e| {
                ApiError::BadRequest(format!("unable to apply the strategic merge patch: {e}"))
            })?;
        }
        PatchType::Apply => {
            return Err(ApiError::Internal(
                "apply patches go through server-side apply".into(),
            ));
        }
    }
    Ok(doc)
}

/// The length of `value` written as JSON, without writing it anywhere.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Applies a strategic merge patch to `original`, with `schema` (the type's OpenAPI schema)
/// saying how each list merges; without a schema, lists are replaced as in a merge patch.
pub fn strategic_merge(
    original: &Value,
    patch: &Value,
    schema: Option<&Value>,
) -> Result<Value, String> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => merge_map(o, p, schema).map(Value::Object),
        (_, Value::Object(p)) => merge_map(&Map::new(), p, schema).map(Value::Object),
        (_, other) => Ok(other.clone()),
    }
}

fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    schema: Option<&Value>,
) -> Result<Map<String, Value>, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return Ok(replaced);
        }
        Some("delete") => return Ok(Map::new()),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive {other:?}")),
    }
    let mut out = original.clone();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if key == "$patch" {
            continue;
        }
        if key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((
                field.to_owned(),
                value.as_array().cloned().unwrap_or_default(),
            ));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        let field_schema = schema.and_then(|s| schema::property(s, key));
        if value.is_null() {
            out.remove(key);
            continue;
        }
        let merged = match (out.get(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.remove(key);
                    continue;
                }
                let sub = field_schema.map(schema::resolve).and_then(|s| {
                    s.get("additionalProperties")
                        .filter(|_| s.get("properties").is_none())
                });
                // A map of objects (additionalProperties) merges value by value with its item schema.
                match sub {
                    Some(item_schema) => {
                        let mut m = o.clone();
                        for (k, v) in p {
                            if v.is_null() {
                                m.remove(k);
                            } else {
                                let base = m.get(k).cloned().unwrap_or(Value::Null);
                                m.insert(k.clone(), strategic_merge(&base, v, Some(item_schema))?);
                            }
                        }
                        Value::Object(m)
                    }
                    None => Value::Object(merge_map(o, p, field_schema)?),
                }
            }
            (_, Value::Object(p)) => {
                let mut fresh = merge_map(&Map::new(), p, field_schema)?;
                fresh.remove("$patch");
                Value::Object(fresh)
            }
            (original_list, Value::Array(items)) => {
                let original_items = match original_list {
                    Some(Value::Array(a)) => a.clone(),
                    _ => Vec::new(),
                };
                let kind = field_schema.map_or(ListKind::Atomic, schema::list_kind);
                let item_schema = field_schema
                    .map(schema::resolve)
                    .and_then(|s| s.get("items"));
                Value::Array(merge_list(&original_items, items, &kind, item_schema)?)
            }
            (_, other) => other.clone(),
        };
        out.insert(key.clone(), merged);
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            let kind = schema
                .and_then(|s| schema::property(s, &field))
                .map_or(ListKind::Atomic, schema::list_kind);
            reorder(list, &order, &kind);
        }
    }
    Ok(out)
}

fn item_matches(item: &Value, probe: &Value, keys: &[String]) -> bool {
    keys.iter().all(|k| item.get(k) == probe.get(k))
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    kind: &ListKind,
    item_schema: Option<&Value>,
) -> Result<Vec<Value>, String> {
    match kind {
        ListKind::Atomic => Ok(patch
            .iter()
            .filter(|v| v.get("$patch").is_none())
            .cloned()
            .collect()),
        ListKind::Set => {
            let mut out = original.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListKind::Map(keys) => {
            if patch
                .iter()
                .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Ok(patch
                    .iter()
                    .filter(|p| p.get("$patch").is_none())
                    .cloned()
                    .collect());
            }
            let mut out = original.to_vec();
            for p in patch {
                if !p.is_object() {
                    return Err(format!(
                        "a list merged by {keys:?} holds only objects, not {p}"
                    ));
                }
                let position = out.iter().position(|o| item_matches(o, p, keys));
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| !item_matches(o, p, keys));
                    continue;
                }
                match position {
                    Some(i) => out[i] = strategic_merge(&out[i], p, item_schema)?,
                    None => out.push(strategic_merge(&Value::Null, p, item_schema)?),
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `$setElementOrder` asks; items it does not name keep their place after.
fn reorder(list: &mut [Value], order: &[Value], kind: &ListKind) {
    let position = |item: &Value| {
        order.iter().position(|o| match kind {
            ListKind::Map(keys) => item_matches(item, o, keys),
            _ => item == o,
        })
    };
    list.sort_by_key(|item| position(item).unwrap_or(usize::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_schema() -> Option<&'static Value> {
        schema::schema_for("", "v1", "Pod")
    }

    #[test]
    fn containers_merge_by_name_and_tolerations_are_replaced() {
        let pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {
            "containers": [{"name": "app", "image": "a:1"}, {"name": "side", "image": "s:1"}],
            "tolerations": [{"key": "x", "operator": "Exists"}],
        }});
        let patch = json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {
            "containers": [{"name": "side", "image": "s:2"}, {"name": "new", "image": "n:1"}],
            "tolerations": [{"key": "y", "operator": "Exists"}],
        }});
        let out = strategic_merge(&pod, &patch, pod_schema()).expect("merge");
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        let images: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["image"].as_str())
            .collect();
        assert_eq!(images, ["a:1", "s:2", "n:1"]);
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "y", "operator": "Exists"}])
        );
    }

    #[test]
    fn directives_delete_replace_and_order() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let out = strategic_merge(&pod, &patch, pod_schema()).expect("merge");
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "2"}])
        );

        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "3"}]}});
        let out = strategic_merge(&pod, &patch, pod_schema()).expect("merge");
        assert_eq!(out["spec"]["containers"][0]["name"], "b");
        assert_eq!(out["spec"]["containers"][1]["image"], "3");

        let fin = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = strategic_merge(
            &fin,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            pod_schema(),
        )
        .expect("merge");
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = strategic_merge(
            &fin,
            &json!({"metadata": {"finalizers": ["c"]}}),
            pod_schema(),
        )
        .expect("merge");
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["a", "b", "c"]),
            "finalizers merge as a set"
        );
    }
}
