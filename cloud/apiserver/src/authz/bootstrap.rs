//! The default roles and bindings kube-apiserver creates at start (its `rbac/bootstrap-roles`
//! hook): `cluster-admin` for `system:masters`; `admin`, `edit` and `view` to bind users to;
//! and what every authenticated user may read (discovery, health, version). Each is created when
//! missing, carrying `rbac.authorization.kubernetes.io/autoupdate: "true"`; when present it is
//! reconciled as kube-apiserver reconciles it: a role gets the rules it lacks, a binding the
//! subjects it lacks, and what an operator added stays; one annotated `autoupdate: "false"` is
//! left alone. So a Wedge that gives a role more (a component's new call) reaches data
//! directories made by an older one. `admin`, `edit` and `view`
//! hold their rules whole and also aggregate, as kube-apiserver's do, the ClusterRoles labelled
//! `rbac.authorization.k8s.io/aggregate-to-<role>: "true"` ([`super::rbac`] reads them).
//! The roles and bindings of Wedge's own components ([`super::components`]) are made the same
//! way.

use serde_json::{Value, json};

use super::RBAC_GROUP;
use super::rbac::PolicyRule;
use crate::api::{Api, ApiError};

pub(super) const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

pub(super) fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
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

pub(super) fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

/// Creates the default roles and bindings that are missing.
pub(crate) async fn ensure(api: &Api) -> Result<(), ApiError> {
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
    // Wedge's own components' roles and bindings, the same way.
    let components = super::components::cluster_roles()
        .into_iter()
        .map(|(name, rules)| {
            let role = json!({"apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRole",
                              "metadata": metadata(&name), "rules": rules});
            ("clusterroles", name, role)
        })
        .chain(
            super::components::cluster_role_bindings()
                .into_iter()
                .map(|(name, binding)| ("clusterrolebindings", name, binding)),
        );
    let objects = objects.map(|(plural, name, object)| (plural, name.to_owned(), object));
    for (plural, name, object) in objects.chain(components) {
        reconcile(api, plural, &name, &object).await?;
        crate::api::objects::ensure_object(api, RBAC_GROUP, plural, &name, object).await?;
    }
    Ok(())
}

/// Reconciles a stored default role or binding with `wanted`, as kube-apiserver's
/// `reconcile` does at start: the rules (or subjects) it lacks are added, nothing is taken
/// away, and one annotated `rbac.authorization.kubernetes.io/autoupdate: "false"` is left as
/// it is. Nothing stored: nothing to do (it is created).
async fn reconcile(api: &Api, plural: &str, name: &str, wanted: &Value) -> Result<(), ApiError> {
    let key = crate::storage::ObjectKey::new(&format!("{plural}.{RBAC_GROUP}"), "", name);
    let Ok(stored) = api.store.get(&key) else {
        return Ok(());
    };
    let mut object = stored.value();
    let protected = object
        .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
        .and_then(Value::as_str)
        == Some("false");
    if protected {
        return Ok(());
    }
    let field = if plural == "clusterroles" {
        "rules"
    } else {
        "subjects"
    };
    let have: Vec<Value> = object
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let wanted = wanted
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let missing: Vec<Value> = if field == "rules" {
        let owned: Vec<PolicyRule> =
            serde_json::from_value(Value::Array(have.clone())).unwrap_or_default();
        wanted
            .into_iter()
            .filter(|r| {
                serde_json::from_value::<PolicyRule>(r.clone())
                    .is_ok_and(|rule| !rule.covered_by(&owned))
            })
            .collect()
    } else {
        let same = |a: &Value, b: &Value| {
            ["kind", "name", "namespace"]
                .iter()
                .all(|f| a.get(f).and_then(Value::as_str) == b.get(f).and_then(Value::as_str))
        };
        wanted
            .into_iter()
            .filter(|w| !have.iter().any(|h| same(h, w)))
            .collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(%plural, %name, added = missing.len(), "reconciled a default RBAC object");
    let mut all = have;
    all.extend(missing);
    object[field] = Value::Array(all);
    match api.store.update(&key, object, Some(stored.rv)).await {
        // Written meanwhile by someone else: theirs stands until the next start.
        Ok(_) | Err(crate::storage::StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, RBAC_GROUP, plural)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::storage::{ObjectKey, Store};

    fn key(plural: &str, name: &str) -> ObjectKey {
        ObjectKey::new(&format!("{plural}.{}", super::RBAC_GROUP), "", name)
    }

    /// Rewrites a stored object with `change`.
    async fn edit(
        store: &Store,
        plural: &str,
        name: &str,
        change: impl FnOnce(&mut serde_json::Value),
    ) {
        let stored = store.get(&key(plural, name)).expect("stored");
        let mut object = stored.value();
        change(&mut object);
        store
            .update(&key(plural, name), object, Some(stored.rv))
            .await
            .expect("updated");
    }

    #[tokio::test]
    async fn a_restart_gives_default_roles_what_they_lack_and_keeps_what_operators_added() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("state.db")).expect("store"));
        let start = async || {
            crate::api::Api::new(store.clone(), tokio_util::sync::CancellationToken::new())
                .await
                .expect("api")
        };
        start().await;
        let operators =
            json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]});
        // An older Wedge's role lacked a rule, and an operator added one.
        edit(&store, "clusterroles", "cloudcore", |role| {
            let rules = role["rules"].as_array_mut().expect("rules");
            rules.retain(|r| r["resources"] != json!(["serviceaccounts/token"]));
            rules.push(operators.clone());
        })
        .await;
        // A binding lost a subject.
        edit(
            &store,
            "clusterrolebindings",
            "system:controller:job-controller",
            |b| {
                b["subjects"].as_array_mut().expect("subjects").truncate(1);
            },
        )
        .await;
        // An operator took a role over.
        edit(&store, "clusterroles", "system:volume-scheduler", |role| {
            role["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
                json!("false");
            role["rules"] = json!([]);
        })
        .await;
        start().await;
        let rules = store
            .get(&key("clusterroles", "cloudcore"))
            .expect("role")
            .value()["rules"]
            .clone();
        let rules = rules.as_array().expect("rules");
        assert!(
            rules
                .iter()
                .any(|r| r["resources"] == json!(["serviceaccounts/token"])),
            "the rule it lacked is back: {rules:?}"
        );
        assert!(rules.contains(&operators), "the operator's rule stays");
        let subjects = store
            .get(&key(
                "clusterrolebindings",
                "system:controller:job-controller",
            ))
            .expect("binding")
            .value()["subjects"]
            .clone();
        assert_eq!(subjects.as_array().map(Vec::len), Some(2), "{subjects}");
        let protected = store
            .get(&key("clusterroles", "system:volume-scheduler"))
            .expect("role")
            .value();
        assert_eq!(
            protected["rules"],
            json!([]),
            "autoupdate false: left alone"
        );
        // Nothing lacking: nothing written.
        let before = store
            .get(&key("clusterroles", "cloudcore"))
            .expect("role")
            .rv;
        start().await;
        assert_eq!(
            store
                .get(&key("clusterroles", "cloudcore"))
                .expect("role")
                .rv,
            before
        );
    }
}
