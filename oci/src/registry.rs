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
    /// A blob is bigger than an edge takes ([`MAX_BLOB_BYTES`]), or than its descriptor said.
    #[error("{reference}: blob {digest} is {size}, over the limit of {limit} bytes: refusing it")]
    TooLarge {
        /// The image.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// Its size, as the descriptor gives it or as far as it was read.
        size: String,
        /// The limit it went over.
        limit: u64,
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

/// The largest blob this client fetches. A Wasm component is rarely over tens of MiB; the bound
/// keeps an image from a hostile or broken registry (a layer of gigabytes) from taking the
/// edge's memory, since blobs are held whole while their digest is checked.
pub const MAX_BLOB_BYTES: u64 = 512 << 20;

/// Where a blob's bytes go as they arrive: refused past `cap`, the size its descriptor gives,
/// so a registry that sends more than it announced cannot grow the buffer without end.
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    cap: usize,
    over: bool,
}

impl tokio::io::AsyncWrite for Capped<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len().saturating_add(buf.len()) > this.cap {
            this.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the blob is longer than its descriptor's size",
            )));
        }
        this.out.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
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
        let too_large = |size: String, limit: u64| RegistryError::TooLarge {
            reference: reference.to_string(),
            digest: descriptor.digest.clone(),
            size,
            limit,
        };
        let size = u64::try_from(descriptor.size).unwrap_or(u64::MAX);
        if size > MAX_BLOB_BYTES {
            return Err(too_large(format!("{size} bytes"), MAX_BLOB_BYTES));
        }
        // Within MAX_BLOB_BYTES, so it fits a usize.
        let cap = usize::try_from(size).unwrap_or(usize::MAX);
        let mut errors = Vec::new();
        for endpoint in self.endpoints(reference, Need::Pull).await {
            let routed = endpoint.reference(reference);
            let client = self.client(auth, endpoint.plain_http, endpoint.skip_verify)?;
            let mut out = Vec::with_capacity(cap.min(64 << 20));
            let mut capped = Capped {
                out: &mut out,
                cap,
                over: false,
            };
            let pulled = client.pull_blob(&routed, descriptor, &mut capped).await;
            if capped.over {
                return Err(too_large(
                    format!("more than the {size} bytes its descriptor gives"),
                    size,
                ));
            }
            match pulled {
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
