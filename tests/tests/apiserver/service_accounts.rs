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

const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin through kube-rs, as kube-apiserver admits pods: the
/// account named or refused in kube's words, kube's `kube-api-access-*` volume in every
/// container unless automount is off, the account's pull secrets.
#[tokio::test(flavor = "multi_thread")]
async fn pods_get_their_account_and_its_token_volume_as_kube_admits_them() {
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    use kube::api::{Api, PostParams};
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, extra: serde_json::Value| -> Pod {
        let mut spec = serde_json::json!({"containers": [{"name": "app", "image": "app:1"}],
                                          "initContainers": [{"name": "init", "image": "app:1"}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
            .expect("a pod")
    };

    let refused = pods
        .create(
            &PostParams::default(),
            &pod(
                "ghostly",
                serde_json::json!({"serviceAccountName": "ghost"}),
            ),
        )
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = refused else {
        panic!("{refused}")
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "pods \"ghostly\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
    );

    let admitted = pods
        .create(&PostParams::default(), &pod("web", serde_json::json!({})))
        .await
        .expect("admitted");
    let spec = serde_json::to_value(admitted.spec.expect("spec")).expect("json");
    assert_eq!(spec["serviceAccountName"], "default");
    let volumes = spec["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1);
    let name = volumes[0]["name"].as_str().expect("name");
    assert!(
        name.starts_with("kube-api-access-") && name.len() == 21,
        "{name}"
    );
    assert_eq!(
        volumes[0]["projected"],
        serde_json::json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]})
    );
    for list in ["containers", "initContainers"] {
        assert_eq!(
            spec[list][0]["volumeMounts"],
            serde_json::json!([{"name": name, "readOnly": true, "mountPath": MOUNT_PATH}]),
            "{list}"
        );
    }

    // Automount off, on the pod or on its account: no volume. The account's pull secrets
    // come with it.
    let quiet = pods
        .create(
            &PostParams::default(),
            &pod(
                "quiet",
                serde_json::json!({"automountServiceAccountToken": false}),
            ),
        )
        .await
        .expect("admitted");
    assert!(quiet.spec.expect("spec").volumes.is_none());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let robot: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "robot"}, "automountServiceAccountToken": false,
        "imagePullSecrets": [{"name": "registry"}]}))
    .expect("account");
    accounts
        .create(&PostParams::default(), &robot)
        .await
        .expect("account created");
    let robotic = pods
        .create(
            &PostParams::default(),
            &pod(
                "robotic",
                serde_json::json!({"serviceAccountName": "robot"}),
            ),
        )
        .await
        .expect("admitted")
        .spec
        .expect("spec");
    assert!(robotic.volumes.is_none());
    let pulls: Vec<String> = robotic
        .image_pull_secrets
        .into_iter()
        .flatten()
        .map(|s| s.name)
        .collect();
    assert_eq!(pulls, ["registry"]);
}

/// Legacy token Secrets, as kube-controller-manager's token controller keeps them: filled in,
/// their token authenticating as the account, deleted with the account.
#[tokio::test(flavor = "multi_thread")]
async fn legacy_token_secrets_are_filled_and_go_with_their_account() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "serviceaccount", "builder"]);
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: builder-token\n  annotations:\n    kubernetes.io/service-account.name: builder\ntype: kubernetes.io/service-account-token\n";
    let out = cluster.kubectl_stdin(&["apply", "-f", "-"], secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cluster.client().await, "default");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let data = loop {
        let secret = secrets.get("builder-token").await.expect("the Secret");
        let data = secret.data.unwrap_or_default();
        if data.contains_key("token") {
            break data;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Secret was not filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let token = String::from_utf8(data["token"].0.clone()).expect("utf8");
    assert!(data.contains_key("ca.crt"), "ca.crt is filled");
    assert_eq!(data["namespace"].0, b"default");
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
        "system:serviceaccount:default:builder",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );

    // A token Secret must name its account.
    let nameless = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: nameless\ntype: kubernetes.io/service-account-token\n";
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], nameless);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("metadata.annotations[kubernetes.io/service-account.name]: Required value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The account deleted, its token Secret goes, and the token stops working.
    cluster.kubectl_ok(&["delete", "serviceaccount", "builder"]);
    eventually(
        std::time::Duration::from_secs(10),
        "the Secret gone",
        || {
            let out = cluster.kubectl(&["get", "secret", "builder-token"]);
            std::future::ready(!out.status.success())
        },
    )
    .await;
    let gone = kubectl_with_token(&cluster, &token, &["auth", "whoami"]);
    assert!(!gone.status.success());
}
