//! Pod sandboxes: Wedge's [`SandboxConfig`] as CRI's `PodSandboxConfig`, and CRI's sandbox
//! answers back as [`SandboxStatus`]. Pure mappings; the calls are in [`crate::runtime`].
//!
//! Two choices here are containerd's rather than ours:
//! - a host-network sandbox gets no hostname: it shares the node's UTS namespace, and runc
//!   refuses to set a hostname without a private one;
//! - no `dns_config`: containerd then copies the node's `/etc/resolv.conf` into the pod whole
//!   (servers, searches and options), which is what `dnsPolicy: Default` asks for, without our
//!   parsing it.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use k8s_cri::v1 as cri;
use wedge_core::runtime::{SandboxConfig, SandboxStatus};

/// The network namespace a pod's sandbox and containers use.
pub(crate) fn network_mode(host_network: bool) -> cri::NamespaceMode {
    if host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    }
}

/// The namespaces of a pod, as the kubelet sets them without `hostPID`, `hostIPC` or
/// `shareProcessNamespace`: each container its own PID namespace, the pod's IPC namespace.
pub(crate) fn namespace_options(host_network: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: network_mode(host_network) as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// CRI's form of a sandbox's settings, sent with `RunPodSandbox` and again with every
/// `CreateContainer` (containerd takes the log directory from the latter).
pub(crate) fn pod_sandbox_config(config: &SandboxConfig) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: config.name.clone(),
            uid: config.uid.clone(),
            namespace: config.namespace.clone(),
            attempt: config.attempt,
        }),
        hostname: if config.host_network {
            String::new()
        } else {
            config.hostname.clone()
        },
        log_directory: config.log_directory.to_string_lossy().into_owned(),
        dns_config: None,
        labels: to_hash(&config.labels),
        annotations: to_hash(&config.annotations),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: config.cgroup_parent.clone().unwrap_or_default(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(config.host_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A sandbox's status from `PodSandboxStatus`, with the verbose `info` containerd adds when
/// asked (its network namespace's path).
pub(crate) fn sandbox_status(
    status: cri::PodSandboxStatus,
    info: &HashMap<String, String>,
) -> SandboxStatus {
    let ip = status.network.map(|n| n.ip).filter(|ip| !ip.is_empty());
    SandboxStatus {
        ready: status.state == cri::PodSandboxState::SandboxReady as i32,
        ip,
        netns: netns_of(info),
        created_at: timestamp(status.created_at),
        labels: to_btree(status.labels),
        id: status.id,
    }
}

/// The network namespace containerd made for a sandbox, from the verbose status's `info`: the
/// OCI runtime spec of the pause container names it (absent for `hostNetwork`).
fn netns_of(info: &HashMap<String, String>) -> Option<std::path::PathBuf> {
    let info: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
}

/// A sandbox from `ListPodSandbox`, which carries no network: used when its status cannot be
/// read.
pub(crate) fn listed_sandbox(sandbox: cri::PodSandbox) -> SandboxStatus {
    SandboxStatus {
        ready: sandbox.state == cri::PodSandboxState::SandboxReady as i32,
        ip: None,
        netns: None,
        created_at: timestamp(sandbox.created_at),
        labels: to_btree(sandbox.labels),
        id: sandbox.id,
    }
}

/// CRI's nanoseconds since the epoch; a value out of range (never seen) reads as the epoch.
pub(crate) fn timestamp(nanos: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn to_hash(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn to_btree(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sandbox(host_network: bool) -> SandboxConfig {
        SandboxConfig {
            name: "web".into(),
            namespace: "default".into(),
            uid: "0b7c".into(),
            attempt: 1,
            hostname: "web".into(),
            log_directory: "/var/log/pods/default_web_0b7c".into(),
            host_network,
            labels: [("io.kubernetes.pod.uid".to_owned(), "0b7c".to_owned())].into(),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
            cgroup_parent: Some("/wedge/pod0b7c".into()),
            netns: None,
        }
    }

    #[test]
    fn pod_network_sandbox() {
        let c = pod_sandbox_config(&sandbox(false));
        let meta = c.metadata.as_ref().expect("metadata");
        assert_eq!(
            (
                meta.name.as_str(),
                meta.uid.as_str(),
                meta.namespace.as_str(),
                meta.attempt
            ),
            ("web", "0b7c", "default", 1)
        );
        assert_eq!(c.hostname, "web");
        assert_eq!(c.log_directory, "/var/log/pods/default_web_0b7c");
        assert_eq!(
            c.labels.get("io.kubernetes.pod.uid").map(String::as_str),
            Some("0b7c")
        );
        assert_eq!(c.annotations.get("a").map(String::as_str), Some("b"));
        let linux = c.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "/wedge/pod0b7c");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("namespaces");
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }

    #[test]
    fn host_network_sandbox_has_no_hostname() {
        let c = pod_sandbox_config(&sandbox(true));
        assert_eq!(c.hostname, "");
        let ns = c
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("namespaces");
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    }

    #[test]
    fn status_reads_ip_readiness_and_network_namespace() {
        // As containerd 1.6 writes the verbose info (trimmed).
        let info = HashMap::from([(
            "info".to_owned(),
            r#"{"pid":4242,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"network","path":"/var/run/netns/cni-1f2e"}]}}}"#.to_owned(),
        )]);
        let s = sandbox_status(
            cri::PodSandboxStatus {
                id: "abc".into(),
                state: cri::PodSandboxState::SandboxReady as i32,
                created_at: 1_700_000_000_123_456_789,
                network: Some(cri::PodSandboxNetworkStatus {
                    ip: "10.88.0.4".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &info,
        );
        assert!(s.ready);
        assert_eq!(s.ip.as_deref(), Some("10.88.0.4"));
        assert_eq!(
            s.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/cni-1f2e"))
        );
        assert_eq!(s.created_at.as_nanosecond(), 1_700_000_000_123_456_789);
        let host = sandbox_status(
            cri::PodSandboxStatus {
                state: cri::PodSandboxState::SandboxNotready as i32,
                network: Some(cri::PodSandboxNetworkStatus::default()),
                ..Default::default()
            },
            &HashMap::from([("info".to_owned(), "not json".to_owned())]),
        );
        assert!(!host.ready);
        assert_eq!(host.ip, None);
        assert_eq!(host.netns, None);
    }
}
