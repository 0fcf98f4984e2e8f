//! RBAC's rules, as kube-apiserver's RBAC authorizer reads them: the rules that bindings give a
//! user (cluster-wide through ClusterRoleBindings, in a namespace through its RoleBindings), and
//! whether a rule allows a request or covers another rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

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

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Option<T> {
    serde_json::from_value(value).ok()
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

/// Who a binding's subject names, as the index looks it up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    User(String),
    Group(String),
    /// Namespace and name.
    ServiceAccount(String, String),
}

impl SubjectKey {
    /// The key of `subject` in a binding in `namespace` ("" for cluster-wide).
    fn of(subject: &Subject, namespace: &str) -> Option<Self> {
        match subject.kind.as_str() {
            "User" => Some(Self::User(subject.name.clone())),
            "Group" => Some(Self::Group(subject.name.clone())),
            "ServiceAccount" => Some(Self::ServiceAccount(
                subject
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_owned()),
                subject.name.clone(),
            )),
            _ => None,
        }
    }

    /// Every key that names `user`: their name, their groups and `system:authenticated`, and
    /// the ServiceAccount their name is, if it is one.
    fn all_for(user: &User) -> Vec<Self> {
        let mut keys = vec![
            Self::User(user.name.clone()),
            Self::Group(AUTHENTICATED.to_owned()),
        ];
        keys.extend(user.groups.iter().map(|g| Self::Group(g.clone())));
        if let Some((ns, name)) = user
            .name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            keys.push(Self::ServiceAccount(ns.to_owned(), name.to_owned()));
        }
        keys
    }
}

/// The roles and bindings, parsed and resolved: for each subject, the rules its bindings give,
/// cluster-wide and per namespace. Built again only when a role or binding is written
/// ([`Store::derived`]), as kube-apiserver's authorizer reads its informers' caches, so that a
/// request costs a few lookups however many bindings the cluster has.
#[derive(Debug, Default)]
struct Index {
    cluster: HashMap<SubjectKey, Vec<Arc<[PolicyRule]>>>,
    namespaced: HashMap<(String, SubjectKey), Vec<Arc<[PolicyRule]>>>,
}

impl Index {
    fn build(store: &Store) -> Self {
        let mut index = Self::default();
        let mut cluster_roles: HashMap<String, Arc<[PolicyRule]>> = HashMap::new();
        let mut roles: HashMap<(String, String), Arc<[PolicyRule]>> = HashMap::new();
        let mut rules_of = |role_ref: &RoleRef, namespace: &str| -> Arc<[PolicyRule]> {
            match role_ref.kind.as_str() {
                "ClusterRole" => cluster_roles
                    .entry(role_ref.name.clone())
                    .or_insert_with(|| {
                        cluster_role_rules(store, &role_ref.name, &mut BTreeSet::new()).into()
                    })
                    .clone(),
                "Role" if !namespace.is_empty() => roles
                    .entry((namespace.to_owned(), role_ref.name.clone()))
                    .or_insert_with(|| {
                        store
                            .get(&ObjectKey::new(ROLES, namespace, &role_ref.name))
                            .ok()
                            .and_then(|o| parse::<Role>(o.value()))
                            .map(|r| r.rules)
                            .unwrap_or_default()
                            .into()
                    })
                    .clone(),
                _ => Arc::from(Vec::new()),
            }
        };
        for resource in [CLUSTER_ROLE_BINDINGS, ROLE_BINDINGS] {
            let (bindings, _, _) = store.list(resource, None, None, None, |_| true);
            for stored in bindings {
                let value = stored.value();
                let namespace = value
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let Some(binding) = parse::<Binding>(value) else {
                    continue;
                };
                let rules = rules_of(&binding.role_ref, &namespace);
                for key in binding
                    .subjects
                    .iter()
                    .filter_map(|s| SubjectKey::of(s, &namespace))
                {
                    let held = if resource == CLUSTER_ROLE_BINDINGS {
                        index.cluster.entry(key).or_default()
                    } else {
                        index
                            .namespaced
                            .entry((namespace.clone(), key))
                            .or_default()
                    };
                    held.push(rules.clone());
                }
            }
        }
        index
    }
}

/// Every rule `user` holds in `namespace` (cluster-wide ones included), or cluster-wide only.
pub fn rules_for(store: &Store, user: &User, namespace: Option<&str>) -> Vec<PolicyRule> {
    rule_sets(store, user, namespace)
        .iter()
        .flat_map(|set| set.iter().cloned())
        .collect()
}

/// The rule sets of the bindings that name `user`, cluster-wide and in `namespace`.
fn rule_sets(store: &Store, user: &User, namespace: Option<&str>) -> Vec<Arc<[PolicyRule]>> {
    let index = store.derived(
        "rbac",
        &[CLUSTER_ROLES, ROLES, CLUSTER_ROLE_BINDINGS, ROLE_BINDINGS],
        Index::build,
    );
    let keys = SubjectKey::all_for(user);
    let mut sets: Vec<Arc<[PolicyRule]>> = keys
        .iter()
        .filter_map(|k| index.cluster.get(k))
        .flatten()
        .cloned()
        .collect();
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        for key in keys {
            if let Some(found) = index.namespaced.get(&(ns.to_owned(), key)) {
                sets.extend(found.iter().cloned());
            }
        }
    }
    sets
}

/// Whether RBAC allows the request.
pub fn allows(store: &Store, attributes: &Attributes<'_>) -> bool {
    let namespace = match &attributes.target {
        Target::Resource { namespace, .. } => namespace.as_deref(),
        Target::NonResource { .. } => None,
    };
    let sets = rule_sets(store, attributes.user, namespace);
    attributes.verbs.iter().all(|verb| {
        sets.iter()
            .any(|set| set.iter().any(|r| r.allows(verb, &attributes.target)))
    })
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
