//! The StatefulSet controller: pods with stable names and ordinals, made, replaced, rolled and
//! removed in order, as kube-controller-manager's (v1.33, `pkg/controller/statefulset`) does.
//!
//! A reconcile does what kube's `syncStatefulSet` does:
//!
//! 1. **revisions**: the StatefulSet's template is kept as a ControllerRevision named
//!    `<set>-<hash>` whose data is the patch kube stores (`{"spec":{"template":{...,
//!    "$patch":"replace"}}}`), labelled with the template's labels and
//!    `controller.kubernetes.io/hash`, numbered one past the newest; a template equal to an
//!    older revision (a `kubectl rollout undo`) takes that revision back with a new number
//!    (`revisions`). `status.currentRevision` is the revision the set rolls from,
//!    `updateRevision` the one it rolls to. Revisions no pod uses beyond
//!    `revisionHistoryLimit` are deleted, oldest first.
//! 2. **pods**, decided by one pure function ([`decide`]) from the set, its two revisions and
//!    its pods (by controller owner reference): `<set>-<ordinal>` for each ordinal from
//!    `spec.ordinals.start`, labelled `statefulset.kubernetes.io/pod-name`,
//!    `apps.kubernetes.io/pod-index` and `controller-revision-hash`, with hostname its name and
//!    subdomain the `serviceName`; an ordinal below the partition gets the current revision's
//!    template, the others the update revision's. *OrderedReady* makes them one at a time, each
//!    once its predecessors are Running and Ready (and available for `minReadySeconds`), and
//!    removes those past `replicas` from the highest, one at a time, once the others are
//!    healthy; *Parallel* makes and removes them all at once. A pod that finished (Succeeded or
//!    Failed) is deleted to be made again (a `RecreatingFailedPod` warning), after a backoff
//!    (10 s doubling to 5 min per pod) so that a pod the edge keeps refusing is not remade hot.
//! 3. **rolling update** (`updateStrategy: RollingUpdate`, once every pod in range is healthy):
//!    the pod with the highest ordinal at or above `partition` that is not at the update
//!    revision is deleted, to be made again at it; one at a time, each waiting for the one made
//!    before to be healthy. `OnDelete` leaves that to the user.
//! 4. **claims**: for each of `volumeClaimTemplates`, the pod's PersistentVolumeClaim
//!    `<claim>-<set>-<ordinal>` is made before the pod and never deleted by this controller; the
//!    pod's volume of that name points at it. `persistentVolumeClaimRetentionPolicy` is carried
//!    as kube carries it, by owner references the garbage collector follows: `whenDeleted:
//!    Delete` makes the StatefulSet an owner of every claim, `whenScaled: Delete` makes a pod
//!    removed by a scale down the owner of its claims; when the set changes, its pods' claims
//!    are given the owners the policy now wants.
//! 5. **status** as kube fills it: `replicas` (pods made), `readyReplicas`,
//!    `availableReplicas`, `currentReplicas`, `updatedReplicas`, the two revisions,
//!    `observedGeneration` and `collisionCount`; a finished rolling update makes the update
//!    revision current.
//!
//! What a reconcile made or deleted is kept as an expectation the next reconcile of the set
//! waits for, as the Job controller does ([`crate::job`]). A pod the API refuses as invalid is
//! reported once (`FailedCreate`) and not tried again until the set changes.
//!
//! Not done: adopting or releasing pods and revisions by selector (only those the set made, by
//! owner reference, are its own), `maxUnavailable` (a rolling update replaces one pod at a
//! time), and binding claims to volumes (the claims are made, Pending, for a provisioner).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

/// The label naming a StatefulSet pod (so a Service can select one).
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a StatefulSet pod's ordinal.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";
/// The label holding the name of the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label holding a ControllerRevision's hash.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// How soon a set waiting on something its watches do not announce (a pod of its name it does
/// not own still going, a claim being deleted) is looked at again.
const RECHECK: Duration = Duration::from_secs(1);
/// How soon a set whose status write met a newer version is looked at again.
const STALE: Duration = Duration::from_millis(100);
/// The first wait before a finished pod is made again, doubled at each remake.
pub const RECREATE_BACKOFF: Duration = Duration::from_secs(10);
/// The longest wait before a finished pod is made again.
pub const MAX_RECREATE_BACKOFF: Duration = Duration::from_secs(300);
/// How many pod creations or deletions one reconcile has in flight (Parallel).
const BURST: usize = crate::replicaset::BURST;

// ---------------------------------------------------------------------------------------------
// What to do: pure.

/// The parts of a StatefulSet's spec the controller acts on, defaulted as the API server
/// defaults them.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Pods wanted.
    pub replicas: i32,
    /// The first ordinal.
    pub start: i32,
    /// `podManagementPolicy: OrderedReady` (else Parallel).
    pub ordered: bool,
    /// `updateStrategy: OnDelete` (else RollingUpdate).
    pub on_delete: bool,
    /// Pods below `start + partition` stay at the current revision.
    pub partition: i32,
    /// Seconds a pod must be Ready to count as available.
    pub min_ready_seconds: i32,
}

impl Spec {
    /// The spec of `set`.
    pub fn of(set: &StatefulSet) -> Self {
        let spec = set.spec.as_ref();
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        Self {
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1).max(0),
            start: spec
                .and_then(|s| s.ordinals.as_ref())
                .and_then(|o| o.start)
                .unwrap_or(0)
                .max(0),
            ordered: spec.and_then(|s| s.pod_management_policy.as_deref()) != Some("Parallel"),
            on_delete: strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete"),
            partition: strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0)
                .max(0),
            min_ready_seconds: spec.and_then(|s| s.min_ready_seconds).unwrap_or(0).max(0),
        }
    }
}

/// The ordinal in a pod's name if it is `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The revision (name) a pod was made from.
pub fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Running with its Ready condition True (kube's `isRunningAndReady`).
pub fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && pods::is_ready(pod)
}

fn running_and_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    phase(pod) == Some("Running") && pods::is_available(pod, min_ready_seconds, now)
}

/// Running, Ready and not being deleted (kube's `isHealthy`).
fn healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !terminating(pod)
}

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It finished (phase Failed): it is made again.
    Failed,
    /// It finished (phase Succeeded): it is made again.
    Succeeded,
    /// Its ordinal is past `replicas`.
    ScaleDown,
    /// It is not at the update revision.
    Update,
}

/// One thing a reconcile does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the pod of this ordinal, at the update revision (else the current one).
    Create {
        /// Its ordinal.
        ordinal: i32,
        /// Made from the update revision's template.
        update: bool,
    },
    /// Delete this pod.
    Delete {
        /// Its name.
        name: String,
        /// Why.
        why: Why,
    },
}

/// The counts of a set's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pods made (terminating ones included).
    pub replicas: i32,
    /// Running and Ready.
    pub ready: i32,
    /// Running and available.
    pub available: i32,
    /// At the current revision, not terminating.
    pub current: i32,
    /// At the update revision, not terminating.
    pub updated: i32,
}

/// What a reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What to do, in order.
    pub steps: Vec<Step>,
    /// The status counts.
    pub counts: Counts,
    /// Whether the set is rolled out: the update revision becomes current.
    pub rolled_out: bool,
    /// When to look again without an event (a pod becoming available), if at all.
    pub requeue: Option<Duration>,
}

/// The counts over `pods` (kube's `computeReplicaStatus`).
fn count(
    pods: &[&Arc<Pod>],
    min_ready: i32,
    current: &str,
    update: &str,
    now: jiff::Timestamp,
) -> Counts {
    let mut c = Counts::default();
    for pod in pods {
        c.replicas += 1;
        if running_and_ready(pod) {
            c.ready += 1;
            if running_and_available(pod, min_ready, now) {
                c.available += 1;
            }
        }
        if !terminating(pod) {
            let revision = pod_revision(pod);
            if revision == Some(current) {
                c.current += 1;
            }
            if revision == Some(update) {
                c.updated += 1;
            }
        }
    }
    c
}

/// What kube's `updateStatefulSet` would do for `set` with these `owned` pods, rolling from
/// revision `current` to `update` (names), at `now`.
pub fn decide(
    set: &StatefulSet,
    owned: &[Arc<Pod>],
    current: &str,
    update: &str,
    now: jiff::Timestamp,
) -> Plan {
    let spec = Spec::of(set);
    let name = set.name_any();
    let end = spec.start.saturating_add(spec.replicas);
    let mut replicas: BTreeMap<i32, &Arc<Pod>> = BTreeMap::new();
    let mut condemned: Vec<&Arc<Pod>> = Vec::new();
    for pod in owned {
        let Some(ordinal) = ordinal_of(&name, &pod.name_any()) else {
            continue;
        };
        if (spec.start..end).contains(&ordinal) {
            replicas.insert(ordinal, pod);
        } else {
            condemned.push(pod);
        }
    }
    // Highest ordinal first.
    condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(&name, &p.name_any())));
    let all: Vec<&Arc<Pod>> = replicas
        .values()
        .copied()
        .chain(condemned.clone())
        .collect();
    let counts = count(&all, spec.min_ready_seconds, current, update, now);
    let mut steps = Vec::new();
    let mut requeue = None;
    let monotonic = spec.ordered;
    let wait_available = |pod: &Pod, requeue: &mut Option<Duration>| {
        // A Ready pod not yet available: look again once it is.
        if running_and_ready(pod) && spec.min_ready_seconds > 0 {
            let left = Duration::from_secs(u64::try_from(spec.min_ready_seconds).unwrap_or(0));
            *requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
        }
    };
    let first_unhealthy = replicas
        .values()
        .chain(condemned.iter().rev())
        .find(|p| !healthy(p))
        .map(|p| p.name_any());
    let plan = |steps, requeue| Plan {
        steps,
        counts,
        rolled_out: !spec.on_delete
            && counts.updated == counts.replicas
            && counts.ready == counts.replicas,
        requeue,
    };
    if set.metadata.deletion_timestamp.is_some() {
        return plan(steps, requeue);
    }

    // Each ordinal in range: made, remade if finished, waited for in order.
    for ordinal in spec.start..end {
        let update_revision = ordinal >= spec.start.saturating_add(spec.partition);
        let Some(pod) = replicas.get(&ordinal) else {
            steps.push(Step::Create {
                ordinal,
                update: update_revision,
            });
            if monotonic {
                return plan(steps, requeue);
            }
            continue;
        };
        match phase(pod) {
            Some("Failed") | Some("Succeeded") if !terminating(pod) => {
                let why = if phase(pod) == Some("Failed") {
                    Why::Failed
                } else {
                    Why::Succeeded
                };
                steps.push(Step::Delete {
                    name: pod.name_any(),
                    why,
                });
                if monotonic {
                    return plan(steps, requeue);
                }
                continue;
            }
            _ => {}
        }
        if monotonic {
            if terminating(pod) || !running_and_ready(pod) {
                return plan(steps, requeue);
            }
            if !running_and_available(pod, spec.min_ready_seconds, now) {
                wait_available(pod, &mut requeue);
                return plan(steps, requeue);
            }
        }
    }

    // Pods past the end go, highest first; in order only once the others are healthy.
    for pod in &condemned {
        if terminating(pod) {
            if monotonic {
                return plan(steps, requeue);
            }
            continue;
        }
        let first = first_unhealthy.as_deref() == Some(pod.name_any().as_str());
        if monotonic && !first {
            if !running_and_ready(pod) {
                return plan(steps, requeue);
            }
            if !running_and_available(pod, spec.min_ready_seconds, now) {
                wait_available(pod, &mut requeue);
                return plan(steps, requeue);
            }
        }
        steps.push(Step::Delete {
            name: pod.name_any(),
            why: Why::ScaleDown,
        });
        if monotonic {
            return plan(steps, requeue);
        }
    }
    if spec.on_delete || !steps.is_empty() {
        return plan(steps, requeue);
    }

    // Rolling update: the highest pod not at the update revision, one at a time.
    let first_updated = spec.start.saturating_add(spec.partition);
    for (ordinal, pod) in replicas.iter().rev() {
        if *ordinal < first_updated {
            break;
        }
        if pod_revision(pod) != Some(update) && !terminating(pod) {
            steps.push(Step::Delete {
                name: pod.name_any(),
                why: Why::Update,
            });
            return plan(steps, requeue);
        }
        if !healthy(pod) {
            return plan(steps, requeue);
        }
    }
    plan(steps, requeue)
}

/// The status kube writes for `counts`, as a merge patch: fields kube omits when zero are
/// removed (`null`).
pub fn status_patch(
    set: &StatefulSet,
    plan: &Plan,
    current: &str,
    update: &str,
    collisions: i32,
) -> Value {
    let c = plan.counts;
    let (current, current_replicas) = if plan.rolled_out {
        (update, c.updated)
    } else {
        (current, c.current)
    };
    let omit_zero = |n: i32| if n == 0 { Value::Null } else { json!(n) };
    json!({
        "observedGeneration": set.metadata.generation,
        "replicas": c.replicas,
        "readyReplicas": omit_zero(c.ready),
        "availableReplicas": c.available,
        "currentReplicas": omit_zero(current_replicas),
        "updatedReplicas": omit_zero(c.updated),
        "currentRevision": current,
        "updateRevision": update,
        "collisionCount": collisions,
    })
}

/// Whether `set`'s status already says what `patch` would write.
fn status_changed(set: &StatefulSet, patch: &Value) -> bool {
    let have = serde_json::to_value(set.status.clone().unwrap_or_default()).unwrap_or_default();
    patch.as_object().is_some_and(|wanted| {
        wanted.iter().any(|(k, v)| {
            let h = have.get(k).unwrap_or(&Value::Null);
            let zero = |x: &Value| x.is_null() || x.as_i64() == Some(0);
            !(h == v || (zero(h) && zero(v)))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Revisions: pure.

/// The data kube's `getPatch` stores in a StatefulSet's ControllerRevision: the template, to
/// be applied as a strategic merge patch that replaces it.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision's data holds.
pub fn revision_template(data: &Value) -> Option<PodTemplateSpec> {
    let mut t = data.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// JSON with its keys sorted, as Go's `json.Marshal` writes a map (what kube hashes).
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// kube's `HashControllerRevision`: FNV-1 (32-bit) of the data and the collision count,
/// written with `rand.SafeEncodeString`'s alphabet.
pub fn revision_hash(data: &Value, collisions: i32) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = hash.wrapping_mul(0x0100_0193);
            hash ^= u32::from(*b);
        }
    };
    feed(canonical(data).as_bytes());
    feed(collisions.to_string().as_bytes());
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Revisions whose data is `data`'s, oldest first.
fn equal_revisions<'a>(
    revisions: &'a [ControllerRevision],
    data: &Value,
) -> Vec<&'a ControllerRevision> {
    revisions
        .iter()
        .filter(|r| r.data.as_ref().map(|d| &d.0) == Some(data))
        .collect()
}

/// The revisions to delete past `limit`: the oldest of those neither current, nor the
/// update, nor any pod's (kube's `truncateHistory`). `revisions` is oldest first.
pub fn history_to_trim(revisions: &[ControllerRevision], live: &[&str], limit: i32) -> Vec<String> {
    let history: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any().as_str()))
        .collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    let extra = history.len().saturating_sub(limit);
    history.iter().take(extra).map(|r| r.name_any()).collect()
}

// ---------------------------------------------------------------------------------------------
// Pods and claims: pure.

fn owner(set: &StatefulSet, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
        controller: Some(controller),
        block_owner_deletion: Some(true),
    }
}

/// The name of the pod of `ordinal`.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// The name of the claim of template `claim` for the pod of `ordinal`.
pub fn claim_name(set: &StatefulSet, claim: &str, ordinal: i32) -> String {
    format!("{claim}-{}-{ordinal}", set.name_any())
}

fn claim_templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default()
}

/// The pod of `ordinal` made from `template` of revision `revision` (kube's
/// `newStatefulSetPod`, `initIdentity` and `updateStorage`).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let name = pod_name(set, ordinal);
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.clone());
    meta.generate_name = None;
    meta.namespace = set.namespace();
    meta.owner_references = Some(vec![owner(set, true)]);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME.to_owned(), name.clone());
    labels.insert(POD_INDEX.to_owned(), ordinal.to_string());
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name);
    if let Some(service) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.as_deref())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(service.to_owned());
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in claim_templates(set) {
        let claim_template = claim.name_any();
        let volume = k8s_openapi::api::core::v1::Volume {
            name: claim_template.clone(),
            persistent_volume_claim: Some(
                k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(set, &claim_template, ordinal),
                    read_only: None,
                },
            ),
            ..Default::default()
        };
        match volumes.iter_mut().find(|v| v.name == claim_template) {
            Some(v) => *v = volume,
            None => volumes.push(volume),
        }
    }
    if volumes.is_empty() {
        spec.volumes = None;
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// The claims of the pod of `ordinal`, as kube's `getPersistentVolumeClaims` makes them: the
/// template's, named for the pod, labelled with the set's selector.
pub fn new_claims(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let selector = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(set)
        .iter()
        .map(|template| {
            let mut claim = template.clone();
            claim.metadata.name = Some(claim_name(set, &template.name_any(), ordinal));
            claim.metadata.namespace = set.namespace();
            claim
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(selector.clone());
            claim.status = None;
            claim
        })
        .collect()
}

/// The owner references a claim should have under the retention policy, given whether its
/// pod is being removed by a scale down (`condemned`, with the pod's uid).
pub fn claim_owners(
    set: &StatefulSet,
    existing: &[OwnerReference],
    condemned: Option<(&str, &str)>,
) -> Vec<OwnerReference> {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |w: Option<&String>| w.map(String::as_str) == Some("Delete");
    let set_uid = set.uid().unwrap_or_default();
    let mut owners: Vec<OwnerReference> = existing
        .iter()
        .filter(|o| o.uid != set_uid && o.kind != "Pod")
        .cloned()
        .collect();
    if delete(policy.and_then(|p| p.when_deleted.as_ref())) {
        owners.push(owner(set, false));
    }
    if let (true, Some((pod, uid))) = (
        delete(policy.and_then(|p| p.when_scaled.as_ref())),
        condemned,
    ) {
        owners.push(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.to_owned(),
            uid: uid.to_owned(),
            controller: None,
            block_owner_deletion: None,
        });
    }
    // Owners of a pod being replaced stay pointed at it only while it is the claim's pod.
    owners
}

/// How long a finished pod must wait before it is made again, having been made again `count`
/// times already. A pure function of the count, not a retry crate's iterator: the count lives
/// in the controller's per-pod table and the wait is measured from the last remake.
pub fn recreate_backoff(count: u32) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let factor = 2_u32.saturating_pow(count - 1);
    RECREATE_BACKOFF
        .saturating_mul(factor)
        .min(MAX_RECREATE_BACKOFF)
}

// ---------------------------------------------------------------------------------------------
// Doing it.

/// What the reconciler shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    /// The pods by controller uid.
    index: ControllerIndex<Pod>,
    recorder: Recorder,
    /// What the last reconcile of each set (by uid) wrote.
    expectations: Expectations<String, Writes>,
    /// Sets whose pods or claims the API refused as invalid.
    refused: Refusals,
    /// The generation at which each set's claims last had the owners its retention policy
    /// wants, by uid.
    claims_at: Mutex<HashMap<String, Option<i64>>>,
    /// Finished pods made again.
    remade: Remakes,
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
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
        client: client.clone(),
        pods: pods.store,
        index: pods.index,
        expectations: Expectations::new("pod"),
        refused: Refusals::default(),
        claims_at: Mutex::new(HashMap::new()),
        remade: Remakes::default(),
    });
    Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_changes)
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "statefulset reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

/// Finished pods made again, by set uid and pod name: how often, and when last; the backoff
/// before the next remake counts from then, in tokio time (paused in tests).
#[derive(Default)]
struct Remakes(Mutex<HashMap<(String, String), (u32, tokio::time::Instant)>>);

impl Remakes {
    /// How long the finished pod `name` of set `uid` must still wait to be made again.
    fn wait(&self, uid: &str, name: &str) -> Duration {
        let Ok(remade) = self.0.lock() else {
            return Duration::ZERO;
        };
        match remade.get(&(uid.to_owned(), name.to_owned())) {
            Some((count, at)) => recreate_backoff(*count).saturating_sub(at.elapsed()),
            None => Duration::ZERO,
        }
    }

    /// Counts a remake of `name`, now.
    fn remaking(&self, uid: &str, name: &str) {
        if let Ok(mut remade) = self.0.lock() {
            let entry = remade
                .entry((uid.to_owned(), name.to_owned()))
                .or_insert((0, tokio::time::Instant::now()));
            *entry = (entry.0.saturating_add(1), tokio::time::Instant::now());
        }
    }

    /// Pods that run and are Ready start their backoff afresh.
    fn healthy_again(&self, uid: &str, owned: &[Arc<Pod>]) {
        if let Ok(mut remade) = self.0.lock() {
            for pod in owned.iter().filter(|p| running_and_ready(p)) {
                remade.remove(&(uid.to_owned(), pod.name_any()));
            }
        }
    }
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes its pods and revisions.
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    if !ctx
        .expectations
        .met(&uid, |w| w.forget_shown(&ctx.pods, &ctx.index, &namespace))
    {
        // The pod events its writes cause (creations and deletions) wake it.
        return Ok(Action::await_change());
    }
    let owned = ctx.index.owned(&ctx.pods, &namespace, &uid);
    ctx.remade.healthy_again(&uid, &owned);
    let revs = revisions(&set, &ctx).await?;
    let (current, update) = (revs.current.name_any(), revs.update.name_any());
    let now = jiff::Timestamp::now();
    let mut plan = decide(&set, &owned, &current, &update, now);
    let mut after = plan.requeue;
    let refused = ctx.refused.refused(&uid, set.metadata.generation);
    if refused {
        plan.steps.retain(|s| !matches!(s, Step::Create { .. }));
    }
    let outcome = act(&set, &ctx, &plan, &revs, &owned).await;
    if let Some(wait) = outcome.wait {
        after = Some(after.map_or(wait, |a| a.min(wait)));
    }
    let writes = Writes {
        created: outcome.created,
        deleted: outcome.deleted.clone(),
        created_version: outcome.created_version,
    };
    if !writes.is_empty() {
        ctx.expectations.expect(uid.clone(), writes);
    }

    let patch = status_patch(&set, &plan, &current, &update, revs.collisions);
    let written = write_status(&set, &ctx, &namespace, &patch).await?;
    trim_history(&set, &ctx, &revs, &owned).await?;
    follow_retention_policy(&set, &ctx, &owned).await?;
    if let Some(e) = outcome.error {
        return Err(e);
    }
    // Pods it deleted, or still terminating, wake it when they go.
    let after = if written { after } else { Some(STALE) };
    Ok(after.map_or_else(Action::await_change, |a| {
        Action::requeue(a.max(Duration::from_millis(100)))
    }))
}

/// The set's revisions, oldest first, and the two it rolls between.
struct Revisions {
    all: Vec<ControllerRevision>,
    current: ControllerRevision,
    update: ControllerRevision,
    collisions: i32,
}

/// Finds or makes the update revision, and finds the current one (kube's
/// `getStatefulSetRevisions`).
async fn revisions(set: &StatefulSet, ctx: &Context) -> Result<Revisions, Error> {
    let namespace = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
    // Revisions carry the template's labels, which the selector's `matchLabels` select: only
    // those are listed (the owner reference decides which are the set's).
    let selector = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let mut all: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::api("list revisions of", set, e))?
        .items
        .into_iter()
        .filter(|r| pods::controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    all.sort_by_key(|r| {
        (
            r.revision,
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    let mut collisions = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let data = revision_data(&template);
    let next = all.last().map_or(1, |r| r.revision + 1);
    let equal = equal_revisions(&all, &data);
    let update = match (equal.last(), all.last()) {
        // The newest revision already holds the template.
        (Some(e), Some(newest)) if e.name_any() == newest.name_any() => (*e).clone(),
        // An older revision holds it (a rollback): it becomes the newest.
        (Some(e), _) => {
            let patched = api
                .patch(
                    &e.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"revision": next})),
                )
                .await
                .map_err(|err| Error::api("renumber revision of", set, err))?;
            if let Some(r) = all.iter_mut().find(|r| r.name_any() == patched.name_any()) {
                *r = patched.clone();
            }
            all.sort_by_key(|r| r.revision);
            patched
        }
        (None, _) => {
            let (made, count) = create_revision(set, &api, &data, next, collisions).await?;
            collisions = count;
            all.push(made.clone());
            made
        }
    };
    let current_name = set.status.as_ref().and_then(|s| s.current_revision.clone());
    let current = all
        .iter()
        .find(|r| Some(r.name_any()) == current_name)
        .cloned()
        .unwrap_or_else(|| update.clone());
    Ok(Revisions {
        all,
        current,
        update,
        collisions,
    })
}

/// Creates the revision holding `data`, counting hash collisions as kube does; returns it and
/// the collision count.
async fn create_revision(
    set: &StatefulSet,
    api: &Api<ControllerRevision>,
    data: &Value,
    number: i64,
    mut collisions: i32,
) -> Result<(ControllerRevision, i32), Error> {
    let template_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    loop {
        let hash = revision_hash(data, collisions);
        let mut labels = template_labels.clone();
        labels.insert(HASH_LABEL.to_owned(), hash.clone());
        let revision = ControllerRevision {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!("{}-{hash}", set.name_any())),
                namespace: set.namespace(),
                labels: Some(labels),
                annotations: Some(set.annotations().clone()).filter(|a| !a.is_empty()),
                owner_references: Some(vec![owner(set, true)]),
                ..Default::default()
            },
            data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
                data.clone(),
            )),
            revision: number,
        };
        match api.create(&PostParams::default(), &revision).await {
            Ok(made) => {
                tracing::info!(statefulset = %set.name_any(), revision = %made.name_any(), number, "new revision");
                return Ok((made, collisions));
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let name = revision.name_any();
                let existing = api
                    .get(&name)
                    .await
                    .map_err(|e| Error::api("read revision of", set, e))?;
                let same_owner = pods::controller_of(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == set.uid().as_ref());
                if same_owner && existing.data.as_ref().map(|d| &d.0) == Some(data) {
                    return Ok((existing, collisions));
                }
                collisions = collisions.saturating_add(1);
                if collisions > 100 {
                    return Err(Error::api("create revision of", set, kube::Error::Api(s)));
                }
            }
            Err(e) => return Err(Error::api("create revision of", set, e)),
        }
    }
}

/// What acting on a plan did.
#[derive(Default)]
struct Outcome {
    created: Vec<String>,
    /// The newest resourceVersion the creates were answered with.
    created_version: Option<u64>,
    deleted: Vec<String>,
    /// When to look again (a finished pod waiting out its backoff).
    wait: Option<Duration>,
    error: Option<Error>,
}

async fn act(
    set: &StatefulSet,
    ctx: &Context,
    plan: &Plan,
    revs: &Revisions,
    owned: &[Arc<Pod>],
) -> Outcome {
    let namespace = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let name = set.name_any();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut outcome = Outcome::default();
    let template_of = |r: &ControllerRevision| {
        r.data
            .as_ref()
            .and_then(|d| revision_template(&d.0))
            .unwrap_or_default()
    };
    let (current_template, update_template) =
        (template_of(&revs.current), template_of(&revs.update));

    // Deletions, at most BURST at once (Parallel may have many).
    let mut deletes = Vec::new();
    for step in &plan.steps {
        let Step::Delete { name: pod, why } = step else {
            continue;
        };
        if matches!(why, Why::Failed | Why::Succeeded) {
            let wait = ctx.remade.wait(&uid, pod);
            if wait > Duration::ZERO {
                outcome.wait = Some(outcome.wait.map_or(wait, |w| w.min(wait)));
                continue;
            }
            ctx.remade.remaking(&uid, pod);
            let (kind, reason, message) = if *why == Why::Failed {
                (
                    EventType::Warning,
                    "RecreatingFailedPod",
                    format!("StatefulSet {namespace}/{name} is recreating failed Pod {pod}"),
                )
            } else {
                (
                    EventType::Normal,
                    "RecreatingTerminatedPod",
                    format!("StatefulSet {namespace}/{name} is recreating terminated Pod {pod}"),
                )
            };
            ctx.recorder
                .record(set.object_ref(&()), kind, reason, &message);
        }
        if *why == Why::ScaleDown
            && let Err(e) = retain_claims(set, ctx, owned, pod, true).await
        {
            outcome.error = Some(e);
            return outcome;
        }
        deletes.push(pod.clone());
    }
    let results: Vec<(String, Result<(), kube::Error>)> = futures::stream::iter(deletes)
        .map(|pod| {
            let api = pods_api.clone();
            async move {
                let r = match api.delete(&pod, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(e) if Error::is_gone_or_conflict(&e) => Ok(()),
                    Err(e) => Err(e),
                };
                (pod, r)
            }
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    for (pod, r) in results {
        match r {
            Ok(()) => {
                ctx.recorder.record(
                    set.object_ref(&()),
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("delete Pod {pod} in StatefulSet {name} successful"),
                );
                outcome.deleted.push(pod);
            }
            Err(e) => {
                ctx.recorder.record(
                    set.object_ref(&()),
                    EventType::Warning,
                    "FailedDelete",
                    &format!(
                        "delete Pod {pod} in StatefulSet {name} failed error: {}",
                        api_message(&e)
                    ),
                );
                outcome.error = Some(Error::api("delete pod of", set, e));
            }
        }
    }

    // Creations: claims first, then the pod.
    let creates: Vec<(i32, bool)> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Create { ordinal, update } => Some((*ordinal, *update)),
            Step::Delete { .. } => None,
        })
        .collect();
    let results: Vec<(String, Result<Option<u64>, CreateError>)> = futures::stream::iter(creates)
        .map(|(ordinal, update)| {
            let pod = if update {
                new_pod(set, &update_template, &revs.update.name_any(), ordinal)
            } else {
                new_pod(set, &current_template, &revs.current.name_any(), ordinal)
            };
            let api = pods_api.clone();
            async move {
                let pod_name = pod.name_any();
                if let Err(e) = make_claims(set, ctx, ordinal, &pod_name).await {
                    return (pod_name, Err(e));
                }
                let r = api
                    .create(&PostParams::default(), &pod)
                    .await
                    .map(|p| version_of(&p.metadata))
                    .map_err(CreateError::Pod);
                (pod_name, r)
            }
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    for (pod, r) in results {
        match r {
            Ok(version) => {
                outcome.created_version = outcome.created_version.max(version);
                ctx.recorder.record(
                    set.object_ref(&()),
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("create Pod {pod} in StatefulSet {name} successful"),
                );
                outcome.created.push(pod);
            }
            Err(CreateError::Pod(kube::Error::Api(s))) if s.is_already_exists() => {
                // Still being deleted: made once it is gone.
                outcome.wait = Some(RECHECK);
            }
            Err(CreateError::Pod(e)) => {
                let invalid = matches!(&e, kube::Error::Api(s) if s.code == 422 || s.code == 400);
                ctx.recorder.record(
                    set.object_ref(&()),
                    EventType::Warning,
                    "FailedCreate",
                    &format!(
                        "create Pod {pod} in StatefulSet {name} failed error: {}",
                        api_message(&e)
                    ),
                );
                if invalid {
                    // The template cannot make a pod: said once, not tried again until the
                    // set changes.
                    tracing::warn!(statefulset = %name, %namespace, error = %e, "statefulset's pods are refused");
                    ctx.refused.refuse(&uid, set.metadata.generation);
                } else {
                    outcome.error = Some(Error::api("create pod for", set, e));
                }
            }
            Err(CreateError::StaleClaim(claim)) => {
                tracing::debug!(statefulset = %name, %claim, "waiting for a claim being deleted");
                outcome.wait = Some(RECHECK);
            }
            Err(CreateError::Claim(claim, e)) => {
                ctx.recorder.record(
                    set.object_ref(&()),
                    EventType::Warning,
                    "FailedCreate",
                    &format!(
                        "create Claim {claim} for Pod {pod} in StatefulSet {name} failed error: {}",
                        api_message(&e)
                    ),
                );
                let invalid = matches!(&e, kube::Error::Api(s) if s.code == 422 || s.code == 400);
                if invalid {
                    ctx.refused.refuse(&uid, set.metadata.generation);
                } else {
                    outcome.error = Some(Error::api("create claim for", set, e));
                }
            }
        }
    }
    outcome
}

/// Why a pod could not be made.
enum CreateError {
    /// The claim (named) could not be made.
    Claim(String, kube::Error),
    /// The claim (named) of a pod made before is still being deleted.
    StaleClaim(String),
    /// The pod could not be made.
    Pod(kube::Error),
}

/// Makes the claims of the pod of `ordinal` that do not exist (kube's
/// `createPersistentVolumeClaims`), with the owners the retention policy wants.
async fn make_claims(
    set: &StatefulSet,
    ctx: &Context,
    ordinal: i32,
    pod: &str,
) -> Result<(), CreateError> {
    let namespace = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    for mut claim in new_claims(set, ordinal) {
        let name = claim.name_any();
        match api.get_opt(&name).await {
            Ok(Some(existing)) => {
                if existing.metadata.deletion_timestamp.is_some() {
                    // kube's `PodClaimIsStale`: wait until the old claim is gone.
                    return Err(CreateError::StaleClaim(name));
                }
                let owners = claim_owners(
                    set,
                    existing
                        .metadata
                        .owner_references
                        .as_deref()
                        .unwrap_or_default(),
                    None,
                );
                if existing
                    .metadata
                    .owner_references
                    .clone()
                    .unwrap_or_default()
                    != owners
                {
                    patch_owners(&api, &name, &owners)
                        .await
                        .map_err(|e| CreateError::Claim(name.clone(), e))?;
                }
            }
            Ok(None) => {
                let owners = claim_owners(set, &[], None);
                claim.metadata.owner_references = Some(owners).filter(|o| !o.is_empty());
                match api.create(&PostParams::default(), &claim).await {
                    Ok(_) => {
                        ctx.recorder.record(
                            set.object_ref(&()),
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!(
                                "create Claim {name} Pod {pod} in StatefulSet {} success",
                                set.name_any()
                            ),
                        );
                    }
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                    Err(e) => return Err(CreateError::Claim(name, e)),
                }
            }
            Err(e) => return Err(CreateError::Claim(name, e)),
        }
    }
    Ok(())
}

/// Before a scale down deletes `pod`, points its claims' owners where the retention policy
/// says (`whenScaled: Delete`: the pod, so that they go with it).
async fn retain_claims(
    set: &StatefulSet,
    ctx: &Context,
    owned: &[Arc<Pod>],
    pod: &str,
    condemned: bool,
) -> Result<(), Error> {
    if claim_templates(set).is_empty() {
        return Ok(());
    }
    let Some(ordinal) = ordinal_of(&set.name_any(), pod) else {
        return Ok(());
    };
    let uid = owned
        .iter()
        .find(|p| p.name_any() == pod)
        .and_then(|p| p.uid())
        .unwrap_or_default();
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    for claim in new_claims(set, ordinal) {
        let name = claim.name_any();
        let Some(existing) = api
            .get_opt(&name)
            .await
            .map_err(|e| Error::api("read claim of", set, e))?
        else {
            continue;
        };
        let current = existing
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        let owners = claim_owners(set, &current, condemned.then_some((pod, uid.as_str())));
        if current != owners {
            patch_owners(&api, &name, &owners)
                .await
                .map_err(|e| Error::api("update claim owners of", set, e))?;
        }
    }
    Ok(())
}

/// When the set changed (its retention policy, say), gives the claims of its pods in range the
/// owners the policy wants, as kube's `UpdatePodClaimForRetentionPolicy` does for each replica.
async fn follow_retention_policy(
    set: &StatefulSet,
    ctx: &Context,
    owned: &[Arc<Pod>],
) -> Result<(), Error> {
    if claim_templates(set).is_empty() {
        return Ok(());
    }
    let uid = set.uid().unwrap_or_default();
    let generation = set.metadata.generation;
    let done = ctx
        .claims_at
        .lock()
        .is_ok_and(|m| m.get(&uid).is_some_and(|g| *g == generation));
    if done {
        return Ok(());
    }
    let spec = Spec::of(set);
    let end = spec.start.saturating_add(spec.replicas);
    let name = set.name_any();
    for pod in owned {
        let in_range =
            ordinal_of(&name, &pod.name_any()).is_some_and(|o| (spec.start..end).contains(&o));
        if in_range && !terminating(pod) {
            retain_claims(set, ctx, owned, &pod.name_any(), false).await?;
        }
    }
    if let Ok(mut m) = ctx.claims_at.lock() {
        m.insert(uid, generation);
    }
    Ok(())
}

async fn patch_owners(
    api: &Api<PersistentVolumeClaim>,
    name: &str,
    owners: &[OwnerReference],
) -> Result<(), kube::Error> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": owners}})),
    )
    .await
    .map(drop)
}

/// Writes the status, if it changed, at the version the plan was made from. `false` when the
/// set changed meanwhile (look again soon).
async fn write_status(
    set: &StatefulSet,
    ctx: &Context,
    namespace: &str,
    patch: &Value,
) -> Result<bool, Error> {
    if !status_changed(set, patch) {
        return Ok(true);
    }
    let body = json!({
        "metadata": {"resourceVersion": set.resource_version()},
        "status": patch,
    });
    match Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if Error::is_gone_or_conflict(&e) => Ok(false),
        Err(e) => Err(Error::api("update status of", set, e)),
    }
}

/// Deletes revisions past `revisionHistoryLimit` that no pod uses.
async fn trim_history(
    set: &StatefulSet,
    ctx: &Context,
    revs: &Revisions,
    owned: &[Arc<Pod>],
) -> Result<(), Error> {
    let (current, update) = (revs.current.name_any(), revs.update.name_any());
    let mut live: Vec<&str> = vec![current.as_str(), update.as_str()];
    live.extend(owned.iter().filter_map(|p| pod_revision(p)));
    let limit = set
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    let api: Api<ControllerRevision> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    for name in history_to_trim(&revs.all, &live, limit) {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if Error::is_gone_or_conflict(&e) => {}
            Err(e) => return Err(Error::api("delete old revision of", set, e)),
        }
    }
    Ok(())
}

fn error_policy(_set: Arc<StatefulSet>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "statefulset reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(spec: Value) -> StatefulSet {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        spec["template"] = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 2},
            "spec": spec,
        }))
        .expect("statefulset")
    }

    /// A pod of `web` at `ordinal` and `revision`: `state` is `ready`, `running` (not Ready),
    /// `pending`, `failed`, `succeeded` or `terminating` (Ready, being deleted).
    fn pod(ordinal: i32, revision: &str, state: &str) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": format!("web-{ordinal}"), "namespace": "default",
                "labels": {REVISION_LABEL: revision}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"},
        });
        let ready = json!([{"type": "Ready", "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        match state {
            "ready" | "terminating" => {
                v["status"] = json!({"phase": "Running", "conditions": ready});
            }
            "running" => v["status"]["phase"] = json!("Running"),
            "failed" => v["status"]["phase"] = json!("Failed"),
            "succeeded" => v["status"]["phase"] = json!("Succeeded"),
            _ => {}
        }
        if state == "terminating" {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:02:00Z".parse().expect("time")
    }

    fn create(ordinal: i32) -> Step {
        Step::Create {
            ordinal,
            update: true,
        }
    }

    fn delete(ordinal: i32, why: Why) -> Step {
        Step::Delete {
            name: format!("web-{ordinal}"),
            why,
        }
    }

    #[test]
    fn ordinals_are_read_from_names_of_the_set() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "web-1-2"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_makes_one_pod_at_a_time_in_order() {
        let s = set(json!({"replicas": 3}));
        let plan = decide(&s, &[], "a", "a", now());
        assert_eq!(plan.steps, [create(0)]);
        // web-0 made but not Running and Ready: wait.
        let plan = decide(&s, &[pod(0, "a", "pending")], "a", "a", now());
        assert!(plan.steps.is_empty());
        let plan = decide(&s, &[pod(0, "a", "running")], "a", "a", now());
        assert!(plan.steps.is_empty());
        // web-0 Ready: web-1 next.
        let plan = decide(&s, &[pod(0, "a", "ready")], "a", "a", now());
        assert_eq!(plan.steps, [create(1)]);
        assert_eq!(plan.counts.replicas, 1);
        assert_eq!(plan.counts.ready, 1);
        // A gap is filled first, in order.
        let plan = decide(
            &s,
            &[pod(0, "a", "ready"), pod(2, "a", "ready")],
            "a",
            "a",
            now(),
        );
        assert_eq!(plan.steps, [create(1)]);
    }

    #[test]
    fn parallel_makes_and_removes_them_all_at_once() {
        let s = set(json!({"replicas": 3, "podManagementPolicy": "Parallel"}));
        let plan = decide(&s, &[pod(1, "a", "pending")], "a", "a", now());
        assert_eq!(plan.steps, [create(0), create(2)]);
        let s = set(json!({"replicas": 1, "podManagementPolicy": "Parallel"}));
        let all = [
            pod(0, "a", "ready"),
            pod(1, "a", "running"),
            pod(2, "a", "ready"),
        ];
        let plan = decide(&s, &all, "a", "a", now());
        assert_eq!(
            plan.steps,
            [delete(2, Why::ScaleDown), delete(1, Why::ScaleDown)]
        );
    }

    #[test]
    fn ordered_scale_down_goes_from_the_highest_one_at_a_time() {
        let s = set(json!({"replicas": 1}));
        let all = [
            pod(0, "a", "ready"),
            pod(1, "a", "ready"),
            pod(2, "a", "ready"),
        ];
        let plan = decide(&s, &all, "a", "a", now());
        assert_eq!(plan.steps, [delete(2, Why::ScaleDown)]);
        // web-2 terminating: web-1 waits for it to be gone.
        let going = [
            pod(0, "a", "ready"),
            pod(1, "a", "ready"),
            pod(2, "a", "terminating"),
        ];
        let plan = decide(&s, &going, "a", "a", now());
        assert!(plan.steps.is_empty());
        assert_eq!(plan.counts.replicas, 3);
        // An unhealthy pod in range blocks the scale down.
        let sick = [pod(0, "a", "running"), pod(1, "a", "ready")];
        let plan = decide(&s, &sick, "a", "a", now());
        assert!(plan.steps.is_empty());
        // The first unhealthy pod itself may go.
        let sick = [pod(0, "a", "ready"), pod(1, "a", "running")];
        let plan = decide(&s, &sick, "a", "a", now());
        assert_eq!(plan.steps, [delete(1, Why::ScaleDown)]);
    }

    #[test]
    fn ordinals_start_where_the_spec_says() {
        let s = set(json!({"replicas": 2, "ordinals": {"start": 5}}));
        let plan = decide(&s, &[], "a", "a", now());
        assert_eq!(plan.steps, [create(5)]);
        let plan = decide(&s, &[pod(0, "a", "ready")], "a", "a", now());
        assert_eq!(plan.steps, [create(5)], "web-0 is out of range");
        let plan = decide(
            &s,
            &[
                pod(5, "a", "ready"),
                pod(6, "a", "ready"),
                pod(0, "a", "ready"),
            ],
            "a",
            "a",
            now(),
        );
        assert_eq!(plan.steps, [delete(0, Why::ScaleDown)]);
    }

    #[test]
    fn finished_pods_are_made_again() {
        let s = set(json!({"replicas": 2}));
        let plan = decide(&s, &[pod(0, "a", "failed")], "a", "a", now());
        assert_eq!(plan.steps, [delete(0, Why::Failed)]);
        let plan = decide(
            &s,
            &[pod(0, "a", "ready"), pod(1, "a", "succeeded")],
            "a",
            "a",
            now(),
        );
        assert_eq!(plan.steps, [delete(1, Why::Succeeded)]);
        assert_eq!(recreate_backoff(0), Duration::ZERO);
        assert_eq!(recreate_backoff(1), Duration::from_secs(10));
        assert_eq!(recreate_backoff(3), Duration::from_secs(40));
        assert_eq!(recreate_backoff(30), MAX_RECREATE_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_keeps_failing_is_made_again_ever_more_slowly() {
        let remakes = Remakes::default();
        assert_eq!(
            remakes.wait("u1", "web-0"),
            Duration::ZERO,
            "the first at once"
        );
        remakes.remaking("u1", "web-0");
        assert_eq!(remakes.wait("u1", "web-0"), Duration::from_secs(10));
        assert_eq!(remakes.wait("u1", "web-1"), Duration::ZERO, "per pod");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(remakes.wait("u1", "web-0"), Duration::from_secs(6));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(remakes.wait("u1", "web-0"), Duration::ZERO);
        remakes.remaking("u1", "web-0");
        assert_eq!(remakes.wait("u1", "web-0"), Duration::from_secs(20));
        // Running and Ready again: the next failure is remade at once.
        remakes.healthy_again("u1", &[pod(0, "a", "ready")]);
        assert_eq!(remakes.wait("u1", "web-0"), Duration::ZERO);
    }

    #[test]
    fn min_ready_seconds_holds_the_next_pod_back() {
        let s = set(json!({"replicas": 2, "minReadySeconds": 300}));
        let plan = decide(&s, &[pod(0, "a", "ready")], "a", "a", now());
        assert!(plan.steps.is_empty(), "Ready 2 min, not yet available");
        assert_eq!(plan.requeue, Some(Duration::from_secs(300)));
        assert_eq!((plan.counts.ready, plan.counts.available), (1, 0));
        let later: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
        let plan = decide(&s, &[pod(0, "a", "ready")], "a", "a", later);
        assert_eq!(plan.steps, [create(1)]);
        assert_eq!(plan.counts.available, 1);
    }

    #[test]
    fn rolling_updates_go_down_from_the_highest_ordinal_to_the_partition() {
        let s = set(json!({"replicas": 3}));
        let old = [
            pod(0, "a", "ready"),
            pod(1, "a", "ready"),
            pod(2, "a", "ready"),
        ];
        let plan = decide(&s, &old, "a", "b", now());
        assert_eq!(plan.steps, [delete(2, Why::Update)]);
        assert_eq!((plan.counts.current, plan.counts.updated), (3, 0));
        assert!(!plan.rolled_out);
        // web-2 made again at b but not Ready: wait.
        let rolling = [
            pod(0, "a", "ready"),
            pod(1, "a", "ready"),
            pod(2, "b", "running"),
        ];
        assert!(decide(&s, &rolling, "a", "b", now()).steps.is_empty());
        let rolling = [
            pod(0, "a", "ready"),
            pod(1, "a", "ready"),
            pod(2, "b", "ready"),
        ];
        assert_eq!(
            decide(&s, &rolling, "a", "b", now()).steps,
            [delete(1, Why::Update)]
        );
        let done = [
            pod(0, "b", "ready"),
            pod(1, "b", "ready"),
            pod(2, "b", "ready"),
        ];
        let plan = decide(&s, &done, "a", "b", now());
        assert!(plan.steps.is_empty());
        assert!(plan.rolled_out);
        let status = status_patch(&s, &plan, "a", "b", 0);
        assert_eq!(status["currentRevision"], "b");
        assert_eq!(status["currentReplicas"], 3);
        assert_eq!(status["updatedReplicas"], 3);
        assert_eq!(status["observedGeneration"], 2);

        // With a partition of 2 only web-2 is updated; a missing web-1 is made at the old one.
        let s = set(
            json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"partition": 2}}}),
        );
        let plan = decide(
            &s,
            &[
                pod(0, "a", "ready"),
                pod(1, "a", "ready"),
                pod(2, "b", "ready"),
            ],
            "a",
            "b",
            now(),
        );
        assert!(plan.steps.is_empty());
        let plan = decide(&s, &[pod(0, "a", "ready")], "a", "b", now());
        assert_eq!(
            plan.steps,
            [Step::Create {
                ordinal: 1,
                update: false
            }]
        );

        // OnDelete: nothing is deleted for an update.
        let s = set(json!({"replicas": 3, "updateStrategy": {"type": "OnDelete"}}));
        assert!(decide(&s, &old, "a", "b", now()).steps.is_empty());
    }

    #[test]
    fn pods_carry_their_identity_and_claims() {
        let mut s = set(json!({"replicas": 1, "serviceName": "nginx",
            "volumeClaimTemplates": [{"metadata": {"name": "www"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}));
        let template = s
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let p = new_pod(&s, &template, "web-abc", 3);
        assert_eq!(p.metadata.name.as_deref(), Some("web-3"));
        let labels = p.labels();
        assert_eq!(labels.get(POD_NAME).map(String::as_str), Some("web-3"));
        assert_eq!(labels.get(POD_INDEX).map(String::as_str), Some("3"));
        assert_eq!(
            labels.get(REVISION_LABEL).map(String::as_str),
            Some("web-abc")
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let spec = p.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("web-3"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volume = &spec.volumes.expect("volumes")[0];
        assert_eq!(volume.name, "www");
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("www-web-3")
        );
        let owner = &p.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("StatefulSet", Some(true))
        );

        let claims = new_claims(&s, 3);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("www-web-3"));
        assert_eq!(
            claims[0].labels().get("app").map(String::as_str),
            Some("web")
        );

        // The retention policy, as owner references.
        assert!(
            claim_owners(&s, &[], Some(("web-3", "p3"))).is_empty(),
            "Retain, Retain"
        );
        if let Some(spec) = s.spec.as_mut() {
            spec.persistent_volume_claim_retention_policy =
                serde_json::from_value(json!({"whenDeleted": "Delete", "whenScaled": "Delete"}))
                    .ok();
        }
        let owners = claim_owners(&s, &[], None);
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].controller),
            ("StatefulSet", Some(false))
        );
        let owners = claim_owners(&s, &owners, Some(("web-3", "p3")));
        let kinds: Vec<&str> = owners.iter().map(|o| o.kind.as_str()).collect();
        assert_eq!(kinds, ["StatefulSet", "Pod"]);
        assert_eq!(owners[1].uid, "p3");
    }

    #[test]
    fn revisions_hold_the_template_as_kube_stores_it() {
        let s = set(json!({"replicas": 1}));
        let template = s
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let data = revision_data(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data["spec"]["template"]["metadata"]["labels"]["app"], "web");
        assert_eq!(revision_template(&data), Some(template));
        let hash = revision_hash(&data, 0);
        assert_eq!(hash, revision_hash(&data, 0));
        assert_ne!(hash, revision_hash(&data, 1));
        assert!(
            hash.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert_eq!(
            canonical(&json!({"b": 1, "a": [{"d": 1, "c": 2}]})),
            r#"{"a":[{"c":2,"d":1}],"b":1}"#
        );
    }

    #[test]
    fn history_keeps_the_limit_and_every_live_revision() {
        let revision = |name: &str, n: i64| ControllerRevision {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: None,
            revision: n,
        };
        let all = [
            revision("r1", 1),
            revision("r2", 2),
            revision("r3", 3),
            revision("r4", 4),
        ];
        assert_eq!(history_to_trim(&all, &["r4", "r3"], 1), ["r1"]);
        assert_eq!(history_to_trim(&all, &["r4", "r1"], 0), ["r2", "r3"]);
        assert!(history_to_trim(&all, &["r4"], 10).is_empty());
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let mut s = set(json!({"replicas": 1}));
        let plan = decide(&s, &[pod(0, "a", "ready")], "a", "a", now());
        let patch = status_patch(&s, &plan, "a", "a", 0);
        assert!(status_changed(&s, &patch));
        s.status = serde_json::from_value(json!({"replicas": 1, "readyReplicas": 1,
            "availableReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1,
            "currentRevision": "a", "updateRevision": "a", "observedGeneration": 2,
            "collisionCount": 0}))
        .ok();
        assert!(!status_changed(&s, &patch), "{patch}");
    }
}
