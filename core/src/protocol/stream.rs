//! Stream frames: the byte streams (`kubectl logs`, `exec`, `attach`, `port-forward`) that share
//! an edge's one WebSocket with the object sync.
//!
//! Envelopes are JSON and always start with `{`; a stream frame starts with its type byte
//! (1 to 5), so one look at the first byte tells them apart and neither costs the other anything.
//! Stream frames are binary because they carry arbitrary bytes (a tarball through `kubectl cp`)
//! and JSON would inflate them by a third. The layout, big-endian:
//!
//! ```text
//! [type u8][stream u32][rest]
//!   OPEN   rest = a StreamRequest, JSON            (cloud → edge)
//!   DATA   rest = [channel u8][bytes]              (both ways, at most the window the peer granted)
//!   CREDIT rest = [bytes u32]                      (both ways: "I consumed this much, send more")
//!   EOF    rest = [channel u8]                     (both ways: that channel ends, e.g. stdin)
//!   CLOSE  rest = a metav1.Status, JSON, or empty  (both ways: the stream ends, with its outcome)
//! ```
//!
//! `docs/PROTOCOL.md` specifies the rules; [`super::mux`] implements them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Opens a stream (cloud → edge); the rest is a JSON [`StreamRequest`].
pub const OPEN: u8 = 1;
/// Bytes on one channel of a stream.
pub const DATA: u8 = 2;
/// Grants the peer more window on a stream.
pub const CREDIT: u8 = 3;
/// Ends one channel of a stream.
pub const EOF: u8 = 4;
/// Ends a stream, with an optional `metav1.Status`.
pub const CLOSE: u8 = 5;

/// Bytes either side may send on a stream before the receiver grants more. A stalled reader
/// holds at most this much per stream at the other end; everything else flows.
pub const WINDOW: u32 = 256 << 10;
/// The largest DATA payload a sender puts in one frame, so that no stream holds the connection
/// (and the sync frames queued behind it) for long.
pub const MAX_CHUNK: usize = 32 << 10;

/// Channel numbers, as Kubernetes' remote command protocol numbers them.
pub mod channel {
    /// Standard input (cloud → edge); a port-forward's bytes towards the pod.
    pub const STDIN: u8 = 0;
    /// Standard output (edge → cloud); a log; a port-forward's bytes from the pod.
    pub const STDOUT: u8 = 1;
    /// Standard error (edge → cloud).
    pub const STDERR: u8 = 2;
    /// Terminal resizes, JSON `{"Width":N,"Height":N}` (cloud → edge).
    pub const RESIZE: u8 = 4;
}

/// One stream frame.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamFrame {
    /// A new stream, asking for `request`.
    Open {
        /// The stream's id, chosen by the cloud, unique on the connection.
        stream: u32,
        /// What the stream is for.
        request: StreamRequest,
    },
    /// Bytes on a channel.
    Data {
        /// The stream.
        stream: u32,
        /// The channel ([`channel`]).
        channel: u8,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// More window for the peer.
    Credit {
        /// The stream.
        stream: u32,
        /// How many more bytes the peer may send.
        bytes: u32,
    },
    /// A channel ends.
    Eof {
        /// The stream.
        stream: u32,
        /// The channel.
        channel: u8,
    },
    /// The stream ends.
    Close {
        /// The stream.
        stream: u32,
        /// Its outcome, a `metav1.Status`; none when the stream was abandoned.
        status: Option<Value>,
    },
}

/// A stream frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamFrameError {
    /// Shorter than its type needs.
    #[error("a stream frame of type {kind} needs at least {needed} bytes, got {got}")]
    Short {
        /// The type byte.
        kind: u8,
        /// Bytes needed.
        needed: usize,
        /// Bytes there.
        got: usize,
    },
    /// An unknown type byte.
    #[error("unknown stream frame type {0}")]
    UnknownType(u8),
    /// The JSON of an OPEN or CLOSE does not parse.
    #[error("stream {stream}: {message}")]
    Json {
        /// The stream.
        stream: u32,
        /// Why.
        message: String,
    },
}

/// Whether `bytes` is a stream frame (else it is a JSON envelope).
pub fn is_stream_frame(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(OPEN..=CLOSE))
}

impl StreamFrame {
    /// The stream the frame belongs to.
    pub fn stream(&self) -> u32 {
        match self {
            Self::Open { stream, .. }
            | Self::Data { stream, .. }
            | Self::Credit { stream, .. }
            | Self::Eof { stream, .. }
            | Self::Close { stream, .. } => *stream,
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, stream) = match self {
            Self::Open { stream, .. } => (OPEN, *stream),
            Self::Data { stream, .. } => (DATA, *stream),
            Self::Credit { stream, .. } => (CREDIT, *stream),
            Self::Eof { stream, .. } => (EOF, *stream),
            Self::Close { stream, .. } => (CLOSE, *stream),
        };
        let mut out = Vec::with_capacity(match self {
            Self::Data { data, .. } => 6 + data.len(),
            _ => 64,
        });
        out.push(kind);
        out.extend_from_slice(&stream.to_be_bytes());
        match self {
            Self::Open { request, .. } => {
                // A StreamRequest is plain data: it always serialises.
                out.extend(serde_json::to_vec(request).unwrap_or_default());
            }
            Self::Data { channel, data, .. } => {
                out.push(*channel);
                out.extend_from_slice(data);
            }
            Self::Credit { bytes, .. } => out.extend_from_slice(&bytes.to_be_bytes()),
            Self::Eof { channel, .. } => out.push(*channel),
            Self::Close { status, .. } => {
                if let Some(status) = status {
                    out.extend(serde_json::to_vec(status).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Reads a frame from a message the connection handed over whole: a DATA frame's bytes
    /// are a slice of it, not a copy (a port-forward's bytes pass through here once a frame).
    pub fn decode_shared(bytes: &bytes::Bytes) -> Result<Self, StreamFrameError> {
        match Self::decode_header(bytes)? {
            (DATA, stream) => Ok(Self::Data {
                stream,
                channel: bytes[5],
                data: bytes.slice(6..),
            }),
            _ => Self::decode(bytes),
        }
    }

    /// The type and stream of a frame, once its length is checked for its type.
    fn decode_header(bytes: &[u8]) -> Result<(u8, u32), StreamFrameError> {
        let kind = *bytes.first().ok_or(StreamFrameError::Short {
            kind: 0,
            needed: 5,
            got: 0,
        })?;
        let needed = match kind {
            OPEN | CLOSE => 5,
            DATA | EOF => 6,
            CREDIT => 9,
            other => return Err(StreamFrameError::UnknownType(other)),
        };
        if bytes.len() < needed {
            return Err(StreamFrameError::Short {
                kind,
                needed,
                got: bytes.len(),
            });
        }
        Ok((
            kind,
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
        ))
    }

    /// Reads a frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, StreamFrameError> {
        let (kind, stream) = Self::decode_header(bytes)?;
        let rest = &bytes[5..];
        let json = |e: serde_json::Error| StreamFrameError::Json {
            stream,
            message: e.to_string(),
        };
        Ok(match kind {
            OPEN => Self::Open {
                stream,
                request: serde_json::from_slice(rest).map_err(json)?,
            },
            DATA => Self::Data {
                stream,
                channel: rest[0],
                data: bytes::Bytes::copy_from_slice(&rest[1..]),
            },
            CREDIT => Self::Credit {
                stream,
                bytes: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            },
            EOF => Self::Eof {
                stream,
                channel: rest[0],
            },
            _ => Self::Close {
                stream,
                status: if rest.is_empty() {
                    None
                } else {
                    Some(serde_json::from_slice(rest).map_err(json)?)
                },
            },
        })
    }
}

/// What a stream is for: one of the kubelet's streaming requests, for one pod's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StreamRequest {
    /// A container's log (`/containerLogs`): the edge writes it on stdout and closes the stream.
    #[serde(rename_all = "camelCase")]
    Logs {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The container.
        container: String,
        /// The kubelet's log parameters.
        #[serde(flatten)]
        options: LogParams,
    },
    /// A command run in a container (`/exec`): stdin on channel 0 (EOF when it ends),
    /// stdout 1, stderr 2, resizes 4; the CLOSE carries the exit as kube-apiserver writes it
    /// ([`exit_status`]).
    #[serde(rename_all = "camelCase")]
    Exec {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The container.
        container: String,
        /// The command and its arguments.
        command: Vec<String>,
        /// Which streams the client wants, and whether it has a terminal.
        #[serde(flatten)]
        io: StreamIo,
    },
    /// The container's own stdio (`/attach`), channels as for exec.
    #[serde(rename_all = "camelCase")]
    Attach {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The container.
        container: String,
        /// Which streams the client wants, and whether it has a terminal.
        #[serde(flatten)]
        io: StreamIo,
    },
    /// One TCP connection to a port of the pod (`/portForward`, one stream per connection the
    /// client makes): the bytes towards the pod on stdin (EOF half-closes the connection), the
    /// pod's on stdout (EOF when it half-closed); the CLOSE says whether the connection could
    /// be made and ended cleanly, a failure `Status` carrying the kubelet's message otherwise.
    #[serde(rename_all = "camelCase")]
    PortForward {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port, inside the pod's network.
        port: u16,
    },
}

/// The streams of an exec or attach, as the kubelet's `input`, `output`, `error` and `tty`
/// parameters give them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamIo {
    /// The client sends standard input.
    #[serde(default)]
    pub stdin: bool,
    /// The client wants standard output.
    #[serde(default)]
    pub stdout: bool,
    /// The client wants standard error.
    #[serde(default)]
    pub stderr: bool,
    /// The command gets a terminal (stderr then comes on stdout).
    #[serde(default)]
    pub tty: bool,
}

impl StreamRequest {
    /// The namespace and name of the pod the request is for.
    pub fn pod(&self) -> (&str, &str) {
        match self {
            Self::Logs { namespace, pod, .. }
            | Self::Exec { namespace, pod, .. }
            | Self::Attach { namespace, pod, .. }
            | Self::PortForward { namespace, pod, .. } => (namespace, pod),
        }
    }
}

/// The kubelet's `/containerLogs` query parameters, as they were given (the edge interprets
/// them against its clock).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogParams {
    /// Keep the stream open and send what the container writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// The log of the container's previous run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub previous: bool,
    /// Prefix each line with its RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamps: bool,
    /// Only lines written in the last this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<i64>,
    /// Only lines written at or after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_time: Option<String>,
    /// Only the last this many lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<i64>,
    /// Stop after this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<i64>,
}

/// A `metav1.Status` for the end of a stream: success, or a failure with its HTTP code, reason
/// and message, as the API server will hand it to the client.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    if code < 300 {
        return serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "code": code, "reason": reason, "message": message,
    })
}

/// The `Status` that ends an exec, as kube-apiserver writes it on the error channel: success,
/// or `NonZeroExitCode` with the code as the cause clients read it from.
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        return status(200, "", "");
    }
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: StreamFrame) {
        let bytes = frame.encode();
        assert!(is_stream_frame(&bytes));
        assert_eq!(StreamFrame::decode(&bytes), Ok(frame.clone()));
        assert_eq!(
            StreamFrame::decode_shared(&bytes::Bytes::from(bytes)),
            Ok(frame)
        );
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(StreamFrame::Open {
            stream: 7,
            request: StreamRequest::Logs {
                namespace: "default".into(),
                pod: "web".into(),
                container: "main".into(),
                options: LogParams {
                    follow: true,
                    tail_lines: Some(3),
                    ..LogParams::default()
                },
            },
        });
        round_trip(StreamFrame::Data {
            stream: u32::MAX,
            channel: channel::STDERR,
            data: bytes::Bytes::from_static(b"\x00\xffbytes"),
        });
        round_trip(StreamFrame::Data {
            stream: 1,
            channel: 0,
            data: bytes::Bytes::new(),
        });
        round_trip(StreamFrame::Credit {
            stream: 2,
            bytes: WINDOW,
        });
        round_trip(StreamFrame::Eof {
            stream: 3,
            channel: channel::STDIN,
        });
        round_trip(StreamFrame::Close {
            stream: 4,
            status: None,
        });
        round_trip(StreamFrame::Close {
            stream: 4,
            status: Some(status(400, "BadRequest", "no")),
        });
    }

    #[test]
    fn envelopes_are_not_stream_frames() {
        assert!(!is_stream_frame(br#"{"v":1}"#));
        assert!(!is_stream_frame(b""));
        assert!(!is_stream_frame(b"\x06abcd"));
    }

    #[test]
    fn shared_data_is_a_slice_of_the_message() {
        let message = bytes::Bytes::from(
            StreamFrame::Data {
                stream: 3,
                channel: channel::STDOUT,
                data: bytes::Bytes::from_static(b"payload"),
            }
            .encode(),
        );
        let Ok(StreamFrame::Data { data, .. }) = StreamFrame::decode_shared(&message) else {
            panic!("not DATA");
        };
        assert_eq!(&data[..], b"payload");
        assert_eq!(data.as_ptr(), message[6..].as_ptr(), "not copied");
        assert_eq!(
            StreamFrame::decode_shared(&bytes::Bytes::from_static(b"\x02\x00\x00")),
            Err(StreamFrameError::Short {
                kind: DATA,
                needed: 6,
                got: 3
            })
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert_eq!(
            StreamFrame::decode(b"\x02\x00\x00"),
            Err(StreamFrameError::Short {
                kind: DATA,
                needed: 6,
                got: 3
            })
        );
        assert_eq!(
            StreamFrame::decode(b"\x03\x00\x00\x00\x01\x00"),
            Err(StreamFrameError::Short {
                kind: CREDIT,
                needed: 9,
                got: 6
            })
        );
        assert!(matches!(
            StreamFrame::decode(b"\x01\x00\x00\x00\x01{\"kind\":\"shell\"}"),
            Err(StreamFrameError::Json { stream: 1, .. })
        ));
        assert_eq!(
            StreamFrame::decode(b"\x09\x00\x00\x00\x01"),
            Err(StreamFrameError::UnknownType(9))
        );
    }
}
