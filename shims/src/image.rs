//! Images through CRI's `ImageService`: credentials in, [`ImageInfo`] out. Pure mappings; the
//! calls are in [`crate::runtime`], the sorting of pull failures in [`crate::errors`].
//!
//! containerd pulls and unpacks in one call and answers with the image's id (`sha256:...`),
//! which is what containers are then created from. Registries reached over plain HTTP, or
//! through a mirror, are containerd's configuration (`registry.config_path`'s `hosts.toml`),
//! not this crate's.

use k8s_cri::v1 as cri;
use wedge_core::runtime::{ImageInfo, PullAuth};

/// CRI's credentials for one pull. The server address stays empty: the credentials are for
/// whichever registry the reference names.
///
/// A bearer token goes in `registry_token`, the field CRI has for it; containerd 1.6 does not
/// read that field yet (its `ParseAuth` has a TODO), so such a pull is anonymous there and the
/// registry's refusal comes back as `Unauthorized`.
pub(crate) fn auth_config(auth: &PullAuth) -> cri::AuthConfig {
    match auth {
        PullAuth::Basic { username, password } => cri::AuthConfig {
            username: username.clone(),
            password: password.clone(),
            ..Default::default()
        },
        PullAuth::Bearer(token) => cri::AuthConfig {
            registry_token: token.clone(),
            ..Default::default()
        },
    }
}

/// The spec naming an image by reference or id.
pub(crate) fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

pub(crate) fn image_info(image: cri::Image) -> ImageInfo {
    ImageInfo {
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        size_bytes: image.size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_where_cri_wants_them() {
        let basic = auth_config(&PullAuth::Basic {
            username: "ci".into(),
            password: "pw".into(),
        });
        assert_eq!(
            (basic.username.as_str(), basic.password.as_str()),
            ("ci", "pw")
        );
        assert!(basic.registry_token.is_empty() && basic.server_address.is_empty());
        let bearer = auth_config(&PullAuth::Bearer("tok".into()));
        assert_eq!(bearer.registry_token, "tok");
        assert!(bearer.username.is_empty());
    }

    #[test]
    fn image_info_keeps_names_and_size() {
        let info = image_info(cri::Image {
            id: "sha256:aa".into(),
            repo_tags: vec!["r/busybox:1.35".into()],
            repo_digests: vec!["r/busybox@sha256:bb".into()],
            size: 1 << 20,
            ..Default::default()
        });
        assert_eq!(info.id, "sha256:aa");
        assert_eq!(info.repo_tags, ["r/busybox:1.35"]);
        assert_eq!(info.repo_digests, ["r/busybox@sha256:bb"]);
        assert_eq!(info.size_bytes, 1 << 20);
    }
}
