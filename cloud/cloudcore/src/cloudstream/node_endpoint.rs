//! Where an edge's Node says its kubelet is: at CloudStream.
//!
//! kube-apiserver picks a node's address by `--kubelet-preferred-address-types`, by default
//! `Hostname,InternalDNS,InternalIP,ExternalDNS,ExternalIP`, and the port from
//! `daemonEndpoints.kubeletEndpoint.Port`. An edge's own hostname and IP are rarely reachable from
//! the API server (NAT, other networks), so cloudcore writes its own address as the edge Node's
//! `InternalDNS` and drops the edge's `Hostname` address: with the default preference the API
//! server dials CloudStream, and `InternalIP` (what `kubectl get nodes -o wide` shows) stays the
//! edge's own. Regular nodes are untouched.

use k8s_openapi::api::core::v1::{DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus};

/// Rewrites an edge's reported status so the API server reaches its kubelet endpoint at
/// `address:port` (CloudStream).
pub fn route_to(status: &mut NodeStatus, address: &str, port: u16) {
    let mut addresses = vec![NodeAddress {
        type_: "InternalDNS".into(),
        address: address.to_owned(),
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
            port: i32::from(port),
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_server_is_sent_to_cloudstream_and_the_edge_ip_stays() {
        let mut status = NodeStatus {
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
        };
        route_to(&mut status, "cloud.example.com", 10350);
        let addresses: Vec<(&str, &str)> = status
            .addresses
            .iter()
            .flatten()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect();
        assert_eq!(
            addresses,
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
}
