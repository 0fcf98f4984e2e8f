//! Encryption at rest, as kube-apiserver's `--encryption-provider-config` does it: an
//! `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`) names, per resource, a list of
//! providers; the first one encrypts what is written, every one listed may decrypt what is read.
//! That order is what key rotation rests on: add the new key first, restart, rewrite every
//! object, drop the old key.
//!
//! The stored bytes are kube's: `k8s:enc:<provider>:v1:<key name>:` then, for `aescbc`, a
//! 16-byte IV and the AES-CBC ciphertext (PKCS#7 padded); for `aesgcm`, a 12-byte nonce and
//! the AES-GCM ciphertext with its tag, sealed with the object's storage key as authenticated
//! data (so a row copied under another name does not decrypt); for `secretbox`, a 24-byte nonce
//! and NaCl's secretbox (XSalsa20-Poly1305, tag first). `identity` stores the plain bytes: data
//! written before encryption was on still reads while `identity` is listed.
//!
//! The API server's store and the edge's MetaManager store both use it; each decides what the
//! storage key of an object is ([`Transformer::encrypt`]'s `context`). The ciphers are
//! RustCrypto's; nothing here is cryptography of its own. Start with
//! [`EncryptionConfig::from_yaml`], then [`EncryptionConfig::for_resource`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::aes::{Aes128, Aes192, Aes256};
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use base64::Engine;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use serde::Deserialize;
use zeroize::Zeroizing;

/// What every encrypted value starts with.
const ENCRYPTED: &[u8] = b"k8s:enc:";

type Aes192Gcm = AesGcm<Aes192, aes_gcm::aead::consts::U12>;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the encryption configuration {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not an `EncryptionConfiguration`.
    #[error("the encryption configuration does not parse: {0}")]
    Parse(String),
    /// A field is wrong.
    #[error("the encryption configuration is invalid: {0}")]
    Invalid(String),
}

/// Why a stored value could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The value was written with a key no listed provider has.
    #[error(
        "no provider can read data written with {provider} key {key:?} (the configured providers are {configured})"
    )]
    UnknownKey {
        /// The provider named in the value's prefix.
        provider: String,
        /// The key name in the value's prefix.
        key: String,
        /// What is configured, as `provider/key` names.
        configured: String,
    },
    /// The value is encrypted but `identity` is the only way to read it configured.
    #[error(
        "the data is encrypted ({prefix}) and no configured provider reads it (the configured providers are {configured})"
    )]
    Encrypted {
        /// The value's prefix, up to its key name.
        prefix: String,
        /// What is configured.
        configured: String,
    },
    /// The key matched but the value does not decrypt: damaged, or the key with that name changed.
    #[error("the data does not decrypt with {provider} key {key:?}: {reason}")]
    Corrupt {
        /// The provider.
        provider: &'static str,
        /// The key name.
        key: String,
        /// What failed.
        reason: &'static str,
    },
    /// Encryption itself failed (an AEAD refuses only absurd lengths).
    #[error("encrypting with {provider} key {key:?} failed")]
    Encrypt {
        /// The provider.
        provider: &'static str,
        /// The key name.
        key: String,
    },
}

/// A stored value, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The plain bytes.
    pub data: Vec<u8>,
    /// Whether it was not written by the first provider (with its first key): a rewrite would
    /// move it under the current key. What rotation and migration look for.
    pub stale: bool,
}

enum Gcm {
    A128(Box<Aes128Gcm>),
    A192(Box<Aes192Gcm>),
    A256(Box<Aes256Gcm>),
}

enum Cipher {
    AesCbc(Zeroizing<Vec<u8>>),
    AesGcm(Gcm),
    Secretbox(Box<crypto_secretbox::XSalsa20Poly1305>),
}

/// One key of one provider, with the prefix its values carry.
struct Keyed {
    provider: &'static str,
    name: String,
    prefix: Vec<u8>,
    cipher: Cipher,
}

enum Provider {
    Keyed(Keyed),
    Identity,
}

impl Provider {
    fn label(&self) -> String {
        match self {
            Self::Keyed(k) => format!("{}/{}", k.provider, k.name),
            Self::Identity => "identity".into(),
        }
    }
}

/// The providers of one resource rule, in order: the first encrypts, all decrypt.
pub struct Transformer {
    providers: Vec<Provider>,
}

impl fmt::Debug for Transformer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names only: never the keys.
        f.debug_struct("Transformer")
            .field("providers", &self.configured())
            .finish()
    }
}

impl Transformer {
    fn configured(&self) -> String {
        self.providers
            .iter()
            .map(Provider::label)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether what it writes is plain (`identity` first).
    pub fn writes_plain(&self) -> bool {
        matches!(self.providers.first(), None | Some(Provider::Identity))
    }

    /// The bytes to store for `data`, sealed for the object stored under `context` (its
    /// storage key, the authenticated data of `aesgcm`).
    pub fn encrypt(&self, data: &[u8], context: &[u8]) -> Result<Vec<u8>, TransformError> {
        let keyed = match self.providers.first() {
            None | Some(Provider::Identity) => return Ok(data.to_vec()),
            Some(Provider::Keyed(k)) => k,
        };
        let failed = || TransformError::Encrypt {
            provider: keyed.provider,
            key: keyed.name.clone(),
        };
        let mut out = keyed.prefix.clone();
        match &keyed.cipher {
            Cipher::AesCbc(key) => {
                let mut iv = [0u8; 16];
                OsRng.fill_bytes(&mut iv);
                out.extend_from_slice(&iv);
                let sealed = match key.len() {
                    16 => cbc::Encryptor::<Aes128>::new_from_slices(key, &iv)
                        .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
                    24 => cbc::Encryptor::<Aes192>::new_from_slices(key, &iv)
                        .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
                    _ => cbc::Encryptor::<Aes256>::new_from_slices(key, &iv)
                        .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
                }
                .map_err(|_| failed())?;
                out.extend_from_slice(&sealed);
            }
            Cipher::AesGcm(gcm) => {
                let mut nonce = [0u8; 12];
                OsRng.fill_bytes(&mut nonce);
                out.extend_from_slice(&nonce);
                let payload = Payload {
                    msg: data,
                    aad: context,
                };
                let nonce = aes_gcm::Nonce::from_slice(&nonce);
                let sealed = match gcm {
                    Gcm::A128(c) => c.encrypt(nonce, payload),
                    Gcm::A192(c) => c.encrypt(nonce, payload),
                    Gcm::A256(c) => c.encrypt(nonce, payload),
                }
                .map_err(|_| failed())?;
                out.extend_from_slice(&sealed);
            }
            Cipher::Secretbox(b) => {
                let mut nonce = [0u8; 24];
                OsRng.fill_bytes(&mut nonce);
                out.extend_from_slice(&nonce);
                let sealed = b
                    .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), data)
                    .map_err(|_| failed())?;
                out.extend_from_slice(&sealed);
            }
        }
        Ok(out)
    }

    /// The plain bytes of a stored value, by the provider whose prefix it carries.
    pub fn decrypt(&self, stored: &[u8], context: &[u8]) -> Result<Decrypted, TransformError> {
        for (i, provider) in self.providers.iter().enumerate() {
            match provider {
                Provider::Identity => {
                    if !stored.starts_with(ENCRYPTED) {
                        return Ok(Decrypted {
                            data: stored.to_vec(),
                            stale: i != 0,
                        });
                    }
                }
                Provider::Keyed(k) => {
                    if let Some(body) = stored.strip_prefix(k.prefix.as_slice()) {
                        return Ok(Decrypted {
                            data: k.open(body, context)?,
                            stale: i != 0,
                        });
                    }
                }
            }
        }
        Err(self.unreadable(stored))
    }

    /// The error for a value no provider's prefix matched, naming what it was written with.
    fn unreadable(&self, stored: &[u8]) -> TransformError {
        let configured = self.configured();
        // `k8s:enc:<provider>:v1:<key>:`
        let fields: Vec<&[u8]> = stored.splitn(6, |b| *b == b':').collect();
        match fields.as_slice() {
            [_, _, provider, _, key, _] => TransformError::UnknownKey {
                provider: String::from_utf8_lossy(provider).into_owned(),
                key: String::from_utf8_lossy(key).into_owned(),
                configured,
            },
            _ => TransformError::Encrypted {
                prefix: String::from_utf8_lossy(&stored[..stored.len().min(40)]).into_owned(),
                configured,
            },
        }
    }
}

impl Keyed {
    fn open(&self, body: &[u8], context: &[u8]) -> Result<Vec<u8>, TransformError> {
        let corrupt = |reason| TransformError::Corrupt {
            provider: self.provider,
            key: self.name.clone(),
            reason,
        };
        match &self.cipher {
            Cipher::AesCbc(key) => {
                if body.len() < 32 || !body.len().is_multiple_of(16) {
                    return Err(corrupt("the ciphertext is not whole blocks after the IV"));
                }
                let (iv, sealed) = body.split_at(16);
                match key.len() {
                    16 => cbc::Decryptor::<Aes128>::new_from_slices(key, iv)
                        .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(sealed)),
                    24 => cbc::Decryptor::<Aes192>::new_from_slices(key, iv)
                        .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(sealed)),
                    _ => cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
                        .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(sealed)),
                }
                .map_err(|_| corrupt("bad key or IV length"))?
                .map_err(|_| corrupt("the padding is wrong (another key, or damaged data)"))
            }
            Cipher::AesGcm(gcm) => {
                if body.len() < 12 + 16 {
                    return Err(corrupt("too short for a nonce and a tag"));
                }
                let (nonce, sealed) = body.split_at(12);
                let nonce = aes_gcm::Nonce::from_slice(nonce);
                let payload = Payload {
                    msg: sealed,
                    aad: context,
                };
                match gcm {
                    Gcm::A128(c) => c.decrypt(nonce, payload),
                    Gcm::A192(c) => c.decrypt(nonce, payload),
                    Gcm::A256(c) => c.decrypt(nonce, payload),
                }
                .map_err(|_| {
                    corrupt("authentication failed (another key, another object, or damaged data)")
                })
            }
            Cipher::Secretbox(b) => {
                if body.len() < 24 + 16 {
                    return Err(corrupt("too short for a nonce and a tag"));
                }
                let (nonce, sealed) = body.split_at(24);
                b.decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
                    .map_err(|_| corrupt("authentication failed (another key or damaged data)"))
            }
        }
    }
}

/// A parsed `EncryptionConfiguration`: which resources are encrypted, and how.
#[derive(Debug, Clone, Default)]
pub struct EncryptionConfig {
    rules: Vec<(Vec<String>, Arc<Transformer>)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    resources: Vec<String>,
    providers: Vec<FileProvider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileProvider {
    aescbc: Option<FileKeys>,
    aesgcm: Option<FileKeys>,
    secretbox: Option<FileKeys>,
    identity: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    keys: Vec<FileKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    secret: Zeroizing<String>,
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

fn keyed(provider: &'static str, key: &FileKey) -> Result<Keyed, ConfigError> {
    if key.name.is_empty() || key.name.contains(':') {
        return Err(invalid(format!(
            "{provider} key name {:?} must be non-empty and have no ':'",
            key.name
        )));
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(key.secret.trim())
        .map(Zeroizing::new)
        .map_err(|e| {
            invalid(format!(
                "{provider} key {:?}: the secret is not base64: {e}",
                key.name
            ))
        })?;
    let bad_length = |allowed: &str| {
        invalid(format!(
            "{provider} key {:?}: the secret is {} bytes; it must be {allowed}",
            key.name,
            secret.len()
        ))
    };
    let cipher = match provider {
        "aescbc" => match secret.len() {
            16 | 24 | 32 => Cipher::AesCbc(secret.clone()),
            _ => return Err(bad_length("16, 24 or 32")),
        },
        "aesgcm" => Cipher::AesGcm(match secret.len() {
            16 => Gcm::A128(Box::new(
                Aes128Gcm::new_from_slice(&secret).map_err(|_| bad_length("16"))?,
            )),
            24 => Gcm::A192(Box::new(
                Aes192Gcm::new_from_slice(&secret).map_err(|_| bad_length("24"))?,
            )),
            32 => Gcm::A256(Box::new(
                Aes256Gcm::new_from_slice(&secret).map_err(|_| bad_length("32"))?,
            )),
            _ => return Err(bad_length("16, 24 or 32")),
        }),
        _ => Cipher::Secretbox(Box::new(
            crypto_secretbox::XSalsa20Poly1305::new_from_slice(&secret)
                .map_err(|_| bad_length("32"))?,
        )),
    };
    Ok(Keyed {
        provider,
        name: key.name.clone(),
        prefix: format!("k8s:enc:{provider}:v1:{}:", key.name).into_bytes(),
        cipher,
    })
}

fn providers(rule: &FileRule) -> Result<Vec<Provider>, ConfigError> {
    let mut out = Vec::new();
    for p in &rule.providers {
        let set: Vec<(&'static str, Option<&FileKeys>)> = vec![
            ("aescbc", p.aescbc.as_ref()),
            ("aesgcm", p.aesgcm.as_ref()),
            ("secretbox", p.secretbox.as_ref()),
        ];
        let count = set.iter().filter(|(_, k)| k.is_some()).count()
            + usize::from(p.identity.is_some())
            + usize::from(p.kms.is_some());
        if count != 1 {
            return Err(invalid(
                "each provider entry names exactly one of aescbc, aesgcm, secretbox, identity",
            ));
        }
        if p.kms.is_some() {
            return Err(invalid(
                "the kms provider is not supported; use aescbc, aesgcm or secretbox with a key in this file",
            ));
        }
        if p.identity.is_some() {
            out.push(Provider::Identity);
            continue;
        }
        for (name, keys) in set {
            let Some(keys) = keys else { continue };
            if keys.keys.is_empty() {
                return Err(invalid(format!("{name} lists no keys")));
            }
            for (i, key) in keys.keys.iter().enumerate() {
                if keys.keys[..i].iter().any(|k| k.name == key.name) {
                    return Err(invalid(format!(
                        "{name} key name {:?} is listed twice",
                        key.name
                    )));
                }
                out.push(Provider::Keyed(keyed(name, key)?));
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(format!(
            "the rule for {:?} lists no providers",
            rule.resources
        )));
    }
    Ok(out)
}

/// Whether `pattern` (as an `EncryptionConfiguration` lists them) covers `resource`
/// (`secrets`, `deployments.apps`).
fn covers(pattern: &str, resource: &str) -> bool {
    match pattern {
        "*.*" => true,
        // The core group.
        "*." => !resource.contains('.'),
        _ => match pattern.strip_prefix("*.") {
            Some(group) => resource.split_once('.').is_some_and(|(_, g)| g == group),
            None => pattern == resource,
        },
    }
}

impl EncryptionConfig {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        Self::from_yaml(&text)
    }

    /// Parses an `EncryptionConfiguration` (YAML or JSON) and checks its keys.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if file.api_version != "apiserver.config.k8s.io/v1"
            || file.kind != "EncryptionConfiguration"
        {
            return Err(invalid(format!(
                "expected apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration; found {} {}",
                file.api_version, file.kind
            )));
        }
        let mut rules = Vec::new();
        for rule in &file.resources {
            if rule.resources.is_empty() {
                return Err(invalid("a rule lists no resources"));
            }
            for r in &rule.resources {
                if r.is_empty() || r.chars().any(|c| c.is_ascii_uppercase()) {
                    return Err(invalid(format!(
                        "resource {r:?} must be a lowercase resource name (secrets, deployments.apps, *.apps, *.*)"
                    )));
                }
            }
            rules.push((
                rule.resources.clone(),
                Arc::new(Transformer {
                    providers: providers(rule)?,
                }),
            ));
        }
        Ok(Self { rules })
    }

    /// How objects of `resource` (`secrets`, `deployments.apps`) are stored: the first rule
    /// that lists it, by name or by a `*.group` wildcard. `None`: not encrypted, stored plain.
    pub fn for_resource(&self, resource: &str) -> Option<&Arc<Transformer>> {
        self.rules
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| covers(p, resource)))
            .map(|(_, t)| t)
    }

    /// Whether no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The bytes to store for an object of `resource` under the storage key `context`:
    /// encrypted by its rule's first provider, plain when no rule lists it.
    pub fn encrypt_for(
        &self,
        resource: &str,
        data: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, TransformError> {
        match self.for_resource(resource) {
            Some(t) => t.encrypt(data, context),
            None => Ok(data.to_vec()),
        }
    }

    /// The plain bytes of a stored object of `resource`. With no rule for it, as if `identity`
    /// alone were listed: plain data reads, encrypted data is an error naming its key.
    pub fn decrypt_for(
        &self,
        resource: &str,
        stored: &[u8],
        context: &[u8],
    ) -> Result<Decrypted, TransformError> {
        match self.for_resource(resource) {
            Some(t) => t.decrypt(stored, context),
            None => Transformer {
                providers: vec![Provider::Identity],
            }
            .decrypt(stored, context),
        }
    }
}

/// A new configuration text with one random 32-byte `aesgcm` key named `name` for `resources`,
/// `identity` after it (so data written before still reads): what `wedge up` writes when asked
/// to generate a key.
pub fn generate(resources: &[&str], name: &str) -> String {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let secret = base64::engine::general_purpose::STANDARD.encode(key);
    let list = resources
        .iter()
        .map(|r| format!("      - {r}\n"))
        .collect::<String>();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n{list}    providers:\n      - aesgcm:\n          keys:\n            - name: {name}\n              secret: {secret}\n      - identity: {{}}\n"
    )
}

#[cfg(test)]
mod tests;
