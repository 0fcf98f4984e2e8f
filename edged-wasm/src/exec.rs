//! Commands in a Wasm container (`kubectl exec`, exec probes) and attaching to its own instance
//! (`kubectl attach`).
//!
//! A Wasm guest has no processes to start beside it, so a command "in" a container is a fresh
//! instance of the container's component, called through `wasi:cli/run` with the command as its
//! argv. What a process in a container shares with it is what the instance gets: the
//! environment, the volumes, the pod's grants to devices and topics, and the limits, applied by
//! the code that builds the container's own instance (`container::run_command`). Only apps
//! export `wasi:cli/run`: a handler has no command to run. Limits are per instance, so the
//! command may use as much memory and CPU as the container's own instance, and its figures are
//! not counted in the container's. Its output goes to the caller, not to the container's log.
//!
//! Attaching (`attach`) reads the container's own instance as it runs: its output from now on,
//! as it is written, through the log's [`OutputTap`](crate::logs::OutputTap), and for a
//! container created with `stdin: true`, its stdin. The tap never waits for a client: one that
//! falls more than [`TAP_CHUNKS`](crate::logs::TAP_CHUNKS) writes behind loses the output in
//! between (the log keeps it) rather than stalling the app.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, watch};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wedge_core::crilog::Stream;
use wedge_core::runtime::{ContainerState, ExecResult, ExecStreams, RuntimeError, TerminalSize};
use wedge_core::status::reason;

use crate::container::{self, WasmContainer};
use crate::host::HostState;
use crate::instance::{Exit, InstanceError, wasi_ctx_with};
use crate::limits::ContainerMeters;
use crate::logs::OutputChunk;
use crate::runtime::Inner;
use crate::stdio::{ChannelOutput, ChannelStdin};

/// Why a command could not run to its exit, or a client could not attach.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The container is created but not started, or has exited.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The container is a handler: it has no `wasi:cli/run` to call.
    #[error("container {0} is a handler: it exports no wasi:cli/run to run a command with")]
    NoCommand(String),
    /// The command is empty.
    #[error("no command to run")]
    EmptyCommand,
    /// The command's instance could not be set up (a volume gone, say).
    #[error("the command cannot be set up: {0}")]
    Instance(#[from] InstanceError),
    /// The command trapped (a panic, an `unreachable`, a fault).
    #[error("the command trapped: {0}")]
    Trapped(String),
    /// The command grew its memory past the container's limit.
    #[error("the command was stopped: {0}")]
    OutOfMemory(String),
    /// The container stopped while the command ran, and took it with it.
    #[error("container {0} was stopped while the command ran")]
    Stopped(String),
    /// The command did not end in time (exec probes).
    #[error("command timed out after {0:?}")]
    TimedOut(Duration),
    /// The task running the command failed (it panicked).
    #[error("the command's task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl From<ExecError> for RuntimeError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::NoCommand(_) => Self::Unsupported(e.to_string()),
            ExecError::EmptyCommand => Self::InvalidConfig {
                field: "command".to_owned(),
                message: e.to_string(),
            },
            ExecError::NotRunning(_)
            | ExecError::Instance(_)
            | ExecError::Trapped(_)
            | ExecError::OutOfMemory(_)
            | ExecError::Stopped(_)
            | ExecError::TimedOut(_)
            | ExecError::Task(_) => Self::Failed(e.to_string()),
        }
    }
}

fn ensure_running(c: &WasmContainer) -> Result<(), ExecError> {
    if matches!(*c.state.borrow(), ContainerState::Running { .. }) {
        Ok(())
    } else {
        Err(ExecError::NotRunning(c.config.name.clone()))
    }
}

/// The container's command, after checking that a command can run in it now.
fn command_of(c: &WasmContainer, argv: &[String]) -> Result<CommandPre<HostState>, ExecError> {
    ensure_running(c)?;
    let pre = c
        .command
        .clone()
        .ok_or_else(|| ExecError::NoCommand(c.config.name.clone()))?;
    if argv.is_empty() {
        return Err(ExecError::EmptyCommand);
    }
    Ok(pre)
}

/// Runs `argv` in the container with its output captured, as exec probes (and `exec_sync`) do.
/// A trap is an exit code (134) with the trap in stderr, as a crashed probe command would be.
pub(crate) async fn exec_sync(
    rt: &Arc<Inner>,
    c: Arc<WasmContainer>,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecResult, ExecError> {
    let pre = command_of(&c, argv)?;
    const MAX_OUTPUT: usize = 1 << 20;
    let stdout = MemoryOutputPipe::new(MAX_OUTPUT);
    let stderr = MemoryOutputPipe::new(MAX_OUTPUT);
    let wasi = wasi_ctx_with(
        &c.plan,
        argv,
        tokio::io::empty(),
        stdout.clone(),
        stderr.clone(),
    )?;
    let cancel = c.cancel.child_token();
    // Returning (a timeout) or being dropped stops the command.
    let _stop = cancel.clone().drop_guard();
    let task = c.spawn({
        let (rt, c) = (rt.clone(), c.clone());
        async move {
            // The command's figures are its own: the container's are its instance's.
            let meters = Arc::new(ContainerMeters::default());
            container::run_command(&rt, &c, pre, wasi, &meters, &cancel).await
        }
    });
    let outcome = tokio::time::timeout(timeout, task)
        .await
        .map_err(|_| ExecError::TimedOut(timeout))?
        .map_err(ExecError::Task)?;
    let exit = match outcome {
        Some(result) => Exit::of_run(result),
        None => Exit::killed("the container was stopped"),
    };
    let mut stderr = stderr.contents().to_vec();
    if let Some(m) = exit.message {
        stderr.extend_from_slice(m.as_bytes());
    }
    Ok(ExecResult {
        exit_code: exit.code,
        stdout: stdout.contents().to_vec(),
        stderr,
    })
}

/// Runs `argv` in the container with the client's `streams` (`kubectl exec`) and returns its
/// exit code: 0 when `wasi:cli/run` returns `ok`, 1 for `err`, the code it exits with
/// (`std::process::exit`). A command that traps or runs out of memory did not exit: that is an
/// error, as is the container stopping under it. Dropping the future stops the command.
///
/// With a terminal the command's stderr goes to stdout and both, and stdin, say they are a
/// terminal; WASI has no terminal size, so resizes are read and dropped. The streams the
/// client did not ask for are empty (stdin) or discarded (output).
pub(crate) async fn exec(
    rt: &Arc<Inner>,
    c: Arc<WasmContainer>,
    argv: &[String],
    streams: ExecStreams,
) -> Result<i32, ExecError> {
    let pre = command_of(&c, argv)?;
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        resize,
        tty,
    } = streams;
    let stdin = ChannelStdin::new(stdin, tty);
    let stdout = ChannelOutput::new(stdout, tty);
    let stderr = if tty {
        stdout.clone()
    } else {
        ChannelOutput::new(stderr, false)
    };
    let wasi = wasi_ctx_with(&c.plan, argv, stdin, stdout.clone(), stderr.clone())?;
    // A child of the container's token: stopping the container stops its commands too.
    let cancel = c.cancel.child_token();
    let _stop = cancel.clone().drop_guard();
    tracing::debug!(container = %c.config.name, id = %c.id, command = ?argv, tty, "exec");
    let task = c.spawn({
        let (rt, c) = (rt.clone(), c.clone());
        async move {
            // The command's figures are its own: the container's are its instance's.
            let meters = Arc::new(ContainerMeters::default());
            container::run_command(&rt, &c, pre, wasi, &meters, &cancel).await
        }
    });
    let outcome = tokio::select! {
        joined = task => joined.map_err(ExecError::Task)?,
        never = drop_resizes(resize) => match never {},
    };
    let Some(result) = outcome else {
        return Err(ExecError::Stopped(c.config.name.clone()));
    };
    // Whatever the command wrote reaches the client before it learns how it ended.
    stdout.flushed().await;
    stderr.flushed().await;
    let code = exit_code(result)?;
    tracing::debug!(container = %c.config.name, id = %c.id, code, "exec ended");
    Ok(code)
}

/// The exit code of a command, or why it has none.
fn exit_code(result: wasmtime::Result<Result<(), ()>>) -> Result<i32, ExecError> {
    let exit = Exit::of_run(result);
    match exit.message {
        None => Ok(exit.code),
        Some(m) if exit.reason == reason::OOM_KILLED => Err(ExecError::OutOfMemory(m)),
        Some(m) => Err(ExecError::Trapped(m)),
    }
}

/// Reads terminal sizes so the client never waits to send one; never ends.
async fn drop_resizes(resize: Option<mpsc::Receiver<TerminalSize>>) -> Infallible {
    if let Some(mut resize) = resize {
        while let Some(size) = resize.recv().await {
            tracing::trace!(
                ?size,
                "terminal resized: WASI has no terminal size to pass on"
            );
        }
    }
    std::future::pending().await
}

/// Connects `streams` to the container's own instance (`kubectl attach`) until it exits or the
/// client's output channels close; dropping the future detaches. Detaching leaves the instance
/// running, and its stdin open for the next client.
///
/// Output: what the instance writes from now on (earlier output is in `kubectl logs`); with a
/// terminal, on the session's or the container's, stderr comes on stdout. A client that falls
/// behind skips output rather than holding up the app. Input: into the instance's stdin if
/// the container was created with `stdin: true`; otherwise it is read and dropped, as
/// containerd does.
pub(crate) async fn attach(c: Arc<WasmContainer>, streams: ExecStreams) -> Result<(), ExecError> {
    // Subscribed before the state is checked: nothing written once it is running is missed.
    let mut output = c.output.subscribe();
    let mut state = c.state.subscribe();
    ensure_running(&c)?;
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        resize,
        tty,
    } = streams;
    let stderr = if tty || c.config.tty {
        stdout.clone()
    } else {
        stderr
    };
    let into = container::stdin_of(&c);
    if stdin.is_some() && into.is_none() {
        tracing::debug!(container = %c.config.name, id = %c.id, "attach: the container has no stdin; the client's input is dropped");
    }
    tracing::debug!(container = %c.config.name, id = %c.id, tty, "attached");
    let session = async {
        loop {
            let chunk = tokio::select! {
                biased;
                r = output.recv() => match r {
                    Ok(chunk) => chunk,
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(container = %c.config.name, id = %c.id, skipped = n, "an attached client fell behind: output skipped");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
                () = exited(&mut state) => {
                    // The instance wrote everything before it was marked exited: pass on what
                    // is left, then end.
                    while let Some(chunk) = next_kept(&mut output) {
                        if !deliver(&stdout, &stderr, tty, chunk).await {
                            return;
                        }
                    }
                    return;
                }
                () = any_closed(&stdout, &stderr) => return,
            };
            if !deliver(&stdout, &stderr, tty, chunk).await {
                return;
            }
        }
    };
    tokio::select! {
        () = session => {}
        never = forward_stdin(stdin, into) => match never {},
        never = drop_resizes(resize) => match never {},
    }
    tracing::debug!(container = %c.config.name, id = %c.id, "detached");
    Ok(())
}

/// Sends `chunk` to the client's stream for it, its lines ended CR LF for a client on a
/// `terminal` (which has put its terminal in raw mode, as for exec); false when the client has
/// gone.
async fn deliver(
    stdout: &Option<mpsc::Sender<Bytes>>,
    stderr: &Option<mpsc::Sender<Bytes>>,
    terminal: bool,
    chunk: OutputChunk,
) -> bool {
    let to = match chunk.stream {
        Stream::Stdout => stdout,
        Stream::Stderr => stderr,
    };
    let bytes = if terminal {
        crate::stdio::onlcr(&chunk.bytes)
    } else {
        chunk.bytes
    };
    match to {
        Some(tx) => tx.send(bytes).await.is_ok(),
        None => true,
    }
}

/// The next chunk still held by the tap, without waiting.
fn next_kept(output: &mut broadcast::Receiver<OutputChunk>) -> Option<OutputChunk> {
    loop {
        match output.try_recv() {
            Ok(chunk) => return Some(chunk),
            Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
        }
    }
}

/// Ends when the container has exited (or is gone).
async fn exited(state: &mut watch::Receiver<ContainerState>) {
    let _ = state
        .wait_for(|s| matches!(s, ContainerState::Exited(_)))
        .await;
}

/// Ends when the client closes one of its output streams: it has gone.
async fn any_closed(stdout: &Option<mpsc::Sender<Bytes>>, stderr: &Option<mpsc::Sender<Bytes>>) {
    match (stdout, stderr) {
        (Some(a), Some(b)) => {
            tokio::select! {
                () = a.closed() => {}
                () = b.closed() => {}
            }
        }
        (Some(a), None) | (None, Some(a)) => a.closed().await,
        (None, None) => std::future::pending().await,
    }
}

/// Passes the client's input to the instance's stdin (or drops it); never ends. The client
/// closing its stdin ends its input, not the instance's stdin: another client may attach.
async fn forward_stdin(
    from: Option<mpsc::Receiver<Bytes>>,
    into: Option<mpsc::Sender<Bytes>>,
) -> Infallible {
    if let Some(mut from) = from {
        while let Some(bytes) = from.recv().await {
            if let Some(into) = &into
                && into.send(bytes).await.is_err()
            {
                // The instance has ended; the session ends with it.
                break;
            }
        }
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_codes_and_crashes_are_errors() {
        assert_eq!(exit_code(Ok(Ok(()))).expect("code"), 0);
        assert_eq!(exit_code(Ok(Err(()))).expect("code"), 1);
        let exit = wasmtime::Error::new(wasmtime_wasi::I32Exit(7));
        assert_eq!(exit_code(Err(exit)).expect("code"), 7);
        let oom = wasmtime::Error::new(crate::limits::MemoryLimitExceeded {
            requested: 2,
            limit: 1,
        });
        assert!(matches!(
            exit_code(Err(oom)),
            Err(ExecError::OutOfMemory(_))
        ));
        let trap = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        let e = exit_code(Err(trap)).expect_err("a trap");
        assert!(e.to_string().starts_with("the command trapped"), "{e}");
    }

    #[tokio::test]
    async fn attach_output_goes_by_stream_until_the_client_goes() {
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let (err_tx, mut err_rx) = mpsc::channel(4);
        let (stdout, stderr) = (Some(out_tx), Some(err_tx));
        let chunk = |stream, text: &'static str| OutputChunk {
            stream,
            bytes: Bytes::from_static(text.as_bytes()),
        };
        assert!(deliver(&stdout, &stderr, false, chunk(Stream::Stdout, "out\n")).await);
        assert!(deliver(&stdout, &stderr, false, chunk(Stream::Stderr, "err")).await);
        assert!(deliver(&stdout, &None, false, chunk(Stream::Stderr, "dropped")).await);
        // A client on a terminal gets its lines as a pty writes them.
        assert!(deliver(&stdout, &stderr, true, chunk(Stream::Stdout, "a\nb\n")).await);
        assert_eq!(out_rx.recv().await.as_deref(), Some(&b"out\n"[..]));
        assert_eq!(err_rx.recv().await.as_deref(), Some(&b"err"[..]));
        assert_eq!(out_rx.recv().await.as_deref(), Some(&b"a\r\nb\r\n"[..]));
        drop(err_rx);
        any_closed(&stdout, &stderr).await;
        assert!(!deliver(&stdout, &stderr, false, chunk(Stream::Stderr, "gone")).await);
    }
}
