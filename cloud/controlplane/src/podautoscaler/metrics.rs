//! The resource metrics API (`metrics.k8s.io/v1beta1` PodMetrics), read as kube's
//! `resourceMetricsClient` reads it: one list per namespace and selector, each pod's usage of a
//! resource summed over its containers (a pod missing the resource in any container is left
//! out), or one container's. The embedded API server serves it from the usage edges report;
//! a real cluster, from metrics-server.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use serde::Deserialize;

use super::replicas::{PodMetric, PodMetrics};

/// One container's usage.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerUsage {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Usage by resource, as quantities.
    #[serde(default)]
    pub usage: std::collections::BTreeMap<String, String>,
}

/// One pod's metrics.
#[derive(Debug, Clone)]
pub struct PodUsage {
    /// The pod's name.
    pub name: String,
    /// The end of the window.
    pub timestamp: Timestamp,
    /// The window.
    pub window: Duration,
    /// Its containers'.
    pub containers: Vec<ContainerUsage>,
}

/// The PodMetrics of a namespace's pods the selector selects.
pub async fn list(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<PodUsage>, String> {
    let resource = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!(
                "unable to fetch metrics from resource metrics API: {}",
                crate::expectations::api_message(&e)
            )
        })?;
    if list.items.is_empty() {
        return Err("no metrics returned from resource metrics API".to_owned());
    }
    Ok(list.items.iter().map(parse).collect())
}

fn parse(o: &DynamicObject) -> PodUsage {
    let timestamp = o
        .data
        .get("timestamp")
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse().ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let window = o
        .data
        .get("window")
        .and_then(|w| w.as_str())
        .and_then(|w| w.parse::<jiff::SignedDuration>().ok())
        .and_then(|w| Duration::try_from(w).ok())
        .unwrap_or_default();
    let containers = o
        .data
        .get("containers")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    PodUsage {
        name: o.metadata.name.clone().unwrap_or_default(),
        timestamp,
        window,
        containers,
    }
}

fn milli(q: &str) -> Option<i64> {
    wedge_core::quantity::parse_milli(q)
        .ok()
        .and_then(|m| i64::try_from(m).ok())
}

/// Each pod's usage of `resource` (kube's `getPodMetrics`), or of the container named
/// `container` (kube's `getContainerMetrics`, which fails when a pod lacks the container).
pub fn of(
    pods: &[PodUsage],
    resource: &str,
    container: Option<&str>,
    namespace: &str,
) -> Result<PodMetrics, String> {
    let mut out = PodMetrics::new();
    for pod in pods {
        let metric = |value| PodMetric {
            timestamp: pod.timestamp,
            window: pod.window,
            value,
        };
        match container {
            Some(wanted) => {
                let Some(c) = pod.containers.iter().find(|c| c.name == wanted) else {
                    return Err(format!(
                        "failed to get container metrics: container {wanted} not present in metrics for pod {namespace}/{}",
                        pod.name
                    ));
                };
                if let Some(v) = c.usage.get(resource).and_then(|q| milli(q)) {
                    out.insert(pod.name.clone(), metric(v));
                }
            }
            None => {
                let values: Option<Vec<i64>> = pod
                    .containers
                    .iter()
                    .map(|c| c.usage.get(resource).and_then(|q| milli(q)))
                    .collect();
                if let Some(values) = values.filter(|v| !v.is_empty()) {
                    out.insert(pod.name.clone(), metric(values.iter().sum()));
                }
            }
        }
    }
    Ok(out)
}

/// A quantity of `milli` thousandths as apimachinery writes a `DecimalSI` one: `250m`, `2`,
/// `12M`.
pub fn quantity(milli: i64) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut value = milli / 1000;
    let mut suffix = 0;
    const SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    while value != 0 && value % 1000 == 0 && suffix + 1 < SUFFIXES.len() {
        value /= 1000;
        suffix += 1;
    }
    format!("{value}{}", SUFFIXES[suffix])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(name: &str, containers: &[(&str, &[(&str, &str)])]) -> PodUsage {
        PodUsage {
            name: name.into(),
            timestamp: Timestamp::UNIX_EPOCH,
            window: Duration::from_secs(15),
            containers: containers
                .iter()
                .map(|(n, u)| ContainerUsage {
                    name: (*n).into(),
                    usage: u.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn pods_sum_their_containers_and_leave_out_the_unmeasured() {
        let pods = [
            usage(
                "a",
                &[
                    ("app", &[("cpu", "250000000n")]),
                    ("side", &[("cpu", "5m")]),
                ],
            ),
            usage(
                "b",
                &[("app", &[("cpu", "1m")]), ("side", &[("memory", "1Mi")])],
            ),
            usage("c", &[]),
        ];
        let m = of(&pods, "cpu", None, "ns").expect("metrics");
        assert_eq!(m.get("a").map(|m| m.value), Some(255));
        assert!(!m.contains_key("b") && !m.contains_key("c"));
        let m = of(&pods[..2], "cpu", Some("app"), "ns").expect("metrics");
        assert_eq!(m.get("b").map(|m| m.value), Some(1));
        let err = of(&pods, "cpu", Some("app"), "ns").expect_err("c has no app");
        assert_eq!(
            err,
            "failed to get container metrics: container app not present in metrics for pod ns/c"
        );
    }

    #[test]
    fn quantities_as_apimachinery_writes_them() {
        assert_eq!(quantity(250), "250m");
        assert_eq!(quantity(2000), "2");
        assert_eq!(quantity(0), "0");
        assert_eq!(quantity(12_000_000_000), "12M");
        assert_eq!(quantity(13_107_200_000), "13107200");
    }
}
