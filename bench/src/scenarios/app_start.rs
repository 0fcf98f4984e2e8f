//! Start of a long-running app (the telemetry sample): component ready (compiled, or loaded
//! from the precompiled cache on disk by a cache that has not seen it in memory), linked, and
//! instantiated with its WASI context — everything before its `main` runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime_wasi::p2::bindings::CommandPre;
use wedge_core::grants::PodGrants;
use wedge_edged_wasm::compile::{CacheOutcome, CompileCache};
use wedge_edged_wasm::instance::{app_store, wasi_ctx};
use wedge_edged_wasm::logs::ContainerLog;

use crate::report::{figure, micros, quantile};

const SCENARIO: &str = "app-start";

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    let (rt, backends, dir) = super::runtime(100)?;
    let image = super::sample_image(&rt, "telemetry").await?;
    let (_, plan) = super::pod(
        "app",
        &image,
        &[("INTERVAL_MS", "1000")],
        serde_json::json!({}),
    )?;
    let prepared = rt.prepare(&image).await?;
    let digest = prepared.image.stored.wasm_digest.clone();
    let wasm = prepared.image.wasm_path.clone();
    let grants = Arc::new(PodGrants::default());
    let meters: Arc<wedge_edged_wasm::limits::ContainerMeters> = Arc::default();
    let log = ContainerLog::open(&dir.path().join("app.log"), false)?;

    let start = |cache_dir: std::path::PathBuf, expect: CacheOutcome| {
        let (rt, backends, grants, meters, log, plan, digest, wasm) = (
            rt.clone(),
            backends.clone(),
            grants.clone(),
            Arc::clone(&meters),
            log.clone(),
            plan.clone(),
            digest.clone(),
            wasm.clone(),
        );
        async move {
            let t = Instant::now();
            let cache = CompileCache::new(rt.engine().clone(), &cache_dir)?;
            let (component, outcome) = cache.component(&digest, &wasm).await?;
            anyhow::ensure!(outcome == expect, "expected {expect:?}, got {outcome:?}");
            let pre = CommandPre::new(rt.linker().instantiate_pre(&component)?)?;
            let mut store = app_store(
                rt.engine(),
                wasi_ctx(&plan, &log)?,
                &plan,
                &backends,
                &grants,
                &meters,
            );
            pre.instantiate_async(&mut store).await?;
            Ok::<Duration, anyhow::Error>(t.elapsed())
        }
    };

    let mut compiled = Vec::new();
    for i in 0..10 {
        compiled.push(start(dir.path().join(format!("cold-{i}")), CacheOutcome::Compiled).await?);
    }
    let warm_dir = dir.path().join("warm");
    start(warm_dir.clone(), CacheOutcome::Compiled).await?;
    let mut cached = Vec::new();
    for _ in 0..200 {
        cached.push(start(warm_dir.clone(), CacheOutcome::Disk).await?);
    }
    figure(
        SCENARIO,
        "from_cache_p50",
        micros(quantile(&mut cached, 0.5)) / 1000.0,
        "ms",
    );
    figure(
        SCENARIO,
        "from_cache_p99",
        micros(quantile(&mut cached, 0.99)) / 1000.0,
        "ms",
    );
    figure(
        SCENARIO,
        "with_compilation_p50",
        micros(quantile(&mut compiled, 0.5)) / 1000.0,
        "ms",
    );
    Ok(())
}
