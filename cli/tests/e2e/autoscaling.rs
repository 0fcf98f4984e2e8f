//! HorizontalPodAutoscalers on a real edge: a Deployment of Wasm pods scaled up under CPU load
//! and down after it stops, on the usage the edge reports (`--usage-interval`) and the metrics
//! API serves, read back as users read it (`kubectl get hpa`, the HPA's status and events, the
//! Deployment's replicas); and an HPA whose pods ask for no CPU reporting kube's
//! `FailedGetResourceMetric`, read through kube-rs.
//!
//! The load is the `misbehave load` guest: while a file on the edge exists (a hostPath volume
//! every pod of the Deployment mounts), each pod computes 20 ms of every 100 ms, 200m against a
//! request of 100m; the test makes and removes the file.

use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Api;

use super::support::*;

/// A Deployment `name` of `misbehave load` Wasm pods, reading the load switch at
/// `<dir>/on`, with `resources` as the container's.
fn load_deployment(name: &str, registry: &str, dir: &str, resources: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      automountServiceAccountToken: false\n      containers:\n      - name: main\n        image: {registry}/samples/misbehave:1\n        command: [misbehave, load, /load/on, \"20\"]\n        resources: {resources}\n        volumeMounts:\n        - {{name: load, mountPath: /load}}\n      volumes:\n      - name: load\n        hostPath: {{path: {dir}, type: DirectoryOrCreate}}\n"
    )
}

/// An HPA on Deployment `name`: 1 to 3 replicas at 50 % CPU, scaling down 5 s after the
/// usage drops.
fn hpa(name: &str) -> String {
    format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}\n  minReplicas: 1\n  maxReplicas: 3\n  metrics:\n  - type: Resource\n    resource:\n      name: cpu\n      target: {{type: Utilization, averageUtilization: 50}}\n  behavior:\n    scaleDown:\n      stabilizationWindowSeconds: 5\n"
    )
}

/// The `kubectl get hpa` row of `name` (NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE):
/// the CPU utilization its TARGETS cell shows against 50 % (`cpu: 176%/50%`), and REPLICAS.
fn hpa_row(cloud: &Cloud, name: &str) -> (Option<u32>, Option<String>) {
    let line = cloud.kubectl_ok(&["get", "hpa", name, "--no-headers"]);
    let utilization = line
        .split_once("cpu: ")
        .and_then(|(_, rest)| rest.split_once("%/50%"))
        .and_then(|(n, _)| n.parse().ok());
    let cells: Vec<&str> = line.split_whitespace().collect();
    let replicas = cells.len().checked_sub(2).map(|i| cells[i].to_owned());
    (utilization, replicas)
}

/// The events of the HPA `name`: `reason: message` lines.
fn hpa_events(cloud: &Cloud, name: &str) -> String {
    cloud.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])
}

/// The HPA, its pods and their metrics, for a failure's message.
fn what_happened(cloud: &Cloud, name: &str) -> String {
    let show = |args: &[&str]| {
        let out = cloud.kubectl(args);
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    [
        show(&["describe", "hpa", name]),
        show(&["get", "pods", "-o", "wide"]),
        show(&["top", "pods"]),
    ]
    .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hpa_scales_a_deployment_of_wasm_pods_up_under_cpu_load_and_down_after() {
    let registry = registry_with_samples().await;
    push_misbehave(&registry).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start_with(
        &dir.path().join("cloud"),
        "127.0.0.1",
        &["--horizontal-pod-autoscaler-sync-period", "2s"],
    );
    let token = cloud.token("1h");
    let root = dir.path().join("edge-a");
    std::fs::create_dir_all(&root).expect("edge root");
    let mut command = edgecore(&root, &cloud, "edge-a", Some(&token), &registry.host());
    command.args(["--usage-interval", "1s"]);
    let edge = Proc::spawn(command, root.join("edgecore.log"));
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    let load_dir = dir.path().join("load");
    let load_dir = load_dir.to_str().expect("a UTF-8 path");
    let switch = std::path::Path::new(load_dir).join("on");

    cloud.apply(&load_deployment(
        "burn",
        &registry.host(),
        load_dir,
        "{requests: {cpu: 100m}}",
    ));
    cloud.apply(&hpa("burn"));
    // A Deployment whose pods ask for no CPU: no utilization can be computed.
    let idle_dir = dir.path().join("idle");
    let idle_dir = idle_dir.to_str().expect("a UTF-8 path");
    cloud.apply(&load_deployment(
        "norequests",
        &registry.host(),
        idle_dir,
        "{}",
    ));
    cloud.apply(&hpa("norequests"));

    // Idle: the HPA measures the pod and finds a replica count.
    let jsonpath = "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}";
    eventually(
        Duration::from_secs(60),
        || {
            cloud
                .kubectl(&["get", "hpa", "burn", "-o", jsonpath])
                .stdout
                == b"ValidMetricFound"
        },
        || what_happened(&cloud, "burn"),
    )
    .await;
    let status: serde_json::Value =
        serde_json::from_str(&cloud.kubectl_ok(&["get", "hpa", "burn", "-o", "json"]))
            .expect("HPA JSON");
    let current = &status["status"]["currentMetrics"][0];
    assert_eq!(current["type"], "Resource", "{status}");
    assert_eq!(current["resource"]["name"], "cpu", "{status}");
    assert!(
        current["resource"]["current"]["averageUtilization"].is_i64(),
        "{status}"
    );
    assert_eq!(status["status"]["currentReplicas"], 1, "{status}");

    // Load: every pod uses about 200 % of its request against a target of 50 %: up to the
    // maximum, 3.
    std::fs::create_dir_all(load_dir).expect("load dir");
    std::fs::write(&switch, b"on").expect("the load switch");
    cloud.wait_for(
        "deployment/burn",
        "{.spec.replicas}",
        "3",
        Duration::from_secs(90),
    );
    cloud.wait_for(
        "hpa/burn",
        "{.status.desiredReplicas}",
        "3",
        Duration::from_secs(30),
    );
    cloud.wait_for(
        "deployment/burn",
        "{.status.readyReplicas}",
        "3",
        Duration::from_secs(60),
    );
    let events = hpa_events(&cloud, "burn");
    assert!(
        events.contains(
            "SuccessfulRescale: New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );
    // kubectl's row: the utilization against the target, and the replicas.
    eventually(
        Duration::from_secs(30),
        || {
            let (utilization, replicas) = hpa_row(&cloud, "burn");
            utilization.is_some_and(|u| u > 55) && replicas.as_deref() == Some("3")
        },
        || format!("kubectl get hpa burn: {:?}", hpa_row(&cloud, "burn")),
    )
    .await;

    // The load stops: after the 5 s window, down to the minimum.
    std::fs::remove_file(&switch).expect("the load switch");
    cloud.wait_for(
        "deployment/burn",
        "{.spec.replicas}",
        "1",
        Duration::from_secs(90),
    );
    cloud.wait_for(
        "hpa/burn",
        "{.status.currentReplicas}/{.status.desiredReplicas}",
        "1/1",
        Duration::from_secs(30),
    );
    let events = hpa_events(&cloud, "burn");
    assert!(
        events.contains("SuccessfulRescale: New size: 1; reason: All metrics below target"),
        "{events}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&cloud.kubectl_ok(&["get", "hpa", "burn", "-o", "json"]))
            .expect("HPA JSON");
    assert!(status["status"]["lastScaleTime"].is_string(), "{status}");

    // Without requests: kube's condition and message, through kube-rs.
    let client = wedge_cli::kube_client(&cloud.kubeconfig())
        .await
        .expect("a kube client");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client, "default");
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let condition = loop {
        let hpa = hpas.get("norequests").await.expect("the HPA");
        let active = hpa
            .status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "ScalingActive"));
        if let Some(c) = active.as_ref().filter(|c| {
            c.message
                .as_deref()
                .is_some_and(|m| m.contains("missing request"))
        }) {
            break c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no FailedGetResourceMetric: {last:?}\n{}",
            edge.log()
        );
        last = active;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(condition.status, "False");
    assert_eq!(condition.reason.as_deref(), Some("FailedGetResourceMetric"));
    let message = condition.message.unwrap_or_default();
    assert!(
        message.starts_with(
            "the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container main of Pod norequests-"
        ),
        "{message}"
    );
    // The event is written behind the controller's work.
    let describe = || cloud.kubectl_ok(&["describe", "hpa", "norequests"]);
    eventually(
        Duration::from_secs(10),
        || describe().contains("FailedGetResourceMetric"),
        describe,
    )
    .await;
    cloud.wait_for(
        "deployment/norequests",
        "{.spec.replicas}",
        "1",
        Duration::from_secs(5),
    );
}
