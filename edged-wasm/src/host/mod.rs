//! What the host gives a guest: WASI p2, the device twin, the message bus, and the limits around
//! them, gathered in the store's data ([`HostState`]) and one [`Linker`] for every pod.
//!
//! Each WIT package has a module of its own ([`device`], [`messaging`]) with its bindings and its
//! `Host` implementation over a backend trait of `wedge_core::backend`; [`in_process`] holds the
//! in-memory backends.

pub mod device;
#[cfg(test)]
mod fuzz;
pub mod in_process;
pub mod messaging;

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wedge_core::grants::PodGrants;

use crate::limits::{ContainerMeters, CpuAccount, MemoryLimiter};
use device::DeviceCtx;
use messaging::{MessagingCtx, MessagingData, MessagingView};
use wedge_core::backend::{BusBackend, TwinBackend};

/// The backends the host functions reach: one of each per runtime, shared by all pods.
#[derive(Clone)]
pub struct Backends {
    /// The device twin store.
    pub twin: Arc<dyn TwinBackend>,
    /// The message bus.
    pub bus: Arc<dyn BusBackend>,
}

impl Backends {
    /// Fresh in-process backends (nothing persisted, nothing external).
    pub fn in_process() -> (
        Self,
        Arc<in_process::InProcessTwin>,
        Arc<in_process::InProcessBus>,
    ) {
        let twin = Arc::new(in_process::InProcessTwin::default());
        let bus = Arc::new(in_process::InProcessBus::default());
        (
            Self {
                twin: twin.clone(),
                bus: bus.clone(),
            },
            twin,
            bus,
        )
    }
}

/// The data of one instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryLimiter,
    pub(crate) cpu: CpuAccount,
    device: DeviceCtx,
    messaging: MessagingCtx,
}

impl HostState {
    /// The state for one instance of a pod's container.
    pub fn new(
        wasi: WasiCtx,
        backends: &Backends,
        grants: &Arc<PodGrants>,
        memory_limit: Option<usize>,
        cpu_millicores: Option<u64>,
        meters: Option<Arc<ContainerMeters>>,
    ) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryLimiter::new(memory_limit, meters.clone()),
            cpu: CpuAccount::new(cpu_millicores, meters),
            device: DeviceCtx::new(backends.twin.clone(), grants.clone()),
            messaging: MessagingCtx::new(backends.bus.clone(), grants.clone()),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Builds the linker with everything a guest may import.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    device::bindings::Imports::add_to_linker::<HostState, HasSelf<DeviceCtx>>(&mut linker, |s| {
        &mut s.device
    })?;
    messaging::bindings::Imports::add_to_linker::<HostState, MessagingData>(&mut linker, |s| {
        MessagingView {
            ctx: &mut s.messaging,
            table: &mut s.table,
        }
    })?;
    Ok(linker)
}

/// What a component is, by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// Exports `wasi:cli/run`: a long-running app (or a command that exits).
    App,
    /// Exports `wedge:app/event-handler`: called per event.
    Handler,
}

/// The export that makes a component an app.
pub const APP_EXPORT: &str = "wasi:cli/run@0.2";
/// The export that makes a component a handler.
pub const HANDLER_EXPORT: &str = "wedge:app/event-handler@0.1";

/// Tells apps from handlers; `None` when the component exports neither.
pub fn component_kind(engine: &Engine, component: &Component) -> Option<ComponentKind> {
    let ty = component.component_type();
    let mut kind = None;
    for (name, _) in ty.exports(engine) {
        if name.starts_with(HANDLER_EXPORT) {
            return Some(ComponentKind::Handler);
        }
        if name.starts_with(APP_EXPORT) {
            kind = Some(ComponentKind::App);
        }
    }
    kind
}
