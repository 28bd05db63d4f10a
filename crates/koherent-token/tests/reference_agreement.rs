//! Where koherent used to disagree with the reference verifier (authentikate 5.1.0 on joserfc
//! 1.8.0), one test per disagreement, each asserting the exact verdict and reason.
//! tests/test_verifier_differential.py checks the same against the reference itself.

use ed25519_dalek::SigningKey;
use koherent_token::keys::{
    parse_jwks, parse_jwks_bound, parse_public_jwk, parse_public_jwk_bound,
};
use koherent_token::token::{MAX_HEADER, MAX_PAYLOAD, MAX_SIGNATURE, MAX_TOKEN};
use koherent_token::*;
use serde_json::{json, Value};

mod common;
use common::*;

const X: &str = "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4";
const KID: &str = "koherent-test-key";

fn keys() -> KeySet {
    let mut ks = KeySet::new();
    ks.insert("rekuest", KID, signing_key().verifying_key());
    ks
}

fn header_with(extra: Value) -> String {
    let mut h = json!({"typ": "JWT", "alg": "Ed25519", "kid": KID});
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    h.to_string()
}

fn with(f: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    f(&mut c);
    mint(&signing_key(), KID, "Ed25519", &c)
}

fn reason_with(token: &str, keys: &KeySet, policy: &Policy) -> &'static str {
    match verify(token, keys, policy) {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

fn reason(token: &str) -> &'static str {
    reason_with(token, &keys(), &policy())
}

// 1. A token is valid only strictly before its exp.
#[test]
fn exp_equal_to_now_is_expired() {
    let t = with(|c| c["exp"] = json!(NOW));
    assert_eq!(reason(&t), "expired");
    let t = with(|c| c["exp"] = json!(NOW + 1));
    assert_eq!(reason(&t), "ok");
    let t = with(|c| c["exp"] = json!(NOW as f64 + 0.5));
    assert_eq!(reason(&t), "ok");
    let t = with(|c| c["exp"] = json!(NOW as f64 - 0.5));
    assert_eq!(reason(&t), "expired");
    // leeway widens it: exp == now - leeway is the first expired instant
    let mut p = policy();
    p.leeway = 10;
    let t = with(|c| c["exp"] = json!(NOW - 9));
    assert_eq!(reason_with(&t, &keys(), &p), "ok");
    let t = with(|c| c["exp"] = json!(NOW - 10));
    assert_eq!(reason_with(&t, &keys(), &p), "expired");
    // iat == now and nbf == now are fine; a second later is not
    assert_eq!(reason(&with(|c| c["iat"] = json!(NOW))), "ok");
    assert_eq!(
        reason(&with(|c| c["iat"] = json!(NOW + 1))),
        "issued_in_future"
    );
    assert_eq!(reason(&with(|c| c["nbf"] = json!(NOW))), "ok");
    assert_eq!(
        reason(&with(|c| c["nbf"] = json!(NOW as f64 + 0.25))),
        "not_yet_valid"
    );
    let e = verify(&with(|c| c["exp"] = json!(NOW)), &keys(), &policy()).unwrap_err();
    assert_eq!(
        e.detail(),
        format!("reason: expired; exp {NOW} is not after now {NOW} (leeway included)")
    );
}

/// A header JSON whose base64url text is exactly `chars` characters long.
fn header_of_len(chars: usize) -> String {
    let base = header_with(json!({"x5t": ""}));
    let need = chars * 3 / 4; // decoded bytes for a length that is a multiple of 4 (or 2, 3 mod 4)
    let pad = need - base.len();
    let h = header_with(json!({"x5t": "a".repeat(pad)}));
    assert_eq!(b64(h.as_bytes()).len(), chars, "header length");
    h
}

/// A payload JSON whose base64url text is exactly `chars` characters long.
fn payload_of_len(chars: usize) -> String {
    let mut c = claims();
    c["pad"] = json!("");
    let base = c.to_string().len();
    let need = chars * 3 / 4;
    c["pad"] = json!("p".repeat(need - base));
    let p = c.to_string();
    assert_eq!(b64(p.as_bytes()).len(), chars, "payload length");
    p
}

// 2. Size limits apply to the base64url text of each segment, before decoding.
#[test]
fn size_limits_are_on_the_base64url_text() {
    assert_eq!(
        (MAX_HEADER, MAX_PAYLOAD, MAX_SIGNATURE, MAX_TOKEN),
        (512, 128_000, 1024, 129_536)
    );
    let p = claims().to_string();
    // header: 512 characters verify; the next possible length (514) is too large
    assert_eq!(reason(&raw(&header_of_len(512), &p)), "ok");
    let t = raw(&header_of_len(514), &p);
    assert_eq!(reason(&t), "too_large");
    let e = verify(&t, &keys(), &policy()).unwrap_err();
    assert_eq!(
        e,
        TokenError::TooLarge {
            part: Part::Header,
            limit: 512
        }
    );
    assert_eq!(
        e.to_string(),
        "provenance token is too large: header exceeds 512 characters"
    );
    // 384 decoded bytes is 512 characters; 400 bytes (534 characters) used to pass
    let h400 = header_with(json!({"x5t": "a".repeat(400 - header_with(json!({"x5t": ""})).len())}));
    assert_eq!(h400.len(), 400);
    assert_eq!(reason(&raw(&h400, &p)), "too_large");

    // payload: 128000 characters verify, 128002 do not
    let h = header_with(json!({}));
    assert_eq!(reason(&raw(&h, &payload_of_len(128_000))), "ok");
    let t = raw(&h, &payload_of_len(128_002));
    assert_eq!(
        verify(&t, &keys(), &policy()).unwrap_err(),
        TokenError::TooLarge {
            part: Part::Payload,
            limit: 128_000
        }
    );

    // signature: 1024 characters are decoded (and are a bad signature), 1026 are too large
    let good = raw(&h, &p);
    let (input, _) = good.rsplit_once('.').unwrap();
    let sig1024 = b64(&[7u8; 768]);
    assert_eq!(sig1024.len(), 1024);
    assert_eq!(reason(&format!("{input}.{sig1024}")), "bad_signature");
    let sig1026 = b64(&[7u8; 769]);
    assert_eq!(sig1026.len(), 1026);
    assert_eq!(
        verify(&format!("{input}.{sig1026}"), &keys(), &policy()).unwrap_err(),
        TokenError::TooLarge {
            part: Part::Signature,
            limit: 1024
        }
    );
    // a too-long signature is refused for its length even when it is not base64 at all
    assert_eq!(
        reason(&format!("{input}.{}", "*".repeat(1025))),
        "too_large"
    );

    // the whole token: at most 129536 characters, checked before splitting
    // every segment at its limit but the signature: 512 + 1 + 128000 + 1 + sig
    let whole = |n: usize| {
        let sig = n - MAX_HEADER - MAX_PAYLOAD - 2;
        format!(
            "{}.{}.{}",
            "A".repeat(MAX_HEADER),
            "A".repeat(MAX_PAYLOAD),
            "A".repeat(sig)
        )
    };
    let t = whole(MAX_TOKEN);
    assert_eq!(t.len(), 129_536);
    assert_ne!(reason(&t), "too_large");
    let t = whole(MAX_TOKEN + 1);
    assert_eq!(
        verify(&t, &keys(), &policy()).unwrap_err(),
        TokenError::TooLarge {
            part: Part::Token,
            limit: MAX_TOKEN
        }
    );
    assert_eq!(reason(&"a.b".repeat(100_000)), "too_large");
}

// 3. NumericDates may be any finite number; booleans are refused; act.iss null is absent.
#[test]
fn numeric_date_floats_and_act_iss_null() {
    let t = with(|c| {
        c["iat"] = json!(1_750_000_000.25);
        c["exp"] = json!(1_750_003_600.75);
        c["nbf"] = json!(1_749_999_999.5);
    });
    let c = verify(&t, &keys(), &policy()).unwrap();
    assert_eq!(
        (c.iat, c.exp, c.nbf),
        (1_750_000_000.25, 1_750_003_600.75, Some(1_749_999_999.5))
    );
    assert_eq!(reason(&with(|c| c["iat"] = json!(1.75e9))), "ok");
    for claim in ["iat", "exp", "nbf"] {
        for bad in [
            json!(true),
            json!(false),
            json!("1750000000"),
            json!(null),
            json!([1]),
        ] {
            let t = with(|c| c[claim] = bad.clone());
            assert_eq!(reason(&t), "invalid_claim", "{claim} = {bad}");
        }
    }
    // a number too large for a double is not finite
    let p = claims()
        .to_string()
        .replace("\"exp\":1750003600", "\"exp\":1e400");
    assert_eq!(reason(&raw(&header_with(json!({})), &p)), "invalid_claim");

    let t = with(|c| c["act"]["iss"] = json!(null));
    let c = verify(&t, &keys(), &policy()).unwrap();
    assert_eq!(c.act.iss, None);
    let t = with(|c| c["act"]["iss"] = json!("https://lok"));
    assert_eq!(
        verify(&t, &keys(), &policy()).unwrap().act.iss.as_deref(),
        Some("https://lok")
    );
    assert_eq!(
        reason(&with(|c| c["act"]["iss"] = json!(7))),
        "invalid_claim"
    );
}

// 4. Registered header members must have their RFC 7515 types.
#[test]
fn header_member_types() {
    let p = claims().to_string();
    let ok = [
        json!({"typ": "at+jwt"}),
        json!({"cty": "JWT"}),
        json!({"x5t": "abc", "x5t#S256": "def"}),
        json!({"x5c": []}),
        json!({"x5c": ["MIIB"]}),
        json!({"jwk": {"kty": "OKP"}}),
        json!({"jku": "https://issuer/jwks.json"}),
        json!({"x5u": "http://issuer/cert"}),
        json!({"b64": true}),
    ];
    for extra in ok {
        assert_eq!(
            reason(&raw(&header_with(extra.clone()), &p)),
            "ok",
            "{extra}"
        );
    }
    let bad = [
        json!({"typ": 1}),
        json!({"typ": null}),
        json!({"cty": ["JWT"]}),
        json!({"kid": 1}),
        json!({"x5t": 1}),
        json!({"x5t#S256": {}}),
        json!({"x5c": "MIIB"}),
        json!({"x5c": [1]}),
        json!({"jwk": "k"}),
        json!({"jwk": null}),
        json!({"jku": 5}),
        json!({"jku": "ftp://issuer/jwks.json"}),
        json!({"x5u": "issuer/cert"}),
        json!({"b64": "true"}),
        json!({"b64": false}),
        json!({"crit": "kid"}),
        json!({"crit": []}),
        json!({"crit": [1]}),
        json!({"crit": ["kid"]}),
        json!({"crit": ["b64"], "b64": true}),
        json!({"crit": ["exp"]}),
    ];
    for extra in bad {
        assert_eq!(
            reason(&raw(&header_with(extra.clone()), &p)),
            "invalid_header",
            "{extra}"
        );
    }
    let e = verify(
        &raw(&header_with(json!({"typ": 1})), &p),
        &keys(),
        &policy(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "provenance token header is invalid: \"typ\" must be a string"
    );
    assert_eq!(e.class(), Class::Malformed);
    assert_eq!(
        reason(&raw(&header_with(json!({"zip": "DEF"})), &p)),
        "header_member_not_allowed"
    );
}

// 5. aud must be present and non-empty, also when any audience is accepted.
#[test]
fn audience_must_be_non_empty_even_for_any_audience() {
    let mut any = policy();
    any.audience = Some("*".into());
    for (aud, want_any, want_koherent) in [
        (json!(""), "invalid_claim", "invalid_claim"),
        (json!([]), "invalid_claim", "invalid_claim"),
        (json!(null), "invalid_claim", "invalid_claim"),
        (json!(["koherent", 1]), "invalid_claim", "invalid_claim"),
        (json!("elsewhere"), "ok", "wrong_audience"),
        (json!([""]), "ok", "wrong_audience"),
        (json!("koherent"), "ok", "ok"),
        (json!(["x", "koherent"]), "ok", "ok"),
        (json!(["*"]), "ok", "wrong_audience"),
    ] {
        let t = with(|c| c["aud"] = aud.clone());
        assert_eq!(reason_with(&t, &keys(), &any), want_any, "* {aud}");
        assert_eq!(reason(&t), want_koherent, "koherent {aud}");
    }
    let t = with(|c| {
        c.as_object_mut().unwrap().remove("aud");
    });
    assert_eq!(reason_with(&t, &keys(), &any), "invalid_claim");
}

fn jwk(extra: Value) -> Value {
    let mut v = json!({"kty": "OKP", "crv": "Ed25519", "x": X, "kid": KID});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

fn keyset_of(jwks: Value) -> KeySet {
    let mut ks = KeySet::new();
    ks.insert_jwks("rekuest", &jwks).unwrap();
    ks
}

// 6. A JWK's alg binds it to that header alg; a JWK whose use is not sig verifies nothing.
#[test]
fn key_alg_and_use_bind_the_key() {
    let ed = with(|_| {});
    let eddsa = mint(&signing_key(), KID, "EdDSA", &claims());
    let mut allow = policy();
    allow.accept_eddsa = true;

    let cases = [
        // (jwk extra members, Ed25519 token, EdDSA token with accept_eddsa)
        (json!({}), "ok", "ok"),
        (json!({"alg": "Ed25519"}), "ok", "key_alg_mismatch"),
        (json!({"alg": "EdDSA"}), "key_alg_mismatch", "ok"),
        (json!({"use": "sig"}), "ok", "ok"),
        (json!({"use": "enc"}), "key_use_not_sig", "key_use_not_sig"),
        (
            json!({"use": "enc", "alg": "Ed25519"}),
            "key_use_not_sig",
            "key_use_not_sig",
        ),
        (json!({"key_ops": ["verify"]}), "ok", "ok"),
        (
            json!({"key_ops": ["sign"]}),
            "key_use_not_sig",
            "key_use_not_sig",
        ),
    ];
    for (extra, want_ed, want_eddsa) in cases {
        let ks = keyset_of(json!({"keys": [jwk(extra.clone())]}));
        assert_eq!(reason_with(&ed, &ks, &policy()), want_ed, "{extra}");
        assert_eq!(reason_with(&eddsa, &ks, &allow), want_eddsa, "{extra}");
        // EdDSA stays refused when the policy does not allow it, whatever the key says
        assert_eq!(
            reason_with(&eddsa, &ks, &policy()),
            "algorithm_not_accepted",
            "{extra}"
        );
    }
    let e = verify(
        &ed,
        &keyset_of(json!({"keys": [jwk(json!({"alg": "EdDSA"}))]})),
        &policy(),
    )
    .unwrap_err();
    assert_eq!(e.class(), Class::Unauthorized);
    assert_eq!(
        e.to_string(),
        "provenance token key \"koherent-test-key\" is bound to alg \"EdDSA\", the token says \"Ed25519\""
    );

    // the binding is kept by the key set
    let ks = keyset_of(json!({"keys": [jwk(json!({"alg": "EdDSA", "use": "sig"}))]}));
    assert_eq!(
        ks.get_bound("rekuest", KID).unwrap().1,
        KeyBinding {
            alg: Some(Alg::EdDsa),
            sig: true
        }
    );
    // keys added without a JWK get the default: any alg the policy allows
    assert_eq!(
        keys().get_bound("rekuest", KID).unwrap().1,
        KeyBinding::default()
    );
    assert!(
        KeyBinding::default().permits(Alg::EdDsa) && KeyBinding::default().permits(Alg::Ed25519)
    );

    // a JWKS may carry an encryption key next to the signing key; only the latter verifies
    let other = SigningKey::from_bytes(&[9u8; 32]);
    let enc = json!({"kty": "OKP", "crv": "Ed25519", "kid": "enc-key", "use": "enc",
                     "x": b64(other.verifying_key().as_bytes())});
    let ks = keyset_of(json!({"keys": [jwk(json!({"use": "sig"})), enc.clone()]}));
    assert_eq!(reason_with(&ed, &ks, &policy()), "ok");
    let by_enc = mint(&other, "enc-key", "Ed25519", &claims());
    assert_eq!(reason_with(&by_enc, &ks, &policy()), "key_use_not_sig");

    // keys are refused when their binding is not one koherent understands
    for bad in [
        json!({"use": "other"}),
        json!({"use": ["sig"]}),
        json!({"alg": "RS256"}),
        json!({"key_ops": "verify"}),
    ] {
        assert!(parse_public_jwk_bound(&jwk(bad.clone())).is_err(), "{bad}");
    }
    // a JWKS that repeats a kid is refused (the reference refuses it too)
    assert_eq!(
        parse_jwks_bound(&json!({"keys": [jwk(json!({})), jwk(json!({}))]})).unwrap_err(),
        KeyError::DuplicateKid(KID.into())
    );
    // the unbound parsers (which drop the binding) still refuse keys that verify nothing
    assert!(parse_public_jwk(&jwk(json!({"use": "enc"}))).is_err());
    assert!(parse_public_jwk(&jwk(json!({"key_ops": ["sign"]}))).is_err());
    assert!(parse_jwks(&json!({"keys": [enc]})).is_err());
    assert!(parse_public_jwk(&jwk(json!({"alg": "EdDSA", "use": "sig"}))).is_ok());
}

// 7. NumericDates for the year 10000 and later are refused (and iat/exp before the year 1).
#[test]
fn times_past_what_a_timestamp_holds_are_refused() {
    let last = 253_402_300_799i64; // 9999-12-31T23:59:59Z
    assert_eq!(reason(&with(|c| c["exp"] = json!(last))), "ok");
    assert_eq!(reason(&with(|c| c["exp"] = json!(last as f64 + 0.5))), "ok");
    for v in [
        json!(last + 1),
        json!(253_402_300_800.0),
        json!(1e15),
        json!(i64::MAX),
        json!(u64::MAX),
    ] {
        let t = with(|c| c["exp"] = v.clone());
        let e = verify(&t, &keys(), &policy()).unwrap_err();
        assert_eq!(e.reason(), "time_out_of_range", "exp {v}");
        assert_eq!(e.class(), Class::Malformed);
    }
    assert_eq!(
        reason(&with(|c| c["nbf"] = json!(last + 1))),
        "time_out_of_range"
    );
    // iat: the year 1 is the earliest instant; nbf may be any earlier number
    assert_eq!(
        reason(&with(|c| c["iat"] = json!(-62_135_596_800i64))),
        "ok"
    );
    assert_eq!(
        reason(&with(|c| c["iat"] = json!(-62_135_596_801i64))),
        "time_out_of_range"
    );
    assert_eq!(reason(&with(|c| c["nbf"] = json!(-1e300))), "ok");
    let e = verify(&with(|c| c["exp"] = json!(last + 1)), &keys(), &policy()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "provenance token claim \"exp\" is out of range: the year 10000 and later cannot be held"
    );
}

// 8. A NUL character in any string of the payload is malformed.
#[test]
fn nul_character_in_the_payload_is_malformed() {
    let cases = [
        with(|c| c["sub"] = json!("a\u{0}b")),
        with(|c| c["tsk"] = json!("\u{0}")),
        with(|c| c["act"]["cid"] = json!("static\u{0}")),
        with(|c| c["aud"] = json!(["koherent", "x\u{0}"])),
        with(|c| c["org"] = json!({"deep": ["\u{0}"]})),
        with(|c| c["na\u{0}me"] = json!(1)),
        with(|c| c["org"] = json!({"k\u{0}": 1})),
    ];
    for t in &cases {
        let e = verify(t, &keys(), &policy()).unwrap_err();
        assert_eq!(e.reason(), "nul_character");
        assert_eq!(e.class(), Class::Malformed);
        assert_eq!(
            e.to_string(),
            "provenance token is malformed: payload contains a NUL character (U+0000), which PostgreSQL text cannot hold"
        );
        assert_eq!(e.detail(), "reason: nul_character");
    }
    // as a JSON escape in hand-written bytes too
    let p = claims()
        .to_string()
        .replace("\"sub\":\"1\"", "\"sub\":\"1\\u0000\"");
    assert!(p.contains("\\u0000"));
    assert_eq!(reason(&raw(&header_with(json!({})), &p)), "nul_character");
    // other control characters are fine
    assert_eq!(reason(&with(|c| c["sub"] = json!("a\u{1}b"))), "ok");
}

// Integers longer than Python's json accepts (4300 digits) are refused, as the reference does.
#[test]
fn integers_beyond_python_int_limit_are_malformed() {
    let h = header_with(json!({}));
    let with_raw = |num: &str| {
        let p = claims()
            .to_string()
            .replacen('{', &format!("{{\"big\":{num},"), 1);
        raw(&h, &p)
    };
    assert_eq!(reason(&with_raw(&"9".repeat(4300))), "ok");
    assert_eq!(reason(&with_raw(&format!("-{}", "9".repeat(4300)))), "ok");
    assert_eq!(reason(&with_raw(&"9".repeat(4301))), "malformed_json");
    assert_eq!(
        reason(&with_raw(&format!("-{}", "9".repeat(4301)))),
        "malformed_json"
    );
    // a float of many digits is fine in Python (it becomes a float)
    assert_eq!(reason(&with_raw(&format!("{}.5", "9".repeat(5000)))), "ok");
    assert_eq!(reason(&with_raw("1e400")), "ok");
}

// The deliberate strictness stays.
#[test]
fn deliberate_strictness_stays() {
    let h = header_with(json!({}));
    let p = claims().to_string();
    let dup = p.replacen('{', "{\"tsk\":\"other\",", 1);
    assert_eq!(reason(&raw(&h, &dup)), "duplicate_member");
    let bom = format!("\u{feff}{p}");
    assert_eq!(reason(&raw(&h, &bom)), "malformed_json");
    let nan = p.replacen('{', "{\"x\":NaN,", 1);
    assert_eq!(reason(&raw(&h, &nan)), "malformed_json");
    let surrogate = p.replacen('{', "{\"x\":\"\\ud800\",", 1);
    assert_eq!(reason(&raw(&h, &surrogate)), "malformed_json");
    let deep = p.replacen(
        '{',
        &format!("{{\"x\":{}1{},", "[".repeat(200), "]".repeat(200)),
        1,
    );
    assert_eq!(reason(&raw(&h, &deep)), "malformed_json");
    let shallow = p.replacen(
        '{',
        &format!("{{\"x\":{}1{},", "[".repeat(100), "]".repeat(100)),
        1,
    );
    assert_eq!(reason(&raw(&h, &shallow)), "ok");
}
