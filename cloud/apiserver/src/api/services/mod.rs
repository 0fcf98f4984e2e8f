//! Service cluster IPs and node ports, allocated as kube-apiserver's Service storage
//! (`pkg/registry/core/service/storage/alloc.go`) allocates them, and the `kubernetes` Service.
//!
//! **Where the truth is.** The stored Services: which IPs and node ports are taken is rebuilt
//! from them (a bitmap each, [`allocator`]) whenever a Service was written by anything but this
//! module, and kept up to date by this module's own writes otherwise. A Service and its
//! allocation are therefore one SQLite write, and there is nothing to repair after `kill -9`
//! (kube-apiserver needs a repair loop because its allocations and Services are separate
//! etcd writes). Every Service write holds one lock from allocation to commit ([`Pending`]),
//! so two creates never take the same IP or port; a write that fails gives back what it took.
//!
//! **What clients see, as on kube-apiserver 1.33** (MultiCIDRServiceAllocator GA): every IP
//! taken also has an `IPAddress` object (networking.k8s.io/v1, named by the IP, `parentRef` the
//! Service, managed by `ipallocator.k8s.io`), and the range is the `kubernetes` ServiceCIDR.
//! Those objects mirror the Services (written right after them, repaired at start), and an
//! IPAddress a user made reserves its IP, as kube's allocator reads them. Node ports have no
//! objects, as in kube.
//!
//! Start reading at [`Pending`] and the three entry points [`for_create`], [`for_update`] and
//! [`for_delete`], which [`super::objects`] calls around its store writes; [`fields`] fills and
//! checks the Service fields as kube does; [`kubernetes`] keeps the `kubernetes` Service.

pub mod allocator;
mod fields;
pub mod kubernetes;

use std::net::IpAddr;
use tokio::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::{Api, meta};
use crate::storage::{ObjectKey, Store, StoreError, StoredObject};
use allocator::Bitmap;
pub use allocator::{AllocError, PortRange, RangeError, ServiceCidr};

/// The store key of Services.
pub(crate) const SERVICES: &str = "services";
/// The store key of IPAddress objects.
const IP_ADDRESSES: &str = "ipaddresses.networking.k8s.io";
/// Who manages the IPAddress objects of Services, as kube names its allocator.
const MANAGED_BY: &str = "ipallocator.k8s.io";

/// Where Services' cluster IPs and node ports come from (`--service-cluster-ip-range`,
/// `--service-node-port-range`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// The service CIDR.
    pub cluster_ip_range: ServiceCidr,
    /// The node port range.
    pub node_port_range: PortRange,
}

/// The taken IPs and ports, and the version of the Services they were read from.
struct Taken {
    ips: Bitmap,
    ports: Bitmap,
    /// The Services' last write this reflects (`None`: never built).
    at: Option<u64>,
}

/// The allocators of one API server.
pub(crate) struct Allocations {
    network: ServiceNetwork,
    taken: Mutex<Taken>,
}

impl Allocations {
    pub(crate) fn new(network: ServiceNetwork) -> Self {
        Self {
            network,
            taken: Mutex::new(Taken {
                ips: Bitmap::new(0, 0),
                ports: Bitmap::new(0, 0),
                at: None,
            }),
        }
    }

    pub(crate) fn network(&self) -> ServiceNetwork {
        self.network
    }

    /// The lock, with the bitmaps current: rebuilt from the stored Services if any was written
    /// since they were last brought up to date.
    async fn lock(&self, store: &Store) -> MutexGuard<'_, Taken> {
        let mut taken = self.taken.lock().await;
        let now = store.last_write(SERVICES);
        if taken.at != Some(now) {
            let started = std::time::Instant::now();
            *taken = self.rebuild(store, now);
            tracing::debug!(
                ips = taken.ips.used(),
                ports = taken.ports.used(),
                elapsed = ?started.elapsed(),
                "service allocations read from the stored Services"
            );
        }
        taken
    }

    fn rebuild(&self, store: &Store, at: u64) -> Taken {
        let cidr = self.network.cluster_ip_range;
        let range = self.network.node_port_range;
        let mut taken = Taken {
            ips: Bitmap::new(cidr.size(), cidr.range_offset()),
            ports: Bitmap::new(range.size(), range.range_offset()),
            at: Some(at),
        };
        let (services, _, _) = store.list(SERVICES, None, None, None, |_| true);
        for svc in services {
            let svc = svc.value();
            for ip in fields::cluster_ips(&svc) {
                if let Ok(i) = cidr.index(ip) {
                    taken.ips.set(i);
                }
            }
            for port in fields::node_ports(&svc) {
                if let Ok(i) = range.index(port) {
                    taken.ports.set(i);
                }
            }
        }
        taken
    }
}

/// A Service write under way: the allocators' lock, held until the write is committed or
/// dropped, what it took (given back if it is dropped) and what it frees (freed only once it
/// is committed).
pub(crate) struct Pending<'a> {
    api: &'a Api,
    taken: MutexGuard<'a, Taken>,
    new_ips: Vec<u64>,
    new_ports: Vec<u64>,
    freed_ips: Vec<u64>,
    freed_ports: Vec<u64>,
    committed: bool,
}

impl<'a> Pending<'a> {
    async fn new(api: &'a Api) -> Self {
        Self {
            api,
            taken: api.services.lock(&api.store).await,
            new_ips: Vec::new(),
            new_ports: Vec::new(),
            freed_ips: Vec::new(),
            freed_ports: Vec::new(),
            committed: false,
        }
    }

    fn cidr(&self) -> ServiceCidr {
        self.api.services.network.cluster_ip_range
    }

    fn range(&self) -> PortRange {
        self.api.services.network.node_port_range
    }

    /// An IPAddress object for `ip` that is not `owner`'s: one a user made, or a leftover.
    fn ip_object_blocks(&self, ip: IpAddr, owner: (&str, &str)) -> bool {
        self.api
            .store
            .get(&ObjectKey::new(IP_ADDRESSES, "", &ip.to_string()))
            .is_ok_and(|o| !is_parent(&o.value(), owner))
    }

    /// Takes `ip` (asked for by the client) for `owner`.
    fn take_ip(
        &mut self,
        ip: IpAddr,
        owner: (&str, &str),
        dry_run: bool,
    ) -> Result<(), AllocError> {
        let cidr = self.cidr();
        let i = cidr.index(ip)?;
        if dry_run {
            // kube's dry-run allocator checks the range only.
            return Ok(());
        }
        if self.taken.ips.has(i) || self.ip_object_blocks(ip, owner) {
            return Err(AllocError::IpAllocated);
        }
        self.taken.ips.set(i);
        self.new_ips.push(i);
        Ok(())
    }

    /// Takes a free IP for `owner`.
    fn next_ip(&mut self, owner: (&str, &str), dry_run: bool) -> Result<IpAddr, AllocError> {
        let cidr = self.cidr();
        if dry_run {
            // As kube's dry run: no search, the network address.
            return Ok(IpAddr::V4(cidr.network()));
        }
        let i = self.taken.ips.next_free(random(), |i| {
            self.ip_object_blocks(IpAddr::V4(cidr.address(i)), owner)
        })?;
        self.taken.ips.set(i);
        self.new_ips.push(i);
        Ok(IpAddr::V4(cidr.address(i)))
    }

    fn free_ip(&mut self, ip: IpAddr) {
        if let Ok(i) = self.cidr().index(ip) {
            self.freed_ips.push(i);
        }
    }

    /// Takes node port `port`, asked for by the client.
    fn take_port(&mut self, port: i64, dry_run: bool) -> Result<(), AllocError> {
        let i = self.range().index(port)?;
        if self.taken.ports.has(i) {
            return Err(AllocError::PortAllocated);
        }
        if !dry_run {
            self.taken.ports.set(i);
            self.new_ports.push(i);
        }
        Ok(())
    }

    /// Takes a free node port.
    fn next_port(&mut self, dry_run: bool) -> Result<i64, AllocError> {
        let i = self.taken.ports.next_free(random(), |_| false)?;
        if !dry_run {
            self.taken.ports.set(i);
            self.new_ports.push(i);
        }
        Ok(self.range().port(i))
    }

    fn free_port(&mut self, port: i64) {
        if let Ok(i) = self.range().index(port) {
            self.freed_ports.push(i);
        }
    }

    /// The write is committed: frees what it released, records the Services' version the
    /// bitmaps now match, and brings the IPAddress objects in line.
    pub(crate) async fn commit(mut self, written: &StoredObject, owner: (&str, &str)) {
        self.committed = true;
        for i in std::mem::take(&mut self.freed_ips) {
            // Not an IP this same write took again.
            if !self.new_ips.contains(&i) {
                self.taken.ips.clear(i);
                let ip = self.cidr().address(i).to_string();
                delete_ip_object(self.api, &ip, owner).await;
            }
        }
        for i in std::mem::take(&mut self.freed_ports) {
            if !self.new_ports.contains(&i) {
                self.taken.ports.clear(i);
            }
        }
        self.taken.at = Some(written.rv);
        for i in std::mem::take(&mut self.new_ips) {
            let ip = self.cidr().address(i).to_string();
            create_ip_object(self.api, &ip, owner).await;
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for i in &self.new_ips {
            self.taken.ips.clear(*i);
        }
        for i in &self.new_ports {
            self.taken.ports.clear(*i);
        }
    }
}

/// A random number, from the OS's randomness uuid draws on.
fn random() -> u64 {
    let bits = uuid::Uuid::new_v4().as_u128();
    (bits as u64) ^ ((bits >> 64) as u64)
}

/// Whether `ip_object`'s parent is the Service `owner` (namespace, name).
fn is_parent(ip_object: &Value, owner: (&str, &str)) -> bool {
    let parent = ip_object.pointer("/spec/parentRef");
    let s = |k: &str| parent.and_then(|p| p.get(k)).and_then(Value::as_str);
    s("resource") == Some("services")
        && s("group").unwrap_or("").is_empty()
        && s("namespace") == Some(owner.0)
        && s("name") == Some(owner.1)
}

fn ip_object(ip: &str, owner: (&str, &str)) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {
            "name": ip,
            "uid": meta::uid(),
            "creationTimestamp": meta::now(),
            "generation": 1,
            "labels": {
                "ipaddress.kubernetes.io/ip-family": "IPv4",
                "ipaddress.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "spec": {"parentRef": {"group": "", "resource": "services",
                               "namespace": owner.0, "name": owner.1}},
    })
}

async fn create_ip_object(api: &Api, ip: &str, owner: (&str, &str)) {
    let k = ObjectKey::new(IP_ADDRESSES, "", ip);
    match api.store.create(&k, ip_object(ip, owner)).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
        Err(e) => tracing::warn!(%ip, "writing the IPAddress of a Service: {e}"),
    }
}

async fn delete_ip_object(api: &Api, ip: &str, owner: (&str, &str)) {
    let k = ObjectKey::new(IP_ADDRESSES, "", ip);
    if let Ok(o) = api.store.get(&k)
        && is_parent(&o.value(), owner)
        && let Err(e) = api.store.delete(&k, Some(o.rv)).await
    {
        tracing::warn!(%ip, "deleting the IPAddress of a deleted Service: {e}");
    }
}

/// Whether `info` is core Services.
pub(crate) fn is_services(info: &crate::registry::ResourceInfo) -> bool {
    info.crd.is_none() && info.group.is_empty() && info.plural == SERVICES
}

/// Before a new Service is stored: fills its IP family fields, cluster IPs, node ports and
/// `status.loadBalancer`, as kube-apiserver's `beginCreate`. The write must follow while the
/// returned [`Pending`] is held.
pub(crate) async fn for_create<'a>(
    api: &'a Api,
    namespace: &str,
    service: &mut Value,
    dry_run: bool,
) -> Result<Pending<'a>, ApiError> {
    let mut pending = Pending::new(api).await;
    fields::create(&mut pending, namespace, service, dry_run)?;
    Ok(pending)
}

/// Before a Service is replaced: keeps what the client left out that was allocated, and
/// allocates or frees for a change of type or ports, as kube-apiserver's `beginUpdate`.
pub(crate) async fn for_update<'a>(
    api: &'a Api,
    old: &Value,
    service: &mut Value,
    dry_run: bool,
) -> Result<Pending<'a>, ApiError> {
    let mut pending = Pending::new(api).await;
    fields::update(&mut pending, old, service, dry_run)?;
    Ok(pending)
}

/// Before a Service is removed: what it holds, freed once the removal is committed.
pub(crate) async fn for_delete<'a>(api: &'a Api, old: &Value) -> Pending<'a> {
    let mut pending = Pending::new(api).await;
    for ip in fields::cluster_ips(old) {
        pending.free_ip(ip);
    }
    for port in fields::node_ports(old) {
        pending.free_port(port);
    }
    pending
}

/// The owner pair of a Service value.
pub(crate) fn owner(service: &Value) -> (&str, &str) {
    (
        meta::meta_str(service, "namespace").unwrap_or(""),
        meta::meta_str(service, "name").unwrap_or(""),
    )
}

/// Brings the IPAddress objects in line with the stored Services, as kube's `repairip` loop
/// does: one for every IP a Service holds in the range, none managed by the allocator for an
/// IP no Service holds. Run at start; after that each Service write keeps them.
pub(crate) async fn repair_ip_objects(api: &Api) {
    let mut held = std::collections::HashMap::new();
    let (services, _, _) = api.store.list(SERVICES, None, None, None, |_| true);
    for svc in services {
        let svc = svc.value();
        let (ns, name) = owner(&svc);
        // Out of the range too (the range changed since it was allocated): kube keeps those.
        for ip in fields::cluster_ips(&svc) {
            held.insert(ip.to_string(), (ns.to_owned(), name.to_owned()));
        }
    }
    let (objects, _, _) = api.store.list(IP_ADDRESSES, None, None, None, |_| true);
    for o in objects {
        let v = o.value();
        let name = meta::meta_str(&v, "name").unwrap_or("").to_owned();
        let managed = v
            .pointer("/metadata/labels/ipaddress.kubernetes.io~1managed-by")
            .and_then(Value::as_str)
            == Some(MANAGED_BY);
        match held.get(&name) {
            Some((ns, svc)) if is_parent(&v, (ns, svc)) => {
                held.remove(&name);
            }
            _ if managed => {
                let k = ObjectKey::new(IP_ADDRESSES, "", &name);
                if let Err(e) = api.store.delete(&k, Some(o.rv)).await {
                    tracing::warn!(ip = %name, "removing an IPAddress no Service holds: {e}");
                }
            }
            _ => {}
        }
    }
    for (ip, (ns, name)) in held {
        create_ip_object(api, &ip, (&ns, &name)).await;
    }
}

/// A 422 for Service `name` with `causes`.
fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid("", "Service", name, causes)
}
