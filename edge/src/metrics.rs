//! edgecore's `/metrics`: Prometheus's text format over plain HTTP, on an address the operator
//! chooses with `--metrics-listen` (loopback, normally). Today it carries what the edge refused
//! on its MQTT bus ([`Refusals`]) and the reports the cloud refused for good
//! ([`RefusedReports`]); the cloud's figures per edge are cloudcore's.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::edgehub::RefusedReports;
use crate::eventbus::auth::Refusals;

/// A scraper or two: connections beyond this wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// How long a request's headers may take, and a connection may stay.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    refusals: Arc<Refusals>,
    reports: Arc<RefusedReports>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else {
            return;
        };
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics: cannot accept");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let (refusals, reports) = (refusals.clone(), reports.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (refusals, reports) = (refusals.clone(), reports.clone());
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        http::Response::builder()
                            .header(
                                http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(
                                refusals.encode() + &reports.encode(),
                            )))
                    } else {
                        http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found")))
                    };
                    Ok::<_, Infallible>(response.unwrap_or_default())
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(TIMEOUT * 3, connection).await;
        });
    }
}
