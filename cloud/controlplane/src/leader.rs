//! Leader election through a Lease (`kube-system/wedge-controlplane`), so two cloud processes
//! can run side by side and only one acts: the other waits, and takes over once the leader's
//! lease expires (it stops renewing when it dies or loses the API).
//!
//! The lease itself is kept by `kube-lease-manager` (server-side apply on the Lease, renewal
//! before expiry, takeover of an expired lease). A leader that loses the lease stops its
//! controllers and goes back to waiting rather than exiting. Controllers that end on their own
//! while this process leads are a failure, not a quiet idle leader: the lease is released, so a
//! standby takes over at once, and the error says which one ended.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

/// How a process takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Who this process is (kept in `holderIdentity`).
    pub identity: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews.
    pub renew_before: Duration,
}

impl LeaderConfig {
    /// Kubernetes' defaults for kube-controller-manager (15 s leases), as `identity`.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            namespace: "kube-system".to_owned(),
            name: "wedge-controlplane".to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_before: Duration::from_secs(5),
        }
    }
}

/// Why the election could not run.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease could not be read, created or released.
    #[error("lease {namespace}/{name}: {source}")]
    Lease {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What went wrong.
        #[source]
        source: LeaseManagerError,
    },
    /// The controllers ended on their own while this process led.
    #[error(transparent)]
    ControllersEnded(#[from] crate::ControllerEnded),
}

/// Runs `lead` whenever this process holds the lease, with a token cancelled when it stops
/// holding it; returns when `shutdown` is cancelled, having released the lease.
pub async fn run_elected<F, Fut>(
    client: Client,
    config: LeaderConfig,
    shutdown: CancellationToken,
    mut lead: F,
) -> Result<(), LeaderError>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), crate::ControllerEnded>> + Send + 'static,
{
    let err = |source| LeaderError::Lease {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration.as_secs())
        .with_grace(config.renew_before.as_secs())
        .build()
        .await
        .map_err(err)?;
    let (mut leading, keeper) = manager.watch().await;
    tracing::info!(
        identity = %config.identity,
        lease = %format!("{}/{}", config.namespace, config.name),
        "electing: the controllers run while this process holds the lease"
    );
    let mut failure = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            held = leading.wait_for(|l| *l) => if held.is_err() { break },
        }
        tracing::info!(identity = %config.identity, "leading: controllers start");
        let term = shutdown.child_token();
        let mut controllers = tokio::spawn(lead(term.clone()));
        let ended = tokio::select! {
            () = shutdown.cancelled() => None,
            _ = leading.wait_for(|l| !*l) => {
                tracing::warn!(identity = %config.identity, "lost the lease: controllers stop");
                None
            }
            ended = &mut controllers => Some(ended),
        };
        term.cancel();
        let ended = match ended {
            Some(ended) => ended,
            None => controllers.await,
        };
        failure = match ended {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(error) => Some(crate::ControllerEnded(format!("its task failed: {error}"))),
        }
        .filter(|_| !shutdown.is_cancelled());
        if let Some(failure) = &failure {
            tracing::error!(
                identity = %config.identity,
                error = %failure,
                "the control plane stops: releasing the lease for a standby"
            );
            break;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Closing the channel makes the keeper release the lease, so a standby takes over at once.
    drop(leading);
    let released = match keeper.await {
        Ok(result) => result.map(drop).map_err(err),
        Err(error) => {
            tracing::error!(%error, "the lease keeper ended abnormally");
            Ok(())
        }
    };
    match failure {
        Some(failure) => Err(failure.into()),
        None => released,
    }
}
