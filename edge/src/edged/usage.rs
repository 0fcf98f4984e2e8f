//! Resource usage, sampled for `kubectl top` and cloudcore's metrics.
//!
//! Every `usage_interval` (15 s by default, metrics-server's resolution) [`sample_loop`] reads
//! the node's figures as the kubelet reports them for a node (CPU time used since boot from
//! `/proc/stat`, the memory in use from `/proc/meminfo`) and asks each runtime for every running
//! container's (`RuntimeService::container_stats`: the CRI runtime's come from containerd's
//! cgroups, the Wasm runtime's from its own meters: guest execution time and linear memory),
//! each stamped with the time it was read. The sample replaces the previous one in
//! the [`UsageFeed`], a latest-value channel that EdgeHub sends from while it is connected: not
//! stored, not acknowledged, not resent after a reconnect (`docs/PROTOCOL.md`, usage). The
//! cloud turns two samples into rates.
//!
//! The loop runs in Edged's background set and ends with it, as the node status loop does.

use std::sync::Arc;
use std::time::Duration;

use wedge_core::protocol::usage::{ContainerSample, Measurement, UsageSample};

use super::pod_workers::{PodWorkers, RunningContainer};

/// How long a runtime may take to give one container's figures: a runtime that hangs leaves
/// its containers out of this sample, not the others.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// Containers asked at once.
const CONCURRENT_STATS: usize = 8;
/// `USER_HZ`: the unit of `/proc/stat`'s times. Linux fixes it at 100 on every architecture
/// edges run (its `sysconf(_SC_CLK_TCK)`), whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

/// The newest resource usage sample (Edged → EdgeHub): latest wins, nothing queues.
pub type UsageFeed = tokio::sync::watch::Sender<Option<Arc<UsageSample>>>;

/// A feed with no sample yet.
pub fn feed() -> Arc<UsageFeed> {
    Arc::new(tokio::sync::watch::Sender::new(None))
}

/// Samples every `interval`, the first at once, until the task is dropped.
pub async fn sample_loop(workers: PodWorkers, interval: Duration, feed: Arc<UsageFeed>) {
    let mut tick = tokio::time::interval(interval);
    // A slow sample delays the next one rather than bunching samples up: a window shorter than
    // the interval would only be noisier.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sample = sample(&workers).await;
        tracing::trace!(
            containers = sample.containers.len(),
            node = sample.node.is_some(),
            "usage sampled"
        );
        feed.send_replace(Some(Arc::new(sample)));
    }
}

/// One sample of the node and every running container.
pub async fn sample(workers: &PodWorkers) -> UsageSample {
    use futures::StreamExt;
    let node = match tokio::task::spawn_blocking(read_node).await {
        Ok(Ok(node)) => Some(node),
        Ok(Err(error)) => {
            tracing::debug!(%error, "no node usage in this sample");
            None
        }
        Err(error) => {
            tracing::debug!(%error, "no node usage in this sample");
            None
        }
    };
    let containers = futures::stream::iter(workers.running())
        .map(container)
        .buffer_unordered(CONCURRENT_STATS)
        .filter_map(std::future::ready)
        .collect()
        .await;
    UsageSample { node, containers }
}

async fn container(c: RunningContainer) -> Option<ContainerSample> {
    let stats = match tokio::time::timeout(STATS_TIMEOUT, c.handle.runtime.container_stats(&c.id))
        .await
    {
        Ok(Ok(stats)) => stats,
        Ok(Err(error)) => {
            // Stopped since it was listed, or its runtime is down: left out of this one.
            tracing::debug!(pod = c.pod, container = c.container, %error, "no usage for a container");
            return None;
        }
        Err(_) => {
            tracing::debug!(
                pod = c.pod,
                container = c.container,
                "no usage for a container: its runtime did not answer in time"
            );
            return None;
        }
    };
    Some(ContainerSample {
        namespace: c.namespace,
        pod: c.pod,
        uid: c.uid,
        container: c.container,
        id: c.id,
        measurement: Measurement {
            time: now_ms(),
            cpu_nanos: u64::try_from(stats.cpu.as_nanos()).unwrap_or(u64::MAX),
            memory_bytes: stats.memory_bytes,
        },
    })
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Why the node's figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeUsageError {
    /// A file under `/proc`.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A file that does not read as expected.
    #[error("{path} has no {what}")]
    Parse {
        /// The file.
        path: &'static str,
        /// What was looked for.
        what: &'static str,
    },
}

/// The node's figures now. Blocking (two small reads of `/proc`).
fn read_node() -> Result<Measurement, NodeUsageError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| NodeUsageError::Read { path, source })
    };
    let stat = read("/proc/stat")?;
    let meminfo = read("/proc/meminfo")?;
    Ok(Measurement {
        time: now_ms(),
        cpu_nanos: cpu_nanos(&stat).ok_or(NodeUsageError::Parse {
            path: "/proc/stat",
            what: "cpu line",
        })?,
        memory_bytes: memory_in_use(&meminfo).ok_or(NodeUsageError::Parse {
            path: "/proc/meminfo",
            what: "MemTotal and MemAvailable",
        })?,
    })
}

/// CPU time used since boot, in core-nanoseconds, from `/proc/stat`'s `cpu` line: every state
/// but idle and iowait (user, nice, system, irq, softirq, steal; guest time is counted in user
/// already).
pub fn cpu_nanos(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let ticks: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .fold(0u64, |sum, t| sum.saturating_add(*t));
    if fields.len() < 4 {
        return None;
    }
    Some(ticks.saturating_mul(1_000_000_000 / USER_HZ))
}

/// Memory in use, in bytes: `MemTotal - MemAvailable` from `/proc/meminfo` (what the system
/// could not hand out without swapping: the node's working set, near enough to the kubelet's
/// root-cgroup figure).
pub fn memory_in_use(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some(field("MemTotal")?.saturating_sub(field("MemAvailable")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_figures_read_from_proc() {
        let stat = "cpu  100 5 50 9000 20 3 2 1 7 0\ncpu0 50 2 25 4500 10 1 1 0 0 0\nintr 1 2 3\n";
        // user 100 + nice 5 + system 50 + irq 3 + softirq 2 + steal 1 = 161 ticks = 1.61 s.
        assert_eq!(cpu_nanos(stat), Some(1_610_000_000));
        assert_eq!(
            cpu_nanos("cpu0 1 2 3 4\n"),
            None,
            "only the total line counts"
        );
        assert_eq!(cpu_nanos("cpu  one two\n"), None);
        assert_eq!(cpu_nanos(""), None);
        let meminfo = "MemTotal:        8000000 kB\nMemFree:         1000000 kB\nMemAvailable:    6000000 kB\n";
        assert_eq!(memory_in_use(meminfo), Some(2_000_000 * 1024));
        assert_eq!(memory_in_use("MemTotal: 10 kB\n"), None);
    }

    #[test]
    fn this_machine_has_figures() {
        let node = read_node().expect("/proc is readable on Linux");
        assert!(node.cpu_nanos > 0 && node.memory_bytes > 0, "{node:?}");
    }
}
