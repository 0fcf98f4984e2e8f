//! A pod's PersistentVolumeClaims, as kube-scheduler's VolumeBinding plugin and the volume
//! provisioner see them, for local storage on edges (`wedge_core::storage`): where the pod may
//! go, and, once a node is chosen, the volume made and bound there before the pod is bound.
//!
//! - A claim **bound** to a volume sends the pod to the nodes the volume's `nodeAffinity`
//!   allows.
//! - An **unbound** claim Wedge serves (class `local-path`, or none: volumes are bound when the
//!   first pod using them is scheduled, `WaitForFirstConsumer`) sends it to a node offering
//!   local storage; [`provision`] then makes a `hostPath` volume `pvc-<claim uid>` under that
//!   node's root, with `nodeAffinity` to it, and binds claim and volume both ways.
//! - An unbound claim of another class waits for whatever provisions it, as kube-scheduler
//!   waits for an `Immediate` claim.
//!
//! [`needs`] is pure over lookups into the scheduler's claim and volume stores, [`fits`] pure
//! over a node, so both are tested without an API.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use wedge_core::storage;

use super::fit::{NeedsError, Unfit, term_matches};

/// The label kube's volume node affinity names the node by.
const HOSTNAME: &str = "kubernetes.io/hostname";

/// What one of a pod's claims asks of its node.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeNeed {
    /// Bound to a volume that only nodes matching one of these terms reach.
    Bound {
        /// The claim.
        claim: String,
        /// The volume's required node affinity (none: any node).
        terms: Vec<NodeSelectorTerm>,
    },
    /// Unbound, served by local volumes: the node must offer local storage.
    Local {
        /// The claim.
        claim: String,
    },
}

/// What `pod`'s claims ask of its node, from lookups of claims (in its namespace) and volumes.
pub fn needs(
    pod: &Pod,
    claim: impl Fn(&str) -> Option<Arc<PersistentVolumeClaim>>,
    volume: impl Fn(&str) -> Option<Arc<PersistentVolume>>,
) -> Result<Vec<VolumeNeed>, NeedsError> {
    let mut out = Vec::new();
    let names = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    for name in names {
        let c = claim(&name).ok_or_else(|| NeedsError::NoClaim(name.clone()))?;
        if c.metadata.deletion_timestamp.is_some() {
            return Err(NeedsError::ClaimDeleting(name));
        }
        let spec = c.spec.clone().unwrap_or_default();
        match spec.volume_name.filter(|v| !v.is_empty()) {
            Some(bound) => {
                let v = volume(&bound).ok_or_else(|| NeedsError::NoVolume {
                    claim: name.clone(),
                    volume: bound.clone(),
                })?;
                let terms = v
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_affinity.as_ref())
                    .and_then(|a| a.required.as_ref())
                    .map(|r| r.node_selector_terms.clone())
                    .unwrap_or_default();
                out.push(VolumeNeed::Bound { claim: name, terms });
            }
            None if storage::serves(spec.storage_class_name.as_deref()) => {
                out.push(VolumeNeed::Local { claim: name });
            }
            None => return Err(NeedsError::UnboundImmediate),
        }
    }
    Ok(out)
}

/// Whether `node` can serve every claim.
pub fn fits(volumes: &[VolumeNeed], node: &Node) -> Result<(), Unfit> {
    for need in volumes {
        match need {
            VolumeNeed::Bound { terms, .. } => {
                if !terms.is_empty() && !terms.iter().any(|t| term_matches(t, node)) {
                    return Err(Unfit::VolumeNodeConflict);
                }
            }
            VolumeNeed::Local { claim } => {
                if storage::local_root(node.metadata.annotations.as_ref()).is_none() {
                    return Err(Unfit::NoLocalStorage {
                        node: node.name_any(),
                        claim: claim.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The volume for `claim` on `node` under `root` (the local-path provisioner's).
pub fn local_volume(claim: &PersistentVolumeClaim, node: &str, root: &str) -> PersistentVolume {
    let namespace = claim.namespace().unwrap_or_default();
    let uid = claim.uid().unwrap_or_default();
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| "1Gi".to_owned(), |q| q.0.clone());
    let volume = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": storage::volume_name(&uid),
            "annotations": {
                "pv.kubernetes.io/provisioned-by": storage::PROVISIONER,
                "local.path.provisioner/selected-node": node,
            },
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.storage_class_name.clone().unwrap_or_else(|| storage::CLASS.into()),
            "volumeMode": "Filesystem",
            "hostPath": {
                "path": storage::volume_path(root, &uid, &namespace, &claim.name_any()),
                "type": "DirectoryOrCreate",
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME, "operator": "In", "values": [node]},
            ]}]}},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": namespace,
                "name": claim.name_any(),
                "uid": uid,
            },
        },
    });
    serde_json::from_value(volume).unwrap_or_default()
}

/// Binds each unbound local claim of the pod to a volume made on `node`: the volume, then the
/// claim's `volumeName` and both phases `Bound` (what kube's provisioner and PV controller do
/// once kube-scheduler picks the node). The pod is bound after this, so it reaches its edge
/// with its volumes in place.
pub async fn provision(
    client: &Client,
    pod: &Pod,
    node: &Node,
    volumes: &[VolumeNeed],
) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let node_name = node.name_any();
    let Some(root) = storage::local_root(node.metadata.annotations.as_ref()) else {
        return Ok(());
    };
    for need in volumes {
        let VolumeNeed::Local { claim } = need else {
            continue;
        };
        let current = claims.get(claim).await?;
        if current
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
        {
            continue;
        }
        let volume = local_volume(&current, &node_name, root);
        let name = volume.name_any();
        match pvs.create(&PostParams::default(), &volume).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        let spec = volume.spec.clone().unwrap_or_default();
        pvs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await?;
        let bind = json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                    "volume.kubernetes.io/selected-node": node_name,
                    "volume.kubernetes.io/storage-provisioner": storage::PROVISIONER,
                },
            },
            "spec": {"volumeName": name},
        });
        claims
            .patch(claim, &PatchParams::default(), &Patch::Merge(bind))
            .await?;
        claims
            .patch_status(
                claim,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Bound",
                    "accessModes": spec.access_modes,
                    "capacity": spec.capacity,
                }})),
            )
            .await?;
        tracing::info!(claim = %claim, %namespace, volume = %name, node = %node_name, "bound a claim to a local volume");
    }
    Ok(())
}

/// Whether `volume` is a local volume whose claim is gone (or is another claim of that name
/// now) and whose reclaim policy deletes it.
pub fn released(
    volume: &PersistentVolume,
    claim: impl Fn(&str, &str) -> Option<Arc<PersistentVolumeClaim>>,
) -> bool {
    let ours = volume
        .annotations()
        .get("pv.kubernetes.io/provisioned-by")
        .is_some_and(|p| p == storage::PROVISIONER);
    let spec = volume.spec.as_ref();
    let deletes =
        spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
    let Some(reference) = spec.and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let (namespace, name) = (
        reference.namespace.as_deref().unwrap_or_default(),
        reference.name.as_deref().unwrap_or_default(),
    );
    let gone = claim(namespace, name).is_none_or(|c| c.uid() != reference.uid);
    ours && deletes && gone && volume.metadata.deletion_timestamp.is_none()
}

/// Deletes local volumes whose claims are gone (kube's PV controller with reclaim policy
/// `Delete`), looking each time `triggers` fires; the stores must be whole first, so that a
/// claim not yet listed is not taken for a deleted one. The directory on the edge stays.
pub async fn reclaim(
    client: Client,
    claims: kube::runtime::reflector::Store<PersistentVolumeClaim>,
    volumes: kube::runtime::reflector::Store<PersistentVolume>,
    mut triggers: impl futures::Stream<Item = ()> + Unpin,
) {
    use futures::StreamExt;
    if claims.wait_until_ready().await.is_err() || volumes.wait_until_ready().await.is_err() {
        return;
    }
    let api: Api<PersistentVolume> = Api::all(client);
    while triggers.next().await.is_some() {
        for volume in volumes.state() {
            let lookup = |namespace: &str, name: &str| {
                claims.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
            };
            if !released(&volume, lookup) {
                continue;
            }
            let params = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: volume.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&volume.name_any(), &params).await {
                Ok(_) => {
                    tracing::info!(volume = %volume.name_any(), "deleted a local volume whose claim is gone")
                }
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                Err(error) => {
                    tracing::warn!(%error, volume = %volume.name_any(), "could not delete a released volume")
                }
            }
        }
    }
    // The watches that trigger this stopped: so does the scheduler, not this alone.
    futures::future::pending::<()>().await;
}

/// Creates Wedge's StorageClass `local-path` (the default class, as k3s ships its own) unless
/// one of that name exists: best effort, logged.
pub async fn ensure_storage_class(client: &Client) {
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    let class = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": storage::CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": storage::PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    let Ok(class) = serde_json::from_value(class) else {
        return;
    };
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => tracing::info!(class = storage::CLASS, "created the local storage class"),
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(error) => tracing::warn!(%error, "could not create the local storage class"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, class: Option<&str>, volume: Option<&str>) -> Arc<PersistentVolumeClaim> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
                "spec": {"storageClassName": class, "volumeName": volume, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "2Gi"}}},
            }))
            .expect("claim"),
        )
    }

    fn pod(claims: &[&str]) -> Pod {
        let volumes: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [], "volumes": volumes}}))
        .expect("pod")
    }

    fn node(name: &str, root: Option<&str>) -> Node {
        let mut v = json!({"metadata": {"name": name, "labels": {HOSTNAME: name}}});
        if let Some(root) = root {
            v["metadata"]["annotations"] = json!({storage::LOCAL_PATH_ROOT: root});
        }
        serde_json::from_value(v).expect("node")
    }

    #[test]
    fn unbound_local_claims_need_a_node_with_local_storage() {
        let claims = [claim("data", None, None)];
        let found = |n: &str| claims.iter().find(|c| c.name_any() == n).cloned();
        let needs = needs(&pod(&["data"]), found, |_| None).expect("needs");
        assert_eq!(
            needs,
            [VolumeNeed::Local {
                claim: "data".into()
            }]
        );
        assert!(fits(&needs, &node("edge-a", Some("/srv/volumes"))).is_ok());
        let refused = fits(&needs, &node("edge-b", None)).expect_err("no storage");
        assert_eq!(
            refused.to_string(),
            "node(s) offered no local storage (edgecore --local-volume-root) for PersistentVolumeClaim \"data\": edge-b"
        );
    }

    #[test]
    fn bound_claims_keep_the_pod_on_their_volume_node() {
        let bound = claim("data", None, Some("pvc-1"));
        let pv = Arc::new(local_volume(
            &claim("data", None, None),
            "edge-a",
            "/srv/volumes",
        ));
        assert_eq!(
            pv.spec
                .as_ref()
                .and_then(|s| s.host_path.as_ref())
                .map(|h| h.path.as_str()),
            Some("/srv/volumes/pvc-uid-data_default_data")
        );
        assert_eq!(pv.name_any(), "pvc-uid-data");
        let needs = needs(
            &pod(&["data"]),
            |_| Some(bound.clone()),
            |_| Some(pv.clone()),
        )
        .expect("needs");
        assert!(
            fits(&needs, &node("edge-a", None)).is_ok(),
            "bound: storage no longer asked"
        );
        assert_eq!(
            fits(&needs, &node("edge-b", Some("/srv"))),
            Err(Unfit::VolumeNodeConflict)
        );
    }

    #[test]
    fn a_volume_is_released_when_its_claim_goes() {
        let data = claim("data", None, None);
        let pv = local_volume(&data, "edge-a", "/srv");
        assert!(!released(&pv, |_, _| Some(data.clone())));
        assert!(released(&pv, |_, _| None));
        let again = claim("data", None, None);
        let mut other = (*again).clone();
        other.metadata.uid = Some("another".into());
        assert!(released(&pv, |_, _| Some(Arc::new(other.clone()))));
        let mut kept = pv.clone();
        if let Some(spec) = kept.spec.as_mut() {
            spec.persistent_volume_reclaim_policy = Some("Retain".into());
        }
        assert!(!released(&kept, |_, _| None));
    }

    #[test]
    fn missing_claims_and_other_classes_keep_the_pod_pending() {
        assert_eq!(
            needs(&pod(&["gone"]), |_| None, |_| None),
            Err(NeedsError::NoClaim("gone".into()))
        );
        let ceph = claim("data", Some("ceph"), None);
        assert_eq!(
            needs(&pod(&["data"]), |_| Some(ceph.clone()), |_| None),
            Err(NeedsError::UnboundImmediate)
        );
        let bound = claim("data", None, Some("pvc-x"));
        assert_eq!(
            needs(&pod(&["data"]), |_| Some(bound.clone()), |_| None).map_err(|e| e.to_string()),
            Err(
                "persistentvolumeclaim \"data\" bound to non-existent persistentvolume \"pvc-x\""
                    .into()
            )
        );
    }
}
