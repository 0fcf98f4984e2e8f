//! cloudcore's Prometheus metrics: per edge, what was sent and received, what was refused, and
//! what resyncs cost; and the CPU and memory edges and their containers use (from the samples
//! edges push, [`crate::usage`]). Served as text on `--metrics-listen` (KubeEdge users ask for
//! exactly this: which edges are connected, how much each one costs, how loaded each one is).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::usage::{UsageCollector, UsageStore};

/// Labels of per-edge, per-operation series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    /// The edge's node.
    pub node: String,
    /// The frame's operation.
    pub operation: String,
}

/// Labels of per-edge series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The edge's node.
    pub node: String,
}

/// Labels of refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The edge's node (empty before the edge said who it is).
    pub node: String,
    /// Why.
    pub reason: String,
}

/// Every metric cloudcore keeps.
#[derive(Default)]
pub struct Metrics {
    /// Edges connected now.
    pub connected_edges: Gauge,
    /// Frames sent to edges.
    pub frames_sent: Family<FrameLabels, Counter>,
    /// Bytes of frames sent to edges.
    pub bytes_sent: Family<NodeLabels, Counter>,
    /// Frames received from edges.
    pub frames_received: Family<FrameLabels, Counter>,
    /// Frames refused (malformed, out of order, forbidden...).
    pub frames_refused: Family<RefusedLabels, Counter>,
    /// Resyncs done (one per connection).
    pub resyncs: Family<NodeLabels, Counter>,
    /// Frames sent by resyncs.
    pub resync_frames: Family<NodeLabels, Counter>,
    /// Bytes sent by resyncs.
    pub resync_bytes: Family<NodeLabels, Counter>,
    /// Connections refused before a session started (no certificate, wrong node...).
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// The edges' usage samples, rendered as gauges at each scrape.
    pub usage: std::sync::Arc<UsageStore>,
}

impl Metrics {
    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut root = Registry::default();
        root.register_collector(Box::new(UsageCollector(self.usage.clone())));
        let registry = root.sub_registry_with_prefix("wedge_cloudhub");
        registry.register(
            "connected_edges",
            "Edges connected now",
            self.connected_edges.clone(),
        );
        registry.register(
            "frames_sent",
            "Frames sent to edges",
            self.frames_sent.clone(),
        );
        registry.register(
            "bytes_sent",
            "Bytes of frames sent to edges",
            self.bytes_sent.clone(),
        );
        registry.register(
            "frames_received",
            "Frames received from edges",
            self.frames_received.clone(),
        );
        registry.register(
            "frames_refused",
            "Frames from edges refused",
            self.frames_refused.clone(),
        );
        registry.register("resyncs", "Resyncs done", self.resyncs.clone());
        registry.register(
            "resync_frames",
            "Frames sent by resyncs",
            self.resync_frames.clone(),
        );
        registry.register(
            "resync_bytes",
            "Bytes sent by resyncs",
            self.resync_bytes.clone(),
        );
        registry.register(
            "connections_refused",
            "Edge connections refused",
            self.connections_refused.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &root);
        text
    }

    /// Counts a refusal.
    pub fn refused(&self, node: &str, reason: &wedge_core::protocol::Reason) {
        self.frames_refused
            .get_or_create(&RefusedLabels {
                node: node.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }
}
