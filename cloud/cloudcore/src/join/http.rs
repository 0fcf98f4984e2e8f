//! The join endpoints on CloudHub's port. Framework-free: the hub routes requests here with the
//! body read and the node of a verified client certificate, if the caller presented one.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{JoinContext, JoinError, signer, tokens};

/// The CA, for anyone (edges check it against their token's hash).
pub const CA_PATH: &str = "/v1/join/ca";
/// A CSR with a bootstrap token.
pub const CSR_PATH: &str = "/v1/join/csr";
/// A CSR over mutual TLS, for the same node.
pub const RENEW_PATH: &str = "/v1/certificates/renew";

/// The body of a join request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The node the edge joins as.
    #[serde(default)]
    pub node_name: String,
    /// The CSR, PEM.
    pub csr: String,
}

/// The answer to a join or renewal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// The edge's certificate, PEM.
    pub certificate: String,
    /// The CA, PEM.
    pub ca_certificate: String,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Bytes::from(body))
        .unwrap_or_default()
}

fn refuse(error: &JoinError, path: &str) -> Response<Bytes> {
    let (code, reason) = error.status();
    tracing::warn!(path, reason, %error, "refused a join request");
    let body = serde_json::json!({ "reason": reason, "message": error.to_string() });
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body.to_string().into_bytes(),
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn join(
    ctx: &JoinContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<JoinResponse, JoinError> {
    let token = bearer(headers).ok_or(JoinError::MalformedToken)?;
    let request: JoinRequest =
        serde_json::from_slice(body).map_err(|e| JoinError::BadRequest(e.to_string()))?;
    let id = tokens::validate(&ctx.client, token).await?;
    let certificate = signer::sign_node_csr(
        &ctx.pki,
        &request.csr,
        &request.node_name,
        ctx.cert_validity,
    )?;
    tracing::info!(node = request.node_name, token = id, "an edge joined");
    Ok(JoinResponse {
        certificate,
        ca_certificate: ctx.pki.ca.cert_pem.clone(),
    })
}

fn renew(
    ctx: &JoinContext,
    peer_node: Option<&str>,
    body: &[u8],
) -> Result<JoinResponse, JoinError> {
    let node = peer_node.ok_or(JoinError::NoClientCertificate)?;
    let request: JoinRequest =
        serde_json::from_slice(body).map_err(|e| JoinError::BadRequest(e.to_string()))?;
    let certificate = signer::sign_node_csr(&ctx.pki, &request.csr, node, ctx.cert_validity)?;
    tracing::info!(node, "renewed an edge's certificate");
    Ok(JoinResponse {
        certificate,
        ca_certificate: ctx.pki.ca.cert_pem.clone(),
    })
}

/// Answers a join path, or `None` for any other path.
pub async fn handle(
    ctx: &JoinContext,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    peer_node: Option<&str>,
) -> Option<Response<Bytes>> {
    let answer = |result: Result<JoinResponse, JoinError>| match result {
        Ok(r) => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&r).unwrap_or_default(),
        ),
        Err(e) => refuse(&e, path),
    };
    Some(match (method, path) {
        (&Method::GET, CA_PATH) => respond(
            StatusCode::OK,
            "application/x-pem-file",
            ctx.pki.ca.cert_pem.clone().into_bytes(),
        ),
        (&Method::POST, CSR_PATH) => answer(join(ctx, headers, &body).await),
        (&Method::POST, RENEW_PATH) => answer(renew(ctx, peer_node, &body)),
        (_, CA_PATH | CSR_PATH | RENEW_PATH) => refuse(
            &JoinError::BadRequest(format!("{method} is not served on {path}")),
            path,
        ),
        _ => return None,
    })
}
