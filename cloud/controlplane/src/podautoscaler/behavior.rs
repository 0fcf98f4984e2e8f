//! From the replicas the metrics propose to the replicas the target gets, as kube's
//! `normalizeDesiredReplicas` (an HPA without `behavior`) and
//! `normalizeDesiredReplicasWithBehaviors` do: pure, over a [`History`] of this HPA's past
//! recommendations and scale changes, at a time the caller gives.
//!
//! - **Stabilization**: the proposal is held between the lowest recommendation of the
//!   scale-up window and the highest of the scale-down window (defaults 0 s and the
//!   controller's downscale stabilization, 300 s), so a brief dip does not scale down;
//! - **rate**: each policy (`Pods`: add or remove N; `Percent`: N % of the replicas at the start
//!   of its period) bounds the change over its `periodSeconds`, counting the changes this
//!   controller made in that period; `selectPolicy` takes the largest change (`Max`), the
//!   smallest (`Min`) or none (`Disabled`). Without `behavior`, a scale up is bounded to
//!   twice the replicas, or 4, whichever is more;
//! - **bounds**: `minReplicas` and `maxReplicas`;
//! - and the `AbleToScale` and `ScalingLimited` conditions' reasons and messages that say
//!   which of these decided.
//!
//! The history lives in the controller's memory, as kube's does: a restart forgets it (and
//! starts each HPA with its current replicas as the one recommendation).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// Without `behavior`: a scale up reaches at most this factor of the current replicas...
const SCALE_UP_FACTOR: f64 = 2.0;
/// ... or this many, whichever is more.
const SCALE_UP_MINIMUM: f64 = 4.0;

/// `selectPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// A policy's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// A number of pods.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// One scaling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Pods or percent.
    pub kind: PolicyKind,
    /// How many pods, or what percentage.
    pub value: i32,
    /// Over how many seconds.
    pub period: i32,
}

/// One direction's rules, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `stabilizationWindowSeconds`.
    pub window: i32,
    /// `selectPolicy`.
    pub select: Select,
    /// `policies`.
    pub policies: Vec<Policy>,
}

/// `behavior`, defaults filled in as kube-apiserver's defaulting and the controller fill them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    /// `scaleUp`.
    pub up: Rules,
    /// `scaleDown`.
    pub down: Rules,
}

fn rules(spec: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(spec) = spec else {
        return default;
    };
    let select = match spec.select_policy.as_deref() {
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        Some(_) => Select::Max,
        None => default.select,
    };
    let policies = match spec.policies.as_deref() {
        Some(p) if !p.is_empty() => p
            .iter()
            .map(|p| Policy {
                kind: if p.type_ == "Percent" {
                    PolicyKind::Percent
                } else {
                    PolicyKind::Pods
                },
                value: p.value,
                period: p.period_seconds,
            })
            .collect(),
        _ => default.policies,
    };
    Rules {
        window: spec.stabilization_window_seconds.unwrap_or(default.window),
        select,
        policies,
    }
}

impl Behavior {
    /// `spec` with kube's defaults: up, no window and the more of 4 pods or 100 % per 15 s;
    /// down, the controller's `downscale` window and 100 % per 15 s.
    pub fn of(spec: &HorizontalPodAutoscalerBehavior, downscale: Duration) -> Self {
        let up = Rules {
            window: 0,
            select: Select::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: 15,
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: 15,
                },
            ],
        };
        let down = Rules {
            window: i32::try_from(downscale.as_secs()).unwrap_or(i32::MAX),
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: 15,
            }],
        };
        Self {
            up: rules(spec.scale_up.as_ref(), up),
            down: rules(spec.scale_down.as_ref(), down),
        }
    }
}

/// What one HPA recommended and changed lately.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Recommendations (before stabilization) and when.
    recommendations: Vec<(i32, Timestamp)>,
    /// Scale ups: how many replicas were added, and when.
    ups: Vec<(i32, Timestamp)>,
    /// Scale downs: how many were removed, and when.
    downs: Vec<(i32, Timestamp)>,
}

/// The outcome, with the conditions that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The replicas to scale to.
    pub replicas: i32,
    /// `AbleToScale` (True) reason.
    pub able_reason: &'static str,
    /// Its message.
    pub able_message: &'static str,
    /// Whether `ScalingLimited` is True.
    pub limited: bool,
    /// Its reason.
    pub limited_reason: &'static str,
    /// Its message.
    pub limited_message: &'static str,
}

fn before(now: Timestamp, secs: i64) -> Timestamp {
    now.checked_sub(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MIN)
}

impl History {
    /// kube's `recordInitialRecommendation`: the first look at an HPA counts its current
    /// replicas as recommended.
    pub fn init(&mut self, current: i32, now: Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push((current, now));
        }
    }

    /// Records `recommendation`, over the sample older than `cutoff` if there is one.
    fn remember(&mut self, recommendation: i32, old: Option<usize>, now: Timestamp) {
        match old.and_then(|i| self.recommendations.get_mut(i)) {
            Some(slot) => *slot = (recommendation, now),
            None => self.recommendations.push((recommendation, now)),
        }
    }

    /// The replicas added (ups) or removed (downs) within the last `period` seconds.
    fn changed(events: &[(i32, Timestamp)], period: i32, now: Timestamp) -> i32 {
        let cutoff = before(now, i64::from(period));
        events
            .iter()
            .filter(|(_, at)| *at > cutoff)
            .map(|(n, _)| *n)
            .fold(0, i32::saturating_add)
    }

    /// kube's `storeScaleEvent`: remembers a change from `previous` to `new` replicas (only
    /// with `behavior`, whose rate policies read them).
    pub fn record_scale(
        &mut self,
        behavior: Option<&Behavior>,
        previous: i32,
        new: i32,
        now: Timestamp,
    ) {
        let Some(behavior) = behavior else {
            return;
        };
        let (events, rules, change) = if new > previous {
            (&mut self.ups, &behavior.up, new - previous)
        } else {
            (&mut self.downs, &behavior.down, previous - new)
        };
        let longest = rules.policies.iter().map(|p| p.period).max().unwrap_or(0);
        let cutoff = before(now, i64::from(longest));
        events.retain(|(_, at)| *at > cutoff);
        events.push((change, now));
    }

    /// kube's `normalizeDesiredReplicas` (`behavior` absent) or
    /// `normalizeDesiredReplicasWithBehaviors`: the replicas to scale to from `current` when the
    /// metrics propose `desired`.
    #[allow(clippy::too_many_arguments)]
    pub fn normalize(
        &mut self,
        behavior: Option<&Behavior>,
        downscale: Duration,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        match behavior {
            None => self.without_behavior(downscale, current, desired, min, max, now),
            Some(b) => self.with_behavior(b, current, desired, min, max, now),
        }
    }

    fn without_behavior(
        &mut self,
        downscale: Duration,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        // kube's `stabilizeRecommendation`: the highest of the window.
        let cutoff = before(now, i64::try_from(downscale.as_secs()).unwrap_or(i64::MAX));
        let mut stabilized = desired;
        let mut old = None;
        for (i, (recommendation, at)) in self.recommendations.iter().enumerate() {
            if *at < cutoff {
                old = Some(i);
            } else if *recommendation > stabilized {
                stabilized = *recommendation;
            }
        }
        self.remember(desired, old, now);
        let (able_reason, able_message) = if stabilized == desired {
            ("ReadyForNewScale", "recommended size matches current size")
        } else {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        // kube's `convertDesiredReplicasWithRules`.
        let up_limit = (SCALE_UP_FACTOR * f64::from(current)).max(SCALE_UP_MINIMUM);
        let up_limit = if up_limit >= f64::from(i32::MAX) {
            i32::MAX
        } else {
            up_limit as i32
        };
        let (most, reason, message) = if max > up_limit {
            (
                up_limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        let (replicas, limited_reason, limited_message) = if stabilized < min {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        } else if stabilized > most {
            (most, reason, message)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        Normalized {
            replicas,
            able_reason,
            able_message,
            limited: replicas != stabilized,
            limited_reason,
            limited_message,
        }
    }

    fn with_behavior(
        &mut self,
        behavior: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        // kube's `stabilizeRecommendationWithBehaviors`.
        let up_cutoff = before(now, i64::from(behavior.up.window));
        let down_cutoff = before(now, i64::from(behavior.down.window));
        let (mut up, mut down) = (desired, desired);
        let mut old = None;
        for (i, (recommendation, at)) in self.recommendations.iter().enumerate() {
            if *at > up_cutoff {
                up = up.min(*recommendation);
            }
            if *at > down_cutoff {
                down = down.max(*recommendation);
            }
            if *at < up_cutoff && *at < down_cutoff {
                old = Some(i);
            }
        }
        let stabilized = current.max(up).min(down);
        self.remember(desired, old, now);
        let (able_reason, able_message) = if stabilized == desired {
            ("ReadyForNewScale", "recommended size matches current size")
        } else if desired >= current {
            (
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        // kube's `convertDesiredReplicasWithBehaviorRate`.
        let mut out = (
            stabilized,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        );
        if stabilized > current {
            let limit = self.up_limit(current, &behavior.up, now).max(current);
            let (most, reason, message) = if max > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if stabilized > most {
                out = (most, reason, message);
            }
        } else if stabilized < current {
            let limit = self.down_limit(current, &behavior.down, now).min(current);
            let (least, reason, message) = if min < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if stabilized < least {
                out = (least, reason, message);
            }
        }
        Normalized {
            replicas: out.0,
            able_reason,
            able_message,
            limited: out.0 != stabilized,
            limited_reason: out.1,
            limited_message: out.2,
        }
    }

    /// The replicas at the start of `policy`'s period.
    fn period_start(&self, current: i32, policy: &Policy, now: Timestamp) -> i32 {
        current - Self::changed(&self.ups, policy.period, now)
            + Self::changed(&self.downs, policy.period, now)
    }

    /// kube's `calculateScaleUpLimitWithScalingRules`.
    fn up_limit(&self, current: i32, rules: &Rules, now: Timestamp) -> i32 {
        let pick: fn(i32, i32) -> i32 = match rules.select {
            Select::Disabled => return current,
            Select::Min => std::cmp::min,
            Select::Max => std::cmp::max,
        };
        let mut result = if rules.select == Select::Min {
            i32::MAX
        } else {
            i32::MIN
        };
        for policy in &rules.policies {
            let start = self.period_start(current, policy, now);
            let proposed = match policy.kind {
                PolicyKind::Pods => start.saturating_add(policy.value),
                PolicyKind::Percent => {
                    let p = (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil();
                    if p >= f64::from(i32::MAX) {
                        i32::MAX
                    } else {
                        p as i32
                    }
                }
            };
            result = pick(result, proposed);
        }
        result
    }

    /// kube's `calculateScaleDownLimitWithBehaviors`.
    fn down_limit(&self, current: i32, rules: &Rules, now: Timestamp) -> i32 {
        let pick: fn(i32, i32) -> i32 = match rules.select {
            Select::Disabled => return current,
            Select::Min => std::cmp::max,
            Select::Max => std::cmp::min,
        };
        let mut result = if rules.select == Select::Min {
            i32::MIN
        } else {
            i32::MAX
        };
        for policy in &rules.policies {
            let start = self.period_start(current, policy, now);
            let proposed = match policy.kind {
                PolicyKind::Pods => start.saturating_sub(policy.value),
                PolicyKind::Percent => {
                    (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32
                }
            };
            result = pick(result, proposed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    fn at(secs: i64) -> Timestamp {
        "2026-12-05T12:00:00Z"
            .parse::<Timestamp>()
            .expect("time")
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .expect("time")
    }

    fn behavior(spec: serde_json::Value) -> Behavior {
        let spec: HorizontalPodAutoscalerBehavior = serde_json::from_value(spec).expect("behavior");
        Behavior::of(&spec, FIVE_MINUTES)
    }

    #[test]
    fn defaults_are_kubes() {
        let b = behavior(json!({}));
        assert_eq!(b.up.window, 0);
        assert_eq!(b.down.window, 300);
        assert_eq!(b.up.policies.len(), 2);
        assert_eq!(
            b.down.policies,
            vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: 15
            }]
        );
        let b = behavior(
            json!({"scaleDown": {"stabilizationWindowSeconds": 5, "selectPolicy": "Disabled"}}),
        );
        assert_eq!(b.down.window, 5);
        assert_eq!(b.down.select, Select::Disabled);
        assert_eq!(b.down.policies.len(), 1, "policies keep their default");
    }

    #[test]
    fn without_behavior_a_scale_down_waits_out_the_window() {
        let mut h = History::default();
        h.init(5, at(0));
        // Metrics say 2 at once: the 5 recorded at the start holds for five minutes.
        let n = h.normalize(None, FIVE_MINUTES, 5, 2, 1, 10, at(15));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.able_reason, "ScaleDownStabilized");
        assert!(!n.limited);
        assert_eq!(n.limited_reason, "DesiredWithinRange");
        // Past the window, the highest recent one (2) wins.
        let n = h.normalize(None, FIVE_MINUTES, 5, 2, 1, 10, at(301));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able_reason, "ReadyForNewScale");
    }

    #[test]
    fn without_behavior_a_scale_up_is_bounded_to_double_or_four() {
        let mut h = History::default();
        h.init(1, at(0));
        let n = h.normalize(None, FIVE_MINUTES, 1, 10, 1, 20, at(15));
        assert_eq!(n.replicas, 4);
        assert!(n.limited);
        assert_eq!(n.limited_reason, "ScaleUpLimit");
        let n = h.normalize(None, FIVE_MINUTES, 4, 10, 1, 6, at(30));
        assert_eq!(n.replicas, 6);
        assert_eq!(n.limited_reason, "TooManyReplicas");
        assert_eq!(
            n.limited_message,
            "the desired replica count is more than the maximum replica count"
        );
        let n = h.normalize(None, FIVE_MINUTES, 4, 0, 2, 6, at(30));
        assert_eq!(n.replicas, 6, "stabilized at the window's highest");
    }

    #[test]
    fn with_behavior_policies_bound_the_rate() {
        // Up: at most 1 pod per 60 s; down: no window, 50 % per 30 s.
        let b = behavior(json!({
            "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            "scaleDown": {"stabilizationWindowSeconds": 0,
                          "policies": [{"type": "Percent", "value": 50, "periodSeconds": 30}]},
        }));
        let mut h = History::default();
        h.init(2, at(0));
        let n = h.normalize(Some(&b), FIVE_MINUTES, 2, 8, 1, 10, at(1));
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited_reason, "ScaleUpLimit");
        h.record_scale(Some(&b), 2, 3, at(1));
        // Within the same minute, no more.
        let n = h.normalize(Some(&b), FIVE_MINUTES, 3, 8, 1, 10, at(30));
        assert_eq!(n.replicas, 3);
        assert!(n.limited);
        // A minute later, one more.
        let n = h.normalize(Some(&b), FIVE_MINUTES, 3, 8, 1, 10, at(62));
        assert_eq!(n.replicas, 4);
        h.record_scale(Some(&b), 3, 4, at(62));
        // Down to 1 within 30 s of the scale up: the period started at 3, half of it is 1.
        let mut early = h.clone();
        assert_eq!(
            early
                .normalize(Some(&b), FIVE_MINUTES, 4, 1, 1, 10, at(70))
                .replicas,
            1
        );
        // Later: half per 30 s → 2, then 1.
        let n = h.normalize(Some(&b), FIVE_MINUTES, 4, 1, 1, 10, at(100));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.limited_reason, "ScaleDownLimit");
        h.record_scale(Some(&b), 4, 2, at(100));
        let n = h.normalize(Some(&b), FIVE_MINUTES, 2, 1, 1, 10, at(110));
        assert_eq!(n.replicas, 2, "the period still holds the last change");
        let n = h.normalize(Some(&b), FIVE_MINUTES, 2, 1, 1, 10, at(131));
        assert_eq!(n.replicas, 1);
        assert_eq!(n.limited_reason, "DesiredWithinRange");
    }

    #[test]
    fn with_behavior_select_policies() {
        let policies = json!([{"type": "Pods", "value": 4, "periodSeconds": 60},
                              {"type": "Percent", "value": 100, "periodSeconds": 60}]);
        let mut h = History::default();
        let max = behavior(json!({"scaleUp": {"policies": policies, "selectPolicy": "Max"}}));
        assert_eq!(
            h.normalize(Some(&max), FIVE_MINUTES, 10, 100, 1, 100, at(0))
                .replicas,
            20
        );
        let mut h = History::default();
        let min = behavior(json!({"scaleUp": {"policies": policies, "selectPolicy": "Min"}}));
        assert_eq!(
            h.normalize(Some(&min), FIVE_MINUTES, 10, 100, 1, 100, at(0))
                .replicas,
            14
        );
        let mut h = History::default();
        let off = behavior(json!({"scaleUp": {"selectPolicy": "Disabled"}}));
        let n = h.normalize(Some(&off), FIVE_MINUTES, 10, 100, 1, 100, at(0));
        assert_eq!(n.replicas, 10);
        assert!(n.limited);
        // Down disabled, the minimum still applies only through the bounds.
        let mut h = History::default();
        let off = behavior(
            json!({"scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}}),
        );
        assert_eq!(
            h.normalize(Some(&off), FIVE_MINUTES, 10, 1, 1, 100, at(0))
                .replicas,
            10
        );
    }

    #[test]
    fn with_behavior_stabilization_windows() {
        // Up window 60 s: the lowest recommendation of the last minute.
        let b = behavior(json!({"scaleUp": {"stabilizationWindowSeconds": 60},
                                "scaleDown": {"stabilizationWindowSeconds": 30}}));
        let mut h = History::default();
        h.init(2, at(0));
        let n = h.normalize(Some(&b), FIVE_MINUTES, 2, 6, 1, 10, at(10));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able_reason, "ScaleUpStabilized");
        let n = h.normalize(Some(&b), FIVE_MINUTES, 2, 6, 1, 10, at(61));
        assert_eq!(n.replicas, 6, "only 6s in the last minute");
        assert_eq!(n.able_reason, "ReadyForNewScale");
        // Down window 30 s: the highest of the last 30 s.
        let n = h.normalize(Some(&b), FIVE_MINUTES, 6, 1, 1, 10, at(70));
        assert_eq!(n.replicas, 6);
        assert_eq!(n.able_reason, "ScaleDownStabilized");
        let n = h.normalize(Some(&b), FIVE_MINUTES, 6, 1, 1, 10, at(100));
        assert_eq!(
            n.replicas, 1,
            "after the window (and 100 % per 15 s by default)"
        );
        assert_eq!(n.limited_reason, "DesiredWithinRange");
    }
}
