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
use crate::json::parse_object;
use crate::keys::KeySet;

pub const MAX_HEADER: usize = 512;
pub const MAX_PAYLOAD: usize = 128_000;
pub const MAX_SIGNATURE: usize = 1024;

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
    pub iat: i64,
    pub exp: i64,
    pub nbf: Option<i64>,
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

fn encoded_limit(decoded: usize) -> usize {
    decoded.div_ceil(3) * 4
}

fn decode_part(s: &str, part: Part, limit: usize) -> Result<Vec<u8>, TokenError> {
    if s.len() > encoded_limit(limit) {
        return Err(TokenError::TooLarge { part, limit });
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Base64 { part })?;
    if bytes.len() > limit {
        return Err(TokenError::TooLarge { part, limit });
    }
    Ok(bytes)
}

/// Split and decode a compact JWS, check its header, and read its (unverified) issuer.
pub fn decode(token: &str) -> Result<Decoded, TokenError> {
    // Refuse oversized input before splitting or decoding anything.
    let max_total =
        encoded_limit(MAX_HEADER) + encoded_limit(MAX_PAYLOAD) + encoded_limit(MAX_SIGNATURE) + 2;
    if token.len() > max_total {
        return Err(TokenError::TooLarge {
            part: Part::Payload,
            limit: MAX_PAYLOAD,
        });
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Segments(parts.len()));
    }
    let header_bytes = decode_part(parts[0], Part::Header, MAX_HEADER)?;
    let payload_bytes = decode_part(parts[1], Part::Payload, MAX_PAYLOAD)?;
    let signature = decode_part(parts[2], Part::Signature, MAX_SIGNATURE)?;

    let header = parse_object(&header_bytes, Part::Header)?;
    for k in header.keys() {
        if !ALLOWED_HEADER.contains(&k.as_str()) {
            return Err(TokenError::HeaderMember(shown(k)));
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::Header(
            "\"crit\" names extensions koherent does not support".into(),
        ));
    }
    if let Some(b) = header.get("b64") {
        if b != &Value::Bool(true) {
            return Err(TokenError::Header(
                "unencoded payloads (b64) are not supported".into(),
            ));
        }
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

fn int_of(v: &Value, name: &'static str) -> Result<i64, TokenError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| claim(name, "must be an integer number of seconds")),
        _ => Err(claim(name, "must be an integer number of seconds")),
    }
}

fn req_int(p: &Map<String, Value>, name: &'static str) -> Result<i64, TokenError> {
    match p.get(name) {
        Some(v) => int_of(v, name),
        None => Err(claim(name, "is missing")),
    }
}

impl Claims {
    /// Type-check a payload's claims.
    pub fn from_payload(p: Map<String, Value>) -> Result<Claims, TokenError> {
        let aud = match p.get("aud") {
            None => return Err(claim("aud", "is missing")),
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
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(claim("act", "act.iss must be a string")),
                };
                Actor { sub, cid, iss }
            }
            Some(_) => return Err(claim("act", "must be an object")),
        };
        let nbf = match p.get("nbf") {
            None => None,
            Some(v) => Some(int_of(v, "nbf")?),
        };
        let ptk = match p.get("ptk") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(claim("ptk", "must be a string or null")),
        };
        Ok(Claims {
            iss: req_str(&p, "iss")?,
            sub: req_str(&p, "sub")?,
            iat: req_int(&p, "iat")?,
            exp: req_int(&p, "exp")?,
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
        let leeway = policy.leeway.max(0);
        if self.exp < now - leeway {
            return Err(TokenError::Expired { exp: self.exp, now });
        }
        if self.iat > now + leeway {
            return Err(TokenError::IssuedInFuture { iat: self.iat, now });
        }
        if let Some(nbf) = self.nbf {
            if nbf > now + leeway {
                return Err(TokenError::NotYetValid { nbf, now });
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
        let key = keys
            .get(&self.iss, &self.kid)
            .ok_or_else(|| TokenError::UnknownKey {
                iss: shown(&self.iss),
                kid: shown(&self.kid),
            })?;
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
