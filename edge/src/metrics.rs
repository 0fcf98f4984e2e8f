//! edgecore's `/metrics`: Prometheus's text format over plain HTTP, on an address the operator
//! chooses with `--metrics-listen` (loopback, normally). Today it carries what the edge refused
//! on its MQTT bus ([`Refusals`]) and the reports the cloud refused for good
//! ([`RefusedReports`]); the cloud's figures per edge are cloudcore's.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::edgehub::RefusedReports;
use crate::eventbus::auth::Refusals;

/// Serves `/metrics` on `listener` until `shutdown` (`wedge_pki::metrics`, the endpoint
/// cloudcore serves too).
pub async fn serve(
    listener: TcpListener,
    refusals: Arc<Refusals>,
    reports: Arc<RefusedReports>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    wedge_pki::metrics::serve(
        listener,
        move || refusals.encode() + &reports.encode(),
        shutdown,
        connections.clone(),
    )
    .await;
    connections.close();
    connections.wait().await;
}
