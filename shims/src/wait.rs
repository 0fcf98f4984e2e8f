//! Waiting for containers to exit, which CRI cannot do: it has no wait call, and containerd 1.6
//! serves no container events over CRI.
//!
//! So the runtime relists, as the kubelet's PLEG does: one task per [`crate::CriRuntime`] lists
//! every container each [`POLL_INTERVAL`] while anyone waits (and sleeps while nobody does), and
//! wakes the waiters of a container once containerd says it exited. A thousand waiters cost one
//! `ListContainers` per tick, plus one `ContainerStatus` per exit to read its code and reason.
//!
//! Waiters keep waiting while containerd is unreachable: a restart of containerd does not end
//! a running container, and the next successful list after it picks up where the last left
//! off. A container that is gone from containerd wakes its waiters with `NotFound`. The task
//! stops with its runtime (on drop, or awaited by [`ExitWatch::shutdown`]); waiters still
//! waiting then get `Unavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use wedge_core::runtime::{ContainerState, Exit, RuntimeError};

use crate::client::call;
use crate::container::container_info;
use crate::errors::{is_unavailable, runtime_error};

/// How often containers are relisted while someone waits: the longest an exit goes unnoticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where a waited-for container stands.
#[derive(Debug, Clone)]
enum Outcome {
    Running,
    Exited(Exit),
    Gone,
}

#[derive(Default)]
struct Shared {
    /// One channel per waited-for container, shared by all its waiters.
    waiting: Mutex<HashMap<String, watch::Sender<Outcome>>>,
    /// Wakes the idle poller when the first waiter comes.
    wake: Notify,
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<Outcome>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells every waiter of `id` how it ended, and forgets it.
    fn settle(&self, id: &str, outcome: Outcome) {
        if let Some(tx) = self.waiting().remove(id) {
            tx.send_replace(outcome);
        }
    }
}

/// The waiters of one runtime and the task that serves them.
pub(crate) struct ExitWatch {
    shared: Arc<Shared>,
    client: RuntimeServiceClient<Channel>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ExitWatch {
    /// Starts the (idle) poller on the current Tokio runtime.
    pub(crate) fn start(client: RuntimeServiceClient<Channel>, interval: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(poll(
            shared.clone(),
            client.clone(),
            cancel.clone(),
            interval,
        ));
        Self {
            shared,
            client,
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
        match status_of(&mut self.client.clone(), id).await {
            Ok(Some(outcome)) => self.shared.settle(id, outcome),
            Ok(None) => self.shared.wake.notify_one(),
            Err(e) => {
                self.shared.wake.notify_one();
                if !matches!(e, RuntimeError::Unavailable(_)) {
                    return Err(e);
                }
            }
        }
        let outcome = rx
            .wait_for(|o| !matches!(o, Outcome::Running))
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

/// Whether `id` has ended (`Some`) or still runs or waits to (`None`).
async fn status_of(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<Option<Outcome>, RuntimeError> {
    let request = cri::ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: false,
    };
    match client.container_status(call(request)).await {
        Ok(response) => {
            let Some(status) = response.into_inner().status else {
                return Ok(None);
            };
            Ok(match container_info(status, String::new()).state {
                ContainerState::Exited(exit) => Some(Outcome::Exited(exit)),
                _ => None,
            })
        }
        Err(status) if status.code() == Code::NotFound => Ok(Some(Outcome::Gone)),
        Err(status) => Err(runtime_error(status, &format!("container {id}"))),
    }
}

async fn poll(
    shared: Arc<Shared>,
    mut client: RuntimeServiceClient<Channel>,
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
        if ids.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = shared.wake.notified() => continue,
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = relist(&shared, &mut client, &ids) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    // Dropping the channels wakes whoever still waits.
    shared.waiting().clear();
}

async fn relist(shared: &Shared, client: &mut RuntimeServiceClient<Channel>, ids: &[String]) {
    let listed = match client
        .list_containers(call(cri::ListContainersRequest { filter: None }))
        .await
    {
        Ok(response) => response.into_inner().containers,
        Err(status) if is_unavailable(&status) => {
            tracing::debug!(error = %status.message(), waiting = ids.len(), "containerd unavailable; waiters keep waiting");
            return;
        }
        Err(status) => {
            tracing::warn!(error = %status.message(), "listing containers for waiters failed");
            return;
        }
    };
    let states: HashMap<&str, i32> = listed.iter().map(|c| (c.id.as_str(), c.state)).collect();
    for id in ids {
        let exited = cri::ContainerState::ContainerExited as i32;
        // Absent from the list: gone, or created after the list was taken; the status says.
        if states.get(id.as_str()).is_some_and(|s| *s != exited) {
            continue;
        }
        match status_of(client, id).await {
            Ok(Some(outcome)) => {
                if matches!(outcome, Outcome::Gone) {
                    tracing::debug!(container = %id, "waited-for container is gone");
                }
                shared.settle(id, outcome);
            }
            Ok(None) | Err(RuntimeError::Unavailable(_)) => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "reading an exited container failed")
            }
        }
    }
}
