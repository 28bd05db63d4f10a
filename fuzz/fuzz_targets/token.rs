//! Any input to the token parser and verifier: no panic, no hang, and a refusal unless the
//! input is a real token signed by the test key.
#![no_main]
use koherent_token::{keys::parse_public_key, verify, KeySet, Policy};
use libfuzzer_sys::fuzz_target;

const TEST_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4","kid":"koherent-test-key"}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let (kid, key) = parse_public_key(TEST_JWK).unwrap();
    let mut keys = KeySet::new();
    keys.insert("rekuest", &kid.unwrap(), key);
    for accept_eddsa in [false, true] {
        let policy = Policy { audience: Some("koherent".into()), leeway: 0, now: 1_750_001_000, accept_eddsa };
        if let Err(e) = verify(token, &keys, &policy) {
            // every refusal has a reason and a detail that never contains the input
            assert!(!e.reason().is_empty());
            if token.len() > 16 && token.contains('.') {
                assert!(!e.detail().contains(token));
            }
        }
    }
});
