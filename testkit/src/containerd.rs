//! A real containerd for tests of the edge's container pods: Debian's containerd 1.6 with runc,
//! driven through its CRI v1 API exactly as the edge will drive it.
//!
//! Each [`Containerd`] is its own world: its own config, `root`, `state` and sockets in a directory
//! of its own (on `/dev/shm` when that is a roomy tmpfs: containerd fsyncs a lot, and on the disk
//! here starting and cleaning up took about twice as long), its own CNI bridge and /24 pod subnet,
//! its own cgroup parent, and a locally built pause image ([`crate::container_images::pause`])
//! imported as the sandbox image. Several run side by side in one test process.
//!
//! The hard part is leaving the machine clean. containerd and runc make things outside that
//! directory: shim processes that outlive containerd, the containers they run, overlay and netns
//! mounts, a bridge, cgroups in every v1 hierarchy, NAT rules for `ipMasq`, CNI result files in
//! `/var/lib/cni`. Dropping a [`Containerd`] removes all of them, even after a failed test: first
//! the polite way (every pod sandbox stopped and removed through CRI, which also runs CNI `DEL`),
//! then by force (kill, unmount, delete) for whatever is left. [`Containerd::traces`] records what a
//! fixture made, so a test can check that nothing of it remains.
//!
//! Start reading at [`Containerd::start`], then [`Containerd::pod_config`] and the CRI clients
//! ([`Containerd::runtime_client`], [`Containerd::image_client`]).
//!
//! Things the fixture changes on the host and puts back only when the last fixture of the process
//! is dropped, because they are shared: `net.ipv4.ip_forward` (the bridge plugin's `isGateway` turns
//! it on) and the directories `/run/containerd/s` (shim sockets; its place is fixed in containerd
//! 1.6), `/var/lib/cni` (libcni's result cache) and `/sys/fs/cgroup/*/k8s.io` (pods run without a
//! cgroup parent), each removed only if it did not exist before and is empty.
//! If the test process itself is killed (SIGKILL), nothing runs: containerd and its pods stay.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::container_images::{self, PAUSE_IMAGE, random_u64, run};

/// The CRI v1 API (messages and clients), re-exported so tests need no `k8s-cri` of their own.
pub use k8s_cri::v1 as cri;

/// How long containerd may take to serve CRI after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long CRI may take to see an image that `ctr` imported.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long containerd may take to exit after SIGTERM in [`Containerd::stop`].
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the polite part of the cleanup (stopping and removing sandboxes through CRI) may take.
const CRI_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long killed processes may take to die, and cgroups to become removable.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The containerd namespace CRI works in.
const NAMESPACE: &str = "k8s.io";
/// Debian's CNI plugins (package `containernetworking-plugins`).
const CNI_BIN_DIR: &str = "/usr/lib/cni";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// libcni keeps each attachment's result here (`results/<network>-<container>-<ifname>`); its
/// place is not configurable through containerd 1.6.
const CNI_CACHE_DIR: &str = "/var/lib/cni";
/// containerd 1.6 puts every shim's socket here, whatever its `state` is.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Fixtures keep their state on `/dev/shm` when it is a tmpfs with this much room.
const TMPFS_MIN_FREE: u64 = 1 << 30;
const TMPFS_MAGIC: i128 = 0x0102_1994;
/// The second octet of the pod subnets this module picks from: 10.200.0.0/24 to 10.254.255.0/24,
/// far from containerd's default 10.88.0.0/16 and the low 10.x networks that sites tend to use.
const SUBNET_SECOND_OCTETS: std::ops::RangeInclusive<u8> = 200..=254;

/// A running containerd with CRI, its own state and its own pod network; dropping it stops every
/// pod, kills containerd and its shims and removes every trace of it from the machine.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log_path: PathBuf,
    certs_dir: PathBuf,
    cgroup_parent: String,
    network: Network,
}

/// The fixture's CNI network: a bridge and a /24 of its own.
#[derive(Debug, Clone)]
struct Network {
    name: String,
    bridge: String,
    /// The subnet's network address (10.x.y.0).
    subnet: Ipv4Addr,
    /// How many addresses pods get, from 10.x.y.2 on (`None`: the whole /24).
    addresses: Option<u8>,
}

impl Containerd {
    /// Builds the pause image if this process has not yet, starts containerd with a config of its
    /// own, imports the pause image as `localhost/pause:3.9` and waits until CRI serves and sees
    /// it. Blocks: from async code, call it through `spawn_blocking` (or accept that it blocks a
    /// test's runtime for about a second).
    pub fn start() -> anyhow::Result<Containerd> {
        Self::start_with(None)
    }

    /// [`Containerd::start`] with a pod network of only `addresses` addresses (10.x.y.2 on),
    /// for a test to see what happens when pods would need more than that.
    pub fn start_with_pod_addresses(addresses: u8) -> anyhow::Result<Containerd> {
        Self::start_with(Some(addresses))
    }

    fn start_with(addresses: Option<u8>) -> anyhow::Result<Containerd> {
        let started = Instant::now();
        // Before anything on the host changes: a failed build leaves nothing to clean.
        let pause = container_images::pause()?;
        let mut containerd = Containerd::prepare(addresses)?;
        // From here on, an error drops `containerd`, whose Drop removes what was made so far.
        containerd.spawn()?;
        let imported = containerd.import_image(&pause.docker_archive())?;
        if imported != [PAUSE_IMAGE] {
            bail!("the pause archive held {imported:?}, not {PAUSE_IMAGE}");
        }
        tracing::debug!(
            socket = %containerd.socket.display(),
            elapsed = ?started.elapsed(),
            "containerd started"
        );
        Ok(containerd)
    }

    /// Makes the directory, picks the names and writes the configs; starts nothing.
    fn prepare(addresses: Option<u8>) -> anyhow::Result<Containerd> {
        // Mounts are matched against this path, so it must be the one the kernel reports: no
        // symlink in it.
        let parent = std::fs::canonicalize(state_parent())?;
        let dir = tempfile::Builder::new()
            .prefix("wedge-containerd-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating containerd's directory in {}", parent.display()))?
            .keep();
        let id = format!("{:08x}", random_u64() as u32);
        let network = match host::register(&id) {
            Ok(network) => Network {
                addresses,
                ..network
            },
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        let containerd = Containerd {
            child: None,
            config: dir.join("config.toml"),
            socket: dir.join("containerd.sock"),
            log_path: dir.join("containerd.log"),
            certs_dir: dir.join("certs.d"),
            cgroup_parent: format!("/wedge-test-{id}"),
            network,
            dir,
        };
        containerd.write_configs()?;
        Ok(containerd)
    }

    fn write_configs(&self) -> anyhow::Result<()> {
        let cni_conf = self.dir.join("cni").join("net.d");
        for dir in [&cni_conf, &self.certs_dir, &self.dir.join("pods")] {
            std::fs::create_dir_all(dir)?;
        }
        let path = |name: &str| toml_string(&self.dir.join(name));
        let config = format!(
            r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "info"

# Its default, /opt/containerd, would be created on the host.
[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this runc cannot write oom_score_adj and every
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Pod network namespaces are mounted under `state`, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # A random port: fixtures side by side must not fight over the default one.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state, by default in /run/containerd/runc.
        Root = {runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = {cni_conf}
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {certs}
"#,
            root = path("root"),
            state = path("state"),
            socket = toml_string(&self.socket),
            ttrpc = path("containerd.sock.ttrpc"),
            opt = path("opt"),
            runc_root = path("runc"),
            cni_conf = toml_string(&cni_conf),
            certs = toml_string(&self.certs_dir),
        );
        std::fs::write(&self.config, config)?;
        let network = &self.network;
        let mut range = serde_json::json!({ "subnet": self.pod_subnet() });
        if let Some(addresses) = network.addresses {
            let [a, b, c, _] = network.subnet.octets();
            let last = addresses.clamp(1, 253).saturating_add(1);
            range["rangeStart"] = format!("{a}.{b}.{c}.2").into();
            range["rangeEnd"] = format!("{a}.{b}.{c}.{last}").into();
        }
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network.name,
            "plugins": [{
                "type": "bridge",
                "bridge": network.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[range]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    // host-local's default is /var/lib/cni/networks, on the host.
                    "dataDir": self.dir.join("cni").join("ipam"),
                },
            }],
        });
        std::fs::write(
            cni_conf.join("10-wedge.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(())
    }

    /// Starts the containerd process and waits until its CRI answers.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        // The shim looks runc up in PATH, and the bridge plugin iptables: both live in sbin,
        // which a test's PATH may lack.
        let path = std::env::var("PATH").unwrap_or_default();
        let child = Command::new(containerd_binary())
            .arg("--config")
            .arg(&self.config)
            .env("PATH", format!("{path}:/usr/local/sbin:/usr/sbin:/sbin"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd runc)")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = anyhow!("the socket never appeared");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "containerd exited with {status} while starting:\n{}",
                    self.log_tail()
                );
            }
            if self.socket.exists() {
                match block_on(cri_version(&self.socket)) {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(error)) | Err(error) => last_error = error,
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd's CRI not ready after {READY_TIMEOUT:?} ({last_error:#}); log in {}",
                    self.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Imports a docker or OCI archive into the `k8s.io` namespace (`ctr images import`), e.g.
    /// [`BuiltImage::docker_archive`](crate::container_images::BuiltImage::docker_archive), and
    /// waits until CRI lists the images it held; returns their names.
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<Vec<String>> {
        let output = run(
            self.ctr().args(["images", "import"]).arg(archive),
            &format!("importing {} into containerd", archive.display()),
        )?;
        // One "unpacking <name> (sha256:…)...done" line per image.
        let names: Vec<String> = String::from_utf8_lossy(&output)
            .lines()
            .filter_map(|line| line.strip_prefix("unpacking ")?.split_once(" (sha256:"))
            .map(|(name, _)| name.to_owned())
            .collect();
        if names.is_empty() {
            bail!(
                "ctr imported no named image from {}: {}",
                archive.display(),
                String::from_utf8_lossy(&output).trim()
            );
        }
        for name in &names {
            self.wait_for_image(name)?;
        }
        Ok(names)
    }

    /// Waits until CRI lists `reference`: it learns of imported images from events, a moment later.
    fn wait_for_image(&self, reference: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + IMAGE_TIMEOUT;
        loop {
            let found = block_on(async {
                let mut images = ImageServiceClient::new(connect(&self.socket).await?);
                let status = images
                    .image_status(cri::ImageStatusRequest {
                        image: Some(cri::ImageSpec {
                            image: reference.to_owned(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await?;
                anyhow::Ok(status.into_inner().image.is_some())
            })??;
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRI does not see image {reference} after {IMAGE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The CRI endpoint: containerd's gRPC unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The CRI endpoint as a kubelet would write it: `unix:///…/containerd.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// containerd's own log (stdout and stderr, across restarts), for post-mortems. It is deleted
    /// with the fixture: copy it out in the test if it must outlive it.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of [`Containerd::log_path`], for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The `registry.config_path` directory: one `<host>/hosts.toml` per registry.
    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    /// The cgroup parent that tests must give their pods (`LinuxPodSandboxConfig.cgroup_parent`;
    /// [`Containerd::pod_config`] does), so the cleanup finds and removes their cgroups.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The pods' subnet, "10.x.y.0/24", unique to this fixture.
    pub fn pod_subnet(&self) -> String {
        format!("{}/24", self.network.subnet)
    }

    /// Whether `ip` is in [`Containerd::pod_subnet`].
    pub fn in_pod_subnet(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.network.subnet.octets()[..3]
    }

    /// The bridge's address, 10.x.y.1: the host as its pods see it. A service on the host that
    /// pods must reach has to listen there (or on 0.0.0.0), not on 127.0.0.1.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.network.subnet.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The name of the fixture's CNI bridge on the host.
    pub fn bridge(&self) -> &str {
        &self.network.bridge
    }

    /// Lets containerd pull from the plain-HTTP registry `host` ("127.0.0.1:PORT", as written in
    /// image references) at `server_url` ("http://127.0.0.1:PORT"). Takes effect at the next pull.
    pub fn add_registry_host(&self, host: &str, server_url: &str) -> anyhow::Result<()> {
        self.write_hosts_toml(host, Some(server_url), server_url)
    }

    /// Serves images of `registry` ("docker.io") from the mirror at `mirror_url`
    /// ("http://127.0.0.1:PORT"): `docker.io/library/busybox:1.35` is then pulled as
    /// `library/busybox:1.35` from the mirror, and only if that fails from the registry itself
    /// (unreachable here). Replaces an earlier mirror or host of `registry`.
    pub fn add_mirror(&self, registry: &str, mirror_url: &str) -> anyhow::Result<()> {
        self.write_hosts_toml(registry, None, mirror_url)
    }

    fn write_hosts_toml(&self, host: &str, server: Option<&str>, url: &str) -> anyhow::Result<()> {
        if host.is_empty() || host.contains('/') || host.starts_with('.') {
            bail!("not a registry host: {host:?}");
        }
        let dir = self.certs_dir.join(host);
        std::fs::create_dir_all(&dir)?;
        let server = server
            .map(|server| format!("server = {}\n\n", toml_quote(server)))
            .unwrap_or_default();
        let hosts = format!(
            "{server}[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_quote(url)
        );
        std::fs::write(dir.join("hosts.toml"), hosts)
            .with_context(|| format!("writing hosts.toml for {host}"))
    }

    /// A `ctr` command against this containerd, in CRI's namespace `k8s.io`; add the rest of the
    /// arguments.
    pub fn ctr(&self) -> Command {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE]);
        ctr
    }

    /// A CRI runtime service client (pods, containers, exec).
    pub async fn runtime_client(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect(&self.socket).await?))
    }

    /// A CRI image service client (pull, status, remove).
    pub async fn image_client(&self) -> anyhow::Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect(&self.socket).await?))
    }

    /// A pod sandbox config that the cleanup can undo: a unique UID, the fixture's cgroup parent,
    /// and a log directory inside the fixture (created here). The pod gets a network namespace on
    /// the fixture's bridge.
    pub fn pod_config(&self, name: &str) -> anyhow::Result<cri::PodSandboxConfig> {
        let uid = format!("{name}-{:016x}", random_u64());
        let log_directory = self.dir.join("pods").join(&uid);
        std::fs::create_dir_all(&log_directory)?;
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid,
                namespace: "wedge-test".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_directory.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    // What kubelet asks for unless a pod shares its process namespace. Left at
                    // the protobuf default (POD), every container would share pause's.
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// containerd's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s). Its shims, and so the running
    /// containers, stay up: that is how containerd behaves on a real node.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                tracing::warn!("containerd ignored SIGTERM for {STOP_TIMEOUT:?}: killing it");
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops containerd (if it runs) and starts it again with the same config and state; waits
    /// until CRI serves again. Pods and containers that ran before run on.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// A record of what this fixture has made on the machine so far, to check after dropping it
    /// that none of it remains ([`Traces::remaining`]).
    pub fn traces(&self) -> Traces {
        let processes = self
            .processes()
            .into_iter()
            .map(|process| process.identity())
            .collect();
        Traces {
            processes,
            dir: self.dir.clone(),
            bridge: self.network.bridge.clone(),
            network: self.network.name.clone(),
            cgroups: std::iter::once(self.cgroup_parent.clone())
                .chain(self.stray_cgroups())
                .collect(),
            shim_sockets: self.shim_sockets(),
            cni_result_prefixes: self.cni_result_prefixes(),
        }
    }

    /// containerd, its shims and whatever else names a file of the fixture on its command line
    /// (`runc --root`, `containerd publish --address`), whatever runs in the fixture's cgroups, and
    /// all their descendants.
    fn processes(&self) -> Vec<Process> {
        let table = proc::table();
        let mut ours: BTreeSet<u32> = BTreeSet::new();
        if let Some(pid) = self.pid() {
            ours.insert(pid);
        }
        ours.extend(
            table
                .iter()
                .filter(|process| process.mentions(&self.dir))
                .map(|process| process.pid),
        );
        ours.extend(cgroups::processes(&self.cgroup_parent));
        // Their descendants. The table is in pid order and pids wrap, so a child may come before
        // its parent: repeat until nothing is added.
        loop {
            let before = ours.len();
            for process in &table {
                if ours.contains(&process.ppid) {
                    ours.insert(process.pid);
                }
            }
            if ours.len() == before {
                break;
            }
        }
        table
            .into_iter()
            .filter(|process| ours.contains(&process.pid))
            .collect()
    }

    /// The sockets of the fixture's shims, from the `address` file of every task bundle.
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let mut sockets = BTreeSet::new();
        for bundle in self.task_bundles() {
            if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
                let path = PathBuf::from(address.trim().trim_start_matches("unix://"));
                // Only ever delete sockets in containerd's shim socket directory.
                if path.parent() == Some(Path::new(SHIM_SOCKET_DIR)) {
                    sockets.insert(path);
                }
            }
        }
        sockets.into_iter().collect()
    }

    /// The cgroups of tasks started without a cgroup parent: containerd's default puts them in
    /// `/k8s.io/<id>`.
    fn stray_cgroups(&self) -> Vec<String> {
        self.task_ids()
            .iter()
            .map(|id| format!("/{NAMESPACE}/{id}"))
            .collect()
    }

    /// The IDs of every task (pod sandboxes and containers) containerd has a bundle for.
    fn task_ids(&self) -> Vec<String> {
        self.task_bundles()
            .iter()
            .filter_map(|bundle| bundle.file_name()?.to_str().map(str::to_owned))
            .collect()
    }

    /// The prefixes of libcni's cached results that this fixture's pods leave when no CNI `DEL`
    /// runs: `<network>-<sandbox>-eth0`, and `cni-loopback-<sandbox>-lo` for the loopback network
    /// that containerd adds to every pod.
    fn cni_result_prefixes(&self) -> Vec<String> {
        std::iter::once(format!("{}-", self.network.name))
            .chain(
                self.task_ids()
                    .iter()
                    .map(|id| format!("cni-loopback-{id}-")),
            )
            .collect()
    }

    /// `state/io.containerd.runtime.v2.task/<namespace>/<id>` of every task.
    fn task_bundles(&self) -> Vec<PathBuf> {
        let tasks = self.dir.join("state").join("io.containerd.runtime.v2.task");
        subdirectories(&tasks)
            .iter()
            .flat_map(|namespace| subdirectories(namespace))
            .collect()
    }

    /// Removes everything the fixture made; returns what it could not remove.
    fn clean_up(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut laps = Laps::new();
        // Read before the bundles go away with their pods.
        let shim_sockets = self.shim_sockets();
        let stray_cgroups = self.stray_cgroups();
        let cni_result_prefixes = self.cni_result_prefixes();

        // The polite way: CRI stops every sandbox (killing its containers, running CNI DEL, which
        // releases the IP and the NAT rules) and removes it (unmounting its rootfs and netns).
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            match block_on(async {
                tokio::time::timeout(CRI_CLEANUP_TIMEOUT, remove_all_pods(&self.socket)).await
            }) {
                Ok(Ok(Ok(pod_problems))) => problems.extend(pod_problems),
                Ok(Ok(Err(error))) => problems.push(format!("CRI cleanup failed: {error:#}")),
                Ok(Err(_)) => problems.push(format!(
                    "CRI cleanup took longer than {CRI_CLEANUP_TIMEOUT:?}"
                )),
                Err(error) => problems.push(format!("CRI cleanup failed: {error:#}")),
            }
        }

        laps.lap("cri");
        // Then by force, for whatever is left: a test may have stopped containerd, or the CRI
        // cleanup may have failed. Processes first, since they hold mounts and cgroups.
        let processes = self.processes();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Containers before their shims: a shim reaps its children at once, while orphans wait
        // for whoever adopts them (init here reaps about once a second), and a pod's pause
        // process cannot finish exiting until every process of its PID namespace is reaped.
        let (shims, others): (Vec<Process>, Vec<Process>) = processes
            .into_iter()
            .partition(|process| process.is_shim_of(&self.socket));
        problems.extend(proc::kill_all(&others));
        problems.extend(proc::kill_all(&shims));
        laps.lap("kill");
        for socket in shim_sockets {
            match std::fs::remove_file(&socket) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => problems.push(format!("shim socket {}: {error}", socket.display())),
            }
        }
        problems.extend(mounts::unmount_under(&self.dir));
        laps.lap("unmount");
        if Path::new("/sys/class/net")
            .join(&self.network.bridge)
            .exists()
            && let Err(error) = run(
                Command::new("ip").args(["link", "delete", &self.network.bridge]),
                "deleting the bridge",
            )
        {
            problems.push(format!("{error:#}"));
        }
        laps.lap("bridge");
        problems.extend(cgroups::remove(&self.cgroup_parent));
        for cgroup in &stray_cgroups {
            problems.extend(cgroups::remove(cgroup));
        }
        laps.lap("cgroups");
        problems.extend(nat::remove_rules(&self.network.name));
        problems.extend(remove_cni_results(&cni_result_prefixes));
        laps.lap("nat+cni");
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != ErrorKind::NotFound
        {
            problems.push(format!("{}: {error}", self.dir.display()));
        }
        laps.lap("directory");
        tracing::debug!(steps = %laps, "containerd fixture cleanup");
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let started = Instant::now();
        let problems = self.clean_up();
        for problem in &problems {
            report(&format!("containerd fixture cleanup: {problem}"));
        }
        host::unregister(&self.network);
        tracing::debug!(elapsed = ?started.elapsed(), "containerd fixture cleaned up");
    }
}

/// What one [`Containerd`] made on the machine, recorded by [`Containerd::traces`].
#[derive(Debug, Clone)]
pub struct Traces {
    processes: Vec<ProcessIdentity>,
    dir: PathBuf,
    bridge: String,
    network: String,
    /// The cgroup parent, and the default cgroups of tasks started without it.
    cgroups: Vec<String>,
    shim_sockets: Vec<PathBuf>,
    cni_result_prefixes: Vec<String>,
}

impl Traces {
    /// How many processes were recorded (containerd, shims, pause and container processes).
    pub fn process_count(&self) -> usize {
        self.processes.len()
    }

    /// The fixture's temporary directory (root, state, sockets, configs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything recorded that still exists on the machine, described; empty once the fixture
    /// has cleaned up. It also looks for things made after the record was taken: processes naming
    /// the fixture's directory (shims, say), mounts under it, cgroups under its parent, NAT rules and CNI
    /// results of its network.
    pub fn remaining(&self) -> Vec<String> {
        let mut remaining = Vec::new();
        let table = proc::table();
        for process in &table {
            let recorded = self.processes.contains(&process.identity());
            if process.is_alive() && (recorded || process.mentions(&self.dir)) {
                remaining.push(format!("process {} ({})", process.pid, process.command));
            }
        }
        remaining.extend(
            mounts::under(&self.dir)
                .into_iter()
                .map(|mount| format!("mount {}", mount.display())),
        );
        if self.dir.exists() {
            remaining.push(format!("directory {}", self.dir.display()));
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            remaining.push(format!("link {}", self.bridge));
        }
        remaining.extend(
            self.cgroups
                .iter()
                .flat_map(|cgroup| cgroups::existing(cgroup))
                .map(|cgroup| format!("cgroup {}", cgroup.display())),
        );
        remaining.extend(
            nat::rules_of(&self.network)
                .into_iter()
                .map(|rule| format!("NAT rule {rule}")),
        );
        remaining.extend(
            cni_results(&self.cni_result_prefixes)
                .into_iter()
                .map(|file| format!("CNI result {}", file.display())),
        );
        remaining.extend(
            self.shim_sockets
                .iter()
                .filter(|socket| socket.exists())
                .map(|socket| format!("shim socket {}", socket.display())),
        );
        remaining
    }
}

/// How long each step of a cleanup took, for the debug log.
struct Laps {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        self.laps.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, duration)) in self.laps.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{step} {duration:.1?}")?;
        }
        Ok(())
    }
}

/// A pid with its start time: a pid alone may be reused by the time it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessIdentity {
    pid: u32,
    start_time: u64,
}

/// One line of the process table.
#[derive(Debug)]
struct Process {
    pid: u32,
    ppid: u32,
    state: char,
    start_time: u64,
    /// argv, split.
    args: Vec<String>,
    command: String,
}

impl Process {
    fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    /// Not a zombie: a zombie holds no mount, cgroup or socket, and its parent reaps it.
    fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }

    /// Whether an argument names `dir` or a file in it.
    fn mentions(&self, dir: &Path) -> bool {
        let dir = dir.display().to_string();
        self.args.iter().any(|arg| {
            arg.strip_prefix(dir.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// A `containerd-shim-runc-v2` started by the containerd on `socket` (it has
    /// `-address <socket>` among its arguments).
    fn is_shim_of(&self, socket: &Path) -> bool {
        self.args
            .first()
            .is_some_and(|program| program.contains("containerd-shim"))
            && self
                .args
                .windows(2)
                .any(|pair| pair[0] == "-address" && Path::new(&pair[1]) == socket)
    }
}

/// Reading and killing processes through `/proc`.
mod proc {
    use super::*;

    /// Every process on the machine (those that vanish while being read are left out).
    pub(super) fn table() -> Vec<Process> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(read)
            .collect()
    }

    pub(super) fn read(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the
        // last ')'. Fields from there on are numbered from 3 (state).
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        let ppid = fields.get(1)?.parse().ok()?;
        // Field 22, starttime.
        let start_time = fields.get(19)?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        Some(Process {
            pid,
            ppid,
            state,
            start_time,
            command: args.join(" "),
            args,
        })
    }

    /// SIGKILLs `processes` (skipping any whose pid now belongs to another process) and waits
    /// until they are gone; returns the ones that would not die.
    pub(super) fn kill_all(processes: &[Process]) -> Vec<String> {
        let targets: Vec<&Process> = processes
            .iter()
            .filter(|process| {
                read(process.pid).is_some_and(|now| now.start_time == process.start_time)
            })
            .collect();
        for process in &targets {
            signal(process.pid, Signal::KILL);
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let alive: Vec<&&Process> = targets
                .iter()
                .filter(|process| {
                    read(process.pid)
                        .is_some_and(|now| now.start_time == process.start_time && now.is_alive())
                })
                .collect();
            if alive.is_empty() {
                return Vec::new();
            }
            if Instant::now() > deadline {
                return alive
                    .iter()
                    .map(|process| {
                        format!(
                            "process {} ({}) still alive after SIGKILL",
                            process.pid, process.command
                        )
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sends `signal` to `pid`; a process that is already gone is no error worth reporting.
fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Mounts, from `/proc/self/mountinfo` (containerd runs in the test's mount namespace).
mod mounts {
    use super::*;

    /// Mount points at or under `dir`, deepest first.
    pub(super) fn under(dir: &Path) -> Vec<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|point| PathBuf::from(unescape(point)))
            .filter(|point| point.starts_with(dir))
            .collect();
        mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
        mounts
    }

    /// Lazily unmounts everything under `dir`, stacked mounts included.
    pub(super) fn unmount_under(dir: &Path) -> Vec<String> {
        // Each round removes the top mount of every stack.
        for _ in 0..8 {
            let mounts = under(dir);
            if mounts.is_empty() {
                return Vec::new();
            }
            for mount in mounts {
                let _ = rustix::mount::unmount(&mount, UnmountFlags::DETACH);
            }
        }
        under(dir)
            .into_iter()
            .map(|mount| format!("could not unmount {}", mount.display()))
            .collect()
    }

    /// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
    fn unescape(field: &str) -> String {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\'
                && let Some(octal) = bytes.get(i + 1..i + 4)
                && let Ok(octal) = std::str::from_utf8(octal)
                && let Ok(byte) = u8::from_str_radix(octal, 8)
            {
                out.push(byte);
                i += 4;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[cfg(test)]
    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}

/// cgroups in every v1 hierarchy (and the v2 one of a hybrid setup).
mod cgroups {
    use super::*;

    /// `/sys/fs/cgroup/<hierarchy>` for each mounted hierarchy (symlinks such as `cpu,cpuacct`
    /// aliases are skipped: their targets are listed too).
    fn hierarchies() -> Vec<PathBuf> {
        subdirectories(Path::new(CGROUP_ROOT))
    }

    /// `cgroup` ("/wedge-test-…") in every hierarchy where it exists.
    pub(super) fn existing(cgroup: &str) -> Vec<PathBuf> {
        let relative = cgroup.trim_start_matches('/');
        if relative.is_empty() {
            return Vec::new();
        }
        hierarchies()
            .into_iter()
            .map(|hierarchy| hierarchy.join(relative))
            .filter(|path| path.is_dir())
            .collect()
    }

    /// The pids in `cgroup` and below it, in any hierarchy.
    pub(super) fn processes(cgroup: &str) -> BTreeSet<u32> {
        let mut pids = BTreeSet::new();
        for top in existing(cgroup) {
            for dir in tree(&top) {
                pids.extend(procs(&dir));
            }
        }
        pids
    }

    /// Removes `cgroup` and every cgroup below it, leaves first, in every hierarchy; kills what
    /// still runs in them.
    pub(super) fn remove(cgroup: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for top in existing(cgroup) {
            for dir in tree(&top).iter().rev() {
                if let Err(error) = remove_one(dir) {
                    problems.push(format!("cgroup {}: {error}", dir.display()));
                }
            }
        }
        problems
    }

    /// `top` and every directory below it, parents before children.
    fn tree(top: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![top.to_path_buf()];
        let mut i = 0;
        while i < dirs.len() {
            let children = subdirectories(&dirs[i]);
            dirs.extend(children);
            i += 1;
        }
        dirs
    }

    fn procs(dir: &Path) -> Vec<u32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// rmdir of a cgroup fails while a process is in it (dying ones included): kill and retry.
    fn remove_one(dir: &Path) -> std::io::Result<()> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => {
                    // A frozen process cannot die.
                    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
                    for pid in procs(dir) {
                        signal(pid, Signal::KILL);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// The NAT rules of the bridge plugin's `ipMasq`: a `CNI-…` chain per pod, jumped to from
/// `POSTROUTING`, each rule commented `name: "<network>" id: "<container>"`. CNI `DEL` removes
/// them; these functions find and remove the ones a pod left when it was not torn down.
mod nat {
    use super::*;

    fn marker(network: &str) -> String {
        format!("name: \"{network}\"")
    }

    /// The rules (`iptables -t nat -S` lines) that mention `network`.
    pub(super) fn rules_of(network: &str) -> Vec<String> {
        let Ok(rules) = run(
            Command::new("iptables").args(["-w", "-t", "nat", "-S"]),
            "listing NAT rules",
        ) else {
            return Vec::new();
        };
        let marker = marker(network).replace('"', "\\\"");
        String::from_utf8_lossy(&rules)
            .lines()
            .filter(|rule| rule.contains(&marker))
            .map(str::to_owned)
            .collect()
    }

    /// Deletes `network`'s jumps from POSTROUTING and its chains.
    pub(super) fn remove_rules(network: &str) -> Vec<String> {
        let rules = rules_of(network);
        if rules.is_empty() {
            return Vec::new();
        }
        let mut problems = Vec::new();
        let mut chains: BTreeSet<String> = rules
            .iter()
            .filter_map(|rule| rule.strip_prefix("-A ")?.split(' ').next())
            .filter(|chain| chain.starts_with("CNI-"))
            .map(str::to_owned)
            .collect();
        // Delete POSTROUTING's jumps by number, last first so the numbers stay valid. (`-S`
        // quotes the comment in a way that would need a shell to feed back.)
        let listing = run(
            Command::new("iptables").args([
                "-w",
                "-t",
                "nat",
                "-L",
                "POSTROUTING",
                "-n",
                "--line-numbers",
            ]),
            "listing POSTROUTING",
        )
        .unwrap_or_default();
        let marker = marker(network);
        let mut jumps: Vec<(u32, String)> = String::from_utf8_lossy(&listing)
            .lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| {
                let mut columns = line.split_whitespace();
                let number = columns.next()?.parse().ok()?;
                Some((number, columns.next()?.to_owned()))
            })
            .collect();
        jumps.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
        for (number, target) in jumps {
            if let Err(error) = run(
                Command::new("iptables").args([
                    "-w",
                    "-t",
                    "nat",
                    "-D",
                    "POSTROUTING",
                    &number.to_string(),
                ]),
                "deleting a POSTROUTING rule",
            ) {
                problems.push(format!("{error:#}"));
            }
            if target.starts_with("CNI-") {
                chains.insert(target);
            }
        }
        for chain in chains {
            for action in ["-F", "-X"] {
                if let Err(error) = run(
                    Command::new("iptables").args(["-w", "-t", "nat", action, &chain]),
                    &format!("removing NAT chain {chain}"),
                ) {
                    problems.push(format!("{error:#}"));
                }
            }
        }
        problems
    }
}

/// libcni's cached results (`/var/lib/cni/results/…`) whose names start with one of `prefixes`.
fn cni_results(prefixes: &[String]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(Path::new(CNI_CACHE_DIR).join("results")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry.file_name().to_str().is_some_and(|name| {
                prefixes
                    .iter()
                    .any(|prefix| name.starts_with(prefix.as_str()))
            })
        })
        .map(|entry| entry.path())
        .collect()
}

fn remove_cni_results(prefixes: &[String]) -> Vec<String> {
    cni_results(prefixes)
        .into_iter()
        .filter_map(|file| {
            std::fs::remove_file(&file)
                .err()
                .map(|error| format!("{}: {error}", file.display()))
        })
        .collect()
}

/// Host-wide state shared by every fixture of the process: which pod subnets are taken, and what
/// to put back when the last fixture is gone.
mod host {
    use super::*;

    struct Shared {
        live: usize,
        /// `net.ipv4.ip_forward` before the first fixture.
        ip_forward: Option<String>,
        /// Shared directories that did not exist before the first fixture.
        absent: Vec<PathBuf>,
        /// Second and third octets of the subnets in use.
        subnets: BTreeSet<[u8; 2]>,
    }

    static SHARED: Mutex<Shared> = Mutex::new(Shared {
        live: 0,
        ip_forward: None,
        absent: Vec::new(),
        subnets: BTreeSet::new(),
    });

    /// The directories that containerd, runc or libcni create on the host and leave behind.
    fn shared_dirs() -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [
            SHIM_SOCKET_DIR,
            "/run/containerd",
            "/var/lib/cni/results",
            CNI_CACHE_DIR,
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        dirs.extend(
            subdirectories(Path::new(CGROUP_ROOT))
                .into_iter()
                .map(|hierarchy| hierarchy.join(NAMESPACE)),
        );
        dirs
    }

    /// Counts a new fixture in and gives it a network nobody else on the machine uses.
    pub(super) fn register(id: &str) -> anyhow::Result<Network> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.live == 0 {
            shared.ip_forward = std::fs::read_to_string(IP_FORWARD).ok();
            shared.absent = shared_dirs()
                .into_iter()
                .filter(|dir| !dir.exists())
                .collect();
        }
        let routes = routes();
        for _ in 0..1000 {
            let random = random_u64().to_le_bytes();
            let octets = [
                SUBNET_SECOND_OCTETS.start()
                    + random[0] % (SUBNET_SECOND_OCTETS.end() - SUBNET_SECOND_OCTETS.start() + 1),
                random[1],
            ];
            let subnet = Ipv4Addr::new(10, octets[0], octets[1], 0);
            // The bridge is named after the subnet: unique together.
            let bridge = format!("wedge{:02x}{:02x}", octets[0], octets[1]);
            if shared.subnets.contains(&octets)
                || routes.iter().any(|route| route.overlaps(subnet))
                || Path::new("/sys/class/net").join(&bridge).exists()
            {
                continue;
            }
            shared.subnets.insert(octets);
            shared.live += 1;
            return Ok(Network {
                name: format!("wedge-{id}"),
                bridge,
                subnet,
                addresses: None,
            });
        }
        bail!("no free 10.200-254.x.0/24 subnet for the pod network")
    }

    /// Counts a fixture out; the last one puts back what all of them changed.
    pub(super) fn unregister(network: &Network) {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        let octets = network.subnet.octets();
        shared.subnets.remove(&[octets[1], octets[2]]);
        shared.live = shared.live.saturating_sub(1);
        if shared.live > 0 {
            return;
        }
        if let Some(before) = shared.ip_forward.take()
            && std::fs::read_to_string(IP_FORWARD).is_ok_and(|now| now != before)
            && let Err(error) = std::fs::write(IP_FORWARD, &before)
        {
            report(&format!("could not restore {IP_FORWARD}: {error}"));
        }
        let mut absent = std::mem::take(&mut shared.absent);
        absent.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        for dir in absent {
            // Only empty ones: anything inside belongs to someone else (another process's
            // containerd, say), and rmdir refuses to remove it.
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => tracing::debug!(dir = %dir.display(), "left in place: {error}"),
            }
        }
    }

    /// An IPv4 route of the host's main table.
    struct Route {
        destination: u32,
        mask: u32,
    }

    impl Route {
        /// Whether the /24 at `subnet` overlaps this route (the default route overlaps nothing:
        /// it is where traffic goes when no other route matches).
        fn overlaps(&self, subnet: Ipv4Addr) -> bool {
            if self.mask == 0 {
                return false;
            }
            let mask = self.mask & 0xffff_ff00;
            u32::from(subnet) & mask == self.destination & mask
        }
    }

    /// The routes in `/proc/net/route`, whose addresses are hex in host (little-endian) order.
    fn routes() -> Vec<Route> {
        let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let parse = |field: &str| u32::from_str_radix(field, 16).ok().map(u32::from_be);
                Some(Route {
                    destination: parse(fields.get(1)?)?,
                    mask: parse(fields.get(7)?)?,
                })
            })
            .collect()
    }

    #[cfg(test)]
    #[test]
    fn routes_overlap_by_prefix() {
        let route = |destination: [u8; 4], mask: [u8; 4]| Route {
            destination: u32::from(Ipv4Addr::from(destination)),
            mask: u32::from(Ipv4Addr::from(mask)),
        };
        let subnet = Ipv4Addr::new(10, 230, 7, 0);
        assert!(route([10, 0, 0, 0], [255, 0, 0, 0]).overlaps(subnet));
        assert!(route([10, 230, 7, 0], [255, 255, 255, 0]).overlaps(subnet));
        assert!(route([10, 230, 7, 128], [255, 255, 255, 128]).overlaps(subnet));
        assert!(!route([10, 230, 8, 0], [255, 255, 255, 0]).overlaps(subnet));
        assert!(!route([0, 0, 0, 0], [0, 0, 0, 0]).overlaps(subnet));
    }
}

/// Connects a CRI (gRPC) channel to the unix socket `socket`.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let path = socket.to_path_buf();
    // The URI only names the channel: the connector always dials the socket.
    Endpoint::from_static("http://containerd.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to CRI at {}", socket.display()))
}

/// CRI `Version`: answers only once the CRI plugin has initialised.
async fn cri_version(socket: &Path) -> anyhow::Result<cri::VersionResponse> {
    let mut runtime = RuntimeServiceClient::new(connect(socket).await?);
    let version = tokio::time::timeout(
        Duration::from_secs(2),
        runtime.version(cri::VersionRequest {
            version: "v1".to_owned(),
        }),
    )
    .await
    .context("CRI Version timed out")??;
    Ok(version.into_inner())
}

/// Stops and removes every pod sandbox; returns what failed.
async fn remove_all_pods(socket: &Path) -> anyhow::Result<Vec<String>> {
    let mut runtime = RuntimeServiceClient::new(connect(socket).await?);
    let pods = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let mut problems = Vec::new();
    for pod in pods {
        let id = pod.id;

        if let Err(status) = runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        {
            problems.push(format!("StopPodSandbox {id}: {status}"));
        }
        if let Err(status) = runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        {
            problems.push(format!("RemovePodSandbox {id}: {status}"));
        }
    }
    Ok(problems)
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own: the fixture's
/// blocking API (start, Drop) is called from async tests, where starting a runtime on the
/// caller's thread would panic.
fn block_on<F>(future: F) -> anyhow::Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(future))
            })
            .join()
            .map_err(|_| anyhow!("the CRI client thread panicked"))?
    })
}

/// The subdirectories of `dir` (not following symlinks); none if it cannot be read.
fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .collect()
}

/// Logs a cleanup problem where it will be seen: on stderr, which the test harness shows for a
/// failing test (most tests install no tracing subscriber), and as a tracing warning.
fn report(problem: &str) {
    eprintln!("wedge-testkit: {problem}");
    tracing::warn!("{problem}");
}

/// Where fixture directories go: `/dev/shm` if it is a tmpfs with room, else the temp dir.
///
/// On this machine's disk (ext4 mounted with `discard`) containerd's fsyncs and the final
/// `rm -rf` dominate. Medians of 10 fixtures on 2026-12-04, disk against tmpfs: start (pause
/// import included) 490 against 270 ms, drop with one running pod 800 against 380 ms, drop with
/// none 170 against 38 ms, importing busybox 500 against 180 ms. A fixture holds a few MiB.
fn state_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match rustix::fs::statfs(shm) {
        Ok(stat)
            if i128::from(stat.f_type) == TMPFS_MAGIC
                && stat
                    .f_bavail
                    .saturating_mul(u64::try_from(stat.f_bsize).unwrap_or(0))
                    >= TMPFS_MIN_FREE =>
        {
            shm.to_path_buf()
        }
        _ => std::env::temp_dir(),
    }
}

fn containerd_binary() -> PathBuf {
    let debian = Path::new("/usr/bin/containerd");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("containerd")
    }
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> String {
    toml_quote(&path.display().to_string())
}

fn toml_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
