//! Printing figures and summarising samples.

use std::time::Duration;

/// Prints one figure as a JSON line.
pub fn figure(scenario: &str, figure: &str, value: f64, unit: &str) {
    let line =
        serde_json::json!({"scenario": scenario, "figure": figure, "value": value, "unit": unit});
    println!("{line}");
}

/// The `q` quantile (0..=1) of `samples`, which it sorts.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// Microseconds, for printing.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds, for printing.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
