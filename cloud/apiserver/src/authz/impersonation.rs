//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): a request made as another user, by
//! one allowed to `impersonate` them, as kube-apiserver's impersonation filter does it. Each
//! part is authorized on its own: the user (`users`, or `serviceaccounts` in its namespace for
//! `system:serviceaccount:<ns>:<name>`), each group (`groups`), the uid (`uids` in
//! `authentication.k8s.io`). The request then goes on as the impersonated user, with
//! `system:authenticated` (and a ServiceAccount's groups) added as for a real one.

use http::HeaderMap;

use super::{Attributes, Target, allowed, rbac::AUTHENTICATED};
use crate::api::error::ApiError;
use crate::auth::User;
use crate::storage::Store;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";

/// The user the request acts as: `user`, or whom its `Impersonate-*` headers name, when `user`
/// may impersonate them.
pub fn acting_user(store: &Store, user: User, headers: &HeaderMap) -> Result<User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let names = values(USER);
    let groups = values(GROUP);
    let uids = values(UID);
    let extras = headers.keys().any(|k| k.as_str().starts_with(EXTRA_PREFIX));
    let Some(name) = names.first() else {
        if !groups.is_empty() || !uids.is_empty() || extras {
            return Err(ApiError::BadRequest(format!(
                "requested {:?} without impersonating a user",
                groups.iter().chain(&uids).collect::<Vec<_>>()
            )));
        }
        return Ok(user);
    };
    if names.len() > 1 {
        return Err(ApiError::BadRequest(
            "only one Impersonate-User header may be given".into(),
        ));
    }
    if extras {
        return Err(ApiError::BadRequest(
            "impersonating user extras is not supported".into(),
        ));
    }
    let may = |resource: &str, group: &str, namespace: Option<&str>, object: &str| {
        let attributes = Attributes {
            user: &user,
            verbs: vec!["impersonate".to_owned()],
            target: Target::Resource {
                group: group.to_owned(),
                resource: resource.to_owned(),
                subresource: None,
                namespace: namespace.map(str::to_owned),
                name: Some(object.to_owned()),
            },
        };
        if allowed(store, &attributes) {
            Ok(())
        } else {
            let qualified = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_owned(),
            };
            Err(ApiError::Forbidden(format!(
                "{qualified} \"{object}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}\" in API group \"{group}\" {scope}",
                user.name
            )))
        }
    };
    let mut acting_groups = groups.clone();
    match service_account(name) {
        Some((namespace, account)) => {
            may("serviceaccounts", "", Some(namespace), account)?;
            if groups.is_empty() {
                acting_groups = vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{namespace}"),
                ];
            }
        }
        None => may("users", "", None, name)?,
    }
    for group in &groups {
        may("groups", "", None, group)?;
    }
    for uid in &uids {
        may("uids", "authentication.k8s.io", None, uid)?;
    }
    if name != "system:anonymous" && !acting_groups.iter().any(|g| g == AUTHENTICATED) {
        acting_groups.push(AUTHENTICATED.to_owned());
    }
    tracing::debug!(by = %user.name, as_user = %name, "impersonating");
    Ok(User {
        name: name.clone(),
        groups: acting_groups,
    })
}

/// `system:serviceaccount:<namespace>:<name>`, split.
fn service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn who_may_impersonate_whom() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let admin = user("root", &[super::super::MASTERS]);
        let alice = user("alice", &[]);

        // No headers: the user as is.
        assert_eq!(
            acting_user(&store, alice.clone(), &headers(&[])).expect("as is"),
            alice
        );
        // Masters may be anyone, with the groups they name and system:authenticated.
        let acting = acting_user(
            &store,
            admin.clone(),
            &headers(&[("Impersonate-User", "bob"), ("Impersonate-Group", "devs")]),
        )
        .expect("allowed");
        assert_eq!(acting, user("bob", &["devs", AUTHENTICATED]));
        // A ServiceAccount gets its groups.
        let acting = acting_user(
            &store,
            admin,
            &headers(&[("Impersonate-User", "system:serviceaccount:ci:deployer")]),
        )
        .expect("allowed");
        assert_eq!(
            acting.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ci",
                AUTHENTICATED
            ]
        );
        // Others may not, and are told in kube-apiserver's words.
        match acting_user(
            &store,
            alice.clone(),
            &headers(&[("Impersonate-User", "bob")]),
        ) {
            Err(ApiError::Forbidden(message)) => assert_eq!(
                message,
                "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
            ),
            other => panic!("{other:?}"),
        }
        // Groups without a user are a bad request.
        assert!(matches!(
            acting_user(&store, alice, &headers(&[("Impersonate-Group", "devs")])),
            Err(ApiError::BadRequest(_))
        ));
    }
}
