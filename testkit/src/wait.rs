//! Waiting for the event that proves a thing, and loopback ports for the servers tests start:
//! the one copy every test binary uses (issue 19 found them copied into five).
//!
//! A test never sleeps a fixed time before checking that something did *not* happen; it polls
//! for what proves the outcome, bounded by a timeout that is only a failure's limit.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Where test ports come from: below the kernel's ephemeral range (32768–60999 by default).
/// A port the system picked (`bind(":0")`) comes from that range, and between the check and the
/// server's bind any outgoing connection (kubectl's, containerd's) may take it as its local
/// port; one seen in CI made cloudcore fail with "Address already in use".
const PORTS: std::ops::Range<u32> = 20_000..32_768;

/// The next port to try: each process walks the range from a start of its own, so it never
/// hands out a port twice and two processes seldom try the same one.
static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// A port on loopback that nothing listens on now, below the ephemeral range: bind it soon.
pub fn try_free_port() -> std::io::Result<u16> {
    use std::sync::atomic::Ordering;
    let span = PORTS.end - PORTS.start;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let _ = NEXT.compare_exchange(u32::MAX, start % span, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let Ok(port) = u16::try_from(PORTS.start + offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no free port on loopback below the ephemeral range",
    ))
}

/// [`try_free_port`], for tests: panics if loopback has no port to give.
pub fn free_port() -> u16 {
    try_free_port().expect("a free port on loopback")
}

/// Polls `check` every `every` until it holds; panics with `what()` once `timeout` has passed.
pub async fn eventually<F, Fut>(
    timeout: Duration,
    every: Duration,
    mut check: F,
    what: impl FnOnce() -> String,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{}", what());
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` every `every` until it succeeds; after `timeout`, its last error.
pub async fn until_ok<T, E, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_once_the_check_holds() {
        let mut polls = 0;
        eventually(
            Duration::from_secs(1),
            Duration::from_millis(10),
            || {
                polls += 1;
                std::future::ready(polls == 3)
            },
            || "never".into(),
        )
        .await;
        assert_eq!(polls, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "the light never came on")]
    async fn eventually_panics_with_what_after_the_timeout() {
        eventually(
            Duration::from_secs(1),
            Duration::from_millis(100),
            || std::future::ready(false),
            || "the light never came on".into(),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_gives_the_value_or_the_last_error() {
        let mut n = 0;
        let got: Result<u32, String> =
            until_ok(Duration::from_secs(1), Duration::from_millis(10), || {
                n += 1;
                std::future::ready(if n < 4 {
                    Err(format!("try {n}"))
                } else {
                    Ok(n)
                })
            })
            .await;
        assert_eq!(got, Ok(4));
        let failed: Result<(), String> =
            until_ok(Duration::from_millis(50), Duration::from_millis(10), || {
                std::future::ready(Err("down".to_owned()))
            })
            .await;
        assert_eq!(failed, Err("down".to_owned()));
    }

    #[test]
    fn free_ports_are_on_loopback_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for port in &ports {
            assert!(PORTS.contains(&u32::from(*port)), "{port}");
            assert!(std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok());
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "never handed out twice");
    }
}
