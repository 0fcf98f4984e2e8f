//! How a KubeEdge Device and its DeviceModel become a [`ModbusDevice`]: where the device listens,
//! and for each property which registers hold it and how often to read and report it.
//!
//! Everything that can be wrong with a manifest is caught here, once, with the device and property
//! named, so the running mapper never meets a property it cannot serve. The JSON is KubeEdge's
//! Modbus TCP form: the Device's `protocol.configData` is `{"ip", "port", "slaveID"}` and each
//! property's `visitors.configData` is `{"register", "offset", "limit", "scale", "isSwap",
//! "isRegisterSwap"}`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use wedge_core::device::{Device, DeviceError, DeviceModel};
use wedge_core::twin::{AccessMode, PropertyModel, PropertyType};

use crate::codec::Codec;

/// The protocol name this mapper serves.
pub const PROTOCOL: &str = "modbus";
/// Modbus TCP's port when the Device names none.
pub const DEFAULT_PORT: u16 = 502;
/// The unit id when the Device names none.
pub const DEFAULT_SLAVE_ID: u8 = 1;
/// The collect and report cycle when the Device gives none, or none above zero.
pub const DEFAULT_CYCLE: Duration = Duration::from_secs(1);

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterKind {
    /// Read-write bits.
    Coil,
    /// Read-only bits.
    DiscreteInput,
    /// Read-only 16-bit registers.
    Input,
    /// Read-write 16-bit registers.
    Holding,
}

impl RegisterKind {
    /// KubeEdge's name for the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Coil => "CoilRegister",
            Self::DiscreteInput => "DiscreteInputRegister",
            Self::Input => "InputRegister",
            Self::Holding => "HoldingRegister",
        }
    }

    /// The table a KubeEdge name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "CoilRegister" => Self::Coil,
            "DiscreteInputRegister" => Self::DiscreteInput,
            "InputRegister" => Self::Input,
            "HoldingRegister" => Self::Holding,
            _ => return None,
        })
    }

    /// Whether a client may write to it.
    pub fn writable(self) -> bool {
        matches!(self, Self::Coil | Self::Holding)
    }

    /// Whether it holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }
}

/// One property the mapper serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusProperty {
    /// Its name, as the model gives it.
    pub name: String,
    /// Whether desired values may be written (from the model).
    pub access_mode: AccessMode,
    /// Which table it lives in.
    pub register: RegisterKind,
    /// Its first address in that table.
    pub offset: u16,
    /// How its value is laid out (type, width, scale, swaps).
    pub codec: Codec,
    /// How often to read it.
    pub collect_cycle: Duration,
    /// How often to report it.
    pub report_cycle: Duration,
}

impl ModbusProperty {
    /// Whether desired values are written to the device.
    pub fn writable(&self) -> bool {
        self.access_mode == AccessMode::ReadWrite && self.register.writable()
    }
}

/// A Device the mapper can serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    /// The Device's name.
    pub name: String,
    /// Where its Modbus TCP server listens.
    pub addr: SocketAddr,
    /// Its unit id.
    pub slave_id: u8,
    /// The properties with a Modbus visitor, in the Device's order.
    pub properties: Vec<ModbusProperty>,
}

/// A Device this mapper cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The Device is for another protocol.
    #[error("device {device:?}: protocol is {protocol:?}, not modbus")]
    NotModbus {
        /// The device.
        device: String,
        /// Its protocol.
        protocol: String,
    },
    /// The DeviceModel is not usable.
    #[error("device {device:?}: {source}")]
    Model {
        /// The device.
        device: String,
        /// What is wrong with the model.
        source: DeviceError,
    },
    /// The Device's `protocol.configData` does not say where the device is.
    #[error("device {device:?}: protocol configData: {reason}")]
    Address {
        /// The device.
        device: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// A property the model does not have.
    #[error("device {device:?}, property {property:?}: not in the model")]
    UnknownProperty {
        /// The device.
        device: String,
        /// The property.
        property: String,
    },
    /// A visitor field is missing or of the wrong type.
    #[error("device {device:?}, property {property:?}: visitor configData: {reason}")]
    Visitor {
        /// The device.
        device: String,
        /// The property.
        property: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// A register kind KubeEdge does not define.
    #[error(
        "device {device:?}, property {property:?}: register {register:?} is not one of CoilRegister, DiscreteInputRegister, InputRegister, HoldingRegister"
    )]
    UnknownRegister {
        /// The device.
        device: String,
        /// The property.
        property: String,
        /// The name given.
        register: String,
    },
    /// A ReadWrite property on a table clients cannot write.
    #[error(
        "device {device:?}, property {property:?}: the model makes it ReadWrite but {register} is read-only"
    )]
    ReadOnlyRegister {
        /// The device.
        device: String,
        /// The property.
        property: String,
        /// KubeEdge's name of the table.
        register: &'static str,
    },
    /// `offset + limit` runs past the last address.
    #[error(
        "device {device:?}, property {property:?}: offset {offset} + limit {limit} passes address 65535"
    )]
    Overflow {
        /// The device.
        device: String,
        /// The property.
        property: String,
        /// Its offset.
        offset: u16,
        /// Its limit.
        limit: u16,
    },
    /// The type cannot live in that table at that width.
    #[error(
        "device {device:?}, property {property:?}: a {kind:?} cannot live in {limit} {register} (bits take BOOLEAN or INT with limit 1; registers take limit 1, 2 or 4)"
    )]
    TypeRegister {
        /// The device.
        device: String,
        /// The property.
        property: String,
        /// Its type.
        kind: PropertyType,
        /// KubeEdge's name of the table.
        register: &'static str,
        /// Its limit.
        limit: u16,
    },
}

impl ModbusDevice {
    /// The Modbus view of `device`, whose model is `model`.
    ///
    /// Properties without a visitor, or whose visitor is for another protocol, are skipped: a
    /// Device may mix protocols, and another mapper serves those.
    pub fn from_kubeedge(device: &Device, model: &DeviceModel) -> Result<Self, ConfigError> {
        let name = device.name().to_owned();
        let protocol = &device.spec.protocol.protocol_name;
        if !protocol.eq_ignore_ascii_case(PROTOCOL) {
            return Err(ConfigError::NotModbus {
                device: name,
                protocol: protocol.clone(),
            });
        }
        let models = model
            .property_models()
            .map_err(|source| ConfigError::Model {
                device: name.clone(),
                source,
            })?;
        let addr_err = |reason: String| ConfigError::Address {
            device: name.clone(),
            reason,
        };
        let data = device.spec.protocol.config_data.as_ref();
        let field = |key: &str| data.and_then(|d| d.get(key)).filter(|v| !v.is_null());
        let ip = match field("ip") {
            None => return Err(addr_err("no \"ip\"".into())),
            Some(Value::String(s)) => s
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| addr_err(format!("ip {s:?} is not an IP address")))?,
            Some(other) => return Err(addr_err(format!("ip {other} is not a string"))),
        };
        let port = match field("port") {
            None => DEFAULT_PORT,
            Some(v) => number::<u16>(v)
                .filter(|p| *p != 0)
                .ok_or_else(|| addr_err(format!("port {v} is not a port number")))?,
        };
        let slave_id = match field("slaveID") {
            None => DEFAULT_SLAVE_ID,
            Some(v) => number::<u8>(v)
                .ok_or_else(|| addr_err(format!("slaveID {v} is not a unit id (0-255)")))?,
        };
        let mut properties = Vec::new();
        for prop in &device.spec.properties {
            let Some(visitor) = prop
                .visitors
                .as_ref()
                .filter(|v| v.protocol_name.eq_ignore_ascii_case(PROTOCOL))
            else {
                tracing::debug!(device = %name, property = %prop.name, "no modbus visitor; skipped");
                continue;
            };
            let model = models.iter().find(|m| m.name == prop.name).ok_or_else(|| {
                ConfigError::UnknownProperty {
                    device: name.clone(),
                    property: prop.name.clone(),
                }
            })?;
            properties.push(property(
                &name,
                model,
                visitor.config_data.as_ref(),
                cycle(prop.collect_cycle),
                cycle(prop.report_cycle),
            )?);
        }
        Ok(Self {
            name,
            addr: SocketAddr::new(ip, port),
            slave_id,
            properties,
        })
    }

    /// The property called `name`.
    pub fn property(&self, name: &str) -> Option<&ModbusProperty> {
        self.properties.iter().find(|p| p.name == name)
    }
}

/// One property from its model and visitor configData.
fn property(
    device: &str,
    model: &PropertyModel,
    data: Option<&Value>,
    collect_cycle: Duration,
    report_cycle: Duration,
) -> Result<ModbusProperty, ConfigError> {
    let visitor_err = |reason: String| ConfigError::Visitor {
        device: device.to_owned(),
        property: model.name.clone(),
        reason,
    };
    let field = |key: &str| data.and_then(|d| d.get(key)).filter(|v| !v.is_null());
    let register = match field("register") {
        None => return Err(visitor_err("no \"register\"".into())),
        Some(Value::String(s)) => {
            RegisterKind::parse(s.trim()).ok_or_else(|| ConfigError::UnknownRegister {
                device: device.to_owned(),
                property: model.name.clone(),
                register: s.clone(),
            })?
        }
        Some(other) => return Err(visitor_err(format!("register {other} is not a string"))),
    };
    let offset = match field("offset") {
        None => return Err(visitor_err("no \"offset\"".into())),
        Some(v) => number::<u16>(v)
            .ok_or_else(|| visitor_err(format!("offset {v} is not an address (0-65535)")))?,
    };
    let limit = match field("limit") {
        None => 1,
        Some(v) => number::<u16>(v)
            .filter(|l| *l > 0)
            .ok_or_else(|| visitor_err(format!("limit {v} is not a register count")))?,
    };
    let scale = match field("scale") {
        None => 1.0,
        Some(v) => float(v)
            .filter(|s| s.is_finite() && *s != 0.0)
            .ok_or_else(|| visitor_err(format!("scale {v} is not a non-zero number")))?,
    };
    let flag = |key: &str| match field(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(visitor_err(format!("{key} {other} is not true or false"))),
    };
    let codec = Codec {
        kind: model.kind,
        limit,
        scale,
        swap_bytes: flag("isSwap")?,
        swap_registers: flag("isRegisterSwap")?,
    };
    if u32::from(offset) + u32::from(limit) > 1 << 16 {
        return Err(ConfigError::Overflow {
            device: device.to_owned(),
            property: model.name.clone(),
            offset,
            limit,
        });
    }
    let fits = if register.is_bits() {
        codec.fits_bits()
    } else {
        codec.fits_registers()
    };
    if !fits {
        return Err(ConfigError::TypeRegister {
            device: device.to_owned(),
            property: model.name.clone(),
            kind: model.kind,
            register: register.name(),
            limit,
        });
    }
    if model.access_mode == AccessMode::ReadWrite && !register.writable() {
        return Err(ConfigError::ReadOnlyRegister {
            device: device.to_owned(),
            property: model.name.clone(),
            register: register.name(),
        });
    }
    Ok(ModbusProperty {
        name: model.name.clone(),
        access_mode: model.access_mode,
        register,
        offset,
        codec,
        collect_cycle,
        report_cycle,
    })
}

/// A KubeEdge cycle (nanoseconds) as a duration; absent or not above zero means the default.
fn cycle(nanos: Option<i64>) -> Duration {
    match nanos {
        Some(n) if n > 0 => Duration::from_nanos(n.unsigned_abs()),
        _ => DEFAULT_CYCLE,
    }
}

/// An integer given as a JSON number or a string of digits (KubeEdge manifests use both).
fn number<T: TryFrom<u64>>(v: &Value) -> Option<T> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    T::try_from(n).ok()
}

/// A float given as a JSON number or a numeric string.
fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> DeviceModel {
        serde_json::from_value(json!({
            "metadata": {"name": "thermometer"},
            "spec": {"protocol": "modbus", "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
                {"name": "fan", "type": "BOOLEAN", "accessMode": "ReadWrite"},
                {"name": "label", "type": "STRING", "accessMode": "ReadWrite"},
                {"name": "other", "type": "INT", "accessMode": "ReadOnly"}
            ]}
        }))
        .expect("model")
    }

    fn device(protocol: Value, properties: Value) -> Device {
        serde_json::from_value(json!({
            "metadata": {"name": "thermo-1"},
            "spec": {"deviceModelRef": {"name": "thermometer"},
                "protocol": {"protocolName": "modbus", "configData": protocol},
                "properties": properties}
        }))
        .expect("device")
    }

    fn visitor(config: Value) -> Value {
        json!({"protocolName": "modbus", "configData": config})
    }

    fn one(name: &str, config: Value) -> Result<ModbusDevice, ConfigError> {
        let d = device(
            json!({"ip": "127.0.0.1"}),
            json!([{"name": name, "visitors": visitor(config)}]),
        );
        ModbusDevice::from_kubeedge(&d, &model())
    }

    #[test]
    fn a_kubeedge_modbus_device_maps_with_defaults() {
        let d = device(
            json!({"ip": "10.0.0.7", "port": "5020", "slaveID": 3}),
            json!([
                {"name": "temperature", "collectCycle": 500_000_000, "reportCycle": 0,
                 "visitors": visitor(json!({"register": "InputRegister", "offset": 2, "limit": 2,
                     "scale": 0.5, "isSwap": true, "isRegisterSwap": false}))},
                {"name": "fan", "visitors": visitor(json!({"register": "CoilRegister", "offset": 0}))},
                {"name": "setpoint"},
                {"name": "other", "visitors": {"protocolName": "opcua", "configData": {}}}
            ]),
        );
        let m = ModbusDevice::from_kubeedge(&d, &model()).expect("maps");
        assert_eq!(m.name, "thermo-1");
        assert_eq!(m.addr, "10.0.0.7:5020".parse().expect("addr"));
        assert_eq!(m.slave_id, 3);
        assert_eq!(
            m.properties.len(),
            2,
            "no visitor and other protocols are skipped"
        );
        let t = m.property("temperature").expect("temperature");
        assert_eq!(
            (t.register, t.offset, t.codec.limit),
            (RegisterKind::Input, 2, 2)
        );
        assert_eq!(
            (t.codec.scale, t.codec.swap_bytes, t.codec.swap_registers),
            (0.5, true, false)
        );
        assert_eq!(t.codec.kind, PropertyType::Float);
        assert_eq!(t.collect_cycle, Duration::from_millis(500));
        assert_eq!(t.report_cycle, DEFAULT_CYCLE);
        assert!(!t.writable());
        let f = m.property("fan").expect("fan");
        assert_eq!(
            (f.register, f.codec.limit, f.codec.scale),
            (RegisterKind::Coil, 1, 1.0)
        );
        assert!(f.writable());

        let d = device(json!({"ip": "::1"}), json!([]));
        let m = ModbusDevice::from_kubeedge(&d, &model()).expect("maps");
        assert_eq!(
            (m.addr.port(), m.slave_id),
            (DEFAULT_PORT, DEFAULT_SLAVE_ID)
        );
    }

    #[test]
    fn addresses_must_be_ip_addresses() {
        for data in [
            json!({}),
            json!({"ip": "thermo.local"}),
            json!({"ip": 7}),
            json!({"ip": "127.0.0.1", "port": 70000}),
        ] {
            let err = ModbusDevice::from_kubeedge(&device(data.clone(), json!([])), &model())
                .expect_err("refused");
            assert!(matches!(err, ConfigError::Address { .. }), "{data}: {err}");
            assert!(err.to_string().contains("thermo-1"), "{err}");
        }
        let mut d = device(json!({"ip": "127.0.0.1"}), json!([]));
        d.spec.protocol.protocol_name = "opcua".into();
        assert!(matches!(
            ModbusDevice::from_kubeedge(&d, &model()),
            Err(ConfigError::NotModbus { .. })
        ));
    }

    #[test]
    fn bad_visitors_are_refused_naming_device_and_property() {
        let err = one("fan", json!({"register": "Coils", "offset": 0})).expect_err("refused");
        assert!(matches!(err, ConfigError::UnknownRegister { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("thermo-1") && msg.contains("fan") && msg.contains("Coils"),
            "{msg}"
        );

        let err = one(
            "setpoint",
            json!({"register": "InputRegister", "offset": 0}),
        )
        .expect_err("ReadWrite on an input register");
        assert!(
            matches!(
                err,
                ConfigError::ReadOnlyRegister {
                    register: "InputRegister",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("setpoint"), "{err}");

        let err = one(
            "setpoint",
            json!({"register": "HoldingRegister", "offset": 65534, "limit": 4}),
        )
        .expect_err("overflow");
        assert!(
            matches!(
                err,
                ConfigError::Overflow {
                    offset: 65534,
                    limit: 4,
                    ..
                }
            ),
            "{err}"
        );

        let err = one("label", json!({"register": "CoilRegister", "offset": 0}))
            .expect_err("string on a coil");
        assert!(
            matches!(
                err,
                ConfigError::TypeRegister {
                    kind: PropertyType::String,
                    ..
                }
            ),
            "{err}"
        );
        let err = one(
            "setpoint",
            json!({"register": "HoldingRegister", "offset": 0, "limit": 3}),
        )
        .expect_err("limit 3");
        assert!(
            matches!(err, ConfigError::TypeRegister { limit: 3, .. }),
            "{err}"
        );

        assert!(matches!(
            one("setpoint", json!({"register": "HoldingRegister"})),
            Err(ConfigError::Visitor { .. })
        ));
        assert!(matches!(
            one(
                "setpoint",
                json!({"register": "HoldingRegister", "offset": 0, "scale": 0})
            ),
            Err(ConfigError::Visitor { .. })
        ));
        assert!(matches!(
            one(
                "missing",
                json!({"register": "HoldingRegister", "offset": 0})
            ),
            Err(ConfigError::UnknownProperty { .. })
        ));
        // A read-only property on a writable table is fine: the mapper simply never writes it.
        assert!(one("other", json!({"register": "HoldingRegister", "offset": 1})).is_ok());
        assert!(
            one(
                "label",
                json!({"register": "HoldingRegister", "offset": 1, "limit": 4})
            )
            .is_ok()
        );
    }
}
