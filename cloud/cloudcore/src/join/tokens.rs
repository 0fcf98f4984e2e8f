//! Bootstrap tokens as Kubernetes keeps them: Secrets `kube-system/bootstrap-token-<id>` of
//! type `bootstrap.kubernetes.io/token`, with `token-id`, `token-secret` and `expiration`.
//!
//! What Wedge adds is kept beside kubeadm's keys in the Secret's data, so it holds on a real
//! cluster too (data keys cannot hold `/`, hence `wedge.io.` rather than `wedge.io/`):
//! `wedge.io.node` binds the token to one node name (and lets it take that name over),
//! `wedge.io.replace` lets it take over any name it joins, `wedge.io.single-use` makes it good
//! for one join, after which `wedge.io.used-by` says which node used it and when.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use super::JoinError;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The namespace they live in.
pub const NAMESPACE: &str = "kube-system";
/// The group joined edges' tokens authenticate as.
pub const GROUP: &str = "system:bootstrappers:wedge:edges";

/// The data key binding a token to one node.
pub const NODE_KEY: &str = "wedge.io.node";
/// The data key letting a token take over any node name.
pub const REPLACE_KEY: &str = "wedge.io.replace";
/// The data key making a token good for one join.
pub const SINGLE_USE_KEY: &str = "wedge.io.single-use";
/// The data key a used single-use token carries: the node and when.
pub const USED_BY_KEY: &str = "wedge.io.used-by";

/// What a token may join, beyond kubeadm's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// The only node it joins; it may take that node over.
    pub node: Option<String>,
    /// It may take over whatever node it joins.
    pub replace: bool,
    /// Good for one join.
    pub single_use: bool,
}

/// A token that checked out.
#[derive(Debug, Clone)]
pub struct ValidToken {
    /// The id.
    pub id: String,
    /// What it may join.
    pub binding: Binding,
    /// The Secret as read, to mark a single-use token used at this version.
    stored: Secret,
}

impl ValidToken {
    /// A token as if validated, for the decision's tests.
    #[cfg(test)]
    pub fn for_tests(id: &str, binding: Binding) -> Self {
        Self {
            id: id.to_owned(),
            binding,
            stored: Secret::default(),
        }
    }
}

/// A token just created.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The id.
    pub id: String,
    /// The secret.
    pub secret: String,
    /// When it expires.
    pub expires: jiff::Timestamp,
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The id.
    pub id: String,
    /// When it expires, if it does.
    pub expires: Option<String>,
    /// What it is for.
    pub description: String,
    /// What it may join.
    pub binding: Binding,
    /// For a used single-use token: which node used it, and when.
    pub used_by: Option<String>,
}

fn random_token_chars(len: usize) -> Result<String, JoinError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len * 2];
    getrandom::fill(&mut bytes).map_err(|e| JoinError::Internal(format!("no randomness: {e}")))?;
    // 36 divides 252: bytes of 252 and above are skipped, so every character is equally likely.
    let chars: String = bytes
        .iter()
        .filter(|b| **b < 252)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .take(len)
        .collect();
    if chars.len() < len {
        return random_token_chars(len);
    }
    Ok(chars)
}

fn api_error(e: kube::Error) -> JoinError {
    JoinError::Internal(format!("the API server: {e}"))
}

/// Creates a token valid for `ttl`.
pub async fn create(
    client: &Client,
    ttl: Duration,
    description: &str,
    binding: &Binding,
) -> Result<CreatedToken, JoinError> {
    if let Some(node) = &binding.node
        && !super::signer::valid_node_name(node)
    {
        return Err(JoinError::BadNodeName(node.clone()));
    }
    let id = random_token_chars(6)?;
    let secret = random_token_chars(16)?;
    let expires = jiff::Timestamp::now()
        + jiff::SignedDuration::try_from(ttl).map_err(|e| JoinError::Internal(e.to_string()))?;
    let mut data = BTreeMap::from([
        ("token-id".to_owned(), id.clone()),
        ("token-secret".to_owned(), secret.clone()),
        ("expiration".to_owned(), expires.to_string()),
        (
            "usage-bootstrap-authentication".to_owned(),
            "true".to_owned(),
        ),
        ("auth-extra-groups".to_owned(), GROUP.to_owned()),
        ("description".to_owned(), description.to_owned()),
    ]);
    if let Some(node) = &binding.node {
        data.insert(NODE_KEY.to_owned(), node.clone());
    }
    if binding.replace {
        data.insert(REPLACE_KEY.to_owned(), "true".to_owned());
    }
    if binding.single_use {
        data.insert(SINGLE_USE_KEY.to_owned(), "true".to_owned());
    }
    let secret_object = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.into()),
        string_data: Some(data),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret_object)
        .await
        .map_err(api_error)?;
    Ok(CreatedToken {
        id,
        secret,
        expires,
    })
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone()).ok()
}

/// Lists the tokens, without their secrets.
pub async fn list(client: &Client) -> Result<Vec<TokenInfo>, JoinError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
        .map_err(api_error)?;
    Ok(secrets
        .items
        .iter()
        .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
        .filter_map(|s| {
            Some(TokenInfo {
                id: field(s, "token-id")?,
                expires: field(s, "expiration"),
                description: field(s, "description").unwrap_or_default(),
                binding: binding(s),
                used_by: field(s, USED_BY_KEY),
            })
        })
        .collect())
}

fn binding(secret: &Secret) -> Binding {
    let yes = |key| field(secret, key).as_deref() == Some("true");
    Binding {
        node: field(secret, NODE_KEY).filter(|n| !n.is_empty()),
        replace: yes(REPLACE_KEY),
        single_use: yes(SINGLE_USE_KEY),
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Checks a bearer `<id>.<secret>`.
pub async fn validate(client: &Client, bearer: &str) -> Result<ValidToken, JoinError> {
    let (id, secret) = bearer.split_once('.').ok_or(JoinError::MalformedToken)?;
    if id.len() != 6 || secret.len() != 16 {
        return Err(JoinError::MalformedToken);
    }
    let stored = Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get_opt(&format!("bootstrap-token-{id}"))
        .await
        .map_err(api_error)?
        .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
        .ok_or_else(|| JoinError::UnknownToken { id: id.to_owned() })?;
    let want = field(&stored, "token-secret").unwrap_or_default();
    // The secret first: without it, nothing about the token (not even its expiry) is told.
    // Comparing digests keeps the comparison's time independent of where the strings differ.
    if want.is_empty() || digest(&want) != digest(secret) {
        return Err(JoinError::WrongSecret { id: id.to_owned() });
    }
    // Only tokens made for edges: a cluster's other bootstrap tokens (kubelets') must not get
    // node certificates from the hub.
    let for_edges = field(&stored, "usage-bootstrap-authentication").as_deref() == Some("true")
        && field(&stored, "auth-extra-groups")
            .is_some_and(|groups| groups.split(',').any(|g| g.trim() == GROUP));
    if !for_edges {
        return Err(JoinError::NotForEdges { id: id.to_owned() });
    }
    if let Some(expiration) = field(&stored, "expiration") {
        let at: jiff::Timestamp = expiration
            .parse()
            .map_err(|_| JoinError::Internal(format!("token {id} has an unreadable expiration")))?;
        if at <= jiff::Timestamp::now() {
            return Err(JoinError::Expired {
                id: id.to_owned(),
                at: expiration,
            });
        }
    }
    if let Some(by) = field(&stored, USED_BY_KEY) {
        return Err(JoinError::TokenUsed {
            id: id.to_owned(),
            by,
        });
    }
    Ok(ValidToken {
        id: id.to_owned(),
        binding: binding(&stored),
        stored,
    })
}

/// Marks a single-use token used by `node`, at the version validated: of two joins with it,
/// one wins and the other is refused.
pub async fn consume(client: &Client, token: &ValidToken, node: &str) -> Result<(), JoinError> {
    let by = format!("node {node} at {}", jiff::Timestamp::now());
    let mut secret = token.stored.clone();
    secret.data.get_or_insert_default().insert(
        USED_BY_KEY.to_owned(),
        k8s_openapi::ByteString(by.into_bytes()),
    );
    let name = format!("bootstrap-token-{}", token.id);
    match Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .replace(&name, &PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Err(JoinError::TokenUsed {
            id: token.id.clone(),
            by: "by another join at the same moment".into(),
        }),
        Err(e) => Err(api_error(e)),
    }
}
