//! Field selectors (`?fieldSelector=spec.nodeName=gw-1,status.phase!=Succeeded`).
//!
//! Each resource supports a fixed set of fields, as on Kubernetes (`metadata.name` and
//! `metadata.namespace` everywhere, `spec.nodeName` and `status.phase` for pods,
//! `involvedObject.*` for events...); asking for another is a 400 naming the field. Values are
//! read from the object's JSON by their dotted path; a missing field reads as the empty string.

use serde_json::Value;

/// A field selector that does not parse or names a field the resource does not support.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldSelectorError {
    /// Not `field=value` or `field!=value`.
    #[error("invalid field selector {0:?}")]
    Syntax(String),
    /// A field the resource cannot be selected by.
    #[error("field label not supported: {0}")]
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    path: String,
    value: String,
    negated: bool,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<Term>,
}

/// The fields every resource supports.
pub const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

impl FieldSelector {
    /// Parses `s`, accepting only `COMMON_FIELDS` and `extra`.
    pub fn parse(s: &str, extra: &[&str]) -> Result<Self, FieldSelectorError> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, value, negated) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, v, false)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, v, false)
            } else {
                return Err(FieldSelectorError::Syntax(part.to_owned()));
            };
            let path = path.trim();
            if !COMMON_FIELDS.contains(&path) && !extra.contains(&path) {
                return Err(FieldSelectorError::Unsupported(path.to_owned()));
            }
            terms.push(Term {
                path: path.to_owned(),
                value: value.trim().to_owned(),
                negated,
            });
        }
        Ok(Self { terms })
    }

    /// Whether `object` satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|t| {
            let found = t.path.split('.').try_fold(object, |v, k| v.get(k));
            let actual = match found {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == t.value) != t.negated
        })
    }

    /// The value a term requires of `path` (`path=value`), used to narrow a query.
    pub fn required(&self, path: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.path == path && !t.negated)
            .map(|t| t.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_supported_fields() {
        let pod = serde_json::json!({
            "metadata": {"name": "a", "namespace": "edge"},
            "spec": {"nodeName": "gw-1"},
            "status": {"phase": "Running"}
        });
        let pods = ["spec.nodeName", "status.phase"];
        let sel = |s| FieldSelector::parse(s, &pods).expect(s);
        assert!(sel("metadata.name=a").matches(&pod));
        assert!(sel("spec.nodeName=gw-1,status.phase!=Succeeded").matches(&pod));
        assert!(!sel("spec.nodeName==gw-2").matches(&pod));
        assert!(
            sel("spec.nodeName!=").matches(&pod),
            "bound pods have a node name"
        );
        assert_eq!(
            sel("metadata.namespace=edge").required("metadata.namespace"),
            Some("edge")
        );
        assert_eq!(
            FieldSelector::parse("spec.hostname=x", &pods),
            Err(FieldSelectorError::Unsupported("spec.hostname".into()))
        );
        assert!(matches!(
            FieldSelector::parse("nonsense", &pods),
            Err(FieldSelectorError::Syntax(_))
        ));
    }
}
