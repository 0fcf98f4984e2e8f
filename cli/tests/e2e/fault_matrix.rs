//! The fault matrix (issue 19): a rollout over four edges, each behind a link with a fault of
//! its own, while a burst of device reports goes up from one of them and cloudcore and one
//! edgecore are killed in the middle of it; then convergence, nothing lost or doubled, and a
//! resync after the faults bounded by what changed.
//!
//! Latency, flapping and the cut come from [`FaultyLink`], a proxy in front of CloudHub: `tc
//! netem` is missing from these machines' kernels, so they are made in user space. Packet loss
//! is the kernel's: edge-d runs in a network namespace of its own ([`NetNs`]) and iptables
//! there drops 30% of its link's packets each way, which TCP meets with retransmits and backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use wedge_core::protocol::ResourceKind;
use wedge_testkit::netns::NetNs;

use super::support::*;

/// Pods in the rollout, as the issue asks.
const REPLICAS: usize = 300;
/// Devices on edge-b reporting in the burst, and reports each.
const DEVICES: usize = 10;
const REPORTS: usize = 50;

fn fleet(registry: &str, version: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: fleet\nspec:\n  replicas: {REPLICAS}\n  selector:\n    matchLabels: {{app: fleet}}\n  strategy:\n    rollingUpdate: {{maxSurge: 25%, maxUnavailable: 25%}}\n  template:\n    metadata:\n      labels: {{app: fleet}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        image: {registry}/samples/telemetry:1\n        env:\n        - {{name: INTERVAL_MS, value: \"5000\"}}\n        - {{name: VERSION, value: \"{version}\"}}\n"
    )
}

/// The fleet's pods as the API has them: name → (node, phase, VERSION).
fn pods(cloud: &Cloud) -> BTreeMap<String, (String, String, String)> {
    let out = cloud.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=fleet",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.spec.containers[0].env[1].value} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let name = parts.next()?.to_owned();
            let node = parts.next()?.to_owned();
            let phase = parts.next()?.to_owned();
            let version = parts.next()?.to_owned();
            let deleting = parts.next().is_some_and(|d| !d.is_empty());
            Some((
                name,
                (
                    node,
                    if deleting {
                        "Terminating".into()
                    } else {
                        phase
                    },
                    version,
                ),
            ))
        })
        .collect()
}

/// Whether the rollout to `version` is done: exactly the replicas, all of that version, all
/// Running, none terminating.
fn converged(pods: &BTreeMap<String, (String, String, String)>, version: &str) -> bool {
    pods.len() == REPLICAS
        && pods
            .values()
            .all(|(_, phase, v)| phase == "Running" && v == version)
}

/// A meter model and [`DEVICES`] meters on `node`, reporting a count over MQTT.
fn meters(node: &str) -> String {
    let mut yaml = "apiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata:\n  name: meter\nspec:\n  protocol: mqtt\n  properties:\n  - {name: count, type: INT, accessMode: ReadOnly, minimum: \"0\", maximum: \"100000\"}\n".to_owned();
    for i in 0..DEVICES {
        yaml.push_str(&format!(
            "---\napiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: meter-{i}\nspec:\n  deviceModelRef: {{name: meter}}\n  nodeName: {node}\n  protocol: {{protocolName: mqtt}}\n  properties:\n  - {{name: count, reportToCloud: true}}\n"
        ));
    }
    yaml
}

/// Each meter's reported count, as `kubectl` shows it (meters without one left out).
fn counts(cloud: &Cloud) -> BTreeMap<String, String> {
    cloud
        .kubectl_ok(&[
            "get",
            "devices",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.twins[?(@.propertyName==\"count\")].reported.value}{\"\\n\"}{end}",
        ])
        .lines()
        .filter_map(|l| {
            let (name, count) = l.split_once(' ')?;
            (!count.is_empty()).then(|| (name.to_owned(), count.to_owned()))
        })
        .collect()
}

/// The burst: every meter reports 1 to [`REPORTS`] in turn, as fast as the broker takes them,
/// through the edge's embedded broker at `port`.
async fn report_burst(port: u16) {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("meters", "127.0.0.1", port), 64);
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < DEVICES * REPORTS {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("the edge's broker dropped the meters: {e}"),
            }
        }
    });
    for n in 1..=REPORTS {
        for i in 0..DEVICES {
            let payload = format!(
                r#"{{"event_id":"burst-{i}-{n}","twin":{{"count":{{"actual":{{"value":"{n}"}}}}}}}}"#
            );
            client
                .publish(
                    format!("$hw/events/device/meter-{i}/twin/update"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("publish");
        }
    }
    tokio::time::timeout(Duration::from_secs(60), driver)
        .await
        .expect("the broker acknowledged every report within a minute")
        .expect("the meters' event loop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_over_faulty_links_with_kills_converges_with_nothing_lost_or_doubled() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = Cloud::start(&dir.path().join("cloud"));
    let nodes = ["edge-a", "edge-b", "edge-c", "edge-d"];
    // edge-d's own network: it reaches CloudHub and the registry only through listeners bound
    // inside (the registry at the address the pods name), its link to CloudHub lossy.
    let lossy = NetNs::new("lossy").expect("a network namespace");
    let registry_inside = lossy
        .listen(registry.host().parse().expect("registry address"))
        .expect("registry listener in the namespace");
    let _registry_link = FaultyLink::start_on(registry_inside, registry.host());
    let meters_bus = free_port();
    let mut links = Vec::new();
    let mut edges = Vec::new();
    for node in nodes {
        let link = Arc::new(if node == "edge-d" {
            let inside = lossy
                .listen("127.0.0.1:0".parse().expect("addr"))
                .expect("hub listener in the namespace");
            FaultyLink::start_on(inside, cloud.hub.clone())
        } else {
            FaultyLink::start(cloud.hub.clone()).await
        });
        let root = dir.path().join(node);
        std::fs::create_dir_all(&root).expect("edge root");
        let token = cloud.token("1h");
        let mut command = edgecore_at(&root, &link.addr, node, Some(&token), &registry.host());
        if node == "edge-b" {
            // The meters report through edge-b's broker.
            command
                .env("WEDGE_MQTT_LISTEN", format!("127.0.0.1:{meters_bus}"))
                .env("WEDGE_MQTT_ALLOW_ANONYMOUS", "true");
        }
        if node == "edge-d" {
            command = lossy.command(&command);
        }
        let edge = Proc::spawn(command, root.join("edgecore.log"));
        links.push(link);
        edges.push((root, edge));
    }
    for node in nodes {
        cloud.wait_for(
            &format!("node/{node}"),
            "{.status.conditions[?(@.type==\"Ready\")].status}",
            "True",
            Duration::from_secs(60),
        );
    }
    cloud.apply(&meters("edge-b"));
    eventually(
        Duration::from_secs(60),
        || held(&edges[1].0, ResourceKind::Device).len() == DEVICES,
        || format!("edge-b holds {:?}", held(&edges[1].0, ResourceKind::Device)),
    )
    .await;

    // The faults: 2 s of latency each way to edge-a, edge-b's link flapping (up 4 s, down 2 s),
    // 30% of edge-d's link's packets lost each way.
    links[0].set_latency(Duration::from_secs(2));
    links[1].flap(Duration::from_secs(4), Duration::from_secs(2));
    let hub_port = links[3]
        .addr
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("edge-d's link port");
    lossy.lose(hub_port, 0.3).expect("loss on edge-d's link");
    cloud.apply(&fleet(&registry.host(), 1));
    eventually(
        Duration::from_secs(240),
        || converged(&pods(&cloud), "1"),
        || format!("{:#?}", pods(&cloud)),
    )
    .await;
    let spread: BTreeSet<String> = pods(&cloud).values().map(|p| p.0.clone()).collect();
    assert_eq!(
        spread.len(),
        nodes.len(),
        "the fleet spans the edges: {spread:?}"
    );

    // The rollout, and in the middle of it: the meters' burst on edge-b, edge-c cut off,
    // cloudcore killed and started again, edge-a's edgecore killed (SIGKILL) and started again.
    cloud.apply(&fleet(&registry.host(), 2));
    eventually(
        Duration::from_secs(120),
        || pods(&cloud).values().any(|(_, _, v)| v == "2"),
        || format!("{:#?}", pods(&cloud)),
    )
    .await;
    let burst = tokio::spawn(report_burst(meters_bus));
    links[2].cut();
    cloud.restart();
    edges[0].1.kill();
    edges[0].1 = Proc::spawn(
        edgecore_at(
            &edges[0].0,
            &links[0].addr,
            "edge-a",
            None,
            &registry.host(),
        ),
        edges[0].0.join("edgecore.log"),
    );
    // edge-c stays away until the cloud has given up on it (its node no longer Ready), while
    // the rollout goes on elsewhere.
    eventually(
        Duration::from_secs(180),
        || {
            cloud.kubectl_ok(&[
                "get",
                "node/edge-c",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]) != "True"
        },
        || "edge-c is still Ready".to_owned(),
    )
    .await;
    links[2].restore();

    // Converged, with the faults still on.
    eventually(
        Duration::from_secs(300),
        || converged(&pods(&cloud), "2"),
        || format!("{:#?}", pods(&cloud)),
    )
    .await;

    // Every meter's last report reached its Device, through the flapping link and the cloud's
    // restart.
    burst.await.expect("the burst");
    let last = REPORTS.to_string();
    eventually(
        Duration::from_secs(120),
        || {
            let counts = counts(&cloud);
            counts.len() == DEVICES && counts.values().all(|c| *c == last)
        },
        || format!("the meters' counts: {:?}", counts(&cloud)),
    )
    .await;

    // Nothing lost or doubled: each edge holds exactly the pods bound to it, no leftover of the
    // first version, no pod twice; and every pod's status came from its edge.
    assert!(
        lossy.lost().expect("loss counters") > 0,
        "edge-d's link lost no packet"
    );
    lossy.heal().expect("loss removed");
    for link in &links {
        link.steady();
    }
    let bound = pods(&cloud);
    for (node, (root, _)) in nodes.iter().zip(&edges) {
        let want: BTreeSet<String> = bound
            .iter()
            .filter(|(_, (n, _, _))| n == node)
            .map(|(name, _)| name.clone())
            .collect();
        eventually(
            Duration::from_secs(60),
            || {
                let held: BTreeSet<String> = pods_held(root)
                    .into_keys()
                    .filter(|name| name.starts_with("fleet-"))
                    .collect();
                held == want
            },
            || format!("{node} holds {:?}, bound: {want:?}", pods_held(root)),
        )
        .await;
    }

    // The resync after a cut sends only what the edge does not hold: at most the objects that
    // differed between the edge and the cloud when the link was cut, and those changed since
    // (pod statuses the edges report come back as new versions), never everything again.
    let connected = |cloud: &Cloud| {
        wedge_testkit::metrics::sum(
            &scrape(&cloud.metrics),
            "wedge_cloudhub_connected_edges",
            &[],
        )
    };
    eventually(
        Duration::from_secs(60),
        || connected(&cloud) == nodes.len() as f64,
        || format!("{} edges connected", connected(&cloud)),
    )
    .await;
    let versions = |cloud: &Cloud| -> BTreeMap<String, (String, String)> {
        cloud
            .kubectl_ok(&[
                "get",
                "pods",
                "-l",
                "app=fleet",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.resourceVersion}{\"\\n\"}{end}",
            ])
            .lines()
            .filter_map(|l| {
                let mut p = l.split(' ');
                let name = p.next()?.to_owned();
                Some((name, (p.next()?.to_owned(), p.next()?.to_owned())))
            })
            .collect()
    };
    let before: Vec<(f64, f64)> = nodes
        .iter()
        .map(|n| {
            (
                cloud.metric("wedge_cloudhub_resyncs_total", n),
                cloud.metric("wedge_cloudhub_resync_frames_total", n),
            )
        })
        .collect();
    let held_before: Vec<BTreeMap<String, String>> =
        edges.iter().map(|(root, _)| pods_held(root)).collect();
    let api_before = versions(&cloud);
    for link in &links {
        link.cut();
        link.restore();
    }
    for (i, (node, (resyncs, frames))) in nodes.iter().zip(&before).enumerate() {
        eventually(
            Duration::from_secs(60),
            || cloud.metric("wedge_cloudhub_resyncs_total", node) > *resyncs,
            || format!("{node} did not resync"),
        )
        .await;
        let sent = cloud.metric("wedge_cloudhub_resync_frames_total", node) - frames;
        let api_after = versions(&cloud);
        let mine = |api: &BTreeMap<String, (String, String)>| -> BTreeMap<String, String> {
            api.iter()
                .filter(|(_, (n, _))| n == node)
                .map(|(name, (_, rv))| (name.clone(), rv.clone()))
                .collect()
        };
        let (then, now) = (mine(&api_before), mine(&api_after));
        let held: BTreeMap<String, String> = held_before[i]
            .iter()
            .filter(|(name, _)| name.starts_with("fleet-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Objects the edge lacked or held at another version at the cut, or changed since.
        let differing: BTreeSet<&String> = then
            .keys()
            .chain(now.keys())
            .chain(held.keys())
            .filter(|name| held.get(*name) != then.get(*name) || then.get(*name) != now.get(*name))
            .collect();
        assert!(
            sent <= differing.len() as f64,
            "{node}'s resync sent {sent} frames for {} changed objects of {}",
            differing.len(),
            now.len()
        );
        assert!(
            sent < now.len() as f64 || differing.len() == now.len(),
            "{node}'s resync sent everything again"
        );
    }
}
