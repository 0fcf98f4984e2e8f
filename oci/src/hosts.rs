//! Where the images of a registry are fetched from: containerd's registry host configuration
//! (`config_path`, a `certs.d` directory of `<registry>/hosts.toml` files), read by the Wasm
//! runtime too, so that one directory configures mirrors and plain-HTTP registries for both of
//! an edge's runtimes. An air-gapped edge needs this: a pod naming `docker.io/library/busybox`
//! is served from a local registry, whichever runtime runs it.
//!
//! The format is containerd's (`docs/hosts.md`): `server = "https://R"` (the registry itself,
//! default `https://R`), then `[host."<url>"]` mirrors tried in file order before it, each with
//! `capabilities` (`pull`, `resolve`; a mirror without `resolve` is only asked for content by
//! digest) and `skip_verify`. A registry without a directory of its own uses `_default`.
//! Requests to a mirror carry `?ns=<registry>`, as containerd's do. `http://` means plain HTTP.
//! Only `/v2` (or no path) is understood as a URL's path; `ca`, client certificates, headers and
//! `override_path` are not read (a host that needs them is skipped, with a warning).
//!
//! `--insecure-registry R` is shorthand for a `R/hosts.toml` whose `server` is `http://R`: it
//! applies when R's file names no server of its own.
//!
//! Files are read when a registry is first asked for and again whenever they change (by
//! modification time and size), as containerd reads them at every pull; a broken file is logged
//! once per change, with its path, and its registry is then reached the default way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use oci_client::Reference;
use serde::Deserialize;

/// The name of the directory whose `hosts.toml` serves registries without one of their own.
pub const DEFAULT_DIR: &str = "_default";

/// What a request needs of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Turning a tag into a manifest (containerd's `resolve`).
    Resolve,
    /// Fetching content by digest (containerd's `pull`).
    Pull,
}

/// One place to ask for a registry's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP rather than HTTPS.
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Requests name the registry they are for (`?ns=`): a mirror, or a server elsewhere.
    pub mirror: bool,
}

impl Endpoint {
    /// The reference to ask this endpoint with: `reference` itself for the registry's own
    /// host, else one routed to the mirror.
    pub fn reference(&self, reference: &Reference) -> Reference {
        let mut routed = reference.clone();
        if self.mirror {
            routed.set_mirror_registry(self.host.clone());
        }
        routed
    }

    /// `http://host` or `https://host`, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// Why a `hosts.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Not TOML, or not the shape of a `hosts.toml`.
    #[error("not a valid hosts.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// A `server` or `host` URL Wedge cannot use.
    #[error("{url:?}: {reason}")]
    Url {
        /// As written.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed `hosts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsFile {
    /// The registry's own endpoint, when the file names one.
    pub server: Option<Host>,
    /// Mirrors, in file order.
    pub mirrors: Vec<Host>,
}

/// A `server` or `[host]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `host[:port]`.
    pub host: String,
    /// `http://`.
    pub plain_http: bool,
    /// `skip_verify`.
    pub skip_verify: bool,
    /// `pull` among the capabilities.
    pub pull: bool,
    /// `resolve` among the capabilities.
    pub resolve: bool,
}

#[derive(Deserialize)]
struct RawFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    #[serde(default)]
    host: OrderedHosts,
}

#[derive(Deserialize)]
struct RawHost {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<toml::Value>,
    client: Option<toml::Value>,
    header: Option<toml::Value>,
    override_path: Option<bool>,
}

/// `[host."…"]` tables in the order the file gives them (the order mirrors are tried in).
#[derive(Default)]
struct OrderedHosts(Vec<(String, RawHost)>);

impl<'de> Deserialize<'de> for OrderedHosts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedHosts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of hosts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedHosts, A::Error> {
                let mut hosts = Vec::new();
                while let Some(entry) = map.next_entry::<String, RawHost>()? {
                    hosts.push(entry);
                }
                Ok(OrderedHosts(hosts))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Splits `http://host:port/v2` into its host and whether it is plain HTTP.
fn parse_url(url: &str) -> Result<(String, bool), HostsError> {
    let bad = |reason: &str| HostsError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (plain_http, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else if url.contains("://") {
        return Err(bad("only http:// and https:// are understood"));
    } else {
        (false, url)
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !matches!(path, "" | "/" | "/v2" | "/v2/") {
        return Err(bad(
            "a path other than /v2 is not supported (registries are asked at <host>/v2/)",
        ));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if host.is_empty() || !host.chars().all(valid) {
        return Err(bad("not a host[:port]"));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(bad("the port is not a number"));
    }
    Ok((host.to_owned(), plain_http))
}

fn capabilities(list: Option<&[String]>) -> (bool, bool) {
    match list {
        None => (true, true),
        Some(list) => (
            list.iter().any(|c| c == "pull"),
            list.iter().any(|c| c == "resolve"),
        ),
    }
}

impl HostsFile {
    /// Parses a `hosts.toml`. Hosts that need settings Wedge does not read are left out, with a
    /// warning naming `origin`; a bad URL fails the whole file.
    pub fn parse(text: &str, origin: &Path) -> Result<HostsFile, HostsError> {
        let raw: RawFile = toml::from_str(text)?;
        let server = match &raw.server {
            Some(url) => {
                let (host, plain_http) = parse_url(url)?;
                let (pull, resolve) = capabilities(raw.capabilities.as_deref());
                Some(Host {
                    host,
                    plain_http,
                    skip_verify: raw.skip_verify.unwrap_or(false),
                    pull,
                    resolve,
                })
            }
            None => None,
        };
        let mut mirrors = Vec::new();
        for (url, entry) in raw.host.0 {
            let (host, plain_http) = parse_url(&url)?;
            let unsupported: Vec<&str> = [
                ("ca", entry.ca.is_some()),
                ("client", entry.client.is_some()),
                ("header", entry.header.is_some()),
                ("override_path", entry.override_path == Some(true)),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !unsupported.is_empty() {
                tracing::warn!(
                    file = %origin.display(),
                    host = url,
                    settings = ?unsupported,
                    "the Wasm runtime does not read these host settings: skipping this host"
                );
                continue;
            }
            let (pull, resolve) = capabilities(entry.capabilities.as_deref());
            mirrors.push(Host {
                host,
                plain_http,
                skip_verify: entry.skip_verify.unwrap_or(false),
                pull,
                resolve,
            });
        }
        Ok(HostsFile { server, mirrors })
    }
}

/// The endpoints to try, in order, for `need` on `registry`: the mirrors `file` gives that can
/// do it, then the server (the file's, else `http://registry` if `insecure`, else
/// `https://registry`).
pub fn plan(registry: &str, file: Option<&HostsFile>, insecure: bool, need: Need) -> Vec<Endpoint> {
    let able = |h: &Host| match need {
        Need::Resolve => h.resolve,
        Need::Pull => h.pull,
    };
    let endpoint = |h: &Host| Endpoint {
        host: h.host.clone(),
        plain_http: h.plain_http,
        skip_verify: h.skip_verify,
        mirror: h.host != registry,
    };
    let mut endpoints: Vec<Endpoint> = file
        .map(|f| f.mirrors.iter().filter(|h| able(h)).map(endpoint).collect())
        .unwrap_or_default();
    match file.and_then(|f| f.server.as_ref()) {
        Some(server) if able(server) => endpoints.push(endpoint(server)),
        // A server that may not do it leaves only the mirrors, as in containerd.
        Some(_) => {}
        None => endpoints.push(Endpoint {
            host: registry.to_owned(),
            plain_http: insecure,
            skip_verify: false,
            mirror: false,
        }),
    }
    endpoints
}

/// A file as last read: its stamp, and what it held (`None`: unusable).
struct Cached {
    stamp: (SystemTime, u64),
    file: Option<HostsFile>,
}

struct Inner {
    dir: Option<PathBuf>,
    insecure: Vec<String>,
    files: Mutex<HashMap<PathBuf, Cached>>,
}

/// The registry host configuration of an edge: a `certs.d` directory (or none) and the
/// registries named insecure on the command line. Cheap to clone; clones share what was read.
#[derive(Clone)]
pub struct RegistryHosts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHosts")
            .field("dir", &self.inner.dir)
            .field("insecure", &self.inner.insecure)
            .finish_non_exhaustive()
    }
}

impl Default for RegistryHosts {
    fn default() -> Self {
        Self::new(None, &[])
    }
}

impl RegistryHosts {
    /// Hosts from `dir` (containerd's `config_path`; `None` or a missing directory: defaults
    /// only), with `insecure` registries (`host:port`) reached over plain HTTP.
    pub fn new(dir: Option<PathBuf>, insecure: &[String]) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                insecure: insecure.to_vec(),
                files: Mutex::default(),
            }),
        }
    }

    /// No directory: only the `insecure` registries differ from the defaults.
    pub fn insecure(insecure: &[String]) -> Self {
        Self::new(None, insecure)
    }

    /// Whether any file may need reading (callers then ask from a blocking thread).
    pub fn reads_files(&self) -> bool {
        self.inner.dir.is_some()
    }

    /// The endpoints to try, in order, for `need` on `registry` (`host[:port]`, as in the
    /// reference: `docker.io` for Docker Hub). Reads the registry's `hosts.toml` when it is
    /// new or changed: blocking when [`Self::reads_files`].
    pub fn endpoints(&self, registry: &str, need: Need) -> Vec<Endpoint> {
        let file = self.inner.dir.as_deref().and_then(|dir| {
            // A registry name is a host: nothing in it may climb out of the directory.
            let own = (!registry.is_empty()
                && !registry.contains(['/', '\\'])
                && !registry.starts_with('.'))
            .then(|| self.read(&dir.join(registry).join("hosts.toml")))
            .flatten();
            own.or_else(|| self.read(&dir.join(DEFAULT_DIR).join("hosts.toml")))
        });
        let insecure = self.inner.insecure.iter().any(|r| r == registry);
        plan(registry, file.as_ref(), insecure, need)
    }

    /// The file at `path` if it exists: parsed again when it changed, else as remembered.
    /// `Some(defaults)` when it exists but cannot be used, so `_default` does not stand in.
    fn read(&self, path: &Path) -> Option<HostsFile> {
        let mut files = self
            .inner
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(_) => {
                files.remove(path);
                return None;
            }
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if let Some(cached) = files.get(path)
            && cached.stamp == stamp
        {
            return Some(cached.file.clone().unwrap_or_default());
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(HostsError::from)
            .and_then(|text| HostsFile::parse(&text, path));
        let file = match parsed {
            Ok(file) => {
                tracing::debug!(file = %path.display(), ?file, "registry hosts read");
                Some(file)
            }
            Err(error) => {
                tracing::warn!(
                    file = %path.display(),
                    %error,
                    "ignoring this registry host configuration: its registry is reached the default way"
                );
                None
            }
        };
        files.insert(
            path.to_owned(),
            Cached {
                stamp,
                file: file.clone(),
            },
        );
        Some(file.unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn parse(text: &str) -> Result<HostsFile, HostsError> {
        HostsFile::parse(text, Path::new("test/hosts.toml"))
    }

    fn hosts(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(Endpoint::url).collect()
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let file = parse(
            r#"
server = "https://registry-1.docker.io"

[host."http://zeta.local:5000"]
  capabilities = ["pull", "resolve"]

[host."https://alpha.local"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"#,
        )
        .unwrap();
        let endpoints = plan("docker.io", Some(&file), false, Need::Resolve);
        assert_eq!(
            hosts(&endpoints),
            [
                "http://zeta.local:5000",
                "https://alpha.local",
                "https://registry-1.docker.io"
            ]
        );
        assert!(endpoints[1].skip_verify && !endpoints[0].skip_verify);
        assert!(endpoints.iter().all(|e| e.mirror));
    }

    #[test]
    fn a_mirror_without_resolve_serves_only_digests() {
        let file = parse("[host.\"http://m:1\"]\n  capabilities = [\"pull\"]\n").unwrap();
        assert_eq!(
            hosts(&plan("r.io", Some(&file), false, Need::Resolve)),
            ["https://r.io"]
        );
        assert_eq!(
            hosts(&plan("r.io", Some(&file), false, Need::Pull)),
            ["http://m:1", "https://r.io"]
        );
    }

    #[test]
    fn the_default_server_is_the_registry_over_https_or_http_when_insecure() {
        assert_eq!(
            hosts(&plan("r.io:5000", None, false, Need::Resolve)),
            ["https://r.io:5000"]
        );
        let insecure = plan("r.io:5000", None, true, Need::Resolve);
        assert_eq!(hosts(&insecure), ["http://r.io:5000"]);
        assert!(!insecure[0].mirror);
        // The file's own server wins over the shorthand.
        let file = parse("server = \"https://r.io:5000\"\n").unwrap();
        assert_eq!(
            hosts(&plan("r.io:5000", Some(&file), true, Need::Resolve)),
            ["https://r.io:5000"]
        );
        // A file with mirrors only keeps the shorthand for the server.
        let file = parse("[host.\"http://m:1\"]\n").unwrap();
        assert_eq!(
            hosts(&plan("r.io:5000", Some(&file), true, Need::Resolve)),
            ["http://m:1", "http://r.io:5000"]
        );
    }

    #[test]
    fn bad_files_and_urls_are_errors_not_panics() {
        for text in [
            "server = ",
            "server = 5",
            "server = \"ftp://r.io\"",
            "server = \"https://\"",
            "server = \"https://r.io:port\"",
            "[host.\"https://m/some/path\"]\n",
            "[host.\"https://m a\"]\n",
            "host = 3\n",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(parse("").unwrap(), HostsFile::default());
        assert!(parse("[host.\"https://m/v2\"]\n").is_ok());
    }

    #[test]
    fn hosts_needing_unread_settings_are_skipped() {
        let file = parse(
            "[host.\"https://a\"]\n  ca = \"/etc/ca.pem\"\n[host.\"https://b\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        )
        .unwrap();
        assert_eq!(file.mirrors.len(), 1);
        assert_eq!(file.mirrors[0].host, "b");
    }

    #[test]
    fn a_mirror_is_asked_with_the_registry_named() {
        let reference = Reference::from_str("docker.io/library/busybox:1.35").unwrap();
        let file = parse("[host.\"http://127.0.0.1:5000\"]\n").unwrap();
        let endpoints = plan(reference.registry(), Some(&file), false, Need::Resolve);
        let routed = endpoints[0].reference(&reference);
        assert_eq!(routed.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(routed.namespace(), Some("docker.io"));
        let direct = endpoints[1].reference(&reference);
        assert_eq!(direct.resolve_registry(), "index.docker.io");
        assert_eq!(direct.namespace(), None);
    }

    #[test]
    fn a_directory_is_read_with_default_fallback_and_rereads_changes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("hosts.toml"), text).unwrap();
        };
        write("docker.io", "[host.\"http://m:1\"]\n");
        write(DEFAULT_DIR, "[host.\"http://everything:2\"]\n");
        let config = RegistryHosts::new(Some(dir.path().to_owned()), &["own:3".into()]);
        assert_eq!(
            hosts(&config.endpoints("docker.io", Need::Resolve)),
            ["http://m:1", "https://docker.io"]
        );
        assert_eq!(
            hosts(&config.endpoints("quay.io", Need::Resolve)),
            ["http://everything:2", "https://quay.io"]
        );
        assert_eq!(
            hosts(&config.endpoints("own:3", Need::Pull)),
            ["http://everything:2", "http://own:3"]
        );
        // A broken file leaves its registry on defaults (not on `_default`), and a fix is read.
        write("docker.io", "this is not toml [[[");
        assert_eq!(
            hosts(&config.endpoints("docker.io", Need::Resolve)),
            ["https://docker.io"]
        );
        write("docker.io", "[host.\"http://fixed:1\"]\n");
        assert_eq!(
            hosts(&config.endpoints("docker.io", Need::Resolve)),
            ["http://fixed:1", "https://docker.io"]
        );
        // Names that would climb out of the directory are not looked up.
        assert_eq!(
            hosts(&config.endpoints("../etc", Need::Resolve)),
            ["http://everything:2", "https://../etc"]
        );
    }
}
