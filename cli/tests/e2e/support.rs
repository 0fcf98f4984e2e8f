//! What the cloud-edge tests share: cloudcore and edgecore as real processes with their own
//! ports, directories and logs, kubectl against the embedded API server, and a registry with the
//! sample apps.
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wedge_testkit::registry::Registry;

pub use wedge_testkit::metrics::scrape;
pub use wedge_testkit::wait::free_port;

/// A child process, killed (SIGKILL) when dropped, its stderr in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).expect("log directory");
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = command
            .env("RUST_LOG", "info,kube=warn,wedge_apiserver=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("the binary runs");
        Self { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as a service manager stops it.
    pub fn terminate(&self) {
        wedge_testkit::process::terminate(self.child.id());
    }

    /// Waits (bounded by `timeout`) until the process has exited; its status.
    pub async fn exited(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still running after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `wedge apiserver` as a process of its own, standing in for kube-apiserver beside
/// `cloudcore --kubeconfig`: its data under `data`, its log at `log`. Returns it once it is
/// ready, with the admin's kubeconfig.
pub async fn separate_apiserver(data: &Path, log: &Path) -> (Proc, PathBuf) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
    command
        .arg("apiserver")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    let apiserver = Proc::spawn(command, log.to_owned());
    let kubeconfig = data.join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "wedge apiserver did not come up: {}",
            apiserver.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (apiserver, kubeconfig)
}

/// cloudcore in embedded mode.
pub struct Cloud {
    pub root: PathBuf,
    pub hub: String,
    pub api: u16,
    pub metrics: String,
    /// CloudStream's address (the edges' kubelet endpoint).
    pub stream: String,
    /// More cloudcore flags.
    pub extra: Vec<String>,
    pub proc: Option<Proc>,
}

impl Cloud {
    pub fn start(root: &Path) -> Self {
        Self::start_on(root, "127.0.0.1")
    }

    /// A cloud whose hub listens on `host` (a loopback address).
    pub fn start_on(root: &Path, host: &str) -> Self {
        Self::start_with(root, host, &[])
    }

    /// A cloud whose hub listens on `host`, with more cloudcore flags.
    pub fn start_with(root: &Path, host: &str, extra: &[&str]) -> Self {
        let mut cloud = Self {
            root: root.to_owned(),
            hub: format!("{host}:{}", free_port()),
            api: free_port(),
            metrics: format!("127.0.0.1:{}", free_port()),
            stream: format!("127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            proc: None,
        };
        cloud.restart();
        cloud
    }

    /// Starts cloudcore, stopping the running one first: the root is locked to one process, so
    /// a new one started beside the old would refuse to run.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cloudcore"));
        command
            .arg("--root")
            .arg(&self.root)
            .args(["--listen", &self.hub])
            .args(["--apiserver-listen", &format!("127.0.0.1:{}", self.api)])
            .args(["--metrics-listen", &self.metrics, "--ping-interval", "2"])
            .args(["--stream-listen", &self.stream])
            .args(&self.extra);
        self.proc = Some(Proc::spawn(command, self.root.join("cloudcore.log")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.hub).is_err() {
            assert!(
                Instant::now() < deadline,
                "cloudcore did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("apiserver/admin.kubeconfig")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("kubectl runs")
    }

    /// `kubectl <args>` against this cloud, to be spawned.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args);
        command
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\ncloudcore: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("kubectl");
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn token(&self, ttl: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_wedge"))
            .arg("--root")
            .arg(&self.root)
            .args(["token", "create", "--ttl", ttl, "--cloud", &self.hub])
            .output()
            .expect("wedge token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A counter or gauge of cloudcore's metrics for `node`.
    pub fn metric(&self, name: &str, node: &str) -> f64 {
        wedge_testkit::metrics::sum(&scrape(&self.metrics), name, &[("node", node)])
    }

    /// When `node`'s Lease was last renewed, if it has been.
    pub fn lease_renewed(&self, node: &str) -> Option<jiff::Timestamp> {
        let out = self.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            node,
            "-o",
            "jsonpath={.spec.renewTime}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Polls `jsonpath` of `object` until it equals `want`.
    pub fn wait_for(&self, object: &str, jsonpath: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl(&["get", object, "-o", &format!("jsonpath={jsonpath}")]);
            let got = String::from_utf8_lossy(&out.stdout).into_owned();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{object} {jsonpath}: {got:?}, wanted {want:?}\ncloudcore: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_gone(&self, object: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.kubectl(&["get", object]).status.success() {
            assert!(
                Instant::now() < deadline,
                "{object} is still there\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn edgecore(
    root: &Path,
    cloud: &Cloud,
    node: &str,
    token: Option<&str>,
    registry: &str,
) -> Command {
    edgecore_at(root, &cloud.hub, node, token, registry)
}

/// edgecore dialling the hub at `hub` (a proxy in front of it, say).
pub fn edgecore_at(
    root: &Path,
    hub: &str,
    node: &str,
    token: Option<&str>,
    registry: &str,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgecore"));
    command
        .env("WEDGE_CLOUD", hub)
        // Each edge's embedded MQTT broker on a port of its own.
        .env("WEDGE_MQTT_LISTEN", "127.0.0.1:0")
        .arg("--root")
        .arg(root)
        .args(["--cloud", hub, "--node", node, "--node-ip", "127.0.0.1"])
        .args(["--insecure-registry", registry, "--lease-seconds", "2"])
        .args(["--node-status-seconds", "5", "--reconnect-max-seconds", "1"])
        // Wasm only, whatever containerd the machine has: tests that run containers give
        // their own containerd's socket.
        .args(["--container-runtime-endpoint", "none"]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command
}

/// Runs a command that must end by itself (a join that fails); a join that wrongly succeeds
/// keeps edgecore running, so it is killed after a while and the test fails, not hangs.
pub fn exits(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edgecore runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "edgecore kept running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

pub fn start_edge(
    root: &Path,
    cloud: &Cloud,
    node: &str,
    token: Option<&str>,
    registry: &str,
) -> Proc {
    std::fs::create_dir_all(root).expect("edge root");
    Proc::spawn(
        edgecore(root, cloud, node, token, registry),
        root.join("edgecore.log"),
    )
}

/// A registry with the sample apps pushed as `<host>/samples/<app>:1`.
pub async fn registry_with_samples() -> Registry {
    let registry = Registry::start().expect("registry");
    for app in ["hello", "telemetry", "fan_handler"] {
        wedge_testkit::sample_apps::push(&registry.host(), app)
            .await
            .expect("push a sample app");
    }
    registry
}

/// Pushes the `misbehave` test guest to `registry` as `<host>/samples/misbehave:1`.
pub async fn push_misbehave(registry: &Registry) {
    wedge_testkit::sample_apps::push(&registry.host(), "misbehave")
        .await
        .expect("push misbehave");
}

/// A pod of one `misbehave` container running `args` (`sleep`: idle, for commands to run in).
pub fn misbehave_pod(name: &str, registry: &str, args: &[&str]) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {registry}/samples/misbehave:1\n    command: [misbehave{}]\n",
        args.iter()
            .map(|a| format!(", \"{a}\""))
            .collect::<String>()
    )
}

/// A child process (kubectl, say), killed and reaped when dropped, so that a failing test leaves
/// none behind.
pub struct Killed(pub Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to end by itself within `timeout` and returns what it wrote on its piped
/// stdout and stderr; its stdin, if piped, stays open until then. Panics, the child killed, if
/// it does not end in time.
pub fn finishes(child: Child, timeout: Duration) -> Output {
    use std::io::Read;
    let mut child = Killed(child);
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {timeout:?}; it wrote: {}\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout read"),
        stderr: stderr.join().expect("stderr read"),
    }
}

/// Waits up to `timeout` for `child` to end by itself: its status, or `None` if it still runs.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn telemetry_pod(name: &str, registry: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: {registry}/samples/telemetry:1\n    env:\n    - {{name: INTERVAL_MS, value: \"200\"}}\n"
    )
}

/// edgecore's count of what its bus refused for `reason`, from its `/metrics` at `metrics`.
pub fn bus_refused(metrics: &str, reason: &str) -> f64 {
    wedge_testkit::metrics::sum(
        &scrape(metrics),
        "wedge_edge_mqtt_refused_total",
        &[("reason", reason)],
    )
}

/// Polls `check` (a look at processes, files or kubectl) every 100 ms until it holds; panics
/// with `what()` after `timeout`.
pub async fn eventually(
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    what: impl Fn() -> String,
) {
    wedge_testkit::wait::eventually(
        timeout,
        Duration::from_millis(100),
        || std::future::ready(check()),
        what,
    )
    .await;
}

/// The pods an edge holds in its SQLite store: name → resourceVersion.
pub fn pods_held(edge_root: &Path) -> std::collections::BTreeMap<String, String> {
    held(edge_root, wedge_core::protocol::ResourceKind::Pod)
}

/// The objects of `kind` an edge holds in its SQLite store: name → resourceVersion.
pub fn held(
    edge_root: &Path,
    kind: wedge_core::protocol::ResourceKind,
) -> std::collections::BTreeMap<String, String> {
    let Ok(db) = wedge_edge::store::Database::inspect(&edge_root.join("edge.db")) else {
        return Default::default();
    };
    db.meta()
        .held()
        .unwrap_or_default()
        .into_iter()
        .filter(|h| h.kind == kind)
        .map(|h| (h.name, h.resource_version))
        .collect()
}

/// The reports of `kind` waiting in the edge's outbox for the cloud (name and payload), oldest
/// first: what proves the edge holds something while the cloud is away.
pub fn reports_waiting(
    edge_root: &Path,
    kind: wedge_core::protocol::ResourceKind,
) -> Vec<(String, serde_json::Value)> {
    let Ok(db) = wedge_edge::store::Database::inspect(&edge_root.join("edge.db")) else {
        return Vec::new();
    };
    db.outbox()
        .pending(0, 100_000)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.key.kind == kind)
        .map(|e| (e.key.name, e.payload))
        .collect()
}

/// A TCP proxy on loopback in front of `target`, standing in for a bad network between edge
/// and cloud (`tc netem` is missing from these machines' kernels, so the faults are made here):
/// it adds latency ([`FaultyLink::set_latency`]), and can be cut (every connection dropped,
/// new ones refused) and restored, by hand or flapping ([`FaultyLink::flap`]).
pub struct FaultyLink {
    pub addr: String,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
    /// Added to every chunk each way, in milliseconds.
    latency_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
    flapping: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl FaultyLink {
    /// A link with no faults until told.
    pub async fn start(target: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        listener.set_nonblocking(true).expect("nonblocking");
        Self::start_on(listener, target)
    }

    /// A link accepting on `listener` (bound anywhere, in a test's network namespace say), to
    /// `target` as this process reaches it.
    pub fn start_on(listener: std::net::TcpListener, target: String) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listens");
        let addr = listener.local_addr().expect("addr").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let latency_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up2, cut2, latency2) = (up.clone(), cut.clone(), latency_ms.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the edge sees its connection reset
                }
                let (target, cut, latency) = (target.clone(), cut2.clone(), latency2.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        () = delayed_copy(in_read, out_write, latency.clone()) => {}
                        () = delayed_copy(out_read, in_write, latency) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            latency_ms,
            accept,
            flapping: std::sync::Mutex::default(),
        }
    }

    /// Every chunk from now on arrives `latency` late, each way, in order.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Flaps from now on: up for `up_for`, cut for `down_for`, over and over, until
    /// [`FaultyLink::steady`].
    pub fn flap(&self, up_for: Duration, down_for: Duration) {
        let (up, cut) = (self.up.clone(), self.cut.clone());
        let flapping = tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            loop {
                tokio::time::sleep(up_for).await;
                up.store(false, Ordering::SeqCst);
                cut.notify_waiters();
                tokio::time::sleep(down_for).await;
                up.store(true, Ordering::SeqCst);
            }
        });
        self.flapping.lock().expect("flapping").push(flapping);
    }

    /// Ends flapping and latency, and restores the link.
    pub fn steady(&self) {
        for flapping in self.flapping.lock().expect("flapping").drain(..) {
            flapping.abort();
        }
        self.set_latency(Duration::ZERO);
        self.restore();
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk delivered `latency` after it was read, in order, until
/// either side closes.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let latency =
                        Duration::from_millis(latency_ms.load(std::sync::atomic::Ordering::SeqCst));
                    let due = tokio::time::Instant::now() + latency;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer drains what the reader queued before its side closed.
    let _ = tokio::join!(reader, writer);
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.accept.abort();
        for flapping in self.flapping.lock().expect("flapping").iter() {
            flapping.abort();
        }
    }
}

pub type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens an edge WebSocket to the hub at `hub` with `tls` (an edge's credentials, or none),
/// as a client that speaks the protocol by hand. `Err` holds the HTTP status and body of a
/// refused handshake.
pub async fn raw_edge_socket(
    hub: &str,
    tls: rustls::ClientConfig,
) -> Result<RawSocket, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(hub).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut request = format!("wss://{hub}{}", wedge_core::protocol::EDGE_PATH)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(wedge_core::protocol::SUBPROTOCOL),
    );
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(other) => panic!("WebSocket handshake: {other}"),
    }
}

/// Trusts the hub's CA, presents no client certificate.
pub fn anonymous_tls(ca_pem_path: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem_path).expect("CA file") {
        roots.add(cert.expect("CA")).expect("CA added");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// Reads `child`'s stdout line by line on a thread; the lines arrive on the returned channel.
pub fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs `kubectl <args>` on a terminal of its own, as from a user's shell: `script` gives it a
/// pty (24 rows of 80 columns) as its stdin, stdout and stderr, on whose keyboard nobody types.
/// What the terminal showed, byte for byte, and the exit code.
pub fn kubectl_on_a_terminal(cloud: &Cloud, args: &str) -> (Option<i32>, String) {
    let line = format!(
        "stty rows 24 cols 80 && kubectl --kubeconfig {} {args}",
        cloud.kubeconfig().display()
    );
    let child = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let out = finishes(child, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A cloud and one edge, `edge-a`, Ready, with the sample apps and `misbehave` in the registry.
/// The edge is declared first so that it is killed first.
pub struct OneEdge {
    pub edge: Proc,
    pub cloud: Cloud,
    pub registry: wedge_testkit::registry::Registry,
    pub root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OneEdge {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`OneEdge::start`], with more edgecore flags.
    pub async fn start_with(edge_args: &[&str]) -> Self {
        let registry = registry_with_samples().await;
        push_misbehave(&registry).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = Cloud::start(&dir.path().join("cloud"));
        let token = cloud.token("1h");
        let root = dir.path().join("edge-a");
        std::fs::create_dir_all(&root).expect("edge root");
        let mut command = edgecore(&root, &cloud, "edge-a", Some(&token), &registry.host());
        command.args(edge_args);
        let edge = Proc::spawn(command, root.join("edgecore.log"));
        cloud.wait_for(
            "node/edge-a",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
            "True",
            Duration::from_secs(60),
        );
        Self {
            edge,
            cloud,
            registry,
            root,
            _dir: dir,
        }
    }

    /// Starts a `misbehave` pod running `args` and waits until it runs.
    pub fn running(&self, pod: &str, args: &[&str]) {
        self.cloud
            .apply(&misbehave_pod(pod, &self.registry.host(), args));
        self.cloud.wait_for(
            &format!("pod/{pod}"),
            "{.status.phase}",
            "Running",
            Duration::from_secs(60),
        );
    }

    /// A file for a child's stderr, under the test's directory.
    pub fn stderr_file(&self, name: &str) -> (std::path::PathBuf, std::fs::File) {
        let path = self.root.join(format!("{name}.err"));
        let file = std::fs::File::create(&path).expect("a stderr file");
        (path, file)
    }
}
