//! Services get cluster IPs and node ports as on kube-apiserver: through kubectl and kube-rs,
//! the conflicts worded as kube words them, released on delete, the same after a restart and
//! after `kill -9`, and the `kubernetes` Service with its endpoints.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::apiserver::harness::{Cluster, client_for, eventually};

fn in_default_range(ip: &str) -> bool {
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return false;
    };
    let n = u32::from(ip);
    let net = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    n & 0xfff0_0000 == net && n != net && n != net | 0x000f_ffff
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn service(value: Value) -> Service {
    serde_json::from_value(value).expect("service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_cluster_ips_allocated_released_and_refused_as_kube_words_it() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = cluster.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(in_default_range(&ip), "{ip:?} in 10.96.0.0/12");
    let table = cluster.kubectl_ok(&["get", "svc", "web"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(&ip) && l.contains("80/TCP")),
        "{table}"
    );
    let svc: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "svc", "web", "-o", "json"]))
            .expect("json");
    assert_eq!(svc["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));
    // kube 1.33's IPAddress object names the Service.
    let parent = cluster.kubectl_ok(&[
        "get",
        "ipaddress",
        &ip,
        "-o",
        "jsonpath={.spec.parentRef.namespace}/{.spec.parentRef.name}",
    ]);
    assert_eq!(parent, "default/web");

    // Asking for a taken IP, one outside the range and the network address.
    let taken = cluster.kubectl(&[
        "create",
        "service",
        "clusterip",
        "copy",
        "--tcp=80",
        &format!("--clusterip={ip}"),
    ]);
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains(&format!(
            "Service \"copy\" is invalid: spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"
        )),
        "{}",
        stderr(&taken)
    );
    let outside = cluster.kubectl(&[
        "create",
        "service",
        "clusterip",
        "far",
        "--tcp=80",
        "--clusterip=192.168.7.7",
    ]);
    assert!(
        stderr(&outside).contains("failed to allocate IP 192.168.7.7: the provided network does not match the current range"),
        "{}",
        stderr(&outside)
    );
    let network = cluster.kubectl(&[
        "create",
        "service",
        "clusterip",
        "net",
        "--tcp=80",
        "--clusterip=10.96.0.0",
    ]);
    assert!(
        stderr(&network).contains(
            "failed to allocate IP 10.96.0.0: provided IP 10.96.0.0 is not in the valid range"
        ),
        "{}",
        stderr(&network)
    );

    // Headless and ExternalName Services get none.
    cluster.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ]);
    cluster.kubectl_ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ]);
    let table = cluster.kubectl_ok(&["get", "svc", "headless", "ext", "--no-headers"]);
    let mut rows = table.lines();
    assert!(
        rows.next()
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("None")),
        "{table}"
    );
    // An ExternalName Service has no cluster IP; kubectl shows the name it stands for.
    assert!(
        rows.next().is_some_and(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(2..4) == Some(&["<none>", "example.com"][..])
        }),
        "{table}"
    );

    // The IP is immutable, with kube's message.
    let changed = cluster.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"clusterIP":"10.96.77.77","clusterIPs":["10.96.77.77"]}}"#,
    ]);
    assert!(
        stderr(&changed).contains(
            "spec.clusterIPs[0]: Invalid value: [\"10.96.77.77\"]: may not change once set"
        ),
        "{}",
        stderr(&changed)
    );

    // Deleting frees it: the same IP is taken again, by name.
    cluster.kubectl_ok(&["delete", "svc", "web"]);
    let gone = cluster.kubectl(&["get", "ipaddress", &ip]);
    assert!(
        !gone.status.success(),
        "the IPAddress went with the Service"
    );
    cluster.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "again",
        "--tcp=80",
        &format!("--clusterip={ip}"),
    ]);

    // To ExternalName frees the IP; back to ClusterIP takes a new one.
    cluster.kubectl_ok(&[
        "patch",
        "svc",
        "again",
        "-p",
        r#"{"spec":{"type":"ExternalName","externalName":"example.com"}}"#,
    ]);
    let spec = cluster.kubectl_ok(&[
        "get",
        "svc",
        "again",
        "-o",
        "jsonpath={.spec.clusterIP}|{.spec.ipFamilies}",
    ]);
    assert_eq!(spec, "|");
    assert!(!cluster.kubectl(&["get", "ipaddress", &ip]).status.success());
    cluster.kubectl_ok(&[
        "patch",
        "svc",
        "again",
        "-p",
        r#"{"spec":{"type":"ClusterIP","externalName":null}}"#,
    ]);
    let back = cluster.kubectl_ok(&["get", "svc", "again", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(in_default_range(&back), "{back:?}");

    // An IPAddress a user made reserves its IP.
    cluster.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: networking.k8s.io/v1\nkind: IPAddress\nmetadata:\n  name: 10.96.0.50\nspec:\n  parentRef:\n    group: \"\"\n    resource: services\n    namespace: other\n    name: elsewhere\n",
    );
    let reserved = cluster.kubectl(&[
        "create",
        "service",
        "clusterip",
        "reserved",
        "--tcp=80",
        "--clusterip=10.96.0.50",
    ]);
    assert!(
        stderr(&reserved)
            .contains("failed to allocate IP 10.96.0.50: provided IP is already allocated"),
        "{}",
        stderr(&reserved)
    );

    // The kubernetes Service: the range's first IP, 443 to this server, at its address.
    let table = cluster.kubectl_ok(&["get", "svc", "kubernetes", "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(
        cols.get(1..5),
        Some(&["ClusterIP", "10.96.0.1", "<none>", "443/TCP"][..]),
        "{table}"
    );
    let port = cluster.server.local_addr().port();
    let address = cluster.server.advertise_address();
    let endpoints = cluster.kubectl_ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ]);
    assert_eq!(endpoints, format!("{address}:{port}"));
    let slice = cluster.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}",
    ]);
    assert_eq!(slice, format!("{address}:{port}"));
    let cidr = cluster.kubectl_ok(&[
        "get",
        "servicecidr",
        "kubernetes",
        "-o",
        "jsonpath={.spec.cidrs[0]}",
    ]);
    assert_eq!(cidr, "10.96.0.0/12");
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_kept_on_reapply_refused_when_taken_and_freed() {
    let cluster = Cluster::start().await;
    let services: Api<Service> = Api::namespaced(cluster.client().await, "default");
    let created = services
        .create(
            &PostParams::default(),
            &service(json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}})),
        )
        .await
        .expect("created");
    let spec = created.spec.expect("spec");
    let node_ports: Vec<i32> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect();
    assert_eq!(node_ports.len(), 2, "{node_ports:?}");
    assert!(
        node_ports.iter().all(|p| (30000..=32767).contains(p)),
        "{node_ports:?}"
    );
    assert_ne!(node_ports[0], node_ports[1]);
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));

    // A port taken, and one outside the range.
    let taken = services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "np2"}, "spec": {"type": "NodePort",
                "ports": [{"port": 80, "nodePort": node_ports[0]}]}}),
            ),
        )
        .await
        .expect_err("taken");
    let kube::Error::Api(status) = taken else {
        panic!("{taken:?}")
    };
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        format!(
            "Service \"np2\" is invalid: spec.ports[0].nodePort: Invalid value: {}: provided port is already allocated",
            node_ports[0]
        )
    );
    let outside = services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "np3"}, "spec": {"type": "NodePort",
                "ports": [{"port": 80, "nodePort": 80}]}}),
            ),
        )
        .await
        .expect_err("outside");
    assert!(
        outside.to_string().contains("spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{outside}"
    );

    // The same YAML applied again leaves the allocated values alone: unchanged.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: applied\nspec:\n  type: NodePort\n  ports:\n  - port: 8080\n";
    cluster.kubectl_stdin(&["apply", "-f", "-"], yaml);
    let first = cluster.kubectl_ok(&[
        "get",
        "svc",
        "applied",
        "-o",
        "jsonpath={.spec.clusterIP}/{.spec.ports[0].nodePort}",
    ]);
    let again = cluster.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("service/applied unchanged"),
        "{}",
        stderr(&again)
    );
    let second = cluster.kubectl_ok(&[
        "get",
        "svc",
        "applied",
        "-o",
        "jsonpath={.spec.clusterIP}/{.spec.ports[0].nodePort}",
    ]);
    assert_eq!(first, second);

    // A LoadBalancer keeping traffic local gets a health check port.
    let lb = services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer",
                "externalTrafficPolicy": "Local", "ports": [{"port": 443}]}}),
            ),
        )
        .await
        .expect("lb");
    let lb_spec = lb.spec.expect("spec");
    let health = lb_spec.health_check_node_port.expect("healthCheckNodePort");
    assert!((30000..=32767).contains(&health));
    assert_eq!(lb_spec.allocate_load_balancer_node_ports, Some(true));
    assert!(
        lb.status.and_then(|s| s.load_balancer).is_some(),
        "status.loadBalancer: {{}}"
    );

    // A load balancer's controller writes the status alone; kubectl shows its address.
    services
        .patch_status(
            "lb",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}),
            ),
        )
        .await
        .expect("status written");
    let row = cluster.kubectl_ok(&["get", "svc", "lb", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(3), Some(&"192.0.2.10"), "{row}");
    assert!(cols.get(4).is_some_and(|p| p.starts_with("443:")), "{row}");

    // To ClusterIP frees the node ports: another Service takes one.
    cluster.kubectl_ok(&[
        "patch",
        "svc",
        "np",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let ports = cluster.kubectl_ok(&[
        "get",
        "svc",
        "np",
        "-o",
        "jsonpath={.spec.ports[*].nodePort}",
    ]);
    assert_eq!(ports.trim(), "");
    services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "np2"}, "spec": {"type": "NodePort",
                "ports": [{"port": 80, "nodePort": node_ports[0]}]}}),
            ),
        )
        .await
        .expect("the freed port is taken again");
    // Deleting frees the health check port too.
    services
        .delete("lb", &DeleteParams::default())
        .await
        .expect("deleted");
    services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "np4"}, "spec": {"type": "NodePort",
                "ports": [{"port": 80, "nodePort": health}]}}),
            ),
        )
        .await
        .expect("the freed health check port is taken again");
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_range_says_so_and_allocations_survive_a_restart() {
    let small = |c: &mut wedge_apiserver::ServerConfig| {
        c.service_network.cluster_ip_range = "10.200.0.0/29".parse().expect("cidr");
    };
    let cluster = Cluster::start_with(small).await;
    let services: Api<Service> = Api::namespaced(cluster.client().await, "default");
    // Six addresses; the kubernetes Service holds the first. Five at once take the rest.
    let creates = (0..5).map(|i| {
        let services = services.clone();
        async move {
            services
                .create(
                    &PostParams::default(),
                    &service(json!({"metadata": {"name": format!("s{i}")}, "spec": {"ports": [{"port": 80}]}})),
                )
                .await
                .expect("created")
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("an IP")
        }
    });
    let mut ips = futures::future::join_all(creates).await;
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips,
        [
            "10.200.0.2",
            "10.200.0.3",
            "10.200.0.4",
            "10.200.0.5",
            "10.200.0.6"
        ]
    );
    let full = cluster.kubectl(&["create", "service", "clusterip", "more", "--tcp=80"]);
    assert!(
        stderr(&full)
            .contains("Internal error occurred: failed to allocate a serviceIP: range is full"),
        "{}",
        stderr(&full)
    );

    // After a restart on the same data, the range is still full, and what a delete frees is
    // what the next Service gets.
    let dir = cluster.dir;
    cluster.server.shutdown().await;
    let mut config =
        wedge_apiserver::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    small(&mut config);
    let server = wedge_apiserver::Server::start(config)
        .await
        .expect("restarts");
    let cluster = Cluster { server, dir };
    let full = cluster.kubectl(&["create", "service", "clusterip", "more", "--tcp=80"]);
    assert!(stderr(&full).contains("range is full"), "{}", stderr(&full));
    let s3 = cluster.kubectl_ok(&["get", "svc", "s3", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ips.contains(&s3), "{s3}");
    cluster.kubectl_ok(&["delete", "svc", "s3"]);
    cluster.kubectl_ok(&["create", "service", "clusterip", "more", "--tcp=80"]);
    let more = cluster.kubectl_ok(&["get", "svc", "more", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(more, s3, "the freed IP is the only one left");
    cluster.server.shutdown().await;
}

fn spawn_server(data: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wedge-apiserver-test"))
        .arg(data)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = wedge_testkit::wait::free_port();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let up = |services: Api<Service>| async move {
        eventually(Duration::from_secs(20), "the server to answer", || {
            let services = services.clone();
            async move { services.list(&Default::default()).await.is_ok() }
        })
        .await;
    };
    let mut server = spawn_server(dir.path(), port);
    eventually(Duration::from_secs(20), "the kubeconfig", || {
        let ready = kubeconfig.exists();
        async move { ready }
    })
    .await;
    let services: Api<Service> = Api::namespaced(client_for(&kubeconfig).await, "default");
    up(services.clone()).await;
    let created = services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "pinned"}, "spec": {"type": "NodePort",
                "clusterIP": "10.96.0.10", "ports": [{"port": 53, "nodePort": 30053}]}}),
            ),
        )
        .await
        .expect("created");
    assert_eq!(
        created.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.0.10")
    );
    server.kill().expect("kill -9");
    let _ = server.wait();

    let mut server = spawn_server(dir.path(), port);
    let services: Api<Service> = Api::namespaced(client_for(&kubeconfig).await, "default");
    up(services.clone()).await;
    let again = services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "copy"}, "spec": {"type": "NodePort",
                "clusterIP": "10.96.0.10", "ports": [{"port": 53, "nodePort": 30054}]}}),
            ),
        )
        .await
        .expect_err("the IP is still taken");
    assert!(
        again
            .to_string()
            .contains("provided IP is already allocated"),
        "{again}"
    );
    let port_again = services
        .create(
            &PostParams::default(),
            &service(
                json!({"metadata": {"name": "copy"}, "spec": {"type": "NodePort",
                "ports": [{"port": 53, "nodePort": 30053}]}}),
            ),
        )
        .await
        .expect_err("the node port is still taken");
    assert!(
        port_again
            .to_string()
            .contains("provided port is already allocated"),
        "{port_again}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The Python client reads what it would on kube-apiserver: the allocated IP and node port, and
/// a taken node port's 422 with its cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_sees_the_allocation_and_the_conflict() {
    const SCRIPT: &str = r#"
import json, sys
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
body = {"metadata": {"name": "py"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}
svc = v1.create_namespaced_service("default", body)
port = svc.spec.ports[0].node_port
out = {"ip": svc.spec.cluster_ip, "families": svc.spec.ip_families, "port": port,
       "kubernetes": v1.read_namespaced_service("kubernetes", "default").spec.cluster_ip}
try:
    v1.create_namespaced_service("default", {"metadata": {"name": "py2"}, "spec": {
        "type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}})
except ApiException as e:
    status = json.loads(e.body)
    out["conflict"] = [e.status, status["reason"], status["details"]["causes"][0]["field"]]
print(json.dumps(out))
"#;
    let cluster = Cluster::start().await;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(cluster.server.kubeconfig_path())
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(seen["ip"].as_str().is_some_and(in_default_range), "{seen}");
    assert_eq!(seen["families"], json!(["IPv4"]));
    assert!(
        seen["port"]
            .as_i64()
            .is_some_and(|p| (30000..=32767).contains(&p)),
        "{seen}"
    );
    assert_eq!(seen["kubernetes"], "10.96.0.1");
    assert_eq!(
        seen["conflict"],
        json!([422, "Invalid", "spec.ports[0].nodePort"])
    );
    cluster.server.shutdown().await;
}
