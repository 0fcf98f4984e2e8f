//! Containers: Wedge's [`ContainerConfig`] as CRI's, and CRI's `ContainerStatus` back as
//! [`ContainerInfo`]. Pure mappings, checked here so that a bad configuration is refused as
//! [`RuntimeError::InvalidConfig`] before containerd sees it.
//!
//! Resources follow the kubelet's arithmetic (`pkg/kubelet/cm/helpers_linux.go`): a CPU limit
//! is a CFS quota over a 100 ms period, a CPU request is `cpu.shares` at 1024 per core with a
//! floor of 2, so that containers on an edge share CPU as they would on a Kubernetes node.

use std::path::{Component, Path};

use k8s_cri::v1 as cri;
use wedge_core::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, Exit, Limits, RuntimeError, SandboxConfig,
    Security,
};
use wedge_core::status::reason;

use crate::sandbox::{namespace_options, pod_sandbox_config, timestamp, to_btree, to_hash};

/// The CFS period the kubelet uses, in microseconds.
const CPU_PERIOD_US: i64 = 100_000;
/// The smallest quota the kernel takes (the kubelet's `MinQuotaPeriod`), in microseconds.
const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The fewest CPU shares (the kubelet's `MinShares`), also what a container without a CPU
/// request gets.
const MIN_CPU_SHARES: i64 = 2;

fn invalid(field: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidConfig {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The `CreateContainer` config for `config` in `sandbox`.
pub(crate) fn container_config(
    config: &ContainerConfig,
    sandbox: &SandboxConfig,
) -> Result<cri::ContainerConfig, RuntimeError> {
    let image = if config.image.is_empty() {
        &config.image_ref
    } else {
        &config.image
    };
    let mounts = config
        .mounts
        .iter()
        .map(|m| {
            let host_path = m.host_path.to_str().ok_or_else(|| {
                invalid("volumeMounts", format!("{:?} is not UTF-8", m.host_path))
            })?;
            if !m.host_path.is_absolute() {
                return Err(invalid(
                    "volumeMounts",
                    format!(
                        "the host path {host_path:?} of {} is not absolute",
                        m.container_path
                    ),
                ));
            }
            Ok(cri::Mount {
                host_path: host_path.to_owned(),
                container_path: m.container_path.clone(),
                readonly: m.read_only,
                ..Default::default()
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: config.name.clone(),
            attempt: config.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: image.clone(),
            user_specified_image: config.image_ref.clone(),
            ..Default::default()
        }),
        command: config.command.clone(),
        args: config.args.clone(),
        working_dir: config.working_dir.clone().unwrap_or_default(),
        envs: config
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels: to_hash(&config.labels),
        annotations: to_hash(&config.annotations),
        log_path: relative_log_path(&config.log_path, &sandbox.log_directory)?,
        stdin: config.stdin,
        tty: config.tty,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(&config.limits)?),
            security_context: Some(security_context(&config.security, sandbox.host_network)?),
        }),
        ..Default::default()
    })
}

/// The sandbox config sent along with `CreateContainer`. containerd 1.6 refuses a privileged
/// container unless this config says the sandbox is privileged (the kubelet marks the whole
/// sandbox when any container is); our [`SandboxConfig`] has no such flag, so the container's
/// own setting is carried over. It is only this check: the sandbox itself is not changed.
pub(crate) fn sandbox_config_for(
    config: &ContainerConfig,
    sandbox: &SandboxConfig,
) -> cri::PodSandboxConfig {
    let mut cri_sandbox = pod_sandbox_config(sandbox);
    if config.security.privileged
        && let Some(sc) = cri_sandbox
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
    {
        sc.privileged = true;
    }
    cri_sandbox
}

/// CRI wants the log path relative to the sandbox's log directory (containerd joins them);
/// ours is absolute, under it.
pub(crate) fn relative_log_path(
    log_path: &Path,
    log_directory: &Path,
) -> Result<String, RuntimeError> {
    let refuse = |why: &str| {
        invalid(
            "logPath",
            format!(
                "the log path {} {why} the pod's log directory {}",
                log_path.display(),
                log_directory.display()
            ),
        )
    };
    if log_directory.as_os_str().is_empty() {
        return Err(refuse("has no place: there is no"));
    }
    let relative = log_path
        .strip_prefix(log_directory)
        .map_err(|_| refuse("is not under"))?;
    let clean = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if relative.as_os_str().is_empty() || !clean {
        return Err(refuse("must name a file inside"));
    }
    relative
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| refuse("is not UTF-8 under"))
}

/// Limits as the kubelet turns them into cgroup settings.
pub(crate) fn resources(limits: &Limits) -> Result<cri::LinuxContainerResources, RuntimeError> {
    let too_large = |field: &str| invalid(field, "the value is too large");
    let mut r = cri::LinuxContainerResources::default();
    if let Some(bytes) = limits.memory_bytes {
        r.memory_limit_in_bytes =
            i64::try_from(bytes).map_err(|_| too_large("resources.limits.memory"))?;
    }
    if let Some(milli) = limits.cpu_millicores {
        // 1000 millicores = one period's worth of quota.
        let quota = i64::try_from(milli)
            .ok()
            .and_then(|m| m.checked_mul(CPU_PERIOD_US / 1000))
            .ok_or_else(|| too_large("resources.limits.cpu"))?;
        r.cpu_period = CPU_PERIOD_US;
        r.cpu_quota = quota.max(MIN_CPU_QUOTA_US);
    }
    // The API server defaults a missing request to the limit; the kubelet gives a container
    // with neither the minimum.
    r.cpu_shares = match limits.cpu_request_millicores.or(limits.cpu_millicores) {
        Some(milli) => i64::try_from(milli)
            .ok()
            .and_then(|m| m.checked_mul(1024))
            .map(|s| (s / 1000).max(MIN_CPU_SHARES))
            .ok_or_else(|| too_large("resources.requests.cpu"))?,
        None => MIN_CPU_SHARES,
    };
    Ok(r)
}

/// The `securityContext`, with namespaces matching the sandbox's network.
pub(crate) fn security_context(
    security: &Security,
    host_network: bool,
) -> Result<cri::LinuxContainerSecurityContext, RuntimeError> {
    // containerd 1.6 refuses a group without a user ("user group is specified without user");
    // say so in the pod's terms instead.
    if security.run_as_group.is_some() && security.run_as_user.is_none() {
        return Err(invalid(
            "securityContext.runAsGroup",
            "runAsGroup needs runAsUser on the container runtime (containerd)",
        ));
    }
    Ok(cri::LinuxContainerSecurityContext {
        run_as_user: security.run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: security.run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: security.read_only_root_fs,
        privileged: security.privileged,
        namespace_options: Some(namespace_options(host_network)),
        ..Default::default()
    })
}

/// A container's status as [`ContainerInfo`]. CRI's status does not name the sandbox: the
/// caller knows it.
pub(crate) fn container_info(status: cri::ContainerStatus, sandbox_id: String) -> ContainerInfo {
    let (name, attempt) = status
        .metadata
        .map(|m| (m.name, m.attempt))
        .unwrap_or_default();
    let state = match cri::ContainerState::try_from(status.state) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running {
            started_at: timestamp(status.started_at),
        },
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited(Exit {
            code: status.exit_code,
            // containerd names it ("Completed", "Error", "OOMKilled"); fall back to the
            // kubelet's rule if it did not.
            reason: if status.reason.is_empty() {
                if status.exit_code == 0 {
                    reason::COMPLETED
                } else {
                    reason::ERROR
                }
                .to_owned()
            } else {
                status.reason
            },
            message: Some(status.message).filter(|m| !m.is_empty()),
            started_at: timestamp(status.started_at),
            // containerd stamps the start once its call to start the task returns, and the exit
            // with the shim's time of the exit: a process that ends at once can have "finished"
            // before it "started" (seen: by 0.6 ms). Never report a negative run.
            finished_at: timestamp(status.finished_at.max(status.started_at)),
        }),
        Ok(cri::ContainerState::ContainerUnknown) | Err(_) => ContainerState::Unknown,
    };
    ContainerInfo {
        id: status.id,
        sandbox_id,
        name,
        attempt,
        image_id: Some(status.image_ref).filter(|r| !r.is_empty()),
        state,
        labels: to_btree(status.labels),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use wedge_core::runtime::Mount;

    use super::*;
    use crate::sandbox::tests::sandbox;

    fn container() -> ContainerConfig {
        ContainerConfig {
            name: "app".into(),
            attempt: 2,
            image: "sha256:1234".into(),
            image_ref: "127.0.0.1:5000/busybox:1.35".into(),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "echo hi".into()],
            working_dir: Some("/tmp".into()),
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            mounts: vec![Mount {
                host_path: "/var/lib/wedge/pods/0b7c/volumes/data".into(),
                container_path: "/data".into(),
                read_only: true,
            }],
            log_path: "/var/log/pods/default_web_0b7c/app/2.log".into(),
            limits: Limits::default(),
            security: Security::default(),
            stdin: false,
            tty: true,
            labels: [("io.kubernetes.container.name".to_owned(), "app".to_owned())].into(),
            annotations: [(
                "io.kubernetes.container.restartCount".to_owned(),
                "2".to_owned(),
            )]
            .into(),
        }
    }

    #[test]
    fn maps_every_field() {
        let c = container_config(&container(), &sandbox(false)).expect("valid");
        let meta = c.metadata.expect("metadata");
        assert_eq!((meta.name.as_str(), meta.attempt), ("app", 2));
        let image = c.image.expect("image");
        assert_eq!(image.image, "sha256:1234");
        assert_eq!(image.user_specified_image, "127.0.0.1:5000/busybox:1.35");
        assert_eq!(c.command, ["sh"]);
        assert_eq!(c.args, ["-c", "echo hi"]);
        assert_eq!(c.working_dir, "/tmp");
        let envs: Vec<_> = c
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(envs, [("A", "1"), ("B", "2")], "order kept");
        assert_eq!(c.mounts.len(), 1);
        assert_eq!(
            c.mounts[0].host_path,
            "/var/lib/wedge/pods/0b7c/volumes/data"
        );
        assert_eq!(c.mounts[0].container_path, "/data");
        assert!(c.mounts[0].readonly);
        assert_eq!(c.log_path, "app/2.log");
        assert!(c.tty && !c.stdin);
        assert_eq!(
            c.labels
                .get("io.kubernetes.container.name")
                .map(String::as_str),
            Some("app")
        );
        assert!(
            c.annotations
                .contains_key("io.kubernetes.container.restartCount")
        );
    }

    #[test]
    fn image_ref_stands_in_for_a_missing_id() {
        let mut config = container();
        config.image.clear();
        let c = container_config(&config, &sandbox(false)).expect("valid");
        assert_eq!(c.image.expect("image").image, "127.0.0.1:5000/busybox:1.35");
    }

    #[test]
    fn log_paths_must_be_inside_the_log_directory() {
        let dir = PathBuf::from("/var/log/pods/p");
        assert_eq!(
            relative_log_path(Path::new("/var/log/pods/p/app/0.log"), &dir).ok(),
            Some("app/0.log".into())
        );
        for bad in [
            "/var/log/pods/q/app/0.log",
            "/var/log/pods/p",
            "/var/log/pods/p/../q/0.log",
        ] {
            let err = relative_log_path(Path::new(bad), &dir);
            assert!(
                matches!(&err, Err(RuntimeError::InvalidConfig { field, .. }) if field == "logPath"),
                "{bad}: {err:?}"
            );
        }
        assert!(relative_log_path(Path::new("/x/0.log"), Path::new("")).is_err());
        let mut config = container();
        config.log_path = "/elsewhere/app/0.log".into();
        assert!(matches!(
            container_config(&config, &sandbox(false)),
            Err(RuntimeError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn resources_follow_the_kubelet() {
        let r = resources(&Limits {
            memory_bytes: Some(16 << 20),
            cpu_millicores: Some(500),
            cpu_request_millicores: Some(250),
        })
        .expect("valid");
        assert_eq!(r.memory_limit_in_bytes, 16 << 20);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 50_000));
        assert_eq!(r.cpu_shares, 256);

        // A limit alone: the request defaults to it.
        let r = resources(&Limits {
            cpu_millicores: Some(2000),
            ..Limits::default()
        })
        .expect("valid");
        assert_eq!((r.cpu_quota, r.cpu_shares), (200_000, 2048));

        // Tiny values hit the kernel's and the kubelet's floors.
        let r = resources(&Limits {
            cpu_millicores: Some(1),
            cpu_request_millicores: Some(1),
            ..Limits::default()
        })
        .expect("valid");
        assert_eq!((r.cpu_quota, r.cpu_shares), (1_000, 2));

        // Nothing asked: no limits, minimum shares.
        let r = resources(&Limits::default()).expect("valid");
        assert_eq!(
            (
                r.memory_limit_in_bytes,
                r.cpu_period,
                r.cpu_quota,
                r.cpu_shares
            ),
            (0, 0, 0, 2)
        );

        assert!(matches!(
            resources(&Limits {
                memory_bytes: Some(u64::MAX),
                ..Limits::default()
            }),
            Err(RuntimeError::InvalidConfig { field, .. }) if field == "resources.limits.memory"
        ));
        assert!(
            resources(&Limits {
                cpu_millicores: Some(u64::MAX / 2),
                ..Limits::default()
            })
            .is_err()
        );
    }

    #[test]
    fn security_context_and_namespaces() {
        let s = security_context(
            &Security {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                read_only_root_fs: true,
                privileged: false,
            },
            true,
        )
        .expect("valid");
        assert_eq!(s.run_as_user.map(|v| v.value), Some(1000));
        assert_eq!(s.run_as_group.map(|v| v.value), Some(3000));
        assert!(s.readonly_rootfs && !s.privileged);
        let ns = s.namespace_options.expect("namespaces");
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);

        let pod = security_context(&Security::default(), false).expect("valid");
        assert_eq!(pod.run_as_user, None);
        assert_eq!(
            pod.namespace_options.map(|n| n.network),
            Some(cri::NamespaceMode::Pod as i32)
        );

        assert!(matches!(
            security_context(
                &Security {
                    run_as_group: Some(3000),
                    ..Security::default()
                },
                false
            ),
            Err(RuntimeError::InvalidConfig { field, .. }) if field == "securityContext.runAsGroup"
        ));
    }

    #[test]
    fn privileged_containers_mark_the_sandbox_config_they_carry() {
        let mut config = container();
        let plain = sandbox_config_for(&config, &sandbox(false));
        let privileged = |c: &cri::PodSandboxConfig| {
            c.linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .is_some_and(|s| s.privileged)
        };
        assert!(!privileged(&plain));
        config.security.privileged = true;
        assert!(privileged(&sandbox_config_for(&config, &sandbox(false))));
    }

    #[test]
    fn status_maps_states_and_exits() {
        let status = |state: cri::ContainerState, code: i32, reason: &str| cri::ContainerStatus {
            id: "c1".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 3,
            }),
            state: state as i32,
            started_at: 1_000_000_000,
            finished_at: 2_500_000_000,
            exit_code: code,
            reason: reason.into(),
            image_ref: "127.0.0.1:5000/busybox@sha256:abcd".into(),
            labels: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        };
        let info = container_info(
            status(cri::ContainerState::ContainerExited, 137, "OOMKilled"),
            "s1".into(),
        );
        assert_eq!((info.id.as_str(), info.sandbox_id.as_str()), ("c1", "s1"));
        assert_eq!((info.name.as_str(), info.attempt), ("app", 3));
        assert_eq!(
            info.image_id.as_deref(),
            Some("127.0.0.1:5000/busybox@sha256:abcd")
        );
        assert_eq!(info.labels.get("k").map(String::as_str), Some("v"));
        let ContainerState::Exited(exit) = info.state else {
            panic!("exited: {:?}", info.state);
        };
        assert_eq!((exit.code, exit.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(exit.started_at.as_second(), 1);
        assert_eq!(exit.finished_at.as_millisecond(), 2_500);
        assert_eq!(exit.message, None);

        // No reason from the runtime: the kubelet's rule.
        for (code, want) in [(0, "Completed"), (3, "Error")] {
            let info = container_info(
                status(cri::ContainerState::ContainerExited, code, ""),
                String::new(),
            );
            assert!(matches!(info.state, ContainerState::Exited(e) if e.reason == want));
        }
        let running = container_info(
            status(cri::ContainerState::ContainerRunning, 0, ""),
            String::new(),
        );
        assert!(
            matches!(running.state, ContainerState::Running { started_at } if started_at.as_second() == 1)
        );
        // An exit stamped before the start reads as ending when it started.
        let mut early = status(cri::ContainerState::ContainerExited, 0, "Completed");
        early.finished_at = early.started_at - 600_000;
        let ContainerState::Exited(exit) = container_info(early, String::new()).state else {
            panic!("exited");
        };
        assert_eq!(exit.finished_at, exit.started_at);
        let created = container_info(
            status(cri::ContainerState::ContainerCreated, 0, ""),
            String::new(),
        );
        assert_eq!(created.state, ContainerState::Created);
        let mut odd = status(cri::ContainerState::ContainerUnknown, 0, "");
        odd.state = 42;
        odd.metadata = None;
        odd.image_ref.clear();
        let odd = container_info(odd, String::new());
        assert_eq!(odd.state, ContainerState::Unknown);
        assert_eq!((odd.name.as_str(), odd.image_id), ("", None));
    }
}
