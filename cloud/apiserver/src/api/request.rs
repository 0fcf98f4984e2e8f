//! What a request asks for, read from its method, path and query as kube-apiserver's
//! `RequestInfoFactory` reads them.

use super::error::ApiError;

/// A request's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz` (and their sub-checks).
    Health,
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    GroupVersion {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`.
    OpenApiV3Index,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`.
    OpenApiV3 {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// A resource path.
    Resource(ResourcePath),
}

/// A path under a group version that names a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    /// The group (empty for core).
    pub group: String,
    /// The version.
    pub version: String,
    /// The plural.
    pub resource: String,
    /// The namespace in the path.
    pub namespace: Option<String>,
    /// The object name.
    pub name: Option<String>,
    /// The subresource.
    pub subresource: Option<String>,
    /// Whether the path had the legacy `/watch/` prefix.
    pub legacy_watch: bool,
}

/// Parses a path.
pub fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let target = match segments.as_slice() {
        ["version"] => Target::Version,
        ["healthz" | "livez" | "readyz", ..] => Target::Health,
        ["api"] => Target::CoreVersions,
        ["apis"] => Target::Groups,
        ["apis", group] => Target::Group((*group).to_owned()),
        ["api", version] => Target::GroupVersion {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["apis", group, version] => Target::GroupVersion {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["openapi", "v2"] => Target::OpenApiV2,
        ["openapi", "v3"] => Target::OpenApiV3Index,
        ["openapi", "v3", "api", version] => Target::OpenApiV3 {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["openapi", "v3", "apis", group, version] => Target::OpenApiV3 {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["api", version, rest @ ..] => Target::Resource(resource_path("", version, rest)?),
        ["apis", group, version, rest @ ..] => {
            Target::Resource(resource_path(group, version, rest)?)
        }
        _ => return Err(ApiError::NoSuchPath),
    };
    Ok(target)
}

fn resource_path(group: &str, version: &str, rest: &[&str]) -> Result<ResourcePath, ApiError> {
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let mut p = ResourcePath {
        group: group.into(),
        version: version.into(),
        legacy_watch,
        ..Default::default()
    };
    match rest {
        // namespaces/<ns>/<resource>[/<name>[/<sub>]]
        ["namespaces", ns, resource, tail @ ..]
            if !matches!(*resource, "status" | "finalize") || !tail.is_empty() =>
        {
            p.namespace = Some((*ns).to_owned());
            p.resource = (*resource).to_owned();
            (p.name, p.subresource) = name_and_subresource(tail)?;
        }
        // <resource>[/<name>[/<sub>]], including namespaces/<name>/status
        [resource, tail @ ..] => {
            p.resource = (*resource).to_owned();
            (p.name, p.subresource) = name_and_subresource(tail)?;
        }
        [] => return Err(ApiError::NoSuchPath),
    }
    Ok(p)
}

/// The `<name>[/<subresource>]` after a resource in a path.
fn name_and_subresource(tail: &[&str]) -> Result<(Option<String>, Option<String>), ApiError> {
    match tail {
        [] => Ok((None, None)),
        [name] => Ok((Some((*name).to_owned()), None)),
        [name, sub] => Ok((Some((*name).to_owned()), Some((*sub).to_owned()))),
        _ => Err(ApiError::NoSuchPath),
    }
}

/// The query parameters, decoded, in order: by name the last of a repeated one wins, and
/// [`Query::all`] gives every value (exec's `command`).
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a query string.
    pub fn parse(query: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Self(pairs)
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The same query with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Self {
        let mut q = self.clone();
        q.0.retain(|(k, _)| k != key);
        q.0.push((key.to_owned(), value.to_owned()));
        q
    }

    /// A parameter (the last, if repeated), if present and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw(key).filter(|v| !v.is_empty())
    }

    /// A parameter as given (the last, if repeated), empty or not.
    fn raw(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter (`true`, `1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// A boolean option as Kubernetes' query decoding reads it (`follow`, `previous`): absent
    /// is false; present is true unless it is `0` or `false` in any case, so a bare `?follow`
    /// is true.
    pub fn k8s_bool(&self, key: &str) -> bool {
        self.raw(key)
            .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }

    /// A numeric parameter; a malformed one is a 400.
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid value for {key}: {v:?}")))
            })
            .transpose()
    }

    /// Whether `dryRun=All` was asked for.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "unsupported dryRun value {other:?}: only \"All\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse_path(path) {
            Ok(Target::Resource(p)) => p,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_resolve_as_kube_apiserver_resolves_them() {
        let p = res("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(
            (
                p.group.as_str(),
                p.resource.as_str(),
                p.namespace.as_deref(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            ("", "pods", Some("default"), Some("web"), Some("status"))
        );
        let p = res("/api/v1/namespaces/default");
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref(), p.namespace),
            ("namespaces", Some("default"), None)
        );
        let p = res("/api/v1/namespaces/default/status");
        assert_eq!(
            (p.name.as_deref(), p.subresource.as_deref()),
            (Some("default"), Some("status"))
        );
        let p = res("/api/v1/namespaces");
        assert_eq!((p.resource.as_str(), p.name), ("namespaces", None));
        let p = res("/apis/apps/v1/deployments");
        assert_eq!(
            (p.group.as_str(), p.resource.as_str(), p.namespace),
            ("apps", "deployments", None)
        );
        let p = res("/api/v1/watch/namespaces/ns1/pods");
        assert!(p.legacy_watch);
        assert_eq!(p.namespace.as_deref(), Some("ns1"));
        assert_eq!(
            parse_path("/apis/apps/v1").ok(),
            Some(Target::GroupVersion {
                group: "apps".into(),
                version: "v1".into()
            })
        );
        assert!(parse_path("/nope").is_err());
        assert!(parse_path("/api/v1/namespaces/a/pods/b/c/d").is_err());
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("labelSelector=app%3Dweb&limit=5&watch=1&dryRun=All"));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert_eq!(q.number::<usize>("limit").ok().flatten(), Some(5));
        assert!(q.flag("watch"));
        assert!(q.dry_run().unwrap_or(false));
        let options = Query::parse(Some("follow&previous=FALSE&timestamps=0&x=yes"));
        assert!(options.k8s_bool("follow"), "a bare option is set");
        assert!(!options.k8s_bool("previous") && !options.k8s_bool("timestamps"));
        assert!(options.k8s_bool("x") && !options.k8s_bool("absent"));
        assert!(
            Query::parse(Some("limit=x"))
                .number::<usize>("limit")
                .is_err()
        );
    }
}
