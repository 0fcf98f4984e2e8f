//! Which ConfigMaps, Secrets, RuntimeClass and PersistentVolumeClaims a pod needs on its node:
//! the ConfigMaps and Secrets its containers' env and envFrom, its volumes (direct and
//! projected) and its image pull secrets name, the RuntimeClass its `runtimeClassName` names
//! (the edge picks the pod's runtime by its handler), and the claims its volumes name (the
//! volumes they are bound to are added from the claim cache, `desired`), and the Secret its
//! `mqtt.wedge.io/login` annotation names (the pod's login on its edge's MQTT broker). The edge
//! gets these and nothing else.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod};
use wedge_core::protocol::{ObjectKey, ResourceKind};

/// The ConfigMaps and Secrets `pod` references, in its namespace, and its RuntimeClass.
pub fn pod_references(pod: &Pod) -> BTreeSet<ObjectKey> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut refs = BTreeSet::new();
    let mut add = |kind: ResourceKind, name: &str| {
        if !name.is_empty() {
            refs.insert(ObjectKey {
                kind,
                namespace: namespace.clone(),
                name: name.to_owned(),
            });
        }
    };
    // The pod's MQTT login: its edge's broker reads the Secret, the pod's containers may too.
    if let Some(login) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(wedge_core::grants::MQTT_LOGIN))
    {
        add(ResourceKind::Secret, login.trim());
    }
    let Some(spec) = &pod.spec else {
        return refs;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        container_references(container, &mut add);
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(claim) = &volume.persistent_volume_claim {
            add(ResourceKind::PersistentVolumeClaim, &claim.claim_name);
        }
        if let Some(cm) = &volume.config_map {
            add(ResourceKind::ConfigMap, &cm.name);
        }
        if let Some(secret) = &volume.secret {
            add(
                ResourceKind::Secret,
                secret.secret_name.as_deref().unwrap_or(""),
            );
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                add(ResourceKind::ConfigMap, &cm.name);
            }
            if let Some(secret) = &source.secret {
                add(ResourceKind::Secret, &secret.name);
            }
        }
    }
    for pull in spec.image_pull_secrets.iter().flatten() {
        add(ResourceKind::Secret, &pull.name);
    }
    // The RuntimeClass is cluster-scoped: its key has no namespace.
    if let Some(class) = spec.runtime_class_name.as_deref().filter(|n| !n.is_empty()) {
        refs.insert(ObjectKey {
            kind: ResourceKind::RuntimeClass,
            namespace: String::new(),
            name: class.to_owned(),
        });
    }
    refs
}

fn container_references(container: &Container, add: &mut impl FnMut(ResourceKind, &str)) {
    for env in container.env.iter().flatten() {
        let Some(from) = &env.value_from else {
            continue;
        };
        if let Some(cm) = &from.config_map_key_ref {
            add(ResourceKind::ConfigMap, &cm.name);
        }
        if let Some(secret) = &from.secret_key_ref {
            add(ResourceKind::Secret, &secret.name);
        }
    }
    for from in container.env_from.iter().flatten() {
        if let Some(cm) = &from.config_map_ref {
            add(ResourceKind::ConfigMap, &cm.name);
        }
        if let Some(secret) = &from.secret_ref {
            add(ResourceKind::Secret, &secret.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_place_a_pod_names_a_config_map_secret_or_runtime_class_counts() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "apps",
                         "annotations": {"mqtt.wedge.io/login": "mqtt-login"}},
            "spec": {
                "runtimeClassName": "runc",
                "imagePullSecrets": [{"name": "pull"}],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{
                    "name": "c",
                    "env": [
                        {"name": "A", "value": "literal"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "b"}}},
                        {"name": "C", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "c"}}},
                        {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "all-settings"}}]
                }],
                "volumes": [
                    {"name": "v1", "configMap": {"name": "files"}},
                    {"name": "v2", "secret": {"secretName": "certs"}},
                    {"name": "v3", "projected": {"sources": [{"configMap": {"name": "proj"}}]}},
                    {"name": "v4", "emptyDir": {}},
                    {"name": "v5", "persistentVolumeClaim": {"claimName": "www-p"}}
                ]
            }
        }))
        .expect("pod");
        let names: Vec<String> = pod_references(&pod)
            .into_iter()
            .map(|k| format!("{}:{}/{}", k.kind, k.namespace, k.name))
            .collect();
        assert_eq!(
            names,
            [
                "config-map:apps/all-settings",
                "config-map:apps/files",
                "config-map:apps/proj",
                "config-map:apps/settings",
                "secret:apps/certs",
                "secret:apps/creds",
                "secret:apps/init-env",
                "secret:apps/mqtt-login",
                "secret:apps/pull",
                "runtime-class:/runc",
                "persistent-volume-claim:apps/www-p",
            ]
        );
    }
}
