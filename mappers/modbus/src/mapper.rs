//! The running mapper for one device: connect, poll every property on its collect cycle, report
//! on its report cycle, and write desired values as soon as they arrive.
//!
//! One task owns the Modbus connection, so reads and writes never interleave on the wire and no
//! lock is needed; it sleeps until the next property is due, a desired value arrives or `cancel`
//! fires. A desired write is read back and reported at once, so the cloud sees the device follow
//! its desired value within a round trip rather than a report cycle.
//!
//! Failure model: a transport error or timeout drops the connection, reports the device Offline
//! and reconnects with backoff (100 ms doubling to 5 s); a Modbus exception only skips that
//! property this time. Desired values that arrive while offline are kept, the latest per property
//! (so the buffer is bounded by the property count), and written after reconnecting.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;
use wedge_core::twin::{DeviceState, TwinValue};

use crate::config::{ModbusDevice, ModbusProperty, RegisterKind};

/// How long to wait for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for each request's response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The first reconnect delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reconnect delays, computed by `backon` (as kube-runtime's and the edge's are): from
/// [`BACKOFF_START`] doubling to [`BACKOFF_MAX`], endless; a new one after each connection.
/// No jitter: a mapper serves its one device, so there is no herd to spread.
fn reconnect_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_START)
        .with_max_delay(BACKOFF_MAX)
        .without_max_times()
        .build()
}

/// Where the mapper sends what it learns: the edge's DeviceTwin, or a test's recorder.
#[async_trait]
pub trait TwinPort: Send + Sync + 'static {
    /// Values read from the device (the edge's DeviceTwin records them as reported).
    async fn report(&self, device: &str, values: Vec<(String, TwinValue)>);
    /// The device's connection state changed.
    async fn set_state(&self, device: &str, state: DeviceState);
}

/// A desired value for one property, to be written to the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The property.
    pub property: String,
    /// The value wanted.
    pub value: TwinValue,
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The device answered with an exception: the connection is fine.
    #[error("modbus exception: {0}")]
    Exception(ExceptionCode),
    /// The registers did not decode, or the value did not encode.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// The connection is broken (transport or protocol error, or no answer in time).
    #[error("connection lost: {0}")]
    Connection(String),
}

/// Serves `device` until `cancel` fires: reports reads and state through `port` and writes the
/// values arriving on `desired`.
pub async fn run(
    device: ModbusDevice,
    port: Arc<dyn TwinPort>,
    mut desired: mpsc::Receiver<Desired>,
    cancel: CancellationToken,
) {
    let mut mapper = Mapper::new(device, port);
    let mut delays = reconnect_delays();
    let mut desired_open = true;
    let mut state = DeviceState::Unknown;
    while !cancel.is_cancelled() {
        let connected = tokio::select! {
            () = cancel.cancelled() => break,
            c = connect(&mapper.device) => c,
        };
        let ctx = match connected {
            Ok(ctx) => ctx,
            Err(err) => {
                tracing::debug!(device = %mapper.device.name, addr = %mapper.device.addr, %err, "connect failed");
                mapper.set_state(&mut state, DeviceState::Offline).await;
                // Keep taking desired values while we wait, so senders are not held up.
                let wake = Instant::now() + delays.next().unwrap_or(BACKOFF_MAX);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = sleep_until(wake) => break,
                        d = desired.recv(), if desired_open => match d {
                            Some(d) => mapper.keep_desired(d),
                            None => desired_open = false,
                        },
                    }
                }
                continue;
            }
        };
        tracing::info!(device = %mapper.device.name, addr = %mapper.device.addr, "connected");
        delays = reconnect_delays();
        mapper.set_state(&mut state, DeviceState::Online).await;
        let mut session = Session {
            ctx,
            mapper: &mut mapper,
        };
        // Cancelling drops a request in flight too: no need to wait out its timeout.
        let lost = tokio::select! {
            () = cancel.cancelled() => None,
            lost = session.serve(&mut desired, &mut desired_open, &cancel) => lost,
        };
        if let Some(reason) = lost {
            tracing::warn!(device = %mapper.device.name, %reason, "connection lost; reconnecting");
            mapper.set_state(&mut state, DeviceState::Offline).await;
        }
    }
}

/// What outlives a connection: the device, its schedule, its latest values and pending writes.
struct Mapper {
    device: ModbusDevice,
    port: Arc<dyn TwinPort>,
    /// Per property (same index as `device.properties`): when to read it next.
    next_collect: Vec<Instant>,
    /// Per property: when to report it next.
    next_report: Vec<Instant>,
    /// Per property: the latest value read, if any since the last report.
    latest: Vec<Option<TwinValue>>,
    /// Desired values not yet written, the latest per property.
    pending: BTreeMap<usize, TwinValue>,
}

impl Mapper {
    fn new(device: ModbusDevice, port: Arc<dyn TwinPort>) -> Self {
        let now = Instant::now();
        let n = device.properties.len();
        let next_report = device
            .properties
            .iter()
            .map(|p| now + p.report_cycle)
            .collect();
        Self {
            device,
            port,
            next_collect: vec![now; n],
            next_report,
            latest: vec![None; n],
            pending: BTreeMap::new(),
        }
    }

    async fn set_state(&self, current: &mut DeviceState, new: DeviceState) {
        if *current != new {
            *current = new;
            self.port.set_state(&self.device.name, new).await;
        }
    }

    /// Queues a desired value for writing, or drops it with a warning if it can never be written.
    fn keep_desired(&mut self, d: Desired) {
        let Some(i) = self
            .device
            .properties
            .iter()
            .position(|p| p.name == d.property)
        else {
            tracing::warn!(device = %self.device.name, property = %d.property, "desired value for a property this mapper does not serve; skipped");
            return;
        };
        let prop = &self.device.properties[i];
        if !prop.writable() {
            tracing::warn!(device = %self.device.name, property = %d.property, register = prop.register.name(), "property is not writable; desired value skipped");
            return;
        }
        self.pending.insert(i, d.value);
    }

    /// The earliest instant any property is due to be read or reported.
    fn next_due(&self) -> Option<Instant> {
        self.next_collect
            .iter()
            .chain(&self.next_report)
            .min()
            .copied()
    }
}

/// A connected mapper.
struct Session<'a> {
    ctx: Context,
    mapper: &'a mut Mapper,
}

impl Session<'_> {
    /// Serves until the connection is lost (returns why) or `cancel` fires (returns `None`).
    async fn serve(
        &mut self,
        desired: &mut mpsc::Receiver<Desired>,
        desired_open: &mut bool,
        cancel: &CancellationToken,
    ) -> Option<String> {
        loop {
            if let Err(reason) = self.write_pending().await {
                return Some(reason);
            }
            if let Err(reason) = self.poll_due().await {
                return Some(reason);
            }
            let wake = self
                .mapper
                .next_due()
                .unwrap_or_else(|| Instant::now() + crate::config::DEFAULT_CYCLE);
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = sleep_until(wake) => {}
                d = desired.recv(), if *desired_open => match d {
                    Some(d) => self.mapper.keep_desired(d),
                    None => *desired_open = false,
                },
            }
        }
    }

    /// Writes every pending desired value, reads each back and reports it at once.
    async fn write_pending(&mut self) -> Result<(), String> {
        while let Some((i, value)) = self.mapper.pending.pop_first() {
            let prop = self.mapper.device.properties[i].clone();
            match write(&mut self.ctx, &prop, &value).await {
                Ok(()) => {}
                Err(RequestError::Connection(reason)) => {
                    // Keep it for after the reconnect unless a newer value arrives.
                    self.mapper.pending.entry(i).or_insert(value);
                    return Err(reason);
                }
                Err(err) => {
                    tracing::warn!(device = %self.mapper.device.name, property = %prop.name, ?value, %err, "desired value not written");
                    continue;
                }
            }
            tracing::debug!(device = %self.mapper.device.name, property = %prop.name, ?value, "desired value written");
            match read(&mut self.ctx, &prop).await {
                Ok(read_back) => {
                    self.mapper.latest[i] = Some(read_back.clone());
                    let name = self.mapper.device.name.clone();
                    self.mapper
                        .port
                        .report(&name, vec![(prop.name.clone(), read_back)])
                        .await;
                }
                Err(RequestError::Connection(reason)) => return Err(reason),
                Err(err) => {
                    tracing::warn!(device = %self.mapper.device.name, property = %prop.name, %err, "read-back after write failed");
                }
            }
        }
        Ok(())
    }

    /// Reads the properties whose collect cycle is due, then reports those whose report cycle is.
    async fn poll_due(&mut self) -> Result<(), String> {
        let now = Instant::now();
        for i in 0..self.mapper.device.properties.len() {
            if self.mapper.next_collect[i] > now {
                continue;
            }
            let prop = &self.mapper.device.properties[i];
            self.mapper.next_collect[i] =
                later(self.mapper.next_collect[i], prop.collect_cycle, now);
            match read(&mut self.ctx, prop).await {
                Ok(v) => self.mapper.latest[i] = Some(v),
                Err(RequestError::Connection(reason)) => return Err(reason),
                Err(err) => {
                    tracing::warn!(device = %self.mapper.device.name, property = %prop.name, %err, "read failed; skipped this cycle");
                }
            }
        }
        let now = Instant::now();
        let mut values = Vec::new();
        for i in 0..self.mapper.device.properties.len() {
            if self.mapper.next_report[i] > now {
                continue;
            }
            let prop = &self.mapper.device.properties[i];
            self.mapper.next_report[i] = later(self.mapper.next_report[i], prop.report_cycle, now);
            if let Some(v) = self.mapper.latest[i].take() {
                values.push((prop.name.clone(), v));
            }
        }
        if !values.is_empty() {
            let name = self.mapper.device.name.clone();
            self.mapper.port.report(&name, values).await;
        }
        Ok(())
    }
}

/// The next tick after `now` on a cycle that was due at `due`, skipping missed ticks rather than
/// bursting to catch up.
fn later(due: Instant, cycle: Duration, now: Instant) -> Instant {
    let next = due + cycle;
    if next > now { next } else { now + cycle }
}

async fn connect(device: &ModbusDevice) -> Result<Context, String> {
    let slave = Slave(device.slave_id);
    match timeout(
        CONNECT_TIMEOUT,
        tokio_modbus::client::tcp::connect_slave(device.addr, slave),
    )
    .await
    {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

/// One request with the timeout, its two error layers folded into [`RequestError`].
async fn request<T>(
    call: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, RequestError> {
    match timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(code))) => Err(RequestError::Exception(code)),
        Ok(Err(err)) => Err(RequestError::Connection(err.to_string())),
        Err(_) => Err(RequestError::Connection(format!(
            "no response within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

async fn read(ctx: &mut Context, prop: &ModbusProperty) -> Result<TwinValue, RequestError> {
    let (addr, n) = (prop.offset, prop.codec.limit);
    Ok(match prop.register {
        RegisterKind::Coil => prop
            .codec
            .decode_bits(&bits(request(ctx.read_coils(addr, n)).await?, n))?,
        RegisterKind::DiscreteInput => prop
            .codec
            .decode_bits(&bits(request(ctx.read_discrete_inputs(addr, n)).await?, n))?,
        RegisterKind::Input => prop
            .codec
            .decode_registers(&request(ctx.read_input_registers(addr, n)).await?)?,
        RegisterKind::Holding => prop
            .codec
            .decode_registers(&request(ctx.read_holding_registers(addr, n)).await?)?,
    })
}

/// Bit reads come back padded to whole bytes; keep the ones asked for.
fn bits(mut read: Vec<bool>, n: u16) -> Vec<bool> {
    read.truncate(usize::from(n));
    read
}

async fn write(
    ctx: &mut Context,
    prop: &ModbusProperty,
    value: &TwinValue,
) -> Result<(), RequestError> {
    match prop.register {
        RegisterKind::Coil => {
            let bit = prop.codec.encode_bit(value)?;
            request(ctx.write_single_coil(prop.offset, bit)).await
        }
        RegisterKind::Holding => match prop.codec.encode_registers(value)?.as_slice() {
            [word] => request(ctx.write_single_register(prop.offset, *word)).await,
            words => request(ctx.write_multiple_registers(prop.offset, words)).await,
        },
        // Config refuses writable properties here; this guards the invariant anyway.
        RegisterKind::Input | RegisterKind::DiscreteInput => {
            Err(RequestError::Exception(ExceptionCode::IllegalFunction))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_from_100_ms_doubling_to_5_s() {
        // In whole milliseconds: backon multiplies in f32, a few nanoseconds off.
        let delays: Vec<u128> = reconnect_delays().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
