//! DeviceController: KubeEdge's Device and DeviceModel in the cloud.
//!
//! cloudcore installs the two CustomResourceDefinitions ([`crds`], [`definitions`]) before any
//! watch starts, so cloudcore runs the same against the embedded API server and a real cluster
//! that has never heard of KubeEdge. The rest is EdgeController's machinery with two more kinds:
//! Devices are bound to nodes like pods and reference their DeviceModel like pods reference
//! ConfigMaps (`controller::desired`), and the edge's device statuses are written back as the
//! Device's status subresource (`controller::upstream`).

pub mod crds;

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
