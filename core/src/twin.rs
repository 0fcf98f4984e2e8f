//! Device twins: the values, models and changes that the DeviceTwin store, the cloud and the
//! Wasm host functions all speak.
//!
//! Property types follow KubeEdge's DeviceModel (INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES);
//! [`PropertyModel::check`] is the one place a value is checked against its model, so a twin
//! set from an app, from the cloud or from a mapper is held to the same rules.

use serde::{Deserialize, Serialize};

/// A property's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TwinValue {
    /// INT properties.
    Integer(i64),
    /// FLOAT and DOUBLE properties.
    Float(f64),
    /// STRING properties.
    Text(String),
    /// BOOLEAN properties.
    Boolean(bool),
    /// BYTES properties.
    Bytes(Vec<u8>),
}

impl TwinValue {
    /// The value as a number, for range checks.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Integer(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// A property's type in the DeviceModel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PropertyType {
    /// `INT`.
    Int,
    /// `FLOAT`.
    Float,
    /// `DOUBLE`.
    Double,
    /// `STRING`.
    String,
    /// `BOOLEAN`.
    Boolean,
    /// `BYTES`.
    Bytes,
}

/// Whether apps may set a property's desired value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessMode {
    /// Desired values may be set.
    ReadWrite,
    /// Only reported values.
    ReadOnly,
}

/// Whether the device is connected, as its mapper last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Connected.
    Online,
    /// Disconnected.
    Offline,
    /// Not reported yet.
    Unknown,
}

/// One property of a DeviceModel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyModel {
    /// The property's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: PropertyType,
    /// Its access mode.
    pub access_mode: AccessMode,
    /// Its unit, if any.
    pub unit: Option<String>,
    /// The smallest allowed numeric value.
    pub minimum: Option<f64>,
    /// The largest allowed numeric value.
    pub maximum: Option<f64>,
}

/// A value that does not fit its property.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValueError {
    /// Wrong case for the property's type.
    #[error("property {property} is {expected:?}, got {got:?}")]
    TypeMismatch {
        /// The property.
        property: String,
        /// Its type.
        expected: PropertyType,
        /// The value given.
        got: TwinValue,
    },
    /// Outside minimum..maximum.
    #[error("property {property}: {value} is outside {minimum:?}..{maximum:?}")]
    OutOfRange {
        /// The property.
        property: String,
        /// The value.
        value: f64,
        /// The model's minimum.
        minimum: Option<f64>,
        /// The model's maximum.
        maximum: Option<f64>,
    },
}

impl PropertyModel {
    /// Checks a value against the property's type and range.
    pub fn check(&self, value: &TwinValue) -> Result<(), ValueError> {
        let fits = matches!(
            (self.kind, value),
            (PropertyType::Int, TwinValue::Integer(_))
                | (
                    PropertyType::Float | PropertyType::Double,
                    TwinValue::Float(_) | TwinValue::Integer(_)
                )
                | (PropertyType::String, TwinValue::Text(_))
                | (PropertyType::Boolean, TwinValue::Boolean(_))
                | (PropertyType::Bytes, TwinValue::Bytes(_))
        );
        if !fits {
            return Err(ValueError::TypeMismatch {
                property: self.name.clone(),
                expected: self.kind,
                got: value.clone(),
            });
        }
        if let Some(v) = value.as_f64() {
            let below = self.minimum.is_some_and(|m| v < m);
            let above = self.maximum.is_some_and(|m| v > m);
            if below || above {
                return Err(ValueError::OutOfRange {
                    property: self.name.clone(),
                    value: v,
                    minimum: self.minimum,
                    maximum: self.maximum,
                });
            }
        }
        Ok(())
    }
}

/// A value with when and at which version it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StampedValue {
    /// The value.
    pub value: TwinValue,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Increases by one with every change of this side.
    pub version: u64,
}

/// Both sides of one property's twin.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinProperty {
    /// What the device last reported.
    pub reported: Option<StampedValue>,
    /// What the cloud or an app wants.
    pub desired: Option<StampedValue>,
}

/// A device as the twin store knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTwin {
    /// The Device's name.
    pub name: String,
    /// Its DeviceModel.
    pub model: String,
    /// Connection state.
    pub state: DeviceState,
    /// The model's properties, in model order.
    pub properties: Vec<PropertyModel>,
}

impl DeviceTwin {
    /// The model of property `name`.
    pub fn property(&self, name: &str) -> Option<&PropertyModel> {
        self.properties.iter().find(|p| p.name == name)
    }
}

/// Which side of a twin changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TwinSide {
    /// The device reported.
    Reported,
    /// A new desired value.
    Desired,
}

/// One change to a twin, as handlers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinChange {
    /// The device.
    pub device: String,
    /// The property.
    pub property: String,
    /// Which side.
    pub side: TwinSide,
    /// The value before.
    pub previous: Option<StampedValue>,
    /// The value now.
    pub current: StampedValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(kind: PropertyType) -> PropertyModel {
        PropertyModel {
            name: "p".into(),
            kind,
            access_mode: AccessMode::ReadWrite,
            unit: None,
            minimum: Some(0.0),
            maximum: Some(100.0),
        }
    }

    #[test]
    fn values_are_checked_against_models() {
        assert!(
            model(PropertyType::Int)
                .check(&TwinValue::Integer(5))
                .is_ok()
        );
        assert!(
            model(PropertyType::Double)
                .check(&TwinValue::Integer(5))
                .is_ok()
        );
        assert!(matches!(
            model(PropertyType::Int).check(&TwinValue::Text("5".into())),
            Err(ValueError::TypeMismatch { .. })
        ));
        assert!(matches!(
            model(PropertyType::Float).check(&TwinValue::Float(101.0)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(
            model(PropertyType::Boolean)
                .check(&TwinValue::Boolean(true))
                .is_ok()
        );
    }
}
