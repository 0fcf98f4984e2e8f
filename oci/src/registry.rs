//! Fetching manifests and blobs from OCI registries with `oci-client`.
//!
//! Registries are reached over HTTPS, except those the edge's configuration names insecure,
//! which are reached over plain HTTP. Registry errors are sorted into what an operator can act
//! on: not found, unauthorised, unreachable, digest mismatch.

use std::collections::HashMap;
use std::sync::Mutex;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use sha2::{Digest as _, Sha256};

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository, tag or digest does not exist.
    #[error("{reference}: not found in the registry: {detail}")]
    NotFound {
        /// The image.
        reference: String,
        /// The registry's words.
        detail: String,
    },
    /// The registry wants (other) credentials.
    #[error("{reference}: the registry refused access ({detail}); check the pull secret")]
    Unauthorized {
        /// The image.
        reference: String,
        /// The registry's words.
        detail: String,
    },
    /// The registry could not be reached, or spoke something other than the expected protocol.
    #[error(
        "{reference}: cannot reach the registry: {detail} (if it serves plain HTTP, list it under the insecure registries)"
    )]
    Unreachable {
        /// The image.
        reference: String,
        /// The transport error.
        detail: String,
    },
    /// A blob's content does not match its digest.
    #[error("{reference}: blob {expected} arrived with digest {actual}: refusing it")]
    DigestMismatch {
        /// The image.
        reference: String,
        /// The digest announced.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Any other registry failure.
    #[error("{reference}: {detail}")]
    Other {
        /// The image.
        reference: String,
        /// What went wrong.
        detail: String,
    },
}

fn sort_error(reference: &Reference, e: OciDistributionError) -> RegistryError {
    let reference = reference.whole();
    let detail = e.to_string();
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RegistryError::NotFound { reference, detail }
        }
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => {
            RegistryError::Unauthorized { reference, detail }
        }
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => RegistryError::NotFound { reference, detail },
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    RegistryError::Unauthorized { reference, detail }
                }
                _ => RegistryError::Other { reference, detail },
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            RegistryError::NotFound { reference, detail }
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => RegistryError::Unauthorized { reference, detail },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => RegistryError::DigestMismatch {
            reference,
            expected,
            actual,
        },
        OciDistributionError::RequestError(ref r) => {
            // reqwest hides the cause (refused, TLS) in its source chain.
            let mut detail = r.to_string();
            let mut source = std::error::Error::source(r);
            while let Some(s) = source {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                source = s.source();
            }
            RegistryError::Unreachable { reference, detail }
        }
        _ => RegistryError::Other { reference, detail },
    }
}

/// Picks the Wasm entry of a multi-platform index, else linux/amd64, else the first.
pub fn wasm_first(entries: &[ImageIndexEntry]) -> Option<String> {
    let platform = |e: &ImageIndexEntry| {
        e.platform
            .as_ref()
            .map(|p| (p.os.to_string(), p.architecture.to_string()))
    };
    entries
        .iter()
        .find(|e| platform(e).is_some_and(|(_, arch)| arch == "wasm"))
        .or_else(|| {
            entries
                .iter()
                .find(|e| platform(e).is_some_and(|(os, arch)| os == "linux" && arch == "amd64"))
        })
        .or_else(|| entries.first())
        .map(|e| e.digest.clone())
}

/// A registry client (the edge pulls with it; the scheduler reads manifests).
///
/// `oci-client` remembers the first credentials (and tokens) it used for a registry, so one
/// client serves each set of credentials: a pod with a new pull secret is not served with the
/// anonymous session an earlier pod opened.
pub struct RegistryClient {
    insecure: Vec<String>,
    clients: Mutex<HashMap<String, Client>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A key that tells credentials apart without keeping secrets in the clear.
fn auth_key(auth: &RegistryAuth) -> String {
    match auth {
        RegistryAuth::Anonymous => "anonymous".to_owned(),
        RegistryAuth::Basic(user, password) => {
            format!("basic:{user}:{}", sha256_hex(password.as_bytes()))
        }
        RegistryAuth::Bearer(token) => format!("bearer:{}", sha256_hex(token.as_bytes())),
    }
}

impl RegistryClient {
    /// A client that speaks plain HTTP to the `insecure` registries (`host:port`) only.
    pub fn new(insecure: &[String]) -> Result<Self, RegistryError> {
        let this = Self {
            insecure: insecure.to_vec(),
            clients: Mutex::default(),
        };
        // Fail at start, not at the first pull, if no client can be built.
        this.client(&RegistryAuth::Anonymous)?;
        Ok(this)
    }

    fn client(&self, auth: &RegistryAuth) -> Result<Client, RegistryError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = auth_key(auth);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        // reqwest builds its TLS configuration up front and needs a crypto provider for it. We
        // use ring (no C toolchain needed); an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            platform_resolver: Some(Box::new(wasm_first)),
            ..Default::default()
        };
        // `Client::new` would fall back to a default client on error, silently dropping the
        // insecure list: build it fallibly instead.
        let client = Client::try_from(config).map_err(|e| RegistryError::Other {
            reference: String::new(),
            detail: format!("cannot build the registry client: {e}"),
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Fetches the image manifest (resolving an index to its Wasm entry) and its digest
    /// (`sha256:<hex>`, as the registry gave it).
    pub async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(OciImageManifest, String), RegistryError> {
        self.client(auth)?
            .pull_image_manifest(reference, auth)
            .await
            .map_err(|e| sort_error(reference, e))
    }

    /// Fetches a blob with the credentials the manifest was fetched with; `oci-client` checks
    /// its digest as it streams.
    pub async fn blob(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        descriptor: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut out =
            Vec::with_capacity(usize::try_from(descriptor.size).unwrap_or(0).min(64 << 20));
        self.client(auth)?
            .pull_blob(reference, descriptor, &mut out)
            .await
            .map_err(|e| sort_error(reference, e))?;
        Ok(out)
    }
}
