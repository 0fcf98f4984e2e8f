//! Device statuses from the edges into the API (KubeEdge's `devicecontroller` upstream).
//!
//! DeviceTwin on the edge sends a Device's whole status (every twin's reported and desired
//! value) whenever a twin changes; this writes it as the Device's status subresource. An edge
//! may write only Devices bound to its own node, as it may write only its own pods' statuses.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;
use wedge_core::device::DeviceStatus;

use crate::edgecontroller::UpstreamError;
use crate::edgecontroller::desired::DynamicCache;
use crate::edgecontroller::upstream::is_status;

/// Writes `status` to the Device `namespace/name` that `node` reported, if it is bound to that
/// node (and still has `uid`, when the frame names one). One bound elsewhere is `Forbidden`;
/// one that no longer exists, or was re-created, is skipped: its status no longer matters.
pub async fn device_status(
    client: &Client,
    devices: &DynamicCache,
    (node, namespace, name, uid): (&str, &str, &str, &str),
    status: DeviceStatus,
) -> Result<(), UpstreamError> {
    let Some(device) = devices.get(namespace, name) else {
        return Ok(());
    };
    let bound = super::node_of(&device);
    if bound.as_deref() != Some(node) {
        return Err(UpstreamError::Forbidden(format!(
            "device {namespace}/{name} is bound to {}, not to node {node}",
            bound.as_deref().unwrap_or("no node")
        )));
    }
    if !uid.is_empty() && device.metadata.uid.as_deref() != Some(uid) {
        return Ok(());
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &devices.resource);
    // A merge patch replaces lists whole: the edge always sends every twin. The uid makes the
    // server refuse it if the Device was re-created meanwhile.
    let patch = json!({ "metadata": { "uid": device.metadata.uid }, "status": status });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
