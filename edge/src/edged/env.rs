//! Env from ConfigMaps and Secrets, resolved on the edge from what MetaManager holds.
//!
//! The runtimes take literal env values only. Edged replaces `configMapKeyRef`,
//! `secretKeyRef`, `configMapRef` and `secretRef` by the values they point at, as kubelet does
//! when it starts a container; a missing object or key (not marked optional) keeps the pod
//! waiting with kubelet's message, and it starts once the object arrives.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use wedge_core::protocol::ResourceKind;

use super::objects::{Lookup, key_data};

fn what(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Secret => "secret",
        _ => "configmap",
    }
}

fn resolve_container(
    container: &mut Container,
    namespace: &str,
    lookup: &Lookup<'_>,
) -> Result<(), String> {
    // The decoded data MetaManager keeps; only the values used are made text.
    let fetch =
        |kind: ResourceKind, name: &str| key_data(lookup, kind, namespace, name).transpose();
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut env: Vec<EnvVar> = Vec::new();
    for from in container.env_from.take().into_iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            (
                ResourceKind::ConfigMap,
                r.name.clone(),
                r.optional.unwrap_or(false),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                ResourceKind::Secret,
                r.name.clone(),
                r.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match fetch(kind, &name)? {
            Some(data) => env.extend(data.map().iter().map(|(k, v)| EnvVar {
                name: format!("{prefix}{k}"),
                value: Some(text(v)),
                value_from: None,
            })),
            None if optional => {}
            None => return Err(format!("{} \"{name}\" not found", what(kind))),
        }
    }
    for mut var in container.env.take().into_iter().flatten() {
        let selector = var.value_from.as_ref().and_then(|from| {
            if let Some(r) = &from.config_map_key_ref {
                Some((
                    ResourceKind::ConfigMap,
                    r.name.clone(),
                    r.key.clone(),
                    r.optional.unwrap_or(false),
                ))
            } else {
                from.secret_key_ref.as_ref().map(|r| {
                    (
                        ResourceKind::Secret,
                        r.name.clone(),
                        r.key.clone(),
                        r.optional.unwrap_or(false),
                    )
                })
            }
        });
        if let Some((kind, name, key, optional)) = selector {
            let value = match fetch(kind, &name)? {
                Some(data) => match data.map().get(&key) {
                    Some(v) => Some(text(v)),
                    None if optional => None,
                    None => {
                        return Err(format!(
                            "couldn't find key {key} in {} {namespace}/{name}",
                            if kind == ResourceKind::Secret {
                                "Secret"
                            } else {
                                "ConfigMap"
                            }
                        ));
                    }
                },
                None if optional => None,
                None => return Err(format!("{} \"{name}\" not found", what(kind))),
            };
            let Some(value) = value else { continue };
            var.value = Some(value);
            var.value_from = None;
        }
        // A later variable of the same name wins, as in Kubernetes.
        env.retain(|e| e.name != var.name);
        env.push(var);
    }
    container.env = (!env.is_empty()).then_some(env);
    Ok(())
}

/// The pod with every ConfigMap and Secret env reference replaced by its value, or kubelet's
/// message for the first one that cannot be resolved.
pub fn resolve_env(pod: &Pod, lookup: &Lookup<'_>) -> Result<Pod, String> {
    let mut pod = pod.clone();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if let Some(spec) = pod.spec.as_mut() {
        for container in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            resolve_container(container, &namespace, lookup)?;
        }
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metamanager::{Object, held};

    fn pod(env: serde_json::Value, env_from: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": {"containers": [{"name": "c", "env": env, "envFrom": env_from}]}
        }))
        .expect("pod")
    }

    fn lookup(kind: ResourceKind, ns: &str, name: &str) -> Option<Arc<Object>> {
        let object = match (kind, ns, name) {
            (ResourceKind::ConfigMap, "apps", "settings") => {
                serde_json::json!({"data": {"MODE": "fast", "LEVEL": "3"}})
            }
            (ResourceKind::Secret, "apps", "creds") => {
                serde_json::json!({"data": {"password": "czNjcjN0"}})
            }
            _ => return None,
        };
        Some(held(kind, ns, name, object))
    }

    fn env_of(pod: &Pod) -> Vec<(String, String)> {
        pod.spec.as_ref().expect("spec").containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn references_become_values_and_later_names_win() {
        let p = pod(
            serde_json::json!([
                {"name": "LEVEL", "value": "literal"},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}}
            ]),
            serde_json::json!([{"configMapRef": {"name": "settings"}, "prefix": "APP_"}, {"configMapRef": {"name": "settings"}}]),
        );
        let resolved = resolve_env(&p, &lookup).expect("resolved");
        assert_eq!(
            env_of(&resolved),
            [
                ("APP_LEVEL".into(), "3".into()),
                ("APP_MODE".into(), "fast".into()),
                ("MODE".into(), "fast".into()),
                ("LEVEL".into(), "literal".into()),
                ("PASSWORD".into(), "s3cr3t".into()),
            ]
        );
    }

    #[test]
    fn a_missing_object_or_key_says_which_as_kubelet_does() {
        let p = pod(
            serde_json::json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x"}}}]),
            serde_json::json!([]),
        );
        assert_eq!(
            resolve_env(&p, &lookup).expect_err("missing"),
            "configmap \"absent\" not found"
        );
        let p = pod(
            serde_json::json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}]),
            serde_json::json!([]),
        );
        assert_eq!(
            resolve_env(&p, &lookup).expect_err("missing key"),
            "couldn't find key nope in ConfigMap apps/settings"
        );
    }
}
