//! Local storage an edge offers to PersistentVolumeClaims, as k3s's local-path provisioner
//! offers it: a directory on the pod's node per claim.
//!
//! An edge whose edgecore runs with `--local-volume-root DIR` reports it on its Node
//! ([`LOCAL_PATH_LABEL`], [`LOCAL_PATH_ROOT`]); the scheduler binds a served claim (class
//! [`CLASS`] or none) to a `hostPath` PersistentVolume at [`volume_path`] on the node its pod
//! goes to, and Edged mounts that path. `docs/ARCHITECTURE.md` (StatefulSets and local storage)
//! tells the whole road.

use std::collections::BTreeMap;

/// The node label of an edge that offers local storage (`"true"`).
pub const LOCAL_PATH_LABEL: &str = "storage.wedge.io/local-path";
/// The node annotation holding the directory an edge's local volumes live under.
pub const LOCAL_PATH_ROOT: &str = "storage.wedge.io/local-path-root";
/// The StorageClass of local volumes.
pub const CLASS: &str = "local-path";
/// The provisioner of [`CLASS`].
pub const PROVISIONER: &str = "wedge.io/local-path";

/// The directory under which the node with these annotations keeps local volumes, if it offers
/// any.
pub fn local_root(annotations: Option<&BTreeMap<String, String>>) -> Option<&str> {
    annotations
        .and_then(|a| a.get(LOCAL_PATH_ROOT))
        .map(String::as_str)
        .filter(|r| r.starts_with('/'))
}

/// Whether a claim of `class` (its `storageClassName`) is served by local volumes.
pub fn serves(class: Option<&str>) -> bool {
    matches!(class, None | Some(CLASS))
}

/// The name of the volume bound to the claim of `uid`.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// Where the volume of a claim lives under `root`: the local-path provisioner's layout,
/// `<root>/pvc-<uid>_<namespace>_<claim>`.
pub fn volume_path(root: &str, claim_uid: &str, namespace: &str, claim: &str) -> String {
    format!(
        "{}/pvc-{claim_uid}_{namespace}_{claim}",
        root.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_classes_and_paths() {
        let annotations = BTreeMap::from([(
            LOCAL_PATH_ROOT.to_owned(),
            "/var/lib/wedge/storage/".to_owned(),
        )]);
        let root = local_root(Some(&annotations));
        assert_eq!(root, Some("/var/lib/wedge/storage/"));
        assert_eq!(
            volume_path(root.unwrap_or_default(), "u1", "default", "www-web-0"),
            "/var/lib/wedge/storage/pvc-u1_default_www-web-0"
        );
        let relative = BTreeMap::from([(LOCAL_PATH_ROOT.to_owned(), "storage".to_owned())]);
        assert_eq!(local_root(Some(&relative)), None);
        assert!(serves(None) && serves(Some("local-path")) && !serves(Some("ceph")));
    }
}
