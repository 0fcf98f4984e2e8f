//! `serviceaccounts/token` (`kubectl create token NAME`): a `TokenRequest` answered with a
//! signed token for the ServiceAccount ([`crate::service_account_tokens`]), never stored. A
//! `boundObjectRef` (a Pod or a Secret of the namespace; cloudcore binds the tokens it gets for
//! edges' pods to the pod) ties the token to that object: it is refused once the object is gone.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{Api, Body, Call, objects, value_response};
use crate::registry::ResourceInfo;
use crate::service_account_tokens::{
    BoundObject, DEFAULT_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS, TokenSubject,
};
use crate::storage::ObjectKey;

/// The longest validity a request may ask for (kube-apiserver caps at 2^32 seconds; a day is
/// what this server gives at most).
const MAX_EXPIRATION_SECONDS: i64 = 24 * 3600;

/// POST of `serviceaccounts/<name>/token`.
pub(crate) fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let Some(signer) = api.service_account_tokens.as_ref() else {
        return Err(ApiError::Unavailable(
            "this API server issues no ServiceAccount tokens".into(),
        ));
    };
    let account = api
        .store
        .get(&objects::key(info, Some(namespace), name))
        .map_err(objects::store_err(info))?
        .value();
    let mut request = call.object()?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::BadRequest("spec.expirationSeconds must be an integer".into())
        })?,
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            vec![super::error::Cause::invalid(
                "spec.expirationSeconds",
                &json!(seconds),
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    let seconds = seconds.min(MAX_EXPIRATION_SECONDS);
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let subject = TokenSubject {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: account
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        audiences: audiences.clone(),
        bound: bound_object(api, namespace, name, spec.get("boundObjectRef"))?,
        legacy_secret: None,
    };
    let now = jiff::Timestamp::now();
    let token = signer
        .issue(&subject, now.as_second(), seconds)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires = now
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let audiences = if audiences.is_empty() {
        vec![crate::service_account_tokens::ISSUER.to_owned()]
    } else {
        audiences
    };
    if let Some(object) = request.as_object_mut() {
        object.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
        object.insert("kind".into(), json!("TokenRequest"));
        object.insert(
            "metadata".into(),
            json!({"name": name, "namespace": namespace, "creationTimestamp": null}),
        );
        let spec = object.entry("spec").or_insert_with(|| json!({}));
        spec["audiences"] = json!(audiences);
        spec["expirationSeconds"] = json!(seconds);
        object.insert(
            "status".into(),
            json!({"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}),
        );
    }
    Ok(value_response(StatusCode::CREATED, &request))
}

/// The object `reference` (a request's `boundObjectRef`) names, checked as kube-apiserver
/// checks it: a Pod running as this account, or a Secret, that exists with the uid named.
fn bound_object(
    api: &Api,
    namespace: &str,
    account: &str,
    reference: Option<&Value>,
) -> Result<Option<BoundObject>, ApiError> {
    let Some(reference) = reference.filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let text = |key: &str| {
        reference
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (kind, name) = (text("kind"), text("name"));
    let api_version = reference
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let plural = match (api_version, kind) {
        ("v1", "Pod") => "pods",
        ("v1", "Secret") => "secrets",
        _ => {
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
            return Err(ApiError::BadRequest(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    let object = api
        .store
        .get(&ObjectKey::new(plural, namespace, name))
        .map_err(|e| ApiError::from_store(e, "", plural))?
        .value();
    if plural == "pods"
        && object
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            != account
    {
        return Err(ApiError::BadRequest(format!(
            "cannot bind token for serviceaccount \"{account}\" to pod running with different serviceaccount name."
        )));
    }
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let asked = text("uid");
    if !asked.is_empty() && asked != uid {
        return Err(ApiError::conflict(
            "",
            kind,
            name,
            format!(
                "the UID in the bound object reference ({asked}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    let name = name.to_owned();
    Ok(Some(if plural == "pods" {
        BoundObject::Pod { name, uid }
    } else {
        BoundObject::Secret { name, uid }
    }))
}
