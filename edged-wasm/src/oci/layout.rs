//! OCI image layouts (a directory, or a tar of one) for air-gapped edges.
//!
//! `skopeo copy ... oci:dir:tag`, `oras`, `docker save` of an OCI image and `wkg oci pull` all
//! produce this layout; importing it puts the image in the store under a name, so pods that use
//! that name run with no registry at all. The name comes from the caller, else from the
//! manifest descriptor's `io.containerd.image.name` or `org.opencontainers.image.ref.name`
//! annotation, as `ctr images import` does.

use std::fs;
use std::path::{Path, PathBuf};

use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use serde::Deserialize;

use super::store::Digest;

/// Why a layout could not be read.
#[derive(Debug, thiserror::Error)]
#[error("OCI layout {path}: {message}")]
pub struct LayoutError {
    /// The layout's path.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<ImageIndexEntry>,
}

const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One image found in a layout.
#[derive(Debug)]
pub struct LayoutImage {
    /// The name it carries in the layout, if any.
    pub name: Option<String>,
    /// Its manifest.
    pub manifest: OciImageManifest,
    /// The manifest's digest.
    pub digest: Digest,
}

/// An unpacked OCI image layout.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    // Holds the unpacked copy of a tar alive as long as the layout is read.
    _unpacked: Option<tempfile::TempDir>,
}

impl Layout {
    /// Opens a layout directory, or unpacks a layout tar into `scratch` and opens that.
    pub fn open(path: &Path, scratch: &Path) -> Result<Self, LayoutError> {
        let err = |message: String| LayoutError {
            path: path.to_owned(),
            message,
        };
        if path.is_dir() {
            return Ok(Self {
                root: path.to_owned(),
                _unpacked: None,
            });
        }
        let file = fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let dir = tempfile::tempdir_in(scratch).map_err(|e| err(e.to_string()))?;
        tar::Archive::new(file)
            .unpack(dir.path())
            .map_err(|e| err(format!("not a readable tar archive: {e}")))?;
        Ok(Self {
            root: dir.path().to_owned(),
            _unpacked: Some(dir),
        })
    }

    fn err(&self, message: impl Into<String>) -> LayoutError {
        LayoutError {
            path: self.root.clone(),
            message: message.into(),
        }
    }

    /// Reads a blob and checks it against its descriptor's digest.
    pub fn blob(&self, descriptor: &OciDescriptor) -> Result<Vec<u8>, LayoutError> {
        self.blob_by_digest(&descriptor.digest)
    }

    fn blob_by_digest(&self, digest: &str) -> Result<Vec<u8>, LayoutError> {
        let digest = Digest::parse(digest).map_err(|e| self.err(e.to_string()))?;
        let path = self.root.join("blobs/sha256").join(digest.hex());
        let bytes = fs::read(&path).map_err(|e| self.err(format!("blob {digest}: {e}")))?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(self.err(format!(
                "blob {digest} has digest {actual}: the layout is damaged"
            )));
        }
        Ok(bytes)
    }

    /// Every image in the layout's `index.json`, nested indexes resolved to their Wasm entry.
    pub fn images(&self) -> Result<Vec<LayoutImage>, LayoutError> {
        if !self.root.join("oci-layout").is_file() {
            return Err(self.err("no oci-layout file: not an OCI image layout"));
        }
        let index = fs::read(self.root.join("index.json"))
            .map_err(|e| self.err(format!("index.json: {e}")))?;
        let index: Index =
            serde_json::from_slice(&index).map_err(|e| self.err(format!("index.json: {e}")))?;
        let mut out = Vec::new();
        for descriptor in index.manifests {
            let name = descriptor
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)))
                .cloned();
            let digest = self.resolve_index(descriptor)?;
            let bytes = self.blob_by_digest(&digest)?;
            let manifest: OciImageManifest = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("manifest {digest}: {e}")))?;
            out.push(LayoutImage {
                name,
                manifest,
                digest: Digest::of(&bytes),
            });
        }
        Ok(out)
    }

    /// The digest of the image manifest a descriptor leads to, through one nested index.
    fn resolve_index(&self, entry: ImageIndexEntry) -> Result<String, LayoutError> {
        if !INDEX_TYPES.contains(&entry.media_type.as_str()) {
            return Ok(entry.digest);
        }
        let bytes = self.blob_by_digest(&entry.digest)?;
        let nested: Index = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(format!("index {}: {e}", entry.digest)))?;
        let manifests: Vec<ImageIndexEntry> = nested
            .manifests
            .into_iter()
            .filter(|m| !INDEX_TYPES.contains(&m.media_type.as_str()))
            .collect();
        super::pull::wasm_first(&manifests)
            .ok_or_else(|| self.err(format!("index {} lists no image manifest", entry.digest)))
    }
}
