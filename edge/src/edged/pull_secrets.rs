//! `imagePullSecrets`: registry credentials from the Secrets a pod names, as the kubelet reads
//! them (`kubernetes.io/dockerconfigjson` and the older `kubernetes.io/dockercfg`), by registry
//! host. A Secret the edge does not hold, or one that does not parse, is skipped with a warning
//! and the image is pulled without it, as the kubelet does; the registry's refusal then says
//! what is missing.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use wedge_core::protocol::ResourceKind;
use wedge_core::runtime::PullAuth;

use super::env::Lookup;
use super::volumes::data_of;

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
fn credentials(object: &serde_json::Value) -> Result<BTreeMap<String, PullAuth>, String> {
    let data = data_of(ResourceKind::Secret, object)?;
    let (config, nested) = if let Some(c) = data.get(".dockerconfigjson") {
        (c, true)
    } else if let Some(c) = data.get(".dockercfg") {
        (c, false)
    } else {
        return Err("it holds neither .dockerconfigjson nor .dockercfg".to_owned());
    };
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

/// The credentials of the pod's `imagePullSecrets`, by registry host (the first Secret naming a
/// host wins).
pub fn pull_auth(pod: &Pod, lookup: &Lookup<'_>) -> BTreeMap<String, PullAuth> {
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
        let Some(object) = lookup(ResourceKind::Secret, &namespace, &secret.name) else {
            tracing::warn!(pod = ?pod.metadata.name, secret = secret.name, "an image pull secret is not on this edge: pulling without it");
            continue;
        };
        match credentials(&object) {
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
    out
}

#[cfg(test)]
mod tests {
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
        let lookup = move |kind: ResourceKind, _: &str, name: &str| match (kind, name) {
            (ResourceKind::Secret, "regcred") => Some(
                serde_json::json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(&json)}}),
            ),
            (ResourceKind::Secret, "legacy") => {
                Some(serde_json::json!({"data": {".dockercfg": b64(&cfg)}}))
            }
            (ResourceKind::Secret, "junk") => Some(serde_json::json!({"data": {"x": b64("y")}})),
            _ => None,
        };
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": {"containers": [], "imagePullSecrets": [
                {"name": "missing"}, {"name": "junk"}, {"name": "regcred"}, {"name": "legacy"}]}
        }))
        .expect("pod");
        let auth = pull_auth(&pod, &lookup);
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
}
