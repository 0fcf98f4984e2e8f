//! The time controllers read when what they do depends on the wall clock (a CronJob's
//! schedule), injected so that tests can move it: a test may run the control plane on a clock
//! set just before a schedule fires, or compute with paused tokio time.

use std::sync::Arc;

/// Where "now" comes from.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(Arc::new(jiff::Timestamp::now))
    }

    /// Whatever `now` says.
    pub fn from_fn(now: impl Fn() -> jiff::Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The system's clock moved by `offset`.
    pub fn offset(offset: jiff::SignedDuration) -> Self {
        Self(Arc::new(move || {
            let now = jiff::Timestamp::now();
            now.checked_add(offset).unwrap_or(now)
        }))
    }

    /// `start` plus the tokio time elapsed since this call: under paused tokio time it moves
    /// only as the test's timers advance it.
    pub fn tokio(start: jiff::Timestamp) -> Self {
        let origin = tokio::time::Instant::now();
        Self(Arc::new(move || {
            let elapsed = jiff::SignedDuration::try_from(origin.elapsed()).unwrap_or_default();
            start.checked_add(elapsed).unwrap_or(start)
        }))
    }

    /// Now.
    pub fn now(&self) -> jiff::Timestamp {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time() {
        let start: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let clock = Clock::tokio(start);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.now().to_string(), "2026-01-01T00:01:30Z");
    }
}
