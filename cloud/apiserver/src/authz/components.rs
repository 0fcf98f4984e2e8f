//! Who Wedge's own components are, and what each may do: each its own user, from a client
//! certificate the API server issues at start (kubeadm's `scheduler.conf` and
//! `controller-manager.conf`, here `<data-dir>/scheduler.kubeconfig` and the like), bound to
//! kube-apiserver's bootstrap roles where Kubernetes has them and to a `system:wedge:` role for
//! what Wedge's component does beyond its Kubernetes counterpart. Only the admin kubeconfig is
//! `system:masters`.
//!
//! - **The scheduler** is `system:kube-scheduler`, with kube's `system:kube-scheduler` and
//!   `system:volume-scheduler`, and `system:wedge:kube-scheduler` for what it does that kube's
//!   scheduler leaves to others: it reads RuntimeClasses (the image kinds a pod needs), makes
//!   and deletes the edges' local volumes and binds their claims (kube's provisioner and PV
//!   controller), and creates the `local-path` StorageClass.
//! - **The controllers** are `system:kube-controller-manager`. kube-controller-manager with
//!   `--use-service-account-credentials` runs each controller as its own ServiceAccount, bound
//!   to its `system:controller:*` role; without it, it runs every controller with its own
//!   credential, "which must be granted all the relevant roles" (Kubernetes' RBAC docs). Wedge's
//!   controllers run the second way: one process, one client, and shared watches (one pod
//!   stream feeds seven controllers). So the user holds kube's `system:kube-controller-manager`
//!   and the `system:controller:*` role of each controller Wedge runs, each binding naming
//!   kube's ServiceAccount as kube's does and Wedge's user beside it; `system:wedge:kube-
//!   controller-manager` adds what Wedge's controllers do differently: they patch the statuses
//!   kube's update, and elect their leader on the Lease `kube-system/wedge-controlplane`.
//! - **cloudcore** is `system:wedge:cloudcore`, bound to the ClusterRole `cloudcore` of
//!   KubeEdge's chart, trimmed to what Wedge's cloudcore calls ([`cloudcore_rules`]). Against a
//!   real cluster the operator applies [`cloudcore_manifest`] (`wedge rbac`,
//!   `deploy/cloudcore-rbac.yaml`), which binds the same role to KubeEdge's ServiceAccount.
//! - **The API server's kubelet client** (how logs and exec reach CloudStream) is
//!   `kube-apiserver-kubelet-client` with kube's `system:kubelet-api-admin`, as recent kubeadm
//!   and Cluster API bind it, not `system:masters`: its key is signed by the cluster CA, so it
//!   would otherwise be an admin credential to the API server too.
//!
//! Edges are not users of the API server: they reach it only through cloudcore, which acts for
//! an edge only on its own Node, Lease, pods and devices (see `hub`).

use serde_json::{Value, json};

use super::RBAC_GROUP;
use super::bootstrap::{READ, metadata, rule};

/// A component of Wedge's that talks to the API server with an identity of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// The scheduler.
    Scheduler,
    /// The controllers (kube-controller-manager's part).
    ControllerManager,
    /// cloudcore: CloudHub, EdgeController, DeviceController, the router.
    CloudCore,
}

impl Component {
    /// Every component.
    pub const ALL: [Self; 3] = [Self::Scheduler, Self::ControllerManager, Self::CloudCore];

    /// The user its certificate names (its CN; no groups).
    pub fn user(self) -> &'static str {
        match self {
            Self::Scheduler => SCHEDULER,
            Self::ControllerManager => CONTROLLER_MANAGER,
            Self::CloudCore => CLOUDCORE,
        }
    }

    /// The name its certificate (`pki/<name>.crt`) and kubeconfig (`<name>.kubeconfig`) have.
    pub fn file(self) -> &'static str {
        match self {
            Self::Scheduler => "scheduler",
            Self::ControllerManager => "controller-manager",
            Self::CloudCore => "cloudcore",
        }
    }
}

/// The scheduler's user, kube-scheduler's.
pub const SCHEDULER: &str = "system:kube-scheduler";
/// The controllers' user, kube-controller-manager's.
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// cloudcore's user in the embedded API server.
pub const CLOUDCORE: &str = "system:wedge:cloudcore";
/// The API server's kubelet client's user, kubeadm's.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";
/// The Lease Wedge's control plane elects its leader on (in `kube-system`).
pub const CONTROL_PLANE_LEASE: &str = "wedge-controlplane";
/// The namespace and ServiceAccount KubeEdge's chart runs cloudcore as.
pub const CLOUDCORE_SERVICE_ACCOUNT: (&str, &str) = ("kubeedge", "cloudcore");

const EVENT_WRITE: &[&str] = &["create", "patch", "update"];

fn named(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "resourceNames": names, "verbs": verbs})
}

fn events() -> Value {
    rule(&["", "events.k8s.io"], &["events"], EVENT_WRITE)
}

/// kube-apiserver's `system:kube-scheduler` (v1.33, no feature gates).
fn kube_scheduler() -> Vec<Value> {
    vec![
        events(),
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        named(
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
            &["get", "update"],
        ),
        rule(&[""], &["nodes"], READ),
        rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
        rule(&[""], &["bindings", "pods/binding"], &["create"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["replicationcontrollers", "services"], READ),
        rule(&["apps", "extensions"], &["replicasets"], READ),
        rule(&["apps"], &["statefulsets"], READ),
        rule(&["policy"], &["poddisruptionbudgets"], READ),
        rule(
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
            READ,
        ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
        rule(&["storage.k8s.io"], &["csinodes"], READ),
        rule(&[""], &["namespaces"], READ),
        rule(&["storage.k8s.io"], &["csidrivers"], READ),
        rule(&["storage.k8s.io"], &["csistoragecapacities"], READ),
    ]
}

/// kube-apiserver's `system:volume-scheduler`.
fn volume_scheduler() -> Vec<Value> {
    let write = &["get", "list", "patch", "update", "watch"];
    vec![
        rule(&[""], &["persistentvolumes"], write),
        rule(&["storage.k8s.io"], &["storageclasses"], READ),
        rule(&[""], &["persistentvolumeclaims"], write),
    ]
}

/// What Wedge's scheduler does that kube-scheduler leaves to other components.
fn wedge_scheduler() -> Vec<Value> {
    vec![
        // The image kinds a pod's RuntimeClass stands for (Wasm or containers).
        rule(&["node.k8s.io"], &["runtimeclasses"], READ),
        // The edges' local volumes, made and bound for a claim once its pod's node is chosen,
        // deleted once the claim is gone: what kube's provisioner and PV controller do.
        rule(&[""], &["persistentvolumes"], &["create", "delete"]),
        rule(
            &[""],
            &["persistentvolumes/status", "persistentvolumeclaims/status"],
            &["patch"],
        ),
        // The `local-path` StorageClass, made at start when missing.
        rule(&["storage.k8s.io"], &["storageclasses"], &["create"]),
    ]
}

/// kube-apiserver's `system:kube-controller-manager`.
fn kube_controller_manager() -> Vec<Value> {
    vec![
        events(),
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        named(
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
            &["get", "update"],
        ),
        rule(&[""], &["secrets", "serviceaccounts"], &["create"]),
        rule(&[""], &["secrets"], &["delete"]),
        rule(
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
            &["get"],
        ),
        rule(&[""], &["secrets", "serviceaccounts"], &["update"]),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
        rule(&["*"], &["*"], &["list", "watch"]),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
    ]
}

/// The `system:controller:*` roles of the controllers Wedge runs, as kube-apiserver defines
/// them, by the ServiceAccount kube names for each.
fn controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    const ALL: &[&str] = &[
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let apps = &["apps", "extensions"][..];
    vec![
        (
            "cronjob-controller",
            vec![
                rule(
                    &["batch"],
                    &["cronjobs"],
                    &["get", "list", "update", "watch"],
                ),
                rule(&["batch"], &["jobs"], ALL),
                rule(&["batch"], &["cronjobs/status"], &["update"]),
                rule(&["batch"], &["cronjobs/finalizers"], &["update"]),
                rule(&[""], &["pods"], &["delete", "list", "watch"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(apps, &["daemonsets"], READ),
                rule(apps, &["daemonsets/status"], &["update"]),
                rule(apps, &["daemonsets/finalizers"], &["update"]),
                rule(&[""], &["nodes"], &["list", "watch"]),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(&["apps"], &["controllerrevisions"], ALL),
                events(),
            ],
        ),
        (
            "deployment-controller",
            vec![
                rule(apps, &["deployments"], &["get", "list", "update", "watch"]),
                rule(apps, &["deployments/status"], &["update"]),
                rule(apps, &["deployments/finalizers"], &["update"]),
                rule(apps, &["replicasets"], ALL),
                rule(&[""], &["pods"], &["get", "list", "update", "watch"]),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rule(apps, &["deployments"], READ),
                rule(apps, &["replicasets"], READ),
                rule(&[""], &["replicationcontrollers"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["apps"], &["statefulsets"], READ),
                rule(&["policy"], &["poddisruptionbudgets/status"], &["update"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&["*"], &["*/scale"], &["get"]),
                events(),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(&[""], &["pods", "services"], READ),
                rule(
                    &[""],
                    &["endpoints"],
                    &["create", "delete", "get", "list", "update", "watch"],
                ),
                rule(&[""], &["endpoints/restricted"], &["create"]),
                events(),
            ],
        ),
        (
            "endpointslice-controller",
            vec![
                rule(&[""], &["nodes", "pods", "services"], READ),
                rule(&[""], &["services/finalizers"], &["update"]),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["create", "delete", "get", "list", "update", "watch"],
                ),
                events(),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![
                rule(
                    &["*"],
                    &["*"],
                    &["delete", "get", "list", "patch", "update", "watch"],
                ),
                events(),
            ],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                rule(&["autoscaling"], &["horizontalpodautoscalers"], READ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                    &["update"],
                ),
                rule(&["*"], &["*/scale"], &["get", "update"]),
                rule(&[""], &["pods"], &["list", "watch"]),
                rule(&["metrics.k8s.io"], &["pods"], &["list", "watch"]),
                rule(&["custom.metrics.k8s.io"], &["*"], READ),
                rule(&["external.metrics.k8s.io"], &["*"], READ),
                events(),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(
                    &["batch"],
                    &["jobs"],
                    &["get", "list", "patch", "update", "watch"],
                ),
                rule(&["batch"], &["jobs/status"], &["update"]),
                rule(&["batch"], &["jobs/finalizers"], &["update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                events(),
            ],
        ),
        (
            "namespace-controller",
            vec![
                rule(&[""], &["namespaces"], &["delete", "get", "list", "watch"]),
                rule(
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                    &["update"],
                ),
                rule(
                    &["*"],
                    &["*"],
                    &["delete", "deletecollection", "get", "list", "watch"],
                ),
            ],
        ),
        (
            "node-controller",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &["delete", "get", "list", "patch", "update", "watch"],
                ),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                events(),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rule(apps, &["replicasets"], &["get", "list", "update", "watch"]),
                rule(apps, &["replicasets/status"], &["update"]),
                rule(apps, &["replicasets/finalizers"], &["update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "list", "patch", "watch"],
                ),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![
                rule(&[""], &["configmaps"], &["create", "update"]),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(&[""], &["pods"], &["list", "watch"]),
                rule(&["apps"], &["statefulsets"], READ),
                rule(&["apps"], &["statefulsets/status"], &["update"]),
                rule(&["apps"], &["statefulsets/finalizers"], &["update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["create", "delete", "get", "patch", "update"],
                ),
                rule(&["apps"], &["controllerrevisions"], ALL),
                rule(
                    &[""],
                    &["persistentvolumeclaims"],
                    &["create", "get", "list", "watch"],
                ),
                rule(&[""], &["persistentvolumeclaims"], &["delete", "update"]),
                rule(&[""], &["pods/finalizers"], &["update"]),
                events(),
            ],
        ),
        (
            "ttl-after-finished-controller",
            vec![
                rule(&["batch"], &["jobs"], &["delete", "get", "list", "watch"]),
                events(),
            ],
        ),
    ]
}

/// What Wedge's controllers do that kube's roles for them do not give.
fn wedge_controller_manager() -> Vec<Value> {
    vec![
        // Leader election (the Lease is created with the `create` kube's role gives).
        named(
            &["coordination.k8s.io"],
            &["leases"],
            &[CONTROL_PLANE_LEASE],
            &["get", "patch", "update"],
        ),
        // Statuses are merge-patched, where kube's controllers update them, and a Deployment's
        // revision annotation is patched.
        rule(
            &["apps"],
            &[
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "replicasets/status",
                "statefulsets/status",
            ],
            &["patch"],
        ),
        rule(&["batch"], &["cronjobs/status", "jobs/status"], &["patch"]),
        rule(
            &["autoscaling"],
            &["horizontalpodautoscalers/status"],
            &["patch"],
        ),
        rule(&["policy"], &["poddisruptionbudgets/status"], &["patch"]),
    ]
}

/// kube-apiserver's `system:kubelet-api-admin`.
fn kubelet_api_admin() -> Vec<Value> {
    vec![
        rule(&[""], &["nodes"], READ),
        rule(&[""], &["nodes"], &["proxy"]),
        rule(
            &[""],
            &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats"],
            &["*"],
        ),
    ]
}

/// The ClusterRole `cloudcore`: KubeEdge's chart's `cloudcore` role, trimmed to what Wedge's
/// cloudcore calls, and extended by RuntimeClasses (which runtime an edge's pod needs).
/// Dropped from KubeEdge's: endpoints, services, namespaces, events, reliablesyncs, Istio and
/// node-upgrade jobs, which Wedge's cloudcore never reads or writes.
pub fn cloudcore_rules() -> Vec<Value> {
    vec![
        // Edges register their Node and report its status; a deleted Node's certificates are
        // revoked (the watch).
        rule(
            &[""],
            &["nodes"],
            &["create", "get", "list", "patch", "watch"],
        ),
        rule(&[""], &["nodes/status"], &["patch"]),
        // Every edge's pods, what they mount and how they run; pods' status from edges, and
        // the final deletion once an edge confirms a pod is gone.
        rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
        rule(&[""], &["pods/status"], &["patch"]),
        rule(
            &[""],
            &[
                "configmaps",
                "persistentvolumeclaims",
                "persistentvolumes",
                "secrets",
            ],
            READ,
        ),
        rule(&["node.k8s.io"], &["runtimeclasses"], READ),
        // The records of the certificates issued to edges (ConfigMaps `edge-certificates.*` in
        // kube-system, deleted once they refuse nothing), and single-use bootstrap tokens
        // marked used.
        rule(&[""], &["configmaps"], &["create", "delete", "update"]),
        rule(&[""], &["secrets"], &["update"]),
        // Tokens for the ServiceAccounts of an edge's pods (their `kube-api-access` volumes),
        // bound to the pod; cloudcore checks the pod is the asking edge's.
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        // Node heartbeats (kube-node-lease).
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["create", "get", "patch", "update"],
        ),
        // KubeEdge's devices and rules, their CRDs applied at start.
        rule(&["devices.kubeedge.io"], &["devices", "devicemodels"], READ),
        rule(
            &["devices.kubeedge.io"],
            &["devices/status"],
            &["patch", "update"],
        ),
        rule(&["rules.kubeedge.io"], &["rules", "ruleendpoints"], READ),
        rule(
            &["rules.kubeedge.io"],
            &["rules/status"],
            &["patch", "update"],
        ),
        rule(
            &["apiextensions.k8s.io"],
            &["customresourcedefinitions"],
            &["create", "get", "list", "patch", "update", "watch"],
        ),
    ]
}

/// A subject of a binding.
#[derive(Debug, Clone, Copy)]
enum Subject {
    User(&'static str),
    ServiceAccount(&'static str, &'static str),
}

impl Subject {
    fn to_json(self) -> Value {
        match self {
            Self::User(name) => json!({"apiGroup": RBAC_GROUP, "kind": "User", "name": name}),
            Self::ServiceAccount(namespace, name) => {
                json!({"kind": "ServiceAccount", "name": name, "namespace": namespace})
            }
        }
    }
}

/// The ClusterRoles the components need, by name, with their rules.
pub(super) fn cluster_roles() -> Vec<(String, Vec<Value>)> {
    let mut roles: Vec<(String, Vec<Value>)> = vec![
        ("system:kube-scheduler".into(), kube_scheduler()),
        ("system:volume-scheduler".into(), volume_scheduler()),
        ("system:wedge:kube-scheduler".into(), wedge_scheduler()),
        (
            "system:kube-controller-manager".into(),
            kube_controller_manager(),
        ),
        (
            "system:wedge:kube-controller-manager".into(),
            wedge_controller_manager(),
        ),
        ("system:kubelet-api-admin".into(), kubelet_api_admin()),
        ("cloudcore".into(), cloudcore_rules()),
    ];
    roles.extend(
        controller_roles()
            .into_iter()
            .map(|(name, rules)| (format!("system:controller:{name}"), rules)),
    );
    roles
}

/// The ClusterRoleBindings: (binding name, role, subjects).
fn bindings() -> Vec<(String, String, Vec<Subject>)> {
    let one = |name: &str, user| (name.to_owned(), name.to_owned(), vec![Subject::User(user)]);
    let mut all = vec![
        one("system:kube-scheduler", SCHEDULER),
        one("system:volume-scheduler", SCHEDULER),
        one("system:wedge:kube-scheduler", SCHEDULER),
        one("system:kube-controller-manager", CONTROLLER_MANAGER),
        one("system:wedge:kube-controller-manager", CONTROLLER_MANAGER),
        (
            "system:wedge:kube-apiserver-kubelet-client".into(),
            "system:kubelet-api-admin".into(),
            vec![Subject::User(KUBELET_CLIENT)],
        ),
        one("cloudcore", CLOUDCORE),
    ];
    all.extend(controller_roles().into_iter().map(|(name, _)| {
        let role = format!("system:controller:{name}");
        (
            role.clone(),
            role,
            vec![
                Subject::ServiceAccount("kube-system", name),
                Subject::User(CONTROLLER_MANAGER),
            ],
        )
    }));
    all
}

/// The ClusterRoleBindings the components need, by name, as objects.
pub(super) fn cluster_role_bindings() -> Vec<(String, Value)> {
    bindings()
        .into_iter()
        .map(|(name, role, subjects)| {
            let subjects: Vec<Value> = subjects.into_iter().map(Subject::to_json).collect();
            let binding = json!({
                "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRoleBinding",
                "metadata": metadata(&name), "subjects": subjects,
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            });
            (name, binding)
        })
        .collect()
}

/// What an operator applies to a real cluster before running `cloudcore --kubeconfig`: the
/// ClusterRole `cloudcore` and, as KubeEdge's chart has them, the ServiceAccount
/// `kubeedge/cloudcore` (and its namespace) and the ClusterRoleBinding between them.
pub fn cloudcore_manifest() -> String {
    let (namespace, account) = CLOUDCORE_SERVICE_ACCOUNT;
    let labels =
        json!({"app.kubernetes.io/name": "cloudcore", "app.kubernetes.io/part-of": "wedge"});
    let documents = [
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": namespace, "labels": labels}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": account, "namespace": namespace, "labels": labels}}),
        json!({"apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRole",
               "metadata": {"name": "cloudcore", "labels": labels}, "rules": cloudcore_rules()}),
        json!({"apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRoleBinding",
               "metadata": {"name": "cloudcore", "labels": labels},
               "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cloudcore"},
               "subjects": [Subject::ServiceAccount(namespace, account).to_json()]}),
    ];
    let mut out = String::from(
        "# What Wedge's cloudcore needs of a Kubernetes cluster it runs against\n\
         # (`cloudcore --kubeconfig`): KubeEdge's ClusterRole `cloudcore`, trimmed to what\n\
         # Wedge's cloudcore calls, bound to KubeEdge's ServiceAccount kubeedge/cloudcore.\n\
         # Printed by `wedge rbac`; see the README (\"cloudcore on a real cluster\").\n",
    );
    for document in documents {
        out.push_str("---\n");
        // Serializing a JSON value as YAML cannot fail.
        out.push_str(&serde_yaml_ng::to_string(&document).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_names_a_role_that_is_made() {
        let roles: Vec<String> = cluster_roles().into_iter().map(|(n, _)| n).collect();
        for (name, role, _) in bindings() {
            assert!(
                roles.contains(&role),
                "{name} binds {role}, which is not made"
            );
        }
    }

    #[test]
    fn the_shipped_manifest_is_the_one_printed() {
        let shipped = include_str!("../../../../deploy/cloudcore-rbac.yaml");
        assert_eq!(
            shipped,
            cloudcore_manifest(),
            "deploy/cloudcore-rbac.yaml is stale: regenerate it with `wedge rbac`"
        );
    }
}
