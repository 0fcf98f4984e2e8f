//! Fetching manifests and blobs from OCI registries with `oci-client`.
//!
//! Registries are reached over HTTPS, except those the edge's configuration names insecure,
//! which are reached over plain HTTP. Registry errors are sorted into what an operator can act
//! on: not found, unauthorised, unreachable, digest mismatch.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::store::Digest;

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
        OciDistributionError::ServerError { code: 401 | 403, .. } => {
            RegistryError::Unauthorized { reference, detail }
        }
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => RegistryError::DigestMismatch { reference, expected, actual },
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
pub(crate) fn wasm_first(entries: &[ImageIndexEntry]) -> Option<String> {
    let platform = |e: &ImageIndexEntry| {
        e.platform.as_ref().map(|p| (p.os.to_string(), p.architecture.to_string()))
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

/// A registry client for the edge.
pub struct RegistryClient {
    client: Client,
}

impl RegistryClient {
    /// A client that speaks plain HTTP to the `insecure` registries (`host:port`) only.
    pub fn new(insecure: &[String]) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
            platform_resolver: Some(Box::new(wasm_first)),
            ..Default::default()
        };
        Self { client: Client::new(config) }
    }

    /// Fetches the image manifest (resolving an index to its Wasm entry) and its digest.
    pub async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(OciImageManifest, Digest), RegistryError> {
        let (manifest, digest) = self
            .client
            .pull_image_manifest(reference, auth)
            .await
            .map_err(|e| sort_error(reference, e))?;
        let digest = Digest::parse(&digest).map_err(|e| RegistryError::Other {
            reference: reference.whole(),
            detail: e.to_string(),
        })?;
        Ok((manifest, digest))
    }

    /// Fetches a blob; `oci-client` checks its digest as it streams.
    pub async fn blob(
        &self,
        reference: &Reference,
        descriptor: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::with_capacity(usize::try_from(descriptor.size).unwrap_or(0).min(64 << 20));
        self.client
            .pull_blob(reference, descriptor, &mut out)
            .await
            .map_err(|e| sort_error(reference, e))?;
        Ok(out)
    }
}
