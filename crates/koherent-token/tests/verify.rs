//! Verification against the specification's token and a catalogue of forgeries and malformations.
//! Each case asserts the exact refusal reason.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use koherent_token::keys::parse_public_key;
use koherent_token::*;
use serde_json::{json, Value};

mod common;
use common::*;

const SPEC_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZDI1NTE5Iiwia2lkIjoia29oZXJlbnQtdGVzdC1rZXkifQ.eyJpc3MiOiJyZWt1ZXN0IiwiYXVkIjpbImtvaGVyZW50Il0sInN1YiI6IjEiLCJhY3QiOnsic3ViIjoiMSIsImNpZCI6InN0YXRpYyJ9LCJpYXQiOjE3NTAwMDAwMDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYiLCJ0c2siOiJ0YXNrLTEiLCJwdGsiOm51bGwsInJ0ayI6InRhc2stMSIsInJjYiI6IjEiLCJhaHMiOiI1MDQxYmYxZjcxM2RmMjA0Nzg0MzUzZTgyZjZhNGE1MzU5MzFjYjY0ZjFmNGI0YTVhZWFmZmNiNzIwOTE4YjIyIiwiYWhhIjoic2hhMjU2LWNhbm9uaWNhbC12MSJ9.RAv1yYmX2V5GBDCwO-Yo-7YPcmGnDnh2QFNHDF_JjbrTnc-WGaSUlznI4wfmkZHtWQ7sgx6dgimFjNGk_iHMCg";
const TEST_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4","kid":"koherent-test-key"}"#;

fn keys() -> KeySet {
    let (kid, key) = parse_public_key(TEST_JWK).unwrap();
    let mut ks = KeySet::new();
    ks.insert("rekuest", &kid.unwrap(), key);
    let other = SigningKey::from_bytes(&[7u8; 32]);
    ks.insert("other-issuer", "other-key", other.verifying_key());
    ks
}

fn with(f: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    f(&mut c);
    mint(&signing_key(), "koherent-test-key", "Ed25519", &c)
}

fn reason(token: &str) -> &'static str {
    match verify(token, &keys(), &policy()) {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[test]
fn spec_token_verifies_inside_its_window_only() {
    let c = verify(SPEC_TOKEN, &keys(), &policy()).unwrap();
    assert_eq!(c.tsk, "task-1");
    assert_eq!(c.act.cid, "static");
    assert_eq!(c.ptk, None);
    assert_eq!(c.aud, vec!["koherent".to_string()]);
    c.check_args(Some(&json!({"x": 1}))).unwrap();
    assert_eq!(
        c.check_args(Some(&json!({"x": 2}))).unwrap_err().reason(),
        "args_mismatch"
    );
    let mut p = policy();
    p.now = 1_750_003_599; // valid strictly before exp
    assert!(verify(SPEC_TOKEN, &keys(), &p).is_ok());
    p.now = 1_750_003_600;
    assert_eq!(
        verify(SPEC_TOKEN, &keys(), &p).unwrap_err().reason(),
        "expired"
    );
    p.leeway = 1;
    assert!(verify(SPEC_TOKEN, &keys(), &p).is_ok());
    p.now = 1_749_999_999;
    p.leeway = 0;
    assert_eq!(
        verify(SPEC_TOKEN, &keys(), &p).unwrap_err().reason(),
        "issued_in_future"
    );
}

#[test]
fn audience_policy() {
    let mut p = policy();
    p.audience = None;
    assert_eq!(
        verify(SPEC_TOKEN, &keys(), &p).unwrap_err().reason(),
        "audience_not_configured"
    );
    p.audience = Some("*".into());
    assert!(verify(SPEC_TOKEN, &keys(), &p).is_ok());
    p.audience = Some("elsewhere".into());
    assert_eq!(
        verify(SPEC_TOKEN, &keys(), &p).unwrap_err().reason(),
        "wrong_audience"
    );
    assert_eq!(reason(&with(|c| c["aud"] = json!("koherent"))), "ok");
    assert_eq!(reason(&with(|c| c["aud"] = json!(["a", "koherent"]))), "ok");
}

#[test]
fn eddsa_only_when_allowed() {
    let t = mint(&signing_key(), "koherent-test-key", "EdDSA", &claims());
    assert_eq!(reason(&t), "algorithm_not_accepted");
    let mut p = policy();
    p.accept_eddsa = true;
    assert!(verify(&t, &keys(), &p).is_ok());
}

#[test]
fn forgeries_and_malformations() {
    let good = with(|_| {});
    assert_eq!(reason(&good), "ok");
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let payload = serde_json::to_string(&claims()).unwrap();
    let sig_bytes = URL_SAFE_NO_PAD.decode(s).unwrap();

    let mut flipped = sig_bytes.clone();
    flipped[10] ^= 1;
    // S + l (non-canonical S): add the group order to the scalar half.
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut non_canonical = sig_bytes.clone();
    let mut carry = 0u16;
    for i in 0..32 {
        let v = non_canonical[32 + i] as u16 + l[i] as u16 + carry;
        non_canonical[32 + i] = v as u8;
        carry = v >> 8;
    }
    let other_key = SigningKey::from_bytes(&[9u8; 32]);
    let other_sig = {
        let input = format!("{h}.{p}");
        b64(&other_key.sign(input.as_bytes()).to_bytes())
    };
    let tampered_payload = b64(payload.replace("task-1", "task-9").as_bytes());

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            raw(r#"{"alg":"none","kid":"koherent-test-key"}"#, &payload),
            "algorithm_not_accepted",
        ),
        (
            "alg HS256",
            raw(r#"{"alg":"HS256","kid":"koherent-test-key"}"#, &payload),
            "algorithm_not_accepted",
        ),
        (
            "alg RS256",
            raw(r#"{"alg":"RS256","kid":"koherent-test-key"}"#, &payload),
            "algorithm_not_accepted",
        ),
        (
            "alg ed25519 lowercase",
            raw(r#"{"alg":"ed25519","kid":"koherent-test-key"}"#, &payload),
            "algorithm_not_accepted",
        ),
        (
            "alg missing",
            raw(r#"{"kid":"koherent-test-key"}"#, &payload),
            "invalid_header",
        ),
        (
            "alg not a string",
            raw(r#"{"alg":1,"kid":"koherent-test-key"}"#, &payload),
            "invalid_header",
        ),
        (
            "kid missing",
            raw(r#"{"alg":"Ed25519"}"#, &payload),
            "invalid_header",
        ),
        (
            "kid empty",
            raw(r#"{"alg":"Ed25519","kid":""}"#, &payload),
            "invalid_header",
        ),
        (
            "kid not a string",
            raw(r#"{"alg":"Ed25519","kid":5}"#, &payload),
            "invalid_header",
        ),
        (
            "kid unknown",
            raw(r#"{"alg":"Ed25519","kid":"nope"}"#, &payload),
            "unknown_key",
        ),
        (
            "kid of another issuer",
            raw(r#"{"alg":"Ed25519","kid":"other-key"}"#, &payload),
            "unknown_key",
        ),
        (
            "kid unicode lookalike",
            raw(
                "{\"alg\":\"Ed25519\",\"kid\":\"koherent-test-k\u{0435}y\"}",
                &payload,
            ),
            "unknown_key",
        ),
        (
            "kid with zero-width space",
            raw(
                "{\"alg\":\"Ed25519\",\"kid\":\"koherent-test-key\u{200b}\"}",
                &payload,
            ),
            "unknown_key",
        ),
        (
            "kid NFD form",
            raw(
                "{\"alg\":\"Ed25519\",\"kid\":\"koherent-test-ke\u{0079}\u{0301}\"}",
                &payload,
            ),
            "unknown_key",
        ),
        (
            "header member not allowed",
            raw(
                r#"{"alg":"Ed25519","kid":"koherent-test-key","zip":"DEF"}"#,
                &payload,
            ),
            "header_member_not_allowed",
        ),
        (
            "crit header",
            raw(
                r#"{"alg":"Ed25519","kid":"koherent-test-key","crit":["exp"]}"#,
                &payload,
            ),
            "invalid_header",
        ),
        (
            "b64 false",
            raw(
                r#"{"alg":"Ed25519","kid":"koherent-test-key","b64":false}"#,
                &payload,
            ),
            "invalid_header",
        ),
        (
            "duplicate alg",
            raw(
                r#"{"alg":"none","alg":"Ed25519","kid":"koherent-test-key"}"#,
                &payload,
            ),
            "duplicate_member",
        ),
        (
            "duplicate claim",
            raw(
                r#"{"alg":"Ed25519","kid":"koherent-test-key"}"#,
                &payload.replacen("{", r#"{"tsk":"evil","#, 1),
            ),
            "duplicate_member",
        ),
        (
            "header not JSON",
            raw("not json", &payload),
            "malformed_json",
        ),
        ("header a list", raw("[1]", &payload), "malformed_json"),
        (
            "payload not JSON",
            raw(r#"{"alg":"Ed25519","kid":"koherent-test-key"}"#, "{"),
            "malformed_json",
        ),
        (
            "payload a string",
            raw(r#"{"alg":"Ed25519","kid":"koherent-test-key"}"#, "\"x\""),
            "malformed_json",
        ),
        (
            "payload trailing garbage",
            raw(
                r#"{"alg":"Ed25519","kid":"koherent-test-key"}"#,
                &format!("{payload} x"),
            ),
            "malformed_json",
        ),
        (
            "unknown issuer",
            with(|c| c["iss"] = json!("evil")),
            "untrusted_issuer",
        ),
        (
            "issuer missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "invalid_claim",
        ),
        (
            "issuer not a string",
            with(|c| c["iss"] = json!(1)),
            "invalid_claim",
        ),
        (
            "signature flipped",
            format!("{h}.{p}.{}", b64(&flipped)),
            "bad_signature",
        ),
        (
            "signature truncated",
            format!("{h}.{p}.{}", b64(&sig_bytes[..63])),
            "bad_signature",
        ),
        ("signature empty", format!("{h}.{p}."), "bad_signature"),
        (
            "signature of another key",
            format!("{h}.{p}.{other_sig}"),
            "bad_signature",
        ),
        (
            "signature non-canonical S",
            format!("{h}.{p}.{}", b64(&non_canonical)),
            "bad_signature",
        ),
        (
            "signature all zero",
            format!("{h}.{p}.{}", b64(&[0u8; 64])),
            "bad_signature",
        ),
        (
            "payload altered after signing",
            format!("{h}.{tampered_payload}.{s}"),
            "bad_signature",
        ),
        ("expired", with(|c| c["exp"] = json!(NOW - 1)), "expired"),
        (
            "iat in the future",
            with(|c| c["iat"] = json!(NOW + 60)),
            "issued_in_future",
        ),
        (
            "nbf ahead",
            with(|c| c["nbf"] = json!(NOW + 60)),
            "not_yet_valid",
        ),
        (
            "nbf not an integer",
            with(|c| c["nbf"] = json!("soon")),
            "invalid_claim",
        ),
        (
            "audience missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "invalid_claim",
        ),
        (
            "audience empty",
            with(|c| c["aud"] = json!([])),
            "invalid_claim",
        ),
        (
            "audience other",
            with(|c| c["aud"] = json!(["elsewhere"])),
            "wrong_audience",
        ),
        (
            "audience of wrong type",
            with(|c| c["aud"] = json!({"a": 1})),
            "invalid_claim",
        ),
        (
            "audience list with number",
            with(|c| c["aud"] = json!(["koherent", 3])),
            "invalid_claim",
        ),
        (
            "exp missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "invalid_claim",
        ),
        (
            "exp a float",
            with(|c| c["exp"] = json!(1_750_003_600.5)),
            "ok",
        ),
        (
            "exp a string",
            with(|c| c["exp"] = json!("1750003600")),
            "invalid_claim",
        ),
        (
            "iat missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            "invalid_claim",
        ),
        (
            "sub missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "invalid_claim",
        ),
        (
            "sub a number",
            with(|c| c["sub"] = json!(1)),
            "invalid_claim",
        ),
        (
            "act missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("act");
            }),
            "invalid_claim",
        ),
        (
            "act a string",
            with(|c| c["act"] = json!("agent")),
            "invalid_claim",
        ),
        (
            "act.cid missing",
            with(|c| c["act"] = json!({"sub": "1"})),
            "invalid_claim",
        ),
        (
            "act.sub a number",
            with(|c| c["act"] = json!({"sub": 1, "cid": "x"})),
            "invalid_claim",
        ),
        (
            "jti missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "invalid_claim",
        ),
        (
            "tsk missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("tsk");
            }),
            "invalid_claim",
        ),
        (
            "tsk a number",
            with(|c| c["tsk"] = json!(42)),
            "invalid_claim",
        ),
        (
            "ptk a number",
            with(|c| c["ptk"] = json!(1)),
            "invalid_claim",
        ),
        (
            "rtk missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("rtk");
            }),
            "invalid_claim",
        ),
        (
            "rcb missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("rcb");
            }),
            "invalid_claim",
        ),
        (
            "ahs missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("ahs");
            }),
            "invalid_claim",
        ),
        (
            "aha missing",
            with(|c| {
                c.as_object_mut().unwrap().remove("aha");
            }),
            "invalid_claim",
        ),
        (
            "bad base64 in header",
            format!("{h}*.{p}.{s}"),
            "malformed_base64",
        ),
        (
            "bad base64 in payload",
            format!("{h}.{p}!.{s}"),
            "malformed_base64",
        ),
        (
            "standard base64 alphabet",
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/")),
            if s.contains(['-', '_']) {
                "malformed_base64"
            } else {
                "ok"
            },
        ),
        ("padding", format!("{h}=.{p}.{s}"), "malformed_base64"),
        (
            "padding in signature",
            format!("{h}.{p}.{s}=="),
            "malformed_base64",
        ),
        ("whitespace", format!(" {good}"), "malformed_base64"),
        ("two segments", format!("{h}.{p}"), "malformed_segments"),
        ("four segments", format!("{good}.{s}"), "malformed_segments"),
        ("empty token", String::new(), "malformed_segments"),
        (
            "Bearer prefix",
            format!("Bearer {good}"),
            "malformed_base64",
        ),
        (
            "oversized header",
            raw(
                &format!(r#"{{"alg":"Ed25519","kid":"{}"}}"#, "k".repeat(600)),
                &payload,
            ),
            "too_large",
        ),
        (
            "oversized payload",
            with(|c| c["pad"] = json!("p".repeat(130_000))),
            "too_large",
        ),
        (
            "oversized signature",
            format!("{h}.{p}.{}", b64(&[1u8; 1100])),
            "too_large",
        ),
        ("huge input", "a".repeat(1_000_000), "too_large"),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = vec![];
    for (name, token, want) in &cases {
        let got = reason(token);
        if got != *want {
            failures.push(format!("{name}: expected {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn unknown_claims_are_ignored_and_ptk_may_be_set() {
    let t = with(|c| {
        c["ptk"] = json!("parent-1");
        c["org"] = json!("lab");
        c["act"]["iss"] = json!("rekuest");
    });
    let c = verify(&t, &keys(), &policy()).unwrap();
    assert_eq!(c.ptk.as_deref(), Some("parent-1"));
    assert_eq!(c.act.iss.as_deref(), Some("rekuest"));
    assert_eq!(c.payload["org"], "lab");
}

#[test]
fn small_order_key_cannot_be_registered() {
    // The identity point: with it, any all-zero-ish signature would verify under a lax verifier.
    let mut ident = [0u8; 32];
    ident[0] = 1;
    let jwk = json!({"kty":"OKP","crv":"Ed25519","x": b64(&ident), "kid":"weak"});
    assert_eq!(keys::parse_public_jwk(&jwk).unwrap_err(), KeyError::Weak);
}

#[test]
fn errors_never_echo_the_token() {
    let t = with(|c| c["exp"] = json!(NOW - 1));
    let e = verify(&t, &keys(), &policy()).unwrap_err();
    let signature = t.rsplit('.').next().unwrap();
    assert!(!e.to_string().contains(signature));
    assert!(!e.detail().contains(signature));
    assert_eq!(e.class(), Class::Unauthorized);
    assert_eq!(TokenError::Segments(2).class(), Class::Malformed);
}
