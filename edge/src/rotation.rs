//! Certificate rotation: renew the edge's certificate at a random point between 70% and 90% of
//! its lifetime, as KubeEdge does, so a fleet does not renew at once and an edge that is offline
//! for a while still renews before expiry once it is back.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::tls::{self, EdgeCredentials};

/// After a failed renewal, try again this much later.
const RETRY: Duration = Duration::from_secs(60);

/// Renews whenever due, until `shutdown`.
pub async fn run(cloud: String, creds: EdgeCredentials, shutdown: CancellationToken) {
    loop {
        let wait = match tls::lifetime(&creds) {
            Ok((not_before, not_after)) => {
                let fraction = 0.7 + 0.2 * fastrand::f64();
                let due = tls::rotation_due(not_before, not_after, fraction);
                let now = jiff::Timestamp::now().as_second();
                if now >= not_after {
                    tracing::error!(
                        "this edge's certificate expired; the cloud will refuse it: join again with a fresh token (wedge token create)"
                    );
                }
                Duration::from_secs(u64::try_from(due - now).unwrap_or(0))
            }
            Err(error) => {
                tracing::error!(error, "cannot read this edge's certificate");
                RETRY
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match crate::join::renew(&cloud, &creds).await {
            Ok(()) => tracing::info!("renewed this edge's certificate"),
            // Will not heal: said once (EdgeHub says it too), not retried.
            Err(error @ crate::join::JoinError::Revoked(_)) => {
                tracing::error!(%error, "renewal refused; this edge must join again with a new token (wedge token create --node <this node>)");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "renewing the certificate failed; retrying in a minute");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tls::rotation_due;

    #[test]
    fn renewal_falls_at_the_fraction_of_the_lifetime() {
        assert_eq!(rotation_due(1000, 2000, 0.7), 1700);
        assert_eq!(rotation_due(1000, 2000, 0.9), 1900);
        assert_eq!(rotation_due(1000, 2000, 7.0), 2000, "clamped");
    }
}
