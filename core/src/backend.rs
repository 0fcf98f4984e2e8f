//! What the Wasm host asks of the edge: the device twin ([`TwinBackend`], which DeviceTwin
//! implements) and the message bus ([`BusBackend`], which EventBus implements), with their
//! errors and messages.
//!
//! They live here, not in the Wasm runtime, so that the edge's device layer depends on the
//! types both sides share and not on wasmtime: the runtime calls these traits, the edge
//! implements them, and tests put in-memory backends behind them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, broadcast};

use crate::twin::{self, TwinChange, TwinProperty, TwinValue, ValueError};

/// Why the twin backend could not answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TwinBackendError {
    /// No such device on this node.
    #[error("no device {0:?} on this node")]
    NoSuchDevice(String),
    /// No such property in the device's model.
    #[error("device {device:?} has no property {property:?}")]
    NoSuchProperty {
        /// The device.
        device: String,
        /// The property.
        property: String,
    },
    /// The value does not fit the property.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// The property is read-only.
    #[error("property {0:?} is read-only")]
    ReadOnly(String),
    /// The store failed.
    #[error("twin store unavailable: {0}")]
    Unavailable(String),
}

/// The device twin store as the Wasm host needs it.
#[async_trait]
pub trait TwinBackend: Send + Sync + 'static {
    /// The device, if bound to this node.
    async fn device(&self, name: &str) -> Result<Option<twin::DeviceTwin>, TwinBackendError>;
    /// Both sides of a property.
    async fn property(
        &self,
        device: &str,
        property: &str,
    ) -> Result<TwinProperty, TwinBackendError>;
    /// Sets a desired value (checked against the model) and returns its new version.
    async fn set_desired(
        &self,
        device: &str,
        property: &str,
        value: TwinValue,
    ) -> Result<u64, TwinBackendError>;
    /// Every change from now on. Receivers that fall behind lose the oldest changes.
    fn changes(&self) -> broadcast::Receiver<TwinChange>;
}

/// How many messages a subscription holds before dropping the oldest.
pub const SUBSCRIPTION_QUEUE: usize = 1024;
/// MQTT delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce,
    /// QoS 2.
    ExactlyOnce,
}

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether it was the retained message.
    pub retained: bool,
    /// When the edge received it (ms since the epoch).
    pub received_ms: u64,
}

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The broker is unreachable or refused.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
}

/// A bounded queue of messages for one subscriber: the backend pushes, the guest receives.
#[derive(Debug, Default)]
pub struct MessageQueue {
    messages: Mutex<VecDeque<BusMessage>>,
    lost: AtomicU64,
    arrived: Notify,
}

impl MessageQueue {
    /// Adds a message, dropping the oldest if the queue is full.
    pub fn push(&self, message: BusMessage) {
        {
            let mut q = self
                .messages
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if q.len() >= SUBSCRIPTION_QUEUE {
                q.pop_front();
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(message);
        }
        self.arrived.notify_one();
    }

    fn pop(&self) -> Option<BusMessage> {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    /// The next message, waiting at most `timeout`.
    pub async fn next(&self, timeout: Duration) -> Option<BusMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            if let Some(m) = self.pop() {
                return Some(m);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.pop();
            }
        }
    }

    /// The next message, however long it takes.
    pub async fn recv(&self) -> BusMessage {
        loop {
            let arrived = self.arrived.notified();
            if let Some(m) = self.pop() {
                return m;
            }
            arrived.await;
        }
    }

    /// How many messages were dropped since the last call.
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

/// The message bus as the Wasm host needs it.
#[async_trait]
pub trait BusBackend: Send + Sync + 'static {
    /// Publishes a message (topic already validated and permitted).
    async fn publish(&self, message: BusMessage, qos: Qos, retain: bool) -> Result<(), BusError>;
    /// Starts delivering messages matching `filter` into `queue` until the queue is dropped.
    async fn subscribe(&self, filter: &str, queue: &Arc<MessageQueue>) -> Result<(), BusError>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}
