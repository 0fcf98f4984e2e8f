//! The Endpoints and EndpointSlice controllers against the in-process API server, with pods
//! bound to nodes and their status written here as an edge writes it (phase, `podIP`, the
//! Ready condition), and what a user sees through kubectl: `kubectl get endpoints` and
//! `kubectl get endpointslices`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::controlplane::harness::{Cluster, eventually};
use crate::controlplane::nodes::register;

const WAIT: Duration = Duration::from_secs(30);

/// A cluster with two nodes (one in zone `zone-a`), no edges: the tests write pods' statuses.
struct Setup {
    cluster: Cluster,
    client: kube::Client,
    shutdown: CancellationToken,
    controllers: tokio::task::JoinHandle<Result<(), wedge_controlplane::ControllerEnded>>,
}

impl Setup {
    async fn start() -> Self {
        let cluster = Cluster::start().await;
        let client = cluster.client().await;
        register(
            &client,
            "edge-1",
            json!({"topology.kubernetes.io/zone": "zone-a"}),
            "4",
            json!({}),
        )
        .await;
        register(&client, "edge-2", json!({}), "4", json!({})).await;
        let (shutdown, controllers) = controllers(cluster.control_plane_clients().await);
        Self {
            cluster,
            client,
            shutdown,
            controllers,
        }
    }

    fn apply(&self, manifest: &str) {
        let out = self.cluster.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes pod `name` labelled `app` on `node`, with an `http` port `port`.
    async fn pod(&self, name: &str, app: &str, node: &str, port: i32) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.local/web:1",
                "ports": [{"name": "http", "containerPort": port}]}]},
        }))
        .expect("pod");
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("pod created");
    }

    /// Writes pod `name`'s status as its edge would: Running at `ip` (none: no IP yet), Ready
    /// or not since `since`.
    async fn status(&self, name: &str, ip: Option<&str>, ready: bool, since: &str) {
        let ready = if ready { "True" } else { "False" };
        let mut status = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": since},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": since},
        ]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        self.pods()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .expect("status written");
    }

    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.client.clone())
    }

    /// `kubectl get endpoints NAME -o json`, if they exist.
    fn endpoints(&self, name: &str) -> Option<Value> {
        let out = self
            .cluster
            .kubectl(&["get", "endpoints", name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("json"))
    }

    /// `kubectl get endpointslices -l kubernetes.io/service-name=NAME -o json`'s items.
    fn slices(&self, service: &str) -> Vec<Value> {
        let text = self.cluster.kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
            "-o",
            "json",
        ]);
        let list: Value = serde_json::from_str(&text).expect("json");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.controllers
            .await
            .expect("controllers stop")
            .expect("no controller ended on its own");
    }

    /// Stops the control plane and starts a new one, as a restart or a new leader does.
    async fn restart_controllers(&mut self) {
        self.shutdown.cancel();
        (&mut self.controllers)
            .await
            .expect("controllers stop")
            .expect("no controller ended on its own");
        (self.shutdown, self.controllers) = controllers(self.cluster.control_plane_clients().await);
    }
}

/// Starts the control plane.
fn controllers(
    clients: wedge_controlplane::Clients,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), wedge_controlplane::ControllerEnded>>,
) {
    let shutdown = CancellationToken::new();
    // No edge renews these nodes' leases: keep them Ready for the test's length.
    let config = wedge_controlplane::ControllersConfig {
        node_grace: Duration::from_secs(3600),
        ..Default::default()
    };
    let controllers = tokio::spawn(wedge_controlplane::run_controllers(
        clients,
        config,
        shutdown.clone(),
    ));
    (shutdown, controllers)
}

/// The resourceVersions of a Service's Endpoints and slices.
fn versions(setup: &Setup, service: &str) -> Vec<String> {
    let mut out: Vec<String> = setup
        .slices(service)
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["metadata"]["name"], s["metadata"]["resourceVersion"]
            )
        })
        .collect();
    out.sort();
    if let Some(e) = setup.endpoints(service) {
        out.push(e["metadata"]["resourceVersion"].to_string());
    }
    out
}

/// The ready and not-ready addresses of Endpoints, as `ip pod` each.
fn addresses(endpoints: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        for (field, set) in [
            ("addresses", &mut ready),
            ("notReadyAddresses", &mut not_ready),
        ] {
            for a in subset[field].as_array().into_iter().flatten() {
                set.insert(format!(
                    "{} {}",
                    a["ip"].as_str().unwrap_or_default(),
                    a["targetRef"]["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    (ready, not_ready)
}

/// The endpoints of slices, as `ip pod ready serving terminating` each.
fn slice_endpoints(slices: &[Value]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["conditions"];
            format!(
                "{} {} {} {} {}",
                e["addresses"][0].as_str().unwrap_or_default(),
                e["targetRef"]["name"].as_str().unwrap_or_default(),
                c["ready"],
                c["serving"],
                c["terminating"]
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

const WEB: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, labels: {tier: front}}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_list_their_pods_as_they_come_turn_ready_and_go() {
    let setup = Setup::start().await;
    setup.apply(WEB);
    setup.pod("a", "web", "edge-1", 8080).await;
    setup.pod("b", "web", "edge-2", 8080).await;
    setup.pod("c", "web", "edge-2", 8080).await;
    setup.pod("other", "db", "edge-1", 5432).await;
    setup
        .status("a", Some("10.1.0.1"), true, "2026-01-01T00:00:01Z")
        .await;
    setup
        .status("b", Some("10.1.0.2"), false, "2026-01-01T00:00:02Z")
        .await;
    // c has no IP yet; `other` is not selected.
    setup.status("c", None, false, "2026-01-01T00:00:03Z").await;
    setup
        .status("other", Some("10.1.0.9"), true, "2026-01-01T00:00:04Z")
        .await;

    // Endpoints: a ready, b not, the named port resolved, the Service's labels.
    eventually(WAIT, "endpoints of a and b", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| addresses(&e) == (set(&["10.1.0.1 a"]), set(&["10.1.0.2 b"])))
    })
    .await;
    let ep = setup.endpoints("web").expect("endpoints");
    assert_eq!(
        ep["subsets"][0]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(ep["metadata"]["labels"]["tier"], "front");
    let a = &ep["subsets"][0]["addresses"][0];
    assert_eq!(a["nodeName"], "edge-1");
    assert_eq!(a["targetRef"]["kind"], "Pod");
    assert!(
        ep["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
            .is_string(),
        "{ep}"
    );
    let out = setup.cluster.kubectl(&["get", "endpoints", "web"]);
    let (table, warning) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(table.contains("10.1.0.1:8080"), "{table}");
    // As kubectl 1.33 prints it against kube-apiserver 1.33.
    assert!(
        warning.contains(
            "Warning: v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"
        ),
        "{warning}"
    );
    assert!(!table.contains("10.1.0.2"), "not ready: {table}");

    // One slice: named after the Service, owned by it, labelled, with zone and conditions.
    eventually(WAIT, "a slice of a and b", || async {
        slice_endpoints(&setup.slices("web"))
            == set(&["10.1.0.1 a true true false", "10.1.0.2 b false false false"])
    })
    .await;
    let slices = setup.slices("web");
    assert_eq!(slices.len(), 1, "{slices:?}");
    let slice = &slices[0];
    assert!(
        slice["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("web-") && n.len() > 4),
        "{slice}"
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["labels"]["tier"], "front");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["name"], "web");
    let a = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["targetRef"]["name"] == "a")
        .expect("a");
    assert_eq!(a["zone"], "zone-a");
    assert_eq!(a["nodeName"], "edge-1");
    let table = setup.cluster.kubectl_ok(&["get", "endpointslices"]);
    assert!(
        table.contains("IPv4") && table.contains("8080") && table.contains("10.1.0.1,10.1.0.2"),
        "{table}"
    );

    // b turns Ready and c gets an IP: both listed; the trigger time is b's transition.
    setup
        .status("b", Some("10.1.0.2"), true, "2026-01-01T00:01:00Z")
        .await;
    eventually(WAIT, "b ready", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| addresses(&e) == (set(&["10.1.0.1 a", "10.1.0.2 b"]), BTreeSet::new()))
    })
    .await;
    setup
        .status("c", Some("10.1.0.3"), true, "2026-01-01T00:02:00Z")
        .await;
    eventually(WAIT, "c listed", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| addresses(&e).0.contains("10.1.0.3 c"))
            && slice_endpoints(&setup.slices("web")).contains("10.1.0.3 c true true false")
    })
    .await;
    let ep = setup.endpoints("web").expect("endpoints");
    assert_eq!(
        ep["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"],
        "2026-01-01T00:02:00Z"
    );

    // a is deleted: it leaves the Endpoints at once, stays in the slice as terminating until
    // its edge confirms, then leaves the slice.
    setup
        .pods()
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    eventually(WAIT, "a terminating", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| !format!("{e}").contains("10.1.0.1"))
            && slice_endpoints(&setup.slices("web")).contains("10.1.0.1 a false true true")
    })
    .await;
    setup
        .pods()
        .delete("a", &DeleteParams::default().grace_period(0))
        .await
        .expect("the edge confirms");
    eventually(WAIT, "a gone from the slice", || async {
        slice_endpoints(&setup.slices("web"))
            == set(&["10.1.0.2 b true true false", "10.1.0.3 c true true false"])
    })
    .await;

    // b's labels change: it leaves.
    setup
        .pods()
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "moved"}}})),
        )
        .await
        .expect("relabel b");
    eventually(WAIT, "b gone", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| addresses(&e) == (set(&["10.1.0.3 c"]), BTreeSet::new()))
            && slice_endpoints(&setup.slices("web")) == set(&["10.1.0.3 c true true false"])
    })
    .await;

    // Endpoints and slices deleted by hand come back.
    setup.cluster.kubectl_ok(&["delete", "endpoints", "web"]);
    setup.cluster.kubectl_ok(&[
        "delete",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    eventually(WAIT, "web's endpoints and slice back", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| addresses(&e) == (set(&["10.1.0.3 c"]), BTreeSet::new()))
            && slice_endpoints(&setup.slices("web")) == set(&["10.1.0.3 c true true false"])
    })
    .await;

    // A Service without a selector keeps the Endpoints its user wrote, and gets no slices.
    setup.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: manual}
subsets:
- addresses: [{ip: 192.168.7.7}]
  ports: [{port: 5432}]
"#,
    );
    // Another Service's Endpoints appearing shows the controllers have looked since.
    setup.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
"#,
    );
    eventually(WAIT, "db's endpoints and slice", || async {
        setup
            .endpoints("db")
            .is_some_and(|e| addresses(&e).0 == set(&["10.1.0.9 other"]))
            && slice_endpoints(&setup.slices("db")).len() == 1
    })
    .await;
    let manual = setup.endpoints("manual").expect("manual endpoints");
    assert_eq!(addresses(&manual).0, set(&["192.168.7.7 "]));
    assert!(setup.slices("manual").is_empty());

    // A Service deleted takes its Endpoints and slices with it.
    setup.cluster.kubectl_ok(&["delete", "service", "web"]);
    eventually(WAIT, "web's endpoints and slices gone", || async {
        setup.endpoints("web").is_none() && setup.slices("web").is_empty()
    })
    .await;
    let endpoints: Api<Endpoints> = Api::default_namespaced(setup.client.clone());
    assert!(
        endpoints.get_opt("manual").await.expect("get").is_some(),
        "the user's stay"
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pods_fill_slices_of_a_hundred_and_headless_services_get_hostnames() {
    let mut setup = Setup::start().await;
    setup.apply(WEB);
    let names: Vec<String> = (0..120).map(|i| format!("p{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        setup.pod(name, "web", "edge-2", 8080).await;
        setup
            .status(
                name,
                Some(&format!("10.2.0.{}", i + 1)),
                true,
                "2026-01-01T00:00:00Z",
            )
            .await;
    }
    eventually(WAIT, "120 endpoints in slices", || async {
        slice_endpoints(&setup.slices("web")).len() == 120
    })
    .await;
    let mut sizes: Vec<usize> = setup
        .slices("web")
        .iter()
        .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [20, 100]);
    eventually(WAIT, "120 addresses in the endpoints", || async {
        setup
            .endpoints("web")
            .is_some_and(|e| addresses(&e).0.len() == 120)
    })
    .await;

    // A headless Service over pods naming it as their subdomain, publishing not-ready ones.
    setup.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: db}
"#,
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db-0", "labels": {"app": "db"}},
        "spec": {"nodeName": "edge-1", "hostname": "db-0", "subdomain": "db",
            "containers": [{"name": "db", "image": "registry.local/db:1"}]},
    }))
    .expect("pod");
    setup
        .pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("db-0");
    setup
        .status("db-0", Some("10.3.0.1"), false, "2026-01-01T00:00:00Z")
        .await;
    eventually(WAIT, "db-0 with its hostname", || async {
        setup.endpoints("db").is_some_and(|e| {
            e["subsets"][0]["addresses"][0]["hostname"] == "db-0"
                && e["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
        }) && setup.slices("db").iter().any(|s| {
            s["endpoints"][0]["hostname"] == "db-0"
                && s["endpoints"][0]["conditions"]["ready"] == true
                && s["endpoints"][0]["conditions"]["serving"] == false
        })
    })
    .await;
    let table = setup.cluster.kubectl_ok(&["get", "endpoints", "db"]);
    assert!(table.contains("10.3.0.1"), "{table}");
    let slices: Api<EndpointSlice> = Api::default_namespaced(setup.client.clone());
    let all = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=db"))
        .await
        .expect("list");
    assert_eq!(all.items.len(), 1);

    // The control plane restarted (a new leader): nothing changed, so nothing is written, not
    // even while its stores load.
    let before = (versions(&setup, "web"), versions(&setup, "db"));
    setup.restart_controllers().await;
    setup.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: probe}
spec:
  selector: {app: nothing}
  ports: [{port: 1}]
"#,
    );
    eventually(WAIT, "the new control plane's first Endpoints", || async {
        setup.endpoints("probe").is_some() && setup.slices("probe").len() == 1
    })
    .await;
    assert_eq!((versions(&setup, "web"), versions(&setup, "db")), before);
    setup.stop().await;
}
