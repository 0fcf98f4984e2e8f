//! RBAC's rules, as kube-apiserver's RBAC authorizer reads them: the rules that bindings give a
//! user (cluster-wide through ClusterRoleBindings, in a namespace through its RoleBindings), and
//! whether a rule allows a request or covers another rule.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::{Attributes, Target};
use crate::auth::User;
use crate::selector::label::LabelSelector;
use crate::storage::{ObjectKey, Store};

/// The group every authenticated user is in, as kube-apiserver adds it.
pub const AUTHENTICATED: &str = "system:authenticated";

/// Store keys of the RBAC resources (plural.group).
const ROLES: &str = "roles.rbac.authorization.k8s.io";
const CLUSTER_ROLES: &str = "clusterroles.rbac.authorization.k8s.io";
const ROLE_BINDINGS: &str = "rolebindings.rbac.authorization.k8s.io";
const CLUSTER_ROLE_BINDINGS: &str = "clusterrolebindings.rbac.authorization.k8s.io";

/// A `PolicyRule`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs (`get`, `create`, `*`).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups (`""` for core, `*`).
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/exec`, `*/scale`, `*`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Object names the rule is limited to (none: all).
    #[serde(default)]
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/healthz`, `/api/*`, `*`).
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Subject {
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Binding {
    #[serde(default)]
    subjects: Vec<Subject>,
    #[serde(rename = "roleRef")]
    role_ref: RoleRef,
}

#[derive(Debug, Deserialize)]
struct Role {
    #[serde(default)]
    rules: Vec<PolicyRule>,
    #[serde(default, rename = "aggregationRule")]
    aggregation: Option<AggregationRule>,
}

#[derive(Debug, Deserialize)]
struct AggregationRule {
    #[serde(default, rename = "clusterRoleSelectors")]
    selectors: Vec<Value>,
}

fn has(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v == "*" || v == wanted)
}

impl PolicyRule {
    /// Whether this rule allows `verb` on what `target` names.
    pub fn allows(&self, verb: &str, target: &Target) -> bool {
        if !has(&self.verbs, verb) {
            return false;
        }
        match target {
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                let combined = match subresource {
                    Some(sub) => format!("{resource}/{sub}"),
                    None => resource.clone(),
                };
                let resource_matches = self.resources.iter().any(|r| {
                    r == "*"
                        || *r == combined
                        || subresource
                            .as_ref()
                            .is_some_and(|sub| *r == format!("*/{sub}"))
                });
                has(&self.api_groups, group)
                    && resource_matches
                    && (self.resource_names.is_empty()
                        || name
                            .as_ref()
                            .is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
            }
            Target::NonResource { path } => self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            }),
        }
    }

    /// Whether the rules `owned` together allow everything this rule allows, as RBAC's
    /// escalation check asks: each verb, group, resource and name this rule names (a `*`
    /// here only by a `*` there).
    pub fn covered_by(&self, owned: &[PolicyRule]) -> bool {
        let names: Vec<Option<String>> = if self.resource_names.is_empty() {
            vec![None]
        } else {
            self.resource_names.iter().cloned().map(Some).collect()
        };
        let allowed = |verb: &str, target: &Target| owned.iter().any(|r| r.allows(verb, target));
        self.verbs.iter().all(|verb| {
            let resources_covered = self.api_groups.iter().all(|group| {
                self.resources.iter().all(|resource| {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
                        None => (resource.clone(), None),
                    };
                    names.iter().all(|name| {
                        let target = Target::Resource {
                            group: group.clone(),
                            resource: resource.clone(),
                            subresource: subresource.clone(),
                            namespace: None,
                            name: name.clone(),
                        };
                        allowed(verb, &target)
                    })
                })
            });
            let urls_covered = self
                .non_resource_urls
                .iter()
                .all(|url| allowed(verb, &Target::NonResource { path: url.clone() }));
            resources_covered && urls_covered
        })
    }
}

/// Whether `subject` names `user` (`namespace`: the binding's, for ServiceAccounts without one).
fn names_user(subject: &Subject, user: &User, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => subject.name == AUTHENTICATED || user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().unwrap_or(namespace);
            user.name == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Option<T> {
    serde_json::from_value(value).ok()
}

/// The rules of the role a binding in `namespace` ("" for a ClusterRoleBinding) refers to.
fn rules_of(store: &Store, role_ref: &RoleRef, namespace: &str) -> Vec<PolicyRule> {
    match role_ref.kind.as_str() {
        "ClusterRole" => cluster_role_rules(store, &role_ref.name, &mut BTreeSet::new()),
        "Role" if !namespace.is_empty() => store
            .get(&ObjectKey::new(ROLES, namespace, &role_ref.name))
            .ok()
            .and_then(|o| parse::<Role>(o.value()))
            .map(|r| r.rules)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A ClusterRole's rules, with those of the ClusterRoles its `aggregationRule` selects (and
/// theirs, each once), as kube-controller-manager's aggregation writes them into it: so a
/// chart's ClusterRole labelled `rbac.authorization.k8s.io/aggregate-to-view: "true"` extends
/// `view` here too. Read when authorizing; the stored object keeps its own rules.
fn cluster_role_rules(store: &Store, name: &str, seen: &mut BTreeSet<String>) -> Vec<PolicyRule> {
    if !seen.insert(name.to_owned()) {
        return Vec::new();
    }
    let Some(role) = store
        .get(&ObjectKey::new(CLUSTER_ROLES, "", name))
        .ok()
        .and_then(|o| parse::<Role>(o.value()))
    else {
        return Vec::new();
    };
    let mut rules = role.rules;
    let selectors: Vec<LabelSelector> = role
        .aggregation
        .iter()
        .flat_map(|a| &a.selectors)
        .filter_map(|s| LabelSelector::from_k8s(s).ok())
        .collect();
    if selectors.is_empty() {
        return rules;
    }
    let (all, _, _) = store.list(CLUSTER_ROLES, None, None, None, |_| true);
    for other in all {
        let value = other.value();
        let labels: BTreeMap<String, String> = value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        let other_name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if selectors.iter().any(|s| s.matches(&labels)) {
            rules.extend(cluster_role_rules(store, other_name, seen));
        }
    }
    rules
}

/// Every rule `user` holds in `namespace` (cluster-wide ones included), or cluster-wide only.
pub fn rules_for(store: &Store, user: &User, namespace: Option<&str>) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    let mut visit = |resource: &str, ns: Option<&str>| {
        let (bindings, _, _) = store.list(resource, ns, None, None, |_| true);
        for stored in bindings {
            let Some(binding) = parse::<Binding>(stored.value()) else {
                continue;
            };
            let binding_ns = ns.unwrap_or("");
            if binding
                .subjects
                .iter()
                .any(|s| names_user(s, user, binding_ns))
            {
                rules.extend(rules_of(store, &binding.role_ref, binding_ns));
            }
        }
    };
    visit(CLUSTER_ROLE_BINDINGS, None);
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        visit(ROLE_BINDINGS, Some(ns));
    }
    rules
}

/// Whether RBAC allows the request.
pub fn allows(store: &Store, attributes: &Attributes<'_>) -> bool {
    let namespace = match &attributes.target {
        Target::Resource { namespace, .. } => namespace.as_deref(),
        Target::NonResource { .. } => None,
    };
    let rules = rules_for(store, attributes.user, namespace);
    attributes
        .verbs
        .iter()
        .all(|verb| rules.iter().any(|r| r.allows(verb, &attributes.target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
            api_groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            resources: resources.iter().map(|s| (*s).to_owned()).collect(),
            ..PolicyRule::default()
        }
    }

    fn pods(sub: Option<&str>, name: Option<&str>) -> Target {
        Target::Resource {
            group: String::new(),
            resource: "pods".into(),
            subresource: sub.map(str::to_owned),
            namespace: Some("default".into()),
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_subresources() {
        let read = rule(&["get", "list"], &[""], &["pods"]);
        assert!(read.allows("get", &pods(None, Some("x"))));
        assert!(!read.allows("create", &pods(None, None)));
        // A subresource is named on its own: pods does not give pods/exec.
        assert!(!read.allows("get", &pods(Some("exec"), Some("x"))));
        let exec = rule(&["create"], &[""], &["pods/exec"]);
        assert!(exec.allows("create", &pods(Some("exec"), Some("x"))));
        assert!(rule(&["*"], &["*"], &["*/exec"]).allows("create", &pods(Some("exec"), None)));
        assert!(!rule(&["*"], &["apps"], &["*"]).allows("get", &pods(None, None)));
        let named = PolicyRule {
            resource_names: vec!["x".into()],
            ..read.clone()
        };
        assert!(named.allows("get", &pods(None, Some("x"))));
        assert!(!named.allows("get", &pods(None, Some("y"))));
        assert!(!named.allows("list", &pods(None, None)));
    }

    #[test]
    fn non_resource_urls_match_whole_or_by_prefix() {
        let rule = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..PolicyRule::default()
        };
        let path = |p: &str| Target::NonResource { path: p.into() };
        assert!(rule.allows("get", &path("/healthz")));
        assert!(rule.allows("get", &path("/apis/apps/v1")));
        assert!(!rule.allows("get", &path("/api/v1")));
        assert!(!rule.allows("post", &path("/healthz")));
    }

    #[test]
    fn a_rule_is_covered_only_by_rules_that_grant_all_of_it() {
        let owned = vec![
            rule(&["get", "list"], &[""], &["pods", "configmaps"]),
            rule(&["create"], &[""], &["pods/exec"]),
        ];
        assert!(rule(&["get"], &[""], &["pods"]).covered_by(&owned));
        assert!(rule(&["create"], &[""], &["pods/exec"]).covered_by(&owned));
        assert!(!rule(&["delete"], &[""], &["pods"]).covered_by(&owned));
        assert!(!rule(&["get"], &[""], &["secrets"]).covered_by(&owned));
        // A wildcard asked for is covered only by a wildcard held.
        assert!(!rule(&["*"], &[""], &["pods"]).covered_by(&owned));
        assert!(rule(&["*"], &["*"], &["*"]).covered_by(&[rule(&["*"], &["*"], &["*"])]));
    }
}
