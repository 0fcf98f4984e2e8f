//! MetaManager's store: every object the cloud sent, applied idempotently by resourceVersion.

use rusqlite::{OptionalExtension, params};
use wedge_core::protocol::messages::HeldObject;
use wedge_core::protocol::{ObjectKey, ResourceKind};

use super::{Database, StoreError, sql};

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

type Row = (String, String, String, String, String, String);

fn stored(row: Row) -> Result<StoredObject, StoreError> {
    let (kind, namespace, name, uid, resource_version, object) = row;
    let display = format!("{kind} {namespace}/{name}");
    let key = ObjectKey {
        kind: kind_of(&kind, &display)?,
        namespace,
        name,
    };
    let object = serde_json::from_str(&object).map_err(|e| StoreError::Corrupt {
        what: "object",
        key: display,
        message: e.to_string(),
    })?;
    Ok(StoredObject {
        key,
        uid,
        resource_version,
        object,
    })
}

impl MetaStore {
    /// Stores `object` unless the edge holds this version (or a newer one) of the same uid.
    pub fn apply(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        object: &serde_json::Value,
    ) -> Result<Applied, StoreError> {
        let conn = self.db.conn();
        let kind = key.kind.as_str();
        let current: Option<(String, String)> = conn
            .query_row(
                // A damaged row counts as not held, so the object replaces it.
                "SELECT uid, resource_version FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3 AND json_valid(object)",
                params![kind, key.namespace, key.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql(format!("reading {key}")))?;
        let applied = match &current {
            None => Applied::Inserted,
            Some((held_uid, held_rv)) if held_uid == uid && !newer(resource_version, held_rv) => {
                return Ok(Applied::Unchanged);
            }
            Some(_) => Applied::Updated,
        };
        conn.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, uid, resource_version, object) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![kind, key.namespace, key.name, uid, resource_version, object.to_string()],
        )
        .map_err(sql(format!("storing {key}")))?;
        Ok(applied)
    }

    /// Forgets an object, only if it has `uid` (when given). Returns whether one was removed.
    pub fn delete(&self, key: &ObjectKey, uid: Option<&str>) -> Result<bool, StoreError> {
        let conn = self.db.conn();
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
        row.map(stored).transpose()
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
            .filter_map(|row| match stored(row) {
                Ok(object) => Some(object),
                Err(error) => {
                    tracing::warn!(%error, "left out a damaged object; the cloud sends it again at the next resync");
                    None
                }
            })
            .collect())
    }

    /// The key, uid and resourceVersion of every object of a kind, without the objects: what
    /// a reader that keeps parsed objects needs to see which changed.
    pub fn versions(
        &self,
        kind: ResourceKind,
    ) -> Result<Vec<(ObjectKey, String, String)>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT namespace, name, uid, resource_version FROM objects WHERE kind = ?1 ORDER BY namespace, name",
            )
            .map_err(sql(format!("listing {kind} versions")))?;
        let rows: Vec<(String, String, String, String)> = statement
            .query_map(params![kind.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(Iterator::collect)
            .map_err(sql(format!("listing {kind} versions")))?;
        Ok(rows
            .into_iter()
            .map(|(namespace, name, uid, rv)| {
                (
                    ObjectKey {
                        kind,
                        namespace,
                        name,
                    },
                    uid,
                    rv,
                )
            })
            .collect())
    }

    /// What the edge holds, for the hello: damaged rows are not held, so the resync replaces
    /// them.
    pub fn held(&self) -> Result<Vec<HeldObject>, StoreError> {
        let conn = self.db.conn();
        let mut statement = conn
            .prepare_cached("SELECT kind, namespace, name, uid, resource_version FROM objects WHERE json_valid(object) ORDER BY kind, namespace, name")
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
                })
            })
            .collect()
    }
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

    #[test]
    fn applying_is_idempotent_by_resource_version_and_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Database::open(&dir.path().join("edge.db"))
            .expect("open")
            .meta();
        let p = key("p");
        assert_eq!(
            meta.apply(&p, "u1", "5", &json!({"v": 5})).expect("apply"),
            Applied::Inserted
        );
        assert_eq!(
            meta.apply(&p, "u1", "5", &json!({"v": 5})).expect("apply"),
            Applied::Unchanged
        );
        assert_eq!(
            meta.apply(&p, "u1", "4", &json!({"v": 4})).expect("apply"),
            Applied::Unchanged
        );
        assert_eq!(
            meta.apply(&p, "u1", "10", &json!({"v": 10}))
                .expect("apply"),
            Applied::Updated
        );
        assert_eq!(
            meta.get(&p).expect("get").expect("held").object,
            json!({"v": 10})
        );
        assert_eq!(
            meta.apply(&p, "u2", "3", &json!({"v": "recreated"}))
                .expect("apply"),
            Applied::Updated,
            "another uid replaces whatever its version"
        );
        assert_eq!(meta.get(&p).expect("get").expect("held").uid, "u2");
    }

    #[test]
    fn deletion_is_guarded_by_uid_and_everything_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.db");
        {
            let meta = Database::open(&path).expect("open").meta();
            meta.apply(&key("a"), "ua", "1", &json!({})).expect("apply");
            meta.apply(&key("b"), "ub", "2", &json!({})).expect("apply");
            meta.apply(&key("c"), "uc", "3", &json!({})).expect("apply");
            assert!(!meta.delete(&key("a"), Some("other")).expect("delete"));
            assert!(meta.delete(&key("c"), Some("uc")).expect("delete"));
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

    #[test]
    fn a_damaged_row_is_an_error_naming_it_and_is_replaced_by_the_next_copy() {
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
                .expect("apply"),
            Applied::Inserted
        );
        assert_eq!(
            meta.get(&key("bad")).expect("get").expect("held").object,
            json!({"fixed": true})
        );
    }
}
