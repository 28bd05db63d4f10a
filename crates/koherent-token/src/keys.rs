//! Issuer keys: Ed25519 public keys from JWK, JWKS or SPKI PEM, held per issuer and kid.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::error::KeyError;
use crate::token::Alg;

/// What a JWK's optional `alg`, `use` and `key_ops` bind its key to.
///
/// A key given without them (a bare JWK, an SPKI PEM, 32 raw bytes) gets the default: it
/// verifies tokens of whichever alg the policy allows, like the reference verifier does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBinding {
    /// The one header `alg` this key verifies (the JWK's `alg`); `None`: any alg the policy
    /// allows.
    pub alg: Option<Alg>,
    /// `false` when the JWK's `use` is not `sig` (`enc`) or its `key_ops` lack `verify`: the
    /// key then verifies nothing.
    pub sig: bool,
}

impl Default for KeyBinding {
    fn default() -> Self {
        KeyBinding {
            alg: None,
            sig: true,
        }
    }
}

impl KeyBinding {
    /// Whether this key may verify a token whose header says `alg`.
    pub fn permits(&self, alg: Alg) -> bool {
        self.sig && self.alg.is_none_or(|a| a == alg)
    }

    /// The binding a public JWK's `alg`, `use` and `key_ops` give it. `alg` must be `Ed25519`
    /// or `EdDSA`; `use` `sig` or `enc`; `key_ops` an array of strings.
    pub fn of_jwk(v: &Value) -> Result<KeyBinding, KeyError> {
        let alg = match v.get("alg") {
            None => None,
            Some(Value::String(s)) if s == "Ed25519" => Some(Alg::Ed25519),
            Some(Value::String(s)) if s == "EdDSA" => Some(Alg::EdDsa),
            Some(_) => {
                return Err(KeyError::NotEd25519(
                    "alg must be \"Ed25519\" or \"EdDSA\"".into(),
                ))
            }
        };
        let mut sig = match v.get("use") {
            None => true,
            Some(Value::String(s)) if s == "sig" => true,
            Some(Value::String(s)) if s == "enc" => false,
            Some(_) => {
                return Err(KeyError::NotEd25519(
                    "use must be \"sig\" (or \"enc\", which verifies nothing)".into(),
                ))
            }
        };
        if let Some(ops) = v.get("key_ops") {
            let ops = ops
                .as_array()
                .filter(|a| a.iter().all(Value::is_string))
                .ok_or_else(|| {
                    KeyError::NotEd25519("key_ops must be an array of strings".into())
                })?;
            sig &= ops.iter().any(|o| o == "verify");
        }
        Ok(KeyBinding { alg, sig })
    }
}

/// Trusted keys: issuer -> kid -> key and its binding. An issuer is trusted when it has at
/// least one key.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    issuers: HashMap<String, HashMap<String, (VerifyingKey, KeyBinding)>>,
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a key with the default binding (any alg the policy allows, for signatures).
    pub fn insert(&mut self, issuer: &str, kid: &str, key: VerifyingKey) {
        self.insert_bound(issuer, kid, key, KeyBinding::default());
    }

    /// Add a key with the binding its JWK gave it ([`parse_public_jwk_bound`]).
    pub fn insert_bound(
        &mut self,
        issuer: &str,
        kid: &str,
        key: VerifyingKey,
        binding: KeyBinding,
    ) {
        self.issuers
            .entry(issuer.to_string())
            .or_default()
            .insert(kid.to_string(), (key, binding));
    }

    /// Add every key of an issuer's JWKS with its binding ([`parse_jwks_bound`]); returns how
    /// many. Nothing is added when the JWKS is refused.
    pub fn insert_jwks(&mut self, issuer: &str, jwks: &Value) -> Result<usize, KeyError> {
        let keys = parse_jwks_bound(jwks)?;
        let n = keys.len();
        for (kid, key, binding) in keys {
            self.insert_bound(issuer, &kid, key, binding);
        }
        Ok(n)
    }

    pub fn has_issuer(&self, issuer: &str) -> bool {
        self.issuers.get(issuer).is_some_and(|k| !k.is_empty())
    }

    pub fn get(&self, issuer: &str, kid: &str) -> Option<&VerifyingKey> {
        self.issuers.get(issuer)?.get(kid).map(|(k, _)| k)
    }

    /// A key and its binding.
    pub fn get_bound(&self, issuer: &str, kid: &str) -> Option<(&VerifyingKey, KeyBinding)> {
        self.issuers.get(issuer)?.get(kid).map(|(k, b)| (k, *b))
    }

    pub fn len(&self) -> usize {
        self.issuers.values().map(|k| k.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A public key from 32 raw bytes, refusing small-order and non-canonical encodings.
pub fn checked_key(bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::NotEd25519(format!("expected 32 bytes, got {}", bytes.len())))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::Weak)?;
    if key.is_weak() || key.to_edwards().compress().to_bytes() != arr {
        return Err(KeyError::Weak);
    }
    Ok(key)
}

fn b64(v: &Value, member: &str) -> Result<Vec<u8>, KeyError> {
    let s = v
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| KeyError::NotEd25519(format!("missing \"{member}\"")))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| KeyError::NotEd25519(format!("\"{member}\" is not base64url")))
}

fn check_okp(v: &Value) -> Result<(), KeyError> {
    if !v.is_object() {
        return Err(KeyError::NotEd25519("a JWK must be a JSON object".into()));
    }
    if v.get("kty").and_then(Value::as_str) != Some("OKP") {
        return Err(KeyError::NotEd25519("kty must be \"OKP\"".into()));
    }
    if v.get("crv").and_then(Value::as_str) != Some("Ed25519") {
        return Err(KeyError::NotEd25519("crv must be \"Ed25519\"".into()));
    }
    if let Some(alg) = v.get("alg") {
        if !matches!(alg.as_str(), Some("Ed25519") | Some("EdDSA")) {
            return Err(KeyError::NotEd25519(
                "alg must be \"Ed25519\" or \"EdDSA\"".into(),
            ));
        }
    }
    Ok(())
}

fn check_sig_use(v: &Value) -> Result<(), KeyError> {
    if let Some(u) = v.get("use") {
        if u.as_str() != Some("sig") {
            return Err(KeyError::NotEd25519("use must be \"sig\"".into()));
        }
    }
    Ok(())
}

fn kid_of(v: &Value) -> Result<Option<String>, KeyError> {
    match v.get("kid") {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(KeyError::NotEd25519(
            "kid must be a non-empty string".into(),
        )),
    }
}

/// A public JWK: `{"kty":"OKP","crv":"Ed25519","x":"...","kid":"..."}`. Returns (kid, key).
///
/// The key's binding (`alg`, `use`) is dropped, so a JWK whose `use` is not `sig` is refused
/// here; keep the binding with [`parse_public_jwk_bound`].
pub fn parse_public_jwk(v: &Value) -> Result<(Option<String>, VerifyingKey), KeyError> {
    check_sig_use(v)?;
    let (kid, key, binding) = parse_public_jwk_bound(v)?;
    if !binding.sig {
        return Err(KeyError::NotEd25519(
            "key_ops must include \"verify\"".into(),
        ));
    }
    Ok((kid, key))
}

/// A public JWK with its binding: (kid, key, what its `alg`/`use`/`key_ops` bind it to).
/// A JWK with `use` `enc` is accepted and bound to verify nothing, as the reference verifier
/// reads it.
pub fn parse_public_jwk_bound(
    v: &Value,
) -> Result<(Option<String>, VerifyingKey, KeyBinding), KeyError> {
    check_okp(v)?;
    if v.get("d").is_some() {
        return Err(KeyError::Private);
    }
    let binding = KeyBinding::of_jwk(v)?;
    let key = checked_key(&b64(v, "x")?)?;
    Ok((kid_of(v)?, key, binding))
}

fn jwks_keys(v: &Value) -> Result<&Vec<Value>, KeyError> {
    v.get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| KeyError::Format("a JWKS is an object with a \"keys\" array".into()))
}

/// A JWKS: `{"keys":[jwk, ...]}`; every key must have a kid. Bindings are dropped (see
/// [`parse_public_jwk`]); [`parse_jwks_bound`] keeps them.
pub fn parse_jwks(v: &Value) -> Result<Vec<(String, VerifyingKey)>, KeyError> {
    jwks_keys(v)?
        .iter()
        .map(|k| {
            let (kid, key) = parse_public_jwk(k)?;
            Ok((kid.ok_or(KeyError::MissingKid)?, key))
        })
        .collect()
}

/// A JWKS with every key's binding: (kid, key, binding). Every key must have a kid, and kids
/// must be unique (the reference verifier refuses a JWKS that repeats one).
pub fn parse_jwks_bound(v: &Value) -> Result<Vec<(String, VerifyingKey, KeyBinding)>, KeyError> {
    let mut seen = std::collections::HashSet::new();
    jwks_keys(v)?
        .iter()
        .map(|k| {
            let (kid, key, binding) = parse_public_jwk_bound(k)?;
            let kid = kid.ok_or(KeyError::MissingKid)?;
            if !seen.insert(kid.clone()) {
                return Err(KeyError::DuplicateKid(crate::error::shown(&kid)));
            }
            Ok((kid, key, binding))
        })
        .collect()
}

/// A public key as text: a JWK JSON object, or an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn parse_public_key(text: &str) -> Result<(Option<String>, VerifyingKey), KeyError> {
    let t = text.trim();
    if t.starts_with('{') {
        let v: Value = crate::json::parse_with(t, crate::json::Options::STRICT)
            .map_err(|e| KeyError::Json(e.to_string()))?;
        parse_public_jwk(&v)
    } else if t.starts_with("-----BEGIN PUBLIC KEY-----") {
        let key = VerifyingKey::from_public_key_pem(t)
            .map_err(|e| KeyError::NotEd25519(format!("SPKI PEM: {e}")))?;
        Ok((None, checked_key(key.as_bytes())?))
    } else {
        Err(KeyError::Format(
            "expected a JWK JSON object or a -----BEGIN PUBLIC KEY----- PEM".into(),
        ))
    }
}

/// A private JWK (with "d"), as `koherent keygen` writes it. Returns (kid, key).
pub fn parse_private_jwk(v: &Value) -> Result<(Option<String>, SigningKey), KeyError> {
    check_okp(v)?;
    check_sig_use(v)?;
    let d: [u8; 32] = b64(v, "d")?
        .try_into()
        .map_err(|_| KeyError::NotEd25519("\"d\" must be 32 bytes".into()))?;
    let key = SigningKey::from_bytes(&d);
    if let Some(x) = v.get("x") {
        let x = x.as_str().unwrap_or_default();
        if URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()) != x {
            return Err(KeyError::NotEd25519("\"x\" does not match \"d\"".into()));
        }
    }
    Ok((kid_of(v)?, key))
}

/// The public JWK of a key.
pub fn public_jwk(kid: &str, key: &VerifyingKey) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
        "kid": kid,
        "use": "sig",
        "alg": "Ed25519",
    })
}

/// The private JWK of a key (includes "d": keep it secret).
pub fn private_jwk(kid: &str, key: &SigningKey) -> Value {
    let mut v = public_jwk(kid, &key.verifying_key());
    v["d"] = Value::String(URL_SAFE_NO_PAD.encode(key.to_bytes()));
    v
}

/// The SPKI PEM of a public key.
pub fn public_pem(key: &VerifyingKey) -> String {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    key.to_public_key_pem(Default::default())
        .expect("an Ed25519 key always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4","kid":"koherent-test-key"}"#;

    #[test]
    fn jwk_and_pem_round_trip() {
        let (kid, key) = parse_public_key(TEST_JWK).unwrap();
        assert_eq!(kid.as_deref(), Some("koherent-test-key"));
        let pem = public_pem(&key);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let (kid2, key2) = parse_public_key(&pem).unwrap();
        assert_eq!(kid2, None);
        assert_eq!(key, key2);
        let jwk = public_jwk("k", &key);
        assert_eq!(jwk["x"], "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4");
    }

    #[test]
    fn refuses_bad_keys() {
        // identity point (small order)
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert_eq!(checked_key(&ident), Err(KeyError::Weak));
        // non-canonical encoding of y = 1 (y + p)
        let mut nc = [0xffu8; 32];
        nc[0] = 0xee;
        nc[31] = 0x7f;
        assert!(checked_key(&nc).is_err());
        assert!(matches!(
            checked_key(&[1, 2, 3]),
            Err(KeyError::NotEd25519(_))
        ));
        let private = r#"{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4","d":"PQ_Y54LpnaQZ24wKvkroJ3feOo4FJ2YcvKRmv8l9C5E"}"#;
        assert_eq!(parse_public_key(private), Err(KeyError::Private));
        assert!(matches!(
            parse_public_key(r#"{"kty":"RSA","n":"x","e":"AQAB"}"#),
            Err(KeyError::NotEd25519(_))
        ));
        assert!(matches!(
            parse_public_key("hello"),
            Err(KeyError::Format(_))
        ));
        assert!(matches!(
            parse_jwks(
                &serde_json::json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4"}]})
            ),
            Err(KeyError::MissingKid)
        ));
    }

    #[test]
    fn private_jwk_matches_spec_key() {
        let v: Value = serde_json::from_str(r#"{"kty":"OKP","crv":"Ed25519","x":"Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4","d":"PQ_Y54LpnaQZ24wKvkroJ3feOo4FJ2YcvKRmv8l9C5E","kid":"koherent-test-key"}"#).unwrap();
        let (_, sk) = parse_private_jwk(&v).unwrap();
        let (_, pk) = parse_public_key(TEST_JWK).unwrap();
        assert_eq!(sk.verifying_key(), pk);
    }
}
