//! The incremental resync. On every connection the edge states what it holds (uid and
//! resourceVersion per object); the cloud compares that with what the edge should hold and sends
//! only the difference: objects missing or at another version, and deletions of objects the edge
//! should no longer hold. Nothing is kept per object in the API between sessions; the edge's own
//! store is the record of what it received.
//!
//! The status of a pod or Device (which the edge itself reported) and of a Rule (cloudcore's
//! counts) is not sent to the edge at all: for those kinds the edge states, beside the version
//! it holds, a hash of the rest ([`edge_view`]), and a version whose hash is the current one's
//! is in step.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::envelope::{ObjectKey, ResourceKind};
use super::messages::HeldObject;

/// What an edge is sent of `object` (of `kind`), hashed, for the kinds whose status the edge or
/// cloudcore writes itself (pods, Devices, Rules): everything but the status, the version and
/// the managed fields. The cloud sends no change that leaves it alone. `None` for other kinds.
/// The same on both sides: the cloud hashes the object it would send, the edge the one it
/// stored as sent. Takes the object by value: the cloud hashes every pod event, and its copy is
/// already its own.
pub fn edge_view(kind: ResourceKind, mut object: serde_json::Value) -> Option<String> {
    if !matches!(
        kind,
        ResourceKind::Pod | ResourceKind::Device | ResourceKind::Rule
    ) {
        return None;
    }
    let map = object.as_object_mut()?;
    for field in ["status", "apiVersion", "kind"] {
        map.remove(field);
    }
    if let Some(meta) = map
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    Some(hex::encode(Sha256::digest(object.to_string().as_bytes())))
}

/// An object the edge should hold, as the cloud sees it (its [`edge_view`] is worked out only for
/// objects the edge holds at another version: [`plan`]'s `view_of`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredObject {
    /// Its key.
    pub key: ObjectKey,
    /// Its uid.
    pub uid: String,
    /// Its current resourceVersion.
    pub resource_version: String,
}

/// What the cloud must send after a hello.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Objects to send as inserts: the edge lacks them, or holds another object (another uid)
    /// of the same name.
    pub insert: Vec<ObjectKey>,
    /// Objects to send as updates: the edge holds them at another resourceVersion.
    pub update: Vec<ObjectKey>,
    /// Objects the edge must forget, with the uid it holds.
    pub delete: Vec<HeldObject>,
    /// Objects already up to date: nothing is sent for them.
    pub unchanged: usize,
}

/// Compares what the edge holds with what it should hold. An object held at another version is
/// in step if its view (stated in the hello) is what `view_of` says the edge would be sent now.
///
/// Held objects of another uid than the desired one are deleted and the desired one inserted,
/// so an object deleted and re-created under the same name while the edge was away is never
/// mistaken for the old one.
pub fn plan(
    held: &[HeldObject],
    desired: impl IntoIterator<Item = DesiredObject>,
    mut view_of: impl FnMut(&ObjectKey) -> Option<String>,
) -> SyncPlan {
    let mut held_by_key: HashMap<ObjectKey, &HeldObject> =
        held.iter().map(|h| (h.key(), h)).collect();
    let mut plan = SyncPlan::default();
    for want in desired {
        match held_by_key.remove(&want.key) {
            None => plan.insert.push(want.key),
            Some(have) if have.uid != want.uid => {
                plan.delete.push(have.clone());
                plan.insert.push(want.key);
            }
            Some(have)
                if have.resource_version != want.resource_version
                    && (have.view.is_none() || have.view != view_of(&want.key)) =>
            {
                plan.update.push(want.key)
            }
            Some(_) => plan.unchanged += 1,
        }
    }
    let mut stale: Vec<HeldObject> = held_by_key.into_values().cloned().collect();
    stale.sort_by_key(HeldObject::key);
    plan.delete.extend(stale);
    plan
}

#[cfg(test)]
mod tests {
    use super::super::envelope::ResourceKind;
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::Pod,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn held(name: &str, uid: &str, rv: &str) -> HeldObject {
        HeldObject {
            kind: ResourceKind::Pod,
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: rv.into(),
            view: None,
        }
    }

    fn desired(name: &str, uid: &str, rv: &str) -> DesiredObject {
        DesiredObject {
            key: key(name),
            uid: uid.into(),
            resource_version: rv.into(),
        }
    }

    #[test]
    fn only_the_difference_is_sent() {
        let held = [
            held("same", "u1", "5"),
            held("newer", "u2", "5"),
            held("gone", "u3", "5"),
            held("recreated", "u4", "5"),
        ];
        let want = [
            desired("same", "u1", "5"),
            desired("newer", "u2", "9"),
            desired("recreated", "u9", "12"),
            desired("new", "u5", "11"),
        ];
        let plan = plan(&held, want, |_| None);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.update, vec![key("newer")]);
        assert_eq!(plan.insert, vec![key("recreated"), key("new")]);
        let deleted: Vec<_> = plan.delete.iter().map(|h| h.uid.as_str()).collect();
        assert_eq!(deleted, ["u4", "u3"]);
    }

    #[test]
    fn an_edge_in_step_gets_nothing() {
        let held = [held("a", "u1", "1"), held("b", "u2", "2")];
        let want = [desired("a", "u1", "1"), desired("b", "u2", "2")];
        let plan = plan(&held, want, |_| None);
        assert_eq!(
            plan,
            SyncPlan {
                unchanged: 2,
                ..SyncPlan::default()
            }
        );
    }

    #[test]
    fn an_object_whose_status_alone_changed_is_in_step() {
        let pod = |status: &str, rv: &str| {
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "resourceVersion": rv, "managedFields": [{"manager": rv}]},
                "spec": {"nodeName": "edge"}, "status": {"phase": status}})
        };
        let sent = edge_view(ResourceKind::Pod, pod("Pending", "5"));
        let now = edge_view(ResourceKind::Pod, pod("Running", "9"));
        assert!(sent.is_some());
        assert_eq!(sent, now, "status, version and managed fields aside");
        let mut relabelled = pod("Running", "10");
        relabelled["metadata"]["labels"] = serde_json::json!({"tier": "x"});
        assert_ne!(edge_view(ResourceKind::Pod, relabelled.clone()), now);
        assert_eq!(
            edge_view(ResourceKind::ConfigMap, pod("Running", "9")),
            None
        );

        let held = [
            HeldObject {
                view: sent.clone(),
                ..held("status-only", "u1", "5")
            },
            HeldObject {
                view: sent.clone(),
                ..held("relabelled", "u2", "5")
            },
            held("no-view", "u3", "5"),
        ];
        let want = [
            desired("status-only", "u1", "9"),
            desired("relabelled", "u2", "10"),
            desired("no-view", "u3", "9"),
        ];
        let plan = plan(&held, want, |key| match key.name.as_str() {
            "relabelled" => edge_view(ResourceKind::Pod, relabelled.clone()),
            _ => now.clone(),
        });
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.update, vec![key("relabelled"), key("no-view")]);
    }
}
