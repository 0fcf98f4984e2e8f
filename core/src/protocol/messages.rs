//! Payloads that are not Kubernetes objects: the session's opening, refusals, and what the edge
//! reports up (its node, its lease, its pods' statuses, the messages Rules route to the cloud).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeStatus;
use serde::{Deserialize, Serialize};

use super::envelope::{ObjectKey, ResourceKind};
use super::reason::Reason;

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
    /// For pods, Devices and Rules, the hash of what the edge was sent of the version it holds
    /// ([`super::sync::edge_view`]): the cloud does not send a change of their status alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
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

/// Cloud → edge, the answer to [`Hello`]: what the cloud decides for the connection. How
/// often the edge reports its node status and renews its lease is the edge's to decide
/// (edgecore's flags, as a kubelet's configuration decides them); cloudcore before this sent
/// those too (`nodeStatusSeconds`, `leaseRenewSeconds`), and they are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// How many unacknowledged frames the cloud has in flight at most; the edge keeps its
    /// reports to the same window (or its own, if smaller). 0 (absent): the edge's own.
    #[serde(default)]
    pub max_in_flight: u32,
    /// How often the cloud pings, in seconds: the edge pings as often, and ends a connection
    /// silent for three of them. Absent (an older cloudcore): the edge's own interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_seconds: Option<u32>,
}

/// The payload of an error frame, and the body of CloudHub's HTTP refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// A machine-readable reason: `MalformedFrame`, `Forbidden`, `OutOfOrder`...
    pub reason: Reason,
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
    /// Annotations the edge sets on its Node (the directory of its local volumes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
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

/// A message from the edge's MQTT bus that a Rule routes to the cloud (kind `upload`, up).
/// The payload travels as text when it is UTF-8 without control characters (JSON, mostly), and
/// in base64 otherwise: JSON escapes a control character in six bytes, base64 any byte in at
/// most two, so a payload never grows more than twofold on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    /// The topic it was published on.
    pub topic: String,
    /// The payload, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload in standard base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl Upload {
    /// The message published on `topic` with `payload`.
    pub fn new(topic: &str, payload: &[u8]) -> Self {
        use base64::Engine;
        let plain = |text: &str| {
            !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        };
        match std::str::from_utf8(payload) {
            Ok(text) if plain(text) => Self {
                topic: topic.to_owned(),
                payload: Some(text.to_owned()),
                payload_base64: None,
            },
            _ => Self {
                topic: topic.to_owned(),
                payload: None,
                payload_base64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            },
        }
    }

    /// The payload's bytes, as published.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        match (&self.payload, &self.payload_base64) {
            (_, Some(encoded)) => base64::engine::general_purpose::STANDARD.decode(encoded),
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, None) => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_carry_text_as_text_and_anything_else_in_base64() {
        let text = Upload::new("default/test", br#"{"t":21.5}"#);
        assert_eq!(
            serde_json::to_value(&text).expect("json"),
            serde_json::json!({"topic": "default/test", "payload": "{\"t\":21.5}"})
        );
        let binary = Upload::new("default/raw", &[0xff, 0x00, 0x01]);
        assert_eq!(binary.payload_base64.as_deref(), Some("/wAB"));
        assert_eq!(binary.bytes().expect("decodes"), [0xff, 0x00, 0x01]);
        let control = Upload::new("default/raw", b"a\x01b");
        assert_eq!(control.bytes().expect("decodes"), b"a\x01b");
        assert!(control.payload.is_none(), "control characters go in base64");
        assert!(Upload::new("t", b"line\n\tnext").payload.is_some());
        let bad = Upload {
            payload_base64: Some("not base64!".into()),
            ..binary
        };
        assert!(bad.bytes().is_err());
    }
}
