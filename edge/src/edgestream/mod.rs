//! EdgeStream: serves the streams the cloud opens on the edge's connection (`kubectl logs`,
//! `exec`, `attach`, `port-forward`, through cloudcore's CloudStream).
//!
//! Each stream is served by its own task, against Edged's pods of either runtime. The edge's
//! first frame on a stream is its answer: an empty DATA on stdout when it serves the request, or
//! a CLOSE with the failure `Status` the API server hands to the client (an unknown container, a
//! log that does not exist). A stream ends with a CLOSE from either side: the edge's when the
//! request is done, the cloud's when the client went away, which stops the edge's work on it.

use tokio_util::task::TaskTracker;
use wedge_core::crilog::LogOptions;
use wedge_core::protocol::mux::{Event, Stream, StreamSender};
use wedge_core::protocol::stream::{LogParams, StreamRequest, channel, status};

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
                    .await
            }
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
    use super::*;

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
