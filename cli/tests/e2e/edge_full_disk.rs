//! An edge whose disk fills up and is freed, through real processes: edgecore's root (its
//! SQLite among it) on a small tmpfs the test mounts and fills to ENOSPC while the edge runs.
//! The lease, the node's status and a pod's status must keep reaching the API server while the
//! database refuses writes, and be stored once space returns; the node never goes NotReady; a
//! pod bound meanwhile reaches the edge once it can store it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::*;

const READY: &str = "{.status.conditions[?(@.type==\"Ready\")].status}";
/// How long a silent edge stays Ready (cloudcore `--node-grace`): short, so that a lease not
/// renewed while the disk is full shows within the test.
const GRACE: Duration = Duration::from_secs(8);
/// edgecore's log lines when its database stops and starts taking reports again.
const FULL: &str = "the edge database takes no more reports";
const FREED: &str = "the edge database takes reports again";

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// Writes `name` until the file system has no room left; returns its size.
    fn fill(&self, name: &str) -> u64 {
        let mut file = std::fs::File::create(self.path.join(name)).expect("filler");
        let mut written = 0u64;
        // Big writes first, then small ones for what is left of the last pages.
        for chunk in [1 << 20, 4 << 10, 1] {
            let bytes = vec![0xa5u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process of a failed test may still hold a file there.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn count(log: &str, line: &str) -> usize {
    log.matches(line).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_keep_flowing_through_a_full_disk_and_are_stored_once_space_returns() {
    let registry = registry_with_samples().await;
    push_misbehave(&registry).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Declared before the edge, so the edge is killed before the unmount.
    let disk = Tmpfs::mount(&dir.path().join("edge-a"), "48m");
    let root = disk.path.clone();
    let cloud = Cloud::start_with(
        &dir.path().join("cloud"),
        "127.0.0.1",
        &["--node-grace", &GRACE.as_secs().to_string()],
    );
    let token = cloud.token("1h");
    // Its log off the tmpfs, or the lines saying the disk is full would be lost.
    let mut edge = Proc::spawn(
        edgecore(&root, &cloud, "edge-a", Some(&token), &registry.host()),
        dir.path().join("edgecore.log"),
    );
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(60));

    // Every change of the Node's Ready condition, from now on.
    let mut watch = cloud
        .kubectl_command(&[
            "get",
            "node",
            "edge-a",
            "--watch",
            "-o",
            &format!("jsonpath={READY}{{\"\\n\"}}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    let ready_lines = lines_of(&mut watch);
    let _watch = Killed(watch);

    // A pod that finishes while the disk is full (no restart): its status must reach the API.
    let pod = misbehave_pod("finisher", &registry.host(), &["busy", "15000"])
        .replace("spec:\n", "spec:\n  restartPolicy: Never\n");
    cloud.apply(&pod);
    cloud.wait_for(
        "pod/finisher",
        "{.status.phase}",
        "Running",
        Duration::from_secs(60),
    );

    let filled = disk.fill("filler");
    let full_at = jiff::Timestamp::now();
    eprintln!("filled the edge's disk with {filled} bytes");
    // The database refuses the next report (a lease every 2 s): edgecore says so once.
    eventually(
        Duration::from_secs(30),
        || edge.log().contains(FULL),
        || format!("edgecore never failed to store a report:\n{}", edge.log()),
    )
    .await;

    // A pod bound while the disk is full: the edge cannot store it, so it must not acknowledge
    // it, and the cloud sends it again until it can.
    cloud.apply(&misbehave_pod("late", &registry.host(), &["sleep"]));

    // While the disk stays full the cloud still hears of the pod and of the lease, for longer
    // than the grace period after which a silent node goes NotReady.
    eventually(
        Duration::from_secs(60),
        || {
            let out = cloud.kubectl(&["get", "pod/finisher", "-o", "jsonpath={.status.phase}"]);
            matches!(
                &*String::from_utf8_lossy(&out.stdout),
                "Succeeded" | "Failed"
            )
        },
        || format!("the pod's end never reached the API:\n{}", edge.log()),
    )
    .await;
    let past_grace = full_at + GRACE + Duration::from_secs(4);
    eventually(
        Duration::from_secs(60),
        || {
            cloud
                .lease_renewed("edge-a")
                .is_some_and(|t| t > past_grace)
        },
        || {
            format!(
                "the lease was last renewed at {:?} (the disk filled at {full_at}):\n{}",
                cloud.lease_renewed("edge-a"),
                edge.log()
            )
        },
    )
    .await;
    assert!(
        !edge.log().contains(FREED),
        "the disk is still full:\n{}",
        edge.log()
    );

    // Space returns: what waited in memory is stored, sent and acknowledged, and the outbox
    // empties.
    std::fs::remove_file(root.join("filler")).expect("free the disk");
    eventually(
        Duration::from_secs(15),
        || edge.log().contains(FREED),
        || format!("edgecore never stored its reports again:\n{}", edge.log()),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        || {
            wedge_edge::store::Database::inspect(&root.join("edge.db"))
                .and_then(|db| db.outbox().len())
                .is_ok_and(|n| n == 0)
        },
        || "the outbox never emptied after the disk was freed".to_owned(),
    )
    .await;

    // The pod bound while the disk was full arrives and runs.
    cloud.wait_for(
        "pod/late",
        "{.status.phase}",
        "Running",
        Duration::from_secs(30),
    );

    // Nothing acknowledged was lost, edgecore never stopped, and the node was never NotReady.
    assert!(
        pods_held(&root).contains_key("finisher") && pods_held(&root).contains_key("late"),
        "the edge lost a pod it acknowledged"
    );
    assert!(
        edge.child.try_wait().expect("try_wait").is_none(),
        "edgecore exited:\n{}",
        edge.log()
    );
    cloud.wait_for("node/edge-a", READY, "True", Duration::from_secs(10));
    let seen: Vec<String> = ready_lines.try_iter().collect();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s == "True"),
        "the node's Ready condition went {seen:?}"
    );
    let log = edge.log();
    assert_eq!(
        (count(&log, FULL), count(&log, FREED)),
        (1, 1),
        "one line when the disk filled, one when it was freed:\n{log}"
    );
    edge.kill();
}
