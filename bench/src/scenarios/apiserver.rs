//! The embedded API server with 10,000 pods, as clients see it: the server runs in a process of
//! its own (this binary again, `apiserver-serve`), so its resident memory is its own and the
//! client's work runs beside it rather than inside it, and every figure is taken through HTTPS
//! with the `kube` crate.
//!
//! Figures: create throughput and latency (16 requests in flight, as a controller's workers
//! would send them); a full list of the 10k pods (raw bytes over the wire, and decoded into
//! typed pods as a kube client does); watch throughput (replaying the 10k creates from the watch
//! history); the delay from a write's request to its watch event; the server's RSS with the pods
//! stored, and after the lists.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::processes::status_kib;
use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "apiserver";
const PODS: usize = 10_000;
const IN_FLIGHT: usize = 16;
const LISTS: usize = 10;
const DELAY_SAMPLES: usize = 1_000;
const NAMESPACE: &str = "bench";

/// Serves the API server on loopback until stdin closes: the process `run` measures. Prints
/// the admin kubeconfig's path once it listens.
pub async fn serve(data_dir: &Path) -> anyhow::Result<()> {
    // The default config: its watch history (10,000 changes) just holds the run's creates.
    let config = wedge_apiserver::ServerConfig::new(data_dir, "127.0.0.1:0".parse()?);
    let server = wedge_apiserver::Server::start(config).await?;
    println!("{}", server.kubeconfig_path().display());
    // The parent holds our stdin; its end (or the parent's) ends us.
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    server.shutdown().await;
    Ok(())
}

/// The server process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    kubeconfig: String,
}

impl ServerProcess {
    /// Starts the server in a process of its own, keeping its state in `data_dir`:
    /// `wedge-bench-apiserver` beside this binary (with `wedge apiserver`'s allocator; this binary when
    /// it was not built), or the one `WEDGE_BENCH_SERVER` names (another build's server,
    /// speaking the same `apiserver-serve --data-dir` protocol, for an A/B of two commits under
    /// the same client).
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let server = match std::env::var_os("WEDGE_BENCH_SERVER") {
            Some(path) => path.into(),
            None => {
                let this = std::env::current_exe()?;
                let beside = this.with_file_name("wedge-bench-apiserver");
                if beside.exists() { beside } else { this }
            }
        };
        let mut child = Command::new(server)
            .arg("apiserver-serve")
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut kubeconfig = String::new();
        BufReader::new(stdout).read_line(&mut kubeconfig)?;
        anyhow::ensure!(!kubeconfig.is_empty(), "the API server did not start");
        Ok(Self {
            child,
            kubeconfig: kubeconfig.trim().to_owned(),
        })
    }

    /// An admin client of the server.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `(VmRSS, VmHWM)` of the server in KiB.
    fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        let pid = self.child.id();
        Ok((status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?))
    }

    /// Its admin kubeconfig.
    pub fn kubeconfig(&self) -> &str {
        &self.kubeconfig
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("telemetry-{i:05}"),
            "labels": {"app": "telemetry", "shard": format!("s{}", i % 10)},
            "annotations": {"wedge.io/grants": "device:thermo-1"}
        },
        "spec": {
            "nodeName": format!("edge-{:03}", i % 100),
            "containers": [{
                "name": "main",
                "image": "localhost:5000/wedge/telemetry:1.0",
                "env": [{"name": "INTERVAL_MS", "value": "1000"}],
                "resources": {"limits": {"memory": "16Mi", "cpu": "100m"}}
            }]
        }
    }))?)
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(dir.path())?;
    let client = server.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let (rss_empty, _) = server.rss_kib()?;
    let before_creates = pods.list_metadata(&ListParams::default()).await?;
    let start_rv = before_creates
        .metadata
        .resource_version
        .context("list without resourceVersion")?;

    // Create.
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod = pod(i)?;
                let t = Instant::now();
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(t.elapsed())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();
    figure(
        SCENARIO,
        "create-per-second",
        PODS as f64 / elapsed.as_secs_f64(),
        "1/s",
    );
    figure(
        SCENARIO,
        "create-p50",
        millis(quantile(&mut latencies, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "create-p99",
        millis(quantile(&mut latencies, 0.99)),
        "ms",
    );
    let (rss_stored, _) = server.rss_kib()?;
    figure(SCENARIO, "rss-10k-pods", rss_stored as f64 / 1024.0, "MiB");
    let added = rss_stored.saturating_sub(rss_empty);
    figure(
        SCENARIO,
        "rss-added-by-10k-pods",
        added as f64 / 1024.0,
        "MiB",
    );

    // List: the bytes as they come, then typed as a kube client decodes them.
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let mut raw = Vec::with_capacity(LISTS);
    let mut bytes = 0;
    for _ in 0..LISTS {
        let t = Instant::now();
        let request = http::Request::get(&path).body(Vec::new())?;
        let body = client.request_text(request).await?;
        raw.push(t.elapsed());
        bytes = body.len();
        anyhow::ensure!(
            body.matches("\"kind\":\"Pod\"").count() == PODS,
            "list is short"
        );
    }
    figure(
        SCENARIO,
        "list-10k-p50",
        millis(quantile(&mut raw, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "list-10k-p99",
        millis(quantile(&mut raw, 0.99)),
        "ms",
    );
    figure(SCENARIO, "list-10k-bytes", bytes as f64, "B");
    let mut typed = Vec::with_capacity(LISTS);
    for _ in 0..LISTS {
        let t = Instant::now();
        let list = pods.list(&ListParams::default()).await?;
        typed.push(t.elapsed());
        anyhow::ensure!(list.items.len() == PODS, "typed list is short");
    }
    figure(
        SCENARIO,
        "list-10k-typed-p50",
        millis(quantile(&mut typed, 0.5)),
        "ms",
    );

    // Watch throughput: replay the creates from the history.
    let t = Instant::now();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(290), &start_rv)
        .await?
        .boxed();
    let mut added = 0;
    while added < PODS {
        match stream.try_next().await? {
            Some(WatchEvent::Added(_)) => added += 1,
            Some(WatchEvent::Error(e)) => anyhow::bail!("watch error: {e}"),
            Some(_) => {}
            None => anyhow::bail!("watch ended after {added} events"),
        }
    }
    let elapsed = t.elapsed();
    figure(
        SCENARIO,
        "watch-events-per-second",
        PODS as f64 / elapsed.as_secs_f64(),
        "1/s",
    );
    drop(stream);

    // Lists build 20 MB responses; what the allocator keeps of them shows here.
    let (rss, peak) = server.rss_kib()?;
    figure(SCENARIO, "rss-after-lists", rss as f64 / 1024.0, "MiB");
    figure(SCENARIO, "rss-peak", peak as f64 / 1024.0, "MiB");

    write_to_event_delay(&client).await?;
    authorization_cost(&server, dir.path(), &client).await
}

/// Bindings of other users beside the measured one's, as a busy cluster has them.
const OTHER_BINDINGS: usize = 100;
/// GETs of one pod, per identity.
const GETS: usize = 2_000;

/// What RBAC costs a request: the same GET of one pod, one at a time, as the admin (in
/// `system:masters`, which RBAC does not consult) and as a user bound to `edit` in the
/// namespace, among [`OTHER_BINDINGS`] RoleBindings and as many ClusterRoleBindings of other
/// users. The two alternate in batches, so that the machine's other work weighs on both alike.
async fn authorization_cost(
    server: &ServerProcess,
    data_dir: &Path,
    admin: &kube::Client,
) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), NAMESPACE);
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    for i in 0..OTHER_BINDINGS {
        let subject = serde_json::json!([{"kind": "User", "name": format!("someone-{i}"),
                                          "apiGroup": "rbac.authorization.k8s.io"}]);
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("other-{i}")}, "subjects": subject,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}))?,
            )
            .await?;
        cluster_bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("bench-other-{i}")}, "subjects": subject,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}))?,
            )
            .await?;
    }
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bench-user-edit"},
                "subjects": [{"kind": "User", "name": "bench-user", "apiGroup": "rbac.authorization.k8s.io"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"}}))?,
        )
        .await?;
    let user = user_client(server, data_dir, "bench-user").await?;
    let as_admin: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let as_user: Api<Pod> = Api::namespaced(user, NAMESPACE);
    let name = "telemetry-00000";
    let (mut admin_gets, mut user_gets) = (Vec::with_capacity(GETS), Vec::with_capacity(GETS));
    for _ in 0..GETS / 100 {
        for (api, out) in [(&as_admin, &mut admin_gets), (&as_user, &mut user_gets)] {
            for _ in 0..100 {
                let t = Instant::now();
                api.get(name).await?;
                out.push(t.elapsed());
            }
        }
    }
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() * 1e3 / v.len() as f64;
    let cost = mean(&user_gets) - mean(&admin_gets);
    figure(
        SCENARIO,
        "get-admin-p50",
        millis(quantile(&mut admin_gets, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "get-rbac-user-p50",
        millis(quantile(&mut user_gets, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "get-rbac-user-p99",
        millis(quantile(&mut user_gets, 0.99)),
        "ms",
    );
    figure(SCENARIO, "rbac-cost-per-request", cost, "ms");
    Ok(())
}

/// A client for `user`, with a certificate from the server's CA, as `wedge kubeconfig` issues.
async fn user_client(
    server: &ServerProcess,
    data_dir: &Path,
    user: &str,
) -> anyhow::Result<kube::Client> {
    let pki = wedge_pki::Pki::load_or_create(data_dir, &[])?;
    let cert = pki.issue_client(user, &[])?;
    let url = Kubeconfig::read_from(server.kubeconfig())?
        .clusters
        .into_iter()
        .find_map(|c| c.cluster.and_then(|c| c.server))
        .context("the admin kubeconfig names no server")?;
    let path = data_dir.join(format!("{user}.kubeconfig"));
    wedge_apiserver::kubeconfig::write_for(&path, user, &url, &pki.ca.cert_pem, &cert)?;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// From sending a write to its event arriving on a watch that was already open: one update of
/// a ConfigMap at a time.
async fn write_to_event_delay(client: &kube::Client) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let mut map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "delay"}, "data": {"n": "0"}
    }))?;
    map = maps.create(&PostParams::default(), &map).await?;
    let rv = map.metadata.resource_version.clone().unwrap_or_default();
    let params = WatchParams::default()
        .fields("metadata.name=delay")
        .timeout(290);
    let mut stream = maps.watch(&params, &rv).await?.boxed();
    let mut delays = Vec::with_capacity(DELAY_SAMPLES);
    let mut writes = Vec::with_capacity(DELAY_SAMPLES);
    for n in 1..=DELAY_SAMPLES {
        map.data = Some([("n".to_owned(), n.to_string())].into());
        let sent = Instant::now();
        let (written, event) = tokio::join!(
            async {
                let written = maps.replace("delay", &PostParams::default(), &map).await;
                (written, sent.elapsed())
            },
            async {
                loop {
                    match stream.try_next().await {
                        Ok(Some(WatchEvent::Modified(_))) => return Ok(sent.elapsed()),
                        Ok(Some(WatchEvent::Bookmark(_))) => continue,
                        Ok(other) => anyhow::bail!("unexpected watch event: {other:?}"),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        );
        let (written, write_latency) = written;
        map = written?;
        writes.push(write_latency);
        delays.push(event?);
    }
    figure(
        SCENARIO,
        "write-to-event-p50",
        millis(quantile(&mut delays, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "write-to-event-p99",
        millis(quantile(&mut delays, 0.99)),
        "ms",
    );
    figure(
        SCENARIO,
        "update-p50",
        millis(quantile(&mut writes, 0.5)),
        "ms",
    );
    figure(
        SCENARIO,
        "update-p99",
        millis(quantile(&mut writes, 0.99)),
        "ms",
    );
    Ok(())
}
