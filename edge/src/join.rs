//! Placeholder until joining lands.
use crate::tls::EdgeCredentials;
use wedge_core::join_token::JoinToken;
/// Join failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinError(String);
/// Joins.
pub async fn join(
    _cloud: &str,
    _token: &JoinToken,
    _node: &str,
    _creds: &EdgeCredentials,
) -> Result<(), JoinError> {
    Err(JoinError("joining is not built yet".into()))
}
