//! The `kubernetes` Service in `default`, its Endpoints and EndpointSlice, and the `kubernetes`
//! ServiceCIDR: what kube-apiserver's `kubernetesservice` and `defaultservicecidr` controllers
//! keep, so that in-cluster clients find the API server at the first IP of the service range,
//! port 443.
//!
//! [`reconcile`] makes what is missing and puts back what drifted; the server runs it at start
//! and every [`INTERVAL`], as kube-apiserver's controller does.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::{SERVICES, for_create, for_update, owner};
use crate::api::error::ApiError;
use crate::api::{Api, defaults, meta, objects};
use crate::storage::{ObjectKey, StoreError};

/// How often the objects are checked, as kube-apiserver's `EndpointInterval` (10 s).
pub const INTERVAL: Duration = Duration::from_secs(10);

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// Brings the `kubernetes` ServiceCIDR, Service, Endpoints and EndpointSlice in line with this
/// server: reached at `address`, serving on `port`.
pub(crate) async fn reconcile(api: &Api, address: IpAddr, port: u16) -> Result<(), ApiError> {
    service_cidr(api).await?;
    service(api, port).await?;
    let port_entry = json!({"name": "https", "port": port, "protocol": "TCP"});
    let family = if address.is_ipv6() { "IPv6" } else { "IPv4" };
    upsert(
        api,
        &ObjectKey::new("endpoints", NAMESPACE, NAME),
        json!({"apiVersion": "v1", "kind": "Endpoints",
               "metadata": {"name": NAME, "namespace": NAMESPACE,
                            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
               "subsets": [{"addresses": [{"ip": address.to_string()}],
                            "ports": [port_entry.clone()]}]}),
        &["subsets"],
    )
    .await?;
    upsert(
        api,
        &ObjectKey::new("endpointslices.discovery.k8s.io", NAMESPACE, NAME),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": NAME, "namespace": NAMESPACE,
                            "labels": {"kubernetes.io/service-name": NAME}},
               "addressType": family,
               "endpoints": [{"addresses": [address.to_string()],
                              "conditions": {"ready": true}}],
               "ports": [port_entry]}),
        &["addressType", "endpoints", "ports"],
    )
    .await?;
    Ok(())
}

/// The ServiceCIDR named `kubernetes`, with the range, Ready.
async fn service_cidr(api: &Api) -> Result<(), ApiError> {
    let cidr = api.services.network().cluster_ip_range.to_string();
    let k = ObjectKey::new("servicecidrs.networking.k8s.io", "", NAME);
    if let Ok(existing) = api.store.get(&k) {
        let cidrs = existing.value().pointer("/spec/cidrs").cloned();
        if cidrs != Some(json!([cidr])) {
            // kube-apiserver leaves a ServiceCIDR of another range alone too, and says so.
            tracing::warn!(
                stored = ?cidrs,
                flag = %cidr,
                "the kubernetes ServiceCIDR is not the --service-cluster-ip-range"
            );
        }
        return Ok(());
    }
    let mut object = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": NAME},
        "spec": {"cidrs": [cidr]},
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": meta::now(), "reason": "",
                                   "message": "Kubernetes default Service CIDR is ready"}]},
    });
    objects::stamp_new(&mut object, NAME);
    match api.store.create(&k, object).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, "networking.k8s.io", "servicecidrs")),
    }
}

/// The Service: port 443 to the server's port, at the first IP of the range.
async fn service(api: &Api, port: u16) -> Result<(), ApiError> {
    let k = ObjectKey::new(SERVICES, NAMESPACE, NAME);
    let ports = json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]);
    if let Ok(existing) = api.store.get(&k) {
        let old = existing.value();
        if old.pointer("/spec/ports") == Some(&ports) {
            return Ok(());
        }
        let mut new = old.clone();
        new["spec"]["ports"] = ports;
        let pending = for_update(api, &old, &mut new, false).await?;
        let written = api
            .store
            .update(&k, new, Some(existing.rv))
            .await
            .map_err(|e| ApiError::from_store(e, "", SERVICES))?;
        pending.commit(&written, owner(&old)).await;
        return Ok(());
    }
    let first = api.services.network().cluster_ip_range.first().to_string();
    let mut object = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "sessionAffinity": "None",
                 "clusterIP": first, "clusterIPs": [first], "ports": ports},
    });
    objects::stamp_new(&mut object, NAME);
    defaults::apply("", "Service", &mut object, true);
    let pending = for_create(api, NAMESPACE, &mut object, false).await?;
    match api.store.create(&k, object).await {
        Ok(written) => {
            pending.commit(&written, (NAMESPACE, NAME)).await;
            Ok(())
        }
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, "", SERVICES)),
    }
}

/// Creates `desired` at `k`, or sets `fields` of the stored object to `desired`'s where they
/// differ (and the labels it names).
async fn upsert(
    api: &Api,
    k: &ObjectKey,
    mut desired: Value,
    fields: &[&str],
) -> Result<(), ApiError> {
    let err = |e| ApiError::from_store(e, "", &k.resource);
    match api.store.get(k) {
        Ok(existing) => {
            let mut value = existing.value();
            let mut changed = false;
            for f in fields {
                if value.get(*f) != desired.get(*f) {
                    value[*f] = desired[*f].clone();
                    changed = true;
                }
            }
            if let Some(labels) = desired
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                && let Some(m) = meta::metadata_mut(&mut value)
            {
                let have = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(have) = have.as_object_mut() {
                    for (key, v) in labels {
                        if have.get(key) != Some(v) {
                            have.insert(key.clone(), v.clone());
                            changed = true;
                        }
                    }
                }
            }
            if changed {
                api.store
                    .update(k, value, Some(existing.rv))
                    .await
                    .map_err(err)?;
            }
            Ok(())
        }
        Err(StoreError::NotFound(_)) => {
            objects::stamp_new(&mut desired, &k.name);
            match api.store.create(k, desired).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(err(e)),
            }
        }
        Err(e) => Err(err(e)),
    }
}

/// The address kube-apiserver advertises when not told one (`ResolveBindAddress`): the bind
/// address unless it is unspecified or loopback, else the host's address on its default route.
pub fn advertise_address(listen: IpAddr) -> IpAddr {
    if !listen.is_unspecified() && !listen.is_loopback() {
        return listen;
    }
    host_address().unwrap_or(listen)
}

/// The source address of the default route (a UDP connect sends nothing; it picks the route).
fn host_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:443").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}
