//! Jobs of Wasm pods on a real edge: `kubectl create job` of the `hello` sample, a Job of three
//! completions two at a time reaching Complete (`kubectl wait --for=condition=complete`), an
//! Indexed Job whose pods read their index, a failing Job (`misbehave exit 1`) reaching
//! `BackoffLimitExceeded`, `kubectl get jobs` as kubectl 1.33 prints it, and a CronJob of the
//! `hello` sample run by hand (`kubectl create job --from`) and on its schedule. cloudcore runs the
//! embedded API server and control plane; edgecore runs the pods.

use std::time::Duration;

use crate::support::OneEdge;

/// [`OneEdge`], with what the Job tests ask of it.
struct Batch(OneEdge);

impl Batch {
    async fn start() -> Self {
        Self(OneEdge::start().await)
    }

    /// A Job of `misbehave` running `args`, with more spec lines.
    fn misbehave_job(&self, name: &str, spec: &str, args: &[&str]) -> String {
        let command = args
            .iter()
            .map(|a| format!(", \"{a}\""))
            .collect::<String>();
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {}/samples/misbehave:1\n        command: [misbehave{command}]\n",
            self.0.registry.host()
        )
    }

    /// `kubectl wait --for=condition=<condition> job/<name>`; on failure, the Job and its pods.
    fn wait(&self, name: &str, condition: &str, timeout: Duration) {
        let out = self.0.cloud.kubectl(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("job/{name}"),
            &format!("--timeout={}s", timeout.as_secs()),
        ]);
        if !out.status.success() {
            let state = self.0.cloud.kubectl(&["get", "jobs,pods", "-o", "yaml"]);
            panic!(
                "job/{name} is not {condition}: {}\n{}\ncloudcore: {}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&state.stdout),
                self.0.cloud.log()
            );
        }
    }

    fn jsonpath(&self, object: &str, path: &str) -> String {
        self.0
            .cloud
            .kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")])
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_of_wasm_pods_complete_or_fail_on_an_edge() {
    let env = Batch::start().await;
    let cloud = &env.0.cloud;
    let minute = Duration::from_secs(60);

    // As a user types it (kubectl sends it as protobuf): the hello sample, once.
    cloud.kubectl_ok(&[
        "create",
        "job",
        "hello",
        &format!("--image={}/samples/hello:1", env.0.registry.host()),
    ]);
    env.wait("hello", "complete", minute);
    assert_eq!(env.jsonpath("job/hello", "{.status.succeeded}"), "1");
    let logs = cloud.kubectl_ok(&["logs", "job/hello"]);
    assert!(logs.contains("Hello from Wedge!"), "{logs}");

    // Three completions, two at a time.
    cloud.apply(&env.misbehave_job(
        "three",
        "  completions: 3\n  parallelism: 2\n",
        &["print", "2"],
    ));
    env.wait("three", "complete", minute);
    assert_eq!(env.jsonpath("job/three", "{.status.succeeded}"), "3");
    assert_eq!(
        env.jsonpath("job/three", "{.status.conditions[*].type}"),
        "SuccessCriteriaMet Complete"
    );
    let phases = env.jsonpath(
        "pods",
        "{range .items[?(@.metadata.labels.job-name==\"three\")]}{.status.phase} {.spec.nodeName}{\"\\n\"}{end}",
    );
    assert_eq!(
        phases.lines().collect::<Vec<_>>(),
        ["Succeeded edge-a"; 3],
        "the finished pods are kept"
    );

    // Indexed: each pod reads its own index.
    cloud.apply(&env.misbehave_job(
        "indexed",
        "  completions: 2\n  parallelism: 2\n  completionMode: Indexed\n",
        &["env"],
    ));
    env.wait("indexed", "complete", minute);
    assert_eq!(
        env.jsonpath("job/indexed", "{.status.completedIndexes}"),
        "0-1"
    );
    for index in ["0", "1"] {
        let pod = env.jsonpath(
            "pods",
            &format!(
                "{{.items[?(@.metadata.annotations.batch\\.kubernetes\\.io/job-completion-index==\"{index}\")].metadata.name}}"
            ),
        );
        let printed = cloud.kubectl_ok(&["logs", pod.trim()]);
        assert!(
            printed.contains(&format!("JOB_COMPLETION_INDEX={index}")),
            "{pod}: {printed}"
        );
    }

    // A failing Job: one retry allowed, after kube's 10 s pod failure backoff.
    cloud.apply(&env.misbehave_job("failing", "  backoffLimit: 1\n", &["exit", "1"]));
    env.wait("failing", "failed", Duration::from_secs(90));
    assert_eq!(env.jsonpath("job/failing", "{.status.failed}"), "2");
    assert_eq!(
        env.jsonpath(
            "job/failing",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "BackoffLimitExceeded"
    );

    // kubectl get jobs, with kubectl 1.33's columns.
    let table = cloud.kubectl_ok(&["get", "jobs"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.first() == Some(&name))
            .map(|r| r[1..3].to_vec())
            .unwrap_or_default()
    };
    assert_eq!(row("hello"), ["Complete", "1/1"], "{table}");
    assert_eq!(row("three"), ["Complete", "3/3"], "{table}");
    assert_eq!(row("failing"), ["Failed", "0/1"], "{table}");

    // Deleting a Job takes its pods with it.
    cloud.kubectl_ok(&["delete", "job", "three"]);
    let deadline = std::time::Instant::now() + minute;
    while !env
        .jsonpath(
            "pods",
            "{.items[?(@.metadata.labels.job-name==\"three\")].metadata.name}",
        )
        .trim()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pods of job three outlived it"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A CronJob of Wasm pods on a real edge, made as a user types it: run at once with
/// `kubectl create job --from=cronjob/...`, then on its own at the next minute (the test
/// waits for the CronJob to say it ran, through `kubectl wait`, never a fixed sleep).
#[tokio::test(flavor = "multi_thread")]
async fn a_cron_job_of_wasm_pods_runs_on_an_edge() {
    let env = Batch::start().await;
    let cloud = &env.0.cloud;
    let minute = Duration::from_secs(60);
    cloud.kubectl_ok(&[
        "create",
        "cronjob",
        "greeter",
        &format!("--image={}/samples/hello:1", env.0.registry.host()),
        "--schedule=*/1 * * * *",
    ]);
    let table = cloud.kubectl_ok(&["get", "cronjobs"]);
    assert!(
        table.contains("greeter") && table.contains("*/1 * * * *"),
        "{table}"
    );

    // Now, by hand: a Job of the CronJob, run to completion on the edge.
    cloud.kubectl_ok(&["create", "job", "greet-now", "--from=cronjob/greeter"]);
    env.wait("greet-now", "complete", minute);
    assert_eq!(
        env.jsonpath("job/greet-now", "{.metadata.ownerReferences[0].kind}"),
        "CronJob"
    );
    let logs = cloud.kubectl_ok(&["logs", "job/greet-now"]);
    assert!(logs.contains("Hello from Wedge!"), "{logs}");

    // On schedule: the CronJob records the run, and its Job completes on the edge.
    let out = cloud.kubectl(&[
        "wait",
        "--for=jsonpath={.status.lastScheduleTime}",
        "cronjob/greeter",
        "--timeout=90s",
    ]);
    assert!(
        out.status.success(),
        "the cronjob never ran: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cloud.log()
    );
    let scheduled = env.jsonpath("cronjob/greeter", "{.status.lastScheduleTime}");
    let at: jiff::Timestamp = scheduled.parse().expect("lastScheduleTime");
    assert_eq!(at.as_second() % 60, 0, "on a minute boundary: {scheduled}");
    let job = format!("greeter-{}", at.as_second() / 60);
    env.wait(&job, "complete", minute);
    assert_eq!(
        env.jsonpath(
            &format!("job/{job}"),
            "{.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}"
        ),
        scheduled
    );
    let logs = cloud.kubectl_ok(&["logs", &format!("job/{job}")]);
    assert!(logs.contains("Hello from Wedge!"), "{logs}");
    let out = cloud.kubectl(&[
        "wait",
        "--for=jsonpath={.status.lastSuccessfulTime}",
        "cronjob/greeter",
        "--timeout=30s",
    ]);
    assert!(out.status.success(), "no lastSuccessfulTime");
    let reasons = env.jsonpath(
        "events",
        "{range .items[?(@.involvedObject.name==\"greeter\")]}{.reason}{\"\\n\"}{end}",
    );
    for reason in ["UnexpectedJob", "SuccessfulCreate", "SawCompletedJob"] {
        assert!(reasons.lines().any(|r| r == reason), "{reason}: {reasons}");
    }
}
