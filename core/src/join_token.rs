//! The bootstrap token an edge joins with: `<ca-hash>.<id>.<secret>`.
//!
//! The hash pins the cloud's CA (SHA-256 of its DER certificate, as KubeEdge's token does), so
//! an edge that dials the wrong cloud, or a cloud with someone in between, finds out before it
//! sends anything secret. `<id>.<secret>` is a kubeadm bootstrap token: the cloud keeps it as a
//! `bootstrap.kubernetes.io/token` Secret with an expiry.

use sha2::{Digest, Sha256};

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cloud CA's DER certificate, 64 lowercase hex digits.
    pub ca_hash: String,
    /// The token id: 6 characters of `[a-z0-9]`.
    pub id: String,
    /// The token secret: 16 characters of `[a-z0-9]`.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a token does not parse. Never includes the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three dot-separated parts.
    #[error("a join token has three parts, <ca-hash>.<id>.<secret>; this one has {0}")]
    Parts(usize),
    /// The CA hash part is wrong.
    #[error("the first part of the token must be the CA's SHA-256 as 64 hex digits")]
    CaHash,
    /// The id part is wrong.
    #[error("the token id must be 6 characters of a-z and 0-9")]
    Id,
    /// The secret part is wrong.
    #[error("the token secret must be 16 characters of a-z and 0-9")]
    Secret,
}

fn token_chars(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The SHA-256 of a CA certificate's DER, as tokens pin it.
pub fn ca_hash(ca_der: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_der))
}

impl JoinToken {
    /// The bearer token the cloud checks: `<id>.<secret>`.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [hash, id, secret] = parts.as_slice() else {
            return Err(TokenError::Parts(parts.len()));
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::CaHash);
        }
        if !token_chars(id, 6) {
            return Err(TokenError::Id);
        }
        if !token_chars(secret, 16) {
            return Err(TokenError::Secret);
        }
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            id: (*id).to_owned(),
            secret: (*secret).to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_its_debug_hides_the_secret() {
        let text = format!("{}.abc123.0123456789abcdef", "A".repeat(64));
        let token: JoinToken = text.parse().expect("token");
        assert_eq!(token.ca_hash, "a".repeat(64));
        assert_eq!(token.bearer(), "abc123.0123456789abcdef");
        assert_eq!(token.to_string(), text.to_lowercase());
        assert!(!format!("{token:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn each_bad_part_is_named() {
        let hash = "0".repeat(64);
        assert_eq!("x".parse::<JoinToken>(), Err(TokenError::Parts(1)));
        assert_eq!(
            format!("zz.abc123.{}", "0".repeat(16)).parse::<JoinToken>(),
            Err(TokenError::CaHash)
        );
        assert_eq!(
            format!("{hash}.ABC123.{}", "0".repeat(16)).parse::<JoinToken>(),
            Err(TokenError::Id)
        );
        assert_eq!(
            format!("{hash}.abc123.short").parse::<JoinToken>(),
            Err(TokenError::Secret)
        );
        let err = format!("{hash}.abc123.secret-not-valid!")
            .parse::<JoinToken>()
            .expect_err("bad");
        assert!(!err.to_string().contains("secret-not-valid"));
    }

    #[test]
    fn the_hash_is_sha256_of_the_der() {
        assert_eq!(
            ca_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
