//! The resources the server serves: the built-in table, and those CustomResourceDefinitions add.
//!
//! One [`ResourceInfo`] per group, version and plural. It is what discovery lists, what request
//! paths are resolved against, and what says how objects of the resource are stored (the
//! storage key is `plural` for the core group, `plural.group` otherwise, shared by every version
//! of a group, as etcd keys are).

use std::sync::{Arc, RwLock};

/// The verbs of a full resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One resource in one group version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// The API group (empty for core).
    pub group: String,
    /// The version.
    pub version: String,
    /// The plural, lower-case name in paths (`pods`).
    pub plural: String,
    /// The singular name (`pod`).
    pub singular: String,
    /// The kind (`Pod`).
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names (`po`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Subresources (`status`, `scale`, `binding`, `log`, `exec`, `portforward`).
    pub subresources: Vec<String>,
    /// Whether this version is the one clients should prefer (CRDs: the storage version).
    pub preferred: bool,
    /// For custom resources: the CRD's name.
    pub crd: Option<String>,
}

impl ResourceInfo {
    /// `v1` for core, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key objects are stored under: `plural` or `plural.group`.
    pub fn storage_key(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The list kind (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether the resource has `sub` as a subresource.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }

    /// The verbs the resource accepts: all of them, but `get` and `list` for the read-only
    /// `metrics.k8s.io` (so the namespace controller and the garbage collector, which want
    /// `delete` and `watch`, leave them alone), and `create` for the reviews.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.group == crate::api::metrics::GROUP {
            crate::api::metrics::VERBS
        } else if crate::api::reviews::GROUPS.contains(&self.group.as_str()) {
            crate::api::reviews::VERBS
        } else {
            ALL_VERBS
        }
    }
}

/// The resources, built-in and custom.
#[derive(Debug, Default)]
pub struct Registry {
    resources: RwLock<Vec<Arc<ResourceInfo>>>,
}

/// A built-in resource, as a table row.
struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    subresources: &'static [&'static str],
}

#[allow(clippy::too_many_arguments)] // a table row, read positionally
const fn b(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    subresources: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced,
        short,
        all,
        subresources,
    }
}

/// Built-in resources: what an edge platform uses of Kubernetes.
const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        &["ns"],
        false,
        &["status", "finalize"],
    ),
    b(
        "",
        "v1",
        "nodes",
        "Node",
        false,
        &["no"],
        false,
        &["status"],
    ),
    b(
        "",
        "v1",
        "pods",
        "Pod",
        true,
        &["po"],
        true,
        &["status", "binding", "log", "exec", "attach", "portforward"],
    ),
    b(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        true,
        &["cm"],
        false,
        &[],
    ),
    b("", "v1", "secrets", "Secret", true, &[], false, &[]),
    b(
        "",
        "v1",
        "services",
        "Service",
        true,
        &["svc"],
        true,
        &["status"],
    ),
    b(
        "",
        "v1",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
        &[],
    ),
    b("", "v1", "events", "Event", true, &["ev"], false, &[]),
    b(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        &["token"],
    ),
    b(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        &["rs"],
        true,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        true,
        &["ds"],
        true,
        &["status"],
    ),
    b("batch", "v1", "jobs", "Job", true, &[], true, &["status"]),
    b(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        true,
        &["cj"],
        true,
        &["status"],
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "node.k8s.io",
        "v1",
        "runtimeclasses",
        "RuntimeClass",
        false,
        &[],
        false,
        &[],
    ),
    // Usage from the nodes' kubelet endpoints, read-only, as metrics-server serves it
    // (`api::metrics`).
    b(
        "metrics.k8s.io",
        "v1beta1",
        "nodes",
        "NodeMetrics",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "metrics.k8s.io",
        "v1beta1",
        "pods",
        "PodMetrics",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
        &[],
    ),
    // Reviews: answered, never stored (`api::reviews`).
    b(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        false,
        &["status"],
    ),
];

impl Registry {
    /// The built-in resources.
    pub fn builtin() -> Self {
        let resources = BUILTINS
            .iter()
            .map(|r| {
                Arc::new(ResourceInfo {
                    group: r.group.into(),
                    version: r.version.into(),
                    plural: r.plural.into(),
                    singular: r.kind.to_lowercase(),
                    kind: r.kind.into(),
                    namespaced: r.namespaced,
                    short_names: r.short.iter().map(|s| (*s).to_owned()).collect(),
                    categories: if r.all { vec!["all".into()] } else { vec![] },
                    subresources: r.subresources.iter().map(|s| (*s).to_owned()).collect(),
                    preferred: true,
                    crd: None,
                })
            })
            .collect();
        Self {
            resources: RwLock::new(resources),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<ResourceInfo>>> {
        self.resources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every resource, built-in first, in a stable order.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        self.read().clone()
    }

    /// The resource at `group`/`version`/`plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.read()
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Whether any resource is served in `group`/`version`.
    pub fn serves(&self, group: &str, version: &str) -> bool {
        self.read()
            .iter()
            .any(|r| r.group == group && r.version == version)
    }

    /// The groups served, each with its versions (preferred first), core (`""`) first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.read().iter() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        if r.preferred {
                            versions.insert(0, r.version.clone())
                        } else {
                            versions.push(r.version.clone())
                        }
                    }
                }
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        out
    }

    /// Replaces the resources a CRD defines (none, to remove them).
    pub fn set_crd(&self, crd: &str, resources: Vec<ResourceInfo>) {
        let mut all = self
            .resources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|r| r.crd.as_deref() != Some(crd));
        all.extend(resources.into_iter().map(Arc::new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_resolve_by_path() {
        let reg = Registry::builtin();
        let pods = reg.get("", "v1", "pods").expect("pods");
        assert_eq!(pods.storage_key(), "pods");
        assert_eq!(pods.api_version(), "v1");
        let deploy = reg.get("apps", "v1", "deployments").expect("deployments");
        assert_eq!(deploy.kind, "Deployment");
        assert_eq!(deploy.storage_key(), "deployments.apps");
        assert!(deploy.has_subresource("scale"));
        assert!(reg.get("apps", "v2", "deployments").is_none());
        assert_eq!(reg.groups()[0], (String::new(), vec!["v1".to_owned()]));
    }

    #[test]
    fn crds_add_and_remove_resources() {
        let reg = Registry::builtin();
        let info = ResourceInfo {
            group: "example.com".into(),
            version: "v1".into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            kind: "Widget".into(),
            namespaced: true,
            short_names: vec![],
            categories: vec![],
            subresources: vec![],
            preferred: true,
            crd: Some("widgets.example.com".into()),
        };
        reg.set_crd("widgets.example.com", vec![info]);
        assert!(reg.serves("example.com", "v1"));
        reg.set_crd("widgets.example.com", vec![]);
        assert!(!reg.serves("example.com", "v1"));
    }
}
