//! The envelope every frame carries, and the checks a frame passes before anyone acts on it.

use serde::{Deserialize, Serialize};

use super::reason::Reason;
use super::{MAX_FRAME_BYTES, VERSION};

/// What a frame asks for. KubeEdge's operations (insert, update, delete, response, error,
/// upload) plus the session's own (hello, welcome, sync-done, ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Edge → cloud, the first frame: who the edge is and what it holds.
    Hello,
    /// Cloud → edge, the answer to hello: the session's settings.
    Welcome,
    /// Cloud → edge: an object the edge does not hold yet.
    Insert,
    /// Cloud → edge: a newer version of an object; edge → cloud: a status or lease renewal.
    Update,
    /// Cloud → edge: an object the edge must forget; edge → cloud: a pod is gone from the edge.
    Delete,
    /// Cloud → edge: the resync after hello is complete.
    SyncDone,
    /// Either way: the frame named by `parent` was stored (edge) or written to the API (cloud).
    Ack,
    /// Either way: the frame named by `parent` was refused; the payload says why.
    Error,
    /// Edge → cloud: a sample of the node's and its containers' resource usage
    /// ([`super::usage::UsageSample`]). Not acknowledged, not kept, not resent: the newest
    /// sample replaces the one before.
    Usage,
    /// Edge → cloud: a question the cloud answers with one `response` (or `error`) naming it
    /// as `parent`: a ServiceAccount token for a pod. Not kept in the outbox: the edge asks
    /// again if the connection ends first.
    Query,
    /// Cloud → edge: the answer to the `query` named by `parent`.
    Response,
}

/// The kinds of resources that travel between cloud and edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// A core/v1 Pod bound to the edge's node (down), or its deletion confirmed (up).
    Pod,
    /// A core/v1 ConfigMap a pod on the edge references.
    ConfigMap,
    /// A core/v1 Secret a pod on the edge references.
    Secret,
    /// The edge's Node: registration, labels and status (up).
    NodeStatus,
    /// The edge's Lease renewal (up).
    Lease,
    /// A pod's status as Edged reports it (up).
    PodStatus,
    /// A `devices.kubeedge.io` Device bound to the edge's node (down).
    Device,
    /// A DeviceModel a Device on the edge names (down).
    DeviceModel,
    /// A Device's status (twins, state, last online) as DeviceTwin reports it (up).
    DeviceStatus,
    /// A `rules.kubeedge.io` Rule whose eventbus source is the edge's node (down).
    Rule,
    /// A message published on the edge's MQTT bus that a Rule routes to the cloud (up).
    Upload,
    /// A `node.k8s.io/v1` RuntimeClass a pod on the edge names (down, cluster-scoped): its
    /// handler picks the runtime the pod runs on.
    RuntimeClass,
    /// A core/v1 PersistentVolumeClaim a pod on the edge mounts (down).
    PersistentVolumeClaim,
    /// The core/v1 PersistentVolume such a claim is bound to (down, cluster-scoped): where the
    /// claim's directory is on the edge.
    PersistentVolume,
    /// A ServiceAccount token for a pod on the edge (a `query` up, named by the account; the
    /// `response` down carries the `TokenRequest` answered).
    ServiceAccountToken,
}

impl ResourceKind {
    /// The kinds the cloud sends down and the edge keeps.
    pub const DOWNSTREAM: [ResourceKind; 9] = [
        Self::Pod,
        Self::ConfigMap,
        Self::Secret,
        Self::Device,
        Self::DeviceModel,
        Self::Rule,
        Self::RuntimeClass,
        Self::PersistentVolumeClaim,
        Self::PersistentVolume,
    ];

    /// The kebab-case name, as in frames and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::ConfigMap => "config-map",
            Self::Secret => "secret",
            Self::NodeStatus => "node-status",
            Self::Lease => "lease",
            Self::PodStatus => "pod-status",
            Self::Device => "device",
            Self::DeviceModel => "device-model",
            Self::DeviceStatus => "device-status",
            Self::Rule => "rule",
            Self::Upload => "upload",
            Self::RuntimeClass => "runtime-class",
            Self::PersistentVolumeClaim => "persistent-volume-claim",
            Self::PersistentVolume => "persistent-volume",
            Self::ServiceAccountToken => "service-account-token",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Self::Pod
                | Self::ConfigMap
                | Self::Secret
                | Self::PodStatus
                | Self::Device
                | Self::DeviceModel
                | Self::DeviceStatus
                | Self::Rule
                | Self::PersistentVolumeClaim
                | Self::ServiceAccountToken
        )
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object a frame is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    /// Its kind.
    pub kind: ResourceKind,
    /// Its namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its uid, when known: deletions name the uid so that a newer object of the same name is
    /// never deleted by mistake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl ResourceRef {
    /// The key that identifies the object for coalescing and resync.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone(),
        }
    }
}

/// An object's identity on a session: kind, namespace, name. Repeated updates to one key
/// coalesce into the newest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The kind.
    pub kind: ResourceKind,
    /// The namespace, empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The protocol version, [`VERSION`].
    pub v: u32,
    /// The sender's id for this frame: strictly increasing on a connection, from 1.
    pub id: u64,
    /// The frame this one answers (acks, errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// When the sender made it, in milliseconds since the epoch.
    pub timestamp: i64,
    /// The object's resourceVersion, for frames that carry an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// What the frame asks for.
    pub operation: Operation,
    /// The object it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
    /// The object, status or message.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
}

/// Why a frame was refused. The receiver logs it, answers with an error frame where it can,
/// and carries on with the next frame: a bad frame never loses an object, and only a message
/// over the WebSocket's size limit (which cannot be skipped unread) ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Bigger than [`MAX_FRAME_BYTES`].
    #[error("frame of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON, or not an envelope.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u32),
    /// A field the operation needs is missing or wrong.
    #[error("{operation:?} frame {id}: {message}")]
    Incomplete {
        /// The operation.
        operation: Operation,
        /// The frame's id.
        id: u64,
        /// What is missing.
        message: String,
    },
    /// A text frame, where frames are binary.
    #[error("text frames are not part of the protocol; frames are binary JSON envelopes")]
    Text,
}

impl FrameError {
    /// A short machine-readable reason, as error frames carry it.
    pub fn reason(&self) -> Reason {
        match self {
            Self::TooLarge { .. } => Reason::FrameTooLarge,
            Self::Malformed(_) | Self::Text => Reason::MalformedFrame,
            Self::Version(_) => Reason::UnsupportedVersion,
            Self::Incomplete { .. } => Reason::IncompleteFrame,
        }
    }
}

impl Envelope {
    /// A frame with the current version and time, no parent, resource or payload.
    pub fn new(id: u64, operation: Operation) -> Self {
        Self {
            v: VERSION,
            id,
            parent: None,
            timestamp: jiff::Timestamp::now().as_millisecond(),
            resource_version: None,
            operation,
            resource: None,
            payload: serde_json::Value::Null,
        }
    }

    /// Sets the object the frame is about.
    pub fn with_resource(mut self, resource: ResourceRef) -> Self {
        self.resource = Some(resource);
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the resourceVersion.
    pub fn with_resource_version(mut self, rv: Option<String>) -> Self {
        self.resource_version = rv;
        self
    }

    /// An acknowledgement of frame `parent`.
    pub fn ack(id: u64, parent: u64) -> Self {
        let mut ack = Self::new(id, Operation::Ack);
        ack.parent = Some(parent);
        ack
    }

    /// A refusal of frame `parent` (0 when the frame could not be read far enough to know its
    /// id), with a reason and a message.
    pub fn error(id: u64, parent: u64, reason: Reason, message: &str) -> Self {
        let mut error = Self::new(id, Operation::Error);
        error.parent = Some(parent);
        error.payload = serde_json::json!({ "reason": reason, "message": message });
        error
    }

    /// The frame as bytes.
    pub fn encode(&self) -> Vec<u8> {
        // An Envelope is plain data with string keys: serialising it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads and checks a frame: size, JSON shape, version, and the fields its operation needs.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                size: bytes.len(),
                limit: MAX_FRAME_BYTES,
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if envelope.v != VERSION {
            return Err(FrameError::Version(envelope.v));
        }
        envelope.check()?;
        Ok(envelope)
    }

    fn check(&self) -> Result<(), FrameError> {
        let incomplete = |message: &str| FrameError::Incomplete {
            operation: self.operation,
            id: self.id,
            message: message.to_owned(),
        };
        if self.id == 0 {
            return Err(incomplete("id must be 1 or more"));
        }
        match self.operation {
            Operation::Ack | Operation::Error | Operation::Response if self.parent.is_none() => {
                Err(incomplete("an ack, error or response names its parent"))
            }
            Operation::Query => {
                let resource = self
                    .resource
                    .as_ref()
                    .ok_or_else(|| incomplete("names no resource"))?;
                if resource.name.is_empty()
                    || (resource.kind.namespaced()
                        && resource.namespace.as_deref().unwrap_or("").is_empty())
                {
                    return Err(incomplete("a query names a namespaced resource"));
                }
                if !self.payload.is_object() {
                    return Err(incomplete("payload must be an object"));
                }
                Ok(())
            }
            Operation::Insert | Operation::Update | Operation::Delete => {
                let resource = self
                    .resource
                    .as_ref()
                    .ok_or_else(|| incomplete("names no resource"))?;
                if resource.name.is_empty() {
                    return Err(incomplete("resource has no name"));
                }
                if resource.kind.namespaced()
                    && resource.namespace.as_deref().unwrap_or("").is_empty()
                {
                    return Err(incomplete("a namespaced resource needs a namespace"));
                }
                if self.operation != Operation::Delete && self.payload.is_null() {
                    return Err(incomplete("carries no payload"));
                }
                Ok(())
            }
            Operation::Hello | Operation::Welcome | Operation::Usage
                if !self.payload.is_object() =>
            {
                Err(incomplete("payload must be an object"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_ref() -> ResourceRef {
        ResourceRef {
            kind: ResourceKind::Pod,
            namespace: Some("default".into()),
            name: "p".into(),
            uid: Some("u1".into()),
        }
    }

    #[test]
    fn a_frame_survives_encode_and_decode() {
        let frame = Envelope::new(7, Operation::Insert)
            .with_resource(pod_ref())
            .with_resource_version(Some("42".into()))
            .with_payload(serde_json::json!({"kind": "Pod"}));
        let back = Envelope::decode(&frame.encode()).expect("decode");
        assert_eq!(back, frame);
        let text = String::from_utf8(frame.encode()).expect("utf8");
        assert!(text.contains(r#""operation":"insert""#), "{text}");
        assert!(text.contains(r#""kind":"pod""#), "{text}");
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "MalformedFrame"),
            (b"{}".to_vec(), "MalformedFrame"),
            (
                br#"{"v":2,"id":1,"timestamp":0,"operation":"ack","parent":1}"#.to_vec(),
                "UnsupportedVersion",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"teleport"}"#.to_vec(),
                "MalformedFrame",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"ack"}"#.to_vec(),
                "IncompleteFrame",
            ),
            (
                br#"{"v":1,"id":0,"timestamp":0,"operation":"ack","parent":3}"#.to_vec(),
                "IncompleteFrame",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"update","payload":{}}"#.to_vec(),
                "IncompleteFrame",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"update","resource":{"kind":"pod","name":"p"},"payload":{}}"#.to_vec(),
                "IncompleteFrame",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"insert","resource":{"kind":"pod","namespace":"d","name":"p"}}"#.to_vec(),
                "IncompleteFrame",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"hello","payload":[1]}"#.to_vec(),
                "IncompleteFrame",
            ),
            (
                br#"{"v":1,"id":1,"timestamp":0,"operation":"usage"}"#.to_vec(),
                "IncompleteFrame",
            ),
            (vec![b' '; MAX_FRAME_BYTES + 1], "FrameTooLarge"),
        ];
        for (bytes, reason) in cases {
            let err = Envelope::decode(&bytes).expect_err("must be refused");
            assert_eq!(
                err.reason().as_str(),
                reason,
                "{err} for {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
            );
        }
    }

    #[test]
    fn a_usage_frame_round_trips() {
        let sample = super::super::usage::UsageSample {
            node: Some(super::super::usage::Measurement {
                time: 1_795_000_000_000,
                cpu_nanos: 7,
                memory_bytes: 8,
            }),
            containers: vec![],
        };
        let frame = Envelope::new(3, Operation::Usage)
            .with_payload(serde_json::to_value(&sample).expect("json"));
        let text = String::from_utf8(frame.encode()).expect("utf8");
        assert!(text.contains(r#""operation":"usage""#), "{text}");
        let back = Envelope::decode(&frame.encode()).expect("decode");
        assert_eq!(back, frame);
        let payload: super::super::usage::UsageSample =
            serde_json::from_value(back.payload).expect("a sample");
        assert_eq!(payload, sample);
    }

    #[test]
    fn a_query_names_its_account_and_its_response_the_query() {
        let query = Envelope::new(4, Operation::Query)
            .with_resource(ResourceRef {
                kind: ResourceKind::ServiceAccountToken,
                namespace: Some("default".into()),
                name: "default".into(),
                uid: None,
            })
            .with_payload(serde_json::json!({"spec": {}}));
        let text = String::from_utf8(query.encode()).expect("utf8");
        assert!(text.contains(r#""kind":"service-account-token""#), "{text}");
        assert_eq!(Envelope::decode(&query.encode()), Ok(query));
        let no_namespace = br#"{"v":1,"id":1,"timestamp":0,"operation":"query","resource":{"kind":"service-account-token","name":"default"},"payload":{}}"#;
        assert_eq!(
            Envelope::decode(no_namespace).map_err(|e| e.reason()),
            Err(Reason::IncompleteFrame)
        );
        let orphan = br#"{"v":1,"id":1,"timestamp":0,"operation":"response","payload":{}}"#;
        assert_eq!(
            Envelope::decode(orphan).map_err(|e| e.reason()),
            Err(Reason::IncompleteFrame)
        );
    }

    #[test]
    fn a_deletion_needs_no_payload_and_a_cluster_scoped_kind_no_namespace() {
        let delete = Envelope::new(1, Operation::Delete).with_resource(pod_ref());
        assert!(Envelope::decode(&delete.encode()).is_ok());
        let node = Envelope::new(2, Operation::Update)
            .with_resource(ResourceRef {
                kind: ResourceKind::NodeStatus,
                namespace: None,
                name: "edge-1".into(),
                uid: None,
            })
            .with_payload(serde_json::json!({}));
        assert!(Envelope::decode(&node.encode()).is_ok());
    }
}
