//! KubeEdge's `rules.kubeedge.io/v1` Rule and RuleEndpoint: how messages an edge's apps and
//! devices publish on MQTT reach a service in the cloud.
//!
//! A RuleEndpoint names a kind of place (`rest`, `eventbus`, `servicebus`); a Rule joins a source
//! endpoint to a target endpoint, each with a resource map saying where exactly. The route Wedge
//! serves is KubeEdge's *eventbus → rest*: a message published at the edge on the rule's topic is
//! POSTed to the rule's URL. Which MQTT filter a rule stands for is decided here, once, because
//! both sides need it: the edge subscribes to it and forwards what arrives, the cloud matches each
//! forwarded message against it.
//!
//! KubeEdge's rule topic is relative to the rule's namespace (`{"topic": "test"}` in `default` is
//! the MQTT topic `default/test`). Wedge also lets a rule name one of KubeEdge's upload topics
//! whole (`$hw/events/upload/...`, see [`UPLOAD_PREFIX`]), which KubeEdge's edge always forwards
//! but its cloud has no way to route.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::topic;

/// The API group of Rule and RuleEndpoint.
pub const GROUP: &str = "rules.kubeedge.io";
/// Their version.
pub const VERSION: &str = "v1";
/// `apiVersion` of both kinds.
pub const API_VERSION: &str = "rules.kubeedge.io/v1";
/// The `sourceResource` key naming the node whose bus an eventbus source listens to.
pub const SOURCE_NODE_KEY: &str = "node_name";
/// KubeEdge's upload topics: a rule topic under this prefix is an MQTT filter as it stands.
pub const UPLOAD_PREFIX: &str = "$hw/events/upload/";

/// What a RuleEndpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointType {
    /// An HTTP service in the cloud (as a target), or cloudcore's HTTP listener (as a source).
    Rest,
    /// The MQTT bus of an edge node.
    #[serde(rename = "eventbus")]
    EventBus,
    /// An HTTP service on an edge node.
    #[serde(rename = "servicebus")]
    ServiceBus,
}

impl EndpointType {
    /// The name manifests use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::EventBus => "eventbus",
            Self::ServiceBus => "servicebus",
        }
    }
}

/// A RuleEndpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RuleEndpoint {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the endpoint is.
    pub spec: RuleEndpointSpec,
}

/// A RuleEndpoint's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleEndpointSpec {
    /// Its type.
    pub rule_endpoint_type: EndpointType,
    /// Type-specific settings (`service_port` for servicebus).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl Default for RuleEndpointSpec {
    fn default() -> Self {
        Self {
            rule_endpoint_type: EndpointType::Rest,
            properties: BTreeMap::new(),
        }
    }
}

/// A Rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rule {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Where messages come from and go to.
    #[serde(default)]
    pub spec: RuleSpec,
    /// What the cloud counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RuleStatus>,
}

/// A Rule's spec, KubeEdge's field for field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// The source RuleEndpoint's name, in the rule's namespace.
    #[serde(default)]
    pub source: String,
    /// Where at the source: `{"topic", "node_name"}` for eventbus, `{"path"}` for rest.
    #[serde(default)]
    pub source_resource: BTreeMap<String, String>,
    /// The target RuleEndpoint's name, in the rule's namespace.
    #[serde(default)]
    pub target: String,
    /// Where at the target: `{"resource": "<url>"}` for rest, `{"topic"}` for eventbus,
    /// `{"path"}` for servicebus.
    #[serde(default)]
    pub target_resource: BTreeMap<String, String>,
}

/// A Rule's status, as KubeEdge's router keeps it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    /// Messages delivered to the target.
    #[serde(default)]
    pub success_messages: i64,
    /// Messages that could not be.
    #[serde(default)]
    pub fail_messages: i64,
    /// The latest errors, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Why a rule cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A resource map lacks a key its endpoint type needs.
    #[error("{field} has no {key:?} (an {endpoint} endpoint needs it)")]
    Missing {
        /// `sourceResource` or `targetResource`.
        field: &'static str,
        /// The key.
        key: &'static str,
        /// The endpoint type.
        endpoint: &'static str,
    },
    /// The topic does not make an MQTT filter.
    #[error("sourceResource topic {topic:?} is not a valid MQTT topic filter: {reason}")]
    Topic {
        /// The topic as written.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The target URL is not one Wedge can POST to.
    #[error("targetResource resource {url:?} is not an http:// or https:// URL")]
    Url {
        /// The URL as written.
        url: String,
    },
}

/// The source of an eventbus rule: the node whose bus it listens to, and the MQTT filter there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBusSource {
    /// `sourceResource.node_name`.
    pub node: String,
    /// The MQTT filter messages must match.
    pub filter: String,
}

impl RuleSpec {
    /// The node this rule listens on, if its source resource names one (eventbus sources do);
    /// the cloud sends the rule to that node.
    pub fn source_node(&self) -> Option<&str> {
        self.source_resource
            .get(SOURCE_NODE_KEY)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

    /// The eventbus source this rule describes, in `namespace`.
    pub fn eventbus_source(&self, namespace: &str) -> Result<EventBusSource, RuleError> {
        let missing = |key| RuleError::Missing {
            field: "sourceResource",
            key,
            endpoint: EndpointType::EventBus.as_str(),
        };
        let topic = self
            .source_resource
            .get("topic")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("topic"))?;
        let node = self.source_node().ok_or_else(|| missing(SOURCE_NODE_KEY))?;
        Ok(EventBusSource {
            node: node.to_owned(),
            filter: upload_filter(namespace, topic)?,
        })
    }

    /// The URL of a rest target.
    pub fn rest_target(&self) -> Result<&str, RuleError> {
        let url = self
            .target_resource
            .get("resource")
            .filter(|u| !u.is_empty())
            .ok_or(RuleError::Missing {
                field: "targetResource",
                key: "resource",
                endpoint: EndpointType::Rest.as_str(),
            })?;
        let lower = url.to_ascii_lowercase();
        let after_scheme = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        match after_scheme {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(url),
            _ => Err(RuleError::Url { url: url.clone() }),
        }
    }
}

/// The MQTT filter of a rule topic written in `namespace`: KubeEdge's `<namespace>/<topic>`, or
/// an upload topic ([`UPLOAD_PREFIX`]) as it stands.
pub fn upload_filter(namespace: &str, topic: &str) -> Result<String, RuleError> {
    let filter = if topic.starts_with(UPLOAD_PREFIX) {
        topic.to_owned()
    } else {
        format!("{namespace}/{}", topic.trim_start_matches('/'))
    };
    topic::validate_filter(&filter).map_err(|e| RuleError::Topic {
        topic: topic.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: &[(&str, &str)], target: &[(&str, &str)]) -> RuleSpec {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        RuleSpec {
            source: "my-eventbus".into(),
            source_resource: map(source),
            target: "my-rest".into(),
            target_resource: map(target),
        }
    }

    #[test]
    fn kubeedge_topics_live_under_the_namespace_and_upload_topics_stand_as_written() {
        let rule = spec(&[("topic", "test"), ("node_name", "edge-a")], &[]);
        assert_eq!(
            rule.eventbus_source("default"),
            Ok(EventBusSource {
                node: "edge-a".into(),
                filter: "default/test".into()
            })
        );
        assert_eq!(upload_filter("default", "/a/b"), Ok("default/a/b".into()));
        assert_eq!(
            upload_filter("factory", "$hw/events/upload/line-1/#"),
            Ok("$hw/events/upload/line-1/#".into())
        );
        assert_eq!(
            upload_filter("factory", "sensors/+/temp"),
            Ok("factory/sensors/+/temp".into())
        );
    }

    #[test]
    fn a_rule_missing_what_its_endpoints_need_says_which_field() {
        let no_node = spec(&[("topic", "test")], &[]);
        assert_eq!(
            no_node
                .eventbus_source("default")
                .expect_err("no node")
                .to_string(),
            "sourceResource has no \"node_name\" (an eventbus endpoint needs it)"
        );
        let no_topic = spec(&[("node_name", "edge-a")], &[]);
        assert!(matches!(
            no_topic.eventbus_source("default"),
            Err(RuleError::Missing { key: "topic", .. })
        ));
        let bad_topic = spec(&[("topic", "a/#/b"), ("node_name", "edge-a")], &[]);
        assert!(matches!(
            bad_topic.eventbus_source("default"),
            Err(RuleError::Topic { .. })
        ));
        assert!(matches!(
            spec(&[], &[]).rest_target(),
            Err(RuleError::Missing {
                key: "resource",
                ..
            })
        ));
        for bad in ["ftp://host/x", "http://", "https:///path", "host:8080/x"] {
            assert!(
                matches!(
                    spec(&[], &[("resource", bad)]).rest_target(),
                    Err(RuleError::Url { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            spec(&[], &[("resource", "http://127.0.0.1:8080/data")]).rest_target(),
            Ok("http://127.0.0.1:8080/data")
        );
    }

    #[test]
    fn kubeedge_manifests_parse() {
        let endpoint: RuleEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION, "kind": "RuleEndpoint",
            "metadata": {"name": "my-eventbus", "namespace": "default", "labels": {"description": "test"}},
            "spec": {"ruleEndpointType": "eventbus", "properties": {}}
        }))
        .expect("endpoint");
        assert_eq!(endpoint.spec.rule_endpoint_type, EndpointType::EventBus);
        let rule: Rule = serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION, "kind": "Rule",
            "metadata": {"name": "my-rule-eventbus-rest", "namespace": "default"},
            "spec": {
                "source": "my-eventbus",
                "sourceResource": {"topic": "test", "node_name": "edge-node"},
                "target": "my-rest",
                "targetResource": {"resource": "http://127.0.0.1:8080/abc"}
            }
        }))
        .expect("rule");
        assert_eq!(rule.spec.source_node(), Some("edge-node"));
        assert!(
            serde_json::from_value::<RuleEndpoint>(serde_json::json!({
                "spec": {"ruleEndpointType": "carrier-pigeon"}
            }))
            .is_err()
        );
    }
}
