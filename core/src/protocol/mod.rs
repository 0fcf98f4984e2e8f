//! The cloud–edge protocol: what CloudHub and EdgeHub say to each other over their one WebSocket.
//!
//! `docs/PROTOCOL.md` is the specification; this module is its types and its pure rules, so that
//! both ends decode, validate and reconcile the same way and the rules are unit-tested without
//! sockets. Every frame is one binary WebSocket message holding one JSON [`Envelope`]: JSON because
//! operators read frames in logs and captures, and because the payloads are Kubernetes objects,
//! which are JSON already.
//!
//! - [`envelope`]: the envelope, its operations and resources, and [`envelope::Envelope::decode`],
//!   which refuses malformed, oversized and incomplete frames with a reason.
//! - [`messages`]: the payloads of the operations that are not Kubernetes objects (hello, welcome,
//!   errors, pod statuses, deletion confirmations).
//! - [`sync`]: the incremental resync: what an edge holds against what it should hold.
//! - [`order`]: the per-connection ordering rule (ids strictly increase).
//! - [`reason`]: why a peer refused something, and whether sending it again can help.
//! - [`usage`]: the usage samples edges send (`usage` frames) and the rates derived from two.

pub mod envelope;
pub mod messages;
pub mod mux;
pub mod order;
pub mod reason;
pub mod stream;
pub mod sync;
pub mod usage;

pub use envelope::{Envelope, FrameError, ObjectKey, Operation, ResourceKind, ResourceRef};
pub use reason::Reason;

/// The protocol version in every envelope's `v`. A peer refuses frames of another version.
pub const VERSION: u32 = 1;

/// The WebSocket subprotocol the edge asks for and the cloud accepts.
pub const SUBPROTOCOL: &str = "wedge.edge.v1";

/// The path of the edge WebSocket on CloudHub's port.
pub const EDGE_PATH: &str = "/v1/edge";

/// The largest frame either side accepts. Kubernetes keeps objects under 1.5 MiB in etcd; a pod
/// or ConfigMap with its envelope fits well inside this.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
