//! Wedge's own components are the users Kubernetes names, each with only its roles: what
//! `kubectl auth whoami` and `kubectl auth can-i` (also `--list`) say of them, and a call outside
//! a component's roles refused with kube-apiserver's 403.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DeleteParams};
use serde_json::Value;
use wedge_apiserver::Component;

use crate::apiserver::harness::{Cluster, kubectl_with};

/// `kubectl auth can-i VERB RESOURCE... --as USER`: whether it says yes.
fn can(cluster: &Cluster, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let as_user = format!("--as={user}");
    all.push(&as_user);
    let out = cluster.kubectl(&all);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        said == "yes" || said == "no",
        "kubectl {all:?}: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said == "yes"
}

#[tokio::test(flavor = "multi_thread")]
async fn each_component_is_the_user_kube_names_with_only_its_roles() {
    let cluster = Cluster::start().await;

    // Each component's kubeconfig authenticates as its user, in no group but the one every
    // authenticated user is in.
    for component in Component::ALL {
        let path = cluster.server.component_kubeconfig(component);
        let out = kubectl_with(
            &path,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                r#"{{"groups":["system:authenticated"],"username":"{}"}}"#,
                component.user()
            ),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let scheduler = Component::Scheduler.user();
    assert_eq!(scheduler, "system:kube-scheduler");
    for (args, expected) in [
        (&["create", "pods", "--subresource=binding"][..], true),
        (&["patch", "pods", "--subresource=status"], true),
        (&["list", "nodes"], true),
        (&["update", "persistentvolumeclaims"], true),
        (&["create", "persistentvolumes"], true),
        (&["list", "runtimeclasses.node.k8s.io"], true),
        (&["delete", "secrets"], false),
        (&["get", "secrets"], false),
        (&["create", "pods"], false),
        (&["delete", "nodes"], false),
        (&["create", "deployments.apps"], false),
    ] {
        assert_eq!(
            can(&cluster, scheduler, args),
            expected,
            "{scheduler} {args:?}"
        );
    }

    let controllers = Component::ControllerManager.user();
    assert_eq!(controllers, "system:kube-controller-manager");
    for (args, expected) in [
        (&["create", "pods"][..], true),
        (&["delete", "pods"], true),
        (&["create", "replicasets.apps"], true),
        (&["patch", "deployments.apps", "--subresource=status"], true),
        (&["update", "jobs.batch", "--subresource=status"], true),
        (&["create", "endpointslices.discovery.k8s.io"], true),
        (&["delete", "configmaps"], true), // the garbage collector's */*
        (&["update", "namespaces", "--subresource=finalize"], true),
        (&["list", "secrets"], true), // kube's: every informer lists
        (
            &[
                "update",
                "leases.coordination.k8s.io/wedge-controlplane",
                "-n",
                "kube-system",
            ],
            true,
        ),
        (&["create", "pods", "--subresource=exec"], false),
        (&["create", "clusterroles.rbac.authorization.k8s.io"], false),
        (&["impersonate", "users"], false),
        (&["create", "namespaces"], false),
    ] {
        assert_eq!(
            can(&cluster, controllers, args),
            expected,
            "{controllers} {args:?}"
        );
    }

    let cloudcore = Component::CloudCore.user();
    for (args, expected) in [
        (&["create", "nodes"][..], true),
        (&["patch", "nodes", "--subresource=status"], true),
        (&["patch", "pods", "--subresource=status"], true),
        (&["delete", "pods"], true),
        (&["watch", "secrets", "--all-namespaces"], true),
        (
            &[
                "patch",
                "leases.coordination.k8s.io",
                "-n",
                "kube-node-lease",
            ],
            true,
        ),
        (
            &["patch", "customresourcedefinitions.apiextensions.k8s.io"],
            true,
        ),
        (&["delete", "namespaces"], false),
        (&["delete", "nodes"], false),
        (&["create", "pods"], false),
        (&["create", "secrets"], false),
        (
            &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
            false,
        ),
        (&["create", "pods", "--subresource=exec"], false),
        (&["delete", "deployments.apps"], false),
    ] {
        assert_eq!(
            can(&cluster, cloudcore, args),
            expected,
            "{cloudcore} {args:?}"
        );
    }

    // The API server's kubelet client: the kubelet API, nothing else.
    let kubelet_client = "kube-apiserver-kubelet-client";
    assert!(can(
        &cluster,
        kubelet_client,
        &["create", "nodes", "--subresource=proxy"]
    ));
    assert!(can(
        &cluster,
        kubelet_client,
        &["get", "nodes", "--subresource=log"]
    ));
    assert!(!can(&cluster, kubelet_client, &["get", "pods"]));
    assert!(!can(&cluster, kubelet_client, &["get", "secrets"]));

    // A call outside its roles is refused as kube-apiserver refuses it.
    let client = cluster.component_client(Component::CloudCore).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    match namespaces.delete("default", &DeleteParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403);
            assert_eq!(
                status.message,
                "namespaces \"default\" is forbidden: User \"system:wedge:cloudcore\" cannot delete resource \"namespaces\" in API group \"\" in the namespace \"default\""
            );
        }
        other => panic!("cloudcore deleted a namespace: {other:?}"),
    }
}

/// A row of `kubectl auth can-i --list`: resource, non-resource URLs, resource names, verbs.
type Row = (String, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

/// The rows of `kubectl auth can-i --list`, by the header's columns.
fn rows(table: &str) -> Vec<Row> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let at = |title: &str| header.find(title).expect(title);
    let (urls, names, verbs) = (at("Non-Resource URLs"), at("Resource Names"), at("Verbs"));
    let list = |cell: &str| -> BTreeSet<String> {
        cell.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cell = |from: usize, to: usize| l.get(from..to.min(l.len())).unwrap_or_default();
            (
                cell(0, urls).trim().to_owned(),
                list(cell(urls, names)),
                list(cell(names, verbs)),
                list(cell(verbs, l.len())),
            )
        })
        .collect()
}

/// The rules of every ClusterRole bound to `user` or `system:authenticated`.
fn bound_rules(cluster: &Cluster, user: &str) -> Vec<Value> {
    let json =
        |args: &[&str]| -> Value { serde_json::from_str(&cluster.kubectl_ok(args)).expect("json") };
    let roles: BTreeMap<String, Value> = json(&["get", "clusterroles", "-o", "json"])["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["rules"].clone(),
            )
        })
        .collect();
    let bindings = json(&["get", "clusterrolebindings", "-o", "json"]);
    let mut rules = Vec::new();
    for binding in bindings["items"].as_array().expect("items") {
        let names_user = binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                (s["kind"] == "User" && s["name"] == user)
                    || (s["kind"] == "Group" && s["name"] == "system:authenticated")
            })
        });
        if names_user {
            let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
            rules.extend(roles[role].as_array().cloned().unwrap_or_default());
        }
    }
    rules
}

#[tokio::test(flavor = "multi_thread")]
async fn can_i_list_shows_each_component_its_roles_and_nothing_else() {
    let cluster = Cluster::start().await;
    for user in Component::ALL
        .map(Component::user)
        .into_iter()
        .chain(["kube-apiserver-kubelet-client"])
    {
        let listed =
            rows(&cluster.kubectl_ok(&["auth", "can-i", "--list", &format!("--as={user}")]));
        let rules = bound_rules(&cluster, user);
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut expected = BTreeSet::new();
        for rule in &rules {
            let verbs = strings(&rule["verbs"]);
            let names: BTreeSet<String> = strings(&rule["resourceNames"]).into_iter().collect();
            for url in strings(&rule["nonResourceURLs"]) {
                let found = listed.iter().any(|(r, u, _, v)| {
                    r.is_empty() && u.contains(&url) && verbs.iter().all(|x| v.contains(x))
                });
                assert!(found, "{user}: {url} {verbs:?} not listed: {listed:#?}");
            }
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    // kubectl names `cronjobs/status` in batch `cronjobs.batch/status`.
                    let key = match (group.as_str(), resource.split_once('/')) {
                        ("", _) => resource.clone(),
                        (_, Some((base, sub))) => format!("{base}.{group}/{sub}"),
                        (_, None) => format!("{resource}.{group}"),
                    };
                    let found = listed.iter().any(|(r, _, n, v)| {
                        *r == key && *n == names && verbs.iter().all(|x| v.contains(x))
                    });
                    assert!(
                        found,
                        "{user}: {key} {names:?} {verbs:?} not listed: {listed:#?}"
                    );
                    expected.insert(key);
                }
            }
        }
        for (resource, ..) in &listed {
            assert!(
                resource.is_empty() || expected.contains(resource),
                "{user} may act on {resource}, which none of its roles names"
            );
        }
    }
}
