//! Authorization: may this user do this? As kube-apiserver with `--authorization-mode=RBAC`:
//! members of `system:masters` may do everything (kube-apiserver's privileged group, which
//! the admin kubeconfig uses), everyone else what RBAC's roles and bindings grant them
//! ([`rbac`]), with the default roles and bindings kube-apiserver creates ([`bootstrap`]).
//! Wedge's own components are users like any other, each with its roles ([`components`]). A
//! request is authorized after authentication and before its body is read; a refusal is
//! kube-apiserver's 403, worded as it words it.
//!
//! Writes of roles and bindings are also checked for escalation, as RBAC's REST storage does:
//! a user may grant only what they hold, unless allowed to `escalate` (roles) or `bind`
//! (bindings).

pub mod bootstrap;
pub mod components;
pub mod impersonation;
pub mod rbac;

use http::Method;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::request::{self, ResourcePath};
use crate::auth::User;
use crate::registry::ResourceInfo;
use crate::storage::{ObjectKey, Store};
use rbac::PolicyRule;

/// The group whose members may do everything.
pub const MASTERS: &str = "system:masters";

/// The RBAC API group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A resource or subresource, in a namespace or not, one object or many.
    Resource {
        /// The API group (`""`: core).
        group: String,
        /// The resource's plural.
        resource: String,
        /// The subresource (`exec`, `status`).
        subresource: Option<String>,
        /// The namespace.
        namespace: Option<String>,
        /// The object's name.
        name: Option<String>,
    },
    /// A path that names no resource (`/version`, `/apis`).
    NonResource {
        /// The path.
        path: String,
    },
}

/// Who asks for what, as the authorizer sees it.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// The user.
    pub user: &'a User,
    /// The verbs the request needs, all of them (`pods/exec` over a WebSocket is a `get` that
    /// also needs `create`, as kube-apiserver asks since 1.31).
    pub verbs: Vec<String>,
    /// What it is about.
    pub target: Target,
}

impl<'a> Attributes<'a> {
    /// The attributes of a request, as kube-apiserver's request info reads them.
    pub fn of(
        user: &'a User,
        method: &Method,
        path: &str,
        target: &request::Target,
        watch: bool,
    ) -> Self {
        let request::Target::Resource(p) = target else {
            let verb = match *method {
                Method::GET | Method::HEAD => "get",
                Method::POST => "post",
                Method::PUT => "put",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "options",
            };
            return Self {
                user,
                verbs: vec![verb.to_owned()],
                target: Target::NonResource {
                    path: path.to_owned(),
                },
            };
        };
        let verb = match (method, &p.name) {
            (&Method::GET | &Method::HEAD, _) if watch || p.legacy_watch => "watch",
            (&Method::GET | &Method::HEAD, Some(_)) => "get",
            (&Method::GET | &Method::HEAD, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => "unknown",
        };
        let mut verbs = vec![verb.to_owned()];
        let streams = matches!(
            p.subresource.as_deref(),
            Some("exec" | "attach" | "portforward")
        );
        if streams && verb == "get" {
            verbs.push("create".to_owned());
        }
        Self {
            user,
            verbs,
            target: resource_target(p),
        }
    }
}

/// A resource path as RBAC names it; a namespace is its own namespace, as in kube-apiserver, so
/// that a RoleBinding in it can grant reading it.
fn resource_target(p: &ResourcePath) -> Target {
    let namespace = if p.group.is_empty() && p.resource == "namespaces" && p.namespace.is_none() {
        p.name.clone()
    } else {
        p.namespace.clone()
    };
    Target::Resource {
        group: p.group.clone(),
        resource: p.resource.clone(),
        subresource: p.subresource.clone(),
        namespace,
        name: p.name.clone(),
    }
}

/// Whether `user` is in the group that may do everything.
fn privileged(user: &User) -> bool {
    user.groups.iter().any(|g| g == MASTERS)
}

/// Whether the request is allowed.
pub fn allowed(store: &Store, attributes: &Attributes<'_>) -> bool {
    privileged(attributes.user) || rbac::allows(store, attributes)
}

/// Allows the request, or refuses it with kube-apiserver's 403.
pub fn authorize(store: &Store, attributes: &Attributes<'_>) -> Result<(), ApiError> {
    if allowed(store, attributes) {
        return Ok(());
    }
    tracing::debug!(user = %attributes.user.name, verbs = ?attributes.verbs, target = ?attributes.target, "forbidden");
    Err(ApiError::Forbidden(forbidden_message(attributes)))
}

/// kube-apiserver's words: `pods "x" is forbidden: User "alice" cannot create resource
/// "pods/exec" in API group "" in the namespace "default"`.
fn forbidden_message(attributes: &Attributes<'_>) -> String {
    let user = &attributes.user.name;
    // The verb it names is the first one refused.
    let verb = attributes.verbs.last().map_or("get", String::as_str);
    match &attributes.target {
        Target::NonResource { path } => {
            format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
        }
        Target::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let combined = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_owned(),
            };
            let what = match name {
                Some(name) => format!("{qualified} \"{name}\" is forbidden"),
                None => format!("{qualified} is forbidden"),
            };
            format!(
                "{what}: User \"{user}\" cannot {verb} resource \"{combined}\" in API group \"{group}\" {scope}"
            )
        }
    }
}

/// Refuses a role or binding that would give more than `user` holds (RBAC's escalation
/// check), unless `user` may `escalate` the role or `bind` the binding's role.
pub fn check_escalation(
    store: &Store,
    user: &User,
    info: &ResourceInfo,
    object: &Value,
) -> Result<(), ApiError> {
    if info.group != RBAC_GROUP || privileged(user) {
        return Ok(());
    }
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let may = |verb: &'static str, resource: &str, name: &str| {
        rbac::allows(
            store,
            &Attributes {
                user,
                verbs: vec![verb.to_owned()],
                target: Target::Resource {
                    group: RBAC_GROUP.into(),
                    resource: resource.into(),
                    subresource: None,
                    namespace: namespace.map(str::to_owned),
                    name: Some(name.to_owned()),
                },
            },
        )
    };
    let owned = rbac::rules_for(store, user, namespace);
    let granted: Vec<PolicyRule> = match info.kind.as_str() {
        "Role" | "ClusterRole" => {
            if may("escalate", &info.plural, name) {
                return Ok(());
            }
            rules_in(object)
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let kind = object
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let role = object
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let plural = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            if may("bind", plural, role) {
                return Ok(());
            }
            let key = match kind {
                "ClusterRole" => ObjectKey::new(&format!("clusterroles.{RBAC_GROUP}"), "", role),
                _ => ObjectKey::new(
                    &format!("roles.{RBAC_GROUP}"),
                    namespace.unwrap_or_default(),
                    role,
                ),
            };
            store
                .get(&key)
                .map(|o| rules_in(&o.value()))
                .unwrap_or_default()
        }
        _ => return Ok(()),
    };
    match granted.iter().find(|r| !r.covered_by(&owned)) {
        None => Ok(()),
        Some(rule) => Err(ApiError::Forbidden(format!(
            "{}.{RBAC_GROUP} \"{name}\" is forbidden: user \"{}\" is attempting to grant RBAC permissions not currently held:\n{}",
            info.plural,
            user.name,
            describe(rule)
        ))),
    }
}

fn rules_in(object: &Value) -> Vec<PolicyRule> {
    object
        .get("rules")
        .cloned()
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default()
}

/// A rule as RBAC's escalation message lists it.
fn describe(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (label, values) in [
        ("APIGroups", &rule.api_groups),
        ("Resources", &rule.resources),
        ("ResourceNames", &rule.resource_names),
        ("NonResourceURLs", &rule.non_resource_urls),
        ("Verbs", &rule.verbs),
    ] {
        if !values.is_empty() {
            let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
            parts.push(format!("{label}:[{}]", quoted.join(" ")));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn target(path: &str) -> request::Target {
        request::parse_path(path).expect("a path")
    }

    #[test]
    fn requests_become_verbs_as_kube_apiserver_reads_them() {
        let alice = user("alice", &[]);
        let verbs = |method: Method, path: &str, watch: bool| {
            Attributes::of(&alice, &method, path, &target(path), watch).verbs
        };
        assert_eq!(
            verbs(Method::GET, "/api/v1/namespaces/d/pods", false),
            ["list"]
        );
        assert_eq!(
            verbs(Method::GET, "/api/v1/namespaces/d/pods", true),
            ["watch"]
        );
        assert_eq!(
            verbs(Method::GET, "/api/v1/namespaces/d/pods/x", false),
            ["get"]
        );
        assert_eq!(
            verbs(Method::POST, "/api/v1/namespaces/d/pods", false),
            ["create"]
        );
        assert_eq!(
            verbs(Method::DELETE, "/api/v1/namespaces/d/pods", false),
            ["deletecollection"]
        );
        assert_eq!(
            verbs(Method::GET, "/api/v1/namespaces/d/pods/x/exec", false),
            ["get", "create"]
        );
        assert_eq!(
            verbs(Method::POST, "/api/v1/namespaces/d/pods/x/exec", false),
            ["create"]
        );
        assert_eq!(verbs(Method::GET, "/apis", false), ["get"]);
    }

    #[test]
    fn refusals_are_worded_as_kube_apiserver_words_them() {
        let alice = user("alice", &["devs"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let refused = |method: Method, path: &str| match authorize(
            &store,
            &Attributes::of(&alice, &method, path, &target(path), false),
        ) {
            Err(ApiError::Forbidden(message)) => message,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            refused(Method::POST, "/api/v1/namespaces/default/pods/web/exec"),
            "pods \"web\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            refused(Method::GET, "/apis/apps/v1/deployments"),
            "deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        assert_eq!(
            refused(Method::GET, "/version"),
            "forbidden: User \"alice\" cannot get path \"/version\""
        );
        let admin = user("root", &[MASTERS]);
        let path = "/api/v1/namespaces/default/pods/web/exec";
        assert!(
            authorize(
                &store,
                &Attributes::of(&admin, &Method::POST, path, &target(path), false)
            )
            .is_ok()
        );
    }

    #[tokio::test]
    async fn a_clusterrole_labelled_to_aggregate_extends_view_edit_and_admin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(Store::open(&dir.path().join("state.db")).expect("store"));
        // The API creates the default roles.
        crate::api::Api::new(store.clone(), tokio_util::sync::CancellationToken::new())
            .await
            .expect("api");
        let rbac = async |plural: &str, ns: &str, name: &str, object: serde_json::Value| {
            store
                .create(
                    &ObjectKey::new(&format!("{plural}.{RBAC_GROUP}"), ns, name),
                    object,
                )
                .await
                .expect("stored");
        };
        rbac(
            "clusterroles",
            "",
            "widgets-view",
            serde_json::json!({"metadata": {"name": "widgets-view", "labels":
                {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}),
        ).await;
        for (user, role) in [("viewer", "view"), ("editor", "edit"), ("owner", "admin")] {
            rbac(
                "rolebindings",
                "default",
                user,
                serde_json::json!({"metadata": {"name": user, "namespace": "default"},
                    "subjects": [{"kind": "User", "name": user}],
                    "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role}}),
            )
            .await;
        }
        let widget = |ns: &str| Target::Resource {
            group: "example.com".into(),
            resource: "widgets".into(),
            subresource: None,
            namespace: Some(ns.into()),
            name: Some("w".into()),
        };
        for name in ["viewer", "editor", "owner"] {
            let who = user(name, &[]);
            let may = |ns: &str| {
                allowed(
                    &store,
                    &Attributes {
                        user: &who,
                        verbs: vec!["get".into()],
                        target: widget(ns),
                    },
                )
            };
            assert!(
                may("default"),
                "{name} reads widgets through the aggregation"
            );
            assert!(!may("other"), "{name}'s binding is in default only");
        }
    }
}
