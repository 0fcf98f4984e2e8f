//! Wasm images: pulling them from OCI registries, importing them from OCI layouts, and keeping
//! them in a content-addressed store on disk.
//!
//! Start at [`ImageService`]: it resolves an image reference to a Wasm component on disk, pulling
//! it ([`pull`]) or importing it ([`layout`]) into the [`store`], after [`media`] has decided from
//! the manifest's media types whether the image is Wasm at all.

#[cfg(test)]
mod fuzz;
pub mod layout;
pub mod store;

// Classifying images and talking to registries is shared with the cloud's scheduler.
pub use wedge_oci::media;
pub use wedge_oci::registry as pull;

pub mod service;

pub use media::{ImageKind, WasmLayout};
pub use pull::RegistryError;
pub use service::{ImageError, ImageService, PulledImage, RegistryCredentials};
pub use store::{Digest, ImageStore, StoreError};
