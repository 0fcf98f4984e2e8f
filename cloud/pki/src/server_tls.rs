//! The TLS server configuration every server of the cloud uses: the PKI's serving certificate,
//! client certificates verified against the right CAs, ring as the crypto provider.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::Pki;

/// Why a TLS configuration could not be built (a damaged certificate or key).
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsConfigError(pub String);

/// Which client certificates a TLS listener takes.
#[derive(Debug, Clone, Copy)]
pub enum ClientCerts<'a> {
    /// Verified against the PKI's own CA when presented, but not required (clients may
    /// authenticate otherwise): the API server and CloudHub.
    Optional,
    /// Required, and chained to one of these CAs (DER): CloudStream, which only the API
    /// server's kubelet client may call.
    Required(&'a [Vec<u8>]),
}

/// A TLS server configuration serving `pki`'s certificate, taking client certificates as
/// `clients` says, offering `alpn`. The API server, CloudHub and CloudStream use it.
pub fn tls_config(
    pki: &Pki,
    alpn: &[&[u8]],
    clients: ClientCerts<'_>,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let tls = |e: &dyn std::fmt::Display| TlsConfigError(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving.key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut roots = RootCertStore::empty();
    match clients {
        ClientCerts::Optional => {
            for ca in CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
                roots.add(ca.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            }
        }
        ClientCerts::Required(cas) => {
            for ca in cas {
                roots
                    .add(CertificateDer::from(ca.clone()))
                    .map_err(|e| tls(&e))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match clients {
        ClientCerts::Optional => verifier.allow_unauthenticated(),
        ClientCerts::Required(_) => verifier,
    }
    .build()
    .map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
