//! Who may use the embedded MQTT broker and for what: the broker's authentication hook and its
//! authorization hook (a Wedge patch to rumqttd, third_party/rumqttd/WEDGE-PATCH.md) both ask
//! the [`BusGuard`].
//!
//! - **EventBus** logs in with a password made at start and never written anywhere; its client
//!   id (`wedge-edge-<node>`) is its own: no other login may take it.
//! - **Users** (mappers, devices, container apps) are those of a mosquitto `password_file`
//!   ([`passwords`](super::passwords)), each limited by a mosquitto `acl_file`
//!   ([`acl`](super::acl)) when one is given.
//! - **Pods' logins** come from the Secrets pods name ([`logins`](super::logins)), each limited
//!   to its pod's grants; the `acl_file`'s `deny` rules limit them too.
//! - **Anonymous** clients are refused unless the operator allows them (KubeEdge mappers that
//!   cannot log in); the `acl_file`'s rules before its first `user` line then limit them.
//!
//! Of the broker's connection slots, [`RESERVED_SLOTS`] are kept for EventBus and users, so that
//! anonymous clients holding every other slot lock no one out. Refusals are counted
//! ([`Refusals`]) and logged once per interval with their counts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::acl::{Acl, Action};
use super::logins::PodLogins;
use super::passwords::{self, Passwords};

/// Connection slots only EventBus and users of the password file may take.
pub const RESERVED_SLOTS: usize = 64;
/// The longest a repeated warning waits before its count is logged.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// EventBus's username on the embedded broker.
pub const EVENTBUS_USER: &str = "wedge-eventbus";

/// The operator's choices about who may use the bus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusAuthConfig {
    /// The embedded broker's users (mosquitto `password_file`).
    pub password_file: Option<PathBuf>,
    /// What each may do (mosquitto `acl_file`); without it, every user may do anything.
    pub acl_file: Option<PathBuf>,
    /// Let clients without a login in (mosquitto's `allow_anonymous`).
    pub allow_anonymous: bool,
    /// EventBus's own login to an external broker: a file holding `username:password`.
    pub credentials_file: Option<PathBuf>,
}

/// Why the bus's security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file does not parse.
    #[error("MQTT password file {path}: {source}")]
    Passwords {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: passwords::PasswordError,
    },
    /// The ACL file does not parse.
    #[error("MQTT ACL file {path}: {source}")]
    Acl {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: super::acl::AclError,
    },
    /// The credentials file is not `username:password`.
    #[error("MQTT credentials file {0}: expected one line, username:password")]
    Credentials(PathBuf),
    /// A setting that only the embedded broker reads was given with an external broker.
    #[error("{0} applies to the embedded broker; configure the external broker itself")]
    NotEmbedded(&'static str),
    /// EventBus's login was given for the embedded broker.
    #[error(
        "--mqtt-credentials-file is EventBus's login to an external broker (--mqtt-broker); the embedded broker makes its own"
    )]
    CredentialsWithoutBroker,
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads EventBus's login to an external broker.
pub fn read_credentials(path: &Path) -> Result<(String, String), AuthError> {
    let text = read(path)?;
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    match line.trim_end().split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_owned(), p.to_owned())),
        _ => Err(AuthError::Credentials(path.to_owned())),
    }
}

/// Why a client or a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// A client without a login, while anonymous access is off.
    Anonymous,
    /// A wrong username or password.
    BadLogin,
    /// A login for EventBus's client id (or an empty one) by someone else.
    ClientId,
    /// A publish the ACL does not allow.
    Publish,
    /// A subscription the ACL does not allow.
    Subscribe,
    /// A connection over the slots left to anonymous clients.
    Full,
    /// A KubeEdge twin or state request DeviceTwin refused.
    TwinRequest,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::Anonymous,
        Refusal::BadLogin,
        Refusal::ClientId,
        Refusal::Publish,
        Refusal::Subscribe,
        Refusal::Full,
        Refusal::TwinRequest,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Anonymous => "anonymous",
            Refusal::BadLogin => "bad_login",
            Refusal::ClientId => "client_id",
            Refusal::Publish => "publish_acl",
            Refusal::Subscribe => "subscribe_acl",
            Refusal::Full => "connections_full",
            Refusal::TwinRequest => "twin_request",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Anonymous => "MQTT clients without a login refused (anonymous access is off)",
            Refusal::BadLogin => "MQTT logins refused: wrong username or password",
            Refusal::ClientId => "MQTT logins refused: the client id is EventBus's or empty",
            Refusal::Publish => "MQTT publishes refused by the ACL",
            Refusal::Subscribe => "MQTT subscriptions refused by the ACL",
            Refusal::Full => {
                "MQTT connections refused: the slots left to anonymous clients are taken"
            }
            Refusal::TwinRequest => "KubeEdge device requests refused",
        }
    }
}

/// Refusal counts: totals for metrics, and a warning per reason at most once per interval that
/// says how many were refused since the last one.
#[derive(Debug)]
pub struct Refusals {
    totals: [AtomicU64; 7],
    pending: Mutex<HashMap<Refusal, Pending>>,
    interval: Duration,
}

#[derive(Debug)]
struct Pending {
    count: u64,
    last_logged: Option<Instant>,
    example: String,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new(WARN_INTERVAL)
    }
}

impl Refusals {
    /// Counts that log at most once per `interval` per reason.
    pub fn new(interval: Duration) -> Self {
        Self {
            totals: Default::default(),
            pending: Mutex::default(),
            interval,
        }
    }

    /// Counts a refusal; `example` (a client id, a topic) goes into the next warning.
    pub fn note(&self, why: Refusal, example: impl FnOnce() -> String) {
        self.totals[why as usize].fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = pending.entry(why).or_insert(Pending {
            count: 0,
            last_logged: None,
            example: String::new(),
        });
        p.count += 1;
        if p.count == 1 {
            p.example = example();
        }
        let due = p.last_logged.is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            log(why, p);
        }
    }

    /// Logs the counts whose interval has passed (the EventBus driver calls it now and then, so
    /// that the tail of a burst is told too).
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (why, p) in pending.iter_mut() {
            if p.count > 0 && p.last_logged.is_none_or(|t| t.elapsed() >= self.interval) {
                log(*why, p);
            }
        }
    }

    /// How many were refused for `why` since start.
    pub fn total(&self, why: Refusal) -> u64 {
        self.totals[why as usize].load(Ordering::Relaxed)
    }

    /// The totals in Prometheus's text format.
    pub fn encode(&self) -> String {
        let mut out = String::from(
            "# HELP wedge_edge_mqtt_refused_total MQTT clients, messages and device requests the edge refused, by reason.\n\
             # TYPE wedge_edge_mqtt_refused_total counter\n",
        );
        for why in Refusal::ALL {
            out.push_str(&format!(
                "wedge_edge_mqtt_refused_total{{reason=\"{}\"}} {}\n",
                why.label(),
                self.total(why)
            ));
        }
        out
    }
}

fn log(why: Refusal, p: &mut Pending) {
    tracing::warn!(
        refused = p.count,
        reason = why.label(),
        example = %p.example,
        "{}",
        why.message()
    );
    p.count = 0;
    p.last_logged = Some(Instant::now());
}

/// Who a connected client is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    EventBus,
    User(String),
    /// A pod's login (its username).
    Pod(String),
    Anonymous,
}

/// The embedded broker's authentication and authorization.
pub struct BusGuard {
    eventbus_client_id: String,
    eventbus_password: String,
    passwords: Passwords,
    acl: Option<Acl>,
    allow_anonymous: bool,
    /// Who logged in with each client id (the broker keeps one connection per id).
    sessions: Mutex<HashMap<String, Identity>>,
    /// The logins pods bring.
    logins: std::sync::Arc<PodLogins>,
    refusals: std::sync::Arc<Refusals>,
}

impl std::fmt::Debug for BusGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never EventBus's password.
        f.debug_struct("BusGuard")
            .field("eventbus_client_id", &self.eventbus_client_id)
            .field("passwords", &self.passwords)
            .field("acl", &self.acl.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

impl BusGuard {
    /// A guard for `node`'s bus, reading the operator's files.
    pub fn load(
        node: &str,
        config: &BusAuthConfig,
        refusals: std::sync::Arc<Refusals>,
    ) -> Result<Self, AuthError> {
        let passwords = match &config.password_file {
            Some(path) => {
                Passwords::parse(&read(path)?).map_err(|source| AuthError::Passwords {
                    path: path.clone(),
                    source,
                })?
            }
            None => Passwords::default(),
        };
        let acl = match &config.acl_file {
            Some(path) => Some(Acl::parse(&read(path)?).map_err(|source| AuthError::Acl {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Self::new(
            node,
            passwords,
            acl,
            config.allow_anonymous,
            refusals,
        ))
    }

    /// A guard from parsed parts.
    pub fn new(
        node: &str,
        passwords: Passwords,
        acl: Option<Acl>,
        allow_anonymous: bool,
        refusals: std::sync::Arc<Refusals>,
    ) -> Self {
        let logins = std::sync::Arc::new(PodLogins::embedded(passwords.users().map(str::to_owned)));
        Self {
            eventbus_client_id: eventbus_client_id(node),
            eventbus_password: passwords::random_password(),
            passwords,
            acl,
            allow_anonymous,
            sessions: Mutex::default(),
            logins,
            refusals,
        }
    }

    /// The logins pods bring, which Edged keeps up to date.
    pub fn logins(&self) -> &std::sync::Arc<PodLogins> {
        &self.logins
    }

    /// EventBus's login.
    pub fn eventbus_login(&self) -> (&str, &str) {
        (EVENTBUS_USER, &self.eventbus_password)
    }

    /// One line for the start-up log: which mode the bus runs in.
    pub fn describe(&self) -> String {
        format!(
            "{} user(s) from the password file, {}, anonymous clients {}; pods' own logins from their Secrets (mqtt.wedge.io/login), within their grants",
            self.passwords.len(),
            if self.acl.is_some() {
                "limited by the ACL file"
            } else {
                "no ACL file (users may do anything)"
            },
            if self.allow_anonymous {
                if self.acl.is_some() {
                    "allowed within the ACL file's anonymous rules"
                } else {
                    "ALLOWED with full access (--mqtt-allow-anonymous)"
                }
            } else {
                "refused"
            }
        )
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Identity>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker's authentication hook: whether this CONNECT may proceed.
    pub fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        let identity = if username == EVENTBUS_USER {
            let ok = same_secret(password.as_bytes(), self.eventbus_password.as_bytes());
            if !ok {
                self.refusals
                    .note(Refusal::BadLogin, || format!("{client_id} as {username}"));
                return false;
            }
            Identity::EventBus
        } else if client_id.is_empty() || client_id == self.eventbus_client_id {
            self.refusals.note(Refusal::ClientId, || {
                format!("{client_id:?} as {username:?}")
            });
            return false;
        } else if username.is_empty() {
            if !self.allow_anonymous {
                self.refusals
                    .note(Refusal::Anonymous, || client_id.to_owned());
                return false;
            }
            Identity::Anonymous
        } else if self.passwords.contains(username) {
            if !self.passwords.verify(username, password) {
                self.refusals
                    .note(Refusal::BadLogin, || format!("{client_id} as {username}"));
                return false;
            }
            Identity::User(username.to_owned())
        } else if self.logins.verify(client_id, username, password) {
            Identity::Pod(username.to_owned())
        } else {
            self.refusals
                .note(Refusal::BadLogin, || format!("{client_id} as {username}"));
            return false;
        };
        if !matches!(identity, Identity::Pod(_)) {
            self.logins.forget_client(client_id);
        }
        let mut sessions = self.sessions();
        // Anonymous is what an unknown id is; keeping none for them bounds the map by the
        // users' ids.
        if identity == Identity::Anonymous {
            sessions.remove(client_id);
        } else {
            sessions.insert(client_id.to_owned(), identity);
        }
        true
    }

    /// The broker's authorization hook.
    pub fn authorize(&self, client_id: &str, access: rumqttd::Access<'_>) -> bool {
        let identity = self
            .sessions()
            .get(client_id)
            .cloned()
            .unwrap_or(Identity::Anonymous);
        let user = match &identity {
            Identity::EventBus => return true,
            Identity::User(u) | Identity::Pod(u) => Some(u.as_str()),
            Identity::Anonymous => None,
        };
        let (action, topic) = match access {
            rumqttd::Access::ReservedSlot => {
                if user.is_none() {
                    self.refusals.note(Refusal::Full, || client_id.to_owned());
                }
                return user.is_some();
            }
            rumqttd::Access::Publish(t) => (Action::Publish, t),
            rumqttd::Access::Subscribe(f) => (Action::Subscribe, f),
        };
        let allowed = match (&identity, &self.acl) {
            // A pod's login: its grants, and the ACL file's denies (deny wins).
            (Identity::Pod(u), acl) => {
                self.logins.allows(client_id, u, action, topic)
                    && !acl
                        .as_ref()
                        .is_some_and(|a| a.denies(user, client_id, action, topic))
            }
            (_, None) => return true,
            (_, Some(acl)) => acl.allows(user, client_id, action, topic),
        };
        if !allowed {
            let why = match action {
                Action::Publish => Refusal::Publish,
                Action::Subscribe => Refusal::Subscribe,
            };
            self.refusals.note(why, || {
                format!("{client_id} ({}) on {topic}", user.unwrap_or("anonymous"))
            });
        }
        allowed
    }
}

/// EventBus's client id on `node`'s bus.
pub fn eventbus_client_id(node: &str) -> String {
    format!("wedge-edge-{node}")
}

fn same_secret(a: &[u8], b: &[u8]) -> bool {
    // Lengths are not secret (every EventBus password has one length).
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use rumqttd::Access;

    fn guard(anonymous: bool, acl: Option<&str>) -> (BusGuard, Arc<Refusals>) {
        let passwords = Passwords::parse(&format!("thermo-mapper:{}\n", passwords::hash("m4pper")))
            .expect("parses");
        let acl = acl.map(|a| Acl::parse(a).expect("acl parses"));
        let refusals = Arc::new(Refusals::default());
        (
            BusGuard::new("edge-a", passwords, acl, anonymous, refusals.clone()),
            refusals,
        )
    }

    const ACL: &str = "topic read $hw/events/device/+/twin/update/delta\n\
                       user thermo-mapper\n\
                       topic write $hw/events/device/thermo-1/twin/update\n";

    #[test]
    fn eventbus_logs_in_with_its_password_and_its_id_is_its_own() {
        let (g, refusals) = guard(true, Some(ACL));
        let (user, password) = g.eventbus_login();
        let (user, password) = (user.to_owned(), password.to_owned());
        assert!(g.authenticate("wedge-edge-edge-a", &user, &password));
        assert!(g.authorize("wedge-edge-edge-a", Access::Publish("anything/at/all")));
        assert!(!g.authenticate("wedge-edge-edge-a", &user, "guess"));
        // Anonymous or a user: never with EventBus's id, even with anonymous access on.
        assert!(!g.authenticate("wedge-edge-edge-a", "", ""));
        assert!(!g.authenticate("wedge-edge-edge-a", "thermo-mapper", "m4pper"));
        assert_eq!(refusals.total(Refusal::ClientId), 2);
        assert_eq!(refusals.total(Refusal::BadLogin), 1);
    }

    #[test]
    fn anonymous_clients_are_refused_unless_allowed() {
        let (g, refusals) = guard(false, None);
        assert!(!g.authenticate("sensor", "", ""));
        assert_eq!(refusals.total(Refusal::Anonymous), 1);
        assert!(!g.authenticate("sensor", "thermo-mapper", "wrong"));
        assert!(g.authenticate("sensor", "thermo-mapper", "m4pper"));
        let (g, _) = guard(true, None);
        assert!(g.authenticate("sensor", "", ""));
        // Without an ACL file, anonymous (when allowed) may do anything, as before.
        assert!(g.authorize("sensor", Access::Publish("$hw/events/device/x/twin/update")));
    }

    #[test]
    fn the_acl_limits_users_and_anonymous_clients() {
        let (g, refusals) = guard(true, Some(ACL));
        assert!(g.authenticate("m", "thermo-mapper", "m4pper"));
        assert!(g.authorize(
            "m",
            Access::Publish("$hw/events/device/thermo-1/twin/update")
        ));
        assert!(!g.authorize("m", Access::Publish("$hw/events/device/fan-1/twin/update")));
        assert_eq!(refusals.total(Refusal::Publish), 1);
        assert!(g.authenticate("anon", "", ""));
        assert!(g.authorize(
            "anon",
            Access::Subscribe("$hw/events/device/thermo-1/twin/update/delta")
        ));
        assert!(!g.authorize("anon", Access::Subscribe("#")));
        assert_eq!(refusals.total(Refusal::Subscribe), 1);
        // An id taken over anonymously loses the user's rights.
        assert!(g.authenticate("m", "", ""));
        assert!(!g.authorize(
            "m",
            Access::Publish("$hw/events/device/thermo-1/twin/update")
        ));
    }

    #[test]
    fn a_pods_login_is_held_to_its_grants_and_the_acl_files_denies() {
        use base64::Engine;
        use wedge_core::grants::{PUBLISH, PodGrants};
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (g, refusals) = guard(false, Some("pattern deny telemetry/secret/#\n"));
        let annotations = [(PUBLISH.to_owned(), "telemetry/#".to_owned())].into();
        let wanted = |user: &str| super::super::logins::WantedLogin {
            uid: "u1".into(),
            pod: "default/app".into(),
            secret_name: "login".into(),
            secret: Some(crate::metamanager::held(
                wedge_core::protocol::ResourceKind::Secret,
                "default",
                "login",
                serde_json::json!({
                    "type": "kubernetes.io/basic-auth",
                    "data": {"username": b64(user), "password": b64("pw")},
                }),
            )),
            grants: PodGrants::from_annotations(&annotations).map_err(|e| e.to_string()),
        };
        g.logins().sync(vec![wanted("app")]);
        assert!(!g.authenticate("app-1", "app", "nope"));
        assert!(g.authenticate("app-1", "app", "pw"));
        assert!(g.authorize("app-1", Access::Publish("telemetry/t")));
        assert!(g.authorize("app-1", Access::ReservedSlot));
        assert!(!g.authorize("app-1", Access::Publish("commands/x")));
        assert!(!g.authorize("app-1", Access::Publish("telemetry/secret/x")));
        assert_eq!(refusals.total(Refusal::Publish), 2);
        // The pod goes: its client keeps no rights, and cannot log in again.
        g.logins().sync(Vec::new());
        assert!(!g.authorize("app-1", Access::Publish("telemetry/t")));
        assert!(!g.authenticate("app-1", "app", "pw"));
        // A password-file user's name is not a pod's to take.
        let out = g.logins().sync(vec![wanted("thermo-mapper")]);
        assert!(out[0].1.is_err());
        assert!(!g.authenticate("m", "thermo-mapper", "pw"));
        assert!(g.authenticate("m", "thermo-mapper", "m4pper"));
    }

    #[test]
    fn reserved_slots_are_for_eventbus_and_users() {
        let (g, refusals) = guard(true, None);
        let (user, password) = g.eventbus_login();
        let (user, password) = (user.to_owned(), password.to_owned());
        assert!(g.authenticate("wedge-edge-edge-a", &user, &password));
        assert!(g.authenticate("m", "thermo-mapper", "m4pper"));
        assert!(g.authenticate("anon", "", ""));
        assert!(g.authorize("wedge-edge-edge-a", Access::ReservedSlot));
        assert!(g.authorize("m", Access::ReservedSlot));
        assert!(!g.authorize("anon", Access::ReservedSlot));
        assert_eq!(refusals.total(Refusal::Full), 1);
    }

    #[test]
    fn warnings_are_counted_and_rate_limited() {
        let refusals = Refusals::new(Duration::from_secs(3600));
        for _ in 0..10_000 {
            refusals.note(Refusal::Publish, || "x".into());
        }
        assert_eq!(refusals.total(Refusal::Publish), 10_000);
        let pending = refusals.pending.lock().expect("lock");
        // The first was logged at once; the other 9,999 wait for the interval's line.
        assert_eq!(pending[&Refusal::Publish].count, 9_999);
        drop(pending);
        let text = refusals.encode();
        assert!(
            text.contains("wedge_edge_mqtt_refused_total{reason=\"publish_acl\"} 10000"),
            "{text}"
        );
    }

    #[test]
    fn credentials_files_hold_one_login() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c");
        std::fs::write(&path, "\nedge:pa:ss\n").expect("write");
        assert_eq!(
            read_credentials(&path).expect("reads"),
            ("edge".into(), "pa:ss".into())
        );
        std::fs::write(&path, "nopassword\n").expect("write");
        assert!(matches!(
            read_credentials(&path),
            Err(AuthError::Credentials(_))
        ));
    }
}
