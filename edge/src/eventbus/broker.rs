//! The embedded MQTT broker (rumqttd), for edges with no broker of their own: `wedge up` and
//! `edgecore` without `--mqtt-broker` need nothing installed.
//!
//! rumqttd runs on threads of its own (it builds its own runtimes) and has no way to stop, so it
//! lives as long as the process. The listen address is bound once first, so that a port in use
//! is a clear error here rather than a log line on a broker thread; EventBus's client connects
//! (and reconnects) on its own once the broker listens.

use std::net::{SocketAddr, TcpListener};

/// The largest MQTT payload the broker accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The address cannot be listened on.
    #[error("the embedded MQTT broker cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// rumqttd refused its configuration.
    #[error("the embedded MQTT broker's configuration: {0}")]
    Config(String),
}

/// A running embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker listening on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> Result<Self, BrokerError> {
        let probe =
            TcpListener::bind(addr).map_err(|source| BrokerError::Listen { addr, source })?;
        let addr = probe
            .local_addr()
            .map_err(|source| BrokerError::Listen { addr, source })?;
        drop(probe);
        let config = serde_json::json!({
            "id": 0,
            "router": {
                "id": 0,
                "max_connections": 1024,
                "max_outgoing_packet_count": 1024,
                // Segments hold messages in memory per topic: small, for small gateways.
                "max_segment_size": MAX_PAYLOAD,
                "max_segment_count": 2,
            },
            "v4": {"1": {
                "name": "wedge-v4",
                "listen": addr.to_string(),
                "next_connection_delay_ms": 1,
                "connections": {
                    "connection_timeout_ms": 60000,
                    "max_payload_size": MAX_PAYLOAD,
                    "max_inflight_count": 256,
                    "dynamic_filters": true,
                },
            }},
        });
        let config: rumqttd::Config =
            serde_json::from_value(config).map_err(|e| BrokerError::Config(e.to_string()))?;
        let mut broker = rumqttd::Broker::new(config);
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the embedded MQTT broker stopped");
                }
            })
            .map_err(|e| BrokerError::Config(format!("cannot start its thread: {e}")))?;
        tracing::info!(%addr, "embedded MQTT broker started");
        Ok(Self { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
