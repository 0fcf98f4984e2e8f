//! Schemas: Kubernetes' OpenAPI definitions of the built-in types, and the walk that checks an
//! object against a schema.
//!
//! The definitions (`openapi/definitions.json.gz`, made by `scripts/update-openapi` from
//! Kubernetes v1.33's own) carry descriptions for `kubectl explain`, and the x-kubernetes
//! extensions strategic merge patch and server-side apply need (merge keys, list types).
//!
//! [`check`] walks an object with a schema. For built-in types it does what decoding into Go
//! structs does on kube-apiserver: fields the type does not have are dropped and reported
//! (`fieldValidation`), values of the wrong JSON type are errors. For custom resources
//! (`Mode::Custom`) it also does what the CRD's structural schema asks: defaults, required
//! fields, enums, bounds, patterns, lengths.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::api::error::Cause;

/// The definitions file, embedded.
const DEFINITIONS_GZ: &[u8] = include_bytes!("../openapi/definitions.json.gz");

/// Kubernetes' definitions, by name (`io.k8s.api.core.v1.Pod`).
pub static DEFINITIONS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    use std::io::Read;
    let mut text = Vec::new();
    let read = flate2::read::GzDecoder::new(DEFINITIONS_GZ).read_to_end(&mut text);
    let doc: Value = read
        .ok()
        .and_then(|_| serde_json::from_slice(&text).ok())
        .unwrap_or(Value::Null);
    match doc.get("definitions") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    }
});

/// Definition names by group, version and kind (from `x-kubernetes-group-version-kind`), built
/// once: every write looks its kind's schema up here.
static BY_KIND: LazyLock<HashMap<(String, String, String), &'static str>> = LazyLock::new(|| {
    let mut index = HashMap::new();
    for (name, schema) in DEFINITIONS.iter() {
        let gvks = schema
            .get("x-kubernetes-group-version-kind")
            .and_then(Value::as_array);
        for g in gvks.into_iter().flatten() {
            let field = |f: &str| g.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
            index.insert(
                (field("group"), field("version"), field("kind")),
                name.as_str(),
            );
        }
    }
    index
});

/// The definition name of a built-in kind.
pub fn definition_for(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    BY_KIND
        .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))
        .copied()
}

/// The schema of a built-in kind.
pub fn schema_for(group: &str, version: &str, kind: &str) -> Option<&'static Value> {
    definition_for(group, version, kind).and_then(|n| DEFINITIONS.get(n))
}

/// Follows `$ref` and single-element `allOf` to the schema meant, keeping nothing of the
/// wrapper but its description (which only `explain` reads).
pub fn resolve(schema: &Value) -> &Value {
    let mut s = schema;
    for _ in 0..8 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.rsplit('/').next().and_then(|n| DEFINITIONS.get(n)) {
                Some(d) => s = d,
                None => return s,
            }
        } else if let Some([only]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            s = only;
        } else {
            return s;
        }
    }
    s
}

/// The schema of property `field` of an object schema.
pub fn property<'a>(schema: &'a Value, field: &str) -> Option<&'a Value> {
    resolve(schema).get("properties")?.get(field)
}

/// How a list field merges, from its schema's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// Items identified by these keys.
    Map(Vec<String>),
}

/// How the list at `schema` merges (strategic merge patch and server-side apply).
pub fn list_kind(schema: &Value) -> ListKind {
    let strategy = schema
        .get("x-kubernetes-patch-strategy")
        .and_then(Value::as_str)
        .unwrap_or("");
    let merge_key = schema
        .get("x-kubernetes-patch-merge-key")
        .and_then(Value::as_str);
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    let map_keys: Option<Vec<String>> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| {
            k.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
    if strategy.split(',').any(|s| s == "merge") {
        return match merge_key {
            Some(k) => ListKind::Map(vec![k.to_owned()]),
            None => ListKind::Set,
        };
    }
    match (list_type, map_keys) {
        (Some("map"), Some(keys)) if !keys.is_empty() => ListKind::Map(keys),
        (Some("set"), _) => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

/// What a walk checks beyond decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A built-in type: drop unknown fields, check JSON types.
    Builtin,
    /// A custom resource: also defaults and the structural schema's constraints.
    Custom,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Fields the schema does not declare, dropped (`spec.foo`).
    pub unknown: Vec<String>,
    /// Values that break the schema.
    pub invalid: Vec<Cause>,
}

/// Walks `value` with `schema`, dropping unknown fields and (for custom resources) defaulting.
pub fn check(schema: &Value, value: &mut Value, mode: Mode) -> Findings {
    let mut f = Findings::default();
    walk(schema, value, "", mode, &mut f, 0);
    f
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `v` has the schema's type (with Kubernetes' int-or-string and quantities).
fn type_ok(schema: &Value, v: &Value) -> bool {
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        return matches!(type_name(v), "integer" | "string");
    }
    match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("string") => {
            v.is_string()
                || (schema.get("format").is_none() && v.is_number() && quantity_like(schema))
        }
        Some("integer") => matches!(type_name(v), "integer"),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        Some(_) => true,
    }
}

/// Quantities are strings in the schema but numbers in many manifests (`cpu: 1`).
fn quantity_like(schema: &Value) -> bool {
    DEFINITIONS
        .get("io.k8s.apimachinery.pkg.api.resource.Quantity")
        .is_some_and(|q| std::ptr::eq(q, schema))
}

fn walk(schema: &Value, value: &mut Value, path: &str, mode: Mode, f: &mut Findings, depth: usize) {
    if depth > 64 {
        return;
    }
    let schema = resolve(schema);
    let at = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if mode == Mode::Custom
            && schema.get("nullable").and_then(Value::as_bool) != Some(true)
            && schema.get("type").is_some()
        {
            f.invalid.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: at.to_owned(),
                message: format!(
                    "Invalid value: \"null\": {at} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            });
        }
        return;
    }
    if !type_ok(schema, value) {
        let expected = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("string");
        f.invalid.push(Cause {
            reason: "FieldValueTypeInvalid",
            field: at.to_owned(),
            message: format!(
                "Invalid value: \"{}\": {at} in body must be of type {expected}: \"{}\"",
                type_name(value),
                type_name(value)
            ),
        });
        return;
    }
    if mode == Mode::Custom {
        constraints(schema, value, at, f);
    }
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            if mode == Mode::Custom
                && let Some(props) = props
            {
                for (k, prop) in props {
                    if !map.contains_key(k)
                        && let Some(default) = resolve(prop).get("default")
                    {
                        map.insert(k.clone(), default.clone());
                    }
                }
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_path = join(path, &k);
                let child_schema = props.and_then(|p| p.get(&k)).or(additional);
                match child_schema {
                    Some(s) => {
                        if let Some(child) = map.get_mut(&k) {
                            walk(s, child, &child_path, mode, f, depth + 1);
                        }
                    }
                    None if embedded
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None if preserve || (props.is_none() && additional.is_none()) => {}
                    None => {
                        f.unknown.push(child_path);
                        map.remove(&k);
                    }
                }
            }
            if mode == Mode::Custom
                && let Some(required) = schema.get("required").and_then(Value::as_array)
            {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        f.invalid.push(Cause::required(join(path, r), ""));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(
                        item_schema,
                        item,
                        &format!("{path}[{i}]"),
                        mode,
                        f,
                        depth + 1,
                    );
                }
            }
        }
        _ => {}
    }
}

/// The structural schema's value constraints (custom resources only).
fn constraints(schema: &Value, value: &Value, at: &str, f: &mut Findings) {
    let mut invalid = |detail: String| {
        f.invalid.push(Cause {
            reason: "FieldValueInvalid",
            field: at.to_owned(),
            message: format!("Invalid value: {value}: {detail}"),
        })
    };
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list = options
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        f.invalid.push(Cause {
            reason: "FieldValueNotSupported",
            field: at.to_owned(),
            message: format!("Unsupported value: {value}: supported values: {list}"),
        });
        return;
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
            if n < min || (exclusive && n <= min) {
                invalid(format!(
                    "{at} in body should be greater than or equal to {min}"
                ));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            let exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
            if n > max || (exclusive && n >= max) {
                invalid(format!(
                    "{at} in body should be less than or equal to {max}"
                ));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            invalid(format!("{at} in body should be at least {min} chars long"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            invalid(format!("{at} in body should be at most {max} chars long"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(s) => {
                    invalid(format!("{at} in body should match '{pattern}'"))
                }
                _ => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            invalid(format!("{at} in body should have at least {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            invalid(format!("{at} in body should have at most {max} items"));
        }
    }
    if let Some(map) = value.as_object() {
        let n = map.len() as u64;
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
            && n < min
        {
            invalid(format!(
                "{at} in body should have at least {min} properties"
            ));
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && n > max
        {
            invalid(format!("{at} in body should have at most {max} properties"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_definitions_know_the_served_kinds_and_their_merge_keys() {
        let pod = schema_for("", "v1", "Pod").expect("Pod");
        let spec = property(pod, "spec").expect("spec");
        let containers = property(spec, "containers").expect("containers");
        assert_eq!(list_kind(containers), ListKind::Map(vec!["name".into()]));
        let tolerations = property(spec, "tolerations").expect("tolerations");
        assert_eq!(list_kind(tolerations), ListKind::Atomic);
        assert!(schema_for("apps", "v1", "Deployment").is_some());
        assert!(schema_for("apiextensions.k8s.io", "v1", "CustomResourceDefinition").is_some());
    }

    #[test]
    fn builtins_drop_unknown_fields_and_refuse_wrong_types() {
        let pod = schema_for("", "v1", "Pod").expect("Pod");
        let mut obj = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "colour": "red", "resources": {"limits": {"cpu": 1}}}], "bogus": 1},
        });
        let f = check(pod, &mut obj, Mode::Builtin);
        assert_eq!(f.unknown, ["spec.bogus", "spec.containers[0].colour"]);
        assert!(f.invalid.is_empty(), "{:?}", f.invalid);
        assert!(obj["spec"].get("bogus").is_none());

        let mut wrong = json!({"spec": {"containers": "nope"}});
        let f = check(pod, &mut wrong, Mode::Builtin);
        assert_eq!(f.invalid.len(), 1);
        assert_eq!(f.invalid[0].field, "spec.containers");
    }

    #[test]
    fn custom_schemas_default_and_constrain() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["fast", "slow"], "default": "slow"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }}}});
        let mut ok = json!({"spec": {"size": 3, "free": {"anything": 1}, "extra": true}});
        let f = check(&schema, &mut ok, Mode::Custom);
        assert!(f.invalid.is_empty(), "{:?}", f.invalid);
        assert_eq!(f.unknown, ["spec.extra"]);
        assert_eq!(ok["spec"]["mode"], "slow");
        assert_eq!(ok["spec"]["free"]["anything"], 1);

        let mut bad = json!({"spec": {"size": 11, "mode": "medium"}});
        let f = check(&schema, &mut bad, Mode::Custom);
        let fields: Vec<&str> = f.invalid.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.mode", "spec.size"]);
        let mut missing = json!({"spec": {}});
        assert_eq!(
            check(&schema, &mut missing, Mode::Custom).invalid[0].message,
            "Required value"
        );
    }
}
