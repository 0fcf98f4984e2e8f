//! Resource usage: what an edge samples (the `usage` frame's payload) and the rates the cloud
//! derives from two samples, for `kubectl top` and Prometheus.
//!
//! An edge sends cumulative figures (CPU time since boot or since a container started, and the
//! memory working set now), each with the time it was read, as the kubelet's
//! `/metrics/resource` does. A CPU *rate* needs two of them: the cloud keeps an edge's last two
//! samples and [`rate`] divides the CPU used between them by the time between them, exactly as
//! metrics-server does with two scrapes of a kubelet. [`NodeUsage::between`] applies that to a
//! node and its pods, with metrics-server's rules: a container whose instance changed (it
//! restarted: its counter began again) has no rate yet, and a pod is left out until every one of
//! its containers has one, so a pod never shows a partial sum.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One reading: CPU used so far and the working set, at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// When it was read, in milliseconds since the epoch (the edge's clock).
    pub time: i64,
    /// CPU time used, cumulative, in core-nanoseconds.
    pub cpu_nanos: u64,
    /// The memory working set, in bytes.
    pub memory_bytes: u64,
}

/// One container's reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSample {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid: a pod deleted and created again under its name is another pod.
    pub uid: String,
    /// The container's name.
    pub container: String,
    /// The runtime's id of the instance read: a restarted container is another instance, whose
    /// CPU counter started again from zero.
    pub id: String,
    /// The figures.
    #[serde(flatten)]
    pub measurement: Measurement,
}

/// Edge → cloud, the payload of a `usage` frame: the node's figures and those of every running
/// container of every runtime, read together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSample {
    /// The node's, when the edge could read them (`/proc/stat`, `/proc/meminfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Measurement>,
    /// Every running container's.
    #[serde(default)]
    pub containers: Vec<ContainerSample>,
}

/// A rate over a window, as metrics-server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The newer reading's time, in milliseconds since the epoch.
    pub time: i64,
    /// The time between the two readings, in milliseconds.
    pub window_ms: i64,
    /// CPU used over the window, in billionths of a core.
    pub cpu_nano_cores: u64,
    /// The newer reading's working set, in bytes.
    pub memory_bytes: u64,
}

impl Usage {
    /// CPU in cores.
    pub fn cpu_cores(&self) -> f64 {
        self.cpu_nano_cores as f64 / 1e9
    }
}

/// The usage between two readings of one thing: `None` when `last` is not after `prev`, or
/// its CPU counter went backwards (metrics-server's "unexpected decrease in cumulative CPU
/// usage value": the thing restarted, so the two readings are of different lives).
pub fn rate(prev: &Measurement, last: &Measurement) -> Option<Usage> {
    let window_ms = last.time.checked_sub(prev.time).filter(|w| *w > 0)?;
    let used = last.cpu_nanos.checked_sub(prev.cpu_nanos)?;
    // ns per ms × 1000 = ns per s = nano-cores; u128 so that no product overflows.
    let nano_cores = u128::from(used) * 1000 / u128::from(window_ms.unsigned_abs());
    Some(Usage {
        time: last.time,
        window_ms,
        cpu_nano_cores: u64::try_from(nano_cores).unwrap_or(u64::MAX),
        memory_bytes: last.memory_bytes,
    })
}

/// One container's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    /// The container's name.
    pub name: String,
    /// Its usage.
    #[serde(flatten)]
    pub usage: Usage,
}

/// One pod's usage: every container it runs has a rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The uid.
    pub uid: String,
    /// The earliest of its containers' times, and that container's window (metrics-server's
    /// choice: the pod is as fresh as its stalest container).
    pub time: i64,
    /// See `time`.
    pub window_ms: i64,
    /// Its containers, by name.
    pub containers: Vec<ContainerUsage>,
}

/// A node's usage and its pods', from its last two samples: what CloudStream answers the API
/// server with (`GET /nodes/{node}/usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    /// The node.
    pub node: String,
    /// The node's own usage, when both samples had its figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The pods whose every running container has a rate, by namespace and name.
    #[serde(default)]
    pub pods: Vec<PodUsage>,
}

impl NodeUsage {
    /// The usage of `node` between its samples `prev` and `last`.
    pub fn between(node: &str, prev: &UsageSample, last: &UsageSample) -> Self {
        let usage = match (&prev.node, &last.node) {
            (Some(p), Some(l)) => rate(p, l),
            _ => None,
        };
        let before: HashMap<(&str, &str, &str), &ContainerSample> = prev
            .containers
            .iter()
            .map(|c| ((c.uid.as_str(), c.container.as_str(), c.id.as_str()), c))
            .collect();
        // Per pod (by uid), in the order the edge listed them: its containers' rates, or `None`
        // once one of them has none.
        let mut order: Vec<&str> = Vec::new();
        let mut pods: HashMap<&str, Option<PodUsage>> = HashMap::new();
        for c in &last.containers {
            let entry = pods.entry(c.uid.as_str()).or_insert_with(|| {
                order.push(c.uid.as_str());
                Some(PodUsage {
                    namespace: c.namespace.clone(),
                    name: c.pod.clone(),
                    uid: c.uid.clone(),
                    time: i64::MAX,
                    window_ms: 0,
                    containers: Vec::new(),
                })
            });
            let Some(pod) = entry else { continue };
            let rated = before
                .get(&(c.uid.as_str(), c.container.as_str(), c.id.as_str()))
                .and_then(|p| rate(&p.measurement, &c.measurement));
            match rated {
                Some(usage) => {
                    if usage.time < pod.time {
                        pod.time = usage.time;
                        pod.window_ms = usage.window_ms;
                    }
                    pod.containers.push(ContainerUsage {
                        name: c.container.clone(),
                        usage,
                    });
                }
                None => *entry = None,
            }
        }
        Self {
            node: node.to_owned(),
            usage,
            pods: order
                .into_iter()
                .filter_map(|uid| pods.remove(uid).flatten())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(time: i64, cpu_nanos: u64, memory_bytes: u64) -> Measurement {
        Measurement {
            time,
            cpu_nanos,
            memory_bytes,
        }
    }

    fn c(pod: &str, container: &str, id: &str, measurement: Measurement) -> ContainerSample {
        ContainerSample {
            namespace: "default".into(),
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            container: container.into(),
            id: id.into(),
            measurement,
        }
    }

    #[test]
    fn a_rate_is_cpu_used_over_the_window_as_metrics_server_computes_it() {
        // Half a core for 15 s: 7.5 s of CPU.
        let usage =
            rate(&m(1_000, 2_000_000_000, 1), &m(16_000, 9_500_000_000, 4096)).expect("a rate");
        assert_eq!(
            usage,
            Usage {
                time: 16_000,
                window_ms: 15_000,
                cpu_nano_cores: 500_000_000,
                memory_bytes: 4096
            }
        );
        assert!((usage.cpu_cores() - 0.5).abs() < 1e-9);
        // A counter that went back (a restart) and a window that is not one give nothing.
        assert_eq!(rate(&m(0, 10, 1), &m(1_000, 5, 1)), None);
        assert_eq!(rate(&m(1_000, 0, 1), &m(1_000, 5, 1)), None);
        assert_eq!(rate(&m(2_000, 0, 1), &m(1_000, 5, 1)), None);
        // Huge figures do not overflow.
        let huge = rate(&m(0, 0, 0), &m(1, u64::MAX, 0)).expect("a rate");
        assert_eq!(huge.cpu_nano_cores, u64::MAX);
    }

    #[test]
    fn pods_are_reported_only_when_every_container_has_a_rate() {
        let prev = UsageSample {
            node: Some(m(0, 0, 100)),
            containers: vec![
                c("web", "app", "a1", m(0, 0, 10)),
                c("web", "sidecar", "s1", m(0, 0, 10)),
                c("db", "main", "d1", m(0, 0, 10)),
            ],
        };
        let last = UsageSample {
            node: Some(m(10_000, 20_000_000_000, 200)),
            containers: vec![
                c("web", "app", "a1", m(10_000, 1_000_000_000, 30)),
                c("web", "sidecar", "s1", m(9_000, 90_000_000, 40)),
                // Restarted: another instance, its counter from zero.
                c("db", "main", "d2", m(10_000, 5, 10)),
                // New since the last sample.
                c("fresh", "main", "f1", m(10_000, 5, 10)),
            ],
        };
        let usage = NodeUsage::between("edge-a", &prev, &last);
        assert_eq!(usage.node, "edge-a");
        let node = usage.usage.expect("the node's rate");
        assert_eq!(
            (node.cpu_nano_cores, node.memory_bytes),
            (2_000_000_000, 200)
        );
        assert_eq!(usage.pods.len(), 1, "{:?}", usage.pods);
        let web = &usage.pods[0];
        assert_eq!((web.name.as_str(), web.uid.as_str()), ("web", "uid-web"));
        // The stalest container's time and window.
        assert_eq!((web.time, web.window_ms), (9_000, 9_000));
        let names: Vec<(&str, u64)> = web
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.usage.cpu_nano_cores))
            .collect();
        assert_eq!(names, [("app", 100_000_000), ("sidecar", 10_000_000)]);
        // Without the node's figures in one of them, the node has no rate.
        let no_node = UsageSample {
            node: None,
            ..prev.clone()
        };
        assert_eq!(NodeUsage::between("edge-a", &no_node, &last).usage, None);
    }

    #[test]
    fn samples_round_trip_in_the_documented_shape() {
        let sample = UsageSample {
            node: Some(m(1_795_000_000_000, 12, 34)),
            containers: vec![c("web", "app", "a1", m(1_795_000_000_001, 5, 6))],
        };
        let json = serde_json::to_value(&sample).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "node": {"time": 1_795_000_000_000_i64, "cpuNanos": 12, "memoryBytes": 34},
                "containers": [{"namespace": "default", "pod": "web", "uid": "uid-web",
                    "container": "app", "id": "a1", "time": 1_795_000_000_001_i64,
                    "cpuNanos": 5, "memoryBytes": 6}],
            })
        );
        let back: UsageSample = serde_json::from_value(json).expect("parses");
        assert_eq!(back, sample);
        let usage = NodeUsage::between("n", &sample, &sample);
        let back: NodeUsage =
            serde_json::from_slice(&serde_json::to_vec(&usage).expect("json")).expect("parses");
        assert_eq!(back, usage);
    }
}
