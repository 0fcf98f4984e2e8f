//! `kubectl port-forward` throughput to a container pod, against a direct connection to the same
//! server (issue 16's goal: port-forward at least half the direct throughput).
//!
//! The processes are real, as in [`super::mixed`] (whose setup this reuses): a `cloudcore`, an
//! `edgecore` running container pods on a real containerd ([`wedge_testkit::containerd`], root
//! needed), a registry serving busybox. One pod runs busybox `httpd` serving a file of
//! [`BODY_MIB`] MiB of random bytes. Each sample is one HTTP/1.0 GET of that file, timed from the
//! request's first byte written to the body's last byte read, so a forwarded sample includes
//! opening its stream to the edge, as every connection through kubectl does. The connection's
//! end is not timed: containerd's port-forward, once the pod's side has ended, gives the other
//! direction a second before it closes the connection (as under a kubelet), which an HTTP client
//! that knows the length does not wait for. (Until 2026-12-05 that second was timed too: it was
//! most of what made a forwarded GET of 128 MiB take 1.7 s.)
//!
//! - **direct**: to the pod's IP from the host, over the fixture's CNI bridge (a veth pair), the
//!   nearest to loopback the pod's server can be reached;
//! - **port-forward (WebSocket)**: through a real `kubectl port-forward` (kubectl ≥ 1.31 tunnels
//!   SPDY in WebSocket messages; the API server unwraps it), then CloudStream, a stream on the
//!   edge's CloudHub connection, EdgeStream and CRI `PortForward` to containerd's streaming
//!   server, which connects inside the pod's network;
//! - **port-forward (SPDY)**: the same with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`, whose SPDY
//!   the API server passes through;
//! - **without kubectl**: the bench's own SPDY client ([`fetch_spdy`]) to the API server's
//!   `pods/portforward`, the SPDY path without kubectl: what Wedge's own part costs.
//!
//! They alternate, sample after sample, so that whatever else the machine does weighs on each
//! alike; the medians are reported, and the ratio of each forward's median to the direct one.
//! With each kind, the CPU time each process of the chain used per MiB (cloudcore, edgecore,
//! containerd, kubectl, the client): on two cores, a chain of six processes is bound by what it
//! spends per byte. Then two GETs at once through one kubectl: whether a connection is held
//! back by its own round trips or by a limit all share.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Framed, FramedParts};
use wedge_core::spdy::{Codec, Frame, HeaderEncoder};
use wedge_testkit::containerd::Containerd;
use wedge_testkit::registry::Registry;

use super::edge::{node_ready, running_at, running_pods_task};
use super::mixed::{BUSYBOX, container_edge_args, container_host, log_tail, runtime_classes};
use super::processes::{CloudAndEdge, cpu_time_of, free_port};
use super::streams::ApiEndpoint;
use crate::report::{figure, quantile};

const SCENARIO: &str = "port-forward";
const NODE: &str = "bench-forward";
const POD: &str = "served";
/// The port `httpd` listens on in the pod.
const PORT: u16 = 8080;
/// The size of the file served.
const BODY_MIB: u64 = 128;
/// Transfers of each kind before the measured ones (caches, the first stream's setup).
const WARM_UPS: usize = 1;
/// Measured transfers of each kind.
const SAMPLES: usize = 7;
/// Samples of two forwarded GETs at once.
const PAIRS: usize = 3;
/// The pod pulls busybox and writes its file.
const POD_TIMEOUT: Duration = Duration::from_secs(120);
/// One transfer, or a server becoming reachable.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The pod: busybox writing the file, then `httpd` serving it.
fn server_pod(registry: &str) -> anyhow::Result<Pod> {
    let script = format!(
        "mkdir -p /www && dd if=/dev/urandom of=/www/big bs=1048576 count={BODY_MIB} 2>/dev/null \
         && exec httpd -f -p {PORT} -h /www"
    );
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": POD},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "runtimeClassName": "runc",
            "containers": [{
                "name": "web",
                "image": format!("{registry}/{BUSYBOX}"),
                "command": ["sh", "-c", script]
            }]
        }
    }))?)
}

pub async fn run() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let containerd = container_host(&registry)?;
    let dir = tempfile::tempdir()?;
    // The cloud and edge live (and are killed) within `measure`, before containerd's fixture
    // cleans up.
    measure(&registry.host(), &containerd, dir.path())
        .await
        .with_context(|| {
            format!(
                "edgecore's log ends with:\n{}\ncloudcore's log ends with:\n{}",
                log_tail(&dir.path().join("edgecore.log")),
                log_tail(&dir.path().join("cloudcore.log"))
            )
        })
}

/// Aborts the pods' watch when dropped, before the API server goes away.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn measure(registry_host: &str, containerd: &Containerd, dir: &Path) -> anyhow::Result<()> {
    let edge_args = container_edge_args(registry_host, containerd, dir)?;
    let edge_args: Vec<&str> = edge_args.iter().map(String::as_str).collect();
    let CloudAndEdge {
        cloud,
        edge,
        client,
    } = CloudAndEdge::start(
        dir,
        NODE,
        &["--insecure-registry", registry_host],
        &edge_args,
    )
    .await?;
    runtime_classes(&client).await?;
    node_ready(&client, NODE, Duration::from_secs(60)).await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let (mut running, watch) = running_pods_task(pods.clone());
    let _watch = AbortOnDrop(watch);
    pods.create(&PostParams::default(), &server_pod(registry_host)?)
        .await?;
    running_at(&mut running, &mut HashMap::new(), POD, POD_TIMEOUT).await?;
    let ip = pods
        .get(POD)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("the pod has no IP")?;
    let direct = format!("{ip}:{PORT}");
    let body = BODY_MIB << 20;
    // Running comes before the file is written and httpd listens.
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match fetch(&direct, body).await {
            Ok(_) => break,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "the pod's server is not up yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.context(format!("the pod's server at {direct}"))),
        }
    }

    let kubeconfig = dir.join("cloud/apiserver/admin.kubeconfig");
    let websocket = Forward::start(&kubeconfig, false)?;
    let spdy = Forward::start(&kubeconfig, true)?;
    let api = ApiEndpoint::read(&kubeconfig)?;
    let kinds = [
        ("direct to the pod IP".to_owned(), Via::Tcp(direct)),
        (
            "kubectl port-forward (WebSocket)".to_owned(),
            Via::Tcp(websocket.addr.clone()),
        ),
        (
            "kubectl port-forward (SPDY)".to_owned(),
            Via::Tcp(spdy.addr.clone()),
        ),
        (
            "port-forward without kubectl (our SPDY client to the API server)".to_owned(),
            Via::Spdy(&api),
        ),
    ];
    // Whose CPU each sample costs: the client is this process.
    let processes = [
        ("cloudcore", cloud.pid()),
        ("edgecore", edge.pid()),
        ("containerd", containerd.pid().context("containerd's pid")?),
        ("kubectl (WebSocket)", websocket.child.id()),
        ("kubectl (SPDY)", spdy.child.id()),
        ("the client (the bench)", std::process::id()),
    ];
    let cpu_now = || -> anyhow::Result<Vec<Duration>> {
        processes.iter().map(|(_, pid)| cpu_time_of(*pid)).collect()
    };
    tracing::info!("{} transfers of {BODY_MIB} MiB each way", SAMPLES);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![vec![Duration::ZERO; processes.len()]; kinds.len()];
    for round in 0..WARM_UPS + SAMPLES {
        for (((name, via), samples), cpu) in kinds.iter().zip(&mut samples).zip(&mut cpu) {
            let before = cpu_now()?;
            let took = via
                .fetch(body)
                .await
                .with_context(|| format!("{name}: {}", websocket.stderr_and(&spdy)))?;
            if round >= WARM_UPS {
                samples.push(took);
                for ((total, after), before) in cpu.iter_mut().zip(cpu_now()?).zip(before) {
                    *total += after.saturating_sub(before);
                }
            }
        }
    }
    let rate = |d: Duration| body as f64 / (1024.0 * 1024.0) / d.as_secs_f64();
    let medians: Vec<f64> = samples.iter_mut().map(|s| rate(quantile(s, 0.5))).collect();
    for ((name, _), (median, samples)) in kinds.iter().zip(medians.iter().zip(&mut samples)) {
        figure(
            SCENARIO,
            &format!(
                "throughput {name}, median of {SAMPLES} GETs of {BODY_MIB} MiB (busybox httpd in a container pod)"
            ),
            *median,
            "MiB/s",
        );
        // The slowest sample, for how steady it was.
        figure(
            SCENARIO,
            &format!("throughput {name}, slowest of {SAMPLES}"),
            rate(quantile(samples, 1.0)),
            "MiB/s",
        );
    }
    // CPU per byte, by process: on a machine of two cores, what the chain costs per byte is
    // what bounds it. Counted over the whole of each sample (the connection's end included),
    // in /proc's ticks of 10 ms.
    let mib = (SAMPLES as u64 * BODY_MIB) as f64;
    for ((name, _), cpu) in kinds.iter().zip(&cpu).skip(1) {
        for ((process, _), used) in processes.iter().zip(cpu) {
            if used.is_zero() {
                continue;
            }
            figure(
                SCENARIO,
                &format!("CPU per MiB, {name}: {process}"),
                used.as_secs_f64() * 1000.0 / mib,
                "ms/MiB",
            );
        }
        let total: Duration = cpu.iter().sum();
        figure(
            SCENARIO,
            &format!("CPU per MiB, {name}: all of the above"),
            total.as_secs_f64() * 1000.0 / mib,
            "ms/MiB",
        );
    }
    // Two connections at once through one kubectl: if together they carry about twice what
    // one does, what holds one back is its own round trips (windows, hops), not a shared limit
    // (CPU, kubectl, the edge's one hub connection).
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        let (a, b) = tokio::join!(fetch(&websocket.addr, body), fetch(&websocket.addr, body));
        pairs.push(
            a.context("two GETs at once")?
                .max(b.context("two GETs at once")?),
        );
    }
    figure(
        SCENARIO,
        &format!(
            "throughput kubectl port-forward (WebSocket), two GETs at once through one kubectl, together, median of {PAIRS}"
        ),
        2.0 * rate(quantile(&mut pairs, 0.5)),
        "MiB/s",
    );
    for (i, (name, _)) in kinds.iter().enumerate().skip(1) {
        figure(
            SCENARIO,
            &format!("{name} / direct, medians (goal >= 0.5)"),
            medians[i] / medians[0],
            "ratio",
        );
    }
    Ok(())
}

/// How a sample reaches the pod's server.
enum Via<'a> {
    /// A TCP connection to this address (the pod's, or a kubectl's local port).
    Tcp(String),
    /// Our own SPDY client through the API server ([`fetch_spdy`]).
    Spdy(&'a ApiEndpoint),
}

impl Via<'_> {
    async fn fetch(&self, body: u64) -> anyhow::Result<Duration> {
        match self {
            Self::Tcp(addr) => fetch(addr, body).await,
            Self::Spdy(api) => fetch_spdy(api, body).await,
        }
    }
}

/// One GET of the served file at `addr`, which must bring `body` bytes; how long it took from
/// the request to the body's last byte. The connection's end is awaited but not timed:
/// containerd's port-forward gives the client's direction a second after the pod's ended
/// before it closes the connection (as under a kubelet), and an HTTP client that knows the
/// length is done at the last byte.
async fn fetch(addr: &str, body: u64) -> anyhow::Result<Duration> {
    let transfer = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let started = Instant::now();
        tcp.write_all(b"GET /big HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut buf = vec![0; 256 * 1024];
        let mut head = Vec::new();
        let mut received = 0u64;
        let mut in_body = false;
        let mut took = None;
        loop {
            if took.is_none() && in_body && received >= body {
                took = Some(started.elapsed());
            }
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if in_body {
                received += n as u64;
                continue;
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                anyhow::ensure!(
                    head.starts_with(b"HTTP/1.0 200") || head.starts_with(b"HTTP/1.1 200"),
                    "answered {:?}",
                    String::from_utf8_lossy(&head[..end])
                );
                received = (head.len() - end - 4) as u64;
                in_body = true;
            }
        }
        anyhow::ensure!(received == body, "{received} bytes of {body}");
        Ok(took.unwrap_or_else(|| started.elapsed()))
    };
    tokio::time::timeout(STEP_TIMEOUT, transfer)
        .await
        .with_context(|| format!("a GET from {addr} took over {STEP_TIMEOUT:?}"))?
}

/// A `kubectl port-forward` of the pod's port from a free local one.
struct Forward {
    child: Child,
    addr: String,
    stderr: std::path::PathBuf,
}

impl Forward {
    /// Starts kubectl (its WebSocket tunnel, or SPDY if `spdy`) and waits until it forwards.
    fn start(kubeconfig: &Path, spdy: bool) -> anyhow::Result<Self> {
        let local = free_port()?;
        let stderr = kubeconfig.with_file_name(format!("port-forward-{local}.log"));
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "port-forward",
                &format!("pod/{POD}"),
                &format!("{local}:{PORT}"),
            ])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if spdy { "false" } else { "true" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("starting kubectl (is it installed?)")?;
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        // kubectl prints "Forwarding from 127.0.0.1:PORT -> 8080" once it listens, then a line
        // per connection: its stdout is read to its end, or kubectl would die of SIGPIPE.
        let (ready, forwarding) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("Forwarding from 127.0.0.1") {
                    let _ = ready.send(());
                }
            }
        });
        let forward = Self {
            child,
            addr: format!("127.0.0.1:{local}"),
            stderr,
        };
        tokio::task::block_in_place(|| forwarding.recv_timeout(STEP_TIMEOUT)).with_context(
            || {
                format!(
                    "kubectl port-forward did not start forwarding: {}",
                    std::fs::read_to_string(&forward.stderr).unwrap_or_default()
                )
            },
        )?;
        Ok(forward)
    }

    /// Both forwards' stderr, for errors.
    fn stderr_and(&self, other: &Self) -> String {
        [self, other]
            .iter()
            .map(|f| std::fs::read_to_string(&f.stderr).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET of the served file through the API server's `pods/portforward`, by a client of our
/// own speaking SPDY/3.1 as kubectl does with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`: the same
/// path through Wedge (the API server, CloudStream, the edge's hub connection, EdgeStream,
/// containerd) with kubectl's part left out. Each GET upgrades a connection of its own; it is
/// timed, as kubectl's are, from opening the forward's streams (kubectl's SPDY connection is
/// open already when a local connection comes) to the pod's FIN on the data stream.
async fn fetch_spdy(api: &ApiEndpoint, body: u64) -> anyhow::Result<Duration> {
    let transfer = async {
        let mut tls = api.connect(b"http/1.1").await?;
        tls.write_all(
            format!(
                "POST /api/v1/namespaces/default/pods/{POD}/portforward HTTP/1.1\r\n\
                 Host: {}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                 X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n",
                api.addr
            )
            .as_bytes(),
        )
        .await?;
        // The answer's head, and whatever came after it (the start of the SPDY session).
        let mut read = bytes::BytesMut::with_capacity(64 << 10);
        let end = loop {
            if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            anyhow::ensure!(
                tls.read_buf(&mut read).await? > 0,
                "the API server closed the connection before answering the upgrade"
            );
        };
        let head = read.split_to(end + 4);
        anyhow::ensure!(
            head.starts_with(b"HTTP/1.1 101"),
            "the API server answered {:?}",
            String::from_utf8_lossy(&head)
        );
        let mut parts = FramedParts::new::<Frame>(tls, Codec);
        parts.read_buf = read;
        let mut spdy = Framed::from_parts(parts);
        let started = Instant::now();
        let mut headers = HeaderEncoder::default();
        let port = PORT.to_string();
        for (stream, kind) in [(1, "error"), (3, "data")] {
            let block =
                headers.block(&[("streamtype", kind), ("port", &port), ("requestid", "0")])?;
            spdy.feed(Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: block,
            })
            .await?;
        }
        // kubectl half-closes the error stream at once: it never writes there.
        spdy.feed(Frame::Data {
            stream: 1,
            fin: true,
            data: Bytes::new(),
        })
        .await?;
        spdy.send(Frame::Data {
            stream: 3,
            fin: false,
            data: Bytes::from_static(b"GET /big HTTP/1.0\r\nHost: bench\r\n\r\n"),
        })
        .await?;
        let mut head = Vec::new();
        let mut received: Option<u64> = None;
        let mut error = Vec::new();
        let mut took = None;
        loop {
            if took.is_none() && received.is_some_and(|r| r >= body) {
                took = Some(started.elapsed());
            }
            match spdy.next().await.transpose()? {
                Some(Frame::Data {
                    stream: 3,
                    fin,
                    data,
                }) => {
                    match &mut received {
                        Some(received) => *received += data.len() as u64,
                        None => {
                            head.extend_from_slice(&data);
                            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                                anyhow::ensure!(
                                    head.starts_with(b"HTTP/1.0 200")
                                        || head.starts_with(b"HTTP/1.1 200"),
                                    "answered {:?}",
                                    String::from_utf8_lossy(&head[..end])
                                );
                                received = Some((head.len() - end - 4) as u64);
                            }
                        }
                    }
                    if fin {
                        break;
                    }
                }
                Some(Frame::Data {
                    stream: 1, data, ..
                }) => error.extend_from_slice(&data),
                Some(Frame::RstStream { stream, status }) => {
                    anyhow::bail!("the API server reset stream {stream} ({status})")
                }
                Some(_) => {}
                None => break,
            }
        }
        anyhow::ensure!(
            error.is_empty(),
            "the forward failed: {}",
            String::from_utf8_lossy(&error)
        );
        let received = received.unwrap_or(0);
        anyhow::ensure!(received == body, "{received} bytes of {body}");
        Ok(took.unwrap_or_else(|| started.elapsed()))
    };
    tokio::time::timeout(STEP_TIMEOUT, transfer)
        .await
        .with_context(|| format!("a GET through the API server took over {STEP_TIMEOUT:?}"))?
}
