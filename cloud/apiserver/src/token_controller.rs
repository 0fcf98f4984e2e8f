//! The token controller (kube-controller-manager's `serviceaccount-token`): a Secret of type
//! `kubernetes.io/service-account-token` naming an account in its
//! `kubernetes.io/service-account.name` annotation gets `token` (a legacy, non-expiring token
//! for that account), `ca.crt` (the cluster CA) and `namespace` filled in, and the account's
//! uid in `kubernetes.io/service-account.uid`; a token Secret whose account is gone (or was
//! re-created under another uid) is deleted, and so are an account's token Secrets when the
//! account is deleted, as kube 1.33's controller does.
//!
//! **Why in the API server**, and not in the control plane beside the other controllers: a
//! legacy token must be signed with the key the API server checks tokens with. Kubernetes
//! hands that private key to kube-controller-manager (`--service-account-private-key-file`);
//! Wedge's control plane also runs against real clusters, where it has no such key and the
//! cluster's own controller does this job. So the one place holding the key does it, watching
//! its own store as the ServiceAccount-per-namespace it already makes.
//!
//! Start reading at [`run`]: one pass over every Secret, then a watch of Secrets and
//! ServiceAccounts; each event is handled by [`sync_secret`] or [`account_deleted`], both
//! idempotent, so a lagging watch just starts again with a full pass.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::storage::{EventType, ObjectKey, StoreError};

/// The Secret type this controller fills.
pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the account.
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation holding the account's uid.
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

/// Why a Secret could not be filled.
#[derive(Debug, thiserror::Error)]
pub enum TokenControllerError {
    /// The store refused the read or write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token could not be signed.
    #[error(transparent)]
    Sign(#[from] crate::service_account_tokens::TokenKeyError),
}

/// What a pass over one Secret did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a token Secret, or already complete.
    Nothing,
    /// Its token, CA or namespace were filled.
    Filled,
    /// Deleted: its account does not exist (with its uid).
    Deleted,
}

/// Keeps token Secrets filled until `shutdown`.
pub async fn run(api: Arc<Api>, ca_pem: String, shutdown: CancellationToken) {
    loop {
        let from = api.store.current_rv();
        resync(&api, &ca_pem).await;
        let Ok(mut secrets) = api.store.watch("secrets", None, from) else {
            continue;
        };
        let Ok(mut accounts) = api.store.watch("serviceaccounts", None, from) else {
            continue;
        };
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = secrets.next() => e,
                e = accounts.next() => e,
            };
            let Ok(event) = event else {
                // Lagged behind the store's history: a full pass catches up.
                break;
            };
            match (event.key.resource.as_str(), event.kind) {
                ("secrets", EventType::Added | EventType::Modified) => {
                    log(&event.key, sync_secret(&api, &ca_pem, &event.key).await);
                }
                ("serviceaccounts", EventType::Deleted) => {
                    account_deleted(&api, &event.key.namespace, &event.key.name).await;
                }
                _ => {}
            }
        }
    }
}

fn log(key: &ObjectKey, outcome: Result<Outcome, TokenControllerError>) {
    match outcome {
        Ok(Outcome::Nothing) => {}
        Ok(outcome) => tracing::info!(secret = %key, ?outcome, "ServiceAccount token secret"),
        Err(TokenControllerError::Store(StoreError::Conflict { .. } | StoreError::NotFound(_))) => {
            // Changed or gone meanwhile: the next event brings it back here.
        }
        Err(error) => tracing::warn!(secret = %key, %error, "cannot fill a token secret"),
    }
}

/// Every Secret once (at start, and after a lagging watch).
async fn resync(api: &Api, ca_pem: &str) {
    let (secrets, _, _) = api.store.list("secrets", None, None, None, |_| true);
    for secret in secrets {
        let value = secret.value();
        if value.get("type").and_then(Value::as_str) != Some(TOKEN_TYPE) {
            continue;
        }
        let key = ObjectKey::new(
            "secrets",
            meta(&value, "namespace").unwrap_or_default(),
            meta(&value, "name").unwrap_or_default(),
        );
        log(&key, sync_secret(api, ca_pem, &key).await);
    }
}

fn meta<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
}

fn annotation<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

/// Fills (or deletes) the Secret at `key`, as the controller's `syncSecret` does.
pub async fn sync_secret(
    api: &Api,
    ca_pem: &str,
    key: &ObjectKey,
) -> Result<Outcome, TokenControllerError> {
    let stored = api.store.get(key)?;
    let mut secret = stored.value();
    if secret.get("type").and_then(Value::as_str) != Some(TOKEN_TYPE)
        || secret.pointer("/metadata/deletionTimestamp").is_some()
    {
        return Ok(Outcome::Nothing);
    }
    let Some(account_name) = annotation(&secret, NAME_ANNOTATION).map(str::to_owned) else {
        return Ok(Outcome::Nothing);
    };
    let account = api
        .store
        .get(&ObjectKey::new(
            "serviceaccounts",
            &key.namespace,
            &account_name,
        ))
        .ok()
        .map(|o| o.value());
    let account_uid = account
        .as_ref()
        .and_then(|a| meta(a, "uid"))
        .map(str::to_owned);
    let wanted_uid = annotation(&secret, UID_ANNOTATION);
    let Some(account_uid) = account_uid.filter(|uid| wanted_uid.is_none_or(|w| w == uid)) else {
        delete(api, key, stored.rv, &secret).await?;
        return Ok(Outcome::Deleted);
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let data_of = |name: &str| {
        secret
            .pointer(&format!("/data/{name}"))
            .and_then(Value::as_str)
            .and_then(|v| b64.decode(v).ok())
            .unwrap_or_default()
    };
    let needs_ca = !ca_pem.is_empty() && data_of("ca.crt") != ca_pem.as_bytes();
    let needs_namespace = data_of("namespace").is_empty();
    let needs_token = data_of("token").is_empty();
    let annotated = wanted_uid == Some(account_uid.as_str());
    if !needs_ca && !needs_namespace && !needs_token && annotated {
        return Ok(Outcome::Nothing);
    }
    let token = if needs_token {
        let Some(signer) = api.service_account_tokens.as_ref() else {
            return Ok(Outcome::Nothing);
        };
        Some(signer.issue_legacy(&key.namespace, &account_name, &account_uid, &key.name)?)
    } else {
        None
    };
    let Some(object) = secret.as_object_mut() else {
        return Ok(Outcome::Nothing);
    };
    let data = object.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    if needs_ca {
        data["ca.crt"] = json!(b64.encode(ca_pem));
    }
    if needs_namespace {
        data["namespace"] = json!(b64.encode(&key.namespace));
    }
    if let Some(token) = token {
        data["token"] = json!(b64.encode(token));
    }
    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    let annotations = metadata
        .as_object_mut()
        .map(|m| m.entry("annotations").or_insert_with(|| json!({})));
    if let Some(annotations) = annotations {
        annotations[NAME_ANNOTATION] = json!(account_name);
        annotations[UID_ANNOTATION] = json!(account_uid);
    }
    api.store.update(key, secret, Some(stored.rv)).await?;
    Ok(Outcome::Filled)
}

/// Deletes the token Secrets of the account `namespace/name` that was just deleted.
pub async fn account_deleted(api: &Api, namespace: &str, name: &str) {
    let (secrets, _, _) = api
        .store
        .list("secrets", Some(namespace), None, None, |_| true);
    for secret in secrets {
        let value = secret.value();
        if value.get("type").and_then(Value::as_str) != Some(TOKEN_TYPE)
            || annotation(&value, NAME_ANNOTATION) != Some(name)
        {
            continue;
        }
        let key = ObjectKey::new(
            "secrets",
            namespace,
            meta(&value, "name").unwrap_or_default(),
        );
        match delete(api, &key, secret.rv, &value).await {
            Ok(()) => {
                tracing::info!(secret = %key, "deleted the token secret of a deleted ServiceAccount")
            }
            Err(error) => log(&key, Err(error.into())),
        }
    }
}

/// Deletes a Secret; one with finalizers is marked instead, as a DELETE would.
async fn delete(api: &Api, key: &ObjectKey, rv: u64, secret: &Value) -> Result<(), StoreError> {
    let finalized = secret
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if finalized {
        let mut marked = secret.clone();
        marked["metadata"]["deletionTimestamp"] = json!(crate::api::meta::now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        api.store.update(key, marked, Some(rv)).await?;
    } else {
        api.store.delete(key, Some(rv)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn api() -> (tempfile::TempDir, Api) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(crate::storage::Store::open(&dir.path().join("db")).expect("store"));
        let pki = wedge_pki::Pki::load_or_create(dir.path(), &[]).expect("pki");
        let tokens = crate::service_account_tokens::ServiceAccountTokens::new(
            &pki.load_or_create_key("sa").expect("key"),
        )
        .expect("key");
        let api = Api::new(store, CancellationToken::new())
            .await
            .expect("api")
            .with_service_account_tokens(tokens);
        (dir, api)
    }

    async fn put_secret(api: &Api, name: &str, account: &str) -> ObjectKey {
        let key = ObjectKey::new("secrets", "default", name);
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": TOKEN_TYPE,
            "metadata": {"name": name, "namespace": "default", "uid": format!("s-{name}"),
                         "annotations": {NAME_ANNOTATION: account}}});
        api.store.create(&key, secret).await.expect("create");
        key
    }

    fn data(api: &Api, key: &ObjectKey, field: &str) -> Option<Vec<u8>> {
        let secret = api.store.get(key).ok()?.value();
        let text = secret
            .pointer(&format!("/data/{field}"))?
            .as_str()?
            .to_owned();
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    #[tokio::test]
    async fn a_token_secret_is_filled_once_and_its_token_authenticates() {
        let (_dir, api) = api().await;
        let key = put_secret(&api, "default-token", "default").await;
        assert_eq!(
            sync_secret(&api, "CA", &key).await.expect("sync"),
            Outcome::Filled
        );
        assert_eq!(data(&api, &key, "ca.crt").as_deref(), Some(&b"CA"[..]));
        assert_eq!(
            data(&api, &key, "namespace").as_deref(),
            Some(&b"default"[..])
        );
        let token = String::from_utf8(data(&api, &key, "token").expect("token")).expect("utf8");
        let user = api.authenticate_token(&token).expect("authenticates");
        assert_eq!(user.name, "system:serviceaccount:default:default");
        assert_eq!(
            sync_secret(&api, "CA", &key).await.expect("sync"),
            Outcome::Nothing,
            "a complete secret is not written again"
        );
        // A token no longer in its Secret no longer authenticates.
        let mut secret = api.store.get(&key).expect("get").value();
        secret["data"]["token"] = json!(base64::engine::general_purpose::STANDARD.encode("x"));
        api.store.update(&key, secret, None).await.expect("update");
        assert!(api.authenticate_token(&token).is_none());
    }

    #[tokio::test]
    async fn secrets_of_missing_or_deleted_accounts_go() {
        let (_dir, api) = api().await;
        let orphan = put_secret(&api, "ghost-token", "ghost").await;
        assert_eq!(
            sync_secret(&api, "CA", &orphan).await.expect("sync"),
            Outcome::Deleted
        );
        assert!(api.store.get(&orphan).is_err());
        let key = put_secret(&api, "default-token", "default").await;
        sync_secret(&api, "CA", &key).await.expect("sync");
        let account = ObjectKey::new("serviceaccounts", "default", "default");
        api.store.delete(&account, None).await.expect("delete");
        account_deleted(&api, "default", "default").await;
        assert!(api.store.get(&key).is_err());
    }

    #[tokio::test]
    async fn other_secrets_are_left_alone() {
        let (_dir, api) = api().await;
        let key = ObjectKey::new("secrets", "default", "plain");
        api.store
            .create(
                &key,
                json!({"metadata": {"name": "plain", "namespace": "default"}, "type": "Opaque"}),
            )
            .await
            .expect("create");
        assert_eq!(
            sync_secret(&api, "CA", &key).await.expect("sync"),
            Outcome::Nothing
        );
    }
}
