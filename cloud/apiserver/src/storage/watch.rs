//! A watch: the backlog from the history, then live events, filtered to one resource (and
//! namespace), in version order with nothing twice.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::Event;

/// Why a watch ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchEnded {
    /// The watcher fell so far behind that live events it had not read were dropped; it must
    /// list again (the API's 410 on the stream).
    #[error("the watch fell behind by {0} events")]
    Lagged(u64),
    /// The store is gone.
    #[error("the store closed")]
    Closed,
}

/// The events of one watch.
pub struct WatchStream {
    resource: String,
    namespace: Option<String>,
    last: u64,
    backlog: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
}

impl WatchStream {
    pub(super) fn new(
        resource: &str,
        namespace: Option<&str>,
        from: u64,
        backlog: Vec<Arc<Event>>,
        live: broadcast::Receiver<Arc<Event>>,
    ) -> Self {
        Self {
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
            last: from,
            backlog: backlog.into(),
            live,
        }
    }

    fn selects(&self, e: &Event) -> bool {
        e.key.resource == self.resource
            && self
                .namespace
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
                    Err(RecvError::Lagged(n)) => return Err(WatchEnded::Lagged(n)),
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

    /// The version up to which this watch has seen every event (those of other resources too):
    /// what a bookmark reports.
    pub fn position(&self) -> u64 {
        self.last
    }
}
