//! The Service fields allocation fills and checks, on the JSON as stored: kube-apiserver's
//! `initIPFamilyFields`, `allocClusterIPs`, `initNodePorts`, `allocHealthCheckNodePort`, their
//! update twins, `patchAllocatedValues`, `normalizeClusterIPs` and `dropTypeDependentFields`,
//! for a single-stack IPv4 cluster.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::{Pending, invalid, owner};
use crate::api::error::{ApiError, Cause};
use crate::api::meta;

type Spec = Map<String, Value>;

const NONE: &str = "None";

/// The IPs a Service holds (`spec.clusterIPs`, else `spec.clusterIP`), headless and malformed
/// ones left out.
pub(super) fn cluster_ips(service: &Value) -> Vec<IpAddr> {
    let spec = service.get("spec");
    let listed: Vec<&str> = spec
        .and_then(|s| s.get("clusterIPs"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let texts = if listed.is_empty() {
        spec.and_then(|s| s.get("clusterIP"))
            .and_then(Value::as_str)
            .into_iter()
            .collect()
    } else {
        listed
    };
    texts.into_iter().filter_map(|t| t.parse().ok()).collect()
}

/// The node ports a Service holds: its ports' and its health check's.
pub(super) fn node_ports(service: &Value) -> Vec<i64> {
    let mut out: Vec<i64> = port_list(service.get("spec"))
        .iter()
        .map(node_port)
        .filter(|p| *p != 0)
        .collect();
    if let Some(hc) = service
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_i64)
        .filter(|p| *p != 0)
    {
        out.push(hc);
    }
    out
}

fn port_list(spec: Option<&Value>) -> Vec<Value> {
    spec.and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn node_port(port: &Value) -> i64 {
    port.get("nodePort").and_then(Value::as_i64).unwrap_or(0)
}

fn str_of<'a>(spec: &'a Spec, key: &str) -> &'a str {
    spec.get(key).and_then(Value::as_str).unwrap_or("")
}

fn service_type(spec: &Spec) -> &str {
    match str_of(spec, "type") {
        "" => "ClusterIP",
        t => t,
    }
}

fn needs_cluster_ip(spec: &Spec) -> bool {
    service_type(spec) != "ExternalName"
}

fn needs_node_port(spec: &Spec) -> bool {
    matches!(service_type(spec), "NodePort" | "LoadBalancer")
}

/// kube's `NeedsHealthCheck`: a LoadBalancer keeping traffic on the node it arrived at.
fn needs_health_check(spec: &Spec) -> bool {
    service_type(spec) == "LoadBalancer" && str_of(spec, "externalTrafficPolicy") == "Local"
}

/// NodePort Services, and LoadBalancers unless `allocateLoadBalancerNodePorts: false`.
fn should_allocate_node_ports(spec: &Spec) -> bool {
    match service_type(spec) {
        "NodePort" => true,
        "LoadBalancer" => spec.get("allocateLoadBalancerNodePorts") != Some(&json!(false)),
        _ => false,
    }
}

fn strings(spec: &Spec, key: &str) -> Vec<String> {
    spec.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn has_selector(spec: &Spec) -> bool {
    spec.get("selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty())
}

fn spec_of(service: &mut Value) -> Option<&mut Spec> {
    let obj = service.as_object_mut()?;
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    spec.as_object_mut()
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("Internal error occurred: {what}: {e}"))
}

/// `beginCreate`'s allocation.
pub(super) fn create(
    pending: &mut Pending<'_>,
    namespace: &str,
    service: &mut Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let name = meta::meta_str(service, "name").unwrap_or("").to_owned();
    let owner = (namespace.to_owned(), name.clone());
    let Some(spec) = spec_of(service) else {
        return Ok(());
    };
    // normalizeClusterIPs: an old client sets only the singular field.
    let ip = str_of(spec, "clusterIP").to_owned();
    if !ip.is_empty() && strings(spec, "clusterIPs").is_empty() {
        spec.insert("clusterIPs".into(), json!([ip]));
    }
    init_ip_families(spec, None, &name)?;
    allocate_cluster_ips(pending, spec, (&owner.0, &owner.1), &name, dry_run)?;
    if needs_node_port(spec) {
        init_node_ports(pending, spec, &name, dry_run)?;
    }
    if needs_health_check(spec) {
        allocate_health_check(pending, spec, dry_run)?;
    }
    check(spec, &name)?;
    let status = service
        .as_object_mut()
        .map(|o| o.entry("status").or_insert_with(|| json!({})));
    if let Some(Value::Object(status)) = status {
        status.entry("loadBalancer").or_insert_with(|| json!({}));
    }
    Ok(())
}

/// `beginUpdate`'s allocation (with `PrepareForUpdate`'s `dropTypeDependentFields`).
pub(super) fn update(
    pending: &mut Pending<'_>,
    old: &Value,
    service: &mut Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let (ns, name) = owner(old);
    let (ns, name) = (ns.to_owned(), name.to_owned());
    let old_spec = old
        .get("spec")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some(spec) = spec_of(service) else {
        return Ok(());
    };
    drop_type_dependent_fields(&old_spec, spec);
    patch_allocated_values(&old_spec, spec);
    normalize_cluster_ips(&old_spec, spec);
    init_ip_families(spec, Some(&old_spec), &name)?;

    // Cluster IPs: kube's updateClusterIPs cases.
    let old_ips = strings(&old_spec, "clusterIPs");
    let old_headless = old_ips.first().is_some_and(|ip| ip == NONE);
    if !needs_cluster_ip(&old_spec) && needs_cluster_ip(spec) {
        allocate_cluster_ips(pending, spec, (&ns, &name), &name, dry_run)?;
    } else if old_headless {
    } else if needs_cluster_ip(&old_spec) && !needs_cluster_ip(spec) {
        for ip in old_ips.iter().filter_map(|ip| ip.parse().ok()) {
            pending.free_ip(ip);
        }
    } else if needs_cluster_ip(spec) {
        let new_ips = strings(spec, "clusterIPs");
        immutable_cluster_ips(&old_ips, &new_ips, &name)?;
        // A Service stored before IPs were allocated, now given one.
        if old_ips.is_empty() && !new_ips.is_empty() && new_ips[0] != NONE {
            allocate_cluster_ips(pending, spec, (&ns, &name), &name, dry_run)?;
        }
    }

    // Node ports: txnUpdateNodePorts.
    if needs_node_port(&old_spec) && !needs_node_port(spec) {
        for p in port_list(Some(&Value::Object(old_spec.clone())))
            .iter()
            .map(node_port)
            .filter(|p| *p != 0)
        {
            pending.free_port(p);
        }
    }
    if needs_node_port(spec) {
        update_node_ports(pending, &old_spec, spec, &name, dry_run)?;
    }
    update_health_check(pending, &old_spec, spec, &name, dry_run)?;
    check(spec, &name)
}

/// `initIPFamilyFields` on a cluster of one family, IPv4.
fn init_ip_families(spec: &mut Spec, old: Option<&Spec>, name: &str) -> Result<(), ApiError> {
    if !needs_cluster_ip(spec) {
        return Ok(());
    }
    let headless_selectorless = str_of(spec, "clusterIP") == NONE && !has_selector(spec);
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        let policy = match old
            .and_then(|o| o.get("ipFamilyPolicy"))
            .filter(|p| !p.is_null())
        {
            Some(p) => p.clone(),
            None if headless_selectorless => json!("RequireDualStack"),
            None => json!("SingleStack"),
        };
        spec.insert("ipFamilyPolicy".into(), policy);
    }
    let policy = str_of(spec, "ipFamilyPolicy").to_owned();
    let ips = strings(spec, "clusterIPs");
    let mut families = strings(spec, "ipFamilies");
    let mut causes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if (i == 0 && ip == NONE) || ip.parse::<IpAddr>().is_ok() {
            continue;
        }
        causes.push(Cause::invalid(
            format!("spec.clusterIPs[{i}]"),
            &json!(ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    let single = str_of(spec, "clusterIP");
    if !single.is_empty() && ips.first().is_some_and(|first| first != single) {
        causes.push(Cause::invalid(
            "spec.clusterIPs",
            &json!(ips),
            "first value must match `clusterIP`",
        ));
    }
    if policy == "SingleStack" {
        if ips.len() == 2 {
            causes.push(Cause::invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            causes.push(Cause::invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid(name, causes));
    }
    // Families from the IPs given.
    for (i, ip) in ips.iter().enumerate() {
        let Ok(ip) = ip.parse::<IpAddr>() else { break };
        if i >= families.len() {
            if ip.is_ipv6() {
                causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ips),
                    "IPv6 is not configured on this cluster",
                ));
            } else {
                families.push("IPv4".into());
            }
        }
    }
    if !causes.is_empty() {
        return Err(invalid(name, causes));
    }
    if headless_selectorless {
        if families.is_empty() {
            families.push("IPv4".into());
        }
        if families.len() < 2 && policy != "SingleStack" {
            let other = if families[0] == "IPv4" {
                "IPv6"
            } else {
                "IPv4"
            };
            families.push(other.into());
        }
        spec.insert("ipFamilies".into(), json!(families));
        return Ok(());
    }
    if policy == "RequireDualStack" {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            &json!(policy),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, family) in families.iter().enumerate() {
        if family != "IPv4" {
            causes.push(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                &json!(family),
                "not configured on this cluster",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(invalid(name, causes));
    }
    if families.is_empty() {
        families.push("IPv4".into());
    }
    spec.insert("ipFamilies".into(), json!(families));
    Ok(())
}

/// `allocClusterIPs`: the IP asked for, or a free one; none for ExternalName or headless.
fn allocate_cluster_ips(
    pending: &mut Pending<'_>,
    spec: &mut Spec,
    owner: (&str, &str),
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    if !needs_cluster_ip(spec) {
        return Ok(());
    }
    let ips = strings(spec, "clusterIPs");
    if ips.first().is_some_and(|ip| ip == NONE) {
        spec.insert("clusterIP".into(), json!(NONE));
        return Ok(());
    }
    let ip = match ips.first().filter(|ip| !ip.is_empty()) {
        Some(text) => {
            let ip: IpAddr = text.parse().map_err(|_| {
                invalid(
                    name,
                    vec![Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(text),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )],
                )
            })?;
            pending.take_ip(ip, owner, dry_run).map_err(|e| {
                invalid(
                    name,
                    vec![Cause::invalid(
                        "spec.clusterIPs",
                        &json!(ips),
                        &format!("failed to allocate IP {ip}: {e}"),
                    )],
                )
            })?;
            ip
        }
        None => pending
            .next_ip(owner, dry_run)
            .map_err(|e| internal("failed to allocate a serviceIP", e))?,
    };
    spec.insert("clusterIP".into(), json!(ip.to_string()));
    spec.insert("clusterIPs".into(), json!([ip.to_string()]));
    Ok(())
}

fn port_invalid(name: &str, i: usize, port: i64, e: impl std::fmt::Display) -> ApiError {
    invalid(
        name,
        vec![Cause::invalid(
            format!("spec.ports[{i}].nodePort"),
            &json!(port),
            &e.to_string(),
        )],
    )
}

fn set_node_port(spec: &mut Spec, i: usize, port: i64) {
    if let Some(p) = spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .and_then(|a| a.get_mut(i))
        .and_then(Value::as_object_mut)
    {
        p.insert("nodePort".into(), json!(port));
    }
}

/// `initNodePorts`: ports of the same number (TCP and UDP) share one node port.
fn init_node_ports(
    pending: &mut Pending<'_>,
    spec: &mut Spec,
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let should = should_allocate_node_ports(spec);
    let ports = port_list(Some(&Value::Object(spec.clone())));
    let mut by_port: HashMap<i64, i64> = HashMap::new();
    for (i, p) in ports.iter().enumerate() {
        let number = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let np = node_port(p);
        if np == 0 && !should {
            continue;
        }
        match by_port.get(&number).copied() {
            None => {
                let requested = ports
                    .iter()
                    .filter(|q| q.get("port").and_then(Value::as_i64) == Some(number))
                    .map(node_port)
                    .find(|n| *n != 0)
                    .unwrap_or(0);
                let got = if requested != 0 {
                    pending
                        .take_port(requested, dry_run)
                        .map_err(|e| port_invalid(name, i, requested, e))?;
                    requested
                } else {
                    pending
                        .next_port(dry_run)
                        .map_err(|e| internal("failed to allocate a nodePort", e))?
                };
                set_node_port(spec, i, got);
                by_port.insert(number, got);
            }
            Some(allocated) if np != allocated => {
                if np == 0 {
                    set_node_port(spec, i, allocated);
                } else {
                    pending
                        .take_port(np, dry_run)
                        .map_err(|e| port_invalid(name, i, np, e))?;
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `updateNodePorts`: node ports the Service had stay its own; new ones are taken; those it
/// no longer lists are freed.
fn update_node_ports(
    pending: &mut Pending<'_>,
    old: &Spec,
    spec: &mut Spec,
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let old_numbers: BTreeSet<i64> = port_list(Some(&Value::Object(old.clone())))
        .iter()
        .map(node_port)
        .filter(|p| *p != 0)
        .collect();
    let should = should_allocate_node_ports(spec);
    let ports = port_list(Some(&Value::Object(spec.clone())));
    let mut taken_here = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let np = node_port(p);
        if np == 0 && !should {
            continue;
        }
        if np != 0 {
            if !old_numbers.contains(&np) && taken_here.insert(np) {
                pending
                    .take_port(np, dry_run)
                    .map_err(|e| port_invalid(name, i, np, e))?;
            }
        } else {
            let got = pending
                .next_port(dry_run)
                .map_err(|e| internal("failed to allocate a nodePort", e))?;
            set_node_port(spec, i, got);
        }
    }
    let new_numbers: BTreeSet<i64> = port_list(Some(&Value::Object(spec.clone())))
        .iter()
        .map(node_port)
        .collect();
    for old in old_numbers.difference(&new_numbers) {
        pending.free_port(*old);
    }
    Ok(())
}

/// `allocHealthCheckNodePort`.
fn allocate_health_check(
    pending: &mut Pending<'_>,
    spec: &mut Spec,
    dry_run: bool,
) -> Result<(), ApiError> {
    let requested = spec
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if requested != 0 {
        pending.take_port(requested, dry_run).map_err(|e| {
            internal(
                &format!("failed to allocate requested HealthCheck NodePort {requested}"),
                e,
            )
        })?;
    } else {
        let port = pending
            .next_port(dry_run)
            .map_err(|e| internal("failed to allocate a HealthCheck NodePort 0", e))?;
        spec.insert("healthCheckNodePort".into(), json!(port));
    }
    Ok(())
}

/// `updateHealthCheckNodePort`.
fn update_health_check(
    pending: &mut Pending<'_>,
    old: &Spec,
    spec: &mut Spec,
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let old_port = old
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    match (needs_health_check(old), needs_health_check(spec)) {
        (false, true) => allocate_health_check(pending, spec, dry_run),
        (true, false) => {
            if old_port != 0 {
                pending.free_port(old_port);
            }
            Ok(())
        }
        (true, true) => {
            let new_port = spec
                .get("healthCheckNodePort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if new_port != old_port {
                return Err(invalid(
                    name,
                    vec![Cause::invalid(
                        "spec.healthCheckNodePort",
                        &json!(new_port),
                        "cannot change healthCheckNodePort on loadBalancer service with externalTraffic=Local during update",
                    )],
                ));
            }
            Ok(())
        }
        (false, false) => Ok(()),
    }
}

/// `validateUpgradeDowngradeClusterIPs` on a cluster of one family.
fn immutable_cluster_ips(old: &[String], new: &[String], name: &str) -> Result<(), ApiError> {
    let headless = |ips: &[String]| ips.first().is_some_and(|ip| ip == NONE);
    if headless(old) && headless(new) {
        return Ok(());
    }
    let mut causes = Vec::new();
    if old.len() == new.len() {
        for (i, ip) in old.iter().enumerate() {
            if *ip != new[i] {
                causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(new),
                    "may not change once set",
                ));
            }
        }
    } else if old.len() > new.len() {
        if new.is_empty() {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(new),
                "primary clusterIP can not be unset",
            ));
        } else if new[0] != old[0] {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(new),
                "may not change once set",
            ));
        }
    } else if !old.is_empty() && new[0] != old[0] {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &json!(new),
            "may not change once set",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(name, causes))
    }
}

/// `patchAllocatedValues`: what the server allocated and the client left out is kept, so that
/// the same YAML applies again.
fn patch_allocated_values(old: &Spec, spec: &mut Spec) {
    if needs_cluster_ip(old) && needs_cluster_ip(spec) {
        if str_of(spec, "clusterIP").is_empty()
            && let Some(ip) = old.get("clusterIP")
        {
            spec.insert("clusterIP".into(), ip.clone());
        }
        if strings(spec, "clusterIPs").is_empty()
            && let Some(ips) = old.get("clusterIPs").filter(|v| !v.is_null())
        {
            spec.insert("clusterIPs".into(), ips.clone());
        }
    }
    if needs_node_port(old) && needs_node_port(spec) {
        let old_ports = port_list(Some(&Value::Object(old.clone())));
        let new_ports = port_list(Some(&Value::Object(spec.clone())));
        let used_old: BTreeSet<i64> = old_ports.iter().map(node_port).collect();
        let used_new: BTreeSet<i64> = new_ports.iter().map(node_port).collect();
        let used: BTreeSet<i64> = used_old.intersection(&used_new).copied().collect();
        let by_name: HashMap<String, i64> = old_ports
            .iter()
            .map(|p| {
                (
                    p.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    node_port(p),
                )
            })
            .collect();
        for (i, p) in new_ports.iter().enumerate() {
            if node_port(p) != 0 {
                continue;
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(old_port) = by_name.get(name).copied()
                && old_port != 0
                && !used.contains(&old_port)
            {
                set_node_port(spec, i, old_port);
            }
        }
    }
    if needs_health_check(old)
        && needs_health_check(spec)
        && spec
            .get("healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
        && let Some(hc) = old.get("healthCheckNodePort")
    {
        spec.insert("healthCheckNodePort".into(), hc.clone());
    }
}

/// `normalizeClusterIPs` on update.
fn normalize_cluster_ips(old: &Spec, spec: &mut Spec) {
    let old_ips = strings(old, "clusterIPs");
    let new_ips = strings(spec, "clusterIPs");
    let old_ip = str_of(old, "clusterIP").to_owned();
    let new_ip = str_of(spec, "clusterIP").to_owned();
    if !old_ips.is_empty() && new_ips.is_empty() && old_ip == new_ip {
        spec.insert("clusterIPs".into(), json!(old_ips));
    }
    let same = strings(spec, "clusterIPs") == old_ips;
    if old_ip != new_ip && same {
        if !old_ip.is_empty() && new_ip.is_empty() {
            spec.remove("clusterIPs");
        } else {
            spec.insert("clusterIPs".into(), json!([new_ip]));
        }
    }
}

/// `dropTypeDependentFields`: fields a change of type makes meaningless are dropped when the
/// client sent them back unchanged.
fn drop_type_dependent_fields(old: &Spec, spec: &mut Spec) {
    if needs_cluster_ip(old) && !needs_cluster_ip(spec) {
        if strings(spec, "clusterIPs") == strings(old, "clusterIPs")
            && str_of(spec, "clusterIP") == str_of(old, "clusterIP")
        {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        for key in ["ipFamilies", "ipFamilyPolicy"] {
            if spec.get(key) == old.get(key) {
                spec.remove(key);
            }
        }
    }
    if needs_node_port(old) && !needs_node_port(spec) {
        let old_ports: Vec<i64> = port_list(Some(&Value::Object(old.clone())))
            .iter()
            .map(node_port)
            .collect();
        let new_ports: Vec<i64> = port_list(Some(&Value::Object(spec.clone())))
            .iter()
            .map(node_port)
            .collect();
        if old_ports == new_ports
            && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut)
        {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
    }
    if needs_health_check(old)
        && !needs_health_check(spec)
        && spec.get("healthCheckNodePort") == old.get("healthCheckNodePort")
    {
        spec.remove("healthCheckNodePort");
    }
}

/// The checks of `ValidateService` on the fields allocation owns.
fn check(spec: &Spec, name: &str) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let kind = service_type(spec);
    if kind == "ClusterIP" || kind == "ExternalName" {
        for (i, p) in port_list(Some(&Value::Object(spec.clone())))
            .iter()
            .enumerate()
        {
            if node_port(p) != 0 {
                causes.push(Cause::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    &format!("may not be used when `type` is '{kind}'"),
                ));
            }
        }
    }
    if kind == "ExternalName" && !str_of(spec, "clusterIP").is_empty() {
        causes.push(Cause::forbidden(
            "spec.clusterIPs",
            "may not be set for ExternalName services",
        ));
    }
    let hc = spec
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if hc != 0 && !needs_health_check(spec) {
        causes.push(Cause::invalid(
            "spec.healthCheckNodePort",
            &json!(hc),
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> Spec {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn families_are_filled_as_on_a_single_stack_cluster() {
        let mut plain = spec(json!({"selector": {"app": "web"}}));
        init_ip_families(&mut plain, None, "s").expect("valid");
        assert_eq!(plain["ipFamilyPolicy"], "SingleStack");
        assert_eq!(plain["ipFamilies"], json!(["IPv4"]));
        // Headless without a selector: kube asks for both families even here.
        let mut headless = spec(json!({"clusterIP": "None", "clusterIPs": ["None"]}));
        init_ip_families(&mut headless, None, "h").expect("valid");
        assert_eq!(headless["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(headless["ipFamilies"], json!(["IPv4", "IPv6"]));
        let mut dual = spec(json!({"ipFamilyPolicy": "RequireDualStack"}));
        let e = init_ip_families(&mut dual, None, "d").expect_err("no dual stack");
        assert!(
            e.to_string()
                .contains("this cluster is not configured for dual-stack services"),
            "{e}"
        );
        let mut v6 = spec(json!({"ipFamilies": ["IPv6"]}));
        let e = init_ip_families(&mut v6, None, "v").expect_err("no IPv6");
        assert!(
            e.to_string().contains(
                "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"
            ),
            "{e}"
        );
        let mut external = spec(json!({"type": "ExternalName"}));
        init_ip_families(&mut external, None, "e").expect("valid");
        assert!(!external.contains_key("ipFamilies"));
    }

    #[test]
    fn what_the_client_left_out_is_kept_and_a_changed_ip_refused() {
        let old = spec(json!({"type": "NodePort", "clusterIP": "10.96.0.5",
            "clusterIPs": ["10.96.0.5"], "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        let mut new = spec(json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}]}));
        patch_allocated_values(&old, &mut new);
        assert_eq!(new["clusterIP"], "10.96.0.5");
        assert_eq!(new["clusterIPs"], json!(["10.96.0.5"]));
        assert_eq!(new["ports"][0]["nodePort"], 30080);

        let was = vec!["10.96.0.5".to_owned()];
        assert!(immutable_cluster_ips(&was, &was, "s").is_ok());
        let e = immutable_cluster_ips(&was, &["10.96.0.6".to_owned()], "s").expect_err("changed");
        assert!(
            e.to_string().contains(
                "spec.clusterIPs[0]: Invalid value: [\"10.96.0.6\"]: may not change once set"
            ),
            "{e}"
        );
        let e = immutable_cluster_ips(&was, &[], "s").expect_err("unset");
        assert!(
            e.to_string().contains("primary clusterIP can not be unset"),
            "{e}"
        );
    }

    #[test]
    fn a_change_of_type_drops_what_it_makes_meaningless() {
        let old = spec(json!({"type": "NodePort", "clusterIP": "10.96.0.5",
            "clusterIPs": ["10.96.0.5"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"port": 80, "nodePort": 30080}]}));
        let mut external = old.clone();
        external.insert("type".into(), json!("ExternalName"));
        drop_type_dependent_fields(&old, &mut external);
        for gone in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            assert!(!external.contains_key(gone), "{gone}");
        }
        assert!(external["ports"][0].get("nodePort").is_none());
        // A singular clusterIP alone (an old client) is made the list.
        let mut changed = old.clone();
        changed.insert("clusterIP".into(), json!("10.96.0.9"));
        normalize_cluster_ips(&old, &mut changed);
        assert_eq!(changed["clusterIPs"], json!(["10.96.0.9"]));
    }

    #[test]
    fn held_values_are_read_back() {
        let svc = json!({"spec": {"clusterIPs": ["10.96.0.5"], "healthCheckNodePort": 31000,
            "ports": [{"nodePort": 30080}, {"nodePort": 0}, {}]}});
        assert_eq!(
            cluster_ips(&svc),
            vec!["10.96.0.5".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(node_ports(&svc), vec![30080, 31000]);
        assert!(cluster_ips(&json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
