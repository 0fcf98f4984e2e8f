//! `imagePullSecrets`: registry credentials from the Secrets a pod names, as the kubelet reads
//! them (`kubernetes.io/dockerconfigjson` and the older `kubernetes.io/dockercfg`), by registry
//! host. A Secret the edge does not hold, or one that does not parse, is skipped with a warning
//! and the image is pulled without it, as the kubelet does; the registry's refusal then says
//! what is missing.
//!
//! Beside them, the edge's own credentials ([`node_credentials`]): docker config files the
//! operator puts on the edge, as the kubelet reads `/var/lib/kubelet/config.json` and
//! `~/.docker/config.json`. They serve both runtimes, for every pod, wherever no pull secret of the
//! pod names the registry.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use wedge_core::protocol::ResourceKind;
use wedge_core::runtime::PullAuth;

use super::objects::{Lookup, key_data};

/// The registry host a docker config key names: `https://index.docker.io/v1/` is `docker.io`,
/// `registry.local:5000/path` is `registry.local:5000`.
fn host_of(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

fn auth_of(entry: &serde_json::Value) -> Option<PullAuth> {
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(token) = field("registrytoken") {
        return Some(PullAuth::Bearer(token.to_owned()));
    }
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Some(PullAuth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(field("auth")?)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some(PullAuth::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// The credentials a Secret holds, by registry host.
fn credentials(data: &BTreeMap<String, Vec<u8>>) -> Result<BTreeMap<String, PullAuth>, String> {
    let (config, nested) = if let Some(c) = data.get(".dockerconfigjson") {
        (c, true)
    } else if let Some(c) = data.get(".dockercfg") {
        (c, false)
    } else {
        return Err("it holds neither .dockerconfigjson nor .dockercfg".to_owned());
    };
    docker_config(config, nested)
}

/// The credentials of a docker config (`config.json`, whose entries are under `auths`; or the
/// older `.dockercfg`, whose entries are the object itself), by registry host.
fn docker_config(config: &[u8], nested: bool) -> Result<BTreeMap<String, PullAuth>, String> {
    let json: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| format!("its docker config is not JSON: {e}"))?;
    let auths = if nested {
        json.get("auths")
    } else {
        Some(&json)
    };
    let auths = auths
        .and_then(|a| a.as_object())
        .ok_or("its docker config has no auths")?;
    Ok(auths
        .iter()
        .filter_map(|(key, entry)| Some((host_of(key), auth_of(entry)?)))
        .collect())
}

/// The edge's own registry credentials: the docker config files among `paths` that exist
/// (`config.json` format), the first naming a host winning. A file that cannot be read or
/// parsed is skipped with a warning naming it. Reads files: call it off the async workers.
pub fn node_credentials(paths: &[std::path::PathBuf]) -> BTreeMap<String, PullAuth> {
    let mut out = BTreeMap::new();
    for path in paths {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read registry credentials");
                continue;
            }
        };
        match docker_config(&bytes, true) {
            Ok(found) => {
                tracing::info!(path = %path.display(), registries = ?found.keys().collect::<Vec<_>>(), "registry credentials for every pod");
                for (host, auth) in found {
                    out.entry(host).or_insert(auth);
                }
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), error, "registry credentials cannot be used")
            }
        }
    }
    out
}

/// The credentials of the pod's `imagePullSecrets`, by registry host (the first Secret naming a
/// host wins), then the edge's own (`node`) for hosts no Secret names.
pub fn pull_auth(
    pod: &Pod,
    lookup: &Lookup<'_>,
    node: &BTreeMap<String, PullAuth>,
) -> BTreeMap<String, PullAuth> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = BTreeMap::new();
    for secret in pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
    {
        let Some(data) = key_data(lookup, ResourceKind::Secret, &namespace, &secret.name) else {
            tracing::warn!(pod = ?pod.metadata.name, secret = secret.name, "an image pull secret is not on this edge: pulling without it");
            continue;
        };
        match data.and_then(|d| credentials(d.map())) {
            Ok(found) => {
                for (host, auth) in found {
                    out.entry(host).or_insert(auth);
                }
            }
            Err(error) => {
                tracing::warn!(pod = ?pod.metadata.name, secret = secret.name, error, "an image pull secret cannot be used")
            }
        }
    }
    for (host, auth) in node {
        out.entry(host.clone()).or_insert_with(|| auth.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::objects::holding;
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_configs_become_credentials_per_registry() {
        let json = serde_json::json!({"auths": {
            "registry.local:5000": {"auth": b64("edge:s3cret")},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"}
        }})
        .to_string();
        let cfg = serde_json::json!({"other.example": {"auth": b64("old:style")}}).to_string();
        let lookup = holding(move |kind, _, name| match (kind, name) {
            (ResourceKind::Secret, "regcred") => Some(
                serde_json::json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(&json)}}),
            ),
            (ResourceKind::Secret, "legacy") => {
                Some(serde_json::json!({"data": {".dockercfg": b64(&cfg)}}))
            }
            (ResourceKind::Secret, "junk") => Some(serde_json::json!({"data": {"x": b64("y")}})),
            _ => None,
        });
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": {"containers": [], "imagePullSecrets": [
                {"name": "missing"}, {"name": "junk"}, {"name": "regcred"}, {"name": "legacy"}]}
        }))
        .expect("pod");
        let auth = pull_auth(&pod, &lookup, &BTreeMap::new());
        let basic = |u: &str, p: &str| PullAuth::Basic {
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(
            auth.get("registry.local:5000"),
            Some(&basic("edge", "s3cret"))
        );
        assert_eq!(auth.get("docker.io"), Some(&basic("hub", "pw")));
        assert_eq!(auth.get("other.example"), Some(&basic("old", "style")));
        assert_eq!(auth.len(), 3);
    }

    #[test]
    fn the_edges_own_credentials_serve_registries_no_pull_secret_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("config.json");
        let second = dir.path().join("home-config.json");
        let broken = dir.path().join("broken.json");
        std::fs::write(
            &first,
            serde_json::json!({"auths": {"private.local:5000": {"auth": b64("edge:pw")}}})
                .to_string(),
        )
        .expect("write");
        std::fs::write(
            &second,
            serde_json::json!({"auths": {
                "private.local:5000": {"auth": b64("shadowed:pw")},
                "https://index.docker.io/v1/": {"auth": b64("hub:pw")}
            }})
            .to_string(),
        )
        .expect("write");
        std::fs::write(&broken, "not json").expect("write");
        let node = node_credentials(&[dir.path().join("absent.json"), broken, first, second]);
        let basic = |u: &str, p: &str| PullAuth::Basic {
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(node.get("private.local:5000"), Some(&basic("edge", "pw")));
        assert_eq!(node.get("docker.io"), Some(&basic("hub", "pw")));

        // A pod's own pull secret wins for its registry; the edge's fill in the rest.
        let json = serde_json::json!({"auths": {"docker.io": {"auth": b64("pod:pw")}}}).to_string();
        let lookup = holding(move |_, _, _| {
            Some(serde_json::json!({"data": {".dockerconfigjson": b64(&json)}}))
        });
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "imagePullSecrets": [{"name": "mine"}]}
        }))
        .expect("pod");
        let auth = pull_auth(&pod, &lookup, &node);
        assert_eq!(auth.get("docker.io"), Some(&basic("pod", "pw")));
        assert_eq!(auth.get("private.local:5000"), Some(&basic("edge", "pw")));
    }
}
