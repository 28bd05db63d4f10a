//! `sha256-canonical-v1`: the canonical JSON text of a task's arguments and its SHA-256.
//!
//! The text is byte-identical to Python's
//! `json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` applied to
//! `json.loads` of the same JSON: keys sorted by code point at every level, no whitespace,
//! non-ASCII kept raw, control characters escaped, integers as written, floats as Python's
//! `repr` writes them.

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// The only args hashing algorithm koherent knows.
pub const ARGS_HASH_ALGORITHM: &str = "sha256-canonical-v1";

/// Canonical JSON text of a value.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// Canonical JSON text of a JSON document given as text (an empty text counts as `{}`), read
/// by [`crate::json::parse`]: at most 128 levels deep, a member named twice kept last (as
/// Python's `json.loads` keeps it).
pub fn canonical_json_str(json: &str) -> Result<String, crate::json::JsonError> {
    if json.trim().is_empty() {
        return Ok("{}".to_string());
    }
    let v: Value = crate::json::parse(json)?;
    Ok(canonical_json(&v))
}

/// Lowercase hex SHA-256 of the canonical JSON text; `None` (absent arguments) hashes as `{}`.
pub fn args_hash(value: Option<&Value>) -> String {
    let text = match value {
        Some(v) => canonical_json(v),
        None => "{}".to_string(),
    };
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // UTF-8 byte order is code point order, which is how Python sorts str keys.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(&map[k.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn write_number(n: &Number, out: &mut String) {
    // With serde_json's arbitrary_precision the number keeps the text it was written with.
    let text = n.to_string();
    let is_integer = !text.contains(['.', 'e', 'E']);
    if is_integer {
        // Python reads a JSON integer as an int of any size and writes it back unchanged,
        // except that "-0" is the int 0.
        if text == "-0" {
            out.push('0');
        } else {
            out.push_str(&text);
        }
        return;
    }
    match text.parse::<f64>() {
        Ok(f) => out.push_str(&python_float_repr(f)),
        Err(_) => out.push_str(&text),
    }
}

/// Python's `float.__repr__` as `json.dumps` uses it (`Infinity`, `-Infinity`, `NaN` for the
/// values JSON has no literal for).
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let a = f.abs();
    if a == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, as Python's repr does.
    let sci = format!("{a:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let ndigits = digits.len() as i32;
    // Position of the decimal point relative to the start of the digits (0.d1d2... x 10^decpt).
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let mut m = first.to_string();
        if !rest.is_empty() {
            m.push('.');
            m.push_str(rest);
        }
        let e = decpt - 1;
        format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else if decpt <= 0 {
        format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
    } else if decpt >= ndigits {
        format!("{}{}.0", digits, "0".repeat((decpt - ndigits) as usize))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

pub(crate) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    // Runs of characters that stand for themselves are copied whole: every character that is
    // escaped is ASCII, so a byte below 0x20, '"' or '\\' is always a whole character.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{:04x}", b));
        } else {
            out.push_str(esc);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        canonical_json_str(s).unwrap()
    }

    /// The character-by-character definition the run-copying `write_string` must agree with.
    fn write_string_by_char(s: &str) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn string_escapes_match_their_definition() {
        let mut cases: Vec<String> = [
            "",
            "plain",
            "\"",
            "a\\b",
            "ünïcødé 🦀 \u{7f}\u{80}\u{2028}",
            "\"\"\\\\x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push((0u8..0x80).map(char::from).collect());
        cases.push(
            (0u8..0x20)
                .map(|b| format!("é{}€", char::from(b)))
                .collect(),
        );
        for c in &cases {
            let mut out = String::new();
            write_string(c, &mut out);
            assert_eq!(out, write_string_by_char(c), "{c:?}");
        }
        let mut out = String::new();
        write_string("\u{1}\u{1f}", &mut out);
        assert_eq!(out, "\"\\u0001\\u001f\"");
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(
            args_hash(None),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let v: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(
            args_hash(Some(&v)),
            "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
        );
        let x: Value = serde_json::from_str(r#"{"x":1}"#).unwrap();
        assert_eq!(
            args_hash(Some(&x)),
            "5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22"
        );
    }

    #[test]
    fn sorting_nesting_and_whitespace() {
        assert_eq!(
            canon(r#" { "z" : [3, {"b": null, "a": true}], "a": {"y": "x", "B": false} } "#),
            r#"{"a":{"B":false,"y":"x"},"z":[3,{"a":true,"b":null}]}"#
        );
        // code point order, not UTF-16 order: U+FFFF sorts before U+1F600
        assert_eq!(
            canon("{\"😀\":1,\"\u{ffff}\":2,\"é\":3,\"Z\":4}"),
            "{\"Z\":4,\"é\":3,\"\u{ffff}\":2,\"😀\":1}"
        );
    }

    #[test]
    fn strings_are_escaped_like_python() {
        assert_eq!(
            canon(r#"["a\"b\\c\n\r\t\b\f\u0001\u001f\u007f é ü 日本"]"#),
            "[\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f} é ü 日本\"]"
        );
        assert_eq!(canon(r#""\/""#), "\"/\"");
        assert_eq!(canon(r#""\u00e9""#), "\"é\"");
    }

    #[test]
    fn numbers_like_python() {
        assert_eq!(
            canon("[1, -0, 0, 123456789012345678901234567890]"),
            "[1,0,0,123456789012345678901234567890]"
        );
        assert_eq!(
            canon("[1.0, 1e16, 1e15, 0.0001, 0.00001, 1.5e-7, -0.0, 2.5, 1E2, 1e400, -1e400, 0.1, 123456789.123456789]"),
            "[1.0,1e+16,1000000000000000.0,0.0001,1e-05,1.5e-07,-0.0,2.5,100.0,Infinity,-Infinity,0.1,123456789.12345679]"
        );
        assert_eq!(python_float_repr(1e100), "1e+100");
        assert_eq!(python_float_repr(5e-324), "5e-324");
        assert_eq!(
            python_float_repr(1.7976931348623157e308),
            "1.7976931348623157e+308"
        );
        assert_eq!(
            python_float_repr(12345678901234567.0),
            "1.2345678901234568e+16"
        );
    }

    #[test]
    fn serde_jsons_number_member_is_an_ordinary_member() {
        // (what the fuzzer found: serde_json's arbitrary_precision read these as numbers or
        // refused them; Python's json.dumps writes them as the objects they are)
        let m = "$serde_json::private::Number";
        for (text, want) in [
            (format!(r#"{{"{m}":"5"}}"#), format!(r#"{{"{m}":"5"}}"#)),
            (format!(r#"{{"{m}":"abc"}}"#), format!(r#"{{"{m}":"abc"}}"#)),
            (
                format!(r#"{{"a":1,"{m}":"1"}}"#),
                format!(r#"{{"{m}":"1","a":1}}"#),
            ),
            (
                format!(r#"[{{"{m}":1,"z":[]}}]"#),
                format!(r#"[{{"{m}":1,"z":[]}}]"#),
            ),
        ] {
            let c = canon(&text);
            assert_eq!(c, want);
            assert_eq!(canon(&c), c, "a fixed point");
        }
        assert_ne!(
            args_hash(Some(
                &crate::json::parse(&format!(r#"{{"{m}":"5"}}"#)).unwrap()
            )),
            args_hash(Some(&crate::json::parse("5").unwrap()))
        );
        // Python: hashlib.sha256(json.dumps({m: "5"}, sort_keys=True, separators=(",", ":"),
        // ensure_ascii=False).encode()).hexdigest()
        assert_eq!(
            args_hash(Some(
                &crate::json::parse(&format!(r#"{{"{m}":"5"}}"#)).unwrap()
            )),
            "6d583aa9d4601424b5c5b810acb553172d94bf1b43b20ac76edb4134f94fa000"
        );
    }

    #[test]
    fn empty_text_is_empty_object() {
        assert_eq!(canon(""), "{}");
    }
}
