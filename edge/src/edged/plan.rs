//! From a Kubernetes pod to what Edged needs to run it, whatever the runtime.
//!
//! Everything Edged reads from the pod spec is checked here, before anything starts, and a spec
//! it cannot honour is refused with a message naming the field: better a clear
//! `CreateContainerConfigError` than a pod that runs without what its author asked for. What a
//! particular runtime cannot do (a working directory for a Wasm guest, say) is that runtime's
//! to refuse, when the container is created.
//!
//! Env from ConfigMaps and Secrets is resolved before planning ([`super::env`]); the
//! downward-API fields a pod knows about itself are resolved here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Pod, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wedge_core::grants::{GrantError, PodGrants};
use wedge_core::quantity;
use wedge_core::restart::RestartPolicy;
use wedge_core::runtime::{Limits, Mount, Security};

/// A pod spec Edged cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A required field is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field holds something Edged cannot honour.
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

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

/// When to go to the registry, as `imagePullPolicy` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry. An edge that cannot reach it but holds the image runs what it
    /// holds (edges must work offline).
    Always,
    /// Use the held image if there is one.
    IfNotPresent,
    /// Never pull: the image must have been pulled or imported before.
    Never,
}

impl PullPolicy {
    /// The policy for a container: its `imagePullPolicy`, else Kubernetes' default (`Always` for
    /// `:latest` or untagged images, `IfNotPresent` otherwise).
    pub fn for_container(policy: Option<&str>, image: &str) -> Result<Self, String> {
        match policy {
            Some("Always") => Ok(Self::Always),
            Some("IfNotPresent") => Ok(Self::IfNotPresent),
            Some("Never") => Ok(Self::Never),
            Some(other) => Err(format!(
                "unknown policy {other:?}: expected Always, IfNotPresent or Never"
            )),
            None => {
                let name = image.rsplit('/').next().unwrap_or(image);
                let tagged = name.contains(':') && !name.ends_with(":latest");
                Ok(if tagged || image.contains('@') {
                    Self::IfNotPresent
                } else {
                    Self::Always
                })
            }
        }
    }
}

/// The registry host of an image reference, as Docker reads it: the first component when it
/// looks like a host (`registry.local/app`, `localhost:5000/app`), else `docker.io`.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => "docker.io".to_owned(),
    }
}

/// A volume, and where it lives on the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    /// Its name in the pod spec.
    pub name: String,
    /// Its directory on the edge.
    pub host_path: PathBuf,
    /// Whether Edged creates the directory (emptyDir, `DirectoryOrCreate`).
    pub create: bool,
    /// Whether Edged writes its files (ConfigMap, Secret, downward API, projected); such
    /// volumes are mounted read-only.
    pub files: bool,
}

/// What a probe or a lifecycle hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Runs a command in the container; exit 0 passes.
    Exec(Vec<String>),
    /// An HTTP GET; a status in 200..400 passes.
    Http {
        /// `host`, else the pod's IP.
        host: Option<String>,
        /// The port (named ports resolved).
        port: u16,
        /// The path, with its query.
        path: String,
        /// `httpHeaders`.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection; made passes.
    Tcp {
        /// `host`, else the pod's IP.
        host: Option<String>,
        /// The port (named ports resolved).
        port: u16,
    },
}

/// A probe and its timing (`initialDelaySeconds` and friends, defaulted as Kubernetes does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    /// What it runs.
    pub handler: Handler,
    /// Before the first run.
    pub initial_delay: Duration,
    /// Between runs.
    pub period: Duration,
    /// For one run.
    pub timeout: Duration,
    /// Successes in a row that make it pass.
    pub success_threshold: u32,
    /// Failures in a row that make it fail.
    pub failure_threshold: u32,
}

/// A container's probes and hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    /// `livenessProbe`.
    pub liveness: Option<ProbePlan>,
    /// `readinessProbe`.
    pub readiness: Option<ProbePlan>,
    /// `startupProbe`.
    pub startup: Option<ProbePlan>,
    /// `lifecycle.postStart`.
    pub post_start: Option<Handler>,
    /// `lifecycle.preStop`.
    pub pre_stop: Option<Handler>,
}

/// One container, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// When to pull.
    pub pull_policy: PullPolicy,
    /// `command`.
    pub command: Vec<String>,
    /// `args`.
    pub args: Vec<String>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// The environment, in spec order.
    pub env: Vec<(String, String)>,
    /// Its volumes.
    pub mounts: Vec<Mount>,
    /// Directories Edged creates before the container starts (emptyDir, subPaths).
    pub create_dirs: Vec<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// `securityContext`.
    pub security: Security,
    /// `stdin`.
    pub stdin: bool,
    /// `tty`.
    pub tty: bool,
    /// Probes and lifecycle hooks.
    pub probes: Probes,
}

/// A pod, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `namespace/name`, for messages.
    pub display_name: String,
    /// Where its logs and volumes live (`<pods root>/<ns>_<name>_<uid>`).
    pub dir: PathBuf,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.terminationGracePeriodSeconds` (default 30 s).
    pub grace: Duration,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.hostname`, else the pod's name.
    pub hostname: String,
    /// `spec.runtimeClassName`.
    pub runtime_class: Option<String>,
    /// The pod's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its volumes.
    pub volumes: Vec<VolumePlan>,
    /// Its init containers, run one after the other before the others start.
    pub init_containers: Vec<ContainerPlan>,
    /// Its containers, in spec order.
    pub containers: Vec<ContainerPlan>,
}

impl PodPlan {
    /// Every container, init containers first.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init_containers.iter().chain(&self.containers)
    }
}

/// A pod's directory under `pods_root`: `<namespace>_<name>_<uid>`, the kubelet's log layout
/// (neither names nor uids hold `_`, so the uid is what follows the last one).
pub fn pod_dir(pods_root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    pods_root.join(format!("{namespace}_{name}_{uid}"))
}

/// Plans a pod; `pods_root` is the directory that holds every pod's directory.
pub fn plan_pod(pod: &Pod, pods_root: &Path) -> Result<PodPlan, PlanError> {
    let meta = &pod.metadata;
    let uid = meta
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or(PlanError::Missing("metadata.uid"))?;
    if !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(unsupported("metadata.uid", format!("{uid:?} is not a UID")));
    }
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(PlanError::Missing("metadata.name"))?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    // The name and namespace become a directory name.
    for (field, value) in [("metadata.name", &name), ("metadata.namespace", &namespace)] {
        if value.contains(['/', '\0']) || value.starts_with('.') {
            return Err(unsupported(field, format!("{value:?} is not a valid name")));
        }
    }
    let spec = pod.spec.as_ref().ok_or(PlanError::Missing("spec"))?;
    if spec.containers.is_empty() {
        return Err(PlanError::Missing("spec.containers"));
    }
    let restart_policy = RestartPolicy::from_spec(spec.restart_policy.as_deref())
        .map_err(|e| unsupported("spec.restartPolicy", e.to_string()))?;
    let grace = Duration::from_secs(
        spec.termination_grace_period_seconds
            .map_or(30, |s| u64::try_from(s).unwrap_or(0)),
    );
    let annotations = meta.annotations.clone().unwrap_or_default();
    // Grants are checked here, once, so that a bad one refuses the pod on any runtime.
    PodGrants::from_annotations(&annotations)?;
    let dir = pod_dir(pods_root, &namespace, &name, &uid);

    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let files = super::volumes::writes_files(v);
        let (host_path, create) = if v.empty_dir.is_some() || files {
            (dir.join("volumes").join(&v.name), true)
        } else if let Some(h) = &v.host_path {
            let create = match h.type_.as_deref() {
                None
                | Some("" | "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice") => {
                    false
                }
                Some("DirectoryOrCreate") => true,
                Some(other) => {
                    return Err(unsupported(
                        format!("{field}.hostPath.type"),
                        format!(
                            "{other:?} is not supported: use Directory, DirectoryOrCreate or File"
                        ),
                    ));
                }
            };
            (PathBuf::from(&h.path), create)
        } else {
            return Err(unsupported(
                field,
                format!(
                    "volume {:?}: edges mount emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes",
                    v.name
                ),
            ));
        };
        if v.name.contains(['/', '\0']) || v.name.starts_with('.') {
            return Err(unsupported(
                format!("{field}.name"),
                format!("{:?} is not a valid volume name", v.name),
            ));
        }
        volumes.push(VolumePlan {
            name: v.name.clone(),
            host_path,
            create,
            files,
        });
    }

    let ctx = Ctx {
        pod,
        uid: &uid,
        name: &name,
        namespace: &namespace,
        volumes: &volumes,
    };
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| ctx.container(c, &format!("spec.initContainers[{i}]")))
        .collect::<Result<_, _>>()?;
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| ctx.container(c, &format!("spec.containers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        if !seen.insert(c.name.as_str()) {
            return Err(unsupported(
                "spec.containers",
                format!("two containers are named {:?}", c.name),
            ));
        }
    }
    Ok(PodPlan {
        display_name: format!("{namespace}/{name}"),
        hostname: spec
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| name.clone()),
        uid,
        name,
        namespace,
        dir,
        restart_policy,
        grace,
        host_network: spec.host_network.unwrap_or(false),
        runtime_class: spec.runtime_class_name.clone().filter(|r| !r.is_empty()),
        annotations,
        volumes,
        init_containers,
        containers,
    })
}

fn probes(c: &Container, at: &str) -> Result<Probes, PlanError> {
    let field = |f: &str| format!("{at}.{f}");
    let probe = |p: Option<&Probe>, name: &str, liveness_like: bool| {
        p.map(|p| {
            let f = field(name);
            let handler = handler_of(
                c,
                p.exec.as_ref(),
                p.http_get.as_ref(),
                p.tcp_socket.as_ref(),
                p.grpc.is_some(),
                &f,
            )?;
            let seconds = |v: Option<i32>, default: i32, min: i32, what: &str| {
                let v = v.unwrap_or(default);
                if v < min {
                    return Err(unsupported(
                        format!("{f}.{what}"),
                        format!("must be at least {min}"),
                    ));
                }
                Ok(u32::try_from(v).unwrap_or(0))
            };
            let success_threshold = seconds(p.success_threshold, 1, 1, "successThreshold")?;
            if liveness_like && success_threshold != 1 {
                return Err(unsupported(
                    format!("{f}.successThreshold"),
                    "must be 1 for liveness and startup probes",
                ));
            }
            Ok(ProbePlan {
                handler,
                initial_delay: Duration::from_secs(
                    seconds(p.initial_delay_seconds, 0, 0, "initialDelaySeconds")?.into(),
                ),
                period: Duration::from_secs(
                    seconds(p.period_seconds, 10, 1, "periodSeconds")?.into(),
                ),
                timeout: Duration::from_secs(
                    seconds(p.timeout_seconds, 1, 1, "timeoutSeconds")?.into(),
                ),
                success_threshold,
                failure_threshold: seconds(p.failure_threshold, 3, 1, "failureThreshold")?,
            })
        })
        .transpose()
    };
    let hook = |h: Option<&LifecycleHandler>, name: &str| {
        h.map(|h| {
            handler_of(
                c,
                h.exec.as_ref(),
                h.http_get.as_ref(),
                h.tcp_socket.as_ref(),
                false,
                &field(name),
            )
        })
        .transpose()
    };
    let lifecycle = c.lifecycle.as_ref();
    Ok(Probes {
        liveness: probe(c.liveness_probe.as_ref(), "livenessProbe", true)?,
        readiness: probe(c.readiness_probe.as_ref(), "readinessProbe", false)?,
        startup: probe(c.startup_probe.as_ref(), "startupProbe", true)?,
        post_start: hook(
            lifecycle.and_then(|l| l.post_start.as_ref()),
            "lifecycle.postStart",
        )?,
        pre_stop: hook(
            lifecycle.and_then(|l| l.pre_stop.as_ref()),
            "lifecycle.preStop",
        )?,
    })
}

/// A port as a probe names it: a number, or the name of one of the container's ports.
fn port_of(c: &Container, port: &IntOrString, field: &str) -> Result<u16, PlanError> {
    let number = match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        },
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            unsupported(
                format!("{field}.port"),
                format!(
                    "{port:?} is neither a port number nor the name of one of the container's ports"
                ),
            )
        })
}

fn handler_of(
    c: &Container,
    exec: Option<&ExecAction>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    grpc: bool,
    field: &str,
) -> Result<Handler, PlanError> {
    match (exec, http, tcp) {
        (Some(e), None, None) if !grpc => {
            let command = e.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err(unsupported(format!("{field}.exec.command"), "is empty"));
            }
            Ok(Handler::Exec(command))
        }
        (None, Some(h), None) if !grpc => {
            if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                return Err(unsupported(
                    format!("{field}.httpGet.scheme"),
                    "only HTTP is supported on edges",
                ));
            }
            let path = h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".to_owned());
            if !path.starts_with('/') {
                return Err(unsupported(
                    format!("{field}.httpGet.path"),
                    format!("{path:?} must start with /"),
                ));
            }
            Ok(Handler::Http {
                host: h.host.clone().filter(|h| !h.is_empty()),
                port: port_of(c, &h.port, &format!("{field}.httpGet"))?,
                path,
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            })
        }
        (None, None, Some(t)) if !grpc => Ok(Handler::Tcp {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: port_of(c, &t.port, &format!("{field}.tcpSocket"))?,
        }),
        (None, None, None) if grpc => Err(unsupported(
            format!("{field}.grpc"),
            "gRPC probes are not supported on edges: use exec, httpGet or tcpSocket",
        )),
        _ => Err(unsupported(
            field,
            "must have exactly one of exec, httpGet and tcpSocket",
        )),
    }
}

struct Ctx<'a> {
    pod: &'a Pod,
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    volumes: &'a [VolumePlan],
}

impl Ctx<'_> {
    fn container(&self, c: &Container, at: &str) -> Result<ContainerPlan, PlanError> {
        let field = |f: &str| format!("{at}.{f}");
        if c.name.is_empty() || c.name.contains(['/', '\0']) || c.name.starts_with('.') {
            return Err(unsupported(
                field("name"),
                format!("{:?} is not a valid container name", c.name),
            ));
        }
        let image = c
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| unsupported(field("image"), "is missing"))?;
        let pull_policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &image)
            .map_err(|m| unsupported(field("imagePullPolicy"), m))?;
        if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(unsupported(
                field("envFrom"),
                "must be resolved by Edged before the pod is planned",
            ));
        }
        let mut env = Vec::new();
        for (j, e) in c.env.iter().flatten().enumerate() {
            let value = match (&e.value, &e.value_from) {
                (_, Some(from)) => {
                    self.downward(from, &e.name, &field(&format!("env[{j}].valueFrom")))?
                }
                (Some(v), None) => v.clone(),
                (None, None) => String::new(),
            };
            env.push((e.name.clone(), value));
        }

        let mut mounts = Vec::new();
        let mut create_dirs = Vec::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let volume = self
                .volumes
                .iter()
                .find(|v| v.name == m.name)
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
                Some(sub) => {
                    let path = volume.host_path.join(sub);
                    if !volume.files {
                        create_dirs.push(path.clone());
                    }
                    path
                }
                None => volume.host_path.clone(),
            };
            if volume.create && !volume.files {
                create_dirs.push(volume.host_path.clone());
            }
            if !m.mount_path.starts_with('/') {
                return Err(unsupported(
                    field(&format!("volumeMounts[{j}].mountPath")),
                    format!("{:?} must be an absolute path", m.mount_path),
                ));
            }
            mounts.push(Mount {
                host_path,
                container_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false) || volume.files,
            });
        }

        let resources = c.resources.as_ref();
        let quantity_of = |kind: &str, name: &str| {
            resources
                .and_then(|r| match kind {
                    "limits" => r.limits.as_ref(),
                    _ => r.requests.as_ref(),
                })
                .and_then(|l| l.get(name))
                .map(|q| q.0.clone())
        };
        let memory_bytes = quantity_of("limits", "memory")
            .map(|q| quantity::parse_bytes(&q))
            .transpose()
            .map_err(|e| unsupported(field("resources.limits.memory"), e.to_string()))?;
        let cpu_millicores = quantity_of("limits", "cpu")
            .map(|q| quantity::parse_millicores(&q))
            .transpose()
            .map_err(|e| unsupported(field("resources.limits.cpu"), e.to_string()))?;
        let cpu_request_millicores = quantity_of("requests", "cpu")
            .map(|q| quantity::parse_millicores(&q))
            .transpose()
            .map_err(|e| unsupported(field("resources.requests.cpu"), e.to_string()))?;

        let pod_security = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let sc = c.security_context.as_ref();
        let security = Security {
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_security.and_then(|s| s.run_as_user)),
            run_as_group: sc
                .and_then(|s| s.run_as_group)
                .or_else(|| pod_security.and_then(|s| s.run_as_group)),
            read_only_root_fs: sc
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        };
        for (what, id) in [
            ("runAsUser", security.run_as_user),
            ("runAsGroup", security.run_as_group),
        ] {
            if id.is_some_and(|id| !(0..=i64::from(u32::MAX)).contains(&id)) {
                return Err(unsupported(
                    field(&format!("securityContext.{what}")),
                    "must be between 0 and 4294967295",
                ));
            }
        }

        Ok(ContainerPlan {
            name: c.name.clone(),
            image,
            pull_policy,
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            env,
            mounts,
            create_dirs,
            limits: Limits {
                memory_bytes,
                cpu_millicores,
                cpu_request_millicores,
            },
            security,
            stdin: c.stdin.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            probes: probes(c, at)?,
        })
    }

    /// The downward-API env value a pod knows about itself.
    fn downward(
        &self,
        from: &k8s_openapi::api::core::v1::EnvVarSource,
        var: &str,
        field: &str,
    ) -> Result<String, PlanError> {
        let spec = self.pod.spec.as_ref();
        let meta = &self.pod.metadata;
        let path = from.field_ref.as_ref().map(|f| f.field_path.as_str());
        let from_map = |map: Option<&BTreeMap<String, String>>, prefix: &str, p: &str| {
            let key = p.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
        };
        let value = match path {
            Some("metadata.name") => Some(self.name.to_owned()),
            Some("metadata.namespace") => Some(self.namespace.to_owned()),
            Some("metadata.uid") => Some(self.uid.to_owned()),
            Some("spec.nodeName") => {
                Some(spec.and_then(|s| s.node_name.clone()).unwrap_or_default())
            }
            Some("spec.serviceAccountName") => Some(
                spec.and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
            ),
            Some(p) if p.starts_with("metadata.labels['") => {
                from_map(meta.labels.as_ref(), "metadata.labels['", p)
            }
            Some(p) if p.starts_with("metadata.annotations['") => {
                from_map(meta.annotations.as_ref(), "metadata.annotations['", p)
            }
            _ => None,
        };
        value.ok_or_else(|| {
            unsupported(
                field,
                format!(
                    "{var:?}: only fieldRef to metadata.name, metadata.namespace, metadata.uid, metadata.labels['…'], metadata.annotations['…'], spec.nodeName and spec.serviceAccountName is resolved; ConfigMap and Secret references are resolved from what the edge holds"
                ),
            )
        })
    }
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
                          "labels": {"tier": "gw"},
                          "annotations": {"devices.wedge.io/read": "thermo-1"}},
            "spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 5,
                "nodeName": "gw-1",
                "runtimeClassName": "runc",
                "securityContext": {"runAsUser": 1000},
                "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "data", "hostPath": {"path": "/srv/data"}}],
                "initContainers": [{"name": "setup", "image": "registry.local/setup:1"}],
                "containers": [{
                    "name": "main", "image": "registry.local/app:1",
                    "command": ["app"], "args": ["print", "3"], "workingDir": "/work",
                    "env": [{"name": "A", "value": "1"},
                            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}}],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"},
                                     {"name": "data", "mountPath": "/data", "readOnly": true}],
                    "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}, "requests": {"cpu": "100m"}},
                    "securityContext": {"readOnlyRootFilesystem": true}
                }]
            }
        }));
        let plan = plan_pod(&p, Path::new("/pods")).expect("plan");
        assert_eq!(plan.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(plan.grace, Duration::from_secs(5));
        assert_eq!(plan.dir, Path::new("/pods/edge_app_1234-abcd"));
        assert_eq!(plan.runtime_class.as_deref(), Some("runc"));
        assert_eq!(plan.init_containers[0].name, "setup");
        let c = &plan.containers[0];
        assert_eq!(
            (c.command.as_slice(), c.args.as_slice()),
            (
                &["app".to_owned()][..],
                &["print".to_owned(), "3".to_owned()][..]
            )
        );
        assert_eq!(c.working_dir.as_deref(), Some("/work"));
        assert_eq!(
            c.env,
            [
                ("A".into(), "1".into()),
                ("NODE".into(), "gw-1".into()),
                ("TIER".into(), "gw".into())
            ]
        );
        assert_eq!(c.limits.memory_bytes, Some(64 << 20));
        assert_eq!(c.limits.cpu_millicores, Some(250));
        assert_eq!(c.limits.cpu_request_millicores, Some(100));
        assert_eq!(c.security.run_as_user, Some(1000));
        assert!(c.security.read_only_root_fs);
        assert_eq!(c.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(
            c.mounts[0].host_path,
            Path::new("/pods/edge_app_1234-abcd/volumes/scratch")
        );
        assert_eq!(c.create_dirs, [c.mounts[0].host_path.clone()]);
        assert!(c.mounts[1].read_only);
    }

    #[test]
    fn probes_and_hooks_are_planned_with_kubernetes_defaults() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "app", "uid": "u1"},
            "spec": {"containers": [{
                "name": "c", "image": "i:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 2},
                "startupProbe": {"exec": {"command": ["cat", "/ready"]}, "failureThreshold": 30},
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}}}
            }]}
        }));
        let plan = plan_pod(&p, Path::new("/p")).expect("plan");
        let probes = &plan.containers[0].probes;
        let liveness = probes.liveness.as_ref().expect("liveness");
        assert_eq!(
            liveness.handler,
            Handler::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: Vec::new()
            }
        );
        assert_eq!(
            (
                liveness.period,
                liveness.timeout,
                liveness.failure_threshold
            ),
            (Duration::from_secs(5), Duration::from_secs(1), 3)
        );
        assert_eq!(
            probes
                .readiness
                .as_ref()
                .expect("readiness")
                .success_threshold,
            2
        );
        assert_eq!(
            probes.startup.as_ref().expect("startup").failure_threshold,
            30
        );
        assert!(matches!(probes.pre_stop, Some(Handler::Exec(_))));
        assert!(probes.post_start.is_none());

        for (probe, needle) in [
            (
                serde_json::json!({"livenessProbe": {"httpGet": {"port": "nope"}}}),
                "livenessProbe.httpGet.port",
            ),
            (
                serde_json::json!({"livenessProbe": {"grpc": {"port": 9000}}}),
                "gRPC",
            ),
            (
                serde_json::json!({"livenessProbe": {"tcpSocket": {"port": 1}, "successThreshold": 2}}),
                "must be 1",
            ),
            (serde_json::json!({"readinessProbe": {}}), "exactly one"),
        ] {
            let mut c = serde_json::json!({"name": "c", "image": "i:1"});
            if let (Some(c), serde_json::Value::Object(extra)) = (c.as_object_mut(), probe) {
                c.extend(extra);
            }
            let p = pod(
                serde_json::json!({"metadata": {"name": "a", "uid": "u"}, "spec": {"containers": [c]}}),
            );
            let e = plan_pod(&p, Path::new("/p"))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn registries_are_read_as_docker_reads_them() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("registry.local/wedge/app"), "registry.local");
        assert_eq!(registry_of("localhost/app"), "localhost");
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
                    serde_json::json!([{"name": "v", "nfs": {"server": "x", "path": "/"}}]),
                ),
                "edges mount emptyDir",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
                    serde_json::json!([]),
                ),
                "resolved from what the edge holds",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "imagePullPolicy": "Sometimes"}),
                    serde_json::json!([]),
                ),
                "imagePullPolicy",
            ),
            (
                base(
                    serde_json::json!({"name": "c", "image": "i:1", "securityContext": {"runAsUser": -1}}),
                    serde_json::json!([]),
                ),
                "runAsUser",
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
            Err(PlanError::Missing("metadata.uid"))
        ));
        let twice = pod(
            serde_json::json!({"metadata": {"name": "a", "uid": "u"}, "spec": {
            "initContainers": [{"name": "c", "image": "i:1"}], "containers": [{"name": "c", "image": "i:1"}]}}),
        );
        assert!(plan_pod(&twice, Path::new("/p")).is_err());
    }
}
