//! The join endpoints on CloudHub's port. Framework-free: the hub routes requests here with the
//! body read and the node of a verified client certificate, if the caller presented one.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{JoinContext, JoinError, admission, certificates, signer, tokens};
use crate::cloudhub::identity::EdgeIdentity;

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
    tracing::warn!(path, %reason, %error, "refused a join request");
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
    let token = tokens::validate(&ctx.client, token).await?;
    let node = request.node_name.as_str();
    if !signer::valid_node_name(node) {
        return Err(JoinError::BadNodeName(node.to_owned()));
    }
    let taken = in_use(ctx, node).await?;
    admission::admit(&token, node, taken.as_ref())?;
    if token.binding.single_use {
        tokens::consume(&ctx.client, &token, node).await?;
    }
    let certificate = signer::sign_node_csr(&ctx.pki, &request.csr, node, ctx.cert_validity)?;
    let issued = signer::issued(&certificate, format!("join with token {}", token.id))?;
    let serial = issued.serial.clone();
    let reason = format!("node {node} joined again (token {})", token.id);
    // Recorded at the version read, so that of two joins racing for a free name one is
    // refused; the node's earlier certificates are revoked (their session, if any, closed), so
    // an edge that was replaced cannot come back and fight for the name.
    let may_replace = admission::may_replace(&token);
    ctx.certificates
        .update(node, |record| {
            let now = jiff::Timestamp::now();
            if !may_replace && let Some(held) = record.valid(now).next() {
                return Err(JoinError::NodeTaken {
                    node: node.to_owned(),
                    why: admission::Taken::Certificate {
                        serial: held.serial.clone(),
                        not_after: held.not_after,
                    }
                    .to_string(),
                });
            }
            record.revoke_all(now, &reason, false);
            record.add(issued.clone(), now);
            Ok(true)
        })
        .await?;
    match &taken {
        Some(why) => tracing::warn!(
            node,
            token = token.id,
            serial,
            %why,
            "an edge joined as a node in use, as its token allows: the node's earlier certificates are revoked"
        ),
        None => tracing::info!(node, token = token.id, serial, "an edge joined"),
    }
    Ok(JoinResponse {
        certificate,
        ca_certificate: ctx.pki.ca.cert_pem.clone(),
    })
}

/// What shows `node` is in use, read from the API and the sessions.
async fn in_use(ctx: &JoinContext, node: &str) -> Result<Option<admission::Taken>, JoinError> {
    let api_error = |e: kube::Error| JoinError::Internal(format!("the API server: {e}"));
    let found = kube::Api::<k8s_openapi::api::core::v1::Node>::all(ctx.client.clone())
        .get_opt(node)
        .await
        .map_err(api_error)?;
    let lease = match &found {
        Some(_) => kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            ctx.client.clone(),
            "kube-node-lease",
        )
        .get_opt(node)
        .await
        .map_err(api_error)?,
        None => None,
    };
    let record = certificates::read(&ctx.client, node).await?;
    Ok(admission::taken(
        jiff::Timestamp::now(),
        ctx.sessions.is_connected(node),
        found.as_ref(),
        lease.as_ref(),
        record.as_ref(),
    ))
}

async fn renew(
    ctx: &JoinContext,
    peer: Option<&EdgeIdentity>,
    body: &[u8],
) -> Result<JoinResponse, JoinError> {
    let peer = peer.ok_or(JoinError::NoClientCertificate)?;
    let node = peer.node.as_str();
    ctx.certificates
        .check(node, &peer.certificate)
        .map_err(JoinError::Revoked)?;
    let request: JoinRequest =
        serde_json::from_slice(body).map_err(|e| JoinError::BadRequest(e.to_string()))?;
    let certificate = signer::sign_node_csr(&ctx.pki, &request.csr, node, ctx.cert_validity)?;
    let issued = signer::issued(
        &certificate,
        format!("renewal of {}", peer.certificate.serial),
    )?;
    ctx.certificates
        .update(node, |record| {
            // Looked at again in the record read: revoked since the check above?
            record
                .check(&peer.certificate)
                .map_err(JoinError::Revoked)?;
            record.add(issued.clone(), jiff::Timestamp::now());
            Ok(true)
        })
        .await?;
    tracing::info!(
        node,
        serial = issued.serial,
        "renewed an edge's certificate"
    );
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
    peer: Option<&EdgeIdentity>,
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
        (&Method::POST, RENEW_PATH) => answer(renew(ctx, peer, &body).await),
        (_, CA_PATH | CSR_PATH | RENEW_PATH) => refuse(
            &JoinError::BadRequest(format!("{method} is not served on {path}")),
            path,
        ),
        _ => return None,
    })
}
