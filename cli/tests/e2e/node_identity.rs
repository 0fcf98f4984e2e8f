//! A node's identity cannot be taken (issue 18): a token joins a name in use only when the
//! operator made it for that, single-use tokens join once, and a deleted or revoked node's
//! certificates stop working (on connect, on renewal, across cloudcore restarts) while a new
//! join of the same name works. Through the real `wedge`, `cloudcore` and `edgecore`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const READY: &str = "{.status.conditions[?(@.type==\"Ready\")].status}";
/// What an edge says, once, when the cloud revoked its certificate.
const STOPPED: &str = "stopped connecting to the cloud";

/// `wedge token create` with more flags.
fn token_with(cloud: &Cloud, flags: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(&cloud.root)
        .args(["token", "create", "--ttl", "1h", "--cloud", &cloud.hub])
        .args(flags)
        .output()
        .expect("wedge token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wedge(cloud: &Cloud, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wedge"))
        .arg("--root")
        .arg(&cloud.root)
        .args(args)
        .output()
        .expect("wedge runs")
}

/// A pod bound to `node` whose image is never pulled: what matters is that the edge holds it.
fn bound_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: app, image: 127.0.0.1:1/none:1}}\n"
    )
}

/// How many sessions of `node` cloudcore has started.
fn sessions_of(cloud: &Cloud, node: &str) -> usize {
    // The log may be coloured: the node's quoted value, not `node="..."`.
    let needle = format!("\"{node}\"");
    cloud
        .log()
        .lines()
        .filter(|l| l.contains("edge connected") && l.contains(&needle))
        .count()
}

async fn holds(root: &Path, pod: &str, who: &str) {
    eventually(
        Duration::from_secs(30),
        || pods_held(root).contains_key(pod),
        || format!("{who} never held {pod}: {:?}", pods_held(root)),
    )
    .await;
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_as_a_live_node_is_refused_unless_the_token_is_made_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let real_root = dir.path().join("edge-a");
    let real = start_edge(&real_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    cloud.apply(&bound_pod("first", "edge-a"));
    holds(&real_root, "first", "the real edge").await;

    // Another machine with a token for any new node asks for edge-a: refused, 409, saying why
    // and what the operator can do; edgecore exits instead of retrying.
    let intruder_root = dir.path().join("intruder");
    std::fs::create_dir_all(&intruder_root).expect("root");
    let out = exits(edgecore(
        &intruder_root,
        &cloud,
        "edge-a",
        Some(&token),
        "127.0.0.1:1",
    ));
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("node edge-a is taken")
            && said.contains("connected")
            && said.contains("wedge token create --node edge-a"),
        "{said}"
    );
    assert!(
        !intruder_root.join("pki/edge.crt").exists(),
        "no certificate"
    );
    assert!(pods_held(&intruder_root).is_empty());

    // The real edge keeps its session: a new pod reaches it on the session it had.
    cloud.apply(&bound_pod("second", "edge-a"));
    holds(&real_root, "second", "the real edge").await;
    assert_eq!(sessions_of(&cloud, "edge-a"), 1, "{}", cloud.log());

    // A token bound to edge-b does not join edge-c.
    let for_b = token_with(&cloud, &["--node", "edge-b"]);
    let out = exits(edgecore(
        &dir.path().join("edge-c"),
        &cloud,
        "edge-c",
        Some(&for_b),
        "127.0.0.1:1",
    ));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("made for node edge-b only"),
        "{}",
        stderr(&out)
    );

    // The operator re-provisions edge-a on a new machine with a token made for it: it joins,
    // gets edge-a's pods, and the old edge is cut off (told once) and does not come back.
    let for_a = token_with(&cloud, &["--node", "edge-a"]);
    let new_root = dir.path().join("edge-a-new");
    let _new = start_edge(&new_root, &cloud, "edge-a", Some(&for_a), "127.0.0.1:1");
    holds(&new_root, "second", "the new edge-a").await;
    eventually(
        Duration::from_secs(30),
        || real.log().contains(STOPPED),
        || format!("the old edge was not cut off: {}", real.log()),
    )
    .await;
    let old = real.log();
    assert_eq!(old.matches(STOPPED).count(), 1, "{old}");
    assert!(old.contains("revoked"), "{old}");
    cloud.apply(&bound_pod("third", "edge-a"));
    holds(&new_root, "third", "the new edge-a").await;
    assert_eq!(
        sessions_of(&cloud, "edge-a"),
        2,
        "the old edge did not fight back: {}",
        cloud.log()
    );

    // --replace: a token that may take over any name.
    let replace: wedge_core::join_token::JoinToken =
        token_with(&cloud, &["--replace"]).parse().expect("token");
    let creds = wedge_edge::tls::EdgeCredentials::new(dir.path().join("edge-a-third/pki"));
    wedge_edge::join::join(&cloud.hub, &replace, "edge-a", &creds)
        .await
        .expect("a replacing token joins a name in use");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_use_token_joins_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let once = token_with(&cloud, &["--single-use"]);
    let token: wedge_core::join_token::JoinToken = once.parse().expect("token");
    let creds = wedge_edge::tls::EdgeCredentials::new(dir.path().join("edge-a/pki"));
    wedge_edge::join::join(&cloud.hub, &token, "edge-a", &creds)
        .await
        .expect("the first join");
    let out = exits(edgecore(
        &dir.path().join("edge-b"),
        &cloud,
        "edge-b",
        Some(&once),
        "127.0.0.1:1",
    ));
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("single-use") && said.contains("node edge-a"),
        "{said}"
    );
    let list = String::from_utf8_lossy(&wedge(&cloud, &["token", "list"]).stdout).into_owned();
    assert!(list.contains("used: node edge-a"), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_nodes_certificate_stops_working_and_the_name_can_join_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
    let creds = wedge_edge::tls::EdgeCredentials::new(edge_root.join("pki"));

    cloud.kubectl_ok(&["delete", "node", "edge-a", "--wait=false"]);
    // The live session ends with the reason, which the edge says once, and stops.
    eventually(
        Duration::from_secs(30),
        || edge.log().contains(STOPPED),
        || format!("the edge was not cut off: {}", edge.log()),
    )
    .await;
    let said = edge.log();
    assert_eq!(said.matches(STOPPED).count(), 1, "{said}");
    assert!(said.contains("was deleted"), "{said}");
    // Its last reports did not register the Node again.
    assert!(!cloud.kubectl(&["get", "node", "edge-a"]).status.success());

    // Refused on connect and on renewal, and still after cloudcore restarts.
    for round in ["before", "after"] {
        if round == "after" {
            cloud.restart();
        }
        let tls = wedge_edge::tls::client_config(&creds).expect("credentials");
        let refused = raw_edge_socket(&cloud.hub, tls)
            .await
            .map(|_| ())
            .expect_err("a deleted node's certificate");
        assert_eq!(refused.0, 403, "{round}: {refused:?}");
        assert!(
            refused.1.contains("CertificateRevoked") && refused.1.contains("edge-a"),
            "{round}: {}",
            refused.1
        );
        let renewal = wedge_edge::join::renew(&cloud.hub, &creds)
            .await
            .expect_err("renewal refused");
        assert!(
            matches!(renewal, wedge_edge::join::JoinError::Revoked(_)),
            "{round}: {renewal}"
        );
    }
    drop(edge);

    // The name joins again with a new token, as any new node: the new certificate is good.
    std::fs::remove_dir_all(&edge_root).expect("clean edge root");
    let token = cloud.token("1h");
    let _edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));
}

/// A Node deleted while cloudcore is down (possible when the API server is not cloudcore's own,
/// as with a real cluster): the next cloudcore finds it (at start, or from the edge's first
/// report) and revokes the certificates, so the edge, dialling all along, is refused and says
/// so once.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_deleted_while_cloudcore_was_down_has_its_certificates_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cloud");
    let data = root.join("apiserver");
    let (_apiserver, admin) = separate_apiserver(&data, &dir.path().join("apiserver.log")).await;
    // As an operator runs it on a real cluster: KubeEdge's ServiceAccount under `wedge rbac`.
    let identity = crate::real_cluster::cloudcore_identity(&data, &admin);
    let mut cloud = Cloud::start_with(
        &root,
        "127.0.0.1",
        &["--kubeconfig", identity.to_str().expect("a UTF-8 path")],
    );
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));

    cloud.kill();
    cloud.kubectl_ok(&["delete", "node", "edge-a", "--wait=false"]);
    cloud.restart();
    eventually(
        Duration::from_secs(60),
        || edge.log().contains(STOPPED),
        || format!("the edge was not refused: {}", edge.log()),
    )
    .await;
    let said = edge.log();
    assert_eq!(said.matches(STOPPED).count(), 1, "{said}");
    assert!(said.contains("was deleted"), "{said}");
    assert!(!cloud.kubectl(&["get", "node", "edge-a"]).status.success());
    let creds = wedge_edge::tls::EdgeCredentials::new(edge_root.join("pki"));
    let tls = wedge_edge::tls::client_config(&creds).expect("credentials");
    let refused = raw_edge_socket(&cloud.hub, tls)
        .await
        .map(|_| ())
        .expect_err("a deleted node's certificate");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains("CertificateRevoked"), "{}", refused.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn wedge_node_revoke_drops_the_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start(&dir.path().join("cloud"));
    let token = cloud.token("1h");
    let edge_root = dir.path().join("edge-a");
    let edge = start_edge(&edge_root, &cloud, "edge-a", Some(&token), "127.0.0.1:1");
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));

    let out = wedge(&cloud, &["node", "revoke", "edge-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        Duration::from_secs(30),
        || edge.log().contains(STOPPED),
        || format!("the session was not dropped: {}", edge.log()),
    )
    .await;
    assert!(edge.log().contains("wedge node revoke"), "{}", edge.log());
    let listed = wedge(&cloud, &["node", "certificates", "edge-a"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("revoked at") && listed.contains("join with token"),
        "{listed}"
    );
    let creds = wedge_edge::tls::EdgeCredentials::new(edge_root.join("pki"));
    let tls = wedge_edge::tls::client_config(&creds).expect("credentials");
    let refused = raw_edge_socket(&cloud.hub, tls)
        .await
        .map(|_| ())
        .expect_err("revoked");
    assert_eq!(refused.0, 403, "{refused:?}");
}

/// `wedge up` on `root`, its stdout in `up.out` and its log in `up.log`, with no samples and no
/// containerd: the cloud and the local edge only.
fn wedge_up(root: &Path, api: u16, hub: &str, stream: &str) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
    command
        .arg("--root")
        .arg(root)
        .arg("up")
        .arg("--no-samples")
        .args(["--apiserver-listen", &format!("127.0.0.1:{api}")])
        .args(["--hub-listen", hub])
        .args(["--stream-listen", stream])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--container-runtime-endpoint")
        .arg(root.join("no-containerd.sock"))
        .env("RUST_LOG", "info,kube=warn,wedge_apiserver=warn")
        .stdout(std::fs::File::create(root.join("up.out")).expect("stdout file"));
    Proc::spawn(command, root.join("up.log"))
}

/// The local edge of `wedge up` whose certificate was revoked by hand stops, and the next
/// `wedge up` on the same root issues it a new one: the operator's own edge comes back.
#[tokio::test(flavor = "multi_thread")]
async fn wedge_up_issues_its_edge_a_new_certificate_after_a_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (api, hub, stream) = (
        free_port(),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // The state `wedge up` keeps is where cloudcore keeps it: a Cloud handle reads it.
    let cloud = Cloud {
        root: root.to_owned(),
        hub: hub.clone(),
        api,
        metrics: String::new(),
        stream: stream.clone(),
        extra: Vec::new(),
        proc: None,
    };
    let mut up = wedge_up(root, api, &hub, &stream);
    cloud.wait_for("node/edge-local", READY, "True", Duration::from_secs(120));

    let out = wedge(&cloud, &["node", "revoke", "edge-local"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        Duration::from_secs(30),
        || up.log().contains(STOPPED),
        || format!("the local edge was not cut off: {}", up.log()),
    )
    .await;
    up.kill();

    let up = wedge_up(root, api, &hub, &stream);
    eventually(
        Duration::from_secs(120),
        || {
            up.log().contains("issuing a new one")
                || std::fs::read_to_string(root.join("up.out"))
                    .is_ok_and(|o| o.contains("issuing a new one"))
        },
        || {
            format!(
                "wedge up did not replace the revoked certificate: {}",
                up.log()
            )
        },
    )
    .await;
    cloud.wait_for("node/edge-local", READY, "True", Duration::from_secs(120));
    let listed = wedge(&cloud, &["node", "certificates", "edge-local"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("revoked at") && listed.contains("wedge up"),
        "{listed}"
    );
}
