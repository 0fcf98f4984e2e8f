//! Builds the container images the tests run (a pause image and busybox, both from what Debian
//! installs: see `wedge_testkit::container_images`) and copies their docker archives into a
//! directory, as `pause.tar` (`localhost/pause:3.9`) and `busybox.tar` (`localhost/busybox:1.35`).
//!
//! `scripts/demo` imports them into the containerd it runs for `wedge up`, so the sample container
//! pod starts on a machine that reaches no registry, from the same recipe the tests use.

use std::path::PathBuf;

use anyhow::Context;
use wedge_testkit::container_images;

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        anyhow::bail!("usage: wedge-container-images <directory>");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, image) in [
        ("pause.tar", container_images::pause()?),
        ("busybox.tar", container_images::busybox()?),
    ] {
        let target = dir.join(name);
        std::fs::copy(image.docker_archive(), &target)
            .with_context(|| format!("copying {} to {}", image.reference(), target.display()))?;
        println!("{} {}", image.reference(), target.display());
    }
    Ok(())
}
