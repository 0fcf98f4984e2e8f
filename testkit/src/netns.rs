//! A network namespace of the test's own, for faults the kernel makes: a process run inside it
//! (`ip netns exec`) reaches the world only through listeners the test binds inside it and
//! serves from outside, and iptables rules inside it drop a share of those connections' packets
//! (the `statistic` match: these machines' kernels lack `sch_netem`, but real loss needs no
//! qdisc). TCP then does what it does on a lossy link: retransmits, backs off, stalls.
//!
//! A listener is bound inside by a short-lived thread that moves into the namespace (`setns`)
//! and binds: the socket stays in the namespace, and the test's runtime accepts on it and dials
//! out from the host's. Dropping the [`NetNs`] deletes the namespace, its rules with it.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// A named network namespace (`/var/run/netns/<name>`) with only its loopback, up, at an
/// Ethernet MTU (so loss hits segments the size they are on a real link), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes a namespace named after `purpose`, this process and a counter.
    pub fn new(purpose: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wedge-{purpose}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "mtu", "1500", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `command` as it would run, but inside the namespace: `ip netns exec` execs it, so the
    /// child's pid is the program's own.
    pub fn command(&self, command: &Command) -> Command {
        let mut inside = Command::new("ip");
        inside
            .args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => inside.env(key, value),
                None => inside.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            inside.current_dir(dir);
        }
        inside
    }

    /// A TCP listener at `addr` inside the namespace (nonblocking, for tokio).
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<TcpListener> {
                    let ns = std::fs::File::open(&path).with_context(|| path.clone())?;
                    // Only this thread moves, and it ends right after binding.
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&ns),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .context("setns into the test's namespace")?;
                    let listener = TcpListener::bind(addr).with_context(|| addr.to_string())?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the binding thread panicked"))?
        })
    }

    /// Drops `share` (0 to 1) of the TCP packets to and from `port` inside the namespace, each
    /// way, at random.
    pub fn lose(&self, port: u16, share: f64) -> anyhow::Result<()> {
        let port = port.to_string();
        let share = format!("{share}");
        for direction in ["--dport", "--sport"] {
            let status = Command::new("ip")
                .args(["netns", "exec", &self.name, "iptables", "-A", "INPUT"])
                .args(["-p", "tcp", direction, &port])
                .args([
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &share,
                ])
                .args(["-j", "DROP"])
                .status()
                .context("iptables")?;
            if !status.success() {
                bail!("iptables refused the loss rule: {status}");
            }
        }
        Ok(())
    }

    /// Removes every loss rule: the link is clean again.
    pub fn heal(&self) -> anyhow::Result<()> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "iptables", "-F", "INPUT"])
            .status()
            .context("iptables")?;
        if !status.success() {
            bail!("iptables could not flush the loss rules: {status}");
        }
        Ok(())
    }

    /// Packets the loss rules dropped so far.
    pub fn lost(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "iptables", "-L", "INPUT", "-v", "-x", "-n",
            ])
            .output()
            .context("iptables")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e:#}", self.name);
        }
    }
}

fn ip(args: &[impl AsRef<OsStr>]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
