//! Probes and lifecycle hooks, as the kubelet's prober runs them: `exec` in the container
//! (through the runtime's `exec_sync`), `httpGet` (success is a status in 200..400) and
//! `tcpSocket` (a connection is made) against the pod's IP.
//!
//! [`ProbeRunner`] turns results into the kubelet's outcomes: a startup probe gates the others
//! until it succeeds; readiness sets the container's `ready`; a liveness (or startup) probe that
//! fails `failureThreshold` times in a row has the container killed and restarted by policy.

use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wedge_core::runtime::RuntimeService;

use super::plan::{Handler, ProbePlan};

/// What one probe or hook run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Success,
    /// It failed, and why (for the container's message and the log).
    Failure(String),
}

/// Where probes go.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The container's runtime.
    pub runtime: &'a dyn RuntimeService,
    /// The container's id there.
    pub container_id: &'a str,
    /// The pod's IP (the node's loopback for pods on the host's network).
    pub pod_ip: &'a str,
}

/// Runs `handler` once against `target`, within `timeout`.
pub async fn run(handler: &Handler, target: Target<'_>, timeout: Duration) -> Outcome {
    match handler {
        Handler::Exec(command) => {
            match target
                .runtime
                .exec_sync(target.container_id, command, timeout)
                .await
            {
                Ok(r) if r.exit_code == 0 => Outcome::Success,
                Ok(r) => Outcome::Failure(format!(
                    "command {command:?} exited with {}: {}",
                    r.exit_code,
                    String::from_utf8_lossy(if r.stderr.is_empty() {
                        &r.stdout
                    } else {
                        &r.stderr
                    })
                    .trim()
                )),
                Err(e) => Outcome::Failure(format!("command {command:?}: {e}")),
            }
        }
        Handler::Tcp { host, port } => {
            let host = host.as_deref().unwrap_or(target.pod_ip);
            match tokio::time::timeout(timeout, TcpStream::connect((host, *port))).await {
                Ok(Ok(_)) => Outcome::Success,
                Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
                Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        Handler::Http {
            host,
            port,
            path,
            headers,
        } => {
            let host = host.as_deref().unwrap_or(target.pod_ip);
            match tokio::time::timeout(timeout, http_get(host, *port, path, headers)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
                Ok(Ok(code)) => {
                    Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
                }
                Ok(Err(e)) => Outcome::Failure(format!("Get \"http://{host}:{port}{path}\": {e}")),
                Err(_) => Outcome::Failure(format!(
                    "Get \"http://{host}:{port}{path}\": context deadline exceeded"
                )),
            }
        }
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::get(path).header(http::header::HOST, format!("{host}:{port}"));
    request = request.header(http::header::USER_AGENT, "kube-probe/1.33");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    driver.abort();
    Ok(response?.status().as_u16())
}

/// The kubelet's bookkeeping of one probe: consecutive successes and failures against the
/// thresholds.
#[derive(Debug, Clone)]
pub struct Counter {
    plan: ProbePlan,
    successes: u32,
    failures: u32,
    passing: bool,
}

/// What a result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing crossed a threshold.
    Unchanged,
    /// The probe passes now.
    Passed,
    /// The probe fails now (`failureThreshold` in a row), with the last message.
    Failed(String),
}

impl Counter {
    /// A probe that has not run: not passing.
    pub fn new(plan: ProbePlan) -> Self {
        Self {
            plan,
            successes: 0,
            failures: 0,
            passing: false,
        }
    }

    /// The probe's settings.
    pub fn plan(&self) -> &ProbePlan {
        &self.plan
    }

    /// Records one result.
    pub fn record(&mut self, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.passing && self.successes >= self.plan.success_threshold {
                    self.passing = true;
                    return Verdict::Passed;
                }
            }
            Outcome::Failure(message) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.plan.failure_threshold {
                    self.failures = 0;
                    self.passing = false;
                    return Verdict::Failed(message);
                }
            }
        }
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(success: u32, failure: u32) -> ProbePlan {
        ProbePlan {
            handler: Handler::Tcp {
                host: None,
                port: 1,
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let mut c = Counter::new(plan(2, 3));
        assert_eq!(c.record(Outcome::Success), Verdict::Unchanged);
        assert_eq!(c.record(Outcome::Success), Verdict::Passed);
        assert_eq!(c.record(Outcome::Success), Verdict::Unchanged);
        let fail = || Outcome::Failure("refused".into());
        assert_eq!(c.record(fail()), Verdict::Unchanged);
        assert_eq!(c.record(fail()), Verdict::Unchanged);
        assert_eq!(
            c.record(Outcome::Success),
            Verdict::Unchanged,
            "the run is broken"
        );
        assert_eq!(c.record(fail()), Verdict::Unchanged);
        assert_eq!(c.record(fail()), Verdict::Unchanged);
        assert_eq!(c.record(fail()), Verdict::Failed("refused".into()));
    }

    #[tokio::test]
    async fn tcp_and_http_probes_reach_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let code = if req.uri().path() == "/healthz" {
                                200
                            } else {
                                503
                            };
                            http::Response::builder()
                                .status(code)
                                .body(Empty::<bytes::Bytes>::new())
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let fake = super::super::fake::Fake::default();
        let target = Target {
            runtime: &fake,
            container_id: "c",
            pod_ip: "127.0.0.1",
        };
        let timeout = Duration::from_secs(5);
        let tcp = Handler::Tcp { host: None, port };
        assert_eq!(run(&tcp, target, timeout).await, Outcome::Success);
        let http = |path: &str| Handler::Http {
            host: None,
            port,
            path: path.to_owned(),
            headers: Vec::new(),
        };
        assert_eq!(
            run(&http("/healthz"), target, timeout).await,
            Outcome::Success
        );
        let failed = run(&http("/broken"), target, timeout).await;
        assert!(
            matches!(&failed, Outcome::Failure(m) if m.contains("503")),
            "{failed:?}"
        );
        // Nothing listens on port 1.
        let closed = run(
            &Handler::Tcp {
                host: None,
                port: 1,
            },
            target,
            timeout,
        )
        .await;
        assert!(matches!(closed, Outcome::Failure(_)), "{closed:?}");
    }
}
