//! MQTT topic names and filters (MQTT 3.1.1 §4.7): validation and matching.
//!
//! The host checks every publish and subscribe a pod makes against the filters its spec grants,
//! so matching must be exact, including the rule that wildcards at the first level do not match
//! topics that start with `$` (KubeEdge's `$hw/...` and `$ke/...` system topics).

/// A topic or filter that MQTT does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    /// Empty topic or filter.
    #[error("a topic must not be empty")]
    Empty,
    /// A topic name (not a filter) holds `+` or `#`.
    #[error("topic {0:?} holds a wildcard: only subscription filters may use + and #")]
    WildcardInName(String),
    /// A wildcard used in a way the spec forbids.
    #[error("filter {0:?} is malformed: + must fill a whole level and # must be the last level")]
    BadWildcard(String),
    /// NUL characters or longer than 65535 bytes.
    #[error("topic {0:?} holds a NUL character or is longer than 65535 bytes")]
    Invalid(String),
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65_535 || s.contains('\0') {
        return Err(TopicError::Invalid(s.chars().take(64).collect()));
    }
    Ok(())
}

/// Checks a topic name as used in a publish.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName(topic.to_owned()));
    }
    Ok(())
}

/// Checks a subscription filter.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let ok = match *level {
            "+" => true,
            "#" => i == levels.len() - 1,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return Err(TopicError::BadWildcard(filter.to_owned()));
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter`. Both are assumed valid.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches is also matched by `outer`, so that a subscription to
/// `inner` stays inside a grant of `outer`.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_spec() {
        assert!(matches("sensors/+/temp", "sensors/a/temp"));
        assert!(!matches("sensors/+/temp", "sensors/a/b/temp"));
        assert!(matches("sensors/#", "sensors"));
        assert!(matches("sensors/#", "sensors/a/b"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("#", "$hw/events/device/x"));
        assert!(!matches("+/events/#", "$hw/events/device/x"));
        assert!(matches("$hw/events/#", "$hw/events/device/x"));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn validation() {
        assert!(validate_name("a/b").is_ok());
        assert_eq!(
            validate_name("a/+"),
            Err(TopicError::WildcardInName("a/+".into()))
        );
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
    }

    #[test]
    fn coverage_of_filters() {
        assert!(filter_covers("sensors/#", "sensors/+/temp"));
        assert!(filter_covers("sensors/+/temp", "sensors/a/temp"));
        assert!(!filter_covers("sensors/+/temp", "sensors/#"));
        assert!(!filter_covers("sensors/a/temp", "sensors/+/temp"));
        assert!(!filter_covers("#", "$hw/#"));
    }
}
