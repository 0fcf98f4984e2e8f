//! A pod network for edges whose containerd has none configured.
//!
//! containerd's CRI plugin gives each pod sandbox a network namespace and asks the CNI plugins
//! named by the first config in its `conf_dir` (`/etc/cni/net.d` by default) to wire it up.
//! With no config there, every non-host-network sandbox fails ("cni config uninitialized").
//! Kubernetes nodes get theirs from the cluster's network add-on; a lone edge has none, so
//! [`write_bridge_config`] writes the simplest one that works: a Linux bridge on the node with
//! the gateway address, addresses from `host-local` in `subnet`, masquerading for traffic
//! leaving the node, hairpin mode so a pod reaches itself through a port mapping, and `portmap`
//! for `hostPort`s. Pods on one edge reach each other and the outside; pods on different edges
//! do not (that needs an overlay, which is not Wedge's business).
//!
//! It never replaces an existing config: an operator's network wins. containerd notices a new
//! file in `conf_dir` without a restart. The plugins themselves (`bridge`, `host-local`,
//! `portmap`) come from the distribution's `containernetworking-plugins` package.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The file written, named to sort after an operator's `10-*.conflist`.
pub const CONFIG_FILE: &str = "90-wedge-bridge.conflist";

/// Why the bridge config was not written.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// `subnet` is not `address/prefix`.
    #[error("{subnet:?} is not a subnet (address/prefix, such as 10.88.0.0/16)")]
    BadSubnet {
        /// As given.
        subnet: String,
    },
    /// The bridge name is not a usable interface name.
    #[error("{name:?} is not a bridge name (1 to 15 letters, digits, '-', '_' or '.')")]
    BadBridgeName {
        /// As given.
        name: String,
    },
    /// The directory could not be read or the file written.
    #[error("{path}: {source}")]
    Io {
        /// What was being read or written.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

/// Writes a bridge network config into `conf_dir` unless it holds a network config already
/// (`*.conf`, `*.conflist`, `*.json`, as containerd's loader reads). Returns the file written,
/// or `None` when one was there. `data_dir` is where `host-local` keeps its leases.
pub fn write_bridge_config(
    conf_dir: &Path,
    bridge_name: &str,
    subnet: &str,
    data_dir: &Path,
) -> Result<Option<PathBuf>, CniError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| CniError::Io { path, source }
    };
    let config = bridge_config(bridge_name, subnet, data_dir)?;
    std::fs::create_dir_all(conf_dir).map_err(io_error(conf_dir))?;
    for entry in std::fs::read_dir(conf_dir).map_err(io_error(conf_dir))? {
        let path = entry.map_err(io_error(conf_dir))?.path();
        let is_config = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"));
        if is_config {
            tracing::debug!(existing = %path.display(), "CNI config present; not writing ours");
            return Ok(None);
        }
    }
    let path = conf_dir.join(CONFIG_FILE);
    // Written beside and renamed, so containerd's watcher never reads half a file.
    let partial = conf_dir.join(format!(".{CONFIG_FILE}.partial"));
    std::fs::write(&partial, config).map_err(io_error(&partial))?;
    std::fs::rename(&partial, &path).map_err(io_error(&path))?;
    tracing::info!(path = %path.display(), bridge = bridge_name, subnet, "wrote a CNI bridge config");
    Ok(Some(path))
}

/// The conflist's text.
pub fn bridge_config(bridge_name: &str, subnet: &str, data_dir: &Path) -> Result<String, CniError> {
    check_subnet(subnet)?;
    let name_ok = !bridge_name.is_empty()
        && bridge_name.len() <= 15
        && bridge_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(CniError::BadBridgeName {
            name: bridge_name.to_owned(),
        });
    }
    let default_route = if subnet.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    let config = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "wedge",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge_name,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": default_route }],
                    "dataDir": data_dir,
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    Ok(format!("{config:#}\n"))
}

fn check_subnet(subnet: &str) -> Result<(), CniError> {
    let bad = || CniError::BadSubnet {
        subnet: subnet.to_owned(),
    };
    let (address, prefix) = subnet.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_a_bridge_with_host_local_and_portmap() {
        let text = bridge_config("wedge0", "10.88.0.0/16", Path::new("/var/lib/wedge/cni"))
            .expect("valid");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "wedge0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(bridge["ipam"]["dataDir"], "/var/lib/wedge/cni");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let data = Path::new("/d");
        for subnet in ["10.88.0.0", "10.88.0.0/33", "nope/8", "10.88.0.0/x"] {
            assert!(
                matches!(
                    bridge_config("b", subnet, data),
                    Err(CniError::BadSubnet { .. })
                ),
                "{subnet}"
            );
        }
        assert!(bridge_config("b", "fd00::/64", data).is_ok());
        for name in ["", "a-bridge-name-too-long", "bad name"] {
            assert!(
                matches!(
                    bridge_config(name, "10.0.0.0/8", data),
                    Err(CniError::BadBridgeName { .. })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn writes_only_into_an_empty_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("net.d");
        let data = dir.path().join("cni");
        let written = write_bridge_config(&conf, "wedge0", "10.88.0.0/16", &data).expect("writes");
        assert_eq!(written, Some(conf.join(CONFIG_FILE)));
        let first = std::fs::read_to_string(conf.join(CONFIG_FILE)).expect("read");
        assert!(first.contains("\"wedge0\""));
        // Ours is there now: a second call leaves it alone.
        let again = write_bridge_config(&conf, "other0", "10.99.0.0/16", &data).expect("ok");
        assert_eq!(again, None);
        assert_eq!(
            std::fs::read_to_string(conf.join(CONFIG_FILE)).expect("read"),
            first
        );
        // An operator's config also wins; other files do not count.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir_all(&theirs).expect("mkdir");
        std::fs::write(theirs.join("README"), "notes").expect("write");
        std::fs::write(theirs.join("10-flannel.conflist"), "{}").expect("write");
        assert_eq!(
            write_bridge_config(&theirs, "wedge0", "10.88.0.0/16", &data).expect("ok"),
            None
        );
        assert!(!theirs.join(CONFIG_FILE).exists());
    }
}
