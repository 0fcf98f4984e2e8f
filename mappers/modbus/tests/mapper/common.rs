//! What both integration tests share: a [`TwinPort`] that records what the mapper says, and
//! bounded waits on it.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wedge_core::device::{Device, DeviceModel};
use wedge_core::twin::{DeviceState, TwinValue};
use wedge_mapper_modbus::{Desired, ModbusDevice, TwinPort};

/// The longest any test waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Everything the mapper told the twin.
#[derive(Debug, Default)]
pub struct Seen {
    /// The latest reported value per property.
    pub latest: HashMap<String, TwinValue>,
    /// When each property was last reported.
    pub at: HashMap<String, Instant>,
    /// Every report, in order.
    pub reports: Vec<Vec<(String, TwinValue)>>,
    /// Every state change, in order.
    pub states: Vec<DeviceState>,
}

/// A [`TwinPort`] that keeps what it is told.
#[derive(Debug, Default)]
pub struct Recorder {
    seen: Mutex<Seen>,
    changed: Notify,
}

#[async_trait]
impl TwinPort for Recorder {
    async fn report(&self, _device: &str, values: Vec<(String, TwinValue)>) {
        {
            let mut seen = self.seen.lock().expect("lock");
            let now = Instant::now();
            for (k, v) in &values {
                seen.latest.insert(k.clone(), v.clone());
                seen.at.insert(k.clone(), now);
            }
            seen.reports.push(values);
        }
        self.changed.notify_waiters();
    }

    async fn set_state(&self, _device: &str, state: DeviceState) {
        self.seen.lock().expect("lock").states.push(state);
        self.changed.notify_waiters();
    }
}

impl Recorder {
    /// Waits up to [`WAIT`] until `f` returns `Some`; panics naming `what` otherwise.
    pub async fn wait<T>(&self, what: &str, mut f: impl FnMut(&Seen) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let seen = self.seen.lock().expect("lock");
                if let Some(v) = f(&seen) {
                    return v;
                }
                if Instant::now() >= deadline {
                    panic!("timed out after {WAIT:?} waiting for {what}; seen: {seen:#?}");
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// The latest reported value of `property`.
    pub fn latest(&self, property: &str) -> Option<TwinValue> {
        self.seen
            .lock()
            .expect("lock")
            .latest
            .get(property)
            .cloned()
    }

    /// The last state reported.
    pub fn state(&self) -> Option<DeviceState> {
        self.seen.lock().expect("lock").states.last().copied()
    }

    /// How many reports so far.
    pub fn report_count(&self) -> usize {
        self.seen.lock().expect("lock").reports.len()
    }
}

/// Polls `f` every 10 ms for up to [`WAIT`]; panics naming `what` if it never holds.
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wedge_testkit::wait::eventually(WAIT, Duration::from_millis(10), f, || {
        format!("timed out after {WAIT:?} waiting for {what}")
    })
    .await;
}

/// A Device and its model from KubeEdge JSON.
pub fn modbus_device(device: serde_json::Value, model: serde_json::Value) -> ModbusDevice {
    let device: Device = serde_json::from_value(device).expect("device JSON");
    let model: DeviceModel = serde_json::from_value(model).expect("model JSON");
    ModbusDevice::from_kubeedge(&device, &model).expect("a Modbus device")
}

/// A running mapper and the handles a test drives it with; cancels it on drop.
pub struct Running {
    pub recorder: Arc<Recorder>,
    pub desired: mpsc::Sender<Desired>,
    pub cancel: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn start(device: ModbusDevice) -> Self {
        let recorder = Arc::new(Recorder::default());
        let (desired, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let port: Arc<dyn TwinPort> = recorder.clone();
        let task = tokio::spawn(wedge_mapper_modbus::run(device, port, rx, cancel.clone()));
        Self {
            recorder,
            desired,
            cancel,
            task: Some(task),
        }
    }

    pub async fn set(&self, property: &str, value: TwinValue) {
        self.desired
            .send(Desired {
                property: property.into(),
                value,
            })
            .await
            .expect("mapper is running");
    }

    /// Cancels the mapper and waits (bounded) for its task to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("mapper ends on cancel")
                .expect("mapper did not panic");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A float close to `want`.
pub fn near(v: Option<&TwinValue>, want: f64) -> bool {
    matches!(v, Some(TwinValue::Float(f)) if (f - want).abs() < 1e-6)
}
