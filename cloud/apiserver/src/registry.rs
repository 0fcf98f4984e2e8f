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

    /// The key objects are stored under: `plural` or `plural.group`; events.k8s.io's Events
    /// are core Events under other field names, stored with them (`api::conversion`).
    pub fn storage_key(&self) -> String {
        if self.group.is_empty() || (self.crd.is_none() && self.group == "events.k8s.io") {
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
    /// `delete` and `watch`, leave them alone) and the computed `componentstatuses`, and
    /// `create` for the reviews and `bindings`.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.group == crate::api::metrics::GROUP {
            crate::api::metrics::VERBS
        } else if crate::api::reviews::GROUPS.contains(&self.group.as_str()) {
            crate::api::reviews::VERBS
        } else if self.crd.is_none() && self.group.is_empty() && self.plural == "bindings" {
            &["create"]
        } else if self.crd.is_none() && self.group.is_empty() && self.plural == "componentstatuses"
        {
            &["get", "list"]
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

/// A built-in resource, as a table row: [`r`] and the builder methods below.
struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    subresources: &'static [&'static str],
    preferred: bool,
}

/// A cluster-scoped resource with no short names, categories or subresources, its group's
/// preferred version.
const fn r(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced: false,
        short: &[],
        all: false,
        subresources: &[],
        preferred: true,
    }
}

impl Builtin {
    /// Objects live in namespaces.
    const fn ns(mut self) -> Self {
        self.namespaced = true;
        self
    }
    /// Short names (`po`).
    const fn short(mut self, short: &'static [&'static str]) -> Self {
        self.short = short;
        self
    }
    /// In the `all` category (`kubectl get all`).
    const fn all(mut self) -> Self {
        self.all = true;
        self
    }
    /// Subresources.
    const fn sub(mut self, subresources: &'static [&'static str]) -> Self {
        self.subresources = subresources;
        self
    }
    /// Served, but not the version clients should prefer.
    const fn older(mut self) -> Self {
        self.preferred = false;
        self
    }
}

/// The built-in resources: those kube-apiserver v1.33 serves by default, in its discovery order.
/// What Wedge acts on and what it only stores is in the README.
const BUILTINS: &[Builtin] = &[
    // core/v1
    r("", "v1", "bindings", "Binding").ns(),
    r("", "v1", "componentstatuses", "ComponentStatus").short(&["cs"]),
    r("", "v1", "configmaps", "ConfigMap").ns().short(&["cm"]),
    r("", "v1", "endpoints", "Endpoints").ns().short(&["ep"]),
    r("", "v1", "events", "Event").ns().short(&["ev"]),
    r("", "v1", "limitranges", "LimitRange")
        .ns()
        .short(&["limits"]),
    r("", "v1", "namespaces", "Namespace")
        .short(&["ns"])
        .sub(&["status", "finalize"]),
    r("", "v1", "nodes", "Node").short(&["no"]).sub(&["status"]),
    r("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
        .ns()
        .short(&["pvc"])
        .sub(&["status"]),
    r("", "v1", "persistentvolumes", "PersistentVolume")
        .short(&["pv"])
        .sub(&["status"]),
    r("", "v1", "pods", "Pod").ns().short(&["po"]).all().sub(&[
        "status",
        "binding",
        "eviction",
        "log",
        "exec",
        "attach",
        "portforward",
    ]),
    r("", "v1", "podtemplates", "PodTemplate").ns(),
    r("", "v1", "replicationcontrollers", "ReplicationController")
        .ns()
        .short(&["rc"])
        .all()
        .sub(&["status", "scale"]),
    r("", "v1", "resourcequotas", "ResourceQuota")
        .ns()
        .short(&["quota"])
        .sub(&["status"]),
    r("", "v1", "secrets", "Secret").ns(),
    r("", "v1", "serviceaccounts", "ServiceAccount")
        .ns()
        .short(&["sa"])
        .sub(&["token"]),
    r("", "v1", "services", "Service")
        .ns()
        .short(&["svc"])
        .all()
        .sub(&["status"]),
    r("apiregistration.k8s.io", "v1", "apiservices", "APIService").sub(&["status"]),
    r("apps", "v1", "controllerrevisions", "ControllerRevision").ns(),
    r("apps", "v1", "daemonsets", "DaemonSet")
        .ns()
        .short(&["ds"])
        .all()
        .sub(&["status"]),
    r("apps", "v1", "deployments", "Deployment")
        .ns()
        .short(&["deploy"])
        .all()
        .sub(&["status", "scale"]),
    r("apps", "v1", "replicasets", "ReplicaSet")
        .ns()
        .short(&["rs"])
        .all()
        .sub(&["status", "scale"]),
    r("apps", "v1", "statefulsets", "StatefulSet")
        .ns()
        .short(&["sts"])
        .all()
        .sub(&["status", "scale"]),
    r("events.k8s.io", "v1", "events", "Event")
        .ns()
        .short(&["ev"]),
    // Reviews: answered, never stored (`api::reviews`).
    r(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
    ),
    r("authentication.k8s.io", "v1", "tokenreviews", "TokenReview"),
    r(
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
    )
    .ns(),
    r(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
    ),
    r(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
    ),
    r(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
    ),
    r(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
    )
    .ns()
    .short(&["hpa"])
    .all()
    .sub(&["status"]),
    r(
        "autoscaling",
        "v1",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
    )
    .ns()
    .short(&["hpa"])
    .all()
    .sub(&["status"])
    .older(),
    r("batch", "v1", "cronjobs", "CronJob")
        .ns()
        .short(&["cj"])
        .all()
        .sub(&["status"]),
    r("batch", "v1", "jobs", "Job").ns().all().sub(&["status"]),
    r(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "CertificateSigningRequest",
    )
    .short(&["csr"])
    .sub(&["status", "approval"]),
    r("networking.k8s.io", "v1", "ingressclasses", "IngressClass"),
    r("networking.k8s.io", "v1", "ingresses", "Ingress")
        .ns()
        .short(&["ing"])
        .sub(&["status"]),
    r("networking.k8s.io", "v1", "ipaddresses", "IPAddress").short(&["ip"]),
    r(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
    )
    .ns()
    .short(&["netpol"]),
    r("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR").sub(&["status"]),
    r(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
    )
    .ns()
    .short(&["pdb"])
    .sub(&["status"]),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
    )
    .ns(),
    r("rbac.authorization.k8s.io", "v1", "roles", "Role").ns(),
    r("storage.k8s.io", "v1", "csidrivers", "CSIDriver"),
    r("storage.k8s.io", "v1", "csinodes", "CSINode"),
    r(
        "storage.k8s.io",
        "v1",
        "csistoragecapacities",
        "CSIStorageCapacity",
    )
    .ns(),
    r("storage.k8s.io", "v1", "storageclasses", "StorageClass").short(&["sc"]),
    r(
        "storage.k8s.io",
        "v1",
        "volumeattachments",
        "VolumeAttachment",
    )
    .sub(&["status"]),
    r(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
    ),
    r(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
        "ValidatingAdmissionPolicy",
    )
    .sub(&["status"]),
    r(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
        "ValidatingAdmissionPolicyBinding",
    ),
    r(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
    ),
    r(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
    )
    .short(&["crd", "crds"])
    .sub(&["status"]),
    r(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
    )
    .short(&["pc"]),
    r("coordination.k8s.io", "v1", "leases", "Lease").ns(),
    r("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass"),
    r("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice").ns(),
    r(
        "flowcontrol.apiserver.k8s.io",
        "v1",
        "flowschemas",
        "FlowSchema",
    )
    .sub(&["status"]),
    r(
        "flowcontrol.apiserver.k8s.io",
        "v1",
        "prioritylevelconfigurations",
        "PriorityLevelConfiguration",
    )
    .sub(&["status"]),
    // Usage from the nodes' kubelet endpoints, read-only, as metrics-server serves it
    // (`api::metrics`).
    r("metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics"),
    r("metrics.k8s.io", "v1beta1", "pods", "PodMetrics").ns(),
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
                    preferred: r.preferred,
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
