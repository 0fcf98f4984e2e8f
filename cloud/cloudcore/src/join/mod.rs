//! Placeholder until the join module lands.
pub mod http;
use std::sync::Arc;
/// Joins.
#[derive(Clone)]
pub struct JoinContext {
    /// API client.
    pub client: kube::Client,
    /// The PKI.
    pub pki: Arc<wedge_apiserver::pki::Pki>,
}
