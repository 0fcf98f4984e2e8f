//! What Edged's resolution of env, volumes, claims, image pull secrets and runtime classes reads
//! of the objects MetaManager holds: each in its Rust type, parsed once per version
//! ([`Object::typed`]), so a reconcile that resolves a pod again re-reads no JSON. A ConfigMap's
//! or Secret's data is kept decoded (base64 undone), shared by env and volumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::{Deserialize, Deserializer};
use wedge_core::protocol::ResourceKind;

use crate::metamanager::Object;

/// An object MetaManager holds, by kind, namespace and name.
pub type Lookup<'a> = dyn Fn(ResourceKind, &str, &str) -> Option<Arc<Object>> + 'a;

/// A ConfigMap's `data` and `binaryData`, key → bytes.
pub struct ConfigMapData(BTreeMap<String, Vec<u8>>);

impl<'de> Deserialize<'de> for ConfigMapData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = ConfigMap::deserialize(d)?;
        let text = map
            .data
            .into_iter()
            .flatten()
            .map(|(k, v)| (k, v.into_bytes()));
        let binary = map.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0));
        Ok(Self(text.chain(binary).collect()))
    }
}

/// A Secret's `data` (base64 on the wire) and `stringData`, key → bytes.
pub struct SecretData(BTreeMap<String, Vec<u8>>);

impl<'de> Deserialize<'de> for SecretData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secret = Secret::deserialize(d)?;
        let data = secret.data.into_iter().flatten().map(|(k, v)| (k, v.0));
        let text = secret
            .string_data
            .into_iter()
            .flatten()
            .map(|(k, v)| (k, v.into_bytes()));
        Ok(Self(data.chain(text).collect()))
    }
}

/// The decoded data of a ConfigMap or Secret.
pub enum KeyData {
    /// A ConfigMap's.
    ConfigMap(Arc<ConfigMapData>),
    /// A Secret's.
    Secret(Arc<SecretData>),
}

impl KeyData {
    /// Key → bytes.
    pub fn map(&self) -> &BTreeMap<String, Vec<u8>> {
        match self {
            Self::ConfigMap(d) => &d.0,
            Self::Secret(d) => &d.0,
        }
    }
}

/// The data of ConfigMap or Secret (`kind`) `namespace/name`: `None` when the edge does not hold
/// it, an error saying why when it cannot be read.
pub fn key_data(
    lookup: &Lookup<'_>,
    kind: ResourceKind,
    namespace: &str,
    name: &str,
) -> Option<Result<KeyData, String>> {
    let object = lookup(kind, namespace, name)?;
    let data = match kind {
        ResourceKind::Secret => object.typed::<SecretData>().map(KeyData::Secret),
        _ => object.typed::<ConfigMapData>().map(KeyData::ConfigMap),
    };
    Some(data.map_err(|e| format!("{} {namespace}/{name} cannot be read: {e}", kind)))
}

/// A lookup holding what `json` gives for a kind, namespace and name, for the unit tests.
#[cfg(test)]
pub(crate) fn holding(
    json: impl Fn(ResourceKind, &str, &str) -> Option<serde_json::Value>,
) -> impl Fn(ResourceKind, &str, &str) -> Option<Arc<Object>> {
    move |kind, namespace, name| {
        json(kind, namespace, name)
            .map(|object| crate::metamanager::held(kind, namespace, name, object))
    }
}
