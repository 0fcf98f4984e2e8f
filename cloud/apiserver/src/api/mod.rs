//! The Kubernetes REST API over the store: request in, response out, with no sockets here (the
//! server module accepts connections and authenticates; this module decides).
//!
//! A request's path says its [`request::Target`]; discovery and OpenAPI answer from the
//! [`Registry`]; resource requests go to [`objects`] (create, get, update, delete), [`list`],
//! [`watch`], [`patch`] and [`subresources`] (and [`metrics`], `metrics.k8s.io`, from the
//! nodes), which apply Kubernetes' object semantics and call
//! the store. Every failure is an [`ApiError`], written as a `Status`.

mod admission;
pub mod apply;
mod component_statuses;
pub(crate) mod conversion;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod error;
mod eviction;
pub mod list;
pub mod managed;
pub mod meta;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod request;
pub mod reviews;
pub mod services;
pub mod subresources;
pub mod table;
pub mod token_request;
pub mod upgrade;
pub mod validate;
pub mod watch;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::User;
use crate::kubelet_client::KubeletClient;
use crate::registry::{Registry, ResourceInfo};
use crate::service_account_tokens::ServiceAccountTokens;
use crate::storage::Store;
pub use error::ApiError;
use error::MAX_REQUEST_BYTES;

/// How much of a too-large body is read and thrown away before answering 413, so that the
/// client's connection stays usable (an unread body makes the server close it, and a client that
/// already sent its next request on it sees a transport error). Beyond this, it is closed.
const DRAIN_BYTES: usize = 4 * MAX_REQUEST_BYTES;
use request::{Query, ResourcePath, Target};

/// A response body: whole, or streamed (watches).
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Why a streamed response body broke off: the client sees the response end in an error, not
/// a clean end (a log whose node went away mid-follow).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The API: the store, the resources it serves, and what it runs until shutdown.
pub struct Api {
    pub(crate) store: Arc<Store>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) version: Value,
    /// How `pods/log` reaches nodes; without one (an API used in-process, without the
    /// server's PKI) those requests get a 503.
    pub(crate) kubelet: Option<KubeletClient>,
    /// How ServiceAccount tokens are signed and checked; without (an API used in-process) none
    /// are issued or taken.
    pub(crate) service_account_tokens: Option<ServiceAccountTokens>,
    /// Where Services' cluster IPs and node ports come from, and which are taken.
    pub(crate) services: services::Allocations,
}

/// A request as the API handlers see it.
pub(crate) struct Call<'a> {
    pub method: &'a Method,
    pub query: Query,
    pub headers: &'a http::HeaderMap,
    pub user: &'a User,
    pub body: Bytes,
    /// The connection's upgrade, for the subresources that take one over (exec, attach).
    pub upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
    /// `Warning` headers for the response.
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Call<'_> {
    /// Adds warnings (`Warning: 299 - "..."` headers).
    pub fn warn(&self, messages: impl IntoIterator<Item = String>) {
        self.warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(messages);
    }

    /// Whether this is a server-side apply.
    pub fn is_apply(&self) -> bool {
        self.content_type().starts_with("application/apply-patch")
    }

    /// The content type, without parameters.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or("application/json", |v| {
                v.split(';').next().unwrap_or(v).trim()
            })
    }

    /// The Accept header.
    pub fn accept(&self) -> &str {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The field manager: `?fieldManager=`, or the user agent's program name, as Kubernetes
    /// defaults it.
    pub fn field_manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager") {
            return m.to_owned();
        }
        let agent = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        agent.split('/').next().unwrap_or(agent).to_owned()
    }

    /// The body as a JSON object, from JSON, YAML or Kubernetes protobuf; malformed input is a
    /// 400, another media type (CBOR, `text/plain`) a 415.
    pub fn object(&self) -> Result<Value, ApiError> {
        let content_type = self.content_type();
        if content_type.contains("cbor") {
            return Err(ApiError::UnsupportedMediaType(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf (this server does not \
                 decode CBOR bodies)"
                    .into(),
            ));
        }
        // kube-apiserver decodes what its serializers (and, for patches, its patch types) name,
        // and answers 415 for anything else (`text/plain` included).
        if !matches!(
            content_type,
            "application/json"
                | "application/yaml"
                | "application/vnd.kubernetes.protobuf"
                | "application/json-patch+json"
                | "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml"
        ) {
            return Err(ApiError::UnsupportedMediaType(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf".into(),
            ));
        }
        if content_type.contains("application/vnd.kubernetes.protobuf") {
            return crate::protobuf::decode_object(&self.body).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the object provided is unrecognized (protobuf): {e}"
                ))
            });
        }
        parse_body(&self.body)
    }
}

/// Parses a request body as JSON, or as YAML when it is not JSON.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    let json_err = match serde_json::from_slice::<Value>(body) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') || first == Some(b'[') {
        return Err(ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type JSON or YAML): {json_err}"
        )));
    }
    serde_yaml_ng::from_slice::<Value>(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type JSON or YAML): {e}"
        ))
    })
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON value as a response.
pub(crate) fn value_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

/// An error as a `Status` response.
pub fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, e.status_body())
}

impl Api {
    /// An API over `store`, serving the built-in resources and the CRDs stored.
    pub async fn new(store: Arc<Store>, shutdown: CancellationToken) -> Result<Self, ApiError> {
        let api = Self {
            store,
            registry: Arc::new(Registry::builtin()),
            shutdown,
            version: discovery::version_info(),
            kubelet: None,
            service_account_tokens: None,
            services: services::Allocations::new(services::ServiceNetwork::default()),
        };
        crd::load_stored(&api)?;
        objects::ensure_system_namespaces(&api).await?;
        crate::authz::bootstrap::ensure(&api).await?;
        Ok(api)
    }

    /// The same API, reaching nodes' kubelet endpoints through `client` (for `pods/log`).
    pub fn with_kubelet_client(mut self, client: KubeletClient) -> Self {
        self.kubelet = Some(client);
        self
    }

    /// The same API, issuing and taking ServiceAccount tokens signed with `tokens`' key.
    pub fn with_service_account_tokens(mut self, tokens: ServiceAccountTokens) -> Self {
        self.service_account_tokens = Some(tokens);
        self
    }

    /// The same API, allocating Services' cluster IPs and node ports from `network`.
    pub fn with_service_network(mut self, network: services::ServiceNetwork) -> Self {
        self.services = services::Allocations::new(network);
        self
    }

    /// Starts what the server keeps of Services: the IPAddress objects brought in line with the
    /// stored Services, and the `kubernetes` Service (with its Endpoints, EndpointSlice and
    /// ServiceCIDR) for a server reached at `address`, serving on `port`. Run at start, then
    /// every [`services::kubernetes::INTERVAL`].
    pub async fn reconcile_services(&self, address: std::net::IpAddr, port: u16, repair: bool) {
        if repair {
            services::repair_ip_objects(self).await;
        }
        if let Err(e) = services::kubernetes::reconcile(self, address, port).await {
            tracing::warn!("keeping the kubernetes Service: {e}");
        }
    }

    /// The user a bearer token is, if it is a valid ServiceAccount token for this API server
    /// whose ServiceAccount still exists with the uid it names.
    pub fn authenticate_token(&self, token: &str) -> Option<User> {
        self.token_subject(token, crate::service_account_tokens::ISSUER)
            .map(|s| s.user())
    }

    /// The ServiceAccount a token is for, checked as [`Api::authenticate_token`] checks it,
    /// for `audience`.
    pub(crate) fn token_subject(
        &self,
        token: &str,
        audience: &str,
    ) -> Option<crate::service_account_tokens::TokenSubject> {
        let subject = self
            .service_account_tokens
            .as_ref()?
            .verify(token, audience)?;
        let account = self
            .store
            .get(&crate::storage::ObjectKey::new(
                "serviceaccounts",
                &subject.namespace,
                &subject.name,
            ))
            .ok()?
            .value();
        let uid = account.pointer("/metadata/uid").and_then(Value::as_str)?;
        if uid != subject.uid || account.pointer("/metadata/deletionTimestamp").is_some() {
            return None;
        }
        let get = |plural: &str, name: &str| {
            self.store
                .get(&crate::storage::ObjectKey::new(
                    plural,
                    &subject.namespace,
                    name,
                ))
                .ok()
                .map(|o| o.value())
        };
        let uid_of = |o: &Value| {
            o.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        use crate::service_account_tokens::BoundObject;
        let holds = match &subject.bound {
            Some(BoundObject::Pod { name, uid }) => {
                get("pods", name).is_some_and(|p| uid_of(&p).as_ref() == Some(uid))
            }
            Some(BoundObject::Secret { name, uid }) => {
                get("secrets", name).is_some_and(|s| uid_of(&s).as_ref() == Some(uid))
            }
            None => true,
        };
        // A legacy token holds while its Secret (not being deleted) keeps this very token.
        let legacy_holds = subject.legacy_secret.as_deref().is_none_or(|secret| {
            get("secrets", secret).is_some_and(|s| {
                s.pointer("/metadata/deletionTimestamp").is_none()
                    && s.pointer("/data/token")
                        .and_then(Value::as_str)
                        .and_then(|t| {
                            use base64::Engine as _;
                            base64::engine::general_purpose::STANDARD.decode(t).ok()
                        })
                        .is_some_and(|t| t == token.as_bytes())
            })
        });
        (holds && legacy_holds).then_some(subject)
    }

    /// The resources served.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Answers one request from an authenticated user (`None`: anonymous, refused).
    pub async fn handle<B>(&self, req: Request<B>, user: Option<User>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let path = parts.uri.path().to_owned();
        let target = match request::parse_path(&path) {
            Ok(t) => t,
            Err(e) => return error_response(&e),
        };
        if target == Target::Health {
            return json_response(StatusCode::OK, "ok");
        }
        let Some(user) = user else {
            return error_response(&ApiError::Unauthorized);
        };
        let user = match crate::authz::impersonation::acting_user(&self.store, user, &parts.headers)
        {
            Ok(user) => user,
            Err(e) => return error_response(&e),
        };
        let query = Query::parse(parts.uri.query());
        let attributes =
            crate::authz::Attributes::of(&user, &parts.method, &path, &target, query.flag("watch"));
        if let Err(e) = crate::authz::authorize(&self.store, &attributes) {
            return error_response(&e);
        }
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(e) => return error_response(&e),
        };
        let call = Call {
            method: &parts.method,
            query,
            headers: &parts.headers,
            user: &user,
            body,
            upgrade: std::sync::Mutex::new(upgrade),
            warnings: Default::default(),
        };
        let result = match target {
            Target::Resource(path) => self.resource(&call, path).await,
            other => discovery::serve(self, &call, other),
        };
        match result {
            Ok(mut r) => {
                let warnings = std::mem::take(
                    &mut *call
                        .warnings
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for w in warnings {
                    let text = format!("299 - {}", serde_json::Value::String(w));
                    if let Ok(v) = HeaderValue::from_str(&text) {
                        r.headers_mut().append(header::WARNING, v);
                    }
                }
                r
            }
            Err(e) => {
                tracing::debug!(%path, method = %parts.method, user = %call.user.name, code = e.code(), "{e}");
                error_response(&e)
            }
        }
    }

    /// The resource a path names, or 404.
    pub(crate) fn resolve(&self, path: &ResourcePath) -> Result<Arc<ResourceInfo>, ApiError> {
        self.registry
            .get(&path.group, &path.version, &path.resource)
            .ok_or(ApiError::NoSuchPath)
    }

    async fn resource(
        &self,
        call: &Call<'_>,
        path: ResourcePath,
    ) -> Result<Response<Body>, ApiError> {
        let info = self.resolve(&path)?;
        if path.namespace.is_some() && !info.namespaced {
            return Err(ApiError::NoSuchPath);
        }
        if let Some(message) = deprecation(&info) {
            call.warn([message.to_owned()]);
        }
        if info.group == metrics::GROUP {
            return metrics::serve(self, call, &info, &path).await;
        }
        if reviews::GROUPS.contains(&info.group.as_str()) {
            return reviews::serve(self, call, &info, &path);
        }
        if info.crd.is_none() && info.group.is_empty() {
            match info.plural.as_str() {
                "componentstatuses" => {
                    return component_statuses::serve(self, call, &info, &path);
                }
                "bindings" => return subresources::bindings(self, call, &path).await,
                _ => {}
            }
        }
        if let Some(sub) = path.subresource.as_deref() {
            if !info.has_subresource(sub) {
                return Err(ApiError::NoSuchPath);
            }
            return subresources::serve(self, call, &info, &path, sub).await;
        }
        let watching = path.legacy_watch || call.query.flag("watch");
        match (call.method.clone(), path.name.as_deref()) {
            (Method::GET, None) if watching => watch::serve(self, call, &info, &path, None),
            (Method::GET, Some(name)) if watching => {
                watch::serve(self, call, &info, &path, Some(name))
            }
            (Method::GET, None) => list::serve(self, call, &info, &path),
            (Method::GET, Some(name)) => objects::get(self, call, &info, &path, name),
            (Method::PATCH, Some(name)) => patch::serve(self, call, &info, &path, name, None).await,
            (Method::POST, None) => objects::create(self, call, &info, &path).await,
            (Method::PUT, Some(name)) => {
                objects::update(self, call, &info, &path, name, None).await
            }
            (Method::DELETE, Some(name)) => objects::delete(self, call, &info, &path, name).await,
            (Method::DELETE, None) => objects::delete_collection(self, call, &info, &path).await,
            _ => Err(ApiError::MethodNotAllowed),
        }
    }
}

/// Reads a request body of at most [`MAX_REQUEST_BYTES`].
async fn read_body<B>(body: B) -> Result<bytes::Bytes, ApiError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use bytes::Buf;
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("reading the request body: {}", e.into())))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let data = data.copy_to_bytes(data.remaining());
        total = total.saturating_add(data.len());
        if total > DRAIN_BYTES {
            break;
        }
        if total <= MAX_REQUEST_BYTES {
            buf.extend_from_slice(&data);
        }
    }
    if total > MAX_REQUEST_BYTES {
        return Err(ApiError::TooLarge);
    }
    Ok(buf.freeze())
}

/// The warning kube-apiserver (v1.33) adds to every request for a deprecated built-in
/// resource version, as kubectl prints it (`Warning: v1 Endpoints is deprecated in v1.33+;
/// use discovery.k8s.io/v1 EndpointSlice`).
fn deprecation(info: &ResourceInfo) -> Option<&'static str> {
    if info.crd.is_some() || !info.group.is_empty() || info.version != "v1" {
        return None;
    }
    match info.kind.as_str() {
        "Endpoints" => {
            Some("v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice")
        }
        "ComponentStatus" => Some("v1 ComponentStatus is deprecated in v1.19+"),
        _ => None,
    }
}
