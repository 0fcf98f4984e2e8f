//! Label selectors (`matchLabels` and `matchExpressions`) as workload controllers use them to
//! find their pods: kube's [`Selector`] does the matching; this module only fixes what a
//! selector that kube cannot read means here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

/// Whether `labels` are selected. An empty selector selects everything, as Kubernetes has it
/// (the API server refuses empty selectors on workloads, so a controller never sees one); one
/// that is not valid (an unknown operator, `In`/`NotIn` without values) selects nothing, as
/// `metav1.LabelSelectorAsSelector` failing does in Kubernetes' controllers. A nil selector is
/// the caller's to read (a PodDisruptionBudget without one selects nothing).
pub fn matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let Ok(selector) = Selector::try_from(selector.clone()) else {
        return false;
    };
    match labels {
        Some(labels) => selector.matches(labels),
        None => selector.matches(&BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_labels_and_expressions() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .expect("selector");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches(&s, Some(&labels(&[("app", "web"), ("tier", "a")]))));
        assert!(!matches(
            &s,
            Some(&labels(&[("app", "web"), ("tier", "c")]))
        ));
        assert!(!matches(
            &s,
            Some(&labels(&[("app", "web"), ("tier", "a"), ("canary", "1")]))
        ));
        assert!(!matches(&s, None));
    }

    #[test]
    fn empty_selects_everything_and_invalid_nothing() {
        let parse = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).expect("selector")
        };
        let web: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        assert!(matches(&LabelSelector::default(), Some(&web)));
        assert!(matches(&LabelSelector::default(), None));
        let unknown = parse(
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["web"]}]}),
        );
        assert!(!matches(&unknown, Some(&web)));
        let no_values =
            parse(serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn"}]}));
        assert!(!matches(&no_values, Some(&web)));
        let not_in = parse(
            serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}),
        );
        assert!(matches(&not_in, Some(&web)));
        assert!(matches(&not_in, None));
    }
}
