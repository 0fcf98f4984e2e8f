//! The garbage collector: deletes objects whose owners are gone, and carries out the
//! propagation policy `kubectl delete --cascade=background|foreground|orphan` asked for.
//!
//! It watches every resource type discovery lists (rediscovered every 30 s, so custom resources
//! count too) and keeps a graph of owner references by uid. Then, as kube-controller-manager's
//! collector does:
//!
//! - **background** (the default): an object all of whose owners are gone is deleted; one that
//!   lost some owners has the dangling references removed. An owner missing from the graph is
//!   confirmed gone with a live read first (the graph may lag the API);
//! - **foreground**: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted (in the foreground too), and the finalizer is removed once no dependent
//!   with `blockOwnerDeletion` is left, which lets the API server delete the owner;
//! - **orphan**: an owner being deleted with the `orphan` finalizer has its references removed
//!   from every dependent, then the finalizer.
//!
//! Work is keyed by uid and idempotent: an API error puts the uid back in the queue.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::resources::{ResourceType, discover};

/// The finalizer of a foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an orphaning deletion.
pub const ORPHAN: &str = "orphan";
const REDISCOVER: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(1);

/// One object in the graph.
#[derive(Debug, Clone)]
struct Entry {
    resource: Arc<ResourceType>,
    namespace: Option<String>,
    name: String,
    uid: String,
    /// The version the graph saw: deletions are conditional on it.
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// Objects by uid, and who depends on whom.
#[derive(Default)]
struct Graph {
    objects: HashMap<String, Entry>,
    dependents: HashMap<String, HashSet<String>>,
    /// Resource types by `apiVersion` and kind, to read an owner back.
    kinds: HashMap<(String, String), Arc<ResourceType>>,
}

enum Change {
    Applied(Arc<ResourceType>, DynamicObject),
    Deleted(DynamicObject),
    Synced,
}

impl Graph {
    /// Records a change; returns the uids to look at because of it.
    fn apply(&mut self, change: Change) -> Vec<String> {
        match change {
            Change::Synced => Vec::new(),
            Change::Applied(resource, obj) => {
                let Some(uid) = obj.uid() else {
                    return Vec::new();
                };
                let entry = Entry {
                    resource,
                    namespace: obj.namespace(),
                    name: obj.name_any(),
                    uid: uid.clone(),
                    resource_version: obj.resource_version(),
                    owners: obj.owner_references().to_vec(),
                    deleting: obj.metadata.deletion_timestamp.is_some(),
                    finalizers: obj.finalizers().to_vec(),
                };
                self.unlink(&uid);
                for o in &entry.owners {
                    self.dependents
                        .entry(o.uid.clone())
                        .or_default()
                        .insert(uid.clone());
                }
                let mut work = Vec::new();
                if !entry.owners.is_empty() {
                    work.push(uid.clone());
                }
                if entry.deleting {
                    work.push(uid.clone());
                    work.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
                }
                self.objects.insert(uid, entry);
                work
            }
            Change::Deleted(obj) => {
                let Some(uid) = obj.uid() else {
                    return Vec::new();
                };
                let owners: Vec<String> = self
                    .objects
                    .get(&uid)
                    .map(|e| e.owners.iter().map(|o| o.uid.clone()).collect())
                    .unwrap_or_default();
                self.unlink(&uid);
                self.objects.remove(&uid);
                // Its dependents lost an owner; its owners (if deleting in the foreground)
                // lost a blocking dependent.
                let mut work: Vec<String> = self
                    .dependents
                    .get(&uid)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                work.extend(owners);
                work
            }
        }
    }

    fn unlink(&mut self, uid: &str) {
        if let Some(old) = self.objects.get(uid) {
            for o in &old.owners {
                if let Some(set) = self.dependents.get_mut(&o.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&o.uid);
                    }
                }
            }
        }
    }
}

/// Runs the collector until `shutdown` is cancelled.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let mut graph = Graph::default();
    let mut watched: HashSet<ResourceType> = HashSet::new();
    let mut unsynced = 0usize;
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut retry: BTreeSet<String> = BTreeSet::new();
    let mut rediscover = tokio::time::interval(REDISCOVER);
    let mut retry_tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = rediscover.tick() => {
                match discover(&client).await {
                    Ok(types) => {
                        for t in types {
                            let t = Arc::new(t);
                            graph.kinds.insert((t.api.api_version.clone(), t.api.kind.clone()), t.clone());
                            if watched.insert((*t).clone()) {
                                unsynced += 1;
                                tokio::spawn(watch_type(client.clone(), t, tx.clone(), shutdown.clone()));
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "discovery failed; the collector retries"),
                }
            }
            _ = retry_tick.tick() => queue.extend(std::mem::take(&mut retry)),
            change = rx.recv() => {
                let Some(change) = change else { return };
                if matches!(change, Change::Synced) {
                    unsynced = unsynced.saturating_sub(1);
                }
                queue.extend(graph.apply(change));
            }
        }
        // Decisions wait for every watch to have listed once: before that, "absent" means
        // "not seen yet".
        if unsynced > 0 {
            continue;
        }
        let mut seen = HashSet::new();
        while let Some(uid) = queue.pop_front() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if let Err(error) = process(&client, &graph, &uid).await {
                tracing::warn!(%error, uid, "garbage collection step failed; retrying");
                retry.insert(uid);
            }
        }
    }
}

async fn watch_type(
    client: Client,
    resource: Arc<ResourceType>,
    tx: mpsc::Sender<Change>,
    shutdown: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &resource.api);
    let mut synced = false;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = stream.next() => e,
        };
        let change = match event {
            None => return,
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                Change::Applied(resource.clone(), o)
            }
            Some(Ok(watcher::Event::Delete(o))) => Change::Deleted(o),
            Some(Ok(watcher::Event::InitDone)) if !synced => {
                synced = true;
                Change::Synced
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                tracing::debug!(%error, kind = %resource.api.kind, "watch failed; retrying");
                continue;
            }
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

fn api_for(client: &Client, entry: &Entry) -> Api<DynamicObject> {
    match (&entry.namespace, entry.resource.namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &entry.resource.api),
        _ => Api::all_with(client.clone(), &entry.resource.api),
    }
}

/// Whether `owner` (referenced from `dependent`) exists, reading it back when the graph does
/// not have it.
async fn owner_exists(
    client: &Client,
    graph: &Graph,
    dependent: &Entry,
    owner: &OwnerReference,
) -> Result<bool, kube::Error> {
    if graph.objects.contains_key(&owner.uid) {
        return Ok(true);
    }
    let Some(resource) = graph
        .kinds
        .get(&(owner.api_version.clone(), owner.kind.clone()))
    else {
        // A kind the API does not serve cannot own anything.
        return Ok(false);
    };
    let api: Api<DynamicObject> = match (&dependent.namespace, resource.namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &resource.api),
        (None, true) => return Ok(false),
        _ => Api::all_with(client.clone(), &resource.api),
    };
    Ok(api
        .get_opt(&owner.name)
        .await?
        .is_some_and(|o| o.uid().as_deref() == Some(owner.uid.as_str())))
}

fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        other => other,
    }
}

async fn process(client: &Client, graph: &Graph, uid: &str) -> Result<(), kube::Error> {
    let Some(entry) = graph.objects.get(uid) else {
        return Ok(());
    };
    let api = api_for(client, entry);
    if entry.deleting {
        if entry.finalizers.iter().any(|f| f == ORPHAN) {
            return orphan_dependents(client, graph, uid, entry, &api).await;
        }
        if entry.finalizers.iter().any(|f| f == FOREGROUND) {
            return delete_in_foreground(client, graph, uid, entry, &api).await;
        }
    }
    if entry.owners.is_empty() {
        return Ok(());
    }
    let mut gone = Vec::new();
    for owner in &entry.owners {
        if !owner_exists(client, graph, entry, owner).await? {
            gone.push(owner.uid.clone());
        }
    }
    if gone.len() == entry.owners.len() {
        if entry.deleting {
            return Ok(());
        }
        tracing::info!(kind = %entry.resource.api.kind, name = %entry.name, "owner gone: deleting");
        // Only the version seen here: if the object changed since (its owners were just
        // removed by an orphaning deletion, say), the server refuses with 409 and the next
        // event brings the graph up to date.
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: Some(entry.uid.clone()),
                resource_version: entry.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        return match api.delete(&entry.name, &params).await {
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            other => ignore_gone(other.map(drop)),
        };
    }
    if !gone.is_empty() {
        let owners: Vec<&OwnerReference> = entry
            .owners
            .iter()
            .filter(|o| !gone.contains(&o.uid))
            .collect();
        return ignore_gone(set_owners(&api, entry, &owners).await);
    }
    Ok(())
}

async fn set_owners(
    api: &Api<DynamicObject>,
    entry: &Entry,
    owners: &[&OwnerReference],
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"ownerReferences": owners}});
    api.patch(&entry.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    entry: &Entry,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let kept: Vec<&String> = entry
        .finalizers
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {"finalizers": kept}});
    ignore_gone(
        api.patch(&entry.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop),
    )
}

async fn orphan_dependents(
    client: &Client,
    graph: &Graph,
    uid: &str,
    entry: &Entry,
    api: &Api<DynamicObject>,
) -> Result<(), kube::Error> {
    for dep_uid in graph.dependents.get(uid).into_iter().flatten() {
        let Some(dep) = graph.objects.get(dep_uid) else {
            continue;
        };
        let owners: Vec<&OwnerReference> = dep.owners.iter().filter(|o| o.uid != uid).collect();
        ignore_gone(set_owners(&api_for(client, dep), dep, &owners).await)?;
    }
    remove_finalizer(api, entry, ORPHAN).await
}

async fn delete_in_foreground(
    client: &Client,
    graph: &Graph,
    uid: &str,
    entry: &Entry,
    api: &Api<DynamicObject>,
) -> Result<(), kube::Error> {
    let mut blocking = 0;
    for dep_uid in graph.dependents.get(uid).into_iter().flatten() {
        let Some(dep) = graph.objects.get(dep_uid) else {
            continue;
        };
        let blocks = dep
            .owners
            .iter()
            .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
        if blocks {
            blocking += 1;
        }
        if !dep.deleting {
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Foreground),
                ..DeleteParams::default()
            };
            ignore_gone(
                api_for(client, dep)
                    .delete(&dep.name, &params)
                    .await
                    .map(drop),
            )?;
        }
    }
    if blocking == 0 {
        remove_finalizer(api, entry, FOREGROUND).await?;
    }
    Ok(())
}
