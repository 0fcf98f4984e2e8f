//! The HorizontalPodAutoscaler controller on what needs no metrics: targets brought within
//! `minReplicas`..`maxReplicas` through their scale subresource (a Deployment, a
//! ReplicationController), a target scaled to zero left alone, and targets that cannot be read
//! reported in the HPA's conditions, as kube-controller-manager reports them. (Scaling on
//! usage needs an edge that reports it: `cli/tests/e2e/autoscaling.rs`.)

use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

/// A Deployment of `replicas` pods.
fn deployment(name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - {{name: app, image: registry.local/hello:1.0, resources: {{requests: {{cpu: 100m}}}}}}\n"
    )
}

/// An HPA on `kind`/`name` of `api_version`, `min` to `max` replicas at 50 % CPU.
fn hpa(name: &str, api_version: &str, kind: &str, target: &str, min: i32, max: i32) -> String {
    format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: {name}}}\nspec:\n  scaleTargetRef: {{apiVersion: {api_version}, kind: {kind}, name: {target}}}\n  minReplicas: {min}\n  maxReplicas: {max}\n  metrics:\n  - {{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}}}\n"
    )
}

/// The HPA's condition `kind`, once it has one with `reason`.
async fn condition(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
    kind: &str,
    reason: &str,
) -> HorizontalPodAutoscalerCondition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = hpas.get(name).await.ok().and_then(|h| h.status);
        let found = status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == kind && c.reason.as_deref() == Some(reason))
            });
        if let Some(c) = found {
            return c.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: no {kind} condition {reason}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The messages of `name`'s events with `reason`.
async fn events(fleet: &Fleet, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::default_namespaced(fleet.client.clone());
    events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={name}"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

/// Waits until `object`'s `spec.replicas` is `want`, as kubectl shows it.
async fn replicas_become(fleet: &Fleet, object: &str, want: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("{object} at {want}"),
        || async {
            let out = fleet
                .cluster
                .kubectl(&["get", object, "-o", "jsonpath={.spec.replicas}"]);
            out.stdout == want.as_bytes()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hpa_keeps_its_target_within_bounds_and_says_what_it_cannot_scale() {
    let fleet = Fleet::start().await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::default_namespaced(fleet.client.clone());

    // Above the maximum: down to it at once, whatever the metrics say.
    fleet.apply(&deployment("big", 4));
    fleet.apply(&hpa("big", "apps/v1", "Deployment", "big", 1, 2));
    replicas_become(&fleet, "deployment/big", "2").await;
    let scaled = condition(&hpas, "big", "AbleToScale", "SucceededRescale").await;
    assert_eq!(
        scaled.message.as_deref(),
        Some("the HPA controller was able to update the target scale to 2")
    );
    let status = hpas.get("big").await.expect("hpa").status.expect("status");
    assert_eq!(
        (status.current_replicas, status.desired_replicas),
        (Some(4), 2)
    );
    assert!(status.last_scale_time.is_some());
    // Events are written behind the controller's work.
    eventually(Duration::from_secs(10), "big's rescale event", || async {
        events(&fleet, "big", "SuccessfulRescale").await
            == ["New size: 2; reason: Current number of replicas above Spec.MaxReplicas"]
    })
    .await;

    // Below the minimum, through a ReplicationController's scale.
    fleet.apply(
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec:\n  replicas: 1\n  selector: {app: rc}\n  template:\n    metadata: {labels: {app: rc}}\n    spec:\n      containers:\n      - {name: app, image: registry.local/hello:1.0}\n",
    );
    fleet.apply(&hpa("rc", "v1", "ReplicationController", "rc", 3, 5));
    replicas_become(&fleet, "replicationcontroller/rc", "3").await;
    eventually(Duration::from_secs(10), "rc's rescale event", || async {
        events(&fleet, "rc", "SuccessfulRescale").await
            == ["New size: 3; reason: Current number of replicas below Spec.MinReplicas"]
    })
    .await;

    // `kubectl autoscale` makes one too.
    fleet.apply(&deployment("auto", 1));
    fleet.cluster.kubectl_ok(&[
        "autoscale",
        "deployment",
        "auto",
        "--min=2",
        "--max=3",
        "--cpu-percent=60",
    ]);
    replicas_become(&fleet, "deployment/auto", "2").await;

    // A target scaled to zero: autoscaling is off until someone scales it up.
    fleet.apply(&deployment("zero", 0));
    fleet.apply(&hpa("zero", "apps/v1", "Deployment", "zero", 1, 3));
    let disabled = condition(&hpas, "zero", "ScalingActive", "ScalingDisabled").await;
    assert_eq!(disabled.status, "False");
    assert_eq!(
        disabled.message.as_deref(),
        Some("scaling is disabled since the replica count of the target is zero")
    );

    // Targets that cannot be read: a kind nobody serves, and a Deployment that is not there.
    fleet.apply(&hpa("gadget", "apps/v1", "Gadget", "g", 1, 3));
    let unknown = condition(&hpas, "gadget", "AbleToScale", "FailedGetScale").await;
    assert_eq!(unknown.status, "False");
    assert_eq!(
        unknown.message.as_deref(),
        Some(
            "the HPA controller was unable to get the target's current scale: no matches for kind \"Gadget\" in group \"apps\""
        )
    );
    fleet.apply(&hpa("missing", "apps/v1", "Deployment", "nope", 1, 3));
    let missing = condition(&hpas, "missing", "AbleToScale", "FailedGetScale").await;
    assert_eq!(
        missing.message.as_deref(),
        Some(
            "the HPA controller was unable to get the target's current scale: deployments.apps \"nope\" not found"
        )
    );
    // A metric no API here serves: said in the status, looked at again only each sync period.
    fleet.apply(&deployment("custom", 1));
    fleet.apply(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: custom}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: custom}\n  maxReplicas: 3\n  metrics:\n  - type: Pods\n    pods:\n      metric: {name: requests-per-second}\n      target: {type: AverageValue, averageValue: \"10\"}\n",
    );
    let custom = condition(&hpas, "custom", "ScalingActive", "FailedGetPodsMetric").await;
    assert_eq!(custom.status, "False");
    assert!(
        custom.message.as_deref().is_some_and(|m| m.starts_with(
            "the HPA was unable to compute the replica count: unable to get metric requests-per-second:"
        )),
        "{custom:?}"
    );
    // kubectl shows the same.
    eventually(
        Duration::from_secs(10),
        "kubectl to show FailedGetScale",
        || async {
            fleet
                .cluster
                .kubectl_ok(&["describe", "hpa", "gadget"])
                .contains("FailedGetScale")
        },
    )
    .await;
    fleet.stop().await;
}
