//! The edge's credentials and its TLS client: the cloud CA pinned at join, the edge's own
//! certificate, and operator-readable explanations of handshake failures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where an edge keeps what it got by joining.
#[derive(Debug, Clone)]
pub struct EdgeCredentials {
    dir: PathBuf,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl EdgeCredentials {
    /// Credentials kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pinned cloud CA.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The edge's certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("edge.crt")
    }

    /// The edge's private key.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("edge.key")
    }

    /// Keeps the pinned CA, the certificate and its key (private to the owner), each replaced
    /// atomically.
    pub fn save(&self, ca_pem: &str, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
        wedge_core::state::private_dir(&self.dir)?;
        write_atomic(&self.ca_path(), ca_pem, false)?;
        write_atomic(&self.key_path(), key_pem, true)?;
        write_atomic(&self.cert_path(), cert_pem, false)
    }

    /// Whether the edge has joined (all three files exist).
    pub fn exists(&self) -> bool {
        self.ca_path().exists() && self.cert_path().exists() && self.key_path().exists()
    }
}

fn write_atomic(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    if private {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Mutual TLS trusting only the pinned CA.
pub fn client_config(creds: &EdgeCredentials) -> Result<rustls::ClientConfig, TlsError> {
    let invalid = |path: PathBuf| {
        move |e: &dyn std::fmt::Display| TlsError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let ca_path = creds.ca_path();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&ca_path)?) {
        let cert = cert.map_err(|e| invalid(ca_path.clone())(&e))?;
        roots.add(cert).map_err(|e| invalid(ca_path.clone())(&e))?;
    }
    let cert_path = creds.cert_path();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&cert_path)?)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert_path.clone())(&e))?;
    let key_path = creds.key_path();
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| invalid(key_path.clone())(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(creds.dir().to_owned())(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(cert_path.clone())(&e))
}

/// What a failed TLS handshake with the cloud at `dialled` means, for an operator.
pub fn explain(error: &std::io::Error, dialled: &str) -> String {
    use rustls::{CertificateError, Error};
    let inner = error.get_ref().and_then(|e| e.downcast_ref::<Error>());
    match inner {
        Some(Error::InvalidCertificate(CertificateError::NotValidForName))
        | Some(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
            format!(
                "the cloud's certificate does not cover {dialled}: restart cloudcore with --advertise-address {}, or dial one of the names it covers",
                dialled.rsplit_once(':').map_or(dialled, |(h, _)| h)
            )
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "the cloud at {dialled} presented a certificate not signed by the CA this edge joined with: it is another cloud, or its CA changed; join again with a fresh token"
        ),
        Some(Error::InvalidCertificate(CertificateError::Expired))
        | Some(Error::InvalidCertificate(CertificateError::ExpiredContext { .. })) => format!(
            "the cloud's certificate at {dialled} has expired (or this edge's clock is wrong)"
        ),
        Some(Error::AlertReceived(alert)) => format!(
            "the cloud at {dialled} refused this edge's certificate ({alert:?}): it may have expired while the edge was offline, or belong to another cloud; join again with a fresh token"
        ),
        _ => format!("TLS handshake with the cloud at {dialled} failed: {error}"),
    }
}

fn own_certificate(creds: &EdgeCredentials) -> Result<Vec<u8>, String> {
    let path = creds.cert_path();
    let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    CertificateDer::from_pem_slice(&pem)
        .map(|c| c.to_vec())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The node this edge's certificate names (`system:node:<name>`).
pub fn node_of(creds: &EdgeCredentials) -> Result<String, String> {
    let der = own_certificate(creds)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    cn.strip_prefix("system:node:")
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "{} is not a node certificate (CN {cn})",
                creds.cert_path().display()
            )
        })
}

/// When this edge's certificate became valid and when it expires, in seconds since the epoch.
pub fn lifetime(creds: &EdgeCredentials) -> Result<(i64, i64), String> {
    let der = own_certificate(creds)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// When to renew a certificate valid from `not_before` to `not_after`: at `fraction` of its
/// lifetime (KubeEdge picks a random point between 70% and 90%).
pub fn rotation_due(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    let span = (not_after - not_before).max(0) as f64;
    not_before + (span * fraction.clamp(0.0, 1.0)) as i64
}
