//! What the token tests share: the test key, a fixed clock, the policy, the claims of a valid
//! token, and a signer for arbitrary header and payload text.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use koherent_token::keys::parse_private_jwk;
use koherent_token::*;
use serde_json::{json, Value};

pub const TEST_PRIVATE: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4","d":"PQ_Y54LpnaQZ24wKvkroJ3feOo4FJ2YcvKRmv8l9C5E","kid":"koherent-test-key"}"#;
pub const NOW: i64 = 1_750_001_000;

pub fn signing_key() -> SigningKey {
    parse_private_jwk(&serde_json::from_str(TEST_PRIVATE).unwrap())
        .unwrap()
        .1
}

pub fn policy() -> Policy {
    Policy {
        audience: Some("koherent".into()),
        leeway: 0,
        now: NOW,
        accept_eddsa: false,
    }
}

pub fn claims() -> Value {
    json!({
        "iss": "rekuest", "aud": ["koherent"], "sub": "1",
        "act": {"sub": "1", "cid": "static"},
        "iat": 1_750_000_000i64, "exp": 1_750_003_600i64,
        "jti": "j-1", "tsk": "task-1", "ptk": null, "rtk": "task-1", "rcb": "1",
        "ahs": args_hash(Some(&json!({"x": 1}))), "aha": "sha256-canonical-v1"
    })
}

pub fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// Sign arbitrary header and payload text with the test key.
pub fn raw(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = signing_key().sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}
