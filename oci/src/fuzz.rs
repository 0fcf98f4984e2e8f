//! Fuzz tests of what this crate reads from registries and operators: image manifests and their
//! configs (sorting Wasm from container images), a blob's first bytes, and containerd's
//! `hosts.toml`. Each must give an answer or an error, never a panic. See `wedge_testkit_fuzz`.

use std::path::Path;

use oci_client::manifest::OciImageManifest;
use wedge_testkit_fuzz::Mutation;

use crate::hosts::HostsFile;
use crate::media::{binary_kind, classify};

const MANIFESTS: &[&str] = &[
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/wasm","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}"#,
    r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"annotations":{"a":"b"}}],"annotations":{"module.wasm.image/variant":"compat-smart"}}"#,
];
const CONFIGS: &[&str] = &[
    r#"{"architecture":"wasm","os":"wasip2","config":{"Entrypoint":["/app.wasm"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]}}"#,
    "{}",
];

#[test]
fn manifests_and_configs_classify_or_are_refused() {
    bolero::check!()
        .with_type::<(Mutation, Mutation)>()
        .for_each(|(manifest, config)| {
            if let Ok(manifest) =
                serde_json::from_str::<OciImageManifest>(&manifest.apply_str(MANIFESTS))
            {
                let _ = classify(&manifest, config.apply_str(CONFIGS).as_bytes());
            }
        });
}

#[test]
fn blobs_are_told_apart_by_their_first_bytes() {
    const BINARIES: &[&[u8]] = &[b"\0asm\x0d\0\x01\0", b"\0asm\x01\0\0\0", b"\x1f\x8b\x08\0"];
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let _ = binary_kind(&m.apply(BINARIES));
    });
}

#[test]
fn hosts_files_parse_or_are_refused() {
    const HOSTS: &[&str] = &[
        "server = \"https://registry-1.docker.io\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
        "[host.\"https://mirror.local:8443/v2\"]\n  capabilities = [\"pull\"]\n  ca = \"/etc/ca.pem\"\n  override_path = true\n  [host.\"https://mirror.local:8443/v2\".header]\n    x-a = \"b\"\n",
    ];
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let _ = HostsFile::parse(
            &m.apply_str(HOSTS),
            Path::new("/etc/containerd/certs.d/x/hosts.toml"),
        );
    });
}
