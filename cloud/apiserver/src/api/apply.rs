//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): the applied configuration
//! is merged into the object, the manager becomes the owner of every field it applied, a field
//! another manager owns with a different value is a 409 conflict (unless `force=true`, which
//! takes it over), and fields the manager applied before but not now are removed when no one
//! else owns them. Applying to an object that does not exist creates it.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::managed::{self, Entry};
use super::objects::{self, object_response};
use super::request::ResourcePath;
use super::{Api, Body, Call};
use crate::registry::ResourceInfo;
use crate::storage::{ObjectKey, StoreError};

/// How many times apply is retried when the object changes under it.
const RETRIES: usize = 8;

/// PATCH with an apply configuration.
pub(crate) async fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    k: &ObjectKey,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let applied = call.object()?;
    let Some(manager) = call.query.get("fieldManager") else {
        return Err(ApiError::BadRequest(
            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests"
                .into(),
        ));
    };
    for field in ["apiVersion", "kind"] {
        if applied
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::BadRequest(format!(
                "{field} must be set in an apply configuration"
            )));
        }
    }
    let force = call.query.flag("force");
    // The schema apply merges and tracks fields with: the built-in type's, or the CRD's.
    let schema = super::crd::schema_for_info(api, info);
    let subresource = sub.unwrap_or("");
    for _ in 0..RETRIES {
        let current = match api.store.get(k) {
            Ok(obj) => Some(obj),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(ApiError::from_store(e, &info.group, &info.plural)),
        };
        let live = current.as_ref().map_or_else(
            || json!({}),
            |o| super::conversion::to_version(info, o.value()),
        );
        let merged = merge(
            info,
            &live,
            &applied,
            schema.as_deref(),
            manager,
            subresource,
            force,
        )?;
        let result = match &current {
            None => {
                if sub.is_some() {
                    return Err(ApiError::not_found(&info.group, &info.plural, &k.name));
                }
                objects::create_object(api, call, info, path, merged)
                    .await
                    .map(|o| (StatusCode::CREATED, o))
            }
            Some(old) => objects::update_object(api, call, info, k, old, merged, sub, false).await,
        };
        match result {
            Ok((status, obj)) => return Ok(object_response(info, status, &obj)),
            // The object changed (or appeared) between the read and the write: apply again.
            Err(ApiError::Conflict { .. } | ApiError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::from_store(
        StoreError::Conflict {
            key: k.clone(),
            expected: 0,
            found: 0,
        },
        &info.group,
        &info.plural,
    ))
}

/// The object after `manager` applies `applied` to `live`, with its `managedFields` updated.
fn merge(
    info: &ResourceInfo,
    live: &Value,
    applied: &Value,
    schema: Option<&Value>,
    manager: &str,
    subresource: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let skip_status = subresource != "status" && info.has_subresource("status");
    let applied_set = managed::field_set(applied, schema, skip_status);
    let mut list = managed::entries(live);
    let mine =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == subresource;

    // A conflict is a value the applier would change under another manager: compared, as
    // kube-apiserver compares it, between the live object and the merged one with the
    // server's defaults, so a field the server defaulted (a member of an item, a list the
    // applier replaced with what the server had filled in) is no change. Maps and the items of
    // keyed lists are containers, not values: their members are compared one by one.
    let mut result = super::patch::strategic_merge(live, applied, schema)
        .map_err(|e| ApiError::BadRequest(format!("unable to apply the configuration: {e}")))?;
    let mut defaulted = result.clone();
    super::defaults::apply(
        &info.group,
        &info.kind,
        &mut defaulted,
        live.get("metadata").is_none(),
    );
    let mut conflicts = Vec::new();
    for e in list.iter().filter(|e| !mine(e)) {
        for p in e.fields.intersection(&applied_set) {
            let held = managed::value_at(live, p);
            if held.is_some_and(Value::is_object) {
                continue;
            }
            if held != managed::value_at(&defaulted, p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(m, v, p)| Cause {
                reason: "FieldManagerConflict",
                field: dotted(p),
                message: format!("conflict with \"{m}\" using {v}"),
            })
            .collect();
        let detail = if causes.len() == 1 {
            format!(
                "Apply failed with 1 conflict: {}: {}",
                causes[0].message, causes[0].field
            )
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                causes.len(),
                causes
                    .iter()
                    .map(|c| format!("{}: {}", c.message, c.field))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        let name = live
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(ApiError::conflict(&info.group, &info.plural, name, detail));
    }
    // Forced: the conflicting fields change hands. A field another manager set to the value
    // applied stays theirs too: shared, as kube-apiserver shares it.
    for e in list.iter_mut().filter(|e| !mine(e)) {
        e.fields.retain(|p| {
            !conflicts
                .iter()
                .any(|(m, _, conflicting)| *m == e.manager && conflicting == p)
        });
    }

    let previous = list
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let owned_by_others: managed::FieldSet = list
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();

    for p in previous.difference(&applied_set) {
        if !owned_by_others.contains(p) {
            managed::remove_at(&mut result, p);
        }
    }
    // The same fields applied again keep their time, as kube-apiserver keeps it, so that an
    // apply that changes nothing writes nothing.
    let time = list
        .iter()
        .find(|e| mine(e) && e.fields == applied_set)
        .map_or_else(super::meta::now, |e| e.time.clone());
    list.retain(|e| !mine(e));
    list.push(Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: info.api_version(),
        subresource: subresource.to_owned(),
        time,
        fields: applied_set,
    });
    managed::set_entries(&mut result, &list);
    Ok(result)
}

/// `.spec.replicas` from a field path, as conflicts name fields.
fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|e| match e.split_once(':') {
            Some(("f", name)) => format!(".{name}"),
            Some((_, key)) => format!("[{key}]"),
            None => String::new(),
        })
        .collect()
}
