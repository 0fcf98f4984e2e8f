//! Resolving an image reference to a Wasm component on disk.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;

use super::layout::{Layout, LayoutError};
use super::media::{self, ImageKind, WasmBinaryKind};
use super::pull::{RegistryClient, RegistryError};
use super::store::{Digest, ImageStore, StoreError, StoredImage};

/// Credentials for a registry, from the pod's image pull secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    /// HTTP basic (user name and password or token).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Why an image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {detail}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Parser's words.
        detail: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A container image was handed to the Wasm runtime.
    #[error(
        "{0} is a container image, not Wasm: containers run through the CRI runtime (containerd), not the Wasm runtime"
    )]
    NotWasm(String),
    /// Layers that are neither Wasm nor container layers.
    #[error("{reference} has no Wasm layer Wedge knows (layer media types: {media_types:?})")]
    UnsupportedLayers {
        /// The image.
        reference: String,
        /// What it has.
        media_types: Vec<String>,
    },
    /// A Wasm layer whose content is not Wasm.
    #[error("{reference}: the Wasm layer {digest} does not hold a Wasm binary")]
    NotWasmBinary {
        /// The image.
        reference: String,
        /// The layer.
        digest: String,
    },
    /// A core module rather than a component.
    #[error(
        "{0} holds a core Wasm module (WASI preview 1); Wedge runs WASI 0.2 components: build for wasm32-wasip2, or adapt it with `wasm-tools component new --adapt`"
    )]
    CoreModule(String),
    /// An image tar layout with no (or no single) `.wasm` file.
    #[error("{reference}: {detail}")]
    NoWasmInImage {
        /// The image.
        reference: String,
        /// What was found.
        detail: String,
    },
    /// The image is not in the store.
    #[error("{0} is not present on this edge: pull or import it first")]
    NeverPull(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layout could not be read.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// An import named no image, or several without a name to choose.
    #[error("{0}")]
    Import(String),
}

/// A Wasm component ready on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// What the image was resolved from.
    pub stored: StoredImage,
    /// The component's file in the store.
    pub wasm_path: PathBuf,
}

impl PulledImage {
    /// `repository@sha256:...`, what kubelets report as `imageID`.
    pub fn image_id(&self) -> String {
        let repo = self
            .stored
            .reference
            .split(['@'])
            .next()
            .unwrap_or_default();
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        format!("{repo}@{}", self.stored.manifest_digest)
    }
}

/// Where blobs come from while resolving an image.
enum Source<'a> {
    Registry(&'a RegistryClient, &'a Reference, &'a RegistryAuth),
    Layout(&'a Layout),
}

impl Source<'_> {
    async fn blob(&self, d: &OciDescriptor) -> Result<Vec<u8>, ImageError> {
        match self {
            Self::Registry(client, reference, auth) => Ok(client.blob(reference, auth, d).await?),
            Self::Layout(layout) => Ok(layout.blob(d)?),
        }
    }
}

/// Pulls, imports and stores Wasm images.
pub struct ImageService {
    store: ImageStore,
    registry: RegistryClient,
}

/// Normalises a reference the way Docker does (`app:1` → `docker.io/library/app:1`).
pub fn parse_reference(image: &str) -> Result<Reference, ImageError> {
    let invalid = |detail: String| ImageError::InvalidReference {
        reference: image.to_owned(),
        detail,
    };
    let reference = Reference::from_str(image).map_err(|e| invalid(e.to_string()))?;
    // oci-client takes capitals in a repository when no registry is named (`Sha/app`), then
    // cannot read its own whole form back (found by fuzzing); Docker refuses them too.
    if reference
        .repository()
        .bytes()
        .any(|b| b.is_ascii_uppercase())
    {
        return Err(invalid("repository name must be lowercase".into()));
    }
    Ok(reference)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Import(format!("image store task failed: {e}")))?
}

impl ImageService {
    /// A service over `store` that reaches registries as `hosts` says.
    pub fn new(store: ImageStore, hosts: wedge_oci::RegistryHosts) -> Result<Self, ImageError> {
        Ok(Self {
            store,
            registry: RegistryClient::new(hosts)?,
        })
    }

    /// Adds a bare component file to the store under `name`, for `wedge wasm run app.wasm`.
    pub async fn add_component(
        &self,
        name: &str,
        wasm: Vec<u8>,
    ) -> Result<PulledImage, ImageError> {
        let reference = parse_reference(name)?.whole();
        check_binary(&reference, &wasm, "the file")?;
        let store = self.store.clone();
        blocking(move || {
            let wasm_digest = store.put_content(&wasm)?;
            let stored = StoredImage {
                reference,
                manifest_digest: wasm_digest.clone(),
                wasm_digest,
                layout: super::media::WasmLayout::File,
            };
            store.record(&stored)?;
            let wasm_path = store.blob_path(&stored.wasm_digest);
            Ok(PulledImage { stored, wasm_path })
        })
        .await
    }

    /// The store.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// The image if the store holds it.
    pub async fn held(&self, image: &str) -> Result<Option<PulledImage>, ImageError> {
        let name = parse_reference(image)?.whole();
        let store = self.store.clone();
        let stored = blocking(move || Ok(store.lookup(&name)?)).await?;
        Ok(stored.map(|s| self.ready(s)))
    }

    /// Every image the store holds.
    pub async fn list(&self) -> Result<Vec<PulledImage>, ImageError> {
        let store = self.store.clone();
        let stored = blocking(move || Ok(store.list()?)).await?;
        Ok(stored.into_iter().map(|s| self.ready(s)).collect())
    }

    /// Forgets what `image` names (its blobs stay until nothing refers to them).
    pub async fn forget(&self, image: &str) -> Result<(), ImageError> {
        let name = parse_reference(image)?.whole();
        let store = self.store.clone();
        blocking(move || Ok(store.forget(&name)?)).await
    }

    /// Pulls `image` from its registry: the tag's current manifest, and whatever blobs the
    /// store lacks.
    pub async fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<PulledImage, ImageError> {
        let reference = parse_reference(image)?;
        let name = reference.whole();
        let auth = match credentials {
            None => RegistryAuth::Anonymous,
            Some(RegistryCredentials::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(RegistryCredentials::Bearer(token)) => RegistryAuth::Bearer(token.clone()),
        };
        let (manifest, digest) = self.registry.manifest(&reference, &auth).await?;
        let manifest_digest = Digest::parse(&digest)?;
        let source = Source::Registry(&self.registry, &reference, &auth);
        self.resolve(name, &manifest, manifest_digest, &source)
            .await
    }

    /// Imports every image of an OCI layout (directory or tar). `name` names the image when the
    /// layout holds one, or picks the one with that name when it holds several.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Vec<PulledImage>, ImageError> {
        let scratch = self.store.scratch_dir();
        let layout = {
            let path = path.to_owned();
            blocking(move || Ok(Layout::open(&path, &scratch)?)).await?
        };
        let images = layout.images()?;
        let chosen: Vec<_> = match name {
            Some(n) if images.len() == 1 => images.into_iter().map(|i| (n.to_owned(), i)).collect(),
            Some(n) => images
                .into_iter()
                .filter(|i| i.name.as_deref() == Some(n))
                .map(|i| (n.to_owned(), i))
                .collect(),
            None => images
                .into_iter()
                .map(|i| {
                    let n = i.name.clone().ok_or_else(|| {
                        ImageError::Import(format!(
                            "{}: an image in the layout carries no name: give one with --name",
                            path.display()
                        ))
                    })?;
                    Ok((n, i))
                })
                .collect::<Result<_, ImageError>>()?,
        };
        if chosen.is_empty() {
            return Err(ImageError::Import(format!(
                "{}: no image to import",
                path.display()
            )));
        }
        let source = Source::Layout(&layout);
        let mut out = Vec::new();
        for (n, image) in chosen {
            let reference = parse_reference(&n)?.whole();
            out.push(
                self.resolve(reference, &image.manifest, image.digest, &source)
                    .await?,
            );
        }
        Ok(out)
    }

    fn ready(&self, stored: StoredImage) -> PulledImage {
        let wasm_path = self.store.blob_path(&stored.wasm_digest);
        PulledImage { stored, wasm_path }
    }

    async fn resolve(
        &self,
        reference: String,
        manifest: &OciImageManifest,
        manifest_digest: Digest,
        source: &Source<'_>,
    ) -> Result<PulledImage, ImageError> {
        let config = source.blob(&manifest.config).await?;
        let (layout, wasm) = match media::classify(manifest, &config) {
            ImageKind::Container => return Err(ImageError::NotWasm(reference)),
            ImageKind::Unsupported { media_types } => {
                return Err(ImageError::UnsupportedLayers {
                    reference,
                    media_types,
                });
            }
            ImageKind::Wasm {
                layout,
                layer: Some(i),
                ..
            } => {
                let descriptor = &manifest.layers[i];
                let bytes = source.blob(descriptor).await?;
                let expected = Digest::parse(&descriptor.digest)?;
                check_binary(&reference, &bytes, expected.as_str())?;
                let store = self.store.clone();
                let bytes = blocking(move || {
                    store.put_blob(&expected, &bytes)?;
                    Ok(bytes)
                })
                .await?;
                (layout, bytes)
            }
            ImageKind::Wasm {
                layout,
                layer: None,
                entrypoint,
            } => {
                let mut layers = Vec::new();
                for d in &manifest.layers {
                    layers.push((d.media_type.clone(), source.blob(d).await?));
                }
                let r = reference.clone();
                let wasm = blocking(move || {
                    find_wasm_in_layers(
                        &r,
                        &layers,
                        entrypoint.as_deref(),
                        wedge_oci::registry::MAX_BLOB_BYTES,
                    )
                })
                .await?;
                check_binary(&reference, &wasm, "in the image's layers")?;
                (layout, wasm)
            }
        };
        let store = self.store.clone();
        blocking(move || {
            let wasm_digest = store.put_content(&wasm)?;
            let stored = StoredImage {
                reference,
                manifest_digest,
                wasm_digest,
                layout,
            };
            store.record(&stored)?;
            let wasm_path = store.blob_path(&stored.wasm_digest);
            Ok(PulledImage { stored, wasm_path })
        })
        .await
    }
}

fn check_binary(reference: &str, bytes: &[u8], what: &str) -> Result<(), ImageError> {
    match media::binary_kind(bytes) {
        WasmBinaryKind::Component => Ok(()),
        WasmBinaryKind::CoreModule => Err(ImageError::CoreModule(reference.to_owned())),
        WasmBinaryKind::NotWasm => Err(ImageError::NotWasmBinary {
            reference: reference.to_owned(),
            digest: what.to_owned(),
        }),
    }
}

/// Finds the component in an image's tar layers: the entrypoint's file if named, else the one
/// `.wasm` file. Later layers win, as they would in a container's root filesystem.
pub(super) fn find_wasm_in_layers(
    reference: &str,
    layers: &[(String, Vec<u8>)],
    entrypoint: Option<&str>,
    limit: u64,
) -> Result<Vec<u8>, ImageError> {
    let fail = |detail: String| ImageError::NoWasmInImage {
        reference: reference.to_owned(),
        detail,
    };
    let wanted = entrypoint.map(|e| e.trim_start_matches('/').trim_start_matches("./"));
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for (media_type, bytes) in layers {
        let reader: Box<dyn Read> = if media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(bytes.as_slice()))
        } else {
            Box::new(bytes.as_slice())
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| fail(format!("unreadable layer: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| fail(format!("unreadable layer: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| fail(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let path = path.trim_start_matches("./").to_owned();
            let hit = match wanted {
                Some(w) => path == w,
                None => path.ends_with(".wasm"),
            };
            if hit && entry.header().entry_type().is_file() {
                // A layer is bounded, but what it inflates to is not (a gzip bomb): the
                // component is read no further than the limit on any blob.
                let mut data = Vec::new();
                entry
                    .by_ref()
                    .take(limit.saturating_add(1))
                    .read_to_end(&mut data)
                    .map_err(|e| fail(e.to_string()))?;
                if data.len() as u64 > limit {
                    return Err(fail(format!("/{path} inflates to more than {limit} bytes")));
                }
                found.retain(|(p, _)| *p != path);
                found.push((path, data));
            }
        }
    }
    match (found.len(), wanted) {
        (1, _) => Ok(found.remove(0).1),
        (0, Some(w)) => Err(fail(format!(
            "the entrypoint /{w} is not in the image's layers"
        ))),
        (0, None) => Err(fail("no .wasm file in the image's layers".into())),
        (_, _) => Err(fail(format!(
            "several .wasm files ({}) and no entrypoint to choose one",
            found
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::oci::WasmLayout;

    /// A tar of `files` (also the fuzz tests' seed layers).
    pub(in crate::oci) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn wasm_is_found_in_tar_layers() {
        let tar = "application/vnd.oci.image.layer.v1.tar".to_owned();
        let layers = vec![(
            tar.clone(),
            tar_of(&[("app.wasm", b"one"), ("etc/x", b"-")]),
        )];
        assert_eq!(
            find_wasm_in_layers("r", &layers, None, 1 << 20).expect("found"),
            b"one"
        );
        assert_eq!(
            find_wasm_in_layers("r", &layers, Some("/app.wasm"), 1 << 20).expect("found"),
            b"one"
        );
        assert!(find_wasm_in_layers("r", &layers, Some("/other.wasm"), 1 << 20).is_err());
        let two = vec![(tar, tar_of(&[("a.wasm", b"1"), ("b.wasm", b"2")]))];
        let e = find_wasm_in_layers("r", &two, None, 1 << 20).expect_err("ambiguous");
        assert!(e.to_string().contains("several"));
    }

    #[test]
    fn a_repository_with_capitals_is_refused_as_docker_refuses_it() {
        // Found by fuzzing: this parsed, and its whole form (docker.io/...) then did not.
        let e = parse_reference("sha25S/44136.fa355b").expect_err("capitals");
        assert_eq!(
            e.to_string(),
            "invalid image reference \"sha25S/44136.fa355b\": repository name must be lowercase"
        );
        assert!(parse_reference("registry.local:5000/wedge/telemetry:0.1.0").is_ok());
    }

    #[test]
    fn a_component_that_inflates_past_the_limit_is_refused() {
        // 4 MiB of zeros gzip to a few KiB: a layer small on the wire, large in memory.
        let zeros = vec![0u8; 4 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &tar_of(&[("app.wasm", &zeros)])).expect("gzip");
        let layer = gz.finish().expect("gzip");
        assert!(layer.len() < 64 << 10);
        let layers = vec![(
            "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
            layer,
        )];
        let e = find_wasm_in_layers("r", &layers, None, 1 << 20).expect_err("too large");
        assert!(
            e.to_string()
                .contains("/app.wasm inflates to more than 1048576 bytes"),
            "{e}"
        );
        assert_eq!(
            find_wasm_in_layers("r", &layers, None, 8 << 20)
                .expect("within")
                .len(),
            4 << 20
        );
    }

    #[test]
    fn image_ids_name_the_repository_and_manifest() {
        let stored = StoredImage {
            reference: "127.0.0.1:5000/apps/hello:1".into(),
            manifest_digest: Digest::of(b"m"),
            wasm_digest: Digest::of(b"w"),
            layout: WasmLayout::CncfArtifact,
        };
        let image = PulledImage {
            stored,
            wasm_path: PathBuf::new(),
        };
        assert_eq!(
            image.image_id(),
            format!("127.0.0.1:5000/apps/hello@{}", Digest::of(b"m"))
        );
    }
}
