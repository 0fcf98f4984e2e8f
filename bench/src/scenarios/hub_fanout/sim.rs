//! A simulated edge: the protocol's edge side and nothing else. It dials the hub with its own
//! client certificate, says hello holding nothing, registers its node as Ready, then acks every
//! object the cloud sends and counts the pods and ConfigMap updates it got. No store, no
//! runtime: what is measured is the cloud, not the edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wedge_core::protocol::messages::Hello;
use wedge_core::protocol::{
    EDGE_PATH, Envelope, Operation, ResourceKind, ResourceRef, SUBPROTOCOL,
};

/// What the simulated edges have seen, together.
#[derive(Default)]
pub struct Counts {
    /// Edges whose node registration the cloud acknowledged.
    pub registered: AtomicUsize,
    /// Pods received (inserts).
    pub pods: AtomicUsize,
    /// ConfigMap updates received.
    pub config_updates: AtomicUsize,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The node's registration: Ready, room for pods, offering the Wasm runtime.
fn node_report(node: &str) -> serde_json::Value {
    serde_json::json!({
        "labels": {
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            "runtime.wedge.io/wasm": "true",
        },
        "status": {
            "capacity": {"cpu": "2", "memory": "1Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "EdgeReady",
                "message": "simulated", "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
            }],
        }
    })
}

/// Reads the next protocol frame.
async fn next_frame(ws: &mut Socket) -> anyhow::Result<Option<Envelope>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(Some(Envelope::decode(&bytes)?)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Connects and registers; returns the socket once the cloud acked the registration.
pub async fn connect(
    hub: &str,
    node: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Socket> {
    let tcp = tokio::net::TcpStream::connect(hub).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("127.0.0.1")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS")?;
    let mut request = format!("wss://{hub}{EDGE_PATH}").into_client_request()?;
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(SUBPROTOCOL),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    let hello = Hello {
        node: node.to_owned(),
        agent_version: "simulated".into(),
        held: Vec::new(),
    };
    let hello = Envelope::new(1, Operation::Hello).with_payload(serde_json::to_value(hello)?);
    ws.send(Message::Binary(hello.encode().into())).await?;
    let report = Envelope::new(2, Operation::Update)
        .with_resource(ResourceRef {
            kind: ResourceKind::NodeStatus,
            namespace: None,
            name: node.to_owned(),
            uid: None,
        })
        .with_payload(node_report(node));
    ws.send(Message::Binary(report.encode().into())).await?;
    loop {
        let frame = next_frame(&mut ws)
            .await?
            .context("closed before the registration was acknowledged")?;
        match frame.operation {
            Operation::Ack if frame.parent == Some(2) => return Ok(ws),
            Operation::Error => anyhow::bail!("refused: {}", frame.payload),
            _ => {}
        }
    }
}

/// Acks every object until the connection ends, counting what arrives.
pub async fn serve(mut ws: Socket, counts: Arc<Counts>) -> anyhow::Result<()> {
    let mut id = 2;
    while let Some(frame) = next_frame(&mut ws).await? {
        let kind = frame.resource.as_ref().map(|r| r.kind);
        match (frame.operation, kind) {
            (Operation::Insert, Some(ResourceKind::Pod)) => {
                counts.pods.fetch_add(1, Ordering::Relaxed);
            }
            (Operation::Update, Some(ResourceKind::ConfigMap)) => {
                counts.config_updates.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if matches!(
            frame.operation,
            Operation::Insert | Operation::Update | Operation::Delete
        ) {
            id += 1;
            let ack = Envelope::ack(id, frame.id);
            ws.send(Message::Binary(ack.encode().into())).await?;
        }
    }
    Ok(())
}
