//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) serving plain HTTP
//! on a free port of 127.0.0.1, storing blobs in a temporary directory.
//!
//! Start with [`Registry::start`] or [`Registry::start_with_auth`]; the process is killed when the
//! [`Registry`] is dropped. Its log is kept in [`Registry::log_path`] for post-mortems.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long a registry may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Free ports are found by binding port 0 and letting go, so another process may take one before
/// the registry binds it: try again with another port this many times.
const START_ATTEMPTS: usize = 5;

/// A running `docker-registry` process; dropping it kills the process and deletes its storage.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    host: String,
    storage: PathBuf,
    log_path: PathBuf,
    // Dropped after `Drop::drop` has killed the process that writes into it.
    _dir: TempDir,
}

impl Registry {
    /// Starts a registry that anyone may pull from and push to.
    pub fn start() -> anyhow::Result<Registry> {
        Self::spawn(None)
    }

    /// Starts a registry that wants HTTP basic auth (an htpasswd realm) for every request.
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Registry> {
        Self::spawn(Some((user, password)))
    }

    fn spawn(auth: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("wedge-registry-")
            .tempdir()?;
        let auth_section = match auth {
            Some((user, password)) => {
                // Cost 4, the minimum: this password protects nothing, and tests want speed.
                let hash = bcrypt::hash(password, 4).context("hashing the htpasswd password")?;
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: wedge-testkit\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let log_path = dir.path().join("registry.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let host = format!("127.0.0.1:{port}");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  formatter: text\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {host}\n{auth_section}",
                    storage.display()
                ),
            )?;
            let log = File::create(&log_path)?;
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context(
                    "starting docker-registry (is it installed? `apt-get install docker-registry`)",
                )?;
            match wait_ready(&mut child, &host, &log_path) {
                Ok(()) => {
                    tracing::debug!(%host, "registry started");
                    return Ok(Registry {
                        child,
                        host,
                        storage,
                        log_path,
                        _dir: dir,
                    });
                }
                Err(error) => {
                    tracing::warn!(%host, "registry did not start: {error:#}");
                    // Best effort: the child may have exited already.
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("START_ATTEMPTS > 0"))
    }

    /// "127.0.0.1:PORT", as used in image references.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// The registry's filesystem storage root (it holds `docker/registry/v2/...`).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The registry's own log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Overwrites the stored data of blob `digest` ("sha256:<hex>") with other bytes of the same
    /// length, so a client pulling it gets the right size but a digest mismatch.
    pub fn corrupt_blob(&self, digest: &str) -> anyhow::Result<()> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64)
            .with_context(|| format!("not a sha256 digest: {digest}"))?;
        let path = self
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let data =
            std::fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?;
        if data.is_empty() {
            bail!("blob {digest} is empty: no bytes to corrupt");
        }
        // Flipping every bit changes every byte and keeps the length.
        let corrupted: Vec<u8> = data.iter().map(|byte| !byte).collect();
        std::fs::write(&path, corrupted).with_context(|| format!("writing blob {}", path.display()))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Nothing useful to do if it already died.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the registry logs that it listens (proof that it, not another process, holds the
/// port) and then answers `GET /v2/`.
fn wait_ready(child: &mut Child, host: &str, log_path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            bail!("docker-registry exited with {status}:\n{log}");
        }
        let listening = std::fs::read_to_string(log_path)
            .is_ok_and(|log| log.contains(&format!("listening on {host}")));
        if listening && http_get(host, "/v2/", &[]).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "docker-registry on {host} not ready after {READY_TIMEOUT:?}; log in {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal blocking `GET`, returning the status code and the body.
///
/// It speaks HTTP/1.0 so the server closes the connection after the body and never uses chunked
/// encoding: reading to the end is the whole body.
pub(crate) fn http_get(
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let header_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("HTTP response without end of headers")?;
    let status_line = String::from_utf8_lossy(&response[..header_end]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad HTTP status line in {status_line:?}"))?;
    Ok((status, response[header_end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{self, Image, WasmLayout};
    use sha2::{Digest, Sha256};

    const WASM: &[u8] = b"\0asm\x0d\0\x01\0";

    #[tokio::test]
    async fn corrupted_blob_is_served_with_the_wrong_digest() -> anyhow::Result<()> {
        let registry = Registry::start()?;
        let image = Image::wasm(WASM, WasmLayout::CncfArtifact);
        oci::push(&registry.host(), "wedge/corrupt", "v1", &image).await?;
        let digest = image.layers[0].digest();
        registry.corrupt_blob(&digest)?;
        let (status, body) = http_get(
            &registry.host(),
            &format!("/v2/wedge/corrupt/blobs/{digest}"),
            &[],
        )?;
        assert_eq!(status, 200);
        assert_eq!(body.len(), WASM.len());
        assert_ne!(
            format!("sha256:{}", hex::encode(Sha256::digest(&body))),
            digest
        );
        Ok(())
    }

    #[tokio::test]
    async fn auth_registry_wants_credentials() -> anyhow::Result<()> {
        let registry = Registry::start_with_auth("edge", "s3cret")?;
        assert_eq!(http_get(&registry.host(), "/v2/", &[])?.0, 401);
        let image = Image::wasm(WASM, WasmLayout::ContentLayer);
        assert!(
            oci::push(&registry.host(), "wedge/private", "v1", &image)
                .await
                .is_err()
        );
        assert!(
            oci::push_with_auth(
                &registry.host(),
                "wedge/private",
                "v1",
                &image,
                "edge",
                "wrong"
            )
            .await
            .is_err()
        );
        oci::push_with_auth(
            &registry.host(),
            "wedge/private",
            "v1",
            &image,
            "edge",
            "s3cret",
        )
        .await?;
        Ok(())
    }
}
