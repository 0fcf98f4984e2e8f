//! Where gRPC statuses from containerd become Wedge's typed errors: one place, so every call
//! sorts failures the same way.
//!
//! The rule that matters most is what counts as *unavailable*: Edged retries those and keeps
//! the pod's last status, so a containerd restart must land there and nothing else may. A status
//! counts when containerd said `UNAVAILABLE`, when the call was cut short (`CANCELLED`: a
//! client-side deadline or a dropped connection), or when tonic made the status itself from a
//! local error (it then carries a `source`; statuses containerd sends never do).
//!
//! Pull failures arrive as `UNKNOWN` with containerd's text, which names what went wrong
//! ("not found", "401 Unauthorized", "dial tcp ...: connection refused"): [`image_error`] sorts
//! them by those words and always keeps the text.

use tonic::{Code, Status};
use wedge_core::runtime::{ImageError, RuntimeError};

/// Why [`crate::CriRuntime::connect`] refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is not `unix:///path` or an absolute path.
    #[error("container runtime endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// As given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Called outside a Tokio runtime (the channel and the wait poller are tasks).
    #[error("the CRI runtime must be created inside a Tokio runtime: {0}")]
    NoTokio(#[from] tokio::runtime::TryCurrentError),
}

/// Whether the call failed because containerd could not be reached or did not answer.
pub(crate) fn is_unavailable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        // tonic keeps the local error as the source of a status it made itself (a broken
        // connection, a refused dial); a status that came over the wire has none.
        Code::Unknown | Code::Internal => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Maps a failed call about `object` (`"container <id>"`, `"sandbox <id>"`).
pub(crate) fn runtime_error(status: Status, object: &str) -> RuntimeError {
    if is_unavailable(&status) {
        return RuntimeError::Unavailable(describe(&status));
    }
    match status.code() {
        Code::NotFound => RuntimeError::NotFound(object.to_owned()),
        _ => RuntimeError::Failed(format!("{object}: {}", status.message())),
    }
}

/// Maps a failed call that carried a configuration: containerd's `INVALID_ARGUMENT` names a
/// setting it refuses, which no retry fixes (`CreateContainerConfigError`).
pub(crate) fn config_error(status: Status, object: &str, field: &str) -> RuntimeError {
    if status.code() == Code::InvalidArgument {
        return RuntimeError::InvalidConfig {
            field: field.to_owned(),
            message: status.message().to_owned(),
        };
    }
    runtime_error(status, object)
}

/// Maps a failed image call about `reference`.
pub(crate) fn image_error(status: Status, reference: &str) -> ImageError {
    if is_unavailable(&status) {
        return ImageError::Unavailable(describe(&status));
    }
    let message = status.message().to_owned();
    let reference = reference.to_owned();
    if status.code() == Code::InvalidArgument || message.contains("invalid reference format") {
        return ImageError::InvalidReference { reference, message };
    }
    let lower = message.to_ascii_lowercase();
    // Whole words only: a digest's hex may hold "401" or "403".
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has_word = |w: &str| words.contains(&w);
    if has_word("unauthorized") || has_word("401") || has_word("403") || has_word("forbidden") {
        ImageError::Unauthorized {
            reference,
            message: format!("{message}; check the pod's imagePullSecrets"),
        }
    } else if status.code() == Code::NotFound
        || lower.contains("not found")
        || lower.contains("manifest unknown")
    {
        ImageError::NotFound { reference, message }
    } else if [
        "connection refused",
        "dial tcp",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
    ]
    .iter()
    .any(|s| lower.contains(s))
    {
        ImageError::Unreachable { reference, message }
    } else {
        ImageError::Other { reference, message }
    }
}

/// The status's message and, for one tonic made locally, the error under it.
fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_error(message: &str) -> ImageError {
        image_error(Status::unknown(message), "127.0.0.1:5000/busybox:1.35")
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let local = Status::from_error(Box::new(refused));
        assert!(matches!(
            runtime_error(local, "container c"),
            RuntimeError::Unavailable(m) if m.contains("refused")
        ));
        assert!(matches!(
            runtime_error(Status::unavailable("dial"), "container c"),
            RuntimeError::Unavailable(_)
        ));
        assert!(matches!(
            runtime_error(Status::cancelled("Timeout expired"), "container c"),
            RuntimeError::Unavailable(_)
        ));
        assert!(matches!(
            image_error(Status::unavailable("dial"), "r"),
            ImageError::Unavailable(_)
        ));
        // The same code sent by containerd is a failure of the call, not of the connection.
        assert!(matches!(
            runtime_error(Status::unknown("failed to create shim task"), "container c"),
            RuntimeError::Failed(m) if m == "container c: failed to create shim task"
        ));
    }

    #[test]
    fn codes_map_to_their_variants() {
        assert_eq!(
            runtime_error(Status::not_found("no such container"), "container c"),
            RuntimeError::NotFound("container c".into())
        );
        assert_eq!(
            config_error(
                Status::invalid_argument("bad user"),
                "container c",
                "securityContext"
            ),
            RuntimeError::InvalidConfig {
                field: "securityContext".into(),
                message: "bad user".into()
            }
        );
        assert!(matches!(
            runtime_error(Status::invalid_argument("bad"), "container c"),
            RuntimeError::Failed(_)
        ));
    }

    #[test]
    fn pull_errors_are_sorted_by_containerd_words() {
        let cases = [
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/busybox:nope": failed to resolve reference "127.0.0.1:5000/busybox:nope": 127.0.0.1:5000/busybox:nope: not found"#,
                "NotFound",
            ),
            ("unexpected status code: manifest unknown", "NotFound"),
            (
                r#"failed to resolve reference "x": pulling from host 127.0.0.1:5000 failed with status code [manifests 1.35]: 401 Unauthorized"#,
                "Unauthorized",
            ),
            (
                "unexpected status from HEAD request: 403 Forbidden",
                "Unauthorized",
            ),
            (
                r#"failed to do request: Head "http://127.0.0.1:1/v2/busybox/manifests/1.35": dial tcp 127.0.0.1:1: connect: connection refused"#,
                "Unreachable",
            ),
            (
                "dial tcp: lookup registry.invalid: no such host",
                "Unreachable",
            ),
            ("failed commit on ref: unexpected commit digest", "Other"),
            // A digest whose hex holds 401 is not a 401.
            (
                "failed to extract layer sha256:ab401cd: short read",
                "Other",
            ),
            (
                r#"failed to pull and unpack image "UP": parse "UP": invalid reference format"#,
                "InvalidReference",
            ),
        ];
        for (message, want) in cases {
            let got = pull_error(message);
            let kind = match &got {
                ImageError::NotFound { .. } => "NotFound",
                ImageError::Unauthorized { .. } => "Unauthorized",
                ImageError::Unreachable { .. } => "Unreachable",
                ImageError::InvalidReference { .. } => "InvalidReference",
                ImageError::Other { .. } => "Other",
                _ => "unexpected",
            };
            assert_eq!(kind, want, "{message}");
            assert!(
                got.to_string().contains(message),
                "keeps containerd's words: {got}"
            );
        }
    }
}
