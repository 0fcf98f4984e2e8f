//! The CronJob controller through kubectl, on edges that report pods finished as their `EXIT`
//! annotation says: a CronJob firing on its schedule (the control plane's clock set just before
//! a schedule time, so the test waits seconds, not a minute), history limits, `Forbid` and
//! `Replace`, suspend, `kubectl create job --from=cronjob/...`, and schedules and time zones
//! the API refuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use wedge_controlplane::clock::Clock;

use crate::controlplane::edge::EXIT;
use crate::controlplane::harness::eventually;
use crate::controlplane::workloads::Fleet;

/// A CronJob manifest whose pods exit with `exit` (none: they run until deleted).
fn cron_job(name: &str, spec: &str, exit: Option<i32>) -> String {
    let annotations = exit.map_or_else(String::new, |c| {
        format!("\n        metadata: {{annotations: {{{EXIT}: \"{c}\"}}}}")
    });
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
{spec}
  jobTemplate:
    metadata: {{labels: {{cron: {name}}}, annotations: {{owner: ops}}}}
    spec:
      template:{annotations}
        spec:
          restartPolicy: Never
          containers:
          - {{name: work, image: registry.local/batch:1.0}}
"#
    )
}

/// The Jobs `name` controls.
async fn jobs_of(fleet: &Fleet, name: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::default_namespaced(fleet.client.clone());
    let mut list: Vec<Job> = jobs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| o.kind == "CronJob" && o.name == name)
        })
        .collect();
    list.sort_by_key(|j| j.name_any());
    list
}

/// The events of `name`, oldest first: (reason, message), once for each time it was said.
async fn events_of(fleet: &Fleet, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::default_namespaced(fleet.client.clone());
    let mut list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.sort_by_key(|e| e.metadata.name.clone());
    // The same event again is counted on the first (`count`), as kube's recorder does: each
    // time it happened is listed.
    list.into_iter()
        .flat_map(|e| {
            let times = usize::try_from(e.count.unwrap_or(1)).unwrap_or(1);
            let said = (e.reason.unwrap_or_default(), e.message.unwrap_or_default());
            std::iter::repeat_n(said, times)
        })
        .collect()
}

fn count(events: &[(String, String)], reason: &str) -> usize {
    events.iter().filter(|(r, _)| r == reason).count()
}

async fn get(fleet: &Fleet, name: &str) -> CronJob {
    Api::<CronJob>::default_namespaced(fleet.client.clone())
        .get(name)
        .await
        .expect("cronjob")
}

/// The control plane's clock runs 2.5 s before a minute boundary two minutes ahead when the
/// CronJob is made; its schedule names that minute, so the one time it may fire is the
/// boundary, and only the controller's own timer can bring it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_fires_on_its_schedule_and_records_the_run() {
    // The offset is set once the cluster is up, just before the CronJob is made.
    let offset_ms = Arc::new(AtomicI64::new(0));
    let shift = offset_ms.clone();
    let fleet = Fleet::start_at(Clock::from_fn(move || {
        jiff::Timestamp::now() + jiff::SignedDuration::from_millis(shift.load(Ordering::SeqCst))
    }))
    .await;
    let real = jiff::Timestamp::now();
    let boundary = jiff::Timestamp::from_second((real.as_second() / 60 + 3) * 60).expect("time");
    let shifted = boundary - jiff::SignedDuration::from_millis(2500);
    let offset = shifted.duration_since(real);
    offset_ms.store(
        i64::try_from(offset.as_millis()).expect("offset"),
        Ordering::SeqCst,
    );
    let minute = boundary.to_zoned(jiff::tz::TimeZone::UTC).minute();
    fleet.apply(&cron_job(
        "tick",
        &format!("  schedule: \"{minute} * * * *\"\n  timeZone: Etc/UTC"),
        Some(0),
    ));
    let job_name = format!("tick-{}", boundary.as_second() / 60);

    eventually(
        Duration::from_secs(20),
        "the job of the boundary",
        || async { jobs_of(&fleet, "tick").await.len() == 1 },
    )
    .await;
    let job = jobs_of(&fleet, "tick").await.remove(0);
    assert_eq!(job.name_any(), job_name);
    let created = job.creation_timestamp().expect("created").0;
    assert!(
        created + offset + jiff::SignedDuration::from_secs(1) >= boundary,
        "made at {created} (+{offset}), before its time {boundary}"
    );
    assert_eq!(
        job.annotations()
            .get("batch.kubernetes.io/cronjob-scheduled-timestamp")
            .map(String::as_str),
        Some(boundary.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().as_str())
    );
    assert_eq!(
        job.annotations().get("owner").map(String::as_str),
        Some("ops")
    );
    assert_eq!(job.labels().get("cron").map(String::as_str), Some("tick"));
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );

    // The Job completes; the CronJob says so.
    eventually(
        Duration::from_secs(20),
        "lastSuccessfulTime and no active job",
        || async {
            get(&fleet, "tick").await.status.is_some_and(|s| {
                s.last_successful_time.is_some() && s.active.as_ref().is_none_or(Vec::is_empty)
            })
        },
    )
    .await;
    let status = get(&fleet, "tick").await.status.expect("status");
    assert_eq!(
        status.last_schedule_time.map(|t| t.0),
        Some(boundary),
        "lastScheduleTime"
    );
    // Events are written behind the controller's work.
    eventually(Duration::from_secs(10), "tick's events", || async {
        let events = events_of(&fleet, "tick").await;
        events.contains(&("SuccessfulCreate".into(), format!("Created job {job_name}")))
            && events.contains(&(
                "SawCompletedJob".into(),
                format!("Saw completed job: {job_name}, condition: Complete"),
            ))
    })
    .await;

    // kubectl shows it with 1.33's columns.
    let table = fleet.cluster.kubectl_ok(&["get", "cronjobs", "tick"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    fleet.stop().await;
}

/// A control-plane clock that stands still until the test moves it.
struct Hands(Arc<AtomicI64>);

impl Hands {
    fn new() -> Self {
        Self(Arc::new(AtomicI64::new(
            jiff::Timestamp::now().as_millisecond(),
        )))
    }

    fn clock(&self) -> Clock {
        let at = self.0.clone();
        Clock::from_fn(move || {
            jiff::Timestamp::from_millisecond(at.load(Ordering::SeqCst))
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        })
    }

    fn set(&self, t: jiff::Timestamp) {
        self.0.store(t.as_millisecond(), Ordering::SeqCst);
    }

    fn advance(&self, by: jiff::SignedDuration) {
        let ms = i64::try_from(by.as_millis()).expect("ms");
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

/// Successive minutes of a `* * * * *` schedule, on a clock the test moves a minute at a time
/// (then touching the CronJobs, since the controller's timers were set by the clock as it
/// stood): history limits, `Forbid`, `Replace`, suspend, `kubectl create job --from`, and a
/// running Job deleted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limits_concurrency_suspend_and_manual_runs() {
    let hands = Hands::new();
    let fleet = Fleet::start_at(hands.clock()).await;
    // A second past the next minute boundary at least 10 s away: the CronJobs made now each
    // have exactly one schedule time behind them, their first Job.
    let real = jiff::Timestamp::now().as_second();
    hands.set(jiff::Timestamp::from_second(((real + 10) / 60 + 1) * 60 + 1).expect("time"));
    let every_minute = "  schedule: \"* * * * *\"";
    fleet.apply(&cron_job(
        "often",
        &format!("{every_minute}\n  successfulJobsHistoryLimit: 2"),
        Some(0),
    ));
    fleet.apply(&cron_job(
        "single",
        &format!("{every_minute}\n  concurrencyPolicy: Forbid"),
        None,
    ));
    fleet.apply(&cron_job(
        "newest",
        &format!("{every_minute}\n  concurrencyPolicy: Replace"),
        None,
    ));
    fleet.apply(&cron_job(
        "paused",
        &format!("{every_minute}\n  suspend: true"),
        Some(0),
    ));
    let creates = |name: &'static str| {
        let fleet = &fleet;
        async move { count(&events_of(fleet, name).await, "SuccessfulCreate") }
    };
    for minute in 1..=4 {
        if minute > 1 {
            hands.advance(jiff::SignedDuration::from_secs(60));
            for name in ["often", "single", "newest", "paused"] {
                fleet.cluster.kubectl_ok(&[
                    "annotate",
                    "cronjob",
                    name,
                    &format!("minute={minute}"),
                    "--overwrite",
                ]);
            }
        }
        eventually(
            Duration::from_secs(20),
            &format!("minute {minute}'s jobs"),
            || async {
                let single = count(&events_of(&fleet, "single").await, "JobAlreadyActive");
                creates("often").await == minute
                    && creates("newest").await == minute
                    && single == minute - 1
            },
        )
        .await;
    }

    // Two successful Jobs kept: the two that started last (kube orders by `status.startTime`,
    // which the Job controller sets when it first acts, so not always in name order).
    eventually(
        Duration::from_secs(20),
        "often's two newest jobs",
        || async { jobs_of(&fleet, "often").await.len() == 2 },
    )
    .await;
    let last = get(&fleet, "often")
        .await
        .status
        .and_then(|s| s.last_schedule_time)
        .expect("lastScheduleTime")
        .0;
    let minutes = last.as_second() / 60;
    eventually(
        Duration::from_secs(10),
        "often's two deletes said",
        || async { count(&events_of(&fleet, "often").await, "SuccessfulDelete") == 2 },
    )
    .await;

    // Forbid: one Job, still running, the only one active.
    assert_eq!(jobs_of(&fleet, "single").await.len(), 1);
    let active = get(&fleet, "single").await.status.and_then(|s| s.active);
    assert_eq!(active.map(|a| a.len()), Some(1));

    // Replace: each minute's Job took the place of the one before.
    eventually(Duration::from_secs(20), "newest's one job", || async {
        let jobs = jobs_of(&fleet, "newest").await;
        jobs.len() == 1 && jobs[0].name_any() == format!("newest-{minutes}")
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "newest's three deletes said",
        || async { count(&events_of(&fleet, "newest").await, "SuccessfulDelete") == 3 },
    )
    .await;

    // Suspended all along: nothing made, nothing said.
    assert!(jobs_of(&fleet, "paused").await.is_empty());
    assert!(events_of(&fleet, "paused").await.is_empty());

    // kubectl create job --from: a Job of the CronJob made by hand, run beside the other.
    fleet
        .cluster
        .kubectl_ok(&["create", "job", "by-hand", "--from=cronjob/single"]);
    let manual = Api::<Job>::default_namespaced(fleet.client.clone())
        .get("by-hand")
        .await
        .expect("job");
    assert_eq!(
        manual
            .annotations()
            .get("cronjob.kubernetes.io/instantiate")
            .map(String::as_str),
        Some("manual")
    );
    eventually(
        Duration::from_secs(20),
        "the manual job running",
        || async {
            !fleet
                .running("batch.kubernetes.io/job-name=by-hand")
                .await
                .is_empty()
        },
    )
    .await;
    eventually(Duration::from_secs(20), "UnexpectedJob", || async {
        events_of(&fleet, "single").await.contains(&(
            "UnexpectedJob".into(),
            "Saw a job that the controller did not create or forgot: by-hand".into(),
        ))
    })
    .await;

    // Its running Job deleted by hand: it leaves the active list (`MissingJob`), and the
    // schedule Forbid skipped (this minute's, unmet) runs at once, as kube's controller does
    // when the deletion wakes it: no minute has to pass.
    let running = format!("single-{}", minutes - 3);
    fleet.cluster.kubectl_ok(&["delete", "job", &running]);
    eventually(Duration::from_secs(20), "single's next job", || async {
        creates("single").await == 2
    })
    .await;
    eventually(Duration::from_secs(10), "MissingJob", || async {
        events_of(&fleet, "single").await.contains(&(
            "MissingJob".into(),
            format!("Active job went missing: {running}"),
        ))
    })
    .await;
    let active = get(&fleet, "single").await.status.and_then(|s| s.active);
    assert_eq!(
        active.map(|a| a.iter().filter_map(|r| r.name.clone()).collect::<Vec<_>>()),
        Some(vec![format!("single-{minutes}")])
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_and_zones_kubernetes_refuses_are_refused() {
    let fleet = Fleet::start().await;
    let refused = |manifest: &str| {
        let out = fleet.cluster.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(!out.status.success(), "accepted: {manifest}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(&cron_job("bad", "  schedule: \"61 * * * *\"", None));
    assert!(
        stderr.contains(
            r#"spec.schedule: Invalid value: "61 * * * *": end of range (61) above maximum (59): 61"#
        ),
        "{stderr}"
    );
    let stderr = refused(&cron_job(
        "bad",
        "  schedule: \"@daily\"\n  timeZone: Mars/Olympus_Mons",
        None,
    ));
    assert!(
        stderr.contains(
            r#"spec.timeZone: Invalid value: "Mars/Olympus_Mons": unknown time zone Mars/Olympus_Mons"#
        ),
        "{stderr}"
    );
    let stderr = refused(&cron_job("bad", "  schedule: \"TZ=UTC 0 * * * *\"", None));
    assert!(
        stderr.contains("cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
        "{stderr}"
    );
    // kubectl create cronjob, as a user types it; a zone by name is fine.
    fleet.cluster.kubectl_ok(&[
        "create",
        "cronjob",
        "nightly",
        "--image=registry.local/batch:1.0",
        "--schedule=0 3 * * *",
    ]);
    fleet.cluster.kubectl_ok(&[
        "patch",
        "cronjob",
        "nightly",
        "-p",
        r#"{"spec":{"timeZone":"Europe/Paris"}}"#,
    ]);
    let spec = get(&fleet, "nightly").await.spec.expect("spec");
    assert_eq!(
        (
            spec.concurrency_policy.as_deref(),
            spec.time_zone.as_deref()
        ),
        (Some("Allow"), Some("Europe/Paris"))
    );
    fleet.stop().await;
}
