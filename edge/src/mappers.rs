//! The mappers edgecore runs itself: one task per Device whose protocol it speaks (Modbus TCP
//! today), started and stopped as devices join and leave this node.
//!
//! A mapper reports into DeviceTwin and is driven by it: every desired value DeviceTwin takes
//! (from the cloud's spec, an app, or MQTT) goes to the device's mapper, and a mapper that starts
//! is first sent the desired values already held. Devices of other protocols are served over
//! MQTT with KubeEdge's topics, by the device itself or by a mapper outside edgecore (see
//! [`crate::eventbus`]).
//!
//! A mapper's report returns once it is queued for the database, not once it is committed: the
//! mapper reads on, and its reports share commits. Their commits are awaited in order by a
//! settler task, at most [`REPORTS_IN_FLIGHT`] behind (a mapper reporting faster than that
//! waits), which logs a refused one; at shutdown the settler awaits every report queued.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::backend::TwinBackendError;
use wedge_core::twin::{AccessMode, DeviceState, TwinSide, TwinValue};
use wedge_mapper_modbus::{Desired, ModbusDevice, TwinPort};

use crate::devicetwin::{BoundDevice, DeviceTwin};

/// The protocol name of Devices the built-in Modbus mapper serves.
pub const MODBUS: &str = "modbus";
/// How many desired values wait for a mapper (it keeps only the latest per property).
const DESIRED_QUEUE: usize = 256;
/// How many of the mappers' reports and states may be queued and not yet committed.
pub const REPORTS_IN_FLIGHT: usize = 64;

/// A queued write's commit, and what it was, for the log.
type Stored = (
    String,
    &'static str,
    Pin<Box<dyn Future<Output = Result<(), TwinBackendError>> + Send>>,
);

/// DeviceTwin as the mappers see it: writes are queued, and their commits handed to the
/// settler ([`settle`]).
struct TwinAdapter {
    twin: DeviceTwin,
    stored: mpsc::Sender<Stored>,
}

impl TwinAdapter {
    async fn queued(
        &self,
        device: &str,
        what: &'static str,
        queued: Result<
            impl Future<Output = Result<(), TwinBackendError>> + Send + 'static,
            TwinBackendError,
        >,
    ) {
        match queued {
            Ok(stored) => {
                // The settler ends only after every adapter is gone: a send cannot fail.
                let _ = self
                    .stored
                    .send((device.to_owned(), what, Box::pin(stored)))
                    .await;
            }
            Err(e) => tracing::warn!(device, error = %e, "a mapper's {what} was refused"),
        }
    }
}

#[async_trait]
impl TwinPort for TwinAdapter {
    async fn report(&self, device: &str, values: Vec<(String, TwinValue)>) {
        let queued = self.twin.queue_report(device, values).await;
        self.queued(device, "report", queued).await;
    }

    async fn set_state(&self, device: &str, state: DeviceState) {
        let queued = self.twin.queue_state(device, state).await;
        self.queued(device, "state", queued).await;
    }
}

/// Awaits the commit of each write the mappers queued, in order, logging those refused, until
/// every adapter is gone and all are awaited.
async fn settle(mut stored: mpsc::Receiver<Stored>) {
    while let Some((device, what, commit)) = stored.recv().await {
        if let Err(e) = commit.await {
            tracing::warn!(device, error = %e, "a mapper's {what} was refused");
        }
    }
}

struct Running {
    config: ModbusDevice,
    desired: mpsc::Sender<Desired>,
    cancel: CancellationToken,
}

/// Runs the mappers of this node's devices until `shutdown`.
pub async fn run(twin: DeviceTwin, shutdown: CancellationToken) {
    let (stored, commits) = mpsc::channel(REPORTS_IN_FLIGHT);
    let settler = tokio::spawn(settle(commits));
    let port: Arc<dyn TwinPort> = Arc::new(TwinAdapter {
        twin: twin.clone(),
        stored,
    });
    let mut changes = twin.subscribe();
    let mut membership = twin.membership();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    reconcile(&twin, &port, &mut running, &mut tasks, &shutdown);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = membership.changed() => {
                if changed.is_err() {
                    break;
                }
                reconcile(&twin, &port, &mut running, &mut tasks, &shutdown);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            change = changes.recv() => match change {
                Ok(change) if change.side == TwinSide::Desired => {
                    if let Some(r) = running.get(&change.device) {
                        send(r, &change.device, Desired { property: change.property, value: change.current.value });
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Some desired values were missed: send every mapper what is held now.
                    tracing::warn!(missed = n, "mappers fell behind twin changes; resending desired values");
                    for (name, r) in &running {
                        send_held(&twin, name, r);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    for r in running.values() {
        r.cancel.cancel();
    }
    while tasks.join_next().await.is_some() {}
    // The mappers are gone; with the last adapter the settler ends, once every write queued is
    // committed (or refused).
    drop(port);
    if settler.await.is_err() {
        tracing::error!("the mappers' settler panicked");
    }
}

fn send(r: &Running, device: &str, desired: Desired) {
    if r.desired.try_send(desired).is_err() {
        tracing::warn!(
            device,
            "the device's mapper is behind on desired values; this one is dropped"
        );
    }
}

/// Sends the desired values DeviceTwin holds for `device`'s writable properties.
fn send_held(twin: &DeviceTwin, device: &str, r: &Running) {
    let Ok((model, properties)) = twin.document(device) else {
        return;
    };
    for (property, value) in properties {
        let writable = model
            .property(&property)
            .is_some_and(|m| m.access_mode == AccessMode::ReadWrite);
        if let (true, Some(desired)) = (writable, value.desired) {
            send(
                r,
                device,
                Desired {
                    property,
                    value: desired.value,
                },
            );
        }
    }
}

/// The Modbus configuration of `bound`, if the built-in mapper serves it.
fn modbus_config(bound: &BoundDevice) -> Option<ModbusDevice> {
    if bound.device.spec.protocol.protocol_name != MODBUS {
        return None;
    }
    let name = bound.device.name().to_owned();
    match ModbusDevice::from_kubeedge(&bound.device, &bound.model) {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::warn!(device = name, error = %e, "the Modbus mapper cannot serve this device");
            None
        }
    }
}

/// Starts mappers for new or changed Modbus devices and stops those of devices gone.
fn reconcile(
    twin: &DeviceTwin,
    port: &Arc<dyn TwinPort>,
    running: &mut BTreeMap<String, Running>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let wanted: BTreeMap<String, ModbusDevice> = twin
        .bound()
        .iter()
        .filter_map(|b| modbus_config(b).map(|c| (b.device.name().to_owned(), c)))
        .collect();
    running.retain(|name, r| {
        let keep = wanted.get(name) == Some(&r.config);
        if !keep {
            r.cancel.cancel();
            tracing::info!(device = name, "mapper stopped");
        }
        keep
    });
    for (name, config) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let (tx, rx) = mpsc::channel(DESIRED_QUEUE);
        let cancel = shutdown.child_token();
        tracing::info!(device = name, addr = %config.addr, "Modbus mapper started");
        tasks.spawn(wedge_mapper_modbus::run(
            config.clone(),
            port.clone(),
            rx,
            cancel.clone(),
        ));
        let r = Running {
            config,
            desired: tx,
            cancel,
        };
        send_held(twin, &name, &r);
        running.insert(name, r);
    }
}

#[cfg(test)]
mod tests {
    use wedge_core::twin::{DeviceState, TwinValue};

    use super::*;
    use crate::devicetwin::tests::gated_twin;

    #[tokio::test(start_paused = true)]
    async fn a_mappers_reports_are_queued_without_waiting_and_all_stored_when_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, tick, twin) = gated_twin(&dir).await;
        let (stored, commits) = mpsc::channel(REPORTS_IN_FLIGHT);
        let settler = tokio::spawn(settle(commits));
        let port = TwinAdapter {
            twin: twin.clone(),
            stored,
        };
        let before = db.write_stats().transactions;
        // Each returns once queued: the writer commits nothing until the tick below.
        port.set_state("thermo-1", DeviceState::Online).await;
        for value in [20.0, 21.0, 22.0] {
            port.report(
                "thermo-1",
                vec![("temperature".into(), TwinValue::Float(value))],
            )
            .await;
        }
        assert_eq!(db.queued_writes(), 4, "all queued, none waited for");
        // The mapper ends: the settler awaits what it queued.
        drop(port);
        db.tick_one(&tick).await;
        settler.await.expect("the settler");
        assert_eq!(
            db.write_stats().transactions - before,
            1,
            "one commit for the four"
        );
        let (model, properties) = twin.document("thermo-1").expect("document");
        assert_eq!(model.state, DeviceState::Online);
        let temperature = properties
            .iter()
            .find(|(p, _)| p == "temperature")
            .and_then(|(_, t)| t.reported.clone())
            .expect("reported");
        assert_eq!(
            (temperature.value, temperature.version),
            (TwinValue::Float(22.0), 3)
        );
    }
}
