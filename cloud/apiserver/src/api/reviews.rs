//! The review resources: questions put to the API server as objects that are answered, never
//! stored, as kube-apiserver answers them. A `TokenReview` asks whether a token is a valid
//! ServiceAccount token (what a webhook authenticator asks); `kubectl auth whoami` creates a
//! `SelfSubjectReview`;
//! `kubectl auth can-i` a `SelfSubjectAccessReview` (`--list`: a `SelfSubjectRulesReview`);
//! other components a `SubjectAccessReview` (about anyone; it takes a grant of its own) or a
//! `LocalSubjectAccessReview` (the same, in one namespace). The answers are the authorizer's
//! ([`crate::authz`]).

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::ResourcePath;
use super::{Api, Body, Call, value_response};
use crate::auth::User;
use crate::authz::{self, Attributes, Target, rbac};
use crate::registry::ResourceInfo;

/// The groups whose resources are reviews.
pub const GROUPS: [&str; 2] = ["authentication.k8s.io", "authorization.k8s.io"];
/// The verb reviews accept.
pub const VERBS: &[&str] = &["create"];

/// Answers a review: `POST` only, a new object each time.
pub(crate) fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    if *call.method != Method::POST || path.name.is_some() || path.subresource.is_some() {
        return Err(ApiError::MethodNotAllowed);
    }
    let mut review = call.object()?;
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match info.kind.as_str() {
        "SelfSubjectReview" => json!({"userInfo": user_info(call.user)}),
        "TokenReview" => token(api, &spec),
        "SelfSubjectAccessReview" => access(api, call.user, &spec, None)?,
        "SubjectAccessReview" => access(api, &subject(&spec), &spec, None)?,
        "LocalSubjectAccessReview" => {
            let namespace = path.namespace.as_deref().ok_or(ApiError::NoSuchPath)?;
            access(api, &subject(&spec), &spec, Some(namespace))?
        }
        "SelfSubjectRulesReview" => rules(api, call.user, &spec)?,
        _ => return Err(ApiError::NoSuchPath),
    };
    if let Some(object) = review.as_object_mut() {
        object.insert("status".into(), status);
        object
            .entry("metadata")
            .or_insert_with(|| json!({"creationTimestamp": null}));
    }
    Ok(value_response(StatusCode::CREATED, &review))
}

/// A user as `userInfo` shows them, with the group every authenticated user has.
fn user_info(user: &User) -> Value {
    let mut groups = user.groups.clone();
    if !groups.iter().any(|g| g == rbac::AUTHENTICATED) {
        groups.push(rbac::AUTHENTICATED.to_owned());
    }
    json!({"username": user.name, "groups": groups})
}

/// Whether `spec.token` is a ServiceAccount token of this server, valid for one of
/// `spec.audiences` (none: the API server's), and whose.
fn token(api: &Api, spec: &Value) -> Value {
    let token = spec
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let asked: Vec<&str> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let audiences = if asked.is_empty() {
        vec![crate::service_account_tokens::ISSUER]
    } else {
        asked
    };
    for audience in audiences {
        if let Some(subject) = api.token_subject(token, audience) {
            let mut user = user_info(&subject.user());
            user["uid"] = json!(subject.uid);
            return json!({"authenticated": true, "user": user, "audiences": [audience]});
        }
    }
    json!({"authenticated": false, "user": {}, "error": "invalid bearer token"})
}

/// The user a `SubjectAccessReview` asks about.
fn subject(spec: &Value) -> User {
    let text = |key: &str| spec.get(key).and_then(Value::as_str).unwrap_or_default();
    User {
        name: text("user").to_owned(),
        groups: spec
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::BadRequest(message.to_owned())
}

/// Whether `user` may do what `spec` asks (`namespace`: the one a local review is confined to).
fn access(
    api: &Api,
    user: &User,
    spec: &Value,
    namespace: Option<&str>,
) -> Result<Value, ApiError> {
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (verb, target) = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), None) => {
            let asked_ns = text(r, "namespace");
            if let Some(ns) = namespace
                && !asked_ns.is_empty()
                && asked_ns != ns
            {
                return Err(invalid(&format!(
                    "spec.resourceAttributes.namespace must match the review's namespace {ns}"
                )));
            }
            let ns = namespace.map(str::to_owned).unwrap_or(asked_ns);
            let optional = |s: String| (!s.is_empty()).then_some(s);
            (
                text(r, "verb"),
                Target::Resource {
                    group: text(r, "group"),
                    resource: text(r, "resource"),
                    subresource: optional(text(r, "subresource")),
                    namespace: optional(ns),
                    name: optional(text(r, "name")),
                },
            )
        }
        (None, Some(n)) => (
            text(n, "verb"),
            Target::NonResource {
                path: text(n, "path"),
            },
        ),
        _ => {
            return Err(invalid(
                "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be set",
            ));
        }
    };
    if verb.is_empty() {
        return Err(invalid("the attributes must name a verb"));
    }
    let attributes = Attributes {
        user,
        verbs: vec![verb],
        target,
    };
    Ok(json!({"allowed": authz::allowed(&api.store, &attributes)}))
}

/// What `user` may do in `spec.namespace`, as `kubectl auth can-i --list` shows it.
fn rules(api: &Api, user: &User, spec: &Value) -> Result<Value, ApiError> {
    let namespace = spec
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("spec.namespace: Required value: no namespace on request"))?;
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rbac::rules_for(&api.store, user, Some(namespace)) {
        if rule.non_resource_urls.is_empty() {
            let mut entry = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups,
                                   "resources": rule.resources});
            if !rule.resource_names.is_empty() {
                entry["resourceNames"] = json!(rule.resource_names);
            }
            resource_rules.push(entry);
        } else {
            non_resource_rules
                .push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
        }
    }
    Ok(json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    }))
}
