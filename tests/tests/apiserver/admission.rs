//! Pod admission through the real kubectl: PriorityClasses, LimitRanges and ResourceQuotas act
//! on new pods as kube-apiserver's admission plugins do, with their refusals' wording.

use crate::apiserver::harness::Cluster;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pod(name: &str, spec_extra: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "team"}},
            "spec": {{{spec_extra}"containers": [{{"name": "app", "image": "registry.local/app:1"}}]}}}}"#
    )
}

fn pod_with(name: &str, spec_extra: &str, resources: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "team"}},
            "spec": {{{spec_extra}"containers": [{{"name": "app", "image": "registry.local/app:1", "resources": {resources}}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_classes_give_pods_their_priority() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "namespace", "team"]);
    let system = cluster.kubectl_ok(&["get", "priorityclasses", "--no-headers"]);
    let names: Vec<&str> = system
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["system-cluster-critical", "system-node-critical"],
        "{system}"
    );
    cluster.kubectl_ok(&[
        "create",
        "priorityclass",
        "high",
        "--value=1000",
        "--preemption-policy=Never",
    ]);
    cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("urgent", r#""priorityClassName": "high", "#),
    );
    let set = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "pod",
        "urgent",
        "-o",
        "jsonpath={.spec.priority} {.spec.preemptionPolicy}",
    ]);
    assert_eq!(set, "1000 Never");
    let unknown = cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("lost", r#""priorityClassName": "nope", "#),
    );
    assert!(
        text(&unknown)
            .contains(r#"pods "lost" is forbidden: no PriorityClass with name nope was found"#),
        "{}",
        text(&unknown)
    );
    // A global default class is what a pod without a class gets.
    cluster.kubectl_ok(&[
        "create",
        "priorityclass",
        "normal",
        "--value=10",
        "--global-default",
    ]);
    cluster.kubectl_stdin(&["create", "-f", "-"], &pod("plain", ""));
    let plain = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "pod",
        "plain",
        "-o",
        "jsonpath={.spec.priorityClassName} {.spec.priority}",
    ]);
    assert_eq!(plain, "normal 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_containers() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "namespace", "team"]);
    let range = r#"{"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "bounds", "namespace": "team"},
        "spec": {"limits": [{"type": "Container", "default": {"memory": "128Mi"}, "max": {"memory": "256Mi", "cpu": "1"}}]}}"#;
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], range);
    assert!(out.status.success(), "{}", text(&out));
    // Defaulted as kube-apiserver stores it: the default request is the default limit, the
    // default limit of cpu is its max.
    let stored = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "limitrange",
        "bounds",
        "-o",
        "jsonpath={.spec.limits[0].default.cpu} {.spec.limits[0].defaultRequest.memory}",
    ]);
    assert_eq!(stored, "1 128Mi");
    cluster.kubectl_stdin(&["create", "-f", "-"], &pod("bare", ""));
    let bare = cluster.kubectl_ok(&[
        "-n", "team", "get", "pod", "bare", "-o",
        r#"jsonpath={.spec.containers[0].resources.limits.memory} {.spec.containers[0].resources.requests.cpu} {.metadata.annotations.kubernetes\.io/limit-ranger}"#,
    ]);
    assert_eq!(
        bare,
        "128Mi 1 LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );
    let big = cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod_with("big", "", r#"{"limits": {"memory": "1Gi", "cpu": "500m"}}"#),
    );
    assert!(!big.status.success());
    assert!(
        text(&big).contains(
            r#"pods "big" is forbidden: maximum memory usage per Container is 256Mi, but limit is 1Gi"#
        ),
        "{}",
        text(&big)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_count_pods_and_refuse_what_exceeds_them() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "namespace", "team"]);
    cluster.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "quota",
        "small",
        "--hard=pods=2,requests.cpu=1",
    ]);
    // The quota's status is there at once.
    let status = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "quota",
        "small",
        "-o",
        "jsonpath={.status.used.pods} {.status.used.requests\\.cpu}",
    ]);
    assert_eq!(status, "0 0");
    let needs_cpu = cluster.kubectl_stdin(&["create", "-f", "-"], &pod("vague", ""));
    assert!(
        text(&needs_cpu).contains(
            r#"pods "vague" is forbidden: failed quota: small: must specify requests.cpu for: app"#
        ),
        "{}",
        text(&needs_cpu)
    );
    let cpu = |m: &str| format!(r#"{{"requests": {{"cpu": "{m}"}}}}"#);
    for (name, m) in [("one", "400m"), ("two", "400m")] {
        let out = cluster.kubectl_stdin(&["create", "-f", "-"], &pod_with(name, "", &cpu(m)));
        assert!(out.status.success(), "{}", text(&out));
    }
    let used = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "quota",
        "small",
        "-o",
        "jsonpath={.status.used.pods} {.status.used.requests\\.cpu}",
    ]);
    assert_eq!(used, "2 800m");
    let third = cluster.kubectl_stdin(&["create", "-f", "-"], &pod_with("three", "", &cpu("100m")));
    assert!(
        text(&third).contains(
            r#"pods "three" is forbidden: exceeded quota: small, requested: pods=1, used: pods=2, limited: pods=2"#
        ),
        "{}",
        text(&third)
    );
    // A pod that finished no longer counts; nor does one deleted.
    cluster.kubectl_ok(&[
        "-n",
        "team",
        "patch",
        "pod",
        "one",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    let after_finish = cluster.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "quota",
        "small",
        "-o",
        "jsonpath={.status.used.pods} {.status.used.requests\\.cpu}",
    ]);
    assert_eq!(after_finish, "1 400m");
    let too_much = cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod_with("greedy", "", &cpu("700m")),
    );
    assert!(
        text(&too_much).contains("exceeded quota: small, requested: requests.cpu=700m, used: requests.cpu=400m, limited: requests.cpu=1"),
        "{}",
        text(&too_much)
    );
    cluster.kubectl_ok(&["-n", "team", "delete", "pod", "two", "--wait=false"]);
    let out = cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod_with("greedy", "", &cpu("700m")),
    );
    assert!(out.status.success(), "{}", text(&out));
    let table = cluster.kubectl_ok(&["-n", "team", "get", "quota", "small", "--no-headers"]);
    assert!(table.contains("pods: 1/2, requests.cpu: 700m/1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_count_objects_of_every_kind() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "namespace", "team"]);
    cluster.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "quota",
        "objects",
        "--hard=configmaps=2,count/deployments.apps=1,services.nodeports=1,requests.storage=1Gi",
    ]);
    let used = || {
        cluster.kubectl_ok(&[
            "-n",
            "team",
            "get",
            "quota",
            "objects",
            "-o",
            "jsonpath={.status.used.configmaps} {.status.used.count/deployments\\.apps} \
             {.status.used.services\\.nodeports} {.status.used.requests\\.storage}",
        ])
    };
    assert_eq!(used(), "0 0 0 0");
    // A ConfigMap of a namespace: charged as it is created, refused past the limit.
    cluster.kubectl_ok(&["-n", "team", "create", "configmap", "a"]);
    cluster.kubectl_ok(&["-n", "team", "create", "configmap", "b"]);
    let third = cluster.kubectl(&["-n", "team", "create", "configmap", "c"]);
    assert!(
        text(&third).contains(
            r#"configmaps "c" is forbidden: exceeded quota: objects, requested: configmaps=1, used: configmaps=2, limited: configmaps=2"#
        ),
        "{}",
        text(&third)
    );
    // A kind with a group, counted as `count/<resource>.<group>`.
    cluster.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "deployment",
        "web",
        "--image=registry.local/app:1",
    ]);
    let second = cluster.kubectl(&[
        "-n",
        "team",
        "create",
        "deployment",
        "api",
        "--image=registry.local/app:1",
    ]);
    assert!(
        text(&second).contains(
            r#"deployments.apps "api" is forbidden: exceeded quota: objects, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"#
        ),
        "{}",
        text(&second)
    );
    // A NodePort Service takes a node port per port.
    let two_ports = cluster.kubectl(&[
        "-n",
        "team",
        "create",
        "service",
        "nodeport",
        "wide",
        "--tcp=80:8080,443:8443",
    ]);
    assert!(
        text(&two_ports).contains("exceeded quota: objects, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"),
        "{}",
        text(&two_ports)
    );
    cluster.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "service",
        "nodeport",
        "narrow",
        "--tcp=80:8080",
    ]);
    // Claims charge the storage they request.
    let claim = |name: &str, size: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {{"name": "{name}", "namespace": "team"}},
                "spec": {{"accessModes": ["ReadWriteOnce"], "resources": {{"requests": {{"storage": "{size}"}}}}}}}}"#
        )
    };
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], &claim("data", "512Mi"));
    assert!(out.status.success(), "{}", text(&out));
    let big = cluster.kubectl_stdin(&["create", "-f", "-"], &claim("more", "1Gi"));
    assert!(
        text(&big).contains("exceeded quota: objects, requested: requests.storage=1Gi, used: requests.storage=512Mi, limited: requests.storage=1Gi"),
        "{}",
        text(&big)
    );
    assert_eq!(used(), "2 1 1 512Mi");
    // Deleting frees what the object held.
    cluster.kubectl_ok(&["-n", "team", "delete", "configmap", "a"]);
    cluster.kubectl_ok(&["-n", "team", "create", "configmap", "c"]);
    cluster.kubectl_ok(&["-n", "team", "delete", "deployment", "web", "--wait=false"]);
    cluster.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "deployment",
        "api",
        "--image=registry.local/app:1",
    ]);
    assert_eq!(used(), "2 1 1 512Mi");
}
