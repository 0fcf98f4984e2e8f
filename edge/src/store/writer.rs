//! The writer thread: every write to the edge's database goes through one thread that owns the
//! write connection, and commits what is queued in groups.
//!
//! A commit is blocking I/O (the WAL appended, an fsync at each checkpoint, a slow or full
//! disk), so it must not run on the async workers that serve EdgeHub, Edged and the apps.
//! Callers queue a write (a closure that runs its statements) on a bounded channel and await
//! the answer. The thread takes every write queued (up to [`MAX_GROUP`]) and runs them in one
//! transaction (group commit: one WAL append for many writes), each in a savepoint of its own,
//! so a write whose statements fail is rolled back and answered with its error alone. Once the
//! transaction is committed (or has failed, which fails every write in it), each write's
//! `settled` hook runs on this thread, in the order the writes were queued, and then its caller
//! is answered. What follows the disk in memory (MetaManager's copy, the reports held through a
//! full disk) is changed in those hooks: in commit order, and only after the commit.
//!
//! The same shape as the API server's store writer (`cloud/apiserver/src/storage/writer.rs`),
//! not the same code: there a write is decided against the objects in memory and given a
//! version; here a write is any set of statements. Nothing in `wedge-core` uses SQLite, so
//! each side keeps its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// The most writes one transaction commits.
pub const MAX_GROUP: usize = 256;
/// How many writes may wait for the thread; a caller past that waits for room.
pub const QUEUE: usize = 1024;

/// A queued write: runs its statements inside the group's transaction, then is told how the
/// group ended.
trait Job: Send {
    /// Runs the statements; whether they succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Settles the write and answers its caller: `failed` is the commit's error, if it failed
    /// (a write that did not run fails with it).
    fn finish(self: Box<Self>, failed: Option<&Arc<rusqlite::Error>>);
}

/// A write of `work`, whose result answers its caller once its group is settled.
struct Write<T, W, S> {
    work: Option<W>,
    result: Option<Result<T, StoreError>>,
    settled: S,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, W, S> Job for Write<T, W, S>
where
    T: Send + 'static,
    W: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    S: FnOnce(&Result<T, StoreError>, bool) + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&Arc<rusqlite::Error>>) {
        let result = match (self.result, failed) {
            // Its own statements failed: that error, whatever the group's.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), None) => Ok(value),
            (_, Some(error)) => Err(StoreError::Sql {
                doing: "committing to the edge database".into(),
                source: error.clone(),
            }),
            (None, None) => Err(StoreError::Closed),
        };
        (self.settled)(&result, failed.is_none());
        let _ = self.reply.send(result);
    }
}

/// The queue to the writer thread, and the thread. Stopping (on drop) lets the thread commit
/// everything queued before it ends.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// What the thread and the callers share.
#[derive(Default)]
struct Shared {
    /// Transactions committed (or tried), and writes in them.
    transactions: AtomicU64,
    writes: AtomicU64,
    /// Makes every commit fail as on a full disk (tests).
    full: AtomicBool,
    /// In tests, each group waits for a tick here ([`Writer::start_gated`]).
    gate: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
}

/// How many transactions the writer committed, and how many writes they held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions (each one commit).
    pub transactions: u64,
    /// Writes in them.
    pub writes: u64,
}

impl Writer {
    /// Starts the thread over `conn`.
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        Self::spawn(conn, Shared::default())
    }

    /// Starts the thread over `conn`; each group waits for a tick on the returned sender, so
    /// what is queued before a tick is one group (tests).
    #[cfg(test)]
    pub(super) fn start_gated(
        conn: Connection,
    ) -> std::io::Result<(Self, std::sync::mpsc::Sender<()>)> {
        let (tick, ticks) = std::sync::mpsc::channel();
        let shared = Shared {
            gate: Some(std::sync::Mutex::new(ticks)),
            ..Shared::default()
        };
        Ok((Self::spawn(conn, shared)?, tick))
    }

    fn spawn(conn: Connection, shared: Shared) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let shared = Arc::new(shared);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wedge-edge-db-writer".into())
                .spawn(move || run(conn, jobs, &shared))?
        };
        Ok(Self {
            queue: Some(queue),
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `work` in the next group's transaction and answers once it is durable (or failed).
    /// `settled` runs first, on the writer thread, in queue order, with the write's result and
    /// whether its group's transaction committed: where memory follows the disk.
    pub(super) async fn write<T, W, S>(&self, work: W, settled: S) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        S: FnOnce(&Result<T, StoreError>, bool) + Send + 'static,
    {
        let queue = self.queue.as_ref().ok_or(StoreError::Closed)?;
        let permit = queue.reserve().await.map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        permit.send(Box::new(Write {
            work: Some(work),
            result: None,
            settled,
            reply,
        }));
        wait(answer).await
    }

    /// How many transactions were committed so far, and how many writes they held.
    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.shared.transactions.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// How many writes wait in the queue (tests).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| QUEUE - q.capacity())
    }

    /// Makes every commit fail as on a full disk (SQLITE_FULL), or work again.
    #[cfg(test)]
    pub(super) fn set_full(&self, full: bool) {
        self.shared.full.store(full, Ordering::SeqCst);
    }
}

/// The answer to a write.
#[cfg(not(test))]
async fn wait<T>(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    answer.await.map_err(|_| StoreError::Closed)?
}

/// The answer to a write, in unit tests: waited for on a blocking thread, which keeps a paused
/// clock from jumping ahead while the writer thread commits (tokio moves a paused clock on
/// whenever the runtime is idle, unless a blocking task runs; a thread of our own does not
/// count). The same answer, only waited for differently.
#[cfg(test)]
async fn wait<T: Send + 'static>(
    answer: oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || answer.blocking_recv())
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(|_| StoreError::Closed)?
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread ends once the queue is closed and empty: what was queued is committed.
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() == std::thread::current().id() {
                // The last handle went with a write's hook, on the thread itself: it ends
                // on its own.
                return;
            }
            if thread.join().is_err() {
                tracing::error!("the edge database's writer thread panicked");
            }
        }
    }
}

fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Box<dyn Job>>, shared: &Shared) {
    loop {
        if let Some(gate) = &shared.gate {
            let _ = gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recv();
        }
        let Some(first) = next(&mut jobs) else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // A write that panics loses its group (its callers see the database closed), not the
        // writer: nothing of a group is applied before its commit.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit(&mut conn, group, shared)
        }));
        if outcome.is_err() {
            tracing::error!(
                "a write panicked in the edge database's writer; its group was dropped"
            );
        }
    }
}

/// How long the thread looks for the next write before it sleeps: a caller that writes again as
/// soon as it is answered (a device reporting in a loop) finds it awake, which saves the two
/// context switches of a sleep and a wake-up per write.
const LINGER: std::time::Duration = std::time::Duration::from_micros(50);

/// The next write, or `None` once the queue is closed and empty.
fn next(jobs: &mut mpsc::Receiver<Box<dyn Job>>) -> Option<Box<dyn Job>> {
    let until = std::time::Instant::now() + LINGER;
    loop {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < until => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return jobs.blocking_recv(),
        }
    }
}

/// Runs one group in one transaction, then finishes each write in order.
fn commit(conn: &mut Connection, mut group: Vec<Box<dyn Job>>, shared: &Shared) {
    shared.transactions.fetch_add(1, Ordering::Relaxed);
    shared.writes.fetch_add(
        u64::try_from(group.len()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let committed = (|| {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in &mut group {
            let savepoint = tx.savepoint()?;
            if job.run(&savepoint) {
                savepoint.commit()?;
            }
            // Dropped without a commit: rolled back to before the job.
        }
        if shared.full.load(Ordering::SeqCst) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("a full disk, in a test".into()),
            ));
        }
        tx.commit()
    })();
    // A transaction that failed is rolled back whole: every write in it fails.
    let failed = committed.err().map(Arc::new);
    if let Some(error) = &failed {
        tracing::debug!(%error, writes = group.len(), "a commit failed; its writes are refused");
    }
    for job in group {
        job.finish(failed.as_ref());
    }
}
