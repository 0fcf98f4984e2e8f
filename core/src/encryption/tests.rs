use super::*;

const K16: &str = "MDEyMzQ1Njc4OWFiY2RlZg=="; // "0123456789abcdef"
const K32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // twice that
const K32B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

fn config(providers: &str) -> EncryptionConfig {
    EncryptionConfig::from_yaml(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
    ))
    .expect("valid config")
}

fn keyed(provider: &str, name: &str, secret: &str) -> String {
    format!("  - {provider}:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
}

fn secrets(c: &EncryptionConfig) -> &Transformer {
    c.for_resource("secrets").expect("secrets are configured")
}

#[test]
fn each_provider_round_trips_in_kubes_layout() {
    let plain = b"{\"data\":{\"password\":\"aHVudGVyMg==\"}}";
    for (provider, secret, nonce) in [
        ("aescbc", K16, 16),
        ("aescbc", K32, 16),
        ("aesgcm", K16, 12),
        ("aesgcm", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3", 12),
        ("aesgcm", K32, 12),
        ("secretbox", K32, 24),
    ] {
        let c = config(&keyed(provider, "k1", secret));
        let t = secrets(&c);
        let sealed = t
            .encrypt(plain, b"/registry/secrets/default/s")
            .expect("encrypt");
        let prefix = format!("k8s:enc:{provider}:v1:k1:");
        assert!(sealed.starts_with(prefix.as_bytes()), "{provider}");
        let body = sealed.len() - prefix.len() - nonce;
        match provider {
            // PKCS#7: always at least one byte of padding, whole blocks.
            "aescbc" => assert_eq!(body, (plain.len() / 16 + 1) * 16),
            // The ciphertext and a 16-byte tag.
            _ => assert_eq!(body, plain.len() + 16, "{provider}"),
        }
        assert!(
            !sealed.windows(8).any(|w| w == b"password"),
            "{provider} leaves no plaintext"
        );
        let opened = t
            .decrypt(&sealed, b"/registry/secrets/default/s")
            .expect("decrypt");
        assert_eq!(opened.data, plain, "{provider}");
        assert!(!opened.stale);
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            t.encrypt(plain, b"/registry/secrets/default/s")
                .expect("encrypt")
        );
    }
}

#[test]
fn aesgcm_binds_the_value_to_its_storage_key() {
    let c = config(&keyed("aesgcm", "k1", K32));
    let t = secrets(&c);
    let sealed = t.encrypt(b"{}", b"/registry/secrets/a/s").expect("encrypt");
    let err = t
        .decrypt(&sealed, b"/registry/secrets/b/s")
        .expect_err("another key");
    assert!(
        matches!(err, TransformError::Corrupt { provider: "aesgcm", ref key, .. } if key == "k1"),
        "{err}"
    );
}

#[test]
fn a_value_under_an_unknown_key_name_is_an_error_naming_it() {
    let old = config(&keyed("aescbc", "old", K32));
    let sealed = secrets(&old).encrypt(b"{}", b"k").expect("encrypt");
    let new = config(&format!(
        "{}  - identity: {{}}\n",
        keyed("aescbc", "new", K32B)
    ));
    let err = secrets(&new)
        .decrypt(&sealed, b"k")
        .expect_err("unknown key");
    assert_eq!(
        err,
        TransformError::UnknownKey {
            provider: "aescbc".into(),
            key: "old".into(),
            configured: "aescbc/new, identity".into(),
        }
    );
    assert!(err.to_string().contains("\"old\""), "{err}");
    // Identity alone does not hand out ciphertext as if it were the object.
    let identity = config("  - identity: {}\n");
    let err = secrets(&identity)
        .decrypt(&sealed, b"k")
        .expect_err("encrypted");
    assert!(err.to_string().contains("old"), "{err}");
}

#[test]
fn the_same_key_name_with_another_secret_fails_authentication() {
    let one = config(&keyed("secretbox", "k", K32));
    let sealed = secrets(&one).encrypt(b"{}", b"k").expect("encrypt");
    let other = config(&keyed("secretbox", "k", K32B));
    assert!(matches!(
        secrets(&other).decrypt(&sealed, b"k"),
        Err(TransformError::Corrupt { .. })
    ));
    // Truncated values are errors, not panics.
    for cut in [0, 5, 20, 30, 50] {
        let short = &sealed[..cut.min(sealed.len())];
        assert!(secrets(&one).decrypt(short, b"k").is_err(), "cut at {cut}");
    }
}

#[test]
fn rotation_reads_old_keys_and_plain_data_and_marks_them_stale() {
    let old = config(&format!(
        "{}  - identity: {{}}\n",
        keyed("aescbc", "old", K32)
    ));
    let under_old = secrets(&old).encrypt(b"{\"a\":1}", b"k").expect("encrypt");
    let rotated = config(&format!(
        "{}{}  - identity: {{}}\n",
        keyed("aesgcm", "new", K32B),
        keyed("aescbc", "old", K32)
    ));
    let t = secrets(&rotated);
    let read = t.decrypt(&under_old, b"k").expect("old key still reads");
    assert_eq!(read.data, b"{\"a\":1}");
    assert!(read.stale);
    let plain = t.decrypt(b"{\"b\":2}", b"k").expect("plain data reads");
    assert_eq!(plain.data, b"{\"b\":2}");
    assert!(plain.stale);
    let rewritten = t.encrypt(&read.data, b"k").expect("encrypt");
    assert!(rewritten.starts_with(b"k8s:enc:aesgcm:v1:new:"));
    assert!(!t.decrypt(&rewritten, b"k").expect("decrypt").stale);
    // Identity first: writes plain, still reads the encrypted.
    let off = config(&format!(
        "  - identity: {{}}\n{}",
        keyed("aescbc", "old", K32)
    ));
    assert!(secrets(&off).writes_plain());
    assert_eq!(secrets(&off).encrypt(b"x", b"k").expect("plain"), b"x");
    assert_eq!(
        secrets(&off).decrypt(&under_old, b"k").expect("read").data,
        b"{\"a\":1}"
    );
}

#[test]
fn resources_match_by_name_and_group_wildcards_first_rule_first() {
    let c = EncryptionConfig::from_yaml(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets, deployments.apps]\n  providers:\n{}\
         - resources: ['*.batch', '*.']\n  providers:\n{}",
        keyed("aesgcm", "a", K32),
        keyed("secretbox", "b", K32)
    ))
    .expect("config");
    let first = |r: &str| {
        c.for_resource(r)
            .map(|t| t.encrypt(b"", b"").expect("encrypt")[..18].to_vec())
    };
    assert_eq!(
        first("secrets").as_deref(),
        Some(&b"k8s:enc:aesgcm:v1:"[..])
    );
    assert_eq!(
        first("deployments.apps").as_deref(),
        Some(&b"k8s:enc:aesgcm:v1:"[..])
    );
    assert!(first("jobs.batch").is_some_and(|p| p.starts_with(b"k8s:enc:secretbox")));
    assert!(first("configmaps").is_some_and(|p| p.starts_with(b"k8s:enc:secretbox")));
    assert!(first("replicasets.apps").is_none());
    assert!(
        EncryptionConfig::default()
            .for_resource("secrets")
            .is_none()
    );
    let all = EncryptionConfig::from_yaml(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n{}",
        keyed("aesgcm", "a", K32)
    ))
    .expect("config");
    assert!(all.for_resource("leases.coordination.k8s.io").is_some());
}

#[test]
fn bad_configurations_are_refused_with_what_is_wrong() {
    let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n";
    for (providers, says) in [
        (keyed("aescbc", "k", "MTIz"), "3 bytes"),
        (keyed("secretbox", "k", K16), "it must be 32"),
        (keyed("aesgcm", "k", "not base64!"), "not base64"),
        (keyed("aesgcm", "a:b", K32), "no ':'"),
        (
            "  - aesgcm:\n      keys:\n      - {name: k, secret: MDEyMzQ1Njc4OWFiY2RlZg==}\n      - {name: k, secret: MDEyMzQ1Njc4OWFiY2RlZg==}\n".into(),
            "listed twice",
        ),
        ("  - kms: {name: x}\n".into(), "kms provider is not supported"),
        ("  - aesgcm: {keys: []}\n".into(), "no keys"),
        ("  - aescbc2: {}\n".into(), "does not parse"),
    ] {
        let err = EncryptionConfig::from_yaml(&format!("{head}{providers}")).expect_err(says);
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
    let err = EncryptionConfig::from_yaml("apiVersion: v1\nkind: ConfigMap\n").expect_err("kind");
    assert!(err.to_string().contains("EncryptionConfiguration"), "{err}");
}

#[test]
fn a_generated_configuration_parses_and_encrypts_secrets() {
    let text = generate(&["secrets"], "key1");
    let c = EncryptionConfig::from_yaml(&text).expect("generated config parses");
    let sealed = secrets(&c).encrypt(b"{}", b"k").expect("encrypt");
    assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    assert!(c.for_resource("configmaps").is_none());
    assert_ne!(
        generate(&["secrets"], "key1"),
        text,
        "a fresh key each time"
    );
}
