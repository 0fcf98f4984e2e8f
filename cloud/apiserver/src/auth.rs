//! Who is asking: client certificates signed by the cluster CA (user from the subject's CN,
//! groups from its O entries, as Kubernetes reads them) or bearer tokens from a token file.
//! Anonymous requests are refused with 401.
//!
//! Authorization is not here: every authenticated user may do everything until edges arrive
//! (issue 5), whose node identity limits them to their own objects.

use std::collections::HashMap;
use std::path::Path;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (`admin`, `system:node:edge-1`).
    pub name: String,
    /// The groups (`system:masters`, `system:nodes`).
    pub groups: Vec<String>,
}

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not `token,user,uid[,"group1,group2"]`.
    #[error("{path}:{line}: expected token,user,uid[,\"group1,group2\"]")]
    Malformed {
        /// The file.
        path: String,
        /// The 1-based line.
        line: usize,
    },
}

/// Bearer tokens and the users they stand for, in kube-apiserver's `--token-auth-file` format:
/// `token,user,uid,"group1,group2"` per line.
#[derive(Debug, Default, Clone)]
pub struct Tokens(HashMap<String, User>);

impl Tokens {
    /// Reads a token file; a missing file is no tokens.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(TokenFileError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || TokenFileError::Malformed {
                path: path.display().to_string(),
                line: i + 1,
            };
            let mut fields = line.splitn(4, ',');
            let (Some(token), Some(user), Some(_uid)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed());
            };
            if token.is_empty() || user.is_empty() {
                return Err(malformed());
            }
            let groups = fields
                .next()
                .map(|g| {
                    g.trim_matches('"')
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                token.to_owned(),
                User {
                    name: user.to_owned(),
                    groups,
                },
            );
        }
        Ok(Self(tokens))
    }

    /// The user a bearer token stands for.
    pub fn user(&self, token: &str) -> Option<&User> {
        self.0.get(token)
    }
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    wedge_pki::subject_of(der).map(|s| User {
        name: s.name,
        groups: s.groups,
    })
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_read_as_kube_apiserver_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\nabc,alice,1,\"dev,ops\"\ndef,bob,2\n").expect("write");
        let tokens = Tokens::load(&path).expect("load");
        assert_eq!(
            tokens.user("abc"),
            Some(&User {
                name: "alice".into(),
                groups: vec!["dev".into(), "ops".into()]
            })
        );
        assert_eq!(tokens.user("def").map(|u| u.name.as_str()), Some("bob"));
        assert_eq!(tokens.user("nope"), None);

        std::fs::write(&path, "only-a-token\n").expect("write");
        assert!(matches!(
            Tokens::load(&path),
            Err(TokenFileError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
