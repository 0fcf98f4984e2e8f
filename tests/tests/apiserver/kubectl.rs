//! The real `kubectl` against the embedded server.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::apiserver::harness::{Cluster, MANIFESTS, WIDGET_CRD};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_describe_label_scale_edit_delete() {
    let cluster = Cluster::start().await;
    let first = cluster.kubectl_stdin(&["apply", "-f", "-"], MANIFESTS);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "configmap/settings created",
            "deployment.apps/web created",
            "pod/hello created"
        ]
    );
    let second = cluster.kubectl_stdin(&["apply", "-f", "-"], MANIFESTS);
    assert_eq!(
        String::from_utf8_lossy(&second.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "configmap/settings unchanged",
            "deployment.apps/web unchanged",
            "pod/hello unchanged"
        ]
    );

    let wide = cluster.kubectl_ok(&["get", "pods", "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    assert!(wide.contains("hello") && wide.contains("Pending"), "{wide}");
    let deploys = cluster.kubectl_ok(&["get", "deploy"]);
    assert_eq!(
        deploys
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert!(deploys.contains("0/2"), "{deploys}");

    let yaml = cluster.kubectl_ok(&["get", "pod", "hello", "-o", "yaml"]);
    assert!(
        yaml.contains("restartPolicy: Always") && yaml.contains("phase: Pending"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "cm", "settings", "-o", "json"]))
            .expect("json");
    assert_eq!(json["data"]["interval"], "5");

    let described = cluster.kubectl_ok(&["describe", "pod", "hello"]);
    // kubectl aligns every section to its widest label (the token volume's
    // `TokenExpirationSeconds:`), so fields are read by their words.
    let field = |label: &str| {
        described
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(str::trim)
            .unwrap_or_default()
    };
    assert!(
        field("Status:") == "Pending" && field("QoS Class:") == "BestEffort",
        "{described}"
    );

    cluster.kubectl_ok(&["label", "pod", "hello", "tier=edge"]);
    cluster.kubectl_ok(&["annotate", "pod", "hello", "note=checked"]);
    let labelled = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "tier=edge",
        "-o",
        "jsonpath={.items[*].metadata.annotations.note}",
    ]);
    assert_eq!(labelled, "checked");

    cluster.kubectl_ok(&["scale", "deployment", "web", "--replicas=5"]);
    assert_eq!(
        cluster.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    cluster.kubectl_ok(&["rollout", "restart", "deployment", "web"]);
    let restarted = cluster.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.metadata.annotations}",
    ]);
    assert!(
        restarted.contains("kubectl.kubernetes.io/restartedAt"),
        "{restarted}"
    );

    // kubectl edit sends what the editor changed as a patch.
    let editor = cluster.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/interval: \"5\"/interval: \"9\"/' \"$1\"\n",
    )
    .expect("editor");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    let edited = std::process::Command::new("kubectl")
        .args(["edit", "configmap", "settings"])
        .env("KUBECONFIG", cluster.server.kubeconfig_path())
        .env("HOME", cluster.dir.path())
        .env("KUBE_EDITOR", &editor)
        .output()
        .expect("kubectl edit");
    assert!(edited.status.success(), "{}", text(&edited));
    assert_eq!(
        cluster.kubectl_ok(&["get", "cm", "settings", "-o", "jsonpath={.data.interval}"]),
        "9"
    );

    cluster.kubectl_ok(&["delete", "pod", "hello"]);
    cluster.kubectl_ok(&["wait", "--for=delete", "pod/hello", "--timeout=10s"]);
    let none = cluster.kubectl(&["get", "pod", "hello"]);
    assert!(
        !none.status.success() && text(&none).contains("pods \"hello\" not found"),
        "{}",
        text(&none)
    );
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_explain_and_custom_resources() {
    let cluster = Cluster::start().await;
    // kubectl get --watch prints each change as it happens.
    let mut watch = std::process::Command::new("kubectl")
        .args([
            "get",
            "configmaps",
            "--watch",
            "--output-watch-events",
            "--no-headers",
        ])
        .env("KUBECONFIG", cluster.server.kubeconfig_path())
        .env("HOME", cluster.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watched = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: \"1\"}\n";
    assert!(
        cluster
            .kubectl_stdin(&["create", "-f", "-"], watched)
            .status
            .success()
    );
    cluster.kubectl_ok(&["delete", "configmap", "watched"]);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a watch event");
        seen.push(
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen, ["ADDED watched", "DELETED watched"]);

    let explained = cluster.kubectl_ok(&["explain", "pod.spec.containers.image"]);
    assert!(
        explained.contains("FIELD: image <string>") && explained.contains("Container image name"),
        "{explained}"
    );
    let explained = cluster.kubectl_ok(&["explain", "deployments.spec.strategy"]);
    assert!(explained.contains("rollingUpdate"), "{explained}");

    cluster.kubectl_stdin(&["apply", "-f", "-"], WIDGET_CRD);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=10s",
    ]);
    let widget =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n";
    let applied = cluster.kubectl_stdin(&["apply", "-f", "-"], widget);
    assert!(applied.status.success(), "{}", text(&applied));
    let table = cluster.kubectl_ok(&["get", "wg"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "SIZE", "MODE", "AGE"]);
    assert_eq!(rows[1][..3], ["w1", "3", "slow"]);
    let explained = cluster.kubectl_ok(&["explain", "widget.spec"]);
    assert!(
        explained.contains("size") && explained.contains("-required-"),
        "{explained}"
    );

    // Strict validation (kubectl's default) refuses unknown fields, naming them.
    let bogus =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bogus}\ndata: {a: b}\nbogus: 1\n";
    let refused = cluster.kubectl_stdin(&["apply", "-f", "-"], bogus);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("unknown field \"bogus\""),
        "{}",
        text(&refused)
    );
    cluster.server.shutdown().await;
}

/// kubectl's imperative `create` commands send protobuf bodies: the objects stored hold what
/// was asked, as Kubernetes would store them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_creates_send_protobuf_and_store_what_was_asked() {
    let cluster = Cluster::start().await;
    for args in [
        &["create", "namespace", "team"][..],
        &[
            "-n",
            "team",
            "create",
            "configmap",
            "settings",
            "--from-literal=interval=5",
        ],
        &[
            "-n",
            "team",
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ],
        &[
            "-n",
            "team",
            "create",
            "secret",
            "docker-registry",
            "pull",
            "--docker-server=registry.local",
            "--docker-username=u",
            "--docker-password=p",
        ],
        &[
            "-n",
            "team",
            "create",
            "deployment",
            "web",
            "--image=registry.local/web:1.0",
            "--replicas=2",
            "--port=8080",
        ],
        &[
            "-n",
            "team",
            "create",
            "service",
            "clusterip",
            "web",
            "--tcp=80:8080",
        ],
        &["-n", "team", "create", "serviceaccount", "robot"],
    ] {
        cluster.kubectl_ok(args);
    }
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["-n", "team", "get", "-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&cluster.kubectl_ok(&all)).expect("json")
    };
    let ns: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "namespace", "team", "-o", "json"]))
            .expect("json");
    assert_eq!(ns["status"]["phase"], "Active");
    assert!(
        ns["metadata"].get("namespace").is_none(),
        "no empty strings: {ns}"
    );
    assert_eq!(
        json(&["configmap", "settings"])["data"],
        serde_json::json!({"interval": "5"})
    );
    let creds = json(&["secret", "creds"]);
    assert_eq!(creds["type"], "Opaque");
    assert_eq!(creds["data"]["password"], "czNjcmV0", "base64 of s3cret");
    assert_eq!(
        json(&["secret", "pull"])["type"],
        "kubernetes.io/dockerconfigjson"
    );
    let config = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "secret",
        "pull",
        "-o",
        r#"go-template={{index .data ".dockerconfigjson" | base64decode}}"#,
    ]);
    let config: serde_json::Value = serde_json::from_str(&config).expect("docker config");
    assert_eq!(config["auths"]["registry.local"]["username"], "u");
    let web = json(&["deployment", "web"]);
    assert_eq!(web["spec"]["replicas"], 2);
    let container = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.local/web:1.0");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let ports = &json(&["service", "web"])["spec"]["ports"][0];
    assert_eq!(
        (ports["port"].clone(), ports["targetPort"].clone()),
        (80.into(), 8080.into())
    );
    let table = cluster.kubectl_ok(&["-n", "team", "get", "service", "web"]);
    assert!(table.contains(" 80/TCP "), "no node port: {table}");
    assert_eq!(
        json(&["serviceaccount", "robot"])["metadata"]["name"],
        "robot"
    );
    cluster.kubectl_ok(&["-n", "team", "delete", "serviceaccount", "robot"]);
    let left = cluster.kubectl(&["-n", "team", "get", "serviceaccount", "robot"]);
    assert!(!left.status.success());
}

/// `pods/log` and `pods/exec` check the container as kube-apiserver does before anything reaches
/// the node: a pod with several containers and none named gets a 400 listing them, a container
/// the pod lacks a 400 naming it; a pod with no node a 400; the rest is for the node's agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_logs_and_exec_check_the_container_before_the_node() {
    let cluster = Cluster::start().await;
    let pods = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: two\nspec:\n  nodeName: edge-x\n  initContainers:\n  - {name: setup, image: busybox}\n  containers:\n  - {name: a, image: busybox}\n  - {name: b, image: busybox}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: unplaced\nspec:\n  containers:\n  - {name: only, image: busybox}\n";
    let applied = cluster.kubectl_stdin(&["apply", "-f", "-"], pods);
    assert!(applied.status.success(), "{}", text(&applied));

    // kubectl picks a container itself, so the bare request goes raw.
    let bare = cluster.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/two/log"]);
    assert!(!bare.status.success());
    assert!(
        text(&bare)
            .contains("a container name must be specified for pod two, choose one of: [setup a b]"),
        "{}",
        text(&bare)
    );
    let wrong = cluster.kubectl(&["logs", "two", "-c", "nope"]);
    assert!(
        text(&wrong).contains("container nope is not valid for pod two"),
        "{}",
        text(&wrong)
    );
    let exec = cluster.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/two/exec?command=true&container=nope&stdout=true",
    ]);
    assert!(
        text(&exec).contains("container nope is not valid for pod two"),
        "{}",
        text(&exec)
    );
    // A valid container passes the checks and reaches the question of the node's agent.
    let valid = cluster.kubectl(&["logs", "two", "-c", "setup"]);
    assert!(
        text(&valid).contains("on node edge-x is not available"),
        "{}",
        text(&valid)
    );
    let unplaced = cluster.kubectl(&["logs", "unplaced"]);
    assert!(
        text(&unplaced).contains("does not have a host assigned"),
        "{}",
        text(&unplaced)
    );
}
