//! `wedge wasm run`: pull (or take a file) and run one component with its output on the
//! terminal, through the same runtime, limits and logs that pods get.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use wedge_core::runtime::{ImageService, PullAuth};
use wedge_core::status::ContainerState;
use wedge_edge::edged::plan::plan_pod;
use wedge_edge::edged::pod_workers::{PodWorkers, WorkerConfig};
use wedge_edge::edged::runtimes::{RuntimeHandle, Runtimes};
use wedge_edged_wasm::compile::CacheOutcome;

/// `wedge wasm ...`
#[derive(Subcommand)]
pub enum WasmCommand {
    /// Run a component: an image reference or a `.wasm` file.
    Run(RunArgs),
}

/// Arguments of `wedge wasm run`.
#[derive(Args)]
pub struct RunArgs {
    /// An image reference (`registry/repo:tag`) or a path to a `.wasm` component.
    image: String,
    /// Arguments for the component (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
    /// Environment variables, `NAME=value`.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Pod annotations, `key=value` (device and topic grants, handler triggers).
    #[arg(long = "annotation")]
    annotations: Vec<String>,
    /// Memory limit (`64Mi`).
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit (`500m`).
    #[arg(long)]
    cpu: Option<String>,
    /// Registries reached over plain HTTP (`host:port`).
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
    /// Registry user name.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Registry password (or set WEDGE_REGISTRY_PASSWORD).
    #[arg(long, env = "WEDGE_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Pull policy: Always, IfNotPresent or Never.
    #[arg(long)]
    pull: Option<String>,
}

fn pair(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .with_context(|| format!("{what} {s:?} is not of the form NAME=value"))
}

/// Runs a wasm subcommand.
pub async fn run(root: &Path, command: WasmCommand) -> anyhow::Result<ExitCode> {
    let WasmCommand::Run(args) = command;
    let runtime = super::runtime(root, &args.insecure, true)?;
    let file = PathBuf::from(&args.image);
    let image = if file.is_file() {
        let bytes = tokio::fs::read(&file)
            .await
            .with_context(|| format!("reading {}", file.display()))?;
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("component")
            .to_lowercase();
        let stem: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!("localhost/wasm-run/{stem}:latest");
        runtime.images().add_component(&name, bytes).await?;
        name
    } else {
        // Pulled here, by the policy asked for, so that a bad image is reported at once rather
        // than retried with backoff as a pod's would be.
        let auth = match (args.username, args.password) {
            (Some(username), Some(password)) => Some(PullAuth::Basic { username, password }),
            _ => None,
        };
        let held = runtime.image_status(&args.image).await?;
        match (args.pull.as_deref(), held) {
            (Some("Never"), None) => anyhow::bail!(
                "{} is not present here and --pull is Never: import it first",
                args.image
            ),
            (Some("Never" | "IfNotPresent"), Some(_)) => {}
            (None | Some("Always" | "IfNotPresent"), _) => {
                runtime.pull_image(&args.image, auth.as_ref()).await?;
            }
            (Some(other), _) => {
                anyhow::bail!("--pull {other:?}: expected Always, IfNotPresent or Never")
            }
        }
        args.image.clone()
    };

    let env: Vec<_> = args
        .env
        .iter()
        .map(|e| pair(e, "--env"))
        .collect::<anyhow::Result<_>>()?;
    let annotations: serde_json::Map<_, _> = args
        .annotations
        .iter()
        .map(|a| pair(a, "--annotation").map(|(k, v)| (k, serde_json::Value::String(v))))
        .collect::<anyhow::Result<_>>()?;
    let mut limits = serde_json::Map::new();
    if let Some(m) = args.memory {
        limits.insert("memory".into(), m.into());
    }
    if let Some(c) = args.cpu {
        limits.insert("cpu".into(), c.into());
    }
    let uid = format!("run-{}", std::process::id());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "wasm-run", "namespace": "default", "uid": uid, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "args": args.args,
                "env": env.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
                "resources": {"limits": limits},
            }]
        }
    }))?;
    // Prepare first so that a bad component is reported at once, not retried.
    let plan = plan_pod(&pod, &root.join("pods"))?;
    let prepared = runtime.prepare(&image).await?;
    let how = match prepared.cache {
        CacheOutcome::Compiled => "compiled now",
        CacheOutcome::Disk => "loaded precompiled from the cache",
        CacheOutcome::Memory => "already loaded",
    };
    eprintln!(
        "wedge: {} ({}): component {how}",
        prepared.image.stored.reference, prepared.image.stored.manifest_digest
    );
    let workers = PodWorkers::new(
        Runtimes::new().with(RuntimeHandle::new(std::sync::Arc::new(runtime.clone()))),
        WorkerConfig::new(root.join("pods")),
    );
    workers.start(plan, Default::default(), Default::default())?;

    let status = tokio::select! {
        s = workers.wait(&uid) => s,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("wedge: interrupted: stopping");
            workers.stop(&uid, Duration::from_secs(5)).await;
            workers.status(&uid)
        }
    };
    let Some(status) = status else {
        anyhow::bail!("the pod vanished")
    };
    let container = status.containers.first().context("no container status")?;
    if let Some(stats) = workers.stats(&uid, "main").await {
        eprintln!(
            "wedge: guest cpu {:?}, linear memory {} KiB",
            stats.cpu,
            stats.memory_bytes / 1024
        );
    }
    Ok(match &container.state {
        ContainerState::Terminated {
            exit_code,
            reason,
            message,
            ..
        } => {
            eprintln!(
                "wedge: exited with code {exit_code} ({reason}){}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            ExitCode::from(u8::try_from(*exit_code).unwrap_or(1))
        }
        ContainerState::Waiting { reason, message } => {
            eprintln!("wedge: {reason}: {}", message.as_deref().unwrap_or(""));
            ExitCode::FAILURE
        }
        ContainerState::Running { .. } => ExitCode::SUCCESS,
    })
}
