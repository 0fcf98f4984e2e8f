//! Serves `/metrics`, Prometheus's text format, over plain HTTP on the address the operator
//! chose (normally loopback or a monitoring network): one server for cloudcore's figures and
//! edgecore's, through the same accept loop as every other listener.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves what `render` gives at each scrape, until `shutdown`; connections are tracked by
/// `tasks`.
pub async fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let render = Arc::new(render);
    // A scraper or two: a small cap, whatever the descriptor limit.
    let limits = crate::listener::Limits {
        connections: 64,
        per_client: Some(16),
    };
    crate::listener::accept(
        listener,
        "metrics",
        limits,
        shutdown,
        tasks,
        move |tcp, _| {
            let render = render.clone();
            async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let response = if req.uri().path() == "/metrics" {
                            http::Response::builder()
                                .header(
                                    http::header::CONTENT_TYPE,
                                    "text/plain; version=0.0.4; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(render())))
                        } else {
                            http::Response::builder()
                                .status(http::StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found")))
                        };
                        Ok::<_, Infallible>(response.unwrap_or_default())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(crate::listener::HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        },
    )
    .await;
}
