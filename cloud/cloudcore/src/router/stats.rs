//! What the router counts for each Rule: delivered and failed messages and the latest errors,
//! KubeEdge's `successMessages`, `failMessages` and `errors`.
//!
//! Counts are kept here and written to the Rule's status subresource by the router's flush (at
//! most once a second per rule), not once per message. They start from what the Rule's status
//! said when the router first touched it, so a restarted cloudcore goes on counting; a Rule
//! deleted and created again (another uid) starts from zero.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use wedge_core::rule::RuleStatus;

/// How many errors a Rule's status keeps, newest last.
pub const MAX_ERRORS: usize = 10;

/// A Rule: namespace, name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
struct Entry {
    uid: String,
    status: RuleStatus,
    dirty: bool,
}

/// The counts of every Rule the router touched.
#[derive(Debug, Default)]
pub struct RuleStats {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl RuleStats {
    fn with<T>(
        &self,
        rule: &RuleRef,
        stored: impl FnOnce() -> Option<RuleStatus>,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (rule.namespace.clone(), rule.name.clone());
        let entry = entries.entry(key).or_insert_with(|| Entry {
            uid: rule.uid.clone(),
            status: stored().unwrap_or_default(),
            dirty: false,
        });
        if entry.uid != rule.uid {
            *entry = Entry {
                uid: rule.uid.clone(),
                status: RuleStatus::default(),
                dirty: false,
            };
        }
        f(entry)
    }

    /// A message was delivered. `stored` is the status the Rule shows, read only the first time.
    pub fn delivered(&self, rule: &RuleRef, stored: impl FnOnce() -> Option<RuleStatus>) {
        self.with(rule, stored, |e| {
            e.status.success_messages += 1;
            e.dirty = true;
        });
    }

    /// A message could not be delivered, for `error`.
    pub fn failed(&self, rule: &RuleRef, stored: impl FnOnce() -> Option<RuleStatus>, error: &str) {
        self.with(rule, stored, |e| {
            e.status.fail_messages += 1;
            push_error(&mut e.status.errors, error);
            e.dirty = true;
        });
    }

    /// The rule cannot be served, for `error` (recorded unless it is the latest one already).
    pub fn refused(
        &self,
        rule: &RuleRef,
        stored: impl FnOnce() -> Option<RuleStatus>,
        error: &str,
    ) {
        self.with(rule, stored, |e| {
            if e.status.errors.last().map(String::as_str) != Some(error) {
                push_error(&mut e.status.errors, error);
                e.dirty = true;
            }
        });
    }

    /// The statuses to write, marked clean: a failed write is [`RuleStats::unwritten`] again.
    pub fn take_dirty(&self) -> Vec<(RuleRef, RuleStatus)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|((namespace, name), e)| {
                e.dirty = false;
                let rule = RuleRef {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: e.uid.clone(),
                };
                (rule, e.status.clone())
            })
            .collect()
    }

    /// A write failed: it is tried again at the next flush.
    pub fn unwritten(&self, rule: &RuleRef) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(&(rule.namespace.clone(), rule.name.clone()))
            && e.uid == rule.uid
        {
            e.dirty = true;
        }
    }

    /// Forgets every rule but `live` (the others were deleted; their counts went with them).
    pub fn retain(&self, live: &HashSet<RuleRef>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(namespace, name), e| {
            live.contains(&RuleRef {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: e.uid.clone(),
            })
        });
    }

    /// The rule is gone.
    pub fn forget(&self, rule: &RuleRef) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (rule.namespace.clone(), rule.name.clone());
        if entries.get(&key).is_some_and(|e| e.uid == rule.uid) {
            entries.remove(&key);
        }
    }
}

fn push_error(errors: &mut Vec<String>, error: &str) {
    errors.push(error.to_owned());
    let excess = errors.len().saturating_sub(MAX_ERRORS);
    errors.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(uid: &str) -> RuleRef {
        RuleRef {
            namespace: "default".into(),
            name: "r".into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn counts_go_on_from_the_stored_status_and_restart_with_a_new_uid() {
        let stats = RuleStats::default();
        let stored = || {
            Some(RuleStatus {
                success_messages: 40,
                fail_messages: 2,
                errors: vec!["old".into()],
            })
        };
        stats.delivered(&rule("u1"), stored);
        stats.delivered(&rule("u1"), || panic!("read once"));
        stats.failed(
            &rule("u1"),
            || None,
            "POST http://x/: the target answered 500",
        );
        let [(r, status)] = stats.take_dirty().try_into().expect("one");
        assert_eq!(r, rule("u1"));
        assert_eq!((status.success_messages, status.fail_messages), (42, 3));
        assert_eq!(status.errors.len(), 2);
        assert!(stats.take_dirty().is_empty(), "clean until the next change");

        stats.delivered(&rule("u2"), stored);
        let [(_, status)] = stats.take_dirty().try_into().expect("one");
        assert_eq!((status.success_messages, status.fail_messages), (1, 0));
    }

    #[test]
    fn a_refusal_is_recorded_once_and_errors_are_bounded() {
        let stats = RuleStats::default();
        stats.refused(&rule("u1"), || None, "no endpoint");
        assert_eq!(stats.take_dirty().len(), 1);
        stats.refused(&rule("u1"), || None, "no endpoint");
        assert!(stats.take_dirty().is_empty(), "the same refusal again");
        for i in 0..(MAX_ERRORS + 5) {
            stats.failed(&rule("u1"), || None, &format!("e{i}"));
        }
        let [(_, status)] = stats.take_dirty().try_into().expect("one");
        assert_eq!(status.errors.len(), MAX_ERRORS);
        assert_eq!(status.errors.last().map(String::as_str), Some("e14"));
        stats.unwritten(&rule("u1"));
        assert_eq!(stats.take_dirty().len(), 1, "a failed write is tried again");
        stats.forget(&rule("u1"));
        assert!(stats.take_dirty().is_empty());
        stats.delivered(&rule("u2"), || None);
        stats.retain(&HashSet::from([rule("u3")]));
        assert!(stats.take_dirty().is_empty(), "u2 was deleted");
    }
}
