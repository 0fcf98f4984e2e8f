//! Encryption at rest through real kubectl: a Secret's value never reaches the SQLite files in
//! the clear, and a key is rotated as kube's docs say (new key first, restart, replace every
//! Secret, drop the old key, restart); a Secret left under a removed key is a 500 naming it.

use std::path::Path;

use wedge_apiserver::{Server, ServerConfig};

use super::harness::kubectl_with;

const OLD: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const NEW: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// What `kubectl create secret --from-literal=password=super-secret-value` stores, base64.
const STORED: &str = "c3VwZXItc2VjcmV0LXZhbHVl";

/// Writes an `EncryptionConfiguration` for secrets with `keys` (provider, name, secret) in
/// order, `identity` last when asked.
fn write_config(path: &Path, keys: &[(&str, &str, &str)], identity: bool) {
    let mut text = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n",
    );
    for (provider, name, secret) in keys {
        text.push_str(&format!(
            "      - {provider}:\n          keys:\n            - name: {name}\n              secret: {secret}\n"
        ));
    }
    if identity {
        text.push_str("      - identity: {}\n");
    }
    std::fs::write(path, text).expect("write the config");
}

async fn start(dir: &Path, config: &Path) -> Server {
    let mut server = ServerConfig::new(dir, "127.0.0.1:0".parse().expect("addr"));
    server.encryption_provider_config = Some(config.to_owned());
    Server::start(server).await.expect("API server starts")
}

/// Every byte SQLite keeps for the database: the file, its WAL and shared memory.
fn disk_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for file in ["wedge.db", "wedge.db-wal", "wedge.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn ok(server: &Server, args: &[&str]) -> String {
    let out = kubectl_with(server.kubeconfig_path(), args, None);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn password(server: &Server, name: &str) -> String {
    ok(
        server,
        &["get", "secret", name, "-o", "jsonpath={.data.password}"],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_encrypted_on_disk_and_a_key_rotates_through_kubectl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("apiserver");
    let config = dir.path().join("encryption.yaml");

    // A Secret stored plain, before encryption was on.
    {
        let server = Server::start(ServerConfig::new(
            &data,
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .await
        .expect("starts");
        ok(
            &server,
            &[
                "create",
                "secret",
                "generic",
                "before",
                "--from-literal=password=super-secret-value",
            ],
        );
        server.shutdown().await;
    }

    // On, with the old key (identity after it: the plain one still reads).
    write_config(&config, &[("aescbc", "old", OLD)], true);
    let server = start(&data, &config).await;
    ok(
        &server,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=password=super-secret-value",
        ],
    );
    assert_eq!(password(&server, "s1"), STORED);
    assert_eq!(password(&server, "before"), STORED);
    server.shutdown().await;
    let bytes = disk_bytes(&data);
    assert!(
        contains(&bytes, "k8s:enc:aescbc:v1:old:"),
        "s1 is stored under the old key"
    );

    // Rotation, step 1: the new key first, the old one still listed.
    write_config(
        &config,
        &[("aesgcm", "new", NEW), ("aescbc", "old", OLD)],
        true,
    );
    let server = start(&data, &config).await;
    assert_eq!(password(&server, "s1"), STORED, "the old key still reads");
    // Step 2: rewrite every Secret; unchanged ones are written too.
    let all = ok(&server, &["get", "secrets", "-A", "-o", "json"]);
    // --validate=false: kubectl does not find what it validates a v1 List against in the
    // server's OpenAPI (a gap of its own, apart from encryption).
    let out = kubectl_with(
        server.kubeconfig_path(),
        &["replace", "--validate=false", "-f", "-"],
        Some(&all),
    );
    assert!(
        out.status.success(),
        "replace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;

    // Step 3: the old key and identity gone. Everything reads, nothing is plain on disk.
    write_config(&config, &[("aesgcm", "new", NEW)], false);
    let server = start(&data, &config).await;
    assert_eq!(password(&server, "s1"), STORED);
    assert_eq!(password(&server, "before"), STORED);
    ok(
        &server,
        &[
            "create",
            "secret",
            "generic",
            "s2",
            "--from-literal=password=super-secret-value",
        ],
    );
    let listed = ok(&server, &["get", "secrets", "-o", "name"]);
    for name in ["secret/before", "secret/s1", "secret/s2"] {
        assert!(listed.contains(name), "{name} in {listed}");
    }
    server.shutdown().await;
    let bytes = disk_bytes(&data);
    assert!(contains(&bytes, "k8s:enc:aesgcm:v1:new:"));
    // The plain copy from before encryption, and the aescbc ones, were overwritten
    // (secure_delete) or are in WAL frames since reused: the current rows are what count,
    // and no row holds the value in the clear.
    let db = rusqlite::Connection::open(data.join("wedge.db")).expect("open the db");
    let plain_rows: i64 = db
        .query_row(
            "SELECT (SELECT count(*) FROM objects WHERE resource = 'secrets' AND instr(data, ?1) > 0)
                  + (SELECT count(*) FROM events WHERE resource = 'secrets' AND instr(data, ?1) > 0)",
            [STORED.as_bytes()],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(plain_rows, 0, "a row holds the Secret's value in the clear");
    let stale_rows: i64 = db
        .query_row(
            "SELECT count(*) FROM objects WHERE resource = 'secrets' AND substr(data, 1, 22) != CAST('k8s:enc:aesgcm:v1:new:' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(stale_rows, 0, "every Secret is under the new key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_under_a_removed_key_is_a_500_naming_the_key_and_the_rest_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("apiserver");
    let config = dir.path().join("encryption.yaml");
    write_config(&config, &[("secretbox", "removed-too-early", OLD)], false);
    let server = start(&data, &config).await;
    ok(
        &server,
        &[
            "create",
            "secret",
            "generic",
            "lost",
            "--from-literal=password=super-secret-value",
        ],
    );
    ok(
        &server,
        &["create", "configmap", "kept", "--from-literal=a=b"],
    );
    server.shutdown().await;

    write_config(&config, &[("secretbox", "replacement", NEW)], true);
    let server = start(&data, &config).await;
    for args in [
        &["get", "secret", "lost"][..],
        &["get", "secrets"][..],
        &["delete", "secret", "lost"][..],
    ] {
        let out = kubectl_with(server.kubeconfig_path(), args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        assert!(
            stderr.contains("removed-too-early")
                && stderr.contains("/registry/secrets/default/lost"),
            "kubectl {args:?}: {stderr}"
        );
    }
    let raw = ok(
        &server,
        &["get", "--raw", "/api/v1/namespaces/default/configmaps/kept"],
    );
    assert!(raw.contains("\"a\":\"b\""), "{raw}");
    ok(
        &server,
        &["create", "secret", "generic", "fresh", "--from-literal=k=v"],
    );
    // The missing key put back (second): the Secret reads again.
    server.shutdown().await;
    write_config(
        &config,
        &[
            ("secretbox", "replacement", NEW),
            ("secretbox", "removed-too-early", OLD),
        ],
        false,
    );
    let server = start(&data, &config).await;
    assert_eq!(password(&server, "lost"), STORED);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_configuration_stops_the_server_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("encryption.yaml");
    write_config(&config, &[("aesgcm", "short", "MTIzNDU2Nzg=")], false);
    let mut server = ServerConfig::new(dir.path().join("a"), "127.0.0.1:0".parse().expect("addr"));
    server.encryption_provider_config = Some(config.clone());
    let Err(err) = Server::start(server).await else {
        panic!("the server started");
    };
    assert!(err.to_string().contains("8 bytes"), "{err}");
    let mut server = ServerConfig::new(dir.path().join("b"), "127.0.0.1:0".parse().expect("addr"));
    server.encryption_provider_config = Some(dir.path().join("missing.yaml"));
    let Err(err) = Server::start(server).await else {
        panic!("the server started");
    };
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}
