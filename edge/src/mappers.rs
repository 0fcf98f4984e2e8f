//! The mappers edgecore runs itself: one task per Device whose protocol it speaks (Modbus TCP
//! today), started and stopped as devices join and leave this node.
//!
//! A mapper reports into DeviceTwin and is driven by it: every desired value DeviceTwin takes
//! (from the cloud's spec, an app, or MQTT) goes to the device's mapper, and a mapper that starts
//! is first sent the desired values already held. Devices of other protocols are served over
//! MQTT with KubeEdge's topics, by the device itself or by a mapper outside edgecore (see
//! [`crate::eventbus`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wedge_core::twin::{AccessMode, DeviceState, TwinSide, TwinValue};
use wedge_mapper_modbus::{Desired, ModbusDevice, TwinPort};

use crate::devicetwin::{BoundDevice, DeviceTwin};

/// The protocol name of Devices the built-in Modbus mapper serves.
pub const MODBUS: &str = "modbus";
/// How many desired values wait for a mapper (it keeps only the latest per property).
const DESIRED_QUEUE: usize = 256;

/// DeviceTwin as the mappers see it.
struct TwinAdapter(DeviceTwin);

#[async_trait]
impl TwinPort for TwinAdapter {
    async fn report(&self, device: &str, values: Vec<(String, TwinValue)>) {
        if let Err(e) = self.0.report(device, values).await {
            tracing::warn!(device, error = %e, "a mapper's report was refused");
        }
    }

    async fn set_state(&self, device: &str, state: DeviceState) {
        if let Err(e) = self.0.set_state(device, state).await {
            tracing::warn!(device, error = %e, "a mapper's state was refused");
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
    let port: Arc<dyn TwinPort> = Arc::new(TwinAdapter(twin.clone()));
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
