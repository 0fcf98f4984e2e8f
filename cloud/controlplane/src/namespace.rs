//! The namespace controller: a namespace being deleted (`Terminating`, with the `kubernetes`
//! finalizer in `spec.finalizers`) has everything in it deleted, then the finalizer removed
//! through the `finalize` subresource, after which the API server removes the namespace.
//!
//! Pods bound to a node go only when that node's agent confirms them gone, so a namespace with
//! pods on an edge that is offline stays Terminating until the edge comes back: nothing is
//! removed from under a running edge.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::Error;
use crate::resources::discover;

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How often a namespace still emptying is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, Arc::new(client))
    .for_each(|r| {
        if let Err(error) = r {
            tracing::debug!(%error, "namespace reconcile failed");
        }
        futures::future::ready(())
    })
    .await;
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let types = discover(&client)
        .await
        .map_err(|e| Error::api("discover resources to empty", &*ns, e))?;
    let mut remaining = 0;
    for t in types.iter().filter(|t| t.namespaced) {
        let api: Api<DynamicObject> = Api::namespaced_with((*client).clone(), &name, &t.api);
        let left = api
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::api("list what is left in", &*ns, e))?;
        for obj in left
            .items
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
        {
            match api
                .delete(&obj.name_any(), &DeleteParams::background())
                .await
            {
                Err(e) if !Error::is_gone_or_conflict(&e) => {
                    return Err(Error::api("delete what is left in", &*ns, e));
                }
                _ => {}
            }
        }
        remaining += left.items.len();
    }
    if remaining > 0 {
        tracing::debug!(namespace = %name, remaining, "namespace still emptying");
        return Ok(Action::requeue(RECHECK));
    }
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    let api: Api<Namespace> = Api::all((*client).clone());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Err(e) if !Error::is_gone_or_conflict(&e) => Err(Error::api("finalize", &*ns, e)),
        _ => Ok(Action::await_change()),
    }
}

fn error_policy(_ns: Arc<Namespace>, error: &Error, _client: Arc<Client>) -> Action {
    tracing::warn!(%error, "namespace reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
