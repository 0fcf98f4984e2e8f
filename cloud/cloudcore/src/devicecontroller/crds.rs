//! The CustomResourceDefinitions of KubeEdge's `devices.kubeedge.io/v1beta1` Device and
//! DeviceModel, so that manifests written for KubeEdge apply unchanged and `kubectl get devices`
//! reads like KubeEdge's.
//!
//! The schemas follow `wedge_core::device` field for field. Where KubeEdge leaves a map open
//! (`configData`, `pushMethod`, twin `metadata`) the schema keeps unknown fields, so nothing a
//! mapper puts there is pruned. Printer columns use simple JSON paths only: real API servers
//! refuse `[*]` in `additionalPrinterColumns`, so a Device shows its first twin, which is its
//! model's first property (the edge reports twins in model order).

use serde_json::{Value, json};
use wedge_core::device::{GROUP, VERSION};

use crate::crds::{Names, age, array, column, crd, int64, object, open, string};

/// The Device CRD's name.
pub const DEVICES_CRD: &str = "devices.devices.kubeedge.io";
/// The DeviceModel CRD's name.
pub const DEVICE_MODELS_CRD: &str = "devicemodels.devices.kubeedge.io";

/// A twin value: `{value, metadata}`, KubeEdge writing every value as a string.
fn twin_field() -> Value {
    object(json!({"value": string(), "metadata": open()}))
}

/// `{protocolName, configData}`: how a mapper reaches a device or a property.
fn protocol_config() -> Value {
    object(json!({"protocolName": string(), "configData": open()}))
}

/// The Device CRD: spec, status (a subresource, written by the edge through cloudcore).
pub fn device_crd() -> Value {
    let property = object(json!({
        "name": string(),
        "desired": twin_field(),
        "visitors": protocol_config(),
        "reportCycle": int64(),
        "collectCycle": int64(),
        "reportToCloud": {"type": "boolean"},
        "pushMethod": open(),
    }));
    let method = object(json!({
        "name": string(),
        "description": string(),
        "propertyNames": array(string()),
    }));
    let spec = object(json!({
        "deviceModelRef": object(json!({"name": string()})),
        "nodeName": string(),
        "protocol": protocol_config(),
        "properties": array(property),
        "methods": array(method),
    }));
    let twin = object(json!({
        "propertyName": string(),
        "reported": twin_field(),
        "observedDesired": twin_field(),
    }));
    let status = object(json!({
        "twins": array(twin),
        "state": string(),
        "lastOnlineTime": string(),
    }));
    let schema = object(json!({
        "apiVersion": string(),
        "kind": string(),
        "metadata": {"type": "object"},
        "spec": spec,
        "status": status,
    }));
    let columns = vec![
        column("NODE", "string", ".spec.nodeName", 0),
        column("MODEL", "string", ".spec.deviceModelRef.name", 0),
        column("STATE", "string", ".status.state", 0),
        column("PROPERTY", "string", ".status.twins[0].propertyName", 0),
        column("REPORTED", "string", ".status.twins[0].reported.value", 0),
        column(
            "DESIRED",
            "string",
            ".status.twins[0].observedDesired.value",
            0,
        ),
        age(),
        column("PROTOCOL", "string", ".spec.protocol.protocolName", 1),
        column("LAST-ONLINE", "string", ".status.lastOnlineTime", 1),
    ];
    let names = Names {
        group: GROUP,
        version: VERSION,
        plural: "devices",
        kind: "Device",
        short_names: &["dev"],
    };
    crd(&names, schema, columns, true)
}

/// The DeviceModel CRD.
pub fn device_model_crd() -> Value {
    let property = object(json!({
        "name": string(),
        "description": string(),
        "type": string(),
        "accessMode": string(),
        "minimum": string(),
        "maximum": string(),
        "unit": string(),
    }));
    let spec = object(json!({
        "protocol": string(),
        "properties": array(property),
    }));
    let schema = object(json!({
        "apiVersion": string(),
        "kind": string(),
        "metadata": {"type": "object"},
        "spec": spec,
    }));
    let columns = vec![column("PROTOCOL", "string", ".spec.protocol", 0), age()];
    let names = Names {
        group: GROUP,
        version: VERSION,
        plural: "devicemodels",
        kind: "DeviceModel",
        short_names: &["dm"],
    };
    crd(&names, schema, columns, false)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    use super::*;

    fn columns(crd: &Value) -> Vec<(String, String, i64)> {
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().expect("name").to_owned(),
                    c["jsonPath"].as_str().expect("path").to_owned(),
                    c["priority"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }

    #[test]
    fn both_crds_are_well_formed_custom_resource_definitions() {
        for (crd, name) in [
            (device_crd(), DEVICES_CRD),
            (device_model_crd(), DEVICE_MODELS_CRD),
        ] {
            let typed: CustomResourceDefinition =
                serde_json::from_value(crd.clone()).expect("a CRD");
            assert_eq!(typed.metadata.name.as_deref(), Some(name));
            assert_eq!(typed.spec.group, GROUP);
            assert_eq!(typed.spec.scope, "Namespaced");
            let [version] = typed.spec.versions.as_slice() else {
                panic!("one version");
            };
            assert!(version.served && version.storage);
            assert_eq!(version.name, VERSION);
            for (_, path, _) in columns(&crd) {
                assert!(!path.contains("[*]"), "{path}: real apiservers refuse it");
            }
        }
        let device = device_crd();
        assert!(device["spec"]["versions"][0]["subresources"]["status"].is_object());
        assert!(device_model_crd()["spec"]["versions"][0]["subresources"].is_null());
    }

    #[test]
    fn kubectl_get_devices_shows_node_model_state_and_the_first_twin() {
        let want = [
            ("NODE", ".spec.nodeName", 0),
            ("MODEL", ".spec.deviceModelRef.name", 0),
            ("STATE", ".status.state", 0),
            ("PROPERTY", ".status.twins[0].propertyName", 0),
            ("REPORTED", ".status.twins[0].reported.value", 0),
            ("DESIRED", ".status.twins[0].observedDesired.value", 0),
            ("AGE", ".metadata.creationTimestamp", 0),
            ("PROTOCOL", ".spec.protocol.protocolName", 1),
            ("LAST-ONLINE", ".status.lastOnlineTime", 1),
        ]
        .map(|(n, p, w)| (n.to_owned(), p.to_owned(), w));
        assert_eq!(columns(&device_crd()), want);
        let model: Vec<String> = columns(&device_model_crd())
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(model, ["PROTOCOL", "AGE"]);
    }

    #[test]
    fn the_schema_keeps_open_maps_and_types_cycles_as_int64() {
        let device = device_crd();
        let schema = &device["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"]["properties"];
        let preserve = |v: &Value| v["x-kubernetes-preserve-unknown-fields"] == json!(true);
        assert!(preserve(&spec["protocol"]["properties"]["configData"]));
        let property = &spec["properties"]["items"]["properties"];
        assert!(preserve(&property["pushMethod"]));
        assert!(preserve(&property["visitors"]["properties"]["configData"]));
        assert!(preserve(&property["desired"]["properties"]["metadata"]));
        for cycle in ["collectCycle", "reportCycle"] {
            assert_eq!(
                property[cycle],
                json!({"type": "integer", "format": "int64"})
            );
        }
        let twin = &schema["properties"]["status"]["properties"]["twins"]["items"]["properties"];
        assert!(preserve(&twin["reported"]["properties"]["metadata"]));
        assert_eq!(
            twin["observedDesired"]["properties"]["value"]["type"],
            "string"
        );
        let model = device_model_crd();
        let props = &model["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["properties"]["items"]["properties"];
        for field in ["name", "type", "accessMode", "minimum", "maximum", "unit"] {
            assert_eq!(props[field]["type"], "string", "{field}");
        }
    }
}
