//! The kind of image (Wasm or container) a reference names, asked of its registry: the manifest
//! and the config blob, classified by [`crate::media::classify`], without pulling layers.
//!
//! Answers are remembered: by digest references for good, by tag for [`TAG_TTL`] (a tag may be
//! pushed again). The scheduler asks anonymously (a private image's kind stays unknown there,
//! and it falls back to what the pod says, its RuntimeClass); an edge asks with the pod's pull
//! credentials ([`ImageKinds::kind_with`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

use crate::hosts::RegistryHosts;
use crate::media::{self, ImageKind};
use crate::registry::{RegistryClient, RegistryError};

/// How long the kind of a tagged image is remembered.
pub const TAG_TTL: Duration = Duration::from_secs(600);

/// Resolves and remembers image kinds.
pub struct ImageKinds {
    registry: RegistryClient,
    known: Mutex<HashMap<String, (ImageKind, Instant)>>,
}

impl ImageKinds {
    /// A resolver that reaches registries as `hosts` says (the edge's Wasm runtime uses the
    /// same configuration).
    pub fn new(hosts: RegistryHosts) -> Result<Self, RegistryError> {
        Ok(Self {
            registry: RegistryClient::new(hosts)?,
            known: Mutex::default(),
        })
    }

    /// What `image` is, asked anonymously.
    pub async fn kind_of(&self, image: &str) -> Result<ImageKind, RegistryError> {
        self.kind_with(image, &RegistryAuth::Anonymous).await
    }

    /// What `image` is, asked with `auth`.
    pub async fn kind_with(
        &self,
        image: &str,
        auth: &RegistryAuth,
    ) -> Result<ImageKind, RegistryError> {
        let remembered = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(image)
            .cloned();
        if let Some((kind, at)) = remembered
            && (image.contains('@') || at.elapsed() < TAG_TTL)
        {
            return Ok(kind);
        }
        let reference = Reference::from_str(image).map_err(|e| RegistryError::Other {
            reference: image.to_owned(),
            detail: format!("not an image reference: {e}"),
        })?;
        let (manifest, _) = self.registry.manifest(&reference, auth).await?;
        let config = self
            .registry
            .blob(&reference, auth, &manifest.config)
            .await?;
        let kind = media::classify(&manifest, &config);
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(image.to_owned(), (kind.clone(), Instant::now()));
        Ok(kind)
    }
}
