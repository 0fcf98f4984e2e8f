//! Authorization of what reaches edge pods, end to end: a user from `wedge kubeconfig` (a client
//! certificate with no groups) against cloudcore's embedded API server, with real kubectl, and
//! RBAC's roles and bindings deciding: nothing without a binding, reading with `view`, exec
//! with `edit`, and no granting oneself more than one holds; `kubectl auth whoami` and
//! `kubectl auth can-i` say so beforehand, and `--as` acts as another only for who may
//! impersonate.

use std::path::Path;
use std::process::{Command, Output};

use super::support::*;

/// kubectl as the user of `kubeconfig`.
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_users_that_rbac_allows_may_exec_into_edge_pods() {
    let env = OneEdge::start().await;
    let cloud = &env.cloud;
    let dir = tempfile::tempdir().expect("tempdir");
    env.running("app", &["sleep"]);

    let alice = dir.path().join("alice.kubeconfig");
    let issued = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(&cloud.root)
        .args(["kubeconfig", "--user", "alice", "--output"])
        .arg(&alice)
        .output()
        .expect("wedge runs");
    assert!(issued.status.success(), "{}", stderr(&issued));

    // Authenticated, and bound to nothing: discovery, but no pods.
    let out = kubectl_as(&alice, &["get", "pods"]);
    assert!(
        !out.status.success()
            && stderr(&out).contains(
                "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            ),
        "{}",
        stderr(&out)
    );

    // Who am I, and what may I: the review resources answer.
    let out = kubectl_as(
        &alice,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"groups":["system:authenticated"],"username":"alice"}"#,
        "{}",
        stderr(&out)
    );
    let can_i = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = kubectl_as(&alice, &all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(can_i(&["list", "pods"]), (Some(1), "no".to_owned()));

    // Only who may impersonate may act as another: the admin may, as alice, and finds her
    // limits; alice may not be bob.
    let out = cloud.kubectl(&["get", "pods", "--as=alice"]);
    assert!(
        !out.status.success()
            && stderr(&out).contains("User \"alice\" cannot list resource \"pods\""),
        "{}",
        stderr(&out)
    );
    let out = kubectl_as(&alice, &["get", "pods", "--as=bob"]);
    assert!(
        !out.status.success()
            && stderr(&out).contains(
                "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
            ),
        "{}",
        stderr(&out)
    );

    // `view` in default: pods and their logs, not exec.
    cloud.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    let out = kubectl_as(&alice, &["get", "pod", "app", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pod/app\n",
        "{}",
        stderr(&out)
    );
    let out = kubectl_as(&alice, &["exec", "app", "--", "misbehave", "print", "2"]);
    assert!(
        !out.status.success()
            && stderr(&out).contains(
                "pods \"app\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
            ),
        "{}",
        stderr(&out)
    );
    let out = kubectl_as(&alice, &["get", "pods", "-n", "kube-system"]);
    assert!(!out.status.success(), "other namespaces stay closed");
    assert_eq!(can_i(&["get", "pods/log"]), (Some(0), "yes".to_owned()));
    assert_eq!(
        can_i(&["create", "pods", "--subresource=exec"]),
        (Some(1), "no".to_owned())
    );

    // Allowed to bind, alice still cannot grant what she does not hold.
    cloud.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: binder\n  namespace: default\nrules:\n- apiGroups: [rbac.authorization.k8s.io]\n  resources: [rolebindings]\n  verbs: [create]\n",
    );
    cloud.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-binder",
        "--role=binder",
        "--user=alice",
    ]);
    let out = kubectl_as(
        &alice,
        &[
            "create",
            "rolebinding",
            "alice-admin",
            "--clusterrole=cluster-admin",
            "--user=alice",
        ],
    );
    assert!(
        !out.status.success()
            && stderr(&out).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&out)
    );

    // `edit`: exec runs, with the command's output and exit code.
    cloud.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=edit",
        "--user=alice",
    ]);
    assert_eq!(
        can_i(&["create", "pods", "--subresource=exec"]),
        (Some(0), "yes".to_owned())
    );
    let out = cloud.kubectl(&["auth", "can-i", "create", "pods/exec", "--as=alice"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let (_, listed) = can_i(&["--list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pods/exec ") && l.contains(" create ")),
        "{listed}"
    );
    let out = kubectl_as(&alice, &["exec", "app", "--", "misbehave", "print", "2"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "line 0\nline 1\n"),
        "{}",
        stderr(&out)
    );
    // A WASI 0.2 command ends in success or failure: a guest's `exit(4)` is 1.
    let out = kubectl_as(&alice, &["exec", "app", "--", "misbehave", "exit", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
