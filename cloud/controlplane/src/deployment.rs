//! The Deployment controller: one ReplicaSet per pod template, rolled from the old to the new
//! as the strategy allows, with the revisions, events and status that `kubectl rollout
//! status|history|undo` read.
//!
//! Each reconcile works from the shared ReplicaSet store and does one step, as
//! kube-controller-manager does:
//!
//! 1. find the new ReplicaSet (the one whose template equals the Deployment's, ignoring the
//!    `pod-template-hash` label) or create it, named `<deployment>-<hash>`, with revision
//!    `max(old revisions) + 1` (a rollback makes an old ReplicaSet new again, with a new
//!    revision);
//! 2. scale: *RollingUpdate* grows the new ReplicaSet while the total stays within `replicas +
//!    maxSurge`, and shrinks old ones while at least `replicas - maxUnavailable` pods stay
//!    available (unhealthy old pods first); *Recreate* scales the old ones to zero, waits for
//!    their pods to go, then scales the new one up;
//! 3. delete old, empty ReplicaSets beyond `revisionHistoryLimit`;
//! 4. write the status: replica counts, `Available` and `Progressing` conditions (including
//!    `ProgressDeadlineExceeded`).
//!
//! Then the ReplicaSet's changes (pods created, becoming available) trigger the next step.
//!
//! The ReplicaSets it wrote (created, scaled, annotated) are kept as an expectation
//! ([`crate::expectations`]): until the ReplicaSet watch shows them at those versions, a
//! reconcile of the Deployment does nothing and the ReplicaSet events wake it, so no step is
//! taken from a store older than the last one. Its ReplicaSets come from the store's index by
//! controller, not a scan of every ReplicaSet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, version_of};
use crate::indexes::Indexed;

/// The label that ties a ReplicaSet and its pods to one template.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The ReplicaSets a reconcile wrote, by name, with the versions the API answered.
type Written = BTreeMap<String, u64>;

/// What the reconciler shares.
pub struct Context {
    client: Client,
    replicasets: Indexed<ReplicaSet>,
    pods: Indexed<Pod>,
    /// By Deployment uid.
    expectations: Expectations<String, Written>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    replicasets: Indexed<ReplicaSet>,
    replicaset_changes: impl futures::Stream<Item = Arc<ReplicaSet>> + Send + 'static,
    pods: Indexed<Pod>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        client: client.clone(),
        replicasets,
        pods,
        expectations: Expectations::new("replicaset"),
    });
    Controller::new(Api::<Deployment>::all(client), watcher::Config::default())
        .owns_shared_stream(replicaset_changes)
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "deployment reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}

/// Kubernetes' hash of a pod template: FNV-32a of its JSON (and the collision count), written
/// with the consonants and digits `rand.SafeEncodeString` uses, so names never spell words.
pub fn template_hash(template: &Value, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(template.to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(c.to_string().as_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// A template without the hash label, for comparing a ReplicaSet's with its Deployment's.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(TEMPLATE_HASH);
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// `maxSurge`/`maxUnavailable` as a count: percentages of `desired`, rounded up for surge and
/// down for unavailability, as Kubernetes resolves them.
pub fn resolve(value: Option<&IntOrString>, default: &str, desired: i32, round_up: bool) -> i32 {
    let pct = |s: &str| -> Option<i32> {
        let p: i64 = s.strip_suffix('%')?.parse().ok()?;
        let scaled = i64::from(desired) * p;
        let v = if round_up {
            (scaled + 99) / 100
        } else {
            scaled / 100
        };
        i32::try_from(v).ok()
    };
    match value {
        Some(IntOrString::Int(i)) => (*i).max(0),
        Some(IntOrString::String(s)) => pct(s).unwrap_or(0).max(0),
        None => pct(default).unwrap_or(0),
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let shown = ctx.expectations.met(&uid, |written| {
        let index = &ctx.replicasets.index;
        written.retain(|name, version| {
            let key = ObjectRef::new(name).within(&namespace);
            let seen = ctx
                .replicasets
                .store
                .get(&key)
                .and_then(|r| version_of(&r.metadata));
            // Not shown at that version yet, unless the watch has passed it and no longer holds
            // the ReplicaSet (deleted meanwhile).
            seen.is_none_or(|seen| seen < *version)
                && (index.seen_version() < *version || index.contains(&key))
        });
        written.is_empty()
    });
    if !shown {
        // The ReplicaSet events its writes cause (deletions too) wake it.
        return Ok(Action::await_change());
    }
    let mut sets = ctx.replicasets.owned(&namespace, &uid);
    sets.sort_by_key(|r| {
        (
            revision(r),
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    let spec = d.spec.clone().unwrap_or_default();
    let template = serde_json::to_value(&spec.template).unwrap_or(Value::Null);
    let existing = sets
        .iter()
        .find(|r| {
            let t = r.spec.as_ref().and_then(|s| s.template.as_ref());
            serde_json::to_value(t).is_ok_and(|t| without_hash(&t) == template)
        })
        .cloned();
    let paused = spec.paused == Some(true);
    let new = match existing {
        Some(rs) => Some(ensure_newest_revision(&d, &ctx, rs, &sets).await?),
        None if !paused => Some(create_new(&d, &ctx, &template, &sets).await?),
        None => None,
    };
    let old: Vec<Arc<ReplicaSet>> = sets
        .iter()
        .filter(|r| new.as_ref().is_none_or(|n| n.uid() != r.uid()))
        .cloned()
        .collect();
    if let (Some(new), false) = (&new, paused) {
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        if recreate {
            recreate_step(&d, &ctx, new, &old).await?;
        } else {
            rolling_step(&d, &ctx, new, &old).await?;
        }
    }
    clean_up(&d, &ctx, &old).await?;
    write_status(&d, &ctx, new.as_deref()).await
}

/// Gives an existing ReplicaSet that became the new one again (a rollback) the next revision.
async fn ensure_newest_revision(
    d: &Deployment,
    ctx: &Context,
    rs: Arc<ReplicaSet>,
    sets: &[Arc<ReplicaSet>],
) -> Result<Arc<ReplicaSet>, Error> {
    let max_other = sets
        .iter()
        .filter(|r| r.uid() != rs.uid())
        .map(|r| revision(r))
        .max()
        .unwrap_or(0);
    if revision(&rs) > max_other {
        return Ok(rs);
    }
    let next = (max_other + 1).to_string();
    let mut annotations = json!({ REVISION: next });
    if let Some(cause) = d.annotations().get(CHANGE_CAUSE) {
        annotations[CHANGE_CAUSE] = json!(cause);
    }
    let patched = patch_rs(
        d,
        ctx,
        &rs,
        json!({"metadata": {"annotations": annotations}}),
    )
    .await?;
    Ok(patched)
}

async fn create_new(
    d: &Deployment,
    ctx: &Context,
    template: &Value,
    sets: &[Arc<ReplicaSet>],
) -> Result<Arc<ReplicaSet>, Error> {
    let namespace = d.namespace().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(template, collisions);
    let mut rs_template = template.clone();
    rs_template["metadata"]["labels"][TEMPLATE_HASH] = json!(hash);
    let mut selector =
        serde_json::to_value(d.spec.as_ref().map(|s| &s.selector)).unwrap_or(json!({}));
    selector["matchLabels"][TEMPLATE_HASH] = json!(hash);
    let mut labels = rs_template["metadata"]["labels"].clone();
    labels[TEMPLATE_HASH] = json!(hash);
    let next = sets.iter().map(|r| revision(r)).max().unwrap_or(0) + 1;
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut annotations = json!({REVISION: next.to_string(), DESIRED: desired.to_string()});
    if let Some(cause) = d.annotations().get(CHANGE_CAUSE) {
        annotations[CHANGE_CAUSE] = json!(cause);
    }
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.name_any(),
        uid: d.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", d.name_any()),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": 0,
            "minReadySeconds": d.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0),
            "selector": selector,
            "template": rs_template,
        },
    });
    let rs: ReplicaSet = serde_json::from_value(rs)
        .map_err(|e| Error::api("build replicaset for", d, kube::Error::SerdeError(e)))?;
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            let message = format!("Scaled up replica set {} to 0 from 0", created.name_any());
            tracing::debug!(%message, "new replicaset");
            expect_written(ctx, d, &created);
            Ok(Arc::new(created))
        }
        // A ReplicaSet of that name with another template: count the collision and retry
        // with another hash.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let count = collisions.unwrap_or(0) + 1;
            Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"collisionCount": count}})),
                )
                .await
                .map_err(|e| Error::api("count a hash collision of", d, e))?;
            Err(Error::api("create replicaset for", d, kube::Error::Api(s)))
        }
        Err(e) => Err(Error::api("create replicaset for", d, e)),
    }
}

async fn patch_rs(
    d: &Deployment,
    ctx: &Context,
    rs: &ReplicaSet,
    patch: Value,
) -> Result<Arc<ReplicaSet>, Error> {
    let api: Api<ReplicaSet> =
        Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patched = api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(|e| Error::api("update", rs, e))?;
    expect_written(ctx, d, &patched);
    Ok(Arc::new(patched))
}

/// Expects the ReplicaSet store to show `rs` at least as new as this before `d`'s next step.
fn expect_written(ctx: &Context, d: &Deployment, rs: &ReplicaSet) {
    if let Some(version) = version_of(&rs.metadata) {
        ctx.expectations
            .expect_also(d.uid().unwrap_or_default(), |written| {
                written.insert(rs.name_any(), version);
            });
    }
}

/// Scales `rs` to `to`, with the event kubectl describe shows.
async fn scale(
    d: &Deployment,
    ctx: &Context,
    rs: &ReplicaSet,
    to: i32,
) -> Result<Arc<ReplicaSet>, Error> {
    let from = spec_replicas(rs);
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let surge = max_surge(d, desired);
    let patched = patch_rs(
        d,
        ctx,
        rs,
        json!({
            "metadata": {"annotations": {DESIRED: desired.to_string(), MAX_REPLICAS: (desired + surge).to_string()}},
            "spec": {"replicas": to},
        }),
    )
    .await?;
    if from != to {
        let direction = if to > from { "up" } else { "down" };
        let message = format!(
            "Scaled {direction} replica set {} to {to} from {from}",
            rs.name_any()
        );
        ctx.recorder.record(
            d.object_ref(&()),
            EventType::Normal,
            "ScalingReplicaSet",
            &message,
        );
    }
    Ok(patched)
}

fn max_surge(d: &Deployment, desired: i32) -> i32 {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve(
        rolling.and_then(|r| r.max_surge.as_ref()),
        "25%",
        desired,
        true,
    )
}

fn max_unavailable(d: &Deployment, desired: i32) -> i32 {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        desired,
        false,
    );
    // Both zero would never make progress: Kubernetes allows one unavailable then.
    if unavailable == 0 && max_surge(d, desired) == 0 {
        1
    } else {
        unavailable.min(desired)
    }
}

async fn rolling_step(
    d: &Deployment,
    ctx: &Context,
    new: &Arc<ReplicaSet>,
    old: &[Arc<ReplicaSet>],
) -> Result<(), Error> {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let total: i32 = old.iter().map(|r| spec_replicas(r)).sum::<i32>() + spec_replicas(new);
    let mut new = new.clone();
    // Up: within replicas + maxSurge.
    if spec_replicas(&new) > desired {
        new = scale(d, ctx, &new, desired).await?;
    } else if spec_replicas(&new) < desired {
        let room = desired + max_surge(d, desired) - total;
        if room > 0 {
            let to = (spec_replicas(&new) + room).min(desired);
            new = scale(d, ctx, &new, to).await?;
        }
    }
    // Down: keep replicas - maxUnavailable available.
    let all: i32 = old.iter().map(|r| spec_replicas(r)).sum::<i32>() + spec_replicas(&new);
    let min_available = desired - max_unavailable(d, desired);
    let new_unavailable = (spec_replicas(&new) - available(&new)).max(0);
    let mut budget = all - min_available - new_unavailable;
    // Unhealthy old pods go first: removing them costs no availability.
    let mut remaining: Vec<(Arc<ReplicaSet>, i32)> =
        old.iter().map(|r| (r.clone(), spec_replicas(r))).collect();
    for (rs, replicas) in remaining.iter_mut() {
        if budget <= 0 {
            break;
        }
        let unhealthy = (*replicas - available(rs)).max(0);
        let cut = unhealthy.min(budget);
        if cut > 0 {
            *replicas -= cut;
            budget -= cut;
            scale(d, ctx, rs, *replicas).await?;
        }
    }
    let total_available: i32 = old.iter().map(|r| available(r)).sum::<i32>() + available(&new);
    let mut can_remove = total_available - min_available;
    for (rs, replicas) in remaining.iter_mut() {
        if can_remove <= 0 {
            break;
        }
        let cut = (*replicas).min(can_remove);
        if cut > 0 {
            *replicas -= cut;
            can_remove -= cut;
            scale(d, ctx, rs, *replicas).await?;
        }
    }
    Ok(())
}

async fn recreate_step(
    d: &Deployment,
    ctx: &Context,
    new: &Arc<ReplicaSet>,
    old: &[Arc<ReplicaSet>],
) -> Result<(), Error> {
    for rs in old.iter().filter(|r| spec_replicas(r) > 0) {
        scale(d, ctx, rs, 0).await?;
    }
    // The new pods start only once the old ones are gone.
    let namespace = d.namespace().unwrap_or_default();
    let old_pods_left = old
        .iter()
        .filter_map(|r| r.uid())
        .any(|uid| !ctx.pods.owned(&namespace, &uid).is_empty());
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if !old_pods_left && spec_replicas(new) != desired {
        scale(d, ctx, new, desired).await?;
    }
    Ok(())
}

/// Deletes old ReplicaSets with nothing left beyond `revisionHistoryLimit`, oldest first.
async fn clean_up(d: &Deployment, ctx: &Context, old: &[Arc<ReplicaSet>]) -> Result<(), Error> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let empty: Vec<&Arc<ReplicaSet>> = old
        .iter()
        .filter(|r| spec_replicas(r) == 0 && r.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if empty.len() <= limit {
        return Ok(());
    }
    for rs in &empty[..empty.len() - limit] {
        let api: Api<ReplicaSet> =
            Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
        match api.delete(&rs.name_any(), &DeleteParams::default()).await {
            Err(e) if !Error::is_gone_or_conflict(&e) => {
                return Err(Error::api("delete old replicaset of", d, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A condition, keeping the old one's times where nothing changed; `progressed` forces a new
/// `lastUpdateTime` (the progress deadline counts from it).
fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    old: &BTreeMap<String, Value>,
    progressed: bool,
) -> Value {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let previous = old.get(type_);
    let same = |field: &str, v: &str| {
        previous.and_then(|p| p.get(field)).and_then(Value::as_str) == Some(v)
    };
    let transition = if same("status", status) {
        previous
            .and_then(|p| p.get("lastTransitionTime"))
            .cloned()
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    let update = if !progressed
        && same("status", status)
        && same("reason", reason)
        && same("message", &message)
    {
        previous
            .and_then(|p| p.get("lastUpdateTime"))
            .cloned()
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": transition, "lastUpdateTime": update})
}

async fn write_status(
    d: &Deployment,
    ctx: &Context,
    new: Option<&ReplicaSet>,
) -> Result<Action, Error> {
    let namespace = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let sets = ctx.replicasets.owned(&namespace, &uid);
    let count = |f: fn(&ReplicaSet) -> i32| sets.iter().map(|r| f(r)).sum::<i32>();
    let replicas = count(|r| r.status.as_ref().map_or(0, |s| s.replicas));
    let ready = count(|r| {
        r.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = count(available);
    let new_rs = new.and_then(|n| sets.iter().find(|r| r.uid() == n.uid()).cloned());
    let updated = new_rs
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .map_or(0, |s| s.replicas);
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let old_conditions: BTreeMap<String, Value> = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.type_.clone(), serde_json::to_value(c).ok()?)))
        .collect();
    let min_available = desired - max_unavailable(d, desired);
    let counts = |s: Option<&k8s_openapi::api::apps::v1::DeploymentStatus>| {
        s.map(|s| {
            (
                s.replicas.unwrap_or(0),
                s.updated_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
            )
        })
    };
    let progressed = counts(d.status.as_ref()) != Some((replicas, updated, avail));
    let available_condition = if avail >= min_available {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            &old_conditions,
            false,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            &old_conditions,
            false,
        )
    };
    let new_name = new_rs.as_ref().map(|r| r.name_any()).unwrap_or_default();
    let complete = new_rs.is_some()
        && updated == desired
        && replicas == desired
        && avail == desired
        && new_rs.as_ref().is_some_and(|r| available(r) == desired);
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let mut progressing = if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            &old_conditions,
            false,
        )
    } else {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
            &old_conditions,
            progressed,
        )
    };
    let stalled_since = progressing
        .get("lastUpdateTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let mut requeue = None;
    if !complete
        && d.spec.as_ref().and_then(|s| s.paused) != Some(true)
        && let Some(since) = stalled_since
    {
        let waited = jiff::Timestamp::now().duration_since(since).as_secs();
        if waited >= i64::from(deadline) {
            progressing = condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                &old_conditions,
                false,
            );
        } else {
            // Looked at again at its deadline, as kube's `requeueStuckDeployment`; until then
            // its ReplicaSets' events move the rollout on.
            let left =
                Duration::from_secs(u64::try_from(i64::from(deadline) - waited).unwrap_or(1));
            requeue = Some(left);
        }
    }
    let mut annotations = json!({});
    if let Some(rev) = new_rs
        .as_ref()
        .and_then(|r| r.annotations().get(REVISION).cloned())
        && d.annotations().get(REVISION) != Some(&rev)
    {
        annotations[REVISION] = json!(rev);
    }
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (desired - avail).max(0),
        "conditions": [available_condition, progressing],
        "collisionCount": d.status.as_ref().and_then(|s| s.collision_count),
    });
    let current = serde_json::to_value(&d.status).unwrap_or(Value::Null);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        api.patch(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map_err(|e| Error::api("annotate the revision of", d, e))?;
    }
    if !same_status(&current, &status) {
        api.patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(|e| Error::api("update status of", d, e))?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Compares statuses ignoring absent-versus-zero and condition timestamps that were kept.
fn same_status(current: &Value, next: &Value) -> bool {
    let Some(next) = next.as_object() else {
        return false;
    };
    next.iter().all(|(k, v)| {
        let c = current.get(k).unwrap_or(&Value::Null);
        match (c, v) {
            (Value::Null, Value::Number(n)) => n.as_i64() == Some(0),
            _ => c == v,
        }
    })
}

fn error_policy(_d: Arc<Deployment>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "deployment reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_safe() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
        assert!(!h.is_empty() && h.len() <= 10);
    }

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), "25%", 3, true), 1);
        assert_eq!(resolve(Some(&pct), "25%", 3, false), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), "25%", 3, false), 2);
        assert_eq!(resolve(None, "25%", 10, true), 3);
        assert_eq!(resolve(None, "25%", 10, false), 2);
    }
}
