//! MetaManager's store: every object the cloud sent, applied idempotently by resourceVersion.
//!
//! Objects of the kinds the edge's `EncryptionConfiguration` lists (Secrets, at least) are
//! stored encrypted, as a BLOB in kube's format; the others as JSON text. The storage key their
//! `aesgcm` ciphertext is bound to is `/edge/<kind>/<namespace>/<name>`.

use std::sync::Arc;

use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, params};
use wedge_core::encryption::EncryptionConfig;
use wedge_core::protocol::messages::HeldObject;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use super::{Database, Pending, StoreError, sql};

/// What applying an object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The edge did not hold it.
    Inserted,
    /// It replaced an older version, or another object (another uid) of the same name.
    Updated,
    /// The edge holds this version or a newer one: nothing was written.
    Unchanged,
}

/// An object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Its key.
    pub key: ObjectKey,
    /// Its uid.
    pub uid: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// The object.
    pub object: serde_json::Value,
}

/// MetaManager's objects.
#[derive(Clone, Debug)]
pub struct MetaStore {
    pub(super) db: Database,
}

/// Whether `new` is newer than `old`: numerically when both are numbers (the API server's
/// versions are), else any other string counts as newer.
fn newer(new: &str, old: &str) -> bool {
    match (new.parse::<u64>(), old.parse::<u64>()) {
        (Ok(n), Ok(o)) => n > o,
        _ => new != old,
    }
}

fn kind_of(text: &str, key: &str) -> Result<ResourceKind, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| {
        StoreError::Corrupt {
            what: "kind",
            key: key.to_owned(),
            message: e.to_string(),
        }
    })
}

/// The resource an `EncryptionConfiguration` names objects of this kind by.
fn resource_of(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Pod | ResourceKind::PodStatus => "pods",
        ResourceKind::ConfigMap => "configmaps",
        ResourceKind::Secret => "secrets",
        ResourceKind::NodeStatus => "nodes",
        ResourceKind::Lease => "leases.coordination.k8s.io",
        ResourceKind::Device | ResourceKind::DeviceStatus => "devices.devices.kubeedge.io",
        ResourceKind::DeviceModel => "devicemodels.devices.kubeedge.io",
        ResourceKind::Rule => "rules.rules.kubeedge.io",
        ResourceKind::Upload => "uploads",
        ResourceKind::RuntimeClass => "runtimeclasses.node.k8s.io",
        ResourceKind::PersistentVolumeClaim => "persistentvolumeclaims",
        ResourceKind::PersistentVolume => "persistentvolumes",
        ResourceKind::ServiceAccountToken => "serviceaccounts",
    }
}

/// What an object's ciphertext is bound to (`aesgcm`'s authenticated data).
fn context(kind: &str, namespace: &str, name: &str) -> String {
    format!("/edge/{kind}/{namespace}/{name}")
}

/// The bytes of a stored object column, whether text (plain JSON) or a BLOB (encrypted).
fn column_bytes(value: SqlValue) -> Vec<u8> {
    match value {
        SqlValue::Text(text) => text.into_bytes(),
        SqlValue::Blob(bytes) => bytes,
        _ => Vec::new(),
    }
}

/// What to store for `json` of an object of `kind`: a BLOB when its resource is encrypted,
/// the text otherwise.
fn to_column(
    encryption: &EncryptionConfig,
    kind: ResourceKind,
    context: &str,
    json: Vec<u8>,
) -> Result<SqlValue, StoreError> {
    match encryption.for_resource(resource_of(kind)) {
        Some(t) if !t.writes_plain() => t
            .encrypt(&json, context.as_bytes())
            .map(SqlValue::Blob)
            .map_err(|e| StoreError::Corrupt {
                what: "object",
                key: context.to_owned(),
                message: e.to_string(),
            }),
        _ => Ok(SqlValue::Text(String::from_utf8_lossy(&json).into_owned())),
    }
}

type Row = (String, String, String, String, String, SqlValue);

fn stored(encryption: &EncryptionConfig, row: Row) -> Result<StoredObject, StoreError> {
    let (kind, namespace, name, uid, resource_version, object) = row;
    let display = format!("{kind} {namespace}/{name}");
    let key = ObjectKey {
        kind: kind_of(&kind, &display)?,
        namespace,
        name,
    };
    let corrupt = |message: String| StoreError::Corrupt {
        what: "object",
        key: display.clone(),
        message,
    };
    let plain = encryption
        .decrypt_for(
            resource_of(key.kind),
            &column_bytes(object),
            context(&kind, &key.namespace, &key.name).as_bytes(),
        )
        .map_err(|e| corrupt(e.to_string()))?;
    let object = serde_json::from_slice(&plain.data).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredObject {
        key,
        uid,
        resource_version,
        object,
    })
}

/// Stores `object` in the writer's transaction unless the edge holds this version (or a newer
/// one) of the same uid.
fn apply_in(
    conn: &rusqlite::Connection,
    encryption: &EncryptionConfig,
    key: &ObjectKey,
    uid: &str,
    resource_version: &str,
    object: &serde_json::Value,
) -> Result<Applied, StoreError> {
    let kind = key.kind.as_str();
    let current: Option<(String, String)> = conn
        .prepare_cached(
            // A damaged row counts as not held, so the object replaces it (an encrypted one is
            // known to decrypt: `reencrypt` dropped those that do not at start).
            "SELECT uid, resource_version FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND (json_valid(object) OR typeof(object) = 'blob')",
        )
        .and_then(|mut s| {
            s.query_row(params![kind, key.namespace, key.name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(sql(format!("reading {key}")))?;
    let applied = match &current {
        None => Applied::Inserted,
        Some((held_uid, held_rv)) if held_uid == uid && !newer(resource_version, held_rv) => {
            return Ok(Applied::Unchanged);
        }
        Some(_) => Applied::Updated,
    };
    let column = to_column(
        encryption,
        key.kind,
        &context(kind, &key.namespace, &key.name),
        object.to_string().into_bytes(),
    )?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO objects (kind, namespace, name, uid, resource_version, object) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![kind, key.namespace, key.name, uid, resource_version, column]))
    .map_err(sql(format!("storing {key}")))?;
    Ok(applied)
}

/// Forgets an object in the writer's transaction, only if it has `uid` (when given).
fn delete_in(
    conn: &rusqlite::Connection,
    key: &ObjectKey,
    uid: Option<&str>,
) -> Result<bool, StoreError> {
    let removed = match uid {
        Some(uid) => conn.execute(
            "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND uid = ?4",
            params![key.kind.as_str(), key.namespace, key.name, uid],
        ),
        None => conn.execute(
            "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
            params![key.kind.as_str(), key.namespace, key.name],
        ),
    }
    .map_err(sql(format!("deleting {key}")))?;
    Ok(removed > 0)
}

impl MetaStore {
    /// Stores `object` unless the edge holds this version (or a newer one) of the same uid;
    /// resolves once it is durable.
    pub async fn apply(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        object: &serde_json::Value,
    ) -> Result<Applied, StoreError> {
        self.apply_then(
            key.clone(),
            uid.to_owned(),
            resource_version.to_owned(),
            Arc::new(object.clone()),
            |_| {},
        )
        .await
    }

    /// As [`MetaStore::apply`]; `then` runs once the object is stored, on the writer thread in
    /// the order writes were queued, before the caller hears: what keeps a copy in memory in the
    /// order of the disk.
    pub(crate) async fn apply_then(
        &self,
        key: ObjectKey,
        uid: String,
        resource_version: String,
        object: Arc<serde_json::Value>,
        then: impl FnOnce(Applied) + Send + 'static,
    ) -> Result<Applied, StoreError> {
        self.queue_apply_then(key, uid, resource_version, object, then)
            .await?
            .wait()
            .await
    }

    /// As [`MetaStore::apply_then`], returning once the write is queued, with its answer.
    pub(crate) async fn queue_apply_then(
        &self,
        key: ObjectKey,
        uid: String,
        resource_version: String,
        object: Arc<serde_json::Value>,
        then: impl FnOnce(Applied) + Send + 'static,
    ) -> Result<Pending<Applied>, StoreError> {
        let encryption = self.db.encryption.clone();
        self.db
            .queue(
                move |conn| apply_in(conn, &encryption, &key, &uid, &resource_version, &object),
                move |result, _| {
                    if let Ok(applied) = result {
                        then(*applied);
                    }
                },
            )
            .await
    }

    /// Forgets an object, only if it has `uid` (when given). Returns whether one was removed.
    pub async fn delete(&self, key: &ObjectKey, uid: Option<&str>) -> Result<bool, StoreError> {
        self.queue_delete_then(key.clone(), uid.map(str::to_owned), |_| {})
            .await?
            .wait()
            .await
    }

    /// As [`MetaStore::delete`], returning once the write is queued, with its answer; `then`
    /// as [`MetaStore::apply_then`] has it.
    pub(crate) async fn queue_delete_then(
        &self,
        key: ObjectKey,
        uid: Option<String>,
        then: impl FnOnce(bool) + Send + 'static,
    ) -> Result<Pending<bool>, StoreError> {
        self.db
            .queue(
                move |conn| delete_in(conn, &key, uid.as_deref()),
                move |result, _| {
                    if let Ok(removed) = result {
                        then(*removed);
                    }
                },
            )
            .await
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError> {
        let row: Option<Row> = self
            .db
            .conn()
            .query_row(
                "SELECT kind, namespace, name, uid, resource_version, object FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![key.kind.as_str(), key.namespace, key.name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(sql(format!("reading {key}")))?;
        row.map(|row| stored(&self.db.encryption, row)).transpose()
    }

    /// Every object of a kind, by namespace and name. A damaged row is logged and left out
    /// (the hello does not name it either, so the cloud sends it again).
    pub fn list(&self, kind: ResourceKind) -> Result<Vec<StoredObject>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT kind, namespace, name, uid, resource_version, object FROM objects WHERE kind = ?1 ORDER BY namespace, name",
            )
            .map_err(sql(format!("listing {kind} objects")))?;
        let rows: Vec<Row> = statement
            .query_map(params![kind.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(Iterator::collect)
            .map_err(sql(format!("listing {kind} objects")))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| match stored(&self.db.encryption, row) {
                Ok(object) => Some(object),
                Err(error) => {
                    tracing::warn!(%error, "left out a damaged object; the cloud sends it again at the next resync");
                    None
                }
            })
            .collect())
    }

    /// What the edge holds, for the hello: damaged rows are not held, so the resync replaces
    /// them.
    pub fn held(&self) -> Result<Vec<HeldObject>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached("SELECT kind, namespace, name, uid, resource_version FROM objects WHERE json_valid(object) OR typeof(object) = 'blob' ORDER BY kind, namespace, name")
            .map_err(sql("listing held objects"))?;
        let rows: Vec<(String, String, String, String, String)> = statement
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(Iterator::collect)
            .map_err(sql("listing held objects"))?;
        rows.into_iter()
            .map(|(kind, namespace, name, uid, resource_version)| {
                Ok(HeldObject {
                    kind: kind_of(&kind, &format!("{kind} {namespace}/{name}"))?,
                    namespace,
                    name,
                    uid,
                    resource_version,
                    // Views are MetaManager's, which holds the objects decrypted.
                    view: None,
                })
            })
            .collect()
    }
}

/// Brings every stored object under the current encryption configuration, in one
/// transaction: rewrites those stored under another key or plain where they should be
/// encrypted (or encrypted where `identity` now comes first), and drops those no configured
/// key reads (the cloud sends them again at the next resync). Returns how many of each.
pub(super) fn reencrypt(
    conn: &mut rusqlite::Connection,
    encryption: &EncryptionConfig,
) -> Result<(usize, usize), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("re-encrypting objects"))?;
    let mut statement = tx
        .prepare("SELECT kind, namespace, name, object FROM objects")
        .map_err(sql("re-encrypting objects"))?;
    let rows: Vec<(String, String, String, SqlValue)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(Iterator::collect)
        .map_err(sql("re-encrypting objects"))?;
    drop(statement);
    let (mut rewritten, mut dropped) = (0, 0);
    for (kind_text, namespace, name, object) in rows {
        let Ok(kind) = kind_of(&kind_text, &name) else {
            continue;
        };
        let context = context(&kind_text, &namespace, &name);
        let keys = params![kind_text, namespace, name];
        match encryption.decrypt_for(resource_of(kind), &column_bytes(object), context.as_bytes()) {
            Ok(plain) if plain.stale => {
                let column = to_column(encryption, kind, &context, plain.data)?;
                tx.execute(
                    "UPDATE objects SET object = ?4 WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                    params![kind_text, namespace, name, column],
                )
                .map_err(sql(format!("re-encrypting {context}")))?;
                rewritten += 1;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(object = %context, %error, "dropped a stored object no configured key reads; the cloud sends it again");
                tx.execute(
                    "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                    keys,
                )
                .map_err(sql(format!("dropping {context}")))?;
                dropped += 1;
            }
        }
    }
    tx.commit().map_err(sql("re-encrypting objects"))?;
    Ok((rewritten, dropped))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::Pod,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn applying_is_idempotent_by_resource_version_and_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .meta();
        let p = key("p");
        assert_eq!(
            meta.apply(&p, "u1", "5", &json!({"v": 5}))
                .await
                .expect("apply"),
            Applied::Inserted
        );
        assert_eq!(
            meta.apply(&p, "u1", "5", &json!({"v": 5}))
                .await
                .expect("apply"),
            Applied::Unchanged
        );
        assert_eq!(
            meta.apply(&p, "u1", "4", &json!({"v": 4}))
                .await
                .expect("apply"),
            Applied::Unchanged
        );
        assert_eq!(
            meta.apply(&p, "u1", "10", &json!({"v": 10}))
                .await
                .expect("apply"),
            Applied::Updated
        );
        assert_eq!(
            meta.get(&p).expect("get").expect("held").object,
            json!({"v": 10})
        );
        assert_eq!(
            meta.apply(&p, "u2", "3", &json!({"v": "recreated"}))
                .await
                .expect("apply"),
            Applied::Updated,
            "another uid replaces whatever its version"
        );
        assert_eq!(meta.get(&p).expect("get").expect("held").uid, "u2");
    }

    #[tokio::test]
    async fn deletion_is_guarded_by_uid_and_everything_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.db");
        {
            let meta = Database::open(&path).expect("open").meta();
            meta.apply(&key("a"), "ua", "1", &json!({}))
                .await
                .expect("apply");
            meta.apply(&key("b"), "ub", "2", &json!({}))
                .await
                .expect("apply");
            meta.apply(&key("c"), "uc", "3", &json!({}))
                .await
                .expect("apply");
            assert!(!meta.delete(&key("a"), Some("other")).await.expect("delete"));
            assert!(meta.delete(&key("c"), Some("uc")).await.expect("delete"));
        }
        let meta = Database::open(&path).expect("reopen").meta();
        let held: Vec<(String, String)> = meta
            .held()
            .expect("held")
            .into_iter()
            .map(|h| (h.name, h.resource_version))
            .collect();
        assert_eq!(held, [("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_eq!(meta.list(ResourceKind::Pod).expect("list").len(), 2);
        assert!(meta.list(ResourceKind::Secret).expect("list").is_empty());
    }

    fn encryption(keys: &[(&str, &str)], identity: bool) -> EncryptionConfig {
        let mut text = String::from(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n",
        );
        for (name, secret) in keys {
            text.push_str(&format!(
                "  - aesgcm:\n      keys:\n      - name: {name}\n        secret: {secret}\n"
            ));
        }
        if identity {
            text.push_str("  - identity: {}\n");
        }
        EncryptionConfig::from_yaml(&text).expect("config")
    }

    const OLD: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const NEW: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn secret_key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::Secret,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn raw(db: &Database, name: &str) -> SqlValue {
        db.conn()
            .query_row("SELECT object FROM objects WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .expect("row")
    }

    #[tokio::test]
    async fn secrets_are_stored_encrypted_and_rotated_at_start() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("edge.db");
        let value = json!({"data": {"password": "c3VwZXItc2VjcmV0"}});
        {
            // Written before encryption was on.
            let meta = Database::open(&path).expect("open").meta();
            meta.apply(&secret_key("before"), "u0", "1", &value)
                .await
                .expect("apply");
        }
        {
            let db = Database::open_encrypted(&path, encryption(&[("old", OLD)], true))
                .expect("encrypt");
            let meta = db.meta();
            meta.apply(&secret_key("s"), "u1", "2", &value)
                .await
                .expect("apply");
            meta.apply(&key("p"), "u2", "3", &json!({"pod": true}))
                .await
                .expect("apply");
            for name in ["s", "before"] {
                let SqlValue::Blob(bytes) = raw(&db, name) else {
                    panic!("{name} is not stored encrypted");
                };
                assert!(bytes.starts_with(b"k8s:enc:aesgcm:v1:old:"), "{name}");
                assert!(!bytes.windows(8).any(|w| w == b"c3VwZXIt"), "{name}");
                assert_eq!(
                    meta.get(&secret_key(name))
                        .expect("get")
                        .expect("held")
                        .object,
                    value
                );
            }
            assert!(
                matches!(raw(&db, "p"), SqlValue::Text(_)),
                "pods stay plain"
            );
            assert_eq!(meta.held().expect("held").len(), 3);
        }
        {
            // The new key first: the start rewrites every row under it.
            let db =
                Database::open_encrypted(&path, encryption(&[("new", NEW), ("old", OLD)], false))
                    .expect("rotate");
            for name in ["s", "before"] {
                let SqlValue::Blob(bytes) = raw(&db, name) else {
                    panic!("{name} is not stored encrypted");
                };
                assert!(bytes.starts_with(b"k8s:enc:aesgcm:v1:new:"), "{name}");
            }
        }
        // The old key removed: still read.
        let db = Database::open_encrypted(&path, encryption(&[("new", NEW)], false)).expect("open");
        let meta = db.meta();
        assert_eq!(meta.list(ResourceKind::Secret).expect("list").len(), 2);
        assert_eq!(
            meta.get(&secret_key("s"))
                .expect("get")
                .expect("held")
                .object,
            value
        );
    }

    #[tokio::test]
    async fn a_row_no_key_reads_is_dropped_at_start_so_the_cloud_sends_it_again() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("edge.db");
        let value = json!({"data": {"k": "dg=="}});
        {
            let db = Database::open_encrypted(&path, encryption(&[("lost", OLD)], false))
                .expect("encrypt");
            db.meta()
                .apply(&secret_key("s"), "u", "5", &value)
                .await
                .expect("apply");
            db.meta()
                .apply(&key("p"), "up", "6", &json!({}))
                .await
                .expect("apply");
        }
        let db =
            Database::open_encrypted(&path, encryption(&[("other", NEW)], false)).expect("open");
        let meta = db.meta();
        assert!(meta.get(&secret_key("s")).expect("get").is_none());
        let held: Vec<String> = meta
            .held()
            .expect("held")
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(held, ["p"], "not held: the resync sends it again");
        assert_eq!(
            meta.apply(&secret_key("s"), "u", "5", &value)
                .await
                .expect("apply"),
            Applied::Inserted
        );
        assert_eq!(
            meta.get(&secret_key("s"))
                .expect("get")
                .expect("held")
                .object,
            value
        );
    }

    #[tokio::test]
    async fn a_damaged_row_is_an_error_naming_it_and_is_replaced_by_the_next_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("edge.db")).expect("open");
        db.conn()
            .execute(
                "INSERT INTO objects VALUES ('pod', 'default', 'bad', 'u', '1', '{not json')",
                [],
            )
            .expect("insert");
        let meta = db.meta();
        let err = meta.get(&key("bad")).expect_err("corrupt");
        assert!(err.to_string().contains("pod default/bad"), "{err}");
        // Not held (so the cloud sends it again), not listed, and replaced when it comes.
        assert!(meta.held().expect("held").is_empty());
        assert!(meta.list(ResourceKind::Pod).expect("list").is_empty());
        assert_eq!(
            meta.apply(&key("bad"), "u", "1", &json!({"fixed": true}))
                .await
                .expect("apply"),
            Applied::Inserted
        );
        assert_eq!(
            meta.get(&key("bad")).expect("get").expect("held").object,
            json!({"fixed": true})
        );
    }
}
