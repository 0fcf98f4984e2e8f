//! Handler components on the fast path: pre-instantiated once, a fresh instance per event.
//!
//! A handler exports `wedge:app/event-handler`. Linking and type-checking happen once, in
//! [`HandlerRunner::new`]; each event then costs a store, an instantiation from the pooling
//! allocator (microseconds) and the call. Nothing survives between events, so a handler that
//! traps or leaks affects only the event it was handling. Events reach a handler one at a time,
//! in the order they happened ([`serve`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;
use wasmtime::component::InstancePre;
use wedge_core::grants::{HandlerTriggers, PodGrants};
use wedge_core::twin::{TwinChange, TwinSide};

use crate::host::device::stamped_to_wit;
use crate::host::messaging::message_to_wit;
use crate::host::{Backends, HostState};
use crate::instance::{Exit, InstanceError, handler_store, ticks, wasi_ctx};
use crate::limits::ContainerMeters;
use crate::logs::ContainerLog;
use crate::spec::ContainerPlan;
use wedge_core::backend::{BusMessage, MessageQueue, now_ms};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wedge:app/handler",
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
            "wedge:device": crate::host::device::bindings::wedge::device,
            "wedge:messaging": crate::host::messaging::bindings::wedge::messaging,
        },
    });
}

use bindings::exports::wedge::app::event_handler as wit;

/// Something that calls a handler.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerEvent {
    /// A twin property changed.
    Twin(TwinChange),
    /// A message arrived.
    Message(BusMessage),
    /// The timer fired at this time (ms since the epoch).
    Timer(u64),
}

impl HandlerEvent {
    fn describe(&self) -> String {
        match self {
            Self::Twin(c) => format!("twin change {}/{}", c.device, c.property),
            Self::Message(m) => format!("message on {}", m.topic),
            Self::Timer(_) => "timer".to_owned(),
        }
    }
}

/// Why one invocation failed. The handler keeps serving later events.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The handler returned `err`.
    #[error("handler returned an error: {0}")]
    Returned(String),
    /// The handler trapped, ran out of memory, or ran past its time budget.
    #[error("handler stopped: {0}")]
    Trapped(String),
    /// The handler did not finish within the time budget (blocked in the host).
    #[error("handler took longer than {0:?}")]
    TimedOut(Duration),
    /// The instance could not be set up.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// A handler component, linked and ready to be instantiated per event.
pub struct HandlerRunner {
    engine: Engine,
    pre: bindings::HandlerPre<HostState>,
    plan: ContainerPlan,
    backends: Backends,
    grants: Arc<PodGrants>,
    log: ContainerLog,
    budget: Duration,
    budget_ticks: u64,
    meters: Arc<ContainerMeters>,
}

/// Why a component cannot serve as a handler.
#[derive(Debug, thiserror::Error)]
#[error("not a handler component: {0:#}")]
pub struct NotAHandler(wasmtime::Error);

impl HandlerRunner {
    /// Prepares a handler from a linked component.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: &Engine,
        pre: InstancePre<HostState>,
        plan: ContainerPlan,
        backends: Backends,
        grants: Arc<PodGrants>,
        log: ContainerLog,
        budget: Duration,
        epoch_tick: Duration,
        meters: Arc<ContainerMeters>,
    ) -> Result<Self, NotAHandler> {
        let pre = bindings::HandlerPre::new(pre).map_err(NotAHandler)?;
        Ok(Self {
            engine: engine.clone(),
            pre,
            plan,
            backends,
            grants,
            log,
            budget,
            budget_ticks: ticks(budget, epoch_tick),
            meters,
        })
    }

    /// The handler's meters (invocations, failures, memory).
    pub fn meters(&self) -> &Arc<ContainerMeters> {
        &self.meters
    }

    /// Runs one event in a fresh instance.
    pub async fn invoke(&self, event: &HandlerEvent) -> Result<(), InvocationError> {
        self.meters.invocations.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.budget, self.call(event)).await;
        let outcome = match result {
            Ok(r) => r,
            Err(_) => Err(InvocationError::TimedOut(self.budget)),
        };
        if outcome.is_err() {
            self.meters.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    async fn call(&self, event: &HandlerEvent) -> Result<(), InvocationError> {
        let wasi = wasi_ctx(&self.plan, &self.log)?;
        let mut store = handler_store(
            &self.engine,
            wasi,
            &self.plan,
            &self.backends,
            &self.grants,
            self.budget_ticks,
        );
        let trapped = |e: wasmtime::Error| {
            InvocationError::Trapped(Exit::of_error(&e).message.unwrap_or_default())
        };
        let handler = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(trapped)?;
        let exports = handler.wedge_app_event_handler();
        let returned = match event {
            HandlerEvent::Twin(c) => {
                let change = wit::TwinChange {
                    device: c.device.clone(),
                    property: c.property.clone(),
                    side: match c.side {
                        TwinSide::Reported => wit::TwinSide::Reported,
                        TwinSide::Desired => wit::TwinSide::Desired,
                    },
                    previous: c.previous.clone().map(stamped_to_wit),
                    current: stamped_to_wit(c.current.clone()),
                };
                exports.call_on_twin_change(&mut store, &change).await
            }
            HandlerEvent::Message(m) => {
                exports
                    .call_on_message(&mut store, &message_to_wit(m.clone()))
                    .await
            }
            HandlerEvent::Timer(at) => exports.call_on_timer(&mut store, *at).await,
        };
        let memory = store.data().memory.in_use();
        self.meters.memory_bytes.store(memory, Ordering::Relaxed);
        returned
            .map_err(trapped)?
            .map_err(InvocationError::Returned)
    }
}

/// Feeds a handler the events its pod subscribed to, one at a time, until `cancel`.
///
/// An invocation under way when `cancel` fires runs to its end (it is bounded by the handler's
/// time budget); the caller bounds the whole by the pod's grace period.
pub async fn serve(
    runner: &HandlerRunner,
    triggers: &HandlerTriggers,
    backends: &Backends,
    cancel: &CancellationToken,
) {
    let mut twin = (!triggers.twin.is_empty()).then(|| backends.twin.changes());
    let queue = Arc::new(MessageQueue::default());
    let mut has_topics = false;
    for filter in &triggers.topics {
        match backends.bus.subscribe(filter, &queue).await {
            Ok(()) => has_topics = true,
            Err(e) => {
                runner
                    .log
                    .runtime_line(&format!(
                        "wedge: cannot subscribe the handler to {filter}: {e}"
                    ))
                    .await
            }
        }
    }
    let mut timer = triggers
        .timer
        .map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            change = next_change(&mut twin), if twin.is_some() => {
                match change {
                    Ok(c) if triggers.twin.iter().any(|t| t.fires_on(&c.device, &c.property)) => HandlerEvent::Twin(c),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        runner.log.runtime_line(&format!("wedge: handler fell behind: {n} twin changes were skipped")).await;
                        continue;
                    }
                    Err(RecvError::Closed) => {
                        twin = None;
                        continue;
                    }
                }
            }
            m = queue.recv(), if has_topics => HandlerEvent::Message(m),
            () = next_tick(&mut timer), if timer.is_some() => HandlerEvent::Timer(now_ms()),
        };
        if let Err(e) = runner.invoke(&event).await {
            tracing::debug!(event = %event.describe(), error = %e, "handler invocation failed");
            runner
                .log
                .runtime_line(&format!(
                    "wedge: handler failed on {}: {e}",
                    event.describe()
                ))
                .await;
        }
    }
}

async fn next_change(
    rx: &mut Option<tokio::sync::broadcast::Receiver<TwinChange>>,
) -> Result<TwinChange, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
