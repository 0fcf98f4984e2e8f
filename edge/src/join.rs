//! Joining the cloud with a bootstrap token, and renewing the certificate it gave.
//!
//! Joining: fetch the CA over TLS without trusting anything yet, check it against the hash the
//! token pins, then send a CSR for a fresh ECDSA P-256 key over TLS that trusts only that CA
//! and checks the cloud's certificate covers the address dialled. Every failure says what is
//! wrong and what to do: KubeEdge users' most common complaint is joins that fail unclearly.
//!
//! The two requests go over hyper's HTTP/1 connection on a tokio-rustls stream we dial, not
//! through reqwest (in the tree through oci-client): each request needs its own rustls
//! configuration (any certificate, then the pinned CA, or the edge's own for renewal), its own
//! timeouts, and the rustls error itself so that [`tls::explain`] can say what is wrong
//! (expired, wrong name, unknown CA); reqwest would hide that error in its chain. The
//! certificate verifier is the one the API server's kubelet client uses
//! ([`wedge_core::tls::AnyServerCertificate`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use wedge_core::join_token::{JoinToken, ca_hash};
use wedge_core::protocol::Reason;
use wedge_core::protocol::messages::ErrorPayload;
use wedge_core::tls::AnyServerCertificate;

use crate::tls::{self, EdgeCredentials};

const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read from the join endpoints (a CA and a certificate are a few KiB).
const MAX_ANSWER: usize = 256 << 10;

/// Why joining or renewing failed; the message is for the edge's operator.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The cloud could not be reached.
    #[error(
        "cannot reach the cloud at {cloud}: {message}; check the address and that cloudcore listens there"
    )]
    Unreachable {
        /// The address dialled.
        cloud: String,
        /// Why.
        message: String,
    },
    /// TLS failed (the message explains it).
    #[error("{0}")]
    Tls(String),
    /// The CA the cloud presented is not the one the token pins.
    #[error(
        "the cloud at {cloud} presented a CA whose hash is {got}, but the token pins {expected}: the token is for another cloud, or someone is in between"
    )]
    CaHashMismatch {
        /// The address dialled.
        cloud: String,
        /// The token's hash.
        expected: String,
        /// The presented CA's hash.
        got: String,
    },
    /// The cloud refused (bad token, bad node name, a node name in use...): its message says
    /// why.
    #[error("the cloud refused: {0}")]
    Refused(String),
    /// The cloud revoked this edge's certificate (its Node was deleted, the node joined again
    /// elsewhere, or an operator revoked it): only a new join helps.
    #[error("the cloud revoked this edge's certificate: {0}")]
    Revoked(String),
    /// The cloud answered something unexpected.
    #[error("unexpected answer from the cloud at {cloud}: {message}")]
    Protocol {
        /// The address dialled.
        cloud: String,
        /// What was wrong.
        message: String,
    },
    /// A key or CSR could not be made.
    #[error("making the key and certificate request: {0}")]
    Key(String),
    /// The credentials could not be written or read.
    #[error("{0}")]
    Credentials(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinRequest<'a> {
    node_name: &'a str,
    csr: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinResponse {
    certificate: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn host_of(cloud: &str) -> String {
    cloud
        .rsplit_once(':')
        .map_or(cloud, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// One HTTPS request to the cloud; returns the status and body.
async fn request(
    cloud: &str,
    config: rustls::ClientConfig,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), JoinError> {
    let unreachable = |message: String| JoinError::Unreachable {
        cloud: cloud.to_owned(),
        message,
    };
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(cloud))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let host = host_of(cloud);
    let name = ServerName::try_from(host.clone())
        .map_err(|e| JoinError::Tls(format!("{host} is not a valid server name: {e}")))?;
    let tls = tokio::time::timeout(
        TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable("the TLS handshake timed out".into()))?
    .map_err(|e| JoinError::Tls(tls::explain(&e, cloud)))?;
    let protocol = |message: String| JoinError::Protocol {
        cloud: cloud.to_owned(),
        message,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, cloud)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(bearer) = bearer {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let req = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| protocol(e.to_string()))?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| protocol("no answer in time".into()))?
        .map_err(|e| protocol(e.to_string()))?;
    let status = response.status();
    let body = tokio::time::timeout(
        TIMEOUT,
        Limited::new(response.into_body(), MAX_ANSWER).collect(),
    )
    .await
    .map_err(|_| protocol("the answer did not arrive in time".into()))?
    .map_err(|e| {
        protocol(format!(
            "reading the answer (at most {MAX_ANSWER} bytes): {e}"
        ))
    })?
    .to_bytes();
    Ok((status, body))
}

fn pinned(ca_pem: &str, creds_hint: &str) -> Result<RootCertStore, JoinError> {
    let mut roots = RootCertStore::empty();
    for cert in
        <CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca_pem.as_bytes())
    {
        let cert = cert.map_err(|e| JoinError::Credentials(format!("{creds_hint}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| JoinError::Credentials(format!("{creds_hint}: {e}")))?;
    }
    Ok(roots)
}

/// A new key and a CSR for `node`.
fn key_and_csr(node: &str) -> Result<(KeyPair, String), JoinError> {
    let key = KeyPair::generate().map_err(|e| JoinError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    // The cloud decides the subject (CN system:node:<node>, O system:nodes); the CN here only
    // makes the request readable.
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| JoinError::Key(e.to_string()))?;
    Ok((key, csr))
}

fn refusal(status: StatusCode, body: &[u8]) -> JoinError {
    match serde_json::from_slice::<ErrorPayload>(body) {
        Ok(r) if r.reason == Reason::CertificateRevoked => JoinError::Revoked(r.message),
        Ok(r) => JoinError::Refused(r.message),
        Err(_) => JoinError::Refused(format!("{status}: {}", String::from_utf8_lossy(body))),
    }
}

fn accept(cloud: &str, status: StatusCode, body: &[u8]) -> Result<JoinResponse, JoinError> {
    if !status.is_success() {
        return Err(refusal(status, body));
    }
    serde_json::from_slice(body).map_err(|e| JoinError::Protocol {
        cloud: cloud.to_owned(),
        message: format!("join answer: {e}"),
    })
}

/// Joins the cloud at `cloud` as `node` with `token`, keeping what it gets in `creds`.
pub async fn join(
    cloud: &str,
    token: &JoinToken,
    node: &str,
    creds: &EdgeCredentials,
) -> Result<(), JoinError> {
    let provider = provider();
    let fetch_ca = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Tls(e.to_string()))?
        .dangerous()
        // Any certificate (signatures still checked): used only to fetch the CA, which is
        // then checked against the token's hash before anything is sent.
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate::new(provider.clone())))
        .with_no_client_auth();
    let (status, ca) = request(
        cloud,
        fetch_ca,
        Method::GET,
        "/v1/join/ca",
        None,
        Vec::new(),
    )
    .await?;
    if !status.is_success() {
        return Err(refusal(status, &ca));
    }
    let ca_pem = String::from_utf8_lossy(&ca).into_owned();
    let ca_der = wedge_core_pem_der(&ca_pem).ok_or_else(|| JoinError::Protocol {
        cloud: cloud.to_owned(),
        message: "the CA is not a PEM certificate".into(),
    })?;
    let got = ca_hash(&ca_der);
    if got != token.ca_hash {
        return Err(JoinError::CaHashMismatch {
            cloud: cloud.to_owned(),
            expected: token.ca_hash.clone(),
            got,
        });
    }
    let verified = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Tls(e.to_string()))?
        .with_root_certificates(pinned(&ca_pem, "the cloud's CA")?)
        .with_no_client_auth();
    let (key, csr) = key_and_csr(node)?;
    let body = serde_json::to_vec(&JoinRequest {
        node_name: node,
        csr: &csr,
    })
    .unwrap_or_default();
    let (status, answer) = request(
        cloud,
        verified,
        Method::POST,
        "/v1/join/csr",
        Some(&token.bearer()),
        body,
    )
    .await?;
    let answer = accept(cloud, status, &answer)?;
    creds
        .save(&ca_pem, &answer.certificate, &key.serialize_pem())
        .map_err(|e| JoinError::Credentials(format!("writing {}: {e}", creds.dir().display())))?;
    Ok(())
}

/// Renews the edge's certificate over mutual TLS with the current one.
pub async fn renew(cloud: &str, creds: &EdgeCredentials) -> Result<(), JoinError> {
    let config = tls::client_config(creds).map_err(|e| JoinError::Credentials(e.to_string()))?;
    let node = tls::node_of(creds).map_err(JoinError::Credentials)?;
    let (key, csr) = key_and_csr(&node)?;
    let body = serde_json::to_vec(&JoinRequest {
        node_name: &node,
        csr: &csr,
    })
    .unwrap_or_default();
    let (status, answer) = request(
        cloud,
        config,
        Method::POST,
        "/v1/certificates/renew",
        None,
        body,
    )
    .await?;
    let answer = accept(cloud, status, &answer)?;
    let ca = std::fs::read_to_string(creds.ca_path())
        .map_err(|e| JoinError::Credentials(e.to_string()))?;
    creds
        .save(&ca, &answer.certificate, &key.serialize_pem())
        .map_err(|e| JoinError::Credentials(format!("writing {}: {e}", creds.dir().display())))
}

fn wedge_core_pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}
