//! Compact JWS provenance tokens: decode, verify, check claims, mint.
//!
//! The order of checks follows `provenance-token.md`: size limits, segments and base64, header
//! (members, alg, kid), issuer allow-list, key by (iss, kid), strict Ed25519 verification,
//! claims and their types, then time and audience.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde_json::{Map, Value};

use crate::canonical::{args_hash, ARGS_HASH_ALGORITHM};
use crate::error::{shown, Part, TokenError};
use crate::json::{parse_object, refuse_nul};
use crate::keys::KeySet;

/// Size limits, in characters of each segment's base64url text as received (checked before
/// anything is decoded): the reference verifier's (joserfc's) limits.
pub const MAX_HEADER: usize = 512;
pub const MAX_PAYLOAD: usize = 128_000;
pub const MAX_SIGNATURE: usize = 1024;
/// The whole token, dots included.
pub const MAX_TOKEN: usize = MAX_HEADER + MAX_PAYLOAD + MAX_SIGNATURE;

/// NumericDates must be before 10000-01-01T00:00:00Z (what a timestamp can hold) ...
pub const NUMERIC_DATE_END: f64 = 253_402_300_800.0;
/// ... and `iat` and `exp` not before 0001-01-01T00:00:00Z (the reference verifier turns them
/// into Python datetimes, which start there).
pub const NUMERIC_DATE_START: f64 = -62_135_596_800.0;

const ALLOWED_HEADER: &[&str] = &[
    "alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "b64",
];

/// The signature algorithm named in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// `Ed25519` (RFC 9864), what issuers write today.
    Ed25519,
    /// `EdDSA`, written by older issuers; accepted only when allowed.
    EdDsa,
}

impl Alg {
    pub fn as_str(&self) -> &'static str {
        match self {
            Alg::Ed25519 => "Ed25519",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A token split and decoded, nothing verified yet.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub alg: Alg,
    pub kid: String,
    pub iss: String,
    signing_input_len: usize,
    token: String,
    signature: Vec<u8>,
    payload: Map<String, Value>,
}

/// The acting agent of a hop (`act`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
    pub cid: String,
    pub iss: Option<String>,
}

/// Verified claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: Vec<String>,
    pub sub: String,
    pub act: Actor,
    /// NumericDates: finite numbers of seconds, integer or not.
    pub iat: f64,
    pub exp: f64,
    pub nbf: Option<f64>,
    pub jti: String,
    pub tsk: String,
    pub ptk: Option<String>,
    pub rtk: String,
    pub rcb: String,
    pub ahs: String,
    pub aha: String,
    /// The whole payload, unknown claims included.
    pub payload: Map<String, Value>,
}

/// What a database (or the CLI) accepts: audience, clock leeway and the current time.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `None`: not configured (every token refused); `Some("*")`: any audience.
    pub audience: Option<String>,
    pub leeway: i64,
    pub now: i64,
    pub accept_eddsa: bool,
}

fn check_len(s: &str, part: Part, limit: usize) -> Result<(), TokenError> {
    if s.len() > limit {
        return Err(TokenError::TooLarge { part, limit });
    }
    Ok(())
}

fn decode_part(s: &str, part: Part) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Base64 { part })
}

fn header_str(v: &Value) -> bool {
    v.is_string()
}

fn header_url(v: &Value) -> bool {
    // joserfc requires jku and x5u to be http(s) URLs
    v.as_str()
        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
}

fn header_str_list(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

/// Registered header members must have their RFC 7515 types.
fn check_header_types(header: &Map<String, Value>) -> Result<(), TokenError> {
    for (k, v) in header {
        let (ok, want) = match k.as_str() {
            "alg" | "kid" | "typ" | "cty" | "x5t" | "x5t#S256" => (header_str(v), "a string"),
            "jku" | "x5u" => (header_url(v), "an http(s) URL string"),
            "x5c" | "crit" => (header_str_list(v), "an array of strings"),
            "jwk" => (v.is_object(), "an object"),
            "b64" => (v.is_boolean(), "a boolean"),
            _ => (true, ""),
        };
        if !ok {
            return Err(TokenError::Header(format!("\"{k}\" must be {want}")));
        }
    }
    Ok(())
}

/// `crit` must be a non-empty array naming extension members that are present. Every member
/// koherent allows is a registered one, so any `crit` is refused; the message says why.
fn check_crit(header: &Map<String, Value>) -> Result<(), TokenError> {
    let Some(crit) = header.get("crit").and_then(Value::as_array) else {
        return Ok(());
    };
    let Some(first) = crit.first().and_then(Value::as_str) else {
        return Err(TokenError::Header("\"crit\" must not be empty".into()));
    };
    for name in crit.iter().filter_map(Value::as_str) {
        if !header.contains_key(name) {
            return Err(TokenError::Header(format!(
                "\"crit\" names \"{}\", which is not in the header",
                shown(name)
            )));
        }
    }
    Err(TokenError::Header(format!(
        "\"crit\" names the registered member \"{}\"; koherent supports no extensions",
        shown(first)
    )))
}

/// Split and decode a compact JWS, check its header, and read its (unverified) issuer.
pub fn decode(token: &str) -> Result<Decoded, TokenError> {
    // Refuse oversized input before splitting or decoding anything.
    check_len(token, Part::Token, MAX_TOKEN)?;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Segments(parts.len()));
    }
    check_len(parts[0], Part::Header, MAX_HEADER)?;
    check_len(parts[1], Part::Payload, MAX_PAYLOAD)?;
    check_len(parts[2], Part::Signature, MAX_SIGNATURE)?;
    let header_bytes = decode_part(parts[0], Part::Header)?;
    let payload_bytes = decode_part(parts[1], Part::Payload)?;
    let signature = decode_part(parts[2], Part::Signature)?;

    let header = parse_object(&header_bytes, Part::Header)?;
    for k in header.keys() {
        if !ALLOWED_HEADER.contains(&k.as_str()) {
            return Err(TokenError::HeaderMember(shown(k)));
        }
    }
    check_header_types(&header)?;
    check_crit(&header)?;
    if header.get("b64") == Some(&Value::Bool(false)) {
        return Err(TokenError::Header(
            "unencoded payloads (b64: false) are not supported".into(),
        ));
    }
    let alg = match header.get("alg") {
        None => return Err(TokenError::Header("\"alg\" is missing".into())),
        Some(Value::String(s)) if s == "Ed25519" => Alg::Ed25519,
        Some(Value::String(s)) if s == "EdDSA" => Alg::EdDsa,
        Some(Value::String(s)) => return Err(TokenError::Algorithm(shown(s))),
        Some(_) => return Err(TokenError::Header("\"alg\" must be a string".into())),
    };
    let kid = match header.get("kid") {
        None => return Err(TokenError::Header("\"kid\" is missing".into())),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(TokenError::Header(
                "\"kid\" must be a non-empty string".into(),
            ))
        }
    };
    let payload = parse_object(&payload_bytes, Part::Payload)?;
    refuse_nul(&payload, Part::Payload)?;
    let iss = match payload.get("iss") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(claim("iss", "is missing")),
        Some(_) => return Err(claim("iss", "must be a string")),
    };
    Ok(Decoded {
        alg,
        kid,
        iss,
        signing_input_len: parts[0].len() + 1 + parts[1].len(),
        token: token.to_string(),
        signature,
        payload,
    })
}

fn claim(name: &'static str, why: &str) -> TokenError {
    TokenError::Claim {
        claim: name,
        why: why.to_string(),
    }
}

fn req_str(p: &Map<String, Value>, name: &'static str) -> Result<String, TokenError> {
    match p.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(claim(name, "is missing")),
        Some(_) => Err(claim(name, "must be a string")),
    }
}

/// A NumericDate: a finite JSON number (integer or not; a boolean is not a number), before
/// the year 10000, and for `iat` and `exp` not before the year 1.
fn numeric_date(v: &Value, name: &'static str) -> Result<f64, TokenError> {
    let f = match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| claim(name, "must be a finite number"))?,
        Value::Bool(_) => return Err(claim(name, "must be a number (NumericDate), not a boolean")),
        _ => return Err(claim(name, "must be a number of seconds (NumericDate)")),
    };
    if f >= NUMERIC_DATE_END {
        return Err(TokenError::TimeOutOfRange {
            claim: name,
            why: "the year 10000 and later cannot be held".into(),
        });
    }
    if name != "nbf" && f < NUMERIC_DATE_START {
        return Err(TokenError::TimeOutOfRange {
            claim: name,
            why: "before the year 1".into(),
        });
    }
    Ok(f)
}

fn req_date(p: &Map<String, Value>, name: &'static str) -> Result<f64, TokenError> {
    match p.get(name) {
        Some(v) => numeric_date(v, name),
        None => Err(claim(name, "is missing")),
    }
}

/// Whole seconds of a NumericDate, for messages.
fn secs(f: f64) -> i64 {
    f.floor() as i64
}

impl Claims {
    /// Type-check a payload's claims.
    pub fn from_payload(p: Map<String, Value>) -> Result<Claims, TokenError> {
        let aud = match p.get("aud") {
            None => return Err(claim("aud", "is missing")),
            Some(Value::String(s)) if s.is_empty() => {
                return Err(claim("aud", "must not be empty"))
            }
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(claim("aud", "must not be empty"));
                }
                items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| claim("aud", "must be a string or a list of strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(_) => return Err(claim("aud", "must be a string or a list of strings")),
        };
        let act = match p.get("act") {
            None => return Err(claim("act", "is missing")),
            Some(Value::Object(a)) => {
                let sub = match a.get("sub") {
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(claim("act", "act.sub must be a string")),
                };
                let cid = match a.get("cid") {
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(claim("act", "act.cid must be a string")),
                };
                let iss = match a.get("iss") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(claim("act", "act.iss must be a string or null")),
                };
                Actor { sub, cid, iss }
            }
            Some(_) => return Err(claim("act", "must be an object")),
        };
        let nbf = match p.get("nbf") {
            None => None,
            Some(v) => Some(numeric_date(v, "nbf")?),
        };
        let ptk = match p.get("ptk") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(claim("ptk", "must be a string or null")),
        };
        Ok(Claims {
            iss: req_str(&p, "iss")?,
            sub: req_str(&p, "sub")?,
            iat: req_date(&p, "iat")?,
            exp: req_date(&p, "exp")?,
            jti: req_str(&p, "jti")?,
            tsk: req_str(&p, "tsk")?,
            rtk: req_str(&p, "rtk")?,
            rcb: req_str(&p, "rcb")?,
            ahs: req_str(&p, "ahs")?,
            aha: req_str(&p, "aha")?,
            aud,
            act,
            nbf,
            ptk,
            payload: p,
        })
    }

    /// Time and audience checks against a policy (done on every use, also for cached tokens).
    pub fn check(&self, policy: &Policy) -> Result<(), TokenError> {
        let now = policy.now;
        let (t, leeway) = (now as f64, policy.leeway.max(0) as f64);
        // valid strictly before exp
        if self.exp <= t - leeway {
            return Err(TokenError::Expired {
                exp: secs(self.exp),
                now,
            });
        }
        if self.iat > t + leeway {
            return Err(TokenError::IssuedInFuture {
                iat: secs(self.iat),
                now,
            });
        }
        if let Some(nbf) = self.nbf {
            if nbf > t + leeway {
                return Err(TokenError::NotYetValid {
                    nbf: secs(nbf),
                    now,
                });
            }
        }
        match policy.audience.as_deref() {
            None | Some("") => Err(TokenError::AudienceNotConfigured),
            Some("*") => Ok(()),
            Some(a) if self.aud.iter().any(|x| x == a) => Ok(()),
            Some(a) => Err(TokenError::Audience {
                expected: a.to_string(),
            }),
        }
    }

    /// Check `ahs` against the hash of the task's arguments (`None`: absent, hashes as `{}`).
    pub fn check_args(&self, args: Option<&Value>) -> Result<(), TokenError> {
        if self.aha != ARGS_HASH_ALGORITHM {
            return Err(TokenError::ArgsAlgorithm(shown(&self.aha)));
        }
        let actual = args_hash(args);
        if actual != self.ahs {
            return Err(TokenError::ArgsMismatch {
                expected: self.ahs.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl Decoded {
    /// Issuer allow-list, key by (iss, kid), strict Ed25519 verification, claim types.
    pub fn verify(self, keys: &KeySet, accept_eddsa: bool) -> Result<Claims, TokenError> {
        if self.alg == Alg::EdDsa && !accept_eddsa {
            return Err(TokenError::Algorithm("EdDSA".into()));
        }
        if !keys.has_issuer(&self.iss) {
            return Err(TokenError::UntrustedIssuer(shown(&self.iss)));
        }
        let (key, binding) =
            keys.get_bound(&self.iss, &self.kid)
                .ok_or_else(|| TokenError::UnknownKey {
                    iss: shown(&self.iss),
                    kid: shown(&self.kid),
                })?;
        if !binding.sig {
            return Err(TokenError::KeyUse {
                iss: shown(&self.iss),
                kid: shown(&self.kid),
            });
        }
        if let Some(key_alg) = binding.alg.filter(|a| *a != self.alg) {
            return Err(TokenError::KeyAlgorithm {
                kid: shown(&self.kid),
                key_alg: key_alg.as_str(),
                token_alg: self.alg.as_str(),
            });
        }
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::BadSignature)?;
        let sig = Signature::from_bytes(&sig);
        key.verify_strict(&self.token.as_bytes()[..self.signing_input_len], &sig)
            .map_err(|_| TokenError::BadSignature)?;
        Claims::from_payload(self.payload)
    }
}

/// Everything at once: decode, verify, check time and audience.
pub fn verify(token: &str, keys: &KeySet, policy: &Policy) -> Result<Claims, TokenError> {
    let claims = decode(token)?.verify(keys, policy.accept_eddsa)?;
    claims.check(policy)?;
    Ok(claims)
}

/// Sign a payload (any JSON object) as a compact JWS with the given kid and alg name.
pub fn mint(key: &SigningKey, kid: &str, alg: &str, payload: &Value) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": alg, "kid": kid});
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).expect("payload serializes"));
    let input = format!("{h}.{p}");
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}
