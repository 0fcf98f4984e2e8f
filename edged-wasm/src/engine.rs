//! The wasmtime engine every pod on the edge shares, and the epoch ticker that drives it.
//!
//! One engine per process: compiled code, the pooling allocator's slots and the epoch counter
//! are shared by all pods. The pooling allocator makes instantiation cheap (handlers get a fresh
//! instance per event); epoch interruption lets the host preempt any guest, which is how a stuck
//! guest is stopped and how CPU limits are applied (see [`crate::limits`]).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Engine settings from the edge's configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How many component instances may exist at once: running apps plus in-flight handler
    /// calls. The pooling allocator reserves address space (not memory) for each.
    pub max_instances: u32,
    /// The largest linear memory any guest may have, whatever its pod's limit.
    pub max_memory_bytes: usize,
    /// How often the epoch advances: the granularity of preemption and CPU accounting.
    pub epoch_tick: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot configure wasmtime: {0:#}")]
pub struct EngineError(#[source] wasmtime::Error);

/// Builds the shared engine.
pub fn build_engine(settings: &EngineSettings) -> Result<Engine, EngineError> {
    let n = settings.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    // A Rust wasip2 component holds a few core instances (the program and its shims).
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(settings.max_memory_bytes)
        // Handlers get a fresh instance per event, so resetting a slot must be cheap. With
        // PAGEMAP_SCAN (Linux 6.7+) only the pages a guest dirtied are reset, by memset, up to
        // these sizes, and the pages stay resident; without it, the lowest bytes are memset and
        // the rest madvised away. Decommits are batched to save syscalls.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .decommit_batch_size(16);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(EngineError)
}

/// Advances the engine's epoch every tick on a thread of its own until dropped.
pub struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine` every `tick`.
    pub fn start(engine: Engine, tick: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // The sender is dropped (never used to send) when the ticker is dropped.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the epoch thread: guests will not be preempted");
        }
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
