//! The watch history: for each resource, a window of its latest events and its live channel.
//!
//! kube-apiserver keeps a watch cache per resource, so a storm of Pod writes cannot push Nodes
//! or Leases out of their watchers' reach. The store does the same:
//!
//! - **A channel per resource.** Each resource has its own `broadcast` channel, created when it
//!   is first written or watched, so a watch of Leases never sees, and never lags behind, the
//!   Pods a DaemonSet is creating. One channel for everything made every watcher of every
//!   resource fall behind together (410, relist) once a storm outran it.
//! - **A window per resource, and a budget for all.** Each resource's window holds at most
//!   [`HistoryLimits::events`] of its events (10,000 by default, what the one history held
//!   before: a storm of one resource can still be replayed whole, as kube-apiserver sizes each
//!   resource's watch cache on its own). All windows together hold at most [`WINDOWS`] times
//!   that and [`HistoryLimits::bytes`] (64 MiB) of objects, so the history stays bounded however
//!   many resources there are: room for a storm on each of the four resources a rollout writes
//!   most (pods, events, leases, nodes) before they share, and the per-event overhead beyond
//!   the objects' bytes (a few hundred bytes each) stays within about 12 MiB. When an event does
//!   not fit, the oldest event of its own resource goes if its window is full, else the oldest
//!   of the resource holding the most (events, or bytes when it is the bytes that overflow);
//!   never the new one. A resource that writes little keeps its recent past; a busy one gives
//!   way first, and under steady pressure the busy ones end with equal shares.
//! - **Small channels, caught up from the window.** A channel holds [`LIVE_EVENTS`] events, not
//!   the window's 10,000: tokio allocates a channel's ring whole, for every resource written or
//!   watched (about 40 bytes a slot). A watcher that falls further behind than the channel holds
//!   reads what it missed from its resource's window and follows on; only when the window has
//!   moved past it too does the watch end (the API's 410), as a kube-apiserver watcher whose
//!   resourceVersion left the watch cache.
//!
//! `since` is the version after which a window holds every event of its resource: a watch or a
//! page from an older version is [`super::StoreError::Gone`]. It is kept in SQLite with the
//! events (`meta` rows), so windows resume after a restart where they stood. A resource with no
//! window yet starts from the history's `floor` (0 for a new database).

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Event, HistoryLimits};

/// Events a resource's live channel holds for a watcher that has not read them yet.
pub const LIVE_EVENTS: usize = 1024;

/// All windows together hold at most this many times one window's events.
pub const WINDOWS: usize = 4;

/// What a commit drops from the history: for each resource, how many of its oldest events
/// (the commit's own included) and the version its window then starts after.
pub(super) type Trims = HashMap<String, (usize, u64)>;

/// One resource's events, oldest first, and its live channel.
pub(super) struct Window {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    since: u64,
    live: broadcast::Sender<Arc<Event>>,
}

impl Window {
    fn new(since: u64) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            since,
            live: broadcast::channel(LIVE_EVENTS).0,
        }
    }

    /// The events after `from`, or, when the window no longer reaches back to it, the version
    /// it starts after.
    pub(super) fn after(&self, from: u64) -> Result<impl Iterator<Item = &Arc<Event>>, u64> {
        if from < self.since {
            return Err(self.since);
        }
        let start = self.events.partition_point(|e| e.rv <= from);
        Ok(self.events.range(start..))
    }
}

/// Every resource's window.
pub(super) struct History {
    windows: HashMap<String, Window>,
    events: usize,
    bytes: usize,
    floor: u64,
    closed: bool,
}

/// A window while a commit's room is planned: what it would hold.
struct Planned<'h> {
    window: Option<&'h Window>,
    count: usize,
    bytes: usize,
    dropped: usize,
    since: u64,
    /// The commit's events of this resource: size and version.
    new: Vec<(usize, u64)>,
}

impl Planned<'_> {
    fn drop_front(&mut self, size: usize, rv: u64) {
        self.dropped += 1;
        self.count -= 1;
        self.bytes -= size;
        self.since = rv;
    }

    /// The size and version of the oldest event it would hold.
    fn front(&self) -> Option<(usize, u64)> {
        let held = self.window.map_or(0, |w| w.events.len());
        if self.dropped < held {
            let e = &self.window?.events[self.dropped];
            Some((e.object.json.len(), e.rv))
        } else {
            self.new.get(self.dropped - held).copied()
        }
    }
}

impl History {
    /// An empty history, complete after version `floor`.
    pub(super) fn new(floor: u64) -> Self {
        Self {
            windows: HashMap::new(),
            events: 0,
            bytes: 0,
            floor,
            closed: false,
        }
    }

    /// The version after which every event of `resource` is held.
    pub(super) fn since(&self, resource: &str) -> u64 {
        self.windows.get(resource).map_or(self.floor, |w| w.since)
    }

    /// Where a resource without a window starts.
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Every window's `since`.
    pub(super) fn sinces(&self) -> impl Iterator<Item = (&str, u64)> {
        self.windows.iter().map(|(r, w)| (r.as_str(), w.since))
    }

    /// The window of `resource`, if it has one.
    pub(super) fn window(&self, resource: &str) -> Option<&Window> {
        self.windows.get(resource)
    }

    fn window_mut(&mut self, resource: &str) -> &mut Window {
        let floor = self.floor;
        self.windows
            .entry(resource.to_owned())
            .or_insert_with(|| Window::new(floor))
    }

    /// A receiver of `resource`'s live events (`None` once the store has closed).
    pub(super) fn subscribe(&mut self, resource: &str) -> Option<broadcast::Receiver<Arc<Event>>> {
        if self.closed {
            return None;
        }
        Some(self.window_mut(resource).live.subscribe())
    }

    /// Whether the store has closed.
    pub(super) fn closed(&self) -> bool {
        self.closed
    }

    /// Closes every channel: watchers end with [`super::WatchEnded::Closed`].
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.windows.clear();
    }

    /// Sets where `resource`'s window starts (at open, from what SQLite kept).
    pub(super) fn set_since(&mut self, resource: &str, since: u64) {
        self.window_mut(resource).since = since;
    }

    /// Forgets `resource`'s events up to `since` included (at open, where one cannot be
    /// decrypted: a watch from before it gets 410 and relists rather than miss it).
    pub(super) fn reset(&mut self, resource: &str, since: u64) {
        let window = self.window_mut(resource);
        let (count, bytes) = (window.events.len(), window.bytes);
        window.events.clear();
        window.bytes = 0;
        window.since = since;
        self.events -= count;
        self.bytes -= bytes;
    }

    /// What must go to make room for `new` events (resource, size in bytes, version), added in
    /// order as if each were committed alone: before each, the oldest event of its resource
    /// while that window is full, then the oldest of the resource holding the most until all
    /// fit. Nothing changes until [`History::push`].
    pub(super) fn plan(&self, limits: HistoryLimits, new: &[(&str, usize, u64)]) -> Trims {
        let mut planned: HashMap<&str, Planned<'_>> = self
            .windows
            .iter()
            .map(|(resource, w)| {
                let p = Planned {
                    window: Some(w),
                    count: w.events.len(),
                    bytes: w.bytes,
                    dropped: 0,
                    since: w.since,
                    new: Vec::new(),
                };
                (resource.as_str(), p)
            })
            .collect();
        let (mut events, mut bytes) = (self.events, self.bytes);
        let all_events = limits.events.saturating_mul(WINDOWS);
        for &(resource, size, rv) in new {
            if let Some(own) = planned.get_mut(resource) {
                while own.count >= limits.events {
                    let Some((front_size, front_rv)) = own.front() else {
                        break;
                    };
                    own.drop_front(front_size, front_rv);
                    events -= 1;
                    bytes -= front_size;
                }
            }
            while events > 0 {
                let by_count = events + 1 > all_events;
                if !by_count && bytes + size <= limits.bytes {
                    break;
                }
                let victim = planned
                    .values_mut()
                    .filter_map(|p| Some((p.front()?, p)))
                    .max_by_key(|((_, front_rv), p)| {
                        let held = if by_count { p.count } else { p.bytes };
                        (held, Reverse(*front_rv))
                    });
                let Some(((front_size, front_rv), p)) = victim else {
                    break;
                };
                p.drop_front(front_size, front_rv);
                events -= 1;
                bytes -= front_size;
            }
            let p = planned.entry(resource).or_insert_with(|| Planned {
                window: None,
                count: 0,
                bytes: 0,
                dropped: 0,
                since: self.floor,
                new: Vec::new(),
            });
            p.new.push((size, rv));
            p.count += 1;
            p.bytes += size;
            events += 1;
            bytes += size;
        }
        planned
            .into_iter()
            .filter(|(_, p)| p.dropped > 0)
            .map(|(resource, p)| (resource.to_owned(), (p.dropped, p.since)))
            .collect()
    }

    /// Adds committed events and drops what [`History::plan`] said for them. Returns each
    /// event's live channel, to publish on once the state shows them.
    pub(super) fn push(
        &mut self,
        events: &[Arc<Event>],
        trims: &Trims,
    ) -> Vec<broadcast::Sender<Arc<Event>>> {
        let mut live = Vec::with_capacity(events.len());
        for event in events {
            let size = event.object.json.len();
            self.events += 1;
            self.bytes += size;
            let window = self.window_mut(&event.key.resource);
            window.bytes += size;
            window.events.push_back(event.clone());
            live.push(window.live.clone());
        }
        for (resource, &(dropped, since)) in trims {
            let Some(window) = self.windows.get_mut(resource) else {
                continue;
            };
            for _ in 0..dropped {
                if let Some(old) = window.events.pop_front() {
                    let size = old.object.json.len();
                    window.bytes -= size;
                    self.events -= 1;
                    self.bytes -= size;
                }
            }
            window.since = since;
        }
        live
    }

    /// Adds one event read back at open, making room as a commit would.
    pub(super) fn load(&mut self, event: Arc<Event>, limits: HistoryLimits) {
        let trims = self.plan(
            limits,
            &[(&event.key.resource, event.object.json.len(), event.rv)],
        );
        self.push(&[event], &trims);
    }
}
