//! Strict JSON for token parts: an object at the top, no duplicate members at any level.
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
        Ok(Value::Object(m)) => Ok(m),
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
