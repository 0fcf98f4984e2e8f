//! The replica calculation of one resource metric, as kube-controller-manager's
//! `replica_calculator.go` (v1.33) does it: pure, given the target's pods, the metrics the
//! metrics API returned for them, and the time.
//!
//! The pods are sorted first (kube's `groupPods`): deleted and failed ones are ignored; pending
//! ones, and for CPU those not ready or measured too soon after they became ready (within the
//! CPU initialization period), are *unready*; running ones without a metric are *missing*. The
//! usage ratio (usage over target) is computed from the ready pods with metrics. Within the
//! tolerance (0.1), nothing changes; with no unready or missing pods, the answer is the ratio
//! times the ready pods, rounded up. Otherwise the ratio is computed again with missing pods
//! counted as using nothing on a scale up and their whole request (or the target, if that is
//! above 100 %) on a scale down, and unready pods as using nothing on a scale up, and the
//! replicas do not move if that turns the direction around.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// One pod's usage of a resource, as the metrics API reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMetric {
    /// When it was measured (the end of the window).
    pub timestamp: Timestamp,
    /// Over how long.
    pub window: Duration,
    /// In thousandths of the resource's unit (millicores, millibytes).
    pub value: i64,
}

/// Metrics by pod name.
pub type PodMetrics = BTreeMap<String, PodMetric>;

/// Why no replica count came out, in kube's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    /// The selector selects no pods.
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    /// Every selected pod was ignored or unready, or had no metric.
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetrics,
    /// A container has no request for the resource: utilization cannot be computed.
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest {
        /// `cpu`, `memory`.
        resource: String,
        /// The container's name.
        container: String,
        /// The pod's name.
        pod: String,
    },
    /// No metric belongs to a pod with requests.
    #[error("no metrics returned matched known pods")]
    NoMatchingMetrics,
}

/// The calculator's settings (kube-controller-manager's `--horizontal-pod-autoscaler-*`).
#[derive(Debug, Clone, Copy)]
pub struct Calculator {
    /// How far from 1 the usage ratio must be for the replicas to change.
    pub tolerance: f64,
    /// How long after a pod starts its CPU samples may still be from its start-up.
    pub cpu_initialization_period: Duration,
    /// How long after a pod starts it may still become ready for the first time.
    pub initial_readiness_delay: Duration,
}

impl Default for Calculator {
    fn default() -> Self {
        Self {
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// A replica count from a utilization target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utilization {
    /// The proposed replicas.
    pub replicas: i32,
    /// The current utilization, percent of the requests.
    pub utilization: i32,
    /// The current average usage per pod, in thousandths.
    pub raw: i64,
}

/// The pods sorted as kube's `groupPods` sorts them.
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

fn group(
    pods: &[Pod],
    metrics: &PodMetrics,
    cpu: bool,
    calc: &Calculator,
    now: Timestamp,
) -> Groups {
    let mut g = Groups {
        ready: 0,
        unready: BTreeSet::new(),
        missing: BTreeSet::new(),
        ignored: BTreeSet::new(),
    };
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
            g.ignored.insert(name);
            continue;
        }
        if phase == "Pending" {
            g.unready.insert(name);
            continue;
        }
        let Some(metric) = metrics.get(&name) else {
            g.missing.insert(name);
            continue;
        };
        if cpu {
            let condition = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            let started = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            let unready = match (condition, started) {
                (Some(condition), Some(started)) => {
                    let transition = condition
                        .last_transition_time
                        .as_ref()
                        .map_or(started, |t| t.0);
                    if add(started, calc.cpu_initialization_period) > now {
                        // Still starting: a sample from before one whole window passed since
                        // the pod became ready may hold its start-up.
                        condition.status == "False"
                            || metric.timestamp < add(transition, metric.window)
                    } else {
                        // Unready and never ready yet.
                        condition.status == "False"
                            && add(started, calc.initial_readiness_delay) > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// Each pod's request for `resource` (in thousandths), summed over its containers (or the one
/// named `container`) and restartable init containers, as kube's `calculateRequests`.
pub fn requests(
    pods: &[Pod],
    container: Option<&str>,
    resource: &str,
) -> Result<BTreeMap<String, i64>, CalcError> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let sidecars = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
        let mut sum: i64 = 0;
        for c in containers.chain(sidecars) {
            if container.is_some_and(|wanted| wanted != c.name) {
                continue;
            }
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .ok_or_else(|| CalcError::MissingRequest {
                    resource: resource.to_owned(),
                    container: c.name.clone(),
                    pod: name.clone(),
                })?;
            let milli = wedge_core::quantity::parse_milli(&request.0)
                .ok()
                .and_then(|m| i64::try_from(m).ok())
                .unwrap_or(0);
            sum = sum.saturating_add(milli);
        }
        out.insert(name, sum);
    }
    Ok(out)
}

/// kube's `GetResourceUtilizationRatio`: the usage ratio, the utilization in percent, and the
/// average usage.
fn utilization_ratio(
    metrics: &PodMetrics,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), CalcError> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, metric) in metrics {
        let Some(request) = requests.get(pod) else {
            continue;
        };
        used = used.saturating_add(metric.value);
        requested = requested.saturating_add(*request);
        n += 1;
    }
    if requested == 0 {
        return Err(CalcError::NoMatchingMetrics);
    }
    let utilization = i32::try_from(used.saturating_mul(100) / requested).unwrap_or(i32::MAX);
    Ok((
        f64::from(utilization) / f64::from(target.max(1)),
        utilization,
        used / n.max(1),
    ))
}

/// kube's `GetMetricUsageRatio`: the usage ratio and the average usage.
fn usage_ratio(metrics: &PodMetrics, target: i64) -> (f64, i64) {
    let total: i64 = metrics
        .values()
        .map(|m| m.value)
        .fold(0, i64::saturating_add);
    let average = total / i64::try_from(metrics.len().max(1)).unwrap_or(1);
    (average as f64 / target.max(1) as f64, average)
}

fn ceil(x: f64) -> i32 {
    let c = x.ceil();
    if c >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        c as i32
    }
}

fn count(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

/// A pod that counts as using nothing (scale up) or a fixed amount (scale down).
fn filled(value: i64) -> PodMetric {
    PodMetric {
        timestamp: Timestamp::UNIX_EPOCH,
        window: Duration::ZERO,
        value,
    }
}

impl Calculator {
    /// kube's `GetResourceReplicas`: the replicas for `target` percent of the pods' requests
    /// of `resource` (of `container` only, if named).
    #[allow(clippy::too_many_arguments)]
    pub fn resource_replicas(
        &self,
        current: i32,
        target: i32,
        resource: &str,
        container: Option<&str>,
        pods: &[Pod],
        mut metrics: PodMetrics,
        now: Timestamp,
    ) -> Result<Utilization, CalcError> {
        if pods.is_empty() {
            return Err(CalcError::NoPods);
        }
        let g = group(pods, &metrics, resource == "cpu", self, now);
        metrics.retain(|pod, _| !g.ignored.contains(pod) && !g.unready.contains(pod));
        let requests = requests(pods, container, resource)?;
        if metrics.is_empty() {
            return Err(CalcError::NoMetrics);
        }
        let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target)?;
        let answer = |replicas| Utilization {
            replicas,
            utilization,
            raw,
        };
        let up_with_unready = !g.unready.is_empty() && ratio > 1.0;
        if !up_with_unready && g.missing.is_empty() {
            if (1.0 - ratio).abs() <= self.tolerance {
                return Ok(answer(current));
            }
            return Ok(answer(ceil(ratio * count(g.ready))));
        }
        if ratio < 1.0 {
            // On a scale down, a pod without a metric uses all it asked for (or the target,
            // if that is more).
            let fallback = i64::from(target.max(100));
            for pod in &g.missing {
                let request = requests.get(pod).copied().unwrap_or(0);
                metrics.insert(pod.clone(), filled(request.saturating_mul(fallback) / 100));
            }
        } else if ratio > 1.0 {
            for pod in &g.missing {
                metrics.insert(pod.clone(), filled(0));
            }
        }
        if up_with_unready {
            for pod in &g.unready {
                metrics.insert(pod.clone(), filled(0));
            }
        }
        let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
        if (1.0 - new_ratio).abs() <= self.tolerance
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return Ok(answer(current));
        }
        let replicas = ceil(new_ratio * count(metrics.len()));
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return Ok(answer(current));
        }
        Ok(answer(replicas))
    }

    /// kube's `GetRawResourceReplicas` (its `calcPlainMetricReplicas`): the replicas for an
    /// average usage of `target` thousandths per pod. Returns them and the current average.
    pub fn raw_resource_replicas(
        &self,
        current: i32,
        target: i64,
        resource: &str,
        pods: &[Pod],
        mut metrics: PodMetrics,
        now: Timestamp,
    ) -> Result<(i32, i64), CalcError> {
        if pods.is_empty() {
            return Err(CalcError::NoPods);
        }
        let g = group(pods, &metrics, resource == "cpu", self, now);
        metrics.retain(|pod, _| !g.ignored.contains(pod) && !g.unready.contains(pod));
        if metrics.is_empty() {
            return Err(CalcError::NoMetrics);
        }
        let (ratio, usage) = usage_ratio(&metrics, target);
        let up_with_unready = !g.unready.is_empty() && ratio > 1.0;
        if !up_with_unready && g.missing.is_empty() {
            if (1.0 - ratio).abs() <= self.tolerance {
                return Ok((current, usage));
            }
            return Ok((ceil(ratio * count(g.ready)), usage));
        }
        for pod in &g.missing {
            let value = if ratio < 1.0 { target } else { 0 };
            metrics.insert(pod.clone(), filled(value));
        }
        if up_with_unready {
            for pod in &g.unready {
                metrics.insert(pod.clone(), filled(0));
            }
        }
        let (new_ratio, _) = usage_ratio(&metrics, target);
        if (1.0 - new_ratio).abs() <= self.tolerance
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return Ok((current, usage));
        }
        let replicas = ceil(new_ratio * count(metrics.len()));
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return Ok((current, usage));
        }
        Ok((replicas, usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-12-05T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().expect("time")
    }

    fn ago(secs: i64) -> String {
        now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .expect("time")
            .to_string()
    }

    /// A running, ready pod started 10 minutes ago, asking for `cpu` millicores.
    fn pod(name: &str, cpu: Option<&str>) -> Pod {
        let requests = cpu.map_or(
            json!({}),
            |c| json!({"requests": {"cpu": c, "memory": "64Mi"}}),
        );
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "resources": requests}]},
            "status": {"phase": "Running", "startTime": ago(600),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(590)}]},
        }))
        .expect("pod")
    }

    fn metric(value: i64) -> PodMetric {
        PodMetric {
            timestamp: now(),
            window: Duration::from_secs(15),
            value,
        }
    }

    fn metrics(pairs: &[(&str, i64)]) -> PodMetrics {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), metric(*v)))
            .collect()
    }

    fn calc() -> Calculator {
        Calculator::default()
    }

    #[test]
    fn scales_by_the_ratio_of_usage_to_target() {
        // Three pods at 100m of 100m requested, target 50 %: six.
        let pods = [
            pod("a", Some("100m")),
            pod("b", Some("100m")),
            pod("c", Some("100m")),
        ];
        let m = metrics(&[("a", 100), ("b", 100), ("c", 100)]);
        let got = calc()
            .resource_replicas(3, 50, "cpu", None, &pods, m, now())
            .expect("replicas");
        assert_eq!(
            got,
            Utilization {
                replicas: 6,
                utilization: 100,
                raw: 100
            }
        );
        // Down: 10m each, target 50 %: ceil(0.2 × 3) = 1.
        let m = metrics(&[("a", 10), ("b", 10), ("c", 10)]);
        let got = calc()
            .resource_replicas(3, 50, "cpu", None, &pods, m, now())
            .expect("replicas");
        assert_eq!(got.replicas, 1);
        assert_eq!(got.utilization, 10);
    }

    #[test]
    fn within_the_tolerance_nothing_changes() {
        let pods = [pod("a", Some("100m")), pod("b", Some("100m"))];
        // 54 % against 50 %: a ratio of 1.08.
        let m = metrics(&[("a", 54), ("b", 54)]);
        let got = calc()
            .resource_replicas(2, 50, "cpu", None, &pods, m, now())
            .expect("replicas");
        assert_eq!(got.replicas, 2);
        // 56 %: 1.12, out of it: ceil(1.12 × 2) = 3.
        let m = metrics(&[("a", 56), ("b", 56)]);
        let got = calc()
            .resource_replicas(2, 50, "cpu", None, &pods, m, now())
            .expect("replicas");
        assert_eq!(got.replicas, 3);
    }

    #[test]
    fn a_container_without_a_request_is_kubes_error() {
        let pods = [pod("web-1", None)];
        let err = calc()
            .resource_replicas(1, 50, "cpu", None, &pods, metrics(&[("web-1", 5)]), now())
            .expect_err("no request");
        assert_eq!(
            err.to_string(),
            "missing request for cpu in container app of Pod web-1"
        );
    }

    #[test]
    fn missing_pods_count_as_nothing_up_and_all_down() {
        let pods = [
            pod("a", Some("100m")),
            pod("b", Some("100m")),
            pod("c", Some("100m")),
        ];
        // Up: a at 200 %, b and c missing → (200 + 0 + 0) / 300 = 66 % against 50 %: 1.33,
        // ceil(1.33 × 3) = 4.
        let got = calc()
            .resource_replicas(3, 50, "cpu", None, &pods, metrics(&[("a", 200)]), now())
            .expect("replicas");
        assert_eq!(got.replicas, 4);
        assert_eq!(
            got.utilization, 200,
            "the status shows the measured pods only"
        );
        // Down: a at 10 %, b and c missing count as 100 % → 70 % against 50 %: the direction
        // turns around, so nothing changes.
        let got = calc()
            .resource_replicas(3, 50, "cpu", None, &pods, metrics(&[("a", 10)]), now())
            .expect("replicas");
        assert_eq!(got.replicas, 3);
        // Down with a target above 100 %: a missing pod counts as the target (150 %).
        let pods5: Vec<Pod> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| pod(n, Some("100m")))
            .collect();
        let got = calc()
            .resource_replicas(
                5,
                150,
                "cpu",
                None,
                &pods5,
                metrics(&[("a", 10), ("b", 10), ("c", 10), ("d", 10)]),
                now(),
            )
            .expect("replicas");
        // (4 × 10 + 150) / 500 = 38 % → 0.253 × 5 → 2.
        assert_eq!(got.replicas, 2);
    }

    #[test]
    fn unready_and_pending_pods_count_as_nothing_on_a_scale_up_only() {
        let mut pending = pod("p", Some("100m"));
        if let Some(s) = pending.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        let pods = [pod("a", Some("100m")), pending];
        // Up: a at 100 % (target 50), p pending → (100 + 0) / 200 = 50 %: within tolerance.
        let got = calc()
            .resource_replicas(2, 50, "cpu", None, &pods, metrics(&[("a", 100)]), now())
            .expect("replicas");
        assert_eq!(got.replicas, 2);
        // Down: the pending pod is left out: 10 % against 50 → ceil(0.2 × 1) = 1.
        let got = calc()
            .resource_replicas(2, 50, "cpu", None, &pods, metrics(&[("a", 10)]), now())
            .expect("replicas");
        assert_eq!(got.replicas, 1);
        // Nothing measured among the ready ones.
        let err = calc()
            .resource_replicas(2, 50, "cpu", None, &pods[1..], PodMetrics::new(), now())
            .expect_err("none");
        assert_eq!(
            err.to_string(),
            "did not receive metrics for targeted pods (pods might be unready)"
        );
    }

    #[test]
    fn cpu_samples_from_a_pods_start_up_are_left_out() {
        // Started 60 s ago, ready 10 s ago; the sample's 15 s window reaches back before it.
        let young: Pod = serde_json::from_value(json!({
            "metadata": {"name": "young"},
            "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": "Running", "startTime": ago(60),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(10)}]},
        }))
        .expect("pod");
        let pods = [pod("a", Some("100m")), young];
        let m = metrics(&[("a", 100), ("young", 900)]);
        // Only a counts: 100 % against 50 %, up; young counts as 0 → 50 %: within tolerance.
        let got = calc()
            .resource_replicas(2, 50, "cpu", None, &pods, m.clone(), now())
            .expect("replicas");
        assert_eq!(got.replicas, 2);
        assert_eq!(got.utilization, 100);
        // Memory has no initialization period: both count.
        let got = calc()
            .raw_resource_replicas(2, 100, "memory", &pods, m, now())
            .expect("replicas");
        assert_eq!(got, (10, 500));
    }

    #[test]
    fn average_value_targets() {
        let pods = [pod("a", Some("100m")), pod("b", Some("100m"))];
        // 300m each against 100m: ceil(3 × 2) = 6.
        let got = calc()
            .raw_resource_replicas(
                2,
                100,
                "cpu",
                &pods,
                metrics(&[("a", 300), ("b", 300)]),
                now(),
            )
            .expect("replicas");
        assert_eq!(got, (6, 300));
        // One missing on a scale down counts as the target.
        let got = calc()
            .raw_resource_replicas(2, 100, "cpu", &pods, metrics(&[("a", 10)]), now())
            .expect("replicas");
        // (10 + 100) / 2 = 55 → 0.55 × 2 → 2: no change.
        assert_eq!(got, (2, 10));
        let err = calc()
            .raw_resource_replicas(2, 100, "cpu", &[], PodMetrics::new(), now())
            .expect_err("no pods");
        assert_eq!(
            err.to_string(),
            "no pods returned by selector while calculating replica count"
        );
    }

    #[test]
    fn container_requests_count_one_container_and_sidecars() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "init", "resources": {}},
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}
                ],
                "containers": [
                    {"name": "app", "resources": {"requests": {"cpu": "200m"}}},
                    {"name": "log", "resources": {"requests": {"cpu": "0.1"}}}
                ]
            },
        }))
        .expect("pod");
        let all = requests(std::slice::from_ref(&p), None, "cpu").expect("requests");
        assert_eq!(all.get("p"), Some(&350));
        let one = requests(std::slice::from_ref(&p), Some("app"), "cpu").expect("requests");
        assert_eq!(one.get("p"), Some(&200));
        let err = requests(&[p], None, "memory").expect_err("none for memory");
        assert_eq!(
            err.to_string(),
            "missing request for memory in container app of Pod p"
        );
    }
}
