//! Kubeconfigs (the admin's, and those `wedge kubeconfig` issues): the server's URL, the CA to
//! trust, and a client certificate, written for `kubectl --kubeconfig` (or `KUBECONFIG=`) and for
//! the `kube` crate.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use wedge_pki::CertifiedKey;

/// The admin kubeconfig's text.
pub fn render(server: &str, ca_pem: &str, client: &CertifiedKey) -> String {
    render_for("wedge-admin", server, ca_pem, client)
}

/// The text of a kubeconfig whose user entry is `user`.
pub fn render_for(user: &str, server: &str, ca_pem: &str, client: &CertifiedKey) -> String {
    // Quoted as JSON, which YAML reads: user names may hold `:` and other YAML syntax.
    let user = serde_json::Value::String(user.to_owned());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: wedge
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: wedge
  context:
    cluster: wedge
    user: {user}
    namespace: default
current-context: wedge
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(&client.cert_pem),
        key = STANDARD.encode(&client.key_pem),
    )
}

/// Writes the admin kubeconfig, readable by its owner only (it holds a private key).
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    client: &CertifiedKey,
) -> std::io::Result<()> {
    write_for(path, "wedge-admin", server, ca_pem, client)
}

/// Writes a kubeconfig whose user entry is `user`, readable by its owner only.
pub fn write_for(
    path: &Path,
    user: &str,
    server: &str,
    ca_pem: &str,
    client: &CertifiedKey,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, render_for(user, server, ca_pem, client))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}
