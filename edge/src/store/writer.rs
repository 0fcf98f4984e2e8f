//! The writer thread: every write to the edge's database goes through one thread that owns the
//! write connection, and commits what is queued in groups.
//!
//! A commit is blocking I/O (the WAL appended, an fsync at each checkpoint, a slow or full
//! disk), so it must not run on the async workers that serve EdgeHub, Edged and the apps.
//! Callers queue a write (a closure that runs its statements) on a bounded channel and await
//! the answer. The thread takes every write queued (up to [`MAX_GROUP`]) and runs them in one
//! transaction (group commit: one WAL append for many writes), each in a savepoint of its own,
//! so a write whose statements fail, or that panics, is rolled back and refused alone. Once the
//! transaction is committed (or has failed, which fails every write in it), each write's
//! `settled` hook runs on this thread, in the order the writes were queued, and then its caller
//! is answered. What follows the disk in memory (MetaManager's copy, the reports held through a
//! full disk, DeviceTwin's twins) is changed in those hooks: in commit order, and only after the
//! commit.
//!
//! Queueing and awaiting the answer are two steps ([`Writer::queue`], then [`Pending::wait`]):
//! a caller that must keep its writes in order (a device's reports, a resync's objects) queues
//! them one after the other and awaits their answers later, so many of them share a commit
//! instead of each waiting for the one before.
//!
//! The thread ends once the queue is closed and empty: [`Writer::close`] closes it and waits
//! (without blocking an async worker) until what was queued is committed and the connection
//! closed; the last handle dropped closes it too, and waits for the thread only where blocking
//! is allowed (not inside the async runtime).
//!
//! The same shape as the API server's store writer (`cloud/apiserver/src/storage/writer.rs`),
//! not the same code: there a write is decided against the objects in memory and given a
//! version; here a write is any set of statements. Nothing in `wedge-core` uses SQLite, so
//! each side keeps its own.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use super::StoreError;

/// The most writes one transaction commits.
pub const MAX_GROUP: usize = 256;
/// How many writes may wait for the thread; a caller past that waits for room.
pub const QUEUE: usize = 1024;

/// Why a whole group failed.
enum Failure {
    /// The transaction could not be begun or committed (a full disk, an I/O error).
    Sql(Arc<rusqlite::Error>),
    /// Running the group panicked outside any one write (a bug); the transaction was rolled
    /// back.
    Panicked,
}

/// A queued write: runs its statements inside the group's transaction, then is told how the
/// group ended.
trait Job: Send {
    /// Runs the statements; whether they succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Its statements panicked (a bug): the write is refused with `message`.
    fn panicked(&mut self, message: String);
    /// Settles the write and answers its caller: `failed` is why the group failed, if it did
    /// (a write that did not run fails with it).
    fn finish(self: Box<Self>, failed: Option<&Failure>);
}

/// What the queue carries.
enum Message {
    Write(Box<dyn Job>),
    /// Take no more writes: end once those queued are committed ([`Writer::close`]).
    Close,
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

    fn panicked(&mut self, message: String) {
        self.result = Some(Err(StoreError::Panicked(message)));
    }

    fn finish(self: Box<Self>, failed: Option<&Failure>) {
        let Self {
            result,
            settled,
            reply,
            ..
        } = *self;
        let result = match (result, failed) {
            // Its own statements failed: that error, whatever the group's.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), None) => Ok(value),
            (_, Some(Failure::Sql(error))) => Err(StoreError::Sql {
                doing: "committing to the edge database".into(),
                source: error.clone(),
            }),
            (_, Some(Failure::Panicked)) => Err(StoreError::Panicked(
                "the group's transaction panicked and was rolled back".into(),
            )),
            (None, None) => Err(StoreError::Closed),
        };
        // A hook that panics (a bug) leaves its own memory as far as it got, not the caller
        // unanswered or the writes after it unsettled.
        let hook = std::panic::catch_unwind(AssertUnwindSafe(|| {
            settled(&result, failed.is_none());
        }));
        if let Err(panic) = hook {
            tracing::error!(
                panic = panic_message(panic.as_ref()),
                "a write's settle hook panicked in the edge database's writer"
            );
        }
        let _ = reply.send(result);
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// The answer to a queued write: resolves once its group is settled. Dropping it does not
/// take the write back: it is committed all the same, unheard.
#[must_use = "a queued write's answer says whether it was stored"]
pub(crate) struct Pending<T> {
    answer: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T: Send + 'static> Pending<T> {
    /// Waits for the write's commit (or its failure).
    pub(crate) async fn wait(self) -> Result<T, StoreError> {
        wait(self.answer).await
    }
}

/// The queue to the writer thread, and the thread.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Message>>,
    shared: Arc<Shared>,
    /// Turns true once the thread has ended: everything queued committed, the connection and
    /// the lock let go.
    ended: watch::Receiver<bool>,
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
        let (end, ended) = watch::channel(false);
        let shared = Arc::new(shared);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wedge-edge-db-writer".into())
                .spawn(move || {
                    run(conn, jobs, &shared);
                    // The connection is closed (it went with `run`).
                    let _ = end.send(true);
                })?
        };
        Ok(Self {
            queue: Some(queue),
            shared,
            ended,
            thread: Some(thread),
        })
    }

    /// Queues `work` for the next group's transaction; returns once it is queued (waiting for
    /// room in a full queue), with the answer to await. Writes queued one after another are
    /// committed and settled in that order. `settled` runs first, on the writer thread, in
    /// queue order, with the write's result and whether its group's transaction committed:
    /// where memory follows the disk.
    pub(super) async fn queue<T, W, S>(&self, work: W, settled: S) -> Result<Pending<T>, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        S: FnOnce(&Result<T, StoreError>, bool) + Send + 'static,
    {
        let queue = self.queue.as_ref().ok_or(StoreError::Closed)?;
        let permit = queue.reserve().await.map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        permit.send(Message::Write(Box::new(Write {
            work: Some(work),
            result: None,
            settled,
            reply,
        })));
        Ok(Pending { answer })
    }

    /// Runs `work` in the next group's transaction and answers once it is durable (or failed):
    /// [`Writer::queue`], then [`Pending::wait`].
    pub(super) async fn write<T, W, S>(&self, work: W, settled: S) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        S: FnOnce(&Result<T, StoreError>, bool) + Send + 'static,
    {
        self.queue(work, settled).await?.wait().await
    }

    /// Takes no more writes, and resolves once those queued are committed and the thread has
    /// ended (its connection closed). Writes queued after it fail with [`StoreError::Closed`];
    /// every handle sees it closed.
    pub(super) async fn close(&self) {
        if let Some(queue) = &self.queue {
            // Behind every write already queued. A queue that is closed already ends anyway.
            let _ = queue.send(Message::Close).await;
        }
        let mut ended = self.ended.clone();
        // An error: the thread is gone without saying so (it cannot panic past its groups).
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Resolves once the thread has ended (tests).
    #[cfg(test)]
    pub(super) fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.clone();
        async move {
            let _ = ended.wait_for(|ended| *ended).await;
        }
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
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.is_finished() || *self.ended.borrow() {
            return;
        }
        if thread.thread().id() == std::thread::current().id() {
            // The last handle went with a write's hook, on the thread itself: it ends on its
            // own.
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            // On an async worker (or a blocking task) the thread is not waited for: it
            // commits what is queued and ends on its own. [`Writer::close`] is how a shutdown
            // waits for it.
            tracing::debug!(
                "the edge database's last handle went with writes queued; they are committed after it"
            );
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the edge database's writer thread panicked");
        }
    }
}

fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Message>, shared: &Shared) {
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
        let mut group = Vec::new();
        let mut message = Some(first);
        while let Some(taken) = message.take() {
            match taken {
                Message::Write(job) => group.push(job),
                // What was queued before it is still received; nothing after it is taken.
                Message::Close => jobs.close(),
            }
            if group.len() < MAX_GROUP {
                message = jobs.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit(&mut conn, group, shared);
        }
    }
}

/// How long the thread looks for the next write before it sleeps: a caller that writes again as
/// soon as it is answered (a device reporting in a loop) finds it awake, which saves the two
/// context switches of a sleep and a wake-up per write.
const LINGER: std::time::Duration = std::time::Duration::from_micros(50);

/// The next message, or `None` once the queue is closed and empty.
fn next(jobs: &mut mpsc::Receiver<Message>) -> Option<Message> {
    let until = std::time::Instant::now() + LINGER;
    loop {
        match jobs.try_recv() {
            Ok(message) => return Some(message),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < until => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return jobs.blocking_recv(),
        }
    }
}

/// Runs one group in one transaction, then finishes each write in order: every write is
/// answered and settled, whatever happened to the group.
fn commit(conn: &mut Connection, mut group: Vec<Box<dyn Job>>, shared: &Shared) {
    shared.transactions.fetch_add(1, Ordering::Relaxed);
    shared.writes.fetch_add(
        u64::try_from(group.len()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    // A panic outside the writes' own statements (a bug) unwinds through the transaction,
    // which rolls it back: the whole group fails, and is still answered.
    let committed =
        std::panic::catch_unwind(AssertUnwindSafe(|| transact(conn, &mut group, shared)));
    let failed = match committed {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(Failure::Sql(Arc::new(error))),
        Err(panic) => {
            tracing::error!(
                panic = panic_message(panic.as_ref()),
                writes = group.len(),
                "a group commit panicked in the edge database's writer; its writes are refused"
            );
            Some(Failure::Panicked)
        }
    };
    if let Some(Failure::Sql(error)) = &failed {
        tracing::debug!(%error, writes = group.len(), "a commit failed; its writes are refused");
    }
    for job in group {
        job.finish(failed.as_ref());
    }
}

/// Runs each write of `group` in a savepoint of one transaction and commits it. A write whose
/// statements fail or panic is rolled back to its savepoint, alone (a write alone in its group
/// with the transaction).
fn transact(
    conn: &mut Connection,
    group: &mut [Box<dyn Job>],
    shared: &Shared,
) -> rusqlite::Result<()> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let [job] = group {
        // Alone in its group (a caller that awaits each write): the transaction is its
        // savepoint, which saves two statements.
        return if run_job(job, &tx) {
            commit_checked(tx, shared)
        } else {
            tx.rollback()
        };
    }
    for job in group.iter_mut() {
        let savepoint = tx.savepoint()?;
        if run_job(job, &savepoint) {
            savepoint.commit()?;
        } else {
            // Rolled back to before the write (its drop behaviour).
            savepoint.finish()?;
        }
    }
    commit_checked(tx, shared)
}

/// Runs one write's statements; one that panics (a bug) is refused. Whether they succeeded.
fn run_job(job: &mut Box<dyn Job>, conn: &Connection) -> bool {
    match std::panic::catch_unwind(AssertUnwindSafe(|| job.run(conn))) {
        Ok(ran) => ran,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            tracing::error!(
                panic = message,
                "a write panicked in the edge database's writer; it is rolled back and refused"
            );
            job.panicked(message);
            false
        }
    }
}

/// Commits `tx`, or fails as a full disk would when a test says so.
fn commit_checked(tx: rusqlite::Transaction<'_>, shared: &Shared) -> rusqlite::Result<()> {
    if shared.full.load(Ordering::SeqCst) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("a full disk, in a test".into()),
        ));
    }
    tx.commit()
}
