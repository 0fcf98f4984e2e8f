//! `kubectl port-forward` throughput to a container pod, against a direct connection to the same
//! server (issue 16's goal: port-forward at least half the direct throughput).
//!
//! The processes are real, as in [`super::mixed`] (whose setup this reuses): a `cloudcore`, an
//! `edgecore` running container pods on a real containerd ([`wedge_testkit::containerd`], root
//! needed), a registry serving busybox. One pod runs busybox `httpd` serving a file of
//! [`BODY_MIB`] MiB of random bytes. Each sample is one HTTP/1.0 GET of that file, timed from the
//! request's first byte written to the connection's end, so a forwarded sample includes opening
//! its stream to the edge, as every connection through kubectl does:
//!
//! - **direct**: to the pod's IP from the host, over the fixture's CNI bridge (a veth pair), the
//!   nearest to loopback the pod's server can be reached;
//! - **port-forward (WebSocket)**: through a real `kubectl port-forward` (kubectl ≥ 1.31 tunnels
//!   SPDY in WebSocket messages; the API server unwraps it), then CloudStream, a stream on the
//!   edge's CloudHub connection, EdgeStream and CRI `PortForward` to containerd's streaming
//!   server, which connects inside the pod's network;
//! - **port-forward (SPDY)**: the same with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`, whose SPDY
//!   the API server passes through.
//!
//! The three alternate, sample after sample, so that whatever else the machine does weighs on
//! each alike; the medians are reported, and the ratio of each forward's median to the direct
//! one. Then two GETs at once through one kubectl: whether a connection is held back by its own
//! round trips or by a limit all share.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wedge_testkit::containerd::Containerd;
use wedge_testkit::registry::Registry;

use super::edge::{node_ready, running_at, running_pods_task};
use super::mixed::{BUSYBOX, container_edge_args, container_host, log_tail, runtime_classes};
use super::processes::{CloudAndEdge, free_port};
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
        cloud: _cloud,
        edge: _edge,
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
    let kinds = [
        ("direct to the pod IP".to_owned(), direct),
        (
            "kubectl port-forward (WebSocket)".to_owned(),
            websocket.addr.clone(),
        ),
        ("kubectl port-forward (SPDY)".to_owned(), spdy.addr.clone()),
    ];
    tracing::info!("{} transfers of {BODY_MIB} MiB each way", SAMPLES);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for round in 0..WARM_UPS + SAMPLES {
        for ((name, addr), samples) in kinds.iter().zip(&mut samples) {
            let took = fetch(addr, body)
                .await
                .with_context(|| format!("{name}: {}", websocket.stderr_and(&spdy)))?;
            if round >= WARM_UPS {
                samples.push(took);
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
    // Two connections at once through one kubectl: if together they carry about twice what
    // one does, what holds one back is its own round trips (windows, hops), not a shared limit
    // (CPU, kubectl, the edge's one hub connection).
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        let started = Instant::now();
        let (a, b) = tokio::join!(fetch(&websocket.addr, body), fetch(&websocket.addr, body));
        a.and(b).context("two GETs at once")?;
        pairs.push(started.elapsed());
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

/// One GET of the served file at `addr`, which must bring `body` bytes; how long it took from
/// the request to the connection's end.
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
        loop {
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
        let took = started.elapsed();
        anyhow::ensure!(received == body, "{received} bytes of {body}");
        Ok(took)
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
