//! What an OCI image is, and fetching it from a registry: shared by the edge's Wasm runtime
//! (which pulls images) and the cloud's scheduler (which only needs to know whether an image is
//! Wasm or a container, to pick a node that can run it).
//!
//! - [`media`]: classifying an image from its manifest and config (the four Wasm layouts, or a
//!   container image);
//! - [`registry`]: manifests and blobs from registries, errors sorted into what an operator can
//!   act on;
//! - [`hosts`]: where a registry is reached (mirrors, plain HTTP), from containerd's
//!   `hosts.toml` directory, so that both of an edge's runtimes pull from the same places;
//! - [`kinds`]: the kind of image a reference names, asked of its registry and remembered.

#[cfg(test)]
mod fuzz;
pub mod hosts;
pub mod kinds;
pub mod media;
pub mod registry;

pub use hosts::RegistryHosts;
pub use kinds::ImageKinds;
pub use media::{ImageKind, WasmLayout};
pub use oci_client::Reference;
pub use oci_client::secrets::RegistryAuth;
pub use registry::{RegistryClient, RegistryError};
