//! From a Kubernetes pod to what the Wasm runtime needs to run it.
//!
//! Everything the runtime reads from the pod spec is checked here, before anything starts, and a
//! spec it cannot honour is refused with a message naming the field: better a clear
//! `CreateContainerConfigError` than a pod that runs without what its author asked for.
//!
//! Edged resolves what needs the API (env from ConfigMaps and Secrets, `envFrom`, ConfigMap and
//! Secret volumes) before it hands a pod to a runtime; this module takes literal values, the
//! downward-API fields a pod knows about itself, `emptyDir` and `hostPath` volumes.
//!
//! Arguments: WASI has no entrypoint to override, so `argv` is `command` followed by `args`
//! when `command` is set, and the container's name followed by `args` otherwise (argv\[0\] is,
//! as for any program, its name).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use wedge_core::grants::{GrantError, PodGrants};
use wedge_core::quantity;
use wedge_core::restart::RestartPolicy;

use crate::oci::{ImageError, PullPolicy};

/// A pod spec the Wasm runtime cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A required field is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field holds something the runtime cannot honour.
    #[error("{field}: {message}")]
    Unsupported {
        /// The field's path, as in `kubectl explain`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The grant annotations do not parse.
    #[error(transparent)]
    Grants(#[from] GrantError),
}

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

/// A directory the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory on the edge.
    pub host_path: PathBuf,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// Whether the runtime creates the host directory.
    pub create: bool,
}

/// One container, ready to run.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// When to pull.
    pub pull_policy: PullPolicy,
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
}

/// A pod, ready to run.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// `metadata.uid`.
    pub uid: String,
    /// `namespace/name`, for messages.
    pub display_name: String,
    /// Where its logs and volumes live.
    pub dir: PathBuf,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.terminationGracePeriodSeconds` (default 30 s).
    pub grace: Duration,
    /// What it may touch.
    pub grants: Arc<PodGrants>,
    /// Its containers, in spec order.
    pub containers: Vec<ContainerPlan>,
}

/// Plans a pod; `pods_root` is the directory that holds every pod's directory.
pub fn plan_pod(pod: &Pod, pods_root: &Path) -> Result<PodPlan, SpecError> {
    let meta = &pod.metadata;
    let uid = meta
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or(SpecError::Missing("metadata.uid"))?;
    if !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(unsupported("metadata.uid", format!("{uid:?} is not a UID")));
    }
    let name = meta
        .name
        .clone()
        .ok_or(SpecError::Missing("metadata.name"))?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let spec = pod.spec.as_ref().ok_or(SpecError::Missing("spec"))?;
    if spec.containers.is_empty() {
        return Err(SpecError::Missing("spec.containers"));
    }
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(unsupported(
            "spec.initContainers",
            "init containers are not supported for Wasm pods yet",
        ));
    }
    let restart_policy = RestartPolicy::from_spec(spec.restart_policy.as_deref())
        .map_err(|e| unsupported("spec.restartPolicy", e.to_string()))?;
    let grace = Duration::from_secs(
        spec.termination_grace_period_seconds
            .map_or(30, |s| u64::try_from(s).unwrap_or(0)),
    );
    let annotations = meta.annotations.clone().unwrap_or_default();
    let grants = Arc::new(PodGrants::from_annotations(&annotations)?);
    let dir = pods_root.join(format!("{namespace}_{name}_{uid}"));

    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let (path, create) = if v.empty_dir.is_some() {
            (dir.join("volumes").join(&v.name), true)
        } else if let Some(h) = &v.host_path {
            let create = match h.type_.as_deref() {
                None | Some("") | Some("Directory") => false,
                Some("DirectoryOrCreate") => true,
                Some(other) => {
                    return Err(unsupported(
                        format!("{field}.hostPath.type"),
                        format!(
                            "{other:?}: Wasm guests see directories only (Directory, DirectoryOrCreate)"
                        ),
                    ));
                }
            };
            (PathBuf::from(&h.path), create)
        } else {
            return Err(unsupported(
                field,
                format!(
                    "volume {:?}: the Wasm runtime mounts emptyDir and hostPath volumes only",
                    v.name
                ),
            ));
        };
        volumes.push((v.name.clone(), path, create));
    }

    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| plan_container(pod, c, i, &volumes, &uid, &name, &namespace))
        .collect::<Result<_, _>>()?;
    Ok(PodPlan {
        uid,
        display_name: format!("{namespace}/{name}"),
        dir,
        restart_policy,
        grace,
        grants,
        containers,
    })
}

fn plan_container(
    pod: &Pod,
    c: &Container,
    index: usize,
    volumes: &[(String, PathBuf, bool)],
    uid: &str,
    name: &str,
    namespace: &str,
) -> Result<ContainerPlan, SpecError> {
    let field = |f: &str| format!("spec.containers[{index}].{f}");
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or(SpecError::Missing("spec.containers[].image"))?;
    let pull_policy =
        PullPolicy::for_container(c.image_pull_policy.as_deref(), &image).map_err(|e| match e {
            ImageError::BadPolicy(p) => {
                unsupported(field("imagePullPolicy"), format!("unknown policy {p:?}"))
            }
            other => unsupported(field("image"), other.to_string()),
        })?;
    if c.working_dir.as_ref().is_some_and(|w| !w.is_empty()) {
        return Err(unsupported(
            field("workingDir"),
            "Wasm guests have no working directory to set",
        ));
    }
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(unsupported(
            field("envFrom"),
            "must be resolved by Edged before the pod reaches the runtime",
        ));
    }
    let argv = match &c.command {
        Some(cmd) if !cmd.is_empty() => {
            cmd.iter().chain(c.args.iter().flatten()).cloned().collect()
        }
        _ => std::iter::once(c.name.clone())
            .chain(c.args.iter().flatten().cloned())
            .collect(),
    };

    let mut env = Vec::new();
    for (j, e) in c.env.iter().flatten().enumerate() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                let path = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                let spec = pod.spec.as_ref();
                match path {
                    Some("metadata.name") => name.to_owned(),
                    Some("metadata.namespace") => namespace.to_owned(),
                    Some("metadata.uid") => uid.to_owned(),
                    Some("spec.nodeName") => {
                        spec.and_then(|s| s.node_name.clone()).unwrap_or_default()
                    }
                    Some("spec.serviceAccountName") => spec
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                    _ => {
                        return Err(unsupported(
                            field(&format!("env[{j}].valueFrom")),
                            format!(
                                "{:?}: only fieldRef to metadata.name, metadata.namespace, metadata.uid, spec.nodeName and spec.serviceAccountName is resolved here; ConfigMap and Secret references are resolved by Edged",
                                e.name
                            ),
                        ));
                    }
                }
            }
            (Some(v), None) => v.clone(),
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }

    let mut mounts = Vec::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let (_, path, create) = volumes
            .iter()
            .find(|(n, _, _)| *n == m.name)
            .ok_or_else(|| {
                unsupported(
                    field(&format!("volumeMounts[{j}]")),
                    format!("no volume named {:?}", m.name),
                )
            })?;
        let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|p| p == "..") || sub.starts_with('/') => {
                return Err(unsupported(
                    field(&format!("volumeMounts[{j}].subPath")),
                    "must be a relative path inside the volume",
                ));
            }
            Some(sub) => path.join(sub),
            None => path.clone(),
        };
        mounts.push(Mount {
            host_path,
            guest_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
            create: *create || m.sub_path.is_some(),
        });
    }

    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let memory_limit = limits
        .and_then(|l| l.get("memory"))
        .map(|q| quantity::parse_bytes(&q.0).map(|b| usize::try_from(b).unwrap_or(usize::MAX)))
        .transpose()
        .map_err(|e| unsupported(field("resources.limits.memory"), e.to_string()))?;
    let cpu_millicores = limits
        .and_then(|l| l.get("cpu"))
        .map(|q| quantity::parse_millicores(&q.0))
        .transpose()
        .map_err(|e| unsupported(field("resources.limits.cpu"), e.to_string()))?;

    Ok(ContainerPlan {
        name: c.name.clone(),
        image,
        pull_policy,
        argv,
        env,
        mounts,
        memory_limit,
        cpu_millicores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn plans_a_full_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "app", "namespace": "edge", "uid": "1234-abcd",
                          "annotations": {"devices.wedge.io/read": "thermo-1"}},
            "spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 5,
                "nodeName": "gw-1",
                "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "data", "hostPath": {"path": "/srv/data"}}],
                "containers": [{
                    "name": "main", "image": "registry.local/app:1",
                    "args": ["print", "3"],
                    "env": [{"name": "A", "value": "1"},
                            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"},
                                     {"name": "data", "mountPath": "/data", "readOnly": true}],
                    "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}
                }]
            }
        }));
        let plan = plan_pod(&p, Path::new("/pods")).expect("plan");
        assert_eq!(plan.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(plan.grace, Duration::from_secs(5));
        assert_eq!(plan.dir, Path::new("/pods/edge_app_1234-abcd"));
        let c = &plan.containers[0];
        assert_eq!(c.argv, ["main", "print", "3"]);
        assert_eq!(
            c.env,
            [("A".into(), "1".into()), ("NODE".into(), "gw-1".into())]
        );
        assert_eq!(c.memory_limit, Some(64 << 20));
        assert_eq!(c.cpu_millicores, Some(250));
        assert_eq!(c.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(
            c.mounts[0].host_path,
            Path::new("/pods/edge_app_1234-abcd/volumes/scratch")
        );
        assert!(c.mounts[0].create);
        assert!(c.mounts[1].read_only && !c.mounts[1].create);
        assert!(plan.grants.device_access("thermo-1").is_some());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let base = |container: serde_json::Value, volumes: serde_json::Value| {
            pod(serde_json::json!({
                "metadata": {"name": "app", "uid": "u1"},
                "spec": {"containers": [container], "volumes": volumes}
            }))
        };
        let cases = [
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "resources": {"limits": {"memory": "lots"}}}),
                    serde_json::json!([]),
                ),
                "resources.limits.memory",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}),
                    serde_json::json!([]),
                ),
                "no volume named",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1"}),
                    serde_json::json!([{"name": "cm", "configMap": {"name": "x"}}]),
                ),
                "emptyDir and hostPath",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
                    serde_json::json!([]),
                ),
                "resolved by Edged",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "imagePullPolicy": "Sometimes"}),
                    serde_json::json!([]),
                ),
                "imagePullPolicy",
            ),
        ];
        for (p, expected) in cases {
            let e = plan_pod(&p, Path::new("/pods"))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(expected), "{e:?} should mention {expected:?}");
        }
        let no_uid = pod(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        assert!(matches!(
            plan_pod(&no_uid, Path::new("/p")),
            Err(SpecError::Missing("metadata.uid"))
        ));
    }
}
