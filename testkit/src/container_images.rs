//! Ordinary Linux container images for the containerd tests, built on this machine because no
//! public registry is reachable from it: a `pause` image (the pod sandbox's process) and a
//! `busybox` image (a shell and the usual tools, for the containers themselves).
//!
//! Both are made from what Debian installs: `gcc` compiles the pause program statically, Debian's
//! `busybox-static` provides busybox, `umoci` packs each rootfs into an OCI image layout and
//! `skopeo` turns that into a docker archive (what `ctr images import` takes) or pushes it to a
//! [`Registry`].
//!
//! Start with [`busybox`] / [`pause`] (built once per process) and [`push_busybox`]. Builds are
//! cached in `$TMPDIR/wedge-testkit-images/<name>-<key>`, where the key hashes everything that goes
//! into the image (the pause source, the busybox binary, the recipe), so later test processes reuse
//! them and a changed input builds afresh. A build is written to a scratch directory and renamed
//! into place, so concurrent test processes never see half an image.

use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::registry::Registry;

/// The pause image's reference, as imported into containerd and named in its `sandbox_image`.
pub const PAUSE_IMAGE: &str = "localhost/pause:3.9";
/// The reference the busybox image carries in its docker archive ([`BuiltImage::docker_archive`]).
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:1.35";

/// Bumped whenever the way an image is built changes, so cached builds of the old recipe are not
/// reused.
const RECIPE: &str = "wedge-testkit container images v1";

/// The tag of both images inside their OCI layouts.
const LAYOUT_TAG: &str = "latest";

/// The pause program: PID 1 of every pod sandbox. It holds the pod's namespaces open, exits at
/// once when asked to stop, and reaps whatever gets reparented to it.
const PAUSE_C: &str = r#"#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
"#;

/// Debian's statically linked busybox (package `busybox-static`).
const BUSYBOX_BINARY: &str = "/bin/busybox";

/// An image built here: an OCI image layout plus the same image as a docker archive.
#[derive(Debug)]
pub struct BuiltImage {
    dir: PathBuf,
    reference: &'static str,
}

impl BuiltImage {
    /// The OCI image layout (holding tag [`BuiltImage::layout_tag`]).
    pub fn layout_dir(&self) -> PathBuf {
        self.dir.join("oci")
    }

    /// The tag of the image inside [`BuiltImage::layout_dir`].
    pub fn layout_tag(&self) -> &'static str {
        LAYOUT_TAG
    }

    /// The image as a docker archive named [`BuiltImage::reference`], for `ctr images import`.
    pub fn docker_archive(&self) -> PathBuf {
        self.dir.join("image.tar")
    }

    /// The name the docker archive gives the image once imported ([`PAUSE_IMAGE`] or
    /// [`BUSYBOX_IMAGE`]).
    pub fn reference(&self) -> &'static str {
        self.reference
    }

    /// Pushes the image to `registry` as `name_tag` ("busybox:1.35", "library/busybox:1.35") and
    /// returns the full reference ("127.0.0.1:PORT/busybox:1.35").
    pub fn push(&self, registry: &Registry, name_tag: &str) -> anyhow::Result<String> {
        self.skopeo_push(registry, name_tag, None)
    }

    /// [`BuiltImage::push`] to a registry started with
    /// [`Registry::start_with_auth`](crate::registry::Registry::start_with_auth).
    pub fn push_with_auth(
        &self,
        registry: &Registry,
        name_tag: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        self.skopeo_push(registry, name_tag, Some((user, password)))
    }

    fn skopeo_push(
        &self,
        registry: &Registry,
        name_tag: &str,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        let reference = format!("{}/{name_tag}", registry.host());
        let mut skopeo = Command::new("skopeo");
        // --insecure-policy: no /etc/containers/policy.json is needed to copy our own images.
        skopeo.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = credentials {
            skopeo.arg(format!("--dest-creds={user}:{password}"));
        }
        skopeo
            .arg(format!("oci:{}:{LAYOUT_TAG}", self.layout_dir().display()))
            .arg(format!("docker://{reference}"));
        run(
            &mut skopeo,
            &format!("pushing {} to {reference}", self.reference),
        )?;
        Ok(reference)
    }
}

/// The pause image, built the first time it is asked for in this process (or taken from the
/// cache). Blocks while it builds: from async code, call it through `spawn_blocking`.
pub fn pause() -> anyhow::Result<&'static BuiltImage> {
    static BUILT: Mutex<Option<&'static BuiltImage>> = Mutex::new(None);
    once(&BUILT, || {
        let key = content_key(&[RECIPE.as_bytes(), PAUSE_C.as_bytes()]);
        cached("pause", &key, PAUSE_IMAGE, build_pause)
    })
}

/// The busybox image, built the first time it is asked for in this process (or taken from the
/// cache): `/bin/busybox` with a symlink per applet in `/bin`, `/etc/passwd` and `/etc/group`
/// with root and nobody (65534), empty `/tmp`, `/proc`, `/sys` and `/dev`; `Cmd` is `/bin/sh` and
/// `PATH=/bin`. Blocks while it builds.
pub fn busybox() -> anyhow::Result<&'static BuiltImage> {
    static BUILT: Mutex<Option<&'static BuiltImage>> = Mutex::new(None);
    once(&BUILT, || {
        let binary = std::fs::read(BUSYBOX_BINARY).with_context(|| {
            format!("reading {BUSYBOX_BINARY} (apt-get install busybox-static)")
        })?;
        let key = content_key(&[RECIPE.as_bytes(), &binary]);
        cached("busybox", &key, BUSYBOX_IMAGE, build_busybox)
    })
}

/// Builds the busybox image if needed and pushes it to `registry` as `name_tag`; returns the full
/// reference ("127.0.0.1:PORT/busybox:1.35"). To serve `docker.io/library/busybox:1.35` through a
/// mirror, push it as "library/busybox:1.35".
pub fn push_busybox(registry: &Registry, name_tag: &str) -> anyhow::Result<String> {
    busybox()?.push(registry, name_tag)
}

/// [`push_busybox`] to a registry that wants HTTP basic auth.
pub fn push_busybox_with_auth(
    registry: &Registry,
    name_tag: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    busybox()?.push_with_auth(registry, name_tag, user, password)
}

/// Runs `build` once per process: later calls get the same image. A Mutex rather than a
/// OnceLock, so a failed build is not cached and concurrent callers wait for the one build.
fn once(
    slot: &Mutex<Option<&'static BuiltImage>>,
    build: impl FnOnce() -> anyhow::Result<BuiltImage>,
) -> anyhow::Result<&'static BuiltImage> {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(image) = *slot {
        return Ok(image);
    }
    let image: &'static BuiltImage = Box::leak(Box::new(build()?));
    *slot = Some(image);
    Ok(image)
}

/// The first 16 hex digits of the SHA-256 of `parts` (length-prefixed, so parts cannot run into
/// each other).
fn content_key(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())[..16].to_owned()
}

/// The image `name` with content key `key` from the cache, built into it by `build` if missing.
fn cached(
    name: &str,
    key: &str,
    reference: &'static str,
    build: fn(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<BuiltImage> {
    let cache = std::env::temp_dir().join("wedge-testkit-images");
    let dir = cache.join(format!("{name}-{key}"));
    if !dir.join("image.tar").exists() {
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating the image cache {}", cache.display()))?;
        // The scratch directory sits beside its final place, so the rename stays on one
        // filesystem and is atomic.
        let scratch = tempfile::Builder::new()
            .prefix(&format!(".{name}-{key}-"))
            .tempdir_in(&cache)?;
        build(scratch.path()).with_context(|| format!("building the {name} image"))?;
        let built = scratch.keep();
        if let Err(error) = std::fs::rename(&built, &dir) {
            // Another process may have finished the same build first: then use its copy.
            let _ = std::fs::remove_dir_all(&built);
            if !dir.join("image.tar").exists() {
                return Err(error)
                    .with_context(|| format!("moving the {name} image into the cache"));
            }
        }
        tracing::debug!(image = %reference, dir = %dir.display(), "built container image");
    }
    Ok(BuiltImage { dir, reference })
}

/// Compiles the pause program and packs it as an image whose entrypoint is `/pause`.
fn build_pause(dir: &Path) -> anyhow::Result<()> {
    let source = dir.join("pause.c");
    let binary = dir.join("pause");
    std::fs::write(&source, PAUSE_C)?;
    run(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&binary)
            .arg(&source),
        "compiling pause.c (is gcc with a static libc installed? `apt-get install gcc libc6-dev`)",
    )?;
    pack(
        dir,
        PAUSE_IMAGE,
        &["--config.entrypoint", "/pause"],
        |rootfs| {
            std::fs::copy(&binary, rootfs.join("pause"))?;
            Ok(())
        },
    )
}

/// Packs Debian's static busybox with its applets, users and the usual empty directories.
fn build_busybox(dir: &Path) -> anyhow::Result<()> {
    let list = run(
        Command::new(BUSYBOX_BINARY).arg("--list"),
        "listing busybox's applets",
    )?;
    let list = String::from_utf8(list).context("busybox --list printed something not UTF-8")?;
    pack(
        dir,
        BUSYBOX_IMAGE,
        &["--config.cmd", "/bin/sh", "--config.env", "PATH=/bin"],
        |rootfs| {
            let bin = rootfs.join("bin");
            std::fs::create_dir_all(&bin)?;
            std::fs::copy(BUSYBOX_BINARY, bin.join("busybox"))?;
            for applet in list.lines().map(str::trim) {
                // An applet name is a plain file name; anything else would escape `bin/`.
                if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                    continue;
                }
                symlink("busybox", bin.join(applet))
                    .with_context(|| format!("linking applet {applet:?}"))?;
            }
            let etc = rootfs.join("etc");
            std::fs::create_dir_all(&etc)?;
            std::fs::write(
                etc.join("passwd"),
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            )?;
            std::fs::write(etc.join("group"), "root:x:0:\nnobody:x:65534:\n")?;
            for empty in ["tmp", "proc", "sys", "dev"] {
                std::fs::create_dir_all(rootfs.join(empty))?;
            }
            std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
            Ok(())
        },
    )
}

/// Makes an image from scratch with umoci: an empty image, its rootfs unpacked and filled by
/// `fill`, repacked as one layer, configured with `config_args`; then a docker archive named
/// `reference` beside the layout (`dir/oci`, `dir/image.tar`).
fn pack(
    dir: &Path,
    reference: &str,
    config_args: &[&str],
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let layout = dir.join("oci");
    let image = format!("{}:{LAYOUT_TAG}", layout.display());
    let bundle = dir.join("bundle");
    run(
        Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout),
        "umoci init (apt-get install umoci)",
    )?;
    run(
        Command::new("umoci").args(["new", "--image", &image]),
        "umoci new",
    )?;
    run(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
        "umoci unpack",
    )?;
    fill(&bundle.join("rootfs")).context("filling the rootfs")?;
    run(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
        "umoci repack",
    )?;
    run(
        Command::new("umoci")
            .args(["config", "--image", &image])
            .args(config_args),
        "umoci config",
    )?;
    // Only the packed image is kept.
    std::fs::remove_dir_all(&bundle)?;
    run(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("oci:{image}"))
            .arg(format!(
                "docker-archive:{}:{reference}",
                dir.join("image.tar").display()
            )),
        "skopeo copy to a docker archive (apt-get install skopeo)",
    )?;
    Ok(())
}

/// Runs `command`, failing with its stderr unless it succeeds; returns its stdout.
pub(crate) fn run(command: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let output = command
        .output()
        .with_context(|| format!("{what}: could not run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what}: {:?} failed ({}): {}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// A random number that differs between calls and processes, for names that must not clash
/// (std's hasher keys are random per process and per `RandomState`).
pub(crate) fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image config of `image`, as skopeo reads it from the layout.
    fn config(image: &BuiltImage) -> anyhow::Result<serde_json::Value> {
        let config = run(
            Command::new("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("oci:{}:{LAYOUT_TAG}", image.layout_dir().display())),
            "skopeo inspect",
        )?;
        Ok(serde_json::from_slice(&config)?)
    }

    #[test]
    fn images_are_built_once_and_carry_their_config() -> anyhow::Result<()> {
        let busybox = busybox()?;
        assert!(std::ptr::eq(busybox, super::busybox()?), "built once");
        let pause = pause()?;
        for image in [busybox, pause] {
            assert!(image.docker_archive().is_file(), "{image:?}");
        }
        let busybox = config(busybox)?;
        assert_eq!(busybox["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
        assert_eq!(busybox["config"]["Env"], serde_json::json!(["PATH=/bin"]));
        let pause = config(pause)?;
        assert_eq!(pause["os"], "linux");
        assert_eq!(pause["config"]["Entrypoint"], serde_json::json!(["/pause"]));
        Ok(())
    }

    #[test]
    fn random_numbers_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
