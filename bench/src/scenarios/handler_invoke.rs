//! Handler invocation on the fast path: for each twin change, a fresh instance of the fan
//! handler from the pooling allocator, the call, and the handler's host call to read the fan's
//! twin. Sequential on one task, so invocations per second is a per-core figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wedge_core::grants::PodGrants;
use wedge_core::twin::{
    AccessMode, DeviceState, DeviceTwin, PropertyModel, PropertyType, StampedValue, TwinChange,
    TwinSide, TwinValue,
};
use wedge_edged_wasm::handler::{HandlerEvent, HandlerRunner};
use wedge_edged_wasm::host::Backends;
use wedge_edged_wasm::host::in_process::InProcessTwin;
use wedge_edged_wasm::logs::ContainerLog;

use crate::report::{figure, micros, quantile};

const SCENARIO: &str = "handler-invoke";
const WARMUP: usize = 2_000;
const INVOCATIONS: usize = 50_000;

fn device(name: &str, property: &str, kind: PropertyType) -> DeviceTwin {
    DeviceTwin {
        name: name.into(),
        model: name.into(),
        state: DeviceState::Online,
        properties: vec![PropertyModel {
            name: property.into(),
            kind,
            access_mode: AccessMode::ReadWrite,
            unit: None,
            minimum: None,
            maximum: None,
        }],
    }
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<()> {
    let (rt, _, dir) = super::runtime(100)?;
    let twin = Arc::new(InProcessTwin::default());
    twin.add_device(device("thermo-1", "temperature", PropertyType::Float));
    twin.add_device(device("fan-1", "power", PropertyType::Boolean));
    let backends = Backends {
        twin: twin.clone(),
        bus: rt.backends().bus.clone(),
    };
    let image = super::sample_image(&rt, "fan_handler").await?;
    let annotations =
        serde_json::json!({"devices.wedge.io/read": "thermo-1", "devices.wedge.io/write": "fan-1"});
    let (pod, plan) = super::pod("handler", &image, &[("THRESHOLD", "30")], annotations)?;
    let grants = Arc::new(PodGrants::from_annotations(
        &pod.metadata.annotations.clone().unwrap_or_default(),
    )?);
    let prepared = rt.prepare(&image).await?;
    let log = ContainerLog::open(&dir.path().join("handler.log"), false)?;
    let runner = HandlerRunner::new(
        rt.engine(),
        prepared.pre,
        plan,
        backends,
        grants,
        log,
        Duration::from_secs(1),
        rt.config().engine.epoch_tick,
        Arc::default(),
    )?;
    // 25 °C is below the threshold: the handler reads the fan's twin (one host call) and, once
    // the fan is off, returns without writing.
    let event = HandlerEvent::Twin(TwinChange {
        device: "thermo-1".into(),
        property: "temperature".into(),
        side: TwinSide::Reported,
        previous: None,
        current: StampedValue {
            value: TwinValue::Float(25.0),
            timestamp_ms: 0,
            version: 1,
        },
    });
    for _ in 0..WARMUP {
        runner.invoke(&event).await?;
    }
    let mut samples = Vec::with_capacity(INVOCATIONS);
    let started = Instant::now();
    for _ in 0..INVOCATIONS {
        let t = Instant::now();
        runner.invoke(&event).await?;
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    figure(SCENARIO, "p50", micros(quantile(&mut samples, 0.5)), "us");
    figure(SCENARIO, "p99", micros(quantile(&mut samples, 0.99)), "us");
    figure(
        SCENARIO,
        "invocations_per_second_one_core",
        INVOCATIONS as f64 / total.as_secs_f64(),
        "1/s",
    );
    Ok(())
}
