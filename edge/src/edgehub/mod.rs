//! EdgeHub: the edge's one connection to CloudHub.
//!
//! It dials the cloud over mutual TLS, opens the WebSocket and says hello with every object
//! MetaManager holds, so the cloud sends only what changed. Objects from the cloud are stored
//! before they are acknowledged; reports leave from the outbox in order, at most
//! `max_in_flight` unacknowledged, and are removed only when the cloud acknowledges them. When
//! the link drops it dials again with exponential backoff and jitter; nothing is lost in
//! between because both directions restart from what is stored.

mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wedge_core::protocol::{Reason, ResourceKind};

use crate::edged::usage::UsageFeed;
use crate::edgestream::EdgeStream;
use crate::metamanager::MetaManager;
use crate::store::Outbox;

/// Builds the TLS client configuration (the pinned CA and this edge's current certificate) for
/// each dial, so a rotated certificate is used from the next connection on.
pub type TlsSource = Arc<dyn Fn() -> Result<Arc<rustls::ClientConfig>, String> + Send + Sync>;

/// EdgeHub's settings.
#[derive(Clone)]
pub struct EdgeHubConfig {
    /// CloudHub's address, `host:port`.
    pub cloud: String,
    /// The TLS client configuration.
    pub tls: TlsSource,
    /// This edge's node name.
    pub node: String,
    /// The first reconnect delay; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
    /// How often to ping the cloud; three silent intervals end the connection. The cloud's
    /// interval from its welcome replaces it.
    pub ping_interval: Duration,
    /// Unacknowledged reports in flight, at most; the cloud's window from its welcome, if
    /// smaller, replaces it.
    pub max_in_flight: usize,
    /// The reports the cloud refused for good, counted for edgecore's metrics.
    pub refused: Arc<RefusedReports>,
}

impl EdgeHubConfig {
    /// Defaults for `node` dialling `cloud` with `tls`.
    pub fn new(cloud: impl Into<String>, node: impl Into<String>, tls: TlsSource) -> Self {
        Self {
            cloud: cloud.into(),
            tls,
            node: node.into(),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            max_in_flight: 32,
            refused: Arc::default(),
        }
    }
}

/// The reports the cloud refused for good (a reason not [`Reason::retryable`]), dropped by the
/// edge: by kind and reason, for `wedge_edge_reports_refused_total`.
#[derive(Debug, Default)]
pub struct RefusedReports {
    counts: std::sync::Mutex<std::collections::BTreeMap<(ResourceKind, String), u64>>,
}

impl RefusedReports {
    /// Counts one refused report of `kind`.
    pub fn count(&self, kind: ResourceKind, reason: &Reason) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((kind, reason.to_string())).or_default() += 1;
    }

    /// How many reports of `kind` were refused with `reason`.
    pub fn get(&self, kind: ResourceKind, reason: &Reason) -> u64 {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts
            .get(&(kind, reason.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The counter in Prometheus's text format.
    pub fn encode(&self) -> String {
        let mut out = String::from(
            "# HELP wedge_edge_reports_refused_total Reports the cloud refused for good, dropped by the edge, by kind and reason.\n\
             # TYPE wedge_edge_reports_refused_total counter\n",
        );
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((kind, reason), n) in counts.iter() {
            out.push_str(&format!(
                "wedge_edge_reports_refused_total{{kind=\"{kind}\",reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The cloud could not be reached or the TLS handshake failed; the message says what to do.
    #[error("{0}")]
    Connect(String),
    /// The WebSocket handshake was refused.
    #[error("the cloud refused the connection: {0}")]
    Refused(String),
    /// The cloud ended the session with an error.
    #[error("the cloud ended the session: {reason}: {message}")]
    Session {
        /// The error frame's reason.
        reason: wedge_core::protocol::Reason,
        /// Its message.
        message: String,
    },
    /// The cloud revoked the edge's certificate: dialling again with it cannot help.
    #[error("the cloud revoked this edge's certificate: {0}")]
    Revoked(String),
    /// The connection broke.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The edge's retry delays (reconnecting, writing held reports, fetching tokens), endless: the
/// ceiling doubles from `min` to `max` and each delay is jittered in the ceiling's upper half,
/// so a fleet that lost the cloud together does not come back together. `backon` computes
/// them (its jitter adds up to 100% of the delay, hence the halves); start a new one to reset.
pub fn backoff(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min / 2)
        .with_max_delay(max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The edge's link to the cloud.
pub struct EdgeHub {
    config: EdgeHubConfig,
    meta: MetaManager,
    outbox: Outbox,
    usage: Arc<UsageFeed>,
    streams: Option<EdgeStream>,
    /// Edged's questions for the cloud (ServiceAccount tokens), asked on each connection.
    token_queries: Option<tokio::sync::mpsc::Receiver<crate::edged::tokens::TokenQuery>>,
}

impl EdgeHub {
    /// EdgeHub storing into `meta`, reporting from `outbox` and sending Edged's resource usage
    /// samples from `usage`.
    pub fn new(
        config: EdgeHubConfig,
        meta: MetaManager,
        outbox: Outbox,
        usage: Arc<UsageFeed>,
    ) -> Self {
        Self {
            config,
            meta,
            outbox,
            usage,
            streams: None,
            token_queries: None,
        }
    }

    /// Asks the cloud the token questions that come on `queries` (from Edged's
    /// [`crate::edged::tokens::TokenManager`]).
    pub fn with_token_queries(
        mut self,
        queries: tokio::sync::mpsc::Receiver<crate::edged::tokens::TokenQuery>,
    ) -> Self {
        self.token_queries = Some(queries);
        self
    }

    /// Serves the streams the cloud opens (logs, exec, port-forward) with `streams`; without
    /// it, the edge refuses them.
    pub fn with_streams(mut self, streams: EdgeStream) -> Self {
        self.streams = Some(streams);
        self
    }

    /// Connects, serves and reconnects until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut delays = backoff(self.config.backoff_min, self.config.backoff_max);
        loop {
            let started = std::time::Instant::now();
            let parts = session::Parts {
                config: &self.config,
                meta: &self.meta,
                outbox: &self.outbox,
                usage: &self.usage,
                server: self.streams.as_ref(),
            };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = session::run(&parts, self.token_queries.as_mut(), &shutdown) => outcome,
            };
            match outcome {
                Ok(()) => return,
                // Said once; the pods keep running, but nothing reaches the cloud until the
                // edge joins again.
                Err(error @ LinkError::Revoked(_)) => {
                    tracing::error!(cloud = self.config.cloud, %error, "stopped connecting to the cloud: this edge must join again with a new token (remove its pki/ directory and start edgecore with --token from wedge token create --node <this node>)");
                    return;
                }
                Err(error) => {
                    // A session that lasted a while resets the backoff.
                    if started.elapsed() > Duration::from_secs(30) {
                        delays = backoff(self.config.backoff_min, self.config.backoff_max);
                    }
                    let delay = delays.next().unwrap_or(self.config.backoff_max);
                    tracing::warn!(cloud = self.config.cloud, %error, retry_in = ?delay, "no link to the cloud; pods keep running");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..100 {
            let delays: Vec<Duration> = backoff(min, max).take(30).collect();
            assert!(
                delays[0] >= Duration::from_millis(250) && delays[0] <= min,
                "{delays:?}"
            );
            assert!(delays[3] <= Duration::from_secs(4), "{delays:?}");
            let late = delays[29];
            assert!(late >= max / 2 && late <= max, "{late:?}");
            assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
        }
    }
}
