//! The CustomResourceDefinitions of KubeEdge's `rules.kubeedge.io/v1` Rule and RuleEndpoint, so
//! that router manifests written for KubeEdge apply unchanged.
//!
//! KubeEdge's own definitions have no status subresource (its router writes the whole object);
//! ours have one, so a user's `kubectl apply` of a Rule never resets the counts cloudcore keeps
//! and cloudcore's count updates never conflict with the user's edits. The printer columns show
//! where a rule goes and how it fares.

use kube::api::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use wedge_core::rule::{GROUP, VERSION};

use crate::crds::{Names, Wanted, age, array, column, crd, int64, object, string, string_map};

/// The Rule CRD's name.
pub const RULES_CRD: &str = "rules.rules.kubeedge.io";
/// The RuleEndpoint CRD's name.
pub const RULE_ENDPOINTS_CRD: &str = "ruleendpoints.rules.kubeedge.io";

/// The Rule resource, for dynamic API access.
pub fn rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "Rule"), "rules")
}

/// The RuleEndpoint resource.
pub fn rule_endpoint_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "RuleEndpoint"),
        "ruleendpoints",
    )
}

/// What [`crate::crds::install`] puts on the API server for the router.
pub fn definitions() -> Vec<Wanted> {
    vec![
        (RULES_CRD, rule_crd(), rule_resource()),
        (
            RULE_ENDPOINTS_CRD,
            rule_endpoint_crd(),
            rule_endpoint_resource(),
        ),
    ]
}

fn schema(spec: Value, status: Option<Value>) -> Value {
    let mut properties = json!({
        "apiVersion": string(),
        "kind": string(),
        "metadata": {"type": "object"},
        "spec": spec,
    });
    if let Some(status) = status {
        properties["status"] = status;
    }
    object(properties)
}

/// The Rule CRD: KubeEdge's schema, a status subresource, and columns.
pub fn rule_crd() -> Value {
    let mut spec = object(json!({
        "source": string(),
        "sourceResource": string_map(),
        "target": string(),
        "targetResource": string_map(),
    }));
    spec["required"] = json!(["source", "sourceResource", "target", "targetResource"]);
    let status = object(json!({
        "successMessages": int64(),
        "failMessages": int64(),
        "errors": array(string()),
    }));
    let columns = vec![
        column("SOURCE", "string", ".spec.source", 0),
        column("TARGET", "string", ".spec.target", 0),
        column("SUCCESS", "integer", ".status.successMessages", 0),
        column("FAIL", "integer", ".status.failMessages", 0),
        age(),
        column("TOPIC", "string", ".spec.sourceResource.topic", 1),
        column("NODE", "string", ".spec.sourceResource.node_name", 1),
        column("RESOURCE", "string", ".spec.targetResource.resource", 1),
    ];
    let names = Names {
        group: GROUP,
        version: VERSION,
        plural: "rules",
        kind: "Rule",
        short_names: &[],
    };
    crd(&names, schema(spec, Some(status)), columns, true)
}

/// The RuleEndpoint CRD.
pub fn rule_endpoint_crd() -> Value {
    let mut spec = object(json!({
        "ruleEndpointType": {"type": "string", "enum": ["rest", "eventbus", "servicebus"]},
        "properties": string_map(),
    }));
    spec["required"] = json!(["ruleEndpointType"]);
    let columns = vec![column("TYPE", "string", ".spec.ruleEndpointType", 0), age()];
    let names = Names {
        group: GROUP,
        version: VERSION,
        plural: "ruleendpoints",
        kind: "RuleEndpoint",
        short_names: &["re"],
    };
    crd(&names, schema(spec, None), columns, false)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    use super::*;

    #[test]
    fn both_are_well_formed_and_rules_count_in_a_status_subresource() {
        for (name, crd, resource) in definitions() {
            let typed: CustomResourceDefinition =
                serde_json::from_value(crd.clone()).expect("a CRD");
            assert_eq!(typed.metadata.name.as_deref(), Some(name));
            assert_eq!(typed.spec.group, GROUP);
            assert_eq!(typed.spec.names.plural, resource.plural);
            assert_eq!(typed.spec.names.kind, resource.kind);
        }
        let rule = rule_crd();
        assert!(rule["spec"]["versions"][0]["subresources"]["status"].is_object());
        let columns: Vec<&str> = rule["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "SOURCE", "TARGET", "SUCCESS", "FAIL", "AGE", "TOPIC", "NODE", "RESOURCE"
            ]
        );
        let endpoint = rule_endpoint_crd();
        assert_eq!(endpoint["spec"]["names"]["shortNames"], json!(["re"]));
    }
}
