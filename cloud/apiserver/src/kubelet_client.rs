//! The API server's client for a node's kubelet endpoint, as kube-apiserver's kubelet client
//! is: how `pods/log` (and later `exec`, `attach`, `portforward`) reach the node.
//!
//! kube-apiserver does not know how a node runs its pods; it reads the Node's status for an
//! address ([`KubeletEndpoint::of_node`]) and dials HTTPS there, presenting its kubelet client
//! certificate (CN `kube-apiserver-kubelet-client`). kubeadm once put it in `system:masters`;
//! here it has no group and is bound to kube's `system:kubelet-api-admin`, as recent kubeadm
//! and Cluster API bind it, since its key, signed by the cluster CA, also authenticates to the
//! API server itself (see [`crate::authz::components`]). In Wedge the edges have
//! no reachable kubelet: cloudcore serves the kubelet's streaming paths for every edge node and
//! points each edge Node at itself, so this client needs nothing Wedge-specific.
//!
//! The kubelet's serving certificate is verified only when a CA is configured for it
//! (kube-apiserver's `--kubelet-certificate-authority`); without one kube-apiserver does not
//! verify it, and neither does this client. That CA file is read on first use, not at start:
//! in the embedded setup cloudcore writes it after the API server has started.
//!
//! Two kinds of connection. Exec, attach and port-forward take their connection over with an
//! HTTP/1.1 upgrade, so each gets one of its own ([`KubeletClient::connect`]). Plain requests
//! (`kubectl logs`, which may follow for hours) share one HTTP/2 connection per endpoint
//! ([`KubeletClient::get`]) when the kubelet offers HTTP/2, as CloudStream does: a thousand
//! followed logs are a thousand streams on one TLS session, not a thousand sessions. Each
//! stream has its own window (256 KiB) and the connection's is large enough for all of them
//! to be full at once, so a client that stops reading its log holds up no other stream. A
//! kubelet that answers only HTTP/1.1 gets a connection per request, as before.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use wedge_core::tls::AnyServerCertificate;

use wedge_pki::{Pki, PkiError};

/// The port kube-apiserver dials when a Node does not report its kubelet's
/// (`--kubelet-port`'s default).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// kube-apiserver's default `--kubelet-preferred-address-types`: the Node address used is the
/// first of `status.addresses` of the first of these types it has.
pub const PREFERRED_ADDRESS_TYPES: [&str; 5] = [
    "Hostname",
    "InternalDNS",
    "InternalIP",
    "ExternalDNS",
    "ExternalIP",
];

/// The user the kubelet client certificate names, as kubeadm issues it.
pub const CLIENT_USER: &str = crate::authz::components::KUBELET_CLIENT;
/// The file name (under the PKI directory, `.crt` and `.key`) of the kubelet client
/// certificate, kubeadm's.
pub const CLIENT_CERT_FILE: &str = "apiserver-kubelet-client";

/// How long dialing a node may take, TCP and TLS and the HTTP handshake together: long enough
/// for a slow link, short enough that `kubectl logs` says the node is unreachable before the
/// user gives up. The request itself has no timeout: a followed log may stay quiet for hours.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The window of each HTTP/2 stream: how much of one log may wait, unread, in the API server.
const STREAM_WINDOW: u32 = 256 << 10;
/// The window of a whole HTTP/2 connection: room for every stream's window at once (the
/// largest HTTP/2 allows), so a stalled stream never holds up another.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// How often an idle pooled connection is pinged, and how long the answer may take, so a
/// connection that died quietly is found out and replaced.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

/// ALPN offers: exec and friends need HTTP/1.1's upgrade; plain requests prefer HTTP/2.
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Where a node's kubelet endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletEndpoint {
    /// The Node's name.
    pub node: String,
    /// The address dialed: a host name or an IP address.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl KubeletEndpoint {
    /// The endpoint a Node object reports, chosen as kube-apiserver chooses it: the first
    /// address of the first type in [`PREFERRED_ADDRESS_TYPES`] the Node has, and
    /// `status.daemonEndpoints.kubeletEndpoint.Port` ([`DEFAULT_KUBELET_PORT`] when unset or 0).
    pub fn of_node(node: &Value) -> Result<Self, KubeletError> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let addresses: Vec<(&str, &str)> = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let kind = a.get("type").and_then(Value::as_str)?;
                let address = a.get("address").and_then(Value::as_str)?;
                Some((kind, address))
            })
            .filter(|(_, address)| !address.is_empty())
            .collect();
        let Some(host) = PREFERRED_ADDRESS_TYPES.iter().find_map(|wanted| {
            addresses
                .iter()
                .find(|(kind, _)| kind == wanted)
                .map(|(_, address)| (*address).to_owned())
        }) else {
            return Err(KubeletError::NoAddress {
                node: name,
                known: addresses
                    .iter()
                    .map(|(kind, address)| format!("{kind}:{address}"))
                    .collect(),
            });
        };
        let port = match node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_i64)
        {
            None | Some(0) => DEFAULT_KUBELET_PORT,
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(KubeletError::BadPort {
                    node: name.clone(),
                    port: p,
                })?,
        };
        Ok(Self {
            node: name,
            host,
            port,
        })
    }

    /// `host:port`, with an IPv6 address in brackets: the `Host` header, and what messages name.
    pub fn authority(&self) -> String {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a node's kubelet endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The Node reports no address of a type kube-apiserver dials.
    #[error("node {node} has no address to reach its kubelet at (known addresses: [{}])", known.join(", "))]
    NoAddress {
        /// The Node.
        node: String,
        /// The addresses it does report, `Type:address`.
        known: Vec<String>,
    },
    /// The Node reports a kubelet port that is not a TCP port.
    #[error("node {node} reports kubelet port {port}, which is not a TCP port")]
    BadPort {
        /// The Node.
        node: String,
        /// The port reported.
        port: i64,
    },
    /// The address is neither a DNS name nor an IP address, so TLS cannot name it.
    #[error("node {node}: {host:?} is not a valid DNS name or IP address")]
    BadHost {
        /// The Node.
        node: String,
        /// The address.
        host: String,
    },
    /// The kubelet CA file could not be read.
    #[error("reading the kubelet certificate authority {path}: {source}")]
    CaRead {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The kubelet CA file holds no usable certificate.
    #[error("the kubelet certificate authority {path}: {reason}")]
    CaInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The client certificate could not be loaded or issued.
    #[error("the kubelet client certificate: {0}")]
    Pki(#[from] PkiError),
    /// The TLS client could not be set up.
    #[error("the kubelet TLS client: {0}")]
    Tls(String),
    /// TCP connect failed.
    #[error("dialing node {node}'s kubelet at {address}: {source}")]
    Connect {
        /// The Node.
        node: String,
        /// `host:port`.
        address: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The TLS handshake failed (including an unverified serving certificate).
    #[error("TLS handshake with node {node}'s kubelet at {address}: {source}")]
    Handshake {
        /// The Node.
        node: String,
        /// `host:port`.
        address: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Dialing took longer than [`CONNECT_TIMEOUT`].
    #[error(
        "dialing node {node}'s kubelet at {address}: no connection after {:?}",
        CONNECT_TIMEOUT
    )]
    Timeout {
        /// The Node.
        node: String,
        /// `host:port`.
        address: String,
    },
    /// The path asked for is not a valid request target.
    #[error("{path:?} is not a valid kubelet request path: {reason}")]
    BadPath {
        /// The path and query.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// HTTP failed: the handshake, or the request before a response came.
    #[error("HTTP to node {node}'s kubelet at {address}: {source}")]
    Http {
        /// The Node.
        node: String,
        /// `host:port`.
        address: String,
        /// What failed.
        source: hyper::Error,
    },
}

/// Dials kubelet endpoints with the API server's kubelet client certificate.
pub struct KubeletClient {
    provider: Arc<CryptoProvider>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The CA the kubelets' serving certificates must chain to, if any.
    ca_path: Option<PathBuf>,
    /// Built from `ca_path` on first use. A failed read is not kept, so a file written later
    /// is picked up by the next request.
    verifying: OnceCell<Configs>,
    /// For when no CA is configured, or a request asks `insecureSkipTLSVerifyBackend`.
    unverified: Configs,
    /// The shared HTTP/2 connection of each endpoint (`host:port`, and whether verification
    /// was skipped, since a request that asks to verify must not ride an unverified one).
    pooled: std::sync::Mutex<Pool>,
    /// Ends every kubelet connection when the server shuts down.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// A client presenting `pki`'s kubelet client certificate (loaded from beside the other
    /// certificates, issued when missing or near expiry), verifying kubelets against the CA in
    /// `ca_path` if given. Its connections end when `shutdown` is cancelled.
    pub fn new(
        pki: &Pki,
        ca_path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Self, KubeletError> {
        let tls = |e: &dyn std::fmt::Display| KubeletError::Tls(e.to_string());
        let cert = pki.load_or_issue_client(CLIENT_CERT_FILE, CLIENT_USER, &[])?;
        let cert_chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| tls(&e))?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| tls(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let unverified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .dangerous()
            // Any kubelet serving certificate, as kube-apiserver does without
            // `--kubelet-certificate-authority` (signatures still checked).
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate::new(provider.clone())))
            .with_client_auth_cert(cert_chain.clone(), key.clone_key())
            .map_err(|e| tls(&e))?;
        Ok(Self {
            provider,
            cert_chain,
            key,
            ca_path,
            verifying: OnceCell::new(),
            unverified: Configs::of(unverified),
            pooled: std::sync::Mutex::default(),
            shutdown,
        })
    }

    /// The TLS configurations for a connection: verifying when a CA is configured and the
    /// request did not ask to skip verification (`insecureSkipTLSVerifyBackend`).
    async fn tls_config(&self, skip_verify: bool) -> Result<Configs, KubeletError> {
        let Some(path) = self.ca_path.as_ref().filter(|_| !skip_verify) else {
            return Ok(self.unverified.clone());
        };
        self.verifying
            .get_or_try_init(|| async {
                let pem = tokio::fs::read(path)
                    .await
                    .map_err(|source| KubeletError::CaRead {
                        path: path.clone(),
                        source,
                    })?;
                let invalid = |reason: String| KubeletError::CaInvalid {
                    path: path.clone(),
                    reason,
                };
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| invalid(e.to_string()))?;
                    roots.add(cert).map_err(|e| invalid(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(invalid("no PEM certificate in it".into()));
                }
                let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| KubeletError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
                    .map_err(|e| KubeletError::Tls(e.to_string()))?;
                tracing::info!(path = %path.display(), "verifying kubelets against this CA");
                Ok(Configs::of(config))
            })
            .await
            .cloned()
    }

    /// TCP and TLS to `endpoint`, offering `alpn`, within [`CONNECT_TIMEOUT`].
    async fn dial_tls(
        &self,
        endpoint: &KubeletEndpoint,
        skip_verify: bool,
        alpn: &[&[u8]],
    ) -> Result<TlsStream<TcpStream>, KubeletError> {
        let address = endpoint.authority();
        let node = || endpoint.node.clone();
        let server_name =
            ServerName::try_from(endpoint.host.clone()).map_err(|_| KubeletError::BadHost {
                node: node(),
                host: endpoint.host.clone(),
            })?;
        let configs = self.tls_config(skip_verify).await?;
        let config = if alpn == ALPN_H2 {
            configs.h2
        } else {
            configs.http1
        };
        let dial = async {
            let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                .await
                .map_err(|source| KubeletError::Connect {
                    node: node(),
                    address: address.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|source| KubeletError::Handshake {
                    node: node(),
                    address: address.clone(),
                    source,
                })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, dial)
            .await
            .map_err(|_| KubeletError::Timeout {
                node: node(),
                address: address.clone(),
            })?
    }

    /// Dials `endpoint` (TCP, TLS with the kubelet client certificate, HTTP/1.1) within
    /// [`CONNECT_TIMEOUT`] and returns the connection's request half. The connection runs on
    /// its own task, with upgrades enabled, until the request half and the response are
    /// dropped (or an upgraded stream is), or the server shuts down.
    pub async fn connect<B>(
        &self,
        endpoint: &KubeletEndpoint,
        skip_verify: bool,
    ) -> Result<SendRequest<B>, KubeletError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = self.dial_tls(endpoint, skip_verify, ALPN_HTTP1).await?;
        self.http1(endpoint, tls).await
    }

    /// An HTTP/1.1 connection over `tls`, running on its own task with upgrades enabled.
    async fn http1<B>(
        &self,
        endpoint: &KubeletEndpoint,
        tls: TlsStream<TcpStream>,
    ) -> Result<SendRequest<B>, KubeletError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let address = endpoint.authority();
        let (sender, connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, http1::handshake(TokioIo::new(tls)))
                .await
                .map_err(|_| KubeletError::Timeout {
                    node: endpoint.node.clone(),
                    address: address.clone(),
                })?
                .map_err(|source| KubeletError::Http {
                    node: endpoint.node.clone(),
                    address: address.clone(),
                    source,
                })?;
        let shutdown = self.shutdown.clone();
        let node = endpoint.node.clone();
        tokio::spawn(async move {
            tokio::select! {
                done = connection.with_upgrades() => {
                    if let Err(e) = done {
                        tracing::debug!(%node, %address, "kubelet connection: {e}");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
        Ok(sender)
    }

    /// The pooled HTTP/2 connection to `endpoint`, if one is open.
    fn pooled(&self, key: &(String, bool)) -> Option<http2::SendRequest<Empty<Bytes>>> {
        let mut pooled = self
            .pooled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match pooled.get(key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                pooled.remove(key);
                None
            }
            None => None,
        }
    }

    /// A GET of `path_and_query` (e.g. `/containerLogs/ns/pod/c?follow=true`) on `endpoint`:
    /// the response, whatever its status, with its body still to be read. It rides the
    /// endpoint's shared HTTP/2 connection, dialed when there is none (or the one there was
    /// has closed); a kubelet that does not speak HTTP/2 gets a connection of its own.
    pub async fn get(
        &self,
        endpoint: &KubeletEndpoint,
        path_and_query: &str,
        skip_verify: bool,
    ) -> Result<Response<Incoming>, KubeletError> {
        let http = |source| KubeletError::Http {
            node: endpoint.node.clone(),
            address: endpoint.authority(),
            source,
        };
        let request = || {
            Request::get(path_and_query)
                // hyper's connection-level client sends no Host; the kubelet (Go) refuses
                // HTTP/1.1 requests without one (HTTP/2 takes it as the authority).
                .header(header::HOST, endpoint.authority())
                .body(Empty::new())
                .map_err(|e| KubeletError::BadPath {
                    path: path_and_query.to_owned(),
                    reason: e.to_string(),
                })
        };
        tracing::debug!(node = %endpoint.node, address = %endpoint.authority(), path = path_and_query, "kubelet request");
        let key = (endpoint.authority(), skip_verify);
        if let Some(mut sender) = self.pooled(&key) {
            // A connection that died between the check and the request is dialed again.
            if sender.ready().await.is_ok()
                && let Ok(response) = sender.send_request(request()?).await
            {
                return Ok(response);
            }
            tracing::debug!(node = %endpoint.node, "the pooled kubelet connection closed; dialing again");
        }
        let tls = self.dial_tls(endpoint, skip_verify, ALPN_H2).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            let mut sender = self.http1::<Empty<Bytes>>(endpoint, tls).await?;
            sender.ready().await.map_err(http)?;
            return sender.send_request(request()?).await.map_err(http);
        }
        let mut sender = self.http2(endpoint, tls).await?;
        self.pooled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, sender.clone());
        sender.ready().await.map_err(http)?;
        sender.send_request(request()?).await.map_err(http)
    }

    /// An HTTP/2 connection over `tls`, on its own task until it closes or the server shuts
    /// down.
    async fn http2(
        &self,
        endpoint: &KubeletEndpoint,
        tls: TlsStream<TcpStream>,
    ) -> Result<http2::SendRequest<Empty<Bytes>>, KubeletError> {
        let address = endpoint.authority();
        let handshake = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(KEEPALIVE.0)
            .keep_alive_timeout(KEEPALIVE.1)
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(tls));
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| KubeletError::Timeout {
                node: endpoint.node.clone(),
                address: address.clone(),
            })?
            .map_err(|source| KubeletError::Http {
                node: endpoint.node.clone(),
                address: address.clone(),
                source,
            })?;
        let shutdown = self.shutdown.clone();
        let node = endpoint.node.clone();
        tokio::spawn(async move {
            tokio::select! {
                done = connection => {
                    if let Err(e) = done {
                        tracing::debug!(%node, %address, "kubelet HTTP/2 connection: {e}");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
        Ok(sender)
    }
}

/// The shared HTTP/2 connections, by endpoint (`host:port`) and whether verification was
/// skipped.
type Pool = std::collections::HashMap<(String, bool), http2::SendRequest<Empty<Bytes>>>;

/// A client configuration in its two ALPN offers.
#[derive(Clone)]
struct Configs {
    http1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
}

impl Configs {
    fn of(config: rustls::ClientConfig) -> Self {
        let with = |alpn: &[&[u8]]| {
            let mut config = config.clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        Self {
            http1: with(ALPN_HTTP1),
            h2: with(ALPN_H2),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_address_follows_kube_apiservers_preferred_types() {
        let node = json!({
            "metadata": {"name": "edge-1"},
            "status": {
                "addresses": [
                    {"type": "ExternalIP", "address": "203.0.113.9"},
                    {"type": "InternalIP", "address": "10.0.0.5"},
                    {"type": "InternalIP", "address": "10.0.0.6"},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}},
            },
        });
        assert_eq!(
            KubeletEndpoint::of_node(&node).ok(),
            Some(KubeletEndpoint {
                node: "edge-1".into(),
                host: "10.0.0.5".into(),
                port: 10350
            })
        );

        let node = json!({
            "metadata": {"name": "edge-2"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "Hostname", "address": "edge-2.local"},
            ]},
        });
        let endpoint = KubeletEndpoint::of_node(&node).expect("an address");
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port),
            ("edge-2.local", DEFAULT_KUBELET_PORT),
            "Hostname comes first; no port means 10250"
        );

        let node = json!({
            "metadata": {"name": "edge-3"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "fd00::5"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            },
        });
        let endpoint = KubeletEndpoint::of_node(&node).expect("an address");
        assert_eq!(endpoint.authority(), "[fd00::5]:10250");
    }

    #[test]
    fn a_node_without_a_usable_address_or_port_says_so() {
        let node = json!({
            "metadata": {"name": "edge-4"},
            "status": {"addresses": [{"type": "Other", "address": "x"}, {"type": "InternalIP", "address": ""}]},
        });
        let e = KubeletEndpoint::of_node(&node).expect_err("no address");
        assert!(matches!(e, KubeletError::NoAddress { .. }), "{e}");
        assert!(e.to_string().contains("node edge-4"), "{e}");
        assert!(e.to_string().contains("Other:x"), "{e}");

        let node = json!({
            "metadata": {"name": "edge-5"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 70000}},
            },
        });
        assert!(matches!(
            KubeletEndpoint::of_node(&node),
            Err(KubeletError::BadPort { port: 70000, .. })
        ));
    }
}
