//! Restart policies and the crash-loop backoff, as kubelet applies them.
//!
//! Kubelet waits 10 s before the first restart of a failed container, doubles the wait after each
//! further exit up to 5 minutes, and forgets the history once a container has run for 10 minutes.
//! [`CrashLoopBackoff`] is that rule with its durations as parameters so tests can shrink them.
//! It is not a retry crate's backoff (`backon`, which the edge and the mapper use): it resets on
//! how long the container *ran*, has no jitter, and its state is what users see as the
//! `CrashLoopBackOff` reason, so it follows kubelet's code rather than a general schedule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The pod's `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Restart after any exit (the Kubernetes default).
    #[default]
    Always,
    /// Restart after a non-zero exit only.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the API's spelling; `None` means the default, `Always`.
    pub fn from_spec(value: Option<&str>) -> Result<Self, UnknownRestartPolicy> {
        match value {
            None | Some("Always") => Ok(Self::Always),
            Some("OnFailure") => Ok(Self::OnFailure),
            Some("Never") => Ok(Self::Never),
            Some(other) => Err(UnknownRestartPolicy(other.to_owned())),
        }
    }

    /// Whether a container that exited with `exit_code` is to be started again.
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// A restart policy the API does not define.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown restartPolicy {0:?}: expected Always, OnFailure or Never")]
pub struct UnknownRestartPolicy(pub String);

/// Durations of the crash-loop backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffSettings {
    /// The wait before the first restart.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A run at least this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for BackoffSettings {
    /// Kubelet's values: 10 s, doubling to 5 min, reset after 10 min of running.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// The backoff state of one container.
#[derive(Debug, Clone)]
pub struct CrashLoopBackoff {
    settings: BackoffSettings,
    next: Duration,
}

impl CrashLoopBackoff {
    /// A fresh backoff.
    pub fn new(settings: BackoffSettings) -> Self {
        Self {
            settings,
            next: settings.initial,
        }
    }

    /// Records an exit after a run of `ran_for` and returns how long to wait before restarting.
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.settings.reset_after {
            self.next = self.settings.initial;
        }
        let wait = self.next.min(self.settings.max);
        self.next = (self.next * 2).min(self.settings.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide_restarts() {
        assert!(RestartPolicy::Always.restarts_after(0));
        assert!(RestartPolicy::OnFailure.restarts_after(2));
        assert!(!RestartPolicy::OnFailure.restarts_after(0));
        assert!(!RestartPolicy::Never.restarts_after(1));
        assert_eq!(RestartPolicy::from_spec(None), Ok(RestartPolicy::Always));
        assert!(RestartPolicy::from_spec(Some("Sometimes")).is_err());
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = CrashLoopBackoff::new(BackoffSettings::default());
        let quick = Duration::from_secs(1);
        let waits: Vec<u64> = (0..7).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.after_exit(Duration::from_secs(601)).as_secs(), 10);
        assert_eq!(b.after_exit(quick).as_secs(), 20);
    }
}
