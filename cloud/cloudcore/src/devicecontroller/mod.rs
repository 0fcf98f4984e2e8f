//! DeviceController: KubeEdge's Device and DeviceModel in the cloud.
//!
//! cloudcore installs the two CustomResourceDefinitions ([`crds`], [`definitions`]) before any
//! watch starts, so cloudcore runs the same against the embedded API server and a real cluster
//! that has never heard of KubeEdge. [`downstream`] watches Devices and DeviceModels and sends
//! each Device, with its model, to the edge of its `spec.nodeName` (on EdgeController's index and
//! sessions: a Device is bound like a pod and references its model like a pod references a
//! ConfigMap); [`upstream`] writes the statuses edges report into the Device's status
//! subresource.

pub mod crds;
pub mod downstream;
pub mod upstream;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use wedge_core::device::{GROUP, VERSION};

use crate::crds::Wanted;

/// The Device resource, for dynamic API access (the orphan rule keeps `kube::Resource` off
/// `wedge_core::device::Device`).
pub fn device_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "Device"), "devices")
}

/// The DeviceModel resource.
pub fn device_model_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "DeviceModel"),
        "devicemodels",
    )
}

/// What [`crate::crds::install`] puts on the API server for devices.
pub fn definitions() -> Vec<Wanted> {
    vec![
        (crds::DEVICES_CRD, crds::device_crd(), device_resource()),
        (
            crds::DEVICE_MODELS_CRD,
            crds::device_model_crd(),
            device_model_resource(),
        ),
    ]
}

/// The node a Device is bound to (`spec.nodeName`), if any.
pub fn node_of(device: &DynamicObject) -> Option<String> {
    device
        .data
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// The DeviceModel a Device names (`spec.deviceModelRef.name`, in its namespace), if any.
pub fn model_of(device: &DynamicObject) -> Option<String> {
    device
        .data
        .pointer("/spec/deviceModelRef/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}
