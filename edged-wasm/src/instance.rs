//! Building a store for one instance of a container: its WASI context (argv, env, preopened
//! volumes, stdout and stderr into the container's log, or a command's streams for `exec`), its
//! limits, and how the epoch ticker treats it.
//!
//! Apps yield at every epoch tick and are accounted for CPU (see [`crate::limits`]); handlers
//! get a fixed budget of ticks per invocation and trap past it, so a handler stuck in a loop
//! cannot hold up the events behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{CallHook, Engine, Store};
use wasmtime_wasi::cli::{StdinStream, StdoutStream};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder};
use wedge_core::grants::PodGrants;
use wedge_core::status::reason;

use crate::host::{Backends, HostState};
use crate::limits::{ContainerMeters, MemoryLimitExceeded};
use crate::logs::ContainerLog;
use crate::spec::ContainerPlan;

/// Why an instance could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A volume's directory could not be created or opened.
    #[error("volume mount {guest_path}: {message}")]
    Mount {
        /// Where the guest would see it.
        guest_path: String,
        /// What failed.
        message: String,
    },
    /// The log file could not be opened.
    #[error("container log: {0}")]
    Log(#[from] std::io::Error),
}

/// Builds the WASI context of one instance, its output into the container's log and no stdin.
pub fn wasi_ctx(plan: &ContainerPlan, log: &ContainerLog) -> Result<WasiCtx, InstanceError> {
    wasi_ctx_with(
        plan,
        &plan.argv,
        tokio::io::empty(),
        log.stdout(),
        log.stderr(),
    )
}

/// Builds a WASI context with `argv` and the given streams: the container's own instance
/// (stdin for attached clients, output into its log) or a command run in the container, whose
/// streams are the caller's. Everything else (env, volumes, network) is the container's.
pub fn wasi_ctx_with(
    plan: &ContainerPlan,
    argv: &[String],
    stdin: impl StdinStream + 'static,
    stdout: impl StdoutStream + 'static,
    stderr: impl StdoutStream + 'static,
) -> Result<WasiCtx, InstanceError> {
    let mut b = WasiCtxBuilder::new();
    b.args(argv)
        .envs(&plan.env)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    if plan.network {
        // The pod's own network namespace: the guest has what a container would.
        b.inherit_network()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
    }
    for m in &plan.mounts {
        let fail = |message: String| InstanceError::Mount {
            guest_path: m.guest_path.clone(),
            message,
        };
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| fail(format!("{} cannot be opened: {e:#}", m.host_path.display())))?;
    }
    Ok(b.build())
}

/// A store for an app instance: memory limit, CPU quota, a yield at every epoch tick.
pub fn app_store(
    engine: &Engine,
    wasi: WasiCtx,
    plan: &ContainerPlan,
    backends: &Backends,
    grants: &Arc<PodGrants>,
    meters: &Arc<ContainerMeters>,
) -> Store<HostState> {
    let state = HostState::new(
        wasi,
        backends,
        grants,
        plan.memory_limit,
        plan.cpu_millicores,
        Some(meters.clone()),
    );
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().cpu.on_epoch()));
    store.call_hook(|mut ctx, hook| {
        let now = Instant::now();
        let cpu = &mut ctx.data_mut().cpu;
        match hook {
            CallHook::CallingWasm | CallHook::ReturningFromHost => cpu.enter(now),
            CallHook::CallingHost | CallHook::ReturningFromWasm => cpu.leave(now),
        }
        Ok(())
    });
    store
}

/// A store for one handler invocation: memory limit, and a trap after `budget_ticks` epochs.
pub fn handler_store(
    engine: &Engine,
    wasi: WasiCtx,
    plan: &ContainerPlan,
    backends: &Backends,
    grants: &Arc<PodGrants>,
    budget_ticks: u64,
) -> Store<HostState> {
    let state = HostState::new(wasi, backends, grants, plan.memory_limit, None, None);
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(budget_ticks);
    store.epoch_deadline_trap();
    store
}

/// How an instance ended, in kubelet's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit code.
    pub code: i32,
    /// Kubelet reason: Completed, Error, OOMKilled, Killed.
    pub reason: &'static str,
    /// What happened.
    pub message: Option<String>,
}

/// The longest termination message kept (kubelet's limit is 4096 bytes).
const MAX_MESSAGE: usize = 4096;

/// The exit code reported for a trap (as for a process killed by SIGABRT).
pub const TRAP_EXIT_CODE: i32 = 134;
/// The exit code reported for an instance stopped by the runtime (as for SIGKILL).
pub const KILLED_EXIT_CODE: i32 = 137;

impl Exit {
    /// Classifies the result of `wasi:cli/run`.
    pub fn of_run(result: wasmtime::Result<Result<(), ()>>) -> Self {
        match result {
            Ok(Ok(())) => Self::code(0),
            Ok(Err(())) => Self::code(1),
            Err(e) => Self::of_error(&e),
        }
    }

    fn code(code: i32) -> Self {
        let reason = if code == 0 {
            reason::COMPLETED
        } else {
            reason::ERROR
        };
        Self {
            code,
            reason,
            message: None,
        }
    }

    /// Classifies an error out of a guest call: exit, memory limit, trap.
    pub fn of_error(e: &wasmtime::Error) -> Self {
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return Self::code(exit.0);
        }
        if let Some(oom) = e.downcast_ref::<MemoryLimitExceeded>() {
            return Self {
                code: KILLED_EXIT_CODE,
                reason: reason::OOM_KILLED,
                message: Some(oom.to_string()),
            };
        }
        // `{:#}` gives the error chain with the wasm backtrace, without a host backtrace.
        let mut message = format!("{e:#}");
        if message.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE)
                .rev()
                .find(|i| message.is_char_boundary(*i))
                .unwrap_or(0);
            message.truncate(cut);
        }
        Self {
            code: TRAP_EXIT_CODE,
            reason: reason::ERROR,
            message: Some(message),
        }
    }

    /// The exit of an instance the runtime stopped.
    pub fn killed(why: &str) -> Self {
        Self {
            code: KILLED_EXIT_CODE,
            reason: reason::KILLED,
            message: Some(why.to_owned()),
        }
    }
}

/// Ticks in `d`, at least one.
pub fn ticks(d: Duration, tick: Duration) -> u64 {
    (d.as_nanos() / tick.as_nanos().max(1))
        .max(1)
        .try_into()
        .unwrap_or(u64::MAX)
}
