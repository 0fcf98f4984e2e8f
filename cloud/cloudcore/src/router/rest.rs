//! Delivery to rest targets: each message is one POST of its payload, as KubeEdge's router
//! makes it, retried while the failure may pass (no connection, a timeout, 5xx, 429).
//!
//! Besides the body, the request says where the message came from in three headers a receiver
//! may use or ignore: `X-Wedge-Node`, `X-Wedge-Topic` and `X-Wedge-Rule` (`namespace/name`).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

/// How many times a message is tried.
pub const ATTEMPTS: u32 = 3;
/// How long one attempt may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One message for one target.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The target URL.
    pub url: String,
    /// The rule, `namespace/name`.
    pub rule: String,
    /// The node the message came from.
    pub node: String,
    /// The topic it was published on.
    pub topic: String,
    /// The payload.
    pub body: Vec<u8>,
}

/// The HTTP client of every rest target; cheap to clone.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
}

/// Why a POST failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    message: String,
    transient: bool,
}

/// The error with its causes: reqwest keeps the useful part (refused, TLS) in the chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl RestClient {
    /// A client (HTTPS verified against the platform's roots).
    pub fn new() -> Result<Self, String> {
        // reqwest needs a rustls crypto provider; an error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| chain(&e))?;
        Ok(Self { http })
    }

    /// POSTs the message, trying up to [`ATTEMPTS`] times. The error is what the Rule's status
    /// says.
    pub async fn post(&self, delivery: &Delivery) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.try_once(delivery).await {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    last = failure.message;
                    if !failure.transient || attempt == ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt * attempt)))
                        .await;
                }
            }
        }
        Err(format!("POST {}: {last}", delivery.url))
    }

    async fn try_once(&self, delivery: &Delivery) -> Result<(), Failure> {
        let response = self
            .http
            .post(&delivery.url)
            .headers(headers(delivery))
            .body(delivery.body.clone())
            .send()
            .await
            .map_err(|e| Failure {
                message: chain(&e),
                transient: !e.is_builder(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            message: format!("the target answered {status}"),
            transient: status.is_server_error() || status.as_u16() == 429,
        })
    }
}

fn headers(delivery: &Delivery) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&delivery.body).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in [
        ("x-wedge-node", &delivery.node),
        ("x-wedge-topic", &delivery.topic),
        ("x-wedge-rule", &delivery.rule),
    ] {
        // A topic with control characters cannot be a header; the body still goes.
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &[u8]) -> Delivery {
        Delivery {
            url: "http://127.0.0.1:1/".into(),
            rule: "default/r".into(),
            node: "edge-a".into(),
            topic: "default/test".into(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn json_payloads_say_so_and_the_source_is_in_headers() {
        let h = headers(&delivery(br#"{"t": 1}"#));
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h["x-wedge-topic"], "default/test");
        assert_eq!(h["x-wedge-node"], "edge-a");
        assert_eq!(h["x-wedge-rule"], "default/r");
        let h = headers(&delivery(&[0xff, 0]));
        assert_eq!(h[CONTENT_TYPE], "application/octet-stream");
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_with_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let client = RestClient::new().expect("client");
        let mut d = delivery(b"x");
        d.url = format!("http://127.0.0.1:{port}/in");
        let error = client.post(&d).await.expect_err("nobody listens");
        assert!(error.starts_with(&format!("POST {}: ", d.url)), "{error}");
        assert!(error.to_lowercase().contains("connect"), "{error}");
    }
}
