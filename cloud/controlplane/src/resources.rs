//! The resource types the API serves, from discovery: what the garbage collector watches and
//! what the namespace controller empties. Rediscovered periodically, so custom resources
//! installed later are covered too.

use kube::Client;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

/// A resource type the controllers can watch and delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// Group, version, kind and plural.
    pub api: ApiResource,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

/// Every served, preferred-version resource type that can be listed, watched and deleted.
pub async fn discover(client: &Client) -> Result<Vec<ResourceType>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (api, caps) in group.recommended_resources() {
            if usable(&caps) {
                out.push(ResourceType {
                    namespaced: caps.scope == Scope::Namespaced,
                    api,
                });
            }
        }
    }
    Ok(out)
}

fn usable(caps: &ApiCapabilities) -> bool {
    [verbs::LIST, verbs::WATCH, verbs::DELETE]
        .iter()
        .all(|v| caps.supports_operation(v))
}
