//! Encryption at rest in the store: what reaches the SQLite file, rotation, unreadable rows.

use serde_json::json;
use wedge_core::encryption::EncryptionConfig;

use super::*;

const OLD: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const NEW: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// base64 of the Secret's value, as it sits in the object's JSON.
const VALUE: &str = "c3VwZXItc2VjcmV0LXZhbHVl";

fn config(providers: &[(&str, &str, &str)], identity: bool) -> EncryptionConfig {
    let mut text = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n",
    );
    for (provider, name, secret) in providers {
        text.push_str(&format!(
            "  - {provider}:\n      keys:\n      - name: {name}\n        secret: {secret}\n"
        ));
    }
    if identity {
        text.push_str("  - identity: {}\n");
    }
    EncryptionConfig::from_yaml(&text).expect("config")
}

fn secret(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "default"}, "data": {"password": VALUE}})
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("secrets", "default", name)
}

/// Every byte SQLite keeps for the database: the file, its WAL and shared memory.
fn disk_bytes(path: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(bytes) = std::fs::read(&file) {
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

fn open(path: &Path, encryption: EncryptionConfig) -> Store {
    Store::open_encrypted(path, HistoryLimits::default(), encryption).expect("open")
}

#[tokio::test]
async fn a_secret_is_encrypted_in_its_row_and_its_history_row_and_reads_back() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    {
        let store = open(&path, config(&[("aesgcm", "k1", OLD)], false));
        store.create(&key("s"), secret("s")).await.expect("create");
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "c", "namespace": "default"}, "data": {"plain": "visible-config"}});
        store
            .create(&ObjectKey::new("configmaps", "default", "c"), cm)
            .await
            .expect("create");
        assert_eq!(
            store.get(&key("s")).expect("get").value()["data"]["password"],
            VALUE
        );
        let bytes = disk_bytes(&path);
        assert!(
            !contains(&bytes, VALUE),
            "the secret's value is on disk in the clear"
        );
        assert!(contains(&bytes, "k8s:enc:aesgcm:v1:k1:"));
        assert!(
            contains(&bytes, "visible-config"),
            "what no rule lists is stored plain"
        );
        // A connection of the test's own: the writer thread owns the store's.
        let db = rusqlite::Connection::open(&path).expect("reading the file");
        for table in ["objects", "events"] {
            let data: Vec<u8> = db
                .query_row(
                    &format!("SELECT data FROM {table} WHERE resource = 'secrets'"),
                    [],
                    |r| r.get(0),
                )
                .expect("row");
            assert!(data.starts_with(b"k8s:enc:aesgcm:v1:k1:"), "{table}");
        }
    }
    let store = open(&path, config(&[("aesgcm", "k1", OLD)], false));
    assert_eq!(
        store.get(&key("s")).expect("get").value()["data"]["password"],
        VALUE
    );
    // The history, read back from disk, is plain in memory: a watch replays it.
    let mut watch = store.watch("secrets", None, 0).expect("watch");
    let event = watch.next().await.expect("event");
    assert_eq!(event.object.value()["data"]["password"], VALUE);
}

#[tokio::test]
async fn rotation_reads_old_keys_and_plain_rows_and_a_rewrite_moves_them_to_the_new_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    {
        let plain = open(&path, EncryptionConfig::default());
        plain
            .create(&key("before"), secret("before"))
            .await
            .expect("create");
    }
    {
        let store = open(&path, config(&[("aescbc", "old", OLD)], true));
        assert!(
            store.is_stale(&key("before")),
            "plain where secrets are now encrypted"
        );
        store.create(&key("s"), secret("s")).await.expect("create");
    }
    let store = open(
        &path,
        config(&[("secretbox", "new", NEW), ("aescbc", "old", OLD)], true),
    );
    assert!(store.is_stale(&key("s")));
    assert!(store.is_stale(&key("before")));
    for name in ["s", "before"] {
        let old = store
            .get(&key(name))
            .expect("reads under the old key or plain");
        assert_eq!(old.value()["data"]["password"], VALUE);
        store
            .update(&key(name), secret(name), Some(old.rv))
            .await
            .expect("rewrite");
        assert!(!store.is_stale(&key(name)));
    }
    drop(store);
    // The old key and identity gone: everything still reads.
    let store = open(&path, config(&[("secretbox", "new", NEW)], false));
    for name in ["s", "before"] {
        assert_eq!(
            store.get(&key(name)).expect("get").value()["data"]["password"],
            VALUE
        );
    }
}

#[tokio::test]
async fn a_row_no_key_reads_is_an_error_naming_its_key_for_reads_lists_and_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    {
        let store = open(&path, config(&[("aesgcm", "gone", OLD)], false));
        store.create(&key("s"), secret("s")).await.expect("create");
    }
    let store = open(&path, config(&[("aesgcm", "other", NEW)], true));
    let err = store.get(&key("s")).expect_err("unreadable");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Transform { .. }), "{message}");
    assert!(message.contains("\"gone\""), "names the key: {message}");
    assert!(message.contains("/registry/secrets/default/s"), "{message}");
    assert!(matches!(
        store.page_at("secrets", Some("default"), None, None, None, |_| true),
        Err(StoreError::Transform { .. })
    ));
    assert!(matches!(
        store.update(&key("s"), secret("s"), None).await,
        Err(StoreError::Transform { .. })
    ));
    assert!(matches!(
        store.delete(&key("s"), None).await,
        Err(StoreError::Transform { .. })
    ));
    // Other namespaces and resources are not affected.
    assert!(
        store
            .page_at("secrets", Some("other"), None, None, None, |_| true)
            .is_ok()
    );
    store
        .create(&key("t"), secret("t"))
        .await
        .expect("a new secret is written under the new key");
    // The history from before the unreadable event is gone: a watch from there relists.
    assert!(matches!(
        store.watch("secrets", None, 0),
        Err(StoreError::Gone { .. })
    ));
    drop(store);
    // Without any configuration, the encrypted row is still an error, not ciphertext served.
    let store = open(&path, EncryptionConfig::default());
    assert!(matches!(
        store.get(&key("s")),
        Err(StoreError::Transform { .. })
    ));
}
