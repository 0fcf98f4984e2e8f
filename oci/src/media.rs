//! Which images are Wasm, and where in them the component is.
//!
//! People push Wasm to registries in four layouts, and we accept all of them:
//!
//! | layout | how it is recognised | where the Wasm is |
//! |---|---|---|
//! | CNCF Wasm OCI artifact | config `application/vnd.wasm.config.v0+json` or a layer `application/wasm` | the `application/wasm` layer |
//! | runwasi's | a layer `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` | that layer |
//! | Spin's and wasm-to-oci's | a layer `application/vnd.wasm.content.layer.v1+wasm` | that layer |
//! | a plain OCI image | config platform `wasm` (`wasi/wasm`, `wasip1/wasm`, `wasip2/wasm`), or the compat annotation `module.wasm.image/variant`, or an entrypoint ending in `.wasm` | the entrypoint's file (else the only `.wasm` file) in the tar layers |
//!
//! Any other image is a container image: it runs through the CRI runtime, not this one, and
//! [`classify`] says so instead of guessing.

use oci_client::manifest::OciImageManifest;
use serde::{Deserialize, Serialize};

/// The CNCF Wasm artifact's config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF Wasm artifact's layer media type.
pub const WASM_LAYER: &str = "application/wasm";
/// runwasi's component layer.
pub const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// Spin's and wasm-to-oci's content layer.
pub const CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The annotation of the Wasm OCI compat spec (crun, runwasi).
pub const COMPAT_ANNOTATION: &str = "module.wasm.image/variant";

const TAR_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// How a Wasm image carries its component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WasmLayout {
    /// CNCF Wasm OCI artifact (`application/wasm` layer).
    CncfArtifact,
    /// runwasi's component layer.
    ComponentLayer,
    /// Spin's and wasm-to-oci's content layer.
    ContentLayer,
    /// A plain OCI image with the `.wasm` file inside a tar layer.
    ImageTar,
    /// A bare `.wasm` file added by hand (`wedge wasm run app.wasm`), not from an image.
    File,
}

/// What an image is, decided from its manifest and config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    /// A Wasm image; `layer` indexes the manifest's layer that holds the component (for
    /// [`WasmLayout::ImageTar`], `None`: search the tar layers, looking for `entrypoint`).
    Wasm {
        /// The layout.
        layout: WasmLayout,
        /// The layer holding the Wasm, for artifact layouts.
        layer: Option<usize>,
        /// For image layouts: the path of the `.wasm` file named by the entrypoint, if any.
        entrypoint: Option<String>,
    },
    /// A container image, to be run through CRI.
    Container,
    /// Neither: layers we do not know.
    Unsupported {
        /// The media types found, for the error message.
        media_types: Vec<String>,
    },
}

/// The parts of an OCI image config that tell a Wasm image apart.
#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

/// Decides what an image is from its manifest and its config blob.
pub fn classify(manifest: &OciImageManifest, config: &[u8]) -> ImageKind {
    let layer_types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    let find = |t: &str| layer_types.iter().position(|m| *m == t);
    for (media, layout) in [
        (COMPONENT_LAYER, WasmLayout::ComponentLayer),
        (WASM_LAYER, WasmLayout::CncfArtifact),
        (CONTENT_LAYER, WasmLayout::ContentLayer),
    ] {
        if let Some(i) = find(media) {
            return ImageKind::Wasm {
                layout,
                layer: Some(i),
                entrypoint: None,
            };
        }
    }
    if manifest.config.media_type == WASM_CONFIG {
        return ImageKind::Unsupported {
            media_types: layer_types.iter().map(|s| (*s).to_owned()).collect(),
        };
    }
    if !layer_types.is_empty() && layer_types.iter().all(|m| TAR_LAYERS.contains(m)) {
        // Configs that do not parse are treated as describing no platform at all.
        let parsed: ImageConfig = serde_json::from_slice(config).unwrap_or_default();
        let entry = parsed
            .config
            .as_ref()
            .and_then(|c| {
                c.entrypoint
                    .clone()
                    .filter(|e| !e.is_empty())
                    .or_else(|| c.cmd.clone())
            })
            .and_then(|e| e.into_iter().next());
        let wasm_entry = entry.filter(|e| e.ends_with(".wasm"));
        let compat = manifest
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(COMPAT_ANNOTATION));
        if parsed.architecture == "wasm" || compat || wasm_entry.is_some() {
            return ImageKind::Wasm {
                layout: WasmLayout::ImageTar,
                layer: None,
                entrypoint: wasm_entry,
            };
        }
        return ImageKind::Container;
    }
    ImageKind::Unsupported {
        media_types: layer_types.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Whether `bytes` start like a Wasm component, a core module, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmBinaryKind {
    /// A component (what this runtime runs).
    Component,
    /// A core module (WASI preview 1 and earlier).
    CoreModule,
    /// Not Wasm.
    NotWasm,
}

/// Reads the Wasm header.
pub fn binary_kind(bytes: &[u8]) -> WasmBinaryKind {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 0x01, 0]) => WasmBinaryKind::Component,
        Some([0, b'a', b's', b'm', 0x01, 0, 0, 0]) => WasmBinaryKind::CoreModule,
        _ => WasmBinaryKind::NotWasm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::OciDescriptor;

    fn manifest(config: &str, layers: &[&str]) -> OciImageManifest {
        OciImageManifest {
            config: OciDescriptor {
                media_type: config.into(),
                ..Default::default()
            },
            layers: layers
                .iter()
                .map(|m| OciDescriptor {
                    media_type: (*m).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn artifact_layouts() {
        let k = classify(&manifest(WASM_CONFIG, &[WASM_LAYER]), b"{}");
        assert!(matches!(
            k,
            ImageKind::Wasm {
                layout: WasmLayout::CncfArtifact,
                layer: Some(0),
                ..
            }
        ));
        let k = classify(&manifest(OCI_CONFIG, &[COMPONENT_LAYER]), b"{}");
        assert!(matches!(
            k,
            ImageKind::Wasm {
                layout: WasmLayout::ComponentLayer,
                ..
            }
        ));
        let k = classify(&manifest(OCI_CONFIG, &["text/plain", CONTENT_LAYER]), b"{}");
        assert!(matches!(
            k,
            ImageKind::Wasm {
                layout: WasmLayout::ContentLayer,
                layer: Some(1),
                ..
            }
        ));
    }

    #[test]
    fn plain_images_are_wasm_only_when_they_say_so() {
        let wasm =
            br#"{"architecture":"wasm","os":"wasip2","config":{"Entrypoint":["/app.wasm"]}}"#;
        let k = classify(&manifest(OCI_CONFIG, &[TGZ]), wasm);
        assert_eq!(
            k,
            ImageKind::Wasm {
                layout: WasmLayout::ImageTar,
                layer: None,
                entrypoint: Some("/app.wasm".into())
            }
        );
        let linux = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"]}}"#;
        assert_eq!(
            classify(&manifest(OCI_CONFIG, &[TGZ]), linux),
            ImageKind::Container
        );
        let k = classify(&manifest(OCI_CONFIG, &["application/x-unknown"]), b"{}");
        assert!(matches!(k, ImageKind::Unsupported { .. }));
    }

    #[test]
    fn headers() {
        assert_eq!(
            binary_kind(b"\0asm\x0d\0\x01\0rest"),
            WasmBinaryKind::Component
        );
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0"), WasmBinaryKind::CoreModule);
        assert_eq!(binary_kind(b"#!/bin/sh"), WasmBinaryKind::NotWasm);
    }
}
