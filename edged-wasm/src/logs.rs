//! Container logs: the guest's stdout and stderr written to per-container files in the CRI
//! format kubelets use, and read back the way `kubectl logs` shows them.
//!
//! Files live at `<pod dir>/<container>/<restart count>.log`, kubelet's layout, so the current
//! instance's log and the previous one's (`kubectl logs --previous`) are both at hand.
//!
//! A guest's write never touches the disk on the thread that runs the guest: it goes, stamped
//! with the time it was made, into a bounded channel ([`LOG_CHUNKS`] writes) that one writer
//! task per instance drains, formatting what has queued into CRI records and appending them in
//! one blocking write (`spawn_blocking`), so a slow disk stalls no async worker. A guest writing
//! faster than the disk takes it waits (its stream is not ready until the channel has room,
//! which is how WASI streams apply back-pressure); nothing it was allowed to write is dropped.
//! Stdout and stderr share the channel, so the file keeps them in the order they were written.
//! [`ContainerLog::close`] returns once everything accepted is in the file: the container's
//! status says it exited only after that, so `kubectl logs` of a finished pod has every line, and
//! a follow that sees the exit reads to the true end. Lines are written as soon as the writer
//! gets them (no timer holds them back): logs are visible while the guest runs.
//!
//! Every write also goes, raw, to the log's [`OutputTap`], which `kubectl attach` sessions
//! subscribe to; the writer sends it, in the file's order. The tap is a bounded broadcast that
//! never waits for its subscribers: a slow attached client loses the output beyond its buffer
//! ([`TAP_CHUNKS`] writes) rather than stalling the guest, whose log keeps everything.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::PollSender;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wedge_core::crilog::{LineSplitter, Stream};
use wedge_core::logrotation::{self, LogLimits};

/// How many writes an attached client may fall behind by before it loses output. A write is at
/// most [`WRITE_PERMIT`] bytes and usually a line.
pub const TAP_CHUNKS: usize = 256;

/// How many writes of an instance may wait for its log writer; a guest that has this many
/// queued waits for the disk. A write is at most [`WRITE_PERMIT`] bytes and usually a line.
pub const LOG_CHUNKS: usize = 64;

/// The most a guest hands over in one write.
const WRITE_PERMIT: usize = 64 * 1024;

/// How much formatted output the writer gathers before writing it out, when more is queued.
const BATCH_BYTES: usize = 256 * 1024;

/// Renames a log that reached its size limit as the kubelet names rotated logs, removes the
/// oldest rotated ones beyond `max_files`, and opens a fresh file at `path`. Readers following
/// the old file move to the new one when its inode changes (`edged::logs` at the edge).
fn rotate(path: &Path, max_files: usize) -> std::io::Result<File> {
    std::fs::rename(path, logrotation::rotated_path(path, Timestamp::now()))?;
    if let Some(dir) = path.parent() {
        let siblings: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        for old in logrotation::excess_rotated(path, &siblings, max_files) {
            let _ = std::fs::remove_file(old);
        }
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// One write of a guest, as it made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream it wrote to.
    pub stream: Stream,
    /// What it wrote.
    pub bytes: Bytes,
}

/// The live output of a container's instance, for attached clients: every write, as it is made.
///
/// Cloning gives another handle on the same tap. Sending never blocks and costs nothing while
/// no one is subscribed; a subscriber that falls more than [`TAP_CHUNKS`] writes behind is told
/// how many it missed ([`broadcast::error::RecvError::Lagged`]) and goes on from the oldest kept.
/// The broadcast's ring is made by the first subscriber: most containers are never attached to,
/// and an edge runs many.
#[derive(Debug, Clone, Default)]
pub struct OutputTap {
    tx: Arc<OnceLock<broadcast::Sender<OutputChunk>>>,
}

impl OutputTap {
    /// A receiver of what is written from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<OutputChunk> {
        self.tx
            .get_or_init(|| broadcast::Sender::new(TAP_CHUNKS))
            .subscribe()
    }

    fn send(&self, stream: Stream, bytes: &Bytes) {
        if let Some(tx) = self.tx.get()
            && tx.receiver_count() > 0
        {
            // An error only says every subscriber has gone in the meantime.
            let _ = tx.send(OutputChunk {
                stream,
                bytes: bytes.clone(),
            });
        }
    }
}

/// What the log's writer is sent.
enum Entry {
    /// A write, stamped with the time it was made.
    Write {
        stream: Stream,
        time: Timestamp,
        bytes: Bytes,
    },
    /// The instance has ended: write out unterminated lines, answer once all is in the file, and
    /// stop.
    Close(oneshot::Sender<()>),
    /// The file was renamed by Edged's rotation: write out what queued before, then go on in a
    /// fresh file at the log's path, and answer.
    Reopen(oneshot::Sender<std::io::Result<()>>),
}

/// What one blocking write puts out.
#[derive(Default)]
struct Batch {
    /// CRI records for the file.
    records: Vec<u8>,
    /// The raw writes, for this process's own stdout and stderr (`echo`).
    echo: Vec<(Stream, Bytes)>,
}

/// The writer task of one instance's log: the only owner of the file.
struct Writer {
    /// `None` while a blocking write has it.
    file: Option<File>,
    path: PathBuf,
    stdout: LineSplitter,
    stderr: LineSplitter,
    echo: bool,
    tap: OutputTap,
    /// A write has failed and was reported: the next failures are not.
    failed: bool,
    /// When to rotate, and how many files to keep.
    limits: LogLimits,
    /// How long the file is: counted as it is written, so deciding to rotate costs no `stat`.
    size: u64,
}

impl Writer {
    /// Drains `rx` until the log is closed or every sender has gone, writing out what queued in
    /// batches.
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let mut batch = Batch::default();
        loop {
            let mut next = rx.recv().await;
            let mut closed = None;
            let mut reopen = None;
            let ended = loop {
                match next {
                    Some(Entry::Write {
                        stream,
                        time,
                        bytes,
                    }) => {
                        self.tap.send(stream, &bytes);
                        let splitter = match stream {
                            Stream::Stdout => &mut self.stdout,
                            Stream::Stderr => &mut self.stderr,
                        };
                        splitter.push(time, &bytes, &mut batch.records);
                        if self.echo {
                            batch.echo.push((stream, bytes));
                        }
                    }
                    Some(Entry::Close(ack)) => {
                        closed = Some(ack);
                        break true;
                    }
                    Some(Entry::Reopen(ack)) => {
                        reopen = Some(ack);
                        break false;
                    }
                    None => break true,
                }
                if batch.records.len() >= BATCH_BYTES {
                    break false;
                }
                match rx.try_recv() {
                    Ok(entry) => next = Some(entry),
                    Err(mpsc::error::TryRecvError::Empty) => break false,
                    Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                }
            };
            if ended {
                let now = Timestamp::now();
                self.stdout.finish(now, &mut batch.records);
                self.stderr.finish(now, &mut batch.records);
            }
            batch = self.write_out(batch).await;
            if let Some(ack) = reopen {
                let _ = ack.send(self.reopen().await);
            }
            if ended {
                if let Some(ack) = closed {
                    let _ = ack.send(());
                }
                return;
            }
        }
    }

    /// Writes `batch` out on a blocking thread and gives it back emptied, for reuse.
    async fn write_out(&mut self, mut batch: Batch) -> Batch {
        if batch.records.is_empty() && batch.echo.is_empty() {
            return batch;
        }
        let Some(mut file) = self.file.take() else {
            batch.records.clear();
            batch.echo.clear();
            return batch;
        };
        let echo = self.echo;
        let path = self.path.clone();
        let (limits, mut size) = (self.limits, self.size);
        let written = tokio::task::spawn_blocking(move || {
            if echo {
                // `wedge wasm run` shows the guest's output as it comes.
                for (stream, bytes) in &batch.echo {
                    let _ = match stream {
                        Stream::Stdout => std::io::stdout().write_all(bytes),
                        Stream::Stderr => std::io::stderr().write_all(bytes),
                    };
                }
            }
            let mut result = file.write_all(&batch.records);
            if result.is_ok() {
                size += batch.records.len() as u64;
            }
            batch.records.clear();
            batch.echo.clear();
            if size >= limits.max_bytes {
                // Renaming the open file is fine: the fresh one replaces it here.
                match rotate(&path, limits.max_files) {
                    Ok(fresh) => (file, size) = (fresh, 0),
                    Err(e) => result = Err(e),
                }
            }
            (file, size, batch, result)
        })
        .await;
        match written {
            Ok((file, size, batch, result)) => {
                self.file = Some(file);
                self.size = size;
                if let Err(error) = result
                    && !std::mem::replace(&mut self.failed, true)
                {
                    tracing::warn!(path = %self.path.display(), %error, "cannot write container log");
                }
                batch
            }
            Err(error) => {
                // Only a runtime shutting down cancels a blocking task; a panic there would be
                // a bug. Either way the file is gone with it.
                tracing::warn!(path = %self.path.display(), %error, "container log writer stopped");
                Batch::default()
            }
        }
    }
}

impl Writer {
    /// Opens a fresh file at the log's path (the old one was renamed), off the async workers.
    /// On failure the writer keeps the file it had.
    async fn reopen(&mut self) -> std::io::Result<()> {
        let path = self.path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let size = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, size))
        })
        .await
        .map_err(std::io::Error::other)?;
        let (file, size) = opened?;
        self.file = Some(file);
        self.size = size;
        self.failed = false;
        Ok(())
    }
}

/// The log of one container instance: hand [`ContainerLog::stdout`] and
/// [`ContainerLog::stderr`] to WASI, and [`ContainerLog::close`] it when the instance ends.
#[derive(Clone)]
pub struct ContainerLog {
    tx: mpsc::Sender<Entry>,
}

impl ContainerLog {
    /// Opens (appending to) the log file at `path` and starts its writer; `echo` also copies
    /// output to this process's own stdout and stderr.
    ///
    /// Must be called inside a tokio runtime: the writer is a task of it. Writes may come from
    /// any runtime's threads (a pod's network-namespace thread).
    pub fn open(path: &Path, echo: bool) -> std::io::Result<Self> {
        Self::open_tapped(path, echo, OutputTap::default())
    }

    /// Opens the log as [`ContainerLog::open`] does, every write also sent to `tap`.
    pub fn open_tapped(path: &Path, echo: bool, tap: OutputTap) -> std::io::Result<Self> {
        Self::open_limited(path, echo, tap, LogLimits::default())
    }

    /// [`ContainerLog::open_tapped`], rotated as it is written past `limits` (the edge's
    /// `--container-log-max-size` and `--container-log-max-files`): a guest printing as fast as
    /// it can never holds more of the disk than they allow, which a check every few seconds
    /// would not ensure.
    pub fn open_limited(
        path: &Path,
        echo: bool,
        tap: OutputTap,
        limits: LogLimits,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        let (tx, rx) = mpsc::channel(LOG_CHUNKS);
        let writer = Writer {
            file: Some(file),
            path: path.to_owned(),
            stdout: LineSplitter::new(Stream::Stdout),
            stderr: LineSplitter::new(Stream::Stderr),
            echo,
            tap,
            failed: false,
            limits,
            size,
        };
        tokio::spawn(writer.run(rx));
        Ok(Self { tx })
    }

    /// A WASI stdout that writes into this log.
    pub fn stdout(&self) -> LogStream {
        LogStream {
            tx: self.tx.clone(),
            stream: Stream::Stdout,
        }
    }

    /// A WASI stderr that writes into this log.
    pub fn stderr(&self) -> LogStream {
        LogStream {
            tx: self.tx.clone(),
            stream: Stream::Stderr,
        }
    }

    /// Writes a line from the runtime itself (for example a handler's failed invocation) as
    /// stderr, so it shows in `kubectl logs` beside the guest's own output. Waits for room as a
    /// guest's write does.
    pub async fn runtime_line(&self, line: &str) {
        let entry = Entry::Write {
            stream: Stream::Stderr,
            time: Timestamp::now(),
            bytes: Bytes::from(format!("{line}\n")),
        };
        // An error means the log was closed: the instance has ended.
        let _ = self.tx.send(entry).await;
    }

    /// Writes out unterminated lines and returns once everything written before is in the file;
    /// call when the instance ends, before saying that it has. Writes after this are refused
    /// (the stream reads as closed).
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Entry::Close(ack)).await.is_ok() {
            // An error means the writer is gone (its runtime is shutting down).
            let _ = done.await;
        }
    }

    /// Goes on in a fresh file at the log's path, after what was written before: the file there
    /// was renamed (Edged rotated it, as the kubelet rotates every runtime's logs). Returns once
    /// the fresh file is open.
    pub async fn reopen(&self) -> std::io::Result<()> {
        let (ack, done) = oneshot::channel();
        let gone = || std::io::Error::other("the log's writer has stopped");
        self.tx.send(Entry::Reopen(ack)).await.map_err(|_| gone())?;
        done.await.map_err(|_| gone())?
    }
}

/// One of a container's output streams, as WASI's stdout or stderr.
#[derive(Clone)]
pub struct LogStream {
    tx: mpsc::Sender<Entry>,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogOutput {
            tx: self.tx.clone(),
            stream: self.stream,
            permit: None,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LogAsyncWrite {
            tx: PollSender::new(self.tx.clone()),
            stream: self.stream,
        })
    }
}

/// A guest's handle on a log stream: ready to write while it holds a place in the writer's
/// channel.
struct LogOutput {
    tx: mpsc::Sender<Entry>,
    stream: Stream,
    /// The place taken by `check_write` or `ready` for the next write.
    permit: Option<mpsc::OwnedPermit<Entry>>,
}

impl LogOutput {
    /// Takes a place in the channel if one is free: `Ok(false)` when it is full.
    fn try_reserve(&mut self) -> StreamResult<bool> {
        if self.permit.is_some() {
            return Ok(true);
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => {
                self.permit = Some(permit);
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StreamError::Closed),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {
        if self.permit.is_none()
            && let Ok(permit) = self.tx.clone().reserve_owned().await
        {
            self.permit = Some(permit);
        }
        // Closed: `check_write` says so.
    }
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if bytes.len() > WRITE_PERMIT || !self.try_reserve()? {
            return Err(StreamError::trap("wrote more than check-write permitted"));
        }
        if let Some(permit) = self.permit.take() {
            permit.send(Entry::Write {
                stream: self.stream,
                time: Timestamp::now(),
                bytes,
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // A write in the channel is as far as a guest's write goes: the writer takes it from
        // there, and the instance's end waits for it.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(if self.try_reserve()? { WRITE_PERMIT } else { 0 })
    }
}

/// A log stream as a tokio writer, for WASI's asynchronous interfaces.
struct LogAsyncWrite {
    tx: PollSender<Entry>,
    stream: Stream,
}

impl tokio::io::AsyncWrite for LogAsyncWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the log is closed");
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(WRITE_PERMIT);
        let entry = Entry::Write {
            stream: self.stream,
            time: Timestamp::now(),
            bytes: Bytes::copy_from_slice(&buf[..n]),
        };
        self.tx.send_item(entry).map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use wedge_core::crilog::{LogOptions, LogRenderer, parse_record, tail_start};

    use super::*;

    /// The file as `kubectl logs` shows it.
    fn render(file: &[u8], options: &LogOptions) -> Vec<u8> {
        let start = options
            .tail_lines
            .and_then(|n| tail_start(file, n, true))
            .unwrap_or(0);
        let mut renderer = LogRenderer::new(options);
        let mut out = Vec::new();
        renderer.push(&file[start..], &mut out);
        renderer.finish(&mut out);
        out
    }

    /// Writes `bytes` as a guest does: waits until the stream is ready, then writes. Says
    /// whether it had to wait.
    async fn write(out: &mut Box<dyn OutputStream>, bytes: &[u8]) -> bool {
        let mut waited = false;
        while out.check_write().expect("open") == 0 {
            waited = true;
            out.ready().await;
        }
        out.write(Bytes::copy_from_slice(bytes)).expect("write");
        waited
    }

    #[tokio::test]
    async fn a_log_rotates_at_its_size_and_keeps_its_newest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = ContainerLog::open_limited(
            &path,
            false,
            OutputTap::default(),
            LogLimits {
                max_bytes: 4096,
                max_files: 3,
            },
        )
        .expect("open");
        let mut out = log.stdout().p2_stream();
        for i in 0..2000 {
            write(&mut out, format!("line {i}\n").as_bytes()).await;
        }
        log.close().await;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        // 0.log and the two newest rotated ones: the oldest went.
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0], path);
        // Read oldest first, the kept files hold the end of the output without a gap.
        let mut text = Vec::new();
        for file in files[1..].iter().chain(std::iter::once(&files[0])) {
            let bytes = std::fs::read(file).expect("read");
            assert!(
                bytes.len() < 4096 + BATCH_BYTES,
                "{file:?}: {}",
                bytes.len()
            );
            text.extend(render(&bytes, &LogOptions::default()));
        }
        let text = String::from_utf8(text).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"line 1999"));
        let first: usize = lines[0]
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .expect("a numbered line");
        assert!(first > 0, "the oldest lines were rotated away");
        for (k, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("line {}", first + k));
        }
    }

    #[tokio::test]
    async fn a_log_renamed_by_edged_goes_on_in_a_fresh_file_when_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = ContainerLog::open(&path, false).expect("open");
        let mut out = log.stdout().p2_stream();
        write(&mut out, b"before\n").await;
        // As Edged rotates: rename, writes go on into the renamed file, then reopen.
        let rotated = dir.path().join("0.log.20260101-000000.000000");
        std::fs::rename(&path, &rotated).expect("rename");
        write(&mut out, b"between\n").await;
        log.reopen().await.expect("reopened");
        write(&mut out, b"after\n").await;
        log.close().await;
        let text = |p: &Path| {
            let bytes = std::fs::read(p).expect("read");
            String::from_utf8(render(&bytes, &LogOptions::default())).expect("utf-8")
        };
        assert_eq!(text(&rotated), "before\nbetween\n");
        assert_eq!(text(&path), "after\n");
    }

    #[tokio::test]
    async fn the_tap_passes_writes_on_and_never_waits_for_a_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tap = OutputTap::default();
        let log =
            ContainerLog::open_tapped(&dir.path().join("0.log"), false, tap.clone()).expect("open");
        let mut out = log.stdout().p2_stream();
        // Nobody attached: nothing is kept.
        write(&mut out, b"before\n").await;
        let mut attached = tap.subscribe();
        let mut idle = tap.subscribe();
        write(&mut out, b"one\n").await;
        log.runtime_line("wedge: note").await;
        // The writer may have passed "before" on after the subscriptions: skip it.
        let mut first = attached.recv().await.expect("a chunk");
        if first.bytes == "before\n" {
            first = attached.recv().await.expect("a chunk");
        }
        assert_eq!(
            first,
            OutputChunk {
                stream: Stream::Stdout,
                bytes: Bytes::from_static(b"one\n")
            }
        );
        assert_eq!(
            attached.recv().await.expect("a chunk").stream,
            Stream::Stderr
        );
        // A reader that never reads costs the writer nothing: it loses the oldest writes.
        for _ in 0..TAP_CHUNKS {
            write(&mut out, b"more\n").await;
        }
        log.close().await;
        assert!(matches!(
            idle.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(n)) if (2..=3).contains(&n)
        ));
        let file = std::fs::read_to_string(dir.path().join("0.log")).expect("read");
        assert_eq!(
            file.lines().count(),
            TAP_CHUNKS + 3,
            "the log has everything"
        );
    }

    #[tokio::test]
    async fn writes_are_logged_and_rendered_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = ContainerLog::open(&path, false).expect("open");
        let mut out = log.stdout().p2_stream();
        let mut err = log.stderr().p2_stream();
        write(&mut out, b"one\ntw").await;
        write(&mut err, b"oops\n").await;
        write(&mut out, b"o\nthree").await;
        log.close().await;
        let file = std::fs::read(&path).expect("read");
        let text = String::from_utf8_lossy(&file);
        assert!(
            text.lines()
                .all(|l| l.contains(" stdout F ") || l.contains(" stderr F ")),
            "{text}"
        );
        assert_eq!(
            render(&file, &LogOptions::default()),
            b"one\noops\ntwo\nthree\n"
        );
        let tail = LogOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(render(&file, &tail), b"three\n");
        let stamped = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        let first = render(&file, &stamped);
        assert!(
            first.starts_with(b"20"),
            "{}",
            String::from_utf8_lossy(&first)
        );
        // The log is closed: a guest's stream says so.
        assert!(matches!(out.check_write(), Err(StreamError::Closed)));
    }

    /// A guest writing far more than the channel holds waits for the writer instead of losing
    /// lines, and the file keeps stdout and stderr in the order they were written; once
    /// `close` returns, all of it is in the file.
    #[tokio::test]
    async fn a_burst_bigger_than_the_channel_loses_nothing_and_keeps_its_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = ContainerLog::open(&path, false).expect("open");
        let mut out = log.stdout().p2_stream();
        let mut err = log.stderr().p2_stream();
        let lines = 10 * LOG_CHUNKS;
        let mut expected = Vec::new();
        let mut waits = 0;
        for i in 0..lines {
            let (stream, s) = if i % 3 == 0 {
                (Stream::Stderr, &mut err)
            } else {
                (Stream::Stdout, &mut out)
            };
            waits += usize::from(write(s, format!("line {i}\n").as_bytes()).await);
            expected.push((stream, format!("line {i}")));
        }
        // On this one-threaded runtime the writer only runs while the guest waits: the guest
        // filled the channel and waited, again and again.
        assert!(waits >= lines / LOG_CHUNKS - 1, "waited {waits} times");
        log.close().await;
        let file = std::fs::read(&path).expect("read");
        let records: Vec<(Stream, String)> = file
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let r = parse_record(l).expect("a CRI record");
                (r.stream, String::from_utf8_lossy(r.content).into_owned())
            })
            .collect();
        assert_eq!(records, expected);
    }

    /// The runtime's own lines wait for room too, and `close` writes out a last line the guest
    /// did not end.
    #[tokio::test]
    async fn close_waits_for_what_was_queued_and_ends_the_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = ContainerLog::open(&path, false).expect("open");
        for i in 0..3 * LOG_CHUNKS {
            log.runtime_line(&format!("note {i}")).await;
        }
        let mut out = log.stdout().p2_stream();
        write(&mut out, b"no newline").await;
        log.close().await;
        let file = std::fs::read(&path).expect("read");
        let shown = render(&file, &LogOptions::default());
        let text = String::from_utf8_lossy(&shown);
        assert_eq!(text.lines().count(), 3 * LOG_CHUNKS + 1);
        assert!(text.ends_with("no newline\n"), "{text}");
        // Closing again, or after the writer is gone, returns at once.
        log.close().await;
    }
}
