//! What edges report, checked and written to the API.
//!
//! An edge may write only its own node's objects: its Node (registration and status), its Lease
//! in `kube-node-lease`, the status and deletion of pods bound to it, and the status of Devices
//! bound to it. Its uploads go to the router, which matches them only against Rules whose
//! source is its node's bus. The edge's identity is its client certificate's node name, never what a frame
//! says; anything else is refused, logged, and answered with a `Forbidden` error frame.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use wedge_core::protocol::messages::{LeaseRenewal, NodeReport};
use wedge_core::protocol::{Envelope, Operation, Reason, ResourceKind};

use super::desired::Desired;
use crate::cloudstream::node_endpoint::KubeletEndpoint;
use crate::devicecontroller;
use crate::router::Router;

/// The field manager of cloudcore's writes, as `managedFields` shows it.
pub const FIELD_MANAGER: &str = "wedge-cloudcore";

/// Why a report was not written.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The edge asked for something that is not its own.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The frame's payload is not what its resource needs.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The operation is not one edges send for this resource.
    #[error("{operation:?} of {kind} is not something an edge reports")]
    Unsupported {
        /// The operation.
        operation: Operation,
        /// The resource kind.
        kind: ResourceKind,
    },
    /// The API server refused the write for good (a 4xx other than 408 and 429): sent again,
    /// it would be refused again, so the edge drops it. Kube's code, reason and message go to
    /// the edge in the error frame's message.
    #[error("the API server refused it: {code} {reason}: {message}")]
    Rejected {
        /// The HTTP status code.
        code: u16,
        /// Kube's reason (`Invalid`, `Forbidden`, `BadRequest`...).
        reason: String,
        /// Kube's message.
        message: String,
    },
    /// The API server failed or did not answer (5xx, 408, 429, no connection): the edge keeps
    /// the report and sends it again.
    #[error("the API server failed: {0}")]
    Api(kube::Error),
}

impl From<kube::Error> for UpstreamError {
    fn from(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status)
                if (400..500).contains(&status.code) && !matches!(status.code, 408 | 429) =>
            {
                Self::Rejected {
                    code: status.code,
                    reason: status.reason,
                    message: status.message,
                }
            }
            other => Self::Api(other),
        }
    }
}

impl UpstreamError {
    /// The error frame's reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Forbidden(_) => Reason::Forbidden,
            Self::Invalid(_) | Self::Unsupported { .. } => Reason::Invalid,
            Self::Rejected { .. } => Reason::Rejected,
            Self::Api(_) => Reason::ApiUnavailable,
        }
    }
}

/// Writes edges' reports to the API.
#[derive(Clone)]
pub struct Upstream {
    client: Client,
    desired: Desired,
    router: Router,
    /// Where edges' Nodes say their kubelet is (CloudStream), if served.
    kubelet_endpoint: Option<KubeletEndpoint>,
    /// The edges' certificates: a Node deleted is not registered again by its old identity.
    certificates: Option<std::sync::Arc<crate::join::certificates::Certificates>>,
    /// The labels each node's edge was last refused, so each refusal is logged once.
    refused_labels:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>,
}

fn payload<T: serde::de::DeserializeOwned>(frame: &Envelope) -> Result<T, UpstreamError> {
    serde_json::from_value(frame.payload.clone())
        .map_err(|e| UpstreamError::Invalid(format!("payload: {e}")))
}

pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Upstream {
    /// Writes through `client`, checking pods against `desired`'s cache; uploads go to `router`.
    pub fn new(
        client: Client,
        desired: Desired,
        router: Router,
        kubelet_endpoint: Option<KubeletEndpoint>,
    ) -> Self {
        Self {
            client,
            desired,
            router,
            kubelet_endpoint,
            certificates: None,
            refused_labels: std::sync::Arc::default(),
        }
    }

    /// Checks Node registrations against the edges' certificate records: an edge whose Node
    /// was deleted is refused (and its certificates revoked) instead of registering it again.
    pub fn with_certificates(
        mut self,
        certificates: std::sync::Arc<crate::join::certificates::Certificates>,
    ) -> Self {
        self.certificates = Some(certificates);
        self
    }

    async fn node_seen(&self, node: &str, uid: Option<&str>) -> Result<(), UpstreamError> {
        match &self.certificates {
            Some(certificates) => certificates
                .node_seen(node, uid)
                .await
                .map_err(UpstreamError::Forbidden),
            None => Ok(()),
        }
    }

    /// Answers a query from `node`'s edge: a ServiceAccount token for a pod bound to it
    /// (`payload`: a TokenRequest whose `boundObjectRef` is the pod), asked of the API as
    /// kubelets ask it, bound to the pod. An edge gets tokens only for the account of a pod
    /// bound to its node, as the node authorizer and NodeRestriction allow a kubelet.
    pub async fn query(
        &self,
        node: &str,
        frame: &Envelope,
    ) -> Result<serde_json::Value, UpstreamError> {
        let resource = frame
            .resource
            .as_ref()
            .ok_or_else(|| UpstreamError::Invalid("the frame names no resource".into()))?;
        if resource.kind != ResourceKind::ServiceAccountToken {
            return Err(UpstreamError::Unsupported {
                operation: frame.operation,
                kind: resource.kind,
            });
        }
        let namespace = resource.namespace.as_deref().unwrap_or("");
        let account = resource.name.as_str();
        let request: k8s_openapi::api::authentication::v1::TokenRequest = payload(frame)?;
        let bound = request
            .spec
            .bound_object_ref
            .clone()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .ok_or_else(|| {
                UpstreamError::Forbidden(format!(
                    "edge {node} may ask only for tokens bound to its pods"
                ))
            })?;
        let pod_name = bound.name.clone().unwrap_or_default();
        let uid = bound.uid.clone().unwrap_or_default();
        let Some(pod) = self.own_pod(node, namespace, &pod_name, &uid)? else {
            return Err(UpstreamError::Forbidden(format!(
                "pod {namespace}/{pod_name} with uid {uid} is not bound to node {node}"
            )));
        };
        let runs_as = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        if runs_as != account {
            return Err(UpstreamError::Forbidden(format!(
                "pod {namespace}/{pod_name} runs as ServiceAccount {runs_as}, not {account}"
            )));
        }
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), namespace);
        let answered = api
            .create_token_request(account, &PostParams::default(), &request)
            .await?;
        serde_json::to_value(answered).map_err(|e| UpstreamError::Invalid(e.to_string()))
    }

    /// Applies one frame from `node`'s edge.
    pub async fn apply(&self, node: &str, frame: &Envelope) -> Result<(), UpstreamError> {
        let resource = frame
            .resource
            .as_ref()
            .ok_or_else(|| UpstreamError::Invalid("the frame names no resource".into()))?;
        let namespace = resource.namespace.as_deref().unwrap_or("");
        match (frame.operation, resource.kind) {
            (Operation::Update, ResourceKind::NodeStatus) => {
                self.own_node(node, &resource.name)?;
                self.node_status(node, payload(frame)?).await
            }
            (Operation::Update, ResourceKind::Lease) => {
                self.own_node(node, &resource.name)?;
                self.lease(node, payload(frame)?).await
            }
            (Operation::Update, ResourceKind::PodStatus) => {
                let uid = resource.uid.as_deref().unwrap_or("");
                let pod = self.own_pod(node, namespace, &resource.name, uid)?;
                let Some(pod) = pod else {
                    return Ok(()); // gone: its status no longer matters
                };
                self.pod_status(&pod, payload(frame)?).await
            }
            (Operation::Update, ResourceKind::DeviceStatus) => {
                let uid = resource.uid.as_deref().unwrap_or("");
                devicecontroller::upstream::device_status(
                    &self.client,
                    &self.desired.devices,
                    (node, namespace, &resource.name, uid),
                    payload(frame)?,
                )
                .await
            }
            (Operation::Delete, ResourceKind::Pod) => {
                let uid = resource.uid.as_deref().unwrap_or("");
                if self
                    .own_pod(node, namespace, &resource.name, uid)?
                    .is_none()
                {
                    return Ok(());
                }
                self.pod_gone(namespace, &resource.name, uid).await
            }
            (Operation::Update, ResourceKind::Upload) => {
                let upload = payload(frame)?;
                self.router
                    .route(node, &upload)
                    .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
                Ok(())
            }
            (operation, kind) => Err(UpstreamError::Unsupported { operation, kind }),
        }
    }

    fn own_node(&self, node: &str, named: &str) -> Result<(), UpstreamError> {
        if node == named {
            Ok(())
        } else {
            Err(UpstreamError::Forbidden(format!(
                "edge {node} may not write node {named}"
            )))
        }
    }

    /// The pod, if it exists and is bound to `node` with this uid. A pod of that name bound
    /// elsewhere is forbidden; one that no longer exists (or was re-created) is `None`.
    fn own_pod(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<std::sync::Arc<Pod>>, UpstreamError> {
        if uid.is_empty() {
            return Err(UpstreamError::Invalid(
                "pod reports must name the uid".into(),
            ));
        }
        let Some(pod) = self.desired.pod(namespace, name) else {
            return Ok(None);
        };
        let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if pod.metadata.uid.as_deref() != Some(uid) {
            return if bound == Some(node) {
                Ok(None)
            } else {
                Err(UpstreamError::Forbidden(format!(
                    "pod {namespace}/{name} with uid {uid} is not bound to node {node}"
                )))
            };
        }
        if bound != Some(node) {
            return Err(UpstreamError::Forbidden(format!(
                "pod {namespace}/{name} is bound to {}, not to node {node}",
                bound.unwrap_or("no node")
            )));
        }
        Ok(Some(pod))
    }

    async fn node_status(&self, node: &str, mut report: NodeReport) -> Result<(), UpstreamError> {
        if let Some(endpoint) = &self.kubelet_endpoint {
            endpoint.route(node, &mut report.status);
        }
        let (labels, refused) = super::node_restriction::node_labels(&report.labels);
        report.labels = labels;
        {
            let mut last = self
                .refused_labels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last
                .get(node)
                .map_or(!refused.is_empty(), |l| *l != refused)
            {
                if !refused.is_empty() {
                    tracing::warn!(
                        node,
                        ?refused,
                        "the edge may not set these labels on its Node (NodeRestriction); left out"
                    );
                }
                last.insert(node.to_owned(), refused);
            }
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let params = PatchParams::default();
        match nodes.get_opt(node).await? {
            None => {
                self.node_seen(node, None).await?;
                let new = Node {
                    metadata: ObjectMeta {
                        name: Some(node.to_owned()),
                        labels: Some(report.labels.clone()),
                        annotations: Some(report.annotations.clone()).filter(|a| !a.is_empty()),
                        ..ObjectMeta::default()
                    },
                    ..Node::default()
                };
                match nodes.create(&PostParams::default(), &new).await {
                    Ok(created) => {
                        tracing::info!(node, "registered the edge's node");
                        self.node_seen(node, created.metadata.uid.as_deref())
                            .await?;
                    }
                    Err(e) if is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(existing) => {
                self.node_seen(node, existing.metadata.uid.as_deref())
                    .await?;
                let current = existing.metadata.labels.unwrap_or_default();
                let annotated = existing.metadata.annotations.unwrap_or_default();
                // The local storage label and annotation go when the edge stops offering it.
                let mut labels = json!(report.labels);
                let mut annotations = json!(report.annotations);
                let dropped = |have: &std::collections::BTreeMap<String, String>,
                               key: &str,
                               sent: &mut serde_json::Value| {
                    let gone = have.contains_key(key) && sent.get(key).is_none();
                    if gone {
                        sent[key] = serde_json::Value::Null;
                    }
                    gone
                };
                let storage_gone =
                    dropped(&current, wedge_core::storage::LOCAL_PATH_LABEL, &mut labels)
                        | dropped(
                            &annotated,
                            wedge_core::storage::LOCAL_PATH_ROOT,
                            &mut annotations,
                        );
                let changed = report.labels.iter().any(|(k, v)| current.get(k) != Some(v))
                    || report
                        .annotations
                        .iter()
                        .any(|(k, v)| annotated.get(k) != Some(v));
                if changed || storage_gone {
                    let patch =
                        json!({ "metadata": { "labels": labels, "annotations": annotations } });
                    nodes.patch(node, &params, &Patch::Merge(&patch)).await?;
                }
            }
        }
        let patch = json!({ "status": report.status });
        nodes
            .patch_status(node, &params, &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn lease(&self, node: &str, renewal: LeaseRenewal) -> Result<(), UpstreamError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = MicroTime(jiff::Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(renewal.duration_seconds),
            renew_time: Some(now),
            ..LeaseSpec::default()
        };
        let patch = json!({ "spec": spec });
        match leases
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(node.to_owned()),
                        namespace: Some("kube-node-lease".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                match leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_status(&e, 409) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn pod_status(&self, pod: &Pod, status: PodStatus) -> Result<(), UpstreamError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // The uid in the patch makes the server refuse it if the pod was re-created meanwhile.
        let patch = json!({ "metadata": { "uid": pod.metadata.uid }, "status": status });
        match pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn pod_gone(&self, namespace: &str, name: &str, uid: &str) -> Result<(), UpstreamError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(name, &params).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), uid, "the edge confirmed the pod is gone; deleted");
                Ok(())
            }
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            Status::failure(&format!("the server says {reason}"), reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_write_the_api_refuses_for_good_is_final_and_says_why() {
        // Before: every API error but 404/409 was ApiUnavailable, and the edge resent the
        // report every 2 s, forever.
        for (code, reason) in [(422, "Invalid"), (403, "Forbidden"), (400, "BadRequest")] {
            let error = UpstreamError::from(api(code, reason));
            assert_eq!(error.reason(), Reason::Rejected, "{code}");
            assert!(!error.reason().retryable(), "{code}");
            let said = error.to_string();
            assert!(
                said.contains(&code.to_string())
                    && said.contains(reason)
                    && said.contains(&format!("the server says {reason}")),
                "{said}"
            );
        }
    }

    #[test]
    fn an_api_that_fails_or_throttles_is_tried_again() {
        for (code, reason) in [
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
            (429, "TooManyRequests"),
            (408, "Timeout"),
            (504, "Timeout"),
        ] {
            let error = UpstreamError::from(api(code, reason));
            assert_eq!(error.reason(), Reason::ApiUnavailable, "{code}");
            assert!(error.reason().retryable(), "{code}");
        }
        let unreachable = UpstreamError::from(kube::Error::Service("connection refused".into()));
        assert!(unreachable.reason().retryable());
    }
}
