//! An event-driven handler: when a device reports a temperature above `THRESHOLD` it sets the
//! fan's desired power on; when the temperature falls `HYSTERESIS` below it, off.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `THRESHOLD` | `30` | temperature that switches the fan on |
//! | `HYSTERESIS` | `2` | how far below the threshold it switches off |
//! | `TEMPERATURE_PROPERTY` | `temperature` | the property to watch |
//! | `FAN_DEVICE`, `FAN_PROPERTY` | `fan-1`, `power` | the boolean property to drive |
//!
//! Each call runs in a fresh instance, so the handler keeps no state: it reads the fan's desired
//! value from the twin to avoid setting what is already set.

wit_bindgen::generate!({
    world: "wedge:app/handler",
    path: "../../wit",
    generate_all,
});

use exports::wedge::app::event_handler::{Guest, TwinChange, TwinSide};
use wedge::device::twin;
use wedge::device::types::Value;
use wedge::messaging::types::Message;

struct FanHandler;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Text(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Guest for FanHandler {
    fn on_twin_change(change: TwinChange) -> Result<(), String> {
        let watched: String = env_or("TEMPERATURE_PROPERTY", "temperature".to_owned());
        if change.side != TwinSide::Reported || change.property != watched {
            return Ok(());
        }
        let temp = as_number(&change.current.value)
            .ok_or_else(|| format!("{}/{} is not a number", change.device, change.property))?;
        let threshold: f64 = env_or("THRESHOLD", 30.0);
        let hysteresis: f64 = env_or("HYSTERESIS", 2.0);
        let want = if temp > threshold {
            true
        } else if temp < threshold - hysteresis {
            false
        } else {
            return Ok(());
        };
        let fan: String = env_or("FAN_DEVICE", "fan-1".to_owned());
        let power: String = env_or("FAN_PROPERTY", "power".to_owned());
        let current = twin::get_property(&fan, &power).map_err(|e| format!("{e:?}"))?;
        if matches!(current.desired.map(|d| d.value), Some(Value::Boolean(on)) if on == want) {
            return Ok(());
        }
        let version = twin::set_desired(&fan, &power, &Value::Boolean(want))
            .map_err(|e| format!("setting {fan}/{power}: {e:?}"))?;
        println!(
            "fan-handler: {}={temp} → {fan}/{power}={want} (desired version {version})",
            change.property
        );
        Ok(())
    }

    fn on_message(message: Message) -> Result<(), String> {
        println!("fan-handler: message on {} ({} bytes)", message.topic, message.payload.len());
        Ok(())
    }

    fn on_timer(fired_ms: u64) -> Result<(), String> {
        println!("fan-handler: timer at {fired_ms}");
        Ok(())
    }
}

export!(FanHandler);
