//! cloudcore beside an API server it does not run (`cloudcore --kubeconfig`), as with a real
//! cluster: `wedge apiserver` runs as a process of its own and stands in for kube-apiserver. The
//! test calls CloudStream as kube-apiserver and metrics-server do: at the address and port the
//! edge's Node names, by that name (TLS server name and `Host`), with the API server's kubelet
//! client certificate. The name `<node>.edges.test` has no DNS record here; the client connects
//! to CloudStream's port itself, as the wildcard record would send it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::support::*;

const DOMAIN: &str = "edges.test";

/// A TLS client trusting the hub's CA (CloudStream's), presenting `cert` if given.
fn tls(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA")).expect("CA added");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots);
    Arc::new(match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("certificate file")
                    .collect::<Result<_, _>>()
                    .expect("certificate"),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    })
}

/// `GET path` from CloudStream at `addr`, sent to `host` (TLS server name and `Host`), as
/// kube-apiserver sends it to a node's address: the status and the body.
async fn kubelet_get(
    addr: &str,
    host: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let connection = tokio::spawn(connection);
    let port = addr.rsplit(':').next().unwrap_or_default();
    let request = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    connection.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Runs `kubectl` with `kubeconfig`, failing the test if it fails; its stdout.
fn kubectl_ok_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("stdin written");
    drop(input);
    let out = child.wait_with_output().expect("kubectl ends");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the README tells an operator to do before `cloudcore --kubeconfig`: apply `wedge rbac`'s
/// manifest with the cluster admin's kubeconfig (`admin`), then write a kubeconfig for the
/// ServiceAccount `kubeedge/cloudcore` with a token for it. Returns its path.
pub(crate) fn cloudcore_identity(data: &Path, admin: &Path) -> std::path::PathBuf {
    let manifest = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("rbac")
        .output()
        .expect("wedge runs");
    assert!(manifest.status.success());
    let manifest = String::from_utf8(manifest.stdout).expect("UTF-8");
    assert_eq!(
        manifest,
        include_str!("../../../deploy/cloudcore-rbac.yaml"),
        "deploy/ ships what `wedge rbac` prints"
    );
    kubectl_ok_with(admin, &["apply", "-f", "-"], Some(&manifest));
    let token = kubectl_ok_with(
        admin,
        &[
            "-n",
            "kubeedge",
            "create",
            "token",
            "cloudcore",
            "--duration=2h",
        ],
        None,
    );
    let server = kubectl_ok_with(
        admin,
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let path = data.join("cloudcore.token.kubeconfig");
    let ca = data.join("pki/ca.crt");
    let ca = format!("--certificate-authority={}", ca.display());
    let server = format!("--server={server}");
    let token = format!("--token={}", token.trim());
    for args in [
        &[
            "config",
            "set-cluster",
            "wedge",
            &server,
            &ca,
            "--embed-certs",
        ][..],
        &["config", "set-credentials", "cloudcore", &token],
        &[
            "config",
            "set-context",
            "wedge",
            "--cluster=wedge",
            "--user=cloudcore",
        ],
        &["config", "use-context", "wedge"],
    ] {
        kubectl_ok_with(&path, args, None);
    }
    let whoami = kubectl_ok_with(
        &path,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    assert_eq!(whoami, "system:serviceaccount:kubeedge:cloudcore");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudstream_answers_a_separate_api_server_at_each_edges_own_name() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cloud");
    let data = root.join("apiserver");
    let (_apiserver, kubeconfig) =
        separate_apiserver(&data, &dir.path().join("apiserver.log")).await;
    // cloudcore runs as an operator would run it on a real cluster: as KubeEdge's
    // ServiceAccount, with the RBAC manifest `wedge rbac` prints applied, not as an admin.
    let cloudcore_kubeconfig = cloudcore_identity(&data, &kubeconfig);
    let cloud = Cloud::start_with(
        &root,
        "127.0.0.1",
        &[
            "--kubeconfig",
            cloudcore_kubeconfig.to_str().expect("a UTF-8 path"),
            "--stream-node-domain",
            DOMAIN,
        ],
    );
    let token = cloud.token("1h");
    let mut command = edgecore(
        &dir.path().join("edge-a"),
        &cloud,
        "edge-a",
        Some(&token),
        &registry.host(),
    );
    command.args(["--usage-interval", "1s"]);
    let _edge = Proc::spawn(command, dir.path().join("edge-a/edgecore.log"));

    // The edge's Node names its own name under the domain, at CloudStream's port.
    let port = cloud.stream.rsplit(':').next().expect("a port").to_owned();
    cloud.wait_for(
        "node/edge-a",
        "{.status.daemonEndpoints.kubeletEndpoint.Port}",
        &port,
        Duration::from_secs(60),
    );
    let host = format!("edge-a.{DOMAIN}");
    assert_eq!(
        cloud.kubectl_ok(&[
            "get",
            "node",
            "edge-a",
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalDNS\")].address}"
        ]),
        host
    );

    // No scheduler runs here: the pod names its node, as a scheduler would have bound it. Nor
    // does kube-controller-manager: its root CA publisher's ConfigMap is made by hand, and the
    // pod's token comes through cloudcore under the RBAC `wedge rbac` prints.
    cloud.kubectl_ok(&[
        "create",
        "configmap",
        "kube-root-ca.crt",
        &format!("--from-file=ca.crt={}", data.join("pki/ca.crt").display()),
    ]);
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  nodeName: edge-a\n  restartPolicy: Never\n  containers:\n  - name: hello\n    image: {}/samples/hello:1\n",
        registry.host()
    ));
    cloud.wait_for(
        "pod/hello",
        "{.status.phase}",
        "Succeeded",
        Duration::from_secs(90),
    );

    let pki = data.join("pki");
    let kubelet_client = (
        pki.join("apiserver-kubelet-client.crt"),
        pki.join("apiserver-kubelet-client.key"),
    );
    let hub_ca = root.join("cloudcore/hub/pki/ca.crt");
    let api_server = tls(
        &hub_ca,
        Some((kubelet_client.0.as_path(), kubelet_client.1.as_path())),
    );

    // The kubelet's log path, sent to the edge's name: the serving certificate covers it.
    let (status, body) = kubelet_get(
        &cloud.stream,
        &host,
        "/containerLogs/default/hello/hello?tailLines=1",
        api_server.clone(),
    )
    .await
    .expect("CloudStream answers");
    assert_eq!((status, body.as_str()), (200, "hello: done\n"));

    // metrics-server's scrape names no pod: the name says which edge it is for.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = kubelet_get(
            &cloud.stream,
            &host,
            "/metrics/resource",
            api_server.clone(),
        )
        .await
        .expect("CloudStream answers");
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no usage from edge-a: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("node_cpu_usage_seconds_total ")),
        "{metrics}"
    );
    // The same path at the shared address cannot say which edge it means, and says so.
    let (status, body) = kubelet_get(
        &cloud.stream,
        "localhost",
        "/metrics/resource",
        api_server.clone(),
    )
    .await
    .expect("CloudStream answers");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--stream-node-domain"), "{body}");

    // A pod asked of another edge's name is not that edge's.
    let (status, body) = kubelet_get(
        &cloud.stream,
        &format!("edge-b.{DOMAIN}"),
        "/containerLogs/default/hello/hello",
        api_server,
    )
    .await
    .expect("CloudStream answers");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("pod default/hello is on node edge-a, not on edge-b"),
        "{body}"
    );

    // Only the API server may call: a client without its certificate is refused.
    let refused = kubelet_get(
        &cloud.stream,
        &host,
        "/containerLogs/default/hello/hello",
        tls(&hub_ca, None),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
}
