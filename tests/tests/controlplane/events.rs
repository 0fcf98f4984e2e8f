//! Events as kubectl shows them: the same event again is one event counted (`x3 over`), and
//! many similar events about one object become one combined event, as client-go records them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, ListParams};
use wedge_controlplane::events::{EventType, Recorder};

use crate::controlplane::harness::{Cluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_counted_and_similar_ones_combined() {
    let cluster = Cluster::start().await;
    let recorder = Recorder::new(
        cluster
            .component_client(wedge_apiserver::Component::Scheduler)
            .await,
        "default-scheduler",
    );
    let pod = |name: &str| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some("default".into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    };
    for _ in 0..3 {
        recorder.record(
            pod("again"),
            EventType::Warning,
            "FailedScheduling",
            "no nodes",
        );
    }
    for i in 0..12 {
        let message = format!("Successfully assigned default/similar to edge-{i}");
        recorder.record(pod("similar"), EventType::Normal, "Scheduled", &message);
    }

    let events: Api<Event> = Api::default_namespaced(cluster.client().await);
    let of = |name: &'static str| {
        let events = events.clone();
        async move {
            let fields = format!("involvedObject.name={name}");
            let mut list = events
                .list(&ListParams::default().fields(&fields))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.sort_by_key(|e| e.metadata.name.clone());
            list.into_iter()
                .map(|e| (e.message.unwrap_or_default(), e.count.unwrap_or(0)))
                .collect::<Vec<_>>()
        }
    };
    eventually(Duration::from_secs(10), "the counted event", || async {
        of("again").await == [("no nodes".to_owned(), 3)]
    })
    .await;
    // Nine told apart, then the tenth to twelfth as one combined event counted three times.
    eventually(Duration::from_secs(10), "the combined event", || async {
        of("similar").await.len() == 10
            && of("similar").await.iter().map(|(_, n)| n).sum::<i32>() == 12
    })
    .await;
    let similar = of("similar").await;
    let combined: Vec<_> = similar
        .iter()
        .filter(|(m, _)| m.starts_with("(combined from similar events): "))
        .collect();
    assert_eq!(
        combined,
        [&(
            "(combined from similar events): Successfully assigned default/similar to edge-11"
                .to_owned(),
            3
        )],
        "{similar:?}"
    );

    // kubectl shows the count where users look for it.
    let listed = cluster.kubectl_ok(&["events", "--for", "pod/again"]);
    assert!(listed.contains("(x3 over"), "{listed}");
    let wide = cluster.kubectl_ok(&[
        "get",
        "events",
        "-o",
        "wide",
        "--field-selector",
        "involvedObject.name=again",
    ]);
    let row = wide.lines().nth(1).unwrap_or_default();
    assert_eq!(
        row.split_whitespace().rev().nth(1),
        Some("3"),
        "the COUNT column: {wide}"
    );
}
