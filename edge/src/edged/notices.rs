//! File-change notices for followed logs (`kubectl logs -f`): one watcher for the whole edge,
//! [`notify`]'s recommended one (inotify on Linux, so one inotify instance and its thread),
//! watching each directory some follow reads a log in, and fanning its notices out to every
//! follow subscribed to it.
//!
//! A follow subscribes to its container's directory ([`DirNotices::subscribe`]), not to its
//! file: a directory watch sees the file grow and also the next instance's log appear, which
//! ends the follow. Subscriptions are counted per directory; the first adds the watch, the last
//! one dropped removes it. Every notice about a directory (its files written, created, removed,
//! renamed, not merely opened or read) wakes all its subscribers, which then read: a container's
//! directory holds only its own logs, so a notice meant for one is rarely wasted on another.
//! inotify reports every write made through this host's kernel, whatever the filesystem, and
//! the writers here are all on this host (the runtimes, containerd's log copiers).
//!
//! Where there is no inotify (the kernel has none, or `max_user_instances` or
//! `max_user_watches` is reached) a subscription says so ([`Notices::polled`]) and its follow
//! reads again every [`FALLBACK_POLL_INTERVAL`] instead. When the kernel's queue overflows, or
//! the watcher reports an error, every subscriber is woken, as after a notice.
//!
//! Adding and removing watches is blocking (notify waits for its thread to answer), so it runs
//! on tokio's blocking pool; the watcher's thread does nothing but wake subscribers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// How often a follow reads again when its directory cannot be watched.
pub const FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The edge's watcher of log directories, shared by every follow (cheap to clone).
#[derive(Clone, Default)]
pub struct DirNotices {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Who to wake, by directory watched. The watcher's thread takes only this lock.
    senders: Mutex<HashMap<PathBuf, watch::Sender<()>>>,
    /// The watcher and the subscriptions per directory. Held while a watch is added or removed,
    /// which waits for the watcher's thread: so never taken by that thread.
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    backend: Backend,
    /// Subscriptions by directory watched.
    counts: HashMap<PathBuf, usize>,
}

#[derive(Default)]
enum Backend {
    /// Not started: no follow has subscribed yet.
    #[default]
    Idle,
    Native(RecommendedWatcher),
    /// The watcher could not be started: every follow polls.
    Unavailable,
}

impl DirNotices {
    /// A watcher that never starts: every subscription polls (for tests of the fallback).
    #[cfg(test)]
    pub(crate) fn unavailable() -> Self {
        let notices = Self::default();
        lock(&notices.inner.watches).backend = Backend::Unavailable;
        notices
    }

    /// Notices of changes in `dir` from now on, until the subscription is dropped; polled (see
    /// [`Notices::polled`]) if `dir` cannot be watched.
    pub async fn subscribe(&self, dir: &Path) -> Notices {
        let inner = self.inner.clone();
        let path = dir.to_owned();
        let added = tokio::task::spawn_blocking(move || inner.watch(&path)).await;
        match added {
            Ok(Some(receiver)) => Notices {
                receiver: Some(receiver),
                _subscription: Some(Subscription {
                    inner: self.inner.clone(),
                    dir: dir.to_owned(),
                }),
            },
            Ok(None) | Err(_) => Notices::polled_only(),
        }
    }

    /// How many directories are watched now.
    pub fn watched(&self) -> usize {
        lock(&self.inner.watches).counts.len()
    }
}

impl Inner {
    /// Adds a subscription to `dir`, and its watch if it is the first; `None` if it cannot be
    /// watched.
    fn watch(self: &Arc<Self>, dir: &Path) -> Option<watch::Receiver<()>> {
        let mut watches = lock(&self.watches);
        if let Some(count) = watches.counts.get_mut(dir) {
            let receiver = lock(&self.senders).get(dir).map(watch::Sender::subscribe)?;
            *count += 1;
            return Some(receiver);
        }
        if matches!(watches.backend, Backend::Idle) {
            watches.backend = match self.start() {
                Ok(watcher) => Backend::Native(watcher),
                Err(error) => {
                    tracing::warn!(%error, "no file-change notices: followed logs are polled every {FALLBACK_POLL_INTERVAL:?}");
                    Backend::Unavailable
                }
            };
        }
        let Backend::Native(watcher) = &mut watches.backend else {
            return None;
        };
        // Whoever to wake is known before the first notice can come.
        let (sender, receiver) = watch::channel(());
        lock(&self.senders).insert(dir.to_owned(), sender);
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            lock(&self.senders).remove(dir);
            tracing::warn!(dir = %dir.display(), %error, "cannot watch a log directory: its follows poll every {FALLBACK_POLL_INTERVAL:?}");
            return None;
        }
        watches.counts.insert(dir.to_owned(), 1);
        Some(receiver)
    }

    /// Drops a subscription to `dir`, and its watch if it was the last.
    fn unwatch(&self, dir: &Path) {
        let mut watches = lock(&self.watches);
        match watches.counts.get_mut(dir) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                watches.counts.remove(dir);
                if let Backend::Native(watcher) = &mut watches.backend {
                    // Fails when the directory is gone, and its watch with it.
                    if let Err(error) = watcher.unwatch(dir) {
                        tracing::debug!(dir = %dir.display(), %error, "log directory unwatched already");
                    }
                }
                lock(&self.senders).remove(dir);
            }
            None => {}
        }
    }

    /// The watcher, whose handler (on its own thread) wakes the subscribers of a notice's
    /// directory.
    fn start(self: &Arc<Self>) -> notify::Result<RecommendedWatcher> {
        // Weak: the watcher is part of what it would keep alive.
        let inner: Weak<Self> = Arc::downgrade(self);
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let senders = lock(&inner.senders);
            let wake_all = || senders.values().for_each(|s| s.send_replace(()));
            match event {
                // Opening or reading a file changes nothing a follow would read.
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                Ok(event) if event.need_rescan() || event.paths.is_empty() => wake_all(),
                Ok(event) => {
                    for path in &event.paths {
                        // A file in a watched directory, or the directory itself.
                        let watched = path.parent().and_then(|dir| senders.get(dir));
                        if let Some(sender) = watched.or_else(|| senders.get(path)) {
                            sender.send_replace(());
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "file-change notices failed: waking every follow");
                    wake_all();
                }
            }
        })
    }
}

/// A subscription's hold on its directory's watch.
struct Subscription {
    inner: Arc<Inner>,
    dir: PathBuf,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        let dir = std::mem::take(&mut self.dir);
        // Removing a watch waits for the watcher's thread: not on an async worker.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || inner.unwatch(&dir))),
            Err(_) => inner.unwatch(&dir),
        }
    }
}

/// One follow's notices of changes in its directory, from [`DirNotices::subscribe`].
pub struct Notices {
    /// `None`: no notices come, poll.
    receiver: Option<watch::Receiver<()>>,
    _subscription: Option<Subscription>,
}

impl Notices {
    /// No notices: the follow polls every [`FALLBACK_POLL_INTERVAL`].
    pub(crate) fn polled_only() -> Self {
        Self {
            receiver: None,
            _subscription: None,
        }
    }

    /// Notices from `receiver`, a change each time its sender sends (for tests).
    #[cfg(test)]
    pub(crate) fn from_receiver(receiver: watch::Receiver<()>) -> Self {
        Self {
            receiver: Some(receiver),
            _subscription: None,
        }
    }

    /// No notices come: the follow must poll.
    pub fn polled(&self) -> bool {
        self.receiver.is_none()
    }

    /// Waits for the next notice since the last one seen (at once if one came meanwhile); never
    /// returns when polled. Cancel-safe.
    pub async fn changed(&mut self) {
        let Some(receiver) = &mut self.receiver else {
            return std::future::pending().await;
        };
        if receiver.changed().await.is_err() {
            // The watch is gone (cannot happen while subscribed): poll from now on.
            self.receiver = None;
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .expect("append");
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Real files, real inotify: writes and a new file wake every subscriber of the directory,
    /// one watch per directory, removed with its last subscriber.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wake_the_subscribers_of_their_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir(&a).expect("a");
        std::fs::create_dir(&b).expect("b");
        append(&a.join("0.log"), b"x");
        let notices = DirNotices::default();
        let mut first = notices.subscribe(&a).await;
        let mut second = notices.subscribe(&a).await;
        let mut other = notices.subscribe(&b).await;
        assert!(!first.polled() && !second.polled() && !other.polled());
        assert_eq!(notices.watched(), 2);

        let wait = Duration::from_secs(5);
        append(&a.join("0.log"), b"more");
        tokio::time::timeout(wait, first.changed())
            .await
            .expect("a write wakes the first");
        tokio::time::timeout(wait, second.changed())
            .await
            .expect("and the second");
        // The next instance's log appearing is a notice too.
        append(&a.join("1.log"), b"next");
        tokio::time::timeout(wait, first.changed())
            .await
            .expect("a new file wakes");
        // Nothing happened in b.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), other.changed())
                .await
                .is_err()
        );

        drop(first);
        until("a stays watched for the second", || notices.watched() == 2).await;
        drop(second);
        until("a's watch removed with its last subscriber", || {
            notices.watched() == 1
        })
        .await;
        // Watched again when subscribed again.
        let mut again = notices.subscribe(&a).await;
        append(&a.join("1.log"), b"again");
        tokio::time::timeout(wait, again.changed())
            .await
            .expect("watched again");
        drop((again, other));
        until("nothing watched", || notices.watched() == 0).await;
    }

    #[tokio::test]
    async fn without_a_watcher_subscriptions_poll() {
        let root = tempfile::tempdir().expect("tempdir");
        let notices = DirNotices::unavailable();
        let subscription = notices.subscribe(root.path()).await;
        assert!(subscription.polled());
        assert_eq!(notices.watched(), 0);
        // A directory that does not exist cannot be watched either.
        let notices = DirNotices::default();
        assert!(notices.subscribe(&root.path().join("gone")).await.polled());
    }
}
