//! The admin kubeconfig: the server's URL, the CA to trust, and a client certificate, written
//! for `kubectl --kubeconfig` (or `KUBECONFIG=`) and for the `kube` crate.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::pki::CertifiedKey;

/// The kubeconfig's text.
pub fn render(server: &str, ca_pem: &str, client: &CertifiedKey) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: wedge
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: wedge-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: wedge
  context:
    cluster: wedge
    user: wedge-admin
    namespace: default
current-context: wedge
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(&client.cert_pem),
        key = STANDARD.encode(&client.key_pem),
    )
}

/// Writes the kubeconfig, readable by its owner only (it holds a private key).
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    client: &CertifiedKey,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, render(server, ca_pem, client))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}
