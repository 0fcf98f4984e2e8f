//! What a pod may touch on its edge: devices, MQTT topics, and which events call its handlers.
//!
//! A pod grants nothing by default. Its annotations name what it may use; the host enforces them
//! on every WIT call, so a pod cannot reach a device or topic its manifest does not show:
//!
//! | annotation | value | meaning |
//! |---|---|---|
//! | `devices.wedge.io/read` | `thermo-1, fan-1` | may list and read these devices' twins |
//! | `devices.wedge.io/write` | `fan-1` | may also set desired values (implies read) |
//! | `messaging.wedge.io/publish` | `alerts/#, sensors/+/temp` | may publish on topics these filters match |
//! | `messaging.wedge.io/subscribe` | `commands/#` | may subscribe within these filters |
//! | `handlers.wedge.io/twin` | `thermo-1/temperature, fan-1/*` | handler runs on these twin changes |
//! | `handlers.wedge.io/topics` | `commands/#` | handler runs on messages here (must be subscribable) |
//! | `handlers.wedge.io/timer` | `30s` | handler's timer fires at this interval |
//! | `mqtt.wedge.io/login` | `thermo-mapper-login` | a `kubernetes.io/basic-auth` Secret: the pod's login on the edge's MQTT broker, limited to these grants |
//!
//! Annotations are pod-wide: every container of the pod gets the same grants and triggers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::topic::{self, TopicError};

/// Annotation: devices the pod may read.
pub const DEVICES_READ: &str = "devices.wedge.io/read";
/// Annotation: devices the pod may read and drive.
pub const DEVICES_WRITE: &str = "devices.wedge.io/write";
/// Annotation: topic filters the pod may publish on.
pub const PUBLISH: &str = "messaging.wedge.io/publish";
/// Annotation: topic filters the pod may subscribe within.
pub const SUBSCRIBE: &str = "messaging.wedge.io/subscribe";
/// Annotation: twin properties (`device/property`, `device/*`) that trigger the handler.
pub const HANDLER_TWIN: &str = "handlers.wedge.io/twin";
/// Annotation: topic filters whose messages trigger the handler.
pub const HANDLER_TOPICS: &str = "handlers.wedge.io/topics";
/// Annotation: the handler's timer interval.
pub const HANDLER_TIMER: &str = "handlers.wedge.io/timer";
/// Annotation: a `kubernetes.io/basic-auth` Secret in the pod's namespace whose `username` and
/// `password` log the pod's own MQTT clients in to the edge's embedded broker, within the pod's
/// grants. The cloud sends the Secret to the pod's edge as it sends the Secrets a pod mounts.
pub const MQTT_LOGIN: &str = "mqtt.wedge.io/login";

/// A grant annotation that does not parse or contradicts another.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// A topic filter is malformed.
    #[error("annotation {annotation}: {source}")]
    Topic {
        /// Which annotation.
        annotation: &'static str,
        /// What is wrong with the filter.
        source: TopicError,
    },
    /// A twin trigger is not `device/property`.
    #[error("annotation {HANDLER_TWIN}: {0:?} is not of the form device/property or device/*")]
    BadTwinTrigger(String),
    /// A trigger names something the pod may not read.
    #[error("annotation {annotation}: {what} is not granted by {needs}")]
    TriggerNotGranted {
        /// Which trigger annotation.
        annotation: &'static str,
        /// The device or filter.
        what: String,
        /// The annotation that would have to grant it.
        needs: &'static str,
    },
    /// The timer interval does not parse or is zero.
    #[error("annotation {HANDLER_TIMER}: {0:?} is not a duration such as 500ms, 30s, 5m or 1h")]
    BadTimer(String),
}

/// Whether a pod may only read a device or also set its desired values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceAccess {
    /// List and read the twin.
    Read,
    /// Read, and set desired values.
    ReadWrite,
}

/// A twin property that triggers the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinTrigger {
    /// The device's name.
    pub device: String,
    /// The property, or `None` for every property of the device.
    pub property: Option<String>,
}

impl TwinTrigger {
    /// Whether a change to `device`/`property` fires this trigger.
    pub fn fires_on(&self, device: &str, property: &str) -> bool {
        self.device == device && self.property.as_deref().is_none_or(|p| p == property)
    }
}

/// Everything a pod may touch, parsed from its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodGrants {
    /// Devices and how the pod may use them.
    pub devices: BTreeMap<String, DeviceAccess>,
    /// Filters the pod may publish on.
    pub publish: Vec<String>,
    /// Filters the pod may subscribe within.
    pub subscribe: Vec<String>,
    /// What calls the handler (for handler components).
    pub triggers: HandlerTriggers,
}

/// The events that call a handler component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerTriggers {
    /// Twin properties.
    pub twin: Vec<TwinTrigger>,
    /// Topic filters.
    pub topics: Vec<String>,
    /// Timer interval.
    pub timer: Option<Duration>,
}

fn list(annotations: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    annotations
        .get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn filters(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<String>, GrantError> {
    let out = list(annotations, key);
    for f in &out {
        topic::validate_filter(f).map_err(|source| GrantError::Topic {
            annotation: key,
            source,
        })?;
    }
    Ok(out)
}

impl PodGrants {
    /// Parses the grants from a pod's annotations.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, GrantError> {
        let mut devices = BTreeMap::new();
        for d in list(annotations, DEVICES_READ) {
            devices.insert(d, DeviceAccess::Read);
        }
        for d in list(annotations, DEVICES_WRITE) {
            devices.insert(d, DeviceAccess::ReadWrite);
        }
        let publish = filters(annotations, PUBLISH)?;
        let subscribe = filters(annotations, SUBSCRIBE)?;

        let mut twin = Vec::new();
        for t in list(annotations, HANDLER_TWIN) {
            let (device, property) = t
                .split_once('/')
                .ok_or_else(|| GrantError::BadTwinTrigger(t.clone()))?;
            if device.is_empty() || property.is_empty() || property.contains('/') {
                return Err(GrantError::BadTwinTrigger(t.clone()));
            }
            if !devices.contains_key(device) {
                return Err(GrantError::TriggerNotGranted {
                    annotation: HANDLER_TWIN,
                    what: device.to_owned(),
                    needs: DEVICES_READ,
                });
            }
            let property = (property != "*").then(|| property.to_owned());
            twin.push(TwinTrigger {
                device: device.to_owned(),
                property,
            });
        }
        let topics = filters(annotations, HANDLER_TOPICS)?;
        for t in &topics {
            if !subscribe.iter().any(|g| topic::filter_covers(g, t)) {
                return Err(GrantError::TriggerNotGranted {
                    annotation: HANDLER_TOPICS,
                    what: t.clone(),
                    needs: SUBSCRIBE,
                });
            }
        }
        let timer = annotations
            .get(HANDLER_TIMER)
            .map(|v| parse_interval(v).ok_or_else(|| GrantError::BadTimer(v.clone())))
            .transpose()?;
        Ok(Self {
            devices,
            publish,
            subscribe,
            triggers: HandlerTriggers {
                twin,
                topics,
                timer,
            },
        })
    }

    /// How the pod may use `device`, if at all.
    pub fn device_access(&self, device: &str) -> Option<DeviceAccess> {
        self.devices.get(device).copied()
    }

    /// Whether the pod may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| topic::matches(f, topic))
    }

    /// Whether the pod may subscribe to `filter`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe
            .iter()
            .any(|g| topic::filter_covers(g, filter))
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`; zero is refused.
pub fn parse_interval(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_a_full_grant() {
        let g = PodGrants::from_annotations(&ann(&[
            (DEVICES_READ, "thermo-1, fan-1"),
            (DEVICES_WRITE, "fan-1"),
            (PUBLISH, "alerts/#"),
            (SUBSCRIBE, "commands/#"),
            (HANDLER_TWIN, "thermo-1/temperature, fan-1/*"),
            (HANDLER_TOPICS, "commands/fan"),
            (HANDLER_TIMER, "30s"),
        ]))
        .expect("valid");
        assert_eq!(g.device_access("thermo-1"), Some(DeviceAccess::Read));
        assert_eq!(g.device_access("fan-1"), Some(DeviceAccess::ReadWrite));
        assert_eq!(g.device_access("door"), None);
        assert!(g.may_publish("alerts/overheat"));
        assert!(!g.may_publish("commands/fan"));
        assert!(g.may_subscribe("commands/+"));
        assert!(!g.may_subscribe("#"));
        assert!(g.triggers.twin[0].fires_on("thermo-1", "temperature"));
        assert!(!g.triggers.twin[0].fires_on("thermo-1", "humidity"));
        assert!(g.triggers.twin[1].fires_on("fan-1", "anything"));
        assert_eq!(g.triggers.timer, Some(Duration::from_secs(30)));
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let g = PodGrants::from_annotations(&BTreeMap::new()).expect("valid");
        assert!(g.devices.is_empty());
        assert!(!g.may_publish("a"));
        assert!(!g.may_subscribe("a"));
    }

    #[test]
    fn bad_annotations_say_what_is_wrong() {
        let e = PodGrants::from_annotations(&ann(&[(PUBLISH, "a/#/b")])).expect_err("bad filter");
        assert!(e.to_string().contains(PUBLISH));
        let e = PodGrants::from_annotations(&ann(&[(HANDLER_TWIN, "thermo-1/temperature")]))
            .expect_err("not granted");
        assert!(matches!(e, GrantError::TriggerNotGranted { .. }));
        let e = PodGrants::from_annotations(&ann(&[(SUBSCRIBE, "a/b"), (HANDLER_TOPICS, "a/#")]))
            .expect_err("outside grant");
        assert!(matches!(e, GrantError::TriggerNotGranted { .. }));
        let e = PodGrants::from_annotations(&ann(&[(HANDLER_TIMER, "0s")])).expect_err("zero");
        assert!(matches!(e, GrantError::BadTimer(_)));
        assert_eq!(parse_interval("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval("5 parsecs"), None);
    }
}
