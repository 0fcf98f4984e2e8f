//! The certificates issued to each edge, and their revocation.
//!
//! Kept in the API, so that it holds on the embedded API server and on a real cluster alike and
//! survives cloudcore's restarts: one ConfigMap per node in `kube-system`
//! (`edge-certificates.<node>`, labelled `wedge.io/edge-certificates=true`; a ConfigMap because
//! nothing in it is secret) whose `certificates.json` is a [`NodeCertificates`]: every
//! certificate issued to the node that has not expired yet (serial, notAfter, when and how),
//! which are revoked and why, and the uid of the Node the edge registered.
//!
//! A certificate CloudHub is shown is good while its serial is listed and not revoked (a
//! certificate issued before these records existed, unlisted, is good unless the node's
//! certificates were revoked since). A node's certificates are revoked when its Node is deleted
//! (the Node whose uid the record holds: a deletion while cloudcore was down is found at
//! start), when a join gives the node a new identity, and by hand (`wedge node revoke`).
//! Revoked certificates are refused on connect and on renewal, and a live session on one is
//! closed with `CertificateRevoked`.
//!
//! [`Certificates`] keeps every record in memory for the checks on connect, from a list at start
//! and a watch after (so revocations written by `wedge node revoke` take effect at once), and
//! writes records with optimistic concurrency (read, change, replace at the resourceVersion
//! read, again on conflict): two cloudcores or a cloudcore and `wedge` never lose each other's
//! writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::JoinError;
use crate::cloudhub::sessions::Sessions;

/// Where the records live.
pub const NAMESPACE: &str = "kube-system";
/// The label every record carries.
pub const LABEL: &str = "wedge.io/edge-certificates";
/// The data key of the record.
pub const KEY: &str = "certificates.json";

/// A revocation: when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    pub at: Timestamp,
    /// Why, for people.
    pub reason: String,
}

/// One certificate issued to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    /// The serial number, lowercase hex.
    pub serial: String,
    /// When it expires.
    pub not_after: Timestamp,
    /// When it was issued.
    pub issued: Timestamp,
    /// How: `join with token <id>`, `renewal of <serial>`, `wedge up`.
    pub by: String,
    /// Set once it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// What is known of one node's certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCertificates {
    /// The node.
    pub node: String,
    /// The uid of the Node the edge registered (or found) with these certificates; when that
    /// Node is deleted, they are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_uid: Option<String>,
    /// The certificates issued and not expired.
    #[serde(default)]
    pub certificates: Vec<Issued>,
    /// Every certificate of the node issued before this (listed or not) is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<Revocation>,
}

/// A certificate as CloudHub is shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Its notBefore, seconds since the epoch.
    pub not_before: i64,
}

impl NodeCertificates {
    /// An empty record for `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            ..Self::default()
        }
    }

    /// Whether `cert` may be used, or the message saying why not.
    pub fn check(&self, cert: &Presented) -> Result<(), String> {
        match self.certificates.iter().find(|c| c.serial == cert.serial) {
            Some(Issued {
                revoked: Some(r), ..
            }) => Err(format!(
                "the certificate {} of node {} was revoked at {}: {}; join again with a new token (wedge token create --node {})",
                cert.serial, self.node, r.at, r.reason, self.node
            )),
            Some(_) => Ok(()),
            None => match &self.revoked_before {
                Some(r) if cert.not_before < r.at.as_second() => Err(format!(
                    "the certificates of node {} issued before {} are revoked: {}; join again with a new token (wedge token create --node {})",
                    self.node, r.at, r.reason, self.node
                )),
                _ => Ok(()),
            },
        }
    }

    /// The certificates that are neither expired nor revoked at `now`.
    pub fn valid(&self, now: Timestamp) -> impl Iterator<Item = &Issued> {
        self.certificates
            .iter()
            .filter(move |c| c.revoked.is_none() && c.not_after > now)
    }

    /// Forgets certificates that expired.
    fn prune(&mut self, now: Timestamp) {
        self.certificates.retain(|c| c.not_after > now);
    }

    /// Revokes every certificate issued so far. `node_gone`: the Node they registered was
    /// deleted, so the next certificates start afresh.
    pub fn revoke_all(&mut self, now: Timestamp, reason: &str, node_gone: bool) {
        let revocation = Revocation {
            at: now,
            reason: reason.to_owned(),
        };
        for cert in &mut self.certificates {
            if cert.revoked.is_none() {
                cert.revoked = Some(revocation.clone());
            }
        }
        self.revoked_before = Some(revocation);
        if node_gone {
            self.node_uid = None;
        }
        self.prune(now);
    }

    /// Whether the record can be deleted at `now`, certificates being valid for at most
    /// `validity`: it registered no Node that still stands, lists no unexpired certificate,
    /// and any certificate issued before its revocation, listed or not, has expired too. What
    /// is left refuses only certificates TLS refuses anyway.
    pub fn forgettable(&self, now: Timestamp, validity: std::time::Duration) -> bool {
        let expired_by = |at: Timestamp| {
            jiff::SignedDuration::try_from(validity)
                .ok()
                .and_then(|v| at.checked_add(v).ok())
                .is_some_and(|end| end <= now)
        };
        self.node_uid.is_none()
            && self.certificates.iter().all(|c| c.not_after <= now)
            && self
                .revoked_before
                .as_ref()
                .is_none_or(|r| expired_by(r.at))
    }

    /// Lists a new certificate.
    pub fn add(&mut self, issued: Issued, now: Timestamp) {
        self.prune(now);
        self.certificates.push(issued);
    }
}

/// The record's ConfigMap name: `edge-certificates.<node>`, or a hash of the node's name when
/// that would be too long.
pub fn object_name(node: &str) -> String {
    let name = format!("edge-certificates.{node}");
    if name.len() <= 253 {
        return name;
    }
    let hash = Sha256::digest(node.as_bytes());
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("edge-certificates.{hex}")
}

fn api_error(e: kube::Error) -> JoinError {
    JoinError::Internal(format!("the API server: {e}"))
}

fn parse(object: &ConfigMap) -> Option<NodeCertificates> {
    let text = object.data.as_ref()?.get(KEY)?;
    match serde_json::from_str(text) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(
                name = object.metadata.name,
                "an unreadable edge-certificates record: {e}"
            );
            None
        }
    }
}

fn to_object(record: &NodeCertificates, resource_version: Option<String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(object_name(&record.node)),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([(LABEL.to_owned(), "true".to_owned())])),
            resource_version,
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            KEY.to_owned(),
            serde_json::to_string_pretty(record).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    }
}

/// Reads `node`'s record from the API.
pub async fn read(client: &Client, node: &str) -> Result<Option<NodeCertificates>, JoinError> {
    let object = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .get_opt(&object_name(node))
        .await
        .map_err(api_error)?;
    Ok(object
        .as_ref()
        .and_then(parse)
        .filter(|r: &NodeCertificates| r.node == node))
}

/// Changes `node`'s record with `change` (which may refuse) and writes it, at the version read;
/// on a conflict it reads again and calls `change` again. Returns the record written, or
/// `None` if `change` said there is nothing to write.
pub async fn update<F>(
    client: &Client,
    node: &str,
    mut change: F,
) -> Result<Option<NodeCertificates>, JoinError>
where
    F: FnMut(&mut NodeCertificates) -> Result<bool, JoinError>,
{
    let api = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE);
    let name = object_name(node);
    for _ in 0..16 {
        let current = api.get_opt(&name).await.map_err(api_error)?;
        let mut record = current
            .as_ref()
            .and_then(parse)
            .filter(|r| r.node == node)
            .unwrap_or_else(|| NodeCertificates::new(node));
        if !change(&mut record)? {
            return Ok(None);
        }
        let written = match current {
            Some(object) => {
                let object = to_object(&record, object.metadata.resource_version);
                api.replace(&name, &PostParams::default(), &object).await
            }
            None => {
                api.create(&PostParams::default(), &to_object(&record, None))
                    .await
            }
        };
        match written {
            Ok(_) => return Ok(Some(record)),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(JoinError::Internal(format!(
        "the certificates record of node {node} kept changing under this write"
    )))
}

/// Revokes every certificate of `node` (for `wedge node revoke`). Returns how many listed
/// certificates were still good.
pub async fn revoke_node(client: &Client, node: &str, reason: &str) -> Result<usize, JoinError> {
    let mut revoked = 0;
    update(client, node, |record| {
        let now = Timestamp::now();
        revoked = record.valid(now).count();
        record.revoke_all(now, reason, false);
        Ok(true)
    })
    .await?;
    Ok(revoked)
}

/// Every node's record, in memory, for the checks on connect; see the module's docs.
pub struct Certificates {
    client: Client,
    sessions: Arc<Sessions>,
    records: RwLock<HashMap<String, NodeCertificates>>,
    /// How long the certificates issued are valid: when a record may be forgotten.
    validity: std::time::Duration,
}

impl Certificates {
    /// Lists the records (before CloudHub serves: every check needs them) and starts the
    /// watches of records and Nodes and the hourly forgetting of records that refuse nothing
    /// any more, which end with `shutdown`. Certificates are issued for `validity`.
    pub async fn start(
        client: Client,
        sessions: Arc<Sessions>,
        validity: std::time::Duration,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Self>, JoinError> {
        let listed = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .list(&ListParams::default().labels(&format!("{LABEL}=true")))
            .await
            .map_err(api_error)?;
        let records = listed
            .items
            .iter()
            .filter_map(parse)
            .map(|r| (r.node.clone(), r))
            .collect();
        let this = Arc::new(Self {
            client,
            sessions,
            records: RwLock::new(records),
            validity,
        });
        tasks.spawn(this.clone().watch_records(shutdown.clone()));
        tasks.spawn(this.clone().watch_nodes(shutdown.clone()));
        tasks.spawn(this.clone().forget_records(shutdown.clone()));
        Ok(this)
    }

    /// The API client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether `node`'s edge may use `cert`, or why not.
    pub fn check(&self, node: &str, cert: &Presented) -> Result<(), String> {
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .map_or(Ok(()), |r| r.check(cert))
    }

    /// Keeps `record` (just written or watched) and closes the sessions it revokes.
    pub fn put(&self, record: NodeCertificates) {
        let node = record.node.clone();
        self.records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.clone(), record);
        self.sessions
            .close_revoked(&node, |cert| self.check(&node, cert));
    }

    /// Changes `node`'s record (see [`update`]) and keeps what was written.
    pub async fn update<F>(&self, node: &str, change: F) -> Result<(), JoinError>
    where
        F: FnMut(&mut NodeCertificates) -> Result<bool, JoinError>,
    {
        if let Some(record) = update(&self.client, node, change).await? {
            self.put(record);
        }
        Ok(())
    }

    /// Called when `node`'s edge reports its Node with `uid` (`None`: there is no Node).
    /// Returns `Err` with the message for the edge when the Node its certificates registered
    /// is gone: the certificates are revoked then, and the Node is not registered again.
    pub async fn node_seen(&self, node: &str, uid: Option<&str>) -> Result<(), String> {
        let (known, all_revoked) = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .map_or((None, false), |r| {
                let all_revoked =
                    r.revoked_before.is_some() && r.valid(Timestamp::now()).next().is_none();
                (r.node_uid.clone(), all_revoked)
            });
        match (known, uid) {
            // Revoked and not joined again since: a report that was under way when the Node
            // was deleted does not register it again.
            (None, None) if all_revoked => Err(format!(
                "the certificates of node {node} are revoked: its Node is not registered again; join again with a new token"
            )),
            (None, None) => Ok(()),
            (Some(known), Some(uid)) if known == uid => Ok(()),
            // The first Node of these certificates (or of an edge from before the records).
            (None, Some(uid)) => {
                let uid = uid.to_owned();
                self.update(node, |record| {
                    let fresh = record.node_uid.is_none();
                    if fresh {
                        record.node_uid = Some(uid.clone());
                    }
                    Ok(fresh)
                })
                .await
                .map_err(|e| e.to_string())
            }
            (Some(known), _) => {
                let reason = format!("its Node (uid {known}) was deleted");
                self.node_deleted(node, &known, &reason).await;
                Err(format!(
                    "node {node} was deleted: this edge's certificates are revoked; join again with a new token"
                ))
            }
        }
    }

    /// Revokes `node`'s certificates if they registered the Node `uid`, which is gone.
    async fn node_deleted(&self, node: &str, uid: &str, reason: &str) {
        let result = self
            .update(node, |record| {
                let ours = record.node_uid.as_deref() == Some(uid);
                if ours {
                    record.revoke_all(Timestamp::now(), reason, true);
                }
                Ok(ours)
            })
            .await;
        match result {
            Ok(()) => tracing::info!(node, reason, "revoked the node's certificates"),
            Err(error) => tracing::warn!(node, %error, "revoking the node's certificates failed"),
        }
    }

    /// Every hour, deletes the records that are [`NodeCertificates::forgettable`]: a fleet whose
    /// nodes come and go keeps no record of each forever. A record changed since it was read
    /// (a new join) is left, by the delete's precondition.
    async fn forget_records(self: Arc<Self>, shutdown: CancellationToken) {
        let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), NAMESPACE);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = hourly.tick() => {}
            }
            let now = Timestamp::now();
            let candidates: Vec<String> = self
                .records
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .filter(|r| r.forgettable(now, self.validity))
                .map(|r| r.node.clone())
                .collect();
            for node in candidates {
                let name = object_name(&node);
                let Ok(Some(object)) = api.get_opt(&name).await else {
                    continue;
                };
                if !parse(&object).is_some_and(|r| r.forgettable(now, self.validity)) {
                    continue;
                }
                let params = kube::api::DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: object.metadata.resource_version.clone(),
                        uid: object.metadata.uid.clone(),
                    }),
                    ..kube::api::DeleteParams::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => tracing::info!(
                        node,
                        "forgot the certificates record of a node gone and its certificates expired"
                    ),
                    Err(error) => {
                        tracing::debug!(node, %error, "the certificates record was not forgotten")
                    }
                }
            }
        }
    }

    async fn watch_records(self: Arc<Self>, shutdown: CancellationToken) {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), NAMESPACE);
        let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                Some(Ok(Event::Apply(object) | Event::InitApply(object))) => {
                    if let Some(record) = parse(&object) {
                        self.put(record);
                    }
                }
                Some(Ok(Event::Delete(object))) => {
                    if let Some(record) = parse(&object) {
                        self.records
                            .write()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&record.node);
                    }
                }
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(e)) => tracing::debug!("watching edge-certificates records: {e}"),
                None => return,
            }
        }
    }

    /// Revokes the certificates of nodes whose Node is deleted, and at start (and after every
    /// relist) those whose Node was deleted while nobody watched.
    async fn watch_nodes(self: Arc<Self>, shutdown: CancellationToken) {
        // Whole Nodes: the embedded API server does not serve metadata-only watches.
        let api = Api::<Node>::all(self.client.clone());
        let mut events =
            std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
        let mut listed: HashSet<(String, String)> = HashSet::new();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            let named = |meta: &ObjectMeta| Some((meta.name.clone()?, meta.uid.clone()?));
            match event {
                Some(Ok(Event::Delete(node))) => {
                    if let Some((name, uid)) = named(&node.metadata) {
                        let reason = format!("its Node (uid {uid}) was deleted");
                        self.node_deleted(&name, &uid, &reason).await;
                    }
                }
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitApply(node))) => listed.extend(named(&node.metadata)),
                Some(Ok(Event::InitDone)) => {
                    let gone: Vec<(String, String)> = self
                        .records
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .values()
                        .filter_map(|r| Some((r.node.clone(), r.node_uid.clone()?)))
                        .filter(|known| !listed.contains(known))
                        .collect();
                    let nodes = Api::<Node>::all(self.client.clone());
                    for (name, uid) in gone {
                        // Looked at again: a Node created while the list was under way.
                        if let Ok(Some(node)) = nodes.get_metadata_opt(&name).await
                            && node.metadata.uid.as_deref() == Some(uid.as_str())
                        {
                            continue;
                        }
                        let reason = format!("its Node (uid {uid}) was deleted");
                        self.node_deleted(&name, &uid, &reason).await;
                    }
                    listed.clear();
                }
                Some(Ok(Event::Apply(_))) => {}
                Some(Err(e)) => tracing::debug!("watching Nodes: {e}"),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("timestamp")
    }

    fn issued(serial: &str, not_after: i64) -> Issued {
        Issued {
            serial: serial.into(),
            not_after: at(not_after),
            issued: at(100),
            by: "join with token abcdef".into(),
            revoked: None,
        }
    }

    fn presented(serial: &str, not_before: i64) -> Presented {
        Presented {
            serial: serial.into(),
            not_before,
        }
    }

    #[test]
    fn listed_certificates_are_good_until_revoked_and_revocation_reaches_unlisted_ones() {
        let mut record = NodeCertificates::new("edge-a");
        record.add(issued("aa", 10_000), at(100));
        assert_eq!(record.check(&presented("aa", 100)), Ok(()));
        assert_eq!(
            record.check(&presented("legacy", 50)),
            Ok(()),
            "unlisted, nothing revoked"
        );
        assert_eq!(record.valid(at(200)).count(), 1);
        assert_eq!(record.valid(at(10_000)).count(), 0, "expired");

        record.revoke_all(at(300), "its Node was deleted", true);
        let refused = record.check(&presented("aa", 100)).expect_err("revoked");
        assert!(
            refused.contains("edge-a") && refused.contains("its Node was deleted"),
            "{refused}"
        );
        assert!(record.check(&presented("legacy", 50)).is_err());
        assert_eq!(record.valid(at(400)).count(), 0);

        // A new join after the revocation is good, whatever its notBefore (backdated).
        record.add(issued("bb", 20_000), at(400));
        assert_eq!(record.check(&presented("bb", 250)), Ok(()));
        assert_eq!(record.valid(at(400)).count(), 1);
    }

    #[test]
    fn expired_certificates_are_forgotten_when_the_record_changes() {
        let mut record = NodeCertificates::new("edge-a");
        record.add(issued("aa", 1_000), at(100));
        record.add(issued("bb", 5_000), at(2_000));
        assert_eq!(record.certificates.len(), 1);
        assert_eq!(record.certificates[0].serial, "bb");
    }

    #[test]
    fn a_record_is_forgotten_once_nothing_it_refuses_could_still_be_used() {
        let year = std::time::Duration::from_secs(365 * 24 * 3600);
        let year_s = 365 * 24 * 3600;
        let mut record = NodeCertificates::new("edge-a");
        record.node_uid = Some("uid-1".into());
        record.add(issued("aa", 10_000), at(100));
        assert!(!record.forgettable(at(20_000), year), "its Node stands");

        record.revoke_all(at(300), "its Node was deleted", true);
        assert!(
            !record.forgettable(at(20_000), year),
            "a certificate issued before the revocation may be valid for a year"
        );
        assert!(record.forgettable(at(300 + year_s), year));

        // A new join lists a certificate: kept while it is valid.
        record.add(issued("bb", 2 * year_s), at(400));
        assert!(!record.forgettable(at(300 + year_s), year));
        assert!(record.forgettable(at(2 * year_s), year));
    }

    #[test]
    fn records_of_long_names_fit_a_configmap_name() {
        assert_eq!(object_name("edge-a"), "edge-certificates.edge-a");
        let long = "a".repeat(250);
        let name = object_name(&long);
        assert!(name.len() <= 253 && name.starts_with("edge-certificates."));
        let round: NodeCertificates = serde_json::from_str(
            &serde_json::to_string(&NodeCertificates::new(&long)).expect("json"),
        )
        .expect("parse");
        assert_eq!(round.node, long);
    }
}
