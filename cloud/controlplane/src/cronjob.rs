//! The CronJob controller: makes a CronJob's Jobs on its schedule, as kube-controller-manager's
//! cronjob controller v2 does (v1.33); the Job controller ([`crate::job`]) then runs them on
//! edges of either runtime.
//!
//! A reconcile reads the CronJob's Jobs (by controller owner reference) from a Job store this
//! controller keeps, and decides in one pure function ([`decide`]) what kube's `sync` would:
//!
//! - **history**: finished Jobs beyond `successfulJobsHistoryLimit` and
//!   `failedJobsHistoryLimit` are deleted, oldest start first (`SuccessfulDelete`);
//! - **children**: a finished Job leaves `status.active` (`SawCompletedJob`), a Job in it that
//!   the API no longer has too (`MissingJob`), an unfinished one the controller did not make is
//!   reported (`UnexpectedJob`: `kubectl create job --from=cronjob/x` makes one);
//!   `status.lastSuccessfulTime` is the latest completion;
//! - **the schedule** (`spec.schedule` in `spec.timeZone`, else in the controller's time zone;
//!   see [`wedge_core::cron`]): the most recent schedule time not yet run, from the later of
//!   `status.lastScheduleTime` (else the creation) and `now - startingDeadlineSeconds`. More
//!   than 100 missed: the `TooManyMissedTimes` warning. With a deadline, times before
//!   `now - startingDeadlineSeconds` are skipped without a word, as in kube (whose
//!   `MissSchedule` check, kept here, follows that bound and so hardly ever fires); `Forbid`
//!   with a Job active: `JobAlreadyActive` and no Job;
//!   `Replace`: the active Jobs are deleted first;
//! - **the Job**: named `<cronjob>-<scheduled time in minutes since the epoch>` (so a second
//!   try makes no second Job: the name is the lock, as in kube), owned by the CronJob, with the
//!   template's labels, annotations and spec, and `batch.kubernetes.io/cronjob-scheduled-timestamp`
//!   (RFC 3339 in the CronJob's zone); it joins `status.active` and the time becomes
//!   `status.lastScheduleTime`;
//! - **when to look again**: just after the next schedule time (kube's 100 ms after), as a
//!   timer of the controller's queue; nothing polls. Time is read from the injected
//!   [`Clock`], so tests run the same logic at any time they choose.
//!
//! A schedule or time zone that cannot be read (the API refuses them, but a stored one may be
//! older than that check, or name a zone the database lost) is reported once per generation
//! (`UnparseableSchedule`, `UnknownTimeZone`, `InvalidSchedule` for a schedule that never
//! comes, such as the 30th of February), and the CronJob waits for a change: never looped on.
//! Suspended CronJobs and those being deleted keep their status and make nothing.
//!
//! **Events once.** kube records `MissSchedule`, `JobAlreadyActive` and `UnexpectedJob` at each
//! sync, which there happens at the next schedule or on a change; here every CronJob is also
//! looked at every 10 s (the resync the workload controllers share), so each of those is
//! recorded once per schedule time or Job instead of every 10 s.
//!
//! **Expectations**: after making or deleting Jobs, a reconcile records what it did and the
//! schedule time it wrote; the next one for the CronJob waits until the Job store and the
//! CronJob show it (or [`crate::expectations::TTL`] passed), as the Job controller does.
//!
//! Differences from kube: child Jobs are matched by the controller reference's uid, not its
//! name (a CronJob recreated under the same name does not count its predecessor's Jobs); a
//! Job the API refuses as invalid is reported once per schedule time (`FailedCreate`) and not
//! retried until the next one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use wedge_core::cron::{Schedule, time_zone};

use crate::Error;
use crate::clock::Clock;
use crate::events::{EventType, Recorder};
use crate::expectations::{Expectations, Writes, api_message, version_of};
use crate::indexes::ControllerIndex;
use crate::informer::Informer;

/// The annotation of a Job with the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// kube's `nextScheduleDelta`: how long after a schedule time the CronJob is looked at.
pub const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// More missed schedule times than this: kube's `TooManyMissedTimes`.
pub const MANY_MISSED: i64 = 100;
/// How soon a CronJob waiting on its own writes is looked at again.
const RECHECK: Duration = Duration::from_secs(1);
/// How soon a CronJob whose status write met a newer version is looked at again.
const STALE: Duration = Duration::from_millis(100);
/// How long a once-recorded event is remembered.
const NOTED_FOR: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------------
// What to do: pure.

/// `concurrencyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Jobs may overlap.
    Allow,
    /// No new Job while one is active.
    Forbid,
    /// The active Jobs are deleted for the new one.
    Replace,
}

impl Concurrency {
    fn of(cron_job: &CronJob) -> Self {
        match cron_job
            .spec
            .as_ref()
            .and_then(|s| s.concurrency_policy.as_deref())
        {
            Some("Forbid") => Self::Forbid,
            Some("Replace") => Self::Replace,
            _ => Self::Allow,
        }
    }
}

/// How many schedule times were missed since the last one run (kube's `missedSchedulesType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// None.
    None,
    /// Some, at most [`MANY_MISSED`].
    Few,
    /// More than [`MANY_MISSED`].
    Many,
}

/// A schedule whose times are less than a second apart, or never come.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time difference between two schedules is less than 1 second")]
pub struct TooClose;

/// kube's `mostRecentScheduleTime`: the time schedule times are counted from (the last one
/// run, else the creation; with `deadline`, not before `now - deadline`), the most recent
/// schedule time at or before `now` after it, if any, and how many were missed.
pub fn most_recent(
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    deadline: Option<i64>,
    now: Timestamp,
    schedule: &Schedule,
) -> Result<(Timestamp, Option<Timestamp>, Missed), TooClose> {
    let mut earliest = last_scheduled.unwrap_or(created);
    if let Some(deadline) = deadline
        && let Ok(limit) = now.checked_sub(jiff::SignedDuration::from_secs(deadline))
        && limit > earliest
    {
        earliest = limit;
    }
    let t1 = schedule.next(earliest).ok_or(TooClose)?;
    if now < t1 {
        return Ok((earliest, None, Missed::None));
    }
    let t2 = schedule.next(t1).ok_or(TooClose)?;
    if now < t2 {
        return Ok((earliest, Some(t1), Missed::None));
    }
    // Whole seconds between two schedule times, rounded as Go's `Round(time.Second)`.
    let between = t2.duration_since(t1).as_millis().saturating_add(500) / 1000;
    if between < 1 {
        return Err(TooClose);
    }
    let between = i64::try_from(between).map_err(|_| TooClose)?;
    // kube's rough count: how many such intervals fit between the first missed time and now.
    let elapsed = now.duration_since(t1).as_secs();
    let missed = elapsed / between + 1;
    // Go back one interval more than the count says, and let the schedule find the real
    // times from there (irregular schedules such as `30 6-16/4 * * 1-5`).
    let back = (missed - 2).saturating_mul(between);
    let potential = t1
        .checked_add(jiff::SignedDuration::from_secs(back))
        .map_err(|_| TooClose)?;
    let mut latest = None;
    let mut t = schedule.next(potential);
    while let Some(at) = t.filter(|at| *at <= now) {
        latest = Some(at);
        t = schedule.next(at);
    }
    let missed = if missed > MANY_MISSED {
        Missed::Many
    } else if missed > 0 {
        Missed::Few
    } else {
        Missed::None
    };
    Ok((earliest, latest, missed))
}

/// kube's `nextScheduleTimeDuration`: how long from `now` until just after the next schedule
/// time, or `None` if there is none.
pub fn next_wakeup(
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    now: Timestamp,
    schedule: &Schedule,
) -> Option<Duration> {
    let from = match most_recent(created, last_scheduled, None, now, schedule) {
        Err(TooClose) => now,
        Ok((_, Some(latest), _)) => latest,
        Ok((earliest, None, Missed::None)) => earliest,
        Ok((_, None, _)) => now,
    };
    let next = schedule.next(from)?;
    let wait = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(wait + NEXT_SCHEDULE_DELTA)
}

/// `Complete` or `Failed`, whichever condition of the Job is True.
pub fn finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    ["Complete", "Failed"].into_iter().find(|kind| {
        conditions
            .iter()
            .any(|c| c.type_ == *kind && c.status == "True")
    })
}

/// The name of the Job for schedule time `at`: kube's `getJobName`.
pub fn job_name(cron_job: &CronJob, at: Timestamp) -> String {
    format!("{}-{}", cron_job.name_any(), at.as_second().div_euclid(60))
}

/// An event the reconcile should record; with `once`, only the first time for that key.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Normal or Warning.
    pub kind: EventType,
    /// The reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
    /// Recorded once per CronJob and this key.
    pub once: Option<String>,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Self {
        Self {
            kind: EventType::Normal,
            reason,
            message,
            once: None,
        }
    }

    fn warning(reason: &'static str, message: String) -> Self {
        Self {
            kind: EventType::Warning,
            reason,
            message,
            once: None,
        }
    }

    fn once(mut self, key: impl Into<String>) -> Self {
        self.once = Some(key.into());
        self
    }
}

/// What a reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `status.active` after the children were looked at (before the deletions and the Job
    /// below).
    pub active: Vec<ObjectReference>,
    /// `status.lastSuccessfulTime`.
    pub last_successful: Option<Timestamp>,
    /// Finished Jobs past the history limits: name and uid, oldest first.
    pub delete: Vec<(String, String)>,
    /// Active Jobs to delete before making the new one (`Replace`).
    pub replace: Vec<ObjectReference>,
    /// The schedule time to make a Job for, and the zone its annotation is written in.
    pub create: Option<(Timestamp, TimeZone)>,
    /// Events to record.
    pub events: Vec<Note>,
    /// Unfinished Jobs of this CronJob that it did not make (or forgot).
    pub unexpected: Vec<String>,
    /// When to look again without an event, if at all.
    pub requeue: Option<Duration>,
}

fn time_of(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

/// What kube's cronjob controller would do for `cron_job` with these `jobs` (those it controls)
/// at `now`. `missing` holds the uids of active Jobs the API says are gone; `local` is the
/// zone a schedule without `timeZone` is read in.
pub fn decide(
    cron_job: &CronJob,
    jobs: &[Arc<Job>],
    missing: &BTreeSet<String>,
    now: Timestamp,
    local: &TimeZone,
) -> Plan {
    let spec = cron_job.spec.clone().unwrap_or_default();
    let status = cron_job.status.clone().unwrap_or_default();
    let generation = cron_job.metadata.generation.unwrap_or_default();
    let mut plan = Plan {
        active: status.active.clone().unwrap_or_default(),
        last_successful: time_of(status.last_successful_time.as_ref()),
        delete: Vec::new(),
        replace: Vec::new(),
        create: None,
        events: Vec::new(),
        unexpected: Vec::new(),
        requeue: None,
    };

    // History: the oldest finished Jobs past the limits go (kube's `cleanupFinishedJobs`).
    let mut by_outcome: HashMap<&str, Vec<&Arc<Job>>> = HashMap::new();
    for job in jobs {
        if let Some(outcome) = finished(job) {
            by_outcome.entry(outcome).or_default().push(job);
        }
    }
    for (outcome, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let (Some(limit), Some(list)) = (limit, by_outcome.get_mut(outcome)) else {
            continue;
        };
        let extra = list
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        // Oldest start first, unstarted last, then by name (kube's `byJobStartTime`).
        list.sort_by(|a, b| {
            let start = |j: &Job| time_of(j.status.as_ref().and_then(|s| s.start_time.as_ref()));
            match (start(a), start(b)) {
                (Some(x), Some(y)) if x != y => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                _ => a.name_any().cmp(&b.name_any()),
            }
        });
        plan.delete.extend(
            list.iter()
                .take(extra)
                .map(|j| (j.name_any(), j.uid().unwrap_or_default())),
        );
    }

    // The children (kube's first loop of `syncCronJob`).
    let in_active = |active: &[ObjectReference], uid: &str| {
        active.iter().any(|r| r.uid.as_deref() == Some(uid))
    };
    for job in jobs {
        let uid = job.uid().unwrap_or_default();
        let outcome = finished(job);
        let found = in_active(&plan.active, &uid);
        if !found && outcome.is_none() {
            plan.unexpected.push(job.name_any());
            plan.events.push(
                Note::warning(
                    "UnexpectedJob",
                    format!(
                        "Saw a job that the controller did not create or forgot: {}",
                        job.name_any()
                    ),
                )
                .once(uid.clone()),
            );
        } else if let Some(outcome) = outcome.filter(|_| found) {
            plan.active
                .retain(|r| r.uid.as_deref() != Some(uid.as_str()));
            plan.events.push(Note::normal(
                "SawCompletedJob",
                format!(
                    "Saw completed job: {}, condition: {outcome}",
                    job.name_any()
                ),
            ));
        }
        if outcome == Some("Complete") {
            let completed = time_of(job.status.as_ref().and_then(|s| s.completion_time.as_ref()));
            if completed > plan.last_successful {
                plan.last_successful = completed;
            }
        }
    }
    // Active Jobs the API no longer has.
    let uids: HashSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    plan.active.retain(|r| {
        let uid = r.uid.clone().unwrap_or_default();
        let gone = !uids.contains(&uid) && missing.contains(&uid);
        if gone {
            plan.events.push(Note::normal(
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    r.name.as_deref().unwrap_or_default()
                ),
            ));
        }
        !gone
    });

    if cron_job.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let zone = match spec.time_zone.as_deref() {
        None => local.clone(),
        Some(name) => match time_zone(name) {
            Ok(zone) => zone,
            Err(e) => {
                plan.events.push(
                    Note::warning(
                        "UnknownTimeZone",
                        format!("invalid timeZone: {name:?}: {e}"),
                    )
                    .once(format!("generation {generation}")),
                );
                return plan;
            }
        },
    };
    if spec.suspend.unwrap_or(false) {
        return plan;
    }
    if spec.schedule.contains("TZ") {
        plan.events.push(
            Note::warning(
                "UnsupportedSchedule",
                format!(
                    "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                    spec.schedule
                ),
            )
            .once(format!("generation {generation}")),
        );
    }
    let schedule = match Schedule::parse(&spec.schedule, zone.clone()) {
        Ok(s) => s,
        Err(e) => {
            plan.events.push(
                Note::warning(
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                )
                .once(format!("generation {generation}")),
            );
            return plan;
        }
    };
    // Jobs' annotations are written in the CronJob's own zone, UTC without one.
    let annotation_zone = match spec.time_zone {
        Some(_) => zone.clone(),
        None => schedule_prefix_zone(&spec.schedule).unwrap_or(TimeZone::UTC),
    };

    let created = time_of(cron_job.metadata.creation_timestamp.as_ref()).unwrap_or(now);
    let last = time_of(status.last_schedule_time.as_ref());
    let wakeup = |last: Option<Timestamp>| next_wakeup(created, last, now, &schedule);
    let scheduled = match most_recent(
        created,
        last,
        spec.starting_deadline_seconds,
        now,
        &schedule,
    ) {
        Err(e) => {
            plan.events.push(
                Note::warning(
                    "InvalidSchedule",
                    format!("invalid schedule: {} : {e}", spec.schedule),
                )
                .once(format!("generation {generation}")),
            );
            return plan;
        }
        Ok((_, None, _)) => {
            plan.requeue = wakeup(last);
            return plan;
        }
        Ok((_, Some(at), missed)) => {
            if missed == Missed::Many {
                plan.events.push(
                    Note::warning(
                        "TooManyMissedTimes",
                        "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".to_owned(),
                    )
                    .once(at.to_string()),
                );
            }
            at
        }
    };
    plan.requeue = wakeup(last);
    let too_late = spec.starting_deadline_seconds.is_some_and(|d| {
        scheduled
            .checked_add(jiff::SignedDuration::from_secs(d))
            .is_ok_and(|limit| limit < now)
    });
    if too_late {
        let when = scheduled.strftime("%a, %d %b %Y %H:%M:%S %z").to_string();
        plan.events.push(
            Note::warning(
                "MissSchedule",
                format!("Missed scheduled time to start a job: {when}"),
            )
            .once(scheduled.to_string()),
        );
        return plan;
    }
    let name = job_name(cron_job, scheduled);
    if plan.active.iter().any(|r| r.name.as_deref() == Some(&name)) || last == Some(scheduled) {
        return plan;
    }
    match Concurrency::of(cron_job) {
        Concurrency::Forbid if !plan.active.is_empty() => {
            plan.events.push(
                Note::normal(
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".to_owned(),
                )
                .once(scheduled.to_string()),
            );
            return plan;
        }
        Concurrency::Replace => plan.replace = plan.active.clone(),
        _ => {}
    }
    plan.create = Some((scheduled, annotation_zone));
    plan.requeue = wakeup(Some(scheduled));
    plan
}

/// The zone of a legacy `TZ=`/`CRON_TZ=` prefix.
fn schedule_prefix_zone(schedule: &str) -> Option<TimeZone> {
    let prefix = schedule.split_whitespace().next()?;
    let name = prefix
        .strip_prefix("TZ=")
        .or_else(|| prefix.strip_prefix("CRON_TZ="))?;
    time_zone(name).ok()
}

/// Go's RFC 3339: `Z` at offset zero, else `+hh:mm`.
fn rfc3339_in(at: Timestamp, zone: &TimeZone) -> String {
    let zoned = at.to_zoned(zone.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job for schedule time `at`: kube's `getJobFromTemplate2`.
pub fn job_from_template(cron_job: &CronJob, at: Timestamp, zone: &TimeZone) -> Job {
    let template = cron_job
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.to_owned(), rfc3339_in(at, zone));
    Job {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(job_name(cron_job, at)),
            namespace: cron_job.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cron_job.name_any(),
                uid: cron_job.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The reference `status.active` holds for `job`.
fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn timestamp(t: Timestamp) -> Value {
    json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

// ---------------------------------------------------------------------------------------------
// Doing it.

/// What a reconcile did and the next one must see first: its Jobs in the Job store, and the
/// schedule time it wrote in the CronJob.
#[derive(Debug, Clone)]
struct Expectation {
    writes: Writes,
    scheduled: Option<Timestamp>,
}

/// What the reconciler shares.
pub struct Context {
    client: Client,
    jobs: Store<Job>,
    /// The Job store's Jobs by controller uid.
    index: ControllerIndex<Job>,
    recorder: Recorder,
    clock: Clock,
    /// The zone schedules without `timeZone` are read in: this process's, as kube's.
    local: TimeZone,
    /// By CronJob uid.
    expectations: Expectations<String, Expectation>,
    /// Events recorded once: (CronJob uid, reason, key) and when.
    noted: Mutex<HashMap<(String, &'static str, String), tokio::time::Instant>>,
}

/// Runs the controller until `shutdown` resolves, reading the time from `clock`.
pub async fn run(
    client: Client,
    clock: Clock,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let mut informer = Informer::<Job>::new("job");
    let jobs = informer.store();
    let job_changes = informer.subscribe();
    let index = ControllerIndex::default();
    informer.on_event({
        let index = index.clone();
        move |event| index.apply(event)
    });
    let job_feed = informer.run(Api::all(client.clone()), watcher::Config::default());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
        client: client.clone(),
        jobs,
        index,
        clock,
        local: TimeZone::try_system().unwrap_or(TimeZone::UTC),
        expectations: Expectations::new("job"),
        noted: Mutex::new(HashMap::new()),
    });
    let controller = Controller::new(Api::<CronJob>::all(client), watcher::Config::default())
        .owns_shared_stream(job_changes)
        .reconcile_all_on(crate::resync_ticks())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|r| {
            if let Err(error) = r {
                tracing::debug!(%error, "cronjob reconcile failed");
            }
            futures::future::ready(())
        });
    // The controller ends on shutdown; the feed never does by itself.
    tokio::select! {
        () = controller => {}
        () = job_feed => {}
    }
}

impl Context {
    /// Whether the Job store and `cron_job` show what the last reconcile of it did (or that
    /// is too old to wait for).
    fn expectations_met(&self, cron_job: &CronJob, namespace: &str) -> bool {
        let last = cron_job
            .status
            .as_ref()
            .and_then(|s| time_of(s.last_schedule_time.as_ref()));
        self.expectations
            .met(&cron_job.uid().unwrap_or_default(), |e| {
                e.writes.forget_shown(&self.jobs, &self.index, namespace)
                    && e.scheduled.is_none_or(|t| last >= Some(t))
            })
    }

    fn expect(&self, uid: &str, writes: Writes, scheduled: Option<Timestamp>) {
        if writes.is_empty() && scheduled.is_none() {
            return;
        }
        self.expectations
            .expect(uid.to_owned(), Expectation { writes, scheduled });
    }

    /// Whether `(uid, reason, key)` was noted already; notes it if not.
    fn first_time(&self, uid: &str, reason: &'static str, key: &str) -> bool {
        let Ok(mut noted) = self.noted.lock() else {
            return true;
        };
        noted.retain(|_, at| at.elapsed() <= NOTED_FOR);
        noted
            .insert(
                (uid.to_owned(), reason, key.to_owned()),
                tokio::time::Instant::now(),
            )
            .is_none()
    }

    fn was_noted(&self, uid: &str, reason: &'static str, key: &str) -> bool {
        self.noted
            .lock()
            .is_ok_and(|n| n.contains_key(&(uid.to_owned(), reason, key.to_owned())))
    }

    fn record(&self, cron_job: &CronJob, note: &Note) {
        let uid = cron_job.uid().unwrap_or_default();
        if let Some(key) = &note.once
            && !self.first_time(&uid, note.reason, key)
        {
            return;
        }
        self.recorder.record(
            cron_job.object_ref(&()),
            note.kind,
            note.reason,
            &note.message,
        );
    }
}

/// The uids of active Jobs that the store does not show and the API says are gone (kube asks
/// the API too: a slow watch must not make a running Job look missing).
async fn missing_jobs(
    api: &Api<Job>,
    cron_job: &CronJob,
    jobs: &[Arc<Job>],
) -> Result<BTreeSet<String>, Error> {
    let known: HashSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    let mut missing = BTreeSet::new();
    let active = cron_job
        .status
        .iter()
        .flat_map(|s| s.active.iter().flatten());
    for r in active {
        let (Some(uid), Some(name)) = (&r.uid, &r.name) else {
            continue;
        };
        if known.contains(uid) {
            continue;
        }
        match api.get_opt(name).await {
            Ok(None) => {
                missing.insert(uid.clone());
            }
            Ok(Some(job)) if job.uid().as_ref() != Some(uid) => {
                missing.insert(uid.clone());
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(Error::api("get job of", cron_job, e)),
        }
    }
    Ok(missing)
}

async fn reconcile(cached: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let uid = cached.uid().unwrap_or_default();
    if !ctx.expectations_met(&cached, &namespace) {
        return Ok(Action::requeue(RECHECK));
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut cron_job = cached;
    let jobs = ctx.index.owned(&ctx.jobs, &namespace, &uid);
    let missing = missing_jobs(&api, &cron_job, &jobs).await?;
    let now = ctx.clock.now();
    let mut plan = decide(&cron_job, &jobs, &missing, now, &ctx.local);
    if !plan.unexpected.is_empty() {
        // The cache may not show our own last status write yet: ask the API, as kube does.
        let fresh = Api::<CronJob>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&cron_job.name_any())
            .await
            .map_err(|e| Error::api("get", cron_job.as_ref(), e))?;
        match fresh {
            None => return Ok(Action::await_change()),
            Some(fresh) if fresh.resource_version() != cron_job.resource_version() => {
                cron_job = Arc::new(fresh);
                plan = decide(&cron_job, &jobs, &missing, now, &ctx.local);
            }
            Some(_) => {}
        }
    }
    let cron_job = cron_job.as_ref();
    let mut active = plan.active.clone();
    let mut last_scheduled = cron_job
        .status
        .as_ref()
        .and_then(|s| time_of(s.last_schedule_time.as_ref()));
    let mut deleted = Vec::new();
    let mut events = plan.events.clone();

    // History first, then the Jobs a Replace takes the place of.
    for (name, job_uid) in &plan.delete {
        match delete_job(&api, name).await {
            Ok(()) => {
                active.retain(|r| r.uid.as_deref() != Some(job_uid.as_str()));
                events.push(Note::normal(
                    "SuccessfulDelete",
                    format!("Deleted job {name}"),
                ));
                deleted.push(name.clone());
            }
            Err(e) => events.push(Note::warning("FailedDelete", format!("Deleted job: {e}"))),
        }
    }
    let mut failure = None;
    for r in &plan.replace {
        let name = r.name.clone().unwrap_or_default();
        match delete_job(&api, &name).await {
            Ok(()) => {
                active.retain(|a| a.uid != r.uid);
                events.push(Note::normal(
                    "SuccessfulDelete",
                    format!("Deleted job {name}"),
                ));
                deleted.push(name);
            }
            Err(e) => {
                events.push(Note::warning("FailedDelete", format!("Deleted job: {e}")));
                failure = Some(Error::api("replace job of", cron_job, e));
                break;
            }
        }
    }

    let mut created = Vec::new();
    let mut created_version = None;
    if let (None, Some((at, zone))) = (&failure, &plan.create) {
        let key = at.to_string();
        let job = job_from_template(cron_job, *at, zone);
        let name = job.name_any();
        if ctx.was_noted(&uid, "FailedCreate", &key) {
            // Refused as invalid for this schedule time already: wait for the next one.
        } else {
            match api.create(&PostParams::default(), &job).await {
                Ok(made) => {
                    tracing::info!(cronjob = %cron_job.name_any(), %namespace, job = %name, scheduled = %at, "created job");
                    events.push(Note::normal(
                        "SuccessfulCreate",
                        format!("Created job {name}"),
                    ));
                    active.push(reference(&made));
                    last_scheduled = Some(*at);
                    created_version = version_of(&made.metadata);
                    created.push(name);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Made before (the name is the lock): ours unless someone else's.
                    match api.get_opt(&name).await {
                        Ok(Some(existing)) => {
                            let ours = crate::pods::controller_of(&existing.metadata)
                                .is_some_and(|o| o.uid == uid);
                            if ours {
                                if !active.iter().any(|r| r.uid == existing.metadata.uid) {
                                    active.push(reference(&existing));
                                }
                                last_scheduled = Some(*at);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => failure = Some(Error::api("get job of", cron_job, e)),
                    }
                }
                Err(e) => {
                    let invalid =
                        matches!(&e, kube::Error::Api(s) if s.code == 422 || s.code == 400);
                    // kube says nothing when the namespace is going: the CronJob goes with it.
                    let terminating = matches!(&e, kube::Error::Api(s)
                        if s.code == 403 && s.message.contains("because it is being terminated"));
                    let note = Note::warning(
                        "FailedCreate",
                        format!("Error creating job: {}", api_message(&e)),
                    );
                    if terminating {
                        tracing::debug!(cronjob = %cron_job.name_any(), %namespace, "namespace terminating; no job");
                    } else if invalid {
                        tracing::warn!(cronjob = %cron_job.name_any(), %namespace, error = %e, "cronjob's job is refused");
                        events.push(note.once(key));
                    } else {
                        events.push(note);
                        failure = Some(Error::api("create job for", cron_job, e));
                    }
                }
            }
        }
    }

    let status_written = write_status(
        cron_job,
        &ctx,
        &namespace,
        &active,
        last_scheduled,
        plan.last_successful,
    )
    .await;
    for note in &events {
        ctx.record(cron_job, note);
    }
    // The next reconcile waits for the time it wrote only if it was written: after a conflict
    // it must look again at once (and find its Job by name).
    let scheduled = (!created.is_empty() && matches!(status_written, Ok(true)))
        .then_some(last_scheduled)
        .flatten();
    let writes = Writes {
        created,
        deleted,
        created_version,
    };
    ctx.expect(&uid, writes, scheduled);
    if let Some(e) = failure {
        return Err(e);
    }
    if !status_written? {
        return Ok(Action::requeue(STALE));
    }
    Ok(match plan.requeue {
        Some(after) if !plan.delete.is_empty() || !plan.replace.is_empty() => {
            Action::requeue(after.min(RECHECK))
        }
        Some(after) => Action::requeue(after),
        None if !plan.delete.is_empty() => Action::requeue(RECHECK),
        None => Action::await_change(),
    })
}

/// Deletes a Job in the background (its pods follow through the garbage collector), as kube's
/// `jobControl.DeleteJob` does; one already gone counts as deleted.
async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the status, if it changed, at the version it was decided from. Returns whether it
/// was written or unchanged; `false` when the CronJob changed meanwhile.
async fn write_status(
    cron_job: &CronJob,
    ctx: &Context,
    namespace: &str,
    active: &[ObjectReference],
    last_scheduled: Option<Timestamp>,
    last_successful: Option<Timestamp>,
) -> Result<bool, Error> {
    let status = cron_job.status.clone().unwrap_or_default();
    let uids = |refs: &[ObjectReference]| -> Vec<Option<String>> {
        refs.iter().map(|r| r.uid.clone()).collect()
    };
    let unchanged = uids(status.active.as_deref().unwrap_or_default()) == uids(active)
        && time_of(status.last_schedule_time.as_ref()) == last_scheduled
        && time_of(status.last_successful_time.as_ref()) == last_successful;
    if unchanged {
        return Ok(true);
    }
    let patch = json!({
        "metadata": {"resourceVersion": cron_job.resource_version()},
        "status": {
            "active": if active.is_empty() { Value::Null } else { json!(active) },
            "lastScheduleTime": last_scheduled.map_or(Value::Null, timestamp),
            "lastSuccessfulTime": last_successful.map_or(Value::Null, timestamp),
        },
    });
    match Api::<CronJob>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &cron_job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if Error::is_gone_or_conflict(&e) => Ok(false),
        Err(e) => Err(Error::api("update status of", cron_job, e)),
    }
}

fn error_policy(_cron_job: Arc<CronJob>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "cronjob reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> Timestamp {
        t.parse().expect("time")
    }

    fn cron_job(spec: Value, status: Value) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({
            "metadata": {"labels": {"app": "report"}, "annotations": {"team": "ops"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "x"}]}}},
        });
        serde_json::from_value(json!({
            "metadata": {"name": "report", "namespace": "default", "uid": "cj1", "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:30Z"},
            "spec": spec, "status": status,
        }))
        .expect("cronjob")
    }

    fn job(name: &str, uid: &str, outcome: Option<&str>, start: &str) -> Arc<Job> {
        let mut status = json!({"startTime": start});
        if let Some(kind) = outcome {
            status["conditions"] = json!([{"type": kind, "status": "True"}]);
            if kind == "Complete" {
                status["completionTime"] = json!(start);
            }
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": uid,
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                        "name": "report", "uid": "cj1", "controller": true}]},
                "status": status,
            }))
            .expect("job"),
        )
    }

    fn active(name: &str, uid: &str) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": "default", "uid": uid})
    }

    fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.reason).collect()
    }

    fn plan(cj: &CronJob, jobs: &[Arc<Job>], now: &str) -> Plan {
        decide(cj, jobs, &BTreeSet::new(), at(now), &TimeZone::UTC)
    }

    fn utc(spec: &str) -> Schedule {
        Schedule::parse(spec, TimeZone::UTC).expect("schedule")
    }

    #[test]
    fn fires_at_the_schedule_and_wakes_just_after_the_next() {
        let cj = cron_job(json!({"schedule": "*/5 * * * *"}), json!({}));
        // Before the first time: nothing, and a wake-up 100 ms after it.
        let p = plan(&cj, &[], "2026-01-01T00:03:00Z");
        assert_eq!(p.create, None);
        assert_eq!(p.requeue, Some(Duration::from_millis(120_100)));
        // At it: the Job for 00:05, then a wake-up for 00:10.
        let p = plan(&cj, &[], "2026-01-01T00:05:00.2Z");
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:05:00Z"))
        );
        assert_eq!(p.requeue, Some(Duration::from_millis(299_900)));
        let (when, zone) = p.create.expect("create");
        let made = job_from_template(&cj, when, &zone);
        assert_eq!(made.metadata.name.as_deref(), Some("report-29453765"));
        let annotations = made.metadata.annotations.expect("annotations");
        assert_eq!(annotations[SCHEDULED_TIMESTAMP], "2026-01-01T00:05:00Z");
        assert_eq!(annotations["team"], "ops");
        assert_eq!(made.metadata.labels.expect("labels")["app"], "report");
        let owner = &made.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
        // Once run (lastScheduleTime), that time is not run again.
        let ran = cron_job(
            json!({"schedule": "*/5 * * * *"}),
            json!({"lastScheduleTime": "2026-01-01T00:05:00Z",
                "active": [active("report-29453765", "j1")]}),
        );
        let p = plan(
            &ran,
            &[job("report-29453765", "j1", None, "2026-01-01T00:05:01Z")],
            "2026-01-01T00:05:03Z",
        );
        assert_eq!(p.create, None);
        assert!(p.events.is_empty(), "{:?}", p.events);
    }

    #[test]
    fn a_time_zone_moves_the_schedule_and_the_annotation() {
        let cj = cron_job(
            json!({"schedule": "0 9 * * *", "timeZone": "Asia/Tokyo"}),
            json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
        );
        // 09:00 in Tokyo is 00:00 UTC.
        let p = plan(&cj, &[], "2026-01-02T00:00:01Z");
        let (when, zone) = p.create.expect("create");
        assert_eq!(when, at("2026-01-02T00:00:00Z"));
        let made = job_from_template(&cj, when, &zone);
        assert_eq!(
            made.metadata.annotations.expect("annotations")[SCHEDULED_TIMESTAMP],
            "2026-01-02T09:00:00+09:00"
        );
    }

    #[test]
    fn missed_times_run_once_unless_past_the_deadline() {
        // Down for 10 minutes of a one-minute schedule: the latest time runs, once.
        let cj = cron_job(
            json!({"schedule": "* * * * *"}),
            json!({"lastScheduleTime": "2026-01-01T00:01:00Z"}),
        );
        let p = plan(&cj, &[], "2026-01-01T00:11:30Z");
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:11:00Z"))
        );
        assert!(reasons(&p).is_empty());
        // With a deadline of 20 s, 00:11:00 is 30 s late: kube counts schedule times only from
        // `now - deadline`, so it is skipped, silently, and the next one is waited for.
        let late = cron_job(
            json!({"schedule": "* * * * *", "startingDeadlineSeconds": 20}),
            json!({"lastScheduleTime": "2026-01-01T00:01:00Z"}),
        );
        let p = plan(&late, &[], "2026-01-01T00:11:30Z");
        assert_eq!(p.create, None);
        assert!(reasons(&p).is_empty());
        assert_eq!(p.requeue, Some(Duration::from_millis(30_100)));
        // Within it, it runs.
        let p = plan(&late, &[], "2026-01-01T00:11:10Z");
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:11:00Z"))
        );
    }

    #[test]
    fn more_than_a_hundred_missed_is_a_warning() {
        let cj = cron_job(
            json!({"schedule": "* * * * *"}),
            json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
        );
        let p = plan(&cj, &[], "2026-01-01T03:00:30Z");
        assert_eq!(reasons(&p), ["TooManyMissedTimes"]);
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T03:00:00Z"))
        );
        // A deadline bounds how far back it counts: no warning.
        let bounded = cron_job(
            json!({"schedule": "* * * * *", "startingDeadlineSeconds": 200}),
            json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
        );
        let p = plan(&bounded, &[], "2026-01-01T03:00:30Z");
        assert!(reasons(&p).is_empty());
        let (_, latest, missed) = most_recent(
            at("2026-01-01T00:00:00Z"),
            None,
            None,
            at("2026-01-01T00:02:30Z"),
            &utc("* * * * *"),
        )
        .expect("schedule");
        assert_eq!(
            (latest, missed),
            (Some(at("2026-01-01T00:02:00Z")), Missed::Few)
        );
        // Irregular schedules find the real latest time.
        let (_, latest, _) = most_recent(
            at("2026-01-05T00:00:00Z"),
            None,
            None,
            at("2026-01-09T12:00:00Z"),
            &utc("30 6-16/4 * * 1-5"),
        )
        .expect("schedule");
        assert_eq!(latest, Some(at("2026-01-09T10:30:00Z")));
    }

    #[test]
    fn concurrency_policies() {
        let spec = |policy: &str| json!({"schedule": "* * * * *", "concurrencyPolicy": policy});
        let status = json!({"lastScheduleTime": "2026-01-01T00:01:00Z",
            "active": [active("report-29453761", "j1")]});
        let running = [job("report-29453761", "j1", None, "2026-01-01T00:01:00Z")];
        let now = "2026-01-01T00:02:00.5Z";
        let p = plan(&cron_job(spec("Allow"), status.clone()), &running, now);
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:02:00Z"))
        );
        assert!(p.replace.is_empty());
        let p = plan(&cron_job(spec("Forbid"), status.clone()), &running, now);
        assert_eq!(p.create, None);
        assert_eq!(reasons(&p), ["JobAlreadyActive"]);
        assert_eq!(p.requeue, Some(Duration::from_millis(59_600)));
        let p = plan(&cron_job(spec("Replace"), status.clone()), &running, now);
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:02:00Z"))
        );
        assert_eq!(p.replace.len(), 1);
        // Forbid with the previous Job finished: it leaves the active list, the next runs.
        let done = [job(
            "report-29453761",
            "j1",
            Some("Complete"),
            "2026-01-01T00:01:30Z",
        )];
        let p = plan(&cron_job(spec("Forbid"), status), &done, now);
        assert_eq!(reasons(&p), ["SawCompletedJob"]);
        assert!(p.active.is_empty());
        assert_eq!(p.last_successful, Some(at("2026-01-01T00:01:30Z")));
        assert!(p.create.is_some());
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let cj = cron_job(
            json!({"schedule": "0 0 1 1 *", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0}),
            json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
        );
        let jobs = [
            job("report-3", "j3", Some("Complete"), "2026-01-01T00:03:00Z"),
            job("report-1", "j1", Some("Complete"), "2026-01-01T00:01:00Z"),
            job("report-2", "j2", Some("Complete"), "2026-01-01T00:02:00Z"),
            job("report-f", "jf", Some("Failed"), "2026-01-01T00:04:00Z"),
            job("report-r", "jr", None, "2026-01-01T00:05:00Z"),
        ];
        let p = plan(&cj, &jobs, "2026-01-01T00:10:00Z");
        let names: Vec<&str> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["report-1", "report-2", "report-f"]);
        // report-r runs and is not in the active list: someone else made it.
        assert_eq!(p.unexpected, ["report-r"]);
        assert_eq!(reasons(&p), ["UnexpectedJob"]);
    }

    #[test]
    fn a_schedule_that_cannot_be_read_is_reported_and_not_requeued() {
        let bad = cron_job(json!({"schedule": "61 * * * *"}), json!({}));
        let p = plan(&bad, &[], "2026-01-01T00:10:00Z");
        assert_eq!(reasons(&p), ["UnparseableSchedule"]);
        assert_eq!(
            p.events[0].message,
            "unparseable schedule: \"61 * * * *\" : end of range (61) above maximum (59): 61"
        );
        assert_eq!(
            (p.requeue, p.events[0].once.as_deref()),
            (None, Some("generation 1"))
        );
        let zone = cron_job(
            json!({"schedule": "* * * * *", "timeZone": "Mars/Base"}),
            json!({}),
        );
        let p = plan(&zone, &[], "2026-01-01T00:10:00Z");
        assert_eq!(reasons(&p), ["UnknownTimeZone"]);
        assert_eq!(
            p.events[0].message,
            "invalid timeZone: \"Mars/Base\": unknown time zone Mars/Base"
        );
        let never = cron_job(json!({"schedule": "0 0 30 2 *"}), json!({}));
        let p = plan(&never, &[], "2026-01-01T00:10:00Z");
        assert_eq!(reasons(&p), ["InvalidSchedule"]);
        assert_eq!(p.requeue, None);
    }

    #[test]
    fn suspended_cron_jobs_make_nothing_but_keep_their_status() {
        let cj = cron_job(
            json!({"schedule": "* * * * *", "suspend": true}),
            json!({"active": [active("report-1", "j1"), active("report-2", "j2")]}),
        );
        let jobs = [job(
            "report-1",
            "j1",
            Some("Failed"),
            "2026-01-01T00:01:00Z",
        )];
        let missing = BTreeSet::from(["j2".to_owned()]);
        let p = decide(
            &cj,
            &jobs,
            &missing,
            at("2026-01-01T00:10:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!(p.create, None);
        assert_eq!(p.requeue, None);
        assert!(p.active.is_empty());
        assert_eq!(reasons(&p), ["SawCompletedJob", "MissingJob"]);
    }

    #[test]
    fn every_descriptors_count_from_the_last_time() {
        let cj = cron_job(
            json!({"schedule": "@every 90s"}),
            json!({"lastScheduleTime": "2026-01-01T00:01:00Z"}),
        );
        let p = plan(&cj, &[], "2026-01-01T00:02:31Z");
        assert_eq!(
            p.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:02:30Z"))
        );
        assert_eq!(p.requeue, Some(Duration::from_millis(89_100)));
    }

    /// The wake-up the plan asks for, slept under paused tokio time with a clock that moves
    /// with it, lands just after the schedule time, where the next plan makes the Job.
    #[tokio::test(start_paused = true)]
    async fn the_wakeup_lands_on_the_schedule_in_paused_time() {
        let clock = Clock::tokio(at("2026-01-01T00:00:40Z"));
        let cj = cron_job(json!({"schedule": "* * * * *"}), json!({}));
        let first = decide(&cj, &[], &BTreeSet::new(), clock.now(), &TimeZone::UTC);
        assert_eq!(first.create, None);
        tokio::time::sleep(first.requeue.expect("a wake-up")).await;
        assert_eq!(clock.now().to_string(), "2026-01-01T00:01:00.1Z");
        let second = decide(&cj, &[], &BTreeSet::new(), clock.now(), &TimeZone::UTC);
        assert_eq!(
            second.create.as_ref().map(|c| c.0),
            Some(at("2026-01-01T00:01:00Z"))
        );
    }
}
