//! Resource limits from the pod spec, enforced on each instance.
//!
//! - **Memory** (`resources.limits.memory`): the sum of an instance's linear memories may not
//!   grow past the limit. A `memory.grow` beyond it stops the instance with a trap the runtime
//!   reports as `OOMKilled`, exit code 137, as the kernel's OOM killer would be reported.
//! - **CPU** (`resources.limits.cpu`): a quota of guest execution time per 100 ms period, like
//!   the CFS quota kubelet sets for containers: `500m` lets the guest execute for 50 ms of every
//!   100 ms. Time is measured from entering Wasm to leaving it for a host call or returning (call
//!   hooks), so time a guest spends blocked in the host (sleeping, waiting for a message) does
//!   not count. At every epoch tick the guest yields to the scheduler, and if it has used its
//!   quota it sleeps until the period ends. A limit above one core (`2`) cannot be exceeded by a
//!   single-threaded guest and so never throttles.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, UpdateDeadline};

/// The CPU accounting period.
pub const CPU_PERIOD: Duration = Duration::from_millis(100);

/// An instance tried to grow its memory past its limit.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "memory limit exceeded: the instance asked for {requested} bytes of linear memory; its limit is {limit} bytes"
)]
pub struct MemoryLimitExceeded {
    /// What the instance would have had.
    pub requested: usize,
    /// The limit.
    pub limit: usize,
}

/// Figures of one container that the runtime reads while its instances run.
#[derive(Debug, Default)]
pub struct ContainerMeters {
    /// Guest execution time, in nanoseconds, over every instance.
    pub cpu_nanos: AtomicU64,
    /// Linear memory of the current (or last) instance, in bytes.
    pub memory_bytes: AtomicUsize,
    /// Handler invocations made.
    pub invocations: AtomicU64,
    /// Handler invocations that returned an error, trapped or timed out.
    pub failures: AtomicU64,
}

/// Tracks and caps an instance's linear memory.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    limit: Option<usize>,
    in_use: usize,
    meters: Option<Arc<ContainerMeters>>,
}

impl MemoryLimiter {
    /// A limiter with an optional cap in bytes, reporting into `meters`.
    pub fn new(limit: Option<usize>, meters: Option<Arc<ContainerMeters>>) -> Self {
        Self {
            limit,
            in_use: 0,
            meters,
        }
    }

    /// Bytes of linear memory the instance holds.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self.in_use.saturating_sub(current).saturating_add(desired);
        if let Some(limit) = self.limit.filter(|l| requested > *l) {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested,
                limit,
            }));
        }
        self.in_use = requested;
        if let Some(m) = &self.meters {
            m.memory_bytes.store(requested, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are bounded by the pooling allocator's slot size.
        Ok(true)
    }
}

/// Guest execution time and the CPU quota of one instance.
#[derive(Debug)]
pub struct CpuAccount {
    quota: Option<Duration>,
    period_start: Instant,
    used_in_period: Duration,
    total: Duration,
    in_guest_since: Option<Instant>,
    meters: Option<Arc<ContainerMeters>>,
    // Set by the yield future when the guest resumes after an epoch yield.
    resumed_at: Arc<Mutex<Option<Instant>>>,
}

impl CpuAccount {
    /// An account with `millicores` of quota (`None`: unlimited), reporting into `meters`.
    pub fn new(millicores: Option<u64>, meters: Option<Arc<ContainerMeters>>) -> Self {
        let quota = millicores.filter(|m| *m < 1000).map(|m| {
            CPU_PERIOD
                .mul_f64(m as f64 / 1000.0)
                .max(Duration::from_millis(1))
        });
        Self {
            quota,
            period_start: Instant::now(),
            used_in_period: Duration::ZERO,
            total: Duration::ZERO,
            in_guest_since: None,
            meters,
            resumed_at: Arc::default(),
        }
    }

    /// Total guest execution time so far.
    pub fn total(&self) -> Duration {
        self.total + self.in_guest_since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// The guest starts (or resumes) executing.
    pub fn enter(&mut self, now: Instant) {
        self.in_guest_since = Some(now);
    }

    /// The guest stops executing (host call, return).
    pub fn leave(&mut self, now: Instant) {
        let resumed = self
            .resumed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let since = match (self.in_guest_since.take(), resumed) {
            (Some(s), Some(r)) => Some(s.max(r)),
            (s, r) => s.or(r),
        };
        if let Some(since) = since {
            let ran = now.saturating_duration_since(since);
            self.used_in_period += ran;
            self.total += ran;
            if let Some(m) = &self.meters {
                let nanos = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
                m.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
            }
        }
    }

    /// Called at each epoch tick from inside the guest: yields, and sleeps out the period if
    /// the quota is used up.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        self.leave(now);
        if now.duration_since(self.period_start) >= CPU_PERIOD {
            self.period_start = now;
            self.used_in_period = Duration::ZERO;
        }
        let resumed = self.resumed_at.clone();
        let pause = match self.quota {
            Some(q) if self.used_in_period >= q => {
                let wait = (self.period_start + CPU_PERIOD).saturating_duration_since(now);
                self.period_start += CPU_PERIOD;
                self.used_in_period = Duration::ZERO;
                wait
            }
            _ => Duration::ZERO,
        };
        UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                if pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
                *resumed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_capped_across_memories() {
        let mut l = MemoryLimiter::new(Some(100), None);
        assert!(l.memory_growing(0, 60, None).expect("fits"));
        assert!(l.memory_growing(0, 40, None).expect("fits"));
        let e = l.memory_growing(40, 41, None).expect_err("over");
        assert_eq!(
            e.downcast_ref::<MemoryLimitExceeded>(),
            Some(&MemoryLimitExceeded {
                requested: 101,
                limit: 100
            })
        );
        assert_eq!(l.in_use(), 100);
        let mut unlimited = MemoryLimiter::new(None, None);
        assert!(
            unlimited
                .memory_growing(0, usize::MAX / 2, None)
                .expect("no limit")
        );
    }

    #[test]
    fn quota_is_a_share_of_the_period() {
        assert_eq!(
            CpuAccount::new(Some(500), None).quota,
            Some(Duration::from_millis(50))
        );
        assert_eq!(CpuAccount::new(Some(1000), None).quota, None);
        assert_eq!(CpuAccount::new(None, None).quota, None);
    }

    #[test]
    fn only_guest_time_counts() {
        let mut a = CpuAccount::new(Some(100), None);
        let t0 = Instant::now();
        a.enter(t0);
        a.leave(t0 + Duration::from_millis(3));
        // Time between leave and the next enter (a host call) is not counted.
        a.enter(t0 + Duration::from_millis(50));
        a.leave(t0 + Duration::from_millis(52));
        assert_eq!(a.total, Duration::from_millis(5));
    }
}
