//! The error every reconciler returns: an API request that failed. The controller logs it and
//! retries the object with backoff; nothing else is lost, since the next reconcile starts again
//! from what the API holds.

/// A failed API request, with what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub struct Error {
    /// What was being done (`create pod for`, `bind`).
    pub action: &'static str,
    /// The object it was done for (`kind namespace/name`).
    pub object: String,
    /// The client's error.
    #[source]
    pub source: kube::Error,
}

impl Error {
    /// An error doing `action` for `object`.
    pub fn api<K: kube::Resource<DynamicType = ()>>(
        action: &'static str,
        object: &K,
        source: kube::Error,
    ) -> Self {
        let meta = object.meta();
        Self {
            action,
            object: format!(
                "{} {}/{}",
                K::kind(&()),
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
            source,
        }
    }

    /// Whether the API said the object is gone or changed meanwhile (nothing to retry).
    pub fn is_gone_or_conflict(source: &kube::Error) -> bool {
        matches!(source, kube::Error::Api(s) if s.is_not_found() || s.is_conflict())
    }
}
