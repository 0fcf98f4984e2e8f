//! SPDY/3.1 framing, for both ends of Kubernetes' streaming protocols: the edge is a client of
//! containerd's streaming server (`kubectl exec` and `attach`; `wedge_shims`' `streaming`
//! module says why SPDY and not WebSocket), and cloudcore's CloudStream a server to kubectl and
//! kube-apiserver (`kubectl port-forward`, and exec's SPDY fallback).
//!
//! Kubernetes' streaming servers (the kubelet's, and the copy of it in containerd and CRI-O) and
//! kubectl all speak SPDY through Go's `spdystream`: the frames of Google's SPDY draft 3, under
//! the upgrade token `SPDY/3.1`. This module is that wire format and nothing above it:
//!
//! - [`Codec`] turns bytes into [`Frame`]s and back (tokio-util's `Decoder` and `Encoder`). It
//!   keeps no state and checks every length before reading a field, so no input makes it panic:
//!   a malformed frame is a [`SpdyError`]. A control frame of a type it does not know (the
//!   draft's CREDENTIAL, or anything later) is [`Frame::Unknown`], its body skipped by its
//!   length: the draft says to ignore such frames, not to fail the session over them.
//! - Header blocks are one zlib stream per direction for the whole connection, normally
//!   compressed against a dictionary the draft gives. [`HeaderEncoder`] writes ours as *stored*
//!   (uncompressed) deflate blocks, each followed by an empty one as a sync flush would: a stored
//!   block refers to no earlier bytes, so it needs neither the dictionary nor a compressor, and
//!   the zlib header it starts with does not announce a dictionary (Go's zlib reader asks for
//!   one only when the header does). (Tried against containerd 1.6.20 before this was
//!   written.) [`HeaderDecoder`] reads the peer's blocks, which a server needs (kubectl names
//!   each stream's `streamtype`, `port` and `requestid` there): one inflater per connection,
//!   with the draft's dictionary ([`dictionary`]). A client learns all it needs from a
//!   SYN_REPLY's stream id and leaves them compressed; since the blocks form one zlib stream,
//!   an end reads all of its peer's blocks or none.
//! - Flow control is bookkeeping here ([`SendWindow`], [`ReceiveWindow`]) and policy in the
//!   session. Draft 3 gives each stream a window (64 KiB unless SETTINGS says otherwise) and
//!   3.1 adds one for the whole session (WINDOW_UPDATE on stream 0). `spdystream` implements
//!   neither: it never sends WINDOW_UPDATE or SETTINGS and ignores those it gets (its only brake
//!   is TCP). So a client that waited for the server's window to reopen would stop after 64 KiB
//!   of stdin, which is `kubectl cp` of any real file. [`SendWindow`] therefore holds input back
//!   only once the peer has shown it keeps windows (a WINDOW_UPDATE, or SETTINGS with
//!   INITIAL_WINDOW_SIZE), and [`ReceiveWindow`] grants window back only from then on, as
//!   kubectl (a `spdystream` client, which sends none) behaves. Granting to `spdystream` is not
//!   only useless but harmful: the server closes the connection right after the command's
//!   status, and a WINDOW_UPDATE that reached it after its last read is unread data at that
//!   close, which Linux answers with a RST that discards what the server had not sent yet,
//!   the status included.
//!
//! Start reading at [`Frame`].

use std::collections::HashMap;

mod dictionary;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// A stream's number: odd for the client's streams, even for the server's, 0 for the session.
pub type StreamId = u32;

/// The version in every control frame (3.1 changed flow control, not the frames).
pub const VERSION: u16 = 3;

/// Every window's size until a SETTINGS frame says otherwise.
pub const INITIAL_WINDOW: u32 = 64 * 1024;

/// The largest frame body: its length is 24 bits.
pub const MAX_LENGTH: usize = (1 << 24) - 1;

/// The SETTINGS id of the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// Stream ids (and window deltas) are 31 bits; the top bit is reserved.
const MAX_ID: u32 = 0x7fff_ffff;

/// The bytes before every frame's body.
const HEAD: usize = 8;

/// How much room the decoder reserves ahead for a frame it is waiting for: the length field
/// alone is not trusted with an allocation.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Control frame types.
mod kind {
    pub(super) const SYN_STREAM: u16 = 1;
    pub(super) const SYN_REPLY: u16 = 2;
    pub(super) const RST_STREAM: u16 = 3;
    pub(super) const SETTINGS: u16 = 4;
    pub(super) const PING: u16 = 6;
    pub(super) const GOAWAY: u16 = 7;
    pub(super) const HEADERS: u16 = 8;
    pub(super) const WINDOW_UPDATE: u16 = 9;
}

/// FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender's half of the stream ends.
const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM: the receiver will not send on this stream.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS: forget persisted settings.
const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// The zlib header of our header stream: deflate, 32 KiB window, no dictionary announced.
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];
/// An empty, non-final stored block: how a zlib sync flush ends, so the peer's inflater
/// hands over everything before it.
const SYNC_FLUSH: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes on a stream; `fin` ends the sender's half of it.
    Data {
        /// The stream.
        stream: StreamId,
        /// The sender's last frame on the stream.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// Opens a stream. `headers` is the block as it travels (compressed: [`HeaderEncoder`]).
    SynStream {
        /// The new stream (odd from a client, even from a server).
        stream: StreamId,
        /// The stream it belongs to (server push), or 0.
        associated: StreamId,
        /// 0 (highest) to 7.
        priority: u8,
        /// The opener sends nothing more on it.
        fin: bool,
        /// The receiver may not send on it.
        unidirectional: bool,
        /// The header block.
        headers: Bytes,
    },
    /// Accepts a stream the other side opened; `headers` as it travels.
    SynReply {
        /// The stream accepted.
        stream: StreamId,
        /// The replier sends nothing on it.
        fin: bool,
        /// The header block.
        headers: Bytes,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// The stream.
        stream: StreamId,
        /// Why.
        status: RstStatus,
    },
    /// Session settings, INITIAL_WINDOW_SIZE the one that matters here.
    Settings {
        /// Forget persisted settings.
        clear: bool,
        /// The settings.
        settings: Vec<Setting>,
    },
    /// A liveness check; the receiver answers with the same id (the initiator's parity: odd
    /// from clients, even from servers).
    Ping {
        /// Echoed back by the receiver.
        id: u32,
    },
    /// The sender takes no more new streams; the status says why (0 is a normal close).
    GoAway {
        /// The last stream of the receiver's the sender took.
        last_good: StreamId,
        /// Why (0: a normal close).
        status: u32,
    },
    /// More headers on a stream; `headers` as it travels.
    Headers {
        /// The stream.
        stream: StreamId,
        /// The sender's last frame on the stream.
        fin: bool,
        /// The header block.
        headers: Bytes,
    },
    /// More room in the sender's receive window, for a stream or (stream 0) the session.
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream: StreamId,
        /// How many more bytes may come.
        delta: u32,
    },
    /// A control frame of a type this module does not know; to be ignored.
    Unknown {
        /// Its type.
        kind: u16,
        /// Its flags.
        flags: u8,
        /// Its body, unread.
        body: Bytes,
    },
}

impl Frame {
    /// The frame's name in the draft, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Data { .. } => "DATA",
            Self::SynStream { .. } => "SYN_STREAM",
            Self::SynReply { .. } => "SYN_REPLY",
            Self::RstStream { .. } => "RST_STREAM",
            Self::Settings { .. } => "SETTINGS",
            Self::Ping { .. } => "PING",
            Self::GoAway { .. } => "GOAWAY",
            Self::Headers { .. } => "HEADERS",
            Self::WindowUpdate { .. } => "WINDOW_UPDATE",
            Self::Unknown { .. } => "unknown control frame",
        }
    }
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// 24 bits; [`SETTINGS_INITIAL_WINDOW_SIZE`] is the one this client acts on.
    pub id: u32,
    /// PERSIST_VALUE (1) or PERSISTED (2).
    pub flags: u8,
    /// The value.
    pub value: u32,
}

/// Why a stream was reset (RST_STREAM's status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, reason = "the draft's names say it")]
pub enum RstStatus {
    ProtocolError,
    InvalidStream,
    RefusedStream,
    UnsupportedVersion,
    Cancel,
    InternalError,
    FlowControlError,
    StreamInUse,
    StreamAlreadyClosed,
    InvalidCredentials,
    FrameTooLarge,
    /// A code the draft does not define.
    Other(u32),
}

impl From<u32> for RstStatus {
    fn from(code: u32) -> Self {
        match code {
            1 => Self::ProtocolError,
            2 => Self::InvalidStream,
            3 => Self::RefusedStream,
            4 => Self::UnsupportedVersion,
            5 => Self::Cancel,
            6 => Self::InternalError,
            7 => Self::FlowControlError,
            8 => Self::StreamInUse,
            9 => Self::StreamAlreadyClosed,
            10 => Self::InvalidCredentials,
            11 => Self::FrameTooLarge,
            other => Self::Other(other),
        }
    }
}

impl From<RstStatus> for u32 {
    fn from(status: RstStatus) -> Self {
        match status {
            RstStatus::ProtocolError => 1,
            RstStatus::InvalidStream => 2,
            RstStatus::RefusedStream => 3,
            RstStatus::UnsupportedVersion => 4,
            RstStatus::Cancel => 5,
            RstStatus::InternalError => 6,
            RstStatus::FlowControlError => 7,
            RstStatus::StreamInUse => 8,
            RstStatus::StreamAlreadyClosed => 9,
            RstStatus::InvalidCredentials => 10,
            RstStatus::FrameTooLarge => 11,
            RstStatus::Other(code) => code,
        }
    }
}

impl std::fmt::Display for RstStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::ProtocolError => "PROTOCOL_ERROR",
            Self::InvalidStream => "INVALID_STREAM",
            Self::RefusedStream => "REFUSED_STREAM",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::Cancel => "CANCEL",
            Self::InternalError => "INTERNAL_ERROR",
            Self::FlowControlError => "FLOW_CONTROL_ERROR",
            Self::StreamInUse => "STREAM_IN_USE",
            Self::StreamAlreadyClosed => "STREAM_ALREADY_CLOSED",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::Other(code) => return write!(f, "status {code}"),
        };
        f.write_str(name)
    }
}

/// What is wrong with a frame read or to be written.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another SPDY version (or not SPDY at all).
    #[error("a control frame of SPDY version {0}; only version 3 is spoken")]
    UnsupportedVersion(u16),
    /// A frame whose length does not fit its type.
    #[error("a {frame} frame with a {length}-byte body; it must be {expected}")]
    BadLength {
        /// The frame's name.
        frame: &'static str,
        /// Its body's length.
        length: usize,
        /// What it must be.
        expected: &'static str,
    },
    /// A frame that needs a stream, on stream 0.
    #[error("a {frame} frame on stream 0")]
    ZeroStream {
        /// The frame's name.
        frame: &'static str,
    },
    /// A field too large for its bits (when writing).
    #[error("{what} is {value}, more than SPDY's {limit}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The most it may be.
        limit: u64,
    },
    /// A header name SPDY does not allow (empty, or not lowercase).
    #[error("header name {0:?}: SPDY header names are lowercase and not empty")]
    HeaderName(String),
    /// A peer's header block that does not inflate, or does not parse.
    #[error("a header block that cannot be read: {0}")]
    HeaderBlock(String),
    /// The connection ended inside a frame.
    #[error("the connection ended inside a frame ({0} bytes of it read)")]
    Truncated(usize),
    /// Reading or writing the connection failed.
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// SPDY/3 frames over a byte stream (`FramedRead`/`FramedWrite`). Stateless: header blocks
/// are passed through as they travel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Codec;

impl Decoder for Codec {
    type Item = Frame;
    type Error = SpdyError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        let Some(head) = src.get(..HEAD) else {
            return Ok(None);
        };
        let mut head = head;
        let word = head.get_u32();
        let flags = head.get_u8();
        let length = usize::from(head.get_u8()) << 16 | usize::from(head.get_u16());
        let control = word & 0x8000_0000 != 0;
        // Refuse a foreign version before waiting for a body its length may not describe.
        if control {
            let version = u16::try_from((word >> 16) & 0x7fff).unwrap_or(u16::MAX);
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
        }
        let total = HEAD + length;
        if src.len() < total {
            src.reserve((total - src.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        src.advance(HEAD);
        let body = src.split_to(length).freeze();
        if control {
            let kind = u16::try_from(word & 0xffff).unwrap_or(u16::MAX);
            decode_control(kind, flags, body)
        } else {
            let stream = word & MAX_ID;
            if stream == 0 {
                return Err(SpdyError::ZeroStream { frame: "DATA" });
            }
            Ok(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: body,
            })
        }
        .map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(SpdyError::Truncated(src.len())),
        }
    }
}

/// A frame body's fields, read with their lengths checked.
struct Fields {
    frame: &'static str,
    body: Bytes,
}

impl Fields {
    fn u32(&mut self) -> Result<u32, SpdyError> {
        let length = self.body.len();
        self.body.try_get_u32().map_err(|_| SpdyError::BadLength {
            frame: self.frame,
            length,
            expected: "longer",
        })
    }

    fn u8(&mut self) -> Result<u8, SpdyError> {
        let length = self.body.len();
        self.body.try_get_u8().map_err(|_| SpdyError::BadLength {
            frame: self.frame,
            length,
            expected: "longer",
        })
    }

    /// A stream id, which must not be 0.
    fn stream(&mut self) -> Result<StreamId, SpdyError> {
        match self.u32()? & MAX_ID {
            0 => Err(SpdyError::ZeroStream { frame: self.frame }),
            id => Ok(id),
        }
    }

    /// Fails unless the body is exactly `length` bytes.
    fn exactly(self, length: usize, expected: &'static str) -> Result<Self, SpdyError> {
        if self.body.len() == length {
            Ok(self)
        } else {
            Err(SpdyError::BadLength {
                frame: self.frame,
                length: self.body.len(),
                expected,
            })
        }
    }

    /// Fails unless the body is at least `length` bytes.
    fn at_least(self, length: usize, expected: &'static str) -> Result<Self, SpdyError> {
        if self.body.len() >= length {
            Ok(self)
        } else {
            Err(SpdyError::BadLength {
                frame: self.frame,
                length: self.body.len(),
                expected,
            })
        }
    }
}

fn decode_control(kind: u16, flags: u8, body: Bytes) -> Result<Frame, SpdyError> {
    let fin = flags & FLAG_FIN != 0;
    // Bytes clones share the buffer.
    let fields = |frame| Fields {
        frame,
        body: body.clone(),
    };
    match kind {
        kind::SYN_STREAM => {
            let mut f = fields("SYN_STREAM").at_least(10, "at least 10 bytes")?;
            let stream = f.stream()?;
            let associated = f.u32()? & MAX_ID;
            let priority = f.u8()? >> 5;
            let _slot = f.u8()?;
            Ok(Frame::SynStream {
                stream,
                associated,
                priority,
                fin,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                headers: f.body,
            })
        }
        kind::SYN_REPLY => {
            let mut f = fields("SYN_REPLY").at_least(4, "at least 4 bytes")?;
            let stream = f.stream()?;
            Ok(Frame::SynReply {
                stream,
                fin,
                headers: f.body,
            })
        }
        kind::HEADERS => {
            let mut f = fields("HEADERS").at_least(4, "at least 4 bytes")?;
            let stream = f.stream()?;
            Ok(Frame::Headers {
                stream,
                fin,
                headers: f.body,
            })
        }
        kind::RST_STREAM => {
            let mut f = fields("RST_STREAM").exactly(8, "8 bytes")?;
            let stream = f.stream()?;
            let status = RstStatus::from(f.u32()?);
            Ok(Frame::RstStream { stream, status })
        }
        kind::SETTINGS => {
            let mut f = fields("SETTINGS").at_least(4, "4 bytes and 8 per entry")?;
            let count = f.u32()?;
            // Checked against the body before anything is allocated for the entries.
            if u64::from(count) * 8 != f.body.len() as u64 {
                return Err(SpdyError::BadLength {
                    frame: "SETTINGS",
                    length: f.body.len() + 4,
                    expected: "4 bytes and 8 per entry",
                });
            }
            let mut settings = Vec::with_capacity(f.body.len() / 8);
            while f.body.has_remaining() {
                let word = f.u32()?;
                let value = f.u32()?;
                settings.push(Setting {
                    id: word & 0x00ff_ffff,
                    flags: u8::try_from(word >> 24).unwrap_or(u8::MAX),
                    value,
                });
            }
            Ok(Frame::Settings {
                clear: flags & FLAG_CLEAR_SETTINGS != 0,
                settings,
            })
        }
        kind::PING => {
            let mut f = fields("PING").exactly(4, "4 bytes")?;
            Ok(Frame::Ping { id: f.u32()? })
        }
        kind::GOAWAY => {
            let mut f = fields("GOAWAY").exactly(8, "8 bytes")?;
            let last_good = f.u32()? & MAX_ID;
            let status = f.u32()?;
            Ok(Frame::GoAway { last_good, status })
        }
        kind::WINDOW_UPDATE => {
            let mut f = fields("WINDOW_UPDATE").exactly(8, "8 bytes")?;
            // Stream 0 is the session's window (SPDY/3.1).
            let stream = f.u32()? & MAX_ID;
            let delta = f.u32()? & MAX_ID;
            Ok(Frame::WindowUpdate { stream, delta })
        }
        kind => Ok(Frame::Unknown { kind, flags, body }),
    }
}

/// Fails unless `value` fits in `limit`.
fn at_most(what: &'static str, value: u64, limit: u64) -> Result<(), SpdyError> {
    if value <= limit {
        Ok(())
    } else {
        Err(SpdyError::TooLarge { what, value, limit })
    }
}

/// A stream id to write: 31 bits, and not 0 where the frame needs a stream.
fn stream_id(frame: &'static str, stream: StreamId, zero_allowed: bool) -> Result<u32, SpdyError> {
    at_most("a stream id", u64::from(stream), u64::from(MAX_ID))?;
    if stream == 0 && !zero_allowed {
        return Err(SpdyError::ZeroStream { frame });
    }
    Ok(stream)
}

/// A body length to write: 24 bits.
fn body_length(length: usize) -> Result<u32, SpdyError> {
    at_most("a frame body", length as u64, MAX_LENGTH as u64)?;
    u32::try_from(length).map_err(|_| SpdyError::TooLarge {
        what: "a frame body",
        value: length as u64,
        limit: MAX_LENGTH as u64,
    })
}

fn put_control_head(dst: &mut BytesMut, kind: u16, flags: u8, length: u32) {
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u32(u32::from(flags) << 24 | length);
}

/// SYN_REPLY and HEADERS: a stream id and a header block.
fn put_stream_headers(
    dst: &mut BytesMut,
    kind: u16,
    name: &'static str,
    stream: StreamId,
    fin: bool,
    headers: &[u8],
) -> Result<(), SpdyError> {
    let stream = stream_id(name, stream, false)?;
    let length = body_length(headers.len().saturating_add(4))?;
    put_control_head(dst, kind, fin_flag(fin), length);
    dst.put_u32(stream);
    dst.put_slice(headers);
    Ok(())
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

impl Encoder<Frame> for Codec {
    type Error = SpdyError;

    /// Every field is checked before a byte is written: a refused frame leaves `dst` as it
    /// was.
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), SpdyError> {
        let name = frame.name();
        match frame {
            Frame::Data { stream, fin, data } => {
                let stream = stream_id(name, stream, false)?;
                let length = body_length(data.len())?;
                dst.reserve(HEAD + data.len());
                dst.put_u32(stream);
                dst.put_u32(u32::from(fin_flag(fin)) << 24 | length);
                dst.put_slice(&data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let stream = stream_id(name, stream, false)?;
                let associated = stream_id(name, associated, true)?;
                at_most("a priority", u64::from(priority), 7)?;
                let length = body_length(headers.len().saturating_add(10))?;
                let mut flags = fin_flag(fin);
                if unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                put_control_head(dst, kind::SYN_STREAM, flags, length);
                dst.put_u32(stream);
                dst.put_u32(associated);
                dst.put_u8(priority << 5);
                // The slot (CREDENTIAL vectors): unused.
                dst.put_u8(0);
                dst.put_slice(&headers);
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => put_stream_headers(dst, kind::SYN_REPLY, name, stream, fin, &headers)?,
            Frame::Headers {
                stream,
                fin,
                headers,
            } => put_stream_headers(dst, kind::HEADERS, name, stream, fin, &headers)?,
            Frame::RstStream { stream, status } => {
                let stream = stream_id(name, stream, false)?;
                put_control_head(dst, kind::RST_STREAM, 0, 8);
                dst.put_u32(stream);
                dst.put_u32(status.into());
            }
            Frame::Settings { clear, settings } => {
                for setting in &settings {
                    at_most("a setting id", u64::from(setting.id), 0x00ff_ffff)?;
                }
                let length = body_length(settings.len().saturating_mul(8).saturating_add(4))?;
                let count = u32::try_from(settings.len()).unwrap_or(u32::MAX);
                let flags = if clear { FLAG_CLEAR_SETTINGS } else { 0 };
                put_control_head(dst, kind::SETTINGS, flags, length);
                dst.put_u32(count);
                for setting in settings {
                    dst.put_u32(u32::from(setting.flags) << 24 | setting.id);
                    dst.put_u32(setting.value);
                }
            }
            Frame::Ping { id } => {
                put_control_head(dst, kind::PING, 0, 4);
                dst.put_u32(id);
            }
            Frame::GoAway { last_good, status } => {
                let last_good = stream_id(name, last_good, true)?;
                put_control_head(dst, kind::GOAWAY, 0, 8);
                dst.put_u32(last_good);
                dst.put_u32(status);
            }
            Frame::WindowUpdate { stream, delta } => {
                let stream = stream_id(name, stream, true)?;
                at_most("a window delta", u64::from(delta), u64::from(MAX_ID))?;
                put_control_head(dst, kind::WINDOW_UPDATE, 0, 8);
                dst.put_u32(stream);
                dst.put_u32(delta);
            }
            Frame::Unknown { kind, flags, body } => {
                let length = body_length(body.len())?;
                put_control_head(dst, kind, flags, length);
                dst.put_slice(&body);
            }
        }
        Ok(())
    }
}

/// Our half of the connection's header compression: see the module docs. Blocks must go on
/// the wire in the order they were made, since they are one zlib stream.
#[derive(Debug, Default)]
pub struct HeaderEncoder {
    /// Whether the zlib header has been written (it opens the first block only).
    started: bool,
}

impl HeaderEncoder {
    /// The header block for `pairs`, as it travels. Names must be lowercase; a value may hold
    /// several, separated by NUL bytes.
    pub fn block(&mut self, pairs: &[(&str, &str)]) -> Result<Bytes, SpdyError> {
        let length = |what, value: usize| {
            u32::try_from(value).map_err(|_| SpdyError::TooLarge {
                what,
                value: value as u64,
                limit: u64::from(u32::MAX),
            })
        };
        let mut raw = BytesMut::new();
        raw.put_u32(length("a header count", pairs.len())?);
        for (name, value) in pairs {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(SpdyError::HeaderName((*name).to_owned()));
            }
            raw.put_u32(length("a header name", name.len())?);
            raw.put_slice(name.as_bytes());
            raw.put_u32(length("a header value", value.len())?);
            raw.put_slice(value.as_bytes());
        }
        let mut out = BytesMut::with_capacity(raw.len() + 16);
        if !self.started {
            out.put_slice(&ZLIB_HEADER);
        }
        // A stored block holds at most 65535 bytes.
        for chunk in raw.chunks(usize::from(u16::MAX)) {
            let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
            // BFINAL 0, BTYPE 00 (stored); byte-aligned, so the three bits fill a zero byte.
            out.put_u8(0);
            out.put_u16_le(len);
            out.put_u16_le(!len);
            out.put_slice(chunk);
        }
        out.put_slice(&SYNC_FLUSH);
        self.started = true;
        Ok(out.freeze())
    }
}

/// The most a peer's header block may inflate to. kubectl's are a few dozen bytes; the bound
/// keeps a small compressed block from growing without limit.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Our reading of the peer's header compression: one zlib stream for the connection, against
/// the draft's dictionary. Blocks must be given in the order they arrived.
pub struct HeaderDecoder {
    inflater: flate2::Decompress,
}

impl std::fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecoder")
            .field("total_in", &self.inflater.total_in())
            .finish()
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self {
            inflater: flate2::Decompress::new(true),
        }
    }
}

impl HeaderDecoder {
    /// The name/value pairs of one block, as it traveled. Names come lowercase (SPDY's rule);
    /// a value holding several is NUL-separated, as sent.
    pub fn block(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let bad = |what: String| SpdyError::HeaderBlock(what);
        let mut raw = Vec::with_capacity(block.len().saturating_mul(4).min(MAX_HEADER_BLOCK));
        let mut input = block;
        while !input.is_empty() {
            if raw.len() == raw.capacity() {
                if raw.len() >= MAX_HEADER_BLOCK {
                    return Err(bad(format!("it inflates past {MAX_HEADER_BLOCK} bytes")));
                }
                raw.reserve((raw.len() + 256).min(MAX_HEADER_BLOCK - raw.len()));
            }
            let before = self.inflater.total_in();
            let result =
                self.inflater
                    .decompress_vec(input, &mut raw, flate2::FlushDecompress::Sync);
            let consumed = usize::try_from(self.inflater.total_in() - before).unwrap_or(usize::MAX);
            input = input.get(consumed..).unwrap_or_default();
            match result {
                Ok(flate2::Status::Ok | flate2::Status::BufError) => {}
                Ok(flate2::Status::StreamEnd) => {
                    return Err(bad("the peer ended its header stream".to_owned()));
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflater
                        .set_dictionary(dictionary::DICTIONARY)
                        .map_err(|e| bad(format!("the dictionary is refused: {e}")))?;
                }
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        parse_pairs(&raw).ok_or_else(|| {
            bad(format!(
                "{} inflated bytes are not name/value pairs",
                raw.len()
            ))
        })
    }
}

/// A header block's pairs: a count, then each name and value with its 32-bit length.
fn parse_pairs(mut raw: &[u8]) -> Option<Vec<(String, String)>> {
    fn field(raw: &mut &[u8]) -> Option<String> {
        let length = usize::try_from(raw.try_get_u32().ok()?).ok()?;
        let bytes = raw.get(..length)?;
        let text = String::from_utf8_lossy(bytes).into_owned();
        raw.advance(length);
        Some(text)
    }
    let count = raw.try_get_u32().ok()?;
    // Each pair takes at least 8 bytes: the count cannot promise more than the block holds.
    let mut pairs = Vec::with_capacity(usize::try_from(count).ok()?.min(raw.len() / 8));
    for _ in 0..count {
        let name = field(&mut raw)?;
        let value = field(&mut raw)?;
        pairs.push((name, value));
    }
    raw.is_empty().then_some(pairs)
}

/// What the peer lets us send: its receive windows, per stream (SPDY/3) and for the session
/// (SPDY/3.1). Enforced only once the peer has shown it keeps them: see the module docs.
#[derive(Debug)]
pub struct SendWindow {
    /// Set by the peer's first WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE.
    enforced: bool,
    /// Every stream's window before it sent or was granted anything.
    initial: i64,
    /// Per stream, granted minus sent: the window is `initial` plus this, so a SETTINGS that
    /// changes the initial size moves every stream's window, as the draft says.
    balance: HashMap<StreamId, i64>,
    /// The session's window (3.1): every DATA frame counts against it too.
    session: i64,
}

impl Default for SendWindow {
    fn default() -> Self {
        Self {
            enforced: false,
            initial: i64::from(INITIAL_WINDOW),
            balance: HashMap::new(),
            session: i64::from(INITIAL_WINDOW),
        }
    }
}

impl SendWindow {
    /// How many bytes of DATA may go on `stream` now (unbounded while not enforced).
    pub fn available(&self, stream: StreamId) -> usize {
        if !self.enforced {
            return usize::MAX;
        }
        let own = self
            .initial
            .saturating_add(self.balance.get(&stream).copied().unwrap_or(0));
        usize::try_from(own.min(self.session)).unwrap_or(0)
    }

    /// Counts `length` bytes of DATA sent on `stream`.
    pub fn sent(&mut self, stream: StreamId, length: usize) {
        let length = i64::try_from(length).unwrap_or(i64::MAX);
        let balance = self.balance.entry(stream).or_insert(0);
        *balance = balance.saturating_sub(length);
        self.session = self.session.saturating_sub(length);
    }

    /// The peer's WINDOW_UPDATE.
    pub fn grant(&mut self, stream: StreamId, delta: u32) {
        self.enforced = true;
        let delta = i64::from(delta);
        if stream == 0 {
            self.session = self.session.saturating_add(delta);
        } else {
            let balance = self.balance.entry(stream).or_insert(0);
            *balance = balance.saturating_add(delta);
        }
    }

    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    pub fn set_initial(&mut self, size: u32) {
        self.enforced = true;
        self.initial = i64::from(size);
    }
}

/// When to give the peer room again: after half a window's worth consumed on a stream (and on
/// the session), a WINDOW_UPDATE for what was consumed, once the peer has shown it keeps
/// windows ([`ReceiveWindow::peer_keeps_windows`]; see the module docs for why not before).
/// The peer is not held to the window (`spdystream` keeps none and may overrun it); this only
/// keeps a conforming peer sending.
#[derive(Debug, Default)]
pub struct ReceiveWindow {
    /// Per stream, consumed and not yet granted back.
    unacknowledged: HashMap<StreamId, u32>,
    /// The same for the session.
    session: u32,
    /// The peer sent a WINDOW_UPDATE or SETTINGS: updates go from now on.
    granting: bool,
}

impl ReceiveWindow {
    /// The point at which consumed bytes are granted back.
    const UPDATE_AT: u32 = INITIAL_WINDOW / 2;

    /// Counts `length` bytes of `stream`'s DATA as consumed; returns the WINDOW_UPDATEs now
    /// due (none, or the stream's and the session's).
    pub fn consumed(&mut self, stream: StreamId, length: usize) -> Vec<Frame> {
        if length == 0 {
            return Vec::new();
        }
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        let own = self.unacknowledged.entry(stream).or_insert(0);
        *own = own.saturating_add(length);
        self.session = self.session.saturating_add(length);
        self.due()
    }

    /// The peer showed it keeps windows: returns the WINDOW_UPDATEs due for what was consumed
    /// before, and grants as the caller consumes from now on.
    pub fn peer_keeps_windows(&mut self) -> Vec<Frame> {
        self.granting = true;
        self.due()
    }

    /// The updates for every count past half a window, which then starts again from zero.
    fn due(&mut self) -> Vec<Frame> {
        let mut due = Vec::new();
        if !self.granting {
            return due;
        }
        let mut streams: Vec<_> = self
            .unacknowledged
            .iter_mut()
            .filter(|(_, own)| **own >= Self::UPDATE_AT)
            .collect();
        streams.sort_unstable_by_key(|(stream, _)| **stream);
        for (&stream, own) in streams {
            due.push(Frame::WindowUpdate {
                stream,
                delta: (*own).min(MAX_ID),
            });
            *own = 0;
        }
        if self.session >= Self::UPDATE_AT {
            due.push(Frame::WindowUpdate {
                stream: 0,
                delta: self.session.min(MAX_ID),
            });
            self.session = 0;
        }
        due
    }

    /// Forgets a stream that ended.
    pub fn forget(&mut self, stream: StreamId) {
        self.unacknowledged.remove(&stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: Frame) -> Result<Vec<u8>, SpdyError> {
        let mut dst = BytesMut::new();
        Codec.encode(frame, &mut dst)?;
        Ok(dst.to_vec())
    }

    /// Decodes every frame in `bytes`, which must hold whole frames only.
    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, SpdyError> {
        let mut src = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = Codec.decode_eof(&mut src)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    fn decode_one(bytes: &[u8]) -> Result<Frame, SpdyError> {
        let mut frames = decode_all(bytes)?;
        assert_eq!(frames.len(), 1, "{frames:?}");
        Ok(frames.remove(0))
    }

    #[test]
    fn data_frames_on_the_wire() -> anyhow::Result<()> {
        let frame = Frame::Data {
            stream: 3,
            fin: false,
            data: Bytes::from_static(b"hello\n"),
        };
        let bytes = encode(frame.clone())?;
        assert_eq!(bytes, b"\x00\x00\x00\x03\x00\x00\x00\x06hello\n");
        assert_eq!(decode_one(&bytes)?, frame);

        // End of stdin: no bytes, FIN.
        let fin = Frame::Data {
            stream: 3,
            fin: true,
            data: Bytes::new(),
        };
        let bytes = encode(fin.clone())?;
        assert_eq!(bytes, b"\x00\x00\x00\x03\x01\x00\x00\x00");
        assert_eq!(decode_one(&bytes)?, fin);
        Ok(())
    }

    #[test]
    fn syn_stream_as_the_probe_sent_it() -> anyhow::Result<()> {
        let mut headers = HeaderEncoder::default();
        let block = headers.block(&[("streamtype", "error")])?;
        let frame = Frame::SynStream {
            stream: 1,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: block.clone(),
        };
        let bytes = encode(frame.clone())?;
        let mut expected = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00];
        expected.push(u8::try_from(10 + block.len())?);
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&block);
        assert_eq!(bytes, expected);
        assert_eq!(decode_one(&bytes)?, frame);

        let unidirectional = Frame::SynStream {
            stream: 2,
            associated: 1,
            priority: 7,
            fin: true,
            unidirectional: true,
            headers: Bytes::new(),
        };
        let bytes = encode(unidirectional.clone())?;
        assert_eq!(
            bytes,
            b"\x80\x03\x00\x01\x03\x00\x00\x0a\x00\x00\x00\x02\x00\x00\x00\x01\xe0\x00"
        );
        assert_eq!(decode_one(&bytes)?, unidirectional);
        Ok(())
    }

    #[test]
    fn header_blocks_are_stored_zlib_blocks() -> anyhow::Result<()> {
        let mut headers = HeaderEncoder::default();
        let first = headers.block(&[("streamtype", "error")])?;
        let raw: &[u8] = b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error";
        let len = u16::try_from(raw.len())?;
        let mut expected = vec![0x78, 0x01, 0x00];
        expected.extend_from_slice(&len.to_le_bytes());
        expected.extend_from_slice(&(!len).to_le_bytes());
        expected.extend_from_slice(raw);
        expected.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        assert_eq!(first.as_ref(), expected.as_slice());

        // The zlib header opens the stream once.
        let second = headers.block(&[("streamtype", "stdin")])?;
        assert_eq!(second.first(), Some(&0x00));

        // A real inflater reads them back, in one stream, without a dictionary.
        let mut inflater = flate2::Decompress::new(true);
        let mut out = Vec::with_capacity(256);
        let mut stream = first.to_vec();
        stream.extend_from_slice(&second);
        inflater.decompress_vec(&stream, &mut out, flate2::FlushDecompress::Sync)?;
        let mut both = raw.to_vec();
        both.extend_from_slice(b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05stdin");
        assert_eq!(out, both);

        assert!(matches!(
            headers.block(&[("streamType", "stdin")]),
            Err(SpdyError::HeaderName(n)) if n == "streamType"
        ));
        assert!(matches!(
            headers.block(&[("", "x")]),
            Err(SpdyError::HeaderName(_))
        ));
        Ok(())
    }

    #[test]
    fn control_frames_on_the_wire() -> anyhow::Result<()> {
        let cases: Vec<(Frame, &[u8])> = vec![
            (
                Frame::SynReply {
                    stream: 5,
                    fin: false,
                    headers: Bytes::from_static(b"\x78\xbb\xdf"),
                },
                b"\x80\x03\x00\x02\x00\x00\x00\x07\x00\x00\x00\x05\x78\xbb\xdf",
            ),
            (
                Frame::RstStream {
                    stream: 3,
                    status: RstStatus::RefusedStream,
                },
                b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x03",
            ),
            (
                Frame::Settings {
                    clear: false,
                    settings: vec![Setting {
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        flags: 0,
                        value: 1 << 20,
                    }],
                },
                b"\x80\x03\x00\x04\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x07\x00\x10\x00\x00",
            ),
            (
                Frame::Ping { id: 2 },
                b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x02",
            ),
            (
                Frame::GoAway {
                    last_good: 7,
                    status: 0,
                },
                b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x07\x00\x00\x00\x00",
            ),
            (
                Frame::Headers {
                    stream: 5,
                    fin: true,
                    headers: Bytes::new(),
                },
                b"\x80\x03\x00\x08\x01\x00\x00\x04\x00\x00\x00\x05",
            ),
            (
                Frame::WindowUpdate {
                    stream: 0,
                    delta: 32768,
                },
                b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x80\x00",
            ),
            // CREDENTIAL (type 10), which this module does not know.
            (
                Frame::Unknown {
                    kind: 10,
                    flags: 0,
                    body: Bytes::from_static(b"\x00\x01"),
                },
                b"\x80\x03\x00\x0a\x00\x00\x00\x02\x00\x01",
            ),
        ];
        for (frame, bytes) in cases {
            assert_eq!(encode(frame.clone())?, bytes, "{frame:?}");
            assert_eq!(decode_one(bytes)?, frame);
        }
        // An unknown frame between two known ones is skipped by its length.
        let stream = b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x02\
                       \x80\x03\x00\x0a\x00\x00\x00\x03abc\
                       \x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x04";
        let frames = decode_all(stream)?;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2], Frame::Ping { id: 4 });
        // Reserved bits are masked, status codes past the draft's kept.
        let rst = b"\x80\x03\x00\x03\x00\x00\x00\x08\x80\x00\x00\x03\x00\x00\x00\x63";
        assert_eq!(
            decode_one(rst)?,
            Frame::RstStream {
                stream: 3,
                status: RstStatus::Other(99)
            }
        );
        Ok(())
    }

    #[test]
    fn partial_frames_wait_for_the_rest() -> anyhow::Result<()> {
        let bytes = encode(Frame::Data {
            stream: 5,
            fin: false,
            data: Bytes::from_static(b"output"),
        })?;
        let mut src = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            assert_eq!(Codec.decode(&mut src)?, None, "after {i} bytes");
            src.put_u8(*byte);
        }
        assert!(Codec.decode(&mut src)?.is_some());
        assert!(src.is_empty());
        // A connection that ends inside a frame.
        let mut src = BytesMut::from(&bytes[..5]);
        assert!(matches!(
            Codec.decode_eof(&mut src),
            Err(SpdyError::Truncated(5))
        ));
        Ok(())
    }

    #[test]
    fn malformed_frames_are_errors() {
        let bad = |bytes: &[u8]| decode_all(bytes).err();
        // SPDY/2, and HTTP text where frames were expected: refused from the first 8 bytes.
        assert!(matches!(
            bad(b"\x80\x02\x00\x06\x00\x00\x00\x04"),
            Some(SpdyError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Codec.decode(&mut BytesMut::from(&b"\xffTTP/1.1 404"[..])),
            Err(SpdyError::UnsupportedVersion(_))
        ));
        for (bytes, frame) in [
            (
                &b"\x80\x03\x00\x03\x00\x00\x00\x04\x00\x00\x00\x03"[..],
                "RST_STREAM",
            ),
            (
                b"\x80\x03\x00\x06\x00\x00\x00\x08\x00\x00\x00\x02\x00\x00\x00\x00",
                "PING",
            ),
            (
                b"\x80\x03\x00\x07\x00\x00\x00\x04\x00\x00\x00\x02",
                "GOAWAY",
            ),
            (
                b"\x80\x03\x00\x09\x00\x00\x00\x04\x00\x00\x00\x02",
                "WINDOW_UPDATE",
            ),
            (
                b"\x80\x03\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01",
                "SYN_STREAM",
            ),
            (b"\x80\x03\x00\x02\x00\x00\x00\x02\x00\x00", "SYN_REPLY"),
            (b"\x80\x03\x00\x08\x00\x00\x00\x00", "HEADERS"),
            // Two entries announced, one there.
            (
                b"\x80\x03\x00\x04\x00\x00\x00\x0c\x00\x00\x00\x02\x00\x00\x00\x07\x00\x00\x00\x01",
                "SETTINGS",
            ),
            // An entry count that would be gigabytes.
            (
                b"\x80\x03\x00\x04\x00\x00\x00\x04\xff\xff\xff\xff",
                "SETTINGS",
            ),
        ] {
            assert!(
                matches!(bad(bytes), Some(SpdyError::BadLength { frame: f, .. }) if f == frame),
                "{frame}: {:?}",
                bad(bytes)
            );
        }
        assert!(matches!(
            bad(b"\x00\x00\x00\x00\x00\x00\x00\x01x"),
            Some(SpdyError::ZeroStream { frame: "DATA" })
        ));
        assert!(matches!(
            bad(b"\x80\x03\x00\x02\x00\x00\x00\x04\x00\x00\x00\x00"),
            Some(SpdyError::ZeroStream { frame: "SYN_REPLY" })
        ));
    }

    #[test]
    fn frames_that_cannot_be_written_are_refused_untouched() {
        let refused = |frame: Frame| {
            let mut dst = BytesMut::from(&b"kept"[..]);
            let result = Codec.encode(frame, &mut dst);
            assert_eq!(&dst[..], b"kept");
            result.err()
        };
        assert!(matches!(
            refused(Frame::Data {
                stream: 0x8000_0001,
                fin: false,
                data: Bytes::new()
            }),
            Some(SpdyError::TooLarge { .. })
        ));
        assert!(matches!(
            refused(Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from(vec![0; MAX_LENGTH + 1])
            }),
            Some(SpdyError::TooLarge { .. })
        ));
        assert!(matches!(
            refused(Frame::RstStream {
                stream: 0,
                status: RstStatus::Cancel
            }),
            Some(SpdyError::ZeroStream { .. })
        ));
        assert!(matches!(
            refused(Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 8,
                fin: false,
                unidirectional: false,
                headers: Bytes::new()
            }),
            Some(SpdyError::TooLarge { .. })
        ));
        assert!(matches!(
            refused(Frame::WindowUpdate {
                stream: 1,
                delta: 0x8000_0000
            }),
            Some(SpdyError::TooLarge { .. })
        ));
        assert!(matches!(
            refused(Frame::Settings {
                clear: false,
                settings: vec![Setting {
                    id: 1 << 24,
                    flags: 0,
                    value: 0
                }]
            }),
            Some(SpdyError::TooLarge { .. })
        ));
    }

    /// A deterministic generator of garbage (xorshift).
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn no_input_makes_the_decoder_panic() {
        let mut noise = Noise(0x5eed_1234_abcd_0001);
        for round in 0..20_000 {
            let length = usize::try_from(noise.next() % 48).unwrap_or(0);
            let mut bytes: Vec<u8> = (0..length).map(|_| noise.next().to_le_bytes()[0]).collect();
            // Half the time, a plausible control header so the per-type checks get exercised.
            if round % 2 == 0 && bytes.len() >= 8 {
                bytes[0] = 0x80;
                bytes[1] = 0x03;
                bytes[2] = 0x00;
                bytes[3] = u8::try_from(noise.next() % 12).unwrap_or(0);
                bytes[5] = 0;
                bytes[6] = 0;
                // A length of one less than the body, the body's, or one more.
                let claimed = length - 8 + usize::try_from(noise.next() % 3).unwrap_or(0);
                bytes[7] = u8::try_from(claimed.saturating_sub(1)).unwrap_or(0);
            }
            let mut src = BytesMut::from(bytes.as_slice());
            // Each call consumes a frame or stops; errors are fine, panics are not.
            while let Ok(Some(_)) = Codec.decode_eof(&mut src) {}
        }
    }

    #[test]
    fn every_frame_round_trips() -> anyhow::Result<()> {
        let frames = vec![
            Frame::Data {
                stream: MAX_ID,
                fin: true,
                data: Bytes::from_static(b"x"),
            },
            Frame::SynStream {
                stream: 9,
                associated: 0,
                priority: 3,
                fin: false,
                unidirectional: false,
                headers: Bytes::from_static(b"block"),
            },
            Frame::SynReply {
                stream: 9,
                fin: true,
                headers: Bytes::new(),
            },
            Frame::RstStream {
                stream: 9,
                status: RstStatus::FlowControlError,
            },
            Frame::Settings {
                clear: true,
                settings: vec![
                    Setting {
                        id: 4,
                        flags: 1,
                        value: 100,
                    },
                    Setting {
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        flags: 2,
                        value: 7,
                    },
                ],
            },
            Frame::Settings {
                clear: false,
                settings: Vec::new(),
            },
            Frame::Ping { id: u32::MAX },
            Frame::GoAway {
                last_good: 0,
                status: 2,
            },
            Frame::WindowUpdate {
                stream: 9,
                delta: MAX_ID,
            },
        ];
        let mut bytes = BytesMut::new();
        for frame in &frames {
            Codec.encode(frame.clone(), &mut bytes)?;
        }
        assert_eq!(decode_all(&bytes)?, frames);
        for code in 0..=12 {
            assert_eq!(u32::from(RstStatus::from(code)), code);
        }
        Ok(())
    }

    #[test]
    fn the_send_window_binds_once_the_peer_keeps_one() {
        let mut window = SendWindow::default();
        // spdystream sends no window frames: nothing is held back.
        window.sent(3, 1 << 20);
        assert_eq!(window.available(3), usize::MAX);

        // A peer that grants window keeps one: what was sent already counts.
        window.grant(3, 10);
        assert_eq!(window.available(3), 0);
        window.grant(3, 1 << 20);
        window.grant(0, (1 << 20) + 100);
        assert_eq!(window.available(3), 65_536 + 10);

        let mut window = SendWindow::default();
        window.set_initial(100);
        assert_eq!(window.available(1), 100);
        window.sent(1, 60);
        assert_eq!(window.available(1), 40);
        // A new initial size moves the windows of streams already open.
        window.set_initial(200);
        assert_eq!(window.available(1), 140);
        assert_eq!(window.available(3), 200);
        // The session's window binds every stream.
        window.sent(3, 65_536 - 60 - 10);
        assert_eq!(window.available(1), 10);
        window.grant(0, 50);
        assert_eq!(window.available(1), 60);
    }

    #[test]
    fn consumed_output_is_granted_back_by_half_windows() {
        let mut window = ReceiveWindow::default();
        assert!(window.peer_keeps_windows().is_empty());
        assert!(window.consumed(5, 20_000).is_empty());
        assert!(window.consumed(7, 10_000).is_empty());
        // Stream 5 reaches half a window; so does the session.
        assert_eq!(
            window.consumed(5, 13_000),
            [
                Frame::WindowUpdate {
                    stream: 5,
                    delta: 33_000
                },
                Frame::WindowUpdate {
                    stream: 0,
                    delta: 43_000
                },
            ]
        );
        assert!(window.consumed(7, 0).is_empty());
        window.forget(7);
        assert!(window.consumed(7, 30_000).is_empty());
        assert_eq!(
            window.consumed(7, 2_768),
            [
                Frame::WindowUpdate {
                    stream: 7,
                    delta: 32_768
                },
                Frame::WindowUpdate {
                    stream: 0,
                    delta: 32_768
                },
            ]
        );
    }

    #[test]
    fn nothing_is_granted_until_the_peer_shows_it_keeps_windows() {
        let mut window = ReceiveWindow::default();
        assert!(window.consumed(5, 40_000).is_empty());
        assert!(window.consumed(7, 1_000).is_empty());
        // What was consumed before is granted at once, then by half windows again.
        assert_eq!(
            window.peer_keeps_windows(),
            [
                Frame::WindowUpdate {
                    stream: 5,
                    delta: 40_000
                },
                Frame::WindowUpdate {
                    stream: 0,
                    delta: 41_000
                },
            ]
        );
        assert_eq!(
            window.consumed(7, 31_768),
            [Frame::WindowUpdate {
                stream: 7,
                delta: 32_768
            }]
        );
    }

    /// A header block as Go's framer writes it: the pairs deflated at best compression
    /// against the dictionary, in one stream for the connection, each block sync-flushed.
    fn go_block(
        compressor: &mut flate2::Compress,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(0).to_be_bytes());
        for (name, value) in pairs {
            for field in [name, value] {
                raw.extend_from_slice(&u32::try_from(field.len()).unwrap_or(0).to_be_bytes());
                raw.extend_from_slice(field.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            let before = compressor.total_in();
            compressor
                .compress_vec(input, &mut out, flate2::FlushCompress::Sync)
                .map_err(|e| e.to_string())?;
            let used = usize::try_from(compressor.total_in() - before).unwrap_or(0);
            input = &input[used..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(256);
        }
    }

    #[test]
    fn header_blocks_compressed_against_the_dictionary_are_read_in_order() -> Result<(), String> {
        let mut compressor = flate2::Compress::new(flate2::Compression::best(), true);
        let id = compressor
            .set_dictionary(dictionary::DICTIONARY)
            .map_err(|e| e.to_string())?;
        // The draft's dictionary, as zlib names it.
        assert_eq!(id, 0xe3c6_a7c2);
        let first = go_block(
            &mut compressor,
            &[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
        )?;
        let second = go_block(
            &mut compressor,
            &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
        )?;
        let mut decoder = HeaderDecoder::default();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            decoder.block(&first).map_err(|e| e.to_string())?,
            pairs(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0")
            ])
        );
        // The second refers back into the first: it reads only after it.
        assert_eq!(
            decoder.block(&second).map_err(|e| e.to_string())?,
            pairs(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
        );
        // Our own encoder's blocks (stored, no dictionary) read back too.
        let mut ours = HeaderEncoder::default();
        let mut decoder = HeaderDecoder::default();
        let block = ours
            .block(&[("streamtype", "stdout")])
            .map_err(|e| e.to_string())?;
        assert_eq!(
            decoder.block(&block).map_err(|e| e.to_string())?,
            pairs(&[("streamtype", "stdout")])
        );
        Ok(())
    }

    #[test]
    fn unreadable_or_oversized_header_blocks_are_errors() {
        let mut decoder = HeaderDecoder::default();
        assert!(matches!(
            decoder.block(b"not zlib at all"),
            Err(SpdyError::HeaderBlock(_))
        ));
        // A count promising more pairs than the block holds.
        let mut ours = HeaderEncoder::default();
        let mut decoder = HeaderDecoder::default();
        let mut block = ours.block(&[("a", "b")]).unwrap_or_default().to_vec();
        // The stored block's first payload byte is the count's top byte.
        block[2 + 5] = 0x7f;
        assert!(matches!(
            decoder.block(&block),
            Err(SpdyError::HeaderBlock(_))
        ));
        // A small block that would inflate past the bound.
        let mut compressor = flate2::Compress::new(flate2::Compression::best(), true);
        let zeros = vec![0_u8; MAX_HEADER_BLOCK * 2];
        let mut bomb = Vec::with_capacity(4096);
        let _ = compressor.compress_vec(&zeros, &mut bomb, flate2::FlushCompress::Sync);
        assert!(bomb.len() < 4096, "{}", bomb.len());
        let mut decoder = HeaderDecoder::default();
        assert!(
            matches!(decoder.block(&bomb), Err(SpdyError::HeaderBlock(m)) if m.contains("inflates past"))
        );
    }
}
