//! Resident memory per idle running app: N telemetry pods that log once and sleep, started
//! through the pod runtime as Edged will start them. The process's RSS before and after, split
//! into the pooling allocator's linear-memory pool (the guests' own memory) and everything else
//! (stores, WASI contexts, fiber stacks, tasks): the latter is the runtime's cost per instance.

use std::time::{Duration, Instant};

use crate::report::figure;

const SCENARIO: &str = "idle-rss";
const INSTANCES: usize = 200;
/// Mappings at least this large are the linear-memory pool's reservation.
const POOL_MAPPING: u64 = 1 << 40;

/// `(total RSS, RSS inside the linear-memory pool)` in KiB, from /proc/self/smaps.
///
/// The pool is one contiguous reservation that wasmtime splits into many mappings as it makes
/// slots accessible: it is the run of adjacent mappings whose sizes add up to at least
/// [`POOL_MAPPING`].
fn rss_kib() -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    // (start, end, rss) of every mapping, in address order.
    let mut maps: Vec<(u64, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(range), _) if range.contains('-') && !range.ends_with(':') => {
                let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
                let hex = |h: &str| u64::from_str_radix(h, 16).unwrap_or(0);
                maps.push((hex(a), hex(b), 0));
            }
            (Some("Rss:"), Some(kib)) => {
                if let Some(last) = maps.last_mut() {
                    last.2 = kib.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    let total = maps.iter().map(|m| m.2).sum();
    let (mut pool, mut run_start, mut run_rss, mut prev_end) = (0, 0, 0, u64::MAX);
    for &(start, end, rss) in &maps {
        if start != prev_end {
            if prev_end.saturating_sub(run_start) >= POOL_MAPPING {
                pool += run_rss;
            }
            (run_start, run_rss) = (start, 0);
        }
        run_rss += rss;
        prev_end = end;
    }
    if prev_end.saturating_sub(run_start) >= POOL_MAPPING {
        pool += run_rss;
    }
    Ok((total, pool))
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    let (rt, _, dir) = super::runtime(INSTANCES as u32 + 10)?;
    let workers = super::workers(&rt, dir.path());
    let image = super::sample_image(&rt, "telemetry").await?;
    // One instance first, so compiled code and one-time allocations are not counted per instance.
    let (warm, _) = super::pod(
        "warm",
        &image,
        &[("INTERVAL_MS", "3600000")],
        serde_json::json!({}),
    )?;
    super::start(&workers, &warm)?;
    wait_logged(&workers, &["warm".to_owned()]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, pool_before) = rss_kib()?;

    let mut uids = Vec::new();
    for i in 0..INSTANCES {
        let uid = format!("idle-{i}");
        let (pod, _) = super::pod(
            &uid,
            &image,
            &[("INTERVAL_MS", "3600000")],
            serde_json::json!({}),
        )?;
        super::start(&workers, &pod)?;
        uids.push(uid);
    }
    wait_logged(&workers, &uids).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (after, pool_after) = rss_kib()?;
    let mut linear = 0u64;
    for uid in &uids {
        linear += workers
            .stats(uid, "main")
            .await
            .map_or(0, |s| s.memory_bytes);
    }

    let n = INSTANCES as f64;
    let per_total = after.saturating_sub(before) as f64 / n;
    let per_pool = pool_after.saturating_sub(pool_before) as f64 / n;
    figure(SCENARIO, "rss_per_instance", per_total, "KiB");
    figure(SCENARIO, "linear_memory_rss_per_instance", per_pool, "KiB");
    figure(
        SCENARIO,
        "rss_beyond_linear_memory_per_instance",
        per_total - per_pool,
        "KiB",
    );
    figure(
        SCENARIO,
        "linear_memory_size_per_instance",
        linear as f64 / n / 1024.0,
        "KiB",
    );
    for uid in uids.iter().chain(std::iter::once(&"warm".to_owned())) {
        workers.stop(uid, Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn wait_logged(
    workers: &wedge_edge::edged::pod_workers::PodWorkers,
    uids: &[String],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for uid in uids {
        loop {
            if read_log(workers, uid).await.contains("tick 1") {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pod {uid} never logged its first tick"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The whole log of the pod `uid`'s container, empty while there is none.
async fn read_log(workers: &wedge_edge::edged::pod_workers::PodWorkers, uid: &str) -> String {
    let name = format!("bench-{uid}");
    let mut log = Vec::new();
    if let Ok(mut reader) = workers
        .open_logs("bench", &name, "main", Default::default())
        .await
    {
        while let Some(Ok(chunk)) = reader.next().await {
            log.extend_from_slice(&chunk);
        }
    }
    String::from_utf8_lossy(&log).into_owned()
}
