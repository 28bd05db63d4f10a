//! Strict JSON for token parts: an object at the top, no duplicate members at any level.
//!
//! The parser is `serde_json`: UTF-8 only (no BOM, no UTF-16/32), no lone surrogates, no
//! `NaN`/`Infinity`, and at most 128 levels of nesting (its recursion limit). Python's `json`,
//! which the reference verifier uses, accepts all of those; koherent deliberately refuses them.
//! Integers written with more than 4300 digits are refused too, as Python's `json` refuses them
//! (its int conversion limit), so both verifiers read the same documents.
//!
//! `serde_json` keeps the last of duplicate members, as Python's `json` does. A token whose
//! header or payload repeats a member is ambiguous (two parsers may read different claims from
//! it), so koherent refuses it. A real issuer (`json.dumps` of a dict) never writes one.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashSet;

use crate::error::{shown, Part, TokenError};

const DUP_MARK: &str = "\u{1}duplicate:";

struct DupCheck;

impl<'de> Deserialize<'de> for DupCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DupVisitor)
    }
}

struct DupVisitor;

impl<'de> Visitor<'de> for DupVisitor {
    type Value = DupCheck;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_string<E>(self, _: String) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_unit<E>(self) -> Result<DupCheck, E> {
        Ok(DupCheck)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DupCheck, A::Error> {
        while seq.next_element::<DupCheck>()?.is_some() {}
        Ok(DupCheck)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DupCheck, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!("{DUP_MARK}{k}")));
            }
            map.next_value::<DupCheck>()?;
        }
        Ok(DupCheck)
    }
}

/// Python's `json` refuses integers with more digits than this (`sys.int_info.default_max_str_digits`).
pub(crate) const MAX_INT_DIGITS: usize = 4300;

fn check_numbers(v: &Value, part: Part) -> Result<(), TokenError> {
    match v {
        Value::Number(n) => {
            // with serde_json's arbitrary_precision, the number's text is kept as written
            let text = n.to_string();
            if !text.contains(['.', 'e', 'E']) {
                let digits = text.bytes().filter(u8::is_ascii_digit).count();
                if digits > MAX_INT_DIGITS {
                    return Err(TokenError::Json {
                        part,
                        why: format!("an integer has {digits} digits, more than {MAX_INT_DIGITS}"),
                    });
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|i| check_numbers(i, part)),
        Value::Object(m) => m.values().try_for_each(|i| check_numbers(i, part)),
        _ => Ok(()),
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Refuse a NUL character (U+0000) in any string of `m`, member names included: PostgreSQL
/// text cannot hold one.
pub(crate) fn refuse_nul(m: &Map<String, Value>, part: Part) -> Result<(), TokenError> {
    if m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err(TokenError::NulCharacter { part });
    }
    Ok(())
}

/// Parse `bytes` as a JSON object with no duplicate members.
pub(crate) fn parse_object(bytes: &[u8], part: Part) -> Result<Map<String, Value>, TokenError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    if let Err(e) = DupCheck::deserialize(&mut de).and_then(|_| de.end()) {
        let msg = e.to_string();
        if let Some(rest) = msg.strip_prefix(DUP_MARK) {
            let key = rest.rsplit_once(" at line").map(|(k, _)| k).unwrap_or(rest);
            return Err(TokenError::DuplicateKey {
                part,
                key: shown(key),
            });
        }
        return Err(TokenError::Json {
            part,
            why: e.to_string(),
        });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => {
            m.values().try_for_each(|v| check_numbers(v, part))?;
            Ok(m)
        }
        Ok(_) => Err(TokenError::Json {
            part,
            why: "not an object".into(),
        }),
        Err(e) => Err(TokenError::Json {
            part,
            why: e.to_string(),
        }),
    }
}
