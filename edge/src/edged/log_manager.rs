//! Container log rotation, as the kubelet's `ContainerLogManager` does it for every CRI runtime.
//!
//! Every [`MONITOR_INTERVAL`] each running container's log is measured; for one past
//! `--container-log-max-size` the oldest rotated files are removed so that, with the one about to
//! be rotated, `--container-log-max-files` remain; the log is renamed to `<name>.<UTC time>` and
//! its runtime is asked to write on in a fresh file (`reopen_container_log`, CRI's
//! `ReopenContainerLog`): the kubelet's order, so a log never has more files than the limit. If
//! the runtime cannot reopen,
//! the file is renamed back, as the kubelet does, and the failure is logged once for that
//! container. `kubectl logs -f` follows a log across its rotation (`logs`).
//!
//! For containerd's containers this check is the bound, as under a kubelet: a container may
//! write past the limit until the next check. The Wasm runtime also rotates as it writes, with
//! the same limits (its writer knows each file's size), so a guest printing as fast as it can
//! never holds more of the disk than they allow.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use wedge_core::logrotation::{self, LogLimits};

use super::pod_workers::{PodWorkers, RunningContainer};

/// How often logs are measured: the kubelet's `containerLogMonitorInterval`.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);

/// Rotates the running containers' logs every `interval`, until the task is dropped.
pub async fn run(workers: PodWorkers, limits: LogLimits, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Containers whose runtime could not reopen their log: said once each.
    let mut failing = HashSet::new();
    loop {
        tick.tick().await;
        rotate_all(&workers, limits, &mut failing).await;
    }
}

/// One pass over the running containers.
pub async fn rotate_all(workers: &PodWorkers, limits: LogLimits, failing: &mut HashSet<String>) {
    let running = workers.running();
    for container in &running {
        let size = match tokio::fs::metadata(&container.log_path).await {
            Ok(meta) => meta.len(),
            // Not written yet, or removed with its pod meanwhile.
            Err(_) => continue,
        };
        if size < limits.max_bytes {
            continue;
        }
        match rotate(container, limits).await {
            Ok(()) => {
                failing.remove(&container.id);
                tracing::debug!(log = %container.log_path.display(), size, "container log rotated");
            }
            Err(error) => {
                if failing.insert(container.id.clone()) {
                    tracing::warn!(
                        pod = %format!("{}/{}", container.namespace, container.pod),
                        container = container.container,
                        %error,
                        "cannot rotate the container's log; it grows until this works"
                    );
                }
            }
        }
    }
    failing.retain(|id| running.iter().any(|c| &c.id == id));
}

async fn rotate(container: &RunningContainer, limits: LogLimits) -> Result<(), String> {
    let path = container.log_path.clone();
    // Room first: the file about to be rotated counts among those kept.
    let (dir_of, keep) = (path.clone(), limits.max_files.saturating_sub(1));
    tokio::task::spawn_blocking(move || remove_excess(&dir_of, keep))
        .await
        .map_err(|e| e.to_string())?;
    let rotated = logrotation::rotated_path(&path, Timestamp::now());
    tokio::fs::rename(&path, &rotated)
        .await
        .map_err(|e| format!("renaming {}: {e}", path.display()))?;
    if let Err(error) = container
        .handle
        .runtime
        .reopen_container_log(&container.id)
        .await
    {
        // Back where the runtime still writes, so nothing is lost from what `kubectl logs`
        // reads.
        let _ = tokio::fs::rename(&rotated, &path).await;
        return Err(error.to_string());
    }
    Ok(())
}

/// Removes the oldest rotated files of the log at `path` so that `max_files` remain with it.
/// Blocking.
fn remove_excess(path: &Path, max_files: usize) {
    let Some(dir) = path.parent() else { return };
    let siblings: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(_) => return,
    };
    for old in logrotation::excess_rotated(path, &siblings, max_files) {
        if let Err(error) = std::fs::remove_file(&old) {
            tracing::debug!(file = %old.display(), %error, "cannot remove a rotated log");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::edged::fake::Fake;
    use crate::edged::plan::plan_pod;
    use crate::edged::pod_workers::WorkerConfig;
    use crate::edged::runtimes::{RuntimeHandle, Runtimes};

    const LIMITS: LogLimits = LogLimits {
        max_bytes: 1000,
        max_files: 3,
    };

    /// A running pod `talker` on the scripted runtime; its container's log path.
    async fn talker(fake: &Fake, dir: &Path) -> (PodWorkers, PathBuf) {
        let workers = PodWorkers::new(
            Runtimes::new().with(RuntimeHandle::new(Arc::new(fake.clone()))),
            WorkerConfig::new(dir.join("pods")),
        );
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "talker", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "main", "image": "r/app:1"}]},
        }))
        .expect("pod");
        let plan = plan_pod(&pod, &dir.join("pods")).expect("plan");
        workers
            .start(plan, Default::default(), Default::default())
            .expect("started");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = workers.running().into_iter().next() {
                return (workers, c.log_path);
            }
            assert!(tokio::time::Instant::now() < deadline, "never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn rotated(log: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(log.parent().expect("dir"))
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p != log)
            .collect();
        files.sort();
        files
    }

    fn grow(log: &Path, bytes: usize) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("log");
        file.write_all(&vec![b'x'; bytes]).expect("write");
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_past_its_size_is_renamed_reopened_and_the_oldest_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Fake::default();
        let (workers, log) = talker(&fake, dir.path()).await;
        let mut failing = HashSet::new();

        // Under the limit: left alone.
        rotate_all(&workers, LIMITS, &mut failing).await;
        assert!(rotated(&log).is_empty());

        for round in 1..=4 {
            grow(&log, 1500);
            rotate_all(&workers, LIMITS, &mut failing).await;
            let kept = rotated(&log);
            // The current file and at most two rotated ones.
            assert_eq!(kept.len(), round.min(2), "round {round}: {kept:?}");
            assert!(
                std::fs::metadata(&log).expect("a fresh file").len() < 1000,
                "reopened"
            );
        }
        let reopens = fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("reopen_log "))
            .count();
        assert_eq!(reopens, 4);
        assert!(failing.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_that_cannot_reopen_keeps_its_file_where_it_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Fake::default();
        let (workers, log) = talker(&fake, dir.path()).await;
        let mut failing = HashSet::new();
        grow(&log, 1500);
        fake.set_down(true);
        rotate_all(&workers, LIMITS, &mut failing).await;
        assert!(rotated(&log).is_empty(), "renamed back");
        assert!(std::fs::metadata(&log).expect("log").len() >= 1500);
        assert_eq!(failing.len(), 1, "said once for that container");

        fake.set_down(false);
        rotate_all(&workers, LIMITS, &mut failing).await;
        assert_eq!(rotated(&log).len(), 1);
        assert!(failing.is_empty());
    }
}
