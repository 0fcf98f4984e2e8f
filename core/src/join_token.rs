//! Placeholder.
/// Token.
#[derive(Debug, Clone)]
pub struct JoinToken;
/// Error.
#[derive(Debug, thiserror::Error)]
#[error("bad token")]
pub struct TokenError;
impl std::str::FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(_: &str) -> Result<Self, TokenError> {
        Err(TokenError)
    }
}
