//! A watch: the backlog from its resource's window of the history, then that resource's live
//! events, filtered to one namespace if asked, in version order with nothing twice.
//!
//! A watcher that falls further behind than its channel holds catches up from the window
//! (`history` says why the channels are small); it ends only when the window has moved past it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{Event, Shared};

/// Why a watch ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchEnded {
    /// The watcher fell so far behind that its resource's window of the history no longer
    /// holds what it missed; it must list again (the API's 410 on the stream).
    #[error("the watch fell behind by {0} events")]
    Lagged(u64),
    /// The store is gone.
    #[error("the store closed")]
    Closed,
}

/// The events of one watch.
pub struct WatchStream {
    shared: Arc<Shared>,
    resource: String,
    namespace: Option<String>,
    last: u64,
    backlog: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
}

impl WatchStream {
    pub(super) fn new(
        shared: Arc<Shared>,
        resource: &str,
        namespace: Option<&str>,
        from: u64,
        backlog: Vec<Arc<Event>>,
        live: broadcast::Receiver<Arc<Event>>,
    ) -> Self {
        Self {
            shared,
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
            last: from,
            backlog: backlog.into(),
            live,
        }
    }

    fn selects(&self, e: &Event) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| e.key.namespace == ns)
    }

    /// The next event for this watch.
    pub async fn next(&mut self) -> Result<Arc<Event>, WatchEnded> {
        loop {
            let event = match self.backlog.pop_front() {
                Some(e) => e,
                None => match self.live.recv().await {
                    Ok(e) => e,
                    Err(RecvError::Lagged(missed)) => {
                        self.catch_up(missed)?;
                        continue;
                    }
                    Err(RecvError::Closed) => return Err(WatchEnded::Closed),
                },
            };
            // Events come in version order; the live channel repeats what the backlog held.
            if event.rv <= self.last {
                continue;
            }
            self.last = event.rv;
            if self.selects(&event) {
                return Ok(event);
            }
        }
    }

    /// Reads what the channel dropped from the window (the channel then goes on from the
    /// oldest event it still holds: what both hold is skipped as seen).
    fn catch_up(&mut self, missed: u64) -> Result<(), WatchEnded> {
        let history = self.shared.history();
        if history.closed() {
            return Err(WatchEnded::Closed);
        }
        let events = history
            .window(&self.resource)
            .ok_or(WatchEnded::Closed)?
            .after(self.last)
            .map_err(|_| WatchEnded::Lagged(missed))?;
        self.backlog.extend(events.cloned());
        Ok(())
    }

    /// The version up to which this watch has seen every event of its resource: what a
    /// bookmark reports. Once it has read all its channel held, that is the newest version
    /// published (the events of other resources included), not only its resource's last.
    pub fn position(&mut self) -> u64 {
        // The version first: every event up to it was on the channel before it was stored.
        let published = self.shared.published.load(Ordering::Acquire);
        if self.backlog.is_empty() && self.live.is_empty() {
            // No event of this resource up to `published` is still to come, so none will be
            // skipped as seen.
            self.last = self.last.max(published);
        }
        self.last
    }
}
