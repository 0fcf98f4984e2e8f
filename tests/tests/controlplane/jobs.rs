//! The Job controller through kubectl, on edges that report pods finished as their `EXIT`
//! annotation says: completions and parallelism, Indexed mode, the backoff limit, a pod
//! failure policy, the active deadline, suspend and resume, and deletion after
//! `ttlSecondsAfterFinished`.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::controlplane::edge::EXIT;
use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

/// A Job manifest whose pods exit with `exit` (none: they run until deleted).
fn job(name: &str, spec: &str, exit: Option<i32>) -> String {
    let annotations = exit.map_or_else(String::new, |c| {
        format!("\n    metadata: {{annotations: {{{EXIT}: \"{c}\"}}}}")
    });
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{spec}
  template:{annotations}
    spec:
      restartPolicy: Never
      containers:
      - {{name: work, image: registry.local/batch:1.0}}
"#
    )
}

async fn job_pods(fleet: &Fleet, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::default_namespaced(fleet.client.clone());
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn get(fleet: &Fleet, name: &str) -> Option<Job> {
    Api::<Job>::default_namespaced(fleet.client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

fn conditions(job: &Job) -> Vec<(String, String, String)> {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// `kubectl wait` for `condition` of job `name`; on failure the panic shows the Job and pods.
fn wait(fleet: &Fleet, name: &str, condition: &str) {
    let out = fleet.cluster.kubectl(&[
        "wait",
        &format!("--for=condition={condition}"),
        &format!("job/{name}"),
        "--timeout=60s",
    ]);
    if !out.status.success() {
        let state = fleet.cluster.kubectl(&["get", "jobs,pods", "-o", "yaml"]);
        panic!(
            "job/{name} never {condition}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&state.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_expire() {
    let fleet = Fleet::start().await;

    // Three completions, two at a time.
    fleet.apply(&job("batch", "  completions: 3\n  parallelism: 2", Some(0)));
    wait(&fleet, "batch", "complete");
    let done = get(&fleet, "batch").await.expect("job");
    let status = done.status.clone().expect("status");
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active.unwrap_or(0), 0);
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(
        conditions(&done),
        [
            (
                "SuccessCriteriaMet".into(),
                "True".into(),
                "CompletionsReached".into()
            ),
            (
                "Complete".into(),
                "True".into(),
                "CompletionsReached".into()
            ),
        ]
    );
    // Finished pods are kept, owned by the Job.
    let pods = job_pods(&fleet, "batch").await;
    assert_eq!(pods.len(), 3, "one pod per completion");
    assert!(pods.iter().all(|p| {
        p.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Job" && o.controller == Some(true))
    }));
    let table = fleet.cluster.kubectl_ok(&["get", "jobs", "batch"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    assert!(
        table.contains("Complete") && table.contains("3/3"),
        "{table}"
    );

    // Indexed: each index once, the index in the pod.
    fleet.apply(&job(
        "indexed",
        "  completions: 3\n  parallelism: 3\n  completionMode: Indexed",
        Some(0),
    ));
    wait(&fleet, "indexed", "complete");
    let indexed = get(&fleet, "indexed").await.expect("job");
    assert_eq!(
        indexed
            .status
            .as_ref()
            .and_then(|s| s.completed_indexes.as_deref()),
        Some("0-2")
    );
    let mut indexes: Vec<String> = job_pods(&fleet, "indexed")
        .await
        .iter()
        .filter_map(|p| {
            let index = p
                .annotations()
                .get("batch.kubernetes.io/job-completion-index")?
                .clone();
            let env = p.spec.as_ref()?.containers[0].env.as_ref()?;
            env.iter()
                .any(|e| e.name == "JOB_COMPLETION_INDEX")
                .then_some(index)
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);

    // No failure allowed: the first failed pod fails the Job.
    fleet.apply(&job("failing", "  backoffLimit: 0", Some(1)));
    wait(&fleet, "failing", "failed");
    let failing = get(&fleet, "failing").await.expect("job");
    assert_eq!(failing.status.as_ref().and_then(|s| s.failed), Some(1));
    assert_eq!(
        conditions(&failing),
        [
            (
                "FailureTarget".into(),
                "True".into(),
                "BackoffLimitExceeded".into()
            ),
            (
                "Failed".into(),
                "True".into(),
                "BackoffLimitExceeded".into()
            ),
        ]
    );

    // A FailJob rule of the pod failure policy fails the Job at the first matching exit.
    fleet.apply(&job(
        "policed",
        "  backoffLimit: 5\n  podFailurePolicy:\n    rules:\n    - {action: FailJob, onExitCodes: {operator: In, values: [42]}}",
        Some(42),
    ));
    wait(&fleet, "policed", "failed");
    let policed = get(&fleet, "policed").await.expect("job");
    assert!(
        conditions(&policed)
            .iter()
            .any(|(t, _, r)| t == "Failed" && r == "PodFailurePolicy"),
        "{:?}",
        conditions(&policed)
    );
    assert_eq!(job_pods(&fleet, "policed").await.len(), 1, "no retry");

    // Pods that run past the deadline are deleted and the Job fails.
    fleet.apply(&job(
        "slow",
        "  parallelism: 2\n  completions: 2\n  activeDeadlineSeconds: 2",
        None,
    ));
    eventually(
        Duration::from_secs(20),
        "2 running pods of slow",
        || async {
            fleet
                .running("batch.kubernetes.io/job-name=slow")
                .await
                .len()
                == 2
        },
    )
    .await;
    wait(&fleet, "slow", "failed");
    let slow = get(&fleet, "slow").await.expect("job");
    assert!(
        conditions(&slow)
            .iter()
            .any(|(t, _, r)| t == "Failed" && r == "DeadlineExceeded"),
        "{:?}",
        conditions(&slow)
    );
    assert!(job_pods(&fleet, "slow").await.is_empty(), "deleted");

    // Suspended: no pods until resumed.
    fleet.apply(&job("later", "  suspend: true", Some(0)));
    let jobs: Api<Job> = Api::default_namespaced(fleet.client.clone());
    eventually(Duration::from_secs(10), "Suspended condition", || async {
        get(&fleet, "later").await.is_some_and(|j| {
            conditions(&j)
                .iter()
                .any(|(t, s, _)| t == "Suspended" && s == "True")
        })
    })
    .await;
    assert!(job_pods(&fleet, "later").await.is_empty());
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resume");
    wait(&fleet, "later", "complete");

    // Deleted with its pods once the TTL after finishing runs out.
    fleet.apply(&job("brief", "  ttlSecondsAfterFinished: 1", Some(0)));
    eventually(
        Duration::from_secs(20),
        "job brief and its pods gone",
        || async {
            get(&fleet, "brief").await.is_none() && job_pods(&fleet, "brief").await.is_empty()
        },
    )
    .await;

    // kubectl create job, as a user types it: protobuf, defaulted, run.
    fleet
        .cluster
        .kubectl_ok(&["create", "job", "typed", "--image=registry.local/batch:1.0"]);
    let typed = get(&fleet, "typed").await.expect("job");
    let spec = typed.spec.expect("spec");
    assert_eq!(
        (spec.completions, spec.parallelism, spec.backoff_limit),
        (Some(1), Some(1), Some(6))
    );
    eventually(Duration::from_secs(20), "a pod of typed", || async {
        job_pods(&fleet, "typed").await.len() == 1
    })
    .await;

    fleet.stop().await;
}

/// A Job whose pods the API refuses (its template's label value is invalid, which the Job's
/// own validation does not look at yet) is reported once with a `FailedCreate` event, and not
/// tried again when it is reconciled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_pods_are_refused_is_reported_once() {
    let fleet = Fleet::start().await;
    fleet.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: refused, labels: {app: refused}}
spec:
  template:
    metadata: {labels: {tier: "-not valid-"}}
    spec:
      restartPolicy: Never
      containers:
      - {name: work, image: registry.local/batch:1.0}
"#,
    );
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::default_namespaced(fleet.client.clone());
    let failed_creates = || async {
        events
            .list(&ListParams::default().fields("involvedObject.name=refused"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(10), "a FailedCreate event", || async {
        !failed_creates().await.is_empty()
    })
    .await;
    let first = failed_creates().await;
    assert_eq!(first[0].type_.as_deref(), Some("Warning"));
    assert!(
        first[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .starts_with("Error creating: Pod \"refused-"),
        "{:?}",
        first[0].message
    );
    // Changes that do not touch the spec make the controller look again, at once; a retry
    // (the error policy's would come 2 s later) would add an event within this window.
    let jobs: Api<Job> = Api::default_namespaced(fleet.client.clone());
    for n in 0..2 {
        jobs.patch(
            "refused",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": n.to_string()}}})),
        )
        .await
        .expect("annotate");
    }
    let window = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < window {
        let said: i32 = failed_creates()
            .await
            .iter()
            .map(|e| e.count.unwrap_or(1))
            .sum();
        assert_eq!(said, 1, "reported once");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(job_pods(&fleet, "refused").await.is_empty());
    fleet.stop().await;
}
