//! A thread inside a pod's network namespace, for the Wasm containers of a mixed pod.
//!
//! In a pod that holds both a container and a Wasm container, the container runtime makes the
//! pod's network namespace, and every container of the pod must share it (`localhost` is the
//! pod's). A network namespace belongs to a thread, not a process, and sockets are made in the
//! namespace of the thread that creates them; tokio's worker threads serve every pod and must
//! stay in edgecore's own namespace. So such a pod's guests run on a [`PodThread`]: one OS
//! thread that enters the namespace (`setns`) and drives a current-thread tokio runtime. Every
//! socket a guest opens through `wasi:sockets` is created on that thread, hence in the pod's
//! network; the runtime's blocking helper threads are started from that thread and inherit
//! the namespace. Wasm-only pods stay on the shared workers (their density is the point), and
//! have no network of their own.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Why a pod thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace could not be opened or entered.
    #[error("cannot enter the pod's network namespace {path}: {source}")]
    Enter {
        /// The namespace's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The thread or its runtime could not start.
    #[error("cannot start a thread for the pod's network namespace: {0}")]
    Thread(std::io::Error),
}

/// A thread in a pod's network namespace, with a runtime to spawn the pod's guests on. The
/// thread ends, and with it whatever still runs there, when this is dropped or
/// [`PodThread::stop`]ped.
#[derive(Debug)]
pub struct PodThread {
    handle: Handle,
    netns: PathBuf,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl PodThread {
    /// Starts a thread named after `pod` inside the network namespace at `netns`.
    pub async fn start(netns: &Path, pod: &str) -> Result<Self, NetnsError> {
        let enter = |source| NetnsError::Enter {
            path: netns.to_owned(),
            source,
        };
        let file = std::fs::File::open(netns).map_err(enter)?;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Handle, std::io::Error>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let name = format!("wasm-pod-{}", pod.chars().take(6).collect::<String>());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let entered = rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                );
                drop(file);
                if let Err(e) = entered {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Runs the pod's guests until the sandbox goes; dropping the runtime then
                // cancels whatever is left.
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(NetnsError::Thread)?;
        let handle = ready_rx
            .await
            .map_err(|_| NetnsError::Thread(std::io::Error::other("the thread ended at once")))?
            .map_err(enter)?;
        tracing::debug!(netns = %netns.display(), "a thread entered the pod's network namespace");
        Ok(Self {
            handle,
            netns: netns.to_owned(),
            stop: std::sync::Mutex::new(Some(stop_tx)),
        })
    }

    /// The runtime the pod's guests run on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The namespace's path.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Ends the thread (its hold on the namespace with it) and whatever still runs there; once
    /// it has ended, what is spawned there is cancelled at once. A finished pod's sandbox keeps
    /// no thread.
    pub fn stop(&self) {
        self.stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inode of the network namespace of the calling thread.
    fn current_netns() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("ns")
            .ino()
    }

    #[tokio::test]
    async fn guests_spawned_on_a_pod_thread_live_in_its_namespace() {
        // Our own namespace is the simplest one to enter (a new one needs `ip netns`, done by
        // the end-to-end tests through containerd).
        let here = current_netns();
        let thread = PodThread::start(Path::new("/proc/self/ns/net"), "test")
            .await
            .expect("starts");
        let there = thread
            .handle()
            .spawn(async { current_netns() })
            .await
            .expect("join");
        assert_eq!(there, here);
        // Once stopped, the thread's runtime goes: what is spawned there is cancelled.
        thread.stop();
        let mut ended = false;
        for _ in 0..1_000 {
            if thread.handle().spawn(async {}).await.is_err() {
                ended = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(ended, "the pod thread still runs after stop");
        let missing = PodThread::start(Path::new("/var/run/netns/no-such"), "x")
            .await
            .expect_err("no namespace");
        assert!(
            missing.to_string().contains("/var/run/netns/no-such"),
            "{missing}"
        );
    }
}
