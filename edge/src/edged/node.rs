//! The node's registration and status as the edge reports them: labels (hostname, OS,
//! architecture, the edge role and the runtimes it offers), capacity, conditions, addresses,
//! node info read from the machine, and what the runtimes say of themselves (their versions in
//! `nodeInfo.containerRuntimeVersion`, their images in `status.images`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerImage, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wedge_core::protocol::messages::NodeReport;
use wedge_core::runtime::ImageInfo;

use super::runtimes::Runtimes;

/// How long a runtime may take to answer for the node report.
const RUNTIME_QUERY: Duration = Duration::from_secs(2);
/// The most images reported, largest first (the kubelet's `nodeStatusMaxImages`).
pub const MAX_IMAGES: usize = 50;

/// What the report says about this edge besides what is read from the machine.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its address, as edges' pods report it.
    pub ip: String,
    /// The runtime handlers it offers (`wasm`, `runc`).
    pub runtimes: Vec<String>,
    /// Extra labels the operator asked for.
    pub labels: BTreeMap<String, String>,
    /// How many pods it accepts.
    pub max_pods: u32,
    /// When edgecore started: the Ready condition's transition time.
    pub ready_since: jiff::Timestamp,
    /// The directory of its local volumes, if it offers local storage.
    pub local_volume_root: Option<std::path::PathBuf>,
}

/// What the runtimes say of themselves when the report is made.
#[derive(Debug, Clone, Default)]
pub struct RuntimeFacts {
    /// Each runtime's `name://version` (`wasmtime://…`, `containerd://1.6.20`), or
    /// `<handler>://unavailable` for one that did not answer.
    pub versions: Vec<String>,
    /// The images every runtime holds.
    pub images: Vec<ImageInfo>,
}

/// Asks every runtime for its version and images, each answer bounded in time: a runtime that
/// is down leaves its images out and says so in its version.
pub async fn runtime_facts(runtimes: &Runtimes) -> RuntimeFacts {
    let mut facts = RuntimeFacts::default();
    for handle in runtimes.iter() {
        let version = tokio::time::timeout(RUNTIME_QUERY, handle.runtime.version()).await;
        facts.versions.push(match version {
            Ok(Ok(version)) => version,
            _ => format!("{}://unavailable", handle.handler()),
        });
        if let Ok(Ok(images)) =
            tokio::time::timeout(RUNTIME_QUERY, handle.images.list_images()).await
        {
            facts.images.extend(images);
        }
    }
    facts
}

/// Reports the node's status every `config.node_status_interval`, the first at once.
pub async fn report_loop(
    config: super::EdgedConfig,
    runtimes: Runtimes,
    outbox: crate::store::Outbox,
) {
    let mut tick = tokio::time::interval(config.node_status_interval);
    loop {
        tick.tick().await;
        let runtime = runtime_facts(&runtimes).await;
        let report = node_report(&config.node, &runtime);
        super::put(
            &outbox,
            &crate::reports::node_status(&config.node.name, &report),
        )
        .await;
    }
}

/// `status.images` as the kubelet fills it: every name of each image (digests, then tags),
/// largest images first, at most [`MAX_IMAGES`].
pub fn node_images(images: &[ImageInfo]) -> Vec<ContainerImage> {
    let mut sorted: Vec<&ImageInfo> = images.iter().collect();
    sorted.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then(a.id.cmp(&b.id)));
    sorted
        .into_iter()
        .filter(|i| !i.repo_digests.is_empty() || !i.repo_tags.is_empty())
        .take(MAX_IMAGES)
        .map(|i| ContainerImage {
            names: Some(i.repo_digests.iter().chain(&i.repo_tags).cloned().collect()),
            size_bytes: i64::try_from(i.size_bytes).ok(),
        })
        .collect()
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
pub fn node_report(facts: &NodeFacts, runtime: &RuntimeFacts) -> NodeReport {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), facts.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), kube_arch().to_owned()),
    ]);
    // `node-role.kubernetes.io/edge` is cloudcore's to set: an edge may not give itself a role
    // (NodeRestriction).
    // Both known handlers are always labelled, so that a runtime an edge no longer offers
    // (containerd removed) reads "false" rather than keeping its old "true".
    for handler in [wedge_core::runtimes::WASM, wedge_core::runtimes::RUNC] {
        labels.insert(wedge_core::runtimes::label(handler), "false".to_owned());
    }
    for handler in &facts.runtimes {
        labels.insert(wedge_core::runtimes::label(handler), "true".to_owned());
    }
    labels.extend(facts.labels.clone());
    let mut annotations = BTreeMap::new();
    if let Some(root) = facts.local_volume_root.as_ref().and_then(|r| r.to_str()) {
        labels.insert(
            wedge_core::storage::LOCAL_PATH_LABEL.to_owned(),
            "true".to_owned(),
        );
        annotations.insert(
            wedge_core::storage::LOCAL_PATH_ROOT.to_owned(),
            root.to_owned(),
        );
    }
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
        annotations,
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
                container_runtime_version: runtime.versions.join(", "),
                kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
                kube_proxy_version: String::new(),
                kubelet_version: format!("v1.33.0-wedge.{}", env!("CARGO_PKG_VERSION")),
                machine_id: read_trimmed("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image: os_image(),
                system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
                ..NodeSystemInfo::default()
            }),
            images: Some(node_images(&runtime.images)),
            ..NodeStatus::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_offers_the_runtimes_their_versions_and_images_and_says_ready() {
        let facts = NodeFacts {
            name: "edge-1".into(),
            ip: "10.0.0.7".into(),
            runtimes: vec!["wasm".into()],
            labels: BTreeMap::from([("site".into(), "north".into())]),
            max_pods: 110,
            ready_since: jiff::Timestamp::UNIX_EPOCH,
            local_volume_root: Some("/var/lib/wedge/storage".into()),
        };
        let image = |id: &str, tag: &str, size| ImageInfo {
            id: id.into(),
            repo_tags: vec![tag.into()],
            repo_digests: vec![format!("{tag}@sha256:{id}")],
            size_bytes: size,
        };
        let runtime = RuntimeFacts {
            versions: vec!["wasmtime://27.0.0".into(), "containerd://1.6.20".into()],
            images: vec![image("a", "r/small:1", 10), image("b", "r/big:1", 99)],
        };
        let report = node_report(&facts, &runtime);
        let label = |k: &str| report.labels.get(k).map(String::as_str);
        assert_eq!(label("runtime.wedge.io/wasm"), Some("true"));
        assert_eq!(label("runtime.wedge.io/runc"), Some("false"));
        assert_eq!(label("storage.wedge.io/local-path"), Some("true"));
        assert_eq!(
            report
                .annotations
                .get("storage.wedge.io/local-path-root")
                .map(String::as_str),
            Some("/var/lib/wedge/storage")
        );
        let info = report.status.node_info.as_ref().expect("node info");
        assert_eq!(
            info.container_runtime_version,
            "wasmtime://27.0.0, containerd://1.6.20"
        );
        let images = report.status.images.as_ref().expect("images");
        assert_eq!(
            images[0].names.as_deref(),
            Some(&["r/big:1@sha256:b".to_owned(), "r/big:1".to_owned()][..]),
            "largest first, digests then tags"
        );
        assert_eq!(images[1].size_bytes, Some(10));
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
