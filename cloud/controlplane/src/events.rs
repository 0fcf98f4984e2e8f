//! Kubernetes events (core/v1), recorded as kube-controller-manager and kube-scheduler record
//! them, so `kubectl describe` and `kubectl get events` show why something happened.
//!
//! Recording is best effort: a failed event is logged and never fails the reconcile that
//! recorded it.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::PostParams;
use kube::{Api, Client};

/// Whether an event is routine or a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something happened as it should.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Records events in the name of one component (`default-scheduler`, `deployment-controller`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
}

impl Recorder {
    /// A recorder for `component`.
    pub fn new(client: Client, component: &'static str) -> Self {
        Self { client, component }
    }

    /// Records an event about `object`.
    pub async fn record(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let now = jiff::Timestamp::now();
        let name = format!(
            "{}.{:x}",
            object.name.as_deref().unwrap_or("object"),
            now.as_nanosecond()
        );
        let time = serde_json::json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let event = serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": object,
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
        });
        let result = match serde_json::from_value::<Event>(event) {
            Ok(event) => Api::<Event>::namespaced(self.client.clone(), &namespace)
                .create(&PostParams::default(), &event)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, reason, "could not record an event");
        }
    }
}
