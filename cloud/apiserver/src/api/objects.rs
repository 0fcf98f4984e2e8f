//! Create, get, update and delete of one object, with Kubernetes' object semantics: names and
//! generated names, uids and timestamps, namespaces that must exist, defaulting and validation,
//! optimistic concurrency, the status subresource's split, `generation`, finalizers and
//! `deletionTimestamp`, and graceful deletion of pods bound to a node.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::meta::{self, NameRule};
use super::request::ResourcePath;
use super::{
    Api, Body, Call, admission, crd, defaults, json_response, services, validate, value_response,
};
use crate::registry::ResourceInfo;
use crate::storage::{ObjectKey, StoreError, StoredObject};

/// How many times a write based on a read is retried when the object changed in between.
const CONFLICT_RETRIES: usize = 8;

/// The namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The store key of an object.
pub(crate) fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey::new(
        &info.storage_key(),
        if info.namespaced {
            namespace.unwrap_or("")
        } else {
            ""
        },
        name,
    )
}

/// The object's JSON as a response, in the version `info` names.
pub(crate) fn object_response(
    info: &ResourceInfo,
    status: StatusCode,
    obj: &StoredObject,
) -> Response<Body> {
    json_response(status, super::conversion::present(info, obj).json.clone())
}

/// Maps a store error for `info`.
pub(crate) fn store_err(info: &ResourceInfo) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| ApiError::from_store(e, &info.group, &info.plural)
}

/// Creates the system namespaces (each with its `default` ServiceAccount) and the system
/// PriorityClasses if missing.
pub(crate) async fn ensure_system_namespaces(api: &Api) -> Result<(), ApiError> {
    for ns in SYSTEM_NAMESPACES {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                            "status": {"phase": "Active"}});
        ensure_object(api, "", "namespaces", ns, object).await?;
        ensure_default_service_account(api, ns).await?;
    }
    for (name, class) in admission::priority::system_classes() {
        ensure_object(api, "scheduling.k8s.io", "priorityclasses", name, class).await?;
    }
    Ok(())
}

/// Creates a cluster-scoped object the server needs when it is missing (the system namespaces,
/// the default RBAC roles), and leaves one that exists as it is.
pub(crate) async fn ensure_object(
    api: &Api,
    group: &str,
    plural: &str,
    name: &str,
    mut object: Value,
) -> Result<(), ApiError> {
    let Some(info) = api.registry.get(group, "v1", plural) else {
        return Ok(());
    };
    let k = key(&info, None, name);
    if api.store.get(&k).is_ok() {
        return Ok(());
    }
    stamp_new(&mut object, name);
    defaults::apply(group, &info.kind, &mut object, true);
    match api.store.create(&k, object).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, group, plural)),
    }
}

/// GET of one object.
pub(crate) fn get(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let obj = api
        .store
        .get(&key(info, path.namespace.as_deref(), name))
        .map_err(store_err(info))?;
    if super::table::wanted(call) {
        return Ok(value_response(
            StatusCode::OK,
            &super::table::render(api, call, info, &[obj], None),
        ));
    }
    Ok(object_response(info, StatusCode::OK, &obj))
}

/// Checks (and fills) `apiVersion` and `kind` against the endpoint.
fn check_type(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON or YAML object".into(),
        ));
    };
    let expected = info.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), Value::String(expected));
        }
        Some(v) if v == expected => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), Value::String(info.kind.clone()));
        }
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    if !map.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    Ok(())
}

/// Sets what a new object gets from the server: name, uid, creation time, generation.
pub(crate) fn stamp_new(object: &mut Value, name: &str) {
    if let Some(m) = meta::metadata_mut(object) {
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(meta::uid()));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        m.insert("generation".into(), json!(1));
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(server_owned);
        }
    }
}

/// The namespace an object goes to: the path's, which the object may repeat but not contradict.
fn resolve_namespace(
    info: &ResourceInfo,
    path: &ResourcePath,
    object: &mut Value,
) -> Result<Option<String>, ApiError> {
    if !info.namespaced {
        if let Some(m) = meta::metadata_mut(object) {
            m.remove("namespace");
        }
        return Ok(None);
    }
    let in_object = meta::meta_str(object, "namespace")
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let ns = match (&path.namespace, in_object) {
        (Some(p), Some(o)) if *p != o => {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        (Some(p), _) => p.clone(),
        (None, Some(_)) | (None, None) => {
            return Err(ApiError::BadRequest(
                "a namespaced object must be created in a namespace path".into(),
            ));
        }
    };
    if let Some(m) = meta::metadata_mut(object) {
        m.insert("namespace".into(), json!(ns));
    }
    Ok(Some(ns))
}

/// 404 unless the namespace exists; 403 if it is being deleted (for creates).
fn require_namespace(api: &Api, ns: &str, creating: bool) -> Result<(), ApiError> {
    let k = ObjectKey::new("namespaces", "", ns);
    let ns_obj = api
        .store
        .get(&k)
        .map_err(|_| ApiError::not_found("", "namespaces", ns))?;
    if creating
        && ns_obj
            .value()
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::Forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

/// The checks every object gets: its name, labels and annotations, then its kind's.
fn check_object(
    info: &ResourceInfo,
    name: &str,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if let Some(p) = meta::name_problem(name, NameRule::for_resource(&info.group, &info.plural)) {
        causes.push(Cause::invalid("metadata.name", &json!(name), &p));
    }
    causes.extend(meta::labels_and_annotations_problems(object));
    causes.extend(validate::validate(&info.group, &info.kind, object, old));
    if let Some(old) = old
        && let Some(new_fin) = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
        && old
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
    {
        let old_fin = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if new_fin.iter().any(|f| !old_fin.contains(f)) {
            causes.push(Cause::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&info.group, &info.kind, name, causes))
    }
}

/// POST: creates an object.
pub(crate) async fn create(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    let object = call.object()?;
    let created = create_object(api, call, info, path, object).await?;
    Ok(object_response(info, StatusCode::CREATED, &created))
}

/// Creates `object` (already parsed) under `path`'s namespace.
pub(crate) async fn create_object(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    mut object: Value,
) -> Result<StoredObject, ApiError> {
    check_type(info, &mut object)?;
    let ns = resolve_namespace(info, path, &mut object)?;
    if let Some(ns) = &ns {
        require_namespace(api, ns, true)?;
    }
    let name = match (
        meta::meta_str(&object, "name").filter(|n| !n.is_empty()),
        meta::meta_str(&object, "generateName"),
    ) {
        (Some(n), _) => n.to_owned(),
        (None, Some(prefix)) if !prefix.is_empty() => meta::generate_name(prefix),
        (None, _) => {
            return Err(ApiError::invalid(
                &info.group,
                &info.kind,
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
    };
    stamp_new(&mut object, &name);
    let schema = crd::schema_for_info(api, info);
    let unknown = crd::prune_and_default(info, schema.as_deref(), &mut object)?;
    super::patch::check_field_validation(call, unknown)?;
    let mut object = super::conversion::to_storage(api, info, object)?;
    if info.has_subresource("status")
        && let Some(o) = object.as_object_mut()
    {
        o.remove("status");
    }
    defaults::apply(&info.group, &info.kind, &mut object, true);
    let pod_namespace = admission::is_pods(info).then(|| ns.clone().unwrap_or_default());
    if let Some(ns) = &pod_namespace {
        admission::mutate_pod(api, ns, &mut object)?;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => object["status"] = defaults::initial_pod_status(&object),
        ("", "Namespace") => object["status"] = json!({"phase": "Active"}),
        _ => {}
    }
    crd::before_write(api, info, &mut object, None)?;
    check_object(info, &name, &object, None)?;
    crate::authz::check_escalation(&api.store, call.user, info, &object)?;
    if let Some(ns) = &pod_namespace {
        admission::validate_pod(api, ns, &object)?;
    }
    admission::charge_quota(
        api,
        info,
        ns.as_deref().unwrap_or(""),
        &object,
        call.query.dry_run()?,
    )
    .await?;
    if !call.is_apply() {
        super::managed::record_update(
            None,
            &mut object,
            schema.as_deref(),
            &call.field_manager(),
            &info.api_version(),
            "",
        );
    }
    // Cluster IPs and node ports, after the managed fields as kube-apiserver allocates them
    // (in storage), held until the write below.
    let allocation = if services::is_services(info) {
        Some(
            services::for_create(
                api,
                ns.as_deref().unwrap_or(""),
                &mut object,
                call.query.dry_run()?,
            )
            .await?,
        )
    } else {
        None
    };
    let k = key(info, ns.as_deref(), &name);
    if call.query.dry_run()? {
        if api.store.get(&k).is_ok() {
            return Err(ApiError::from_store(
                StoreError::AlreadyExists(k),
                &info.group,
                &info.plural,
            ));
        }
        return Ok(StoredObject {
            rv: 0,
            json: serde_json::to_vec(&object).unwrap_or_default().into(),
            labels: Default::default(),
        });
    }
    let created = api
        .store
        .create(&k, object)
        .await
        .map_err(store_err(info))?;
    if let Some(allocation) = allocation {
        allocation.commit(&created, (&k.namespace, &k.name)).await;
    }
    crd::after_write(api, info, &created);
    admission::after_write(api, info, &k.namespace, true).await;
    if info.group.is_empty() && info.kind == "Namespace" {
        ensure_default_service_account(api, &name).await?;
    }
    Ok(created)
}

/// The `default` ServiceAccount every namespace has (kube-controller-manager's ServiceAccount
/// controller makes it; here the API server does, so that it is there without a control plane
/// too, as soon as the namespace is).
async fn ensure_default_service_account(api: &Api, namespace: &str) -> Result<(), ApiError> {
    let Some(info) = api.registry.get("", "v1", "serviceaccounts") else {
        return Ok(());
    };
    let k = key(&info, Some(namespace), "default");
    if api.store.get(&k).is_ok() {
        return Ok(());
    }
    let mut object = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "default", "namespace": namespace}});
    stamp_new(&mut object, "default");
    match api.store.create(&k, object).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, "", "serviceaccounts")),
    }
}

/// PUT: replaces an object (or, with `sub`, its status or other subresource view).
pub(crate) async fn update(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let new = call.object()?;
    let k = key(info, path.namespace.as_deref(), name);
    let old = api.store.get(&k).map_err(store_err(info))?;
    let (status, obj) = update_object(api, call, info, &k, &old, new, sub, true).await?;
    Ok(object_response(info, status, &obj))
}

/// Replaces `old` with `new`. With `client_version`, a `resourceVersion` in `new` is a
/// precondition (PUT); without, the write is based on `old` (patches). Returns the status code
/// and the object written (the old one, unchanged, when nothing changed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_object(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    k: &ObjectKey,
    old: &StoredObject,
    mut new: Value,
    sub: Option<&str>,
    client_version: bool,
) -> Result<(StatusCode, StoredObject), ApiError> {
    check_type(info, &mut new)?;
    let old_value = old.value();
    let name_in_body = meta::meta_str(&new, "name").unwrap_or("");
    if !name_in_body.is_empty() && name_in_body != k.name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({name_in_body}) does not match the name on the URL ({})",
            k.name
        )));
    }
    if info.namespaced
        && let Some(ns) = meta::meta_str(&new, "namespace").filter(|n| !n.is_empty())
        && ns != k.namespace
    {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    let expected = if client_version {
        match meta::meta_str(&new, "resourceVersion").filter(|v| !v.is_empty()) {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("metadata.resourceVersion: Invalid value: {v:?}: must be a resource version this server gave"))
            })?),
            None => None,
        }
    } else {
        Some(old.rv)
    };
    if let Some(uid) = meta::meta_str(&new, "uid").filter(|u| !u.is_empty())
        && Some(uid) != meta::meta_str(&old_value, "uid")
    {
        return Err(ApiError::conflict(
            &info.group,
            &info.plural,
            &k.name,
            format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::meta_str(&old_value, "uid").unwrap_or("")
            ),
        ));
    }
    let schema = crd::schema_for_info(api, info);
    let unknown = crd::prune_and_default(info, schema.as_deref(), &mut new)?;
    super::patch::check_field_validation(call, unknown)?;
    let new = super::conversion::to_storage(api, info, new)?;

    // What the server owns in metadata stays as it was.
    let mut merged = match sub {
        // A status write changes the status and nothing else.
        Some("status") => {
            let mut m = old_value.clone();
            m["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if m["status"].is_null()
                && let Some(o) = m.as_object_mut()
            {
                o.remove("status");
            }
            m
        }
        _ => {
            let mut m = new;
            if info.has_subresource("status") {
                match old_value.get("status") {
                    Some(s) => m["status"] = s.clone(),
                    None => {
                        if let Some(o) = m.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            m
        }
    };
    if let (Some(meta_new), Some(meta_old)) = (
        meta::metadata_mut(&mut merged),
        old_value.get("metadata").and_then(Value::as_object),
    ) {
        for owned in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            match meta_old.get(owned) {
                Some(v) => meta_new.insert(owned.into(), v.clone()),
                None => meta_new.remove(owned),
            };
        }
        if !meta_new.contains_key("managedFields")
            && let Some(mf) = meta_old.get("managedFields")
        {
            meta_new.insert("managedFields".into(), mf.clone());
        }
    }
    defaults::apply(&info.group, &info.kind, &mut merged, false);
    if meta::spec_changed(&old_value, &merged) {
        let generation = old_value
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        if let Some(m) = meta::metadata_mut(&mut merged) {
            m.insert("generation".into(), json!(generation));
        }
    }
    crd::before_write(api, info, &mut merged, Some(&old_value))?;
    check_object(info, &k.name, &merged, Some(&old_value))?;
    crate::authz::check_escalation(&api.store, call.user, info, &merged)?;
    if !call.is_apply() {
        super::managed::record_update(
            Some(&old_value),
            &mut merged,
            schema.as_deref(),
            &call.field_manager(),
            &info.api_version(),
            sub.unwrap_or(""),
        );
    }
    // What the client left out that was allocated is kept (so that the same YAML applies
    // again), and a change of type allocates or frees; held until the write below. Not for
    // the status subresource, whose writes leave the spec as it was (kube's status store has
    // no allocation hooks either).
    let mut allocation = if services::is_services(info) && sub.is_none() {
        Some(services::for_update(api, &old_value, &mut merged, call.query.dry_run()?).await?)
    } else {
        None
    };

    // An unchanged object is not written: no new version, no event.
    let mut compare = merged.clone();
    if let Some(m) = meta::metadata_mut(&mut compare) {
        m.insert("resourceVersion".into(), json!(old.rv.to_string()));
    }
    // Except one stored under an older key: rewriting it is how rotation moves it.
    if compare == old_value && !api.store.is_stale(k) {
        if let Some(exp) = expected
            && exp != old.rv
        {
            return Err(ApiError::from_store(
                StoreError::Conflict {
                    key: k.clone(),
                    expected: exp,
                    found: old.rv,
                },
                &info.group,
                &info.plural,
            ));
        }
        return Ok((StatusCode::OK, old.clone()));
    }
    if call.query.dry_run()? {
        return Ok((
            StatusCode::OK,
            StoredObject {
                rv: old.rv,
                json: serde_json::to_vec(&merged).unwrap_or_default().into(),
                labels: Default::default(),
            },
        ));
    }
    // Removing the last finalizer of an object being deleted deletes it.
    if finalized(&merged) {
        // The update's allocation is let go first: the deletion frees what the Service held.
        drop(allocation.take());
        let freeing = if services::is_services(info) {
            Some(services::for_delete(api, &old_value).await)
        } else {
            None
        };
        let deleted = api
            .store
            .delete(k, expected)
            .await
            .map_err(store_err(info))?;
        if let Some(freeing) = freeing {
            freeing.commit(&deleted, (&k.namespace, &k.name)).await;
        }
        crd::after_delete(api, info, &deleted).await;
        admission::after_write(api, info, &k.namespace, true).await;
        return Ok((StatusCode::OK, deleted));
    }
    let counts_changed = admission::counts_change(info, &old_value, &merged);
    let written = api
        .store
        .update(k, merged, expected)
        .await
        .map_err(store_err(info))?;
    if let Some(allocation) = allocation {
        allocation.commit(&written, (&k.namespace, &k.name)).await;
    }
    crd::after_write(api, info, &written);
    admission::after_write(api, info, &k.namespace, counts_changed).await;
    Ok((StatusCode::OK, written))
}

/// Whether an object is being deleted, has no finalizers left and no grace period to wait.
fn finalized(object: &Value) -> bool {
    let deleting = object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let finalizers = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let grace = object
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    // A namespace also waits for its content to be removed (`spec.finalizers`).
    let content = object
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    deleting && !finalizers && grace == 0 && !content
}

/// What a DELETE asks for: the body's `DeleteOptions`, or the same as query parameters.
#[derive(Debug, Default)]
pub(crate) struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    pub(crate) fn from_call(call: &Call<'_>) -> Result<Self, ApiError> {
        let body = if call.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            call.object()?
        };
        Self::from_body(&body, call)
    }

    /// The options in `body` (a `DeleteOptions`, or null), then the query's.
    pub(crate) fn from_body(body: &Value, call: &Call<'_>) -> Result<Self, ApiError> {
        let mut o = Self {
            grace: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation: body
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned),
            uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if o.grace.is_none() {
            o.grace = call.query.number("gracePeriodSeconds")?;
        }
        if o.propagation.is_none() {
            o.propagation = call.query.get("propagationPolicy").map(str::to_owned);
        }
        if o.propagation.is_none()
            && body.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        {
            o.propagation = Some("Orphan".into());
        }
        if let Some(p) = &o.propagation
            && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                vec![Cause::not_supported(
                    "propagationPolicy",
                    &json!(p),
                    &["Foreground", "Background", "Orphan"],
                )],
            ));
        }
        if o.grace.is_some_and(|g| g < 0) {
            o.grace = Some(1);
        }
        Ok(o)
    }
}

/// DELETE of one object.
pub(crate) async fn delete(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let options = DeleteOptions::from_call(call)?;
    let k = key(info, path.namespace.as_deref(), name);
    let mut obj = delete_object(api, call, info, &k, &options).await?;
    if info.group.is_empty() && info.kind == "Namespace" && !call.query.dry_run()? {
        obj = finalize_if_empty(api, info, &k, obj).await?;
    }
    Ok(object_response(info, StatusCode::OK, &obj))
}

/// A namespace being deleted that holds nothing is finalized and removed at once. One that
/// still holds objects stays `Terminating` until the namespace controller (issue 4) has
/// removed them and finalized it.
async fn finalize_if_empty(
    api: &Api,
    info: &ResourceInfo,
    k: &ObjectKey,
    obj: StoredObject,
) -> Result<StoredObject, ApiError> {
    let ns = &k.name;
    let holds_something = api
        .registry
        .all()
        .iter()
        .filter(|r| r.namespaced && r.preferred)
        .any(|r| {
            let (items, _, _) = api
                .store
                .list(&r.storage_key(), Some(ns), None, Some(1), |_| true);
            !items.is_empty()
        });
    let mut value = obj.value();
    if holds_something
        || value
            .pointer("/metadata/deletionTimestamp")
            .is_none_or(Value::is_null)
    {
        return Ok(obj);
    }
    if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("finalizers");
    }
    if finalized(&value) {
        return api
            .store
            .delete(k, Some(obj.rv))
            .await
            .map_err(store_err(info));
    }
    api.store
        .update(k, value, Some(obj.rv))
        .await
        .map_err(store_err(info))
}

/// Deletes one object as `options` ask: at once, or by marking it (finalizers, a pod's grace).
pub(crate) async fn delete_object(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    k: &ObjectKey,
    options: &DeleteOptions,
) -> Result<StoredObject, ApiError> {
    let dry_run = call.query.dry_run()?;
    for _ in 0..CONFLICT_RETRIES {
        let old = api.store.get(k).map_err(store_err(info))?;
        let value = old.value();
        let conflict =
            |detail: String| ApiError::conflict(&info.group, &info.plural, &k.name, detail);
        if let Some(uid) = &options.uid
            && Some(uid.as_str()) != meta::meta_str(&value, "uid")
        {
            return Err(conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::meta_str(&value, "uid").unwrap_or("")
            )));
        }
        if let Some(rv) = &options.resource_version
            && *rv != old.rv.to_string()
        {
            return Err(conflict(format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                old.rv
            )));
        }
        let mut marked = value.clone();
        let (keep, changed) = plan_deletion(info, &mut marked, options);
        if dry_run {
            return Ok(StoredObject {
                rv: old.rv,
                json: serde_json::to_vec(&marked).unwrap_or_default().into(),
                labels: old.labels.clone(),
            });
        }
        let result = if keep {
            if !changed {
                return Ok(old);
            }
            api.store.update(k, marked, Some(old.rv)).await
        } else {
            let freeing = if services::is_services(info) {
                Some(services::for_delete(api, &value).await)
            } else {
                None
            };
            let deleted = api.store.delete(k, Some(old.rv)).await;
            if let (Some(freeing), Ok(deleted)) = (freeing, &deleted) {
                freeing.commit(deleted, (&k.namespace, &k.name)).await;
            }
            deleted
        };
        match result {
            Ok(written) => {
                if keep {
                    crd::after_write(api, info, &written);
                } else {
                    crd::after_delete(api, info, &written).await;
                    admission::after_write(api, info, &k.namespace, true).await;
                }
                return Ok(written);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &info.group, &info.plural)),
        }
    }
    Err(ApiError::Internal(format!(
        "{k} kept changing while it was being deleted; try again"
    )))
}

/// Decides how an object is deleted: returns whether it stays (marked with a
/// `deletionTimestamp`) and whether the marking changed it.
fn plan_deletion(info: &ResourceInfo, object: &mut Value, options: &DeleteOptions) -> (bool, bool) {
    let before = object.clone();
    let Some(m) = meta::metadata_mut(object) else {
        return (false, false);
    };
    let already = m.get("deletionTimestamp").is_some_and(|v| !v.is_null());
    let mut finalizers: Vec<Value> = m
        .get("finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !already {
        match options.propagation.as_deref() {
            Some("Orphan") => add(&mut finalizers, "orphan"),
            Some("Foreground") => add(&mut finalizers, "foregroundDeletion"),
            _ => {}
        }
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers.clone()));
    }

    // Graceful deletion: a pod on a node waits for the node's agent to confirm with grace 0.
    let is_pod = info.group.is_empty() && info.kind == "Pod";
    let is_namespace = info.group.is_empty() && info.kind == "Namespace";
    let mut grace = 0;
    if is_pod {
        let pod = &before;
        let bound = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        let spec_grace = pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        grace = if bound && !terminal {
            options.grace.unwrap_or(spec_grace)
        } else {
            0
        };
        if already {
            let current = m
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            grace = grace.min(current);
        }
    }
    let namespace_content = is_namespace
        && before
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());

    if finalizers.is_empty() && grace == 0 && !namespace_content {
        return (false, false);
    }
    if !already
        || grace
            < m.get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
    {
        m.insert("deletionTimestamp".into(), json!(meta::after(grace)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
    if is_namespace {
        object["status"] = json!({"phase": "Terminating"});
    }
    let changed = *object != before;
    (true, changed)
}

fn add(list: &mut Vec<Value>, finalizer: &str) {
    if !list.iter().any(|f| f.as_str() == Some(finalizer)) {
        list.push(json!(finalizer));
    }
}

/// DELETE of a collection: every object the selectors match, each as one delete.
pub(crate) async fn delete_collection(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    let options = DeleteOptions::from_call(call)?;
    let filter = super::list::Filter::from_query(info, &call.query)?;
    let (items, rv, _) = api.store.list(
        &info.storage_key(),
        path.namespace.as_deref(),
        None,
        None,
        |o| filter.keep(o),
    );
    let mut deleted = Vec::new();
    for item in items {
        let value = item.value();
        let name = meta::meta_str(&value, "name").unwrap_or_default();
        let ns = meta::meta_str(&value, "namespace");
        match delete_object(api, call, info, &key(info, ns, name), &options).await {
            Ok(obj) => deleted.push(obj.value()),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(value_response(
        StatusCode::OK,
        &json!({
            "kind": info.list_kind(),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": deleted,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn bound_pods_wait_for_their_node_and_others_go_at_once() {
        let reg = Registry::builtin();
        let pods = reg.get("", "v1", "pods").expect("pods");
        let mut bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "edge-1", "terminationGracePeriodSeconds": 20}, "status": {"phase": "Running"}});
        let (keep, changed) = plan_deletion(&pods, &mut bound, &DeleteOptions::default());
        assert!(keep && changed);
        assert_eq!(bound["metadata"]["deletionGracePeriodSeconds"], 20);
        // The node confirms with grace 0.
        let (keep, _) = plan_deletion(
            &pods,
            &mut bound,
            &DeleteOptions {
                grace: Some(0),
                ..Default::default()
            },
        );
        assert!(!keep);

        let mut unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(
            plan_deletion(&pods, &mut unbound, &DeleteOptions::default()),
            (false, false)
        );

        let cms = reg.get("", "v1", "configmaps").expect("configmaps");
        let mut held = json!({"metadata": {"name": "c", "finalizers": ["example.com/x"]}});
        assert_eq!(
            plan_deletion(&cms, &mut held, &DeleteOptions::default()),
            (true, true)
        );
        assert!(held["metadata"]["deletionTimestamp"].is_string());
        let mut orphaned = json!({"metadata": {"name": "c"}});
        plan_deletion(
            &cms,
            &mut orphaned,
            &DeleteOptions {
                propagation: Some("Orphan".into()),
                ..Default::default()
            },
        );
        assert_eq!(orphaned["metadata"]["finalizers"], json!(["orphan"]));
    }
}
