//! What Wedge's three binaries (`wedge`, `cloudcore`, `edgecore`) share: signal handling, kube
//! clients from kubeconfigs, logging setup.

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Resolves on Ctrl-C or SIGTERM (or at once if the handlers cannot be installed).
pub async fn terminated() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A kube client from a kubeconfig file.
pub async fn kube_client(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default`.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The embedded API server with the control plane beside it: what `cloudcore` without a
/// kubeconfig and `wedge up` both run.
pub struct EmbeddedCluster {
    /// The API server.
    pub server: wedge_apiserver::Server,
    /// A client of it, with the admin credentials.
    pub client: kube::Client,
    control_plane: tokio::task::JoinHandle<Result<(), wedge_controlplane::LeaderError>>,
}

impl EmbeddedCluster {
    /// Starts the API server with `config`, then the control plane under leader election as
    /// `identity`, until `shutdown` is cancelled.
    pub async fn start(
        config: wedge_apiserver::ServerConfig,
        controllers: wedge_controlplane::ControllersConfig,
        identity: String,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let server = wedge_apiserver::Server::start(config)
            .await
            .context("starting the embedded API server")?;
        let client = kube_client(server.kubeconfig_path()).await?;
        let leader = wedge_controlplane::LeaderConfig::new(identity);
        let control_plane = tokio::spawn(wedge_controlplane::run(
            client.clone(),
            controllers,
            leader,
            shutdown.clone(),
        ));
        Ok(Self {
            server,
            client,
            control_plane,
        })
    }

    /// Waits for the control plane to stop (cancel its `shutdown` first), then stops the server.
    pub async fn stop(self) {
        let _ = self.control_plane.await;
        self.server.shutdown().await;
    }
}
