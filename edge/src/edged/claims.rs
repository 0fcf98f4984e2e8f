//! `persistentVolumeClaim` volumes, resolved on the edge from what MetaManager holds, as env
//! is ([`super::env`]): the claim names its bound PersistentVolume, and a volume on this node
//! (`hostPath`, or `local`, as the control plane's local storage makes them) is mounted as its
//! directory, made if missing. The pod is rewritten with a `hostPath` volume in the claim's
//! place before it is planned, so every runtime mounts it as it mounts any host directory (a
//! preopened directory for Wasm, a bind mount for containers).
//!
//! A claim or volume not held yet, a claim not bound, or a volume bound to another claim keeps
//! the pod waiting with a message naming it, and it starts once they arrive; a volume of a type
//! an edge cannot mount refuses it.

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, PersistentVolume, PersistentVolumeClaim, Pod,
};
use wedge_core::protocol::ResourceKind;

use super::objects::Lookup;

/// Why a claim cannot be mounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claim (or its volume) is not on this edge yet, or not bound yet: retried when
    /// objects change.
    #[error("{0}")]
    Waiting(String),
    /// The volume cannot be mounted here: refused until the pod changes.
    #[error("{0}")]
    Refused(String),
}

/// `pod` with each `persistentVolumeClaim` volume replaced by the directory of its bound
/// volume (mounts of a read-only claim made read-only).
pub fn resolve_claims(pod: &Pod, lookup: &Lookup<'_>) -> Result<Pod, ClaimError> {
    let has_claims = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.persistent_volume_claim.is_some());
    if !has_claims {
        return Ok(pod.clone());
    }
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let mut pod = pod.clone();
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(pod);
    };
    let mut read_only = Vec::new();
    for volume in spec.volumes.iter_mut().flatten() {
        let Some(source) = volume.persistent_volume_claim.take() else {
            continue;
        };
        let path = volume_path(&namespace, &source.claim_name, lookup)?;
        if source.read_only == Some(true) {
            read_only.push(volume.name.clone());
        }
        volume.host_path = Some(HostPathVolumeSource {
            path,
            type_: Some("DirectoryOrCreate".into()),
        });
    }
    if !read_only.is_empty() {
        let containers = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten());
        for container in containers {
            for mount in container.volume_mounts.iter_mut().flatten() {
                if read_only.contains(&mount.name) {
                    mount.read_only = Some(true);
                }
            }
        }
    }
    Ok(pod)
}

/// The directory of the volume bound to claim `namespace/name`.
fn volume_path(namespace: &str, name: &str, lookup: &Lookup<'_>) -> Result<String, ClaimError> {
    let claim = lookup(ResourceKind::PersistentVolumeClaim, namespace, name)
        .ok_or_else(|| {
            ClaimError::Waiting(format!(
                "persistentvolumeclaim \"{name}\" not found on this edge (yet)"
            ))
        })
        .and_then(|o| {
            o.typed::<PersistentVolumeClaim>().map_err(|e| {
                ClaimError::Waiting(format!(
                    "persistentvolumeclaim \"{name}\" does not parse: {e}"
                ))
            })
        })?;
    let bound = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ClaimError::Waiting(format!(
                "persistentvolumeclaim \"{name}\" is not bound to a volume yet"
            ))
        })?;
    let volume = lookup(ResourceKind::PersistentVolume, "", &bound)
        .ok_or_else(|| {
            ClaimError::Waiting(format!(
                "persistentvolume \"{bound}\" of claim \"{name}\" not found on this edge (yet)"
            ))
        })
        .and_then(|o| {
            o.typed::<PersistentVolume>().map_err(|e| {
                ClaimError::Waiting(format!("persistentvolume \"{bound}\" does not parse: {e}"))
            })
        })?;
    let spec = volume.spec.as_ref();
    let reference = spec.and_then(|s| s.claim_ref.as_ref());
    let ours = reference.is_some_and(|r| {
        r.namespace.as_deref() == Some(namespace)
            && r.name.as_deref() == Some(name)
            && (r.uid.is_none() || r.uid == claim.metadata.uid)
    });
    if !ours {
        return Err(ClaimError::Waiting(format!(
            "persistentvolume \"{bound}\" is not bound to claim \"{name}\""
        )));
    }
    let path = spec
        .and_then(|s| {
            let host = s.host_path.as_ref().map(|h| &h.path);
            host.or_else(|| s.local.as_ref().map(|l| &l.path)).cloned()
        })
        .ok_or_else(|| {
            ClaimError::Refused(format!(
                "persistentvolume \"{bound}\" of claim \"{name}\": edges mount hostPath and local volumes"
            ))
        })?;
    if !path.starts_with('/') {
        return Err(ClaimError::Refused(format!(
            "persistentvolume \"{bound}\": {path:?} is not an absolute path"
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::objects::holding;
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "apps", "uid": "p1"},
            "spec": {
                "containers": [{"name": "c", "volumeMounts": [{"name": "www", "mountPath": "/data"}]}],
                "volumes": [{"name": "www", "persistentVolumeClaim": {"claimName": "www-web-0", "readOnly": true}}],
            },
        }))
        .expect("pod")
    }

    fn claim(bound: Option<&str>) -> serde_json::Value {
        json!({"metadata": {"name": "www-web-0", "namespace": "apps", "uid": "c1"},
            "spec": {"volumeName": bound}})
    }

    fn volume(claim_uid: &str) -> serde_json::Value {
        json!({"metadata": {"name": "pvc-c1", "uid": "v1"},
            "spec": {"hostPath": {"path": "/srv/volumes/pvc-c1_apps_www-web-0"},
                "claimRef": {"namespace": "apps", "name": "www-web-0", "uid": claim_uid}}})
    }

    #[test]
    fn a_claim_becomes_its_volumes_directory() {
        let lookup = holding(|kind, ns, name| match (kind, ns, name) {
            (ResourceKind::PersistentVolumeClaim, "apps", "www-web-0") => {
                Some(claim(Some("pvc-c1")))
            }
            (ResourceKind::PersistentVolume, "", "pvc-c1") => Some(volume("c1")),
            _ => None,
        });
        let resolved = resolve_claims(&pod(), &lookup).expect("resolved");
        let spec = resolved.spec.expect("spec");
        let v = &spec.volumes.expect("volumes")[0];
        assert!(v.persistent_volume_claim.is_none());
        let host = v.host_path.as_ref().expect("hostPath");
        assert_eq!(host.path, "/srv/volumes/pvc-c1_apps_www-web-0");
        assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
        let mount = &spec.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.read_only, Some(true), "a read-only claim");
    }

    #[test]
    fn a_claim_or_volume_not_here_yet_keeps_the_pod_waiting() {
        let none = holding(|_, _, _| None);
        assert_eq!(
            resolve_claims(&pod(), &none),
            Err(ClaimError::Waiting(
                "persistentvolumeclaim \"www-web-0\" not found on this edge (yet)".into()
            ))
        );
        let unbound = holding(|kind, _, _| {
            (kind == ResourceKind::PersistentVolumeClaim).then(|| claim(None))
        });
        assert!(matches!(
            resolve_claims(&pod(), &unbound),
            Err(ClaimError::Waiting(m)) if m.contains("not bound")
        ));
        let stolen = holding(|kind, _, _| match kind {
            ResourceKind::PersistentVolumeClaim => Some(claim(Some("pvc-c1"))),
            _ => Some(volume("another")),
        });
        assert!(matches!(
            resolve_claims(&pod(), &stolen),
            Err(ClaimError::Waiting(m)) if m.contains("is not bound to claim")
        ));
        let nfs = holding(|kind, _, _| match kind {
            ResourceKind::PersistentVolumeClaim => Some(claim(Some("pvc-c1"))),
            _ => Some(
                json!({"metadata": {"name": "pvc-c1"}, "spec": {"nfs": {"server": "x", "path": "/"},
                "claimRef": {"namespace": "apps", "name": "www-web-0"}}}),
            ),
        });
        assert!(matches!(
            resolve_claims(&pod(), &nfs),
            Err(ClaimError::Refused(_))
        ));
    }
}
