//! The HorizontalPodAutoscaler controller's flags, named as kube-controller-manager names them:
//! one definition for `wedge controllers`, `wedge apiserver --controllers`, `wedge up` and
//! `cloudcore`.

use std::time::Duration;

use clap::Args;
use wedge_controlplane::podautoscaler::Config;

/// How HorizontalPodAutoscalers are acted on.
#[derive(Args, Debug, Clone)]
pub struct PodAutoscalerArgs {
    /// How often each HorizontalPodAutoscaler is looked at (`15s`, `1m`).
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub horizontal_pod_autoscaler_sync_period: Duration,
    /// How long a scale down waits for recommendations to stay low, for HPAs whose behavior
    /// sets no window.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// How far from 1 the ratio of usage to target must be for the replicas to change.
    #[arg(long, default_value_t = 0.1)]
    pub horizontal_pod_autoscaler_tolerance: f64,
    /// How long after a pod starts its CPU samples may still be from its start-up.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// How long after a pod starts it may still become ready for the first time.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub horizontal_pod_autoscaler_initial_readiness_delay: Duration,
}

/// A duration as [`crate::parse_duration`] reads it, or `0`.
fn duration(text: &str) -> Result<Duration, String> {
    if !text.is_empty()
        && text
            .trim_end_matches(['s', 'm', 'h', 'd'])
            .bytes()
            .all(|b| b == b'0')
    {
        return Ok(Duration::ZERO);
    }
    crate::parse_duration(text)
}

impl PodAutoscalerArgs {
    /// The controller's settings (a sync period of at least a second).
    pub fn config(&self) -> Config {
        Config {
            sync_period: self
                .horizontal_pod_autoscaler_sync_period
                .max(Duration::from_secs(1)),
            tolerance: self.horizontal_pod_autoscaler_tolerance.max(0.0),
            cpu_initialization_period: self.horizontal_pod_autoscaler_cpu_initialization_period,
            initial_readiness_delay: self.horizontal_pod_autoscaler_initial_readiness_delay,
            downscale_stabilization: self.horizontal_pod_autoscaler_downscale_stabilization,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_kube_controller_manager_takes_them_and_zero() {
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert!(duration("soon").is_err());
    }
}
