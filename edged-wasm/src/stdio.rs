//! A guest's standard streams over tokio channels of [`Bytes`]: how `kubectl exec` sessions
//! ([`crate::exec`]) give a command its stdin, stdout and stderr, and how an attachable
//! container (`stdin: true`) gets a stdin its attached clients type into.
//!
//! wasmtime-wasi's [`AsyncStdinStream`] and [`AsyncStdoutStream`] do the WASI side (readiness,
//! write permits, several guest handles on one stream); this module only adapts the channels to
//! [`AsyncRead`] and [`AsyncWrite`] and says whether the stream is a terminal. A stream nobody
//! asked for is empty (stdin) or a sink (output), as `/dev/null` would be.
//!
//! Output is not buffered past the channel: a guest writing faster than the client reads waits
//! for it (the channels are bounded), and a write after the client has gone fails as a write to
//! a closed pipe does. Output to a terminal ends its lines as a pty would (see [`onlcr`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use wasmtime_wasi::cli::{
    AsyncStdinStream, AsyncStdoutStream, IsTerminal, StdinStream, StdoutStream,
};
use wasmtime_wasi::p2::pipe::{ClosedInputStream, SinkOutputStream};
use wasmtime_wasi::p2::{InputStream, OutputStream};

/// The most a guest hands over in one write, and so the largest message sent on an output
/// channel.
const WRITE_BUDGET: usize = 32 * 1024;

/// A guest's stdin read from a channel, or an empty one.
#[derive(Clone)]
pub struct ChannelStdin {
    stream: Option<Arc<AsyncStdinStream>>,
    terminal: bool,
}

impl ChannelStdin {
    /// Reads `rx` until its senders are all dropped (end of file); `None` is an empty stdin.
    /// `terminal` is what the guest is told when it asks whether stdin is a terminal.
    ///
    /// Must be called inside a tokio runtime: wasmtime-wasi starts the task that reads ahead.
    pub fn new(rx: Option<mpsc::Receiver<Bytes>>, terminal: bool) -> Self {
        Self {
            stream: rx.map(|rx| {
                Arc::new(AsyncStdinStream::new(ChannelReader {
                    rx,
                    pending: Bytes::new(),
                }))
            }),
            terminal,
        }
    }
}

impl IsTerminal for ChannelStdin {
    fn is_terminal(&self) -> bool {
        self.terminal
    }
}

impl StdinStream for ChannelStdin {
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        match &self.stream {
            Some(s) => s.async_stream(),
            None => Box::new(tokio::io::empty()),
        }
    }

    fn p2_stream(&self) -> Box<dyn InputStream> {
        match &self.stream {
            Some(s) => s.p2_stream(),
            None => Box::new(ClosedInputStream),
        }
    }
}

/// A guest's stdout or stderr sent down a channel, or discarded.
///
/// Clones share one stream: with a terminal, the guest's stderr is a clone of its stdout, so the
/// two interleave as they would on a terminal.
#[derive(Clone)]
pub struct ChannelOutput {
    stream: Option<Arc<AsyncStdoutStream>>,
    terminal: bool,
}

impl ChannelOutput {
    /// Sends what the guest writes on `tx`; `None` discards it. `terminal` is what the guest is
    /// told when it asks whether the stream is a terminal; a terminal's line feeds go out as
    /// CR LF ([`onlcr`]).
    ///
    /// Must be called inside a tokio runtime: wasmtime-wasi starts the task that writes.
    pub fn new(tx: Option<mpsc::Sender<Bytes>>, terminal: bool) -> Self {
        Self {
            stream: tx.map(|tx| {
                Arc::new(AsyncStdoutStream::new(
                    WRITE_BUDGET,
                    ChannelWriter {
                        tx: PollSender::new(tx),
                        terminal,
                    },
                ))
            }),
            terminal,
        }
    }

    /// Waits until everything the guest wrote is on the channel. A guest that wrote without
    /// flushing may end with its last write still on its way: wait for it before telling the
    /// client that the command ended.
    pub async fn flushed(&self) {
        if let Some(s) = &self.stream {
            let mut out = s.p2_stream();
            // An error means the channel is closed: nothing more will get through.
            if out.flush().is_ok() {
                out.ready().await;
            }
        }
    }
}

impl IsTerminal for ChannelOutput {
    fn is_terminal(&self) -> bool {
        self.terminal
    }
}

impl StdoutStream for ChannelOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        match &self.stream {
            Some(s) => s.async_stream(),
            None => Box::new(tokio::io::sink()),
        }
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        match &self.stream {
            Some(s) => s.p2_stream(),
            None => Box::new(SinkOutputStream),
        }
    }
}

/// The channel as a byte stream; a message is split across reads when the reader asks for less.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    /// What is left of the last message.
    pending: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // An empty message would read as end of file: skip it.
        while self.pending.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(bytes) => self.pending = bytes,
                // Every sender dropped: end of file (nothing put in `buf`).
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(self.pending.len());
        let bytes = self.pending.split_to(n);
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

/// The channel as a byte sink: one message per write, a terminal's lines ended by [`onlcr`].
struct ChannelWriter {
    tx: PollSender<Bytes>,
    terminal: bool,
}

/// `bytes` with every LF as CR LF, as a pty's output processing (`ONLCR`, on by default) writes
/// them. A client with a terminal has put it in raw mode (kubectl does) and relies on the remote
/// end for this, as a container's pty does it: bare line feeds would show as a staircase.
pub(crate) fn onlcr(bytes: &[u8]) -> Bytes {
    let feeds = bytes.iter().filter(|&&b| b == b'\n').count();
    let mut out = Vec::with_capacity(bytes.len() + feeds);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    Bytes::from(out)
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client has gone")
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let bytes = if self.terminal {
            onlcr(buf)
        } else {
            Bytes::copy_from_slice(buf)
        };
        self.tx.send_item(bytes).map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A message on the channel is as far as a write goes.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reader_splits_messages_and_ends_when_the_senders_do() {
        let (tx, rx) = mpsc::channel(4);
        let mut r = ChannelReader {
            rx,
            pending: Bytes::new(),
        };
        tx.send(Bytes::from_static(b"hello")).await.expect("send");
        tx.send(Bytes::new()).await.expect("send");
        tx.send(Bytes::from_static(b" world")).await.expect("send");
        drop(tx);
        let mut first = [0u8; 3];
        r.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"hel");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.expect("read to the end");
        assert_eq!(rest, b"lo world");
    }

    #[tokio::test]
    async fn writer_sends_each_write_and_fails_once_the_client_has_gone() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut w = ChannelWriter {
            tx: PollSender::new(tx),
            terminal: false,
        };
        w.write_all(b"one").await.expect("write");
        w.write_all(b"two").await.expect("write");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"one"[..]));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"two"[..]));
        drop(rx);
        let e = w.write_all(b"three").await.expect_err("closed");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_missing_stream_is_empty_or_a_sink() {
        let stdin = ChannelStdin::new(None, false);
        let mut s = stdin.p2_stream();
        assert!(matches!(
            s.read(10),
            Err(wasmtime_wasi::p2::StreamError::Closed)
        ));
        let out = ChannelOutput::new(None, true);
        assert!(out.is_terminal());
        let mut o = out.p2_stream();
        let permit = o.check_write().expect("a sink takes anything");
        assert!(permit > 0);
        o.write(Bytes::from_static(b"gone")).expect("discarded");
        out.flushed().await;
    }

    #[tokio::test]
    async fn a_terminal_ends_lines_as_a_pty_does_and_a_pipe_keeps_them() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut terminal = ChannelWriter {
            tx: PollSender::new(tx.clone()),
            terminal: true,
        };
        let mut pipe = ChannelWriter {
            tx: PollSender::new(tx),
            terminal: false,
        };
        terminal.write_all(b"one\ntwo\n\nend").await.expect("write");
        pipe.write_all(b"one\ntwo\n").await.expect("write");
        assert_eq!(
            rx.recv().await.as_deref(),
            Some(&b"one\r\ntwo\r\n\r\nend"[..])
        );
        assert_eq!(rx.recv().await.as_deref(), Some(&b"one\ntwo\n"[..]));
    }

    #[tokio::test]
    async fn output_is_on_the_channel_once_flushed() {
        let (tx, mut rx) = mpsc::channel(4);
        let out = ChannelOutput::new(Some(tx), false);
        let mut o = out.p2_stream();
        o.ready().await;
        assert!(o.check_write().expect("permit") >= 5);
        o.write(Bytes::from_static(b"hello")).expect("write");
        drop(o);
        out.flushed().await;
        assert_eq!(rx.try_recv().ok().as_deref(), Some(&b"hello"[..]));
    }
}
