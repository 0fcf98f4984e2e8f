//! Container logs: the guest's stdout and stderr written to per-container files in the CRI
//! format kubelets use, and read back the way `kubectl logs` shows them.
//!
//! Files live at `<pod dir>/<container>/<restart count>.log`, kubelet's layout, so the current
//! instance's log and the previous one's (`kubectl logs --previous`) are both at hand. Each write
//! is formatted and appended at once: logs must be visible while the guest runs, and a guest that
//! is killed must not take buffered lines with it.
//!
//! Every write also goes, raw, to the log's [`OutputTap`], which `kubectl attach` sessions
//! subscribe to. The tap is a bounded broadcast that never waits for its subscribers: a slow
//! attached client loses the output beyond its buffer ([`TAP_CHUNKS`] writes) rather than stalling
//! the guest, whose log keeps everything.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wedge_core::crilog::{LineSplitter, Stream};

/// How many writes an attached client may fall behind by before it loses output. A write is at
/// most 64 KiB (the permit [`LogStream`] gives) and usually a line.
pub const TAP_CHUNKS: usize = 256;

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

    fn send(&self, stream: Stream, bytes: &[u8]) {
        // Copying is only worth it for someone to read it.
        if let Some(tx) = self.tx.get()
            && tx.receiver_count() > 0
        {
            // An error only says every subscriber has gone in the meantime.
            let _ = tx.send(OutputChunk {
                stream,
                bytes: Bytes::copy_from_slice(bytes),
            });
        }
    }
}

struct LogFile {
    file: File,
    path: PathBuf,
    stdout: LineSplitter,
    stderr: LineSplitter,
    echo: bool,
    buf: Vec<u8>,
    tap: OutputTap,
}

impl LogFile {
    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        // Under the log's lock, so attached clients see stdout and stderr in the file's order.
        self.tap.send(stream, bytes);
        if self.echo {
            // `wedge wasm run` shows the guest's output as it comes.
            let _ = match stream {
                Stream::Stdout => std::io::stdout().write_all(bytes),
                Stream::Stderr => std::io::stderr().write_all(bytes),
            };
        }
        let splitter = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        self.buf.clear();
        splitter.push(Timestamp::now(), bytes, &mut self.buf);
        self.flush_buf();
    }

    fn finish(&mut self) {
        self.buf.clear();
        let now = Timestamp::now();
        self.stdout.finish(now, &mut self.buf);
        self.stderr.finish(now, &mut self.buf);
        self.flush_buf();
    }

    fn flush_buf(&mut self) {
        if !self.buf.is_empty()
            && let Err(e) = self.file.write_all(&self.buf)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write container log");
        }
    }
}

/// The log of one container instance: hand [`ContainerLog::stdout`] and
/// [`ContainerLog::stderr`] to WASI.
#[derive(Clone)]
pub struct ContainerLog {
    inner: Arc<Mutex<LogFile>>,
}

impl ContainerLog {
    /// Opens (appending to) the log file at `path`; `echo` also copies output to this process's
    /// own stdout and stderr.
    pub fn open(path: &Path, echo: bool) -> std::io::Result<Self> {
        Self::open_tapped(path, echo, OutputTap::default())
    }

    /// Opens the log as [`ContainerLog::open`] does, every write also sent to `tap`.
    pub fn open_tapped(path: &Path, echo: bool, tap: OutputTap) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(LogFile {
                file,
                path: path.to_owned(),
                stdout: LineSplitter::new(Stream::Stdout),
                stderr: LineSplitter::new(Stream::Stderr),
                echo,
                buf: Vec::new(),
                tap,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogFile> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A WASI stdout that writes into this log.
    pub fn stdout(&self) -> LogStream {
        LogStream {
            log: self.clone(),
            stream: Stream::Stdout,
        }
    }

    /// A WASI stderr that writes into this log.
    pub fn stderr(&self) -> LogStream {
        LogStream {
            log: self.clone(),
            stream: Stream::Stderr,
        }
    }

    /// Writes a line from the runtime itself (for example a handler's failed invocation) as
    /// stderr, so it shows in `kubectl logs` beside the guest's own output.
    pub fn runtime_line(&self, line: &str) {
        let mut f = self.lock();
        f.write(Stream::Stderr, format!("{line}\n").as_bytes());
    }

    /// Writes out unterminated lines; call when the instance ends.
    pub fn finish(&self) {
        self.lock().finish();
    }
}

/// One of a container's output streams.
#[derive(Clone)]
pub struct LogStream {
    log: ContainerLog,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.lock().write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.lock().write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
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
    use wedge_core::crilog::{LogOptions, LogRenderer, tail_start};

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

    #[test]
    fn the_tap_passes_writes_on_and_never_waits_for_a_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tap = OutputTap::default();
        let log =
            ContainerLog::open_tapped(&dir.path().join("0.log"), false, tap.clone()).expect("open");
        let mut out = log.stdout();
        // Nobody attached: nothing is kept.
        OutputStream::write(&mut out, Bytes::from_static(b"before\n")).expect("write");
        let mut attached = tap.subscribe();
        let mut idle = tap.subscribe();
        OutputStream::write(&mut out, Bytes::from_static(b"one\n")).expect("write");
        log.runtime_line("wedge: note");
        assert_eq!(
            attached.try_recv().expect("a chunk"),
            OutputChunk {
                stream: Stream::Stdout,
                bytes: Bytes::from_static(b"one\n")
            }
        );
        assert_eq!(attached.try_recv().expect("a chunk").stream, Stream::Stderr);
        // A reader that never reads costs the writer nothing: it loses the oldest writes.
        for _ in 0..TAP_CHUNKS {
            OutputStream::write(&mut out, Bytes::from_static(b"more\n")).expect("write");
        }
        assert!(matches!(
            idle.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(2))
        ));
        let file = std::fs::read_to_string(dir.path().join("0.log")).expect("read");
        assert_eq!(
            file.lines().count(),
            TAP_CHUNKS + 3,
            "the log has everything"
        );
    }

    #[test]
    fn writes_are_logged_and_rendered_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = ContainerLog::open(&path, false).expect("open");
        let mut out = log.stdout();
        let mut err = log.stderr();
        OutputStream::write(&mut out, Bytes::from_static(b"one\ntw")).expect("write");
        OutputStream::write(&mut err, Bytes::from_static(b"oops\n")).expect("write");
        OutputStream::write(&mut out, Bytes::from_static(b"o\nthree")).expect("write");
        log.finish();
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
    }
}
