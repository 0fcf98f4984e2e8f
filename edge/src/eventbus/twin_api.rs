//! KubeEdge's twin messages over MQTT, served from DeviceTwin.
//!
//! What existing KubeEdge mappers and apps send and expect, field for field:
//! - `twin/update` takes `{"event_id", "timestamp", "twin": {"<prop>": {"actual": {"value"},
//!   "expected": {"value"}}}}`. `actual` values are the device's reports; `expected` values are
//!   desired values set at the edge; both are stored as one write, taken whole or refused whole.
//!   Values are KubeEdge's strings (numbers and booleans in JSON are accepted too).
//! - Every request is answered on its `/result` topic with the same `event_id`: the twin as it now
//!   is, or `{"code", "reason"}` (400 bad input, 404 unknown device or property, 500 the store
//!   failed) when refused, in which case nothing changed.
//! - Changes are announced: `/twin/update/document` (before and after) for every change,
//!   `/twin/update/delta` when a desired value differs from the reported one (what mappers
//!   drive devices from), `$ke/events/device/<id>/data/update` for every reported value.
//!
//! Requests are served in two steps so that a burst shares commits ([`queue`], then
//! [`Answer::resolve`]): EventBus's dispatcher parses each request and queues its writes (or
//! its read) in arrival order, and its answerer awaits the answers in that same order, a bounded
//! number behind. An answer is what the request would get if each were answered before the
//! next was made: a twin update's document is taken the moment its own write is in memory, a
//! read runs between the writes queued before and after it, and a refused request (bad input at
//! once, a failed write at its commit) is refused alone.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::Deserialize;
use serde_json::{Value, json};
use wedge_core::backend::TwinBackendError;
use wedge_core::device;
use wedge_core::twin::{AccessMode, StampedValue, TwinChange, TwinProperty, TwinSide, TwinValue};

use super::topics::{self, Request};
use crate::devicetwin::DeviceTwin;

/// A message EventBus publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Where.
    pub topic: String,
    /// The JSON payload.
    pub payload: Value,
}

/// Why a request was refused; becomes `{"code", "reason"}`.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Twin(#[from] TwinBackendError),
}

impl Refusal {
    fn code(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Twin(
                TwinBackendError::NoSuchDevice(_) | TwinBackendError::NoSuchProperty { .. },
            ) => 404,
            Self::Twin(TwinBackendError::Unavailable(_)) => 500,
            Self::Twin(TwinBackendError::Value(_) | TwinBackendError::ReadOnly(_)) => 400,
        }
    }
}

#[derive(Debug, Deserialize)]
struct TwinUpdate {
    #[serde(default)]
    twin: BTreeMap<String, TwinUpdateProperty>,
}

#[derive(Debug, Deserialize)]
struct TwinUpdateProperty {
    expected: Option<MessageValue>,
    actual: Option<MessageValue>,
}

#[derive(Debug, Deserialize)]
struct MessageValue {
    value: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct StateUpdate {
    state: String,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The `event_id` of a payload, read leniently so that even a refused request gets an answer
/// its sender can match.
fn event_id(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("event_id").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// A value in KubeEdge's string form, from a JSON string, number or boolean.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn stamped(v: &StampedValue) -> Value {
    json!({
        "value": device::format_value(&v.value),
        "metadata": {"timestamp": v.timestamp_ms},
    })
}

/// One property as KubeEdge's `MsgTwin`.
fn msg_twin(kind: &str, twin: &TwinProperty) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(d) = &twin.desired {
        m.insert("expected".into(), stamped(d));
        m.insert("expected_version".into(), json!({"edge": d.version}));
    }
    if let Some(r) = &twin.reported {
        m.insert("actual".into(), stamped(r));
        m.insert("actual_version".into(), json!({"edge": r.version}));
    }
    m.insert("optional".into(), Value::Bool(false));
    m.insert("metadata".into(), json!({"type": kind}));
    Value::Object(m)
}

/// A property's type as KubeEdge's twin metadata names it (`float`, `boolean`, …).
fn kind_name(model: &wedge_core::twin::DeviceTwin, property: &str) -> String {
    model
        .property(property)
        .map(|p| device::type_name(p.kind).to_lowercase())
        .unwrap_or_default()
}

/// Properties as KubeEdge's `twin` map.
fn msg_twins<'a>(
    model: &wedge_core::twin::DeviceTwin,
    properties: impl IntoIterator<Item = &'a (String, TwinProperty)>,
) -> Value {
    let map = properties
        .into_iter()
        .map(|(name, value)| (name.clone(), msg_twin(&kind_name(model, name), value)))
        .collect();
    Value::Object(map)
}

/// A device's whole twin (or only `only`'s properties) as KubeEdge's `twin` map.
fn twin_map(twin: &DeviceTwin, device: &str, only: Option<&[String]>) -> Result<Value, Refusal> {
    let (model, properties) = twin.document(device)?;
    Ok(msg_twins(
        &model,
        properties
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o.contains(name))),
    ))
}

/// A request's answer body, once its writes are stored (or refused).
type Body = Pin<Box<dyn Future<Output = Result<Value, Refusal>> + Send>>;

/// A request served up to its writes being queued: its answer, to await in the order the
/// requests came ([`queue`]).
pub struct Answer {
    /// Where the answer goes.
    topic: String,
    /// The request's topic, for the log of a refusal.
    request_topic: String,
    event_id: String,
    body: Body,
}

impl Answer {
    /// Waits for the request's writes to be stored (or refused) and makes its answer. A
    /// refused request is answered with its reason and counted in `refusals` (logged once per
    /// interval).
    pub async fn resolve(self, refusals: &super::auth::Refusals) -> Outgoing {
        let mut body = match self.body.await {
            Ok(body) => body,
            Err(refusal) => {
                refusals.note(super::auth::Refusal::TwinRequest, || {
                    format!("{}: {refusal}", self.request_topic)
                });
                json!({"code": refusal.code(), "reason": refusal.to_string()})
            }
        };
        if let Some(m) = body.as_object_mut() {
            m.insert("event_id".into(), Value::String(self.event_id));
            m.insert("timestamp".into(), json!(now_ms()));
        }
        Outgoing {
            topic: self.topic,
            payload: body,
        }
    }
}

/// Starts serving a request if `topic` is one of KubeEdge's for `node`: parses it and queues
/// its writes behind every write queued before (a read, behind them too), and returns its
/// answer, which resolves once they are stored. Requests queued one after another, their
/// answers awaited later in the same order, are answered as if each had been answered before
/// the next was queued, while their writes share commits.
pub async fn queue(twin: &DeviceTwin, node: &str, topic: &str, payload: &[u8]) -> Option<Answer> {
    let request = topics::parse(node, topic)?;
    let event_id = event_id(payload);
    let body: Body = match &request {
        Request::TwinUpdate(d) => match twin_update(twin, d, payload).await {
            Ok(stored) => Box::pin(stored),
            Err(refusal) => Box::pin(std::future::ready(Err(refusal))),
        },
        Request::TwinGet(d) => read(twin, twin_get((*d).to_owned())).await,
        Request::StateUpdate(d) => match state_update(twin, d, payload).await {
            Ok(stored) => Box::pin(stored),
            Err(refusal) => Box::pin(std::future::ready(Err(refusal))),
        },
        Request::Membership { .. } => read(twin, membership).await,
    };
    Some(Answer {
        topic: topics::result_topic(node, &request),
        request_topic: topic.to_owned(),
        event_id,
        body,
    })
}

/// Serves a request if `topic` is one of KubeEdge's for `node`: the answer to publish, once
/// its writes are stored ([`queue`], then [`Answer::resolve`]).
pub async fn serve(
    twin: &DeviceTwin,
    node: &str,
    topic: &str,
    payload: &[u8],
    refusals: &super::auth::Refusals,
) -> Option<Outgoing> {
    Some(
        queue(twin, node, topic, payload)
            .await?
            .resolve(refusals)
            .await,
    )
}

/// `twin/get`: the device's whole twin. (A function of its own: a closure made in [`queue`]
/// would borrow its arguments' lifetimes.)
fn twin_get(device: String) -> impl FnOnce(&DeviceTwin) -> Result<Value, Refusal> + Send + 'static {
    move |twin| twin_map(twin, &device, None).map(|t| json!({"twin": t}))
}

/// A read of DeviceTwin in its turn among the writes ([`DeviceTwin::queue_read`]).
async fn read(
    twin: &DeviceTwin,
    read: impl FnOnce(&DeviceTwin) -> Result<Value, Refusal> + Send + 'static,
) -> Body {
    let answer = twin.queue_read(read).await;
    Box::pin(async move {
        answer.await.unwrap_or_else(|| {
            Err(Refusal::Twin(TwinBackendError::Unavailable(
                "reading the twin failed".into(),
            )))
        })
    })
}

/// Parses and checks a twin update and queues its values; what is returned resolves to its
/// answer once they are stored.
async fn twin_update(
    twin: &DeviceTwin,
    device: &str,
    payload: &[u8],
) -> Result<impl Future<Output = Result<Value, Refusal>> + Send + 'static, Refusal> {
    let update: TwinUpdate = serde_json::from_slice(payload)
        .map_err(|e| Refusal::BadRequest(format!("malformed twin update: {e}")))?;
    if update.twin.is_empty() {
        return Err(Refusal::BadRequest(
            "the twin update names no property".into(),
        ));
    }
    let (model, _) = twin.document(device)?;
    let mut reported = Vec::new();
    let mut desired = Vec::new();
    for (property, side) in &update.twin {
        let parse = |v: &MessageValue| -> Result<TwinValue, Refusal> {
            let text = v.value.as_ref().and_then(value_text).ok_or_else(|| {
                Refusal::BadRequest(format!(
                    "property {property:?}: the value must be a string, number or boolean"
                ))
            })?;
            let value = twin.parse(device, property, &text)?;
            if let Some(m) = model.property(property) {
                m.check(&value).map_err(TwinBackendError::from)?;
            }
            Ok(value)
        };
        if let Some(actual) = &side.actual {
            reported.push((property.clone(), parse(actual)?));
        }
        if let Some(expected) = &side.expected {
            if model
                .property(property)
                .is_some_and(|m| m.access_mode == AccessMode::ReadOnly)
            {
                return Err(TwinBackendError::ReadOnly(property.clone()).into());
            }
            desired.push((property.clone(), parse(expected)?));
        }
    }
    let names: Vec<String> = update.twin.into_keys().collect();
    let stored = twin
        .queue_twin_update(device, reported, desired, names)
        .await?;
    Ok(async move {
        let (model, properties) = stored.await?;
        Ok(json!({"twin": msg_twins(&model, &properties)}))
    })
}

/// Parses a state update and queues it; what is returned resolves to its answer once stored.
async fn state_update(
    twin: &DeviceTwin,
    device: &str,
    payload: &[u8],
) -> Result<impl Future<Output = Result<Value, Refusal>> + Send + 'static, Refusal> {
    let update: StateUpdate = serde_json::from_slice(payload)
        .map_err(|e| Refusal::BadRequest(format!("malformed state update: {e}")))?;
    let state = device::parse_state(&update.state).ok_or_else(|| {
        Refusal::BadRequest(format!(
            "unknown state {:?} (online, offline or unknown)",
            update.state
        ))
    })?;
    let stored = twin.queue_state(device, state).await?;
    let device = device.to_owned();
    Ok(async move {
        stored.await?;
        Ok(json!({"device": {"name": device, "state": device::state_name(state)}}))
    })
}

fn membership(twin: &DeviceTwin) -> Result<Value, Refusal> {
    let mut devices = Vec::new();
    for name in twin.names() {
        let Ok((model, _)) = twin.document(&name) else {
            continue; // left the node meanwhile
        };
        devices.push(json!({
            "id": name,
            "name": name,
            "state": device::state_name(model.state),
            "twin": twin_map(twin, &name, None)?,
        }));
    }
    Ok(json!({"devices": devices}))
}

/// What a twin change announces: its document, a delta when desired and reported differ, and
/// reported values as device data for apps.
pub fn announce(twin: &DeviceTwin, change: &TwinChange) -> Vec<Outgoing> {
    let Ok((model, properties)) = twin.document(&change.device) else {
        return Vec::new(); // the device left the node meanwhile
    };
    let kind = kind_name(&model, &change.property);
    let timestamp = now_ms();
    let event_id = format!("{}-{}", change.device, timestamp);
    let mut before = properties
        .iter()
        .find(|(n, _)| *n == change.property)
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    let after = before.clone();
    match change.side {
        TwinSide::Reported => before.reported = change.previous.clone(),
        TwinSide::Desired => before.desired = change.previous.clone(),
    }
    let mut out = vec![Outgoing {
        topic: topics::document(&change.device),
        payload: json!({
            "event_id": event_id,
            "timestamp": timestamp,
            "twin": {change.property.clone(): {
                "last": msg_twin(&kind, &before),
                "current": msg_twin(&kind, &after),
            }},
        }),
    }];
    match change.side {
        TwinSide::Desired => {
            let delta: serde_json::Map<String, Value> = properties
                .iter()
                .filter_map(|(name, t)| {
                    let d = t.desired.as_ref()?;
                    let differs = t.reported.as_ref().is_none_or(|r| r.value != d.value);
                    differs.then(|| (name.clone(), Value::String(device::format_value(&d.value))))
                })
                .collect();
            if !delta.is_empty() {
                out.push(Outgoing {
                    topic: topics::delta(&change.device),
                    payload: json!({
                        "event_id": event_id,
                        "timestamp": timestamp,
                        "twin": msg_twins(&model, &properties),
                        "delta": delta,
                    }),
                });
            }
        }
        TwinSide::Reported => out.push(Outgoing {
            topic: topics::data_update(&change.device),
            payload: json!({
                "event_id": event_id,
                "timestamp": timestamp,
                "data": {change.property.clone(): {
                    "value": device::format_value(&change.current.value),
                    "metadata": {"timestamp": change.current.timestamp_ms, "type": kind},
                }},
            }),
        }),
    }
    out
}

/// `membership/updated` for devices that joined and left this node.
pub fn membership_updated(node: &str, added: &[String], removed: &[String]) -> Outgoing {
    let device = |n: &String| json!({"id": n, "name": n});
    let timestamp = now_ms();
    Outgoing {
        topic: topics::membership_updated(node),
        payload: json!({
            "event_id": format!("{node}-{timestamp}"),
            "timestamp": timestamp,
            "added_devices": added.iter().map(device).collect::<Vec<_>>(),
            "removed_devices": removed.iter().map(device).collect::<Vec<_>>(),
        }),
    }
}

#[cfg(test)]
#[path = "twin_api_tests.rs"]
mod tests;
