//! Starts the API server in-process on a loopback port and hands out clients for it.

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use wedge_apiserver::{Server, ServerConfig};

/// A running server with its data directory.
pub struct Cluster {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A server with its config adjusted (`adjust` also gets the data directory).
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
        adjust(&mut config, dir.path());
        let server = Server::start(config).await.expect("API server starts");
        Self { server, dir }
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Client {
        let kubeconfig =
            Kubeconfig::read_from(self.server.kubeconfig_path()).expect("kubeconfig reads");
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kubeconfig is valid");
        // kube retries 429, 503 and 504 up to 15 times with backoff by default; the tests look
        // at those answers themselves.
        config.default_retry = false;
        Client::try_from(config).expect("client")
    }
}
