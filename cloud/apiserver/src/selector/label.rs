//! Label selectors as the API accepts them in `?labelSelector=`: `a=b`, `a==b`, `a!=b`,
//! `a in (x,y)`, `a notin (x,y)`, `a` (exists), `!a` (does not exist), joined by commas.
//!
//! Parsing follows apimachinery's `labels.Parse`: an error names the offending part, and the API
//! turns it into a 400 `BadRequest`.

use std::collections::BTreeMap;

/// A selector that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct LabelSelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// One requirement on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(prefix, name)| {
        if prefix.is_empty() || prefix.len() > 253 {
            ""
        } else {
            name
        }
    });
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits at top-level commas (not those inside parentheses).
fn split_requirements(s: &str) -> Result<Vec<&str>, LabelSelectorError> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(LabelSelectorError(format!(
                "unbalanced parentheses in {s:?}"
            )));
        }
    }
    if depth != 0 {
        return Err(LabelSelectorError(format!(
            "unbalanced parentheses in {s:?}"
        )));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(s: &str) -> Result<Vec<String>, LabelSelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| LabelSelectorError(format!("expected a parenthesised set, found {s:?}")))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(LabelSelectorError(format!("invalid label value {bad:?}")));
    }
    Ok(values)
}

fn parse_requirement(r: &str) -> Result<Requirement, LabelSelectorError> {
    let r = r.trim();
    let err = |why: &str| LabelSelectorError(format!("{r:?}: {why}"));
    if let Some(key) = r.strip_prefix('!') {
        let key = key.trim();
        if !valid_key(key) {
            return Err(err("invalid label key"));
        }
        return Ok(Requirement {
            key: key.to_owned(),
            op: Op::DoesNotExist,
        });
    }
    let (key, op) = if let Some((k, v)) = r.split_once("!=") {
        (k, Op::NotEquals(v.trim().to_owned()))
    } else if let Some((k, v)) = r.split_once("==") {
        (k, Op::Equals(v.trim().to_owned()))
    } else if let Some((k, v)) = r.split_once('=') {
        (k, Op::Equals(v.trim().to_owned()))
    } else if let Some((k, v)) = r.split_once(" notin ") {
        (k, Op::NotIn(parse_set(v)?))
    } else if let Some((k, v)) = r.split_once(" in ") {
        (k, Op::In(parse_set(v)?))
    } else {
        (r, Op::Exists)
    };
    let key = key.trim();
    if !valid_key(key) {
        return Err(err("invalid label key"));
    }
    if let Op::Equals(v) | Op::NotEquals(v) = &op
        && !valid_value(v)
    {
        return Err(err("invalid label value"));
    }
    Ok(Requirement {
        key: key.to_owned(),
        op,
    })
}

impl LabelSelector {
    /// Parses a selector; the empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, LabelSelectorError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = split_requirements(s)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Equals(x) => v == Some(x),
                Op::NotEquals(x) => v != Some(x),
                Op::In(set) => v.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Writes a `metav1.LabelSelector` object in the string form (`app=web,tier in (a,b)`),
    /// as Scale status and `kubectl get -o wide` show it.
    pub fn format_k8s(selector: &serde_json::Value) -> String {
        let mut parts: Vec<String> = selector
            .get("matchLabels")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        for e in selector
            .get("matchExpressions")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            let key = e.get("key").and_then(|k| k.as_str()).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            match e.get("operator").and_then(|o| o.as_str()) {
                Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
                Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
                Some("Exists") => parts.push(key.to_owned()),
                Some("DoesNotExist") => parts.push(format!("!{key}")),
                _ => {}
            }
        }
        parts.join(",")
    }

    /// Reads a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions` with the
    /// operators `In`, `NotIn`, `Exists`, `DoesNotExist`), as workloads hold them.
    pub fn from_k8s(selector: &serde_json::Value) -> Result<Self, LabelSelectorError> {
        let err = |m: String| LabelSelectorError(m);
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(|m| m.as_object()) {
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .ok_or_else(|| err(format!("{k}: value must be a string")))?;
                if !valid_key(k) || !valid_value(v) {
                    return Err(err(format!("{k}={v}")));
                }
                requirements.push(Requirement {
                    key: k.clone(),
                    op: Op::Equals(v.to_owned()),
                });
            }
        }
        for e in selector
            .get("matchExpressions")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            let key = e.get("key").and_then(|k| k.as_str()).unwrap_or_default();
            if !valid_key(key) {
                return Err(err(format!("invalid key {key:?}")));
            }
            let values: Vec<String> = e
                .get("values")
                .and_then(|v| v.as_array())
                .map(|v| {
                    v.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let op = match e.get("operator").and_then(|o| o.as_str()) {
                Some("In") if !values.is_empty() => Op::In(values),
                Some("NotIn") if !values.is_empty() => Op::NotIn(values),
                Some("Exists") if values.is_empty() => Op::Exists,
                Some("DoesNotExist") if values.is_empty() => Op::DoesNotExist,
                Some(op @ ("In" | "NotIn")) => {
                    return Err(err(format!(
                        "{key}: for '{op}' operator, values set can't be empty"
                    )));
                }
                Some(op @ ("Exists" | "DoesNotExist")) => {
                    return Err(err(format!("{key}: values set must be empty for {op}")));
                }
                other => {
                    return Err(err(format!(
                        "{key}: {other:?} is not a valid label selector operator"
                    )));
                }
            };
            requirements.push(Requirement {
                key: key.to_owned(),
                op,
            });
        }
        Ok(Self { requirements })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metav1_selectors() {
        let sel = LabelSelector::from_k8s(&serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}, {"key": "env", "operator": "Exists"}],
        }))
        .expect("parse");
        assert!(sel.matches(&labels(&[("app", "web"), ("env", "x")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("env", "x"), ("tier", "db")])));
        assert!(
            LabelSelector::from_k8s(
                &serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
            )
            .is_err()
        );
        assert!(
            LabelSelector::from_k8s(&serde_json::json!({}))
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("example.com/zone", "a")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front, back)",
            "tier notin (back)",
            "app",
            "!missing",
            "app=web,tier=front",
            "example.com/zone=a",
            "missing notin (x)",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s).expect(s).matches(&l),
                "{s} should match"
            );
        }
        let no = [
            "app=db",
            "app!=web",
            "tier in (back)",
            "tier notin (front)",
            "missing",
            "!app",
            "app=web,tier=back",
            "missing in (x)",
        ];
        for s in no {
            assert!(
                !LabelSelector::parse(s).expect(s).matches(&l),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for s in [
            "app in (a",
            "app in a",
            "=x",
            "app=-bad-",
            "a b c",
            "!",
            "bad key!=x",
        ] {
            assert!(LabelSelector::parse(s).is_err(), "{s:?} should not parse");
        }
    }
}
