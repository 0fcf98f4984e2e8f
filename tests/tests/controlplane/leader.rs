//! Leader election's failure path: controllers that end on their own while this process leads
//! stop the control plane loudly (an error naming what ended) and release the lease at once
//! for a standby, rather than leaving a leader that controls nothing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_util::sync::CancellationToken;
use wedge_controlplane::{ControllerEnded, LeaderConfig, LeaderError};

use crate::controlplane::harness::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_that_end_on_their_own_stop_the_leader_and_free_the_lease() {
    let cluster = Cluster::start().await;
    let client = cluster.client().await;
    let mut config = LeaderConfig::new("first");
    config.lease_duration = Duration::from_secs(3);
    config.renew_before = Duration::from_secs(1);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        wedge_controlplane::leader::run_elected(
            client.clone(),
            config,
            CancellationToken::new(),
            |_term| async { Err(ControllerEnded("deployment controller".to_owned())) },
        ),
    )
    .await
    .expect("the leader stops rather than idling");
    match result {
        Err(LeaderError::ControllersEnded(ended)) => {
            assert!(
                ended.to_string().contains("deployment controller"),
                "{ended}"
            );
        }
        other => panic!("expected the controllers' end, got {other:?}"),
    }
    // Released: no holder, so a standby takes it without waiting for it to expire.
    let lease = Api::<Lease>::namespaced(client, "kube-system")
        .get("wedge-controlplane")
        .await
        .expect("the lease");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert!(holder.as_deref().is_none_or(str::is_empty), "{holder:?}");
}
