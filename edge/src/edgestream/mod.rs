//! EdgeStream: serves the streams the cloud opens on the edge's connection (`kubectl logs`,
//! `exec`, `attach`, `port-forward`, through cloudcore's CloudStream).
//!
//! Each stream is served by its own task, against Edged's pods of either runtime. The edge's
//! first frame on a stream is its answer: an empty DATA on stdout when it serves the request, or
//! a CLOSE with the failure `Status` the API server hands to the client (an unknown container, a
//! log that does not exist). A stream ends with a CLOSE from either side: the edge's when the
//! request is done, the cloud's when the client went away, which stops the edge's work on it.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use wedge_core::crilog::LogOptions;
use wedge_core::protocol::mux::{Event, Stream, StreamReceiver, StreamSender};
use wedge_core::protocol::stream::{
    LogParams, StreamIo, StreamRequest, channel, exit_status, status,
};
use wedge_core::runtime::{ExecStreams, TerminalSize};

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
            StreamRequest::PortForward { .. } => stream.split().0.close(Some(status(
                501,
                "NotImplemented",
                "this edge does not forward ports yet",
            ))),
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
                let code = e.status_code();
                return sender.close(Some(status(code, reason_of(code), &e.to_string())));
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
                let code = e.status_code();
                return sender.close(Some(status(code, reason_of(code), &e.to_string())));
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
                let status = outcome.unwrap_or_else(|e| {
                    let code = e.status_code();
                    status(code, reason_of(code), &e.to_string())
                });
                sender.close(Some(status));
            }
            // The client went away: dropping the session ends the command's streams.
            () = input(receiver, stdin_tx, resize_tx) => {}
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
fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        404 => "NotFound",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    }
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
    use wedge_core::protocol::stream::StreamFrame;

    use super::*;
    use crate::edged::fake::Fake;
    use crate::edged::plan::plan_pod;
    use crate::edged::pod_workers::WorkerConfig;
    use crate::edged::runtimes::{RuntimeHandle, Runtimes};

    /// An edge serving streams against a fake runtime, wired to a cloud-side mux in process.
    struct Edge {
        cloud: Mux,
        server: EdgeStream,
        _dir: tempfile::TempDir,
        _pump: tokio::task::JoinHandle<()>,
    }

    async fn edge_with_running_pod() -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let workers = PodWorkers::new(
            Runtimes::new().with(RuntimeHandle::new(Arc::new(Fake::default()))),
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
