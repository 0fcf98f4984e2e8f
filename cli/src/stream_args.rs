//! CloudStream's flags (the edges' kubelet endpoint): one definition for `cloudcore` and
//! `wedge up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kube::config::Kubeconfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wedge_cloudcore::cloudstream::StreamSettings;

/// Where the API server reaches edges' logs, exec and port-forward.
#[derive(Args, Debug, Clone)]
pub struct StreamArgs {
    /// Where CloudStream, the kubelet endpoint cloudcore serves for every edge, listens.
    #[arg(long, default_value = "0.0.0.0:10350")]
    pub stream_listen: SocketAddr,
    /// The address the API server dials CloudStream at; edges' Nodes name it as their
    /// InternalDNS address (default: the first --advertise-address, else 127.0.0.1).
    #[arg(long)]
    pub stream_advertise_address: Option<String>,
    /// Give each edge's Node its own CloudStream name, `<node>.<DOMAIN>`, instead of the shared
    /// address, so that scrapes whose path names no pod (metrics-server's /metrics/resource)
    /// reach the right edge. `*.<DOMAIN>` must resolve to CloudStream (a wildcard DNS record);
    /// the serving certificate covers it.
    #[arg(long, value_name = "DOMAIN", value_parser = node_domain)]
    pub stream_node_domain: Option<String>,
    /// The CA of the API server's kubelet client certificate (kube-apiserver's
    /// --kubelet-client-certificate); default: the cluster CA in the kubeconfig cloudcore uses.
    #[arg(long)]
    pub kubelet_client_ca: Option<PathBuf>,
}

impl StreamArgs {
    /// The settings, for a cloudcore using `kubeconfig` and advertised as `advertise`.
    pub fn settings(
        &self,
        kubeconfig: &Path,
        advertise: &[String],
    ) -> anyhow::Result<StreamSettings> {
        let pem = match &self.kubelet_client_ca {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading --kubelet-client-ca {}", path.display()))?,
            None => cluster_ca(kubeconfig)?,
        };
        let client_ca: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .context("reading the kubelet client CA")?;
        anyhow::ensure!(
            !client_ca.is_empty(),
            "no certificate in the kubelet client CA: pass --kubelet-client-ca"
        );
        let advertise = self
            .stream_advertise_address
            .clone()
            .or_else(|| advertise.first().cloned())
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        Ok(StreamSettings {
            listen: self.stream_listen,
            advertise,
            node_domain: self.stream_node_domain.clone(),
            client_ca,
        })
    }
}

fn node_domain(given: &str) -> Result<String, String> {
    wedge_cloudcore::cloudstream::node_endpoint::node_domain(given)
}

/// The PEM of the CA of the current context's cluster in `kubeconfig`.
fn cluster_ca(kubeconfig: &Path) -> anyhow::Result<Vec<u8>> {
    let config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let context = config
        .current_context
        .as_deref()
        .and_then(|name| config.contexts.iter().find(|c| c.name == name))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = config
        .clusters
        .iter()
        .find(|c| context.as_deref().is_none_or(|name| c.name == name))
        .and_then(|c| c.cluster.as_ref())
        .context("the kubeconfig names no cluster: pass --kubelet-client-ca")?;
    if let Some(data) = &cluster.certificate_authority_data {
        use base64::Engine as _;
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("the kubeconfig's certificate-authority-data is not base64");
    }
    let file = cluster.certificate_authority.as_deref().context(
        "the kubeconfig's cluster has no CA: pass --kubelet-client-ca with the CA that signs the API server's kubelet client certificate",
    )?;
    let path = Path::new(file);
    let path = if path.is_relative() {
        kubeconfig.parent().unwrap_or(Path::new(".")).join(path)
    } else {
        path.to_path_buf()
    };
    std::fs::read(&path).with_context(|| format!("reading the cluster CA {}", path.display()))
}
