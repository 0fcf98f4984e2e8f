//! Errors as the API returns them: a `Status` object with the code, reason and message
//! Kubernetes would give for the same request, so clients (`kubectl`, kube-rs, client-go) react
//! to them as they do to a real server's.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::storage::StoreError;

/// The largest request body accepted (kube-apiserver's limit).
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// One field-level cause of an invalid object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueForbidden`,
    /// `FieldValueDuplicate`, `FieldValueTooLong`, `FieldValueTypeInvalid`.
    pub reason: &'static str,
    /// The field path (`metadata.name`, `spec.containers[0].image`).
    pub field: String,
    /// What is wrong, as Kubernetes words it (`Invalid value: "X": ...`).
    pub message: String,
}

impl Cause {
    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    /// `Required value[: <detail>]`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `Unsupported value: <value>: supported values: ...`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {value}: supported values: {list}"),
        }
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    /// `Invalid value: <value>: field is immutable`.
    pub fn immutable(field: impl Into<String>, value: &Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }
}

/// What a request failed with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no credentials, or wrong ones.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: the user may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such object.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// The group, if not core.
        group: String,
        /// The resource (plural, as Kubernetes says it).
        resource: String,
        /// The name.
        name: String,
    },
    /// 404: no such path.
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    /// 405.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 406.
    #[error("only the following media types are accepted: {0}")]
    NotAcceptable(String),
    /// 409: create of an existing object.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// The group, if not core.
        group: String,
        /// The resource.
        resource: String,
        /// The name.
        name: String,
    },
    /// 409: the object changed since the version the write was based on.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict {
        /// The group, if not core.
        group: String,
        /// The resource.
        resource: String,
        /// The name.
        name: String,
        /// Why.
        detail: String,
    },
    /// 410: a continue token or watch version older than the history.
    #[error("{0}")]
    Gone(String),
    /// 413.
    #[error("Request entity too large: limit is {MAX_REQUEST_BYTES}")]
    TooLarge,
    /// 413: an object larger than the store keeps, as kube-apiserver passes etcd's refusal on.
    #[error("{0}")]
    ObjectTooLarge(String),
    /// 415.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 422: the object is invalid.
    #[error("{kind} \"{name}\" is invalid: {}", summarize(.causes))]
    Invalid {
        /// The group, if not core.
        group: String,
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// What is wrong, field by field.
        causes: Vec<Cause>,
    },
    /// 429: the request breaks a rule that may allow it later (an eviction a
    /// PodDisruptionBudget does not allow now); clients retry.
    #[error("{message}")]
    TooManyRequests {
        /// What was refused.
        message: String,
        /// Why, by rule.
        causes: Vec<Cause>,
    },
    /// 500.
    #[error("{0}")]
    Internal(String),
    /// 504: a read at a version the server has not reached (kube-apiserver's
    /// `NewTooLargeResourceVersionError`).
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The version asked for.
        requested: u64,
        /// The newest version there is.
        current: u64,
    },
    /// 503: a backend the request needs (an edge's logs, exec) is not reachable.
    #[error("{0}")]
    Unavailable(String),
}

fn summarize(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts.concat()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound { .. } | Self::NoSuchPath => 404,
            Self::MethodNotAllowed => 405,
            Self::NotAcceptable(_) => 406,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::Gone(_) => 410,
            Self::TooLarge | Self::ObjectTooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::Invalid { .. } => 422,
            Self::TooManyRequests { .. } => 429,
            Self::Internal(_) => 500,
            Self::TooLargeResourceVersion { .. } => 504,
            Self::Unavailable(_) => 503,
        }
    }

    /// The `reason` Kubernetes gives.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound { .. } | Self::NoSuchPath => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::NotAcceptable(_) => "NotAcceptable",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Gone(_) => "Expired",
            Self::TooLarge | Self::ObjectTooLarge(_) => "RequestEntityTooLarge",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::Invalid { .. } => "Invalid",
            Self::TooManyRequests { .. } => "TooManyRequests",
            Self::Internal(_) => "InternalError",
            Self::TooLargeResourceVersion { .. } => "Timeout",
            Self::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        serde_json::to_value(self.wire()).unwrap_or_default()
    }

    /// The `Status` as the body of a response: the JSON kube-apiserver writes, field for field
    /// in its order (`kind, apiVersion, metadata, status, message, reason, details, code`), which
    /// clients that compare error text verbatim see.
    pub fn status_body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).unwrap_or_default()
    }

    fn wire(&self) -> WireStatus<'_> {
        let details = match self {
            Self::NotFound {
                group,
                resource,
                name,
            }
            | Self::AlreadyExists {
                group,
                resource,
                name,
            }
            | Self::Conflict {
                group,
                resource,
                name,
                ..
            } => Some(WireDetails {
                name,
                group,
                // The resource, not the group-qualified name the message uses.
                kind: resource
                    .strip_suffix(&format!(".{group}"))
                    .filter(|_| !group.is_empty())
                    .unwrap_or(resource),
                causes: Vec::new(),
            }),
            Self::Invalid {
                group,
                kind,
                name,
                causes,
            } => Some(WireDetails {
                name,
                group,
                kind,
                causes: causes
                    .iter()
                    .map(|c| WireCause {
                        reason: c.reason,
                        message: &c.message,
                        field: &c.field,
                    })
                    .collect(),
            }),
            Self::TooManyRequests { causes, .. } => Some(WireDetails {
                name: "",
                group: "",
                kind: "",
                causes: causes
                    .iter()
                    .map(|c| WireCause {
                        reason: c.reason,
                        message: &c.message,
                        field: &c.field,
                    })
                    .collect(),
            }),
            Self::TooLargeResourceVersion { .. } => Some(WireDetails {
                name: "",
                group: "",
                kind: "",
                causes: vec![WireCause {
                    reason: "ResourceVersionTooLarge",
                    message: "Too large resource version",
                    field: "",
                }],
            }),
            _ => None,
        };
        WireStatus {
            kind: "Status",
            api_version: "v1",
            metadata: Map::new(),
            status: "Failure",
            message: self.to_string(),
            reason: self.reason(),
            details,
            code: self.code(),
        }
    }

    /// A store failure, said of `resource` in `group`.
    pub fn from_store(e: StoreError, group: &str, resource: &str) -> Self {
        match e {
            StoreError::AlreadyExists(k) => {
                Self::AlreadyExists { group: group.into(), resource: qualified(resource, group), name: k.name }
            }
            StoreError::NotFound(k) => {
                Self::NotFound { group: group.into(), resource: qualified(resource, group), name: k.name }
            }
            StoreError::Conflict { key, .. } => Self::Conflict {
                group: group.into(),
                resource: qualified(resource, group),
                name: key.name,
                detail: "the object has been modified; please apply your changes to the latest version and try again"
                    .into(),
            },
            StoreError::Gone { requested, oldest } => {
                Self::Gone(format!("too old resource version: {requested} ({oldest})"))
            }
            StoreError::Invalid(m) => Self::BadRequest(m),
            e @ StoreError::TooLarge { .. } => Self::ObjectTooLarge(e.to_string()),
            StoreError::Db(e) => Self::Internal(format!("storage: {e}")),
            e @ (StoreError::Locked(_)
            | StoreError::Permissions { .. }
            | StoreError::Transform { .. }
            | StoreError::Closed
            | StoreError::Writer { .. }) => {
                Self::Internal(e.to_string())
            }
        }
    }

    /// A 404 for an object.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::NotFound {
            group: group.into(),
            resource: qualified(resource, group),
            name: name.into(),
        }
    }

    /// A 409 Conflict on an object, with why.
    pub fn conflict(group: &str, resource: &str, name: &str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            group: group.into(),
            resource: qualified(resource, group),
            name: name.into(),
            detail: detail.into(),
        }
    }

    /// A 422 for an object.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        Self::Invalid {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
            causes,
        }
    }
}

/// `pods` or `deployments.apps`, as Kubernetes names resources in messages.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() || resource.contains('.') {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

/// `metav1.Status` as kube-apiserver serialises it (Go's field order).
#[derive(Serialize)]
struct WireStatus<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Map<String, Value>,
    status: &'static str,
    message: String,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<WireDetails<'a>>,
    code: u16,
}

/// `metav1.StatusDetails`, empty fields left out as Go's `omitempty` does.
#[derive(Serialize)]
struct WireDetails<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    group: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<WireCause<'a>>,
}

/// `metav1.StatusCause`.
#[derive(Serialize)]
struct WireCause<'a> {
    reason: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    field: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_read_as_kubernetes_writes_them() {
        let e = ApiError::not_found("apps", "deployments", "web");
        assert_eq!(e.to_string(), "deployments.apps \"web\" not found");
        let s = e.status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["group"], "apps");
        let body = String::from_utf8(e.status_body()).expect("UTF-8");
        assert_eq!(
            body,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"deployments.apps \"web\" not found","reason":"NotFound","details":{"name":"web","group":"apps","kind":"deployments"},"code":404}"#
        );

        let e = ApiError::invalid(
            "",
            "Pod",
            "Bad_Name",
            vec![Cause::invalid(
                "metadata.name",
                &json!("Bad_Name"),
                "a lowercase RFC 1123 subdomain must ...",
            )],
        );
        assert_eq!(e.code(), 422);
        assert!(e.to_string().starts_with(
            "Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ));
        assert_eq!(e.status()["details"]["causes"][0]["field"], "metadata.name");
    }
}
