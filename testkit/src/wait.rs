//! Waiting for the event that proves a thing, and loopback ports for the servers tests start:
//! the one copy every test binary uses (issue 19 found them copied into five).
//!
//! A test never sleeps a fixed time before checking that something did *not* happen; it polls
//! for what proves the outcome, bounded by a timeout that is only a failure's limit.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A port on loopback that nothing listens on now (the system's pick): bind it soon.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
    fn free_ports_are_on_loopback_and_bindable() {
        let port = free_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
