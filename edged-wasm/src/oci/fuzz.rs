//! Fuzz tests of what the image service reads from registries and layouts: image references,
//! digests, and the tar (or gzipped tar) layers a component is found in. Each must give an
//! answer or an error, never a panic, and never more memory than the limit on a blob. See
//! `wedge_testkit_fuzz` for how they run.

use std::io::Write;

use wedge_testkit_fuzz::Mutation;

use super::service::tests::tar_of;
use super::service::{find_wasm_in_layers, parse_reference};
use super::store::Digest;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(bytes);
    gz.finish().unwrap_or_default()
}

#[test]
fn layers_yield_a_component_or_an_error() {
    let plain = tar_of(&[("app.wasm", b"\0asm\x0d\0\x01\0"), ("etc/config", b"x=1")]);
    let two = tar_of(&[("a.wasm", b"1"), ("./b.wasm", b"2")]);
    let seeds: Vec<&[u8]> = vec![&plain, &two];
    let gz_seeds = [gzip(&plain), gzip(&two)];
    let gz_seeds: Vec<&[u8]> = gz_seeds.iter().map(Vec::as_slice).collect();
    bolero::check!()
        .with_type::<(Mutation, bool, bool)>()
        .for_each(|(m, gzipped, entrypoint)| {
            let (media_type, layer) = if *gzipped {
                (TAR_GZ, m.apply(&gz_seeds))
            } else {
                (TAR, m.apply(&seeds))
            };
            let layers = vec![(media_type.to_owned(), layer)];
            let entrypoint = entrypoint.then_some("/app.wasm");
            if let Ok(wasm) = find_wasm_in_layers("fuzz", &layers, entrypoint, 64 << 10) {
                assert!(wasm.len() <= 64 << 10);
            }
        });
}

#[test]
fn references_and_digests_parse_or_are_refused() {
    const TEXT: &[&str] = &[
        "registry.local:5000/wedge/telemetry:0.1.0",
        "busybox@sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "localhost/a/b/c:latest",
    ];
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let text = m.apply_str(TEXT);
        if let Ok(reference) = parse_reference(&text) {
            let whole = reference.whole();
            assert!(
                parse_reference(&whole).is_ok(),
                "{text:?} parses, {whole:?} does not"
            );
        }
        if let Ok(digest) = Digest::parse(&text) {
            assert_eq!(digest.as_str(), text);
        }
    });
}
