//! ServiceAccount tokens for pods' projected volumes, as the kubelet's token manager keeps
//! them: each `serviceAccountToken` source of a pod's volume is a token bound to that pod,
//! asked of the cloud (a `query` over EdgeHub's connection, which cloudcore answers with a
//! TokenRequest for the pod's account bound to the pod), kept in memory only, and asked again
//! at 80% of its lifetime or after 24 hours, whichever comes first (the kubelet's rule).
//!
//! [`TokenManager::get`] is what volume rendering calls: it returns the token held, or `None`
//! and has one fetched; when a token arrives or is renewed, Edged is woken
//! (`objects_changed`), renders the pod's volumes again and swaps the new file in atomically
//! ([`super::volumes::write_atomically`]). A failed fetch keeps the token held (it stays valid
//! until it expires) and is tried again with backoff. The refresh clock is the edge's own
//! monotonic clock, counted from when the token arrived for the lifetime the cloud granted, so
//! a skewed edge clock does not matter. Tokens of pods no longer on the edge are dropped
//! ([`TokenManager::retain`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest a token is used before it is renewed (the kubelet's `maxTTL`).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the cloud may take to answer before the fetch counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff after failed fetches ([`crate::edgehub::backoff`]): from the first, doubling, to the
/// last, each delay jittered in its upper half.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A token a pod's volume needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid: the token is bound to it.
    pub pod_uid: String,
    /// The pod's ServiceAccount.
    pub account: String,
    /// The audience asked (`""`: the API server's).
    pub audience: String,
    /// The lifetime asked, in seconds.
    pub expiration_seconds: i64,
}

impl TokenKey {
    /// The `authentication.k8s.io/v1` TokenRequest asked of the cloud.
    pub fn request(&self) -> Value {
        let audiences: Vec<&str> = if self.audience.is_empty() {
            Vec::new()
        } else {
            vec![self.audience.as_str()]
        };
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": audiences, "expirationSeconds": self.expiration_seconds,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                           "name": self.pod, "uid": self.pod_uid}}})
    }
}

/// A question for the cloud, which EdgeHub sends and answers through `reply`: the
/// TokenRequest as the cloud answered it, or why not.
#[derive(Debug)]
pub struct TokenQuery {
    /// The account's namespace.
    pub namespace: String,
    /// The account.
    pub account: String,
    /// The TokenRequest.
    pub request: Value,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Value, String>>,
}

#[derive(Debug)]
struct Held {
    token: String,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Debug)]
struct Entry {
    held: Option<Held>,
    fetching: bool,
    /// The delays before fetching again after failures; a new one after a success.
    retry: backon::ExponentialBackoff,
    next_attempt: Instant,
}

impl Entry {
    /// When to fetch next; `None` while a fetch is under way.
    fn due(&self) -> Option<Instant> {
        if self.fetching {
            return None;
        }
        Some(match &self.held {
            Some(h) => h.refresh_at.max(self.next_attempt),
            None => self.next_attempt,
        })
    }
}

/// The tokens the pods on this edge hold.
#[derive(Debug)]
pub struct TokenManager {
    entries: Mutex<HashMap<TokenKey, Entry>>,
    /// Counts the tokens received: what tells Edged a volume may need writing again.
    received: std::sync::atomic::AtomicU64,
    queries: mpsc::Sender<TokenQuery>,
    wake: Notify,
    /// Told at each token received; Edged waits on it ([`TokenManager::changed`]).
    changed: Notify,
}

/// When a token granted for `granted` seconds, received at `now`, is renewed: at 80% of its
/// lifetime, or after [`MAX_TTL`].
pub fn refresh_at(now: Instant, granted: Duration) -> Instant {
    now + granted.mul_f64(0.8).min(MAX_TTL)
}

impl TokenManager {
    /// A manager asking the cloud through `queries`.
    pub fn new(queries: mpsc::Sender<TokenQuery>) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            received: std::sync::atomic::AtomicU64::new(0),
            queries,
            wake: Notify::new(),
            changed: Notify::new(),
        })
    }

    /// Resolves when a token was received since the last call returned (one waiter: Edged).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many tokens have been received: it changes whenever a volume's token may have.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token for `key`, if one is held and unexpired; otherwise `None`, and one is asked
    /// for.
    pub fn get(&self, key: &TokenKey) -> Option<String> {
        let now = Instant::now();
        let mut entries = self.entries();
        match entries.get(key) {
            Some(entry) => entry
                .held
                .as_ref()
                .filter(|h| h.expires_at > now)
                .map(|h| h.token.clone()),
            None => {
                entries.insert(
                    key.clone(),
                    Entry {
                        held: None,
                        fetching: false,
                        retry: crate::edgehub::backoff(BACKOFF_MIN, BACKOFF_MAX),
                        next_attempt: now,
                    },
                );
                drop(entries);
                self.wake.notify_one();
                None
            }
        }
    }

    /// Forgets the tokens of pods not in `pod_uids`.
    pub fn retain(&self, pod_uids: &HashSet<String>) {
        self.entries().retain(|k, _| pod_uids.contains(&k.pod_uid));
    }

    /// Fetches and renews tokens until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut start = Vec::new();
            for (key, entry) in self.entries().iter_mut() {
                let Some(at) = entry.due() else {
                    continue;
                };
                if at <= now {
                    entry.fetching = true;
                    start.push(key.clone());
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            for key in start {
                let (manager, done) = (self.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let outcome = manager.fetch(&key).await;
                    let _ = done.send((key, outcome));
                });
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = sleep => {}
                Some((key, outcome)) = done_rx.recv() => self.fetched(key, outcome),
            }
        }
    }

    /// Asks the cloud for `key`'s token: the token and the lifetime granted.
    async fn fetch(&self, key: &TokenKey) -> Result<(String, Duration), String> {
        let (reply, answer) = oneshot::channel();
        let query = TokenQuery {
            namespace: key.namespace.clone(),
            account: key.account.clone(),
            request: key.request(),
            reply,
        };
        let asked = async {
            self.queries
                .send(query)
                .await
                .map_err(|_| "EdgeHub is not running".to_owned())?;
            answer
                .await
                .map_err(|_| "the connection to the cloud ended before the answer".to_owned())?
        };
        let response = tokio::time::timeout(ANSWER_TIMEOUT, asked)
            .await
            .map_err(|_| "no answer from the cloud".to_owned())??;
        let token = response
            .pointer("/status/token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("the answer holds no token")?;
        let granted = response
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(key.expiration_seconds);
        let granted = Duration::from_secs(u64::try_from(granted).unwrap_or(0).max(1));
        Ok((token.to_owned(), granted))
    }

    fn fetched(&self, key: TokenKey, outcome: Result<(String, Duration), String>) {
        let now = Instant::now();
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&key) else {
            return; // the pod went meanwhile
        };
        entry.fetching = false;
        match outcome {
            Ok((token, granted)) => {
                tracing::debug!(pod = %format!("{}/{}", key.namespace, key.pod), account = key.account, ?granted, "ServiceAccount token received");
                entry.held = Some(Held {
                    token,
                    refresh_at: refresh_at(now, granted),
                    expires_at: now + granted,
                });
                entry.retry = crate::edgehub::backoff(BACKOFF_MIN, BACKOFF_MAX);
                entry.next_attempt = now;
                drop(entries);
                self.received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.changed.notify_one();
            }
            Err(error) => {
                let delay = entry.retry.next().unwrap_or(BACKOFF_MAX);
                entry.next_attempt = now + delay;
                tracing::warn!(pod = %format!("{}/{}", key.namespace, key.pod), account = key.account, error, retry_in = ?delay, "cannot get a ServiceAccount token");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expiration_seconds: i64) -> TokenKey {
        TokenKey {
            namespace: "apps".into(),
            pod: "web".into(),
            pod_uid: "u1".into(),
            account: "default".into(),
            audience: String::new(),
            expiration_seconds,
        }
    }

    /// A cloud that answers every query with a numbered token for the lifetime asked.
    fn fake_cloud(mut queries: mpsc::Receiver<TokenQuery>) -> Arc<Mutex<Vec<Instant>>> {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        tokio::spawn(async move {
            while let Some(query) = queries.recv().await {
                let n = {
                    let mut asked = seen.lock().expect("lock");
                    asked.push(Instant::now());
                    asked.len()
                };
                assert_eq!(query.request["spec"]["boundObjectRef"]["uid"], "u1");
                let mut answer = query.request.clone();
                answer["status"] = json!({"token": format!("token-{n}")});
                let _ = query.reply.send(Ok(answer));
            }
        });
        asked
    }

    /// Waits (in paused time, up to a few days) until `want` is the token held: Edged's wake-up
    /// comes with each token received.
    async fn until_token(manager: &TokenManager, key: &TokenKey, want: &str) {
        let held = async {
            while manager.get(key).as_deref() != Some(want) {
                manager.changed().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3 * 24 * 3600), held)
            .await
            .unwrap_or_else(|_| panic!("no {want}"));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_renewed_at_80_percent_of_their_life() {
        let (tx, rx) = mpsc::channel(8);
        let manager = TokenManager::new(tx);
        let asked = fake_cloud(rx);
        let shutdown = CancellationToken::new();
        tokio::spawn(manager.clone().run(shutdown.clone()));
        let key = key(3607);
        let start = Instant::now();
        assert_eq!(manager.get(&key), None, "asked for, not held yet");
        until_token(&manager, &key, "token-1").await;
        until_token(&manager, &key, "token-2").await;
        let times = asked.lock().expect("lock").clone();
        let renewed = times[1] - times[0];
        assert!(
            renewed >= Duration::from_millis(2_885_600) && renewed < Duration::from_secs(2_887),
            "renewed after {renewed:?}"
        );
        assert!(times[0] - start < Duration::from_secs(1));
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn long_tokens_are_renewed_after_a_day_and_failures_back_off() {
        let (tx, mut rx) = mpsc::channel::<TokenQuery>(8);
        let manager = TokenManager::new(tx);
        let shutdown = CancellationToken::new();
        tokio::spawn(manager.clone().run(shutdown.clone()));
        let key = key(7 * 24 * 3600);
        assert_eq!(manager.get(&key), None);
        // The first answer is a refusal: the next question comes half a second to a second
        // later.
        let first = rx.recv().await.expect("asked");
        let _ = first.reply.send(Err("Forbidden".into()));
        let refused = Instant::now();
        let second = rx.recv().await.expect("asked again");
        let waited = Instant::now() - refused;
        assert!(
            waited >= BACKOFF_MIN / 2 && waited <= BACKOFF_MIN,
            "{waited:?}"
        );
        let mut answer = second.request.clone();
        answer["status"] = json!({"token": "t"});
        let _ = second.reply.send(Ok(answer));
        let granted = Instant::now();
        until_token(&manager, &key, "t").await;
        let third = rx.recv().await.expect("renewed");
        let after = Instant::now() - granted;
        assert!(
            after >= MAX_TTL && after < MAX_TTL + Duration::from_secs(1),
            "{after:?}"
        );
        drop(third);
        // A pod gone takes its tokens with it.
        manager.retain(&HashSet::new());
        assert!(manager.entries().is_empty());
        shutdown.cancel();
    }
}
