//! The content-addressed image store on disk.
//!
//! Blobs live at `blobs/sha256/<hex>`, written through a temporary file and renamed into place
//! only after their digest checks out, so a crash never leaves a half-written blob under a valid
//! name. References (`registry/repo:tag`) map to what they resolved to in `refs/`, one JSON file
//! each, so an edge that restarts without a registry still knows its images.
//!
//! The calls here do blocking file I/O: async callers run them on `spawn_blocking`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::media::WasmLayout;

/// A `sha256:<hex>` content digest, checked on construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>`; other algorithms are refused.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| StoreError::BadDigest(s.to_owned()))?;
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(StoreError::BadDigest(s.to_owned()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A digest that is not `sha256:<64 hex>`.
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
    /// Content whose digest is not the one it was announced with.
    #[error("digest mismatch: expected {expected}, content is {actual}")]
    DigestMismatch {
        /// The digest the manifest announced.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A blob the store does not hold.
    #[error("blob {0} is not in the image store")]
    MissingBlob(Digest),
    /// A file operation failed.
    #[error("image store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A reference record that does not parse (written by another version, or damaged).
    #[error("image reference record {path}: {source}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a reference resolved to when it was pulled or imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// The reference as given, normalised (`registry/repository:tag`).
    pub reference: String,
    /// The manifest's digest: the image's identity (`imageID`).
    pub manifest_digest: Digest,
    /// The digest of the Wasm component.
    pub wasm_digest: Digest,
    /// How the image carried the component.
    pub layout: WasmLayout,
}

/// The store rooted at one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [
            root.join("blobs/sha256"),
            root.join("refs"),
            root.join("tmp"),
        ] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(Self { root })
    }

    /// A directory for temporary files on the store's file system.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the store holds the blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores `bytes` if their digest is `expected`; otherwise stores nothing.
    pub fn put_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        self.write_blob(&actual, bytes)
    }

    /// Stores `bytes` under their own digest and returns it.
    pub fn put_content(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        self.write_blob(&digest, bytes)?;
        Ok(digest)
    }

    fn write_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        self.write_atomically(&path, bytes)?;
        Ok(path)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io(path))?;
        tmp.as_file().sync_all().map_err(io(path))?;
        tmp.persist(path).map_err(|e| StoreError::Io {
            path: path.to_owned(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Reads a blob.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::MissingBlob(digest.clone()))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// Records what a reference resolved to, replacing an older record.
    pub fn record(&self, image: &StoredImage) -> Result<(), StoreError> {
        let path = self.ref_path(&image.reference);
        let json = serde_json::to_vec_pretty(image).map_err(|source| StoreError::BadRecord {
            path: path.clone(),
            source,
        })?;
        self.write_atomically(&path, &json)
    }

    /// What `reference` resolved to last, if its component is still in the store.
    pub fn lookup(&self, reference: &str) -> Result<Option<StoredImage>, StoreError> {
        let path = self.ref_path(reference);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let image: StoredImage = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::BadRecord { path, source })?;
        Ok(self.has_blob(&image.wasm_digest).then_some(image))
    }

    /// Forgets what `reference` resolved to (its blobs stay: others may share them).
    pub fn forget(&self, reference: &str) -> Result<(), StoreError> {
        let path = self.ref_path(reference);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every recorded image, sorted by reference. Damaged records are skipped.
    pub fn list(&self) -> Result<Vec<StoredImage>, StoreError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if let Ok(image) = fs::read(&path).map(|b| serde_json::from_slice::<StoredImage>(&b)) {
                match image {
                    Ok(image) => out.push(image),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping damaged image record")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_content_addressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let good = Digest::of(b"hello");
        let path = store.put_blob(&good, b"hello").expect("stored");
        assert!(path.ends_with(good.hex()));
        assert_eq!(store.read_blob(&good).expect("read"), b"hello");
        let err = store
            .put_blob(&Digest::of(b"other"), b"hello")
            .expect_err("mismatch");
        assert!(matches!(err, StoreError::DigestMismatch { .. }));
        assert!(!store.has_blob(&Digest::of(b"other")));
        assert!(matches!(
            store.read_blob(&Digest::of(b"x")),
            Err(StoreError::MissingBlob(_))
        ));
    }

    #[test]
    fn references_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let wasm = store.put_content(b"\0asm").expect("stored");
        let image = StoredImage {
            reference: "registry.local/app:1".into(),
            manifest_digest: Digest::of(b"manifest"),
            wasm_digest: wasm,
            layout: WasmLayout::CncfArtifact,
        };
        store.record(&image).expect("recorded");
        let reopened = ImageStore::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened.lookup("registry.local/app:1").expect("lookup"),
            Some(image.clone())
        );
        assert_eq!(
            reopened.lookup("registry.local/app:2").expect("lookup"),
            None
        );
        assert_eq!(reopened.list().expect("list"), vec![image]);
    }

    #[test]
    fn digests_are_checked() {
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse("md5:0123").is_err());
        assert!(Digest::parse(Digest::of(b"x").as_str()).is_ok());
    }
}
