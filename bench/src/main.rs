//! Wedge's bench harness: `cargo run --release -p wedge-bench -- <scenario>` runs one scenario
//! (or `all`) and prints each figure as one JSON line:
//! `{"scenario": ..., "figure": ..., "value": ..., "unit": ...}`.
//!
//! Targets live here, never in timed tests. Each scenario is a module of [`scenarios`]; later
//! issues add theirs beside these.

mod report;
mod scenarios;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Handler invocation: fresh instance + call, per event.
    HandlerInvoke,
    /// Start of a long-running app from the precompiled cache and with compilation.
    AppStart,
    /// Resident memory added per idle running app instance.
    IdleRss,
    /// The embedded API server with 10k pods: create, list, watch, write-to-event delay, RSS.
    Apiserver,
    /// The scheduler binding 10k pods over 1k nodes: throughput and create-to-bound latency.
    Scheduler,
    /// cloudcore and edgecore: `kubectl create` to Running (p50, p99) and edgecore's RSS idle
    /// and with 100 Wasm pods. Needs `cargo build --release -p wedge-cli` first.
    Edge,
    /// Devices: a device's report to the Device status, a desired value to the Modbus register
    /// (both through cloudcore and edgecore), handler invocations per second over DeviceTwin.
    /// Needs `cargo build --release -p wedge-cli` first.
    Devices,
    /// Only the devices scenario's handler invocations per second over DeviceTwin, in this
    /// process: no cloudcore or edgecore.
    DevicesHandlers,
    /// KubeEdge's twin updates over MQTT to the edge's EventBus and DeviceTwin (in this
    /// process), on the embedded broker and on mosquitto: answers per second to a mapper's
    /// burst, and with each update sent once the one before is answered.
    DevicesMqtt,
    /// N simulated edges against one cloudcore: RSS per edge, DaemonSet and ConfigMap fan-out.
    /// Needs `cargo build --release -p wedge-cli` first.
    HubFanout,
    /// Container pods beside Wasm pods on one edge with a real containerd (needs root):
    /// create to Running (p50, p99, their ratio) and host memory per pod of each kind.
    /// Needs `cargo build --release -p wedge-cli` first.
    Mixed,
    /// `kubectl exec` and `kubectl logs -f` to a Wasm pod through cloudcore and edgecore: the
    /// exec round trip (p50, p99), the delay of a followed log line, and the memory of 1,000 idle
    /// followed logs at the cloud and at the edge. Needs `cargo build --release -p wedge-cli`
    /// first.
    Streams,
    /// `kubectl port-forward` to a container pod (real containerd, needs root) against a direct
    /// connection to the same server: throughput of each and their ratio. Needs
    /// `cargo build --release -p wedge-cli` first, and kubectl.
    PortForward,
    /// A Job of 1,000 short Wasm pods and the same Job of container pods on one edge with a
    /// real containerd (needs root): create to Complete of each, and their ratio. Needs
    /// `cargo build --release -p wedge-cli` first.
    Jobs,
    /// Secrets in the API server's store with encryption at rest off and with each provider:
    /// create latency and throughput, reopening, a 1 MiB Secret's create.
    SecretsAtRest,
    /// The API server process the `apiserver` scenario measures (not a scenario).
    #[value(hide = true)]
    ApiserverServe,
    /// Every scenario above.
    All,
}

#[derive(Parser)]
#[command(about = "Wedge's bench harness: one JSON line per figure")]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Where `apiserver-serve` keeps its state.
    #[arg(long, hide = true)]
    data_dir: Option<std::path::PathBuf>,
    /// How many edges `hub-fanout` simulates.
    #[arg(long, default_value_t = 10_000)]
    edges: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Warnings of the parts that run in this process (the control plane of hub-fanout) go to
    // stderr; figures go to stdout.
    wedge_cli::init_tracing("warn");
    match args.scenario {
        Scenario::HandlerInvoke => scenarios::handler_invoke::run().await,
        Scenario::AppStart => scenarios::app_start::run().await,
        Scenario::IdleRss => scenarios::idle_rss::run().await,
        Scenario::Apiserver => scenarios::apiserver::run().await,
        Scenario::Scheduler => scenarios::scheduler::run().await,
        Scenario::Edge => scenarios::edge::run().await,
        Scenario::Devices => scenarios::devices::run().await,
        Scenario::DevicesHandlers => scenarios::devices::run_handlers().await,
        Scenario::DevicesMqtt => scenarios::devices_mqtt::run().await,
        Scenario::HubFanout => scenarios::hub_fanout::run(args.edges).await,
        Scenario::Mixed => scenarios::mixed::run().await,
        Scenario::Streams => scenarios::streams::run().await,
        Scenario::PortForward => scenarios::port_forward::run().await,
        Scenario::Jobs => scenarios::jobs::run().await,
        Scenario::SecretsAtRest => scenarios::secrets_at_rest::run().await,
        Scenario::ApiserverServe => {
            let dir = args
                .data_dir
                .ok_or_else(|| anyhow::anyhow!("--data-dir is needed"))?;
            scenarios::apiserver::serve(&dir).await
        }
        Scenario::All => {
            // Each scenario in a process of its own, so that one's allocations and resident
            // pages do not skew the next one's figures (idle-rss above all).
            for scenario in [
                "handler-invoke",
                "app-start",
                "idle-rss",
                "apiserver",
                "scheduler",
                "edge",
                "devices",
                "devices-mqtt",
                "hub-fanout",
                "mixed",
                "streams",
                "port-forward",
                "jobs",
                "secrets-at-rest",
            ] {
                let status = std::process::Command::new(std::env::current_exe()?)
                    .arg(scenario)
                    .status()?;
                anyhow::ensure!(status.success(), "scenario {scenario} failed: {status}");
            }
            Ok(())
        }
    }
}
