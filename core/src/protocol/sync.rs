//! The incremental resync. On every connection the edge states what it holds (uid and
//! resourceVersion per object); the cloud compares that with what the edge should hold and sends
//! only the difference: objects missing or at another version, and deletions of objects the edge
//! should no longer hold. Nothing is kept per object in the API between sessions; the edge's own
//! store is the record of what it received.

use std::collections::HashMap;

use super::envelope::ObjectKey;
use super::messages::HeldObject;

/// An object the edge should hold, as the cloud sees it.
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

/// Compares what the edge holds with what it should hold.
///
/// Held objects of another uid than the desired one are deleted and the desired one inserted,
/// so an object deleted and re-created under the same name while the edge was away is never
/// mistaken for the old one.
pub fn plan(held: &[HeldObject], desired: impl IntoIterator<Item = DesiredObject>) -> SyncPlan {
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
            Some(have) if have.resource_version != want.resource_version => {
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
        let plan = plan(&held, want);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.update, vec![key("newer")]);
        assert_eq!(plan.insert, vec![key("recreated"), key("new")]);
        let deleted: Vec<_> = plan.delete.iter().map(|h| h.uid.as_str()).collect();
        assert_eq!(deleted, ["u4", "u3"]);
    }

    #[test]
    fn an_edge_in_step_gets_nothing() {
        let held = [held("a", "u1", "1"), held("b", "u2", "2")];
        let plan = plan(&held, [desired("a", "u1", "1"), desired("b", "u2", "2")]);
        assert_eq!(
            plan,
            SyncPlan {
                unchanged: 2,
                ..SyncPlan::default()
            }
        );
    }
}
