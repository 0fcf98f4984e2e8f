//! OCI images holding Wasm, in every layout found in the wild, and the ways to get them into a
//! registry: the registry HTTP API ([`push`]) or an OCI image layout copied by `skopeo`
//! ([`write_layout`], [`skopeo_copy_layout`]).
//!
//! The edge must pull all of these, and refuse bad ones clearly: [`Image::custom`] builds the bad
//! ones. Nothing here checks that Wasm bytes are Wasm.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use oci_client::Reference;
use oci_client::client::{Client, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The media types this module writes.
pub mod media_type {
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index (`index.json` of a layout).
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// A plain OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI 1.1's "no config" config: the two bytes `{}`.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// A gzipped tar filesystem layer.
    pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// The CNCF Wasm OCI artifact's config.
    pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
    /// The CNCF Wasm OCI artifact's layer.
    pub const WASM: &str = "application/wasm";
    /// runwasi's component layer.
    pub const WASM_COMPONENT_LAYER: &str =
        "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
    /// Spin's and wasm-to-oci's layer.
    pub const WASM_CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
}

/// How a Wasm component is packed into an OCI image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmLayout {
    /// CNCF Wasm OCI artifact: config `application/vnd.wasm.config.v0+json`, one layer
    /// `application/wasm`.
    CncfArtifact,
    /// runwasi's: layer `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`, config a
    /// plain OCI image config with architecture "wasm", os "wasip2".
    ComponentLayer,
    /// Spin's and wasm-to-oci's: layer `application/vnd.wasm.content.layer.v1+wasm`. The config is
    /// OCI 1.1's empty one (`application/vnd.oci.empty.v1+json`, `{}`), as ORAS-built artifacts
    /// have: the one config type the other layouts leave untested.
    ContentLayer,
    /// A plain OCI image: a gzipped tar layer holding `/app.wasm`, config with architecture
    /// "wasm", os "wasip2" and Entrypoint `["/app.wasm"]`.
    ImageTar,
}

impl WasmLayout {
    /// Every layout, for tests that try them all.
    pub const ALL: [WasmLayout; 4] = [
        WasmLayout::CncfArtifact,
        WasmLayout::ComponentLayer,
        WasmLayout::ContentLayer,
        WasmLayout::ImageTar,
    ];
}

/// Content with its media type: a config or a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Media type, as written in the manifest's descriptor.
    pub media_type: String,
    /// The content.
    pub data: Vec<u8>,
}

impl Blob {
    /// A blob of `media_type` holding `data`.
    pub fn new(media_type: &str, data: impl Into<Vec<u8>>) -> Blob {
        Blob {
            media_type: media_type.to_owned(),
            data: data.into(),
        }
    }

    /// "sha256:<hex>" of the content.
    pub fn digest(&self) -> String {
        sha256_digest(&self.data)
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest(), "size": self.data.len() })
    }
}

/// An OCI image: a config, layers, and the manifest's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The config blob.
    pub config: Blob,
    /// The layers, in order.
    pub layers: Vec<Blob>,
    /// Annotations of the manifest (omitted from it when empty).
    pub annotations: BTreeMap<String, String>,
}

impl Image {
    /// `wasm` packed as `layout`.
    pub fn wasm(wasm: &[u8], layout: WasmLayout) -> Image {
        let (config, layer) = match layout {
            WasmLayout::CncfArtifact => (
                Blob::new(
                    media_type::WASM_CONFIG,
                    to_json(&json!({
                        "architecture": "wasm",
                        "os": "wasip2",
                        "layerDigests": [sha256_digest(wasm)],
                    })),
                ),
                Blob::new(media_type::WASM, wasm),
            ),
            WasmLayout::ComponentLayer => (
                image_config("wasm", "wasip2", None, &sha256_digest(wasm)),
                Blob::new(media_type::WASM_COMPONENT_LAYER, wasm),
            ),
            WasmLayout::ContentLayer => (
                Blob::new(media_type::OCI_EMPTY, b"{}".as_slice()),
                Blob::new(media_type::WASM_CONTENT_LAYER, wasm),
            ),
            WasmLayout::ImageTar => {
                let (layer, diff_id) = tar_gz_layer("app.wasm", wasm);
                (
                    image_config("wasm", "wasip2", Some("/app.wasm"), &diff_id),
                    layer,
                )
            }
        };
        Image::custom(config, vec![layer])
    }

    /// A plain Linux container image (amd64), whose `/bin/sh` entrypoint is a stand-in file: for
    /// tests of the path that hands images to a container runtime, or refuses them.
    pub fn container() -> Image {
        let (layer, diff_id) = tar_gz_layer(
            "bin/sh",
            b"#!/bin/sh\n# A stand-in: testkit images are not run.\n",
        );
        Image::custom(
            image_config("amd64", "linux", Some("/bin/sh"), &diff_id),
            vec![layer],
        )
    }

    /// Any config and layers, e.g. a layer of `application/wasm` that is not Wasm, or a layer of
    /// a media type nobody knows.
    pub fn custom(config: Blob, layers: Vec<Blob>) -> Image {
        Image {
            config,
            layers,
            annotations: BTreeMap::new(),
        }
    }

    /// The OCI image manifest of this image and its digest ("sha256:<hex>").
    pub fn manifest_json(&self) -> (Vec<u8>, String) {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": self.config.descriptor(),
            "layers": self.layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest = to_json(&manifest);
        let digest = sha256_digest(&manifest);
        (manifest, digest)
    }

    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// Pushes `image` as `<registry_host>/<repository>:<tag>` over plain HTTP, anonymously; returns
/// the manifest digest.
pub async fn push(
    registry_host: &str,
    repository: &str,
    tag: &str,
    image: &Image,
) -> anyhow::Result<String> {
    push_as(
        registry_host,
        repository,
        tag,
        image,
        RegistryAuth::Anonymous,
    )
    .await
}

/// [`push`] with HTTP basic auth, for a [`crate::registry::Registry::start_with_auth`] registry.
pub async fn push_with_auth(
    registry_host: &str,
    repository: &str,
    tag: &str,
    image: &Image,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    let auth = RegistryAuth::Basic(user.to_owned(), password.to_owned());
    push_as(registry_host, repository, tag, image, auth).await
}

async fn push_as(
    registry_host: &str,
    repository: &str,
    tag: &str,
    image: &Image,
    auth: RegistryAuth,
) -> anyhow::Result<String> {
    // reqwest builds a TLS config even for plain HTTP, and oci-client comes without a crypto
    // provider. An error only means that one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_from(ClientConfig {
        protocol: ClientProtocol::Http,
        // One POST and one PUT per blob: the plainest upload, which every registry takes.
        use_monolithic_push: true,
        ..ClientConfig::default()
    })?;
    let reference = Reference::with_tag(
        registry_host.to_owned(),
        repository.to_owned(),
        tag.to_owned(),
    );
    client.store_auth_if_needed(registry_host, &auth).await;
    for blob in image.blobs() {
        client
            .push_blob(&reference, blob.data.clone(), &blob.digest())
            .await
            .with_context(|| format!("pushing {} blob to {reference}", blob.media_type))?;
    }
    let (manifest, digest) = image.manifest_json();
    let content_type = http::HeaderValue::from_static(media_type::OCI_MANIFEST);
    client
        .push_manifest_raw(&reference, manifest, content_type)
        .await
        .with_context(|| format!("pushing the manifest of {reference}"))?;
    Ok(digest)
}

/// Writes `image` as an OCI image layout in `dir` (created if missing), tagged `tag`.
pub fn write_layout(dir: &Path, tag: &str, image: &Image) -> anyhow::Result<()> {
    for (path, data) in layout_files(tag, image) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// [`write_layout`] as an uncompressed tar archive, with the layout at its root (what
/// `ctr images import` and skopeo's `oci-archive:` read).
pub fn write_layout_tar(tar_path: &Path, tag: &str, image: &Image) -> anyhow::Result<()> {
    let file = std::fs::File::create(tar_path)
        .with_context(|| format!("creating {}", tar_path.display()))?;
    let mut archive = tar::Builder::new(file);
    for (path, data) in layout_files(tag, image) {
        archive.append_data(&mut tar_header(data.len(), 0o644), path, data.as_slice())?;
    }
    archive.into_inner()?.sync_all()?;
    Ok(())
}

/// Pushes tag `tag` of the OCI layout in `layout_dir` to `<registry_host>/<repository>:<tag>`
/// with `skopeo copy`, keeping the manifest byte for byte.
pub async fn skopeo_copy_layout(
    layout_dir: &Path,
    tag: &str,
    registry_host: &str,
    repository: &str,
) -> anyhow::Result<()> {
    let destination = format!("docker://{registry_host}/{repository}:{tag}");
    // --insecure-policy: no /etc/containers/policy.json is needed for pushing our own images.
    let output = tokio::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("oci:{}:{tag}", layout_dir.display()))
        .arg(&destination)
        .output()
        .await
        .context("running skopeo (is it installed? `apt-get install skopeo`)")?;
    if !output.status.success() {
        bail!(
            "skopeo copy of {}:{tag} to {destination} failed ({}): {}",
            layout_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The files of an OCI image layout holding `image` as `tag`: paths relative to its root.
fn layout_files(tag: &str, image: &Image) -> Vec<(String, Vec<u8>)> {
    let (manifest, digest) = image.manifest_json();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    let blob_path = |digest: &str| format!("blobs/{}", digest.replacen(':', "/", 1));
    let mut files = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), to_json(&index)),
    ];
    files.extend(
        image
            .blobs()
            .map(|blob| (blob_path(&blob.digest()), blob.data.clone())),
    );
    files.push((blob_path(&digest), manifest));
    files
}

/// An OCI image config with one layer whose uncompressed digest is `diff_id`.
fn image_config(architecture: &str, os: &str, entrypoint: Option<&str>, diff_id: &str) -> Blob {
    let mut config = json!({
        "architecture": architecture,
        "os": os,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    if let Some(entrypoint) = entrypoint {
        config["config"] = json!({ "Entrypoint": [entrypoint] });
    }
    Blob::new(media_type::OCI_CONFIG, to_json(&config))
}

/// A gzipped tar layer holding one executable file, and the digest of the tar (its diff ID).
fn tar_gz_layer(path: &str, data: &[u8]) -> (Blob, String) {
    let mut archive = tar::Builder::new(Vec::new());
    archive
        .append_data(&mut tar_header(data.len(), 0o755), path, data)
        .expect("writing a tar to memory cannot fail");
    let tar = archive
        .into_inner()
        .expect("writing a tar to memory cannot fail");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar)
        .expect("compressing to memory cannot fail");
    let gzip = gzip.finish().expect("compressing to memory cannot fail");
    (
        Blob::new(media_type::OCI_LAYER_TAR_GZIP, gzip),
        sha256_digest(&tar),
    )
}

/// A header for a regular file with a fixed mtime, so the same input gives the same digests.
fn tar_header(size: usize, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, http_get};

    /// A component header: enough for the registry, which does not look inside.
    const WASM: &[u8] = b"\0asm\x0d\0\x01\0";

    /// `GET`s the manifest of `repository:tag` and checks it is the one pushed as `digest`.
    fn fetch_manifest(host: &str, repository: &str, tag: &str, digest: &str) -> serde_json::Value {
        let path = format!("/v2/{repository}/manifests/{tag}");
        let (status, body) =
            http_get(host, &path, &[("Accept", media_type::OCI_MANIFEST)]).expect("GET manifest");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            sha256_digest(&body),
            digest,
            "the registry kept the manifest byte for byte"
        );
        serde_json::from_slice(&body).expect("manifest is JSON")
    }

    #[tokio::test]
    async fn every_layout_pushes_and_reads_back() -> anyhow::Result<()> {
        let registry = Registry::start()?;
        for (layout, layer_type) in [
            (WasmLayout::CncfArtifact, "application/wasm"),
            (
                WasmLayout::ComponentLayer,
                "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            ),
            (
                WasmLayout::ContentLayer,
                "application/vnd.wasm.content.layer.v1+wasm",
            ),
            (
                WasmLayout::ImageTar,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
        ] {
            let repository = format!("wedge/{layout:?}").to_lowercase();
            let digest = push(
                &registry.host(),
                &repository,
                "v1",
                &Image::wasm(WASM, layout),
            )
            .await?;
            let manifest = fetch_manifest(&registry.host(), &repository, "v1", &digest);
            assert_eq!(manifest["layers"][0]["mediaType"], layer_type, "{layout:?}");
        }
        let digest = push(
            &registry.host(),
            "wedge/container",
            "v1",
            &Image::container(),
        )
        .await?;
        fetch_manifest(&registry.host(), "wedge/container", "v1", &digest);
        Ok(())
    }

    #[tokio::test]
    async fn layouts_copied_by_skopeo_are_pullable() -> anyhow::Result<()> {
        let registry = Registry::start()?;
        let layouts = tempfile::tempdir()?;
        for layout in WasmLayout::ALL {
            let image = Image::wasm(WASM, layout);
            let dir = layouts.path().join(format!("{layout:?}"));
            write_layout(&dir, "v1", &image)?;
            let repository = format!("skopeo/{layout:?}").to_lowercase();
            skopeo_copy_layout(&dir, "v1", &registry.host(), &repository).await?;
            fetch_manifest(
                &registry.host(),
                &repository,
                "v1",
                &image.manifest_json().1,
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn layout_tar_is_read_by_skopeo() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let tar = dir.path().join("image.tar");
        let image = Image::wasm(WASM, WasmLayout::ImageTar);
        write_layout_tar(&tar, "v1", &image)?;
        let output = tokio::process::Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}:v1", tar.display()))
            .output()
            .await?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.stdout, image.manifest_json().0);
        Ok(())
    }
}
