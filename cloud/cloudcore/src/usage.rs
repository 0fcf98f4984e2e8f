//! The resource usage edges report: each connected edge's last two samples, and what is made
//! of them.
//!
//! Edges push a sample of their node's and containers' CPU and memory every
//! `--usage-interval` (`docs/PROTOCOL.md`, usage). The store keeps the newest and the one before
//! per node, which is all a rate needs ([`NodeUsage::between`]); it is what
//! `kubectl top` reads through CloudStream (`GET /nodes/{node}/usage`, the embedded API server's
//! `metrics.k8s.io`), what the kubelet's `/metrics/resource` text is rendered from, and what
//! the Prometheus gauges ([`UsageCollector`]) show. A node's figures go when its connection
//! ends: stale figures of an edge that is away would look like a live one, and metrics-server
//! likewise shows nothing for a node it cannot scrape. They are never written to the API.
//!
//! Memory: two samples per connected edge, each a few hundred bytes per running container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use wedge_core::protocol::usage::{NodeUsage, UsageSample};

/// One node's samples.
#[derive(Debug)]
struct Samples {
    /// The connection they came on ([`crate::cloudhub::sessions::SessionHandle::connection`]).
    connection: u64,
    last: Arc<UsageSample>,
    prev: Option<Arc<UsageSample>>,
}

/// The last two samples of every connected edge.
#[derive(Debug, Default)]
pub struct UsageStore {
    nodes: Mutex<HashMap<String, Samples>>,
}

impl UsageStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Samples>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `sample` as `node`'s newest, received on `connection`; the newest before it
    /// becomes the previous one. A sample no newer than the one held (by the node's clock, or
    /// by its containers' when the node could not be read) replaces nothing.
    pub fn record(&self, node: &str, connection: u64, sample: UsageSample) {
        let sample = Arc::new(sample);
        let mut nodes = self.lock();
        match nodes.get_mut(node) {
            Some(held) if newer(&sample, &held.last) => {
                held.prev = Some(std::mem::replace(&mut held.last, sample));
                held.connection = connection;
            }
            Some(_) => {
                tracing::debug!(node, "dropped a usage sample no newer than the one held");
            }
            None => {
                nodes.insert(
                    node.to_owned(),
                    Samples {
                        connection,
                        last: sample,
                        prev: None,
                    },
                );
            }
        }
    }

    /// Forgets `node`'s samples when its connection `connection` ended, unless a newer
    /// connection of it has sent some since.
    pub fn forget(&self, node: &str, connection: u64) {
        let mut nodes = self.lock();
        if nodes.get(node).is_some_and(|s| s.connection == connection) {
            nodes.remove(node);
        }
    }

    /// `node`'s newest sample.
    pub fn latest(&self, node: &str) -> Option<Arc<UsageSample>> {
        self.lock().get(node).map(|s| s.last.clone())
    }

    /// `node`'s usage from its last two samples: `None` for a node not connected; with no
    /// figures while it has sent only one.
    pub fn usage(&self, node: &str) -> Option<NodeUsage> {
        let (prev, last) = {
            let nodes = self.lock();
            let held = nodes.get(node)?;
            (held.prev.clone(), held.last.clone())
        };
        Some(match prev {
            Some(prev) => NodeUsage::between(node, &prev, &last),
            None => NodeUsage {
                node: node.to_owned(),
                ..NodeUsage::default()
            },
        })
    }

    /// Every node's usage, by node name.
    pub fn all(&self) -> Vec<NodeUsage> {
        let pairs: Vec<(String, Option<Arc<UsageSample>>, Arc<UsageSample>)> = self
            .lock()
            .iter()
            .map(|(node, s)| (node.clone(), s.prev.clone(), s.last.clone()))
            .collect();
        let mut all: Vec<NodeUsage> = pairs
            .into_iter()
            .filter_map(|(node, prev, last)| {
                Some(NodeUsage::between(&node, prev.as_deref()?, &last))
            })
            .collect();
        all.sort_by(|a, b| a.node.cmp(&b.node));
        all
    }
}

/// The time a sample was read: the node's reading, else its newest container's.
fn time_of(sample: &UsageSample) -> Option<i64> {
    sample
        .node
        .map(|n| n.time)
        .or_else(|| sample.containers.iter().map(|c| c.measurement.time).max())
}

fn newer(sample: &UsageSample, than: &UsageSample) -> bool {
    match (time_of(sample), time_of(than)) {
        (Some(new), Some(old)) => new > old,
        // An empty sample (no node figures, no containers) carries no time; take it.
        _ => true,
    }
}

/// Labels of per-node usage series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// Labels of per-container usage series: those of the kubelet's `/metrics/resource` (no uid,
/// no container id, so a restart continues a series), plus the node.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    node: String,
    namespace: String,
    pod: String,
    container: String,
}

/// Renders the store as Prometheus gauges on each scrape, so that a node's and a pod's series
/// appear and go with their samples (no series outlives what it measures):
///
/// - `wedge_node_cpu_usage_cores{node}`, `wedge_node_memory_working_set_bytes{node}`;
/// - `wedge_container_cpu_usage_cores{node,namespace,pod,container}`,
///   `wedge_container_memory_working_set_bytes{node,namespace,pod,container}`.
///
/// CPU is the rate over the last two samples (as `kubectl top` shows it); a node or container
/// with one sample so far has no series yet.
#[derive(Debug)]
pub struct UsageCollector(pub Arc<UsageStore>);

impl Collector for UsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.all();
        let nodes: Vec<(NodeLabels, f64, u64)> = all
            .iter()
            .filter_map(|n| {
                let usage = n.usage?;
                let labels = NodeLabels {
                    node: n.node.clone(),
                };
                Some((labels, usage.cpu_cores(), usage.memory_bytes))
            })
            .collect();
        let containers: Vec<(ContainerLabels, f64, u64)> = all
            .iter()
            .flat_map(|n| {
                n.pods.iter().flat_map(move |p| {
                    p.containers.iter().map(move |c| {
                        let labels = ContainerLabels {
                            node: n.node.clone(),
                            namespace: p.namespace.clone(),
                            pod: p.name.clone(),
                            container: c.name.clone(),
                        };
                        (labels, c.usage.cpu_cores(), c.usage.memory_bytes)
                    })
                })
            })
            .collect();
        gauges(
            &mut encoder,
            "wedge_node_cpu_usage_cores",
            "CPU an edge node used over its last two usage samples, in cores",
            nodes.iter().map(|(l, cpu, _)| (l, ConstGauge::new(*cpu))),
        )?;
        gauges(
            &mut encoder,
            "wedge_node_memory_working_set_bytes",
            "An edge node's memory working set at its last usage sample, in bytes",
            nodes
                .iter()
                .map(|(l, _, mem)| (l, ConstGauge::new(as_i64(*mem)))),
        )?;
        gauges(
            &mut encoder,
            "wedge_container_cpu_usage_cores",
            "CPU a container on an edge used over the last two usage samples, in cores",
            containers
                .iter()
                .map(|(l, cpu, _)| (l, ConstGauge::new(*cpu))),
        )?;
        gauges(
            &mut encoder,
            "wedge_container_memory_working_set_bytes",
            "A container's memory working set at its edge's last usage sample, in bytes",
            containers
                .iter()
                .map(|(l, _, mem)| (l, ConstGauge::new(as_i64(*mem)))),
        )
    }
}

fn as_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// One gauge family; nothing at all (not even its help) when it has no series.
fn gauges<'a, L, G>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a L, G)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet + 'a,
    G: EncodeMetric,
{
    let mut series = series.peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, gauge) in series {
        gauge.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use wedge_core::protocol::usage::{ContainerSample, Measurement};

    use super::*;

    fn sample(time: i64, node_cpu: u64, app_cpu: u64) -> UsageSample {
        UsageSample {
            node: Some(Measurement {
                time,
                cpu_nanos: node_cpu,
                memory_bytes: 512 << 20,
            }),
            containers: vec![ContainerSample {
                namespace: "default".into(),
                pod: "tel".into(),
                uid: "u1".into(),
                container: "app".into(),
                id: "c1".into(),
                measurement: Measurement {
                    time,
                    cpu_nanos: app_cpu,
                    memory_bytes: 3 << 20,
                },
            }],
        }
    }

    #[test]
    fn the_store_keeps_two_samples_per_node_and_forgets_with_the_connection() {
        let store = UsageStore::default();
        assert!(store.usage("edge-a").is_none(), "not connected: nothing");
        store.record("edge-a", 1, sample(1_000, 0, 0));
        let one = store.usage("edge-a").expect("connected");
        assert!(one.usage.is_none() && one.pods.is_empty(), "{one:?}");
        assert!(store.all().is_empty(), "one sample makes no rate");
        store.record("edge-a", 1, sample(3_000, 2_000_000_000, 100_000_000));
        // An older sample (delayed) replaces nothing.
        store.record("edge-a", 1, sample(2_000, 5, 5));
        let two = store.usage("edge-a").expect("connected");
        assert_eq!(two.usage.map(|u| u.cpu_nano_cores), Some(1_000_000_000));
        assert_eq!(two.pods[0].containers[0].usage.cpu_nano_cores, 50_000_000);
        // A newer connection took over: the old one's end forgets nothing.
        store.record("edge-a", 2, sample(4_000, 2_000_000_000, 100_000_000));
        store.forget("edge-a", 1);
        assert!(store.latest("edge-a").is_some());
        store.forget("edge-a", 2);
        assert!(store.latest("edge-a").is_none());
    }

    #[test]
    fn the_gauges_follow_the_samples() {
        let store = Arc::new(UsageStore::default());
        let text = || {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(UsageCollector(store.clone())));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
            text
        };
        store.record("edge-a", 1, sample(1_000, 0, 0));
        assert!(
            !text().contains("wedge_"),
            "one sample: no series\n{}",
            text()
        );
        store.record("edge-a", 1, sample(5_000, 2_000_000_000, 200_000_000));
        let text = text();
        for line in [
            "# TYPE wedge_node_cpu_usage_cores gauge",
            "wedge_node_cpu_usage_cores{node=\"edge-a\"} 0.5",
            "wedge_node_memory_working_set_bytes{node=\"edge-a\"} 536870912",
            "wedge_container_cpu_usage_cores{node=\"edge-a\",namespace=\"default\",pod=\"tel\",container=\"app\"} 0.05",
            "wedge_container_memory_working_set_bytes{node=\"edge-a\",namespace=\"default\",pod=\"tel\",container=\"app\"} 3145728",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        store.forget("edge-a", 1);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(UsageCollector(store.clone())));
        let mut after = String::new();
        prometheus_client::encoding::text::encode(&mut after, &registry).expect("encodes");
        assert!(!after.contains("edge-a"), "{after}");
    }
}
