//! The Job controller: runs a Job's pods to completion, as kube-controller-manager's does
//! (v1.33), on edges of either runtime. Batch work suits Wasm at the edge: a pod that runs
//! for milliseconds and exits.
//!
//! A reconcile reads the Job's pods (by controller owner reference) from the shared pod store
//! and decides, in one pure function ([`decide`]), what kube's `syncJob` would:
//!
//! - **pods**: as many active as `parallelism` allows and the remaining completions need (a
//!   work queue, with no `completions`, makes `parallelism` pods until one succeeds); in
//!   **Indexed** mode one per pending index, lowest first, carrying the index in the
//!   `batch.kubernetes.io/job-completion-index` annotation and label, the `JOB_COMPLETION_INDEX`
//!   env (a fieldRef to the annotation, as kube writes it) and the hostname `<job>-<index>`;
//!   duplicates and out-of-range indexes are deleted. Finished pods are kept until the Job
//!   goes (the garbage collector then deletes them with it);
//! - **failures**: `backoffLimit` counts failed pods (and, for `restartPolicy: OnFailure`, the
//!   restarts of active pods, as `pastBackoffLimitOnFailure` does); a replacement waits out
//!   kube's pod failure backoff (10 s doubled per failure since the last success, at most
//!   10 min);
//! - **`podFailurePolicy`**: a failed pod's first matching rule (exit codes of its containers,
//!   `In` or `NotIn`, or its conditions) decides: `FailJob` fails the Job at once (reason
//!   `PodFailurePolicy`, kube's message naming the container and exit code), `Ignore` counts it
//!   for nothing (no failure, no backoff), `Count` (and no match) counts it; with
//!   `podReplacementPolicy: Failed` (the default under a policy) a terminating pod keeps its
//!   place until it is gone;
//! - **conditions**, in 1.33's order: `SuccessCriteriaMet` then, once no pod is active or
//!   terminating, `Complete` (with `completionTime`); `FailureTarget` then `Failed` (reasons
//!   `BackoffLimitExceeded`, `DeadlineExceeded` for `activeDeadlineSeconds`), active pods being
//!   deleted in between; `Suspended` (active pods deleted, `startTime` reset, so the deadline
//!   counts again from the resume);
//! - **status**: `active`, `ready`, `terminating`, `succeeded`, `failed`, `startTime`,
//!   `completedIndexes`.
//!
//! `ttlSecondsAfterFinished` (kube's TTL-after-finished controller) is done here too: the Job
//! is deleted, in the foreground and only at the uid that finished, that long after its
//! `Complete` or `Failed` condition; its pods go with it through the garbage collector.
//!
//! **Expectations**: after creating or deleting pods, a reconcile records what it did, and the
//! next one for the Job waits (returns, to be woken by the pod events its own writes cause) until
//! the shared store shows all of it, as kube-controller-manager's expectations make it wait for
//! its informer; an expectation older than [`crate::expectations::TTL`] is dropped, as kube's are
//! ([`crate::expectations`]).
//!
//! **No `batch.kubernetes.io/job-tracking` finalizer.** kube puts it on every pod so that a pod
//! deleted before the controller saw it finish (kube's terminated-pod GC, eviction of pods on
//! lost nodes) is still counted once. Nothing in Wedge deletes a finished pod but the Job's own
//! deletion (no terminated-pod GC; the node lifecycle never evicts: an offline edge keeps its
//! pods), so counting the pods the store holds is exact, and the counts in the status never go
//! down (`succeeded` and `failed` are the larger of the stored count and the pods', Indexed
//! completions the union of the stored `completedIndexes` and the pods'). What a finalizer would
//! cost instead: a pod write per pod, and pods stuck Terminating (edges and the namespace
//! controller waiting on them) whenever this controller is not running. The one difference left:
//! a user deleting finished pods of an unfinished Job by hand may make it run one more pod than
//! kube would, and a pod deleted while it runs is replaced without counting as a failure.
//!
//! **A template that cannot work** (the API refuses its pods as invalid) is reported once, as a
//! `FailedCreate` warning event, and not tried again until the Job changes (or this process
//! restarts), instead of being retried forever.
//!
//! Not yet: the `FailIndex` action and `backoffLimitPerIndex`/`maxFailedIndexes` (such a
//! failure counts as any other), `successPolicy`, and adopting orphaned pods that match the
//! selector. Jobs whose `spec.managedBy` names another controller are left alone, as kube
//! leaves them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, PodFailurePolicy};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, Refusals, Writes, api_message, version_of};
use crate::indexes::{ControllerIndex, Indexed};
use crate::pods;

/// The annotation and label holding an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The env var an Indexed Job pod's containers read their index from.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The `spec.managedBy` of Jobs this controller acts on (also when unset).
pub const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// kube's `DefaultJobPodFailureBackOff`.
pub const POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// kube's `MaxJobPodFailureBackOff`.
pub const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);
/// How many pod creations or deletions one reconcile has in flight.
const BURST: usize = crate::replicaset::BURST;
/// How soon a Job is looked at again after its delete met a newer version or none.
const RECHECK: Duration = Duration::from_secs(1);
/// How soon a Job whose status write met a newer version is looked at again (the watch
/// delivers that version meanwhile).
const STALE: Duration = Duration::from_millis(100);

/// Condition messages and reasons, as kube 1.33 words them.
const COMPLETIONS_REACHED: (&str, &str) = (
    "CompletionsReached",
    "Reached expected number of succeeded pods",
);
const BACKOFF_LIMIT_EXCEEDED: (&str, &str) = (
    "BackoffLimitExceeded",
    "Job has reached the specified backoff limit",
);
/// The reason of a Job failed by a `FailJob` rule of its `podFailurePolicy`.
const POD_FAILURE_POLICY: &str = "PodFailurePolicy";
const DEADLINE_EXCEEDED: (&str, &str) = (
    "DeadlineExceeded",
    "Job was active longer than specified deadline",
);

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    /// The pods by controller uid.
    index: ControllerIndex<Pod>,
    recorder: Recorder,
    /// What the last reconcile of each Job (by uid) wrote.
    expectations: Expectations<String, Writes>,
    /// Jobs whose pods the API refused as invalid.
    refused: Refusals,
}

/// Runs the controller until `shutdown` resolves. `pods` is the shared pod store and
/// `pod_changes` its subscription.
pub async fn run(
    client: Client,
    pods: Indexed<Pod>,
    pod_changes: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "job-controller"),
        client: client.clone(),
        pods: pods.store,
        index: pods.index,
        expectations: Expectations::new("pod"),
        refused: Refusals::default(),
    });
    Controller::new(Api::<Job>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_changes)
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "job reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

// ---------------------------------------------------------------------------------------------
// What to do: pure.

/// The parts of a Job's spec the controller acts on, defaulted as the API server defaults them.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Pods to run at once.
    pub parallelism: i32,
    /// Successful pods wanted; `None`: a work queue, done when one succeeds and none is active.
    pub completions: Option<i32>,
    /// Indexed completion mode.
    pub indexed: bool,
    /// Failures tolerated.
    pub backoff_limit: i32,
    /// Seconds from the start after which the Job fails.
    pub active_deadline_seconds: Option<i64>,
    /// Suspended: no pods.
    pub suspend: bool,
    /// The template's `restartPolicy` is `OnFailure` (restarts count as failures).
    pub on_failure: bool,
    /// Which failed pods fail the Job at once, count, or are ignored.
    pub pod_failure_policy: Option<PodFailurePolicy>,
    /// `podReplacementPolicy: Failed`: a terminating pod is replaced only once it is gone.
    pub replace_only_failed: bool,
}

impl Spec {
    /// The spec of `job`.
    pub fn of(job: &Job) -> Self {
        let spec = job.spec.as_ref();
        let completions = spec.and_then(|s| s.completions);
        let parallelism = spec.and_then(|s| s.parallelism).unwrap_or(1).max(0);
        Self {
            parallelism,
            completions: completions.map(|c| c.max(0)),
            indexed: spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed"),
            backoff_limit: spec.and_then(|s| s.backoff_limit).unwrap_or(6).max(0),
            active_deadline_seconds: spec.and_then(|s| s.active_deadline_seconds),
            suspend: spec.and_then(|s| s.suspend).unwrap_or(false),
            on_failure: spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure"),
            pod_failure_policy: spec.and_then(|s| s.pod_failure_policy.clone()),
            replace_only_failed: spec.and_then(|s| s.pod_replacement_policy.as_deref())
                == Some("Failed"),
        }
    }
}

/// How a pod counts for its Job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Neither finished nor being deleted.
    Active,
    /// Being deleted, not finished.
    Terminating,
    /// Phase Succeeded.
    Succeeded,
    /// Phase Failed.
    Failed,
}

/// How `pod` counts.
pub fn pod_state(pod: &Pod) -> PodState {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") => PodState::Failed,
        _ if pod.metadata.deletion_timestamp.is_some() => PodState::Terminating,
        _ => PodState::Active,
    }
}

/// The completion index a pod carries (annotation, else label), if valid.
pub fn pod_index(pod: &Pod) -> Option<i32> {
    let from = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.and_then(|m| m.get(COMPLETION_INDEX))
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|i| *i >= 0)
    };
    from(pod.metadata.annotations.as_ref()).or_else(|| from(pod.metadata.labels.as_ref()))
}

/// When a finished pod finished: its containers' latest `finishedAt`, else the Ready
/// condition's last transition, else its creation.
fn finished_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    containers
        .or_else(|| {
            status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// How long a replacement pod must still wait: kube's pod failure backoff, 10 s doubled for
/// each failure since the last success (at most 10 min), from the last failure. Computed from
/// the pods' own finish times, as the Job controller does, so it survives a restart of the
/// control plane: no retry crate's in-memory schedule can.
pub fn remaining_backoff(pods: &[Arc<Pod>], now: jiff::Timestamp) -> Duration {
    let mut finished: Vec<(jiff::Timestamp, bool)> = pods
        .iter()
        .filter_map(|p| match pod_state(p) {
            PodState::Succeeded => Some((finished_at(p)?, true)),
            PodState::Failed => Some((finished_at(p)?, false)),
            _ => None,
        })
        .collect();
    finished.sort();
    let failures = finished.iter().rev().take_while(|(_, ok)| !ok).count();
    let Some((last_failure, _)) = finished.last().filter(|(_, ok)| !ok) else {
        return Duration::ZERO;
    };
    let mut backoff = POD_FAILURE_BACKOFF;
    for _ in 1..failures {
        backoff = backoff.saturating_mul(2);
        if backoff >= MAX_POD_FAILURE_BACKOFF {
            backoff = MAX_POD_FAILURE_BACKOFF;
            break;
        }
    }
    let elapsed = now.duration_since(*last_failure);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    backoff.saturating_sub(elapsed)
}

/// Indexes as kube writes `completedIndexes`: sorted, each run of consecutive indexes as
/// `first-last` (`1,3-5,7`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        if last == first {
            out.push(first.to_string());
        } else {
            out.push(format!("{first}-{last}"));
        }
    }
    out.join(",")
}

/// Parses `completedIndexes`, keeping the indexes below `completions`; what does not parse is
/// skipped.
pub fn parse_indexes(text: &str, completions: i32) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        if let (Ok(a), Ok(b)) = (a, b) {
            set.extend((a.max(0)..=b.min(completions.saturating_sub(1))).filter(|i| *i >= 0));
        }
    }
    set
}

/// What `podFailurePolicy` says of a failed pod: the action of the first rule it matches
/// (`FailJob`, `Ignore`, `Count`, `FailIndex`) and kube's words for it, or `None` (count it).
pub fn failure_action(policy: &PodFailurePolicy, pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let (namespace, name) = (
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    for (index, rule) in policy.rules.iter().enumerate() {
        if let Some(codes) = &rule.on_exit_codes {
            let matching = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .filter(|c| codes.container_name.as_ref().is_none_or(|n| *n == c.name))
                .find_map(|c| {
                    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let listed = codes.values.contains(&code);
                    let hit = code != 0
                        && match codes.operator.as_str() {
                            "In" => listed,
                            "NotIn" => !listed,
                            _ => false,
                        };
                    hit.then(|| (c.name.clone(), code))
                });
            if let Some((container, code)) = matching {
                let words = format!(
                    "Container {container} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}",
                    rule.action
                );
                return Some((rule.action.clone(), words));
            }
        }
        let conditions = status.conditions.iter().flatten();
        for c in conditions {
            let hit = rule
                .on_pod_conditions
                .iter()
                .flatten()
                .any(|p| p.type_ == c.type_ && p.status == c.status);
            if hit {
                let words = format!(
                    "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                    c.type_, rule.action
                );
                return Some((rule.action.clone(), words));
            }
        }
    }
    None
}

/// A condition of the Job's kind, if True.
fn true_condition<'a>(conditions: &'a [JobCondition], kind: &str) -> Option<&'a JobCondition> {
    conditions
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

/// An event the reconcile should record.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Normal or Warning.
    pub kind: EventType,
    /// The reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

/// What a reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write (as JSON; `startTime` null to clear it).
    pub status: Value,
    /// One entry per pod to create: its completion index in Indexed mode.
    pub create: Vec<Option<i32>>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// Events to record.
    pub events: Vec<Note>,
    /// When to look again without an event (a deadline, a backoff), if at all.
    pub requeue: Option<Duration>,
}

/// Sets condition `kind` to `status`, keeping its transition time when the status holds.
fn set_condition(
    conditions: &mut Vec<JobCondition>,
    kind: &str,
    status: &str,
    (reason, message): (&str, &str),
    now: jiff::Timestamp,
) -> bool {
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == kind) {
        if c.status == status {
            return false;
        }
        c.status = status.to_owned();
        c.reason = Some(reason.to_owned());
        c.message = Some(message.to_owned());
        c.last_probe_time = Some(time.clone());
        c.last_transition_time = Some(time);
        return true;
    }
    conditions.push(JobCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(time.clone()),
        last_transition_time: Some(time),
    });
    true
}

fn timestamp(t: jiff::Timestamp) -> Value {
    json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// What kube's `syncJob` would do for `job` with these `owned` pods at `now`.
pub fn decide(job: &Job, owned: &[Arc<Pod>], now: jiff::Timestamp) -> Plan {
    let spec = Spec::of(job);
    let status = job.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut delete = Vec::new();
    let mut create = Vec::new();
    let mut requeue = None;

    let mut active: Vec<&Arc<Pod>> = Vec::new();
    let (mut terminating, mut succeeded_pods, mut failed_pods) = (0, 0_i32, 0_i32);
    let mut succeeded_indexes = BTreeSet::new();
    // The first pod failure the policy says fails the Job, and the pods whose failure it
    // ignores (they count for nothing, backoff included).
    let mut fail_job: Option<String> = None;
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    for pod in owned {
        match pod_state(pod) {
            PodState::Active => active.push(pod),
            PodState::Terminating => terminating += 1,
            PodState::Succeeded => {
                succeeded_pods += 1;
                if let (Some(i), Some(c)) = (pod_index(pod), spec.completions)
                    && i < c
                {
                    succeeded_indexes.insert(i);
                }
            }
            PodState::Failed => {
                let action = spec
                    .pod_failure_policy
                    .as_ref()
                    .and_then(|policy| failure_action(policy, pod));
                match action {
                    Some((action, _)) if action == "Ignore" => {
                        ignored.insert(pod.name_any());
                    }
                    Some((action, words)) if action == "FailJob" => {
                        fail_job.get_or_insert(words);
                        failed_pods += 1;
                    }
                    _ => failed_pods += 1,
                }
            }
        }
    }
    let completed_indexes = if spec.indexed {
        let completions = spec.completions.unwrap_or(0);
        let mut set = parse_indexes(
            status.completed_indexes.as_deref().unwrap_or_default(),
            completions,
        );
        set.extend(succeeded_indexes);
        Some(set)
    } else {
        None
    };
    let succeeded = match &completed_indexes {
        Some(set) => i32::try_from(set.len()).unwrap_or(i32::MAX),
        None => status.succeeded.unwrap_or(0).max(succeeded_pods),
    };
    let failed = status.failed.unwrap_or(0).max(failed_pods);
    let mut start_time = status.start_time.as_ref().map(|t| t.0);
    let mut completion_time = status.completion_time.as_ref().map(|t| t.0);
    let finished = true_condition(&conditions, "Complete").is_some()
        || true_condition(&conditions, "Failed").is_some();

    // Active pods of an Indexed Job whose index is completed, out of range or a duplicate go.
    if spec.indexed && !finished {
        let completions = spec.completions.unwrap_or(0);
        let mut seen = BTreeSet::new();
        let mut keep = Vec::new();
        let mut by_age = active.clone();
        by_age.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for pod in by_age {
            let ok = pod_index(pod).is_some_and(|i| {
                i < completions
                    && !completed_indexes.as_ref().is_some_and(|s| s.contains(&i))
                    && seen.insert(i)
            });
            if ok {
                keep.push(pod);
            } else {
                delete.push(pod.name_any());
            }
        }
        active = keep;
    }

    if !finished {
        // A terminal state already decided, waiting for the pods to stop.
        let mut target = if let Some(c) = true_condition(&conditions, "FailureTarget") {
            Some(("Failed", c.reason.clone(), c.message.clone()))
        } else {
            true_condition(&conditions, "SuccessCriteriaMet")
                .map(|c| ("Complete", c.reason.clone(), c.message.clone()))
        };
        if target.is_none() {
            let restarts: i32 = active
                .iter()
                .filter_map(|p| p.status.as_ref())
                .flat_map(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                })
                .map(|c| c.restart_count)
                .sum();
            let past_on_failure = spec.on_failure
                && if spec.backoff_limit == 0 {
                    restarts > 0
                } else {
                    restarts >= spec.backoff_limit
                };
            let past_deadline = !spec.suspend
                && match (spec.active_deadline_seconds, start_time) {
                    (Some(limit), Some(start)) => {
                        now.duration_since(start).as_secs() >= limit.max(0)
                    }
                    _ => false,
                };
            let complete = match spec.completions {
                None => succeeded > 0 && active.is_empty(),
                Some(c) => succeeded >= c,
            };
            let owned_words = |(r, m): (&str, &str)| (r.to_owned(), m.to_owned());
            let decided = if let Some(words) = fail_job {
                Some(("FailureTarget", (POD_FAILURE_POLICY.to_owned(), words)))
            } else if failed > spec.backoff_limit || past_on_failure {
                Some(("FailureTarget", owned_words(BACKOFF_LIMIT_EXCEEDED)))
            } else if past_deadline {
                Some(("FailureTarget", owned_words(DEADLINE_EXCEEDED)))
            } else if complete {
                Some(("SuccessCriteriaMet", owned_words(COMPLETIONS_REACHED)))
            } else {
                None
            };
            if let Some((kind, (reason, message))) = decided {
                set_condition(
                    &mut conditions,
                    kind,
                    "True",
                    (reason.as_str(), message.as_str()),
                    now,
                );
                let end = if kind == "FailureTarget" {
                    "Failed"
                } else {
                    "Complete"
                };
                target = Some((end, Some(reason), Some(message)));
            }
        }
        if let Some((end, reason, message)) = target {
            // Every active pod goes; the end is declared once none is left running.
            delete.extend(active.iter().map(|p| p.name_any()));
            let reason = reason.unwrap_or_default();
            let message = message.unwrap_or_default();
            if active.is_empty() && terminating == 0 {
                set_condition(
                    &mut conditions,
                    end,
                    "True",
                    (reason.as_str(), message.as_str()),
                    now,
                );
                if end == "Complete" {
                    completion_time = Some(now);
                    events.push(Note {
                        kind: EventType::Normal,
                        reason: "Completed",
                        message: "Job completed".to_owned(),
                    });
                } else {
                    let reason = match reason.as_str() {
                        "DeadlineExceeded" => "DeadlineExceeded",
                        POD_FAILURE_POLICY => POD_FAILURE_POLICY,
                        _ => "BackoffLimitExceeded",
                    };
                    events.push(Note {
                        kind: EventType::Warning,
                        reason,
                        message,
                    });
                }
            }
            // Else the deletions of the pods still there wake the Job.
            active.clear();
        } else if spec.suspend {
            delete.extend(active.iter().map(|p| p.name_any()));
            active.clear();
            if set_condition(
                &mut conditions,
                "Suspended",
                "True",
                ("JobSuspended", "Job suspended"),
                now,
            ) {
                events.push(Note {
                    kind: EventType::Normal,
                    reason: "Suspended",
                    message: "Job suspended".to_owned(),
                });
            }
            start_time = None;
        } else {
            if true_condition(&conditions, "Suspended").is_some() {
                set_condition(
                    &mut conditions,
                    "Suspended",
                    "False",
                    ("JobResumed", "Job resumed"),
                    now,
                );
                events.push(Note {
                    kind: EventType::Normal,
                    reason: "Resumed",
                    message: "Job resumed".to_owned(),
                });
            }
            let start = *start_time.get_or_insert(now);
            if let Some(limit) = spec.active_deadline_seconds {
                let left = limit.max(0) - now.duration_since(start).as_secs();
                requeue = Some(Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1)));
            }
            // How many pods should be active.
            // Under `podReplacementPolicy: Failed` a terminating pod still holds its place.
            let holding = active.len()
                + if spec.replace_only_failed {
                    terminating
                } else {
                    0
                };
            let active_now = i32::try_from(holding).unwrap_or(i32::MAX);
            let want = match spec.completions {
                None if succeeded > 0 => active_now,
                None => spec.parallelism,
                Some(c) => (c - succeeded).clamp(0, spec.parallelism),
            };
            if active_now > want {
                let mut doomed = active.clone();
                doomed.sort_by(|a, b| pods::deletion_order(a, b));
                let extra = usize::try_from(active_now - want).unwrap_or(0);
                delete.extend(doomed.iter().take(extra).map(|p| p.name_any()));
            } else if active_now < want {
                let counted: Vec<Arc<Pod>> = owned
                    .iter()
                    .filter(|p| !ignored.contains(&p.name_any()))
                    .cloned()
                    .collect();
                let backoff = remaining_backoff(&counted, now);
                if backoff > Duration::ZERO {
                    requeue = Some(requeue.map_or(backoff, |r| r.min(backoff)));
                } else {
                    let missing = usize::try_from(want - active_now).unwrap_or(0);
                    if spec.indexed {
                        let taken: BTreeSet<i32> =
                            active.iter().filter_map(|p| pod_index(p)).collect();
                        let done = completed_indexes.clone().unwrap_or_default();
                        create.extend(
                            (0..spec.completions.unwrap_or(0))
                                .filter(|i| !taken.contains(i) && !done.contains(i))
                                .take(missing)
                                .map(Some),
                        );
                    } else {
                        create.extend(std::iter::repeat_n(None, missing));
                    }
                }
            }
        }
    } else {
        // Finished: nothing runs any more.
        delete.extend(active.iter().map(|p| p.name_any()));
        active.clear();
    }

    let ready = active.iter().filter(|p| pods::is_ready(p)).count();
    let mut out = serde_json::Map::new();
    out.insert("active".into(), json!(active.len()));
    out.insert("ready".into(), json!(ready));
    out.insert("terminating".into(), json!(terminating));
    out.insert("succeeded".into(), json!(succeeded));
    out.insert("failed".into(), json!(failed));
    out.insert(
        "startTime".into(),
        start_time.map_or(Value::Null, timestamp),
    );
    if let Some(t) = completion_time {
        out.insert("completionTime".into(), timestamp(t));
    }
    if let Some(set) = &completed_indexes {
        out.insert("completedIndexes".into(), json!(format_indexes(set)));
    }
    out.insert("uncountedTerminatedPods".into(), json!({}));
    if !conditions.is_empty() {
        out.insert(
            "conditions".into(),
            serde_json::to_value(&conditions).unwrap_or(Value::Null),
        );
    }
    delete.sort();
    delete.dedup();
    Plan {
        status: Value::Object(out),
        create,
        delete,
        events,
        requeue,
    }
}

/// When a finished Job with `ttlSecondsAfterFinished` is to be deleted: that long after its
/// `Complete` or `Failed` condition turned True.
pub fn ttl_expiry(job: &Job) -> Option<jiff::Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let conditions = job.status.as_ref()?.conditions.as_deref()?;
    let finished =
        true_condition(conditions, "Complete").or_else(|| true_condition(conditions, "Failed"))?;
    let at = finished
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| job.status.as_ref()?.completion_time.as_ref().map(|t| t.0))?;
    at.checked_add(jiff::SignedDuration::from_secs(i64::from(ttl.max(0))))
        .ok()
}

/// Whether the status `plan` writes differs from what `job` has.
fn status_changed(job: &Job, plan: &Value) -> bool {
    let current = serde_json::to_value(job.status.clone().unwrap_or_default()).unwrap_or_default();
    let Some(wanted) = plan.as_object() else {
        return false;
    };
    wanted.iter().any(|(k, v)| {
        let have = current.get(k).unwrap_or(&Value::Null);
        match (k.as_str(), v) {
            // Written as 0 and {}, read back as absent.
            (_, Value::Number(n)) if n.as_u64() == Some(0) => !(have.is_null() || have == v),
            ("uncountedTerminatedPods", _) => !(have.is_null() || have == v),
            _ => have != v,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Doing it.

fn owner_reference(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod for completion `index` (or of a NonIndexed Job) made from the template.
pub fn pod_from_template(job: &Job, index: Option<i32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let name = job.name_any();
    meta.name = None;
    meta.namespace = job.namespace();
    meta.owner_references = Some(vec![owner_reference(job)]);
    meta.finalizers = None;
    let mut spec = template.spec.unwrap_or_default();
    match index {
        None => meta.generate_name = Some(format!("{name}-")),
        Some(i) => {
            meta.generate_name = Some(format!("{name}-{i}-"));
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.to_owned(), i.to_string());
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.to_owned(), i.to_string());
            if spec.hostname.is_none() {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: COMPLETION_INDEX_ENV.to_owned(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..EnvVarSource::default()
                }),
            };
            for c in spec
                .init_containers
                .iter_mut()
                .flatten()
                .chain(spec.containers.iter_mut())
            {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|v| v.name == COMPLETION_INDEX_ENV) {
                    vars.push(env.clone());
                }
            }
        }
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
    if managed_by.is_some_and(|m| m != MANAGED_BY) {
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let now = jiff::Timestamp::now();

    let after = sync(&job, &ctx, &namespace, &uid, now).await?;
    // A finished Job with a TTL comes back when it runs out.
    let after = match ttl_expiry(&job) {
        Some(expiry) if now >= expiry => return delete_expired(&job, &ctx).await,
        Some(expiry) => {
            let wait = Duration::try_from(expiry.duration_since(now)).unwrap_or(RECHECK);
            Some(after.map_or(wait, |a| a.min(wait)))
        }
        None => after,
    };
    Ok(after.map_or_else(Action::await_change, |a| {
        Action::requeue(a.max(Duration::from_millis(100)))
    }))
}

/// Acts on the Job; returns when to look again without an event, if at all.
async fn sync(
    job: &Job,
    ctx: &Context,
    namespace: &str,
    uid: &str,
    now: jiff::Timestamp,
) -> Result<Option<Duration>, Error> {
    if !ctx.expectations.met(&uid.to_owned(), |w| {
        w.forget_shown(&ctx.pods, &ctx.index, namespace)
    }) {
        // The pod events our writes cause (creations and deletions) wake this Job.
        return Ok(None);
    }
    let owned = ctx.index.owned(&ctx.pods, namespace, uid);
    let mut plan = decide(job, &owned, now);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let generation = job.metadata.generation;
    if ctx.refused.refused(uid, generation) {
        plan.create.clear();
    }

    // Deletions first (a finished or suspended Job's active pods, extras).
    let deleted: Vec<String> = futures::stream::iter(plan.delete.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(Some(name)),
                    Err(e) if Error::is_gone_or_conflict(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(BURST)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::api("delete pod of", job, e))?
        .into_iter()
        .flatten()
        .collect();
    record_each(ctx, job, "SuccessfulDelete", "Deleted pod", &deleted);

    let results: Vec<Result<Pod, kube::Error>> = futures::stream::iter(plan.create.clone())
        .map(|index| {
            let (api, pod) = (api.clone(), pod_from_template(job, index));
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut created_version = None;
    let mut failure = None;
    for r in results {
        match r {
            Ok(pod) => {
                created_version = created_version.max(version_of(&pod.metadata));
                created.push(pod.name_any());
            }
            Err(e) => failure = Some(e),
        }
    }
    record_each(ctx, job, "SuccessfulCreate", "Created pod", &created);
    let writes = Writes {
        created: created.clone(),
        deleted,
        created_version,
    };
    if !writes.is_empty() {
        ctx.expectations.expect(uid.to_owned(), writes);
    }

    for note in &plan.events {
        ctx.recorder
            .record(job.object_ref(&()), note.kind, note.reason, &note.message);
    }
    if let Some(e) = failure {
        let invalid = matches!(&e, kube::Error::Api(s) if s.code == 422 || s.code == 400);
        if invalid {
            // The template cannot make a pod: say so once, and do not try again until the
            // Job changes.
            tracing::warn!(job = %job.name_any(), %namespace, error = %e, "job's pods are refused");
            ctx.refused.refuse(uid, generation);
            ctx.recorder.record(
                job.object_ref(&()),
                EventType::Warning,
                "FailedCreate",
                &format!("Error creating: {}", api_message(&e)),
            );
        } else {
            write_status(job, ctx, namespace, &plan).await?;
            return Err(Error::api("create pod for", job, e));
        }
    }
    // The counts of pods just created show at the next reconcile, which they cause.
    if !write_status(job, ctx, namespace, &plan).await? {
        return Ok(Some(STALE));
    }
    // The deletions it made wake it when they show.
    Ok(plan.requeue)
}

/// Records a Normal event `<what>: <name>` for each of `names`.
fn record_each(ctx: &Context, job: &Job, reason: &'static str, what: &str, names: &[String]) {
    let object = job.object_ref(&());
    for name in names {
        let message = format!("{what}: {name}");
        ctx.recorder
            .record(object.clone(), EventType::Normal, reason, &message);
    }
}

/// Writes the planned status, if it changed, at the version the plan was made from (as kube's
/// `UpdateStatus` does): a plan made from a Job the cache had not yet updated (its own last
/// write not seen, say) must not overwrite what it did not see. Returns whether it was written
/// or unchanged; `false` when the Job changed meanwhile (look again soon).
async fn write_status(
    job: &Job,
    ctx: &Context,
    namespace: &str,
    plan: &Plan,
) -> Result<bool, Error> {
    if !status_changed(job, &plan.status) {
        return Ok(true);
    }
    let patch = json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "status": plan.status,
    });
    match Api::<Job>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if Error::is_gone_or_conflict(&e) => Ok(false),
        Err(e) => Err(Error::api("update status of", job, e)),
    }
}

/// Deletes a Job whose TTL after finishing ran out, in the foreground, only if it is still
/// the Job that finished.
async fn delete_expired(job: &Job, ctx: &Context) -> Result<Action, Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: job.resource_version(),
        }),
        ..DeleteParams::default()
    };
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    match api.delete(&job.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), "deleted a finished job after its ttlSecondsAfterFinished");
            Ok(Action::await_change())
        }
        Err(e) if Error::is_gone_or_conflict(&e) => Ok(Action::requeue(RECHECK)),
        Err(e) => Err(Error::api("delete expired", job, e)),
    }
}

fn error_policy(_job: Arc<Job>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "job reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value, status: Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "u1"},
            "spec": spec, "status": status,
        }))
        .expect("job")
    }

    fn template(policy: &str) -> Value {
        json!({"spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "x"}]}})
    }

    fn pod(name: &str, phase: &str, index: Option<i32>, finished: &str) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase},
        });
        if let Some(i) = index {
            v["metadata"]["annotations"] = json!({COMPLETION_INDEX: i.to_string()});
        }
        if phase == "Succeeded" || phase == "Failed" {
            v["status"]["containerStatuses"] = json!([{"name": "c", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "finishedAt": finished}}}]);
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().expect("time")
    }

    fn condition_types(plan: &Plan) -> Vec<(String, String)> {
        plan.status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or("").to_owned(),
                    c["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn creates_up_to_parallelism_and_the_remaining_completions() {
        let now = at("2026-01-01T00:01:00Z");
        let j = job(
            json!({"completions": 3, "parallelism": 2, "template": template("Never")}),
            json!({}),
        );
        let plan = decide(&j, &[], now);
        assert_eq!(plan.create, [None, None]);
        assert_eq!(plan.status["startTime"], "2026-01-01T00:01:00Z");
        // Two succeeded: one left to run, one more pod.
        let done = [
            pod("a", "Succeeded", None, "2026-01-01T00:00:30Z"),
            pod("b", "Succeeded", None, "2026-01-01T00:00:31Z"),
        ];
        let plan = decide(&j, &done, now);
        assert_eq!(plan.create, [None]);
        assert_eq!(plan.status["succeeded"], 2);
        // One running, two succeeded: nothing to do.
        let mut three = done.to_vec();
        three.push(pod("c", "Running", None, ""));
        let plan = decide(&j, &three, now);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.status["active"], 1);
    }

    #[test]
    fn completes_with_success_criteria_met_first() {
        let now = at("2026-01-01T00:01:00Z");
        let j = job(
            json!({"completions": 1, "parallelism": 1, "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let done = [pod("a", "Succeeded", None, "2026-01-01T00:00:30Z")];
        let plan = decide(&j, &done, now);
        assert_eq!(
            condition_types(&plan),
            [
                ("SuccessCriteriaMet".into(), "True".into()),
                ("Complete".into(), "True".into())
            ]
        );
        assert_eq!(plan.status["completionTime"], "2026-01-01T00:01:00Z");
        assert_eq!(plan.status["conditions"][1]["reason"], "CompletionsReached");
        assert_eq!(plan.events[0].reason, "Completed");
        assert!(plan.create.is_empty());
        // A work queue: done once one succeeded and none is active.
        let queue = job(
            json!({"parallelism": 2, "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let running = pod("b", "Running", None, "");
        let plan = decide(&queue, &[done[0].clone(), running.clone()], now);
        assert!(plan.create.is_empty(), "no new pods after a success");
        assert!(condition_types(&plan).is_empty());
        let plan = decide(&queue, &done, now);
        assert_eq!(condition_types(&plan).len(), 2);
    }

    #[test]
    fn fails_past_the_backoff_limit_after_its_pods_stop() {
        let now = at("2026-01-01T00:10:00Z");
        let j = job(
            json!({"completions": 1, "parallelism": 1, "backoffLimit": 1, "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let one = [pod("a", "Failed", None, "2026-01-01T00:09:55Z")];
        let plan = decide(&j, &one, now);
        assert!(condition_types(&plan).is_empty(), "one failure is allowed");
        assert!(plan.create.is_empty(), "but the replacement waits 10 s");
        assert_eq!(plan.requeue, Some(Duration::from_secs(5)));
        let plan = decide(&j, &one, at("2026-01-01T00:10:06Z"));
        assert_eq!(plan.create, [None]);

        let two = [
            one[0].clone(),
            pod("b", "Failed", None, "2026-01-01T00:09:59Z"),
        ];
        let plan = decide(&j, &two, now);
        assert_eq!(plan.status["failed"], 2);
        let conditions = condition_types(&plan);
        assert_eq!(
            conditions,
            [
                ("FailureTarget".into(), "True".into()),
                ("Failed".into(), "True".into())
            ]
        );
        assert_eq!(
            plan.status["conditions"][1]["reason"],
            "BackoffLimitExceeded"
        );
        assert!(plan.status.get("completionTime").is_none());
        assert_eq!(plan.events[0].kind, EventType::Warning);

        // With a pod still running, FailureTarget comes first and the pod is deleted.
        let running = [
            two[0].clone(),
            two[1].clone(),
            pod("c", "Running", None, ""),
        ];
        let plan = decide(&j, &running, now);
        assert_eq!(
            condition_types(&plan),
            [("FailureTarget".into(), "True".into())]
        );
        assert_eq!(plan.delete, ["c"]);
    }

    #[test]
    fn restarts_count_against_the_limit_under_on_failure() {
        let j = job(
            json!({"completions": 1, "parallelism": 1, "backoffLimit": 2, "template": template("OnFailure")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let mut v = serde_json::to_value(&*pod("a", "Running", None, "")).expect("pod");
        v["status"]["containerStatuses"] = json!([{"name": "c", "image": "x", "imageID": "",
            "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]);
        let crashing: Pod = serde_json::from_value(v).expect("pod");
        let plan = decide(&j, &[Arc::new(crashing)], at("2026-01-01T00:01:00Z"));
        assert_eq!(plan.delete, ["a"]);
        assert_eq!(
            plan.status["conditions"][0]["reason"],
            "BackoffLimitExceeded"
        );
    }

    #[test]
    fn the_deadline_fails_the_job_and_deletes_its_pods() {
        let j = job(
            json!({"completions": 2, "parallelism": 2, "activeDeadlineSeconds": 30, "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let running = [pod("a", "Running", None, ""), pod("b", "Pending", None, "")];
        let plan = decide(&j, &running, at("2026-01-01T00:00:10Z"));
        assert_eq!(plan.requeue, Some(Duration::from_secs(20)));
        assert!(plan.delete.is_empty());
        let plan = decide(&j, &running, at("2026-01-01T00:00:31Z"));
        assert_eq!(plan.delete, ["a", "b"]);
        assert_eq!(plan.status["conditions"][0]["reason"], "DeadlineExceeded");
        assert_eq!(plan.status["active"], 0);
    }

    #[test]
    fn suspending_deletes_active_pods_and_resuming_restarts_the_clock() {
        let now = at("2026-01-01T00:05:00Z");
        let suspended = job(
            json!({"completions": 2, "parallelism": 2, "suspend": true, "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let plan = decide(&suspended, &[pod("a", "Running", None, "")], now);
        assert_eq!(plan.delete, ["a"]);
        assert!(plan.create.is_empty());
        assert_eq!(plan.status["startTime"], Value::Null);
        assert_eq!(
            condition_types(&plan),
            [("Suspended".into(), "True".into())]
        );
        let resumed = job(
            json!({"completions": 2, "parallelism": 2, "suspend": false, "template": template("Never")}),
            plan.status.clone(),
        );
        let plan = decide(&resumed, &[], now);
        assert_eq!(plan.create.len(), 2);
        assert_eq!(plan.status["startTime"], "2026-01-01T00:05:00Z");
        assert_eq!(
            condition_types(&plan),
            [("Suspended".into(), "False".into())]
        );
        assert_eq!(plan.events[0].reason, "Resumed");
    }

    #[test]
    fn indexed_jobs_run_each_pending_index_once() {
        let now = at("2026-01-01T00:01:00Z");
        let j = job(
            json!({"completions": 5, "parallelism": 3, "completionMode": "Indexed", "template": template("Never")}),
            json!({"completedIndexes": "0"}),
        );
        let pods = [
            pod("p1", "Succeeded", Some(1), "2026-01-01T00:00:30Z"),
            pod("p2", "Running", Some(2), ""),
            pod("p2b", "Running", Some(2), ""),
            pod("p9", "Running", Some(9), ""),
        ];
        let plan = decide(&j, &pods, now);
        assert_eq!(plan.status["completedIndexes"], "0-1");
        assert_eq!(plan.status["succeeded"], 2);
        // p2b duplicates index 2 and p9 is out of range: both go; indexes 3 and 4 are made.
        assert_eq!(plan.delete, ["p2b", "p9"]);
        assert_eq!(plan.create, [Some(3), Some(4)]);
        let pod = pod_from_template(&j, Some(3));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-3-"));
        assert_eq!(pod_index(&pod), Some(3));
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("pi-3"));
        assert_eq!(
            spec.containers[0].env.as_ref().map(|e| e[0].name.as_str()),
            Some(COMPLETION_INDEX_ENV)
        );
        assert_eq!(pod.metadata.owner_references.expect("owner")[0].kind, "Job");
    }

    #[test]
    fn the_pod_failure_policy_fails_the_job_or_ignores_a_failure() {
        let now = at("2026-01-01T00:10:00Z");
        let j = job(
            json!({"completions": 1, "parallelism": 1, "backoffLimit": 3,
                "podFailurePolicy": {"rules": [
                    {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]},
                "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let exit = |name: &str, code: i32| {
            let mut v = serde_json::to_value(&*pod(name, "Failed", None, "2026-01-01T00:00:00Z"))
                .expect("pod");
            v["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = json!(code);
            Arc::new(serde_json::from_value::<Pod>(v).expect("pod"))
        };
        let plan = decide(&j, &[exit("a", 42)], now);
        assert_eq!(plan.status["conditions"][0]["reason"], "PodFailurePolicy");
        assert_eq!(
            plan.status["conditions"][0]["message"],
            "Container c for pod default/a failed with exit code 42 matching FailJob rule at index 0"
        );
        assert_eq!(plan.status["conditions"][1]["type"], "Failed");
        assert_eq!(plan.events[0].reason, "PodFailurePolicy");

        // Exit 1 matches no rule: counted, and replaced after the backoff.
        let plan = decide(&j, &[exit("b", 1)], now);
        assert_eq!(plan.status["failed"], 1);
        assert!(condition_types(&plan).is_empty());

        // A disrupted pod is ignored: not counted, replaced at once.
        let mut v = serde_json::to_value(&*exit("c", 137)).expect("pod");
        v["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True"}]);
        let disrupted = Arc::new(serde_json::from_value::<Pod>(v).expect("pod"));
        let plan = decide(&j, &[disrupted], now);
        assert_eq!(plan.status["failed"], 0);
        assert_eq!(plan.create, [None]);
    }

    #[test]
    fn indexes_read_and_write_as_kube_has_them() {
        let set = parse_indexes("0,2-4,7, 9-12", 11);
        assert_eq!(format_indexes(&set), "0,2-4,7,9-10");
        assert_eq!(format_indexes(&BTreeSet::from([1, 2])), "1-2");
        assert!(parse_indexes("x,3-a", 5).is_empty());
    }

    #[test]
    fn counts_never_go_down() {
        let j = job(
            json!({"completions": 3, "parallelism": 1, "template": template("Never")}),
            json!({"succeeded": 2, "failed": 1, "startTime": "2026-01-01T00:00:00Z"}),
        );
        // A user deleted the finished pods: the counts stay, one more pod runs.
        let plan = decide(&j, &[], at("2026-01-01T00:10:00Z"));
        assert_eq!(plan.status["succeeded"], 2);
        assert_eq!(plan.status["failed"], 1);
        assert_eq!(plan.create, [None]);
    }

    #[test]
    fn the_ttl_counts_from_the_finish() {
        let j = job(
            json!({"ttlSecondsAfterFinished": 5, "template": template("Never")}),
            json!({"conditions": [{"type": "Complete", "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        assert_eq!(ttl_expiry(&j), Some(at("2026-01-01T00:00:05Z")));
        let running = job(json!({"ttlSecondsAfterFinished": 5}), json!({}));
        assert_eq!(ttl_expiry(&running), None);
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let j = job(
            json!({"completions": 1, "template": template("Never")}),
            json!({"startTime": "2026-01-01T00:00:00Z", "active": 1, "ready": 0}),
        );
        let plan = decide(
            &j,
            &[pod("a", "Running", None, "")],
            at("2026-01-01T00:00:09Z"),
        );
        assert!(!status_changed(&j, &plan.status), "{}", plan.status);
    }
}
