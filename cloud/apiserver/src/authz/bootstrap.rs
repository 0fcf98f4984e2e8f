//! The default roles and bindings kube-apiserver creates at start (its `rbac/bootstrap-roles`
//! hook): `cluster-admin` for `system:masters`; `admin`, `edit` and `view` to bind users to;
//! and what every authenticated user may read (discovery, health, version). Each is created when
//! missing and left alone when present, so an operator's changes stay; like kube-apiserver's
//! they carry `rbac.authorization.kubernetes.io/autoupdate: "true"`. `admin`, `edit` and `view`
//! hold their rules whole and also aggregate, as kube-apiserver's do, the ClusterRoles labelled
//! `rbac.authorization.k8s.io/aggregate-to-<role>: "true"` ([`super::rbac`] reads them).

use serde_json::{Value, json};

use super::RBAC_GROUP;
use crate::api::{Api, ApiError};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

/// What `view` may read: everything in a namespace but Secrets and the streams into pods.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces",
                "namespaces/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
    ]
}

/// What `edit` adds: writing a namespace's objects, Secrets, and exec, attach and port-forward.
fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.extend([
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
            &["create"],
        ),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
    ]);
    rules
}

/// What `admin` adds: a namespace's roles and bindings.
fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.push(rule(
        &[RBAC_GROUP],
        &["roles", "rolebindings"],
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    ));
    rules.push(rule(
        &["authorization.k8s.io"],
        &["localsubjectaccessreviews"],
        &["create"],
    ));
    rules
}

const DISCOVERY: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/openapi",
    "/openapi/*",
    "/readyz",
    "/version",
    "/version/",
];

const PUBLIC_INFO: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

/// The label a ClusterRole carries to extend `admin`, `edit` or `view` (`to`).
fn aggregate_to(to: &str) -> String {
    format!("rbac.authorization.k8s.io/aggregate-to-{to}")
}

/// What each default role aggregates, and which role it extends itself: kube-apiserver's chain
/// (`view` into `edit` into `admin`), so a ClusterRole labelled to extend `view` extends all three.
fn aggregation(name: &str) -> (Option<&'static str>, Option<&'static str>) {
    match name {
        "admin" => (Some("admin"), None),
        "edit" => (Some("edit"), Some("admin")),
        "view" => (Some("view"), Some("edit")),
        _ => (None, None),
    }
}

fn cluster_roles() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        ("admin", admin_rules()),
        ("edit", edit_rules()),
        ("view", view_rules()),
        ("system:discovery", vec![urls(DISCOVERY, &["get"])]),
        (
            "system:public-info-viewer",
            vec![urls(PUBLIC_INFO, &["get"])],
        ),
        (
            "system:basic-user",
            vec![
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
            ],
        ),
    ]
}

fn cluster_role_bindings() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("cluster-admin", &[super::MASTERS]),
        ("system:discovery", &[super::rbac::AUTHENTICATED]),
        ("system:basic-user", &[super::rbac::AUTHENTICATED]),
        (
            "system:public-info-viewer",
            &[super::rbac::AUTHENTICATED, "system:unauthenticated"],
        ),
    ]
}

fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

/// Creates the default roles and bindings that are missing.
pub(crate) fn ensure(api: &Api) -> Result<(), ApiError> {
    let objects = cluster_roles()
        .into_iter()
        .map(|(name, rules)| {
            let mut role = json!({"apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRole",
                                  "metadata": metadata(name), "rules": rules});
            let (aggregates, extends) = aggregation(name);
            if let Some(to) = aggregates {
                role["aggregationRule"] = json!({"clusterRoleSelectors": [
                    {"matchLabels": {aggregate_to(to): "true"}}
                ]});
            }
            if let Some(to) = extends {
                role["metadata"]["labels"][aggregate_to(to)] = json!("true");
            }
            ("clusterroles", name, role)
        })
        .chain(cluster_role_bindings().into_iter().map(|(name, groups)| {
            let subjects: Vec<Value> = groups
                .iter()
                .map(|g| json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g}))
                .collect();
            (
                "clusterrolebindings",
                name,
                json!({"apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRoleBinding",
                       "metadata": metadata(name), "subjects": subjects,
                       "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name}}),
            )
        }));
    for (plural, name, object) in objects {
        crate::api::objects::ensure_object(api, RBAC_GROUP, plural, name, object)?;
    }
    Ok(())
}
