//! Whether a join may have the node name it asks for.
//!
//! A bootstrap token proves the edge may join this cloud, not that it is the machine a node name
//! belongs to: before, any token joined any name, and a second edge joining as a connected node
//! took over its session, its pods and their Secrets. So a name that is in use is refused
//! (409 `NodeTaken`, naming what shows it is in use) unless the operator made the token for it:
//! `wedge token create --node NAME` (bound to that one name, which it may take over: the way to
//! re-provision a machine) or `--replace` (may take over whatever it joins). A name is in use
//! when its edge is connected to this cloudcore, its Node is Ready or its Lease is fresh, or a
//! certificate issued for it is neither expired nor revoked. The decision is pure (this module);
//! `http` gathers what it needs from the API.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

use super::JoinError;
use super::certificates::NodeCertificates;
use super::tokens::ValidToken;

/// What shows a node name is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Its edge is connected now.
    Connected,
    /// Its Node's Ready condition is True.
    Ready,
    /// Its Lease was renewed within its duration.
    Lease {
        /// When.
        renewed: Timestamp,
    },
    /// A certificate issued for it is valid.
    Certificate {
        /// Its serial.
        serial: String,
        /// Until when.
        not_after: Timestamp,
    },
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected => write!(f, "its edge is connected to cloudcore now"),
            Self::Ready => write!(f, "its Node is Ready"),
            Self::Lease { renewed } => write!(f, "its Lease was renewed at {renewed}"),
            Self::Certificate { serial, not_after } => write!(
                f,
                "a certificate issued to it (serial {serial}) is valid until {not_after}"
            ),
        }
    }
}

/// What shows `node` is in use at `now`, if anything. The Lease counts only beside a Node:
/// a deleted Node's Lease may stay behind for a while.
pub fn taken(
    now: Timestamp,
    connected: bool,
    node: Option<&Node>,
    lease: Option<&Lease>,
    record: Option<&NodeCertificates>,
) -> Option<Taken> {
    if connected {
        return Some(Taken::Connected);
    }
    if let Some(node) = node {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            return Some(Taken::Ready);
        }
        let renewed = lease.and_then(|l| {
            let spec = l.spec.as_ref()?;
            let renewed = spec.renew_time.as_ref()?.0;
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(40));
            (renewed + jiff::SignedDuration::from_secs(duration) > now).then_some(renewed)
        });
        if let Some(renewed) = renewed {
            return Some(Taken::Lease { renewed });
        }
    }
    record
        .and_then(|r| r.valid(now).next())
        .map(|c| Taken::Certificate {
            serial: c.serial.clone(),
            not_after: c.not_after,
        })
}

/// Whether `token` may join as `node`, which `taken` says is in use or not.
pub fn admit(token: &ValidToken, node: &str, taken: Option<&Taken>) -> Result<(), JoinError> {
    if let Some(bound) = &token.binding.node {
        if bound != node {
            return Err(JoinError::TokenForOtherNode {
                id: token.id.clone(),
                bound: bound.clone(),
                asked: node.to_owned(),
            });
        }
        return Ok(());
    }
    match taken {
        Some(why) if !token.binding.replace => Err(JoinError::NodeTaken {
            node: node.to_owned(),
            why: why.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Whether `token` may take over a node in use.
pub fn may_replace(token: &ValidToken) -> bool {
    token.binding.replace || token.binding.node.is_some()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use wedge_core::protocol::Reason;

    use super::super::certificates::Issued;
    use super::super::tokens::Binding;
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("timestamp")
    }

    fn node(ready: &str) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn lease(renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(40),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn record(not_after: i64, revoked: bool) -> NodeCertificates {
        let mut record = NodeCertificates::new("edge-a");
        record.add(
            Issued {
                serial: "aa".into(),
                not_after: at(not_after),
                issued: at(0),
                by: "join".into(),
                revoked: None,
            },
            at(0),
        );
        if revoked {
            record.revoke_all(at(1), "by hand", false);
        }
        record
    }

    fn token(binding: Binding) -> ValidToken {
        ValidToken::for_tests("abcdef", binding)
    }

    #[test]
    fn a_name_is_taken_while_connected_ready_leased_or_certified() {
        let now = at(1_000);
        assert_eq!(taken(now, true, None, None, None), Some(Taken::Connected));
        assert_eq!(
            taken(now, false, Some(&node("True")), None, None),
            Some(Taken::Ready)
        );
        assert_eq!(
            taken(now, false, Some(&node("Unknown")), Some(&lease(990)), None),
            Some(Taken::Lease { renewed: at(990) })
        );
        assert_eq!(
            taken(now, false, Some(&node("Unknown")), Some(&lease(900)), None),
            None,
            "a stale lease"
        );
        assert_eq!(
            taken(now, false, None, Some(&lease(990)), None),
            None,
            "a lease left behind by a deleted Node"
        );
        assert!(matches!(
            taken(now, false, None, None, Some(&record(2_000, false))),
            Some(Taken::Certificate { .. })
        ));
        assert_eq!(
            taken(now, false, None, None, Some(&record(500, false))),
            None,
            "expired"
        );
        assert_eq!(
            taken(now, false, None, None, Some(&record(2_000, true))),
            None,
            "revoked"
        );
    }

    #[test]
    fn only_the_operator_lets_a_join_take_a_name_in_use() {
        let plain = token(Binding::default());
        let in_use = Taken::Connected;
        assert!(admit(&plain, "edge-a", None).is_ok(), "a free name");
        let refused = admit(&plain, "edge-a", Some(&in_use)).expect_err("taken");
        assert_eq!(refused.status(), (409, Reason::NodeTaken));
        let message = refused.to_string();
        assert!(
            message.contains("edge-a")
                && message.contains("connected")
                && message.contains("--node edge-a"),
            "{message}"
        );

        let bound = token(Binding {
            node: Some("edge-a".into()),
            ..Binding::default()
        });
        assert!(admit(&bound, "edge-a", Some(&in_use)).is_ok());
        let other = admit(&bound, "edge-b", None).expect_err("bound elsewhere");
        assert_eq!(other.status(), (403, Reason::TokenBoundToNode));
        assert!(may_replace(&bound));

        let replace = token(Binding {
            replace: true,
            ..Binding::default()
        });
        assert!(admit(&replace, "edge-z", Some(&in_use)).is_ok());
        assert!(!may_replace(&plain));
    }
}
