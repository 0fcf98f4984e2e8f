//! Accepting connections: the one loop every listener of the cloud runs (the API server,
//! CloudHub, CloudStream, the metrics endpoint), so each gets the same care.
//!
//! An accept error (out of descriptors, say) is logged and the loop waits before it accepts
//! again, rather than spinning on the error. Each connection is served in a task tracked by the
//! caller's `TaskTracker` and ended at shutdown, so a server stops with its connections. A TLS
//! handshake is bounded by [`HANDSHAKE_TIMEOUT`]: a client that connects and says nothing
//! holds a descriptor for that long, not forever.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop waits after an accept error before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown`, serving each with `serve` in a task of
/// `tasks` that ends at shutdown. `what` names the listener in logs.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(listener = what, %peer, "could not set TCP_NODELAY: {e}");
        }
        let connection = serve(tcp, peer);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
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
    async fn a_silent_client_is_dropped_after_the_handshake_timeout() -> Result<(), std::io::Error>
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dir = tempfile::tempdir()?;
        let pki = crate::pki::Pki::load_or_create(dir.path(), &["localhost".to_owned()])
            .map_err(std::io::Error::other)?;
        let config = crate::server::tls_config(&pki, &[], crate::server::ClientCerts::Optional)
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
