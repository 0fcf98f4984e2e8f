//! Which node a client certificate stands for. Edge certificates follow Kubernetes' node
//! convention: CN `system:node:<name>`, O `system:nodes`. Only certificates the TLS layer
//! verified against the cloud CA reach this.

use crate::join::certificates::Presented;

/// The node name of an edge certificate, or `None` for any other certificate.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let user = wedge_pki::subject_of(der)?;
    let node = user.name.strip_prefix("system:node:")?;
    (user.groups.iter().any(|g| g == "system:nodes") && !node.is_empty()).then(|| node.to_owned())
}

/// An edge certificate: its node, serial and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeIdentity {
    /// The node it names.
    pub node: String,
    /// Its serial and notBefore, as the revocation records check them.
    pub certificate: Presented,
    /// Its notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// The identity in an edge certificate, or `None` for any other certificate.
pub fn identity_of_certificate(der: &[u8]) -> Option<EdgeIdentity> {
    let node = node_of_certificate(der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    Some(EdgeIdentity {
        node,
        certificate: Presented {
            serial: serial_hex(cert.raw_serial()),
            not_before: validity.not_before.timestamp(),
        },
        not_after: validity.not_after.timestamp(),
    })
}

/// A serial number as the records keep it: lowercase hex, leading zero bytes dropped.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let hex: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() { "00".into() } else { hex }
}
