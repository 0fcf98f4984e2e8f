//! Accepting connections: the one loop every listener of the cloud runs (the API server,
//! CloudHub, CloudStream, the metrics endpoint), so each gets the same care.
//!
//! An accept error (out of descriptors, say) is logged and the loop waits before it accepts
//! again, rather than spinning on the error. Each connection is served in a task tracked by the
//! caller's `TaskTracker` and ended at shutdown, so a server stops with its connections. A TLS
//! handshake is bounded by [`HANDSHAKE_TIMEOUT`]: a client that connects and says nothing
//! holds a descriptor for that long, not forever. (The HTTP servers behind it bound a request's
//! headers and an idle keep-alive connection with [`HEADER_TIMEOUT`].)
//!
//! Each listener holds at most [`Limits::connections`] connections, and one client address at
//! most [`Limits::per_client`]: a connection past either is closed as soon as it is accepted, and
//! the refusals are logged at most once every [`REFUSAL_LOG_INTERVAL`], with their count. The caps
//! are shares of the process's descriptor limit, so that one listener's flood (20,000 idle
//! sockets) cannot take the descriptors the others need.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers, and an idle keep-alive connection
/// may wait for its next request (kube-apiserver's `ReadHeaderTimeout`).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(32);

/// How long the loop waits after an accept error before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often refused connections are logged at most.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many connections a listener holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// In all.
    pub connections: usize,
    /// From one client address (`None`: no cap but the total, for CloudHub, whose edges may
    /// share an address behind NAT).
    pub per_client: Option<usize>,
}

impl Limits {
    /// `parts / of` of this process's descriptor limit, at least 64 connections, with one
    /// address allowed `per_client_divisor`-th of that (at least 16).
    pub fn share_of_descriptors(
        parts: usize,
        of: usize,
        per_client_divisor: Option<usize>,
    ) -> Self {
        let descriptors = rlimit::Resource::NOFILE.get().map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        });
        let connections = (descriptors / of.max(1)).saturating_mul(parts).max(64);
        Self {
            connections,
            per_client: per_client_divisor.map(|d| (connections / d.max(1)).max(16)),
        }
    }

    /// The API server's and CloudStream's: an eighth of the descriptors each, an eighth of that
    /// per address.
    pub fn api() -> Self {
        Self::share_of_descriptors(1, 8, Some(8))
    }

    /// CloudHub's: two thirds of the descriptors, one per edge, with no cap per address (edges
    /// behind one NAT share it). With the API server's and CloudStream's, a twelfth is left for
    /// files, databases and the cloud's own clients.
    pub fn hub() -> Self {
        Self::share_of_descriptors(2, 3, None)
    }
}

/// The connections a listener holds, by client address, and its refusals not yet logged.
#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    refused: u64,
    logged: Option<tokio::time::Instant>,
}

/// One connection's place in [`Held`], given back when the connection ends.
struct Slot {
    held: Arc<Mutex<Held>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.by_client.remove(&self.client);
            }
        }
    }
}

/// A place for a connection from `client`, or `None` (the refusal counted, and logged if it is
/// time) when the listener is full.
fn take_slot(held: &Arc<Mutex<Held>>, limits: Limits, client: IpAddr, what: &str) -> Option<Slot> {
    let mut state = held.lock().unwrap_or_else(PoisonError::into_inner);
    let from_client = state.by_client.get(&client).copied().unwrap_or(0);
    if state.total >= limits.connections || limits.per_client.is_some_and(|cap| from_client >= cap)
    {
        state.refused += 1;
        let now = tokio::time::Instant::now();
        if state
            .logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                listener = what,
                %client,
                refused = state.refused,
                held = state.total,
                limit = limits.connections,
                per_client = ?limits.per_client,
                "connections refused: the listener holds as many as it may"
            );
            state.refused = 0;
            state.logged = Some(now);
        }
        return None;
    }
    state.total += 1;
    *state.by_client.entry(client).or_default() += 1;
    Some(Slot {
        held: held.clone(),
        client,
    })
}

/// Accepts connections on `listener` until `shutdown`, within `limits`, serving each with
/// `serve` in a task of `tasks` that ends at shutdown. `what` names the listener in logs.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let held = Arc::new(Mutex::new(Held::default()));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(listener = what, "accepting a connection failed: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(slot) = take_slot(&held, limits, peer.ip(), what) else {
            // Closed at once: the descriptor goes back before the next accept.
            drop(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(listener = what, %peer, "could not set TCP_NODELAY: {e}");
        }
        let connection = serve(tcp, peer);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = connection => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// The TLS handshake of a connection `accept` handed over, within [`HANDSHAKE_TIMEOUT`];
/// `None` (logged) when it fails or takes too long.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    what: &'static str,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::info!(listener = what, %peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::info!(listener = what, %peer, "TLS handshake timed out");
            None
        }
    }
}

/// A connection's stream that says when its first bytes arrive: hyper-util's HTTP/1-or-2
/// detection waits for them with no timeout of its own, so [`first_bytes_within`] gives a
/// connection that never sends a request [`HEADER_TIMEOUT`], as HTTP/1's own timer gives an idle
/// keep-alive connection.
pub struct FirstBytes<I> {
    inner: I,
    arrived: Arc<tokio::sync::Notify>,
    told: bool,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.told && buf.filled().len() > before {
            self.told = true;
            self.arrived.notify_one();
        }
        polled
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `io` with `serve` (an HTTP connection over it), ending it if no byte arrives within
/// `timeout`. What `serve` returns, or `None` when the client said nothing in time.
pub async fn first_bytes_within<I, F, Fut, T>(io: I, timeout: Duration, serve: F) -> Option<T>
where
    F: FnOnce(FirstBytes<I>) -> Fut,
    Fut: Future<Output = T>,
{
    let arrived = Arc::new(tokio::sync::Notify::new());
    let connection = serve(FirstBytes {
        inner: io,
        arrived: arrived.clone(),
        told: false,
    });
    let silent = async {
        if tokio::time::timeout(timeout, arrived.notified())
            .await
            .is_ok()
        {
            // It spoke: from here the connection's own timers bound it.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = connection => Some(served),
        () = silent => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_are_served_until_shutdown_ends_them() -> Result<(), std::io::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        let looping = tokio::spawn(accept(
            listener,
            "test",
            Limits::api(),
            shutdown.clone(),
            tasks.clone(),
            |mut tcp: TcpStream, _| async move {
                // Echo one byte, then hold the connection until shutdown ends it.
                let mut byte = [0_u8; 1];
                if tcp.read_exact(&mut byte).await.is_ok() {
                    let _ = tcp.write_all(&byte).await;
                }
                std::future::pending::<()>().await;
            },
        ));
        let mut client = TcpStream::connect(addr).await?;
        client.write_all(b"x").await?;
        let mut byte = [0_u8; 1];
        client.read_exact(&mut byte).await?;
        assert_eq!(&byte, b"x");
        shutdown.cancel();
        assert!(looping.await.is_ok());
        tasks.close();
        tasks.wait().await;
        // The held connection was ended: the client reads its end.
        assert_eq!(client.read(&mut byte).await?, 0);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_speaks_is_ended_and_one_that_does_is_served() {
        let read_all = |mut io: FirstBytes<tokio::io::DuplexStream>| async move {
            let mut got = Vec::new();
            let _ = io.read_to_end(&mut got).await;
            got
        };
        let (_silent_client, silent) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let served = first_bytes_within(silent, HEADER_TIMEOUT, read_all).await;
        assert!(served.is_none());
        assert_eq!(started.elapsed(), HEADER_TIMEOUT);

        let (mut client, speaking) = tokio::io::duplex(64);
        let talk = tokio::spawn(async move {
            client.write_all(b"GET").await?;
            // Long after the timeout, the connection is still served.
            tokio::time::sleep(HEADER_TIMEOUT * 3).await;
            client.write_all(b" /").await
        });
        let served = first_bytes_within(speaking, HEADER_TIMEOUT, read_all).await;
        assert_eq!(served.as_deref(), Some(&b"GET /"[..]));
        assert!(matches!(talk.await, Ok(Ok(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_past_the_caps_are_refused_and_their_places_come_back() {
        let held = Arc::new(Mutex::new(Held::default()));
        let limits = Limits {
            connections: 3,
            per_client: Some(2),
        };
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
        let a1 = take_slot(&held, limits, a, "test").expect("first from a");
        let _a2 = take_slot(&held, limits, a, "test").expect("second from a");
        assert!(take_slot(&held, limits, a, "test").is_none(), "a's cap");
        let _b1 = take_slot(&held, limits, b, "test").expect("b has room");
        assert!(take_slot(&held, limits, b, "test").is_none(), "the total");
        drop(a1);
        assert!(
            take_slot(&held, limits, b, "test").is_some(),
            "a's place came back"
        );
        let state = held.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!((state.total, state.by_client[&a]), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_handshake_timeout() -> Result<(), std::io::Error>
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dir = tempfile::tempdir()?;
        let pki = crate::Pki::load_or_create(dir.path(), &["localhost".to_owned()])
            .map_err(std::io::Error::other)?;
        let config =
            crate::server_tls::tls_config(&pki, &[], crate::server_tls::ClientCerts::Optional)
                .map_err(std::io::Error::other)?;
        let acceptor = TlsAcceptor::from(std::sync::Arc::new(config));
        let _client = TcpStream::connect(addr).await?;
        let (tcp, peer) = listener.accept().await?;
        let started = tokio::time::Instant::now();
        assert!(handshake(&acceptor, tcp, peer, "test").await.is_none());
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
        Ok(())
    }
}
