//! koherent's JSON reader: every JSON text koherent reads from outside (token parts, task
//! arguments, context metadata, keys, ledger records, audit packages) goes through it.
//!
//! Why not `serde_json::from_str`: koherent builds serde_json with `arbitrary_precision` (a
//! number keeps the text it was written with: `1.10` stays `1.10`, a 30-digit integer stays
//! whole). With that feature serde_json reads an object whose first member is named
//! `$serde_json::private::Number` as a number: `{"$serde_json::private::Number":"5"}` came back
//! as `5`, and such an object with anything else in it was refused. Any JSON a client writes
//! may hold that member (a jsonb column of a tracked table, task arguments), so two different
//! values hashed alike and a valid value could not be read (found by the fuzzer: the canonical
//! text of `{"a":1,"$serde_json::private::Number":"1"}` sorts that member first and no longer
//! read back). This reader knows no such member: an object is an object.
//!
//! What it reads is RFC 8259 JSON, strictly: UTF-8 (the input is a `str`), no lone surrogate
//! escapes, no raw control characters in strings, no `NaN`/`Infinity`, no trailing text. It
//! works with an explicit stack, never recursion, so the nesting it accepts is a setting
//! ([`Options::max_depth`]), not the size of a thread's stack. A number is kept as its text.
//! Members named twice are kept last (as Python's `json` and PostgreSQL's jsonb do) or refused
//! ([`Duplicates::Refuse`]: where two readers could read different things from one text).

use serde_json::{Map, Number, Value};
use std::borrow::Cow;

/// What to do with an object that names a member twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// the last one counts (Python's `json.loads`, PostgreSQL's jsonb)
    KeepLast,
    /// refuse the text
    Refuse,
}

/// How a text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// the deepest nesting of arrays and objects accepted (a scalar at the top is 0, `[]` is 1)
    pub max_depth: usize,
    pub duplicates: Duplicates,
}

/// The nesting accepted by default: serde_json's limit, which earlier releases had.
pub const DEFAULT_MAX_DEPTH: usize = 128;

impl Options {
    /// 128 levels, duplicates kept last: task arguments and metadata, as Python reads them.
    pub const DEFAULT: Options = Options {
        max_depth: DEFAULT_MAX_DEPTH,
        duplicates: Duplicates::KeepLast,
    };
    /// 128 levels, duplicates refused: token parts, keys, audit package files.
    pub const STRICT: Options = Options {
        max_depth: DEFAULT_MAX_DEPTH,
        duplicates: Duplicates::Refuse,
    };
}

/// What is wrong with a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the text ends too early")]
    Eof,
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("the member {0:?} is named twice in one object")]
    Duplicate(String),
    #[error("a lone surrogate (\\u{0:04x}) is not a character")]
    LoneSurrogate(u32),
    #[error("a control character (U+{0:04X}) must be escaped in a string")]
    ControlCharacter(u32),
    #[error("an invalid escape in a string")]
    BadEscape,
    #[error("an invalid number")]
    BadNumber,
    #[error("text after the value")]
    Trailing,
}

/// A text that is not accepted, and where (line and column count from 1, columns in bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at line {line} column {column}")]
pub struct JsonError {
    pub problem: Problem,
    pub line: usize,
    pub column: usize,
}

/// One step through a text.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    BeginObject,
    EndObject,
    BeginArray,
    EndArray,
    /// a member's name (its value follows)
    Key(Cow<'a, str>),
    Str(Cow<'a, str>),
    /// a number's text, as written (valid JSON number syntax)
    Num(&'a str),
    Bool(bool),
    Null,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// a value (at the top, after `:`, after `,` in an array)
    Value,
    /// a value or `]`
    FirstInArray,
    /// a member name or `}`
    FirstInObject,
    /// `,`, the container's end, or the end of the text
    AfterValue,
}

/// The bytes that end a run of plain string content: `"`, `\\` and the control characters.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A pull reader of a JSON text: [`Reader::next`] gives its events in order and `Ok(None)` at
/// its end. Grammar and nesting are checked; duplicate members are the consumer's business.
pub struct Reader<'a> {
    text: &'a str,
    s: &'a [u8],
    pos: usize,
    /// the open containers: `true` for an object
    open: Vec<bool>,
    state: State,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str, max_depth: usize) -> Reader<'a> {
        Reader {
            text,
            s: text.as_bytes(),
            pos: 0,
            open: Vec::new(),
            state: State::Value,
            max_depth,
        }
    }

    /// The error `problem` at the reader's position.
    pub fn error(&self, problem: Problem) -> JsonError {
        let at = self.pos.min(self.s.len());
        let before = &self.s[..at];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        JsonError {
            problem,
            line,
            column,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next event, `None` at the end of the text.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> Result<Option<Event<'a>>, JsonError> {
        self.skip_ws();
        match self.state {
            State::Value => self.value().map(Some),
            State::FirstInArray => {
                if self.s.get(self.pos) == Some(&b']') {
                    self.close()
                } else {
                    self.value().map(Some)
                }
            }
            State::FirstInObject => {
                if self.s.get(self.pos) == Some(&b'}') {
                    self.close()
                } else {
                    self.key().map(Some)
                }
            }
            State::AfterValue => {
                let Some(&object) = self.open.last() else {
                    return if self.pos < self.s.len() {
                        Err(self.error(Problem::Trailing))
                    } else {
                        Ok(None)
                    };
                };
                match (object, self.s.get(self.pos)) {
                    (_, Some(b',')) => {
                        self.pos += 1;
                        self.skip_ws();
                        if object {
                            self.key().map(Some)
                        } else {
                            self.value().map(Some)
                        }
                    }
                    (true, Some(b'}')) | (false, Some(b']')) => self.close(),
                    (_, None) => Err(self.error(Problem::Eof)),
                    (true, _) => Err(self.error(Problem::Expected("',' or '}'"))),
                    (false, _) => Err(self.error(Problem::Expected("',' or ']'"))),
                }
            }
        }
    }

    fn close(&mut self) -> Result<Option<Event<'a>>, JsonError> {
        self.pos += 1;
        self.state = State::AfterValue;
        Ok(Some(if self.open.pop() == Some(true) {
            Event::EndObject
        } else {
            Event::EndArray
        }))
    }

    fn key(&mut self) -> Result<Event<'a>, JsonError> {
        if self.s.get(self.pos) != Some(&b'"') {
            return Err(self.error(if self.pos >= self.s.len() {
                Problem::Eof
            } else {
                Problem::Expected("a member name (a string)")
            }));
        }
        let k = self.string()?;
        self.skip_ws();
        match self.s.get(self.pos) {
            Some(b':') => self.pos += 1,
            None => return Err(self.error(Problem::Eof)),
            Some(_) => return Err(self.error(Problem::Expected("':'"))),
        }
        self.state = State::Value;
        Ok(Event::Key(k))
    }

    fn value(&mut self) -> Result<Event<'a>, JsonError> {
        let Some(&c) = self.s.get(self.pos) else {
            return Err(self.error(Problem::Eof));
        };
        match c {
            b'{' | b'[' => {
                if self.open.len() >= self.max_depth {
                    return Err(self.error(Problem::TooDeep(self.max_depth)));
                }
                self.pos += 1;
                self.open.push(c == b'{');
                if c == b'{' {
                    self.state = State::FirstInObject;
                    Ok(Event::BeginObject)
                } else {
                    self.state = State::FirstInArray;
                    Ok(Event::BeginArray)
                }
            }
            b'"' => {
                let s = self.string()?;
                self.state = State::AfterValue;
                Ok(Event::Str(s))
            }
            b't' => self.literal("true", Event::Bool(true)),
            b'f' => self.literal("false", Event::Bool(false)),
            b'n' => self.literal("null", Event::Null),
            b'-' | b'0'..=b'9' => {
                let n = self.number()?;
                self.state = State::AfterValue;
                Ok(Event::Num(n))
            }
            _ => Err(self.error(Problem::Expected("a value"))),
        }
    }

    fn literal(&mut self, word: &'static str, e: Event<'a>) -> Result<Event<'a>, JsonError> {
        if self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            self.state = State::AfterValue;
            Ok(e)
        } else {
            Err(self.error(Problem::Expected("a value")))
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while let Some(b'0'..=b'9') = self.s.get(self.pos) {
            self.pos += 1;
        }
        self.pos - from
    }

    fn number(&mut self) -> Result<&'a str, JsonError> {
        let from = self.pos;
        if self.s[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.s.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error(Problem::BadNumber)),
        }
        if self.s.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error(Problem::BadNumber));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error(Problem::BadNumber));
            }
        }
        Ok(&self.text[from..self.pos])
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(h) = self.s.get(self.pos..self.pos + 4) else {
            return Err(self.error(Problem::BadEscape));
        };
        let mut v = 0u32;
        for &b in h {
            let d = (b as char)
                .to_digit(16)
                .ok_or_else(|| self.error(Problem::BadEscape))?;
            v = v * 16 + d;
        }
        self.pos += 4;
        Ok(v)
    }

    /// A string starting at the `"` under the reader; borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1;
        let start = self.pos;
        // the run of bytes that need nothing done
        let plain = |s: &[u8], mut i: usize| {
            while i < s.len() && !STOP[s[i] as usize] {
                i += 1;
            }
            i
        };
        self.pos = plain(self.s, self.pos);
        if self.s.get(self.pos) == Some(&b'"') {
            self.pos += 1;
            return Ok(Cow::Borrowed(&self.text[start..self.pos - 1]));
        }
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            let Some(&b) = self.s.get(self.pos) else {
                return Err(self.error(Problem::Eof));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err(self.error(Problem::Eof));
                    };
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let at = self.pos - 2;
                            let u = self.hex4()?;
                            let c = match u {
                                0xD800..=0xDBFF => {
                                    if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                        self.pos = at;
                                        return Err(self.error(Problem::LoneSurrogate(u)));
                                    }
                                    self.pos += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        self.pos = at;
                                        return Err(self.error(Problem::LoneSurrogate(u)));
                                    }
                                    0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => {
                                    self.pos = at;
                                    return Err(self.error(Problem::LoneSurrogate(u)));
                                }
                                _ => u,
                            };
                            out.push(char::from_u32(c).expect("a scalar value"));
                        }
                        _ => {
                            self.pos -= 2;
                            return Err(self.error(Problem::BadEscape));
                        }
                    }
                }
                b if b < 0x20 => return Err(self.error(Problem::ControlCharacter(b as u32))),
                _ => {
                    let from = self.pos;
                    self.pos = plain(self.s, self.pos);
                    out.push_str(&self.text[from..self.pos]);
                }
            }
        }
    }
}

/// A number's text (valid JSON number syntax, checked by the reader) as a serde_json number
/// that keeps it exactly. (`Number::from_str` would read it again and rewrite an exponent:
/// `1e400` as `1e+400`. serde_json's constructor from a string is hidden from its docs; the
/// lock file pins the serde_json it is checked with, and `numbers_keep_their_text` tests it.)
fn number(text: &str) -> Number {
    Number::from_string_unchecked(text.to_owned())
}

enum Frame {
    Array(Vec<Value>),
    Object(Map<String, Value>, Option<String>),
}

/// Read `text` as one JSON value, 128 levels deep at most, duplicate members kept last.
pub fn parse(text: &str) -> Result<Value, JsonError> {
    parse_with(text, Options::DEFAULT)
}

/// Read `text` as one JSON value, as `opts` says.
///
/// (serde_json drops a `Value` by recursion: a value nested some ten thousand levels deep
/// needs a thread stack to match. Readers of unbounded depth that do not need a `Value`
/// should use [`Reader`] directly, as the ledger's canonical text does.)
pub fn parse_with(text: &str, opts: Options) -> Result<Value, JsonError> {
    let mut r = Reader::new(text, opts.max_depth);
    let mut stack: Vec<Frame> = Vec::new();
    while let Some(ev) = r.next()? {
        let v = match ev {
            Event::BeginObject => {
                stack.push(Frame::Object(Map::new(), None));
                continue;
            }
            Event::BeginArray => {
                stack.push(Frame::Array(Vec::new()));
                continue;
            }
            Event::Key(k) => {
                let Some(Frame::Object(_, slot)) = stack.last_mut() else {
                    unreachable!("a key outside an object")
                };
                *slot = Some(k.into_owned());
                continue;
            }
            Event::EndObject => match stack.pop() {
                Some(Frame::Object(m, _)) => Value::Object(m),
                _ => unreachable!("an object's end outside an object"),
            },
            Event::EndArray => match stack.pop() {
                Some(Frame::Array(a)) => Value::Array(a),
                _ => unreachable!("an array's end outside an array"),
            },
            Event::Str(s) => Value::String(s.into_owned()),
            Event::Num(n) => Value::Number(number(n)),
            Event::Bool(b) => Value::Bool(b),
            Event::Null => Value::Null,
        };
        match stack.last_mut() {
            None => {
                // the top value: the text must end here
                if let Some(ev) = r.next()? {
                    unreachable!("an event after the top value: {ev:?}")
                }
                return Ok(v);
            }
            Some(Frame::Array(a)) => a.push(v),
            Some(Frame::Object(m, slot)) => {
                // (one search of the map per member: a fifth of reading a package's entries)
                match m.entry(slot.take().expect("a member's name")) {
                    serde_json::map::Entry::Vacant(e) => {
                        e.insert(v);
                    }
                    serde_json::map::Entry::Occupied(e)
                        if opts.duplicates == Duplicates::Refuse =>
                    {
                        return Err(r.error(Problem::Duplicate(e.key().clone())));
                    }
                    serde_json::map::Entry::Occupied(mut e) => {
                        e.insert(v);
                    }
                }
            }
        }
    }
    Err(r.error(Problem::Eof))
}

// --- token parts ------------------------------------------------------------------------

use crate::error::{shown, Part, TokenError};

/// Python's `json` refuses integers with more digits than this (`sys.int_info.default_max_str_digits`).
pub(crate) const MAX_INT_DIGITS: usize = 4300;

fn check_numbers(v: &Value, part: Part) -> Result<(), TokenError> {
    match v {
        Value::Number(n) => {
            // (the number keeps the text it was written with)
            let text = n.as_str();
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

/// Parse a token part (`bytes`, UTF-8) as a JSON object with no member named twice at any
/// level: a token whose header or payload repeats a member is ambiguous (two parsers may read
/// different claims from it), and a real issuer (`json.dumps` of a dict) never writes one.
/// Nesting beyond 128 levels, lone surrogates and `NaN`/`Infinity` are refused, which Python's
/// `json` (the reference verifier's) accepts; integers of more than 4300 digits are refused, as
/// Python refuses them, so both verifiers read the same documents.
pub(crate) fn parse_object(bytes: &[u8], part: Part) -> Result<Map<String, Value>, TokenError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TokenError::Json {
        part,
        why: format!("not UTF-8: {e}"),
    })?;
    match parse_with(text, Options::STRICT) {
        Ok(Value::Object(m)) => {
            m.values().try_for_each(|v| check_numbers(v, part))?;
            Ok(m)
        }
        Ok(_) => Err(TokenError::Json {
            part,
            why: "not an object".into(),
        }),
        Err(JsonError {
            problem: Problem::Duplicate(key),
            ..
        }) => Err(TokenError::DuplicateKey {
            part,
            key: shown(&key),
        }),
        Err(e) => Err(TokenError::Json {
            part,
            why: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Result<Value, Problem> {
        parse(t).map_err(|e| e.problem)
    }

    #[test]
    fn the_magic_member_is_an_ordinary_member() {
        for t in [
            r#"{"$serde_json::private::Number":"5"}"#,
            r#"{"$serde_json::private::Number":"abc"}"#,
            r#"{"$serde_json::private::Number":"1","a":1}"#,
            r#"{"a":1,"$serde_json::private::Number":"1"}"#,
            r#"{"$serde_json::private::Number":5}"#,
        ] {
            let v = p(t).unwrap();
            let m = v.as_object().expect("an object");
            assert!(m.contains_key("$serde_json::private::Number"), "{t}");
        }
        assert_ne!(
            p(r#"{"$serde_json::private::Number":"5"}"#).unwrap(),
            p("5").unwrap()
        );
    }

    #[test]
    fn numbers_keep_their_text() {
        for t in [
            "0",
            "-0",
            "1.10",
            "1e400",
            "-1E-7",
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "0.0",
        ] {
            match p(t).unwrap() {
                Value::Number(n) => assert_eq!(n.as_str(), t),
                v => panic!("{t}: {v:?}"),
            }
        }
        assert_eq!(p("12").unwrap().as_i64(), Some(12));
        assert_eq!(p("-3").unwrap().as_i64(), Some(-3));
        for bad in [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "1e+",
            "0x1",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            p(r#""a\"b\\c\/d\b\f\n\r\t""#).unwrap(),
            "a\"b\\c/d\u{8}\u{c}\n\r\t"
        );
        assert_eq!(p(r#""\u00e9\ud83d\ude00é""#).unwrap(), "é😀é");
        assert_eq!(p(r#""\u0000""#).unwrap(), "\0");
        assert!(matches!(
            p(r#""\ud83d""#),
            Err(Problem::LoneSurrogate(0xd83d))
        ));
        assert!(matches!(
            p(r#""\ud83dx""#),
            Err(Problem::LoneSurrogate(0xd83d))
        ));
        assert!(matches!(
            p(r#""\ud83d\u0041""#),
            Err(Problem::LoneSurrogate(0xd83d))
        ));
        assert!(matches!(
            p(r#""\ude00""#),
            Err(Problem::LoneSurrogate(0xde00))
        ));
        assert!(matches!(p("\"a\nb\""), Err(Problem::ControlCharacter(10))));
        assert!(matches!(p(r#""\x""#), Err(Problem::BadEscape)));
        assert!(matches!(p(r#""\u12g4""#), Err(Problem::BadEscape)));
        assert!(matches!(p(r#""abc"#), Err(Problem::Eof)));
    }

    #[test]
    fn grammar() {
        assert_eq!(
            p(" { \"a\" : [ 1 , true , null , { } , [ ] ] , \"b\" : \"x\" } \n").unwrap(),
            serde_json::json!({"a": [1, true, null, {}, []], "b": "x"})
        );
        for bad in [
            "",
            " ",
            "[",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{1:2}",
            "[1 2]",
            "tru",
            "truex",
            "nul",
            "[1]]",
            "{} {}",
            "\"a\" x",
            "'a'",
            "[1}",
            "{\"a\":1]",
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        let e = parse("[1,\n  2,\n  x]").unwrap_err();
        assert_eq!((e.line, e.column), (3, 3));
        assert_eq!(e.to_string(), "expected a value at line 3 column 3");
    }

    #[test]
    fn duplicates() {
        assert_eq!(p(r#"{"a":1,"a":2}"#).unwrap(), serde_json::json!({"a": 2}));
        let e = parse_with(r#"{"a":{"b":1,"b":2}}"#, Options::STRICT).unwrap_err();
        assert_eq!(e.problem, Problem::Duplicate("b".into()));
        assert!(parse_with(r#"[{"b":1},{"b":2}]"#, Options::STRICT).is_ok());
        // the same name spelt with an escape is the same name
        assert!(parse_with(r#"{"a":1,"\u0061":2}"#, Options::STRICT).is_err());
    }

    #[test]
    fn depth() {
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(p(&deep(128)).is_ok());
        assert_eq!(p(&deep(129)), Err(Problem::TooDeep(128)));
        assert_eq!(
            parse(&deep(129)).unwrap_err().to_string(),
            "JSON nested deeper than 128 levels at line 1 column 129"
        );
        let opts = Options {
            max_depth: 3,
            duplicates: Duplicates::KeepLast,
        };
        assert!(parse_with(r#"{"a":[{}]}"#, opts).is_ok());
        assert!(parse_with(r#"{"a":[{"b":[]}]}"#, opts).is_err());
        // no recursion in the reader: a million levels read (as events) without a large stack
        let t = deep(1_000_000);
        let mut r = Reader::new(&t, usize::MAX);
        let mut n = 0;
        while r.next().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 2_000_000);
    }

    #[test]
    fn borrowed_when_plain() {
        let mut r = Reader::new(r#"{"ab":"c\nd"}"#, 10);
        assert_eq!(r.next().unwrap(), Some(Event::BeginObject));
        assert!(matches!(
            r.next().unwrap(),
            Some(Event::Key(Cow::Borrowed("ab")))
        ));
        assert!(matches!(r.next().unwrap(), Some(Event::Str(Cow::Owned(_)))));
    }
}
