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
//! - **logs -f delay**: a follow with timestamps of a pod printing a line every 110 ms; each
//!   line's delay is its receipt here minus its timestamp, which the edge's runtime recorded when
//!   the guest wrote the line (one machine, one clock). The edge reads a followed log when told
//!   the file changed (inotify), so the delay is the path's, not a poll's (it polled every
//!   100 ms until 2026-12-05: p50 49–51 ms, p99 101–102 ms).
//! - **idle streams**: 1,000 `logs -f` open at once on a pod whose log does not grow
//!   (`misbehave sleep` prints nothing); each counts as open once its response headers came,
//!   which the API server sends only after the edge answered the stream's OPEN. cloudcore's and
//!   edgecore's RSS, PSS, descriptors, threads and CPU are read before, with the streams open,
//!   and 15 s after they were closed. cloudcore's figures hold everything the cloud spends per
//!   stream: the API server it embeds (the client's request, and the connection its kubelet
//!   client opens to CloudStream for each log), CloudStream (that connection's other end) and
//!   the hub's stream.
//!
//! The idle streams are measured twice, each time in a fresh cloudcore and edgecore (the
//! allocator keeps what freed streams held, and a second measurement in the same processes would
//! be served from it): over 8 HTTP/2 connections (125 streams each: the API server takes 200
//! per connection, hyper's default), then three more rounds of opening and closing them, which
//! show whether what a round freed is used again or each round adds its own; and with a
//! connection each, as 1,000 separate kubectl processes would open them.

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
/// Not 100: when the edge polled followed logs every 100 ms, lines written at that period would
/// all have landed at one phase of the poll, so every delay would have been about the same, set
/// by when the pod started. At 110 ms successive lines stepped through ten phases 10 ms apart;
/// kept, so that figures compare.
const TICK_MS: u64 = 110;
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
/// Left after closing the streams: longer than the 10 s tokio keeps an idle blocking thread
/// (the edge reads log files on them), so their stacks are gone when memory is read.
const CLOSE_SETTLE: Duration = Duration::from_secs(15);
/// Rounds of opening and closing the idle streams over HTTP/2 after the first: whether what the
/// first round freed (and the allocator kept) is used again, or each round adds its own.
const REPEATS: usize = 3;
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
pub(super) struct ApiEndpoint {
    pub(super) addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ApiEndpoint {
    /// Reads the kubeconfig the embedded API server writes (`wedge_apiserver::kubeconfig`: one
    /// cluster, one user, the certificates inline).
    pub(super) fn read(kubeconfig: &Path) -> anyhow::Result<Self> {
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
    pub(super) async fn connect(
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

/// A cloudcore and an edgecore running pods of the fixture, as one phase of the scenario uses
/// them.
struct Cluster {
    // Declared first, so dropped before the processes.
    _watch: AbortOnDrop,
    cloud: Daemon,
    edge: Daemon,
    pods: Api<Pod>,
    api: ApiEndpoint,
}

impl Cluster {
    /// Starts cloudcore and edgecore under `dir` and the pods `(name, args)`, one at a time,
    /// each until Running.
    async fn start(dir: &Path, registry: &str, pods: &[(&str, &[&str])]) -> anyhow::Result<Self> {
        let CloudAndEdge {
            cloud,
            edge,
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
        let pods_api: Api<Pod> = Api::namespaced(client, NAMESPACE);
        let (mut running, watch) = running_pods_task(pods_api.clone());
        let cluster = Self {
            _watch: AbortOnDrop(watch),
            cloud,
            edge,
            pods: pods_api,
            api,
        };
        let mut early = HashMap::new();
        // The first pulls and compiles the fixture; the others start from the cache.
        for (name, args) in pods {
            cluster
                .pods
                .create(&PostParams::default(), &pod(name, registry, args)?)
                .await?;
            running_at(&mut running, &mut early, name, POD_TIMEOUT).await?;
        }
        Ok(cluster)
    }

    /// Deletes `name` and waits until the API no longer holds it.
    async fn delete(&self, name: &str) -> anyhow::Result<()> {
        self.pods.delete(name, &Default::default()).await?;
        let deadline = Instant::now() + POD_TIMEOUT;
        while self.pods.get_opt(name).await?.is_some() {
            anyhow::ensure!(Instant::now() < deadline, "{name} not gone");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

pub async fn run() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let apps = tokio::task::spawn_blocking(wedge_testkit::sample_apps::build).await??;
    let image = Image::wasm(&apps.bytes("misbehave")?, WasmLayout::CncfArtifact);
    push(&registry.host(), IMAGE, "1", &image).await?;
    let registry = registry.host();
    let dir = tempfile::tempdir()?;

    // Latencies, then the idle streams over HTTP/2, in one cloud and edge.
    let first = dir.path().join("http2");
    with_logs(&first, async {
        let tick = TICK_MS.to_string();
        let mut cluster = Cluster::start(
            &first,
            &registry,
            &[(QUIET_POD, &["sleep"]), (TICKER_POD, &["ticks", &tick])],
        )
        .await?;
        latencies(&cluster).await?;
        // The ticker's log and its follow are not part of what an idle stream costs.
        cluster.delete(TICKER_POD).await?;
        idle_streams(&mut cluster, Transport::Http2).await
    })
    .await?;

    // A connection each, in a fresh cloud and edge: the first phase's allocations, freed but
    // kept by the allocator, would otherwise take in much of what these streams allocate.
    let second = dir.path().join("connection-each");
    with_logs(&second, async {
        let mut cluster = Cluster::start(&second, &registry, &[(QUIET_POD, &["sleep"])]).await?;
        idle_streams(&mut cluster, Transport::ConnectionEach).await
    })
    .await
}

/// `phase`'s outcome, its failure with the ends of the logs of the processes under `dir`.
async fn with_logs(
    dir: &Path,
    phase: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    phase.await.with_context(|| {
        format!(
            "edgecore's log ends with:\n{}\ncloudcore's log ends with:\n{}",
            log_tail(&dir.join("edgecore.log")),
            log_tail(&dir.join("cloudcore.log"))
        )
    })
}

/// The exec round trip and the follow's delay.
async fn latencies(cluster: &Cluster) -> anyhow::Result<()> {
    tracing::info!("exec round trips");
    let mut round_trips = exec_round_trips(&cluster.api, QUIET_POD).await?;
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
    tracing::info!("log delays");
    let mut delays = log_delays(&cluster.pods, TICKER_POD).await?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figure(
            SCENARIO,
            &format!(
                "logs -f delay {name} (line's CRI timestamp to receipt, a line every {TICK_MS} ms, the edge reads on inotify notices)"
            ),
            millis(quantile(&mut delays, q)),
            "ms",
        );
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
    fn name(self) -> String {
        match self {
            Self::Http2 => format!("over {H2_CONNECTIONS} HTTP/2 connections"),
            Self::ConnectionEach => "a connection each".to_owned(),
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

/// One process's footprint after a settle: memory in KiB, the descriptors and threads it holds,
/// and the CPU it used over the settle, as a share of one core.
struct Footprint {
    rss: u64,
    pss: u64,
    fds: u64,
    threads: u64,
    cpu: f64,
}

/// Lets cloudcore and edgecore settle for `settle`, then reads their footprints.
async fn settled(cluster: &mut Cluster, settle: Duration) -> anyhow::Result<[Footprint; 2]> {
    let cpu = [cluster.cloud.cpu_time()?, cluster.edge.cpu_time()?];
    let started = Instant::now();
    tokio::time::sleep(settle).await;
    let window = started.elapsed().as_secs_f64();
    let read = |daemon: &mut Daemon, cpu_before: Duration| -> anyhow::Result<Footprint> {
        Ok(Footprint {
            rss: daemon.rss_kib()?,
            pss: daemon.pss_kib()?,
            fds: daemon.open_fds()?,
            threads: daemon.threads()?,
            cpu: (daemon.cpu_time()? - cpu_before).as_secs_f64() / window,
        })
    };
    Ok([
        read(&mut cluster.cloud, cpu[0])?,
        read(&mut cluster.edge, cpu[1])?,
    ])
}

/// `after - before`, signed: memory can fall too.
fn growth(before: u64, after: u64) -> f64 {
    after as f64 - before as f64
}

/// The processes, as figures name them, in the order [`settled`] reads them.
const PROCESSES: [&str; 2] = ["cloudcore (API server, CloudStream, hub)", "edgecore"];

/// One round of idle streams: how long opening them took, the footprints with them open and
/// after they were closed.
struct Round {
    opened_in: Duration,
    open: [Footprint; 2],
    closed: [Footprint; 2],
}

/// Opens the idle streams over `transport`, reads the footprints, closes them and reads again
/// after [`CLOSE_SETTLE`].
async fn round(cluster: &mut Cluster, transport: Transport) -> anyhow::Result<Round> {
    let how = transport.name();
    tracing::info!("{IDLE_STREAMS} idle streams {how}");
    let started = Instant::now();
    let (mut streams, connections) = tokio::time::timeout(
        STEP_TIMEOUT * 4,
        open_idle_streams(transport, &cluster.api, &cluster.pods),
    )
    .await
    .with_context(|| format!("{IDLE_STREAMS} streams {how} not open"))??;
    let opened_in = started.elapsed();
    let open = settled(cluster, SETTLE).await?;
    let quiet = streams
        .iter_mut()
        .map(OpenStream::quiet)
        .filter(|q| *q)
        .count();
    anyhow::ensure!(
        quiet == IDLE_STREAMS,
        "{} of {IDLE_STREAMS} streams {how} ended or spoke while idle",
        IDLE_STREAMS - quiet
    );
    drop(streams);
    drop(connections);
    let closed = settled(cluster, CLOSE_SETTLE).await?;
    Ok(Round {
        opened_in,
        open,
        closed,
    })
}

/// The idle streams over `transport`: what they cost at the cloud and at the edge, and what is
/// left once they are closed. Over HTTP/2, [`REPEATS`] more rounds show whether what the first
/// round freed is used again.
async fn idle_streams(cluster: &mut Cluster, transport: Transport) -> anyhow::Result<()> {
    let how = transport.name();
    let n = IDLE_STREAMS as f64;
    let before = settled(cluster, SETTLE).await?;
    let first = round(cluster, transport).await?;
    figure(
        SCENARIO,
        &format!("{IDLE_STREAMS} idle logs -f opened ({how}, {OPENING} at a time)"),
        first.opened_in.as_secs_f64(),
        "s",
    );
    for (i, who) in PROCESSES.into_iter().enumerate() {
        let (before, open, closed) = (&before[i], &first.open[i], &first.closed[i]);
        let goal = if i == 0 {
            ", goal 20 MB = 19.1 MiB"
        } else {
            ""
        };
        let figures = [
            (
                format!("{who} RSS per idle logs -f stream ({how})"),
                growth(before.rss, open.rss) / n,
                "KiB",
            ),
            (
                format!("{who} PSS per idle logs -f stream ({how})"),
                growth(before.pss, open.pss) / n,
                "KiB",
            ),
            (
                format!("{who} PSS added by {IDLE_STREAMS} idle streams ({how}{goal})"),
                growth(before.pss, open.pss) / 1024.0,
                "MiB",
            ),
            (
                format!("{who} RSS with {IDLE_STREAMS} idle streams open ({how})"),
                open.rss as f64 / 1024.0,
                "MiB",
            ),
            (
                format!("{who} PSS left 15 s after closing them, over before ({how})"),
                growth(before.pss, closed.pss) / 1024.0,
                "MiB",
            ),
            (
                format!("{who} file descriptors added by {IDLE_STREAMS} idle streams ({how})"),
                growth(before.fds, open.fds),
                "fds",
            ),
            (
                format!("{who} file descriptors left after closing them ({how})"),
                growth(before.fds, closed.fds),
                "fds",
            ),
            (
                format!("{who} threads added by {IDLE_STREAMS} idle streams ({how})"),
                growth(before.threads, open.threads),
                "threads",
            ),
            (
                format!("{who} CPU before the idle streams ({how})"),
                before.cpu * 100.0,
                "% of a core",
            ),
            (
                format!("{who} CPU with {IDLE_STREAMS} idle streams open ({how})"),
                open.cpu * 100.0,
                "% of a core",
            ),
        ];
        for (name, value, unit) in figures {
            figure(SCENARIO, &name, value, unit);
        }
    }
    if !matches!(transport, Transport::Http2) {
        return Ok(());
    }
    let mut last = first.closed;
    for k in 2..=1 + REPEATS {
        let again = round(cluster, transport).await?;
        for (i, who) in PROCESSES.into_iter().enumerate() {
            figure(
                SCENARIO,
                &format!(
                    "{who} PSS added by round {k} of {IDLE_STREAMS} idle streams, over round {} closed ({how})",
                    k - 1
                ),
                growth(last[i].pss, again.open[i].pss) / 1024.0,
                "MiB",
            );
        }
        last = again.closed;
    }
    for (i, who) in PROCESSES.into_iter().enumerate() {
        figure(
            SCENARIO,
            &format!(
                "{who} PSS left after {} rounds closed, over before the first ({how})",
                1 + REPEATS
            ),
            growth(before[i].pss, last[i].pss) / 1024.0,
            "MiB",
        );
    }
    Ok(())
}
