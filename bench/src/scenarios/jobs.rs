//! A Job of 1,000 short pods on one edge, Wasm against containers, in one run (issue 17): how
//! long the Job takes from its create request to its `Complete` condition.
//!
//! The processes are real, as in [`super::mixed`] (whose setup this reuses): a `cloudcore` (API
//! server, Job controller, scheduler, hub), an `edgecore` with a real containerd
//! ([`wedge_testkit::containerd`], root needed) beside its Wasm runtime, and a registry serving
//! the `hello` sample (a component that prints a line and exits, about a millisecond of work)
//! and busybox (`true`, the container image's nearest equivalent). A Job of [`COMPLETIONS`]
//! pods of each kind, one after the other, [`PARALLELISM`] at a time (an edge takes 110 pods, as
//! a kubelet does), pods that name their RuntimeClass. One warm-up Job of one pod of each kind
//! pulls and compiles the images first. Each Job is deleted with its pods, and the edge is
//! empty again, before the next starts. The pods mount no ServiceAccount token
//! (`automountServiceAccountToken: false`): what is compared is the runtimes, not a token
//! request to the cloud per pod, which both kinds would pay alike.
//!
//! A thousand container pods pass through the fixture's /24 of bridge addresses because Edged
//! stops a finished pod's sandbox, which gives its address back, as a kubelet does.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use wedge_testkit::registry::Registry;

use super::edge::node_ready;
use super::mixed::{BUSYBOX, container_edge_args, container_host, log_tail, runtime_classes};
use super::processes::CloudAndEdge;
use crate::report::figure;

const SCENARIO: &str = "jobs";
const NODE: &str = "bench-jobs";
/// Completions of each Job measured.
const COMPLETIONS: usize = 1_000;
/// Pods of a Job at once.
const PARALLELISM: usize = 100;
/// A warm-up Job pulls and compiles its image.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(180);
/// A measured Job.
const JOB_TIMEOUT: Duration = Duration::from_secs(1_200);
/// A Job's pods gone after it is deleted.
const DELETE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy)]
enum Kind {
    Wasm,
    Container,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Wasm => "wasm",
            Kind::Container => "container",
        }
    }
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let hello = wedge_testkit::sample_apps::push(&registry.host(), "hello")
        .await
        .context("pushing the hello sample")?;
    let containerd = container_host(&registry)?;
    let dir = tempfile::tempdir()?;
    let registry_host = registry.host();
    let edge_args = container_edge_args(&registry_host, &containerd, dir.path())?;
    let edge_args: Vec<&str> = edge_args.iter().map(String::as_str).collect();
    let measured = async {
        let CloudAndEdge {
            cloud: _cloud,
            edge: _edge,
            client,
        } = CloudAndEdge::start(
            dir.path(),
            NODE,
            &["--insecure-registry", &registry_host],
            &edge_args,
        )
        .await?;
        runtime_classes(&client).await?;
        node_ready(&client, NODE, Duration::from_secs(60)).await?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for kind in [Kind::Wasm, Kind::Container] {
            let warm = format!("warm-{}", kind.name());
            complete(
                &jobs,
                &job(&warm, kind, &hello, &registry_host, 1, 1)?,
                WARM_UP_TIMEOUT,
            )
            .await?;
            delete(&jobs, &pods, &warm).await?;
        }
        let mut took = Vec::new();
        for kind in [Kind::Wasm, Kind::Container] {
            let name = format!("batch-{}-{COMPLETIONS}", kind.name());
            let spec = job(
                &name,
                kind,
                &hello,
                &registry_host,
                COMPLETIONS,
                PARALLELISM,
            )?;
            let elapsed = complete(&jobs, &spec, JOB_TIMEOUT).await?;
            figure(
                SCENARIO,
                &format!(
                    "job of {COMPLETIONS} {} pods, {PARALLELISM} at once: create to Complete",
                    kind.name()
                ),
                elapsed.as_secs_f64(),
                "s",
            );
            figure(
                SCENARIO,
                &format!("{} pods completed per second", kind.name()),
                COMPLETIONS as f64 / elapsed.as_secs_f64(),
                "1/s",
            );
            took.push(elapsed);
            delete(&jobs, &pods, &name).await?;
        }
        if let [wasm, container] = took[..] {
            figure(
                SCENARIO,
                &format!("container Job time / Wasm Job time ({COMPLETIONS} pods each)"),
                container.as_secs_f64() / wasm.as_secs_f64(),
                "x",
            );
        }
        anyhow::Ok(())
    };
    measured.await.with_context(|| {
        format!(
            "edgecore's log ends with:\n{}\ncloudcore's log ends with:\n{}",
            log_tail(&dir.path().join("edgecore.log")),
            log_tail(&dir.path().join("cloudcore.log"))
        )
    })
}

/// A Job of `completions` pods of `kind`, `parallelism` at a time.
fn job(
    name: &str,
    kind: Kind,
    hello: &str,
    registry: &str,
    completions: usize,
    parallelism: usize,
) -> anyhow::Result<Job> {
    let container = match kind {
        Kind::Wasm => serde_json::json!({"name": "main", "image": hello}),
        Kind::Container => {
            serde_json::json!({"name": "main", "image": format!("{registry}/{BUSYBOX}"), "command": ["true"]})
        }
    };
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": parallelism,
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                // The runtimes are compared: no ServiceAccount token to fetch for each pod.
                "automountServiceAccountToken": false,
                "runtimeClassName": match kind { Kind::Wasm => "wasm", Kind::Container => "runc" },
                "containers": [container],
            }},
        },
    }))?)
}

/// Creates `job` and returns how long it took from the create request to its `Complete`
/// condition, seen on a watch opened before the create.
async fn complete(jobs: &Api<Job>, job: &Job, timeout: Duration) -> anyhow::Result<Duration> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let rv = jobs
        .list_metadata(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    let mut stream = jobs.watch(&params, &rv).await?.boxed();
    let started = Instant::now();
    jobs.create(&PostParams::default(), job).await?;
    let finished = tokio::time::timeout(timeout, async {
        while let Some(event) = stream.try_next().await? {
            let job = match event {
                WatchEvent::Added(j) | WatchEvent::Modified(j) => j,
                WatchEvent::Bookmark(_) => continue,
                other => anyhow::bail!("unexpected watch event for job {name}: {other:?}"),
            };
            let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
            for c in conditions.iter().filter(|c| c.status == "True") {
                match c.type_.as_str() {
                    "Complete" => return Ok(started.elapsed()),
                    "Failed" => anyhow::bail!("job {name} failed: {:?}", c.message),
                    _ => {}
                }
            }
        }
        anyhow::bail!("the watch of job {name} ended")
    })
    .await
    .with_context(|| format!("job {name} did not complete in {timeout:?}"))??;
    Ok(finished)
}

/// Deletes the Job `name` with its pods and waits until they are gone from the API (the edge
/// confirms each pod's deletion).
async fn delete(jobs: &Api<Job>, pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    jobs.delete(name, &DeleteParams::foreground()).await?;
    let selector = format!("batch.kubernetes.io/job-name={name}");
    let deadline = Instant::now() + DELETE_TIMEOUT;
    loop {
        let left = pods
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 && jobs.get_opt(name).await?.is_none() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} pods of job {name} still there after {DELETE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
