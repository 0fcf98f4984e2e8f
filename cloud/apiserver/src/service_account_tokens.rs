//! ServiceAccount tokens, as kube-apiserver issues and checks them: JWTs signed with the
//! server's own key (`<data-dir>/pki/sa.key`, ES256, made at first start like kubeadm's
//! `sa.key`, by [`crate::pki::Pki::load_or_create_key`]), issued through `serviceaccounts/token` (`kubectl create token NAME`), and taken as
//! bearer tokens for as long as they are valid and their ServiceAccount exists with the uid
//! they name. The user is `system:serviceaccount:<namespace>:<name>` in the groups
//! `system:serviceaccounts` and `system:serviceaccounts:<namespace>`, which RBAC bindings name.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::User;

/// The issuer, and the audience a token is for when its request names none: kube-apiserver's
/// defaults (`--service-account-issuer`, `--api-audiences`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

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
}

#[derive(Debug, Serialize, Deserialize)]
struct Reference {
    name: String,
    uid: String,
}

/// Who a valid token says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSubject {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid when the token was issued.
    pub uid: String,
    /// The audiences the token is for.
    pub audiences: Vec<String>,
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
    /// [`crate::pki::Pki::load_or_create_key`] keeps it: `<data-dir>/pki/sa.key`).
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
            },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenKeyError(e.to_string()))
    }

    /// Who `token` says it is, if it is one of ours, unexpired and for `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Option<TokenSubject> {
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
        (claims.sub == expected).then_some(TokenSubject {
            namespace: claims.kubernetes.namespace,
            name: claims.kubernetes.serviceaccount.name,
            uid: claims.kubernetes.serviceaccount.uid,
            audiences: claims.aud,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_for_their_audience_until_they_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::pki::Pki::load_or_create(dir.path(), &[]).expect("pki");
        let key = |pki: &crate::pki::Pki| {
            ServiceAccountTokens::new(&pki.load_or_create_key("sa").expect("key")).expect("key")
        };
        let tokens = key(&pki);
        let subject = TokenSubject {
            namespace: "ci".into(),
            name: "deployer".into(),
            uid: "u-1".into(),
            audiences: Vec::new(),
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
        let again = key(&crate::pki::Pki::load_or_create(dir.path(), &[]).expect("pki"));
        assert!(again.verify(&token, ISSUER).is_some());
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = key(&crate::pki::Pki::load_or_create(other.path(), &[]).expect("pki"));
        assert!(stranger.verify(&token, ISSUER).is_none());
        assert!(tokens.verify("not.a.token", ISSUER).is_none());
    }
}
