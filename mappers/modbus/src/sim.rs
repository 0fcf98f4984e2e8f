//! A Modbus TCP device simulator: a thermometer with a fan, for demos, tests and benches.
//!
//! The register map (any unit id is accepted):
//!
//! | table | address | meaning |
//! | --- | --- | --- |
//! | input register | 0 | temperature in tenths of °C (i16), read-only |
//! | holding register | 0 | the same temperature; writing it sets the temperature |
//! | holding register | 1 | fan, 0 or 1 (the same state as coil 0) |
//! | coil | 0 | fan on/off |
//!
//! Physics run on a tick: the temperature rises by `rise_per_tick` while the fan is off and falls
//! by `fall_per_tick` while it is on, never below `ambient_min` nor above what the register holds.
//! Any other address answers IllegalDataAddress, as a real device would.

use std::future::{Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// The warmest temperature the register can hold, in °C.
const MAX_TEMPERATURE: f64 = i16::MAX as f64 / 10.0;

/// How the simulated room behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// How often the physics step.
    pub tick: Duration,
    /// °C gained per tick while the fan is off.
    pub rise_per_tick: f64,
    /// °C lost per tick while the fan is on.
    pub fall_per_tick: f64,
    /// The temperature at start, in °C.
    pub start: f64,
    /// The fan cannot cool below this, in °C.
    pub ambient_min: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            rise_per_tick: 0.1,
            fall_per_tick: 0.2,
            start: 21.5,
            ambient_min: 15.0,
        }
    }
}

#[derive(Debug)]
struct State {
    temperature: f64,
    fan: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    writes: AtomicU64,
    config: SimConfig,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain numbers: a panic while holding it leaves them usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tick(&self) {
        let c = &self.config;
        let mut s = self.state();
        let next = if s.fan {
            s.temperature - c.fall_per_tick
        } else {
            s.temperature + c.rise_per_tick
        };
        s.temperature = next.clamp(c.ambient_min.min(MAX_TEMPERATURE), MAX_TEMPERATURE);
    }

    fn tenths(&self) -> u16 {
        // Clamped to the i16 range on every change, so the cast only rounds.
        ((self.state().temperature * 10.0).round() as i16) as u16
    }

    fn handle(&self, req: Request<'_>) -> Result<Response, ExceptionCode> {
        use Request::*;
        match req {
            ReadInputRegisters(addr, n) => {
                Ok(Response::ReadInputRegisters(self.registers(addr, n, 1)?))
            }
            ReadHoldingRegisters(addr, n) => {
                Ok(Response::ReadHoldingRegisters(self.registers(addr, n, 2)?))
            }
            ReadCoils(addr, n) => {
                check(addr, n, 1)?;
                Ok(Response::ReadCoils(vec![self.state().fan]))
            }
            WriteSingleCoil(addr, on) => {
                check(addr, 1, 1)?;
                self.set_fan(on);
                Ok(Response::WriteSingleCoil(addr, on))
            }
            WriteMultipleCoils(addr, bits) => {
                let n = quantity(bits.len())?;
                check(addr, n, 1)?;
                if let Some(on) = bits.first() {
                    self.set_fan(*on);
                }
                Ok(Response::WriteMultipleCoils(addr, n))
            }
            WriteSingleRegister(addr, word) => {
                check(addr, 1, 2)?;
                self.set_register(addr, word);
                Ok(Response::WriteSingleRegister(addr, word))
            }
            WriteMultipleRegisters(addr, words) => {
                let n = quantity(words.len())?;
                check(addr, n, 2)?;
                for (a, w) in (addr..).zip(words.iter()) {
                    self.set_register(a, *w);
                }
                Ok(Response::WriteMultipleRegisters(addr, n))
            }
            ReadDiscreteInputs(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn registers(&self, addr: u16, n: u16, size: u16) -> Result<Vec<u16>, ExceptionCode> {
        check(addr, n, size)?;
        let fan = u16::from(self.state().fan);
        let all = [self.tenths(), fan];
        Ok(all[usize::from(addr)..usize::from(addr + n)].to_vec())
    }

    fn set_fan(&self, on: bool) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.state().fan = on;
    }

    fn set_register(&self, addr: u16, word: u16) {
        match addr {
            0 => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.state().temperature = f64::from(word as i16) / 10.0;
            }
            _ => self.set_fan(word != 0),
        }
    }
}

/// Refuses a range that is empty or runs past a table of `size` entries.
fn check(addr: u16, n: u16, size: u16) -> Result<(), ExceptionCode> {
    if n == 0 || u32::from(addr) + u32::from(n) > u32::from(size) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

fn quantity(len: usize) -> Result<u16, ExceptionCode> {
    u16::try_from(len).map_err(|_| ExceptionCode::IllegalDataValue)
}

/// tokio-modbus's per-connection service: a handle on the shared state.
struct Device(Arc<Shared>);

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        // Any unit id: the simulator is the only device behind this address.
        ready(self.0.handle(req.request))
    }
}

/// A simulated thermometer with a fan, listening for Modbus TCP. Cheap to clone: clones share the
/// device.
#[derive(Debug, Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener: Arc<Mutex<Option<TcpListener>>>,
}

impl Simulator {
    /// Binds `addr` (port 0 picks a free one); serving starts with [`Self::run`] or [`Self::spawn`].
    pub async fn bind(addr: SocketAddr, config: SimConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let start = config
            .start
            .clamp(config.ambient_min.min(MAX_TEMPERATURE), MAX_TEMPERATURE);
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    temperature: start,
                    fan: false,
                }),
                writes: AtomicU64::new(0),
                config,
            }),
            addr,
            listener: Arc::new(Mutex::new(Some(listener))),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temperature now, in °C (to the tenth the registers show).
    pub fn temperature(&self) -> f64 {
        f64::from(self.shared.tenths() as i16) / 10.0
    }

    /// Whether the fan is on.
    pub fn fan(&self) -> bool {
        self.shared.state().fan
    }

    /// How many writes it has received.
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// Serves connections and runs the physics until `cancel` fires. Only one `run` per
    /// simulator: a second finds the listener taken and fails.
    pub async fn run(&self, cancel: CancellationToken) -> io::Result<()> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| io::Error::other("simulator is already running"))?;
        let server = Server::new(listener);
        let shared = Arc::clone(&self.shared);
        let on_connected = move |stream, peer| {
            let shared = Arc::clone(&shared);
            async move { accept_tcp_connection(stream, peer, |_| Ok(Some(Device(Arc::clone(&shared))))) }
        };
        let on_error = |err: io::Error| tracing::debug!(%err, "simulator connection ended");
        let mut ticks = tokio::time::interval(self.shared.config.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let physics = async {
            loop {
                ticks.tick().await;
                self.shared.tick();
            }
        };
        // Dropping the serve future (on cancel) also ends its connection tasks.
        tokio::select! {
            () = cancel.cancelled() => Ok(()),
            r = server.serve(&on_connected, on_error) => r,
            () = physics => Ok(()),
        }
    }

    /// Runs [`Self::run`] on a new task.
    pub fn spawn(&self, cancel: CancellationToken) -> JoinHandle<io::Result<()>> {
        let sim = self.clone();
        tokio::spawn(async move { sim.run(cancel).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(fan: bool, temperature: f64) -> Shared {
        Shared {
            state: Mutex::new(State { temperature, fan }),
            writes: AtomicU64::new(0),
            config: SimConfig {
                rise_per_tick: 1.0,
                fall_per_tick: 2.0,
                ambient_min: 10.0,
                ..SimConfig::default()
            },
        }
    }

    #[test]
    fn physics_rise_without_fan_and_fall_with_it_clamped() {
        let s = shared(false, 20.0);
        s.tick();
        assert_eq!(s.tenths(), 210);
        s.state().fan = true;
        for _ in 0..10 {
            s.tick();
        }
        assert_eq!(s.tenths(), 100, "not below ambient_min");
    }

    #[test]
    fn register_map() {
        let s = shared(false, -1.5);
        assert_eq!(
            s.handle(Request::ReadInputRegisters(0, 1)),
            Ok(Response::ReadInputRegisters(vec![(-15i16) as u16]))
        );
        assert_eq!(
            s.handle(Request::WriteSingleRegister(1, 1)),
            Ok(Response::WriteSingleRegister(1, 1))
        );
        assert_eq!(
            s.handle(Request::ReadCoils(0, 1)),
            Ok(Response::ReadCoils(vec![true]))
        );
        assert_eq!(
            s.handle(Request::ReadHoldingRegisters(0, 2)),
            Ok(Response::ReadHoldingRegisters(vec![(-15i16) as u16, 1]))
        );
        assert_eq!(
            s.handle(Request::WriteSingleCoil(0, false)),
            Ok(Response::WriteSingleCoil(0, false))
        );
        assert_eq!(
            s.handle(Request::WriteMultipleRegisters(0, vec![250].into())),
            Ok(Response::WriteMultipleRegisters(0, 1))
        );
        assert_eq!(
            s.handle(Request::ReadHoldingRegisters(0, 2)),
            Ok(Response::ReadHoldingRegisters(vec![250, 0]))
        );
        assert_eq!(s.writes.load(Ordering::Relaxed), 3);
        assert_eq!(
            s.handle(Request::ReadInputRegisters(1, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.handle(Request::ReadHoldingRegisters(1, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.handle(Request::WriteSingleCoil(1, true)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }
}
