//! Secrets encrypted at rest in a real cloudcore and a real edgecore: neither SQLite file holds
//! the Secret's value, and a pod still gets its Secret volume when edgecore restarts with the
//! cloud gone (from the edge's encrypted copy).

use std::path::Path;
use std::time::Duration;

use super::support::*;

/// The Secret's value, and how it sits in the object's JSON.
const VALUE: &str = "edge-s3cr3t-value";
const STORED: &str = "ZWRnZS1zM2NyM3QtdmFsdWU=";

/// Every byte SQLite keeps for the database at `path`: the file, its WAL and shared memory.
fn disk_bytes(path: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(bytes) = std::fs::read(&file) {
            all.extend(bytes);
        }
    }
    all
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_encrypted_in_both_databases_and_a_pod_gets_its_secret_volume_offline() {
    let registry = registry_with_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("encryption.yaml");
    std::fs::write(
        &config,
        wedge_core::encryption::generate(&["secrets"], "key1"),
    )
    .expect("write the configuration");
    let config_arg = config.to_str().expect("utf-8 path");
    let mut cloud = Cloud::start_with(
        &dir.path().join("cloud"),
        "127.0.0.1",
        &["--encryption-provider-config", config_arg],
    );
    let token = cloud.token("1h");
    let root = dir.path().join("edge-a");
    std::fs::create_dir_all(&root).expect("edge root");
    let hub = cloud.hub.clone();
    let edgecore = |token: Option<&str>| {
        let mut command = edgecore_at(&root, &hub, "edge-a", token, &registry.host());
        command.args(["--encryption-provider-config", config_arg]);
        command
    };
    let mut edge = Proc::spawn(edgecore(Some(&token)), root.join("edgecore.log"));
    cloud.wait_for(
        "node/edge-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        Duration::from_secs(60),
    );
    cloud.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        &format!("--from-literal=TOKEN={VALUE}"),
    ]);
    cloud.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: reader\nspec:\n  terminationGracePeriodSeconds: 2\n  volumes:\n  - name: creds\n    secret: {{secretName: creds}}\n  containers:\n  - name: app\n    image: {}/samples/telemetry:1\n    volumeMounts:\n    - {{name: creds, mountPath: /etc/creds}}\n",
        registry.host()
    ));
    cloud.wait_for(
        "pod/reader",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );
    let uid = cloud.kubectl_ok(&["get", "pod", "reader", "-o", "jsonpath={.metadata.uid}"]);
    let volume = root.join(format!("pods/default_reader_{uid}/volumes/creds"));
    let token_file = volume.join("TOKEN");
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("the Secret volume's file"),
        VALUE
    );

    // Neither database holds the value, plain or base64.
    for db in [
        root.join("edge.db"),
        dir.path().join("cloud/apiserver/wedge.db"),
    ] {
        let bytes = disk_bytes(&db);
        assert!(!bytes.is_empty(), "{} exists", db.display());
        assert!(
            !holds(&bytes, VALUE) && !holds(&bytes, STORED),
            "{} holds the Secret's value in the clear",
            db.display()
        );
        assert!(holds(&bytes, "k8s:enc:aesgcm:v1:key1:"), "{}", db.display());
    }

    // The cloud goes away, edgecore restarts, and the volume (gone, as after a reboot) is
    // written again from the edge's encrypted copy.
    cloud.kill();
    edge.kill();
    std::fs::remove_dir_all(&volume).expect("remove the rendered volume");
    let edge = Proc::spawn(edgecore(None), root.join("edgecore-2.log"));
    eventually(
        Duration::from_secs(60),
        || std::fs::read_to_string(&token_file).is_ok_and(|v| v == VALUE),
        || {
            format!(
                "the Secret volume was not written again offline: {}",
                edge.log()
            )
        },
    )
    .await;
}
