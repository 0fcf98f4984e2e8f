//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every namespace
//! has a ConfigMap `kube-root-ca.crt` whose `ca.crt` is the CA that signs the API server's
//! certificate, so that pods can check whom they talk to. The ServiceAccount admission plugin
//! projects it into every pod's `kube-api-access-*` volume, so a pod waits for it as on
//! Kubernetes. A ConfigMap deleted or changed is put back; one in a namespace being deleted is
//! left alone.
//!
//! The CA is the one the control plane's client trusts (its kubeconfig's
//! `certificate-authority-data`, [`crate::ControllersConfig::root_ca`]), so this works against
//! any API server; without one (a client with no CA of its own) the publisher does not run,
//! as kube-controller-manager publishes nothing without a root CA.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::Error;

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";
/// Its one key.
pub const KEY: &str = "ca.crt";
/// The annotation describing it, and what it says (kube's words).
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Context {
    client: Client,
    ca: String,
}

/// Publishes `ca` (PEM) in every namespace until `shutdown` resolves.
pub async fn run(
    client: Client,
    ca: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let maps = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ConfigMap>::all(client.clone()),
        maps,
        |cm: ConfigMap| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, Arc::new(Context { client, ca }))
    .for_each(|r| {
        if let Err(error) = r {
            tracing::debug!(%error, "root CA publish failed");
        }
        futures::future::ready(())
    })
    .await;
}

/// The data the ConfigMap must hold.
fn wanted(ca: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(KEY.to_owned(), ca.to_owned())])
}

/// What to write to the namespace's ConfigMap, given what it holds: `None` when it is right.
pub fn desired(ca: &str, current: Option<&ConfigMap>) -> Option<ConfigMap> {
    let data = wanted(ca);
    let Some(current) = current else {
        return Some(ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP.to_owned()),
                annotations: Some(BTreeMap::from([(
                    DESCRIPTION_ANNOTATION.to_owned(),
                    DESCRIPTION.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        });
    };
    let described = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .is_some_and(|d| !d.is_empty());
    if current.data.as_ref() == Some(&data) && described && current.binary_data.is_none() {
        return None;
    }
    let mut fixed = current.clone();
    fixed.data = Some(data);
    fixed.binary_data = None;
    fixed
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned());
    Some(fixed)
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let current = api
        .get_opt(CONFIG_MAP)
        .await
        .map_err(|e| Error::api("read kube-root-ca.crt of", &*ns, e))?;
    let Some(write) = desired(&ctx.ca, current.as_ref()) else {
        return Ok(Action::await_change());
    };
    let result = if current.is_some() {
        api.replace(CONFIG_MAP, &PostParams::default(), &write)
            .await
    } else {
        api.create(&PostParams::default(), &write).await
    };
    match result {
        Ok(_) => {
            tracing::debug!(namespace = %name, "published kube-root-ca.crt");
            Ok(Action::await_change())
        }
        // Gone (the namespace) or changed meanwhile: the watch brings it back here.
        Err(e) if Error::is_gone_or_conflict(&e) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
            Ok(Action::await_change())
        }
        Err(e) => Err(Error::api("publish kube-root-ca.crt in", &*ns, e)),
    }
}

fn error_policy(_ns: Arc<Namespace>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "root CA publish failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_is_made_and_put_right_but_not_rewritten() {
        let made = desired("CA", None).expect("made when missing");
        assert_eq!(made.data, Some(wanted("CA")));
        assert_eq!(made.metadata.name.as_deref(), Some(CONFIG_MAP));
        assert!(
            desired("CA", Some(&made)).is_none(),
            "left alone when right"
        );
        let mut tampered = made.clone();
        tampered.data = Some(BTreeMap::from([(KEY.to_owned(), "evil".to_owned())]));
        tampered.metadata.resource_version = Some("7".into());
        let fixed = desired("CA", Some(&tampered)).expect("put right");
        assert_eq!(fixed.data, Some(wanted("CA")));
        assert_eq!(
            fixed.metadata.resource_version.as_deref(),
            Some("7"),
            "replaced at the version read"
        );
        let mut bare = made;
        bare.metadata.annotations = None;
        assert!(
            desired("CA", Some(&bare)).is_some(),
            "the description comes back"
        );
    }
}
