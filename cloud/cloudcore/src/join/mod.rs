//! Joining: how an edge with only a bootstrap token gets its client certificate.
//!
//! The edge fetches the CA (`GET /v1/join/ca`) and checks it against the hash its token pins,
//! then sends a CSR with the token's `<id>.<secret>` as bearer (`POST /v1/join/csr`) and gets a
//! certificate for `system:node:<node>` in `system:nodes`, signed by the hub's CA. From then on
//! it uses mutual TLS, and renews its certificate over it (`POST /v1/certificates/renew`)
//! before it expires. Tokens are kubeadm bootstrap-token Secrets ([`tokens`]), so they work the
//! same on the embedded API server and on a real cluster.
//!
//! A node's identity cannot be taken: a join as a node that is in use (connected, Ready, its
//! Lease fresh, or holding a valid certificate) is refused unless the token was made for that
//! node or to replace ([`admission`]); every certificate issued is recorded, and revoked when
//! its Node is deleted, when a join gives the node a new identity, or by hand
//! ([`certificates`]).

pub mod admission;
pub mod certificates;
pub mod http;
pub mod signer;
pub mod tokens;

use std::sync::Arc;

use wedge_core::protocol::Reason;
use wedge_pki::Pki;

/// Why a join or renewal was refused. The messages are what the edge's operator reads.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not `<id>.<secret>`.
    #[error("the token is malformed: expected <id>.<secret> from `wedge token create`")]
    MalformedToken,
    /// No such token.
    #[error(
        "unknown token {id}: it was never created here or has been deleted; run `wedge token create` on the cloud for a new one"
    )]
    UnknownToken {
        /// The token id.
        id: String,
    },
    /// The token expired.
    #[error("token {id} expired at {at}; run `wedge token create` on the cloud for a new one")]
    Expired {
        /// The token id.
        id: String,
        /// When it expired.
        at: String,
    },
    /// The secret does not match.
    #[error("token {id}: wrong secret; copy the whole token printed by `wedge token create`")]
    WrongSecret {
        /// The token id.
        id: String,
    },
    /// The token exists but was not made for edges (no bootstrap authentication, or not in
    /// the edges' group).
    #[error(
        "token {id} cannot join edges: it is not a bootstrap-authentication token of the group system:bootstrappers:wedge:edges; run `wedge token create` for one that can"
    )]
    NotForEdges {
        /// The token id.
        id: String,
    },
    /// The node name is not a valid Kubernetes node name.
    #[error(
        "{0:?} is not a valid node name: lowercase letters, digits, '-' and '.', at most 253 characters"
    )]
    BadNodeName(String),
    /// The CSR does not parse.
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    /// The request is not what the endpoint takes.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The token is bound to another node.
    #[error(
        "token {id} was made for node {bound} only (wedge token create --node {bound}), not for {asked}"
    )]
    TokenForOtherNode {
        /// The token id.
        id: String,
        /// The node it is bound to.
        bound: String,
        /// The node asked for.
        asked: String,
    },
    /// A single-use token was used already.
    #[error(
        "token {id} was single-use and has been used ({by}); run `wedge token create` for a new one"
    )]
    TokenUsed {
        /// The token id.
        id: String,
        /// By whom and when.
        by: String,
    },
    /// The node is in use and the token may not replace it.
    #[error(
        "node {node} is taken: {why}. A join cannot take over a node in use unless the operator says so: `wedge token create --node {node}` makes a token that may (the edge holding the name now is cut off and its certificates revoked); otherwise choose another --node name"
    )]
    NodeTaken {
        /// The node.
        node: String,
        /// What shows it is in use.
        why: String,
    },
    /// The client certificate is revoked.
    #[error("{0}")]
    Revoked(String),
    /// Renewal without a client certificate.
    #[error("renewing needs the edge's current client certificate (mutual TLS)")]
    NoClientCertificate,
    /// Signing or the API failed.
    #[error("the cloud failed: {0}")]
    Internal(String),
}

impl JoinError {
    /// The HTTP status and reason the endpoint answers with.
    pub fn status(&self) -> (u16, Reason) {
        match self {
            Self::MalformedToken
            | Self::UnknownToken { .. }
            | Self::Expired { .. }
            | Self::WrongSecret { .. }
            | Self::NotForEdges { .. } => (401, Reason::InvalidToken),
            Self::TokenUsed { .. } => (401, Reason::TokenUsed),
            Self::NoClientCertificate => (403, Reason::Forbidden),
            Self::TokenForOtherNode { .. } => (403, Reason::TokenBoundToNode),
            Self::NodeTaken { .. } => (409, Reason::NodeTaken),
            Self::Revoked(_) => (403, Reason::CertificateRevoked),
            Self::BadNodeName(_) | Self::BadCsr(_) | Self::BadRequest(_) => {
                (400, Reason::BadRequest)
            }
            Self::Internal(_) => (500, Reason::InternalError),
        }
    }
}

/// What the join endpoints need.
#[derive(Clone)]
pub struct JoinContext {
    /// Where tokens are kept.
    pub client: kube::Client,
    /// The CA that signs edge certificates.
    pub pki: Arc<Pki>,
    /// How long edge certificates are valid.
    pub cert_validity: std::time::Duration,
    /// The certificates issued to each node, and their revocations.
    pub certificates: Arc<certificates::Certificates>,
    /// The connected edges (a connected node is taken).
    pub sessions: Arc<crate::cloudhub::sessions::Sessions>,
}
