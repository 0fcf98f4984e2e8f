//! A reader's subscription to some kinds: the keys that changed since it last looked.
//!
//! Keys are gathered in a set, not queued: a reader that is busy while a hundred updates of one
//! pod arrive wakes once and sees that pod once. Nothing is dropped and nothing needs a bound
//! beyond the number of objects the edge holds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use wedge_core::protocol::{ObjectKey, ResourceKind};

/// MetaManager's side of a subscription.
pub(super) struct Subscriber {
    kinds: Vec<ResourceKind>,
    pending: Mutex<BTreeSet<ObjectKey>>,
    notify: Notify,
}

impl Subscriber {
    pub(super) fn changed(&self, key: &ObjectKey) {
        if !self.kinds.contains(&key.kind) {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone());
        // One stored permit: a reader not waiting yet returns at once from its next wait.
        self.notify.notify_one();
    }
}

/// The keys of the subscribed kinds that changed; dropped, it stops being told.
pub struct Subscription {
    subscriber: Arc<Subscriber>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("kinds", &self.subscriber.kinds)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(super) fn new(kinds: &[ResourceKind]) -> (Self, Arc<Subscriber>) {
        let subscriber = Arc::new(Subscriber {
            kinds: kinds.to_vec(),
            pending: Mutex::default(),
            notify: Notify::new(),
        });
        (
            Self {
                subscriber: subscriber.clone(),
            },
            subscriber,
        )
    }

    /// Waits until some key changed, and returns every key that changed since the last call.
    /// Cancel-safe: keys stay gathered until a call returns them.
    pub async fn changed(&mut self) -> BTreeSet<ObjectKey> {
        loop {
            let keys = self.take();
            if !keys.is_empty() {
                return keys;
            }
            self.subscriber.notify.notified().await;
        }
    }

    /// The keys that changed since the last call, without waiting.
    pub fn take(&mut self) -> BTreeSet<ObjectKey> {
        std::mem::take(
            &mut *self
                .subscriber
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}
