//! Compile each component once, and keep the machine code on disk.
//!
//! Compiling a component takes tens of milliseconds to seconds; loading its precompiled form
//! takes tens of microseconds. Artifacts live at `compiled/<engine fingerprint>/<digest>.cwasm`:
//! the fingerprint covers wasmtime's version and every engine setting that affects code, so an
//! upgrade or a settings change compiles afresh instead of loading code built for another engine.
//! Components stay loaded in memory too, so a pod's restart does not even read the file.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::oci::Digest;

/// Where a component came from on this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already loaded in this process.
    Memory,
    /// Loaded from the precompiled artifact on disk.
    Disk,
    /// Compiled now (and written to disk).
    Compiled,
}

/// Why a component could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Wasmtime refused the binary.
    #[error("invalid Wasm component {digest}: {message}")]
    Invalid {
        /// The component.
        digest: Digest,
        /// Wasmtime's words.
        message: String,
    },
    /// A cache file could not be read or written.
    #[error("compile cache {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The compile task died.
    #[error("compile task failed: {0}")]
    Task(String),
}

/// Feeds `Hash` output into SHA-256, so the fingerprint is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The fingerprint of the engine's code-relevant settings.
pub fn engine_fingerprint(engine: &Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    h.write(b"wasmtime-48");
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(&h.0.finalize()[..12])
}

/// The compile cache of one engine.
pub struct CompileCache {
    engine: Engine,
    dir: PathBuf,
    loaded: Mutex<HashMap<Digest, Component>>,
}

impl CompileCache {
    /// A cache for `engine` under `root`.
    pub fn new(engine: Engine, root: &Path) -> Result<Self, CompileError> {
        let dir = root.join(engine_fingerprint(&engine));
        std::fs::create_dir_all(&dir).map_err(|source| CompileError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            engine,
            dir,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// Where the artifact of `digest` lives.
    pub fn artifact_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// The component with `digest`, whose Wasm is at `wasm_path`: from memory, from disk, or
    /// compiled now.
    pub async fn component(
        &self,
        digest: &Digest,
        wasm_path: &Path,
    ) -> Result<(Component, CacheOutcome), CompileError> {
        if let Some(c) = self.lock().get(digest) {
            return Ok((c.clone(), CacheOutcome::Memory));
        }
        let engine = self.engine.clone();
        let artifact = self.artifact_path(digest);
        let wasm_path = wasm_path.to_owned();
        let d = digest.clone();
        let (component, outcome) = tokio::task::spawn_blocking(move || {
            load_or_compile(&engine, &d, &wasm_path, &artifact)
        })
        .await
        .map_err(|e| CompileError::Task(e.to_string()))??;
        self.lock().insert(digest.clone(), component.clone());
        Ok((component, outcome))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Component>> {
        // A panic while holding the lock leaves the map consistent: recover it.
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn load_or_compile(
    engine: &Engine,
    digest: &Digest,
    wasm_path: &Path,
    artifact: &Path,
) -> Result<(Component, CacheOutcome), CompileError> {
    if artifact.is_file() {
        // SAFETY: the artifact was written by `Component::serialize` of an engine with the same
        // fingerprint, into a directory only this runtime writes; wasmtime also checks the
        // header and version before using it.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, artifact) };
        match loaded {
            Ok(c) => return Ok((c, CacheOutcome::Disk)),
            Err(e) => tracing::warn!(
                artifact = %artifact.display(), error = %format!("{e:#}"),
                "unusable precompiled artifact: compiling again"
            ),
        }
    }
    let wasm = std::fs::read(wasm_path).map_err(|source| CompileError::Io {
        path: wasm_path.to_owned(),
        source,
    })?;
    let invalid = |e: wasmtime::Error| CompileError::Invalid {
        digest: digest.clone(),
        message: format!("{e:#}"),
    };
    let component = Component::new(engine, &wasm).map_err(invalid)?;
    let bytes = component.serialize().map_err(invalid)?;
    let io = |source| CompileError::Io {
        path: artifact.to_owned(),
        source,
    };
    let dir = artifact.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(io)?;
    tmp.persist(artifact).map_err(|e| io(e.error))?;
    Ok((component, CacheOutcome::Compiled))
}
