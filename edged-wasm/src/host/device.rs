//! `wedge:device`: the device twin as host functions, checked against the pod's grants.
//!
//! The twin itself lives behind `wedge_core::backend::TwinBackend`: the edge's SQLite DeviceTwin in production, the
//! [`super::in_process`] backend in tests. This module only translates between WIT and the
//! backend and enforces what the pod may touch; a device the pod was not granted is
//! `not-permitted` whether or not it exists.

use std::sync::Arc;

use wedge_core::backend::{TwinBackend, TwinBackendError};
use wedge_core::grants::{DeviceAccess, PodGrants};
use wedge_core::twin::{
    AccessMode, DeviceState, PropertyType, StampedValue, TwinValue, ValueError,
};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wedge:device/imports",
        imports: { default: async },
    });
}

use bindings::wedge::device::types as wit;

/// The device half of a store's data: the backend and the pod's grants.
#[derive(Clone)]
pub struct DeviceCtx {
    pub(crate) backend: Arc<dyn TwinBackend>,
    pub(crate) grants: Arc<PodGrants>,
}

impl DeviceCtx {
    /// A context for one pod.
    pub fn new(backend: Arc<dyn TwinBackend>, grants: Arc<PodGrants>) -> Self {
        Self { backend, grants }
    }

    fn granted(&self, device: &str, need: DeviceAccess) -> Result<DeviceAccess, wit::Error> {
        match self.grants.device_access(device) {
            Some(have) if have >= need => Ok(have),
            Some(_) => Err(wit::Error::NotPermitted(format!(
                "this pod may read {device:?} but not set its desired values (devices.wedge.io/write)"
            ))),
            None => Err(wit::Error::NotPermitted(format!(
                "this pod is not granted device {device:?} (devices.wedge.io/read)"
            ))),
        }
    }

    async fn info(&self, name: &str, access: DeviceAccess) -> Result<wit::DeviceInfo, wit::Error> {
        let d = self.backend.device(name).await.map_err(to_wit)?;
        let d =
            d.ok_or_else(|| wit::Error::NoSuchDevice(format!("no device {name:?} on this node")))?;
        Ok(wit::DeviceInfo {
            name: d.name,
            model: d.model,
            state: match d.state {
                DeviceState::Online => wit::DeviceState::Online,
                DeviceState::Offline => wit::DeviceState::Offline,
                DeviceState::Unknown => wit::DeviceState::Unknown,
            },
            properties: d
                .properties
                .into_iter()
                .map(|p| wit::PropertyInfo {
                    name: p.name,
                    type_: match p.kind {
                        PropertyType::Int => wit::PropertyType::Integer,
                        PropertyType::Float => wit::PropertyType::Float,
                        PropertyType::Double => wit::PropertyType::Double,
                        PropertyType::String => wit::PropertyType::Text,
                        PropertyType::Boolean => wit::PropertyType::Boolean,
                        PropertyType::Bytes => wit::PropertyType::Bytes,
                    },
                    access_mode: match p.access_mode {
                        AccessMode::ReadWrite => wit::AccessMode::ReadWrite,
                        AccessMode::ReadOnly => wit::AccessMode::ReadOnly,
                    },
                    unit: p.unit,
                })
                .collect(),
            writable: access == DeviceAccess::ReadWrite,
        })
    }
}

fn to_wit(e: TwinBackendError) -> wit::Error {
    let message = e.to_string();
    match e {
        TwinBackendError::NoSuchDevice(_) => wit::Error::NoSuchDevice(message),
        TwinBackendError::NoSuchProperty { .. } => wit::Error::NoSuchProperty(message),
        TwinBackendError::Value(ValueError::TypeMismatch { .. }) => {
            wit::Error::TypeMismatch(message)
        }
        TwinBackendError::Value(ValueError::OutOfRange { .. }) => wit::Error::OutOfRange(message),
        TwinBackendError::ReadOnly(_) => wit::Error::ReadOnly(message),
        TwinBackendError::Unavailable(_) => wit::Error::Unavailable(message),
    }
}

/// Converts a twin value to its WIT form.
pub fn value_to_wit(v: TwinValue) -> wit::Value {
    match v {
        TwinValue::Integer(i) => wit::Value::Integer(i),
        TwinValue::Float(f) => wit::Value::Float(f),
        TwinValue::Text(s) => wit::Value::Text(s),
        TwinValue::Boolean(b) => wit::Value::Boolean(b),
        TwinValue::Bytes(b) => wit::Value::Bytes(b),
    }
}

fn value_from_wit(v: wit::Value) -> TwinValue {
    match v {
        wit::Value::Integer(i) => TwinValue::Integer(i),
        wit::Value::Float(f) => TwinValue::Float(f),
        wit::Value::Text(s) => TwinValue::Text(s),
        wit::Value::Boolean(b) => TwinValue::Boolean(b),
        wit::Value::Bytes(b) => TwinValue::Bytes(b),
    }
}

/// Converts a stamped value to its WIT form.
pub fn stamped_to_wit(v: StampedValue) -> wit::StampedValue {
    wit::StampedValue {
        value: value_to_wit(v.value),
        timestamp_ms: v.timestamp_ms,
        version: v.version,
    }
}

impl wit::Host for DeviceCtx {}

impl bindings::wedge::device::twin::Host for DeviceCtx {
    async fn list_devices(&mut self) -> Result<Vec<wit::DeviceInfo>, wit::Error> {
        let grants = self.grants.clone();
        let mut out = Vec::new();
        for (name, access) in &grants.devices {
            match self.info(name, *access).await {
                Ok(info) => out.push(info),
                Err(wit::Error::NoSuchDevice(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn get_device(&mut self, device: String) -> Result<wit::DeviceInfo, wit::Error> {
        let access = self.granted(&device, DeviceAccess::Read)?;
        self.info(&device, access).await
    }

    async fn get_property(
        &mut self,
        device: String,
        property: String,
    ) -> Result<wit::TwinProperty, wit::Error> {
        self.granted(&device, DeviceAccess::Read)?;
        let p = self
            .backend
            .property(&device, &property)
            .await
            .map_err(to_wit)?;
        Ok(wit::TwinProperty {
            name: property,
            reported: p.reported.map(stamped_to_wit),
            desired: p.desired.map(stamped_to_wit),
        })
    }

    async fn set_desired(
        &mut self,
        device: String,
        property: String,
        value: wit::Value,
    ) -> Result<u64, wit::Error> {
        self.granted(&device, DeviceAccess::ReadWrite)?;
        self.backend
            .set_desired(&device, &property, value_from_wit(value))
            .await
            .map_err(to_wit)
    }
}
