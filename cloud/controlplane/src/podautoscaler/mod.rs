//! The HorizontalPodAutoscaler controller, as kube-controller-manager's `podautoscaler`
//! (`horizontal.go`, v1.33) does it: every sync period (`--horizontal-pod-autoscaler-sync-period`,
//! 15 s) each HPA's target is read through its `/scale` subresource, the pods its
//! `status.selector` selects are measured through the resource metrics API
//! (`metrics.k8s.io`, [`metrics`]), each metric proposes a replica count ([`replicas`]), the
//! largest wins, stabilization windows and rate policies bound it ([`behavior`]), and the
//! scale is written back. Start at [`reconcile`].
//!
//! What kube does and is kept:
//!
//! - the target is any kind with a `scale` subresource the API serves (Deployments,
//!   ReplicaSets, StatefulSets, ReplicationControllers, custom resources), found by discovery
//!   from `scaleTargetRef`; one that cannot be read sets `AbleToScale=False` (`FailedGetScale`);
//! - a target scaled to 0 (with `minReplicas` above 0) is left alone: `ScalingActive=False`
//!   (`ScalingDisabled`); replicas outside `minReplicas`..`maxReplicas` are brought inside
//!   first;
//! - `Resource` and `ContainerResource` metrics of `cpu` and `memory`, as `Utilization` (of
//!   the containers' requests; a container without one is `FailedGetResourceMetric` with
//!   kube's message) or `AverageValue`; `Pods`, `Object` and `External` metrics need custom or
//!   external metrics APIs Wedge does not serve, and say so in `ScalingActive`;
//! - a failing metric does not stop the others from scaling up, but does stop a scale down;
//! - status (`currentReplicas`, `desiredReplicas`, `currentMetrics`, `lastScaleTime`), the
//!   `AbleToScale`, `ScalingActive` and `ScalingLimited` conditions, and the events
//!   (`SuccessfulRescale`, `FailedRescale`, `FailedGetScale`, `FailedGetResourceMetric`,
//!   `FailedComputeMetricsReplicas`...), with kube's reasons and messages;
//! - the status is written only when it changed.
//!
//! Differences: an HPA is looked at as soon as it is made or its spec changes (kube waits a
//! sync period), then every sync period; its own status writes do not wake it. Warning events
//! that repeat are recorded once an hour, not counted up. kube's check that no other HPA
//! selects the same pods (`AmbiguousSelector`) is not made.

pub mod behavior;
pub mod metrics;
pub mod replicas;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::clock::Clock;
use crate::events::{EventType, Recorder};
use crate::expectations::api_message;
use behavior::{Behavior, History};
use replicas::Calculator;

/// The controller's settings: kube-controller-manager's `--horizontal-pod-autoscaler-*` flags.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How often each HPA is looked at (`--horizontal-pod-autoscaler-sync-period`).
    pub sync_period: Duration,
    /// How far from the target usage may be before the replicas change
    /// (`--horizontal-pod-autoscaler-tolerance`).
    pub tolerance: f64,
    /// How long after a pod starts its CPU samples may be from its start-up
    /// (`--horizontal-pod-autoscaler-cpu-initialization-period`).
    pub cpu_initialization_period: Duration,
    /// How long after a pod starts it may still become ready for the first time
    /// (`--horizontal-pod-autoscaler-initial-readiness-delay`).
    pub initial_readiness_delay: Duration,
    /// The scale-down stabilization window of HPAs that set none
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`).
    pub downscale_stabilization: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sync_period: Duration::from_secs(15),
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            downscale_stabilization: Duration::from_secs(300),
        }
    }
}

/// How long a warning event is not recorded again.
const NOTED_FOR: Duration = Duration::from_secs(3600);
/// How soon an HPA whose reconcile failed (its status could not be written, its pods not
/// listed) is looked at again, at most.
const RETRY: Duration = Duration::from_secs(5);

/// What the reconciler shares.
pub struct Context {
    client: Client,
    recorder: Recorder,
    clock: Clock,
    config: Config,
    /// Each HPA's recommendations and scale changes, by uid, and when it was last looked at.
    histories: Mutex<HashMap<String, (History, tokio::time::Instant)>>,
    /// Warnings recorded: (HPA uid, reason, message) and when.
    noted: Mutex<HashMap<(String, String, String), tokio::time::Instant>>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    clock: Clock,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (store, writer) = reflector::store();
    // Only a new HPA or a new spec (generation) wakes it: its status writes must not, or each
    // would be followed at once by another look at metrics that have not moved yet.
    let changes = watcher(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
        client,
        clock,
        config,
        histories: Mutex::new(HashMap::new()),
        noted: Mutex::new(HashMap::new()),
    });
    Controller::for_stream(changes, store)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "horizontalpodautoscaler reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy(_hpa: Arc<HorizontalPodAutoscaler>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "horizontalpodautoscaler reconcile failed; retrying");
    Action::requeue(RETRY.min(ctx.config.sync_period))
}

/// One look at `hpa`: scale its target if the metrics say so, and write its status.
pub async fn reconcile(
    hpa: Arc<HorizontalPodAutoscaler>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if hpa.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut look = Look {
        ctx: &ctx,
        hpa: &hpa,
        status: hpa.status.clone().unwrap_or_default(),
        now: ctx.clock.now(),
    };
    look.run().await?;
    let status = look.status;
    if hpa.status.as_ref() != Some(&status) {
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(ctx.client.clone(), &hpa.namespace().unwrap_or_default());
        api.patch_status(
            &hpa.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|e| Error::api("update status of", hpa.as_ref(), e))?;
    }
    Ok(Action::requeue(ctx.config.sync_period))
}

/// A metric that gave no replica count: the reason of its condition and event, and the
/// error (the event's message; the condition's after kube's preamble).
struct Failed {
    reason: &'static str,
    message: String,
}

/// A metric's proposal.
struct Proposal {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

/// The pods and their metrics, read at most once per look.
struct Inputs {
    pods: Vec<Pod>,
    usage: Option<Result<Vec<metrics::PodUsage>, String>>,
}

/// One look at one HPA.
struct Look<'a> {
    ctx: &'a Context,
    hpa: &'a HorizontalPodAutoscaler,
    status: HorizontalPodAutoscalerStatus,
    now: Timestamp,
}

impl Look<'_> {
    fn uid(&self) -> String {
        self.hpa.uid().unwrap_or_default()
    }

    fn namespace(&self) -> String {
        self.hpa.namespace().unwrap_or_default()
    }

    /// kube's `setCondition`: the transition time moves only when the status does.
    fn condition(&mut self, kind: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" };
        let conditions = self.status.conditions.get_or_insert_with(Vec::new);
        let index = match conditions.iter().position(|c| c.type_ == kind) {
            Some(i) => i,
            None => {
                conditions.push(HorizontalPodAutoscalerCondition {
                    type_: kind.to_owned(),
                    ..Default::default()
                });
                conditions.len() - 1
            }
        };
        let c = &mut conditions[index];
        if c.status != status {
            c.last_transition_time = Some(Time(self.now));
        }
        c.status = status.to_owned();
        c.reason = Some(reason.to_owned());
        c.message = Some(message);
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        if kind == EventType::Warning {
            let Ok(mut noted) = self.ctx.noted.lock() else {
                return;
            };
            noted.retain(|_, at| at.elapsed() <= NOTED_FOR);
            let key = (self.uid(), reason.to_owned(), message.to_owned());
            if noted.insert(key, tokio::time::Instant::now()).is_some() {
                return;
            }
        }
        self.ctx
            .recorder
            .record(self.hpa.object_ref(&()), kind, reason, message);
    }

    /// kube's `reconcileAutoscaler`.
    async fn run(&mut self) -> Result<(), Error> {
        let spec = self.hpa.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let namespace = self.namespace();
        let (api, scale) = match self.scale(&namespace, target).await {
            Ok(found) => found,
            Err(message) => {
                self.event(EventType::Warning, "FailedGetScale", &message);
                self.condition(
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    format!(
                        "the HPA controller was unable to get the target's current scale: {message}"
                    ),
                );
                return Ok(());
            }
        };
        self.condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".to_owned(),
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let uid = self.uid();
        if let Ok(mut histories) = self.ctx.histories.lock() {
            // HPAs not looked at for long are gone.
            let forget = self.ctx.config.sync_period * 10 + Duration::from_secs(600);
            histories.retain(|_, (_, seen)| seen.elapsed() <= forget);
            let entry = histories
                .entry(uid.clone())
                .or_insert_with(|| (History::default(), tokio::time::Instant::now()));
            entry.1 = tokio::time::Instant::now();
            entry.0.init(current, self.now);
        }
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let behavior = spec
            .behavior
            .as_ref()
            .map(|b| Behavior::of(b, self.ctx.config.downscale_stabilization));
        let mut statuses = Vec::new();
        let mut desired = 0;
        let mut reason = String::new();
        let rescale;
        if current == 0 && min != 0 {
            rescale = false;
            self.condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".to_owned(),
            );
        } else if current > max {
            reason = "Current number of replicas above Spec.MaxReplicas".to_owned();
            desired = max;
            rescale = true;
        } else if current < min {
            reason = "Current number of replicas below Spec.MinReplicas".to_owned();
            desired = min;
            rescale = true;
        } else {
            let (proposed, metric, metric_statuses, failure) = self
                .replicas_for_metrics(&spec.metrics.unwrap_or_default(), &scale)
                .await?;
            statuses = metric_statuses;
            let Some(proposed) = proposed else {
                self.status.current_replicas = Some(current);
                self.status.current_metrics = Some(statuses);
                if let Some(message) = failure {
                    self.event(EventType::Warning, "FailedComputeMetricsReplicas", &message);
                }
                return Ok(());
            };
            desired = proposed;
            if desired > current {
                reason = format!("{metric} above target");
            }
            if desired < current {
                reason = "All metrics below target".to_owned();
            }
            let normalized = match self.ctx.histories.lock() {
                Ok(mut histories) => histories.get_mut(&uid).map(|(h, _)| {
                    h.normalize(
                        behavior.as_ref(),
                        self.ctx.config.downscale_stabilization,
                        current,
                        desired,
                        min,
                        max,
                        self.now,
                    )
                }),
                Err(_) => None,
            };
            if let Some(n) = normalized {
                self.condition(
                    "AbleToScale",
                    true,
                    n.able_reason,
                    n.able_message.to_owned(),
                );
                self.condition(
                    "ScalingLimited",
                    n.limited,
                    n.limited_reason,
                    n.limited_message.to_owned(),
                );
                desired = n.replicas;
            }
            rescale = desired != current;
        }

        if rescale {
            let mut scaled = scale.clone();
            scaled.spec.get_or_insert_with(Default::default).replicas = Some(desired);
            if let Err(e) = api
                .replace_scale(&spec.scale_target_ref.name, &PostParams::default(), &scaled)
                .await
            {
                let message = api_message(&e);
                self.event(
                    EventType::Warning,
                    "FailedRescale",
                    &format!("New size: {desired}; reason: {reason}; error: {message}"),
                );
                self.condition(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {message}"),
                );
                self.status.current_replicas = Some(current);
                self.status.current_metrics = Some(statuses);
                return Ok(());
            }
            self.condition(
                "AbleToScale",
                true,
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
            );
            self.event(
                EventType::Normal,
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {reason}"),
            );
            if let Ok(mut histories) = self.ctx.histories.lock()
                && let Some((h, _)) = histories.get_mut(&uid)
            {
                h.record_scale(behavior.as_ref(), current, desired, self.now);
            }
            tracing::info!(
                hpa = %self.hpa.name_any(),
                namespace = %namespace,
                from = current,
                to = desired,
                %reason,
                "rescaled"
            );
            self.status.last_scale_time = Some(Time(self.now));
        } else {
            desired = current;
        }
        self.status.current_replicas = Some(current);
        self.status.desired_replicas = desired;
        self.status.current_metrics = Some(statuses);
        Ok(())
    }

    /// The target's Scale, through an API for its kind; or kube's message for why not.
    async fn scale(
        &self,
        namespace: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<(Api<DynamicObject>, Scale), String> {
        let api_version = target.api_version.as_deref().unwrap_or_default();
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        if version.contains('/') {
            return Err(format!("unexpected GroupVersion string: {api_version}"));
        }
        let resource = self
            .resource(group, version, &target.kind)
            .await
            .ok_or_else(|| {
                format!(
                    "no matches for kind \"{}\" in group \"{group}\"",
                    target.kind
                )
            })?;
        let api =
            Api::<DynamicObject>::namespaced_with(self.ctx.client.clone(), namespace, &resource);
        let scale = api
            .get_scale(&target.name)
            .await
            .map_err(|e| api_message(&e))?;
        Ok((api, scale))
    }

    /// The resource of `kind` in `group`: at `version` if served there, else at the group's
    /// preferred version (as kube's REST mapper maps a group and kind).
    async fn resource(&self, group: &str, version: &str, kind: &str) -> Option<ApiResource> {
        let group = kube::discovery::oneshot::group(&self.ctx.client, group)
            .await
            .ok()?;
        group
            .versioned_resources(version)
            .into_iter()
            .find(|(r, _)| r.kind == kind)
            .or_else(|| group.recommended_kind(kind))
            .map(|(r, _)| r)
    }

    /// kube's `computeReplicasForMetrics`: the largest proposal, the metric it came from, every
    /// metric's status, and, when no proposal may be acted on, the error event's message.
    async fn replicas_for_metrics(
        &mut self,
        specs: &[MetricSpec],
        scale: &Scale,
    ) -> Result<(Option<i32>, String, Vec<MetricStatus>, Option<String>), Error> {
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.is_empty() {
            self.event(
                EventType::Warning,
                "SelectorRequired",
                "selector is required",
            );
            self.condition(
                "ScalingActive",
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector".to_owned(),
            );
            return Ok((
                None,
                String::new(),
                Vec::new(),
                Some("selector is required".into()),
            ));
        }
        let namespace = self.namespace();
        let pods = match Api::<Pod>::namespaced(self.ctx.client.clone(), &namespace)
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(list) => list.items,
            Err(kube::Error::Api(s)) if s.code == 400 => {
                let message = format!(
                    "couldn't convert selector into a corresponding internal selector object: {}",
                    s.message
                );
                self.event(EventType::Warning, "InvalidSelector", &message);
                self.condition("ScalingActive", false, "InvalidSelector", message.clone());
                return Ok((None, String::new(), Vec::new(), Some(message)));
            }
            Err(e) => return Err(Error::api("list pods for", self.hpa, e)),
        };
        let mut inputs = Inputs { pods, usage: None };
        let default_metric;
        let specs = if specs.is_empty() {
            // What the API defaults an HPA without metrics to: 80 % CPU.
            default_metric = vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(k8s_openapi::api::autoscaling::v2::ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(80),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }];
            &default_metric[..]
        } else {
            specs
        };
        let spec_replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut statuses = vec![MetricStatus::default(); specs.len()];
        let mut replicas = 0;
        let mut metric = String::new();
        let mut invalid = 0;
        let mut first: Option<(Failed, String)> = None;
        for (i, spec) in specs.iter().enumerate() {
            match self
                .replicas_for_metric(spec, spec_replicas, &namespace, &selector, &mut inputs)
                .await
            {
                Ok(p) => {
                    if replicas == 0 || p.replicas > replicas {
                        replicas = p.replicas;
                        metric = p.name;
                    }
                    statuses[i] = p.status;
                }
                Err((failed, wrapped)) => {
                    self.event(EventType::Warning, failed.reason, &failed.message);
                    invalid += 1;
                    if first.is_none() {
                        first = Some((failed, wrapped));
                    }
                }
            }
        }
        let error = first.as_ref().map(|(_, wrapped)| {
            format!(
                "invalid metrics ({invalid} invalid out of {}), first error is: {wrapped}",
                specs.len()
            )
        });
        if let Some((failed, _)) =
            first.filter(|_| invalid >= specs.len() || replicas < spec_replicas)
        {
            self.condition(
                "ScalingActive",
                false,
                failed.reason,
                format!(
                    "the HPA was unable to compute the replica count: {}",
                    failed.message
                ),
            );
            return Ok((None, metric, statuses, error));
        }
        self.condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {metric}"),
        );
        Ok((Some(replicas), metric, statuses, None))
    }

    /// kube's `computeReplicasForMetric` for one metric: its proposal, or why none (and the
    /// error as `computeReplicasForMetrics` quotes it).
    async fn replicas_for_metric(
        &self,
        spec: &MetricSpec,
        current: i32,
        namespace: &str,
        selector: &str,
        inputs: &mut Inputs,
    ) -> Result<Proposal, (Failed, String)> {
        let unserved = |reason: &'static str, message: String| {
            let wrapped = message.clone();
            Err((Failed { reason, message }, wrapped))
        };
        match (
            spec.type_.as_str(),
            &spec.resource,
            &spec.container_resource,
        ) {
            ("Resource", Some(source), _) => {
                let out = self
                    .resource_metric(
                        current,
                        &source.name,
                        None,
                        &source.target,
                        namespace,
                        selector,
                        inputs,
                    )
                    .await;
                match out {
                    Ok((replicas, name, value)) => Ok(Proposal {
                        replicas,
                        name,
                        status: MetricStatus {
                            type_: "Resource".into(),
                            resource: Some(ResourceMetricStatus {
                                name: source.name.clone(),
                                current: value,
                            }),
                            ..Default::default()
                        },
                    }),
                    Err(message) => {
                        let wrapped = format!(
                            "failed to get {} resource metric value: {message}",
                            source.name
                        );
                        Err((
                            Failed {
                                reason: "FailedGetResourceMetric",
                                message,
                            },
                            wrapped,
                        ))
                    }
                }
            }
            ("ContainerResource", _, Some(source)) => {
                let out = self
                    .resource_metric(
                        current,
                        &source.name,
                        Some(&source.container),
                        &source.target,
                        namespace,
                        selector,
                        inputs,
                    )
                    .await;
                match out {
                    Ok((replicas, name, value)) => Ok(Proposal {
                        replicas,
                        name,
                        status: MetricStatus {
                            type_: "ContainerResource".into(),
                            container_resource: Some(ContainerResourceMetricStatus {
                                name: source.name.clone(),
                                container: source.container.clone(),
                                current: value,
                            }),
                            ..Default::default()
                        },
                    }),
                    Err(message) => {
                        let wrapped = format!(
                            "failed to get {} container metric value: {message}",
                            source.container
                        );
                        Err((
                            Failed {
                                reason: "FailedGetContainerResourceMetric",
                                message,
                            },
                            wrapped,
                        ))
                    }
                }
            }
            ("Pods", ..) => unserved(
                "FailedGetPodsMetric",
                format!(
                    "unable to get metric {}: unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered",
                    spec.pods
                        .as_ref()
                        .map(|p| p.metric.name.as_str())
                        .unwrap_or_default()
                ),
            ),
            ("Object", ..) => unserved(
                "FailedGetObjectMetric",
                format!(
                    "unable to get metric {}: unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered",
                    spec.object
                        .as_ref()
                        .map(|o| o.metric.name.as_str())
                        .unwrap_or_default()
                ),
            ),
            ("External", ..) => unserved(
                "FailedGetExternalMetric",
                format!(
                    "unable to get external metric {namespace}/{}: unable to fetch metrics from external metrics API: no external metrics API (external.metrics.k8s.io) registered",
                    spec.external
                        .as_ref()
                        .map(|e| e.metric.name.as_str())
                        .unwrap_or_default()
                ),
            ),
            (other, ..) => unserved(
                "InvalidMetricSourceType",
                format!("unknown metric source type {other:?}"),
            ),
        }
    }

    /// kube's `computeStatusForResourceMetricGeneric`: the proposal, the metric's name as the
    /// rescale reason writes it, and its current value; or the error.
    #[allow(clippy::too_many_arguments)]
    async fn resource_metric(
        &self,
        current: i32,
        resource: &str,
        container: Option<&str>,
        target: &MetricTarget,
        namespace: &str,
        selector: &str,
        inputs: &mut Inputs,
    ) -> Result<(i32, String, MetricValueStatus), String> {
        let calc = Calculator {
            tolerance: self.ctx.config.tolerance,
            cpu_initialization_period: self.ctx.config.cpu_initialization_period,
            initial_readiness_delay: self.ctx.config.initial_readiness_delay,
        };
        let what = if target.average_value.is_some() {
            "usage"
        } else {
            "utilization"
        };
        let fail = |e: String| format!("failed to get {resource} {what}: {e}");
        if target.average_value.is_none() && target.average_utilization.is_none() {
            return Err("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".to_owned());
        }
        if inputs.usage.is_none() {
            inputs.usage = Some(metrics::list(&self.ctx.client, namespace, selector).await);
        }
        let usage = match inputs.usage.as_ref() {
            Some(Ok(usage)) => usage,
            Some(Err(e)) => {
                return Err(fail(format!(
                    "unable to get metrics for resource {resource}: {e}"
                )));
            }
            None => return Err(fail("no metrics".into())),
        };
        let measured = metrics::of(usage, resource, container, namespace).map_err(|e| {
            fail(format!(
                "unable to get metrics for resource {resource}: {e}"
            ))
        })?;
        if let Some(average) = &target.average_value {
            let target = wedge_core::quantity::parse_milli(&average.0)
                .ok()
                .and_then(|m| i64::try_from(m).ok())
                .unwrap_or(0);
            let (replicas, usage) = calc
                .raw_resource_replicas(current, target, resource, &inputs.pods, measured, self.now)
                .map_err(|e| fail(e.to_string()))?;
            return Ok((
                replicas,
                format!("{resource} resource"),
                MetricValueStatus {
                    average_value: Some(Quantity(metrics::quantity(usage))),
                    ..Default::default()
                },
            ));
        }
        let target = target.average_utilization.unwrap_or(0);
        let got = calc
            .resource_replicas(
                current,
                target,
                resource,
                container,
                &inputs.pods,
                measured,
                self.now,
            )
            .map_err(|e| fail(e.to_string()))?;
        let name = if container.is_some() {
            format!("{resource} container resource utilization (percentage of request)")
        } else {
            format!("{resource} resource utilization (percentage of request)")
        };
        Ok((
            got.replicas,
            name,
            MetricValueStatus {
                average_utilization: Some(got.utilization),
                average_value: Some(Quantity(metrics::quantity(got.raw))),
                ..Default::default()
            },
        ))
    }
}
