//! A real MQTT broker for tests: Debian's `mosquitto` on a free port of 127.0.0.1, anonymous,
//! without persistence, logging to a file (its standard output is buffered).
//!
//! The process is killed when the [`Mosquitto`] is dropped; its log stays readable until then
//! through [`Mosquitto::log`]. As root mosquitto drops to the `mosquitto` user, so its directory
//! is made readable to everyone.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long mosquitto may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// A free port found by binding port 0 may be taken before mosquitto binds it: tries.
const START_ATTEMPTS: usize = 5;

/// A running mosquitto; dropping it kills the process.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

fn binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

impl Mosquitto {
    /// Starts a broker on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Starts a broker that authenticates: `password_file` (mosquitto_passwd's format) and
    /// `acl_file` texts, `allow_anonymous false`, and `use_username_as_clientid true`, so that a
    /// login's client id is its own.
    pub fn start_secured(password_file: &str, acl_file: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((password_file, acl_file)))
    }

    fn start_with(secured: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(secured) {
                Ok(m) => return Ok(m),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    fn try_start(secured: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wedge-mosquitto-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.path().join("mosquitto.log");
        let config = dir.path().join("mosquitto.conf");
        let access = match secured {
            None => "allow_anonymous true\n".to_owned(),
            Some((passwords, acl)) => {
                let (p, a) = (dir.path().join("passwd"), dir.path().join("acl"));
                for (path, text) in [(&p, passwords), (&a, acl)] {
                    std::fs::write(path, text)?;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
                }
                format!(
                    "allow_anonymous false\npassword_file {}\nacl_file {}\nuse_username_as_clientid true\n",
                    p.display(),
                    a.display()
                )
            }
        };
        // `set_tcp_nodelay`, as the README tells operators: without it mosquitto's small
        // publishes can wait up to 40 ms on Nagle's algorithm.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\n{access}persistence false\nset_tcp_nodelay true\nlog_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\n",
                log.display()
            ),
        )?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto)")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mosquitto exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("mosquitto did not listen on {port} within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
