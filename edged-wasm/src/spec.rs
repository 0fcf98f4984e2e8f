//! From a container's CRI-shaped settings to what the Wasm runtime needs to run it.
//!
//! Edged has checked the pod spec and resolved what needs the API; what is checked here is what
//! only a Wasm guest cannot do (a working directory to change to, a volume that is a single
//! file), refused as `InvalidConfig` naming the field so the container waits with
//! `CreateContainerConfigError`.
//!
//! Arguments: WASI has no entrypoint to override, so `argv` is `command` followed by `args`
//! when `command` is set, and the container's name followed by `args` otherwise (argv\[0\] is,
//! as for any program, its name).

use std::path::PathBuf;

use wedge_core::runtime::{ContainerConfig, RuntimeError};

/// A directory the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory on the edge.
    pub host_path: PathBuf,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// One container, ready to run.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Its name.
    pub name: String,
    /// Its image, as the pod names it.
    pub image: String,
    /// argv.
    pub argv: Vec<String>,
    /// The environment, in spec order.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub mounts: Vec<Mount>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit: Option<usize>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_millicores: Option<u64>,
    /// Whether the guest may use sockets: only in a pod's own network namespace (a mixed pod,
    /// see [`crate::netns`]); a Wasm-only pod runs in edgecore's and has no network.
    pub network: bool,
}

fn invalid(field: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidConfig {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Plans a container from its settings.
pub fn plan_container(config: &ContainerConfig) -> Result<ContainerPlan, RuntimeError> {
    if config.working_dir.is_some() {
        return Err(invalid(
            "workingDir",
            "Wasm guests have no working directory to set",
        ));
    }
    if config.security.privileged {
        return Err(invalid(
            "securityContext.privileged",
            "a Wasm guest has no privileges to raise",
        ));
    }
    let argv = if config.command.is_empty() {
        std::iter::once(config.name.clone())
            .chain(config.args.iter().cloned())
            .collect()
    } else {
        config.command.iter().chain(&config.args).cloned().collect()
    };
    let mounts = config
        .mounts
        .iter()
        .map(|m| Mount {
            host_path: m.host_path.clone(),
            guest_path: m.container_path.clone(),
            read_only: m.read_only,
        })
        .collect();
    Ok(ContainerPlan {
        name: config.name.clone(),
        image: config.image_ref.clone(),
        argv,
        env: config.env.clone(),
        mounts,
        memory_limit: config
            .limits
            .memory_bytes
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
        cpu_millicores: config.limits.cpu_millicores,
        network: false,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wedge_core::runtime::{Limits, Security};

    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "main".into(),
            attempt: 0,
            image: "sha256:00".into(),
            image_ref: "registry.local/app:1".into(),
            command: Vec::new(),
            args: vec!["print".into(), "3".into()],
            working_dir: None,
            env: vec![("A".into(), "1".into())],
            mounts: vec![wedge_core::runtime::Mount {
                host_path: "/pods/x/volumes/scratch".into(),
                container_path: "/tmp".into(),
                read_only: false,
            }],
            log_path: "/pods/x/main/0.log".into(),
            limits: Limits {
                memory_bytes: Some(64 << 20),
                cpu_millicores: Some(250),
                cpu_request_millicores: None,
            },
            security: Security::default(),
            stdin: false,
            tty: false,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn argv_is_the_name_or_the_command_then_the_args() {
        let plan = plan_container(&config()).expect("plan");
        assert_eq!(plan.argv, ["main", "print", "3"]);
        assert_eq!(plan.memory_limit, Some(64 << 20));
        assert_eq!(plan.mounts[0].guest_path, "/tmp");
        let mut c = config();
        c.command = vec!["tool".into()];
        assert_eq!(
            plan_container(&c).expect("plan").argv,
            ["tool", "print", "3"]
        );
    }

    #[test]
    fn refuses_what_a_guest_cannot_have() {
        let mut c = config();
        c.working_dir = Some("/work".into());
        let e = plan_container(&c).expect_err("refused").to_string();
        assert!(e.contains("workingDir"), "{e}");
    }
}
