//! The `ServiceAccount` admission plugin, as kube-apiserver runs it on every new pod:
//!
//! - a pod without `serviceAccountName` runs as `default`;
//! - the account must exist, or the pod is refused with kube's 403 (`pods "web" is forbidden:
//!   error looking up service account apps/robot: serviceaccount "robot" not found`);
//! - unless `automountServiceAccountToken: false` (the pod's word first, then the account's),
//!   the pod gets kube's projected `kube-api-access-<5 random>` volume (a bound token at
//!   `token`, the cluster CA from the `kube-root-ca.crt` ConfigMap at `ca.crt`, the namespace at
//!   `namespace`), mounted read-only at [`MOUNT_PATH`] in every container and init container
//!   that does not already mount something there;
//! - a pod naming no `imagePullSecrets` gets the account's;
//! - mirror pods (the kubelet's copies of static pods) are left as they are, but may not name
//!   an account, a Secret, or a token projection.
//!
//! Edged writes the volume at the edge: the token through the cloud ([`crate::api::token_request`]
//! bound to the pod), the CA from the ConfigMap the control plane publishes in every namespace.

use serde_json::{Value, json};

use super::super::Api;
use super::super::error::ApiError;
use super::forbidden;
use crate::storage::ObjectKey;

/// Where the token, CA and namespace appear in containers.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap holding the cluster's CA in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The token's requested lifetime: kube's `WarnOnlyBoundTokenExpirationSeconds` (an hour and
/// seven seconds, so that its tokens can be told from others).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The annotation that marks a mirror pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The name errors give a pod: its `generateName` when the name was generated from it, as
/// kube's admission errors say it (name generation comes after admission there).
fn shown_name(pod: &Value) -> String {
    let name = super::name_of(pod);
    let prefix = pod
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !prefix.is_empty() && name.len() == prefix.len() + 5 && name.starts_with(prefix) {
        prefix.to_owned()
    } else {
        name.to_owned()
    }
}

/// Admits a new pod in `namespace`: its account, its token volume, its pull secrets.
pub(crate) fn admit(api: &Api, namespace: &str, pod: &mut Value) -> Result<(), ApiError> {
    let name = shown_name(pod);
    if pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return check_mirror(&name, pod);
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let account_name = match spec.get("serviceAccountName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => {
            spec.insert("serviceAccountName".into(), json!("default"));
            spec.insert("serviceAccount".into(), json!("default"));
            "default".to_owned()
        }
    };
    let account = api
        .store
        .get(&ObjectKey::new("serviceaccounts", namespace, &account_name))
        .map(|o| o.value())
        .map_err(|_| {
            forbidden(
                &name,
                format!(
                    "error looking up service account {namespace}/{account_name}: serviceaccount \"{account_name}\" not found"
                ),
            )
        })?;
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if automount {
        mount_token(spec);
    }
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    if !has_pull_secrets
        && let Some(secrets) = account
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
    {
        let names: Vec<Value> = secrets
            .iter()
            .filter_map(|s| s.get("name"))
            .map(|n| json!({"name": n}))
            .collect();
        spec.insert("imagePullSecrets".into(), Value::Array(names));
    }
    Ok(())
}

/// Kube's projected volume source for the token, CA and namespace.
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]
    })
}

/// Mounts the token volume in every container and init container that mounts nothing at
/// [`MOUNT_PATH`], adding the volume (or reusing a `kube-api-access-*` one) if any does.
fn mount_token(spec: &mut serde_json::Map<String, Value>) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_owned);
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| crate::api::meta::generate_name(VOLUME_PREFIX));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let taken = mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH));
            if !taken {
                mounts.push(mount.clone());
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({"name": volume_name, "projected": token_volume_source()}));
        }
    }
}

/// What a mirror pod may not reference, as the plugin's validation says it.
fn check_mirror(name: &str, pod: &Value) -> Result<(), ApiError> {
    let spec = pod.get("spec").cloned().unwrap_or_default();
    if spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(forbidden(
            name,
            "a mirror pod may not reference service accounts",
        ));
    }
    let volumes = spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let secret_env = super::containers(pod).any(|c| {
        let env_secret = c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| e.pointer("/valueFrom/secretKeyRef").is_some());
        let env_from_secret = c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| e.get("secretRef").is_some());
        env_secret || env_from_secret
    });
    let secret_volume = volumes.iter().any(|v| {
        v.get("secret").is_some()
            || v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| s.get("secret").is_some()))
    });
    let pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    if secret_env || secret_volume || pull_secrets {
        return Err(forbidden(name, "a mirror pod may not reference secrets"));
    }
    let token = volumes.iter().any(|v| {
        v.pointer("/projected/sources")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
    });
    if token {
        return Err(forbidden(
            name,
            "a mirror pod may not use service account token volume projection",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(pod: Value) -> serde_json::Map<String, Value> {
        pod["spec"].as_object().cloned().expect("spec")
    }

    #[test]
    fn every_container_mounts_one_token_volume_unless_it_mounts_there_already() {
        let mut spec = spec_of(json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "own", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }}));
        mount_token(&mut spec);
        let volumes = spec["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().expect("name");
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(volumes[1]["projected"], token_volume_source());
        let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(spec["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "a container that mounts the path itself keeps its own"
        );
        // Admitted again (an existing kube-api-access volume), nothing is added twice.
        let before = spec.clone();
        mount_token(&mut spec);
        assert_eq!(spec, before);
    }

    #[test]
    fn no_volume_when_every_container_mounts_the_path_itself() {
        let mut spec = spec_of(json!({"spec": {
            "containers": [{"name": "own", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}],
        }}));
        mount_token(&mut spec);
        assert!(spec.get("volumes").is_none());
    }

    #[test]
    fn mirror_pods_may_not_reference_accounts_secrets_or_tokens() {
        let mirror = |spec: Value| {
            json!({"metadata": {"name": "static-web-edge-a",
                                "annotations": {MIRROR_ANNOTATION: "x"}}, "spec": spec})
        };
        let plain = mirror(json!({"containers": [{"name": "c"}]}));
        assert!(check_mirror("m", &plain).is_ok());
        let cases = [
            (
                json!({"serviceAccountName": "default", "containers": []}),
                "may not reference service accounts",
            ),
            (
                json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}]}),
                "may not reference secrets",
            ),
            (
                json!({"containers": [], "volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                "token volume projection",
            ),
        ];
        for (spec, why) in cases {
            let error = check_mirror("m", &mirror(spec)).expect_err("refused");
            assert!(error.to_string().contains(why), "{error}");
        }
    }

    #[test]
    fn generated_names_are_shown_as_their_prefix() {
        let pod = json!({"metadata": {"name": "web-7d9f-abcde", "generateName": "web-7d9f-"}});
        assert_eq!(shown_name(&pod), "web-7d9f-");
        let named = json!({"metadata": {"name": "web"}});
        assert_eq!(shown_name(&named), "web");
    }
}
