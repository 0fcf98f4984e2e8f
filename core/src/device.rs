//! KubeEdge's `devices.kubeedge.io/v1beta1` Device and DeviceModel, field for field, and how they
//! become the twins the edge keeps.
//!
//! The cloud stores these objects as custom resources; the edge receives them over CloudHub and
//! builds a [`twin::DeviceTwin`] from a Device and its model. KubeEdge writes every twin value as
//! a string (`desired.value: "30"`) and every range bound too (`maximum: "100"`): [`parse_value`]
//! and [`format_value`] are the one place those strings meet typed [`TwinValue`]s.
//!
//! Unknown fields are kept where KubeEdge leaves them open (`configData`, `pushMethod`,
//! `metadata` maps) so that a manifest written for KubeEdge round-trips unchanged.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::twin::{self, AccessMode, DeviceState, PropertyType, TwinValue};

/// The API group of Device and DeviceModel.
pub const GROUP: &str = "devices.kubeedge.io";
/// Their version.
pub const VERSION: &str = "v1beta1";
/// `apiVersion` of both kinds.
pub const API_VERSION: &str = "devices.kubeedge.io/v1beta1";

/// A Device: one physical device bound to one edge node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the device is and how to reach it.
    #[serde(default)]
    pub spec: DeviceSpec,
    /// What the edge last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
}

/// A model's name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelRef {
    /// The DeviceModel's name, in the Device's namespace.
    #[serde(default)]
    pub name: String,
}

/// How a mapper reaches the device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolConfig {
    /// The protocol (`modbus`, `mqtt`, …): which mapper serves the device.
    #[serde(default)]
    pub protocol_name: String,
    /// The protocol's settings (for Modbus TCP: `ip`, `port`, `slaveID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_data: Option<serde_json::Value>,
}

/// A value with KubeEdge's open metadata map.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TwinField {
    /// The value, as a string.
    #[serde(default)]
    pub value: String,
    /// Free-form metadata (KubeEdge puts `timestamp` and `type` here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// One property of a Device: its desired value and how the mapper reads it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperty {
    /// The property, as the model names it.
    pub name: String,
    /// The value the cloud wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<TwinField>,
    /// Where the mapper finds the property on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<ProtocolConfig>,
    /// How often to report to the cloud, in nanoseconds (KubeEdge's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_cycle: Option<i64>,
    /// How often to read the device, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_cycle: Option<i64>,
    /// Whether reported values go to the cloud (KubeEdge's default: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to_cloud: Option<bool>,
    /// Where else to push values (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_method: Option<serde_json::Value>,
}

/// A Device's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Its model.
    #[serde(default)]
    pub device_model_ref: ModelRef,
    /// The edge node it is attached to.
    #[serde(default)]
    pub node_name: String,
    /// How to reach it.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// Its properties.
    #[serde(default)]
    pub properties: Vec<DeviceProperty>,
}

/// One property's twin in the Device's status.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusTwin {
    /// The property.
    pub property_name: String,
    /// What the device reported last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<TwinField>,
    /// The desired value the edge is acting on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_desired: Option<TwinField>,
}

/// A Device's status, as the edge reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Every property's twin.
    #[serde(default)]
    pub twins: Vec<StatusTwin>,
    /// `online`, `offline` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the device was last online (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_online_time: Option<String>,
}

/// A DeviceModel: what every device of a kind offers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceModel {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The model.
    #[serde(default)]
    pub spec: DeviceModelSpec,
}

/// A DeviceModel's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceModelSpec {
    /// The protocol its devices speak.
    #[serde(default)]
    pub protocol: String,
    /// Its properties.
    #[serde(default)]
    pub properties: Vec<ModelProperty>,
}

/// One property of a DeviceModel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelProperty {
    /// Its name.
    pub name: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `INT`, `FLOAT`, `DOUBLE`, `STRING`, `BOOLEAN`, `BYTES` or `STREAM`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `ReadWrite` or `ReadOnly`.
    #[serde(default)]
    pub access_mode: String,
    /// The smallest value, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<String>,
    /// The largest value, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<String>,
    /// Its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A Device or DeviceModel that cannot become a twin.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceError {
    /// The Device names another model than the one given.
    #[error("device {device:?} uses model {wanted:?}, not {given:?}")]
    WrongModel {
        /// The device.
        device: String,
        /// The model it names.
        wanted: String,
        /// The model given.
        given: String,
    },
    /// A model property has a type Wedge does not know.
    #[error(
        "model {model:?}, property {property:?}: type {kind:?} is not one of INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES"
    )]
    UnknownType {
        /// The model.
        model: String,
        /// The property.
        property: String,
        /// The type given.
        kind: String,
    },
    /// A model property has a bound that is not a number.
    #[error("model {model:?}, property {property:?}: {bound} {value:?} is not a number")]
    BadBound {
        /// The model.
        model: String,
        /// The property.
        property: String,
        /// `minimum` or `maximum`.
        bound: &'static str,
        /// What was given.
        value: String,
    },
}

/// A string that is not a value of its property's type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a {kind:?} value")]
pub struct ParseValueError {
    /// What was given.
    pub value: String,
    /// The type expected.
    pub kind: PropertyType,
}

/// The type a model's `type` string names (case-insensitive, as KubeEdge's mappers read it).
pub fn property_type(kind: &str) -> Option<PropertyType> {
    Some(match kind.to_ascii_uppercase().as_str() {
        "INT" | "INTEGER" => PropertyType::Int,
        "FLOAT" => PropertyType::Float,
        "DOUBLE" => PropertyType::Double,
        "STRING" | "STREAM" => PropertyType::String,
        "BOOLEAN" | "BOOL" => PropertyType::Boolean,
        "BYTES" => PropertyType::Bytes,
        _ => return None,
    })
}

/// The model's type name for a property type, as KubeEdge writes it in twin metadata.
pub fn type_name(kind: PropertyType) -> &'static str {
    match kind {
        PropertyType::Int => "int",
        PropertyType::Float => "float",
        PropertyType::Double => "double",
        PropertyType::String => "string",
        PropertyType::Boolean => "boolean",
        PropertyType::Bytes => "bytes",
    }
}

/// Parses KubeEdge's string form of a value of type `kind`. Bytes are base64.
pub fn parse_value(value: &str, kind: PropertyType) -> Result<TwinValue, ParseValueError> {
    let err = || ParseValueError {
        value: value.to_owned(),
        kind,
    };
    let trimmed = value.trim();
    Ok(match kind {
        PropertyType::Int => TwinValue::Integer(trimmed.parse().map_err(|_| err())?),
        PropertyType::Float | PropertyType::Double => {
            let f: f64 = trimmed.parse().map_err(|_| err())?;
            if !f.is_finite() {
                return Err(err());
            }
            TwinValue::Float(f)
        }
        PropertyType::String => TwinValue::Text(value.to_owned()),
        PropertyType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" => TwinValue::Boolean(true),
            "false" | "0" | "off" => TwinValue::Boolean(false),
            _ => return Err(err()),
        },
        PropertyType::Bytes => {
            use base64::Engine as _;
            TwinValue::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(trimmed)
                    .map_err(|_| err())?,
            )
        }
    })
}

/// KubeEdge's string form of a value.
pub fn format_value(value: &TwinValue) -> String {
    match value {
        TwinValue::Integer(i) => i.to_string(),
        TwinValue::Float(f) => f.to_string(),
        TwinValue::Text(s) => s.clone(),
        TwinValue::Boolean(b) => b.to_string(),
        TwinValue::Bytes(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        }
    }
}

/// The state's name in a Device's status.
pub fn state_name(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Online => "online",
        DeviceState::Offline => "offline",
        DeviceState::Unknown => "unknown",
    }
}

/// A state from its name (case-insensitive; KubeEdge mappers write `online`, `OK`, `offline`…).
pub fn parse_state(state: &str) -> Option<DeviceState> {
    Some(match state.trim().to_ascii_lowercase().as_str() {
        "online" | "ok" | "connected" => DeviceState::Online,
        "offline" | "disconnected" => DeviceState::Offline,
        "unknown" | "" => DeviceState::Unknown,
        _ => return None,
    })
}

impl DeviceModel {
    /// The model's properties as twins check them.
    pub fn property_models(&self) -> Result<Vec<twin::PropertyModel>, DeviceError> {
        let model = self.metadata.name.clone().unwrap_or_default();
        self.spec
            .properties
            .iter()
            .map(|p| {
                let kind = property_type(&p.kind).ok_or_else(|| DeviceError::UnknownType {
                    model: model.clone(),
                    property: p.name.clone(),
                    kind: p.kind.clone(),
                })?;
                let bound = |which: &'static str, v: &Option<String>| -> Result<_, DeviceError> {
                    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                        None => Ok(None),
                        Some(s) => s
                            .parse::<f64>()
                            .map(Some)
                            .map_err(|_| DeviceError::BadBound {
                                model: model.clone(),
                                property: p.name.clone(),
                                bound: which,
                                value: s.to_owned(),
                            }),
                    }
                };
                Ok(twin::PropertyModel {
                    name: p.name.clone(),
                    kind,
                    access_mode: if p.access_mode.eq_ignore_ascii_case("ReadOnly") {
                        AccessMode::ReadOnly
                    } else {
                        AccessMode::ReadWrite
                    },
                    unit: p.unit.clone().filter(|u| !u.is_empty()),
                    minimum: bound("minimum", &p.minimum)?,
                    maximum: bound("maximum", &p.maximum)?,
                })
            })
            .collect()
    }
}

impl Device {
    /// The device's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The twin this device and its model make, in the state given.
    pub fn twin(
        &self,
        model: &DeviceModel,
        state: DeviceState,
    ) -> Result<twin::DeviceTwin, DeviceError> {
        let given = model.metadata.name.clone().unwrap_or_default();
        if self.spec.device_model_ref.name != given {
            return Err(DeviceError::WrongModel {
                device: self.name().to_owned(),
                wanted: self.spec.device_model_ref.name.clone(),
                given,
            });
        }
        Ok(twin::DeviceTwin {
            name: self.name().to_owned(),
            model: given,
            state,
            properties: model.property_models()?,
        })
    }

    /// The desired value the spec sets for `property`, as a string, if any.
    pub fn desired(&self, property: &str) -> Option<&str> {
        self.spec
            .properties
            .iter()
            .find(|p| p.name == property)
            .and_then(|p| p.desired.as_ref())
            .map(|d| d.value.as_str())
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"{"apiVersion":"devices.kubeedge.io/v1beta1","kind":"DeviceModel",
        "metadata":{"name":"thermometer","namespace":"default"},
        "spec":{"protocol":"modbus","properties":[
          {"name":"temperature","type":"FLOAT","accessMode":"ReadOnly","minimum":"-40","maximum":"125","unit":"celsius"},
          {"name":"fan","type":"BOOLEAN","accessMode":"ReadWrite"}]}}"#;
    const DEVICE: &str = r#"{"apiVersion":"devices.kubeedge.io/v1beta1","kind":"Device",
        "metadata":{"name":"thermo-1","namespace":"default"},
        "spec":{"deviceModelRef":{"name":"thermometer"},"nodeName":"edge-a",
          "protocol":{"protocolName":"modbus","configData":{"ip":"127.0.0.1","port":5020,"slaveID":1}},
          "properties":[{"name":"fan","desired":{"value":"true"},"collectCycle":1000000000,
            "visitors":{"protocolName":"modbus","configData":{"register":"CoilRegister","offset":0,"limit":1}}}]}}"#;

    #[test]
    fn a_kubeedge_device_and_model_make_a_twin() {
        let model: DeviceModel = serde_json::from_str(MODEL).expect("model parses");
        let device: Device = serde_json::from_str(DEVICE).expect("device parses");
        let twin = device.twin(&model, DeviceState::Unknown).expect("twin");
        assert_eq!(twin.properties.len(), 2);
        let temp = twin.property("temperature").expect("temperature");
        assert_eq!(temp.kind, PropertyType::Float);
        assert_eq!(temp.access_mode, AccessMode::ReadOnly);
        assert_eq!((temp.minimum, temp.maximum), (Some(-40.0), Some(125.0)));
        assert_eq!(device.desired("fan"), Some("true"));
        assert_eq!(device.spec.properties[0].collect_cycle, Some(1_000_000_000));
        // Open maps round-trip unchanged.
        let back = serde_json::to_value(&device).expect("serialises");
        assert_eq!(back["spec"]["protocol"]["configData"]["slaveID"], 1);
    }

    #[test]
    fn bad_models_are_refused_with_the_field() {
        let mut model: DeviceModel = serde_json::from_str(MODEL).expect("model parses");
        model.spec.properties[0].kind = "COMPLEX".into();
        let err = model.property_models().expect_err("unknown type");
        assert!(err.to_string().contains("COMPLEX"), "{err}");
        let mut model: DeviceModel = serde_json::from_str(MODEL).expect("model parses");
        model.spec.properties[0].maximum = Some("hot".into());
        assert!(matches!(
            model.property_models(),
            Err(DeviceError::BadBound {
                bound: "maximum",
                ..
            })
        ));
    }

    #[test]
    fn values_parse_from_and_format_to_kubeedge_strings() {
        assert_eq!(
            parse_value("42", PropertyType::Int),
            Ok(TwinValue::Integer(42))
        );
        assert_eq!(
            parse_value("21.5", PropertyType::Float),
            Ok(TwinValue::Float(21.5))
        );
        assert_eq!(
            parse_value("on", PropertyType::Boolean),
            Ok(TwinValue::Boolean(true))
        );
        assert!(parse_value("4.2", PropertyType::Int).is_err());
        assert!(parse_value("NaN", PropertyType::Double).is_err());
        assert!(parse_value("maybe", PropertyType::Boolean).is_err());
        for v in [
            TwinValue::Integer(-3),
            TwinValue::Float(0.25),
            TwinValue::Boolean(false),
            TwinValue::Bytes(vec![0, 255, 7]),
        ] {
            let kind = match v {
                TwinValue::Integer(_) => PropertyType::Int,
                TwinValue::Float(_) => PropertyType::Double,
                TwinValue::Boolean(_) => PropertyType::Boolean,
                _ => PropertyType::Bytes,
            };
            assert_eq!(parse_value(&format_value(&v), kind), Ok(v));
        }
        assert_eq!(parse_state("OK"), Some(DeviceState::Online));
        assert_eq!(parse_state("sideways"), None);
    }
}
