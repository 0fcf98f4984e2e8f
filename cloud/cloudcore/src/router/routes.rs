//! Which routes a Rule makes, given the RuleEndpoints it names: pure, so every refusal a user can
//! meet is unit-tested here and read in the Rule's status.

use wedge_core::rule::{EndpointType, Rule, RuleEndpoint};

/// A route cloudcore serves: messages on `filter` at `node`'s bus, POSTed to `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The node whose bus the rule listens to.
    pub node: String,
    /// The MQTT filter messages match.
    pub filter: String,
    /// Where they are POSTed.
    pub url: String,
}

/// Resolves `rule` (in `namespace`) with `endpoint`, which looks a RuleEndpoint up by name in
/// the rule's namespace. The error is what the Rule's status should say.
pub fn resolve(
    rule: &Rule,
    namespace: &str,
    endpoint: impl Fn(&str) -> Option<RuleEndpoint>,
) -> Result<Route, String> {
    let kind_of = |role: &str, name: &str| {
        endpoint(name)
            .map(|e| e.spec.rule_endpoint_type)
            .ok_or_else(|| format!("{role} RuleEndpoint {namespace}/{name} does not exist"))
    };
    let source = kind_of("source", &rule.spec.source)?;
    let target = kind_of("target", &rule.spec.target)?;
    match (source, target) {
        (EndpointType::EventBus, EndpointType::Rest) => {
            let source = rule
                .spec
                .eventbus_source(namespace)
                .map_err(|e| e.to_string())?;
            let url = rule.spec.rest_target().map_err(|e| e.to_string())?;
            Ok(Route {
                node: source.node,
                filter: source.filter,
                url: url.to_owned(),
            })
        }
        (EndpointType::Rest, _) => Err(format!(
            "routes from a rest endpoint (cloud to edge) are not served by Wedge yet; {} to {} is",
            EndpointType::EventBus.as_str(),
            EndpointType::Rest.as_str()
        )),
        (source, target) => Err(format!(
            "{} to {} is not a route KubeEdge has: eventbus endpoints route to rest endpoints",
            source.as_str(),
            target.as_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn endpoint(kind: &str) -> RuleEndpoint {
        serde_json::from_value(json!({"spec": {"ruleEndpointType": kind}})).expect("endpoint")
    }

    fn rule(target_url: &str) -> Rule {
        serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"source": "bus", "sourceResource": {"topic": "test", "node_name": "edge-a"},
                     "target": "web", "targetResource": {"resource": target_url}}
        }))
        .expect("rule")
    }

    fn endpoints(
        source: &'static str,
        target: &'static str,
    ) -> impl Fn(&str) -> Option<RuleEndpoint> {
        move |name| match name {
            "bus" => Some(endpoint(source)),
            "web" => Some(endpoint(target)),
            _ => None,
        }
    }

    #[test]
    fn eventbus_to_rest_is_a_route() {
        assert_eq!(
            resolve(
                &rule("http://127.0.0.1:8080/in"),
                "default",
                endpoints("eventbus", "rest")
            ),
            Ok(Route {
                node: "edge-a".into(),
                filter: "default/test".into(),
                url: "http://127.0.0.1:8080/in".into()
            })
        );
    }

    #[test]
    fn what_cannot_be_served_says_why() {
        let cases = [
            (
                rule("http://x/"),
                endpoints("eventbus", "servicebus"),
                "eventbus to servicebus is not a route KubeEdge has",
            ),
            (
                rule("http://x/"),
                endpoints("rest", "eventbus"),
                "routes from a rest endpoint (cloud to edge) are not served",
            ),
            (
                rule("not a url"),
                endpoints("eventbus", "rest"),
                "is not an http:// or https:// URL",
            ),
        ];
        for (rule, endpoints, want) in cases {
            let got = resolve(&rule, "default", endpoints).expect_err("refused");
            assert!(got.contains(want), "{got}");
        }
        let missing = resolve(&rule("http://x/"), "default", |_| None).expect_err("refused");
        assert_eq!(missing, "source RuleEndpoint default/bus does not exist");
    }
}
