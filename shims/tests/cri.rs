//! `CriRuntime` against a real containerd 1.6 with runc (`wedge_testkit::containerd`): every
//! call of both traits, through the same CRI a kubelet uses.
//!
//! Each test starts its own containerd (own state, bridge, subnet and cgroup parent) and removes
//! the sandboxes it made; the fixture's Drop removes whatever a failed test left. Waits are
//! bounded by [`LONG`]; no sleep stands in for an assertion.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use tokio::sync::mpsc;
use wedge_core::crilog::{self, Stream};
use wedge_core::runtime::{
    ContainerConfig, ContainerState, ExecStreams, ImageError, ImageService, Limits, Mount,
    PortStreams, PullAuth, RuntimeError, RuntimeService, SandboxConfig, Security, TerminalSize,
    labels,
};
use wedge_shims::CriRuntime;
use wedge_testkit::container_images::{self, BUSYBOX_IMAGE};
use wedge_testkit::containerd::Containerd;
use wedge_testkit::registry::Registry;

/// The bound of every wait in these tests.
const LONG: Duration = Duration::from_secs(60);

/// A containerd with the busybox image imported, and a runtime connected to it.
struct Env {
    containerd: Containerd,
    rt: CriRuntime,
    /// The busybox image's id, as `pull_image` would return it.
    image_id: String,
}

async fn start_containerd() -> anyhow::Result<Containerd> {
    tokio::task::spawn_blocking(Containerd::start).await?
}

async fn env() -> anyhow::Result<Env> {
    let containerd = start_containerd().await?;
    let archive =
        tokio::task::spawn_blocking(|| anyhow::Ok(container_images::busybox()?.docker_archive()))
            .await??;
    containerd.import_image(&archive)?;
    let rt = CriRuntime::connect(&containerd.endpoint())?;
    // CRI learns of imported images from events, a moment later.
    let image_id = eventually("busybox visible to CRI", || async {
        match rt.image_status(BUSYBOX_IMAGE).await? {
            Some(image) => Ok(image.id),
            None => bail!("not yet"),
        }
    })
    .await?;
    Ok(Env {
        containerd,
        rt,
        image_id,
    })
}

/// Retries `f` until it succeeds or [`LONG`] has passed.
async fn eventually<T, F, Fut>(what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    wedge_testkit::wait::until_ok(LONG, Duration::from_millis(50), f)
        .await
        .map_err(|e| e.context(format!("{what}: still failing after {LONG:?}")))
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(LONG, f)
        .await
        .with_context(|| format!("{what}: not done after {LONG:?}"))
}

impl Env {
    /// A pod's sandbox config as Edged would make it, with the fixture's log directory and
    /// cgroup parent (so the fixture's cleanup finds what the test leaves).
    fn sandbox(&self, name: &str, host_network: bool) -> anyhow::Result<SandboxConfig> {
        let cri = self.containerd.pod_config(name)?;
        let meta = cri.metadata.context("metadata")?;
        let labels: BTreeMap<String, String> = [
            (labels::POD_UID, meta.uid.as_str()),
            (labels::POD_NAME, name),
            (labels::POD_NAMESPACE, meta.namespace.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Ok(SandboxConfig {
            name: name.to_owned(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            attempt: 0,
            hostname: name.to_owned(),
            log_directory: PathBuf::from(cri.log_directory),
            host_network,
            labels,
            annotations: [("wedge.io/test".to_owned(), name.to_owned())].into(),
            cgroup_parent: Some(self.containerd.cgroup_parent().to_owned()),
            netns: None,
        })
    }

    /// A busybox container running `sh -c script`.
    fn container(&self, sandbox: &SandboxConfig, name: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.to_owned(),
            attempt: 0,
            image: self.image_id.clone(),
            image_ref: BUSYBOX_IMAGE.to_owned(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.to_owned()],
            working_dir: None,
            env: Vec::new(),
            mounts: Vec::new(),
            log_path: sandbox.log_directory.join(name).join("0.log"),
            limits: Limits::default(),
            security: Security::default(),
            stdin: false,
            tty: false,
            labels: [(labels::CONTAINER_NAME.to_owned(), name.to_owned())].into(),
            annotations: [(labels::RESTART_COUNT.to_owned(), "0".to_owned())].into(),
        }
    }

    async fn run(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> anyhow::Result<String> {
        let id = self
            .rt
            .create_container(sandbox_id, config, sandbox)
            .await?;
        self.rt.start_container(&id).await?;
        Ok(id)
    }

    /// Stops and removes a sandbox, as Edged does when a pod goes.
    async fn remove_sandbox(&self, id: &str) -> anyhow::Result<()> {
        self.rt.stop_sandbox(id).await?;
        self.rt.remove_sandbox(id).await?;
        Ok(())
    }
}

/// The records of a CRI log file, as (stream, content).
fn read_log(path: &Path) -> anyhow::Result<Vec<(Stream, String)>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = crilog::parse_record(l)?;
            Ok((r.stream, String::from_utf8_lossy(r.content).into_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_plain_http_registry_and_sorts_failures() -> anyhow::Result<()> {
    let containerd = start_containerd().await?;
    let rt = CriRuntime::connect(&containerd.endpoint())?;
    let version = rt.version().await?;
    ensure!(version.starts_with("containerd://1.6.20"), "{version}");
    assert_eq!(rt.handler(), "runc");

    let registry = Registry::start()?;
    let reference =
        tokio::task::block_in_place(|| container_images::push_busybox(&registry, "busybox:1.35"))?;
    assert_eq!(reference, format!("{}/busybox:1.35", registry.host()));
    containerd.add_registry_host(&registry.host(), &format!("http://{}", registry.host()))?;

    let id = rt.pull_image(&reference, None).await?;
    ensure!(id.starts_with("sha256:"), "{id}");
    let held = rt.image_status(&reference).await?.context("image held")?;
    assert_eq!(held.id, id);
    assert!(held.repo_tags.contains(&reference), "{held:?}");
    ensure!(
        held.repo_digests.iter().any(|d| d.contains("@sha256:")),
        "{held:?}"
    );
    ensure!(held.size_bytes > 0);
    let all = rt.list_images().await?;
    ensure!(all.iter().any(|i| i.id == id), "{all:?}");

    let missing = format!("{}/busybox:nope", registry.host());
    let err = rt
        .pull_image(&missing, None)
        .await
        .expect_err("no such tag");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not found"),
        "keeps containerd's words: {err}"
    );

    // Nothing listens on port 1 (and there is no hosts.toml: containerd tries HTTPS, then HTTP).
    let err = rt
        .pull_image("127.0.0.1:1/busybox:1.35", None)
        .await
        .expect_err("unreachable");
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");

    let err = rt
        .pull_image("UPPER/Case:1", None)
        .await
        .expect_err("invalid");
    assert!(
        matches!(err, ImageError::InvalidReference { .. }),
        "{err:?}"
    );
    assert!(!err.retryable());

    rt.remove_image(&reference).await?;
    assert_eq!(rt.image_status(&reference).await?, None);
    rt.remove_image(&reference).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_credentials() -> anyhow::Result<()> {
    let containerd = start_containerd().await?;
    let rt = CriRuntime::connect(&containerd.endpoint())?;
    let registry = Registry::start_with_auth("ci", "s3cret")?;
    let reference = tokio::task::block_in_place(|| {
        container_images::push_busybox_with_auth(&registry, "private/busybox:1.35", "ci", "s3cret")
    })?;
    containerd.add_registry_host(&registry.host(), &format!("http://{}", registry.host()))?;

    let err = rt
        .pull_image(&reference, None)
        .await
        .expect_err("no credentials");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let wrong = PullAuth::Basic {
        username: "ci".into(),
        password: "wrong".into(),
    };
    let err = rt
        .pull_image(&reference, Some(&wrong))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let right = PullAuth::Basic {
        username: "ci".into(),
        password: "s3cret".into(),
    };
    let id = rt.pull_image(&reference, Some(&right)).await?;
    ensure!(id.starts_with("sha256:"), "{id}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_with_command_env_mounts_and_logs() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("logs", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let status = env.rt.sandbox_status(&sandbox).await?;
    assert!(status.ready);
    let ip: Ipv4Addr = status.ip.as_deref().context("pod IP")?.parse()?;
    ensure!(
        env.containerd.in_pod_subnet(ip),
        "{ip} not in {}",
        env.containerd.pod_subnet()
    );
    assert_eq!(status.labels, pod.labels);
    // The pod's network namespace, for a mixed pod's Wasm containers to join.
    let netns = status.netns.as_deref().context("the sandbox's netns")?;
    ensure!(netns.exists(), "{} does not exist", netns.display());

    let volume = tempfile::tempdir()?;
    std::fs::write(volume.path().join("in.txt"), "from the host\n")?;
    let mut config = env.container(
        &pod,
        "app",
        r#"echo "$GREETING $WHO"; pwd; cat /data/in.txt; echo oops >&2; echo written > /data/out.txt; exit 3"#,
    );
    config.env = vec![
        ("GREETING".into(), "hello".into()),
        ("WHO".into(), "edge".into()),
    ];
    config.working_dir = Some("/tmp".into());
    config.mounts = vec![Mount {
        host_path: volume.path().to_owned(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let started = Instant::now();
    let id = env.run(&sandbox, &config, &pod).await?;
    let exit = bounded("wait", env.rt.wait_container(&id)).await??;
    assert_eq!((exit.code, exit.reason.as_str()), (3, "Error"));
    ensure!(exit.finished_at >= exit.started_at);
    ensure!(started.elapsed() < Duration::from_secs(10));

    assert_eq!(
        std::fs::read_to_string(volume.path().join("out.txt"))?,
        "written\n"
    );
    let log = read_log(&config.log_path)?;
    let stdout: Vec<&str> = log
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(stdout, ["hello edge", "/tmp", "from the host"]);
    ensure!(
        log.contains(&(Stream::Stderr, "oops".to_owned())),
        "{log:?}"
    );

    let info = env.rt.container_status(&id).await?;
    assert_eq!((info.name.as_str(), info.attempt), ("app", 0));
    assert_eq!(info.sandbox_id, sandbox);
    assert_eq!(info.labels, config.labels);
    ensure!(info.image_id.is_some(), "{info:?}");
    assert_eq!(info.state, ContainerState::Exited(exit.clone()));
    let listed = env.rt.list_containers(Some(&sandbox)).await?;
    assert_eq!(listed, [info]);

    // A container that succeeds says Completed.
    // Created from the reference alone (no id): containerd 1.6 resolves either.
    let mut by_reference = env.container(&pod, "ok", "true");
    by_reference.image.clear();
    let ok = env.run(&sandbox, &by_reference, &pod).await?;
    let exit = bounded("wait", env.rt.wait_container(&ok)).await??;
    assert_eq!((exit.code, exit.reason.as_str()), (0, "Completed"));

    env.rt.remove_container(&id).await?;
    env.rt.remove_container(&id).await?;
    assert!(matches!(
        env.rt.container_status(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        env.rt.wait_container(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
    env.remove_sandbox(&sandbox).await?;
    // Both are idempotent.
    env.remove_sandbox(&sandbox).await?;
    assert!(env.rt.list_sandboxes().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_out_the_timeout_only_for_containers_that_ignore_sigterm() -> anyhow::Result<()>
{
    let env = env().await?;
    let pod = env.sandbox("stop", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let stubborn = env.container(&pod, "stubborn", r#"trap "" TERM; echo ready; sleep 1000"#);
    let polite = env.container(
        &pod,
        "polite",
        r#"trap "exit 0" TERM; echo ready; while true; do sleep 0.1; done"#,
    );
    let stubborn_id = env.run(&sandbox, &stubborn, &pod).await?;
    let polite_id = env.run(&sandbox, &polite, &pod).await?;
    // The traps are set once each has said so.
    for c in [&stubborn, &polite] {
        eventually("ready", || async {
            ensure!(read_log(&c.log_path)?.iter().any(|(_, l)| l == "ready"));
            Ok(())
        })
        .await?;
    }

    let timeout = Duration::from_millis(1500);
    let t = Instant::now();
    env.rt
        .stop_container(&polite_id, Duration::from_secs(10))
        .await?;
    let polite_took = t.elapsed();
    let t = Instant::now();
    env.rt.stop_container(&stubborn_id, timeout).await?;
    let stubborn_took = t.elapsed();

    let exit = env.rt.wait_container(&polite_id).await?;
    assert_eq!(exit.code, 0, "{exit:?}");
    ensure!(
        polite_took < Duration::from_secs(3),
        "polite: {polite_took:?}"
    );
    let exit = env.rt.wait_container(&stubborn_id).await?;
    assert_eq!(exit.code, 137, "{exit:?}");
    // CRI's timeout is in whole seconds: 1.5 s becomes 2.
    ensure!(
        stubborn_took >= Duration::from_secs(2) && stubborn_took < Duration::from_secs(6),
        "stubborn: {stubborn_took:?}"
    );
    // Stopping a stopped container, and an unknown one, is fine.
    env.rt.stop_container(&stubborn_id, timeout).await?;
    env.rt.stop_container("no-such-container", timeout).await?;
    env.remove_sandbox(&sandbox).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_over_its_memory_limit_is_oom_killed() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("oom", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    // The shell doubles a string until the cgroup's limit stops it.
    let mut config = env.container(&pod, "hog", "x=a; while true; do x=$x$x; done");
    config.limits.memory_bytes = Some(16 << 20);
    config.limits.cpu_millicores = Some(500);
    let id = env.run(&sandbox, &config, &pod).await?;
    let exit = bounded("wait", env.rt.wait_container(&id)).await??;
    assert_eq!(
        (exit.code, exit.reason.as_str()),
        (137, "OOMKilled"),
        "{exit:?}"
    );
    env.remove_sandbox(&sandbox).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_stats_in_a_running_container() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("exec", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let id = env
        .run(&sandbox, &env.container(&pod, "app", "sleep 1000"), &pod)
        .await?;
    let info = env.rt.container_status(&id).await?;
    assert!(
        matches!(info.state, ContainerState::Running { .. }),
        "{info:?}"
    );

    let cmd = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
    let r = env
        .rt
        .exec_sync(
            &id,
            &cmd("echo out; echo err >&2; exit 7"),
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(r.exit_code, 7);
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");

    // No DNS config is sent: containerd gives the pod the node's resolv.conf.
    let r = env
        .rt
        .exec_sync(&id, &cmd("cat /etc/resolv.conf"), Duration::from_secs(10))
        .await?;
    let nameservers = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("nameserver") || l.starts_with("search"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        nameservers(&String::from_utf8(r.stdout)?),
        nameservers(&std::fs::read_to_string("/etc/resolv.conf")?)
    );

    let t = Instant::now();
    let timed_out = env
        .rt
        .exec_sync(&id, &cmd("sleep 30"), Duration::from_secs(1))
        .await;
    assert!(
        matches!(timed_out, Err(RuntimeError::Failed(_))),
        "{timed_out:?}"
    );
    ensure!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // containerd's stats come from the cgroup; burn a little CPU so there is some to count.
    env.rt
        .exec_sync(
            &id,
            &cmd("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"),
            Duration::from_secs(30),
        )
        .await?;
    let stats = eventually("stats", || async {
        let s = env.rt.container_stats(&id).await?;
        ensure!(s.cpu > Duration::ZERO && s.memory_bytes > 0, "{s:?}");
        Ok(s)
    })
    .await?;
    ensure!(stats.memory_bytes < 64 << 20, "{stats:?}");

    assert!(matches!(
        env.rt
            .exec_sync("no-such-container", &cmd("true"), Duration::from_secs(1))
            .await,
        Err(RuntimeError::NotFound(_))
    ));
    env.remove_sandbox(&sandbox).await
}

/// The caller's ends of an exec or attach session, as Edged's stream handler would hold them.
struct Caller {
    stdin: Option<mpsc::Sender<Bytes>>,
    stdout: mpsc::Receiver<Bytes>,
    stderr: mpsc::Receiver<Bytes>,
    resize: mpsc::Sender<TerminalSize>,
}

/// Streams for a session with stdout, stderr and resizes, and stdin if asked; small bounded
/// channels, so the tests also run the backpressure path.
fn session_streams(stdin: bool, tty: bool) -> (ExecStreams, Caller) {
    let (stdin_tx, stdin_rx) = mpsc::channel(4);
    let (stdout_tx, stdout_rx) = mpsc::channel(4);
    let (stderr_tx, stderr_rx) = mpsc::channel(4);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let streams = ExecStreams {
        stdin: stdin.then_some(stdin_rx),
        stdout: Some(stdout_tx),
        stderr: Some(stderr_tx),
        resize: Some(resize_rx),
        tty,
    };
    let caller = Caller {
        stdin: stdin.then_some(stdin_tx),
        stdout: stdout_rx,
        stderr: stderr_rx,
        resize: resize_tx,
    };
    (streams, caller)
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// Reads `rx` into `seen` until `done(seen)` holds, within [`LONG`].
async fn read_until(
    rx: &mut mpsc::Receiver<Bytes>,
    seen: &mut String,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let reading = async {
        while !done(seen) {
            let Some(chunk) = rx.recv().await else {
                bail!("the stream ended; read so far: {seen:?}");
            };
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok(())
    };
    match tokio::time::timeout(LONG, reading).await {
        Ok(result) => result,
        Err(_) => bail!("not seen within {LONG:?}; read so far: {seen:?}"),
    }
}

/// Everything `rx` brings until its sender is dropped (the session ended), within [`LONG`].
async fn read_all(rx: &mut mpsc::Receiver<Bytes>) -> anyhow::Result<String> {
    let mut seen = String::new();
    bounded("reading to the end", async {
        while let Some(chunk) = rx.recv().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await?;
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdin_and_output_and_reports_the_exit_code() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("iexec", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let id = env
        .run(&sandbox, &env.container(&pod, "app", "sleep 1000"), &pod)
        .await?;

    let (streams, mut caller) = session_streams(true, false);
    let stdin = caller.stdin.take().context("stdin")?;
    let command = sh("read x; echo got $x; echo oops >&2; exit 3");
    let session = env.rt.exec(&id, &command, streams);
    let typing = async {
        stdin.send(Bytes::from_static(b"hi\n")).await?;
        anyhow::Ok(())
    };
    let (code, stdout, stderr, typed) = tokio::join!(
        bounded("exec", session),
        read_all(&mut caller.stdout),
        read_all(&mut caller.stderr),
        typing
    );
    typed?;
    assert_eq!(code??, 3);
    assert_eq!(stdout?, "got hi\n");
    assert_eq!(stderr?, "oops\n");

    // Stdin piped in, then closed: the command reads to end of file (a FIN on the stdin
    // stream), and its output and exit code still come. Far more than a SPDY window (64 KiB)
    // each way, in both directions at once: containerd grants no window, so none is awaited,
    // and the output is read while the input waits for the command.
    let input: String = (0..150_000).map(|i| format!("{i}\n")).collect();
    let (streams, mut caller) = session_streams(true, false);
    let stdin = caller.stdin.take().context("stdin")?;
    let command = sh("cat");
    let session = env.rt.exec(&id, &command, streams);
    let piping = async {
        for chunk in input.as_bytes().chunks(16 * 1024) {
            stdin.send(Bytes::copy_from_slice(chunk)).await?;
        }
        // Dropping the sender is the end of file.
        drop(stdin);
        anyhow::Ok(())
    };
    let (code, stdout, piped) = tokio::join!(
        bounded("exec", session),
        read_all(&mut caller.stdout),
        piping
    );
    piped?;
    assert_eq!(code??, 0);
    let stdout = stdout?;
    ensure!(
        stdout == input,
        "cat echoed {} bytes of {}",
        stdout.len(),
        input.len()
    );

    // What the command does after end of file reaches the caller, and so does its exit code.
    let (streams, mut caller) = session_streams(true, false);
    let stdin = caller.stdin.take().context("stdin")?;
    stdin.send(Bytes::from_static(b"hello\n")).await?;
    drop(stdin);
    let command = sh("cat; echo after-eof; exit 4");
    let session = env.rt.exec(&id, &command, streams);
    let (code, stdout) = tokio::join!(bounded("exec", session), read_all(&mut caller.stdout));
    assert_eq!(code??, 4);
    assert_eq!(stdout?, "hello\nafter-eof\n");

    // A caller that closes stdin at once: the command sees an empty input.
    let (streams, mut caller) = session_streams(true, false);
    drop(caller.stdin.take());
    let command = sh("wc -c");
    let session = env.rt.exec(&id, &command, streams);
    let (code, stdout) = tokio::join!(bounded("exec", session), read_all(&mut caller.stdout));
    assert_eq!(code??, 0);
    assert_eq!(stdout?.trim(), "0");

    // Output only, larger than the channels hold: the session waits for the reader.
    let (streams, mut caller) = session_streams(false, false);
    let command = sh("seq 1 20000");
    let session = env.rt.exec(&id, &command, streams);
    let (code, stdout) = tokio::join!(bounded("exec", session), read_all(&mut caller.stdout));
    assert_eq!(code??, 0);
    let stdout = stdout?;
    let numbers: Vec<&str> = stdout.lines().collect();
    assert_eq!(numbers.len(), 20000);
    assert_eq!((numbers[0], numbers[19999]), ("1", "20000"));

    // A binary that is not there: containerd cannot start it and says why (no exit code).
    let (streams, _caller) = session_streams(false, false);
    let missing = bounded(
        "exec",
        env.rt.exec(&id, &["/no/such/binary".to_owned()], streams),
    )
    .await?;
    assert!(
        matches!(&missing, Err(RuntimeError::Failed(m)) if m.contains("no such file or directory")),
        "{missing:?}"
    );
    // Nor one found through PATH.
    let (streams, _caller) = session_streams(false, false);
    let missing = bounded("exec", env.rt.exec(&id, &["nosuchcmd".to_owned()], streams)).await?;
    assert!(
        matches!(&missing, Err(RuntimeError::Failed(m)) if m.contains("executable file not found")),
        "{missing:?}"
    );
    let (streams, _caller) = session_streams(false, false);
    let missing = env.rt.exec("no-such-container", &sh("true"), streams).await;
    assert!(
        matches!(missing, Err(RuntimeError::NotFound(_))),
        "{missing:?}"
    );
    env.remove_sandbox(&sandbox).await
}

/// The shell's answers so far, one per line typed: `stty size`'s `rows cols`, or its complaint
/// while the terminal has no size yet.
fn size_answers(output: &str) -> Vec<&str> {
    output
        .split('\n')
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("size: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_follows_resizes() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("tty", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let id = env
        .run(&sandbox, &env.container(&pod, "app", "sleep 1000"), &pod)
        .await?;

    let (streams, mut caller) = session_streams(true, true);
    let stdin = caller.stdin.take().context("stdin")?;
    let script = r#"tty; while read line; do [ "$line" = q ] && exit 0; echo "size: $(stty size 2>&1)"; done"#;
    let session = tokio::spawn({
        let (rt, id) = (env.rt.clone(), id.clone());
        async move { rt.exec(&id, &sh(script), streams).await }
    });

    let mut seen = String::new();
    read_until(&mut caller.stdout, &mut seen, |s| s.contains('\n')).await?;
    ensure!(seen.starts_with("/dev/pts/"), "tty says {seen:?}");
    caller
        .resize
        .send(TerminalSize {
            width: 100,
            height: 30,
        })
        .await?;
    // The resize and the typed lines travel separately (containerd resizes the pty through
    // the shim; until then the terminal has no size), so ask until the shell sees the new size.
    let deadline = Instant::now() + LONG;
    loop {
        let before = size_answers(&seen).len();
        stdin.send(Bytes::from_static(b"\n")).await?;
        read_until(&mut caller.stdout, &mut seen, |s| {
            size_answers(s).len() > before
        })
        .await?;
        if size_answers(&seen).last() == Some(&"30 100") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the size never changed: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stdin.send(Bytes::from_static(b"q\n")).await?;
    let (code, rest) = tokio::join!(bounded("exec", session), read_all(&mut caller.stdout));
    assert_eq!(code???, 0);
    // The terminal echoes what was typed and ends lines with CR LF.
    ensure!(rest?.contains("q\r\n"), "the echo of q");
    // With a terminal everything comes on stdout.
    assert_eq!(read_all(&mut caller.stderr).await?, "");
    env.remove_sandbox(&sandbox).await
}

/// The `line N` numbers a talker printed.
fn line_numbers(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_follows_a_container_and_leaves_it_running() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("attach", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let volume = tempfile::tempdir()?;
    let mut talker = env.container(
        &pod,
        "talker",
        "i=0; while [ ! -f /data/stop ]; do echo line $i; i=$((i+1)); sleep 0.1; done; echo bye",
    );
    talker.mounts = vec![Mount {
        host_path: volume.path().to_owned(),
        container_path: "/data".into(),
        read_only: true,
    }];
    let talker_id = env.run(&sandbox, &talker, &pod).await?;

    // Attach, hear a few lines, then drop the session.
    let (streams, mut caller) = session_streams(false, false);
    // A boxed future (async_trait's), so that dropping it below really ends the session.
    let mut session = env.rt.attach(&talker_id, streams);
    let mut seen = String::new();
    tokio::select! {
        ended = &mut session => bail!("the attach ended early: {ended:?}"),
        read = read_until(&mut caller.stdout, &mut seen, |s| line_numbers(s).len() >= 3) => read?,
    }
    let heard = line_numbers(&seen);
    ensure!(
        heard.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive lines: {seen:?}"
    );
    drop(session);
    drop(caller);

    // The container carries on: its log passes well beyond what the attach heard.
    let last = heard.last().copied().context("a line")?;
    eventually("the talker goes on talking", || async {
        let log = read_log(&talker.log_path)?;
        let beyond = format!("line {}", last + 10);
        ensure!(log.iter().any(|(_, l)| *l == beyond), "not yet at {beyond}");
        Ok(())
    })
    .await?;
    let info = env.rt.container_status(&talker_id).await?;
    assert!(
        matches!(info.state, ContainerState::Running { .. }),
        "{info:?}"
    );

    // Attached again, the session ends when the container exits, with its last words.
    let (streams, mut caller) = session_streams(false, false);
    let mut session = env.rt.attach(&talker_id, streams);
    let mut seen = String::new();
    tokio::select! {
        ended = &mut session => bail!("the attach ended early: {ended:?}"),
        read = read_until(&mut caller.stdout, &mut seen, |s| !line_numbers(s).is_empty()) => read?,
    }
    std::fs::write(volume.path().join("stop"), "")?;
    let (ended, rest) = tokio::join!(bounded("attach", session), read_all(&mut caller.stdout));
    ended??;
    ensure!(rest?.ends_with("bye\n"), "the last line");
    let exit = bounded("wait", env.rt.wait_container(&talker_id)).await??;
    assert_eq!(exit.code, 0);

    // A container with stdin open reads what an attached client types.
    let mut reader = env.container(&pod, "reader", r#"while read l; do echo "got $l"; done"#);
    reader.stdin = true;
    let reader_id = env.run(&sandbox, &reader, &pod).await?;
    let (streams, mut caller) = session_streams(true, false);
    let stdin = caller.stdin.take().context("stdin")?;
    let mut session = env.rt.attach(&reader_id, streams);
    stdin.send(Bytes::from_static(b"hello\n")).await?;
    let mut seen = String::new();
    tokio::select! {
        ended = &mut session => bail!("the attach ended early: {ended:?}"),
        read = read_until(&mut caller.stdout, &mut seen, |s| s.contains("got hello\n")) => read?,
    }
    drop(session);
    let info = env.rt.container_status(&reader_id).await?;
    assert!(
        matches!(info.state, ContainerState::Running { .. }),
        "{info:?}"
    );
    let (streams, _caller) = session_streams(false, false);
    let err = env.rt.attach("no-such-container", streams).await;
    assert!(matches!(err, Err(RuntimeError::NotFound(_))), "{err:?}");
    env.remove_sandbox(&sandbox).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_adopts_what_an_old_one_made() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("adopt", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let config = env.container(&pod, "app", "sleep 1000");
    let id = env.run(&sandbox, &config, &pod).await?;
    let ip = env.rt.sandbox_status(&sandbox).await?.ip;

    // As edgecore after a restart: a runtime that made none of it.
    let fresh = CriRuntime::connect(env.containerd.socket().to_str().context("utf-8")?)?;
    let sandboxes = fresh.list_sandboxes().await?;
    let found = sandboxes
        .iter()
        .find(|s| s.id == sandbox)
        .context("sandbox listed")?;
    assert_eq!(found.labels, pod.labels);
    assert!(found.ready);
    assert_eq!(found.ip, ip);
    let containers = fresh.list_containers(None).await?;
    let c = containers
        .iter()
        .find(|c| c.id == id)
        .context("container listed")?;
    assert_eq!(c.sandbox_id, sandbox);
    assert_eq!(c.labels, config.labels);
    assert_eq!(c.name, "app");
    assert!(matches!(c.state, ContainerState::Running { .. }));
    // Its status names the sandbox too, though this runtime never saw it created.
    let other = CriRuntime::connect(&env.containerd.endpoint())?;
    assert_eq!(other.container_status(&id).await?.sandbox_id, sandbox);
    fresh.shutdown().await;
    env.remove_sandbox(&sandbox).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_and_waiters_outlive_a_containerd_restart() -> anyhow::Result<()> {
    let mut env = env().await?;
    let pod = env.sandbox("restart", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let volume = tempfile::tempdir()?;
    let mut config = env.container(
        &pod,
        "app",
        "while [ ! -f /data/stop ]; do sleep 0.1; done; exit 5",
    );
    config.mounts = vec![Mount {
        host_path: volume.path().to_owned(),
        container_path: "/data".into(),
        read_only: true,
    }];
    let id = env.run(&sandbox, &config, &pod).await?;
    let waiter = tokio::spawn({
        let (rt, id) = (env.rt.clone(), id.clone());
        async move { rt.wait_container(&id).await }
    });

    let containerd = &mut env.containerd;
    tokio::task::block_in_place(|| containerd.stop())?;
    assert!(matches!(
        env.rt.version().await,
        Err(RuntimeError::Unavailable(_))
    ));
    assert!(matches!(
        env.rt.container_status(&id).await,
        Err(RuntimeError::Unavailable(_))
    ));
    assert!(matches!(
        env.rt.image_status(BUSYBOX_IMAGE).await,
        Err(ImageError::Unavailable(_))
    ));
    // A wait that starts while containerd is down waits as well.
    let late_waiter = tokio::spawn({
        let (rt, id) = (env.rt.clone(), id.clone());
        async move { rt.wait_container(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!waiter.is_finished() && !late_waiter.is_finished());

    let containerd = &mut env.containerd;
    tokio::task::block_in_place(|| containerd.restart())?;
    // The same runtime redials.
    eventually("version after restart", || async {
        Ok(env.rt.version().await?)
    })
    .await?;
    let info = env.rt.container_status(&id).await?;
    assert!(
        matches!(info.state, ContainerState::Running { .. }),
        "{info:?}"
    );
    assert!(!waiter.is_finished());

    std::fs::write(volume.path().join("stop"), "")?;
    for w in [waiter, late_waiter] {
        let exit = bounded("wait after restart", w).await???;
        assert_eq!(exit.code, 5);
    }
    env.remove_sandbox(&sandbox).await
}

/// CAP_SYS_ADMIN's bit in `CapEff`.
const CAP_SYS_ADMIN: u64 = 1 << 21;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_security_context_reach_the_container() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("security", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let mut limited = env.container(&pod, "limited", "sleep 1000");
    limited.limits = Limits {
        memory_bytes: Some(32 << 20),
        cpu_millicores: Some(500),
        cpu_request_millicores: Some(250),
    };
    limited.security = Security {
        run_as_user: Some(1000),
        run_as_group: Some(3000),
        read_only_root_fs: true,
        privileged: false,
    };
    let mut privileged = env.container(&pod, "privileged", "sleep 1000");
    privileged.security.privileged = true;
    let limited_id = env.run(&sandbox, &limited, &pod).await?;
    let privileged_id = env.run(&sandbox, &privileged, &pod).await?;

    let sh = |id: &str, script: &str| {
        let (id, script) = (id.to_owned(), script.to_owned());
        let rt = env.rt.clone();
        async move {
            let command = ["sh".to_owned(), "-c".to_owned(), script.clone()];
            let r = rt.exec_sync(&id, &command, Duration::from_secs(10)).await?;
            ensure!(r.exit_code == 0, "{script}: {r:?}");
            anyhow::Ok(String::from_utf8(r.stdout)?.trim().to_owned())
        }
    };
    // runc mounts each cgroup v1 hierarchy with the container's own cgroup at its root.
    assert_eq!(
        sh(
            &limited_id,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        )
        .await?,
        (32u64 << 20).to_string()
    );
    assert_eq!(
        sh(&limited_id, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu/cpu.shares").await?,
        "50000\n100000\n256"
    );
    assert_eq!(sh(&limited_id, "id -u; id -g").await?, "1000\n3000");
    assert_eq!(
        sh(
            &limited_id,
            "touch /written 2>/dev/null && echo writable || echo read-only"
        )
        .await?,
        "read-only"
    );
    let cap_eff = |status: String| -> anyhow::Result<u64> {
        let hex = status.trim_start_matches("CapEff:").trim();
        Ok(u64::from_str_radix(hex, 16)?)
    };
    let plain = cap_eff(sh(&limited_id, "grep CapEff /proc/self/status").await?)?;
    let full = cap_eff(sh(&privileged_id, "grep CapEff /proc/self/status").await?)?;
    ensure!(plain & CAP_SYS_ADMIN == 0, "CapEff {plain:x}");
    ensure!(full & CAP_SYS_ADMIN != 0, "privileged CapEff {full:x}");
    env.remove_sandbox(&sandbox).await
}

/// An HTTP/1.0 `GET /` through a forward to `port` of `sandbox`, followed by the caller's
/// half-close when `half_close`; how the forward ended and what came back.
async fn get_through(
    rt: &CriRuntime,
    sandbox: &str,
    port: u16,
    half_close: bool,
) -> anyhow::Result<(Result<(), RuntimeError>, String)> {
    let (to_pod, input) = mpsc::channel(4);
    let (output, mut from_pod) = mpsc::channel(4);
    to_pod
        .send(Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"))
        .await?;
    // Left open, containerd ends the forward itself a second after httpd closed its side.
    let open = (!half_close).then_some(to_pod);
    let (forwarded, answer) = tokio::join!(
        bounded(
            "port-forward",
            rt.port_forward(sandbox, port, PortStreams { input, output })
        ),
        read_all(&mut from_pod)
    );
    drop(open);
    Ok((forwarded?, answer?))
}

/// The page httpd serves in [`port_forward_reaches_a_server_in_the_pod_and_says_what_is_not_there`].
const PAGE: &str = "hello-from-busybox\n";

fn served_the_page(answer: &str) -> anyhow::Result<()> {
    ensure!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with(PAGE),
        "{answer:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_server_in_the_pod_and_says_what_is_not_there() -> anyhow::Result<()>
{
    let env = env().await?;
    let pod = env.sandbox("pforward", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let script = format!(
        "mkdir -p /www && printf '{}' > /www/index.html && exec httpd -f -p 8080 -h /www",
        PAGE.replace('\n', "\\n")
    );
    env.run(&sandbox, &env.container(&pod, "web", &script), &pod)
        .await?;
    // httpd listens a moment after its container starts.
    let answer = eventually("httpd answering through a forward", || async {
        let (forwarded, answer) = get_through(&env.rt, &sandbox, 8080, true).await?;
        forwarded?;
        Ok(answer)
    })
    .await?;
    served_the_page(&answer)?;

    // Two connections at once, each its own forward; one half-closes, one leaves its side open.
    let (closing, open) = tokio::join!(
        get_through(&env.rt, &sandbox, 8080, true),
        get_through(&env.rt, &sandbox, 8080, false)
    );
    for (forwarded, answer) in [closing?, open?] {
        forwarded?;
        served_the_page(&answer)?;
    }

    // Nothing listens on port 9: containerd's words, without the framing that names the sandbox
    // (Edged words that part with the pod's name).
    let (refused, answer) = get_through(&env.rt, &sandbox, 9, true).await?;
    assert!(answer.is_empty(), "{answer:?}");
    match &refused {
        Err(RuntimeError::Failed(m)) => {
            ensure!(
                m.contains("127.0.0.1:9: connect: connection refused"),
                "{m}"
            );
            ensure!(!m.starts_with("error forwarding port"), "{m}");
        }
        other => bail!("{other:?}"),
    }
    let (missing, _) = get_through(&env.rt, "no-such-sandbox", 80, true).await?;
    assert!(
        matches!(missing, Err(RuntimeError::NotFound(_))),
        "{missing:?}"
    );
    env.remove_sandbox(&sandbox).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_pod() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("hostnet", true)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;
    let status = env.rt.sandbox_status(&sandbox).await?;
    assert!(status.ready);
    let id = env
        .run(&sandbox, &env.container(&pod, "app", "sleep 1000"), &pod)
        .await?;
    let cmd = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
    let r = env
        .rt
        .exec_sync(
            &id,
            &cmd("hostname; readlink /proc/self/ns/net"),
            Duration::from_secs(10),
        )
        .await?;
    let out = String::from_utf8(r.stdout)?;
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let host_netns = std::fs::read_link("/proc/self/ns/net")?;
    let seen: Vec<&str> = out.lines().collect();
    assert_eq!(
        seen,
        [host_name.trim(), host_netns.to_str().context("utf-8")?],
        "the node's hostname and network namespace"
    );
    env.remove_sandbox(&sandbox).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_their_kind() -> anyhow::Result<()> {
    let env = env().await?;
    let pod = env.sandbox("bad", false)?;
    let sandbox = env.rt.run_sandbox(&pod).await?;

    let mut outside = env.container(&pod, "app", "true");
    outside.log_path = "/tmp/elsewhere/0.log".into();
    assert!(matches!(
        env.rt.create_container(&sandbox, &outside, &pod).await,
        Err(RuntimeError::InvalidConfig { .. })
    ));
    let config = env.container(&pod, "app", "true");
    let err = env
        .rt
        .create_container("no-such-sandbox", &config, &pod)
        .await;
    assert!(matches!(err, Err(RuntimeError::NotFound(_))), "{err:?}");
    let mut missing_image = config.clone();
    missing_image.image =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let err = env
        .rt
        .create_container(&sandbox, &missing_image, &pod)
        .await;
    assert!(
        matches!(
            err,
            Err(RuntimeError::NotFound(_) | RuntimeError::Failed(_))
        ),
        "{err:?}"
    );
    assert!(matches!(
        env.rt.start_container("no-such-container").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        env.rt.sandbox_status("no-such-sandbox").await,
        Err(RuntimeError::NotFound(_))
    ));
    env.rt.stop_sandbox("no-such-sandbox").await?;
    env.rt.remove_sandbox("no-such-sandbox").await?;
    env.remove_sandbox(&sandbox).await
}

/// Figures for the report: `cargo test -p wedge-shims --test cri -- --ignored --nocapture
/// measure`. Starts pods one at a time, as a lone edge would, each through `CriRuntime` and,
/// alternately, through a bare CRI client with the same requests, so the crate's own cost shows
/// under whatever load the machine has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it alone"]
async fn measure_pod_start() -> anyhow::Result<()> {
    use wedge_testkit::containerd::cri;

    const N: usize = 20;
    const STEPS: [&str; 5] = [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "sandbox+container to Running",
        "teardown",
    ];
    let env = env().await?;
    let mut raw_client = env.containerd.runtime_client().await?;
    // [crate, raw][step]
    let mut laps: [[Vec<Duration>; 5]; 2] = Default::default();
    for i in 0..N {
        for through_crate in if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let pod = env.sandbox(&format!("m{i}"), false)?;
            let config = env.container(&pod, "app", "sleep 1000");
            let t0 = Instant::now();
            let (sandbox, id, t1, t2, t3) = if through_crate {
                let sandbox = env.rt.run_sandbox(&pod).await?;
                let t1 = Instant::now();
                let id = env.rt.create_container(&sandbox, &config, &pod).await?;
                let t2 = Instant::now();
                env.rt.start_container(&id).await?;
                let t3 = Instant::now();
                let info = env.rt.container_status(&id).await?;
                ensure!(matches!(info.state, ContainerState::Running { .. }));
                (sandbox, id, t1, t2, t3)
            } else {
                let sandbox_config = env.containerd.pod_config(&format!("raw{i}"))?;
                let sandbox = raw_client
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(sandbox_config.clone()),
                        runtime_handler: String::new(),
                    })
                    .await?
                    .into_inner()
                    .pod_sandbox_id;
                let t1 = Instant::now();
                let container = cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: env.image_id.clone(),
                        ..Default::default()
                    }),
                    command: config.command.clone(),
                    args: config.args.clone(),
                    log_path: "app/0.log".into(),
                    ..Default::default()
                };
                let id = raw_client
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: sandbox.clone(),
                        config: Some(container),
                        sandbox_config: Some(sandbox_config),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                let t2 = Instant::now();
                raw_client
                    .start_container(cri::StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await?;
                let t3 = Instant::now();
                let status = raw_client
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .status
                    .context("status")?;
                ensure!(status.state == cri::ContainerState::ContainerRunning as i32);
                (sandbox, id, t1, t2, t3)
            };
            let t4 = Instant::now();
            // Teardown always through the crate: it is not what is compared.
            env.rt.stop_container(&id, Duration::ZERO).await?;
            env.remove_sandbox(&sandbox).await?;
            let which = usize::from(!through_crate);
            for (step, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t0, t4.elapsed()]
                .into_iter()
                .enumerate()
            {
                laps[which][step].push(d);
            }
        }
    }
    let p50 = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    println!("n={N} each, p50: step | CriRuntime | bare CRI client");
    for (step, name) in STEPS.iter().enumerate() {
        println!(
            "  {name:30} {:>10.1?} {:>10.1?}",
            p50(&laps[0][step]),
            p50(&laps[1][step])
        );
    }
    Ok(())
}
