//! In-process backends for the twin and the bus: everything in memory, nothing persisted.
//!
//! These serve tests, benchmarks and `wedge wasm run` until the edge's real DeviceTwin (SQLite)
//! and EventBus (MQTT) plug in behind the same traits. They apply the same model checks and
//! topic matching as the real ones will, so an app behaves the same against both.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use tokio::sync::broadcast;
use wedge_core::topic;
use wedge_core::twin::{
    AccessMode, DeviceTwin, StampedValue, TwinChange, TwinProperty, TwinSide, TwinValue,
};

use wedge_core::backend::{
    BusBackend, BusError, BusMessage, MessageQueue, Qos, TwinBackend, TwinBackendError, now_ms,
};

#[derive(Default)]
struct Device {
    twin: Option<DeviceTwin>,
    properties: BTreeMap<String, TwinProperty>,
}

/// An in-memory device twin store.
pub struct InProcessTwin {
    devices: Mutex<BTreeMap<String, Device>>,
    changes: broadcast::Sender<TwinChange>,
}

impl Default for InProcessTwin {
    fn default() -> Self {
        Self {
            devices: Mutex::default(),
            changes: broadcast::channel(4096).0,
        }
    }
}

impl InProcessTwin {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Device>> {
        self.devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds (or replaces) a device.
    pub fn add_device(&self, twin: DeviceTwin) {
        let name = twin.name.clone();
        self.lock().entry(name).or_default().twin = Some(twin);
    }

    /// Records a value reported by the device, as a mapper would, and announces the change.
    pub fn report(
        &self,
        device: &str,
        property: &str,
        value: TwinValue,
    ) -> Result<u64, TwinBackendError> {
        self.update(device, property, value, TwinSide::Reported, false)
    }

    fn update(
        &self,
        device: &str,
        property: &str,
        value: TwinValue,
        side: TwinSide,
        from_app: bool,
    ) -> Result<u64, TwinBackendError> {
        let change = {
            let mut devices = self.lock();
            let d = devices
                .get_mut(device)
                .filter(|d| d.twin.is_some())
                .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
            let model = d
                .twin
                .as_ref()
                .and_then(|t| t.property(property))
                .ok_or_else(|| TwinBackendError::NoSuchProperty {
                    device: device.to_owned(),
                    property: property.to_owned(),
                })?;
            if from_app && model.access_mode == AccessMode::ReadOnly {
                return Err(TwinBackendError::ReadOnly(property.to_owned()));
            }
            model.check(&value)?;
            let twin = d.properties.entry(property.to_owned()).or_default();
            let slot = match side {
                TwinSide::Reported => &mut twin.reported,
                TwinSide::Desired => &mut twin.desired,
            };
            let version = slot.as_ref().map_or(1, |v| v.version + 1);
            let current = StampedValue {
                value,
                timestamp_ms: now_ms(),
                version,
            };
            let previous = slot.replace(current.clone());
            TwinChange {
                device: device.to_owned(),
                property: property.to_owned(),
                side,
                previous,
                current,
            }
        };
        let version = change.current.version;
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
        Ok(version)
    }
}

#[async_trait]
impl TwinBackend for InProcessTwin {
    async fn device(&self, name: &str) -> Result<Option<DeviceTwin>, TwinBackendError> {
        Ok(self.lock().get(name).and_then(|d| d.twin.clone()))
    }

    async fn property(
        &self,
        device: &str,
        property: &str,
    ) -> Result<TwinProperty, TwinBackendError> {
        let devices = self.lock();
        let d = devices
            .get(device)
            .filter(|d| d.twin.is_some())
            .ok_or_else(|| TwinBackendError::NoSuchDevice(device.to_owned()))?;
        if d.twin.as_ref().and_then(|t| t.property(property)).is_none() {
            return Err(TwinBackendError::NoSuchProperty {
                device: device.to_owned(),
                property: property.to_owned(),
            });
        }
        Ok(d.properties.get(property).cloned().unwrap_or_default())
    }

    async fn set_desired(
        &self,
        device: &str,
        property: &str,
        value: TwinValue,
    ) -> Result<u64, TwinBackendError> {
        self.update(device, property, value, TwinSide::Desired, true)
    }

    fn changes(&self) -> broadcast::Receiver<TwinChange> {
        self.changes.subscribe()
    }
}

/// An in-memory message bus with MQTT topic matching.
#[derive(Default)]
pub struct InProcessBus {
    subscribers: Mutex<Vec<(String, Weak<MessageQueue>)>>,
    published: Mutex<VecDeque<BusMessage>>,
}

impl InProcessBus {
    /// Messages published so far (oldest first), for tests to check what apps sent.
    pub fn published(&self) -> Vec<BusMessage> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Delivers a message to every live subscriber whose filter matches, as a broker would.
    pub fn deliver(&self, message: &BusMessage) -> usize {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subs.retain(|(_, q)| q.strong_count() > 0);
        let mut delivered = 0;
        for (filter, queue) in subs.iter() {
            if let Some(q) = queue
                .upgrade()
                .filter(|_| topic::matches(filter, &message.topic))
            {
                q.push(message.clone());
                delivered += 1;
            }
        }
        delivered
    }

    /// Publishes `payload` on `topic` from outside any pod (a device, another app).
    pub fn inject(&self, topic: &str, payload: &[u8]) -> usize {
        self.deliver(&BusMessage {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            retained: false,
            received_ms: now_ms(),
        })
    }
}

/// Bounds the history `published()` keeps, so long runs stay small.
const PUBLISHED_HISTORY: usize = 10_000;

#[async_trait]
impl BusBackend for InProcessBus {
    async fn publish(&self, message: BusMessage, _qos: Qos, _retain: bool) -> Result<(), BusError> {
        self.deliver(&message);
        let mut history = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if history.len() >= PUBLISHED_HISTORY {
            history.pop_front();
        }
        history.push_back(message);
        Ok(())
    }

    async fn subscribe(&self, filter: &str, queue: &Arc<MessageQueue>) -> Result<(), BusError> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((filter.to_owned(), Arc::downgrade(queue)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use wedge_core::twin::{DeviceState, PropertyModel, PropertyType};

    fn thermometer() -> DeviceTwin {
        DeviceTwin {
            name: "thermo-1".into(),
            model: "thermometer".into(),
            state: DeviceState::Online,
            properties: vec![PropertyModel {
                name: "temperature".into(),
                kind: PropertyType::Float,
                access_mode: AccessMode::ReadOnly,
                unit: Some("celsius".into()),
                minimum: None,
                maximum: None,
            }],
        }
    }

    #[tokio::test]
    async fn twin_changes_are_versioned_and_announced() {
        let twin = InProcessTwin::default();
        twin.add_device(thermometer());
        let mut changes = twin.changes();
        assert_eq!(
            twin.report("thermo-1", "temperature", TwinValue::Float(20.5)),
            Ok(1)
        );
        assert_eq!(
            twin.report("thermo-1", "temperature", TwinValue::Float(21.0)),
            Ok(2)
        );
        let first = changes.recv().await.expect("change");
        assert_eq!(first.current.version, 1);
        let second = changes.recv().await.expect("change");
        assert_eq!(
            second.previous.map(|p| p.value),
            Some(TwinValue::Float(20.5))
        );
        let err = twin
            .set_desired("thermo-1", "temperature", TwinValue::Float(1.0))
            .await;
        assert_eq!(err, Err(TwinBackendError::ReadOnly("temperature".into())));
        let err = twin.report("thermo-1", "temperature", TwinValue::Text("hot".into()));
        assert!(matches!(err, Err(TwinBackendError::Value(_))));
        assert!(matches!(
            twin.report("nope", "x", TwinValue::Integer(1)),
            Err(TwinBackendError::NoSuchDevice(_))
        ));
    }

    #[tokio::test]
    async fn bus_delivers_by_filter_until_the_queue_is_dropped() {
        let bus = InProcessBus::default();
        let q = Arc::new(MessageQueue::default());
        bus.subscribe("sensors/+/temp", &q)
            .await
            .expect("subscribed");
        assert_eq!(bus.inject("sensors/a/temp", b"1"), 1);
        assert_eq!(bus.inject("sensors/a/humidity", b"2"), 0);
        assert_eq!(
            q.next(Duration::ZERO).await.map(|m| m.payload),
            Some(b"1".to_vec())
        );
        drop(q);
        assert_eq!(bus.inject("sensors/a/temp", b"3"), 0);
    }
}
