//! ServiceAccount tokens, as kube-apiserver issues and checks them: JWTs signed with the
//! server's own key (`<data-dir>/pki/sa.key`, ES256, made at first start like kubeadm's
//! `sa.key`, by [`wedge_pki::Pki::load_or_create_key`]), and taken as bearer tokens while they
//! are valid. The user is `system:serviceaccount:<namespace>:<name>` in the groups
//! `system:serviceaccounts` and `system:serviceaccounts:<namespace>`, which RBAC bindings name.
//!
//! Two kinds, as Kubernetes has them:
//! - **bound tokens**, issued through `serviceaccounts/token` (`kubectl create token NAME`, and
//!   the tokens Edged mounts into pods, bound to the pod): they expire, and hold only while the
//!   account (and the pod they are bound to) exists with the uid they name;
//! - **legacy tokens** ([`ServiceAccountTokens::issue_legacy`]), which the token controller
//!   ([`crate::token_controller`]) writes into Secrets of type
//!   `kubernetes.io/service-account-token`: issuer `kubernetes/serviceaccount`, no expiry, valid
//!   while the Secret holds that very token and the account exists with its uid.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::User;

/// The issuer, and the audience a token is for when its request names none: kube-apiserver's
/// defaults (`--service-account-issuer`, `--api-audiences`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The issuer of legacy tokens (kube's `serviceaccount.LegacyIssuer`).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// How long a token is valid when the request does not say (kube-apiserver's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest validity a request may ask for.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Why the signing key could not be used, or a token not made.
#[derive(Debug, thiserror::Error)]
#[error("the ServiceAccount signing key: {0}")]
pub struct TokenKeyError(String);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: Reference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<Reference>,
}

/// A legacy token's claims, named as kube's `legacyPrivateClaims` names them.
#[derive(Debug, Serialize, Deserialize)]
struct LegacyClaims {
    iss: String,
    sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    account_uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reference {
    name: String,
    uid: String,
}

/// The object a bound token lives no longer than (`boundObjectRef` of its request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundObject {
    /// A Pod, by name and uid.
    Pod {
        /// Its name.
        name: String,
        /// Its uid.
        uid: String,
    },
    /// A Secret, by name and uid.
    Secret {
        /// Its name.
        name: String,
        /// Its uid.
        uid: String,
    },
}

/// Who a valid token says it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenSubject {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid when the token was issued.
    pub uid: String,
    /// The audiences the token is for.
    pub audiences: Vec<String>,
    /// What a bound token is bound to.
    pub bound: Option<BoundObject>,
    /// For a legacy token, the Secret that must hold it.
    pub legacy_secret: Option<String>,
}

impl TokenSubject {
    /// The user the token authenticates as.
    pub fn user(&self) -> User {
        User {
            name: format!("system:serviceaccount:{}:{}", self.namespace, self.name),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", self.namespace),
            ],
        }
    }
}

/// The signing and checking keys.
pub struct ServiceAccountTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .finish_non_exhaustive()
    }
}

impl ServiceAccountTokens {
    /// Signs and checks with the ES256 key `pem` (PKCS#8, as
    /// [`wedge_pki::Pki::load_or_create_key`] keeps it: `<data-dir>/pki/sa.key`).
    pub fn new(pem: &str) -> Result<Self, TokenKeyError> {
        let bad = |e: &dyn std::fmt::Display| TokenKeyError(e.to_string());
        let key = rcgen::KeyPair::from_pem(pem).map_err(|e| bad(&e))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| bad(&e))?;
        let decoding =
            DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(|e| bad(&e))?;
        Ok(Self { encoding, decoding })
    }

    /// A token for ServiceAccount `namespace/name` (`uid`), for `audiences` (none: the API
    /// server's), valid from `now` (Unix seconds) for `seconds`.
    pub fn issue(
        &self,
        subject: &TokenSubject,
        now: i64,
        seconds: i64,
    ) -> Result<String, TokenKeyError> {
        let audiences = if subject.audiences.is_empty() {
            vec![ISSUER.to_owned()]
        } else {
            subject.audiences.clone()
        };
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                subject.namespace, subject.name
            ),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            kubernetes: KubernetesClaims {
                namespace: subject.namespace.clone(),
                serviceaccount: Reference {
                    name: subject.name.clone(),
                    uid: subject.uid.clone(),
                },
                pod: match &subject.bound {
                    Some(BoundObject::Pod { name, uid }) => Some(Reference {
                        name: name.clone(),
                        uid: uid.clone(),
                    }),
                    _ => None,
                },
                secret: match &subject.bound {
                    Some(BoundObject::Secret { name, uid }) => Some(Reference {
                        name: name.clone(),
                        uid: uid.clone(),
                    }),
                    _ => None,
                },
            },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenKeyError(e.to_string()))
    }

    /// A legacy token for ServiceAccount `namespace/name` (`uid`), to be kept in Secret
    /// `secret`: no expiry, valid while that Secret holds it.
    pub fn issue_legacy(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        secret: &str,
    ) -> Result<String, TokenKeyError> {
        let claims = LegacyClaims {
            iss: LEGACY_ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            namespace: namespace.to_owned(),
            secret_name: secret.to_owned(),
            account_name: name.to_owned(),
            account_uid: uid.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenKeyError(e.to_string()))
    }

    /// Who `token` says it is, if it is one of ours, unexpired and for `audience` (a legacy
    /// token is for the API server's audience only, as kube takes it). Whether the objects it
    /// names still exist is the caller's to check (`Api::token_subject`).
    pub fn verify(&self, token: &str, audience: &str) -> Option<TokenSubject> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::ES256 {
            return None;
        }
        self.verify_bound(token, audience).or_else(|| {
            (audience == ISSUER)
                .then(|| self.verify_legacy(token))
                .flatten()
        })
    }

    fn verify_bound(&self, token: &str, audience: &str) -> Option<TokenSubject> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        let claims = data.claims;
        let expected = format!(
            "system:serviceaccount:{}:{}",
            claims.kubernetes.namespace, claims.kubernetes.serviceaccount.name
        );
        let bound = match (claims.kubernetes.pod, claims.kubernetes.secret) {
            (Some(pod), _) => Some(BoundObject::Pod {
                name: pod.name,
                uid: pod.uid,
            }),
            (None, Some(secret)) => Some(BoundObject::Secret {
                name: secret.name,
                uid: secret.uid,
            }),
            (None, None) => None,
        };
        (claims.sub == expected).then_some(TokenSubject {
            namespace: claims.kubernetes.namespace,
            name: claims.kubernetes.serviceaccount.name,
            uid: claims.kubernetes.serviceaccount.uid,
            audiences: claims.aud,
            bound,
            legacy_secret: None,
        })
    }

    fn verify_legacy(&self, token: &str) -> Option<TokenSubject> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[LEGACY_ISSUER]);
        validation.set_required_spec_claims(&["iss", "sub"]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<LegacyClaims>(token, &self.decoding, &validation).ok()?;
        let claims = data.claims;
        let expected = format!(
            "system:serviceaccount:{}:{}",
            claims.namespace, claims.account_name
        );
        (claims.sub == expected && !claims.secret_name.is_empty()).then_some(TokenSubject {
            namespace: claims.namespace,
            name: claims.account_name,
            uid: claims.account_uid,
            audiences: vec![ISSUER.to_owned()],
            bound: None,
            legacy_secret: Some(claims.secret_name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_for_their_audience_until_they_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = wedge_pki::Pki::load_or_create(dir.path(), &[]).expect("pki");
        let key = |pki: &wedge_pki::Pki| {
            ServiceAccountTokens::new(&pki.load_or_create_key("sa").expect("key")).expect("key")
        };
        let tokens = key(&pki);
        let subject = TokenSubject {
            namespace: "ci".into(),
            name: "deployer".into(),
            uid: "u-1".into(),
            ..TokenSubject::default()
        };
        let now = jiff::Timestamp::now().as_second();
        let token = tokens.issue(&subject, now, 600).expect("token");
        let seen = tokens.verify(&token, ISSUER).expect("valid");
        assert_eq!(seen.user().name, "system:serviceaccount:ci:deployer");
        assert_eq!(seen.uid, "u-1");
        assert!(tokens.verify(&token, "vault").is_none(), "another audience");
        let expired = tokens.issue(&subject, now - 7200, 600).expect("token");
        assert!(tokens.verify(&expired, ISSUER).is_none(), "expired");
        // The key is kept: tokens stay valid across restarts; another key's are not.
        let again = key(&wedge_pki::Pki::load_or_create(dir.path(), &[]).expect("pki"));
        assert!(again.verify(&token, ISSUER).is_some());
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = key(&wedge_pki::Pki::load_or_create(other.path(), &[]).expect("pki"));
        assert!(stranger.verify(&token, ISSUER).is_none());
        assert!(tokens.verify("not.a.token", ISSUER).is_none());
    }

    #[test]
    fn bound_and_legacy_tokens_say_what_they_hang_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = wedge_pki::Pki::load_or_create(dir.path(), &[]).expect("pki");
        let tokens =
            ServiceAccountTokens::new(&pki.load_or_create_key("sa").expect("key")).expect("key");
        let bound = TokenSubject {
            namespace: "apps".into(),
            name: "default".into(),
            uid: "sa-1".into(),
            audiences: vec!["vault".into()],
            bound: Some(BoundObject::Pod {
                name: "web".into(),
                uid: "pod-1".into(),
            }),
            legacy_secret: None,
        };
        let now = jiff::Timestamp::now().as_second();
        let token = tokens.issue(&bound, now, 600).expect("token");
        assert_eq!(tokens.verify(&token, "vault"), Some(bound));
        let legacy = tokens
            .issue_legacy("apps", "robot", "sa-2", "robot-token")
            .expect("token");
        let seen = tokens.verify(&legacy, ISSUER).expect("valid");
        assert_eq!(seen.user().name, "system:serviceaccount:apps:robot");
        assert_eq!(seen.uid, "sa-2");
        assert_eq!(seen.legacy_secret.as_deref(), Some("robot-token"));
        assert!(
            tokens.verify(&legacy, "vault").is_none(),
            "legacy tokens are for the API server"
        );
    }
}
