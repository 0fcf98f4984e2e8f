//! `serviceaccounts/token` (`kubectl create token NAME`): a `TokenRequest` answered with a
//! signed token for the ServiceAccount ([`crate::service_account_tokens`]), never stored.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{Api, Body, Call, objects, value_response};
use crate::registry::ResourceInfo;
use crate::service_account_tokens::{
    DEFAULT_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS, TokenSubject,
};

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
