//! MQTT logins that pods bring: a pod names a `kubernetes.io/basic-auth` Secret in its
//! namespace with the annotation `mqtt.wedge.io/login`, and while the pod is on this edge the
//! embedded broker accepts that Secret's `username` and `password`, limited to the pod's grants
//! ([`GrantAcl`]). A mapper or a container app that speaks MQTT itself gets its login the way it
//! gets any Secret, and needs no operator editing the broker's password file.
//!
//! Edged finds what each pod wants ([`WantedLogin`]) at every reconcile and hands the whole set
//! to [`PodLogins::sync`]; the answer per pod becomes its `mqtt.wedge.io/Login` condition. A
//! login that cannot be had (the Secret missing or of another type, a username taken by the
//! password file, EventBus or another pod) is logged once when its outcome changes, not at every
//! reconcile. A login that goes (the pod deleted or finished, its Secret or grants changed) stops
//! working at once: the broker asks [`PodLogins::allows`] before every publish and subscription,
//! and the clients logged in with it are dropped ([`PodLogins::set_kicker`]).
//!
//! Only an HMAC of each password (under a key made at start) is kept: the Secret's bytes are
//! dropped once the sync has read them, and logins compare tags in constant time.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};

use k8s_openapi::api::core::v1::Secret;
use ring::hmac;
use wedge_core::grants::{DeviceAccess, PodGrants};
use wedge_core::topic;

use super::acl::Action;
use super::auth::EVENTBUS_USER;

/// The pod condition that tells whether the pod's MQTT login is accepted.
pub const CONDITION: &str = "mqtt.wedge.io/Login";
/// The Secret type a login must have (Kubernetes' own, with keys `username` and `password`).
pub const BASIC_AUTH: &str = "kubernetes.io/basic-auth";

/// A pod's grants as MQTT rules: what its login may publish and subscribe to.
///
/// - `messaging.wedge.io/publish` filters: publish on the topics they match;
/// - `messaging.wedge.io/subscribe` filters: subscribe within them;
/// - `devices.wedge.io/read` of a device: subscribe within its KubeEdge topics
///   (`$hw/events/device/<id>/#`, `$ke/events/device/<id>/#`) and ask for its twin
///   (publish `$hw/events/device/<id>/twin/get`);
/// - `devices.wedge.io/write`: also what a mapper of the device publishes, its reports and
///   desired values (`twin/update`) and its state (`state/update`). MQTT cannot tell a report
///   from a desired value, so both come with write, as both come to a mapper.
///
/// The node's membership topics are not granted: they list every device of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantAcl {
    read: Vec<String>,
    write: Vec<String>,
}

impl GrantAcl {
    /// The rules `grants` give.
    pub fn from_grants(grants: &PodGrants) -> Self {
        let mut read = grants.subscribe.clone();
        let mut write = grants.publish.clone();
        for (device, access) in &grants.devices {
            // A name with levels or wildcards would widen the rules; Kubernetes names have none.
            if device.is_empty() || device.contains(['/', '+', '#']) {
                continue;
            }
            read.push(format!("$hw/events/device/{device}/#"));
            read.push(format!("$ke/events/device/{device}/#"));
            write.push(format!("$hw/events/device/{device}/twin/get"));
            if *access == DeviceAccess::ReadWrite {
                write.push(format!("$hw/events/device/{device}/twin/update"));
                write.push(format!("$hw/events/device/{device}/state/update"));
            }
        }
        Self { read, write }
    }

    /// Whether the rules allow `action` on `topic` (a filter, for subscriptions: every topic it
    /// can match must be readable).
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        match action {
            Action::Publish => self.write.iter().any(|f| topic::matches(f, topic)),
            Action::Subscribe => self.read.iter().any(|f| topic::filter_covers(f, topic)),
        }
    }
}

/// What one pod on this edge asks for: Edged's view, handed to [`PodLogins::sync`].
#[derive(Debug, Clone)]
pub struct WantedLogin {
    /// The pod's uid.
    pub uid: String,
    /// `namespace/name`, for messages.
    pub pod: String,
    /// The Secret the annotation names.
    pub secret_name: String,
    /// That Secret as MetaManager holds it, if it does.
    pub secret: Option<std::sync::Arc<crate::metamanager::Object>>,
    /// The pod's grants, or why its annotations do not parse.
    pub grants: Result<PodGrants, String>,
}

/// Why a pod's login is not accepted; its [`LoginError::reason`] is the condition's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The Secret is not on this edge.
    #[error("Secret {0:?} (mqtt.wedge.io/login) not found on this edge")]
    SecretNotFound(String),
    /// The Secret does not parse.
    #[error("Secret {name:?} (mqtt.wedge.io/login) does not parse: {reason}")]
    BadSecret {
        /// The Secret.
        name: String,
        /// Why.
        reason: String,
    },
    /// The Secret is not a `kubernetes.io/basic-auth` one.
    #[error(
        "Secret {name:?} (mqtt.wedge.io/login) is of type {found:?}; an MQTT login is a kubernetes.io/basic-auth Secret with keys username and password"
    )]
    WrongType {
        /// The Secret.
        name: String,
        /// Its type.
        found: String,
    },
    /// A key is missing or empty.
    #[error("Secret {name:?} (mqtt.wedge.io/login) has no {key:?}")]
    MissingKey {
        /// The Secret.
        name: String,
        /// `username` or `password`.
        key: &'static str,
    },
    /// The username is not text.
    #[error("Secret {0:?} (mqtt.wedge.io/login): the username is not UTF-8 text")]
    NotText(String),
    /// Someone else has the username.
    #[error("MQTT username {username:?} is taken by {owner}; the login is refused")]
    UsernameTaken {
        /// The username.
        username: String,
        /// Who has it.
        owner: String,
    },
    /// The pod's grant annotations do not parse.
    #[error("the pod's grants do not parse: {0}")]
    Grants(String),
    /// The edge's broker is the operator's.
    #[error(
        "this edge uses an external MQTT broker (--mqtt-broker): logins from Secrets apply to the embedded broker only; give the login to the external broker"
    )]
    ExternalBroker,
}

impl LoginError {
    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            LoginError::SecretNotFound(_) => "SecretNotFound",
            LoginError::BadSecret { .. }
            | LoginError::MissingKey { .. }
            | LoginError::NotText(_) => "InvalidSecret",
            LoginError::WrongType { .. } => "WrongSecretType",
            LoginError::UsernameTaken { .. } => "UsernameTaken",
            LoginError::Grants(_) => "InvalidGrants",
            LoginError::ExternalBroker => "ExternalBroker",
        }
    }
}

/// What a sync says of one pod.
pub type Outcome = Result<(), LoginError>;

/// The logins pods bring, and who is logged in with each.
pub struct PodLogins {
    /// The password file's users (None: the broker is external, no logins are taken).
    reserved: Option<HashSet<String>>,
    key: hmac::Key,
    state: Mutex<State>,
    kicker: OnceLock<Kicker>,
}

/// Drops a client's connection by its id; false if it could not be asked.
type Kicker = Box<dyn Fn(&str) -> bool + Send + Sync>;

impl std::fmt::Debug for PodLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodLogins")
            .field("logins", &self.lock().by_user.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    by_user: HashMap<String, Entry>,
    /// The last outcome per pod uid, to log changes only.
    outcomes: HashMap<String, Outcome>,
}

struct Entry {
    uid: String,
    pod: String,
    tag: Vec<u8>,
    acl: GrantAcl,
    /// The client ids logged in with it now.
    clients: HashSet<String>,
}

/// A login read from a Secret, before usernames are checked against each other.
struct Candidate {
    uid: String,
    pod: String,
    username: String,
    tag: Vec<u8>,
    acl: GrantAcl,
}

impl PodLogins {
    /// Logins for the embedded broker, whose password file names `file_users` (their names,
    /// and EventBus's, are no pod's to take).
    pub fn embedded(file_users: impl IntoIterator<Item = String>) -> Self {
        Self::new(Some(file_users.into_iter().collect()))
    }

    /// No logins: the broker is the operator's, and every pod asking for one is told so.
    pub fn external() -> Self {
        Self::new(None)
    }

    fn new(reserved: Option<HashSet<String>>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        // Key generation fails only without a system random source; a zero key still keeps
        // plaintext out of memory.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]));
        Self {
            reserved,
            key,
            state: Mutex::default(),
            kicker: OnceLock::new(),
        }
    }

    /// Drops the connection of a client id when its login goes (the embedded broker's
    /// kicker); set once, when the broker starts.
    pub fn set_kicker(&self, kick: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let _ = self.kicker.set(Box::new(kick));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many logins are accepted now.
    pub fn len(&self) -> usize {
        self.lock().by_user.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the accepted logins those of `wanted` (every pod on the edge that names one) and
    /// answers for each pod. Logins that went or changed lose their sessions.
    pub fn sync(&self, wanted: Vec<WantedLogin>) -> Vec<(String, Outcome)> {
        let mut outcomes: Vec<(String, Outcome)> = Vec::with_capacity(wanted.len());
        let mut candidates = Vec::new();
        for w in wanted {
            match self.candidate(w.clone()) {
                Ok(c) => candidates.push(c),
                Err(e) => outcomes.push((w.uid, Err(e))),
            }
        }
        let kicked = {
            let mut state = self.lock();
            // A username stays with the pod that holds it; the others are taken in uid order.
            candidates.sort_by_key(|c| {
                let holds = state
                    .by_user
                    .get(&c.username)
                    .is_some_and(|e| e.uid == c.uid);
                (!holds, c.uid.clone())
            });
            let mut next: HashMap<String, Entry> = HashMap::new();
            for c in candidates {
                if let Some(holder) = next.get(&c.username) {
                    let owner = format!("pod {}'s login", holder.pod);
                    outcomes.push((
                        c.uid,
                        Err(LoginError::UsernameTaken {
                            username: c.username,
                            owner,
                        }),
                    ));
                    continue;
                }
                // Sessions survive a sync only when nothing of the login changed.
                let clients = match state.by_user.remove(&c.username) {
                    Some(old) if old.uid == c.uid && old.tag == c.tag && old.acl == c.acl => {
                        old.clients
                    }
                    Some(old) => {
                        state.by_user.insert(c.username.clone(), old);
                        HashSet::new()
                    }
                    None => HashSet::new(),
                };
                outcomes.push((c.uid.clone(), Ok(())));
                next.insert(
                    c.username,
                    Entry {
                        uid: c.uid,
                        pod: c.pod,
                        tag: c.tag,
                        acl: c.acl,
                        clients,
                    },
                );
            }
            // What is left of the old logins went or changed.
            let gone = std::mem::replace(&mut state.by_user, next);
            let kicked: Vec<(String, String)> = gone
                .into_iter()
                .flat_map(|(user, e)| e.clients.into_iter().map(move |c| (user.clone(), c)))
                .collect();
            let previous = std::mem::take(&mut state.outcomes);
            for (uid, outcome) in &outcomes {
                if previous.get(uid) != Some(outcome) {
                    match outcome {
                        Ok(()) => tracing::info!(uid, "a pod's MQTT login is accepted"),
                        Err(error) => tracing::warn!(uid, %error, "a pod's MQTT login is refused"),
                    }
                }
                state.outcomes.insert(uid.clone(), outcome.clone());
            }
            kicked
        };
        for (user, client) in kicked {
            let dropped = self.kicker.get().is_some_and(|kick| kick(&client));
            tracing::info!(
                user,
                client,
                dropped,
                "an MQTT login went or changed: its session is closed"
            );
        }
        outcomes
    }

    /// Reads `w`'s Secret into a login, or says why not.
    fn candidate(&self, w: WantedLogin) -> Result<Candidate, LoginError> {
        let Some(reserved) = &self.reserved else {
            return Err(LoginError::ExternalBroker);
        };
        let grants = w.grants.map_err(LoginError::Grants)?;
        let name = w.secret_name;
        let object = w
            .secret
            .ok_or_else(|| LoginError::SecretNotFound(name.clone()))?;
        let secret = object
            .typed::<Secret>()
            .map_err(|reason| LoginError::BadSecret {
                name: name.clone(),
                reason,
            })?;
        let kind = secret.type_.as_deref().unwrap_or("Opaque");
        if kind != BASIC_AUTH {
            return Err(LoginError::WrongType {
                name,
                found: kind.to_owned(),
            });
        }
        // Read from the Secret MetaManager keeps parsed, not a copy of its data.
        let value = |key| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .filter(|v| !v.0.is_empty())
                .ok_or_else(|| LoginError::MissingKey {
                    name: name.clone(),
                    key,
                })
        };
        let username = String::from_utf8(value("username")?.0.clone())
            .map_err(|_| LoginError::NotText(name.clone()))?;
        let password = value("password")?;
        if username == EVENTBUS_USER || reserved.contains(&username) {
            let owner = if username == EVENTBUS_USER {
                "EventBus"
            } else {
                "a user of the MQTT password file"
            };
            return Err(LoginError::UsernameTaken {
                username,
                owner: owner.to_owned(),
            });
        }
        let tag = hmac::sign(&self.key, &password.0).as_ref().to_vec();
        Ok(Candidate {
            uid: w.uid,
            pod: w.pod,
            username,
            tag,
            acl: GrantAcl::from_grants(&grants),
        })
    }

    /// Whether `username` is a pod's login; such names are checked here, not in the password
    /// file.
    pub fn knows(&self, username: &str) -> bool {
        self.lock().by_user.contains_key(username)
    }

    /// The broker's login check for a pod login: records `client_id` as logged in with it.
    pub fn verify(&self, client_id: &str, username: &str, password: &str) -> bool {
        let mut state = self.lock();
        // Constant time: ring compares the tags so.
        let valid = state
            .by_user
            .get(username)
            .is_some_and(|e| hmac::verify(&self.key, password.as_bytes(), &e.tag).is_ok());
        if !valid {
            return false;
        }
        // The id is this login's now: another login going must not drop it.
        for (user, entry) in state.by_user.iter_mut() {
            if user == username {
                entry.clients.insert(client_id.to_owned());
            } else {
                entry.clients.remove(client_id);
            }
        }
        true
    }

    /// Forgets `client_id` (it logged in again as someone else, or left).
    pub fn forget_client(&self, client_id: &str) {
        for entry in self.lock().by_user.values_mut() {
            entry.clients.remove(client_id);
        }
    }

    /// Whether `client_id`, logged in as `username`, may still do `action` on `topic`: the
    /// login must still be there, with this client logged in with it since it last changed.
    pub fn allows(&self, client_id: &str, username: &str, action: Action, topic: &str) -> bool {
        self.lock()
            .by_user
            .get(username)
            .is_some_and(|e| e.clients.contains(client_id) && e.acl.allows(action, topic))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use wedge_core::protocol::ResourceKind;

    use super::*;

    fn grants(pairs: &[(&str, &str)]) -> PodGrants {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PodGrants::from_annotations(&annotations).expect("grants parse")
    }

    fn basic_auth(user: &str, password: &str) -> serde_json::Value {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        serde_json::json!({
            "metadata": {"name": "login", "namespace": "default"},
            "type": BASIC_AUTH,
            "data": {"username": b64(user), "password": b64(password)},
        })
    }

    fn wanted(uid: &str, secret: Option<serde_json::Value>) -> WantedLogin {
        WantedLogin {
            uid: uid.into(),
            pod: format!("default/pod-{uid}"),
            secret_name: "login".into(),
            secret: secret
                .map(|s| crate::metamanager::held(ResourceKind::Secret, "default", "login", s)),
            grants: Ok(grants(&[
                (wedge_core::grants::PUBLISH, "telemetry/#"),
                (wedge_core::grants::DEVICES_WRITE, "thermo-1"),
            ])),
        }
    }

    #[test]
    fn grants_become_read_and_write_rules() {
        let acl = GrantAcl::from_grants(&grants(&[
            (wedge_core::grants::PUBLISH, "alerts/#"),
            (wedge_core::grants::SUBSCRIBE, "commands/+"),
            (wedge_core::grants::DEVICES_READ, "thermo-1"),
            (wedge_core::grants::DEVICES_WRITE, "fan-1"),
        ]));
        assert!(acl.allows(Action::Publish, "alerts/fire"));
        assert!(!acl.allows(Action::Subscribe, "alerts/fire"));
        assert!(acl.allows(Action::Subscribe, "commands/fan"));
        assert!(!acl.allows(Action::Subscribe, "commands/#"));
        assert!(!acl.allows(Action::Publish, "commands/fan"));
        // A device read: its topics, and asking for its twin; no reports.
        let t1 = "$hw/events/device/thermo-1";
        assert!(acl.allows(Action::Subscribe, &format!("{t1}/twin/update/document")));
        assert!(acl.allows(Action::Subscribe, &format!("{t1}/#")));
        assert!(acl.allows(Action::Subscribe, "$ke/events/device/thermo-1/data/update"));
        assert!(acl.allows(Action::Publish, &format!("{t1}/twin/get")));
        assert!(!acl.allows(Action::Publish, &format!("{t1}/twin/update")));
        // A device written: what its mapper publishes.
        let f1 = "$hw/events/device/fan-1";
        assert!(acl.allows(Action::Publish, &format!("{f1}/twin/update")));
        assert!(acl.allows(Action::Publish, &format!("{f1}/state/update")));
        assert!(acl.allows(Action::Subscribe, &format!("{f1}/twin/update/delta")));
        // Nothing of other devices, nor the node's membership, nor everything.
        assert!(!acl.allows(Action::Publish, "$hw/events/device/door/twin/update"));
        assert!(!acl.allows(Action::Subscribe, "$hw/events/device/+/twin/update/delta"));
        assert!(!acl.allows(
            Action::Subscribe,
            "$hw/events/node/edge-a/membership/get/result"
        ));
        assert!(!acl.allows(Action::Subscribe, "#"));
        // No grants, no rights.
        let none = GrantAcl::from_grants(&PodGrants::default());
        assert!(!none.allows(Action::Publish, "a"));
        assert!(!none.allows(Action::Subscribe, "a"));
    }

    #[test]
    fn a_pods_login_works_while_it_is_wanted() {
        let logins = PodLogins::embedded(["operator".to_owned()]);
        let out = logins.sync(vec![wanted("u1", Some(basic_auth("mapper", "s3cret")))]);
        assert_eq!(out, [("u1".to_owned(), Ok(()))]);
        assert!(logins.knows("mapper"));
        assert!(!logins.verify("c1", "mapper", "wrong"));
        assert!(logins.verify("c1", "mapper", "s3cret"));
        assert!(logins.allows("c1", "mapper", Action::Publish, "telemetry/t"));
        assert!(!logins.allows("c1", "mapper", Action::Publish, "other/t"));
        // Only the client that logged in has its rights.
        assert!(!logins.allows("c2", "mapper", Action::Publish, "telemetry/t"));
        // The pod goes: the login and its rights go.
        assert!(logins.sync(Vec::new()).is_empty());
        assert!(!logins.verify("c1", "mapper", "s3cret"));
        assert!(!logins.allows("c1", "mapper", Action::Publish, "telemetry/t"));
    }

    #[test]
    fn a_changed_secret_ends_the_old_password_and_its_sessions() {
        let logins = PodLogins::embedded([]);
        let kicked = Arc::new(Mutex::new(Vec::<String>::new()));
        let k = kicked.clone();
        logins.set_kicker(move |c| {
            k.lock().expect("lock").push(c.to_owned());
            true
        });
        logins.sync(vec![wanted("u1", Some(basic_auth("mapper", "one")))]);
        assert!(logins.verify("c1", "mapper", "one"));
        // The same Secret again: the session stays.
        logins.sync(vec![wanted("u1", Some(basic_auth("mapper", "one")))]);
        assert!(logins.allows("c1", "mapper", Action::Publish, "telemetry/t"));
        assert!(kicked.lock().expect("lock").is_empty());
        // A new password: the old one and its session are gone.
        logins.sync(vec![wanted("u1", Some(basic_auth("mapper", "two")))]);
        assert_eq!(*kicked.lock().expect("lock"), ["c1"]);
        assert!(!logins.allows("c1", "mapper", Action::Publish, "telemetry/t"));
        assert!(!logins.verify("c1", "mapper", "one"));
        assert!(logins.verify("c1", "mapper", "two"));
    }

    #[test]
    fn a_client_id_that_moved_to_another_login_is_not_dropped_with_the_first() {
        let logins = PodLogins::embedded([]);
        let kicked = Arc::new(Mutex::new(Vec::<String>::new()));
        let k = kicked.clone();
        logins.set_kicker(move |c| {
            k.lock().expect("lock").push(c.to_owned());
            true
        });
        let both = || {
            vec![
                wanted("u1", Some(basic_auth("a", "pa"))),
                wanted("u2", Some(basic_auth("b", "pb"))),
            ]
        };
        logins.sync(both());
        assert!(logins.verify("c1", "a", "pa"));
        assert!(logins.verify("c1", "b", "pb"));
        logins.sync(vec![wanted("u2", Some(basic_auth("b", "pb")))]);
        assert!(kicked.lock().expect("lock").is_empty());
        assert!(logins.allows("c1", "b", Action::Publish, "telemetry/t"));
    }

    #[test]
    fn bad_secrets_and_taken_names_are_refused_with_a_reason() {
        let logins = PodLogins::embedded(["operator".to_owned()]);
        let opaque = serde_json::json!({"type": "Opaque", "data": {}});
        let no_password = serde_json::json!({"type": BASIC_AUTH, "data": {"username": "bWU="}});
        let mut bad_grants = wanted("u6", Some(basic_auth("x", "y")));
        bad_grants.grants = Err("annotation messaging.wedge.io/publish: bad".into());
        let out: HashMap<String, Outcome> = logins
            .sync(vec![
                wanted("u1", None),
                wanted("u2", Some(opaque)),
                wanted("u3", Some(no_password)),
                wanted("u4", Some(basic_auth("operator", "p"))),
                wanted("u5", Some(basic_auth(EVENTBUS_USER, "p"))),
                bad_grants,
                wanted("u7", Some(basic_auth("shared", "p"))),
                wanted("u8", Some(basic_auth("shared", "q"))),
            ])
            .into_iter()
            .collect();
        let reason = |uid: &str| match &out[uid] {
            Ok(()) => "Accepted",
            Err(e) => e.reason(),
        };
        assert_eq!(reason("u1"), "SecretNotFound");
        assert_eq!(reason("u2"), "WrongSecretType");
        assert_eq!(reason("u3"), "InvalidSecret");
        assert_eq!(reason("u4"), "UsernameTaken");
        assert_eq!(reason("u5"), "UsernameTaken");
        assert_eq!(reason("u6"), "InvalidGrants");
        // Two pods, one name: the first (by uid) has it, and keeps it when a new pod comes.
        assert_eq!(reason("u7"), "Accepted");
        assert_eq!(reason("u8"), "UsernameTaken");
        let out: HashMap<String, Outcome> = logins
            .sync(vec![
                wanted("u0", Some(basic_auth("shared", "r"))),
                wanted("u7", Some(basic_auth("shared", "p"))),
            ])
            .into_iter()
            .collect();
        assert!(out["u7"].is_ok());
        assert!(matches!(out["u0"], Err(LoginError::UsernameTaken { .. })));
        assert!(!logins.verify("c", "operator", "p"));
    }

    #[test]
    fn an_external_broker_takes_no_logins() {
        let logins = PodLogins::external();
        let out = logins.sync(vec![wanted("u1", Some(basic_auth("mapper", "p")))]);
        assert_eq!(out[0].1, Err(LoginError::ExternalBroker));
        assert!(logins.is_empty());
    }
}
