//! Pages of a list as the store stood at one version: what a `continue` token promises.
//!
//! kube-apiserver reads every page of a paged list at the first page's etcd revision, so a
//! client paging through a busy resource sees one consistent list, and answers 410 once etcd
//! has compacted that revision. The store keeps only the current objects, but its watch history
//! says what changed since: for each object changed after the version, the first change's
//! `prev` is how it stood then (and an `ADDED` says it did not exist). A page is the current
//! objects with those put back. When the resource's window of the history no longer reaches
//! back to the version, or an event replayed after a restart has no `prev`, the page cannot be
//! told and the caller gets [`StoreError::Gone`], as from etcd after compaction.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{EventType, ObjectKey, Store, StoreError, StoredObject};

/// One page read at a version.
#[derive(Debug)]
pub struct SnapshotPage {
    /// The objects, in key order.
    pub items: Vec<StoredObject>,
    /// The version the page was read at.
    pub rv: u64,
    /// How many more objects the rest of the list holds (what `remainingItemCount` says).
    pub remaining: usize,
}

impl Store {
    /// Up to `limit` objects of `resource` (in `namespace` if given) after `after` that `keep`
    /// accepts, as they stood at version `at` (now, when `None`), and how many more there are.
    pub fn page_at(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&ObjectKey>,
        limit: Option<usize>,
        at: Option<u64>,
        keep: impl Fn(&StoredObject) -> bool,
    ) -> Result<SnapshotPage, StoreError> {
        // The state's read lock is held throughout, so no write lands while the page is read;
        // writers put each event in its resource's window before they apply it to the state, so
        // every event up to the state's version is there (newer ones are left out).
        let state = self.shared.state();
        if let Some(error) = Self::unreadable_in(&state, resource, namespace) {
            return Err(error);
        }
        let in_range = |key: &ObjectKey| {
            key.resource == resource
                && namespace.is_none_or(|ns| key.namespace == ns)
                && after.is_none_or(|a| key > a)
        };
        // How each object changed since `at` stood at `at` (`None`: it did not exist).
        let mut then: BTreeMap<ObjectKey, Option<StoredObject>> = BTreeMap::new();
        let current = state.rv;
        let at = at.unwrap_or(current).min(current);
        if at < current {
            let history = self.shared.history();
            let since = history.since(resource);
            if at < since {
                return Err(StoreError::Gone {
                    requested: at,
                    oldest: since,
                });
            }
            let changed = history
                .window(resource)
                .and_then(|w| w.after(at).ok())
                .into_iter()
                .flatten();
            for event in changed.filter(|e| e.rv <= current && in_range(&e.key)) {
                if then.contains_key(&event.key) {
                    continue;
                }
                let before = match event.kind {
                    EventType::Added => None,
                    _ => Some(event.prev.clone().ok_or(StoreError::Gone {
                        requested: at,
                        oldest: event.rv,
                    })?),
                };
                then.insert(event.key.clone(), before);
            }
        }
        let start = ObjectKey::new(resource, namespace.unwrap_or(""), "");
        let lower = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Included(start),
        };
        let now = state
            .objects
            .range((lower, Bound::Unbounded))
            .take_while(|(key, _)| in_range(key));
        let mut items = Vec::new();
        let mut remaining = 0;
        let mut take = |object: &StoredObject| {
            if !keep(object) {
                return;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
            } else {
                items.push(object.clone());
            }
        };
        if then.is_empty() {
            // Nothing changed since `at` (always so for a first page): the state as it is.
            now.for_each(|(_, object)| take(object));
        } else {
            let mut merged: BTreeMap<&ObjectKey, Option<&StoredObject>> = now
                .filter(|(key, _)| !then.contains_key(key))
                .map(|(key, object)| (key, Some(object)))
                .collect();
            merged.extend(then.iter().map(|(key, object)| (key, object.as_ref())));
            merged.into_values().flatten().for_each(take);
        }
        Ok(SnapshotPage {
            items,
            rv: at,
            remaining,
        })
    }
}
