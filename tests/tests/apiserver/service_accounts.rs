//! ServiceAccounts as kubectl users meet them: every namespace has `default`, `kubectl create
//! token` issues a token, the token authenticates as the account (`kubectl auth whoami`), RBAC
//! decides what it may do, a `TokenReview` says whose it is, and deleting the account ends it.

use super::harness::*;

/// kubectl as the holder of `token` only: a kubeconfig with the cluster's server and CA and
/// the token, none of the admin's credentials.
fn kubectl_with_token(cluster: &Cluster, token: &str, args: &[&str]) -> std::process::Output {
    let admin = std::fs::read_to_string(cluster.server.kubeconfig_path()).expect("kubeconfig");
    let field = |name: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .expect("the admin kubeconfig names it")
            .trim()
            .to_owned()
    };
    let path = cluster.dir.path().join("token.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: t\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: t}}\ncurrent-context: c\n",
            field("server:"),
            field("certificate-authority-data:")
        ),
    )
    .expect("write kubeconfig");
    kubectl_with(&path, args, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_authenticate_as_their_account_until_it_goes() {
    let cluster = Cluster::start().await;
    // The default account exists in system namespaces and in new ones.
    cluster.kubectl_ok(&["get", "serviceaccount", "default", "-n", "kube-system"]);
    cluster.kubectl_ok(&["create", "namespace", "ci"]);
    cluster.kubectl_ok(&["get", "serviceaccount", "default", "-n", "ci"]);

    cluster.kubectl_ok(&["create", "serviceaccount", "deployer", "-n", "ci"]);
    let token = cluster
        .kubectl_ok(&["create", "token", "deployer", "-n", "ci"])
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let who = kubectl_with_token(
        &cluster,
        &token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "system:serviceaccount:ci:deployer",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    // Nothing is granted yet; a binding to the account grants it.
    let denied = kubectl_with_token(&cluster, &token, &["get", "pods", "-n", "ci"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains("User \"system:serviceaccount:ci:deployer\" cannot list resource \"pods\""),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "deployer-edit",
        "-n",
        "ci",
        "--clusterrole=edit",
        "--serviceaccount=ci:deployer",
    ]);
    let allowed = kubectl_with_token(&cluster, &token, &["get", "pods", "-n", "ci"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );

    // A TokenReview says whose it is; a token for another audience is not valid here.
    let review = |token: &str| {
        let out = cluster.kubectl_stdin(
            &[
                "create",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.authenticated} {.status.user.username}",
            ],
            &format!(
                "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {token}\n"
            ),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(review(&token), "true system:serviceaccount:ci:deployer");
    let vault = cluster
        .kubectl_ok(&[
            "create",
            "token",
            "deployer",
            "-n",
            "ci",
            "--audience=vault",
        ])
        .trim()
        .to_owned();
    let refused = kubectl_with_token(&cluster, &vault, &["get", "pods", "-n", "ci"]);
    assert!(!refused.status.success(), "another audience's token");
    assert_eq!(review("not-a-token").trim(), "false");

    // Too short a validity is refused as kube-apiserver refuses it.
    let short = cluster.kubectl(&["create", "token", "deployer", "-n", "ci", "--duration=1m"]);
    assert!(
        String::from_utf8_lossy(&short.stderr)
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );

    // The account deleted, its tokens stop working, even a new account of the same name.
    cluster.kubectl_ok(&["delete", "serviceaccount", "deployer", "-n", "ci"]);
    cluster.kubectl_ok(&["create", "serviceaccount", "deployer", "-n", "ci"]);
    let gone = kubectl_with_token(&cluster, &token, &["get", "pods", "-n", "ci"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}
