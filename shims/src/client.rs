//! The gRPC connection to containerd: a tonic channel over its unix socket.
//!
//! The channel dials lazily and redials after the socket goes away, so a [`crate::CriRuntime`]
//! made while containerd is down, or kept across a restart of containerd, starts working again
//! by itself; the calls in between fail with `Unavailable`. There is no health check of our own:
//! the first call after a restart finds the old connection closed and tonic dials again.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::errors::ConnectError;

/// How long a call may take unless it says otherwise: the kubelet's default
/// `--runtime-request-timeout`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long dialling the socket may take (it is local: a slow dial means a stuck containerd).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest message accepted from containerd, as the kubelet allows: `ExecSync` output and
/// long container lists exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The socket an endpoint names: `unix:///run/containerd/containerd.sock`, as kubelet's
/// `--container-runtime-endpoint` writes it, or the bare absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let bad = |reason| ConnectError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => return Err(bad("only unix sockets are supported (unix:///path)")),
        None => endpoint,
    };
    if path.is_empty() {
        return Err(bad("no socket path"));
    }
    if !path.starts_with('/') {
        return Err(bad("the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

/// The two CRI services over one channel.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) runtime: RuntimeServiceClient<Channel>,
    pub(crate) image: ImageServiceClient<Channel>,
}

impl Clients {
    /// A lazily dialling channel to the socket. Needs a Tokio runtime (tonic spawns the
    /// channel's worker).
    pub(crate) fn new(socket: PathBuf) -> Result<Self, ConnectError> {
        tokio::runtime::Handle::try_current()?;
        // The URI is never dialled (the connector ignores it) but tonic needs one for the
        // `:authority` of requests.
        let channel =
            Endpoint::from_static("http://containerd.invalid")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }));
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            image: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

/// A request with a deadline (tonic enforces it on our side and sends it as `grpc-timeout`).
pub(crate) fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// A request with the default deadline.
pub(crate) fn call<T>(message: T) -> tonic::Request<T> {
    request(message, Some(REQUEST_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_unix_sockets() {
        let want = PathBuf::from("/run/containerd/containerd.sock");
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").ok(),
            Some(want.clone())
        );
        assert_eq!(
            socket_path("/run/containerd/containerd.sock").ok(),
            Some(want)
        );
        for bad in [
            "tcp://127.0.0.1:1",
            "unix://",
            "unix://relative.sock",
            "relative.sock",
            "",
        ] {
            assert!(
                matches!(socket_path(bad), Err(ConnectError::BadEndpoint { .. })),
                "{bad}"
            );
        }
    }
}
