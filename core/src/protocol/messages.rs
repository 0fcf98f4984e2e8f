//! Payloads that are not Kubernetes objects: the session's opening, refusals, and what the edge
//! reports up (its node, its lease, its pods' statuses).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeStatus;
use serde::{Deserialize, Serialize};

use super::envelope::{ObjectKey, ResourceKind};

/// An object the edge holds, as it states it in [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldObject {
    /// Its kind.
    pub kind: ResourceKind,
    /// Its namespace (empty for cluster-scoped kinds).
    #[serde(default)]
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// The resourceVersion the edge holds.
    pub resource_version: String,
}

impl HeldObject {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// Edge → cloud, the first frame of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The node the edge is. Must match the name in its client certificate.
    pub node: String,
    /// edgecore's version, for logs.
    #[serde(default)]
    pub agent_version: String,
    /// Every object the edge holds: the cloud sends only what differs.
    #[serde(default)]
    pub held: Vec<HeldObject>,
}

/// Cloud → edge, the answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// How often the edge should report its node status, in seconds.
    pub node_status_seconds: u32,
    /// How often the edge should renew its lease, in seconds.
    pub lease_renew_seconds: u32,
    /// How many unacknowledged frames the cloud has in flight at most; the edge should keep
    /// to the same.
    pub max_in_flight: u32,
}

/// The payload of an error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// A machine-readable reason: `MalformedFrame`, `Forbidden`, `OutOfOrder`...
    pub reason: String,
    /// What happened, for people.
    pub message: String,
}

/// Edge → cloud: the node's registration and status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Labels the edge sets on its Node (hostname, os, arch, the runtimes it offers).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node's status: capacity, allocatable, conditions, addresses, node info.
    pub status: NodeStatus,
}

/// Edge → cloud: a lease renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRenewal {
    /// The lease's duration, in seconds.
    pub duration_seconds: i32,
}
