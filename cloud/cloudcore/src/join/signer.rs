//! Signs edges' certificate requests. Only the public key is taken from the request: the
//! subject is always `system:node:<node>` in `system:nodes`, for client authentication, for the
//! validity the cloud chooses, whatever else the request asks for.

use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use wedge_pki::Pki;

use super::JoinError;

/// Whether `name` is a valid node name (a DNS-1123 subdomain).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A certificate for `node`, signed by the CA, from the key in `csr_pem`.
pub fn sign_node_csr(
    pki: &Pki,
    csr_pem: &str,
    node: &str,
    validity: std::time::Duration,
) -> Result<String, JoinError> {
    if !valid_node_name(node) {
        return Err(JoinError::BadNodeName(node.to_owned()));
    }
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| JoinError::BadCsr(e.to_string()))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, format!("system:node:{node}"));
    subject.push(DnType::OrganizationName, "system:nodes");
    let params = &mut csr.params;
    params.distinguished_name = subject;
    params.subject_alt_names = Vec::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = Vec::new();
    let now = time::OffsetDateTime::now_utc();
    // Backdated for clocks a little behind the cloud's, by at most a tenth of the validity so
    // that a short-lived certificate still falls due for renewal in the future.
    let backdate = time::Duration::minutes(5)
        .min(time::Duration::try_from(validity / 10).unwrap_or(time::Duration::ZERO));
    params.not_before = now - backdate;
    params.not_after =
        now + time::Duration::try_from(validity).map_err(|e| JoinError::Internal(e.to_string()))?;
    let internal = |e: rcgen::Error| JoinError::Internal(format!("signing: {e}"));
    let ca_key = KeyPair::from_pem(&pki.ca.key_pem).map_err(internal)?;
    let issuer = Issuer::from_ca_cert_pem(&pki.ca.cert_pem, ca_key).map_err(internal)?;
    let cert = csr.signed_by(&issuer).map_err(internal)?;
    Ok(cert.pem())
}

/// The record of a certificate just signed (`pem`), issued `by` a join or renewal.
pub fn issued(pem: &str, by: String) -> Result<super::certificates::Issued, JoinError> {
    let unreadable = || JoinError::Internal("the certificate just signed does not parse".into());
    let der = wedge_pki::pem_to_der(pem).ok_or_else(unreadable)?;
    let identity =
        crate::cloudhub::identity::identity_of_certificate(&der).ok_or_else(unreadable)?;
    Ok(super::certificates::Issued {
        serial: identity.certificate.serial,
        not_after: jiff::Timestamp::from_second(identity.not_after).map_err(|_| unreadable())?,
        issued: jiff::Timestamp::now(),
        by,
        revoked: None,
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, SanType};

    use super::*;

    #[test]
    fn the_certificate_names_the_node_whatever_the_request_asks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "system:node:other");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let pem = sign_node_csr(&pki, &csr, "edge-1", std::time::Duration::from_secs(3600))
            .expect("signed");
        let der = wedge_pki::pem_to_der(&pem).expect("der");
        let user = wedge_pki::subject_of(&der).expect("user");
        assert_eq!(user.name, "system:node:edge-1");
        assert_eq!(user.groups, ["system:nodes"]);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert!(!cert.is_ca());
        let sans = cert.subject_alternative_name().expect("ext");
        assert!(sans.is_none(), "no names from the request");
        let _ = SanType::DnsName("x".try_into().expect("name"));
    }

    #[test]
    fn bad_names_and_requests_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
        let d = std::time::Duration::from_secs(60);
        assert!(matches!(
            sign_node_csr(&pki, "x", "Edge_1", d),
            Err(JoinError::BadNodeName(_))
        ));
        assert!(matches!(
            sign_node_csr(&pki, "not a csr", "edge-1", d),
            Err(JoinError::BadCsr(_))
        ));
        assert!(valid_node_name("edge-1.site-a"));
        assert!(!valid_node_name("-edge"));
    }
}
