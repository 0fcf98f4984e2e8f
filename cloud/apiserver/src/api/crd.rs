//! CustomResourceDefinitions: a stored CRD makes its resources served (discovery, paths,
//! OpenAPI); its versions' `openAPIV3Schema` validates, defaults and prunes its objects; its
//! `additionalPrinterColumns` are what `kubectl get` prints; deleting it deletes its objects.
//!
//! This module is also where every object meets its schema before a write
//! ([`prune_and_default`]): the built-in types' OpenAPI definitions or the CRD's.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::meta;
use super::{Api, objects};
use crate::registry::ResourceInfo;
use crate::schema::{self, Mode};
use crate::storage::ObjectKey;

const CRD_RESOURCE: &str = "customresourcedefinitions.apiextensions.k8s.io";

fn is_crd(info: &ResourceInfo) -> bool {
    info.group == "apiextensions.k8s.io" && info.kind == "CustomResourceDefinition"
}

/// Registers the resources of every stored CRD (on start).
pub(crate) fn load_stored(api: &Api) -> Result<(), ApiError> {
    let (crds, _, _) = api.store.list(CRD_RESOURCE, None, None, None, |_| true);
    for crd in crds {
        register(api, &crd.value());
    }
    Ok(())
}

/// The resources a CRD defines, one per served version.
pub fn resources_of(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let strings = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let plural = s(&names["plural"]);
    let kind = s(&names["kind"]);
    let singular = match names["singular"].as_str() {
        Some(x) if !x.is_empty() => x.to_owned(),
        _ => kind.to_lowercase(),
    };
    let crd_name = meta::meta_str(crd, "name").unwrap_or("").to_owned();
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .map(|v| ResourceInfo {
            group: s(&spec["group"]),
            version: s(&v["name"]),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            subresources: {
                let mut subs = Vec::new();
                if v.pointer("/subresources/status").is_some() {
                    subs.push("status".to_owned());
                }
                if v.pointer("/subresources/scale").is_some() {
                    subs.push("scale".to_owned());
                }
                subs
            },
            preferred: v["storage"].as_bool().unwrap_or(false),
            crd: Some(crd_name.clone()),
        })
        .collect()
}

fn register(api: &Api, crd: &Value) {
    if let Some(name) = meta::meta_str(crd, "name") {
        api.registry.set_crd(name, resources_of(crd));
    }
}

/// The CRD object behind a custom resource.
fn crd_of(api: &Api, info: &ResourceInfo) -> Option<Value> {
    let name = info.crd.as_deref()?;
    api.store
        .get(&ObjectKey::new(CRD_RESOURCE, "", name))
        .ok()
        .map(|o| o.value())
}

fn version_of<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(version))
}

/// Where a custom resource version's `subresources.scale` keeps its replicas and selector, as
/// JSON pointers (`.spec.replicas` is `/spec/replicas`); `None` without a scale subresource.
pub(crate) fn scale_paths(
    api: &Api,
    info: &ResourceInfo,
) -> Option<super::subresources::ScalePaths> {
    let crd = crd_of(api, info)?;
    let scale = version_of(&crd, &info.version)?.pointer("/subresources/scale")?;
    let pointer = |field: &str| {
        scale[field]
            .as_str()
            .map(|p| p.trim_start_matches('.').replace('.', "/"))
            .map(|p| format!("/{p}"))
    };
    Some(super::subresources::ScalePaths {
        spec: pointer("specReplicasPath")?,
        status: pointer("statusReplicasPath")?,
        selector: pointer("labelSelectorPath"),
        custom: true,
    })
}

/// The `openAPIV3Schema` of a custom resource's version.
pub(crate) fn schema_of(api: &Api, info: &ResourceInfo) -> Option<Value> {
    let crd = crd_of(api, info)?;
    version_of(&crd, &info.version)?
        .pointer("/schema/openAPIV3Schema")
        .cloned()
}

/// The schema of any served resource: the built-in definition (borrowed) or the CRD's (read
/// from the stored CRD). Look it up once per write and pass it along.
pub(crate) fn schema_for_info(api: &Api, info: &ResourceInfo) -> Option<Cow<'static, Value>> {
    match info.crd {
        Some(_) => schema_of(api, info).map(Cow::Owned),
        None => schema::schema_for(&info.group, &info.version, &info.kind).map(Cow::Borrowed),
    }
}

/// A custom resource version's `additionalPrinterColumns`.
pub(crate) fn printer_columns(api: &Api, info: &ResourceInfo) -> Vec<Value> {
    crd_of(api, info)
        .and_then(|crd| {
            version_of(&crd, &info.version)?
                .get("additionalPrinterColumns")?
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
}

/// Checks an object against its schema before a write: drops (and returns) unknown fields,
/// refuses values of the wrong type, and for custom resources applies defaults and the
/// schema's constraints.
pub(crate) fn prune_and_default(
    info: &ResourceInfo,
    schema: Option<&Value>,
    object: &mut Value,
) -> Result<Vec<String>, ApiError> {
    let Some(schema) = schema else {
        return Ok(Vec::new());
    };
    let name = meta::meta_str(object, "name").unwrap_or("").to_owned();
    match &info.crd {
        None => {
            let findings = schema::check(schema, object, Mode::Builtin);
            if let Some(first) = findings.invalid.first() {
                return Err(ApiError::BadRequest(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {}: {}",
                    info.kind, info.version, info.kind, first.field, first.message
                )));
            }
            Ok(findings.unknown)
        }
        Some(_) => {
            // The schema describes the body; type and object metadata are the server's.
            let Some(map) = object.as_object_mut() else {
                return Ok(Vec::new());
            };
            let kept: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
                .iter()
                .filter_map(|k| map.remove(*k).map(|v| ((*k).to_owned(), v)))
                .collect();
            let findings = schema::check(schema, object, Mode::Custom);
            if let Some(map) = object.as_object_mut() {
                map.extend(kept);
            }
            if !findings.invalid.is_empty() {
                return Err(ApiError::invalid(
                    &info.group,
                    &info.kind,
                    &name,
                    findings.invalid,
                ));
            }
            Ok(findings.unknown)
        }
    }
}

/// Validates a CRD and fills its status before it is written.
pub(crate) fn before_write(
    _api: &Api,
    info: &ResourceInfo,
    object: &mut Value,
    _old: Option<&Value>,
) -> Result<(), ApiError> {
    if !is_crd(info) {
        return Ok(());
    }
    let name = meta::meta_str(object, "name").unwrap_or("").to_owned();
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let mut causes = Vec::new();
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        causes.push(Cause::not_supported(
            "spec.scope",
            &spec["scope"],
            &["Cluster", "Namespaced"],
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(storage.len()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            causes.push(Cause::required(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(&info.group, &info.kind, &name, causes));
    }
    let now = meta::now();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    object["status"] = json!({
        "acceptedNames": spec["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": storage.iter().filter_map(|v| v["name"].as_str()).collect::<Vec<_>>(),
    });
    Ok(())
}

/// After a write: a CRD's resources are (re)registered.
pub(crate) fn after_write(api: &Api, info: &ResourceInfo, written: &crate::storage::StoredObject) {
    if is_crd(info) {
        let crd = written.value();
        if crd
            .pointer("/metadata/deletionTimestamp")
            .is_none_or(Value::is_null)
        {
            register(api, &crd);
        }
    }
}

/// After a delete: a CRD's resources stop being served and its objects are deleted.
pub(crate) async fn after_delete(
    api: &Api,
    info: &ResourceInfo,
    deleted: &crate::storage::StoredObject,
) {
    if !is_crd(info) {
        return;
    }
    let crd = deleted.value();
    let Some(name) = meta::meta_str(&crd, "name") else {
        return;
    };
    let resources = resources_of(&crd);
    api.registry.set_crd(name, Vec::new());
    if let Some(r) = resources.first() {
        let (items, _, _) = api.store.list(&r.storage_key(), None, None, None, |_| true);
        for item in items {
            let v = item.value();
            let k = objects::key(
                r,
                meta::meta_str(&v, "namespace"),
                meta::meta_str(&v, "name").unwrap_or(""),
            );
            if let Err(e) = api.store.delete(&k, None).await {
                tracing::warn!(%k, "deleting an object of a deleted CRD: {e}");
            }
        }
    }
}
