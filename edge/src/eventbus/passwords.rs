//! mosquitto's `password_file`, read by the embedded broker: `username:$7$<iterations>$<salt>$<hash>`
//! lines as `mosquitto_passwd` writes them (PBKDF2-HMAC-SHA512, base64), so one file serves both
//! brokers and `mosquitto_passwd` manages it.

use std::collections::HashMap;
use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::pbkdf2;

/// The iteration count `mosquitto_passwd` uses.
const ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

#[derive(Clone)]
struct Hash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// A parsed `password_file`.
#[derive(Clone, Default)]
pub struct Passwords(HashMap<String, Hash>);

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Passwords").field(&self.0.len()).finish()
    }
}

/// A line of a `password_file` that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct PasswordError {
    /// 1-based.
    pub line: usize,
    /// What is wrong (never the hash itself).
    pub reason: String,
}

impl Passwords {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, PasswordError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| PasswordError {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected username:hash"))?;
            if user.is_empty() {
                return Err(err("empty username"));
            }
            users.insert(user.to_owned(), parse_hash(hash).map_err(err)?);
        }
        Ok(Self(users))
    }

    /// How many users the file names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it names `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.0.contains_key(username)
    }

    /// The usernames it names.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `password` is `username`'s (in constant time for a known user).
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let Some(h) = self.0.get(username) else {
            return false;
        };
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA512,
            h.iterations,
            &h.salt,
            password.as_bytes(),
            &h.hash,
        )
        .is_ok()
    }
}

fn parse_hash(text: &str) -> Result<Hash, &'static str> {
    let mut parts = text.split('$');
    let (Some(""), Some(kind)) = (parts.next(), parts.next()) else {
        return Err(
            "not a mosquitto_passwd hash ($7$...): hash the file with `mosquitto_passwd -U`",
        );
    };
    if kind != "7" {
        return Err("only $7$ (PBKDF2-SHA512) hashes are read: hash again with mosquitto_passwd 2");
    }
    let (Some(iterations), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected $7$<iterations>$<salt>$<hash>");
    };
    let iterations = iterations
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or("the iteration count is not a positive number")?;
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| "the salt is not base64")?;
    let hash = STANDARD
        .decode(hash)
        .map_err(|_| "the hash is not base64")?;
    if hash.len() != HASH_LEN {
        return Err("the hash is not 64 bytes (SHA-512)");
    }
    Ok(Hash {
        iterations,
        salt,
        hash,
    })
}

/// `password` hashed as `mosquitto_passwd` does, for a `password_file` line after `username:`.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    random(&mut salt);
    let mut out = [0u8; HASH_LEN];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "$7${ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

/// A random password: 24 bytes, base64 without padding characters that shells mind.
pub fn random_password() -> String {
    let mut bytes = [0u8; 24];
    random(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system's generator fails only where the OS has none; the process could not run TLS
    // then either, so a fallback would hide a broken host.
    if ring::rand::SystemRandom::new().fill(buf).is_err() {
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
        tracing::error!("the system's random generator failed; fell back to a weak one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_others_do_not() {
        let line = format!("mapper:{}\n# comment\n\n", hash("s3cret"));
        let p = Passwords::parse(&line).expect("parses");
        assert_eq!(p.len(), 1);
        assert!(p.verify("mapper", "s3cret"));
        assert!(!p.verify("mapper", "s3cret "));
        assert!(!p.verify("other", "s3cret"));
    }

    #[test]
    fn a_mosquitto_passwd_line_verifies() {
        // Written by mosquitto_passwd 2.0.11 (`-b file thermo-mapper m4pper`).
        let line = "thermo-mapper:$7$101$lBLMpay9LzR6A7q5$k5o6JIt9CJhFWs/wAXxCA/c8eszrFdCA5RsTkr4uvvvr9OxzWrPuEeYLW5s8JwLmQNX6ROHf0cbyVrno1cq+sA==";
        let p = Passwords::parse(line).expect("parses");
        assert!(p.verify("thermo-mapper", "m4pper"));
        assert!(!p.verify("thermo-mapper", "mapper"));
    }

    #[test]
    fn bad_lines_are_named_without_their_secret() {
        for (text, needle) in [
            ("a:plain", "mosquitto_passwd -U"),
            ("nocolon", "username:hash"),
            (":$7$101$AAAA$AAAA", "empty username"),
            ("a:$6$c2FsdA==$aGFzaA==", "$7$"),
            ("a:$7$0$AAAA$AAAA", "iteration"),
            ("a:$7$101$AAAA$AAAA", "64 bytes"),
        ] {
            let e = Passwords::parse(&format!("# x\n{text}")).expect_err(text);
            assert_eq!(e.line, 2);
            assert!(e.reason.contains(needle), "{text}: {e}");
        }
    }
}
