//! `wedge apiserver`: the embedded Kubernetes-compatible API server on its own, for trying it
//! with `kubectl` or running it beside other tools. `cloudcore` and `wedge up` embed the same
//! server. With `--controllers` the embedded control plane runs beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use wedge_apiserver::{Server, ServerConfig};

/// Options of `wedge apiserver`.
#[derive(Args)]
pub struct ApiserverArgs {
    /// Where the database, certificates and admin kubeconfig live (default: <root>/apiserver).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra DNS names or IP addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// A token file, as kube-apiserver's --token-auth-file (token,user,uid,"group1,group2").
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// The CA that signs the kubelets' (for edges: CloudStream's) serving certificates, as
    /// kube-apiserver's --kubelet-certificate-authority; without it they are not verified.
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// The address the `kubernetes` Service's endpoints name (default: the listen address, or
    /// this host's if that is unspecified or loopback, as kube-apiserver chooses it).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// An `EncryptionConfiguration` file, as kube-apiserver's --encryption-provider-config:
    /// the resources it lists (secrets, at least) are encrypted at rest by its first provider
    /// and read by any it lists.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    #[command(flatten)]
    services: wedge_cli::service_args::ServiceArgs,
    /// Also run the embedded control plane (scheduler and controllers) in this process.
    #[arg(long)]
    controllers: bool,
    #[command(flatten)]
    control_plane: super::controllers::ControlPlaneArgs,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(root: &std::path::Path, args: ApiserverArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.unwrap_or_else(|| root.join("apiserver"));
    let mut config = ServerConfig::new(&data_dir, args.listen);
    config.names = args.tls_sans;
    config.token_file = args.token_auth_file;
    config.kubelet_certificate_authority = args.kubelet_certificate_authority;
    config.service_network = args.services.network();
    config.advertise_address = args.advertise_address;
    config.encryption_provider_config = args.encryption_provider_config;
    let server = Server::start(config)
        .await
        .with_context(|| format!("starting the API server in {}", data_dir.display()))?;
    println!("API server listening on {}", server.url());
    println!(
        "kubectl: export KUBECONFIG={}",
        server.kubeconfig_path().display()
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let control_plane = if args.controllers {
        let clients = wedge_cli::control_plane_clients(&server).await?;
        let control_plane = args
            .control_plane
            .default_root_ca(Some(server.ca_pem().to_owned()));
        let run = super::controllers::run_control_plane(clients, control_plane, shutdown.clone());
        Some(tokio::spawn(run))
    } else {
        None
    };
    wedge_cli::terminated().await;
    shutdown.cancel();
    if let Some(task) = control_plane {
        task.await.context("control plane task")??;
    }
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
