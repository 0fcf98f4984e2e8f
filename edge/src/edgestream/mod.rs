//! EdgeStream: serves the streams the cloud opens on the edge's connection (`kubectl logs`,
//! `exec`, `attach`, `port-forward`, through cloudcore's CloudStream).
//!
//! Each stream is served by its own task, against Edged's pods of either runtime. The edge's
//! first frame on a stream is its answer: an empty DATA on stdout when it serves the request, or
//! a CLOSE with the failure `Status` the API server hands to the client (an unknown container, a
//! log that does not exist). A stream ends with a CLOSE from either side: the edge's when the
//! request is done, the cloud's when the client went away, which stops the edge's work on it.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use wedge_core::crilog::LogOptions;
use wedge_core::protocol::mux::{Event, Stream, StreamReceiver, StreamSender};
use wedge_core::protocol::stream::{
    LogParams, StreamIo, StreamRequest, channel, exit_status, status,
};
use wedge_core::runtime::{ExecStreams, PortStreams, TerminalSize};

use crate::edged::pod_workers::PodWorkers;

/// Serves the cloud's streams against the edge's pods.
#[derive(Clone)]
pub struct EdgeStream {
    workers: PodWorkers,
    tasks: TaskTracker,
}

impl EdgeStream {
    /// Streams served against `workers`' pods.
    pub fn new(workers: PodWorkers) -> Self {
        Self {
            workers,
            tasks: TaskTracker::new(),
        }
    }

    /// Serves `request` on `stream` in a task of its own.
    pub fn spawn(&self, stream: Stream, request: StreamRequest) {
        let this = self.clone();
        self.tasks
            .spawn(async move { this.serve(stream, request).await });
    }

    /// Waits for the streams being served to end (they end when the connection does).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn serve(&self, stream: Stream, request: StreamRequest) {
        let id = stream.id();
        tracing::debug!(stream = id, ?request, "stream opened");
        match request {
            StreamRequest::Logs {
                namespace,
                pod,
                container,
                options,
            } => {
                self.logs(stream, &namespace, &pod, &container, &options)
                    .await;
            }
            StreamRequest::Exec {
                namespace,
                pod,
                container,
                command,
                io,
            } => {
                self.exec(stream, &namespace, &pod, &container, Some(&command), io)
                    .await;
            }
            StreamRequest::Attach {
                namespace,
                pod,
                container,
                io,
            } => {
                self.exec(stream, &namespace, &pod, &container, None, io)
                    .await
            }
            StreamRequest::PortForward {
                namespace,
                pod,
                port,
            } => self.port_forward(stream, &namespace, &pod, port).await,
        }
        tracing::debug!(stream = id, "stream ended");
    }

    async fn logs(
        &self,
        stream: Stream,
        namespace: &str,
        pod: &str,
        container: &str,
        params: &LogParams,
    ) {
        let (sender, mut receiver) = stream.split();
        let options = match log_options(params, jiff::Timestamp::now()) {
            Ok(o) => o,
            Err(message) => return sender.close(Some(status(400, "BadRequest", &message))),
        };
        let mut reader = match self
            .workers
            .open_logs(namespace, pod, container, options)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return sender.close(Some(failure(e.status_code(), &e)));
            }
        };
        if accept(&sender).is_err() {
            return;
        }
        loop {
            tokio::select! {
                chunk = reader.next() => match chunk {
                    Some(Ok(bytes)) => {
                        if sender.send(channel::STDOUT, bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::info!(namespace, pod, container, error = %e, "a log stream ended early");
                        return sender.close(Some(status(500, "InternalError", &e.to_string())));
                    }
                    None => return sender.close(Some(status(200, "", ""))),
                },
                // The cloud closed the stream: the client went away.
                event = receiver.recv() => if matches!(event, None | Some(Event::Closed(_))) {
                    return;
                },
            }
        }
    }
}

impl EdgeStream {
    /// Runs `command` (exec), or attaches (`None`), with the stream's channels as its stdio.
    async fn exec(
        &self,
        stream: Stream,
        namespace: &str,
        pod: &str,
        container: &str,
        command: Option<&[String]>,
        io: StreamIo,
    ) {
        let (sender, receiver) = stream.split();
        let target = match self.workers.exec_target(namespace, pod, container) {
            Ok(t) => t,
            Err(e) => {
                return sender.close(Some(failure(e.status_code(), &e)));
            }
        };
        if accept(&sender).is_err() {
            return;
        }
        let (stdin_tx, stdin_rx) = channel_if(io.stdin);
        let (stdout_tx, stdout_rx) = channel_if(io.stdout);
        let (stderr_tx, stderr_rx) = channel_if(io.stderr && !io.tty);
        let (resize_tx, resize_rx) = channel_if::<TerminalSize>(io.tty);
        let streams = ExecStreams {
            stdin: stdin_rx,
            stdout: stdout_tx,
            stderr: stderr_tx,
            resize: resize_rx,
            tty: io.tty,
        };
        let run = async {
            match command {
                Some(command) => target.exec(command, streams).await.map(exit_status),
                None => target.attach(streams).await.map(|()| status(200, "", "")),
            }
        };
        // Output is forwarded until the runtime drops its ends, so nothing written before the
        // command ended is lost; the outcome goes last.
        let work = async {
            let (outcome, (), ()) = tokio::join!(
                run,
                forward(stdout_rx, &sender, channel::STDOUT),
                forward(stderr_rx, &sender, channel::STDERR),
            );
            outcome
        };
        tokio::select! {
            outcome = work => {
                let status = outcome.unwrap_or_else(|e| failure(e.status_code(), &e));
                sender.close(Some(status));
            }
            // The client went away: dropping the session ends the command's streams.
            () = input(receiver, stdin_tx, resize_tx) => {}
        }
    }
}

impl EdgeStream {
    /// Carries one TCP connection to `port` of the pod: the client's bytes (stdin) towards the
    /// pod, the pod's (stdout) back, each direction on its own so that one stalled never holds
    /// the other, and each half-close passed on as it happens.
    async fn port_forward(&self, stream: Stream, namespace: &str, pod: &str, port: u16) {
        let (sender, receiver) = stream.split();
        let target = match self.workers.port_forward_target(namespace, pod) {
            Ok(t) => t,
            Err(e) => {
                return sender.close(Some(failure(e.status_code(), &e)));
            }
        };
        if accept(&sender).is_err() {
            return;
        }
        let (to_pod, input) = mpsc::channel(16);
        let (output, from_pod) = mpsc::channel(16);
        // The runtime drops `output` both when the pod half-closes and when it fails; only the
        // first is an EOF for the client (a failure ends the stream with its status instead).
        let failed = AtomicBool::new(false);
        let run = async {
            let outcome = target.forward(port, PortStreams { input, output }).await;
            // Set in the same poll that drops `output`, before `pod_to_client` can see it gone.
            failed.store(outcome.is_err(), Ordering::Relaxed);
            outcome
        };
        // The pod's bytes are all sent before the outcome goes.
        let work = async {
            let (outcome, ()) = tokio::join!(run, pod_to_client(from_pod, &sender, &failed));
            outcome
        };
        tokio::select! {
            outcome = work => {
                let status = match outcome {
                    Ok(()) => status(200, "", ""),
                    Err(e) => {
                        tracing::info!(namespace, pod, port, error = %e, "a forwarded connection failed");
                        failure(e.status_code(), &e)
                    }
                };
                sender.close(Some(status));
            }
            // The client went away: dropping the runtime's future ends the connection.
            () = client_to_pod(receiver, to_pod, &sender) => {}
        }
    }
}

/// The pod's bytes, onto stdout; then its half-close, unless the forward failed.
async fn pod_to_client(
    mut from_pod: mpsc::Receiver<Bytes>,
    sender: &StreamSender,
    failed: &AtomicBool,
) {
    while let Some(data) = from_pod.recv().await {
        if sender.send(channel::STDOUT, data).await.is_err() {
            return;
        }
    }
    if !failed.load(Ordering::Relaxed) {
        // A closed stream has nobody left to tell.
        let _ = sender.eof(channel::STDOUT);
    }
}

/// The client's bytes, towards the pod, until the client half-closes (its EOF drops the
/// channel's sender); returns when the client has gone, even while the pod is not reading.
async fn client_to_pod(
    mut receiver: StreamReceiver,
    to_pod: mpsc::Sender<Bytes>,
    sender: &StreamSender,
) {
    let mut to_pod = Some(to_pod);
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Data {
                channel: channel::STDIN,
                data,
            } if !data.is_empty() => {
                let Some(tx) = &to_pod else { continue };
                // Waiting for a pod that does not read must not hide the client's leaving.
                tokio::select! {
                    sent = tx.send(data) => if sent.is_err() {
                        // The runtime is done with this direction: the rest goes nowhere.
                        to_pod = None;
                    },
                    () = sender.closed() => return,
                }
            }
            Event::Eof(channel::STDIN) => to_pod = None,
            Event::Data { .. } | Event::Eof(_) => {}
            Event::Closed(_) => return,
        }
    }
}

/// A bounded channel when `wanted`.
fn channel_if<T>(wanted: bool) -> (Option<mpsc::Sender<T>>, Option<mpsc::Receiver<T>>) {
    if wanted {
        let (tx, rx) = mpsc::channel(16);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

/// The command's output, onto the stream.
async fn forward(output: Option<mpsc::Receiver<Bytes>>, sender: &StreamSender, channel: u8) {
    let Some(mut output) = output else { return };
    while let Some(data) = output.recv().await {
        if sender.send(channel, data).await.is_err() {
            return;
        }
    }
}

/// The client's stdin and resizes, into the command; returns when the client has gone.
async fn input(
    mut receiver: StreamReceiver,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Sender<TerminalSize>>,
) {
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Data {
                channel: channel::STDIN,
                data,
            } => {
                if let Some(tx) = &stdin
                    && tx.send(data).await.is_err()
                {
                    stdin = None;
                }
            }
            Event::Data {
                channel: channel::RESIZE,
                data,
            } => {
                // A stream of JSON objects, as kubectl sends them.
                let sizes: Vec<TerminalSize> = serde_json::Deserializer::from_slice(&data)
                    .into_iter::<TerminalSize>()
                    .flatten()
                    .collect();
                for size in sizes {
                    if let Some(tx) = &resize {
                        let _ = tx.send(size).await;
                    }
                }
            }
            // End of input: the command reads end of file.
            Event::Eof(channel::STDIN) => stdin = None,
            Event::Data { .. } | Event::Eof(_) => {}
            Event::Closed(_) => return,
        }
    }
}

/// The `Status` reason of an HTTP code.
/// The failure `Status` a stream ends with: the API server's `code` (as each of Edged's errors
/// states it with its `status_code`), its Kubernetes reason, and the error's words.
fn failure(code: u16, error: &dyn std::fmt::Display) -> serde_json::Value {
    let reason = match code {
        400 => "BadRequest",
        404 => "NotFound",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    status(code, reason, &error.to_string())
}

/// Says the stream is served: an empty DATA on stdout.
fn accept(sender: &StreamSender) -> Result<(), ()> {
    sender.signal(channel::STDOUT).map_err(|_| ())
}

/// The kubelet's log parameters as the log reader takes them, `now` being the edge's clock.
fn log_options(params: &LogParams, now: jiff::Timestamp) -> Result<LogOptions, String> {
    let since = match (params.since_seconds, &params.since_time) {
        (Some(_), Some(_)) => {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        (Some(s), None) => Some(
            now.checked_sub(jiff::SignedDuration::from_secs(s.max(0)))
                .unwrap_or(jiff::Timestamp::MIN),
        ),
        (None, Some(t)) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| format!("sinceTime {t:?} is not an RFC 3339 time: {e}"))?,
        ),
        (None, None) => None,
    };
    let non_negative = |name: &str, v: Option<i64>| -> Result<Option<u64>, String> {
        v.map(|v| u64::try_from(v).map_err(|_| format!("{name} must be 0 or more")))
            .transpose()
    };
    Ok(LogOptions {
        previous: params.previous,
        follow: params.follow,
        timestamps: params.timestamps,
        tail_lines: non_negative("tailLines", params.tail_lines)?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        since,
        limit_bytes: non_negative("limitBytes", params.limit_bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Pod;
    use wedge_core::protocol::mux::{Mux, Role};
    use wedge_core::protocol::stream::{StreamFrame, WINDOW};

    use super::*;
    use crate::edged::fake::Fake;
    use crate::edged::plan::plan_pod;
    use crate::edged::pod_workers::WorkerConfig;
    use crate::edged::runtimes::{RuntimeHandle, Runtimes};

    /// An edge serving streams against a fake runtime, wired to a cloud-side mux in process.
    struct Edge {
        cloud: Mux,
        server: EdgeStream,
        fake: Fake,
        _dir: tempfile::TempDir,
        _pump: tokio::task::JoinHandle<()>,
    }

    async fn edge_with_running_pod() -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Fake::default();
        let workers = PodWorkers::new(
            Runtimes::new().with(RuntimeHandle::new(Arc::new(fake.clone()))),
            WorkerConfig::new(dir.path().join("pods")),
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "main", "image": "r/app:1"}]},
        }))
        .expect("pod");
        let plan = plan_pod(&pod, &workers.config().pods_root).expect("plan");
        workers
            .start(plan, Default::default(), Default::default())
            .expect("started");
        while !workers
            .status("u1")
            .is_some_and(|s| s.containers[0].state.is_running())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let server = EdgeStream::new(workers);
        let serving = server.clone();
        let (cloud, mut to_edge) = Mux::new(Role::Opener);
        let (edge, mut to_cloud) = Mux::new(Role::Acceptor);
        let cloud_in = cloud.clone();
        // The wire: frames each way through their bytes, the edge's OPENs served.
        let pump = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(f) = to_edge.recv() => {
                        let f = StreamFrame::decode(&f.encode()).expect("decodes");
                        if let Some((stream, request)) = edge.incoming(f) {
                            serving.spawn(stream, request);
                        }
                    }
                    Some(f) = to_cloud.recv() => {
                        let f = StreamFrame::decode(&f.encode()).expect("decodes");
                        let _ = cloud_in.incoming(f);
                    }
                    else => return,
                }
            }
        });
        Edge {
            cloud,
            server,
            fake,
            _dir: dir,
            _pump: pump,
        }
    }

    fn exec(command: &[&str], io: StreamIo) -> StreamRequest {
        StreamRequest::Exec {
            namespace: "default".into(),
            pod: "web".into(),
            container: "main".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            io,
        }
    }

    /// Everything received on the stream, by channel, and its closing status.
    async fn collect(stream: &mut Stream) -> (String, String, serde_json::Value) {
        let (mut out, mut err) = (String::new(), String::new());
        loop {
            match stream.receiver.recv().await.expect("an event") {
                Event::Data { channel, data } => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    match channel {
                        channel::STDOUT => out.push_str(&text),
                        channel::STDERR => err.push_str(&text),
                        _ => {}
                    }
                }
                Event::Eof(_) => {}
                Event::Closed(status) => return (out, err, status.expect("a status")),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exec_streams_both_ways_and_ends_with_the_exit_status() {
        let edge = edge_with_running_pod().await;
        let io = StreamIo {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        // stdin piped, then closed: cat echoes it and exits 0.
        let mut cat = edge.cloud.open(exec(&["cat"], io)).expect("opens");
        cat.sender
            .send(channel::STDIN, Bytes::from_static(b"hello\n"))
            .await
            .expect("sent");
        cat.sender.eof(channel::STDIN).expect("open");
        let (out, _, status) = collect(&mut cat).await;
        assert_eq!(out, "hello\n");
        assert_eq!(status["status"], "Success");

        // stdout and stderr apart; a non-zero exit as kube-apiserver writes it.
        let mut echo = edge
            .cloud
            .open(exec(&["echo", "a", "b"], io))
            .expect("opens");
        let (out, err, status) = collect(&mut echo).await;
        assert_eq!((out.as_str(), err.as_str()), ("a b\n", "err: a b\n"));
        assert_eq!(status["status"], "Success");
        let mut exit = edge.cloud.open(exec(&["exit", "3"], io)).expect("opens");
        let (_, _, status) = collect(&mut exit).await;
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");

        // What cannot run says why.
        let mut missing = edge.cloud.open(exec(&["nope"], io)).expect("opens");
        let (_, _, status) = collect(&mut missing).await;
        assert_eq!(status["code"], 500);
        assert!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.contains("executable file not found")),
            "{status}"
        );
        let mut elsewhere = edge
            .cloud
            .open(StreamRequest::Exec {
                namespace: "default".into(),
                pod: "web".into(),
                container: "sidecar".into(),
                command: vec!["cat".into()],
                io,
            })
            .expect("opens");
        let (_, _, status) = collect(&mut elsewhere).await;
        assert_eq!(status["code"], 400);
        assert_eq!(
            status["message"],
            r#"container "sidecar" not found in pod "web""#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_ends_the_exec() {
        let edge = edge_with_running_pod().await;
        let io = StreamIo {
            stdin: true,
            stdout: true,
            ..StreamIo::default()
        };
        let mut cat = edge.cloud.open(exec(&["cat"], io)).expect("opens");
        // Served: the edge's empty DATA.
        assert!(matches!(
            cat.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDOUT,
                ..
            })
        ));
        assert_eq!(edge.server.tasks.len(), 1, "the exec runs");
        drop(cat);
        // The edge ends the command and its task.
        while !edge.server.tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(edge.cloud.is_empty());
    }

    fn port_forward(pod: &str, port: u16) -> StreamRequest {
        StreamRequest::PortForward {
            namespace: "default".into(),
            pod: pod.into(),
            port,
        }
    }

    /// Opens a port-forward to the pod `web` and waits for the edge's answer that it serves it.
    async fn forward(edge: &Edge, port: u16) -> Stream {
        let mut stream = edge.cloud.open(port_forward("web", port)).expect("opens");
        assert_eq!(
            stream.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDOUT,
                data: Bytes::new()
            }),
            "served"
        );
        stream
    }

    async fn send(stream: &Stream, bytes: &'static [u8]) {
        stream
            .sender
            .send(channel::STDIN, Bytes::from_static(bytes))
            .await
            .expect("sent");
    }

    /// What comes until the close: the pod's bytes, whether its EOF came (and before the
    /// close), and the closing status.
    async fn to_the_close(stream: &mut Stream) -> (Vec<u8>, bool, serde_json::Value) {
        let (mut bytes, mut eof) = (Vec::new(), false);
        loop {
            match stream.receiver.recv().await.expect("an event") {
                Event::Data {
                    channel: channel::STDOUT,
                    data,
                } => {
                    assert!(!eof, "bytes after the EOF");
                    bytes.extend_from_slice(&data);
                }
                Event::Eof(channel::STDOUT) => eof = true,
                Event::Closed(status) => return (bytes, eof, status.expect("a status")),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Waits (in paused time) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let waiting = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within a minute"));
    }

    #[tokio::test(start_paused = true)]
    async fn port_forward_carries_bytes_both_ways_and_each_half_close() {
        let edge = edge_with_running_pod().await;
        // The client half-closes first: the echo sends the rest back, then closes too.
        let mut echo = forward(&edge, 7).await;
        send(&echo, b"hello").await;
        assert_eq!(
            echo.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDOUT,
                data: Bytes::from_static(b"hello")
            })
        );
        send(&echo, b" world").await;
        echo.sender.eof(channel::STDIN).expect("open");
        let (bytes, eof, status) = to_the_close(&mut echo).await;
        assert_eq!((bytes.as_slice(), eof), (&b" world"[..], true));
        assert_eq!(status["status"], "Success");
        assert_eq!(edge.fake.received(7), b"hello world");
        assert!(
            edge.fake
                .calls()
                .iter()
                .any(|c| c.starts_with("port_forward sb") && c.ends_with(" 7")),
            "the sandbox's runtime forwards: {:?}",
            edge.fake.calls()
        );

        // The pod half-closes first: its EOF comes at once, and the client's bytes still reach
        // it until the client half-closes.
        let mut bye = forward(&edge, 9).await;
        assert_eq!(
            bye.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDOUT,
                data: Bytes::from_static(b"bye\n")
            })
        );
        assert_eq!(bye.receiver.recv().await, Some(Event::Eof(channel::STDOUT)));
        send(&bye, b"after your EOF").await;
        bye.sender.eof(channel::STDIN).expect("open");
        let (bytes, eof, status) = to_the_close(&mut bye).await;
        assert_eq!((bytes.len(), eof), (0, false), "nothing after the EOF");
        assert_eq!(status["status"], "Success");
        assert_eq!(edge.fake.received(9), b"after your EOF");
        until("the forwards end", || edge.fake.forwarding() == 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_forwards_close_with_the_kubelets_words() {
        let edge = edge_with_running_pod().await;
        // Nothing listens: served (the pod is there), then the failure, and no EOF before it.
        let mut refused = forward(&edge, 81).await;
        let (bytes, eof, status) = to_the_close(&mut refused).await;
        assert_eq!((bytes.len(), eof), (0, false));
        assert_eq!(status["code"], 500);
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(
            status["message"],
            "error forwarding port 81 to pod web, uid u1: \
             dial tcp4 127.0.0.1:81: connect: connection refused"
        );

        // No such pod: not served.
        let mut nope = edge.cloud.open(port_forward("nope", 80)).expect("opens");
        let Some(Event::Closed(Some(status))) = nope.receiver.recv().await else {
            panic!("closed at once");
        };
        assert_eq!(status["code"], 404);
        assert_eq!(status["message"], r#"pod "nope" does not exist"#);

        // A runtime that cannot forward at all says what to do, as a bad request.
        edge.fake.refuse_forwarding("this pod has no network");
        let mut unsupported = forward(&edge, 7).await;
        let (_, eof, status) = to_the_close(&mut unsupported).await;
        assert!(!eof);
        assert_eq!(status["code"], 400);
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["message"], "this pod has no network");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_does_not_hold_up_the_bytes_towards_the_pod() {
        let edge = edge_with_running_pod().await;
        let mut chargen = forward(&edge, 19).await;
        // The client reads nothing: the pod's side fills the stream's window and waits.
        until("a window of output", || {
            edge.fake.written(19) >= WINDOW as usize
        })
        .await;
        send(&chargen, b"ping").await;
        chargen.sender.eof(channel::STDIN).expect("open");
        until("the bytes reach the pod", || {
            edge.fake.received(19) == b"ping"
        })
        .await;
        // The pod closes; what it wrote still all comes, then the EOF and the verdict.
        let (bytes, eof, status) = to_the_close(&mut chargen).await;
        assert_eq!(bytes.len(), edge.fake.written(19));
        assert!(bytes.iter().all(|b| *b == b'x') && eof);
        assert_eq!(status["status"], "Success");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_ends_the_forward() {
        let edge = edge_with_running_pod().await;
        let mut echo = forward(&edge, 7).await;
        send(&echo, b"x").await;
        assert!(matches!(
            echo.receiver.recv().await,
            Some(Event::Data {
                channel: channel::STDOUT,
                ..
            })
        ));
        assert_eq!(edge.fake.forwarding(), 1);
        drop(echo);
        until("the edge ends the forward", || edge.server.tasks.is_empty()).await;
        assert_eq!(edge.fake.forwarding(), 0);

        // Even while it waits for a pod that reads nothing (more than its channel holds).
        let deaf = forward(&edge, 13).await;
        for _ in 0..20 {
            send(&deaf, b"unread").await;
        }
        assert_eq!(edge.fake.forwarding(), 1);
        drop(deaf);
        until("the edge ends the forward", || edge.server.tasks.is_empty()).await;
        assert_eq!(edge.fake.forwarding(), 0);
        assert!(edge.cloud.is_empty());
    }

    #[test]
    fn log_parameters_become_reader_options() {
        let now: jiff::Timestamp = "2026-12-05T10:00:00Z".parse().expect("valid");
        let o = log_options(
            &LogParams {
                follow: true,
                since_seconds: Some(60),
                tail_lines: Some(5),
                ..LogParams::default()
            },
            now,
        )
        .expect("valid");
        assert!(o.follow);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(
            o.since,
            Some("2026-12-05T09:59:00Z".parse().expect("valid"))
        );
        let both = LogParams {
            since_seconds: Some(1),
            since_time: Some("2026-12-05T09:00:00Z".into()),
            ..LogParams::default()
        };
        assert!(log_options(&both, now).is_err());
        let bad = LogParams {
            since_time: Some("yesterday".into()),
            ..LogParams::default()
        };
        assert!(
            log_options(&bad, now)
                .expect_err("bad")
                .contains("yesterday")
        );
        let negative = LogParams {
            limit_bytes: Some(-1),
            ..LogParams::default()
        };
        assert!(log_options(&negative, now).is_err());
    }
}
