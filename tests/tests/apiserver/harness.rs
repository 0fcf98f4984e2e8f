//! Starts the API server in-process on a loopback port and hands out clients for it.

use std::process::Output;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use wedge_apiserver::{Server, ServerConfig};

/// A running server with its data directory.
pub struct Cluster {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A server with the default watch history.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with its config adjusted.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
        adjust(&mut config);
        let server = Server::start(config).await.expect("API server starts");
        Self { server, dir }
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Client {
        client_for(self.server.kubeconfig_path()).await
    }

    /// A kube client as one of Wedge's components, with the kubeconfig the server wrote for it
    /// (its own user and roles, not the admin's).
    pub async fn component_client(&self, component: wedge_apiserver::Component) -> Client {
        client_for(&self.server.component_kubeconfig(component)).await
    }

    /// The control plane's clients: the scheduler's and the controllers' own identities, as
    /// `wedge up` and `cloudcore` give them.
    #[allow(dead_code)] // the controlplane tests' (this file is shared with them)
    pub async fn control_plane_clients(&self) -> wedge_controlplane::Clients {
        use wedge_apiserver::Component;
        wedge_controlplane::Clients {
            scheduler: self.component_client(Component::Scheduler).await,
            controllers: self.component_client(Component::ControllerManager).await,
        }
    }

    /// Runs the real kubectl against the server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(self.server.kubeconfig_path(), args, None)
    }

    /// Runs kubectl with `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        kubectl_with(self.server.kubeconfig_path(), args, Some(stdin))
    }

    /// Runs kubectl and returns its stdout, failing the test if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(path: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("kubeconfig reads");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    Client::try_from(config).expect("client")
}

/// Runs kubectl with a kubeconfig.
pub fn kubectl_with(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().expect("dir"))
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("kubectl is installed (scripts/test checks)");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl runs")
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wedge_testkit::wait::eventually(timeout, Duration::from_millis(50), check, || {
        format!("timed out waiting for {what}")
    })
    .await;
}

/// The manifests the kubectl tests apply.
pub const MANIFESTS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  interval: "5"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: registry.local/telemetry:1.0
---
apiVersion: v1
kind: Pod
metadata:
  name: hello
  labels: {app: hello}
spec:
  containers:
  - name: hello
    image: registry.local/hello:1.0
"#;

/// A CRD with a status subresource, a schema with a default and bounds, and printer columns.
pub const WIDGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Mode, type: string, jsonPath: .spec.mode}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              mode: {type: string, default: slow, enum: [fast, slow]}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;
