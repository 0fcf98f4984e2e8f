//! The embedded MQTT broker (rumqttd), for edges with no broker of their own: `wedge up` and
//! `edgecore` without `--mqtt-broker` need nothing installed.
//!
//! rumqttd runs on threads of its own (it builds its own runtimes) and has no way to stop, so it
//! lives as long as the process. The listen address is bound once first, so that a port in use
//! is a clear error here rather than a log line on a broker thread; EventBus's client connects
//! (and reconnects) on its own once the broker listens.
//!
//! Every client logs in and is limited as the [`BusGuard`] says; a socket that sends no CONNECT
//! within [`CONNECT_TIMEOUT_MS`] is closed, and [`auth::RESERVED_SLOTS`] of the connections are
//! kept for EventBus and the operator's users.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use super::auth::{self, BusGuard};

/// The largest MQTT payload the broker accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The most clients connected at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a new connection may take to send its CONNECT.
pub const CONNECT_TIMEOUT_MS: u16 = 10_000;

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
    /// Starts a broker listening on `addr` (port 0 picks a free port), letting in and limiting
    /// clients as `guard` says.
    pub fn start(addr: SocketAddr, guard: Arc<BusGuard>) -> Result<Self, BrokerError> {
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
                "max_connections": MAX_CONNECTIONS,
                "reserved_connections": auth::RESERVED_SLOTS,
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
                    "connection_timeout_ms": CONNECT_TIMEOUT_MS,
                    "max_payload_size": MAX_PAYLOAD,
                    "max_inflight_count": 256,
                    "dynamic_filters": true,
                },
            }},
        });
        let mut config: rumqttd::Config =
            serde_json::from_value(config).map_err(|e| BrokerError::Config(e.to_string()))?;
        let g = guard.clone();
        config.router.authorize = Some(rumqttd::Authorizer(Arc::new(
            move |client: &str, access: rumqttd::Access<'_>| g.authorize(client, access),
        )));
        for server in config.v4.iter_mut().flat_map(|v4| v4.values_mut()) {
            let g = guard.clone();
            server.set_auth_handler(move |client: String, user: String, password: String| {
                std::future::ready(g.authenticate(&client, &user, &password))
            });
        }
        let mut broker = rumqttd::Broker::new(config);
        // Pods' logins that go take their sessions with them.
        let kicker = broker.kicker();
        guard
            .logins()
            .set_kicker(move |client: &str| kicker.kick(client));
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
