//! The kind of image (Wasm or container) a reference names, asked of its registry: the manifest
//! and the config blob, classified by [`crate::media::classify`], without pulling layers.
//!
//! Answers are remembered: by digest references for good, by tag for [`TAG_TTL`] (a tag may be
//! pushed again). The scheduler asks anonymously (a private image's kind stays unknown there,
//! and it falls back to what the pod says, its RuntimeClass); an edge asks with the pod's pull
//! credentials ([`ImageKinds::kind_with`]).
//!
//! A failed anonymous lookup is remembered too, for [`FAILURE_TTL`]: the scheduler and the
//! DaemonSet controller ask on every reconcile, and a registry the cloud cannot reach (one only
//! edges reach, or one that is down) would otherwise hold each reconcile up to its timeout.

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

/// How long a failed anonymous lookup is answered from memory.
pub const FAILURE_TTL: Duration = Duration::from_secs(30);

/// Resolves and remembers image kinds.
pub struct ImageKinds {
    registry: RegistryClient,
    known: Mutex<HashMap<String, (ImageKind, Instant)>>,
    failed: Mutex<HashMap<String, (RegistryError, Instant)>>,
}

impl ImageKinds {
    /// A resolver that reaches registries as `hosts` says (the edge's Wasm runtime uses the
    /// same configuration).
    pub fn new(hosts: RegistryHosts) -> Result<Self, RegistryError> {
        Ok(Self {
            registry: RegistryClient::new(hosts)?,
            known: Mutex::default(),
            failed: Mutex::default(),
        })
    }

    /// What `image` is, asked anonymously. A failure is remembered for [`FAILURE_TTL`].
    pub async fn kind_of(&self, image: &str) -> Result<ImageKind, RegistryError> {
        let failed = |lock: &Mutex<HashMap<String, (RegistryError, Instant)>>| {
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(image)
                .filter(|(_, at)| at.elapsed() < FAILURE_TTL)
                .map(|(error, _)| error.clone())
        };
        if let Some(error) = failed(&self.failed) {
            return Err(error);
        }
        let asked = self.kind_with(image, &RegistryAuth::Anonymous).await;
        let mut failures = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &asked {
            Ok(_) => {
                failures.remove(image);
            }
            Err(error) => {
                // Expired entries go as new failures come, so the map stays as small as the
                // set of images failing now.
                failures.retain(|_, (_, at)| at.elapsed() < FAILURE_TTL);
                failures.insert(image.to_owned(), (error.clone(), Instant::now()));
            }
        }
        asked
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_failed_anonymous_lookup_is_answered_from_memory_for_a_while() {
        // A "registry" that accepts connections and closes them at once, counting them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let kinds =
            ImageKinds::new(RegistryHosts::insecure(std::slice::from_ref(&host))).expect("client");
        let image = format!("{host}/app:1");
        assert!(kinds.kind_of(&image).await.is_err());
        let after_first = connections.load(Ordering::SeqCst);
        assert!(after_first > 0, "the registry was asked");
        let again = kinds.kind_of(&image).await.expect_err("still failing");
        assert!(again.to_string().contains(&image), "{again}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            after_first,
            "answered from memory"
        );
        // With credentials the registry is asked again: the anonymous failure says nothing
        // about them.
        let _ = kinds
            .kind_with(&image, &RegistryAuth::Basic("u".into(), "p".into()))
            .await;
        assert!(connections.load(Ordering::SeqCst) > after_first);
    }
}
