//! ConfigMap, Secret, downward-API and projected volumes: their files rendered from what
//! MetaManager holds (and a projected `serviceAccountToken` from the tokens [`super::tokens`]
//! keeps) and written into the pod's directory, for every runtime (a container gets
//! the directory bind-mounted, a Wasm guest preopened).
//!
//! Written as the kubelet's atomic writer does, so that a reader never sees half an update: the
//! files go into a fresh `..<timestamp>` directory, a `..data` symlink is swapped to it in one
//! rename, and each top-level name is a symlink through `..data`. Edged writes a pod's volumes
//! before its containers start and again whenever the objects change, so updates reach running
//! containers as the kubelet's do (a `subPath` mount does not follow them, as on Kubernetes).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod};
use wedge_core::protocol::ResourceKind;

use super::objects::{Lookup, key_data};

/// A file of a volume: its path inside the volume, content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative path inside the volume.
    pub path: PathBuf,
    /// The bytes.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// What a volume holds, when Edged writes it.
pub type Files = Vec<File>;

/// Whether Edged writes this volume's files (ConfigMap, Secret, downward API, projected).
pub fn writes_files(v: &k8s_openapi::api::core::v1::Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

fn what(kind: ResourceKind) -> &'static str {
    if kind == ResourceKind::Secret {
        "secret"
    } else {
        "configmap"
    }
}

/// A relative path that stays inside the volume.
fn safe_path(path: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    let ok = !path.is_empty()
        && !path.starts_with("..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(format!(
            "{path:?} must be a relative path inside the volume, not starting with '..'"
        ))
    }
}

fn mode_of(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(default, |m| m & 0o777)
}

/// The files of a ConfigMap or Secret source: every key, or the listed items.
fn object_files(
    kind: ResourceKind,
    namespace: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: u32,
    lookup: &Lookup<'_>,
) -> Result<Files, String> {
    let Some(data) = key_data(lookup, kind, namespace, name).transpose()? else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("{} \"{name}\" not found", what(kind)))
        };
    };
    let data = data.map();
    match items {
        None => data
            .iter()
            .map(|(key, content)| {
                Ok(File {
                    path: safe_path(key)?,
                    content: content.clone(),
                    mode: default_mode,
                })
            })
            .collect(),
        Some(items) => items
            .iter()
            .filter_map(|item| match data.get(&item.key) {
                Some(content) => Some(safe_path(&item.path).map(|path| File {
                    path,
                    content: content.clone(),
                    mode: mode_of(item.mode, default_mode),
                })),
                None if optional => None,
                None => Some(Err(format!(
                    "configmap references non-existent config key: {}",
                    item.key
                ))),
            })
            .collect(),
    }
}

/// The value of a downward-API file.
fn downward_value(pod: &Pod, item: &DownwardAPIVolumeFile) -> Result<Vec<u8>, String> {
    let meta = &pod.metadata;
    let map = |m: Option<&BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{}\"\n", v.escape_default()))
            .collect::<String>()
    };
    if let Some(field) = &item.field_ref {
        let value = match field.field_path.as_str() {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => map(meta.labels.as_ref()),
            "metadata.annotations" => map(meta.annotations.as_ref()),
            other => {
                let key = |prefix: &str| {
                    other
                        .strip_prefix(prefix)
                        .and_then(|k| k.strip_suffix("']"))
                };
                if let Some(k) = key("metadata.labels['") {
                    meta.labels
                        .as_ref()
                        .and_then(|l| l.get(k))
                        .cloned()
                        .unwrap_or_default()
                } else if let Some(k) = key("metadata.annotations['") {
                    meta.annotations
                        .as_ref()
                        .and_then(|l| l.get(k))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    return Err(format!(
                        "downwardAPI fieldRef {other:?} is not supported in a volume: use metadata.name, namespace, uid, labels or annotations"
                    ));
                }
            }
        };
        return Ok(value.into_bytes());
    }
    if let Some(resource) = &item.resource_field_ref {
        let container = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| Some(&c.name) == resource.container_name.as_ref())
            .ok_or_else(|| {
                format!(
                    "downwardAPI resourceFieldRef names no container: {:?}",
                    resource.container_name
                )
            })?;
        let (section, name) = resource
            .resource
            .split_once('.')
            .ok_or_else(|| format!("unknown resource {:?}", resource.resource))?;
        let r = container.resources.as_ref();
        let q = match section {
            "limits" => r.and_then(|r| r.limits.as_ref()),
            "requests" => r.and_then(|r| r.requests.as_ref()),
            _ => None,
        }
        .and_then(|m| m.get(name))
        .map(|q| q.0.clone())
        .unwrap_or_default();
        return Ok(q.into_bytes());
    }
    Err("a downwardAPI item needs fieldRef or resourceFieldRef".to_owned())
}

/// The token a projected `serviceAccountToken` source needs (written at the relative path
/// given), if there is one (see [`super::tokens`]).
pub type TokenLookup<'a> = dyn Fn(&super::tokens::TokenKey, &Path) -> Option<String> + 'a;

/// The files of volume `name` of `pod`, or `None` if it is not a volume Edged writes
/// (emptyDir, hostPath). A missing object (not optional) is kubelet's message; a token not
/// held yet is a message to wait on (it is being asked for).
pub fn render(
    pod: &Pod,
    name: &str,
    lookup: &Lookup<'_>,
    tokens: &TokenLookup<'_>,
) -> Result<Option<Files>, String> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(volume) = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == name)
    else {
        return Ok(None);
    };
    if let Some(cm) = &volume.config_map {
        return object_files(
            ResourceKind::ConfigMap,
            &namespace,
            &cm.name,
            cm.items.as_ref(),
            cm.optional.unwrap_or(false),
            mode_of(cm.default_mode, 0o644),
            lookup,
        )
        .map(Some);
    }
    if let Some(secret) = &volume.secret {
        return object_files(
            ResourceKind::Secret,
            &namespace,
            secret.secret_name.as_deref().unwrap_or_default(),
            secret.items.as_ref(),
            secret.optional.unwrap_or(false),
            mode_of(secret.default_mode, 0o644),
            lookup,
        )
        .map(Some);
    }
    if let Some(d) = &volume.downward_api {
        let mode = mode_of(d.default_mode, 0o644);
        return d
            .items
            .iter()
            .flatten()
            .map(|item| {
                Ok(File {
                    path: safe_path(&item.path)?,
                    content: downward_value(pod, item)?,
                    mode: mode_of(item.mode, mode),
                })
            })
            .collect::<Result<_, String>>()
            .map(Some);
    }
    if let Some(projected) = &volume.projected {
        let mode = mode_of(projected.default_mode, 0o644);
        let mut files = Vec::new();
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                files.extend(object_files(
                    ResourceKind::ConfigMap,
                    &namespace,
                    &cm.name,
                    cm.items.as_ref(),
                    cm.optional.unwrap_or(false),
                    mode,
                    lookup,
                )?);
            } else if let Some(secret) = &source.secret {
                files.extend(object_files(
                    ResourceKind::Secret,
                    &namespace,
                    &secret.name,
                    secret.items.as_ref(),
                    secret.optional.unwrap_or(false),
                    mode,
                    lookup,
                )?);
            } else if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    files.push(File {
                        path: safe_path(&item.path)?,
                        content: downward_value(pod, item)?,
                        mode: mode_of(item.mode, mode),
                    });
                }
            } else if let Some(projection) = &source.service_account_token {
                let spec = pod.spec.as_ref();
                let key = super::tokens::TokenKey {
                    namespace: namespace.clone(),
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                    account: spec
                        .and_then(|s| s.service_account_name.clone())
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| "default".to_owned()),
                    audience: projection.audience.clone().unwrap_or_default(),
                    expiration_seconds: projection.expiration_seconds.unwrap_or(3600),
                };
                let path = safe_path(&projection.path)?;
                let token = tokens(&key, &path).ok_or_else(|| {
                    format!(
                        "waiting for a token of ServiceAccount {}/{} from the cloud",
                        key.namespace, key.account
                    )
                })?;
                files.push(File {
                    path,
                    content: token.into_bytes(),
                    mode,
                });
            }
        }
        return Ok(Some(files));
    }
    Ok(None)
}

const DATA: &str = "..data";

/// Writes `files` into `dir` atomically, as the kubelet's atomic writer does. Returns whether
/// anything changed (an identical payload is left alone).
pub fn write_atomically(dir: &Path, files: &Files) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let current = std::fs::read_link(dir.join(DATA)).ok();
    if let Some(current) = &current
        && same_payload(&dir.join(current), files)
    {
        return Ok(false);
    }
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for f in files {
        let path = fresh.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // Top-level names point through `..data`; names no longer there go.
    let wanted: std::collections::BTreeSet<_> = files
        .iter()
        .filter_map(|f| f.path.components().next())
        .map(|c| c.as_os_str().to_owned())
        .collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_hidden = name.to_string_lossy().starts_with("..");
        if !is_hidden && !wanted.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = current {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn same_payload(dir: &Path, files: &Files) -> bool {
    let mut count = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                count += 1;
            }
        }
    }
    count == files.len()
        && files.iter().all(|f| {
            std::fs::read(dir.join(&f.path)).is_ok_and(|c| c == f.content)
                && std::fs::metadata(dir.join(&f.path)).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o777 == f.mode
                })
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metamanager::{Object, held};

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "apps", "uid": "u1", "labels": {"tier": "edge"}},
            "spec": {
                "containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "64Mi"}}}],
                "volumes": [
                    {"name": "settings", "configMap": {"name": "settings"}},
                    {"name": "picked", "configMap": {"name": "settings", "items": [{"key": "MODE", "path": "conf/mode", "mode": 0o600}]}},
                    {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                    {"name": "absent", "configMap": {"name": "nope"}},
                    {"name": "maybe", "configMap": {"name": "nope", "optional": true}},
                    {"name": "self", "downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory"}}]}},
                    {"name": "all", "projected": {"sources": [
                        {"configMap": {"name": "settings", "items": [{"key": "LEVEL", "path": "level"}]}},
                        {"secret": {"name": "creds"}}]}},
                    {"name": "escape", "configMap": {"name": "settings", "items": [{"key": "MODE", "path": "../x"}]}},
                    {"name": "scratch", "emptyDir": {}}
                ]
            }
        }))
        .expect("pod")
    }

    fn lookup(kind: ResourceKind, ns: &str, name: &str) -> Option<Arc<Object>> {
        let object = match (kind, ns, name) {
            (ResourceKind::ConfigMap, "apps", "settings") => {
                serde_json::json!({"data": {"MODE": "fast", "LEVEL": "3"}})
            }
            (ResourceKind::Secret, "apps", "creds") => {
                serde_json::json!({"data": {"password": "czNjcjN0"}})
            }
            _ => return None,
        };
        Some(held(kind, ns, name, object))
    }

    type Listed = Vec<(String, String, u32)>;

    fn files(name: &str) -> Result<Option<Listed>, String> {
        render(&pod(), name, &lookup, &|_, _| None).map(|f| {
            f.map(|f| {
                f.into_iter()
                    .map(|f| {
                        (
                            f.path.display().to_string(),
                            String::from_utf8_lossy(&f.content).into_owned(),
                            f.mode,
                        )
                    })
                    .collect()
            })
        })
    }

    #[test]
    fn volumes_render_as_the_kubelet_writes_them() {
        let f = |p: &str, c: &str, m: u32| (p.to_owned(), c.to_owned(), m);
        assert_eq!(
            files("settings"),
            Ok(Some(vec![f("LEVEL", "3", 0o644), f("MODE", "fast", 0o644)]))
        );
        assert_eq!(
            files("picked"),
            Ok(Some(vec![f("conf/mode", "fast", 0o600)]))
        );
        assert_eq!(
            files("creds"),
            Ok(Some(vec![f("password", "s3cr3t", 0o400)]))
        );
        assert_eq!(files("absent"), Err("configmap \"nope\" not found".into()));
        assert_eq!(files("maybe"), Ok(Some(Vec::new())));
        assert_eq!(
            files("self"),
            Ok(Some(vec![
                f("name", "p", 0o644),
                f("labels", "tier=\"edge\"\n", 0o644),
                f("mem", "64Mi", 0o644)
            ]))
        );
        assert_eq!(
            files("all"),
            Ok(Some(vec![
                f("level", "3", 0o644),
                f("password", "s3cr3t", 0o644)
            ]))
        );
        assert!(files("escape").is_err());
        assert_eq!(files("scratch"), Ok(None));
    }

    #[test]
    fn the_service_account_volume_holds_the_token_the_ca_and_the_namespace() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "apps", "uid": "u1"},
            "spec": {"serviceAccountName": "robot", "containers": [],
                     "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token", "audience": "vault"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]}
        }))
        .expect("pod");
        let lookup = |kind, ns: &str, name: &str| match (kind, ns, name) {
            (ResourceKind::ConfigMap, "apps", "kube-root-ca.crt") => Some(held(
                kind,
                ns,
                name,
                serde_json::json!({"data": {"ca.crt": "CA"}}),
            )),
            _ => None,
        };
        let tokens = |key: &super::super::tokens::TokenKey, path: &Path| {
            assert_eq!(path, Path::new("token"));
            let expected = ("apps", "robot", "vault", 3607, "u1");
            let got = (
                key.namespace.as_str(),
                key.account.as_str(),
                key.audience.as_str(),
                key.expiration_seconds,
                key.pod_uid.as_str(),
            );
            (got == expected).then(|| "jwt".to_owned())
        };
        let files = render(&pod, "kube-api-access-abcde", &lookup, &tokens)
            .expect("rendered")
            .expect("a volume of files");
        let listed: Vec<(String, String, u32)> = files
            .into_iter()
            .map(|f| {
                let content = String::from_utf8_lossy(&f.content).into_owned();
                (f.path.display().to_string(), content, f.mode)
            })
            .collect();
        let f = |p: &str, c: &str| (p.to_owned(), c.to_owned(), 0o644);
        assert_eq!(
            listed,
            vec![f("token", "jwt"), f("ca.crt", "CA"), f("namespace", "apps")]
        );
        let waiting = render(&pod, "kube-api-access-abcde", &lookup, &|_, _| None);
        assert_eq!(
            waiting,
            Err("waiting for a token of ServiceAccount apps/robot from the cloud".into())
        );
    }

    #[test]
    fn updates_swap_the_whole_payload_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path().join("settings");
        let file = |p: &str, c: &str| File {
            path: p.into(),
            content: c.as_bytes().to_vec(),
            mode: 0o644,
        };
        assert!(
            write_atomically(&v, &vec![file("MODE", "fast"), file("conf/a", "1")]).expect("write")
        );
        assert_eq!(
            std::fs::read_to_string(v.join("MODE")).expect("read"),
            "fast"
        );
        assert_eq!(
            std::fs::read_to_string(v.join("conf/a")).expect("read"),
            "1"
        );
        assert!(
            !write_atomically(&v, &vec![file("MODE", "fast"), file("conf/a", "1")]).expect("write"),
            "the same payload is not written again"
        );
        let before = std::fs::read_link(v.join("..data")).expect("link");
        assert!(write_atomically(&v, &vec![file("MODE", "slow")]).expect("write"));
        assert_eq!(
            std::fs::read_to_string(v.join("MODE")).expect("read"),
            "slow"
        );
        assert!(!v.join("conf").exists(), "a name no longer there goes");
        assert!(!v.join(before).exists(), "the old payload goes");
    }
}
