//! Field ownership (`metadata.managedFields`): which manager set which field, in the
//! `FieldsV1` form Kubernetes writes (`{"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:image":{}}}}}`).
//!
//! Every write records the fields it changed for its manager (operation `Update`); server-side
//! apply records the fields of the applied configuration (operation `Apply`), detects conflicts
//! with other managers, and removes fields a manager stopped applying that no one else owns.
//! Lists are walked as their schema says: map lists by their keys (`k:`), sets by value (`v:`),
//! atomic lists as one field.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::schema::{self, ListKind};

/// A field path: elements like `f:spec`, `k:{"name":"app"}`, `v:"x"`, or `.` (the item itself).
pub type FieldPath = Vec<String>;

/// A set of field paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields that are tracked (the rest are the server's).
const TRACKED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// The leaf fields of `value` (an object of the type `schema` describes).
pub fn field_set(value: &Value, schema: Option<&Value>, skip_status: bool) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(map) = value.as_object() else {
        return set;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if skip_status => {}
            "metadata" => {
                let meta_schema = schema.and_then(|s| schema::property(s, "metadata"));
                for field in TRACKED_METADATA {
                    if let Some(fv) = v.get(*field) {
                        let s = meta_schema.and_then(|m| schema::property(m, field));
                        walk(
                            fv,
                            s,
                            vec!["f:metadata".into(), format!("f:{field}")],
                            &mut set,
                        );
                    }
                }
            }
            _ => walk(
                v,
                schema.and_then(|s| schema::property(s, k)),
                vec![format!("f:{k}")],
                &mut set,
            ),
        }
    }
    set
}

fn walk(value: &Value, schema: Option<&Value>, path: FieldPath, set: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let resolved = schema.map(schema::resolve);
            let additional = resolved.and_then(|s| s.get("additionalProperties"));
            for (k, v) in map {
                let child = resolved
                    .and_then(|s| s.get("properties"))
                    .and_then(|p| p.get(k))
                    .or(additional);
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(v, child, p, set);
            }
        }
        Value::Array(items) => {
            let kind = schema.map_or(ListKind::Atomic, schema::list_kind);
            let item_schema = schema.map(schema::resolve).and_then(|s| s.get("items"));
            match kind {
                ListKind::Atomic => {
                    set.insert(path);
                }
                ListKind::Set => {
                    for item in items {
                        let mut p = path.clone();
                        p.push(format!("v:{item}"));
                        set.insert(p);
                    }
                }
                ListKind::Map(keys) => {
                    for item in items {
                        let mut p = path.clone();
                        p.push(format!("k:{}", item_key(item, &keys)));
                        let mut dot = p.clone();
                        dot.push(".".into());
                        set.insert(dot);
                        walk(item, item_schema, p, set);
                    }
                }
            }
        }
        _ => {
            set.insert(path);
        }
    }
}

/// The leaf fields of `value` as `FieldsV1` JSON: `to_fields_v1(&field_set(..))` built in one
/// walk, without a path per leaf. A create records every field it sets, so this is all its
/// `managedFields` entry needs (a pod's fields as paths were most of a create's work here).
pub fn fields_v1(value: &Value, schema: Option<&Value>, skip_status: bool) -> Value {
    let mut root = Map::new();
    let Some(map) = value.as_object() else {
        return Value::Object(root);
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if skip_status => {}
            "metadata" => {
                let meta_schema = schema.and_then(|s| schema::property(s, "metadata"));
                let mut meta = Map::new();
                for field in TRACKED_METADATA {
                    if let Some(fv) = v.get(*field) {
                        let s = meta_schema.and_then(|m| schema::property(m, field));
                        let mut node = Map::new();
                        if tree(fv, s, &mut node) {
                            meta.insert(format!("f:{field}"), Value::Object(node));
                        }
                    }
                }
                if !meta.is_empty() {
                    root.insert("f:metadata".into(), Value::Object(meta));
                }
            }
            _ => {
                let mut node = Map::new();
                if tree(v, schema.and_then(|s| schema::property(s, k)), &mut node) {
                    root.insert(format!("f:{k}"), Value::Object(node));
                }
            }
        }
    }
    Value::Object(root)
}

/// [`walk`] as a tree: fills `node` (the field's own `FieldsV1` node) with what is under
/// `value`, and says whether the field has any leaf at all (an empty set or map list has none,
/// so it gets no node).
fn tree(value: &Value, schema: Option<&Value>, node: &mut Map<String, Value>) -> bool {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let resolved = schema.map(schema::resolve);
            let additional = resolved.and_then(|s| s.get("additionalProperties"));
            let mut any = false;
            for (k, v) in map {
                let child_schema = resolved
                    .and_then(|s| s.get("properties"))
                    .and_then(|p| p.get(k))
                    .or(additional);
                let mut child = Map::new();
                if tree(v, child_schema, &mut child) {
                    node.insert(format!("f:{k}"), Value::Object(child));
                    any = true;
                }
            }
            any
        }
        Value::Array(items) => {
            let kind = schema.map_or(ListKind::Atomic, schema::list_kind);
            let item_schema = schema.map(schema::resolve).and_then(|s| s.get("items"));
            match kind {
                ListKind::Atomic => true,
                ListKind::Set => {
                    for item in items {
                        node.insert(format!("v:{item}"), json!({}));
                    }
                    !items.is_empty()
                }
                ListKind::Map(keys) => {
                    for item in items {
                        let mut child = Map::new();
                        child.insert(".".into(), json!({}));
                        tree(item, item_schema, &mut child);
                        // Items with the same key are one field, as in a field set.
                        merge_into(node, format!("k:{}", item_key(item, &keys)), child);
                    }
                    !items.is_empty()
                }
            }
        }
        _ => true,
    }
}

/// Adds `child` under `key` of `node`, merging with what is there.
fn merge_into(node: &mut Map<String, Value>, key: String, child: Map<String, Value>) {
    match node.get_mut(&key) {
        Some(Value::Object(existing)) => {
            for (k, v) in child {
                match v {
                    Value::Object(m) => merge_into(existing, k, m),
                    other => {
                        existing.insert(k, other);
                    }
                }
            }
        }
        _ => {
            node.insert(key, Value::Object(child));
        }
    }
}

/// The `k:` element of a map-list item: its key fields as compact JSON.
fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m).to_string()
}

/// A field set as `FieldsV1` JSON.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for elem in path {
            let next = node.entry(elem.clone()).or_insert_with(|| json!({}));
            match next.as_object_mut() {
                Some(m) => node = m,
                None => break,
            }
        }
    }
    Value::Object(root)
}

/// `FieldsV1` JSON as a field set (its leaves).
pub fn from_fields_v1(value: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    fn go(v: &Value, path: &mut FieldPath, set: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    go(child, path, set);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    set.insert(path.clone());
                }
            }
        }
    }
    go(value, &mut Vec::new(), &mut set);
    set
}

/// The value at a field path, if present.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = object;
    for elem in path {
        if elem == "." {
            return Some(v);
        }
        v = step(v, elem)?;
    }
    Some(v)
}

fn step<'a>(v: &'a Value, elem: &str) -> Option<&'a Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return v.get(f);
    }
    if let Some(k) = elem.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return v
            .as_array()?
            .iter()
            .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
    }
    if let Some(x) = elem.strip_prefix("v:") {
        let want: Value = serde_json::from_str(x).ok()?;
        return v.as_array()?.iter().find(|item| **item == want);
    }
    None
}

/// Removes the field at `path` (a list item for `.` or `v:` paths).
pub fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    if last == "." {
        if let Some((item, list_path)) = parent_path.split_last() {
            remove_item(object, list_path, item);
        }
        return;
    }
    if last.starts_with("v:") || last.starts_with("k:") {
        remove_item(object, parent_path, last);
        return;
    }
    let Some(parent) = value_at_mut(object, parent_path) else {
        return;
    };
    if let (Some(f), Some(m)) = (last.strip_prefix("f:"), parent.as_object_mut()) {
        m.remove(f);
    }
}

fn remove_item(object: &mut Value, list_path: &[String], elem: &str) {
    let target = value_at(object, &[list_path, &[elem.to_owned()]].concat()).cloned();
    if let (Some(target), Some(Value::Array(list))) = (target, value_at_mut(object, list_path)) {
        list.retain(|i| *i != target);
    }
}

fn value_at_mut<'a>(object: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut v = object;
    for elem in path {
        if let Some(f) = elem.strip_prefix("f:") {
            v = v.get_mut(f)?;
        } else {
            let probe = step(v, elem)?.clone();
            v = v.as_array_mut()?.iter_mut().find(|i| **i == probe)?;
        }
    }
    Some(v)
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The manager.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The API version the fields were set through.
    pub api_version: String,
    /// The subresource, if any.
    pub subresource: String,
    /// When.
    pub time: String,
    /// The fields.
    pub fields: FieldSet,
}

/// Reads an object's `managedFields`.
pub fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            operation: e
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_owned(),
            api_version: e
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            subresource: e
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            time: e
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

/// Writes `entries` into the object's `managedFields` (empty entries dropped).
pub fn set_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = super::meta::metadata_mut(object) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records a non-apply write: the fields whose values changed from `old` to `new` now belong
/// to `manager` (operation `Update`), and to no one else.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    schema: Option<&Value>,
    manager: &str,
    api_version: &str,
    subresource: &str,
) {
    let skip_status = subresource != "status";
    let Some(old) = old else {
        // A create: every field set is the manager's, status aside unless written through
        // `status` (as the filter below keeps it), and there is no one else's entry.
        let fields = fields_v1(new, schema, skip_status);
        let list = match fields.as_object() {
            Some(m) if !m.is_empty() => {
                let mut entry = json!({
                    "manager": manager,
                    "operation": "Update",
                    "apiVersion": api_version,
                    "time": super::meta::now(),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields,
                });
                if !subresource.is_empty() {
                    entry["subresource"] = json!(subresource);
                }
                vec![entry]
            }
            _ => Vec::new(),
        };
        if let Some(m) = super::meta::metadata_mut(new) {
            if list.is_empty() {
                m.remove("managedFields");
            } else {
                m.insert("managedFields".into(), Value::Array(list));
            }
        }
        return;
    };
    let old = Some(old);
    let new_set = field_set(new, schema, false);
    let old_set = old.map(|o| field_set(o, schema, false)).unwrap_or_default();
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| {
            !skip_status
                || p.first().map(String::as_str) != Some("f:status")
                || subresource == "status"
        })
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)))
        .cloned()
        .collect();
    let mut list = old.map(entries).unwrap_or_default();
    // Fields that disappeared are no one's.
    for e in &mut list {
        e.fields
            .retain(|p| new_set.contains(p) || !old_set.contains(p));
        e.fields.retain(|p| !changed.contains(p));
    }
    if !changed.is_empty() {
        let now = super::meta::now();
        match list.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now;
                e.api_version = api_version.to_owned();
            }
            None => list.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                subresource: subresource.to_owned(),
                time: now,
                fields: changed,
            }),
        }
    }
    set_entries(new, &list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trips_with_list_keys() {
        let pod_schema = schema::schema_for("", "v1", "Pod");
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}});
        let set = field_set(&pod, pod_schema, true);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
        let image_path: FieldPath = vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"app\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(value_at(&pod, &image_path), Some(&json!("x")));
        let mut removed = pod.clone();
        remove_at(
            &mut removed,
            &[
                image_path[0].clone(),
                image_path[1].clone(),
                image_path[2].clone(),
                ".".into(),
            ],
        );
        assert_eq!(removed["spec"]["containers"], json!([]));
    }

    #[test]
    fn fields_v1_in_one_walk_is_the_field_set_as_fields_v1() {
        let pod_schema = schema::schema_for("", "v1", "Pod");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "web", "tier": ""}, "annotations": {},
                "finalizers": ["a", "b", "a"], "ownerReferences": [{"uid": "u", "name": "o"}],
                "uid": "x", "managedFields": [{"manager": "m"}]},
            "spec": {"containers": [
                    {"name": "app", "image": "x", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [], "args": ["a", "a"], "resources": {}},
                    {"name": "app", "image": "y", "env": [{"name": "E", "value": "1"}]},
                    {"name": "side", "volumeMounts": [{"mountPath": "/a", "name": "v"}]}],
                "nodeSelector": {"k": "v"}, "tolerations": [], "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}});
        let config_map = json!({"metadata": {"name": "c", "labels": null}, "data": {"k": "v"},
            "binaryData": {}, "other": [1, {"a": [2]}], "n": null});
        for (object, schema) in [(&pod, pod_schema), (&config_map, None), (&pod, None)] {
            for skip_status in [true, false] {
                assert_eq!(
                    fields_v1(object, schema, skip_status),
                    to_fields_v1(&field_set(object, schema, skip_status)),
                    "{object} skipping status: {skip_status}"
                );
            }
        }
        assert_eq!(fields_v1(&json!("x"), None, true), json!({}));
    }

    #[test]
    fn a_create_records_what_a_field_set_would() {
        let pod_schema = schema::schema_for("", "v1", "Pod");
        let mut pod = json!({"metadata": {"name": "p", "labels": {"a": "1"},
            "managedFields": [{"manager": "client", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:x": {}}}]},
            "spec": {"containers": [{"name": "app", "image": "x"}]}, "status": {"phase": "Pending"}});
        record_update(None, &mut pod, pod_schema, "creator", "v1", "");
        let list = entries(&pod);
        assert_eq!(list.len(), 1);
        assert_eq!(
            (
                list[0].manager.as_str(),
                list[0].operation.as_str(),
                list[0].subresource.as_str()
            ),
            ("creator", "Update", "")
        );
        assert_eq!(
            to_fields_v1(&list[0].fields),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:containers":
                {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        // Through `status`, the status is the manager's too; with nothing set, no entry.
        let mut status_only = json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}});
        record_update(
            None,
            &mut status_only,
            pod_schema,
            "kubelet",
            "v1",
            "status",
        );
        assert_eq!(entries(&status_only)[0].subresource, "status");
        assert_eq!(
            to_fields_v1(&entries(&status_only)[0].fields),
            json!({"f:status": {"f:phase": {}}})
        );
        let mut bare = json!({"metadata": {"name": "p", "managedFields": []}});
        record_update(None, &mut bare, pod_schema, "creator", "v1", "");
        assert_eq!(bare, json!({"metadata": {"name": "p"}}));
    }

    #[test]
    fn updates_move_changed_fields_to_their_manager() {
        let old = json!({"metadata": {"labels": {"a": "1"}, "managedFields": [
            {"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "time": "t", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:a": {}}}, "f:data": {"f:k": {}}}}
        ]}, "data": {"k": "v"}});
        let mut new = json!({"metadata": {"labels": {"a": "2"}}, "data": {"k": "v"}});
        record_update(Some(&old), &mut new, None, "editor", "v1", "");
        let list = entries(&new);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].manager, "kubectl");
        assert_eq!(
            to_fields_v1(&list[0].fields),
            json!({"f:data": {"f:k": {}}})
        );
        assert_eq!(
            to_fields_v1(&list[1].fields),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}})
        );
    }
}
