//! Subresources: `status` (the object, written only in its status), `scale` (an
//! `autoscaling/v1` Scale view of a workload's replicas), `binding` (a pod assigned to a node,
//! once), a namespace's `finalize`, and a pod's `log`, `exec` and `portforward`.
//!
//! `log` goes to the pod's node as kube-apiserver sends it: the options are checked as
//! `PodLogOptions` are, then the container and the node, then the kubelet endpoint the Node
//! reports is asked for `/containerLogs/...` through [`crate::kubelet_client`] and its answer
//! streamed back as it arrives (`kubectl logs -f`). In Wedge that endpoint is cloudcore's,
//! which serves every edge node's. `exec`, `attach` and `portforward` take the connection over
//! and join it to the node's ([`super::upgrade`]).

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::objects::{self, store_err};
use super::patch::{self, PatchType};
use super::request::{Query, ResourcePath};
use super::{Api, Body, Call, value_response};
use crate::kubelet_client::{KubeletEndpoint, KubeletError};
use crate::registry::ResourceInfo;
use crate::selector::LabelSelector;

/// How much of a kubelet's error body is read into the Status returned (kube-apiserver's
/// `maxReadLength`).
pub(super) const MAX_UPSTREAM_ERROR_BYTES: usize = 50_000;

/// Serves `path`'s subresource `sub`.
pub(crate) async fn serve(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let name = path.name.as_deref().ok_or(ApiError::NoSuchPath)?;
    match (sub, call.method.clone()) {
        ("status", Method::GET) => objects::get(api, call, info, path, name),
        ("status", Method::PUT) => {
            objects::update(api, call, info, path, name, Some("status")).await
        }
        ("status", Method::PATCH) => {
            patch::serve(api, call, info, path, name, Some("status")).await
        }
        ("scale", Method::GET) => {
            let paths = ScalePaths::of(api, info)?;
            let obj = api
                .store
                .get(&objects::key(info, path.namespace.as_deref(), name))
                .map_err(store_err(info))?;
            Ok(value_response(
                StatusCode::OK,
                &scale_of(&obj.value(), &paths),
            ))
        }
        ("scale", Method::PUT | Method::PATCH) => scale(api, call, info, path, name).await,
        ("binding", Method::POST) => bind(api, call, info, path, name).await,
        ("eviction", Method::POST) => super::eviction::serve(api, call, info, path, name).await,
        ("finalize", Method::PUT) => {
            objects::update(api, call, info, path, name, Some("finalize")).await
        }
        ("log", Method::GET) => log(api, call, info, path, name).await,
        ("exec" | "attach", Method::GET | Method::POST) => {
            super::upgrade::exec(api, call, info, path, name, sub).await
        }
        ("token", Method::POST) => {
            let namespace = path.namespace.as_deref().ok_or(ApiError::NoSuchPath)?;
            super::token_request::serve(api, call, info, namespace, name)
        }
        ("portforward", Method::GET | Method::POST) => {
            super::upgrade::portforward(api, call, info, path, name).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// GET of `pods/log`: the options checked, then the pod's container and node, then the node's
/// kubelet endpoint asked, and its answer passed on.
async fn log(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    // kube-apiserver decodes and validates the options before it looks at the pod.
    let options = LogOptions::from_query(&call.query, name)?;
    let (namespace, pod) = pod_of(api, info, path, name)?;
    let container = container_of(&pod, name, call.query.get("container"))?;
    let node = node_of(&pod, name)?;
    let unavailable =
        |why: &dyn std::fmt::Display| unavailable("log", name, node, &why.to_string());
    let Some(kubelet) = api.kubelet.as_ref() else {
        return Err(unavailable(&"this API server has no kubelet client"));
    };
    let endpoint = node_endpoint(api, node).map_err(|why| unavailable(&why))?;
    let target = format!(
        "/containerLogs/{namespace}/{name}/{container}{}",
        options.kubelet_query()
    );
    let upstream = kubelet
        .get(&endpoint, &target, options.insecure_skip_tls_verify_backend)
        .await
        .map_err(|e| unavailable(&e))?;
    let status = upstream.status();
    if !status.is_success() {
        tracing::debug!(pod = name, %node, %status, "the kubelet refused the log request");
        let body = read_prefix(upstream.into_body(), MAX_UPSTREAM_ERROR_BYTES).await;
        return Ok(upstream_error(status, &body, name));
    }
    let mut response = Response::new(stream_body(upstream.into_body(), endpoint));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

/// A 503 for `pods/{sub}` of `pod` on `node`, saying why.
pub(super) fn unavailable(sub: &str, pod: &str, node: &str, why: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "pods/{sub} for pod {pod} on node {node} is not available: {why}"
    ))
}

/// The namespace and the pod a `pods/{sub}` request names.
pub(super) fn pod_of<'p>(
    api: &Api,
    info: &ResourceInfo,
    path: &'p ResourcePath,
    name: &str,
) -> Result<(&'p str, Value), ApiError> {
    let namespace = path.namespace.as_deref().ok_or(ApiError::NoSuchPath)?;
    let pod = api
        .store
        .get(&objects::key(info, Some(namespace), name))
        .map_err(store_err(info))?;
    Ok((namespace, pod.value()))
}

/// The node a pod is assigned to; none is a 400, as kube-apiserver answers exec and
/// port-forward (for logs it answers an empty 200; here logs say why too).
pub(super) fn node_of<'p>(pod: &'p Value, name: &str) -> Result<&'p str, ApiError> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))
}

/// Where `node`'s kubelet endpoint is, from its Node object.
pub(super) fn node_endpoint(api: &Api, node: &str) -> Result<KubeletEndpoint, NodeEndpointError> {
    let info = api
        .registry
        .get("", "v1", "nodes")
        .ok_or(NodeEndpointError::NotServed)?;
    let object = api
        .store
        .get(&objects::key(&info, None, node))
        .map_err(|e| match e {
            crate::storage::StoreError::NotFound(_) => {
                NodeEndpointError::NotRegistered(node.into())
            }
            other => NodeEndpointError::Store(other),
        })?;
    Ok(KubeletEndpoint::of_node(&object.value())?)
}

/// Why a node's kubelet endpoint is not known.
#[derive(Debug, thiserror::Error)]
pub(super) enum NodeEndpointError {
    /// No Node object of that name.
    #[error("node {0:?} is not registered (no Node object of that name)")]
    NotRegistered(String),
    /// Nodes are not a resource here (never, with the built-in registry).
    #[error("this API server does not serve nodes")]
    NotServed,
    /// Reading the Node failed.
    #[error("reading the Node: {0}")]
    Store(crate::storage::StoreError),
    /// The Node says no usable address or port.
    #[error(transparent)]
    Endpoint(#[from] KubeletError),
}

/// A `pods/log` request's options as kube-apiserver decodes and validates `PodLogOptions`,
/// and the query the kubelet gets from them.
#[derive(Debug, Default, PartialEq)]
struct LogOptions {
    follow: bool,
    previous: bool,
    timestamps: bool,
    since_seconds: Option<i64>,
    since_time: Option<jiff::Timestamp>,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    insecure_skip_tls_verify_backend: bool,
}

impl LogOptions {
    /// Reads the options: a value that does not parse is a 400, as kube-apiserver's query
    /// decoding answers; one that parses but breaks `ValidatePodLogOptions` a 422 Invalid on
    /// kind `PodLogOptions`, with kube-apiserver's wording.
    fn from_query(query: &Query, name: &str) -> Result<Self, ApiError> {
        let since_time = query
            .get("sinceTime")
            .map(|v| {
                v.parse::<jiff::Timestamp>().map_err(|e| {
                    ApiError::BadRequest(format!(
                        "invalid value for sinceTime: {v:?} is not an RFC 3339 time ({e})"
                    ))
                })
            })
            .transpose()?;
        let options = Self {
            follow: query.k8s_bool("follow"),
            previous: query.k8s_bool("previous"),
            timestamps: query.k8s_bool("timestamps"),
            since_seconds: query.number("sinceSeconds")?,
            since_time,
            tail_lines: query.number("tailLines")?,
            limit_bytes: query.number("limitBytes")?,
            insecure_skip_tls_verify_backend: query.k8s_bool("insecureSkipTLSVerifyBackend"),
        };
        let mut causes = Vec::new();
        if let Some(n) = options.tail_lines.filter(|n| *n < 0) {
            causes.push(Cause::invalid(
                "tailLines",
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = options.limit_bytes.filter(|n| *n < 1) {
            causes.push(Cause::invalid(
                "limitBytes",
                &json!(n),
                "must be greater than 0",
            ));
        }
        match (options.since_seconds, options.since_time) {
            (Some(_), Some(_)) => causes.push(Cause::forbidden(
                "",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            )),
            (Some(n), None) if n < 1 => {
                causes.push(Cause::invalid(
                    "sinceSeconds",
                    &json!(n),
                    "must be greater than 0",
                ));
            }
            _ => {}
        }
        if causes.is_empty() {
            Ok(options)
        } else {
            Err(ApiError::invalid("", "PodLogOptions", name, causes))
        }
    }

    /// `?...` for the kubelet, empty when nothing is set: each option only when set, in the
    /// order kube-apiserver's `url.Values.Encode` writes them (sorted by name), `sinceTime` in
    /// RFC 3339 to the second.
    fn kubelet_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.follow {
            query.append_pair("follow", "true");
        }
        if let Some(n) = self.limit_bytes {
            query.append_pair("limitBytes", &n.to_string());
        }
        if self.previous {
            query.append_pair("previous", "true");
        }
        if let Some(n) = self.since_seconds {
            query.append_pair("sinceSeconds", &n.to_string());
        }
        if let Some(t) = self.since_time {
            query.append_pair("sinceTime", &t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        if let Some(n) = self.tail_lines {
            query.append_pair("tailLines", &n.to_string());
        }
        if self.timestamps {
            query.append_pair("timestamps", "true");
        }
        let query = query.finish();
        if query.is_empty() {
            query
        } else {
            format!("?{query}")
        }
    }
}

/// The kubelet's log stream as the response body, each chunk passed on as it arrives. The
/// stream owns the kubelet response: a client that goes away drops the body, which drops the
/// kubelet connection. An upstream failure mid-stream breaks the body off with an error, so the
/// client sees a failure (the node went away), not the end of the log.
fn stream_body(upstream: Incoming, endpoint: KubeletEndpoint) -> Body {
    let chunks = futures::stream::unfold(Some((upstream, endpoint)), |state| async move {
        let (mut upstream, endpoint) = state?;
        loop {
            match upstream.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => {
                        return Some((
                            Ok::<_, super::BodyError>(Frame::data(data)),
                            Some((upstream, endpoint)),
                        ));
                    }
                    Err(_trailers) => continue,
                },
                Err(e) => {
                    tracing::debug!(node = %endpoint.node, address = %endpoint.authority(), "the kubelet's log stream broke off: {e}");
                    let error =
                        format!("the log stream from node {} broke off: {e}", endpoint.node);
                    return Some((Err(error.into()), None));
                }
            }
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// The first `limit` bytes of a kubelet's (error) body.
pub(super) async fn read_prefix(body: Incoming, limit: usize) -> Bytes {
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while buf.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                tracing::debug!("reading the kubelet's error body: {e}");
                break;
            }
            None => break,
        }
    }
    buf.truncate(limit);
    buf.freeze()
}

/// A kubelet's non-2xx answer as the client gets it: a JSON `Status` as it is (its code filled
/// in if missing), anything else as a Status with the kubelet's code and its text as the
/// message (kube-apiserver's `GenericHttpResponseChecker` wraps the body text the same way).
pub(super) fn upstream_error(status: StatusCode, body: &[u8], pod: &str) -> Response<Body> {
    if let Ok(mut object) = serde_json::from_slice::<Value>(body)
        && object.get("kind").and_then(Value::as_str) == Some("Status")
    {
        if object.get("code").and_then(Value::as_u64).is_none() {
            object["code"] = json!(status.as_u16());
        }
        return value_response(status, &object);
    }
    let text = String::from_utf8_lossy(body).trim().to_owned();
    let message = if text.is_empty() {
        format!(
            "the server responded with the status code {} but did not return more information",
            status.as_u16()
        )
    } else {
        text
    };
    let reason = match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    };
    value_response(
        status,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {"name": pod, "kind": "pods/log"},
            "code": status.as_u16(),
        }),
    )
}

/// The container a log or exec request is for, checked as kube-apiserver checks it before it
/// reaches the node: the one named, which the pod must have; or, when none is named, the pod's
/// only container. A pod with several gets a 400 that lists them all (init containers first),
/// as kube-apiserver's does.
pub(super) fn container_of(
    pod: &Value,
    name: &str,
    wanted: Option<&str>,
) -> Result<String, ApiError> {
    let names_in = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let containers = names_in("containers");
    let all: Vec<String> = names_in("initContainers")
        .into_iter()
        .chain(containers.iter().cloned())
        .chain(names_in("ephemeralContainers"))
        .collect();
    match wanted.filter(|w| !w.is_empty()) {
        Some(wanted) if all.iter().any(|c| c == wanted) => Ok(wanted.to_owned()),
        Some(wanted) => Err(ApiError::BadRequest(format!(
            "container {wanted} is not valid for pod {name}"
        ))),
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                all.join(" ")
            ))),
        },
    }
}

/// Where a kind keeps what its Scale shows, as JSON pointers: the built-in workloads at
/// `spec.replicas`, `status.replicas` and `spec.selector`; a custom resource where its CRD's
/// `subresources.scale` says (`labelSelectorPath` names a string, a selector already written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScalePaths {
    /// `specReplicasPath`.
    pub spec: String,
    /// `statusReplicasPath`.
    pub status: String,
    /// `labelSelectorPath`, for custom resources.
    pub selector: Option<String>,
    /// Whether these are a CRD's.
    pub custom: bool,
}

impl ScalePaths {
    fn builtin() -> Self {
        Self {
            spec: "/spec/replicas".into(),
            status: "/status/replicas".into(),
            selector: None,
            custom: false,
        }
    }

    fn of(api: &Api, info: &ResourceInfo) -> Result<Self, ApiError> {
        match info.crd {
            None => Ok(Self::builtin()),
            Some(_) => super::crd::scale_paths(api, info).ok_or(ApiError::NoSuchPath),
        }
    }
}

/// The Scale view of a workload.
fn scale_of(o: &Value, paths: &ScalePaths) -> Value {
    let int = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    // A ReplicationController's selector is a plain map of labels, the others' a LabelSelector.
    let selector = match (paths.custom, o.pointer("/spec/selector")) {
        (true, _) => paths
            .selector
            .as_deref()
            .and_then(|p| o.pointer(p))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        (false, None) => String::new(),
        (false, Some(s))
            if s.get("matchLabels").is_none() && s.get("matchExpressions").is_none() =>
        {
            s.as_object()
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        }
        (false, Some(s)) => LabelSelector::format_k8s(s),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"),
            "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"),
            "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": int(&paths.spec)},
        "status": {"replicas": int(&paths.status), "selector": selector},
    })
}

/// PUT or PATCH of a Scale: sets the workload's `spec.replicas` (a custom resource's
/// `specReplicasPath`).
async fn scale(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let k = objects::key(info, path.namespace.as_deref(), name);
    let paths = ScalePaths::of(api, info)?;
    let body = call.object()?;
    for _ in 0..8 {
        let old = api.store.get(&k).map_err(store_err(info))?;
        let current = scale_of(&old.value(), &paths);
        let wanted = if *call.method == Method::PATCH {
            let kind = match call.content_type() {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml" => PatchType::Merge,
                _ => {
                    return Err(ApiError::UnsupportedMediaType(
                        "application/json-patch+json, application/merge-patch+json".into(),
                    ));
                }
            };
            patch::apply_patch(info, kind, &current, &body)?
        } else {
            if let Some(rv) = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && !rv.is_empty()
                && rv != old.rv.to_string()
            {
                return Err(ApiError::from_store(
                    crate::storage::StoreError::Conflict {
                        key: k.clone(),
                        expected: 0,
                        found: old.rv,
                    },
                    &info.group,
                    &info.plural,
                ));
            }
            body.clone()
        };
        let Some(replicas) = wanted.pointer("/spec/replicas").and_then(Value::as_i64) else {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![super::error::Cause::required("spec.replicas", "")],
            ));
        };
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![super::error::Cause::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut updated = old.value();
        set_pointer(&mut updated, &paths.spec, json!(replicas));
        match objects::update_object(api, call, info, &k, &old, updated, None, false).await {
            Ok((_, obj)) => {
                return Ok(value_response(
                    StatusCode::OK,
                    &scale_of(&obj.value(), &paths),
                ));
            }
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(
        "the object kept changing while it was being scaled; try again".into(),
    ))
}

/// Sets the field at JSON `pointer` in `o`, making the objects on the way.
fn set_pointer(o: &mut Value, pointer: &str, value: Value) {
    let mut at = o;
    let mut keys = pointer.split('/').skip(1).peekable();
    while let Some(key) = keys.next() {
        if !at.is_object() {
            *at = json!({});
        }
        let Some(map) = at.as_object_mut() else {
            return;
        };
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        at = map.entry(key.to_owned()).or_insert_with(|| json!({}));
    }
}

/// POST of a Binding to `namespaces/{ns}/bindings`, the older form of `pods/{name}/binding`:
/// the pod is the Binding's own name.
pub(crate) async fn bindings(
    api: &Api,
    call: &Call<'_>,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    if call.method != Method::POST || path.name.is_some() || path.subresource.is_some() {
        return Err(ApiError::MethodNotAllowed);
    }
    let binding = call.object()?;
    let name = binding
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            )
        })?;
    let pods = api
        .registry
        .get("", "v1", "pods")
        .ok_or_else(|| ApiError::Internal("pods are not served".into()))?;
    bind(api, call, &pods, path, name).await
}

/// POST of a Binding: assigns an unassigned pod to a node.
async fn bind(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let binding = call.object()?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            vec![super::error::Cause::required("target.name", "")],
        ));
    }
    let k = objects::key(info, path.namespace.as_deref(), name);
    for _ in 0..8 {
        let old = api.store.get(&k).map_err(store_err(info))?;
        let mut pod = old.value();
        if let Some(current) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        if pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                name,
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": super::meta::now()}));
        pod["status"]["conditions"] = json!(conditions);
        // A binding writes both spec and status: write the object directly, as the registry does.
        match api.store.update(&k, pod, Some(old.rv)).await {
            Ok(_) => {
                return Ok(value_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            Err(crate::storage::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &info.group, &info.plural)),
        }
    }
    Err(ApiError::Internal(
        "the pod kept changing while it was being bound; try again".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_names_the_selector_of_every_workload_kind() {
        let deployment = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let builtin = ScalePaths::builtin();
        assert_eq!(
            scale_of(&deployment, &builtin)["status"]["selector"],
            "app=web"
        );
        assert_eq!(scale_of(&deployment, &builtin)["spec"]["replicas"], 2);
        // A ReplicationController's selector is a map: the autoscaler finds its pods by it.
        let rc = json!({"metadata": {"name": "r"}, "spec": {"replicas": 1,
            "selector": {"app": "web", "tier": "front"}}});
        assert_eq!(
            scale_of(&rc, &builtin)["status"]["selector"],
            "app=web,tier=front"
        );
        // A custom resource's, where its CRD says.
        let custom = ScalePaths {
            spec: "/spec/size".into(),
            status: "/status/size".into(),
            selector: Some("/status/selector".into()),
            custom: true,
        };
        let widget = json!({"metadata": {"name": "w"}, "spec": {"size": 3},
            "status": {"size": 2, "selector": "app=w"}});
        let scale = scale_of(&widget, &custom);
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"]["replicas"], 2);
        assert_eq!(scale["status"]["selector"], "app=w");
        let mut empty = json!({"metadata": {"name": "w"}});
        set_pointer(&mut empty, "/spec/size", json!(5));
        assert_eq!(empty["spec"]["size"], 5);
    }

    async fn status_of(response: Response<Body>) -> (StatusCode, Value) {
        let code = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        let body = body.unwrap_or_default();
        (code, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn kubelet_errors_become_statuses() {
        // A Status without a code gets the kubelet's.
        let (code, status) = status_of(upstream_error(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"gone"}"#,
            "web",
        ))
        .await;
        assert_eq!(
            (code, status["code"].as_u64()),
            (StatusCode::NOT_FOUND, Some(404))
        );
        assert_eq!(status["message"], "gone");

        // Plain text, and nothing at all.
        let (code, status) =
            status_of(upstream_error(StatusCode::FORBIDDEN, b"  no way\n", "web")).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(
            (status["reason"].as_str(), status["message"].as_str()),
            (Some("Forbidden"), Some("no way"))
        );
        assert_eq!(status["details"]["kind"], "pods/log");
        let (_, status) = status_of(upstream_error(StatusCode::IM_A_TEAPOT, b"", "web")).await;
        assert_eq!(status["reason"], "");
        assert_eq!(
            status["message"],
            "the server responded with the status code 418 but did not return more information"
        );
    }

    #[test]
    fn log_options_go_to_the_kubelet_only_when_set() {
        let options = |q: &str| LogOptions::from_query(&Query::parse(Some(q)), "web");
        assert_eq!(
            options("container=app").map(|o| o.kubelet_query()).ok(),
            Some(String::new())
        );
        assert_eq!(
            options("timestamps=true&tailLines=0&follow=1")
                .map(|o| o.kubelet_query())
                .ok()
                .as_deref(),
            Some("?follow=true&tailLines=0&timestamps=true"),
            "tailLines=0 is set (and valid)"
        );
        assert!(matches!(
            options("tailLines=-1"),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            options("limitBytes=x"),
            Err(ApiError::BadRequest(_))
        ));
        let skip = options("insecureSkipTLSVerifyBackend=true")
            .map(|o| o.insecure_skip_tls_verify_backend);
        assert_eq!(skip.ok(), Some(true));
    }
}
