//! Resource usage of an edge, from the samples it pushes ([`crate::usage`]), per node.
//!
//! A kubelet serves its node's figures at `/metrics/resource`, with no node in the path: the
//! kubelet *is* the node. CloudStream answers for every edge, and a request that names no pod
//! says which edge it is for only by the name it was sent to, when edges have names of their own
//! (`--stream-node-domain`: `<node>.<domain>`, see [`super::node_endpoint`]). By default every
//! edge Node names the same address, so the figures are also served per node, under paths of
//! Wedge's own:
//!
//! - `GET /nodes/{node}/usage`: the node's and its pods' usage from its last two samples
//!   ([`wedge_core::protocol::usage::NodeUsage`], JSON), which the embedded API server's
//!   `metrics.k8s.io` reads at each Node's kubelet endpoint;
//! - `GET /nodes/{node}/metrics/resource`: the kubelet's `/metrics/resource` text of the node's
//!   newest sample, the format metrics-server scrapes;
//! - `GET /metrics/resource`: the same for the edge named by the request's host; sent to the
//!   shared address, a 404 saying the above, so that a metrics-server pointed at CloudStream
//!   fails with a reason rather than attributing every edge's figures to each.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use wedge_core::protocol::usage::UsageSample;

use super::{Body, StreamContext, failure, whole};

/// `GET /nodes/{node}/usage`.
pub(crate) fn usage(ctx: &StreamContext, node: &str) -> Response<Body> {
    match ctx.usage.usage(node) {
        Some(usage) => ok(
            "application/json",
            serde_json::to_vec(&usage).unwrap_or_default(),
        ),
        None => no_usage(node),
    }
}

/// `GET /nodes/{node}/metrics/resource`.
pub(crate) fn resource_metrics(ctx: &StreamContext, node: &str) -> Response<Body> {
    match ctx.usage.latest(node) {
        Some(sample) => ok(
            "text/plain; version=0.0.4; charset=utf-8",
            render(&sample).into_bytes(),
        ),
        None => no_usage(node),
    }
}

/// `GET /metrics/resource`, which cannot say which edge it means.
pub(crate) fn unattributed() -> Response<Body> {
    failure(
        404,
        "NotFound",
        "CloudStream serves every edge on this address, and /metrics/resource does not say which \
         node it is for: send it to <node>.<domain> with cloudcore's --stream-node-domain, or \
         read /nodes/{node}/metrics/resource (or /nodes/{node}/usage)",
    )
}

fn ok(content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(whole(Bytes::from(body)))
        .unwrap_or_default()
}

fn no_usage(node: &str) -> Response<Body> {
    failure(
        404,
        "NotFound",
        &format!(
            "no usage from node {node}: it is not connected to this cloudcore, or has sent no sample yet"
        ),
    )
}

/// A Prometheus label value, escaped as the text format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds from core-nanoseconds, in the shortest form that reads back exactly.
fn seconds(nanos: u64) -> String {
    format!("{}", nanos as f64 / 1e9)
}

/// A sample as the kubelet writes `/metrics/resource` (the series metrics-server reads, each
/// with the time it was read, in milliseconds).
pub fn render(sample: &UsageSample) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        if lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{name}{line}");
        }
    };
    let containers = |f: &dyn Fn(&wedge_core::protocol::usage::Measurement) -> String| {
        sample
            .containers
            .iter()
            .map(|c| {
                format!(
                    "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}",
                    label(&c.container),
                    label(&c.namespace),
                    label(&c.pod),
                    f(&c.measurement),
                    c.measurement.time
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        containers(&|m| seconds(m.cpu_nanos)),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        containers(&|m| m.memory_bytes.to_string()),
    );
    let node = |f: &dyn Fn(&wedge_core::protocol::usage::Measurement) -> String| {
        sample
            .node
            .iter()
            .map(|m| format!(" {} {}", f(m), m.time))
            .collect::<Vec<_>>()
    };
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        node(&|m| seconds(m.cpu_nanos)),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        node(&|m| m.memory_bytes.to_string()),
    );
    // Pods: the sums of their containers, at the newest of their times.
    let mut pods: Vec<(&str, &str, u64, u64, i64)> = Vec::new();
    for c in &sample.containers {
        let m = &c.measurement;
        match pods.iter_mut().find(|p| p.0 == c.namespace && p.1 == c.pod) {
            Some(p) => {
                p.2 = p.2.saturating_add(m.cpu_nanos);
                p.3 = p.3.saturating_add(m.memory_bytes);
                p.4 = p.4.max(m.time);
            }
            None => pods.push((&c.namespace, &c.pod, m.cpu_nanos, m.memory_bytes, m.time)),
        }
    }
    let pod_lines = |f: &dyn Fn(u64, u64) -> String| {
        pods.iter()
            .map(|(ns, pod, cpu, mem, time)| {
                format!(
                    "{{namespace=\"{}\",pod=\"{}\"}} {} {time}",
                    label(ns),
                    label(pod),
                    f(*cpu, *mem)
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        pod_lines(&|cpu, _| seconds(cpu)),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        pod_lines(&|_, mem| mem.to_string()),
    );
    family(
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
        vec![format!(" {}", u8::from(sample.node.is_none()))],
    );
    out
}

#[cfg(test)]
mod tests {
    use wedge_core::protocol::usage::{ContainerSample, Measurement};

    use super::*;

    #[test]
    fn a_sample_reads_as_the_kubelets_resource_metrics() {
        let at = |time, cpu_nanos, memory_bytes| Measurement {
            time,
            cpu_nanos,
            memory_bytes,
        };
        let container = |pod: &str, name: &str, m| ContainerSample {
            namespace: "default".into(),
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            container: name.into(),
            id: format!("id-{name}"),
            measurement: m,
        };
        let sample = UsageSample {
            node: Some(at(1_795_000_000_000, 12_500_000_000, 1 << 30)),
            containers: vec![
                container("web", "app", at(1_795_000_000_100, 1_500_000_000, 4096)),
                container("web", "side\"car", at(1_795_000_000_200, 500_000_000, 1024)),
            ],
        };
        let text = render(&sample);
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1.5 1795000000100",
            "container_memory_working_set_bytes{container=\"side\\\"car\",namespace=\"default\",pod=\"web\"} 1024 1795000000200",
            "node_cpu_usage_seconds_total 12.5 1795000000000",
            "node_memory_working_set_bytes 1073741824 1795000000000",
            "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 2 1795000000200",
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 5120 1795000000200",
            "resource_scrape_error 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // No node figures: no node series, and the scrape error says so.
        let text = render(&UsageSample::default());
        assert!(!text.contains("node_cpu"), "{text}");
        assert!(
            text.lines().any(|l| l == "resource_scrape_error 1"),
            "{text}"
        );
    }
}
