//! `kubectl exec` and `kubectl attach` on Wasm containers, over the runtime boundary
//! (`RuntimeService::exec` and `attach`) with the channels Edged's streaming session gives.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use wedge_core::runtime::{ExecStreams, RuntimeError, RuntimeService};

use crate::wasm::harness::{TestRuntime, pod, running, terminated};

/// The longest any step may take.
const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The client's ends of a session's channels.
struct Client {
    stdin: Option<mpsc::Sender<Bytes>>,
    stdout: mpsc::Receiver<Bytes>,
    stderr: Option<mpsc::Receiver<Bytes>>,
}

/// Streams as Edged makes them: small bounded channels, no stderr with a terminal.
fn session(stdin: bool, tty: bool) -> (ExecStreams, Client) {
    let (in_tx, in_rx) = mpsc::channel(4);
    let (out_tx, out_rx) = mpsc::channel(4);
    let (err_tx, err_rx) = mpsc::channel(4);
    let (resize_tx, resize_rx) = mpsc::channel(1);
    // Sizes the runtime has no use for must not hold up the client.
    if tty {
        tokio::spawn(async move {
            for width in 80..200 {
                let size = wedge_core::runtime::TerminalSize { width, height: 24 };
                if resize_tx.send(size).await.is_err() {
                    return;
                }
            }
        });
    }
    let streams = ExecStreams {
        stdin: stdin.then_some(in_rx),
        stdout: Some(out_tx),
        stderr: (!tty).then_some(err_tx),
        resize: tty.then_some(resize_rx),
        tty,
    };
    let client = Client {
        stdin: stdin.then_some(in_tx),
        stdout: out_rx,
        stderr: (!tty).then_some(err_rx),
    };
    (streams, client)
}

/// Everything on `rx` until the runtime drops its end.
async fn read_all(rx: Option<mpsc::Receiver<Bytes>>) -> String {
    let mut text = Vec::new();
    if let Some(mut rx) = rx {
        while let Some(chunk) = rx.recv().await {
            text.extend_from_slice(&chunk);
        }
    }
    String::from_utf8(text).expect("utf-8")
}

/// Reads `rx` until the text read contains `needle`; returns the text.
async fn read_until(rx: &mut mpsc::Receiver<Bytes>, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = bounded(needle, rx.recv())
            .await
            .unwrap_or_else(|| panic!("closed before {needle:?}: {text:?}"));
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    text
}

struct Ran {
    result: Result<i32, RuntimeError>,
    stdout: String,
    stderr: String,
}

impl TestRuntime {
    /// The id of the pod's container `main`.
    fn main_id(&self, uid: &str) -> String {
        self.workers
            .container_id(uid, "main")
            .expect("the container was created")
            .1
    }

    /// Runs `argv` in `id` with no stdin; its outcome and output.
    async fn exec(&self, id: &str, argv: &[&str], tty: bool) -> Ran {
        let (streams, client) = session(false, tty);
        self.exec_with(id, argv, streams, client).await
    }

    async fn exec_with(
        &self,
        id: &str,
        argv: &[&str],
        streams: ExecStreams,
        client: Client,
    ) -> Ran {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let Client { stdout, stderr, .. } = client;
        let (result, stdout, stderr) = bounded("the command", async {
            tokio::join!(
                self.rt.exec(id, &argv, streams),
                read_all(Some(stdout)),
                read_all(stderr)
            )
        })
        .await;
        Ran {
            result,
            stdout,
            stderr,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_a_command_with_the_containers_env_and_volumes() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let host = tempfile::tempdir().expect("dir");
    std::fs::write(host.path().join("in.txt"), "from the host").expect("write");
    let uid = t
        .start(pod(
            "exec",
            &image,
            json!({
                "args": ["sleep"],
                "env": [{"name": "GREETING", "value": "hello edge"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}],
            }),
            json!({"volumes": [{"name": "data", "hostPath": {"path": host.path(), "type": "Directory"}}]}),
        ))
        .await;
    t.wait_for(&uid, "running", running).await;
    let id = t.main_id(&uid);

    // argv is the command's; `wasi:cli/exit` in WASI 0.2 carries only success or failure, so
    // `std::process::exit(7)` ends a Rust guest with 1.
    let ran = t.exec(&id, &["misbehave", "exit", "7"], false).await;
    assert_eq!(ran.result, Ok(1));
    let ran = t.exec(&id, &["misbehave", "exit", "0"], false).await;
    assert_eq!(ran.result, Ok(0));
    let ran = t.exec(&id, &["misbehave", "print", "2"], false).await;
    assert_eq!(
        (ran.result, ran.stdout.as_str()),
        (Ok(0), "line 0\nline 1\n")
    );

    let ran = t.exec(&id, &["misbehave", "env"], false).await;
    assert_eq!(ran.result, Ok(0));
    assert!(ran.stdout.contains("GREETING=hello edge"), "{}", ran.stdout);

    let ran = t
        .exec(&id, &["misbehave", "read", "/data/in.txt"], false)
        .await;
    assert_eq!(ran.result, Ok(0), "{}", ran.stderr);
    assert_eq!(ran.stdout, "read: from the host\n");

    // Without a terminal, stderr is apart; with one, it comes on stdout, its lines ended as a
    // pty ends them.
    let ran = t.exec(&id, &["misbehave", "stderr", "oops"], false).await;
    assert_eq!(
        (ran.result, ran.stdout.as_str(), ran.stderr.as_str()),
        (Ok(0), "", "oops\n")
    );
    let ran = t.exec(&id, &["misbehave", "stderr", "oops"], true).await;
    assert_eq!(
        (ran.result, ran.stdout.as_str(), ran.stderr.as_str()),
        (Ok(0), "oops\r\n", "")
    );

    // A crash is not an exit code.
    let ran = t.exec(&id, &["misbehave", "trap"], false).await;
    assert_eq!(ran.stdout, "about to trap\n");
    match ran.result {
        Err(RuntimeError::Failed(m)) => assert!(m.contains("the command trapped"), "{m}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let ran = t.exec(&id, &[], false).await;
    assert!(
        matches!(&ran.result, Err(RuntimeError::InvalidConfig { field, .. }) if field == "command"),
        "{:?}",
        ran.result
    );
    let ran = t.exec("wasm-nope", &["misbehave", "env"], false).await;
    assert!(
        matches!(ran.result, Err(RuntimeError::NotFound(_))),
        "{:?}",
        ran.result
    );

    // Commands' output is theirs: the container's log has none of it, and it still runs.
    let log = t.logs(&uid, "main").await;
    assert!(!log.contains("oops") && !log.contains("GREETING"), "{log}");
    assert!(running(&t.pod_status(&uid).expect("status")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_pipes_stdin_to_the_command_until_it_is_closed() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let uid = t
        .start(pod("cat", &image, json!({"args": ["sleep"]}), json!({})))
        .await;
    t.wait_for(&uid, "running", running).await;
    let id = t.main_id(&uid);

    let (streams, mut client) = session(true, false);
    let stdin = client.stdin.take().expect("stdin");
    // More than every buffer on the way holds, so the command waits for its reader.
    let line = format!("{}\n", "x".repeat(1023));
    let feed = async move {
        stdin
            .send(Bytes::from_static(b"hello\n"))
            .await
            .expect("send");
        for _ in 0..200 {
            stdin.send(Bytes::from(line.clone())).await.expect("send");
        }
        // Dropping the sender is end of file.
    };
    let (ran, ()) = tokio::join!(
        t.exec_with(&id, &["misbehave", "cat"], streams, client),
        feed
    );
    assert_eq!(ran.result, Ok(0), "{}", ran.stderr);
    assert!(ran.stdout.starts_with("hello\nxxx"), "{:.20}", ran.stdout);
    assert_eq!(ran.stdout.len(), 6 + 200 * 1024);

    // A command given no stdin reads end of file at once.
    let ran = t.exec(&id, &["misbehave", "cat"], false).await;
    assert_eq!((ran.result, ran.stdout.as_str()), (Ok(0), ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ends_with_its_session_and_with_its_container() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let uid = t
        .start(pod("ends", &image, json!({"args": ["sleep"]}), json!({})))
        .await;
    t.wait_for(&uid, "running", running).await;
    let id = t.main_id(&uid);
    let argv = vec!["misbehave".to_owned(), "ticks".to_owned(), "20".to_owned()];

    // Dropping the session stops the command: its output channel closes.
    let (streams, mut client) = session(false, false);
    {
        let exec = t.rt.exec(&id, &argv, streams);
        tokio::pin!(exec);
        tokio::select! {
            r = &mut exec => panic!("ticks ended: {r:?}"),
            text = read_until(&mut client.stdout, "tick 2\n") => assert!(text.starts_with("tick 0\n")),
        }
    }
    bounded("the dropped command's output to close", async {
        while client.stdout.recv().await.is_some() {}
    })
    .await;

    // Stopping the container stops the commands in it.
    let (streams, mut client) = session(false, false);
    let exec = t.rt.exec(&id, &argv, streams);
    let stop = async {
        read_until(&mut client.stdout, "tick 1\n").await;
        t.stop_pod(&uid, Duration::from_secs(2)).await;
    };
    let (result, ()) = bounded("the stop", async { tokio::join!(exec, stop) }).await;
    match result {
        Err(RuntimeError::Failed(m)) => assert!(m.contains("was stopped"), "{m}"),
        other => panic!("expected the stop to end the command, got {other:?}"),
    }

    // A container that has exited has nothing to run a command in.
    let done = t
        .start(pod(
            "done",
            &image,
            json!({"args": ["print", "1"]}),
            json!({}),
        ))
        .await;
    t.wait_for(&done, "the exit", terminated).await;
    let ran = t
        .exec(&t.main_id(&done), &["misbehave", "env"], false)
        .await;
    match ran.result {
        Err(RuntimeError::Failed(m)) => assert!(m.contains("is not running"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_have_no_command_to_exec() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("fan_handler").await;
    let uid = t
        .start(pod(
            "handler",
            &image,
            json!({"env": [{"name": "THRESHOLD", "value": "30"}]}),
            json!({}),
        ))
        .await;
    t.wait_for(&uid, "running", running).await;
    let ran = t.exec(&t.main_id(&uid), &["fan", "--help"], false).await;
    match ran.result {
        Err(RuntimeError::Unsupported(m)) => assert!(m.contains("wasi:cli/run"), "{m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_live_output_and_detaching_leaves_the_app_running() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let uid = t
        .start(pod(
            "ticks",
            &image,
            json!({"args": ["ticks", "20"]}),
            json!({}),
        ))
        .await;
    t.wait_for_log(&uid, "main", "tick 2\n").await;
    let id = t.main_id(&uid);

    let (streams, mut client) = session(false, false);
    let attach = t.rt.attach(&id, streams);
    tokio::pin!(attach);
    let text = tokio::select! {
        r = &mut attach => panic!("the attach ended: {r:?}"),
        text = async {
            // Lines as they are written from now on: whole ticks, one after the other.
            let text = read_until(&mut client.stdout, "\n").await;
            let first: u64 = text
                .strip_prefix("tick ")
                .and_then(|t| t.lines().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a tick: {text:?}"));
            assert!(first >= 2, "output from now on, not the log: {text:?}");
            let more = read_until(&mut client.stdout, &format!("tick {}\n", first + 3)).await;
            format!("{text}{more}")
        } => text,
    };
    assert!(text.lines().all(|l| l.starts_with("tick ")), "{text:?}");

    // Detaching (the client closes its ends) ends the session, not the app.
    drop(client);
    let detached = bounded("the detach", &mut attach).await;
    assert_eq!(detached, Ok(()));
    let later = text.lines().count() + 10;
    t.wait_for_log(&uid, "main", &format!("tick {later}\n"))
        .await;
    assert!(running(&t.pod_status(&uid).expect("status")));

    // An attached session ends when the app does.
    let (streams, client) = session(false, false);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.stop_pod(&uid, Duration::from_secs(2)).await;
    };
    let (detached, _, ()) = bounded("the end of the app", async {
        tokio::join!(
            t.rt.attach(&id, streams),
            read_all(Some(client.stdout)),
            stop
        )
    })
    .await;
    assert_eq!(detached, Ok(()));
    let (streams, _client) = session(false, false);
    match t.rt.attach(&id, streams).await {
        Err(RuntimeError::Failed(m)) => assert!(m.contains("is not running"), "{m}"),
        // Edged may have removed the stopped container already.
        Err(RuntimeError::NotFound(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_types_into_an_app_created_with_stdin() {
    let t = TestRuntime::new(&[]);
    let image = t.local_image("misbehave").await;
    let uid = t
        .start(pod(
            "stdin",
            &image,
            json!({"args": ["cat"], "stdin": true}),
            json!({}),
        ))
        .await;
    t.wait_for(&uid, "running", running).await;
    let id = t.main_id(&uid);

    for word in ["hello", "again"] {
        let (streams, mut client) = session(true, false);
        let stdin = client.stdin.take().expect("stdin");
        let attach = t.rt.attach(&id, streams);
        tokio::pin!(attach);
        tokio::select! {
            r = &mut attach => panic!("the attach ended: {r:?}"),
            text = async {
                stdin.send(Bytes::from(format!("{word}\n"))).await.expect("send");
                read_until(&mut client.stdout, "\n").await
            } => assert_eq!(text, format!("{word}\n")),
        }
        // Closing the client's stdin and leaving does not close the app's: it keeps reading.
        drop((stdin, client));
        assert_eq!(bounded("the detach", &mut attach).await, Ok(()));
        t.wait_for_log(&uid, "main", &format!("{word}\n")).await;
        assert!(running(&t.pod_status(&uid).expect("status")));
    }

    // A container without stdin takes no input, and the client is not held up by it.
    let quiet = t
        .start(pod(
            "quiet",
            &image,
            json!({"args": ["ticks", "20"]}),
            json!({}),
        ))
        .await;
    t.wait_for(&quiet, "running", running).await;
    let (streams, mut client) = session(true, false);
    let stdin = client.stdin.take().expect("stdin");
    let quiet_id = t.main_id(&quiet);
    let attach = t.rt.attach(&quiet_id, streams);
    tokio::pin!(attach);
    tokio::select! {
        r = &mut attach => panic!("the attach ended: {r:?}"),
        () = async {
            for _ in 0..20 {
                stdin.send(Bytes::from_static(b"ignored\n")).await.expect("drained");
            }
            read_until(&mut client.stdout, "tick").await;
        } => {}
    }
}
