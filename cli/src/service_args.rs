//! The embedded API server's Service ranges, as kube-apiserver's flags: one definition for
//! `wedge apiserver`, `cloudcore` and `wedge up`.

use clap::Args;
use wedge_apiserver::api::services::{PortRange, ServiceCidr, ServiceNetwork};

/// Where Services' cluster IPs and node ports come from.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// The IPv4 CIDR Services' cluster IPs are allocated from (kube-apiserver's flag; kubeadm's
    /// default). The `kubernetes` Service takes its first address.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: ServiceCidr,
    /// The ports NodePort and LoadBalancer Services' node ports are allocated from.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: PortRange,
}

impl ServiceArgs {
    /// The ranges, for `ServerConfig::service_network`.
    pub fn network(&self) -> ServiceNetwork {
        ServiceNetwork {
            cluster_ip_range: self.service_cluster_ip_range,
            node_port_range: self.service_node_port_range,
        }
    }
}
