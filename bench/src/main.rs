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
    /// Every scenario above.
    All,
}

#[derive(Parser)]
#[command(about = "Wedge's bench harness: one JSON line per figure")]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = matches!(args.scenario, Scenario::All);
    if all || matches!(args.scenario, Scenario::HandlerInvoke) {
        scenarios::handler_invoke::run().await?;
    }
    if all || matches!(args.scenario, Scenario::AppStart) {
        scenarios::app_start::run().await?;
    }
    if all || matches!(args.scenario, Scenario::IdleRss) {
        scenarios::idle_rss::run().await?;
    }
    Ok(())
}
