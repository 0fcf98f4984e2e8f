//! Which node a client certificate stands for. Edge certificates follow Kubernetes' node
//! convention: CN `system:node:<name>`, O `system:nodes`. Only certificates the TLS layer
//! verified against the cloud CA reach this.

/// The node name of an edge certificate, or `None` for any other certificate.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let user = wedge_apiserver::auth::user_from_certificate(der)?;
    let node = user.name.strip_prefix("system:node:")?;
    (user.groups.iter().any(|g| g == "system:nodes") && !node.is_empty()).then(|| node.to_owned())
}
