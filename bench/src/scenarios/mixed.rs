//! Container pods beside Wasm pods on one edge, in one run (issue 15): what a container pod costs
//! next to a Wasm pod, in start latency and in host memory, through the same path.
//!
//! The processes are real, as in [`super::edge`]: a `cloudcore`, an `edgecore` joined to it and
//! given a real containerd ([`wedge_testkit::containerd`], which needs root) as its CRI runtime,
//! and a registry serving the telemetry sample (Wasm) and busybox (a container image). The
//! RuntimeClasses `runc` and `wasm` are created through the API and every pod names one, so what
//! is timed is the run, not the edge guessing a runtime from the image.
//!
//! Order: one warm-up pod of each kind (busybox pulled and unpacked, the sample pulled and
//! compiled), then every pod deleted and gone before anything is measured; then 100 Wasm pods
//! one at a time, all deleted and gone; then 100 container pods (busybox `sleep`) one at a time,
//! all deleted and gone. Blocks rather than alternating, because host memory per pod is the drop
//! in `MemAvailable` over a block of one kind; one block at a time, because an edge takes 110
//! pods, as a kubelet does, so 200 cannot run side by side. Wasm goes first so that its memory
//! figures start from an edgecore that has run only the warm-ups; the container pods then start
//! in an edgecore whose allocator holds what the Wasm pods freed, so edgecore's growth per
//! container pod is a lower bound. Both blocks start on an edge with no other pod.
//!
//! Latency: each pod from its create request to the watch event that shows it Running. Memory is
//! read after a settle before and after each block:
//! - `MemAvailable`'s drop per pod of each block counts everything the host gave, kernel memory
//!   too (page tables, cgroups, network namespaces, the fixture's state on `/dev/shm`), but it
//!   also moves with anything else running on the machine: read it beside the process figures;
//! - RSS and PSS of edgecore (where Wasm pods live) and containerd, and per container pod those
//!   of its containerd shim, pause process and container process. Shims are found by their
//!   command line naming this containerd's socket, pause and container processes through the
//!   cgroups under the `--cgroup-root` the edge was given. PSS divides shared pages among their
//!   users, so PSS figures add up; RSS counts shared code in every process.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tokio::sync::mpsc;
use wedge_testkit::containerd::Containerd;
use wedge_testkit::oci::{Image, WasmLayout, push};
use wedge_testkit::registry::Registry;

use super::edge::{node_ready, running_at, running_pods_task};
use super::processes::{CloudAndEdge, Daemon, mem_available_kib, rollup_kib};
use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "mixed";
const PODS: usize = 100;
const NODE: &str = "bench-mixed";
/// Where the scenarios with container pods find busybox in their registry.
pub(super) const BUSYBOX: &str = "tools/busybox:1";
/// Left for the processes to settle before memory is read.
const SETTLE: Duration = Duration::from_secs(5);
/// A warm-up pod pulls (and unpacks or compiles) its image.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// A measured pod starts from cached images.
const POD_TIMEOUT: Duration = Duration::from_secs(60);
/// Deleting every container pod: each waits out its grace period (busybox `sleep` ignores
/// SIGTERM as PID 1), then its sandbox is stopped and removed.
const DELETE_TIMEOUT: Duration = Duration::from_secs(300);
/// The cgroup v1 hierarchy whose tree under the cgroup root holds the pods' processes.
const CGROUP_HIERARCHY: &str = "/sys/fs/cgroup/memory";

#[derive(Clone, Copy)]
enum Kind {
    Container,
    Wasm,
}

impl Kind {
    /// Its RuntimeClass, named after the handler.
    fn class(self) -> &'static str {
        match self {
            Kind::Container => "runc",
            Kind::Wasm => "wasm",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Wasm => "Wasm",
        }
    }

    fn pod(self, name: &str, registry: &str) -> anyhow::Result<Pod> {
        let mut pod: Pod = match self {
            Kind::Wasm => super::edge::pod(name, registry)?,
            Kind::Container => serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "image": format!("{registry}/{BUSYBOX}"),
                        "command": ["sleep", "86400"]
                    }]
                }
            }))?,
        };
        if let Some(spec) = pod.spec.as_mut() {
            spec.runtime_class_name = Some(self.class().to_owned());
        }
        Ok(pod)
    }
}

/// The pods' watch, shared by every wait on a pod turning Running.
struct Watch {
    pods: Api<Pod>,
    running: mpsc::UnboundedReceiver<(String, Instant)>,
    watch_task: tokio::task::AbortHandle,
    early: HashMap<String, Instant>,
    registry: String,
}

impl Watch {
    /// Creates the pod `name` of `kind` and returns how long it took to be seen Running.
    async fn start(
        &mut self,
        kind: Kind,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let pod = kind.pod(name, &self.registry)?;
        let sent = Instant::now();
        self.pods.create(&PostParams::default(), &pod).await?;
        match running_at(&mut self.running, &mut self.early, name, timeout).await {
            Ok(at) => Ok(at.duration_since(sent)),
            Err(error) => {
                let status = self
                    .pods
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|p| p.status);
                Err(error.context(format!("{name}'s status: {status:?}")))
            }
        }
    }

    /// Creates `PODS` pods of `kind`, one at a time; returns their create-to-Running times.
    async fn block(&mut self, kind: Kind) -> anyhow::Result<Vec<Duration>> {
        let prefix = match kind {
            Kind::Container => "box",
            Kind::Wasm => "wasm",
        };
        let mut samples = Vec::with_capacity(PODS);
        for i in 0..PODS {
            samples.push(
                self.start(kind, &format!("{prefix}-{i:03}"), POD_TIMEOUT)
                    .await?,
            );
        }
        Ok(samples)
    }
}

impl Drop for Watch {
    // Declared after the cloud and edge, it is dropped before them.
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

/// Creates the RuntimeClasses of both handlers, as `wedge up` does.
pub(super) async fn runtime_classes(client: &kube::Client) -> anyhow::Result<()> {
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    for kind in [Kind::Container, Kind::Wasm] {
        let class = RuntimeClass {
            metadata: kube::api::ObjectMeta {
                name: Some(kind.class().to_owned()),
                ..Default::default()
            },
            handler: kind.class().to_owned(),
            ..Default::default()
        };
        classes
            .create(&PostParams::default(), &class)
            .await
            .with_context(|| format!("creating the RuntimeClass {}", kind.class()))?;
    }
    Ok(())
}

/// Deletes every pod and waits until the API holds none; returns how long that took.
async fn delete_all(pods: &Api<Pod>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for pod in pods.list(&ListParams::default()).await?.items {
        if let Some(name) = pod.metadata.name {
            pods.delete(&name, &DeleteParams::default()).await?;
        }
    }
    loop {
        let left = pods.list(&ListParams::default()).await?.items;
        let Some(pod) = left.first() else {
            return Ok(started.elapsed());
        };
        anyhow::ensure!(
            started.elapsed() < DELETE_TIMEOUT,
            "{} pods still there after {DELETE_TIMEOUT:?}, e.g. {:?}",
            left.len(),
            pod.metadata.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Host and process memory at one point, in KiB.
struct Memory {
    available: u64,
    edgecore_rss: u64,
    edgecore_pss: u64,
    containerd_rss: u64,
    containerd_pss: u64,
}

impl Memory {
    fn read(edge: &mut Daemon, containerd: &Containerd) -> anyhow::Result<Self> {
        let pid = containerd.pid().context("containerd is not running")?;
        Ok(Self {
            available: mem_available_kib()?,
            edgecore_rss: edge.rss_kib()?,
            edgecore_pss: edge.pss_kib()?,
            containerd_rss: rollup_kib(pid, "Rss:")?,
            containerd_pss: rollup_kib(pid, "Pss:")?,
        })
    }
}

/// `after - before` per pod, in KiB: signed, since host-wide figures can move either way.
fn per_pod(before: u64, after: u64) -> f64 {
    (after as f64 - before as f64) / PODS as f64
}

/// RSS and PSS summed over some processes, in KiB.
#[derive(Default)]
struct Usage {
    processes: usize,
    rss: u64,
    pss: u64,
}

impl Usage {
    /// Adds `pid`, unless it exited meanwhile.
    fn add(&mut self, pid: u32) {
        if let (Ok(rss), Ok(pss)) = (rollup_kib(pid, "Rss:"), rollup_kib(pid, "Pss:")) {
            self.processes += 1;
            self.rss += rss;
            self.pss += pss;
        }
    }
}

/// The processes container pods add besides containerd: shims, pause processes, containers.
struct PodProcesses {
    shims: Usage,
    pauses: Usage,
    containers: Usage,
}

impl PodProcesses {
    fn read(containerd: &Containerd) -> anyhow::Result<Self> {
        let socket = containerd.socket().to_string_lossy().into_owned();
        let mut shims = BTreeSet::new();
        for entry in std::fs::read_dir("/proc")? {
            let entry = entry?;
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Processes come and go while /proc is read: one that is gone is not ours.
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let shim = args
                .first()
                .is_some_and(|program| program.contains("containerd-shim"))
                && args
                    .windows(2)
                    .any(|pair| pair[0] == "-address" && pair[1] == socket);
            if shim {
                shims.insert(pid);
            }
        }
        let mut in_pods = BTreeSet::new();
        let root =
            Path::new(CGROUP_HIERARCHY).join(containerd.cgroup_parent().trim_start_matches('/'));
        cgroup_pids(&root, &mut in_pods)?;
        let mut found = Self {
            shims: Usage::default(),
            pauses: Usage::default(),
            containers: Usage::default(),
        };
        for &pid in &shims {
            found.shims.add(pid);
        }
        for pid in in_pods.difference(&shims) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "pause" {
                found.pauses.add(*pid);
            } else {
                found.containers.add(*pid);
            }
        }
        Ok(found)
    }
}

/// Every process in the cgroup `dir` and the cgroups below it.
fn cgroup_pids(dir: &Path, pids: &mut BTreeSet<u32>) -> anyhow::Result<()> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", dir.display()))?;
    pids.extend(
        procs
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok()),
    );
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            cgroup_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

/// Prints p50 and p99 of `samples` for pods of `kind`; returns them.
fn latency(kind: Kind, samples: &mut [Duration]) -> (Duration, Duration) {
    let p50 = quantile(samples, 0.5);
    let p99 = quantile(samples, 0.99);
    for (q, value) in [("p50", p50), ("p99", p99)] {
        figure(
            SCENARIO,
            &format!("{} pods: create to Running {q} (image cached)", kind.name()),
            millis(value),
            "ms",
        );
    }
    (p50, p99)
}

/// Prints the RSS and PSS per container pod of one kind of its processes.
fn per_container_pod(what: &str, usage: &Usage) {
    figure(
        SCENARIO,
        &format!("{what} processes found"),
        usage.processes as f64,
        "processes",
    );
    figure(
        SCENARIO,
        &format!("{what} RSS per container pod"),
        usage.rss as f64 / PODS as f64,
        "KiB",
    );
    figure(
        SCENARIO,
        &format!("{what} PSS per container pod"),
        usage.pss as f64 / PODS as f64,
        "KiB",
    );
}

pub async fn run() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let apps = tokio::task::spawn_blocking(wedge_testkit::sample_apps::build).await??;
    let image = Image::wasm(&apps.bytes("telemetry")?, WasmLayout::CncfArtifact);
    push(&registry.host(), "samples/telemetry", "1", &image).await?;
    let containerd = container_host(&registry)?;
    let registry_host = registry.host();

    let dir = tempfile::tempdir()?;
    // The cloud and edge live (and are killed) within `measure`, before containerd's fixture
    // cleans up: edgecore must not be running pods into it while the cleanup removes them.
    measure(&registry_host, &containerd, dir.path())
        .await
        .with_context(|| {
            format!(
                "edgecore's log ends with:\n{}\ncloudcore's log ends with:\n{}",
                log_tail(&dir.path().join("edgecore.log")),
                log_tail(&dir.path().join("cloudcore.log"))
            )
        })
}

/// What the scenarios with container pods start from: busybox pushed to `registry` as
/// [`BUSYBOX`] and a containerd ([`Containerd`], root needed) pulling from it over HTTP.
/// skopeo and containerd's start block for a few seconds, before anything is timed.
pub(super) fn container_host(registry: &Registry) -> anyhow::Result<Containerd> {
    tokio::task::block_in_place(|| {
        wedge_testkit::container_images::push_busybox(registry, BUSYBOX)
    })?;
    let containerd = tokio::task::block_in_place(Containerd::start)?;
    let host = registry.host();
    containerd.add_registry_host(&host, &format!("http://{host}"))?;
    Ok(containerd)
}

/// edgecore's arguments for running container pods on `containerd` and pulling from the
/// registry `registry_host`, its unused CNI directory under `dir`.
pub(super) fn container_edge_args(
    registry_host: &str,
    containerd: &Containerd,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    // edgecore writes a bridge network there if it holds none; the fixture's containerd reads
    // its own CNI directory, so this one stays unused.
    let cni_conf_dir = dir.join("unused-cni");
    std::fs::create_dir_all(&cni_conf_dir)?;
    Ok([
        "--insecure-registry",
        registry_host,
        "--mqtt-listen",
        "127.0.0.1:0",
        "--container-runtime-endpoint",
        &containerd.endpoint(),
        "--cgroup-root",
        containerd.cgroup_parent(),
        "--cni-conf-dir",
        &cni_conf_dir.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec())
}

/// The last lines of a daemon's log, for errors.
pub(super) fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn measure(registry_host: &str, containerd: &Containerd, dir: &Path) -> anyhow::Result<()> {
    let edge_args = container_edge_args(registry_host, containerd, dir)?;
    let edge_args: Vec<&str> = edge_args.iter().map(String::as_str).collect();
    let CloudAndEdge {
        cloud: _cloud,
        mut edge,
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
    tokio::time::sleep(SETTLE).await;
    let idle = Memory::read(&mut edge, containerd)?;
    figure(
        SCENARIO,
        "edgecore RSS, joined, containerd in use, 0 pods, before any pod",
        idle.edgecore_rss as f64 / 1024.0,
        "MiB",
    );
    figure(
        SCENARIO,
        "containerd RSS, 0 pods",
        idle.containerd_rss as f64 / 1024.0,
        "MiB",
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (running, watch_task) = running_pods_task(pods.clone());
    let mut watch = Watch {
        pods: pods.clone(),
        running,
        watch_task,
        early: HashMap::new(),
        registry: registry_host.to_owned(),
    };
    // The warm-ups pull busybox (and unpack it) and the sample (and compile it); the measured
    // pods start from the caches.
    for (kind, name) in [
        (Kind::Container, "warm-up-box"),
        (Kind::Wasm, "warm-up-wasm"),
    ] {
        let took = watch.start(kind, name, WARM_UP_TIMEOUT).await?;
        tracing::info!(?took, "{} warm-up pod Running", kind.name());
    }
    delete_all(&pods).await?;
    tokio::time::sleep(SETTLE).await;
    let base = Memory::read(&mut edge, containerd)?;
    figure(
        SCENARIO,
        "edgecore RSS, 0 pods, after the warm-ups",
        base.edgecore_rss as f64 / 1024.0,
        "MiB",
    );

    tracing::info!("{PODS} Wasm pods");
    let mut wasm = watch.block(Kind::Wasm).await?;
    tokio::time::sleep(SETTLE).await;
    let with_wasm = Memory::read(&mut edge, containerd)?;
    let (wasm_p50, wasm_p99) = latency(Kind::Wasm, &mut wasm);
    let took = delete_all(&pods).await?;
    figure(
        SCENARIO,
        &format!("{PODS} Wasm pods deleted to gone from the API"),
        took.as_secs_f64(),
        "s",
    );
    tokio::time::sleep(SETTLE).await;
    let between = Memory::read(&mut edge, containerd)?;

    tracing::info!("{PODS} container pods");
    let mut container = watch.block(Kind::Container).await?;
    tokio::time::sleep(SETTLE).await;
    let with_containers = Memory::read(&mut edge, containerd)?;
    let processes = PodProcesses::read(containerd)?;
    let (container_p50, container_p99) = latency(Kind::Container, &mut container);
    let took = delete_all(&pods).await?;
    figure(
        SCENARIO,
        &format!("{PODS} container pods deleted to gone from the API"),
        took.as_secs_f64(),
        "s",
    );

    figure(
        SCENARIO,
        "create to Running p50, container / Wasm",
        container_p50.as_secs_f64() / wasm_p50.as_secs_f64(),
        "x",
    );
    figure(
        SCENARIO,
        "create to Running p99, container / Wasm",
        container_p99.as_secs_f64() / wasm_p99.as_secs_f64(),
        "x",
    );

    // Host memory: MemAvailable's drop, so `after` comes first.
    let host_wasm = per_pod(with_wasm.available, base.available);
    let host_container = per_pod(with_containers.available, between.available);
    figure(SCENARIO, "MemAvailable drop per Wasm pod", host_wasm, "KiB");
    figure(
        SCENARIO,
        "MemAvailable drop per container pod",
        host_container,
        "KiB",
    );
    figure(
        SCENARIO,
        "MemAvailable drop per pod, container / Wasm",
        host_container / host_wasm,
        "x",
    );

    // Processes: what each Wasm pod adds to edgecore; what each container pod adds in its own
    // processes, containerd and edgecore.
    let edge_rss_wasm = per_pod(base.edgecore_rss, with_wasm.edgecore_rss);
    let edge_pss_wasm = per_pod(base.edgecore_pss, with_wasm.edgecore_pss);
    figure(
        SCENARIO,
        "edgecore RSS added per Wasm pod",
        edge_rss_wasm,
        "KiB",
    );
    figure(
        SCENARIO,
        &format!("edgecore RSS, {PODS} Wasm pods running"),
        with_wasm.edgecore_rss as f64 / 1024.0,
        "MiB",
    );
    per_container_pod("containerd-shim", &processes.shims);
    per_container_pod("pause", &processes.pauses);
    per_container_pod("container (busybox sleep)", &processes.containers);
    let containerd_rss = per_pod(between.containerd_rss, with_containers.containerd_rss);
    let containerd_pss = per_pod(between.containerd_pss, with_containers.containerd_pss);
    figure(
        SCENARIO,
        "containerd RSS added per container pod",
        containerd_rss,
        "KiB",
    );
    figure(
        SCENARIO,
        "containerd PSS added per container pod",
        containerd_pss,
        "KiB",
    );
    figure(
        SCENARIO,
        &format!("containerd RSS, {PODS} container pods running"),
        with_containers.containerd_rss as f64 / 1024.0,
        "MiB",
    );
    let edge_rss_container = per_pod(between.edgecore_rss, with_containers.edgecore_rss);
    let edge_pss_container = per_pod(between.edgecore_pss, with_containers.edgecore_pss);
    figure(
        SCENARIO,
        "edgecore RSS added per container pod",
        edge_rss_container,
        "KiB",
    );
    figure(
        SCENARIO,
        &format!("edgecore RSS, {PODS} container pods running"),
        with_containers.edgecore_rss as f64 / 1024.0,
        "MiB",
    );
    let pss_container = (processes.shims.pss + processes.pauses.pss + processes.containers.pss)
        as f64
        / PODS as f64
        + containerd_pss
        + edge_pss_container;
    figure(
        SCENARIO,
        "PSS per Wasm pod (edgecore's growth)",
        edge_pss_wasm,
        "KiB",
    );
    figure(
        SCENARIO,
        "PSS per container pod (shim, pause, container, containerd's and edgecore's growth)",
        pss_container,
        "KiB",
    );
    figure(
        SCENARIO,
        "PSS per pod, container / Wasm",
        pss_container / edge_pss_wasm,
        "x",
    );
    Ok(())
}
