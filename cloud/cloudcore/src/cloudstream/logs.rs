//! `/containerLogs/{namespace}/{pod}/{container}`: a container's log, streamed from its edge.

use futures::StreamExt;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use wedge_core::protocol::mux::Event;
use wedge_core::protocol::stream::{LogParams, StreamRequest};

use super::{Body, BodyError, StreamContext, failure, node_of, status_response};

/// Reads the kubelet's log query parameters.
pub(crate) fn params(query: Option<&str>) -> Result<LogParams, String> {
    let mut p = LogParams::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        let flag = || matches!(value.as_str(), "true" | "1" | "");
        let number = || {
            value
                .parse::<i64>()
                .map_err(|_| format!("{key}={value:?}: expected a whole number"))
        };
        match &*key {
            "follow" => p.follow = flag(),
            "previous" => p.previous = flag(),
            "timestamps" => p.timestamps = flag(),
            "sinceSeconds" => p.since_seconds = Some(number()?),
            "sinceTime" => p.since_time = Some(value),
            "tailLines" => p.tail_lines = Some(number()?),
            "limitBytes" => p.limit_bytes = Some(number()?),
            _ => {}
        }
    }
    Ok(p)
}

pub(crate) async fn serve(
    ctx: &StreamContext,
    namespace: &str,
    pod: &str,
    container: &str,
    query: Option<&str>,
) -> Response<Body> {
    let options = match params(query) {
        Ok(p) => p,
        Err(message) => return failure(400, "BadRequest", &message),
    };
    let node = match node_of(ctx, namespace, pod) {
        Ok(n) => n,
        Err(status) => return status_response(&status),
    };
    let request = StreamRequest::Logs {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        options,
    };
    let stream = match ctx.sessions.open_stream(&node, request) {
        Ok(s) => s,
        Err(e) => return failure(503, "ServiceUnavailable", &e.to_string()),
    };
    let (sender, mut receiver) = stream.split();
    // The edge's first frame says whether it serves the log (an empty DATA) or not (a CLOSE
    // with the Status to answer).
    match receiver.recv().await {
        Some(Event::Data { data, .. }) => {
            let first = (!data.is_empty()).then(|| Ok(Frame::data(data)));
            let rest = futures::stream::unfold(Some(receiver), move |receiver| {
                let node = node.clone();
                async move {
                    let mut receiver = receiver?;
                    loop {
                        match receiver.recv().await {
                            Some(Event::Data { data, .. }) if !data.is_empty() => {
                                return Some((Ok(Frame::data(data)), Some(receiver)));
                            }
                            Some(Event::Data { .. } | Event::Eof(_)) => {}
                            Some(Event::Closed(Some(status))) if status["status"] == "Success" => {
                                return None;
                            }
                            Some(Event::Closed(status)) => {
                                let why = status
                                    .as_ref()
                                    .and_then(|s| s["message"].as_str())
                                    .unwrap_or("the edge abandoned the stream")
                                    .to_owned();
                                let error: BodyError =
                                    format!("the log stream from node {node} broke off: {why}")
                                        .into();
                                return Some((Err(error), None));
                            }
                            None => return None,
                        }
                    }
                }
            });
            // The sender lives as long as the body: the stream stays open while the client
            // reads, and closes (stopping the edge's reader) when the client goes away.
            let body = futures::stream::iter(first).chain(rest).map(move |frame| {
                let _keep = &sender;
                frame
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(StreamBody::new(body).boxed_unsync())
                .unwrap_or_default()
        }
        Some(Event::Closed(Some(status))) => status_response(&status),
        Some(Event::Eof(_)) | Some(Event::Closed(None)) | None => failure(
            502,
            "BadGateway",
            &format!("node {node} closed the log stream without an answer"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelet_parameters_are_read() {
        let p = params(Some(
            "follow=true&tailLines=10&sinceTime=2026-12-05T01%3A02%3A03Z&limitBytes=5&timestamps=1",
        ))
        .expect("valid");
        assert!(p.follow && p.timestamps && !p.previous);
        assert_eq!(p.tail_lines, Some(10));
        assert_eq!(p.limit_bytes, Some(5));
        assert_eq!(p.since_time.as_deref(), Some("2026-12-05T01:02:03Z"));
        assert!(params(Some("tailLines=ten")).is_err());
        assert_eq!(params(None), Ok(LogParams::default()));
    }
}
