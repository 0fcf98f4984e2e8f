//! `metrics.k8s.io/v1beta1`: `NodeMetrics` and `PodMetrics`, as metrics-server serves them, so
//! that `kubectl top nodes` and `kubectl top pods` work.
//!
//! The figures are the nodes', fetched at each request from where kube-apiserver reaches a
//! node: its kubelet endpoint (the Node's address and port, [`crate::kubelet_client`]), the
//! same way `pods/log` goes. For edges that endpoint is cloudcore's CloudStream, which keeps
//! each edge's last two usage samples and answers `GET /nodes/{node}/usage` with the rates
//! between them (a kubelet's own paths name no node, and CloudStream serves every edge on one
//! address). One path serves `wedge up` and a separate cloudcore alike. Nodes are asked
//! concurrently, each bounded in time: a node that does not answer, or has fewer than two
//! samples, is absent, as a node metrics-server could not scrape twice is; so is a pod until
//! every one of its containers has a rate.
//!
//! What metrics-server does that is kept: CPU is the CPU used between the two samples over the
//! time between them, in nano-cores; memory is the newer working set; `timestamp` is the newer
//! sample's time and `window` the time between them (for a pod, those of its stalest
//! container); labels are the Node's and the Pod's, and label and field selectors select the
//! Nodes and Pods; `creationTimestamp` is now. Only `get` and `list` are served.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use wedge_core::protocol::usage::{NodeUsage, Usage};

use super::error::ApiError;
use super::list::Filter;
use super::objects;
use super::request::ResourcePath;
use super::subresources::node_endpoint;
use super::{Api, Body, Call, value_response};
use crate::registry::ResourceInfo;

/// The group served.
pub const GROUP: &str = "metrics.k8s.io";
/// Its version.
pub const VERSION: &str = "v1beta1";
/// The verbs its resources accept.
pub const VERBS: &[&str] = &["get", "list"];

/// How long one node may take to answer, dial included: `kubectl top` waits for the slowest.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Nodes asked at once.
const CONCURRENT_NODES: usize = 16;
/// The largest usage answer read from a node.
const MAX_USAGE_BYTES: usize = 8 << 20;

/// Answers a request for `nodes` or `pods` of `metrics.k8s.io`.
pub(crate) async fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    if path.subresource.is_some() {
        return Err(ApiError::NoSuchPath);
    }
    if call.method != Method::GET || path.legacy_watch || call.query.flag("watch") {
        return Err(ApiError::MethodNotAllowed);
    }
    let body = match (info.plural.as_str(), path.name.as_deref()) {
        ("nodes", None) => list_nodes(api, call).await?,
        ("nodes", Some(name)) => get_node(api, name).await?,
        ("pods", None) => list_pods(api, call, path.namespace.as_deref()).await?,
        ("pods", Some(name)) => {
            let namespace = path.namespace.as_deref().ok_or(ApiError::NoSuchPath)?;
            get_pod(api, namespace, name).await?
        }
        _ => return Err(ApiError::NoSuchPath),
    };
    Ok(value_response(StatusCode::OK, &body))
}

fn core(api: &Api, plural: &str) -> Result<std::sync::Arc<ResourceInfo>, ApiError> {
    api.registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("core {plural} are not served")))
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn list_nodes(api: &Api, call: &Call<'_>) -> Result<Value, ApiError> {
    let info = core(api, "nodes")?;
    let filter = Filter::from_query(&info, &call.query)?;
    let (nodes, _, _) = api
        .store
        .list(&info.storage_key(), None, None, None, |o| filter.keep(o));
    let nodes: Vec<Value> = nodes.iter().map(|o| o.value()).collect();
    let names: Vec<String> = nodes.iter().map(|n| name_of(n).to_owned()).collect();
    let usage = fetch(api, names).await?;
    let now = jiff::Timestamp::now();
    let items: Vec<Value> = nodes
        .iter()
        .filter_map(|n| {
            let u = usage.get(name_of(n))?.usage?;
            Some(node_metrics(n, &u, now))
        })
        .collect();
    Ok(list("NodeMetricsList", items))
}

async fn get_node(api: &Api, name: &str) -> Result<Value, ApiError> {
    let info = core(api, "nodes")?;
    let not_found = || ApiError::not_found(GROUP, "nodemetrics", name);
    let node = api
        .store
        .get(&objects::key(&info, None, name))
        .map_err(|_| not_found())?
        .value();
    let usage = fetch(api, vec![name.to_owned()]).await?;
    let u = usage
        .get(name)
        .and_then(|u| u.usage)
        .ok_or_else(not_found)?;
    Ok(node_metrics(&node, &u, jiff::Timestamp::now()))
}

async fn list_pods(api: &Api, call: &Call<'_>, namespace: Option<&str>) -> Result<Value, ApiError> {
    let info = core(api, "pods")?;
    let filter = Filter::from_query(&info, &call.query)?;
    let (pods, _, _) = api
        .store
        .list(&info.storage_key(), namespace, None, None, |o| {
            filter.keep(o)
        });
    let pods: Vec<Value> = pods.iter().map(|o| o.value()).collect();
    let mut nodes: Vec<String> = pods
        .iter()
        .filter_map(|p| node_of(p).map(str::to_owned))
        .collect();
    nodes.sort();
    nodes.dedup();
    let usage = fetch(api, nodes).await?;
    let now = jiff::Timestamp::now();
    let items: Vec<Value> = pods
        .iter()
        .filter_map(|p| pod_metrics(p, usage.get(node_of(p)?)?, now))
        .collect();
    Ok(list("PodMetricsList", items))
}

async fn get_pod(api: &Api, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let info = core(api, "pods")?;
    // metrics-server names the missing object `namespace/name`.
    let not_found = || ApiError::not_found(GROUP, "podmetrics", &format!("{namespace}/{name}"));
    let pod = api
        .store
        .get(&objects::key(&info, Some(namespace), name))
        .map_err(|e| match ApiError::from_store(e, "", "pods") {
            ApiError::NotFound { .. } => not_found(),
            other => other,
        })?
        .value();
    let node = node_of(&pod).ok_or_else(not_found)?.to_owned();
    let usage = fetch(api, vec![node.clone()]).await?;
    usage
        .get(&node)
        .and_then(|u| pod_metrics(&pod, u, jiff::Timestamp::now()))
        .ok_or_else(not_found)
}

fn node_of(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// Asks each of `nodes` for its usage, concurrently; those that do not answer are left out.
async fn fetch(api: &Api, nodes: Vec<String>) -> Result<HashMap<String, NodeUsage>, ApiError> {
    let Some(kubelet) = api.kubelet.as_ref() else {
        return Err(ApiError::Unavailable(
            "metrics.k8s.io: this API server has no kubelet client to reach nodes with".into(),
        ));
    };
    let answers = futures::stream::iter(nodes)
        .map(|node| async move {
            let endpoint = match node_endpoint(api, &node) {
                Ok(e) => e,
                Err(error) => {
                    tracing::debug!(node, %error, "no usage: the node's kubelet endpoint is not known");
                    return None;
                }
            };
            let asked = async {
                let response = kubelet
                    .get(&endpoint, &format!("/nodes/{node}/usage"), false)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_USAGE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?
                    .to_bytes();
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                    return Err(format!("{status}: {text}"));
                }
                serde_json::from_slice::<NodeUsage>(&body).map_err(|e| format!("the answer: {e}"))
            };
            match tokio::time::timeout(NODE_TIMEOUT, asked).await {
                Ok(Ok(usage)) if usage.node == node => Some((node, usage)),
                Ok(Ok(usage)) => {
                    tracing::debug!(node, answered_for = usage.node, "no usage: the node's endpoint answered for another node");
                    None
                }
                Ok(Err(error)) => {
                    tracing::debug!(node, error, "no usage from the node's kubelet endpoint");
                    None
                }
                Err(_) => {
                    tracing::debug!(node, timeout = ?NODE_TIMEOUT, "no usage: the node's kubelet endpoint did not answer in time");
                    None
                }
            }
        })
        .buffer_unordered(CONCURRENT_NODES)
        .collect::<Vec<_>>()
        .await;
    Ok(answers.into_iter().flatten().collect())
}

/// The metadata metrics-server gives a metrics object: the name (and namespace) and labels of
/// what it measures, created now.
fn metadata(object: &Value, now: jiff::Timestamp) -> Value {
    let mut meta = json!({
        "name": name_of(object),
        "creationTimestamp": time(now),
    });
    if let Some(ns) = object.pointer("/metadata/namespace") {
        meta["namespace"] = ns.clone();
    }
    if let Some(labels) = object
        .pointer("/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
    {
        meta["labels"] = labels.clone();
    }
    meta
}

/// A `NodeMetrics` for the Node `node`.
fn node_metrics(node: &Value, usage: &Usage, now: jiff::Timestamp) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(node, now),
        "timestamp": time_ms(usage.time),
        "window": go_duration(usage.window_ms),
        "usage": resources(usage),
    })
}

/// A `PodMetrics` for the Pod `pod`, if its node reported every container of it (the same pod:
/// the uid must match).
fn pod_metrics(pod: &Value, usage: &NodeUsage, now: jiff::Timestamp) -> Option<Value> {
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str)?;
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
    let found = usage
        .pods
        .iter()
        .find(|p| p.namespace == namespace && p.name == name_of(pod) && p.uid == uid)?;
    let containers: Vec<Value> = found
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": resources(&c.usage)}))
        .collect();
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(pod, now),
        "timestamp": time_ms(found.time),
        "window": go_duration(found.window_ms),
        "containers": containers,
    }))
}

fn resources(usage: &Usage) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("cpu", cpu_quantity(usage.cpu_nano_cores)),
        ("memory", memory_quantity(usage.memory_bytes)),
    ])
}

/// Nano-cores as a canonical decimal quantity (`250m`, `1`, `1234567n`).
pub fn cpu_quantity(nano_cores: u64) -> String {
    if nano_cores == 0 {
        return "0".into();
    }
    for (scale, suffix) in [(1_000_000_000, ""), (1_000_000, "m"), (1_000, "u")] {
        if nano_cores.is_multiple_of(scale) {
            return format!("{}{suffix}", nano_cores / scale);
        }
    }
    format!("{nano_cores}n")
}

/// Bytes as a canonical binary quantity (`16632Ki`, `1Gi`, `1000`).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (shift, suffix) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A time as `metav1.Time` writes it: RFC 3339 in UTC, whole seconds.
fn time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn time_ms(ms: i64) -> String {
    jiff::Timestamp::from_second(ms.div_euclid(1000))
        .map(time)
        .unwrap_or_default()
}

/// A duration in milliseconds as Go's `time.Duration` prints it (`metav1.Duration`): `500ms`,
/// `15.004s`, `1m0.5s`, `2h0m0s`.
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    if ms < 1000 {
        return format!("{sign}{ms}ms");
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, millis) = (rest / 1000, rest % 1000);
    let seconds = if millis == 0 {
        format!("{secs}s")
    } else {
        let fraction = format!("{millis:03}");
        format!("{secs}.{}s", fraction.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}"),
        (0, m) => format!("{sign}{m}m{seconds}"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use wedge_core::protocol::usage::{ContainerUsage, PodUsage};

    use super::*;

    fn usage(time: i64, window_ms: i64, cpu_nano_cores: u64, memory_bytes: u64) -> Usage {
        Usage {
            time,
            window_ms,
            cpu_nano_cores,
            memory_bytes,
        }
    }

    #[test]
    fn quantities_and_durations_read_as_metrics_servers() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(1_234_567), "1234567n");
        assert_eq!(cpu_quantity(7_000), "7u");
        assert_eq!(memory_quantity(17_031_168), "16632Ki");
        assert_eq!(memory_quantity(1 << 30), "1Gi");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(memory_quantity(0), "0");
        assert_eq!(go_duration(15_004), "15.004s");
        assert_eq!(go_duration(15_000), "15s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(60_500), "1m0.5s");
        assert_eq!(go_duration(7_200_000), "2h0m0s");
        assert_eq!(go_duration(0), "0s");
    }

    #[test]
    fn node_and_pod_metrics_are_written_as_metrics_server_writes_them() {
        let now = jiff::Timestamp::from_second(1_795_000_100).expect("a time");
        let node = json!({"metadata": {"name": "edge-a", "labels": {"zone": "z1"}}});
        let written = node_metrics(
            &node,
            &usage(1_795_000_000_900, 15_004, 123_456_789, 64 << 20),
            now,
        );
        assert_eq!(
            written,
            json!({
                "kind": "NodeMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": "edge-a", "labels": {"zone": "z1"},
                    "creationTimestamp": "2026-11-18T11:08:20Z"},
                "timestamp": "2026-11-18T11:06:40Z",
                "window": "15.004s",
                "usage": {"cpu": "123456789n", "memory": "64Mi"},
            })
        );
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1",
            "labels": {"app": "web"}}});
        let mut reported = NodeUsage {
            node: "edge-a".into(),
            usage: None,
            pods: vec![PodUsage {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
                time: 1_795_000_000_000,
                window_ms: 2_000,
                containers: vec![ContainerUsage {
                    name: "app".into(),
                    usage: usage(1_795_000_000_000, 2_000, 5_000_000, 3 << 20),
                }],
            }],
        };
        let written = pod_metrics(&pod, &reported, now).expect("the pod's metrics");
        assert_eq!(
            written,
            json!({
                "kind": "PodMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                    "creationTimestamp": "2026-11-18T11:08:20Z"},
                "timestamp": "2026-11-18T11:06:40Z",
                "window": "2s",
                "containers": [{"name": "app", "usage": {"cpu": "5m", "memory": "3Mi"}}],
            })
        );
        // Another pod under the same name (another uid) is not this one.
        reported.pods[0].uid = "u0".into();
        assert_eq!(pod_metrics(&pod, &reported, now), None);
    }
}
