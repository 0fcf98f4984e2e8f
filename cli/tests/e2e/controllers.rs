//! `wedge controllers` as separate processes: two run side by side, one leads through the
//! Lease, the other stays passive until the leader dies, then takes over.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

struct Controllers {
    child: Child,
    log: std::path::PathBuf,
}

impl Controllers {
    fn start(kubeconfig: &std::path::Path, identity: &str, dir: &std::path::Path) -> Self {
        let log = dir.join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_wedge"))
            .args([
                "controllers",
                "--identity",
                identity,
                "--lease-duration",
                "3",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("RUST_LOG", "wedge_controlplane=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("wedge runs");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("wedge-controlplane")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wedge_testkit::wait::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        check,
        || format!("timed out waiting for {what}"),
    )
    .await;
}

async fn pod_bound(pods: &Api<Pod>, name: &str) -> bool {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.0"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let bound = pods.get(name).await.ok().and_then(|p| p.spec?.node_name);
        if bound.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_process_stays_passive_until_the_first_dies() {
    let dir = tempfile::tempdir().expect("dir");
    let config = wedge_apiserver::ServerConfig::new(
        dir.path().join("api"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let server = wedge_apiserver::Server::start(config)
        .await
        .expect("API server");
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path()).expect("kubeconfig");
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("config"),
    )
    .expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "edge-1"}})).expect("node");
    let mut node = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    node.status = Some(
        serde_json::from_value(json!({
            "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "10"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }))
        .expect("status"),
    );
    nodes
        .replace_status("edge-1", &PostParams::default(), &node)
        .await
        .expect("node status");

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut first = Controllers::start(server.kubeconfig_path(), "first", dir.path());
    wait_for("first to lead", || async {
        holder(&leases).await.as_deref() == Some("first")
    })
    .await;
    let second = Controllers::start(server.kubeconfig_path(), "second", dir.path());
    assert!(pod_bound(&pods, "one").await, "the leader schedules");
    // It publishes the CA its kubeconfig trusts as kube-root-ca.crt, for pods' token volumes.
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(client.clone());
    wait_for("kube-root-ca.crt", || async {
        maps.get_opt("kube-root-ca.crt")
            .await
            .ok()
            .flatten()
            .and_then(|m| m.data?.get("ca.crt").cloned())
            .is_some_and(|ca| ca.trim() == server.ca_pem().trim())
    })
    .await;
    // Once the second is electing, a whole lease period (3 s) passes with the first renewing:
    // the second never took the lease, and has done nothing.
    wait_for("the second to elect", || async {
        second.log().contains("electing")
    })
    .await;
    let renewed = |lease: Option<Lease>| {
        let spec = lease?.spec?;
        Some((spec.holder_identity?, spec.renew_time?.0))
    };
    let (_, since) = renewed(leases.get_opt("wedge-controlplane").await.ok().flatten())
        .expect("the lease is held");
    wait_for("the first to renew a lease period later", || async {
        renewed(leases.get_opt("wedge-controlplane").await.ok().flatten()).is_some_and(
            |(who, at)| who == "first" && at >= since + jiff::SignedDuration::from_secs(3),
        )
    })
    .await;
    assert!(first.log().contains("leading"), "{}", first.log());
    assert!(!second.log().contains("leading"), "{}", second.log());

    // The leader dies without releasing the lease: the second takes over once it expires.
    first.child.kill().expect("kill -9");
    first.child.wait().expect("reaped");
    wait_for("second to lead", || async {
        holder(&leases).await.as_deref() == Some("second")
    })
    .await;
    assert!(pod_bound(&pods, "two").await, "the new leader schedules");
    assert!(second.log().contains("leading"), "{}", second.log());
    drop(second);
    server.shutdown().await;
}
