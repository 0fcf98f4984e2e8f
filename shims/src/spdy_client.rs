//! What every SPDY/3.1 client session with containerd's streaming server shares, exec and attach
//! ([`crate::streaming`]) as much as port-forward ([`crate::portforward`]): the flow-control
//! windows, the frames that concern the connection rather than one stream, and the writer.
//!
//! A session's loop hands each frame it reads to [`Link::on_frame`], which answers SETTINGS,
//! WINDOW_UPDATE, PING, GOAWAY and a server's SYN_STREAM itself and gives back only the frames of
//! the session's own streams ([`StreamFrame`]). Window is granted back only once the peer has
//! shown that it keeps windows ([`ReceiveWindow::peer_keeps_windows`]): containerd's `spdystream`
//! keeps none, and a WINDOW_UPDATE arriving after its last read makes it close the socket with
//! unread data, which Linux turns into a RST that loses the command's exit status.

use std::convert::Infallible;

use bytes::Bytes;
use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use wedge_core::spdy::{
    Codec, Frame, ReceiveWindow, RstStatus, SETTINGS_INITIAL_WINDOW_SIZE, SendWindow, SpdyError,
    StreamId,
};

/// A frame of one of the session's streams, for the session to act on.
#[derive(Debug)]
pub(crate) enum StreamFrame {
    /// Bytes on `stream`, its last if `fin`.
    Data {
        stream: StreamId,
        fin: bool,
        data: Bytes,
    },
    /// The server answered the stream's SYN_STREAM: the client may send on it.
    Reply(StreamId),
    /// The server reset the stream.
    Reset { stream: StreamId, status: RstStatus },
}

/// The connection-level state of a client session.
pub(crate) struct Link {
    /// How much the client may still send, per stream.
    pub send_window: SendWindow,
    /// What the client has consumed, and the window it owes back.
    receive_window: ReceiveWindow,
    /// Frames for [`write_frames`] that must never wait (it sends them before DATA).
    control: mpsc::UnboundedSender<Frame>,
}

impl Link {
    /// A link whose control frames go to `control` (the first channel of [`write_frames`]).
    pub fn new(control: mpsc::UnboundedSender<Frame>) -> Self {
        Self {
            send_window: SendWindow::default(),
            receive_window: ReceiveWindow::default(),
            control,
        }
    }

    /// Handles a frame that concerns the connection; gives back one that concerns a stream.
    pub fn on_frame(&mut self, frame: Frame) -> Option<StreamFrame> {
        match frame {
            Frame::Data { stream, fin, data } => {
                return Some(StreamFrame::Data { stream, fin, data });
            }
            Frame::SynReply { stream, .. } => return Some(StreamFrame::Reply(stream)),
            Frame::RstStream { stream, status } => {
                return Some(StreamFrame::Reset { stream, status });
            }
            Frame::Settings { settings, .. } => {
                for setting in settings {
                    if setting.id == SETTINGS_INITIAL_WINDOW_SIZE {
                        self.send_window.set_initial(setting.value);
                        self.peer_keeps_windows();
                    }
                }
            }
            Frame::WindowUpdate { stream, delta } => {
                self.send_window.grant(stream, delta);
                self.peer_keeps_windows();
            }
            // Even ids are the server's pings; odd ones would answer ours, and we send none
            // (echoing them back would start an endless exchange).
            Frame::Ping { id } if id % 2 == 0 => self.queue(Frame::Ping { id }),
            Frame::Ping { id } => tracing::debug!(id, "ignoring a PING with a client's id"),
            Frame::GoAway { last_good, status } => {
                // The server takes no new streams; ours go on until it closes the connection.
                tracing::debug!(last_good, status, "the streaming server sent GOAWAY");
            }
            Frame::SynStream { stream, .. } => {
                tracing::debug!(stream, "refusing a stream the streaming server opened");
                self.queue(Frame::RstStream {
                    stream,
                    status: RstStatus::RefusedStream,
                });
            }
            frame @ (Frame::Headers { .. } | Frame::Unknown { .. }) => {
                tracing::trace!(frame = frame.name(), "ignoring a frame");
            }
        }
        None
    }

    /// Counts `length` bytes of `stream` as consumed and queues the WINDOW_UPDATEs due.
    pub fn consumed(&mut self, stream: StreamId, length: usize) {
        for update in self.receive_window.consumed(stream, length) {
            self.queue(update);
        }
    }

    /// Forgets the window count of a stream that ended.
    pub fn forget(&mut self, stream: StreamId) {
        self.receive_window.forget(stream);
    }

    /// The peer showed it keeps windows: window is granted back from now on.
    fn peer_keeps_windows(&mut self) {
        for update in self.receive_window.peer_keeps_windows() {
            self.queue(update);
        }
    }

    /// Queues a frame that must not wait behind DATA.
    fn queue(&self, frame: Frame) {
        if self.control.send(frame).is_err() {
            tracing::trace!("the writer is gone; a control frame is dropped");
        }
    }
}

/// Writes what the session queues, control frames (window updates, ping answers, resets)
/// before DATA. Never returns: after a failed write it waits to be dropped, leaving the verdict
/// to the reading side, which sees the same broken connection and may already hold the status.
pub(crate) async fn write_frames<W>(
    mut writer: FramedWrite<W, Codec>,
    mut control: mpsc::UnboundedReceiver<Frame>,
    mut data: mpsc::Receiver<Frame>,
) -> Infallible
where
    W: AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            biased;
            Some(frame) = control.recv() => frame,
            Some(frame) = data.recv() => frame,
            else => return std::future::pending().await,
        };
        if let Err(e) = writer.send(frame).await {
            tracing::debug!(error = %e, "writing to the streaming server failed; input stops");
            return std::future::pending().await;
        }
    }
}

/// Whether a read error is the connection ending rather than a broken protocol.
pub(crate) fn is_close(e: &SpdyError) -> bool {
    use std::io::ErrorKind;
    match e {
        SpdyError::Truncated(_) => true,
        SpdyError::Io(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_answers_the_connection_and_passes_the_streams_on() {
        let (control, mut sent) = mpsc::unbounded_channel();
        let mut link = Link::new(control);
        assert!(link.on_frame(Frame::Ping { id: 2 }).is_none());
        assert!(matches!(sent.try_recv(), Ok(Frame::Ping { id: 2 })));
        assert!(link.on_frame(Frame::Ping { id: 1 }).is_none());
        assert!(
            link.on_frame(Frame::SynStream {
                stream: 2,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: Bytes::new(),
            })
            .is_none()
        );
        assert!(matches!(
            sent.try_recv(),
            Ok(Frame::RstStream {
                stream: 2,
                status: RstStatus::RefusedStream
            })
        ));
        assert!(matches!(
            link.on_frame(Frame::SynReply {
                stream: 1,
                fin: false,
                headers: Bytes::new()
            }),
            Some(StreamFrame::Reply(1))
        ));
        assert!(matches!(
            link.on_frame(Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"x")
            }),
            Some(StreamFrame::Data {
                stream: 1,
                fin: true,
                ..
            })
        ));
        // A peer that keeps no windows is sent no WINDOW_UPDATE, however much is consumed.
        link.consumed(1, 1 << 20);
        assert!(sent.try_recv().is_err());
        assert!(
            link.on_frame(Frame::WindowUpdate {
                stream: 0,
                delta: 1
            })
            .is_none()
        );
        assert!(matches!(
            sent.try_recv(),
            Ok(Frame::WindowUpdate { stream: 1, .. })
        ));
    }
}
