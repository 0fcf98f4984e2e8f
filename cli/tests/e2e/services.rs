//! Services over pods on a real edge: a Deployment of Wasm pods gets Endpoints and an
//! EndpointSlice listing its Ready pods' IPs (a Wasm pod's IP is its node's), the named
//! `targetPort` resolved to the pods' container port, and a pod that goes away leaves them,
//! as `kubectl get endpoints` and `kubectl get endpointslices` show it. cloudcore runs the
//! embedded API server and control plane; edgecore runs the pods and reports their readiness.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::OneEdge;

/// A Deployment `web` of `replicas` idle `misbehave` pods declaring an `http` port 8080, and a
/// Service `web` over them.
fn web(registry: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {registry}/samples/misbehave:1
        command: [misbehave, sleep]
        ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

fn jsonpath(env: &OneEdge, object: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(object);
    let path = format!("jsonpath={path}");
    args.extend(["-o", &path]);
    let out = env.cloud.kubectl(&args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip pod` of each pod the Endpoints list as ready.
fn endpoints(env: &OneEdge) -> BTreeSet<String> {
    words(jsonpath(
        env,
        &["endpoints", "web"],
        "{range .subsets[*].addresses[*]}{.ip} {.targetRef.name}{\"\\n\"}{end}",
    ))
}

/// `ip pod ready` of each endpoint in the Service's slices.
fn slices(env: &OneEdge) -> BTreeSet<String> {
    words(jsonpath(
        env,
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        "{range .items[*].endpoints[*]}{.addresses[0]} {.targetRef.name} {.conditions.ready}{\"\\n\"}{end}",
    ))
}

/// `ip pod` of each Ready pod of the Deployment.
fn ready_pods(env: &OneEdge) -> BTreeSet<String> {
    let all = jsonpath(
        env,
        &["pods", "-l", "app=web"],
        "{range .items[*]}{.status.podIP} {.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    );
    words(all)
        .into_iter()
        .filter_map(|l| l.strip_suffix(" True").map(str::to_owned))
        .collect()
}

fn words(text: String) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until `check` holds, showing the Service's objects and the pods if it never does.
fn until(env: &OneEdge, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            let state = env
                .cloud
                .kubectl(&["get", "pods,endpoints,endpointslices", "-o", "yaml"]);
            panic!(
                "{what}: never\n{}\ncloudcore: {}",
                String::from_utf8_lossy(&state.stdout),
                env.cloud.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_over_wasm_pods_lists_the_ready_ones_and_drops_those_that_go() {
    let env = OneEdge::start().await;
    let minute = Duration::from_secs(60);
    env.cloud.apply(&web(&env.registry.host(), 2));

    // Two Ready pods on edge-a: both in the Endpoints and the slice, at their reported IPs.
    until(&env, "two ready pods", minute, || {
        ready_pods(&env).len() == 2
    });
    let ready = ready_pods(&env);
    until(&env, "endpoints of the two pods", minute, || {
        endpoints(&env) == ready
    });
    let in_slices: BTreeSet<String> = ready.iter().map(|p| format!("{p} true")).collect();
    until(&env, "a slice of the two pods", minute, || {
        slices(&env) == in_slices
    });
    let ip = ready
        .iter()
        .next()
        .and_then(|p| p.split(' ').next())
        .unwrap_or_default()
        .to_owned();
    assert!(!ip.is_empty(), "{ready:?}");

    // As a user sees them.
    let table = env.cloud.kubectl_ok(&["get", "endpoints", "web"]);
    assert!(table.contains("ENDPOINTS"), "{table}");
    assert!(
        table.contains(&format!("{ip}:8080,{ip}:8080")),
        "both pods' addresses, with the container port: {table}"
    );
    let table = env.cloud.kubectl_ok(&["get", "endpointslices"]);
    assert!(
        table.lines().any(|l| l.starts_with("web-")
            && l.contains("IPv4")
            && l.contains("8080")
            && l.contains(&format!("{ip},{ip}"))),
        "{table}"
    );
    let node = jsonpath(
        &env,
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        "{.items[0].endpoints[0].nodeName} {.items[0].metadata.ownerReferences[0].kind}",
    );
    assert_eq!(node, "edge-a Service");

    // Scaled to one: the pod that goes leaves both.
    env.cloud
        .kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    until(&env, "one pod left", minute, || {
        jsonpath(
            &env,
            &["pods", "-l", "app=web"],
            "{.items[*].metadata.name}",
        )
        .split_whitespace()
        .count()
            == 1
    });
    let left = ready_pods(&env);
    assert_eq!(left.len(), 1, "{left:?}");
    until(&env, "endpoints of the pod left", minute, || {
        endpoints(&env) == left
    });
    let in_slices: BTreeSet<String> = left.iter().map(|p| format!("{p} true")).collect();
    until(&env, "a slice of the pod left", minute, || {
        slices(&env) == in_slices
    });

    // The Service deleted: its Endpoints and slices go with it.
    env.cloud.kubectl_ok(&["delete", "service", "web"]);
    env.cloud.wait_gone("endpoints/web", minute);
    until(&env, "no slices", minute, || {
        jsonpath(
            &env,
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            "{.items[*].metadata.name}",
        )
        .trim()
        .is_empty()
    });
}
