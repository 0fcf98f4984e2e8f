//! The cost of encryption at rest on Secrets in the API server's store, side by side: 5,000
//! Secrets of 1 KiB created with encryption off, then with each provider (`aesgcm`, `aescbc`,
//! `secretbox`); the create latency (p50, p99), the time to open the store again (every row
//! read and decrypted), and the create latency of one 1 MiB Secret (what an async worker waits
//! for at most, since a write runs on the caller's thread). Reads are served from memory and
//! cost the same either way. Measured on the store itself, not over HTTPS, so the figure is the
//! encryption's share and not the network's.

use std::time::{Duration, Instant};

use serde_json::json;
use wedge_apiserver::storage::{HistoryLimits, ObjectKey, Store};
use wedge_core::encryption::EncryptionConfig;

use crate::report::{figure, millis, quantile};

const SCENARIO: &str = "secrets-at-rest";
const SECRETS: usize = 5_000;
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(provider: &str) -> anyhow::Result<EncryptionConfig> {
    let providers = match provider {
        "off" => "  - identity: {}\n".to_owned(),
        p => format!("  - {p}:\n      keys:\n      - name: k\n        secret: {KEY}\n"),
    };
    Ok(EncryptionConfig::from_yaml(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
    ))?)
}

fn secret(name: &str, bytes: usize) -> serde_json::Value {
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; bytes]);
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "bench"}, "data": {"value": value}})
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(measure).await?
}

fn measure() -> anyhow::Result<()> {
    for provider in ["off", "aesgcm", "aescbc", "secretbox"] {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wedge.db");
        let mut latencies = Vec::with_capacity(SECRETS);
        let started = Instant::now();
        {
            let store = Store::open_encrypted(&path, HistoryLimits::default(), config(provider)?)?;
            for i in 0..SECRETS {
                let name = format!("s-{i}");
                let t = Instant::now();
                // The store's writes are async (its writer thread commits them): waited for
                // here, one at a time.
                futures::executor::block_on(store.create(
                    &ObjectKey::new("secrets", "bench", &name),
                    secret(&name, 768),
                ))?;
                latencies.push(t.elapsed());
            }
            let total = started.elapsed();
            figure(
                SCENARIO,
                &format!("{provider}_create_per_s"),
                SECRETS as f64 / total.as_secs_f64(),
                "1/s",
            );
            figure(
                SCENARIO,
                &format!("{provider}_create_p50"),
                millis(quantile(&mut latencies, 0.5)),
                "ms",
            );
            figure(
                SCENARIO,
                &format!("{provider}_create_p99"),
                millis(quantile(&mut latencies, 0.99)),
                "ms",
            );
            let mut large: Vec<Duration> = Vec::new();
            for i in 0..5 {
                let name = format!("large-{i}");
                let t = Instant::now();
                futures::executor::block_on(store.create(
                    &ObjectKey::new("secrets", "bench", &name),
                    secret(&name, 1 << 20),
                ))?;
                large.push(t.elapsed());
            }
            figure(
                SCENARIO,
                &format!("{provider}_create_1mib_p50"),
                millis(quantile(&mut large, 0.5)),
                "ms",
            );
        }
        let t = Instant::now();
        let store = Store::open_encrypted(&path, HistoryLimits::default(), config(provider)?)?;
        figure(
            SCENARIO,
            &format!("{provider}_open_ms"),
            millis(t.elapsed()),
            "ms",
        );
        anyhow::ensure!(
            store
                .get(&ObjectKey::new("secrets", "bench", "s-0"))
                .is_ok(),
            "reads back"
        );
    }
    Ok(())
}
