//! `pods/exec` and `pods/attach`: the client's upgraded connection joined to one to the node's
//! kubelet endpoint, byte for byte, as kube-apiserver's upgrade-aware proxy does.
//!
//! The streaming protocol (WebSocket `v5`/`v4`/`channel.k8s.io`/base64, or SPDY/3.1) is
//! negotiated between the client and the kubelet: the upgrade headers are passed through both
//! ways and the API server only checks the request and forwards. For edges, the kubelet endpoint
//! is cloudcore's CloudStream, which carries the session to the edge.

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::error::ApiError;
use super::objects::{self, store_err};
use super::request::ResourcePath;
use super::subresources::{
    MAX_UPSTREAM_ERROR_BYTES, container_of, node_endpoint, node_of, read_prefix, unavailable,
    upstream_error,
};
use super::{Api, Body, Call};
use crate::registry::ResourceInfo;

/// The request headers that carry the upgrade to the kubelet, and the answer's back.
const UPGRADE_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    HeaderName::from_static("x-stream-protocol-version"),
];
/// The answer's headers passed back to the client.
const ANSWER_HEADERS: [HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    HeaderName::from_static("x-stream-protocol-version"),
];

/// Whether the request asks to upgrade its connection.
fn wants_upgrade(call: &Call<'_>) -> bool {
    call.headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && call.headers.contains_key(header::UPGRADE)
}

/// The kubelet's query for an exec or attach: `command` (exec) and the streams, as the kubelet
/// names them (`input`, `output`, `error`, `tty`).
fn kubelet_query(command: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for c in command {
        q.append_pair("command", c);
    }
    for (on, name) in [
        (stdin, "input"),
        (stdout, "output"),
        (stderr, "error"),
        (tty, "tty"),
    ] {
        if on {
            q.append_pair(name, "1");
        }
    }
    q.finish()
}

/// GET or POST of `pods/{sub}` (`exec` or `attach`) with an upgrade.
pub(super) async fn exec(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let namespace = path.namespace.as_deref().ok_or(ApiError::NoSuchPath)?;
    let pod = api
        .store
        .get(&objects::key(info, Some(namespace), name))
        .map_err(store_err(info))?
        .value();
    let container = container_of(&pod, name, call.query.get("container"))?;
    let q = &call.query;
    let (stdin, stdout, stderr, tty) = (
        q.k8s_bool("stdin"),
        q.k8s_bool("stdout"),
        q.k8s_bool("stderr"),
        q.k8s_bool("tty"),
    );
    let command = if sub == "exec" {
        q.all("command")
    } else {
        Vec::new()
    };
    // PodExecOptions and PodAttachOptions, checked as kube-apiserver checks them.
    if sub == "exec" && command.is_empty() {
        return Err(ApiError::BadRequest(
            "you must specify at least one command for the container".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    if stderr && tty && sub == "exec" && !stdout {
        return Err(ApiError::BadRequest(
            "tty and stderr without stdout: a terminal's output comes on stdout".into(),
        ));
    }
    if !wants_upgrade(call) {
        return Err(ApiError::BadRequest("Upgrade request required".into()));
    }
    let node = node_of(&pod, name)?;
    let unavailable = |why: &dyn std::fmt::Display| unavailable(sub, name, node, &why.to_string());
    let Some(kubelet) = api.kubelet.as_ref() else {
        return Err(unavailable(&"this API server has no kubelet client"));
    };
    let endpoint = node_endpoint(api, node).map_err(|why| unavailable(&why))?;
    let target = format!(
        "/{sub}/{namespace}/{name}/{container}?{}",
        kubelet_query(&command, stdin, stdout, stderr, tty)
    );
    let skip_verify = q.k8s_bool("insecureSkipTLSVerifyBackend");
    let mut sender = kubelet
        .connect::<Empty<Bytes>>(&endpoint, skip_verify)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut request = Request::builder()
        .method(if *call.method == Method::POST {
            Method::POST
        } else {
            Method::GET
        })
        .uri(&target)
        .header(header::HOST, endpoint.authority());
    for name in &UPGRADE_HEADERS {
        for value in call.headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| ApiError::BadRequest(format!("cannot forward the request: {e}")))?;
    sender.ready().await.map_err(|e| unavailable(&e))?;
    let mut answer = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(&e))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status();
        tracing::debug!(pod = name, %node, %status, "the kubelet did not upgrade the {sub}");
        let body = read_prefix(answer.into_body(), MAX_UPSTREAM_ERROR_BYTES).await;
        return Ok(upstream_error(status, &body, name));
    }
    let Some(client) = call
        .upgrade
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        return Err(ApiError::BadRequest(
            "this connection cannot be upgraded: use HTTP/1.1".into(),
        ));
    };
    let upstream = hyper::upgrade::on(&mut answer);
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for name in &ANSWER_HEADERS {
        for value in answer.headers().get_all(name) {
            response = response.header(name, value);
        }
    }
    let shutdown = api.shutdown.clone();
    let (pod, node, sub) = (name.to_owned(), node.to_owned(), sub.to_owned());
    tokio::spawn(async move {
        let joined = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(pod, node, "the {sub} upgrade failed: {e}");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(pod, node, "the {sub} session ended: {e}");
            }
        };
        tokio::select! {
            () = joined => {}
            () = shutdown.cancelled() => {}
        }
    });
    response
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| ApiError::BadRequest(format!("cannot answer the upgrade: {e}")))
}

#[cfg(test)]
mod tests {
    use super::kubelet_query;

    #[test]
    fn the_kubelet_gets_its_own_parameter_names() {
        assert_eq!(
            kubelet_query(&["sh", "-c", "echo a b"], true, true, false, true),
            "command=sh&command=-c&command=echo+a+b&input=1&output=1&tty=1"
        );
    }
}
