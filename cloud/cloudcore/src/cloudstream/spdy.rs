//! A SPDY/3.1 server session: how kubectl before 1.31, kube-apiserver, and kubectl's WebSocket
//! tunnel (SPDY frames inside WebSocket messages) reach the kubelet's `/portForward` (and
//! `/exec` and `/attach`, kubectl's fallback from WebSocket).
//!
//! The client opens every stream, naming its purpose in the headers (`streamtype`, and for
//! port-forward `port` and `requestid`); the server accepts each with a SYN_REPLY and hands it
//! to the request's handler as a [`ClientStream`]: the client's bytes on a bounded channel that
//! closes at its FIN (or reset), and a [`StreamWriter`] for the answer. The framing is
//! [`wedge_core::spdy`].
//!
//! Flow control is TCP's, as with the kubelet: kubectl's `spdystream` neither sends nor
//! honours WINDOW_UPDATE, so this end sends none and holds nothing back for a window. A
//! handler that stops taking a stream's bytes stops the reading of the connection once that
//! stream's channel is full, as the kubelet's `spdystream` does; the object sync and other
//! connections are not affected, since each connection is one client's.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use wedge_core::spdy::{
    Codec, Frame, HeaderDecoder, HeaderEncoder, RstStatus, SpdyError, StreamId,
};

/// The most one DATA frame carries from this end.
const MAX_DATA: usize = 32 * 1024;

/// How many chunks of a client's stream wait for its handler before reading stops.
const INBOUND_CHUNKS: usize = 16;

/// How many new streams wait for the handler.
pub(crate) const NEW_STREAMS: usize = 16;

/// How many DATA frames wait for the connection.
const OUTBOUND_FRAMES: usize = 64;

/// The most frames written before one flush.
const FRAMES_PER_FLUSH: usize = 16;

/// How long the last frames may take to go once the client's side has ended.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// GOAWAY's status for a protocol error (the draft's).
const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// A stream the client opened.
#[derive(Debug)]
pub(crate) struct ClientStream {
    /// Its id.
    pub id: StreamId,
    /// Its headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The client's bytes; closed at its FIN, at a reset, or when the connection ends.
    pub inbound: mpsc::Receiver<Bytes>,
    /// This end's half.
    pub out: StreamWriter,
}

impl ClientStream {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The connection is gone: nothing more can be written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the SPDY connection is closed")]
pub(crate) struct Closed;

/// This end's half of a stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamWriter {
    id: StreamId,
    data: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data`, in frames of at most [`MAX_DATA`]; waits while the connection is busy.
    pub async fn send(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA));
            self.frame(false, chunk).await?;
        }
        Ok(())
    }

    /// Ends this end's half of the stream (a FIN).
    pub async fn finish(&self) -> Result<(), Closed> {
        self.frame(true, Bytes::new()).await
    }

    async fn frame(&self, fin: bool, data: Bytes) -> Result<(), Closed> {
        self.data
            .send(Frame::Data {
                stream: self.id,
                fin,
                data,
            })
            .await
            .map_err(|_| Closed)
    }
}

/// Why a session ended other than by the client closing the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The client broke the protocol (logged; the connection is closed).
    #[error("{0}")]
    Spdy(#[from] SpdyError),
    /// The client opened a stream with an id that is not a new client id.
    #[error("stream id {0} is not a new client stream id")]
    BadStreamId(StreamId),
}

/// Serves a session on `io` until the client closes the connection (or breaks the protocol):
/// each stream the client opens is accepted and sent on `streams`. Dropping the future drops
/// the connection.
pub(crate) async fn serve<S>(io: S, streams: mpsc::Sender<ClientStream>) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    let ended = {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let reading = read_frames(FramedRead::new(read, Codec), control_tx, data_tx, streams);
        let mut framed = FramedWrite::new(&mut write, Codec);
        // Frames are written out at each flush, not as soon as 8 KiB (tokio-util's default)
        // are buffered.
        framed.set_backpressure_boundary(FRAMES_PER_FLUSH * MAX_DATA);
        let writing = write_frames(framed, control_rx, data_rx);
        tokio::pin!(reading, writing);
        tokio::select! {
            ended = &mut reading => {
                // What the reader queued last (a GOAWAY saying why) still goes, briefly.
                let _ = tokio::time::timeout(FINAL_FLUSH, writing).await;
                ended
            }
            // The writer ends early only when the connection cannot be written: the reader
            // will see it.
            () = &mut writing => reading.await,
        }
    };
    super::end_connection(&mut write).await;
    ended
}

/// The reading half: accepts streams, routes DATA to them, answers pings.
async fn read_frames<R>(
    mut reader: FramedRead<R, Codec>,
    control: mpsc::UnboundedSender<Frame>,
    data: mpsc::Sender<Frame>,
    streams: mpsc::Sender<ClientStream>,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
{
    let mut decoder = HeaderDecoder::default();
    let mut encoder = HeaderEncoder::default();
    let mut inbound: HashMap<StreamId, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id: StreamId = 0;
    let mut going_away = false;
    let queue = |frame: Frame| {
        // The writer is gone only with the connection, which the next read reports.
        let _ = control.send(frame);
    };
    loop {
        let frame = match reader.next().await {
            None => return Ok(()),
            Some(Ok(frame)) => frame,
            Some(Err(SpdyError::Io(e))) => {
                tracing::debug!(error = %e, "a SPDY client's connection ended");
                return Ok(());
            }
            Some(Err(SpdyError::Truncated(_))) => return Ok(()),
            Some(Err(e)) => {
                queue(Frame::GoAway {
                    last_good: last_id,
                    status: GOAWAY_PROTOCOL_ERROR,
                });
                return Err(e.into());
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                headers,
                fin,
                ..
            } => {
                // Every block is read, even a refused stream's: the next one builds on it.
                let headers = decoder.block(&headers)?;
                if stream % 2 == 0 || stream <= last_id {
                    queue(Frame::GoAway {
                        last_good: last_id,
                        status: GOAWAY_PROTOCOL_ERROR,
                    });
                    return Err(SessionError::BadStreamId(stream));
                }
                last_id = stream;
                if going_away {
                    queue(Frame::RstStream {
                        stream,
                        status: RstStatus::RefusedStream,
                    });
                    continue;
                }
                let (tx, rx) = mpsc::channel(INBOUND_CHUNKS);
                if !fin {
                    inbound.insert(stream, tx);
                }
                queue(Frame::SynReply {
                    stream,
                    fin: false,
                    headers: encoder.block(&[])?,
                });
                let accepted = ClientStream {
                    id: stream,
                    headers,
                    inbound: rx,
                    out: StreamWriter {
                        id: stream,
                        data: data.clone(),
                    },
                };
                if streams.send(accepted).await.is_err() {
                    // The handler is done with this connection.
                    return Ok(());
                }
            }
            Frame::Data { stream, fin, data } => {
                if let Some(tx) = inbound.get(&stream) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        // The handler stopped reading this stream: the rest is dropped.
                        inbound.remove(&stream);
                    }
                    if fin {
                        inbound.remove(&stream);
                    }
                }
            }
            Frame::RstStream { stream, status } => {
                tracing::trace!(stream, %status, "a SPDY client reset a stream");
                inbound.remove(&stream);
            }
            // Odd ids are the client's pings, answered with the same id.
            Frame::Ping { id } if id % 2 == 1 => queue(Frame::Ping { id }),
            Frame::GoAway { .. } => going_away = true,
            frame @ (Frame::Ping { .. }
            | Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. }) => {
                tracing::trace!(frame = frame.name(), "ignoring a frame from a SPDY client");
            }
        }
    }
}

/// The writing half: control frames (replies, pings, resets) before DATA, so a stream's reply
/// always precedes its data. Ends when the connection cannot be written, or when the reader
/// has ended and what it queued is written.
async fn write_frames<W>(
    mut writer: FramedWrite<W, Codec>,
    mut control: mpsc::UnboundedReceiver<Frame>,
    mut data: mpsc::Receiver<Frame>,
) where
    W: AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            biased;
            frame = control.recv() => match frame {
                Some(frame) => frame,
                // The reader is done, and everything it queued has gone.
                None => return,
            },
            Some(frame) = data.recv() => frame,
        };
        // What is queued behind it goes in the same flush: one system call (and one wakeup of
        // the client) for up to FRAMES_PER_FLUSH frames, not one each.
        let mut written = writer.feed(frame).await;
        for _ in 1..FRAMES_PER_FLUSH {
            if written.is_err() {
                break;
            }
            let Ok(frame) = control.try_recv().or_else(|_| data.try_recv()) else {
                break;
            };
            written = writer.feed(frame).await;
        }
        let flushed = match written {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            tracing::debug!(error = %e, "writing to a SPDY client failed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;
    use tokio_util::codec::Framed;

    /// A client end speaking frames, with its own header encoder.
    struct Client {
        io: Framed<DuplexStream, Codec>,
        headers: HeaderEncoder,
    }

    impl Client {
        async fn open(&mut self, stream: StreamId, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
            let headers = self.headers.block(pairs)?;
            self.io
                .send(Frame::SynStream {
                    stream,
                    associated: 0,
                    priority: 0,
                    fin: false,
                    unidirectional: false,
                    headers,
                })
                .await?;
            Ok(())
        }

        async fn next(&mut self) -> Option<Frame> {
            self.io.next().await?.ok()
        }
    }

    fn start() -> (
        Client,
        mpsc::Receiver<ClientStream>,
        tokio::task::JoinHandle<Result<(), SessionError>>,
    ) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (tx, rx) = mpsc::channel(4);
        let session = tokio::spawn(serve(ours, tx));
        let client = Client {
            io: Framed::new(theirs, Codec),
            headers: HeaderEncoder::default(),
        };
        (client, rx, session)
    }

    #[tokio::test]
    async fn streams_are_accepted_with_their_headers_and_carry_bytes_both_ways()
    -> anyhow::Result<()> {
        let (mut client, mut streams, session) = start();
        client
            .open(
                1,
                &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
            )
            .await?;
        client
            .open(
                3,
                &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
            )
            .await?;
        let error = streams
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let mut data = streams
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("no stream"))?;
        assert_eq!((error.id, error.header("streamtype")), (1, Some("error")));
        assert_eq!(
            (data.id, data.header("port"), data.header("requestid")),
            (3, Some("80"), Some("0"))
        );
        // Each stream is accepted before anything else is sent on it.
        assert!(matches!(
            client.next().await,
            Some(Frame::SynReply { stream: 1, .. })
        ));
        assert!(matches!(
            client.next().await,
            Some(Frame::SynReply { stream: 3, .. })
        ));

        client
            .io
            .send(Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            })
            .await?;
        assert_eq!(
            data.inbound.recv().await.as_deref(),
            Some(&b"GET / HTTP/1.0\r\n\r\n"[..])
        );
        // The FIN closes the client's half.
        assert_eq!(data.inbound.recv().await, None);

        // An answer larger than a frame goes in pieces, then the FIN.
        data.out.send(Bytes::from(vec![b'x'; 40_000])).await?;
        data.out.finish().await?;
        let mut got = 0;
        loop {
            match client.next().await {
                Some(Frame::Data {
                    stream: 3,
                    fin: false,
                    data,
                }) => {
                    assert!(data.len() <= MAX_DATA);
                    got += data.len();
                }
                Some(Frame::Data {
                    stream: 3,
                    fin: true,
                    data,
                }) if data.is_empty() => break,
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 40_000);

        // The client's ping is answered; closing the connection ends the session cleanly.
        client.io.send(Frame::Ping { id: 7 }).await?;
        assert_eq!(client.next().await, Some(Frame::Ping { id: 7 }));
        drop(client);
        session.await??;
        // The session gone, writing fails rather than waiting.
        assert!(error.out.send(Bytes::from_static(b"late")).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_reset_closes_the_clients_half_and_bad_ids_end_the_session() -> anyhow::Result<()> {
        let (mut client, mut streams, session) = start();
        client.open(1, &[("streamtype", "data")]).await?;
        let mut data = streams
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("no stream"))?;
        client
            .io
            .send(Frame::RstStream {
                stream: 1,
                status: RstStatus::Cancel,
            })
            .await?;
        assert_eq!(data.inbound.recv().await, None);
        // A server's (even) id from the client is a protocol error: GOAWAY, and the end.
        client.open(2, &[("streamtype", "data")]).await?;
        let ended = session.await?;
        assert!(
            matches!(ended, Err(SessionError::BadStreamId(2))),
            "{ended:?}"
        );
        loop {
            match client.next().await {
                Some(Frame::GoAway { status, .. }) => {
                    assert_eq!(status, GOAWAY_PROTOCOL_ERROR);
                    break;
                }
                Some(_) => {}
                None => anyhow::bail!("no GOAWAY"),
            }
        }
        Ok(())
    }

    /// An AsyncWrite that keeps what is written and counts the flushes.
    #[derive(Default)]
    struct Recorder {
        written: Vec<u8>,
        flushes: usize,
    }

    impl tokio::io::AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.written.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.flushes += 1;
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_queued_together_go_in_one_flush_control_first() -> anyhow::Result<()> {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let data = |n: u8| Frame::Data {
            stream: 3,
            fin: false,
            data: Bytes::from(vec![n; MAX_DATA]),
        };
        for n in 0..3 {
            data_tx.send(data(n)).await?;
        }
        control_tx.send(Frame::Ping { id: 1 })?;
        // The reader is done: the writer ends once everything queued has gone.
        drop(control_tx);
        let mut recorder = Recorder::default();
        let mut framed = FramedWrite::new(&mut recorder, Codec);
        framed.set_backpressure_boundary(FRAMES_PER_FLUSH * MAX_DATA);
        write_frames(framed, control_rx, data_rx).await;
        assert_eq!(recorder.flushes, 1, "one flush for the four frames");
        let mut frames = FramedRead::new(&recorder.written[..], Codec);
        assert_eq!(
            frames.next().await.transpose()?,
            Some(Frame::Ping { id: 1 })
        );
        for n in 0..3 {
            assert_eq!(frames.next().await.transpose()?, Some(data(n)));
        }
        assert_eq!(frames.next().await.transpose()?, None);
        Ok(())
    }

    #[tokio::test]
    async fn garbage_ends_the_session_with_an_error() -> anyhow::Result<()> {
        let (mut client, _streams, session) = start();
        use tokio::io::AsyncWriteExt;
        client
            .io
            .get_mut()
            .write_all(b"\x80\x02\x00\x01\x00\x00\x00\x00")
            .await?;
        let ended = session.await?;
        assert!(
            matches!(
                ended,
                Err(SessionError::Spdy(SpdyError::UnsupportedVersion(2)))
            ),
            "{ended:?}"
        );
        Ok(())
    }
}
