//! Why a peer refused something: the `reason` of an error frame and of CloudHub's HTTP
//! refusals (`{"reason", "message"}`), in one place so that both ends name and judge them alike.
//!
//! On the wire a reason is its variant's name as a string (`"StoreFailed"`), as it was before
//! this enum; a reason this side does not know (a newer peer's) is kept as [`Reason::Other`] so
//! it still reaches the logs. [`Reason::retryable`] is the one rule for whether the same frame
//! may succeed if sent again later: everything else is final, dropped once and not resent.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// A refusal's machine-readable reason.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
            /// A reason this side does not know, as the peer sent it.
            Other(String),
        }

        impl Reason {
            /// The reason as the wire and the metrics' labels spell it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$name => stringify!($name),)*
                    Self::Other(other) => other,
                }
            }
        }

        impl From<&str> for Reason {
            fn from(s: &str) -> Self {
                match s {
                    $(stringify!($name) => Self::$name,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }
    };
}

reasons! {
    // A frame that could not be read or is out of place (`Envelope::decode`, the order rule).
    /// Not JSON, not an envelope, or a text frame.
    MalformedFrame,
    /// Over the size limit; ends the connection (close code 1009).
    FrameTooLarge,
    /// A field the operation needs is missing.
    IncompleteFrame,
    /// Another protocol version.
    UnsupportedVersion,
    /// An id not above the last one accepted.
    OutOfOrder,
    /// An operation the receiver does not take here.
    UnexpectedOperation,
    /// A resource kind the receiver does not take.
    UnexpectedResource,
    /// The first frame was not a usable hello; the session ends.
    BadHello,

    // Objects down to the edge.
    /// The object does not parse as its kind, or is not the edge's.
    InvalidObject,
    /// The edge could not store it (a full disk): the cloud sends it again shortly.
    StoreFailed,

    // Reports and queries up to the cloud.
    /// Another node's object.
    Forbidden,
    /// The payload is not what the resource needs.
    Invalid,
    /// The API server refused the write for good (a 4xx other than 408 and 429); the message
    /// carries its status code, reason and message.
    Rejected,
    /// Too many reports or queries in flight.
    Busy,
    /// The API server failed or did not answer (5xx, 408, 429, a timeout, no connection).
    ApiUnavailable,

    // Identity and joining (also CloudHub's HTTP refusals).
    /// The edge's certificate is revoked: only a new join helps.
    CertificateRevoked,
    /// No client certificate.
    Unauthorized,
    /// A request to the WebSocket path that is not a WebSocket handshake.
    NotWebSocket,
    /// The handshake did not ask for this protocol's subprotocol.
    UnsupportedProtocol,
    /// A request body over the limit.
    RequestTooLarge,
    /// No such path.
    NotFound,
    /// A bad request (a bad node name or CSR).
    BadRequest,
    /// A malformed, unknown, expired or wrong join token.
    InvalidToken,
    /// A single-use join token used already.
    TokenUsed,
    /// A join token made for another node.
    TokenBoundToNode,
    /// The node name is in use.
    NodeTaken,
    /// The cloud failed.
    InternalError,
}

impl Reason {
    /// Whether the same frame may succeed when sent again later: the peer was busy, the API
    /// server unavailable, or the edge's disk full. Any other refusal is final.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Busy | Self::ApiUnavailable | Self::StoreFailed | Self::InternalError
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from(s.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_travel_as_the_strings_they_were() {
        for (reason, wire) in [
            (Reason::StoreFailed, "\"StoreFailed\""),
            (Reason::ApiUnavailable, "\"ApiUnavailable\""),
            (Reason::CertificateRevoked, "\"CertificateRevoked\""),
            (Reason::Other("FromTheFuture".into()), "\"FromTheFuture\""),
        ] {
            assert_eq!(serde_json::to_string(&reason).expect("json"), wire);
            assert_eq!(
                serde_json::from_str::<Reason>(wire).expect("parses"),
                reason
            );
        }
    }

    #[test]
    fn only_a_busy_peer_an_unavailable_api_or_a_full_disk_is_worth_a_retry() {
        for retry in [
            Reason::Busy,
            Reason::ApiUnavailable,
            Reason::StoreFailed,
            Reason::InternalError,
        ] {
            assert!(retry.retryable(), "{retry}");
        }
        for last in [
            Reason::Rejected,
            Reason::Invalid,
            Reason::Forbidden,
            Reason::InvalidObject,
            Reason::CertificateRevoked,
            Reason::Other("Busy later".into()),
        ] {
            assert!(!last.retryable(), "{last}");
        }
    }
}
