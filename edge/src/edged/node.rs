//! The node's registration and status as the edge reports them: labels (hostname, OS,
//! architecture, the edge role and the runtimes it offers), capacity, conditions, addresses
//! and node info read from the machine.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wedge_core::protocol::messages::NodeReport;

/// What the report says about this edge besides what is read from the machine.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its address, as edges' pods report it.
    pub ip: String,
    /// The runtime handlers it offers (`wasm`, later `runc`).
    pub runtimes: Vec<String>,
    /// Extra labels the operator asked for.
    pub labels: BTreeMap<String, String>,
    /// How many pods it accepts.
    pub max_pods: u32,
    /// When edgecore started: the Ready condition's transition time.
    pub ready_since: jiff::Timestamp,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The architecture as Kubernetes spells it.
pub fn kube_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The report for this machine now.
pub fn node_report(facts: &NodeFacts) -> NodeReport {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), facts.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), kube_arch().to_owned()),
        ("node-role.kubernetes.io/edge".to_owned(), String::new()),
    ]);
    for handler in &facts.runtimes {
        labels.insert(wedge_core::runtimes::label(handler), "true".to_owned());
    }
    labels.extend(facts.labels.clone());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpus.to_string())),
        ("memory".to_owned(), Quantity(format!("{}Ki", memory_kib()))),
        ("pods".to_owned(), Quantity(facts.max_pods.to_string())),
    ]);
    let now = Time(jiff::Timestamp::now());
    let since = Time(facts.ready_since);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since.clone()),
    };
    NodeReport {
        labels,
        status: NodeStatus {
            capacity: Some(capacity.clone()),
            allocatable: Some(capacity),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "EdgecoreHasSufficientMemory",
                    "edgecore has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "EdgecoreHasNoDiskPressure",
                    "edgecore has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "EdgecoreHasSufficientPID",
                    "edgecore has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "EdgecoreReady",
                    "edgecore is posting ready status",
                ),
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: facts.ip.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: facts.name.clone(),
                },
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: kube_arch().to_owned(),
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: format!("wasmtime://{}", crate::WASMTIME_VERSION),
                kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
                kube_proxy_version: String::new(),
                kubelet_version: format!("v1.33.0-wedge.{}", env!("CARGO_PKG_VERSION")),
                machine_id: read_trimmed("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image: os_image(),
                system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_offers_the_runtimes_and_says_ready() {
        let report = node_report(&NodeFacts {
            name: "edge-1".into(),
            ip: "10.0.0.7".into(),
            runtimes: vec!["wasm".into()],
            labels: BTreeMap::from([("site".into(), "north".into())]),
            max_pods: 110,
            ready_since: jiff::Timestamp::UNIX_EPOCH,
        });
        assert_eq!(
            report
                .labels
                .get("runtime.wedge.io/wasm")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(report.labels.get("site").map(String::as_str), Some("north"));
        assert_eq!(
            report
                .labels
                .get("kubernetes.io/hostname")
                .map(String::as_str),
            Some("edge-1")
        );
        let ready = report
            .status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(ready.status, "True");
        let pods = &report.status.capacity.as_ref().expect("capacity")["pods"];
        assert_eq!(pods.0, "110");
        assert!(
            report
                .status
                .addresses
                .iter()
                .flatten()
                .any(|a| a.address == "10.0.0.7")
        );
    }
}
