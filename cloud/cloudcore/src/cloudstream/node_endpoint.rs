//! Where an edge's Node says its kubelet is: at CloudStream.
//!
//! kube-apiserver picks a node's address by `--kubelet-preferred-address-types`, by default
//! `Hostname,InternalDNS,InternalIP,ExternalDNS,ExternalIP` (metrics-server's default is the
//! same), and the port from `daemonEndpoints.kubeletEndpoint.Port`. An edge's own hostname and IP
//! are rarely reachable from the API server (NAT, other networks), so cloudcore writes an address
//! of CloudStream as the edge Node's `InternalDNS` and drops the edge's `Hostname` address: with
//! the default preference the API server dials CloudStream, and `InternalIP` (what `kubectl get
//! nodes -o wide` shows) stays the edge's own. Regular nodes are untouched.
//!
//! The address is either the one CloudStream is advertised at, the same for every edge, or, with
//! a node domain (`--stream-node-domain`), `<node>.<domain>`: a name per edge, which a wildcard
//! DNS record sends to CloudStream. Only the second lets a request whose path names no pod
//! (metrics-server's `/metrics/resource`) say which edge it is for: by the name it was sent to
//! ([`addressed_node`]).

use k8s_openapi::api::core::v1::{DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus};

/// The kubelet endpoint cloudcore gives edges' Nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletEndpoint {
    /// CloudStream's advertised address, every edge's when there is no node domain.
    pub advertise: String,
    /// The domain under which each edge has a name of its own (`<node>.<domain>`).
    pub node_domain: Option<String>,
    /// CloudStream's port.
    pub port: u16,
}

impl KubeletEndpoint {
    /// The address `node`'s Node names.
    pub fn address_of(&self, node: &str) -> String {
        match &self.node_domain {
            Some(domain) => format!("{node}.{domain}"),
            None => self.advertise.clone(),
        }
    }

    /// Rewrites `node`'s reported status so the API server reaches its kubelet endpoint at
    /// CloudStream.
    pub fn route(&self, node: &str, status: &mut NodeStatus) {
        let mut addresses = vec![NodeAddress {
            type_: "InternalDNS".into(),
            address: self.address_of(node),
        }];
        addresses.extend(
            status
                .addresses
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ != "Hostname" && a.type_ != "InternalDNS"),
        );
        status.addresses = Some(addresses);
        status.daemon_endpoints = Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(self.port),
            }),
        });
    }
}

/// The node a request was sent to by name: `host` (a `Host` header or `:authority`, port and
/// all) is `<node>.<domain>`. `None` for any other name, such as the shared address.
pub fn addressed_node(host: &str, domain: &str) -> Option<String> {
    let name = match host.rsplit_once(':') {
        // `[::1]:10250`, `name:10250`; a bare IPv6 address has more colons and no brackets.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let node = name.strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?;
    (!node.is_empty()).then(|| node.to_owned())
}

/// A node domain as the operator gives it (`edges.example.com`, also `.edges.example.com` or
/// `*.edges.example.com`), or why it is not one.
pub fn node_domain(given: &str) -> Result<String, String> {
    let domain = given
        .trim()
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!(
            "{given:?} is not a DNS domain (labels of letters, digits and '-', joined by '.')"
        ));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported() -> NodeStatus {
        NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.168.7.20".into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "gateway-7".into(),
                },
            ]),
            ..NodeStatus::default()
        }
    }

    fn addresses(status: &NodeStatus) -> Vec<(&str, &str)> {
        status
            .addresses
            .iter()
            .flatten()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect()
    }

    #[test]
    fn the_api_server_is_sent_to_cloudstream_and_the_edge_ip_stays() {
        let endpoint = KubeletEndpoint {
            advertise: "cloud.example.com".into(),
            node_domain: None,
            port: 10350,
        };
        let mut status = reported();
        endpoint.route("gateway-7", &mut status);
        assert_eq!(
            addresses(&status),
            [
                ("InternalDNS", "cloud.example.com"),
                ("InternalIP", "192.168.7.20")
            ]
        );
        assert_eq!(
            status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|k| k.port),
            Some(10350)
        );
    }

    #[test]
    fn with_a_node_domain_each_edge_has_a_name_of_its_own() {
        let endpoint = KubeletEndpoint {
            advertise: "cloud.example.com".into(),
            node_domain: Some("edges.example.com".into()),
            port: 10250,
        };
        let mut status = reported();
        endpoint.route("gateway-7", &mut status);
        assert_eq!(
            addresses(&status)[0],
            ("InternalDNS", "gateway-7.edges.example.com")
        );
    }

    #[test]
    fn the_node_is_read_from_the_name_the_request_was_sent_to() {
        let node = |host| addressed_node(host, "edges.example.com");
        assert_eq!(
            node("gateway-7.edges.example.com:10250").as_deref(),
            Some("gateway-7")
        );
        assert_eq!(
            node("Gateway-7.Edges.Example.com.").as_deref(),
            Some("gateway-7")
        );
        assert_eq!(
            node("gw.site-1.edges.example.com").as_deref(),
            Some("gw.site-1")
        );
        assert_eq!(node("cloud.example.com:10250"), None);
        assert_eq!(node("edges.example.com"), None);
        assert_eq!(node(".edges.example.com"), None);
        assert_eq!(node("127.0.0.1:10250"), None);
        assert_eq!(node("[::1]:10250"), None);
        assert_eq!(node("xedges.example.com"), None);
    }

    #[test]
    fn node_domains_are_checked_and_normalised() {
        assert_eq!(
            node_domain("*.Edges.example.com.").as_deref(),
            Ok("edges.example.com")
        );
        assert_eq!(node_domain(".edges.test").as_deref(), Ok("edges.test"));
        for bad in [
            "",
            "*.",
            "edges..test",
            "edges_test.com",
            "-edges.test",
            "a b",
        ] {
            assert!(node_domain(bad).is_err(), "{bad:?}");
        }
    }
}
