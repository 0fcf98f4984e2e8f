//! Object metadata as the API server owns it: names and their validation, generated names,
//! uids, timestamps, generations, and the fields a client may not set.

use serde_json::{Map, Value};

use super::error::Cause;

/// A timestamp as Kubernetes writes `creationTimestamp` (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A timestamp `secs` seconds from now.
pub fn after(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(jiff::Timestamp::MAX);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The characters generated names end with (no vowels, no look-alikes), as Kubernetes uses.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `prefix` and five random characters, the prefix cut so the name fits 63 characters.
pub fn generate_name(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4();
    let suffix: String = random.as_bytes()[..5]
        .iter()
        .map(|b| ALPHANUMS[usize::from(*b) % ALPHANUMS.len()] as char)
        .collect();
    let mut prefix = prefix.to_owned();
    prefix.truncate(63 - 5);
    format!("{prefix}{suffix}")
}

/// A new uid.
pub fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The metadata object of `object` (created if missing).
pub fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = object.as_object_mut()?;
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

/// A string field of the metadata.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// The rule names of a resource follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most resources.
    Subdomain,
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label: services.
    Rfc1035Label,
}

impl NameRule {
    /// The rule for a resource's names.
    pub fn for_resource(group: &str, resource: &str) -> Self {
        match (group, resource) {
            ("", "namespaces") => Self::Label,
            ("", "services") => Self::Rfc1035Label,
            _ => Self::Subdomain,
        }
    }
}

fn is_label(s: &str, first_alpha: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (if first_alpha {
            b[0].is_ascii_lowercase()
        } else {
            b[0].is_ascii_alphanumeric()
        })
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// What is wrong with `name` under `rule`, in Kubernetes' words, or `None`.
pub fn name_problem(name: &str, rule: NameRule) -> Option<String> {
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                return Some("must be no more than 253 characters".into());
            }
            (!name.split('.').all(|l| is_label(l, false))).then(|| {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                    .into()
            })
        }
        NameRule::Label => (!is_label(name, false)).then(|| {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and \
             end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .into()
        }),
        NameRule::Rfc1035Label => (!is_label(name, true)).then(|| {
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic \
             character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for \
             validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .into()
        }),

    }
}

/// The problems with an object's labels and annotations.
pub fn labels_and_annotations_problems(object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(meta) = object.get("metadata") else {
        return causes;
    };
    if let Some(labels) = meta.get("labels") {
        match labels.as_object() {
            Some(labels) => {
                for (k, v) in labels {
                    if let Some(p) = qualified_name_problem(k) {
                        causes.push(Cause::invalid(
                            "metadata.labels",
                            &Value::String(k.clone()),
                            &p,
                        ));
                    }
                    match v.as_str() {
                        Some(s) if label_value_ok(s) => {}
                        _ => causes.push(Cause::invalid(
                            "metadata.labels",
                            v,
                            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
                             or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or \
                             'my_value',  or '12345', regex used for validation is \
                             '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                        )),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(Cause::invalid(
                "metadata.labels",
                labels,
                "must be a map of strings",
            )),
        }
    }
    if let Some(annotations) = meta.get("annotations") {
        match annotations.as_object() {
            Some(map) => {
                let mut total = 0;
                for (k, v) in map {
                    if let Some(p) = qualified_name_problem(k) {
                        causes.push(Cause::invalid(
                            "metadata.annotations",
                            &Value::String(k.clone()),
                            &p,
                        ));
                    }
                    match v.as_str() {
                        Some(s) => total += k.len() + s.len(),
                        None => causes.push(Cause::invalid(
                            "metadata.annotations",
                            v,
                            "must be a string",
                        )),
                    }
                }
                if total > 256 * 1024 {
                    causes.push(Cause {
                        reason: "FieldValueTooLong",
                        field: "metadata.annotations".into(),
                        message: "Too long: must have at most 262144 bytes".into(),
                    });
                }
            }
            None if annotations.is_null() => {}
            None => causes.push(Cause::invalid(
                "metadata.annotations",
                annotations,
                "must be a map of strings",
            )),
        }
    }
    causes
}

fn label_value_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// What is wrong with a qualified name (`prefix/name`), the form of label and annotation keys.
pub fn qualified_name_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && let Some(p) = name_problem(prefix, NameRule::Subdomain)
    {
        return Some(format!("prefix part {p}"));
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    (!ok).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
         alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
         '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. \
         'example.com/MyName')"
            .into()
    })
}

/// Whether two objects differ outside `metadata` and `status`: what bumps `generation`.
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked_as_kubernetes_checks_them() {
        assert_eq!(name_problem("web-1.example", NameRule::Subdomain), None);
        assert!(name_problem("Web", NameRule::Subdomain).is_some());
        assert!(name_problem("-web", NameRule::Subdomain).is_some());
        assert!(name_problem("a.b", NameRule::Label).is_some());
        assert!(name_problem("1abc", NameRule::Rfc1035Label).is_some());
        assert_eq!(name_problem("1abc", NameRule::Label), None);
        assert!(name_problem(&"a".repeat(254), NameRule::Subdomain).is_some());
    }

    #[test]
    fn generated_names_keep_the_prefix_and_fit() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9, "{n}");
        assert_eq!(name_problem(&n, NameRule::Subdomain), None);
        assert_eq!(generate_name(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn label_keys_and_values() {
        let ok = json!({"metadata": {"labels": {"app.kubernetes.io/name": "web", "tier": ""}}});
        assert!(labels_and_annotations_problems(&ok).is_empty());
        let bad =
            json!({"metadata": {"labels": {"bad key": "x", "k": "-v"}, "annotations": {"a": 1}}});
        assert_eq!(labels_and_annotations_problems(&bad).len(), 3);
    }

    #[test]
    fn generation_follows_the_spec_only() {
        let a = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1}, "status": {"y": 1}});
        let b = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"x": 1}, "status": {"y": 2}});
        assert!(!spec_changed(&a, &b));
        let c = json!({"metadata": {}, "spec": {"x": 2}});
        assert!(spec_changed(&a, &c));
    }
}
