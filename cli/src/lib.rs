//! What Wedge's three binaries (`wedge`, `cloudcore`, `edgecore`) share: signal handling, kube
//! clients from kubeconfigs, logging setup, the edge's container flags.

pub mod container_args;
pub mod mqtt_args;
pub mod podautoscaler_args;
pub mod service_args;
pub mod stream_args;

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use wedge_apiserver::Component;

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

/// Called after the first signal: logs that the process is stopping, and makes a second
/// signal exit at once (status 1), so that a stop that hangs (a guest, a slow disk, an API
/// server that does not answer) does not keep an operator waiting.
pub fn stop_or_exit_on_second_signal() {
    tracing::info!("stopping (a second signal exits at once)");
    tokio::spawn(async {
        terminated().await;
        tracing::warn!("second signal: exiting without waiting for the rest to stop");
        std::process::exit(1);
    });
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

/// The CA (PEM) a kubeconfig trusts its server with, if it names one: what the control plane
/// publishes as `kube-root-ca.crt`.
pub async fn kubeconfig_ca(path: &Path) -> Option<String> {
    use base64::Engine as _;
    let kubeconfig = Kubeconfig::read_from(path).ok()?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .ok()?;
    let pem: String = config
        .root_cert?
        .iter()
        .map(|der| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .filter_map(|c| std::str::from_utf8(c).ok())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect();
    (!pem.is_empty()).then_some(pem)
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
    /// A client of it, with the admin credentials: for what the operator asks (`wedge up`'s
    /// samples), never for Wedge's own components.
    pub client: kube::Client,
    /// cloudcore's client, as `system:wedge:cloudcore` with the `cloudcore` ClusterRole.
    pub cloudcore_client: kube::Client,
    /// Running until shutdown; taken once it stops on its own.
    control_plane: Option<tokio::task::JoinHandle<Result<(), wedge_controlplane::LeaderError>>>,
}

impl EmbeddedCluster {
    /// Starts the API server with `config`, then the control plane under leader election as
    /// `identity`, until `shutdown` is cancelled. Each component uses the kubeconfig the server
    /// wrote for it: the scheduler as `system:kube-scheduler`, the controllers as
    /// `system:kube-controller-manager`.
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
        let cloudcore_client =
            kube_client(&server.component_kubeconfig(Component::CloudCore)).await?;
        let clients = control_plane_clients(&server).await?;
        // Pods are told to trust the server's own CA (`kube-root-ca.crt` in every namespace).
        let mut controllers = controllers;
        controllers
            .root_ca
            .get_or_insert_with(|| server.ca_pem().to_owned());
        let leader = wedge_controlplane::LeaderConfig::new(identity);
        let control_plane = tokio::spawn(wedge_controlplane::run(
            clients,
            controllers,
            leader,
            shutdown.clone(),
        ));
        Ok(Self {
            server,
            client,
            cloudcore_client,
            control_plane: Some(control_plane),
        })
    }

    /// Resolves if the control plane stops before shutdown (a controller ended on its own, or
    /// the lease could not be kept), with why; pending while it runs. The process should then
    /// stop loudly rather than serve without controllers.
    pub async fn control_plane_stopped(&mut self) -> anyhow::Error {
        let Some(handle) = self.control_plane.as_mut() else {
            return std::future::pending().await;
        };
        let result = handle.await;
        self.control_plane = None;
        match result {
            Ok(Ok(())) => anyhow::anyhow!("the control plane stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the control plane stopped"),
            Err(e) => anyhow::Error::new(e).context("the control plane's task failed"),
        }
    }

    /// Waits for the control plane to stop (cancel its `shutdown` first), then stops the server.
    pub async fn stop(self) {
        if let Some(control_plane) = self.control_plane {
            let _ = control_plane.await;
        }
        self.server.shutdown().await;
    }
}

/// The control plane's clients of the embedded API server `server`: the scheduler's and the
/// controllers' identities, from the kubeconfigs it wrote for them.
pub async fn control_plane_clients(
    server: &wedge_apiserver::Server,
) -> anyhow::Result<wedge_controlplane::Clients> {
    Ok(wedge_controlplane::Clients {
        scheduler: kube_client(&server.component_kubeconfig(Component::Scheduler)).await?,
        controllers: kube_client(&server.component_kubeconfig(Component::ControllerManager))
            .await?,
    })
}

/// A duration as operators write it: a whole number and `s`, `m`, `h` or `d` (`90s`, `24h`,
/// `365d`). Used as a clap value parser.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and s, m, h or d, like 24h"))?;
    let scale = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("must be more than 0".to_owned()),
        Some(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        None => Err(format!("{text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
