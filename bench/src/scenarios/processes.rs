//! Wedge's own binaries as the processes the cloud-edge scenarios measure. They are found beside
//! the bench binary (`cargo build --release -p wedge-cli` builds them), run with their logs in a
//! file, killed when dropped, and their resident memory read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A value in KiB from `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`...).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// A value in KiB from `/proc/<pid>/smaps_rollup` (`Pss:`, `Rss:`...). PSS shares each page among
/// the processes that map it, so PSS figures of several processes add up without counting shared
/// code and libraries twice.
pub fn rollup_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/smaps_rollup"))
}

/// The host's `MemAvailable` in KiB: what the kernel could hand out without swapping, so kernel
/// memory (page tables, slab, tmpfs files) counts as well as processes' own pages.
pub fn mem_available_kib() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no MemAvailable in /proc/meminfo")
}

/// A free port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(wedge_testkit::wait::try_free_port()?)
}

/// Waits until something listens on `addr`.
pub async fn wait_listening(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A `cloudcore` (embedded API server, control plane, hub) and one `edgecore` joined to it with
/// a token, as the cloud-edge scenarios run them, their data and logs under `dir`.
pub struct CloudAndEdge {
    /// cloudcore.
    pub cloud: Daemon,
    /// edgecore.
    pub edge: Daemon,
    /// A client of the embedded API server, as its admin.
    pub client: kube::Client,
}

impl CloudAndEdge {
    /// Starts cloudcore with `cloud_args` besides its root and ports, waits for its hub, makes a
    /// join token and starts edgecore as `node` with `edge_args` besides its root, hub, name,
    /// address and token. Does not wait for the edge: scenarios wait for what they need.
    pub async fn start(
        dir: &Path,
        node: &str,
        cloud_args: &[&str],
        edge_args: &[&str],
    ) -> anyhow::Result<Self> {
        let root = dir.display().to_string();
        let hub = format!("127.0.0.1:{}", free_port()?);
        let api = format!("127.0.0.1:{}", free_port()?);
        let stream = format!("127.0.0.1:{}", free_port()?);
        let cloud_root = format!("{root}/cloud");
        let mut args = vec![
            "--root",
            &cloud_root,
            "--listen",
            &hub,
            "--apiserver-listen",
            &api,
            "--stream-listen",
            &stream,
        ];
        args.extend_from_slice(cloud_args);
        let cloud = Daemon::spawn("cloudcore", &args, &dir.join("cloudcore.log"))?;
        wait_listening(&hub, Duration::from_secs(60)).await?;
        let client = wedge_cli::kube_client(&dir.join("cloud/apiserver/admin.kubeconfig")).await?;
        let token = output(
            "wedge",
            &["--root", &cloud_root, "token", "create", "--ttl", "1h"],
        )?;
        let edge_root = format!("{root}/edge");
        let mut args = vec![
            "--root",
            &edge_root,
            "--cloud",
            &hub,
            "--node",
            node,
            "--node-ip",
            "127.0.0.1",
            "--token",
            &token,
        ];
        args.extend_from_slice(edge_args);
        let edge = Daemon::spawn("edgecore", &args, &dir.join("edgecore.log"))?;
        Ok(Self {
            cloud,
            edge,
            client,
        })
    }
}

/// One of Wedge's binaries, running.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `binary` (`cloudcore`, `edgecore`, `wedge`) with `args`, its stderr in `log`.
    pub fn spawn(binary: &str, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(binary_path(binary)?)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    /// Its resident memory in KiB, failing (with its log) if it has exited.
    pub fn rss_kib(&mut self) -> anyhow::Result<u64> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            anyhow::bail!("{} exited ({status}): {log}", self.log.display());
        }
        status_kib(self.child.id(), "VmRSS:")
    }

    /// How many file descriptors it holds open (sockets, files), failing if it has exited.
    pub fn open_fds(&mut self) -> anyhow::Result<u64> {
        self.rss_kib()?;
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count() as u64)
    }

    /// How many threads it runs, failing if it has exited.
    pub fn threads(&mut self) -> anyhow::Result<u64> {
        self.rss_kib()?;
        status_kib(self.child.id(), "Threads:")
    }

    /// The CPU time it has used, user and system, failing if it has exited.
    pub fn cpu_time(&mut self) -> anyhow::Result<Duration> {
        self.rss_kib()?;
        cpu_time_of(self.child.id())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its proportional set size in KiB (see [`rollup_kib`]), failing if it has exited.
    pub fn pss_kib(&mut self) -> anyhow::Result<u64> {
        self.rss_kib()?;
        rollup_kib(self.child.id(), "Pss:")
    }

    /// Its resident memory split as `(anonymous, file-backed)` in KiB: what it allocated, and
    /// the pages of its binary and libraries it touched (shared with other processes).
    pub fn rss_split_kib(&mut self) -> anyhow::Result<(u64, u64)> {
        self.rss_kib()?;
        let pid = self.child.id();
        Ok((status_kib(pid, "RssAnon:")?, status_kib(pid, "RssFile:")?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` to its end and returns its stdout.
pub fn output(binary: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary_path(binary)?).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn binary_path(binary: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the bench binary's directory")?
        .join(binary);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build Wedge's binaries beside the bench first (cargo build --release -p wedge-cli)",
        path.display()
    );
    Ok(path)
}

/// The CPU time process `pid` has used, all its threads, user and system.
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    /// `/proc` counts in USER_HZ: 100 on x86 and Arm Linux.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold anything:
    // the first is the state (field 3 of proc(5)), so utime (14) and stime (15) are 11, 12.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .with_context(|| format!("/proc/{pid}/stat: {stat}"))?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: {stat}"))
    };
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}
