//! `pods/exec`, `pods/attach` and `pods/portforward`: the client's upgraded connection joined to
//! one to the node's kubelet endpoint, as kube-apiserver's upgrade-aware proxy does.
//!
//! The streaming protocol (WebSocket `v5`/`v4`/`channel.k8s.io`/base64, or SPDY/3.1) is
//! negotiated between the client and the kubelet: the upgrade headers are passed through both
//! ways and the API server only checks the request and forwards, byte for byte. One exception,
//! also kube-apiserver's: kubectl ≥ 1.31 port-forwards over a WebSocket whose subprotocol is
//! `SPDY/3.1+portforward.k8s.io`, each binary message carrying SPDY frames, and the kubelet
//! speaks only SPDY for port-forward; so the API server upgrades the WebSocket itself, asks
//! the kubelet for SPDY, and carries the bytes between the messages and the SPDY connection
//! ([`tunnel`]). For edges, the kubelet endpoint is cloudcore's CloudStream, which carries the
//! session to the edge.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::error::ApiError;
use super::request::ResourcePath;
use super::subresources::{
    MAX_UPSTREAM_ERROR_BYTES, container_of, node_endpoint, node_of, pod_of, read_prefix,
    unavailable, upstream_error,
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
    let (namespace, pod) = pod_of(api, info, path, name)?;
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
    let target = format!(
        "/{sub}/{namespace}/{name}/{container}?{}",
        kubelet_query(&command, stdin, stdout, stderr, tty)
    );
    proxy(api, call, name, node, sub, &target, call.headers).await
}

/// GET or POST of `pods/portforward` with an upgrade: `ports` become the kubelet's `port`s.
pub(super) async fn portforward(
    api: &Api,
    call: &Call<'_>,
    info: &ResourceInfo,
    path: &ResourcePath,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let (namespace, pod) = pod_of(api, info, path, name)?;
    let query = kubelet_ports(&call.query.all("ports"))?;
    if !wants_upgrade(call) {
        return Err(ApiError::BadRequest("Upgrade request required".into()));
    }
    let node = node_of(&pod, name)?;
    let target = if query.is_empty() {
        format!("/portForward/{namespace}/{name}")
    } else {
        format!("/portForward/{namespace}/{name}?{query}")
    };
    let tunnelled = tunnelled_protocols(call.headers);
    if tunnelled.is_empty() {
        return proxy(api, call, name, node, "portforward", &target, call.headers).await;
    }
    tunnel(api, call, name, node, &target, &tunnelled).await
}

/// PodPortForwardOptions' `ports` (repeated, or comma-separated) as the kubelet's `port`s.
fn kubelet_ports(ports: &[&str]) -> Result<String, ApiError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for text in ports
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match text.parse::<u16>() {
            Ok(port) if port > 0 => {
                query.append_pair("port", &port.to_string());
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid port {text:?}: ports are 1 to 65535"
                )));
            }
        }
    }
    Ok(query.finish())
}

/// Opens the upgraded connection to `node`'s kubelet at `target`, sending `headers`' upgrade
/// headers; the kubelet's answer, which is an upgrade, or the error to hand to the client.
async fn upgrade_upstream(
    api: &Api,
    call: &Call<'_>,
    pod: &str,
    node: &str,
    sub: &str,
    target: &str,
    headers: &http::HeaderMap,
) -> Result<Result<Response<hyper::body::Incoming>, Response<Body>>, ApiError> {
    let unavailable = |why: &dyn std::fmt::Display| unavailable(sub, pod, node, &why.to_string());
    let Some(kubelet) = api.kubelet.as_ref() else {
        return Err(unavailable(&"this API server has no kubelet client"));
    };
    let endpoint = node_endpoint(api, node).map_err(|why| unavailable(&why))?;
    let skip_verify = call.query.k8s_bool("insecureSkipTLSVerifyBackend");
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
        .uri(target)
        .header(header::HOST, endpoint.authority());
    for name in &UPGRADE_HEADERS {
        for value in headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| ApiError::BadRequest(format!("cannot forward the request: {e}")))?;
    sender.ready().await.map_err(|e| unavailable(&e))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(&e))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status();
        tracing::debug!(pod, %node, %status, "the kubelet did not upgrade the {sub}");
        let body = read_prefix(answer.into_body(), MAX_UPSTREAM_ERROR_BYTES).await;
        return Ok(Err(upstream_error(status, &body, pod)));
    }
    Ok(Ok(answer))
}

/// The client's connection, to be taken over once the answer is sent.
fn take_upgrade(call: &Call<'_>) -> Result<hyper::upgrade::OnUpgrade, ApiError> {
    call.upgrade
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| {
            ApiError::BadRequest("this connection cannot be upgraded: use HTTP/1.1".into())
        })
}

/// An empty response body.
fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The buffer each direction of a proxied upgrade is copied through. tokio's default, 8 KiB,
/// cost a read, a TLS record and a write (a system call, and a wakeup of the reader at the
/// other end) each way per 8 KiB: a port-forward's bytes come from CloudStream in frames of up
/// to 32 KiB, and go on in as large pieces now.
const PROXY_BUFFER: usize = 64 << 10;

/// Proxies an upgrade to the kubelet byte for byte: the kubelet's answer headers go back, then
/// the two connections are joined until either ends (or the server shuts down).
async fn proxy(
    api: &Api,
    call: &Call<'_>,
    pod: &str,
    node: &str,
    sub: &str,
    target: &str,
    headers: &http::HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let mut answer = match upgrade_upstream(api, call, pod, node, sub, target, headers).await? {
        Ok(answer) => answer,
        Err(refused) => return Ok(refused),
    };
    let client = take_upgrade(call)?;
    let upstream = hyper::upgrade::on(&mut answer);
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for name in &ANSWER_HEADERS {
        for value in answer.headers().get_all(name) {
            response = response.header(name, value);
        }
    }
    let shutdown = api.shutdown.clone();
    let (pod, node, sub) = (pod.to_owned(), node.to_owned(), sub.to_owned());
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
            let copied = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                PROXY_BUFFER,
                PROXY_BUFFER,
            );
            if let Err(e) = copied.await {
                tracing::debug!(pod, node, "the {sub} session ended: {e}");
            }
        };
        tokio::select! {
            () = joined => {}
            () = shutdown.cancelled() => {}
        }
    });
    response
        .body(empty())
        .map_err(|e| ApiError::BadRequest(format!("cannot answer the upgrade: {e}")))
}

/// The prefix of a WebSocket subprotocol that tunnels SPDY.
const TUNNEL_PREFIX: &str = "SPDY/3.1+";

/// The SPDY stream protocols a WebSocket upgrade offers to tunnel (`SPDY/3.1+portforward.k8s.io`
/// offers `portforward.k8s.io`); none for any other request.
fn tunnelled_protocols(headers: &http::HeaderMap) -> Vec<String> {
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket {
        return Vec::new();
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(TUNNEL_PREFIX))
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Tunnels SPDY in a WebSocket: asks the kubelet for a SPDY upgrade offering `protocols`, then
/// accepts the client's WebSocket with the one the kubelet chose (prefixed again) and carries
/// each binary message's bytes to the kubelet and the kubelet's bytes back as binary messages.
async fn tunnel(
    api: &Api,
    call: &Call<'_>,
    pod: &str,
    node: &str,
    target: &str,
    protocols: &[String],
) -> Result<Response<Body>, ApiError> {
    let Some(key) = call.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(ApiError::BadRequest(
            "a WebSocket upgrade needs Sec-WebSocket-Key".into(),
        ));
    };
    let mut spdy = http::HeaderMap::new();
    spdy.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    spdy.insert(header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
    for protocol in protocols {
        if let Ok(value) = http::HeaderValue::from_str(protocol) {
            spdy.append(HeaderName::from_static("x-stream-protocol-version"), value);
        }
    }
    let mut answer =
        match upgrade_upstream(api, call, pod, node, "portforward", target, &spdy).await? {
            Ok(answer) => answer,
            Err(refused) => return Ok(refused),
        };
    let chosen = answer
        .headers()
        .get("x-stream-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let subprotocol = http::HeaderValue::from_str(&format!("{TUNNEL_PREFIX}{chosen}"))
        .map_err(|e| ApiError::BadRequest(format!("the kubelet chose protocol {chosen:?}: {e}")))?;
    let client = take_upgrade(call)?;
    let upstream = hyper::upgrade::on(&mut answer);
    let shutdown = api.shutdown.clone();
    let (pod, node) = (pod.to_owned(), node.to_owned());
    tokio::spawn(async move {
        let joined = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(pod, node, "the port-forward tunnel's upgrade failed: {e}");
                    return;
                }
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
            carry(ws, TokioIo::new(upstream)).await;
        };
        tokio::select! {
            () = joined => {}
            () = shutdown.cancelled() => {}
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .header(header::SEC_WEBSOCKET_PROTOCOL, subprotocol)
        .body(empty())
        .map_err(|e| ApiError::BadRequest(format!("cannot answer the upgrade: {e}")))
}

/// The most bytes read from the kubelet into one message.
const TUNNEL_CHUNK: usize = 32 * 1024;

/// Carries a tunnel's bytes both ways until either side ends: each binary message's payload to
/// `upstream`, and what `upstream` sends as binary messages.
async fn carry<C, U>(ws: WebSocketStream<C>, upstream: U)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ws_out, mut ws_in) = ws.split();
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let inbound = async {
        while let Some(Ok(message)) = ws_in.next().await {
            match message {
                Message::Binary(bytes) => {
                    let Ok(()) = up_write.write_all(&bytes).await else {
                        return;
                    };
                }
                Message::Close(_) => break,
                // Pings are answered by the WebSocket layer; text carries nothing here.
                _ => {}
            }
        }
        let _ = up_write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0_u8; TUNNEL_CHUNK];
        loop {
            match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if ws_out.send(message).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = ws_out.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{kubelet_ports, kubelet_query, tunnelled_protocols};
    use http::header;

    #[test]
    fn ports_become_the_kubelets_port_parameters() {
        assert_eq!(
            kubelet_ports(&["8080,9090", "80"]).ok().as_deref(),
            Some("port=8080&port=9090&port=80")
        );
        assert_eq!(kubelet_ports(&[]).ok().as_deref(), Some(""));
        for bad in ["0", "http", "65536"] {
            assert!(kubelet_ports(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_websocket_offering_spdy_is_tunnelled() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("SPDY/3.1+portforward.k8s.io, v4.channel.k8s.io"),
        );
        assert_eq!(tunnelled_protocols(&headers), ["portforward.k8s.io"]);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("v4.channel.k8s.io"),
        );
        assert!(tunnelled_protocols(&headers).is_empty());
        headers.insert(header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
        assert!(tunnelled_protocols(&headers).is_empty());
    }

    #[test]
    fn the_kubelet_gets_its_own_parameter_names() {
        assert_eq!(
            kubelet_query(&["sh", "-c", "echo a b"], true, true, false, true),
            "command=sh&command=-c&command=echo+a+b&input=1&output=1&tty=1"
        );
    }
}
