//! Placeholder until rotation lands.
use crate::tls::EdgeCredentials;
use tokio_util::sync::CancellationToken;
/// Rotates.
pub async fn run(_cloud: String, _creds: EdgeCredentials, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}
