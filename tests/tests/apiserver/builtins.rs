//! Every built-in resource kube-apiserver v1.33 serves, through the real kubectl: discovery,
//! a chart's worth of manifests applied twice, the columns `kubectl get` prints, validation,
//! and the computed `componentstatuses`.

use crate::apiserver::harness::Cluster;

const SHOP: &str = include_str!("manifests/shop.yaml");

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_what_kube_apiserver_serves() {
    let cluster = Cluster::start().await;
    let listed = cluster.kubectl_ok(&["api-resources", "--no-headers", "-o", "name"]);
    let names: Vec<&str> = listed.lines().collect();
    for expected in [
        "bindings",
        "componentstatuses",
        "limitranges",
        "persistentvolumeclaims",
        "persistentvolumes",
        "podtemplates",
        "replicationcontrollers",
        "resourcequotas",
        "apiservices.apiregistration.k8s.io",
        "controllerrevisions.apps",
        "statefulsets.apps",
        "events.events.k8s.io",
        "horizontalpodautoscalers.autoscaling",
        "certificatesigningrequests.certificates.k8s.io",
        "ingressclasses.networking.k8s.io",
        "ingresses.networking.k8s.io",
        "ipaddresses.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        "servicecidrs.networking.k8s.io",
        "poddisruptionbudgets.policy",
        "csidrivers.storage.k8s.io",
        "csinodes.storage.k8s.io",
        "csistoragecapacities.storage.k8s.io",
        "storageclasses.storage.k8s.io",
        "volumeattachments.storage.k8s.io",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "validatingadmissionpolicies.admissionregistration.k8s.io",
        "validatingadmissionpolicybindings.admissionregistration.k8s.io",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
        "priorityclasses.scheduling.k8s.io",
        "endpointslices.discovery.k8s.io",
        "flowschemas.flowcontrol.apiserver.k8s.io",
        "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // Both autoscaling versions are served; v2 is the one clients prefer.
    let versions = cluster.kubectl_ok(&["api-versions"]);
    assert!(
        versions.lines().any(|v| v == "autoscaling/v1"),
        "{versions}"
    );
    assert!(
        versions.lines().any(|v| v == "autoscaling/v2"),
        "{versions}"
    );
    let group = cluster.kubectl_ok(&["get", "--raw", "/apis/autoscaling"]);
    assert!(
        group.contains(r#""preferredVersion":{"groupVersion":"autoscaling/v2""#),
        "{group}"
    );
    // Short names resolve as on Kubernetes.
    for short in [
        "sts", "pdb", "hpa", "pvc", "pv", "rc", "netpol", "sc", "pc", "ing", "quota", "limits",
    ] {
        let out = cluster.kubectl(&["get", short, "-A"]);
        assert!(out.status.success(), "kubectl get {short}: {}", text(&out));
    }
}

/// Every object of the chart with its resourceVersion.
fn resource_versions(cluster: &Cluster) -> String {
    let out = cluster.kubectl_stdin(
        &[
            "get",
            "-f",
            "-",
            "-o",
            "custom-columns=KIND:.kind,NAME:.metadata.name,RV:.metadata.resourceVersion",
        ],
        SHOP,
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chart_of_many_kinds_applies_twice_and_prints_as_on_kubernetes() {
    let cluster = Cluster::start().await;
    let first = cluster.kubectl_stdin(&["apply", "-f", "-"], SHOP);
    assert!(first.status.success(), "{}", text(&first));
    let created = String::from_utf8_lossy(&first.stdout).into_owned();
    let documents = SHOP.matches("\n---\n").count() + 1;
    assert_eq!(created.lines().count(), documents, "{created}");
    assert!(
        created.lines().all(|l| l.ends_with(" created")),
        "{created}"
    );
    // Applied again, nothing changes: the server's defaults and the stored objects agree with
    // what kubectl sent, and no object is written again. kubectl's client-side apply still
    // reports four as `configured`: its three-way patch always carries a field whose patch
    // strategy is `replace` (a PodDisruptionBudget's selector) and an atomic list the server
    // defaulted into (a LimitRange's limits, a StatefulSet's claim templates, a NetworkPolicy's
    // rules), which kube-apiserver defaults too (read from kubectl's strategic merge patch code;
    // not checked against a real kube-apiserver here), and the server finds nothing to change.
    let before = resource_versions(&cluster);
    let second = cluster.kubectl_stdin(&["apply", "-f", "-"], SHOP);
    assert!(second.status.success(), "{}", text(&second));
    let again = String::from_utf8_lossy(&second.stdout).into_owned();
    assert_eq!(again.lines().count(), documents, "{again}");
    let configured: Vec<&str> = again
        .lines()
        .filter(|l| !l.ends_with(" unchanged"))
        .collect();
    assert_eq!(
        configured,
        [
            "limitrange/defaults configured",
            "statefulset.apps/db configured",
            "poddisruptionbudget.policy/web configured",
            "networkpolicy.networking.k8s.io/web configured"
        ],
        "{again}"
    );
    assert_eq!(
        resource_versions(&cluster),
        before,
        "nothing is written again"
    );
    // Moving to server-side apply takes the fields over from the client-side manager without a
    // conflict (the values are the same); applied once more, nothing is written.
    let server_side = cluster.kubectl_stdin(&["apply", "--server-side", "-f", "-"], SHOP);
    assert!(server_side.status.success(), "{}", text(&server_side));
    let taken_over = resource_versions(&cluster);
    let again = cluster.kubectl_stdin(&["apply", "--server-side", "-f", "-"], SHOP);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        resource_versions(&cluster),
        taken_over,
        "server-side apply writes nothing again"
    );
    let diff = cluster.kubectl_stdin(&["diff", "-f", "-"], SHOP);
    assert_eq!(diff.status.code(), Some(0), "kubectl diff: {}", text(&diff));

    let hpa = cluster.kubectl_ok(&["-n", "shop", "get", "hpa"]);
    let mut lines = hpa.lines();
    assert_eq!(
        lines
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ])
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..6],
        ["web", "Deployment/web", "cpu:", "<unknown>/70%", "2", "6"],
        "{hpa}"
    );

    let pdb = cluster.kubectl_ok(&["-n", "shop", "get", "pdb", "--no-headers"]);
    assert_eq!(
        pdb.split_whitespace().take(4).collect::<Vec<_>>(),
        ["web", "1", "N/A", "0"]
    );
    let sts = cluster.kubectl_ok(&["-n", "shop", "get", "sts", "-o", "wide", "--no-headers"]);
    assert_eq!(
        sts.split_whitespace().collect::<Vec<_>>()[..2],
        ["db", "0/1"],
        "{sts}"
    );
    let pv = cluster.kubectl_ok(&["get", "pv", "--no-headers"]);
    assert_eq!(
        pv.split_whitespace().take(6).collect::<Vec<_>>(),
        ["shop-data", "1Gi", "RWO", "Retain", "Pending", "edge-local"],
        "{pv}"
    );
    let sc = cluster.kubectl_ok(&["get", "sc", "--no-headers"]);
    assert!(sc.starts_with("edge-local (default)"), "{sc}");
    let ingress = cluster.kubectl_ok(&["-n", "shop", "get", "ingress", "--no-headers"]);
    assert_eq!(
        ingress.split_whitespace().take(4).collect::<Vec<_>>(),
        ["web", "edge", "shop.example.com", "80"],
        "{ingress}"
    );
    // Defaults kube-apiserver fills are there to read.
    let policy_types = cluster.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "netpol",
        "web",
        "-o",
        "jsonpath={.spec.policyTypes}",
    ]);
    assert_eq!(policy_types, r#"["Ingress"]"#);
    let partition = cluster.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "sts",
        "db",
        "-o",
        "jsonpath={.spec.podManagementPolicy} {.spec.updateStrategy.rollingUpdate.partition}",
    ]);
    assert_eq!(partition, "OrderedReady 0");
    // `kubectl explain` reads the vendored definitions.
    let explain = cluster.kubectl_ok(&["explain", "pdb.spec.minAvailable"]);
    assert!(explain.contains("IntOrString"), "{explain}");

    let deleted = cluster.kubectl_stdin(&["delete", "-f", "-", "--wait=false"], SHOP);
    assert!(deleted.status.success(), "{}", text(&deleted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_of_the_new_kinds_are_refused_with_the_field() {
    let cluster = Cluster::start().await;
    let both = r#"{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "both"},
        "spec": {"minAvailable": 1, "maxUnavailable": 1}}"#;
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], both);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(r#"The PodDisruptionBudget "both" is invalid: spec: Invalid value"#)
            && text(&out).contains("minAvailable and maxUnavailable cannot be both set"),
        "{}",
        text(&out)
    );
    let hpa = r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 4, "maxReplicas": 2}}"#;
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], hpa);
    assert!(
        text(&out).contains(
            "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"
        ),
        "{}",
        text(&out)
    );
    let sts = r#"{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
        "spec": {"selector": {"matchLabels": {"app": "s"}}, "serviceName": "s",
                 "template": {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}"#;
    cluster.kubectl_stdin(&["create", "-f", "-"], sts);
    let out = cluster.kubectl(&[
        "patch",
        "sts",
        "s",
        "-p",
        r#"{"spec":{"serviceName":"other"}}"#,
    ]);
    assert!(
        text(&out).contains("spec: Forbidden: updates to statefulset spec for fields other than"),
        "{}",
        text(&out)
    );
    // Nothing of the refused objects was stored.
    let none = cluster.kubectl(&["get", "pdb,hpa", "--no-headers"]);
    assert!(none.stdout.is_empty(), "{}", text(&none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_statuses_and_bindings_are_served() {
    let cluster = Cluster::start().await;
    // No control plane runs beside this API server: its lease is held by no one.
    let cs = cluster.kubectl_ok(&["get", "componentstatuses"]);
    let rows: Vec<Vec<&str>> = cs
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["controller-manager", "Unhealthy"], "{cs}");
    assert_eq!(rows[1][..2], ["scheduler", "Unhealthy"], "{cs}");
    assert_eq!(rows[2][..3], ["storage", "Healthy", "ok"], "{cs}");
    let refused = cluster.kubectl(&["delete", "componentstatus", "storage"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("MethodNotAllowed") || text(&refused).contains("not allowed"),
        "{}",
        text(&refused)
    );

    // The older `bindings` collection assigns a pod as `pods/binding` does.
    cluster.kubectl_ok(&["run", "lone", "--image=registry.local/app:1"]);
    let binding = r#"{"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "lone"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "edge-1"}}"#;
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], binding);
    assert!(out.status.success(), "{}", text(&out));
    let node = cluster.kubectl_ok(&["get", "pod", "lone", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(node, "edge-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_object_is_read_and_written_through_each_of_its_versions() {
    let cluster = Cluster::start().await;
    cluster.kubectl_stdin(&["apply", "-f", "-"], SHOP);
    // Written as autoscaling/v2, read as v1: the CPU target is v1's field, the memory metric
    // v1 cannot say travels in its annotation.
    let hpa_v2 = r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "both", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 1, "maxReplicas": 4,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                             {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}}]}}"#;
    cluster.kubectl_stdin(&["create", "-f", "-"], hpa_v2);
    let cpu = cluster.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "both",
        "-o",
        "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage}",
    ]);
    assert_eq!(cpu, "autoscaling/v1 60");
    // A change made through v1 keeps what only v2 says.
    cluster.kubectl_ok(&[
        "-n",
        "shop",
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "both",
        "--type=merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":40,"maxReplicas":8}}"#,
    ]);
    let v2 = cluster.kubectl_ok(&[
        "-n", "shop", "get", "horizontalpodautoscalers.v2.autoscaling", "both", "-o",
        "jsonpath={.spec.maxReplicas} {.spec.metrics[*].resource.name} {.spec.metrics[0].resource.target.averageUtilization} {.metadata.annotations}",
    ]);
    assert_eq!(v2, "8 cpu memory 40 ", "{v2}");
    // kubectl autoscale, whichever version it writes, gives an HPA both versions read.
    cluster.kubectl_ok(&[
        "-n",
        "shop",
        "autoscale",
        "deployment",
        "web",
        "--name=auto",
        "--cpu-percent=50",
        "--max=3",
    ]);
    let auto = cluster.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "hpa",
        "auto",
        "-o",
        "jsonpath={.apiVersion} {.spec.metrics[0].resource.target.averageUtilization}",
    ]);
    assert_eq!(auto, "autoscaling/v2 50");

    // An Event recorded through events.k8s.io/v1 is a core Event, and the other way round.
    let recorded = r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.scaled", "namespace": "shop"},
        "eventTime": "2026-12-05T10:00:00.000000Z", "reportingController": "example.com/scaler",
        "reportingInstance": "scaler-1", "action": "Scale", "reason": "Scaled", "type": "Normal",
        "note": "scaled web to 3", "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web"}}"#;
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], recorded);
    assert!(out.status.success(), "{}", text(&out));
    let core = cluster.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "events.v1.",
        "web.scaled",
        "-o",
        "jsonpath={.apiVersion} {.message} {.involvedObject.kind} {.reportingComponent}",
    ]);
    assert_eq!(core, "v1 scaled web to 3 Deployment example.com/scaler");
    let listed = cluster.kubectl_ok(&["-n", "shop", "get", "events", "--no-headers"]);
    assert!(
        listed.contains("Scaled")
            && listed.contains("deployment/web")
            && listed.contains("scaled web to 3"),
        "{listed}"
    );
    let through_events = cluster.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "events.v1.events.k8s.io",
        "-o",
        "jsonpath={.items[*].note}",
    ]);
    assert_eq!(through_events, "scaled web to 3");
}

/// The Python client's `utils.create_from_yaml` of the chart: every kind has the client's typed
/// API and model, the second run reports each object as already there (409), and an invalid
/// document among valid ones is reported with its 422 while the rest are created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_creates_a_chart_from_yaml() {
    const SCRIPT: &str = r#"
import json, sys
from kubernetes import client, config, utils
config.load_kube_config(sys.argv[1])
api = client.ApiClient()
def run(path):
    try:
        created = utils.create_from_yaml(api, path)
        return {"created": sum(len(group) for group in created), "failures": []}
    except utils.FailToCreateError as e:
        return {"failures": [[f.status, json.loads(f.body)["reason"]] for f in e.api_exceptions]}
print(json.dumps([run(sys.argv[2]), run(sys.argv[2]), run(sys.argv[3])]))
"#;
    let cluster = Cluster::start().await;
    let chart = cluster.dir.path().join("shop.yaml");
    std::fs::write(&chart, SHOP).expect("chart written");
    let mixed = cluster.dir.path().join("mixed.yaml");
    std::fs::write(
        &mixed,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n  namespace: shop\n---\n\
         apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: broken\n  namespace: shop\n\
         spec:\n  minAvailable: 1\n  maxUnavailable: 1\n",
    )
    .expect("mixed written");
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(cluster.server.kubeconfig_path())
        .arg(&chart)
        .arg(&mixed)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", text(&out));
    let runs: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let documents = SHOP.matches("\n---\n").count() + 1;
    assert_eq!(runs[0]["created"], documents, "{runs}");
    assert_eq!(runs[0]["failures"], serde_json::json!([]), "{runs}");
    let again = runs[1]["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(again.len(), documents, "{runs}");
    assert!(
        again
            .iter()
            .all(|f| *f == serde_json::json!([409, "AlreadyExists"])),
        "{runs}"
    );
    assert_eq!(
        runs[2]["failures"],
        serde_json::json!([[422, "Invalid"]]),
        "{runs}"
    );
    let fine = cluster.kubectl_ok(&["-n", "shop", "get", "configmap", "fine", "-o", "name"]);
    assert_eq!(fine.trim(), "configmap/fine");
}
