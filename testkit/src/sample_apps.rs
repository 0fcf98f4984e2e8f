//! Builds the sample apps and test guests (`sample-apps/`, a workspace of its own) for
//! `wasm32-wasip2`, so tests run against the real components rather than checked-in binaries.
//!
//! The build runs once per process; later calls reuse it. Cargo's own lock on the target directory
//! serialises builds between test processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, bail};

/// The built guests: `<repo>/sample-apps/target/wasm32-wasip2/release/`.
#[derive(Debug)]
pub struct SampleApps {
    dir: PathBuf,
}

impl SampleApps {
    /// The component built from the guest crate `name`, with dashes as underscores: "hello",
    /// "telemetry", "fan_handler", "misbehave".
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    /// The bytes of [`SampleApps::path`].
    pub fn bytes(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(name);
        std::fs::read(&path).with_context(|| format!("reading sample app {}", path.display()))
    }
}

/// The root of the Wedge repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit crate sits one level below the repository root")
        .to_path_buf()
}

/// Builds every sample app (release, `wasm32-wasip2`) the first time it is called in this process.
///
/// This blocks while cargo runs: from async code, call it through `spawn_blocking`.
pub fn build() -> anyhow::Result<&'static SampleApps> {
    // A Mutex rather than a OnceLock: a failed build is not cached, and concurrent callers wait
    // for the one build instead of racing cargo.
    static BUILT: Mutex<Option<&'static SampleApps>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(apps) = *built {
        return Ok(apps);
    }
    let sample_apps = repo_root().join("sample-apps");
    let target_dir = sample_apps.join("target");
    // An explicit --target-dir, so a CARGO_TARGET_DIR in the environment cannot move the output.
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(sample_apps.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .context("running cargo to build the sample apps")?;
    if !status.success() {
        bail!(
            "building the sample apps failed ({status}); see cargo's output above. If the target \
             is missing: `rustup target add wasm32-wasip2`"
        );
    }
    let apps: &'static SampleApps = Box::leak(Box::new(SampleApps {
        dir: target_dir.join("wasm32-wasip2").join("release"),
    }));
    *built = Some(apps);
    Ok(apps)
}

/// Builds the sample apps (once per process) and pushes the component `name` to the registry
/// at `registry_host` as `samples/<name, dashes for underscores>:1`, a Wasm artifact as
/// `wasm-tools`/`oras` push one; returns that reference.
pub async fn push(registry_host: &str, name: &str) -> anyhow::Result<String> {
    let apps = tokio::task::spawn_blocking(build)
        .await
        .context("the sample apps' build panicked")??;
    let wasm = apps.bytes(name)?;
    let repository = format!("samples/{}", name.replace('_', "-"));
    crate::oci::push(
        registry_host,
        &repository,
        "1",
        &crate::oci::Image::wasm(&wasm, crate::oci::WasmLayout::CncfArtifact),
    )
    .await?;
    Ok(format!("{registry_host}/{repository}:1"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_components() -> anyhow::Result<()> {
        let apps = super::build()?;
        for name in ["hello", "telemetry", "fan_handler", "misbehave"] {
            let bytes = apps.bytes(name)?;
            // A component, not a core module: magic, then version 0x0d and layer 1.
            assert_eq!(bytes[..8], *b"\0asm\x0d\0\x01\0", "{name}");
        }
        assert!(std::ptr::eq(apps, super::build()?), "built once");
        Ok(())
    }
}
