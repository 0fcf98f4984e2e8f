//! A long-running edge app that takes its settings from its environment, as pods do:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `INTERVAL_MS` | `1000` | time between readings |
//! | `DEVICE`, `PROPERTY` | unset | the twin property to read each tick |
//! | `TOPIC` | unset | publish each reading there as JSON |
//! | `COMMANDS` | unset | a topic filter to subscribe to; commands received are logged |
//! | `MAX_TICKS` | `0` | stop after this many ticks (`0`: run until stopped) |
//!
//! Errors from the host (a device the pod was not granted, a topic it may not use) are logged
//! and the app carries on, as a real app should.

use std::time::Duration;

wit_bindgen::generate!({
    world: "wedge:app/edge-imports",
    path: "../../wit",
    generate_all,
});

use wedge::device::twin;
use wedge::device::types::Value;
use wedge::messaging::bus;
use wedge::messaging::types::Qos;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn show(v: &Value) -> String {
    match v {
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) => format!("{s:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Bytes(b) => format!("{} bytes", b.len()),
    }
}

fn main() {
    let interval = Duration::from_millis(env_or("INTERVAL_MS", 1000u64));
    let max_ticks: u64 = env_or("MAX_TICKS", 0);
    let device = std::env::var("DEVICE").ok();
    let property = std::env::var("PROPERTY").ok();
    let topic = std::env::var("TOPIC").ok();
    println!("telemetry: starting, interval {interval:?}, device {device:?}, topic {topic:?}");
    match twin::list_devices() {
        Ok(devices) => {
            let names: Vec<String> = devices
                .iter()
                .map(|d| format!("{} ({}, {:?}, writable: {})", d.name, d.model, d.state, d.writable))
                .collect();
            println!("telemetry: devices: [{}]", names.join(", "));
        }
        Err(e) => eprintln!("telemetry: listing devices failed: {e:?}"),
    }
    let commands = std::env::var("COMMANDS").ok().and_then(|filter| match bus::subscribe(&filter) {
        Ok(sub) => Some(sub),
        Err(e) => {
            eprintln!("telemetry: subscribing to {filter} failed: {e:?}");
            None
        }
    });

    let mut tick = 0u64;
    loop {
        tick += 1;
        let reading = match (&device, &property) {
            (Some(d), Some(p)) => match twin::get_property(d, p) {
                Ok(prop) => prop.reported.map(|r| show(&r.value)),
                Err(e) => {
                    eprintln!("telemetry: reading {d}/{p} failed: {e:?}");
                    None
                }
            },
            _ => None,
        };
        println!("telemetry: tick {tick} reading {}", reading.as_deref().unwrap_or("-"));
        if let (Some(t), Some(r)) = (&topic, &reading) {
            let payload = format!("{{\"tick\":{tick},\"value\":{r}}}");
            if let Err(e) = bus::publish(t, payload.as_bytes(), Qos::AtLeastOnce, false) {
                eprintln!("telemetry: publish to {t} failed: {e:?}");
            }
        }
        if max_ticks != 0 && tick >= max_ticks {
            println!("telemetry: done after {tick} ticks");
            return;
        }
        match &commands {
            // Waiting for a command doubles as the pause between ticks.
            Some(sub) => match sub.receive(interval.as_millis().try_into().unwrap_or(u32::MAX)) {
                Ok(Some(m)) => println!(
                    "telemetry: command on {}: {}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload)
                ),
                Ok(None) => {}
                Err(e) => eprintln!("telemetry: receiving on {} failed: {e:?}", sub.filter()),
            },
            None => std::thread::sleep(interval),
        }
    }
}
