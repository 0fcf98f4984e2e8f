//! mosquitto's `acl_file`, read and applied by the embedded broker, so that one file serves
//! both brokers and operators write what mosquitto's documentation shows:
//!
//! ```text
//! # Before any `user` line: what anonymous clients may do (when anonymous access is on).
//! topic read $hw/events/device/+/twin/update/delta
//! user thermo-mapper
//! topic write $hw/events/device/thermo-1/twin/update
//! topic read $hw/events/device/thermo-1/#
//! # For every client: %u is its username, %c its client id.
//! pattern readwrite $hw/events/device/%u/#
//! ```
//!
//! As in mosquitto: nothing is allowed that no rule allows, `deny` wins over every other rule,
//! `read` covers subscribing (a filter must lie within a rule's topic) and `write` publishing.
//! Unlike mosquitto, messages are not checked again when delivered: a subscription is allowed
//! only if everything it can match is readable.

use std::collections::HashMap;

use wedge_core::topic;

/// What a rule lets a client do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish on a topic.
    Publish,
    /// Subscribe to a filter.
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    topic: String,
}

/// A parsed `acl_file`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// A line of an `acl_file` that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// 1-based.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl Acl {
    /// Parses mosquitto's format: `user NAME`, `topic [read|write|readwrite|deny] TOPIC`,
    /// `pattern [read|write|readwrite|deny] TOPIC`, `#` comments.
    pub fn parse(text: &str) -> Result<Self, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let err = |reason: String| AclError {
                line: i + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a name".into()));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let rule = rule(rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = &user {
                        acl.users.entry(u.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (user, topic, pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whether `username` (None: anonymous) with `client_id` may do `action` on `topic`.
    pub fn allows(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        let rules = self.rules(username, client_id);
        let covers = |r: &Rule| match action {
            Action::Publish => topic::matches(&r.topic, topic),
            Action::Subscribe => topic::filter_covers(&r.topic, topic),
        };
        if denied(&rules, action, topic) {
            return false;
        }
        rules.iter().any(|r| {
            let granted = match action {
                Action::Publish => matches!(r.grant, Grant::Write | Grant::ReadWrite),
                Action::Subscribe => matches!(r.grant, Grant::Read | Grant::ReadWrite),
            };
            granted && covers(r)
        })
    }

    /// Whether a `deny` rule for `username` (None: anonymous) with `client_id` refuses
    /// `action` on `topic`: what the file says of clients whose rights come from elsewhere (a
    /// pod's grants), for deny to win there too.
    pub fn denies(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        denied(&self.rules(username, client_id), action, topic)
    }

    /// The rules for `username` (None: anonymous) with `client_id`: its own, then the patterns.
    fn rules(&self, username: Option<&str>, client_id: &str) -> Vec<Rule> {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or_default(),
            None => &self.anonymous,
        };
        let patterns = self
            .patterns
            .iter()
            .filter_map(|r| substitute(r, username, client_id));
        own.iter().cloned().chain(patterns).collect()
    }
}

/// Deny wins: a denied topic, or a subscription reaching into one, is refused.
fn denied(rules: &[Rule], action: Action, topic: &str) -> bool {
    rules.iter().any(|r| {
        r.grant == Grant::Deny
            && match action {
                Action::Publish => topic::matches(&r.topic, topic),
                Action::Subscribe => overlaps(topic, &r.topic),
            }
    })
}

fn rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (grant, topic) = match first {
        "read" => (Grant::Read, tail.trim()),
        "write" => (Grant::Write, tail.trim()),
        "readwrite" => (Grant::ReadWrite, tail.trim()),
        "deny" => (Grant::Deny, tail.trim()),
        // mosquitto: no access word means readwrite.
        _ => (Grant::ReadWrite, rest),
    };
    if topic.is_empty() {
        return Err("a rule needs a topic".into());
    }
    topic::validate_filter(topic).map_err(|e| format!("{topic:?}: {e}"))?;
    Ok(Rule {
        grant,
        topic: topic.to_owned(),
    })
}

/// A pattern with `%u` and `%c` filled in; none when it names a username the client lacks, or
/// when a substituted name would add levels or wildcards (mosquitto skips those too).
fn substitute(rule: &Rule, username: Option<&str>, client_id: &str) -> Option<Rule> {
    let unsafe_name = |s: &str| s.contains(['/', '+', '#']);
    let mut topic = rule.topic.clone();
    if topic.contains("%u") {
        let u = username?;
        if unsafe_name(u) {
            return None;
        }
        topic = topic.replace("%u", u);
    }
    if topic.contains("%c") {
        if unsafe_name(client_id) {
            return None;
        }
        topic = topic.replace("%c", client_id);
    }
    Some(Rule {
        grant: rule.grant,
        topic,
    })
}

/// Whether some topic matches both filters.
fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) => {
                if p != q && p != "+" && q != "+" {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read $hw/events/device/+/twin/update/delta

user thermo-mapper
topic write $hw/events/device/thermo-1/twin/update
topic read $hw/events/device/thermo-1/#
user app
topic readwrite alerts/#
topic deny alerts/secret/#
pattern readwrite $hw/events/device/%u/#
pattern write clients/%c/status
";

    fn acl() -> Acl {
        Acl::parse(FILE).expect("parses")
    }

    #[test]
    fn a_mapper_may_report_its_devices_and_no_other() {
        let acl = acl();
        let m = Some("thermo-mapper");
        let report = "$hw/events/device/thermo-1/twin/update";
        assert!(acl.allows(m, "c", Action::Publish, report));
        assert!(!acl.allows(
            m,
            "c",
            Action::Publish,
            "$hw/events/device/fan-1/twin/update"
        ));
        // Read-only topics are not writable.
        assert!(!acl.allows(
            m,
            "c",
            Action::Publish,
            "$hw/events/device/thermo-1/twin/update/delta"
        ));
        assert!(acl.allows(
            m,
            "c",
            Action::Subscribe,
            "$hw/events/device/thermo-1/twin/+"
        ));
        assert!(!acl.allows(m, "c", Action::Subscribe, "$hw/events/device/+/twin/#"));
        assert!(!acl.allows(m, "c", Action::Subscribe, "#"));
    }

    #[test]
    fn deny_wins_and_reaches_into_wider_subscriptions() {
        let acl = acl();
        let a = Some("app");
        assert!(acl.allows(a, "c", Action::Publish, "alerts/fire"));
        assert!(!acl.allows(a, "c", Action::Publish, "alerts/secret/x"));
        assert!(acl.allows(a, "c", Action::Subscribe, "alerts/fire/#"));
        assert!(!acl.allows(a, "c", Action::Subscribe, "alerts/#"));
        assert!(!acl.allows(a, "c", Action::Subscribe, "alerts/+/x"));
    }

    #[test]
    fn patterns_name_the_client() {
        let acl = acl();
        // A device whose username is its name reports itself.
        assert!(acl.allows(
            Some("hygro-1"),
            "any",
            Action::Publish,
            "$hw/events/device/hygro-1/twin/update"
        ));
        assert!(!acl.allows(
            Some("hygro-1"),
            "any",
            Action::Publish,
            "$hw/events/device/hygro-2/twin/update"
        ));
        assert!(acl.allows(None, "gw-7", Action::Publish, "clients/gw-7/status"));
        assert!(!acl.allows(None, "gw-7", Action::Publish, "clients/gw-8/status"));
        // %u never matches an anonymous client; names with levels or wildcards match nothing.
        assert!(!acl.allows(None, "c", Action::Publish, "$hw/events/device//twin/update"));
        assert!(!acl.allows(Some("+"), "c", Action::Subscribe, "$hw/events/device/+/#"));
        assert!(!acl.allows(None, "a/b", Action::Publish, "clients/a/b/status"));
    }

    #[test]
    fn anonymous_rules_come_before_the_first_user() {
        let acl = acl();
        let delta = "$hw/events/device/thermo-1/twin/update/delta";
        assert!(acl.allows(None, "c", Action::Subscribe, delta));
        assert!(!acl.allows(None, "c", Action::Publish, delta));
        // A user gets its own rules, not the anonymous ones; an unknown user gets patterns only.
        assert!(!acl.allows(Some("app"), "c", Action::Subscribe, delta));
        assert!(!acl.allows(Some("nobody"), "c", Action::Publish, "alerts/fire"));
    }

    #[test]
    fn deny_rules_are_found_for_clients_granted_elsewhere() {
        let acl = acl();
        assert!(acl.denies(Some("app"), "c", Action::Publish, "alerts/secret/x"));
        assert!(acl.denies(Some("app"), "c", Action::Subscribe, "alerts/#"));
        assert!(!acl.denies(Some("app"), "c", Action::Publish, "alerts/fire"));
        // A user the file does not name meets only the patterns' denies (none here).
        assert!(!acl.denies(Some("pod-login"), "c", Action::Publish, "alerts/secret/x"));
    }

    #[test]
    fn filters_overlap() {
        assert!(overlaps("a/#", "a/b/c"));
        assert!(overlaps("+/b", "a/+"));
        assert!(!overlaps("a/b", "a/c"));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(Acl::parse("user\n").expect_err("no name").line, 1);
        let e = Acl::parse("# c\ntopic read a/#/b\n").expect_err("bad filter");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("a/#/b"), "{e}");
        assert!(Acl::parse("topic read\n").is_err());
        assert!(Acl::parse("allow all\n").is_err());
        // No access word: readwrite, as in mosquitto.
        let acl = Acl::parse("topic a/b\n").expect("parses");
        assert!(acl.allows(None, "c", Action::Publish, "a/b"));
    }
}
