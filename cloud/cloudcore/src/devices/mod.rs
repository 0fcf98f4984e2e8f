//! DeviceController: KubeEdge's Device and DeviceModel in the cloud.
//!
//! [`install`] puts the two CustomResourceDefinitions ([`crds`]) on the API server before any
//! watch starts, so cloudcore runs the same against the embedded API server and a real cluster
//! that has never heard of KubeEdge. The rest is EdgeController's machinery with two more kinds:
//! Devices are bound to nodes like pods and reference their DeviceModel like pods reference
//! ConfigMaps (`controller::desired`), and the edge's device statuses are written back as the
//! Device's status subresource (`controller::upstream`).

pub mod crds;

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use wedge_core::device::{GROUP, VERSION};

/// The field manager of the CRDs' server-side apply.
pub const FIELD_MANAGER: &str = "wedge-devicecontroller";

/// How long [`install`] waits for the API server to serve the new resources.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the device CRDs could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// The API server refused the CRD (no permission to write CRDs, say).
    #[error("cannot apply the CustomResourceDefinition {crd}: {source}")]
    Apply {
        /// The CRD's name.
        crd: &'static str,
        /// Why.
        source: kube::Error,
    },
    /// The CRD was applied but its resource was not served in time.
    #[error("the CustomResourceDefinition {crd} was not established within {timeout:?}: {last}")]
    NotEstablished {
        /// The CRD's name.
        crd: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// What the last look showed.
        last: String,
    },
}

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

/// Applies both CRDs (server-side, forced: cloudcore owns them) and waits until both resources
/// can be listed.
pub async fn install(client: &Client) -> Result<(), DevicesError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let wanted = [
        (crds::DEVICES_CRD, crds::device_crd(), device_resource()),
        (
            crds::DEVICE_MODELS_CRD,
            crds::device_model_crd(),
            device_model_resource(),
        ),
    ];
    for (name, crd, _) in &wanted {
        crds.patch(name, &params, &Patch::Apply(crd))
            .await
            .map_err(|source| DevicesError::Apply { crd: name, source })?;
    }
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    for (name, _, resource) in &wanted {
        wait_established(client, &crds, name, resource, deadline).await?;
        tracing::info!(crd = name, "device CustomResourceDefinition installed");
    }
    Ok(())
}

async fn wait_established(
    client: &Client,
    crds: &Api<CustomResourceDefinition>,
    name: &'static str,
    resource: &ApiResource,
    deadline: Instant,
) -> Result<(), DevicesError> {
    let objects: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    loop {
        let last = match crds.get_opt(name).await {
            Ok(Some(crd)) if established(&crd) => {
                match objects.list_metadata(&ListParams::default().limit(1)).await {
                    Ok(_) => return Ok(()),
                    Err(e) => format!("established, but listing fails: {e}"),
                }
            }
            Ok(Some(_)) => "not Established yet".to_owned(),
            Ok(None) => "gone".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(DevicesError::NotEstablished {
                crd: name,
                timeout: ESTABLISH_TIMEOUT,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
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
