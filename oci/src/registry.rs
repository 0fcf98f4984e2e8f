//! Fetching manifests and blobs from OCI registries with `oci-client`.
//!
//! Where a registry is reached is [`crate::hosts`]'s answer: its mirrors in order, then its
//! server (HTTPS unless configured plain HTTP), the next tried when one fails, as containerd
//! does. Registry errors are sorted into what an operator can act on: not found,
//! unauthorised, unreachable, digest mismatch.

use std::collections::HashMap;
use std::sync::Mutex;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use sha2::{Digest as _, Sha256};

use crate::hosts::{Endpoint, Need, RegistryHosts};

/// Why a registry request failed.
#[derive(Debug, Clone, thiserror::Error)]
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
        "{reference}: cannot reach the registry: {detail} (if it serves plain HTTP, list it under the insecure registries or give it a hosts.toml with server = \"http://...\")"
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
/// anonymous session an earlier pod opened. Clients are also apart by scheme and certificate
/// checking, which `oci-client` sets per client, not per host.
pub struct RegistryClient {
    hosts: RegistryHosts,
    clients: Mutex<HashMap<(String, bool, bool), Client>>,
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

/// Which error to report when every endpoint failed: the first that says more than
/// "unreachable" (a mirror that does not hold the image says so), else the last.
fn worst(errors: Vec<RegistryError>) -> Option<RegistryError> {
    let informative = errors
        .iter()
        .position(|e| !matches!(e, RegistryError::Unreachable { .. }));
    let mut errors = errors;
    match informative {
        Some(i) => Some(errors.swap_remove(i)),
        None => errors.pop(),
    }
}

impl RegistryClient {
    /// A client that reaches registries as `hosts` says.
    pub fn new(hosts: RegistryHosts) -> Result<Self, RegistryError> {
        let this = Self {
            hosts,
            clients: Mutex::default(),
        };
        // Fail at start, not at the first pull, if no client can be built.
        this.client(&RegistryAuth::Anonymous, false, false)?;
        Ok(this)
    }

    fn client(
        &self,
        auth: &RegistryAuth,
        plain_http: bool,
        skip_verify: bool,
    ) -> Result<Client, RegistryError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (auth_key(auth), plain_http, skip_verify);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        // reqwest builds its TLS configuration up front and needs a crypto provider for it. We
        // use ring (no C toolchain needed); an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: skip_verify,
            platform_resolver: Some(Box::new(wasm_first)),
            ..Default::default()
        };
        // `Client::new` would fall back to a default client on error, silently dropping the
        // protocol: build it fallibly instead.
        let client = Client::try_from(config).map_err(|e| RegistryError::Other {
            reference: String::new(),
            detail: format!("cannot build the registry client: {e}"),
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The endpoints for `reference`, read off the async workers when files are involved.
    async fn endpoints(&self, reference: &Reference, need: Need) -> Vec<Endpoint> {
        let registry = reference.registry().to_owned();
        if !self.hosts.reads_files() {
            return self.hosts.endpoints(&registry, need);
        }
        let hosts = self.hosts.clone();
        let fallback = registry.clone();
        tokio::task::spawn_blocking(move || hosts.endpoints(&registry, need))
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "reading registry hosts failed: using the registry itself");
                RegistryHosts::default().endpoints(&fallback, need)
            })
    }

    /// Fetches the image manifest (resolving an index to its Wasm entry) and its digest
    /// (`sha256:<hex>`, as the registry gave it), from the first endpoint that has it.
    pub async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(OciImageManifest, String), RegistryError> {
        let need = if reference.digest().is_some() {
            Need::Pull
        } else {
            Need::Resolve
        };
        let mut errors = Vec::new();
        for endpoint in self.endpoints(reference, need).await {
            let routed = endpoint.reference(reference);
            let client = self.client(auth, endpoint.plain_http, endpoint.skip_verify)?;
            match client.pull_image_manifest(&routed, auth).await {
                Ok(found) => {
                    tracing::debug!(image = %reference, endpoint = endpoint.url(), "manifest fetched");
                    return Ok(found);
                }
                Err(e) => {
                    let error = sort_error(reference, e);
                    tracing::debug!(image = %reference, endpoint = endpoint.url(), %error, "manifest not fetched here");
                    errors.push(error);
                }
            }
        }
        Err(worst(errors).unwrap_or_else(|| no_endpoint(reference)))
    }

    /// Fetches a blob with the credentials the manifest was fetched with, from the first
    /// endpoint that has it; `oci-client` checks its digest as it streams.
    pub async fn blob(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        descriptor: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut errors = Vec::new();
        for endpoint in self.endpoints(reference, Need::Pull).await {
            let routed = endpoint.reference(reference);
            let client = self.client(auth, endpoint.plain_http, endpoint.skip_verify)?;
            let mut out =
                Vec::with_capacity(usize::try_from(descriptor.size).unwrap_or(0).min(64 << 20));
            match client.pull_blob(&routed, descriptor, &mut out).await {
                Ok(()) => return Ok(out),
                Err(e) => {
                    let error = sort_error(reference, e);
                    tracing::debug!(image = %reference, endpoint = endpoint.url(), %error, "blob not fetched here");
                    // Content that does not match its digest is not looked for elsewhere.
                    if matches!(error, RegistryError::DigestMismatch { .. }) {
                        return Err(error);
                    }
                    errors.push(error);
                }
            }
        }
        Err(worst(errors).unwrap_or_else(|| no_endpoint(reference)))
    }
}

fn no_endpoint(reference: &Reference) -> RegistryError {
    RegistryError::Other {
        reference: reference.whole(),
        detail: "no configured host of this registry may serve this request (see the capabilities in its hosts.toml)".into(),
    }
}
