//! Importing container images into containerd, for edges with no registry.
//!
//! CRI has no import call, so this does what operators do: containerd's own client,
//! `ctr --address <socket> -n k8s.io images import <archive>`, in the namespace CRI (and so
//! edgecore's container pods) sees. `ctr` reads docker archives (`docker save`) and OCI
//! archives. A `--name` tags the imported image (`ctr images tag`), normalised as CRI names
//! images (`busybox:1` is `docker.io/library/busybox:1`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};

/// The containerd namespace CRI works in.
const NAMESPACE: &str = "k8s.io";

/// Whether `path` is a tar with a top-level `manifest.json` (a docker archive); reads the
/// archive's entry names off the async workers.
pub async fn is_docker_archive(path: &Path) -> bool {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        let mut archive = tar::Archive::new(file);
        let Ok(entries) = archive.entries() else {
            return false;
        };
        entries.flatten().any(|entry| {
            entry.path().is_ok_and(|p| {
                let p: &Path = p.as_ref();
                p.strip_prefix(".").unwrap_or(p) == Path::new("manifest.json")
            })
        })
    })
    .await
    .unwrap_or(false)
}

/// The socket of a CRI endpoint (`unix:///run/containerd/containerd.sock` or a bare path).
fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => bail!(
            "--container-runtime-endpoint {endpoint}: only unix sockets are supported (unix:///path)"
        ),
        None => endpoint,
    };
    if !path.starts_with('/') {
        bail!("--container-runtime-endpoint {endpoint}: the socket path must be absolute");
    }
    Ok(PathBuf::from(path))
}

/// One image `ctr images import` unpacked: `unpacking <name> (sha256:<hex>)...done`.
fn unpacked(line: &str) -> Option<(String, String)> {
    let (name, rest) = line.strip_prefix("unpacking ")?.split_once(" (")?;
    let digest = rest.split_once(')')?.0;
    Some((name.to_owned(), digest.to_owned()))
}

/// Runs `ctr` against `socket` in CRI's namespace and returns its output.
async fn ctr(socket: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", NAMESPACE])
        .args(args)
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "ctr, containerd's client, is not installed (not on PATH): install containerd, which brings ctr, to import container images"
        ),
        Err(e) => return Err(e).context("cannot run ctr"),
    };
    if !output.status.success() {
        bail!(
            "ctr {}: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Imports the container image archive at `path` into the containerd at `endpoint`, named
/// `name` when given; returns the names containerd now holds it under.
pub async fn import(
    endpoint: &str,
    path: &Path,
    name: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let socket = socket_path(endpoint)?;
    if path.is_dir() {
        bail!(
            "{} is a container image in a layout directory: containerd imports archives; pack it as a tar (tar -C {} -cf image.tar .)",
            path.display(),
            path.display()
        );
    }
    // Checked before anything is imported, so a bad name leaves nothing behind.
    let target = name
        .map(|n| {
            wedge_oci::Reference::from_str(n)
                .map(|r| r.whole())
                .with_context(|| format!("--name {n}: not an image reference"))
        })
        .transpose()?;
    if !tokio::fs::try_exists(&socket).await.unwrap_or(false) {
        bail!(
            "{} is a container image, and containerd is not running at {} (no socket there): start containerd, or name its socket with --container-runtime-endpoint",
            path.display(),
            socket.display()
        );
    }
    let mut args: Vec<&std::ffi::OsStr> = vec!["images".as_ref(), "import".as_ref()];
    if target.is_some() {
        // An OCI archive may name no image: a digest name gives one to tag.
        args.push("--digests".as_ref());
    }
    args.push(path.as_os_str());
    let output = ctr(&socket, &args).await?;
    let images: Vec<(String, String)> = output.lines().filter_map(unpacked).collect();
    if images.is_empty() {
        bail!(
            "{}: containerd imported no named image (ctr said: {}): give it a name with --name",
            path.display(),
            output.trim()
        );
    }
    let mut names: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    if let Some(target) = target {
        let mut digests: Vec<&str> = images.iter().map(|(_, d)| d.as_str()).collect();
        digests.sort_unstable();
        digests.dedup();
        if digests.len() != 1 {
            bail!(
                "{} holds {} images: --name can name only one (they were imported as {names:?})",
                path.display(),
                digests.len()
            );
        }
        let source = &images[0].0;
        ctr(
            &socket,
            &[
                "images".as_ref(),
                "tag".as_ref(),
                "--force".as_ref(),
                source.as_ref(),
                target.as_ref(),
            ],
        )
        .await?;
        // The digest name is ctr's scaffolding; the image keeps its archive names and gets ours.
        names.retain(|n| !n.starts_with("import-"));
        names.push(target);
    }
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_output_lines_name_images() {
        assert_eq!(
            unpacked("unpacking docker.io/library/busybox:1 (sha256:abc)...done"),
            Some(("docker.io/library/busybox:1".into(), "sha256:abc".into()))
        );
        assert_eq!(unpacked("done"), None);
    }

    #[test]
    fn endpoints_name_sockets() {
        assert_eq!(
            socket_path("unix:///run/c.sock").ok(),
            Some(PathBuf::from("/run/c.sock"))
        );
        assert!(socket_path("tcp://x:1").is_err());
        assert!(socket_path("relative.sock").is_err());
    }
}
