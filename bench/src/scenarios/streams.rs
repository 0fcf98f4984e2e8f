//! `kubectl exec` and `kubectl logs -f` to edge pods, measured through the real binaries (issue
//! 16): a `cloudcore` (embedded API server, CloudStream, CloudHub) and an `edgecore` joined to it,
//! Wasm pods of the `misbehave` fixture pulled from the bench's registry. Every request takes
//! the path kubectl's does: the API server, the kubelet endpoint (CloudStream, in cloudcore), a
//! stream on the edge's hub connection, EdgeStream and the pod at the edge.
//!
//! - **exec round trip**: one exec session (`misbehave cat`, a fresh instance of the pod's
//!   component) over a WebSocket speaking `v5.channel.k8s.io`, as kubectl ≥ 1.30 does. One byte
//!   is written on stdin and timed until it comes back on stdout; 20 warm-ups, then 200 samples.
//!   The byte is a newline: the guest's stdout is line-buffered, so any other byte would wait
//!   in the guest, not on the path measured.
//! - **logs -f delay**: a follow with timestamps of a pod printing a line every 100 ms; each
//!   line's delay is its receipt here minus its timestamp, which the edge's runtime recorded when
//!   the guest wrote the line (one machine, one clock). The edge polls a followed log file every
//!   100 ms, so about half of that is expected.
//! - **memory per idle stream**: 1,000 `logs -f` open at once on a pod whose log does not grow
//!   (`misbehave sleep` prints nothing); each counts as open once its response headers came,
//!   which the API server sends only after the edge answered the stream's OPEN. cloudcore's and
//!   edgecore's RSS and PSS are read before, with the streams open, and after they are closed.
//!   cloudcore's figures hold everything the cloud spends per stream: the API server it embeds
//!   (the client's request, its kubelet client's TLS connection to CloudStream), CloudStream
//!   (that connection's server end) and the hub's stream. Measured twice: over 8 HTTP/2
//!   connections (125 streams each: the API server takes 200 at most per connection, as hyper's
//!   default), and with a connection each, as 1,000 separate kubectl processes would open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use futures::{AsyncBufRead, AsyncBufReadExt, FutureExt, SinkExt, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wedge_testkit::oci::{Image, WasmLayout, push};
use wedge_testkit::registry::Registry;

use super::edge::{node_ready, running_at, running_pods_task};
use super::mixed::log_tail;
use super::processes::{CloudAndEdge, Daemon};
use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "streams";
const NODE: &str = "bench-streams";
const IMAGE: &str = "samples/misbehave";
const NAMESPACE: &str = "default";
/// The pod exec'd into, and whose quiet log the idle streams follow.
const QUIET_POD: &str = "quiet";
/// The pod whose log grows by a line every [`TICK_MS`].
const TICKER_POD: &str = "ticker";
const TICK_MS: u64 = 100;
const EXEC_WARM_UPS: usize = 20;
const EXEC_SAMPLES: usize = 200;
const LOG_LINES: usize = 100;
const IDLE_STREAMS: usize = 1000;
/// HTTP/2 connections the idle streams share, below the API server's 200 streams each.
const H2_CONNECTIONS: usize = 8;
/// Streams being opened at once: the API server dials CloudStream for each, and a burst of
/// 1,000 TLS handshakes would measure the handshakes, not the streams.
const OPENING: usize = 50;
/// Left for the processes to settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(5);
/// A pod pulls (the first compiles) the fixture.
const POD_TIMEOUT: Duration = Duration::from_secs(120);
/// One exec round trip, one log line, one stream's opening.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod running the misbehave fixture from `registry` with `args`.
fn pod(name: &str, registry: &str, args: &[&str]) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": format!("{registry}/{IMAGE}:1"),
                "args": args
            }]
        }
    }))?)
}

/// Where the API server listens and how to reach it as its admin, read from the admin
/// kubeconfig, for the clients `kube` has no room for: a WebSocket of our own, HTTP/2.
struct ApiEndpoint {
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ApiEndpoint {
    /// Reads the kubeconfig the embedded API server writes (`wedge_apiserver::kubeconfig`: one
    /// cluster, one user, the certificates inline).
    fn read(kubeconfig: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .with_context(|| format!("no {name} in {}", kubeconfig.display()))
        };
        let pem = |name: &str| -> anyhow::Result<Vec<u8>> {
            Ok(base64::engine::general_purpose::STANDARD.decode(field(name)?)?)
        };
        let server = field("server")?;
        let addr = server
            .strip_prefix("https://")
            .with_context(|| format!("server {server}: not https"))?
            .parse()
            .with_context(|| format!("server {server}: not an address"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&pem(
            "certificate-authority-data",
        )?)?)?;
        Ok(Self {
            addr,
            roots: Arc::new(roots),
            chain: vec![CertificateDer::from_pem_slice(&pem(
                "client-certificate-data",
            )?)?],
            key: PrivateKeyDer::from_pem_slice(&pem("client-key-data")?)?,
        })
    }

    /// A TLS connection to the API server offering `alpn`.
    async fn connect(
        &self,
        alpn: &[u8],
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::from(self.addr.ip()), tcp)
            .await
            .context("TLS with the API server")?;
        Ok(tls)
    }
}

/// Aborts a task when dropped: the pods' watch must stop before the API server goes away, or
/// it logs its failed reconnections.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn run() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let apps = tokio::task::spawn_blocking(wedge_testkit::sample_apps::build).await??;
    let image = Image::wasm(&apps.bytes("misbehave")?, WasmLayout::CncfArtifact);
    push(&registry.host(), IMAGE, "1", &image).await?;
    let dir = tempfile::tempdir()?;
    measure(&registry.host(), dir.path())
        .await
        .with_context(|| {
            format!(
                "edgecore's log ends with:\n{}\ncloudcore's log ends with:\n{}",
                log_tail(&dir.path().join("edgecore.log")),
                log_tail(&dir.path().join("cloudcore.log"))
            )
        })
}

async fn measure(registry: &str, dir: &Path) -> anyhow::Result<()> {
    let CloudAndEdge {
        mut cloud,
        mut edge,
        client,
    } = CloudAndEdge::start(
        dir,
        NODE,
        &["--insecure-registry", registry],
        &[
            "--insecure-registry",
            registry,
            "--mqtt-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    node_ready(&client, NODE, Duration::from_secs(60)).await?;
    let api = ApiEndpoint::read(&dir.join("cloud/apiserver/admin.kubeconfig"))?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let (mut running, watch) = running_pods_task(pods.clone());
    let _watch = AbortOnDrop(watch);
    let mut early = HashMap::new();
    // The first pulls and compiles the fixture; the second starts from the cache.
    for (name, args) in [
        (QUIET_POD, vec!["sleep".to_owned()]),
        (TICKER_POD, vec!["ticks".to_owned(), TICK_MS.to_string()]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pods.create(&PostParams::default(), &pod(name, registry, &args)?)
            .await?;
        running_at(&mut running, &mut early, name, POD_TIMEOUT).await?;
    }

    let mut round_trips = exec_round_trips(&api, QUIET_POD).await?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figure(
            SCENARIO,
            &format!(
                "exec -i round trip {name} (1 byte, v5.channel.k8s.io, Wasm pod, goal p50 <= 2 ms)"
            ),
            millis(quantile(&mut round_trips, q)),
            "ms",
        );
    }

    let mut delays = log_delays(&pods, TICKER_POD).await?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figure(
            SCENARIO,
            &format!(
                "logs -f delay {name} (line's CRI timestamp to receipt, edge polls every 100 ms)"
            ),
            millis(quantile(&mut delays, q)),
            "ms",
        );
    }
    // The ticker's polling and output are not part of what an idle stream costs.
    pods.delete(TICKER_POD, &Default::default()).await?;

    for transport in [Transport::Http2, Transport::ConnectionEach] {
        idle_streams(transport, &api, &pods, &mut cloud, &mut edge).await?;
    }
    Ok(())
}

/// One exec session running `misbehave cat` in `pod`: the round trip of a newline, per sample.
async fn exec_round_trips(api: &ApiEndpoint, pod: &str) -> anyhow::Result<Vec<Duration>> {
    const STDIN: u8 = 0;
    const STDOUT: u8 = 1;
    const STDERR: u8 = 2;
    const ERROR: u8 = 3;
    const CLOSE: u8 = 255;
    let tls = api.connect(b"http/1.1").await?;
    let url = format!(
        "wss://{}/api/v1/namespaces/{NAMESPACE}/pods/{pod}/exec?command=misbehave&command=cat&stdin=true&stdout=true&stderr=true",
        api.addr
    );
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("v5.channel.k8s.io"),
    );
    let (mut ws, _) =
        tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async(request, tls))
            .await
            .context("the exec upgrade timed out")?
            .context("the exec upgrade")?;

    // What the session says on a channel, as (channel, bytes); Ok(None) once it ended.
    async fn next<S>(
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
    ) -> anyhow::Result<Option<(u8, Bytes)>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
                .await
                .context("the exec session said nothing")?;
            match message {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    return Ok(Some((b[0], b.slice(1..))));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    let mut samples = Vec::with_capacity(EXEC_SAMPLES);
    for i in 0..EXEC_WARM_UPS + EXEC_SAMPLES {
        let sent = Instant::now();
        ws.send(Message::Binary(Bytes::from_static(&[STDIN, b'\n'])))
            .await?;
        loop {
            match next(&mut ws).await? {
                Some((STDOUT, data)) if data.is_empty() => {} // the session's "ready"
                Some((STDOUT, data)) => {
                    anyhow::ensure!(&data[..] == b"\n", "cat wrote {data:?}");
                    break;
                }
                Some((STDERR | ERROR, data)) => {
                    anyhow::bail!("exec: {}", String::from_utf8_lossy(&data))
                }
                Some(_) => {}
                None => anyhow::bail!("the exec session ended after {i} round trips"),
            }
        }
        if i >= EXEC_WARM_UPS {
            samples.push(sent.elapsed());
        }
    }

    // Closing stdin ends `cat`; the outcome comes on the error channel.
    ws.send(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
        .await?;
    let mut outcome = None;
    while let Some((channel, data)) = next(&mut ws).await? {
        if channel == ERROR {
            outcome = Some(serde_json::from_slice::<serde_json::Value>(&data)?);
        }
    }
    let outcome = outcome.context("the exec session ended with no outcome")?;
    anyhow::ensure!(outcome["status"] == "Success", "exec ended with {outcome}");
    Ok(samples)
}

/// Follows `pod`'s log with timestamps: each new line's delay from its timestamp to its
/// receipt, for [`LOG_LINES`] lines.
async fn log_delays(pods: &Api<Pod>, pod: &str) -> anyhow::Result<Vec<Duration>> {
    let started = jiff::Timestamp::now();
    let params = LogParams {
        follow: true,
        timestamps: true,
        // Only lines written from now on: older ones waited in the file, not on the way.
        tail_lines: Some(0),
        ..LogParams::default()
    };
    let mut lines = pods.log_stream(pod, &params).await?.lines();
    let mut delays = Vec::with_capacity(LOG_LINES);
    while delays.len() < LOG_LINES {
        let line = tokio::time::timeout(STEP_TIMEOUT, lines.try_next())
            .await
            .context("no log line")??
            .context("the log ended")?;
        let received = jiff::Timestamp::now();
        let (stamp, _) = line
            .split_once(' ')
            .with_context(|| format!("no timestamp in {line:?}"))?;
        let stamp: jiff::Timestamp = stamp
            .parse()
            .with_context(|| format!("the timestamp of {line:?}"))?;
        // `tailLines=0` leaves out what was written before; this makes sure.
        if stamp < started {
            continue;
        }
        // One clock: a negative delay is the clock's resolution, not time travel.
        delays.push(Duration::try_from(received.duration_since(stamp)).unwrap_or_default());
    }
    Ok(delays)
}

/// How the idle streams reach the API server.
#[derive(Clone, Copy)]
enum Transport {
    /// [`H2_CONNECTIONS`] HTTP/2 connections, the streams spread over them.
    Http2,
    /// A connection each (HTTP/1.1, through `kube`'s client), as separate kubectl processes.
    ConnectionEach,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Http2 => "over 8 HTTP/2 connections",
            Self::ConnectionEach => "a connection each",
        }
    }
}

/// A followed log whose headers came, held open until dropped.
enum OpenStream {
    Http2(hyper::body::Incoming),
    Kube(std::pin::Pin<Box<dyn AsyncBufRead + Send>>),
}

impl OpenStream {
    /// Whether the stream is still open and has said nothing since its headers. Looks without
    /// waiting.
    fn quiet(&mut self) -> bool {
        match self {
            Self::Http2(body) => body.frame().now_or_never().is_none(),
            Self::Kube(reader) => reader.fill_buf().now_or_never().is_none(),
        }
    }
}

/// Opens [`IDLE_STREAMS`] follows of [`QUIET_POD`]'s log over `transport`, returning them once
/// every one has its response headers, and the tasks of the connections they use.
async fn open_idle_streams(
    transport: Transport,
    api: &ApiEndpoint,
    pods: &Api<Pod>,
) -> anyhow::Result<(Vec<OpenStream>, tokio::task::JoinSet<()>)> {
    let mut connections = tokio::task::JoinSet::new();
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{QUIET_POD}/log?follow=true");
    let streams = match transport {
        Transport::Http2 => {
            let mut senders = Vec::with_capacity(H2_CONNECTIONS);
            for _ in 0..H2_CONNECTIONS {
                let tls = api.connect(b"h2").await?;
                anyhow::ensure!(
                    tls.get_ref().1.alpn_protocol() == Some(b"h2"),
                    "the API server did not take HTTP/2"
                );
                let (sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await?;
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!("an HTTP/2 connection to the API server: {e}");
                    }
                });
                senders.push(sender);
            }
            let uri = format!("https://{}{path}", api.addr);
            futures::stream::iter(0..IDLE_STREAMS)
                .map(|i| {
                    let mut sender = senders[i % H2_CONNECTIONS].clone();
                    let request = http::Request::get(&uri).body(Empty::<Bytes>::new());
                    async move {
                        let response = sender.send_request(request?).await?;
                        anyhow::ensure!(
                            response.status() == http::StatusCode::OK,
                            "stream {i}: {}",
                            response.status()
                        );
                        Ok(OpenStream::Http2(response.into_body()))
                    }
                })
                .buffer_unordered(OPENING)
                .try_collect::<Vec<_>>()
                .await?
        }
        Transport::ConnectionEach => {
            let params = LogParams {
                follow: true,
                ..LogParams::default()
            };
            futures::stream::iter(0..IDLE_STREAMS)
                .map(|_| {
                    let (pods, params) = (pods.clone(), params.clone());
                    async move {
                        let reader = pods.log_stream(QUIET_POD, &params).await?;
                        anyhow::Ok(OpenStream::Kube(Box::pin(reader)))
                    }
                })
                .buffer_unordered(OPENING)
                .try_collect::<Vec<_>>()
                .await?
        }
    };
    Ok((streams, connections))
}

/// Cloud and edge memory at one point, in KiB.
struct Memory {
    cloud_rss: u64,
    cloud_pss: u64,
    edge_rss: u64,
    edge_pss: u64,
}

impl Memory {
    async fn read_settled(cloud: &mut Daemon, edge: &mut Daemon) -> anyhow::Result<Self> {
        tokio::time::sleep(SETTLE).await;
        Ok(Self {
            cloud_rss: cloud.rss_kib()?,
            cloud_pss: cloud.pss_kib()?,
            edge_rss: edge.rss_kib()?,
            edge_pss: edge.pss_kib()?,
        })
    }
}

/// `after - before` in KiB, signed: memory can fall too.
fn growth(before: u64, after: u64) -> f64 {
    after as f64 - before as f64
}

/// Opens the idle streams over `transport`, reads memory with them open and after closing them.
async fn idle_streams(
    transport: Transport,
    api: &ApiEndpoint,
    pods: &Api<Pod>,
    cloud: &mut Daemon,
    edge: &mut Daemon,
) -> anyhow::Result<()> {
    let how = transport.name();
    let before = Memory::read_settled(cloud, edge).await?;
    let started = Instant::now();
    let (mut streams, connections) =
        tokio::time::timeout(STEP_TIMEOUT * 4, open_idle_streams(transport, api, pods))
            .await
            .with_context(|| format!("{IDLE_STREAMS} streams {how} not open"))??;
    figure(
        SCENARIO,
        &format!("{IDLE_STREAMS} idle logs -f opened ({how}, {OPENING} at a time)"),
        started.elapsed().as_secs_f64(),
        "s",
    );
    let open = Memory::read_settled(cloud, edge).await?;
    let quiet = streams.iter_mut().filter(|s| s.quiet()).count();
    anyhow::ensure!(
        quiet == IDLE_STREAMS,
        "{} of {IDLE_STREAMS} streams {how} ended or spoke while idle",
        IDLE_STREAMS - quiet
    );
    drop(streams);
    drop(connections);
    let closed = Memory::read_settled(cloud, edge).await?;

    let n = IDLE_STREAMS as f64;
    for (who, before, open, closed) in [
        (
            "cloudcore (API server, CloudStream, hub) RSS",
            before.cloud_rss,
            open.cloud_rss,
            closed.cloud_rss,
        ),
        (
            "cloudcore (API server, CloudStream, hub) PSS",
            before.cloud_pss,
            open.cloud_pss,
            closed.cloud_pss,
        ),
        (
            "edgecore RSS",
            before.edge_rss,
            open.edge_rss,
            closed.edge_rss,
        ),
        (
            "edgecore PSS",
            before.edge_pss,
            open.edge_pss,
            closed.edge_pss,
        ),
    ] {
        figure(
            SCENARIO,
            &format!("{who} per idle logs -f stream ({how})"),
            growth(before, open) / n,
            "KiB",
        );
        figure(
            SCENARIO,
            &format!(
                "{who} added by {IDLE_STREAMS} idle streams ({how}, goal for the cloud <= 20 MB)"
            ),
            growth(before, open) / 1024.0,
            "MiB",
        );
        figure(
            SCENARIO,
            &format!("{who} left after closing them ({how})"),
            growth(before, closed) / 1024.0,
            "MiB",
        );
    }
    figure(
        SCENARIO,
        &format!("cloudcore RSS with {IDLE_STREAMS} idle streams open ({how})"),
        open.cloud_rss as f64 / 1024.0,
        "MiB",
    );
    figure(
        SCENARIO,
        &format!("edgecore RSS with {IDLE_STREAMS} idle streams open ({how})"),
        open.edge_rss as f64 / 1024.0,
        "MiB",
    );
    Ok(())
}
