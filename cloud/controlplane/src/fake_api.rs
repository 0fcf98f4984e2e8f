//! A fake API server for the controllers' unit tests: a tower service behind a real
//! `kube::Client` that keeps the pods created and deleted and the events written, and answers status
//! patches, so that a test drives a reconciler and asserts on what the API holds. (kube's own
//! mock tests put a tower service behind `Client::new` the same way.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use serde_json::{Value, json};

/// What the fake API holds.
#[derive(Clone, Default)]
pub struct FakeApi {
    pods: Arc<Mutex<BTreeMap<String, Value>>>,
    events: Arc<Mutex<BTreeMap<String, Value>>>,
    version: Arc<AtomicU64>,
}

impl FakeApi {
    /// A client whose requests this fake answers.
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await?.to_bytes();
                let (status, reply) = api.answer(&parts.method, parts.uri.path(), &body);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(reply.to_string())))?,
                )
            }
        });
        Client::new(service, "default")
    }

    /// The pods the API holds now.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|p| serde_json::from_value(p.clone()).ok())
            .collect()
    }

    /// The events the API holds now.
    pub fn events(&self) -> Vec<k8s_openapi::api::core::v1::Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|e| serde_json::from_value(e.clone()).ok())
            .collect()
    }

    fn answer(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let mut pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        match (method, segments.as_slice()) {
            (&Method::POST, [.., "namespaces", ns, "pods"]) => {
                let mut pod = body;
                let name = match pod.pointer("/metadata/name").and_then(Value::as_str) {
                    Some(n) => n.to_owned(),
                    None => format!(
                        "{}{version}",
                        pod.pointer("/metadata/generateName")
                            .and_then(Value::as_str)
                            .unwrap_or("pod-")
                    ),
                };
                pod["metadata"]["name"] = json!(name);
                pod["metadata"]["namespace"] = json!(ns);
                pod["metadata"]["uid"] = json!(format!("uid-{name}"));
                pod["metadata"]["resourceVersion"] = json!(version.to_string());
                pods.insert(name, pod.clone());
                (StatusCode::CREATED, pod)
            }
            (&Method::DELETE, [.., "pods", name]) => match pods.remove(*name) {
                Some(pod) => (StatusCode::OK, pod),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            },
            (&Method::POST, [.., "events"]) => {
                let name = body.pointer("/metadata/name").and_then(Value::as_str);
                self.events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.unwrap_or_default().to_owned(), body.clone());
                (StatusCode::CREATED, body)
            }
            (&Method::PATCH, [.., "events", name]) => {
                let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
                match events.get_mut(*name) {
                    Some(event) => {
                        json_patch::merge(event, &body);
                        (StatusCode::OK, event.clone())
                    }
                    None => (
                        StatusCode::NOT_FOUND,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                }
            }
            (&Method::PATCH, [.., resource, name, "status"]) => {
                let (api_version, kind) = match *resource {
                    "replicasets" => ("apps/v1", "ReplicaSet"),
                    "daemonsets" => ("apps/v1", "DaemonSet"),
                    _ => ("apps/v1", "Deployment"),
                };
                (
                    StatusCode::OK,
                    json!({"apiVersion": api_version, "kind": kind,
                           "metadata": {"name": name, "resourceVersion": version.to_string()}}),
                )
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404, "message": path}),
            ),
        }
    }
}
