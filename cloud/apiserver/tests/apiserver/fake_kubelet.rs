//! A fake kubelet endpoint: HTTPS on a loopback port with a serving certificate from a CA of
//! its own, requiring a client certificate that chains to the API server's CA (as a kubelet
//! started with `--client-ca-file` does). Each `/containerLogs/...` request is handed to the
//! test, which decides when each chunk of the log goes out; a few container names answer
//! errors instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use wedge_apiserver::auth::User;

/// A container name the fake answers with a 400 JSON `Status`, as a kubelet answers for a
/// container that has not started.
pub const WAITING_CONTAINER: &str = "waiting";
/// The message of that Status.
pub const WAITING_MESSAGE: &str =
    "container \"waiting\" in pod \"web\" is waiting to start: ContainerCreating";
/// A container name the fake answers with a plain-text 500.
pub const BROKEN_CONTAINER: &str = "broken";
/// The text of that 500.
pub const BROKEN_TEXT: &str = "the runtime is not answering";

/// A log request the fake got.
pub struct LogRequest {
    /// Path and query, as received.
    pub target: String,
    /// Who the client certificate names.
    pub user: Option<User>,
    /// Each chunk sent here goes out as the next piece of the body; dropping it ends the body.
    pub chunks: mpsc::Sender<Bytes>,
}

/// A running fake kubelet.
pub struct FakeKubelet {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The PEM of the CA its serving certificate chains to.
    pub ca_pem: String,
    requests: mpsc::UnboundedReceiver<LogRequest>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeKubelet {
    /// Starts one whose clients must chain to `client_ca_pem`.
    pub async fn start(client_ca_pem: &str) -> Self {
        let (ca_pem, cert_pem, key_pem) = serving_certificate();
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            roots.add(ca.expect("client CA PEM")).expect("client CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("client verifier");
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("serving certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("serving key PEM");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tx, requests) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A client without an acceptable certificate fails here, as at a kubelet.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| wedge_apiserver::auth::user_from_certificate(c));
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (tx, user) = (tx.clone(), user.clone());
                        async move { Ok::<_, Infallible>(answer(&req, user, &tx)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem,
            requests,
            accept,
        }
    }

    /// The next log request that reached the fake (a streaming one waits for the test).
    pub async fn next_request(&mut self) -> LogRequest {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a log request reaches the kubelet in time")
            .expect("the fake kubelet runs")
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn answer(
    req: &Request<hyper::body::Incoming>,
    user: Option<User>,
    requests: &mpsc::UnboundedSender<LogRequest>,
) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let whole = |code: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
        *r.status_mut() = code;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        r
    };
    if !req.uri().path().starts_with("/containerLogs/") || req.headers().get("host").is_none() {
        return whole(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found".into(),
        );
    }
    let container = req.uri().path().rsplit('/').next().unwrap_or_default();
    match container {
        WAITING_CONTAINER => {
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": WAITING_MESSAGE, "reason": "BadRequest", "code": 400,
            });
            return whole(
                StatusCode::BAD_REQUEST,
                "application/json",
                status.to_string(),
            );
        }
        BROKEN_CONTAINER => {
            return whole(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                BROKEN_TEXT.into(),
            );
        }
        _ => {}
    }
    let (chunks, rx) = mpsc::channel::<Bytes>(8);
    let echo = Bytes::from(format!("GET {target}\n"));
    let _ = requests.send(LogRequest {
        target,
        user,
        chunks,
    });
    let body = futures::stream::once(async move { echo })
        .chain(futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((chunk, rx))
        }))
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    let mut r = Response::new(StreamBody::new(body).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

use futures::StreamExt as _;

/// A CA, and a serving certificate for 127.0.0.1 it signed (PEM: CA, certificate, key).
pub fn serving_certificate() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "fake-kubelet-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, "fake-kubelet");
    leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let cert = leaf.signed_by(&key, &issuer).expect("serving certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
