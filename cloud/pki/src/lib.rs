//! What the servers share (the API server, CloudHub, CloudStream, and the metrics endpoint
//! cloudcore and edgecore serve, [`metrics`]): the certificates, the TLS server configuration
//! ([`server_tls`]), and the accept loop with its limits ([`listener`]). A crate of its own so that cloudcore, which runs its
//! servers beside any API server, does not depend on the embedded one.
//!
//! The certificates: a CA generated on first start and kept, the serving certificate it
//! signs, and client certificates for users (the admin kubeconfig's, the components', the
//! edges').
//!
//! Everything lives as PEM files under `<data dir>/pki/`, keys readable by the owner only. A
//! serving certificate is issued again when it nears expiry or lacks a name the server is now
//! asked to answer to; the CA is never replaced, so kubeconfigs and edges that pinned it keep
//! working.

pub mod listener;
pub mod metrics;
pub mod server_tls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long serving and client certificates are valid.
const LEAF_VALIDITY: Duration = Duration::days(365);
/// A leaf certificate this close to expiry is issued again on start.
const RENEW_BEFORE: Duration = Duration::days(30);

/// Why certificates could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("{what}: {source}")]
    Cert {
        /// Which certificate.
        what: &'static str,
        /// What failed.
        source: rcgen::Error,
    },
    /// A stored certificate is not valid PEM or X.509.
    #[error("{0}: not a valid PEM certificate")]
    BadCertificate(PathBuf),
}

/// A certificate and its private key, as PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// The CA and the server's certificates.
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate and key.
    pub ca: CertifiedKey,
    /// The serving certificate and key.
    pub serving: CertifiedKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a file, private to its owner when it holds a key.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

/// The DNS names and IP addresses a certificate covers, and when it expires.
struct LeafInfo {
    names: Vec<String>,
    not_after: i64,
}

fn leaf_info(path: &Path, pem: &str) -> Result<LeafInfo, PkiError> {
    let bad = || PkiError::BadCertificate(path.to_owned());
    let der = pem_to_der(pem).ok_or_else(bad)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| bad())?;
    let mut names = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*ip).ok().map(IpAddr::from),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(LeafInfo {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The DER bytes of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn san(name: &str) -> Result<SanType, rcgen::Error> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

/// The common name of the API server's CA. (A CA made before names were given kept
/// `wedge-ca`: a CA is never replaced.)
pub const APISERVER_CA: &str = "wedge-apiserver-ca";

impl Pki {
    /// Loads the PKI under `data_dir/pki`, creating the CA on first start and (re)issuing the
    /// serving certificate when it is missing, near expiry, or lacks one of `names` (DNS names
    /// or IP addresses the server must answer to).
    /// The CA is the API server's ([`APISERVER_CA`]).
    pub fn load_or_create(data_dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        Self::load_or_create_with_ca(data_dir, APISERVER_CA, names)
    }

    /// [`Pki::load_or_create`] with a CA of another name (cloudcore's hub has its own CA, so
    /// that an operator can tell which one a certificate chains to).
    pub fn load_or_create_with_ca(
        data_dir: &Path,
        ca_name: &str,
        names: &[String],
    ) -> Result<Self, PkiError> {
        let dir = data_dir.join("pki");
        wedge_core::state::private_dir(&dir).map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
        let ca = Self::load_or_create_ca(&dir, ca_name)?;
        let mut pki = Self {
            dir,
            serving: ca.clone(),
            ca,
        };
        pki.serving = pki.load_or_issue_serving(names)?;
        Ok(pki)
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate's path (what clients are told to trust).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn load_or_create_ca(dir: &Path, name: &str) -> Result<CertifiedKey, PkiError> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if let (Some(cert_pem), Some(key_pem)) = (read(&cert_path)?, read(&key_path)?) {
            return Ok(CertifiedKey { cert_pem, key_pem });
        }
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("CA certificate"))?;
        let ca = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write(&key_path, &ca.key_pem, true)?;
        write(&cert_path, &ca.cert_pem, false)?;
        tracing::info!(path = %cert_path.display(), "generated the cluster CA");
        Ok(ca)
    }

    fn load_or_issue_serving(&self, names: &[String]) -> Result<CertifiedKey, PkiError> {
        let (cert_path, key_path) = (
            self.dir.join("apiserver.crt"),
            self.dir.join("apiserver.key"),
        );
        let mut wanted: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "::1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if !host.is_empty() {
                wanted.push(host.to_owned());
            }
        }
        wanted.extend(names.iter().cloned());
        wanted.sort();
        wanted.dedup();
        if let (Some(cert_pem), Some(key_pem)) = (read(&cert_path)?, read(&key_path)?) {
            let info = leaf_info(&cert_path, &cert_pem)?;
            let fresh =
                info.not_after > (OffsetDateTime::now_utc() + RENEW_BEFORE).unix_timestamp();
            let covers = wanted.iter().all(|n| info.names.contains(n));
            if fresh && covers {
                return Ok(CertifiedKey { cert_pem, key_pem });
            }
            tracing::info!(fresh, covers, "issuing the serving certificate again");
        }
        let serving = self.issue(
            "kube-apiserver",
            &[],
            &wanted,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write(&key_path, &serving.key_pem, true)?;
        write(&cert_path, &serving.cert_pem, false)?;
        Ok(serving)
    }

    /// Issues a client certificate for user `name` in `groups` (the subject's CN and O, as
    /// Kubernetes reads them).
    pub fn issue_client(&self, name: &str, groups: &[&str]) -> Result<CertifiedKey, PkiError> {
        self.issue(name, groups, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertifiedKey, PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca.key_pem).map_err(cert_err("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)
            .map_err(cert_err("CA certificate"))?;
        let key = KeyPair::generate().map_err(cert_err("key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for org in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params.subject_alt_names = names
            .iter()
            .map(|n| san(n))
            .collect::<Result<_, _>>()
            .map_err(cert_err("subject alternative name"))?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(cert_err("certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The private key kept as `<dir>/<name>.key` (PEM, ECDSA P-256), made (0600) when missing:
    /// a signing key of the server's own, such as the ServiceAccount token key (`sa`).
    pub fn load_or_create_key(&self, name: &str) -> Result<String, PkiError> {
        let path = self.dir.join(format!("{name}.key"));
        if let Some(pem) = read(&path)? {
            return Ok(pem);
        }
        let key = KeyPair::generate().map_err(cert_err("signing key"))?;
        let pem = key.serialize_pem();
        write(&path, &pem, true)?;
        tracing::info!(path = %path.display(), "generated a signing key");
        Ok(pem)
    }

    /// Loads the client certificate kept under `name` (e.g. `admin`), issuing it when missing,
    /// near expiry, or naming another user or groups (a kept certificate must not outlive a
    /// change of who a component is: the kubelet client's was once `system:masters`).
    pub fn load_or_issue_client(
        &self,
        file: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertifiedKey, PkiError> {
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        if let (Some(cert_pem), Some(key_pem)) = (read(&cert_path)?, read(&key_path)?) {
            let info = leaf_info(&cert_path, &cert_pem)?;
            let names = pem_to_der(&cert_pem)
                .and_then(|der| subject_of(&der))
                .is_some_and(|u| u.name == user && u.groups == groups);
            if names && info.not_after > (OffsetDateTime::now_utc() + RENEW_BEFORE).unix_timestamp()
            {
                return Ok(CertifiedKey { cert_pem, key_pem });
            }
        }
        let client = self.issue_client(user, groups)?;
        write(&key_path, &client.key_pem, true)?;
        write(&cert_path, &client.cert_pem, false)?;
        Ok(client)
    }
}

/// Who a client certificate names, as Kubernetes reads it: CN is the user, each O a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The user (CN).
    pub name: String,
    /// The groups (O), in order.
    pub groups: Vec<String>,
}

/// The subject of a certificate (DER), if it parses and has a CN. Whether it is to be trusted
/// is the TLS layer's question, answered before this is asked.
pub fn subject_of(der: &[u8]) -> Option<Subject> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Subject { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ca_is_named_for_what_it_signs_for() {
        let subject = |pki: &Pki| {
            let der = pem_to_der(&pki.ca.cert_pem).expect("der");
            let (_, cert) = X509Certificate::from_der(&der).expect("parse");
            cert.subject().to_string()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let api = Pki::load_or_create(&dir.path().join("api"), &[]).expect("pki");
        assert_eq!(subject(&api), "CN=wedge-apiserver-ca");
        let hub = Pki::load_or_create_with_ca(&dir.path().join("hub"), "wedge-cloudhub-ca", &[])
            .expect("pki");
        assert_eq!(subject(&hub), "CN=wedge-cloudhub-ca");
    }

    #[test]
    fn the_ca_is_kept_and_the_serving_certificate_follows_the_names_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Pki::load_or_create(dir.path(), &[]).expect("pki");
        let again = Pki::load_or_create(dir.path(), &[]).expect("pki");
        assert_eq!(first.ca.cert_pem, again.ca.cert_pem);
        assert_eq!(
            first.serving.cert_pem, again.serving.cert_pem,
            "nothing changed: nothing issued"
        );

        let wider = Pki::load_or_create(dir.path(), &["10.1.2.3".into(), "cloud.example".into()])
            .expect("pki");
        assert_eq!(
            first.ca.cert_pem, wider.ca.cert_pem,
            "the CA is never replaced"
        );
        let info = leaf_info(Path::new("x"), &wider.serving.cert_pem).expect("parse");
        assert!(
            info.names.contains(&"10.1.2.3".to_owned()),
            "{:?}",
            info.names
        );
        assert!(info.names.contains(&"cloud.example".to_owned()));
        assert!(info.names.contains(&"127.0.0.1".to_owned()));
    }

    #[test]
    fn a_kept_client_certificate_is_issued_again_when_its_subject_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
        let user = |c: &CertifiedKey| {
            let der = pem_to_der(&c.cert_pem).expect("der");
            subject_of(&der).expect("user")
        };
        let first = pki
            .load_or_issue_client("kc", "kube-apiserver-kubelet-client", &["system:masters"])
            .expect("issued");
        let kept = pki
            .load_or_issue_client("kc", "kube-apiserver-kubelet-client", &["system:masters"])
            .expect("kept");
        assert_eq!(first.cert_pem, kept.cert_pem, "nothing changed: kept");
        let now = pki
            .load_or_issue_client("kc", "kube-apiserver-kubelet-client", &[])
            .expect("issued again");
        assert!(user(&now).groups.is_empty(), "{:?}", user(&now));
        assert_eq!(user(&now).name, "kube-apiserver-kubelet-client");
    }
}
