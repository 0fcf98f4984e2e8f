//! Waiting for containers to exit, which CRI cannot do: it has no wait call, and containerd 1.6
//! serves no container events over CRI.
//!
//! So the runtime relists, as the kubelet's PLEG does: one task per [`crate::CriRuntime`] lists
//! every container each [`POLL_INTERVAL`] while anyone waits (and sleeps while nobody does), and
//! wakes the waiters of a container once containerd says it exited. A thousand waiters cost one
//! `ListContainers` per tick, plus one `ContainerStatus` as each starts waiting (so a container
//! that has already exited answers at once) and one per exit, to read its code and reason.
//!
//! A container killed by SIGKILL (exit 137) whose reason is not yet `OOMKilled` is asked again on
//! the next relists, for at most [`OOM_REASON_GRACE`]: containerd's CRI learns that the exit was
//! the OOM killer's from the shim's `TaskOOM` event, which can arrive after it has seen the exit
//! (it waits on the task for that), and until then it says `Error`. The kubelet rereads a
//! terminated container's status at every sync and shows `OOMKilled` once it comes; Edged reads
//! the exit once, so it is settled here.
//!
//! Waiters keep waiting while containerd is unreachable: a restart of containerd does not end
//! a running container, and the next successful list after it picks up where the last left
//! off. A container that is gone from containerd wakes its waiters with `NotFound`. The task
//! stops with its runtime (on drop, or awaited by [`crate::CriRuntime::shutdown`]); waiters still
//! waiting then get `Unavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use wedge_core::runtime::{ContainerState, Exit, RuntimeError};
use wedge_core::status::reason;

use crate::client::call;
use crate::container::container_info;
use crate::errors::runtime_error;

/// How often containers are relisted while someone waits: the longest an exit goes unnoticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long a SIGKILLed container's exit may wait for containerd to say it was an OOM kill.
pub const OOM_REASON_GRACE: Duration = Duration::from_secs(2);

/// Whether `exit` may yet turn out to be an OOM kill that containerd has not heard of.
fn maybe_oom(exit: &Exit) -> bool {
    exit.code == 137 && exit.reason != reason::OOM_KILLED
}

/// Where a waited-for container stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Running,
    Exited(Exit),
    Gone,
}

/// The two questions the poller asks containerd (a trait so that tests can count them).
#[async_trait]
pub(crate) trait Containers: Send + Sync + 'static {
    /// Every container's id and CRI state (`ListContainers`).
    async fn states(&self) -> Result<HashMap<String, i32>, RuntimeError>;
    /// Whether one container has ended and how (`ContainerStatus`).
    async fn outcome(&self, id: &str) -> Result<Outcome, RuntimeError>;
}

/// The real questions, over CRI.
pub(crate) struct Cri(pub(crate) RuntimeServiceClient<Channel>);

#[async_trait]
impl Containers for Cri {
    async fn states(&self) -> Result<HashMap<String, i32>, RuntimeError> {
        let listed = self
            .0
            .clone()
            .list_containers(call(cri::ListContainersRequest { filter: None }))
            .await
            .map_err(|s| runtime_error(s, "containers"))?
            .into_inner()
            .containers;
        Ok(listed.into_iter().map(|c| (c.id, c.state)).collect())
    }

    async fn outcome(&self, id: &str) -> Result<Outcome, RuntimeError> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        match self.0.clone().container_status(call(request)).await {
            Ok(response) => Ok(match response.into_inner().status {
                Some(status) => match container_info(status, String::new()).state {
                    ContainerState::Exited(exit) => Outcome::Exited(exit),
                    _ => Outcome::Running,
                },
                None => Outcome::Running,
            }),
            Err(status) if status.code() == Code::NotFound => Ok(Outcome::Gone),
            Err(status) => Err(runtime_error(status, &format!("container {id}"))),
        }
    }
}

#[derive(Default)]
struct Shared {
    /// One channel per waited-for container, shared by all its waiters.
    waiting: Mutex<HashMap<String, watch::Sender<Outcome>>>,
    /// Wakes the idle poller when the first waiter comes.
    wake: Notify,
    /// Exits that may yet be OOM kills ([`maybe_oom`]): when each was first seen.
    unsure: Mutex<HashMap<String, Instant>>,
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<Outcome>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unsure(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.unsure.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells every waiter of `id` how it ended, and forgets it.
    fn settle(&self, id: &str, outcome: Outcome) {
        self.unsure().remove(id);
        if let Some(tx) = self.waiting().remove(id) {
            tx.send_replace(outcome);
        }
    }

    /// Settles `id` with `outcome`, unless it is a SIGKILL whose reason may still become
    /// `OOMKilled` and was first seen less than [`OOM_REASON_GRACE`] ago (`false`: asked again
    /// at the next relist).
    fn settle_exit(&self, id: &str, outcome: Outcome) -> bool {
        if let Outcome::Exited(exit) = &outcome
            && maybe_oom(exit)
        {
            let now = Instant::now();
            let first = *self.unsure().entry(id.to_owned()).or_insert(now);
            if now.duration_since(first) < OOM_REASON_GRACE {
                return false;
            }
            tracing::debug!(container = %id, "a SIGKILLed container's reason stayed {:?}", exit.reason);
        }
        self.settle(id, outcome);
        true
    }
}

/// The waiters of one runtime and the task that serves them.
pub(crate) struct ExitWatch {
    shared: Arc<Shared>,
    containers: Arc<dyn Containers>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ExitWatch {
    /// Starts the (idle) poller on the current Tokio runtime.
    pub(crate) fn start(containers: Arc<dyn Containers>, interval: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(poll(
            shared.clone(),
            containers.clone(),
            cancel.clone(),
            interval,
        ));
        Self {
            shared,
            containers,
            cancel,
            task: Mutex::new(Some(task)),
        }
    }

    /// Waits until container `id` has exited.
    pub(crate) async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let shut_down = || RuntimeError::Unavailable("the CRI runtime was shut down".to_owned());
        // Register before looking, so that an exit between the look and the first relist is
        // not missed.
        let mut rx = self
            .shared
            .waiting()
            .entry(id.to_owned())
            .or_insert_with(|| watch::Sender::new(Outcome::Running))
            .subscribe();
        if self.cancel.is_cancelled() {
            self.shared.waiting().remove(id);
            return Err(shut_down());
        }
        // One look now, so that a container that has already exited answers at once.
        match self.containers.outcome(id).await {
            Ok(Outcome::Running) | Err(RuntimeError::Unavailable(_)) => {
                self.shared.wake.notify_one();
            }
            Ok(outcome) => {
                if !self.shared.settle_exit(id, outcome) {
                    self.shared.wake.notify_one();
                }
            }
            Err(e) => return Err(e),
        }
        let outcome = rx
            .wait_for(|o| *o != Outcome::Running)
            .await
            .map_err(|_| shut_down())?
            .clone();
        match outcome {
            Outcome::Exited(exit) => Ok(exit),
            Outcome::Gone | Outcome::Running => {
                Err(RuntimeError::NotFound(format!("container {id}")))
            }
        }
    }

    /// Stops the poller and waits for it to end.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the CRI wait poller failed");
        }
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        // The task ends at its next await point; it holds nothing of ours but the shared map.
        self.cancel.cancel();
    }
}

async fn poll(
    shared: Arc<Shared>,
    containers: Arc<dyn Containers>,
    cancel: CancellationToken,
    interval: Duration,
) {
    loop {
        let ids: Vec<String> = {
            let mut waiting = shared.waiting();
            // Waiters that gave up (their future was dropped) leave channels nobody reads.
            waiting.retain(|_, tx| tx.receiver_count() > 0);
            waiting.keys().cloned().collect()
        };
        shared.unsure().retain(|id, _| ids.contains(id));
        if ids.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = shared.wake.notified() => continue,
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = relist(&shared, containers.as_ref(), &ids) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    // Dropping the channels wakes whoever still waits.
    shared.waiting().clear();
}

async fn relist(shared: &Shared, containers: &dyn Containers, ids: &[String]) {
    let states = match containers.states().await {
        Ok(states) => states,
        Err(RuntimeError::Unavailable(e)) => {
            tracing::debug!(error = %e, waiting = ids.len(), "containerd unavailable; waiters keep waiting");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing containers for waiters failed");
            return;
        }
    };
    let exited = cri::ContainerState::ContainerExited as i32;
    for id in ids {
        // Absent from the list: gone, or created after the list was taken; the status says.
        if states.get(id).is_some_and(|s| *s != exited) {
            continue;
        }
        match containers.outcome(id).await {
            Ok(Outcome::Running) | Err(RuntimeError::Unavailable(_)) => {}
            Ok(outcome) => {
                if outcome == Outcome::Gone {
                    tracing::debug!(container = %id, "waited-for container is gone");
                }
                shared.settle_exit(id, outcome);
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "reading an exited container failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    use jiff::Timestamp;

    use super::*;

    /// containerd as the poller sees it, counting the calls.
    #[derive(Default)]
    struct Fake {
        /// id → exit code once exited.
        containers: Mutex<HashMap<String, Option<i32>>>,
        down: AtomicBool,
        lists: AtomicUsize,
        statuses: AtomicUsize,
        /// Reasons other than `Error` for a non-zero exit, by id.
        reasons: Mutex<HashMap<String, &'static str>>,
    }

    impl Fake {
        fn run(&self, id: &str) {
            lock(&self.containers).insert(id.to_owned(), None);
        }
        fn exit(&self, id: &str, code: i32) {
            lock(&self.containers).insert(id.to_owned(), Some(code));
        }
        fn reason(&self, id: &str, reason: &'static str) {
            lock(&self.reasons).insert(id.to_owned(), reason);
        }
        fn remove(&self, id: &str) {
            lock(&self.containers).remove(id);
        }
        fn check_up(&self) -> Result<(), RuntimeError> {
            if self.down.load(SeqCst) {
                Err(RuntimeError::Unavailable("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[async_trait]
    impl Containers for Fake {
        async fn states(&self) -> Result<HashMap<String, i32>, RuntimeError> {
            self.lists.fetch_add(1, SeqCst);
            self.check_up()?;
            Ok(lock(&self.containers)
                .iter()
                .map(|(id, exit)| {
                    let state = match exit {
                        Some(_) => cri::ContainerState::ContainerExited,
                        None => cri::ContainerState::ContainerRunning,
                    };
                    (id.clone(), state as i32)
                })
                .collect())
        }

        async fn outcome(&self, id: &str) -> Result<Outcome, RuntimeError> {
            self.statuses.fetch_add(1, SeqCst);
            self.check_up()?;
            Ok(match lock(&self.containers).get(id) {
                None => Outcome::Gone,
                Some(None) => Outcome::Running,
                Some(Some(code)) => Outcome::Exited(Exit {
                    code: *code,
                    reason: lock(&self.reasons)
                        .get(id)
                        .copied()
                        .unwrap_or(reason::ERROR)
                        .into(),
                    message: None,
                    started_at: Timestamp::UNIX_EPOCH,
                    finished_at: Timestamp::UNIX_EPOCH,
                }),
            })
        }
    }

    fn watch(fake: &Arc<Fake>) -> Arc<ExitWatch> {
        Arc::new(ExitWatch::start(fake.clone(), POLL_INTERVAL))
    }

    fn spawn_wait(w: &Arc<ExitWatch>, id: &str) -> JoinHandle<Result<Exit, RuntimeError>> {
        let (w, id) = (w.clone(), id.to_owned());
        tokio::spawn(async move { w.wait(&id).await })
    }

    async fn ticks(n: u32) {
        for _ in 0..n {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_waiters_cost_one_list_per_tick() {
        let fake = Arc::new(Fake::default());
        let w = watch(&fake);
        let ids: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
        ids.iter().for_each(|id| fake.run(id));
        let waiters: Vec<_> = ids.iter().map(|id| spawn_wait(&w, id)).collect();
        ticks(10).await;
        let lists = fake.lists.load(SeqCst);
        assert!(
            (9..=11).contains(&lists),
            "one list per tick, not per waiter: {lists}"
        );
        assert_eq!(
            fake.statuses.load(SeqCst),
            100,
            "one look per waiter when it starts"
        );
        for (i, id) in ids.iter().enumerate() {
            fake.exit(id, i32::try_from(i).expect("small"));
        }
        for (i, waiter) in waiters.into_iter().enumerate() {
            let exit = waiter.await.expect("joined").expect("exited");
            assert_eq!(exit.code, i32::try_from(i).expect("small"));
        }
        assert_eq!(fake.statuses.load(SeqCst), 200, "one more status per exit");
        // Nobody waits: the poller goes idle.
        let before = fake.lists.load(SeqCst);
        ticks(20).await;
        assert!(fake.lists.load(SeqCst) <= before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exited_container_answers_without_a_relist() {
        let fake = Arc::new(Fake::default());
        fake.exit("done", 3);
        let w = watch(&fake);
        assert_eq!(w.wait("done").await.map(|e| e.code), Ok(3));
        assert_eq!(fake.lists.load(SeqCst), 0);
        assert_eq!(
            w.wait("never").await,
            Err(RuntimeError::NotFound("container never".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_ride_out_an_unavailable_runtime() {
        let fake = Arc::new(Fake::default());
        fake.run("c");
        fake.down.store(true, SeqCst);
        let w = watch(&fake);
        let waiter = spawn_wait(&w, "c");
        ticks(20).await;
        assert!(
            !waiter.is_finished(),
            "still waiting while containerd is down"
        );
        assert!(fake.lists.load(SeqCst) >= 19, "and still asking");
        fake.exit("c", 0);
        fake.down.store(false, SeqCst);
        ticks(2).await;
        assert_eq!(waiter.await.expect("joined").map(|e| e.code), Ok(0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_oom_kill_is_named_even_when_containerd_hears_of_it_after_the_exit() {
        let fake = Arc::new(Fake::default());
        let w = watch(&fake);
        // Seen exiting by the relist, OOMKilled a tick later.
        fake.run("hog");
        let hog = spawn_wait(&w, "hog");
        ticks(2).await;
        fake.exit("hog", 137);
        ticks(2).await;
        assert!(!hog.is_finished(), "a SIGKILL's reason is asked again");
        fake.reason("hog", reason::OOM_KILLED);
        ticks(2).await;
        let exit = hog.await.expect("joined").expect("exited");
        assert_eq!((exit.code, exit.reason.as_str()), (137, "OOMKilled"));

        // Already exited at the first look.
        fake.exit("early", 137);
        let early = spawn_wait(&w, "early");
        ticks(1).await;
        fake.reason("early", reason::OOM_KILLED);
        ticks(2).await;
        let exit = early.await.expect("joined").expect("exited");
        assert_eq!(exit.reason, "OOMKilled");

        // A SIGKILL that was not the OOM killer's is said to be one no later than the grace.
        fake.run("killed");
        let killed = spawn_wait(&w, "killed");
        ticks(1).await;
        fake.exit("killed", 137);
        let t0 = Instant::now();
        let exit = killed.await.expect("joined").expect("exited");
        assert_eq!(exit.reason, "Error");
        assert!(
            t0.elapsed() <= OOM_REASON_GRACE + POLL_INTERVAL * 2,
            "{:?}",
            t0.elapsed()
        );

        // Other exits are not held back.
        fake.run("plain");
        let plain = spawn_wait(&w, "plain");
        ticks(1).await;
        fake.exit("plain", 1);
        let t0 = Instant::now();
        assert_eq!(plain.await.expect("joined").map(|e| e.code), Ok(1));
        assert!(t0.elapsed() <= POLL_INTERVAL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_container_wakes_its_waiters_with_not_found() {
        let fake = Arc::new(Fake::default());
        fake.run("c");
        let w = watch(&fake);
        let (a, b) = (spawn_wait(&w, "c"), spawn_wait(&w, "c"));
        ticks(3).await;
        fake.remove("c");
        for waiter in [a, b] {
            assert!(matches!(
                waiter.await.expect("joined"),
                Err(RuntimeError::NotFound(_))
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_is_forgotten() {
        let fake = Arc::new(Fake::default());
        fake.run("c");
        let w = watch(&fake);
        let waiter = spawn_wait(&w, "c");
        ticks(2).await;
        waiter.abort();
        ticks(2).await;
        let before = fake.lists.load(SeqCst);
        ticks(10).await;
        assert!(
            fake.lists.load(SeqCst) <= before + 1,
            "idle once nobody waits"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_watch_ends_its_task() {
        let fake = Arc::new(Fake::default());
        fake.run("c");
        let w = watch(&fake);
        let waiter = spawn_wait(&w, "c");
        ticks(2).await;
        waiter.abort();
        drop(w);
        // The task held the other reference to the fake; it lets go once it has ended.
        for _ in 0..100 {
            if Arc::strong_count(&fake) == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the poller outlived its watch");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_poller_and_wakes_waiters() {
        let fake = Arc::new(Fake::default());
        fake.run("c");
        let w = watch(&fake);
        let waiter = spawn_wait(&w, "c");
        ticks(2).await;
        w.shutdown().await;
        assert!(matches!(
            waiter.await.expect("joined"),
            Err(RuntimeError::Unavailable(_))
        ));
        assert!(matches!(
            w.wait("c").await,
            Err(RuntimeError::Unavailable(_))
        ));
        let before = fake.lists.load(SeqCst);
        ticks(10).await;
        assert_eq!(fake.lists.load(SeqCst), before, "no task left to list");
    }
}
