//! The fast path for plain entries: an entry whose text has no whitespace, no string with an
//! escape or a control character, no member named twice, and images of scalar values only (what
//! nearly every entry is) is read as spans of its text, without building a `serde_json::Value`
//! (export and verify spent two thirds of their time building, dropping and writing values).
//!
//! Everything here returns `None` for a text it does not take, and the caller then takes the
//! general path (`package::parse_strict` and the `Value` functions). For every text it takes, it
//! gives exactly what the general path gives: the same entry line, changes, graph elements and
//! hash (the tests compare the two on generated entries, plain and not).

use super::package::{EntryElements, Names};
use koherent_token::ledger::{self, Hash};

/// A value as its text: a scalar, an array of scalars, or an object, with its members in the
/// order written.
#[derive(Debug)]
pub enum Val<'a> {
    Scalar(&'a str),
    Array(&'a str),
    Object(&'a str, Vec<(&'a str, Val<'a>)>),
}

impl<'a> Val<'a> {
    pub fn text(&self) -> &'a str {
        match self {
            Val::Scalar(t) | Val::Array(t) | Val::Object(t, _) => t,
        }
    }
    /// A string's content (plain strings only: no escapes to undo).
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Val::Scalar(t) if t.starts_with('"') => Some(&t[1..t.len() - 1]),
            _ => None,
        }
    }
    /// As `serde_json::Value::as_i64` reads a number's text (arbitrary precision).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Scalar(t) if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                t.parse().ok()
            }
            _ => None,
        }
    }
    fn members(&self) -> Option<&[(&'a str, Val<'a>)]> {
        match self {
            Val::Object(_, m) => Some(m),
            _ => None,
        }
    }
    fn is_scalar(&self) -> bool {
        matches!(self, Val::Scalar(_))
    }
}

fn get<'m, 'a>(members: &'m [(&'a str, Val<'a>)], name: &str) -> Option<&'m Val<'a>> {
    members.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// A plain JSON object: its members, nested at most `depth` objects deep.
pub fn object(text: &str, depth: usize) -> Option<Vec<(&str, Val<'_>)>> {
    let mut s = Scan {
        t: text,
        s: text.as_bytes(),
        pos: 0,
    };
    let v = s.value(depth)?;
    match v {
        Val::Object(_, m) if s.pos == s.s.len() => Some(m),
        _ => None,
    }
}

struct Scan<'a> {
    t: &'a str,
    s: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.s.get(self.pos) == Some(&b)).then(|| self.pos += 1)
    }

    /// A plain string's content (the position after its closing quote).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        loop {
            match *self.s.get(self.pos)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
        self.pos += 1;
        Some(&self.t[start..self.pos - 1])
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number as JSON spells it (not too long: the general path decides on those).
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        let _ = self.eat(b'-');
        match self.s.get(self.pos)? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.s.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        (self.pos - start <= 64).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.s[self.pos..]
            .starts_with(word)
            .then(|| self.pos += word.len())
    }

    fn scalar(&mut self) -> Option<()> {
        match *self.s.get(self.pos)? {
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn value(&mut self, depth: usize) -> Option<Val<'a>> {
        let start = self.pos;
        match *self.s.get(self.pos)? {
            b'{' if depth > 0 => {
                self.pos += 1;
                let mut members: Vec<(&'a str, Val<'a>)> = Vec::new();
                let mut sorted = true;
                if self.eat(b'}').is_none() {
                    loop {
                        let name = self.string()?;
                        self.eat(b':')?;
                        let v = self.value(depth - 1)?;
                        if members.last().is_some_and(|(prev, _)| *prev >= name) {
                            sorted = false;
                        }
                        members.push((name, v));
                        if self.eat(b',').is_none() {
                            self.eat(b'}')?;
                            break;
                        }
                    }
                }
                if !sorted {
                    // (a member named twice: the general path refuses the text)
                    let mut names: Vec<&str> = members.iter().map(|m| m.0).collect();
                    names.sort_unstable();
                    if names.windows(2).any(|w| w[0] == w[1]) {
                        return None;
                    }
                }
                Some(Val::Object(&self.t[start..self.pos], members))
            }
            b'[' => {
                self.pos += 1;
                if self.eat(b']').is_none() {
                    loop {
                        self.scalar()?;
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                Some(Val::Array(&self.t[start..self.pos]))
            }
            _ => {
                self.scalar()?;
                Some(Val::Scalar(&self.t[start..self.pos]))
            }
        }
    }
}

/// The canonical JSON (`koherent_token::ledger`) of a plain value: its text with every
/// object's members in order.
fn canonical(v: &Val, out: &mut String) {
    match v {
        Val::Scalar(t) | Val::Array(t) => out.push_str(t),
        Val::Object(t, m) if m.windows(2).all(|w| w[0].0 < w[1].0) => out.push_str(t),
        Val::Object(_, m) => {
            let mut m: Vec<(&str, &Val)> = m.iter().map(|(k, v)| (*k, v)).collect();
            m.sort_unstable_by_key(|x| x.0);
            write_object(m, out);
        }
    }
}

/// `{"name":value,...}` of plain members, in the order given, each value canonical.
fn write_object<'a, 'v: 'a>(
    members: impl IntoIterator<Item = (&'a str, &'a Val<'v>)>,
    out: &mut String,
) {
    out.push('{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        canonical(v, out);
    }
    out.push('}');
}

/// An entry's record: its images must be objects of scalars (values compare as their text).
fn images_plain(record: &[(&str, Val)]) -> bool {
    ["row", "old"].iter().all(|k| match get(record, k) {
        Some(Val::Object(_, m)) => m.iter().all(|(_, v)| v.is_scalar()),
        Some(v) => v.is_scalar(),
        None => true,
    })
}

/// `package::changes` of a plain record, as serde_json writes it.
fn changes(record: &[(&str, Val)]) -> String {
    let (Some("UPDATE"), Some(row), Some(old)) = (
        get(record, "kind").and_then(Val::as_str),
        get(record, "row").and_then(Val::members),
        get(record, "old").and_then(Val::members),
    ) else {
        return "[]".into();
    };
    let mut ids: Vec<&str> = row
        .iter()
        .filter(|(k, v)| v.text() != get(old, k).map_or("null", Val::text))
        .map(|(k, _)| *k)
        .collect();
    ids.sort_by_key(|k| (k.len(), *k));
    let mut out = String::from("[");
    for (i, k) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push('"');
    }
    out.push(']');
    out
}

/// `EntryElements::of` of a plain record (`table`: the table's JSON text).
fn elements(table: &Val, record: &[(&str, Val)], names: &Names) -> Option<EntryElements> {
    let text = |k: &str| get(record, k).map_or("null", Val::text);
    let config = get(record, "config").and_then(Val::as_i64).unwrap_or(-1);
    let id = format!("entry:{}/{}", config, text("id"));
    // the row's key, by the table's key column names (plain names only: as canonical and
    // serde_json both write them)
    let at = get(record, "id").and_then(Val::as_i64).unwrap_or(0);
    let img = |k: &str, cid: &str| get(record, k)?.members().and_then(|m| get(m, cid));
    let mut key: Vec<(&str, &str)> = vec![];
    if let Some((_, cols)) = names.tables.get(&config) {
        for name in cols {
            if name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
                return None;
            }
            let v = names
                .column_at(config, name, at)
                .map(|cid| {
                    let cid = cid.to_string();
                    match img("row", &cid) {
                        Some(v) if v.text() != "null" => v.text(),
                        _ => img("old", &cid).map_or("null", Val::text),
                    }
                })
                .unwrap_or("null");
            key.push((name, v));
        }
    }
    key.sort_by_key(|k| k.0);
    key.dedup_by_key(|k| k.0);
    let key: Vec<(&str, Val)> = key.into_iter().map(|(k, v)| (k, Val::Scalar(v))).collect();
    let mut key_text = String::new();
    write_object(key.iter().map(|(k, v)| (*k, v)), &mut key_text);
    Some(EntryElements::from_texts(
        text("date"),
        &id,
        text("kind"),
        table.text(),
        get(record, "context").and_then(Val::as_str),
        table.as_str()?,
        &key_text,
        &key_text,
    ))
}

/// Export: an entry row of `koherent.audit_export` (`{"table": ..., "record": {...}}`), when
/// plain: its entries.jsonl line (the record's members, its changes and its table, in order)
/// and its graph elements.
pub fn export_entry(text: &str, names: &Names) -> Option<(String, EntryElements)> {
    let top = object(text, 3)?;
    if top.len() != 2 {
        return None;
    }
    let table = get(&top, "table").filter(|t| t.as_str().is_some())?;
    let record = get(&top, "record")?.members()?;
    if !images_plain(record) || get(record, "table").is_some() || get(record, "changes").is_some() {
        return None;
    }
    let changes = changes(record);
    let changes = Val::Array(&changes);
    let mut line: Vec<(&str, &Val)> = record.iter().map(|(k, v)| (*k, v)).collect();
    line.push(("changes", &changes));
    line.push(("table", table));
    line.sort_unstable_by_key(|m| m.0);
    let mut out = String::with_capacity(text.len() + 32);
    write_object(line, &mut out);
    Some((out, elements(table, record, names)?))
}

/// Verify: an entries.jsonl line, when plain and made as export makes it (the entry fields,
/// `changes` as its images give them, `table` as schema.jsonl names it): (config, history id,
/// context, graph elements, hash). Any other line is for the general path to judge.
pub fn verified_entry(
    text: &str,
    names: &Names,
) -> Option<(i64, i64, String, EntryElements, Hash)> {
    let line = object(text, 2)?;
    let fields = super::package::ENTRY_FIELDS;
    // (the names are unique: nine members, the entry's fields, its table and its changes)
    if line.len() != fields.len() + 2 || !fields.iter().all(|f| get(&line, f).is_some()) {
        return None;
    }
    let table = get(&line, "table")?;
    let config = get(&line, "config").and_then(Val::as_i64).unwrap_or(-1);
    if !images_plain(&line)
        || table.as_str() != Some(&*names.table(config))
        || get(&line, "changes")?.text() != changes(&line)
    {
        return None;
    }
    let mut record: Vec<&(&str, Val)> = line
        .iter()
        .filter(|m| m.0 != "table" && m.0 != "changes")
        .collect();
    record.sort_unstable_by_key(|m| m.0);
    let mut canon = String::with_capacity(text.len());
    write_object(record.into_iter().map(|(k, v)| (*k, v)), &mut canon);
    Some((
        config,
        get(&line, "id").and_then(Val::as_i64).unwrap_or(-1),
        get(&line, "context")
            .and_then(Val::as_str)
            .unwrap_or("")
            .to_string(),
        elements(table, &line, names)?,
        ledger::record_hash_canonical("entry", canon.as_bytes()),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{export, package::Names, verify};
    use serde_json::json;

    /// A small deterministic generator (xorshift), so that a failure repeats.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn one_in(&mut self, n: u64) -> bool {
            self.next().is_multiple_of(n)
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    fn names() -> Names {
        let mut n = Names::default();
        for line in [
            json!({"line": "table", "config": 1, "name": "public.item", "key": ["id"]}),
            json!({"line": "table", "config": 2, "name": "s.\"Odd\"", "key": ["b", "a"]}),
            json!({"line": "table", "config": 3, "name": "public.q", "key": ["we\"ird"]}),
        ] {
            n.add(&line);
        }
        for (config, id, name, from, until) in [
            (1, 1, "id", 0, None),
            (1, 2, "name", 0, None),
            (1, 10, "id", 5, None),
            (2, 1, "a", 0, None),
            (2, 2, "b", 0, Some(7)),
            (2, 11, "b", 7, None),
            (3, 1, "we\"ird", 0, None),
        ] {
            n.add(
                &json!({"line": "column", "config": config, "column_id": id, "name": name,
                          "live_from": from, "live_until": until}),
            );
        }
        n
    }

    /// Scalars and values of every kind a jsonb or a column gives, plain and not.
    const VALUES: [&str; 22] = [
        "1",
        "-0",
        "1.50",
        "12345678901234567890.5",
        "1e5",
        "-2E-3",
        "0",
        "null",
        "true",
        "false",
        "\"x\"",
        "\"\"",
        "\"name 1\"",
        "\"ü\"",
        "\"a\\\"b\"",
        "\"tab\\t\"",
        "\"\\u00e9\"",
        "{\"b\":1,\"a\":[1,2]}",
        "[1,\"2\"]",
        "[]",
        "{}",
        "\"null\"",
    ];

    fn image(g: &mut Gen, ids: &[&str]) -> String {
        let mut members: Vec<String> = vec![];
        for k in ids {
            if !g.one_in(8) {
                // (mostly plain values, as most columns' are)
                let v = if g.one_in(16) {
                    g.pick(&VALUES)
                } else {
                    g.pick(&VALUES[..14])
                };
                members.push(format!("\"{k}\":{v}"));
            }
        }
        if g.one_in(4) {
            members.reverse(); // out of order (jsonb's order: shortest name first)
        }
        if g.one_in(40) {
            return g.pick(&["null", "[]", "1"]).to_string();
        }
        format!("{{{}}}", members.join(","))
    }

    /// An entry's record members, mostly as the database writes them, sometimes not.
    fn record(g: &mut Gen, changed: bool) -> Vec<(String, String)> {
        let ids: &[&str] = g
            .pick(&["1,2", "1,2,10", "2,1,11", "1", "1,2,3,4,5,6,7,8,9,10,11,12"])
            .split(',')
            .collect::<Vec<_>>()
            .leak();
        let kind = g.pick(&["\"UPDATE\"", "\"UPDATE\"", "\"CREATE\"", "\"DELETE\"", "1"]);
        let row = image(g, ids);
        let old = if changed || g.one_in(3) {
            image(g, ids)
        } else {
            row.clone()
        };
        let mut r = vec![
            (
                "config".into(),
                g.pick(&["1", "1", "2", "3", "9", "1.0", "\"1\""]).into(),
            ),
            (
                "id".into(),
                g.pick(&["2", "6", "8", "150003", "-1", "\"7\"", "1e3"])
                    .into(),
            ),
            ("kind".into(), kind.into()),
            (
                "date".into(),
                g.pick(&["\"2026-12-07T07:17:20.609288Z\"", "null", "5"])
                    .into(),
            ),
            (
                "context".into(),
                g.pick(&[
                    "\"01a24f5d-3f84-7b60-b907-1df7dd80bca1\"",
                    "null",
                    "\"c\\\"d\"",
                ])
                .into(),
            ),
            ("row".into(), row),
            ("old".into(), old),
        ];
        match g.next() % 30 {
            0 => {
                r.pop();
            }
            1 => r.push(("extra".into(), "1".into())),
            2 => r.push(("id".into(), "3".into())),
            _ => {}
        }
        r
    }

    /// The table schema.jsonl names for the record's config, mostly.
    fn table_of(rec: &[(String, String)], g: &mut Gen) -> &'static str {
        let tables = ["\"public.item\"", "\"s.\\\"Odd\\\"\"", "\"public.q\"", "7"];
        match rec[0].1.as_str() {
            _ if g.one_in(10) => g.pick(&tables),
            "1" => tables[0],
            "2" => tables[1],
            "3" => tables[2],
            _ => g.pick(&tables),
        }
    }

    fn object(members: &[(String, String)], g: &mut Gen) -> String {
        let sep = if g.one_in(50) { ", " } else { "," };
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(sep))
    }

    #[test]
    fn plain_entries_export_as_the_general_path_exports_them() {
        let (names, mut g, mut fast) = (names(), Gen(0x9e3779b97f4a7c15), 0);
        for _ in 0..20_000 {
            let changed = g.one_in(2);
            let rec = record(&mut g, changed);
            let table = table_of(&rec, &mut g);
            let text = format!("{{\"table\":{table},\"record\":{}}}", object(&rec, &mut g));
            let general = export::general_entry(&text, &names);
            if let Some(quick) = super::export_entry(&text, &names) {
                fast += 1;
                assert_eq!(Ok(quick), general, "{text}");
            }
        }
        assert!(fast > 4_000, "the fast path took {fast}");
    }

    #[test]
    fn plain_lines_verify_as_the_general_path_verifies_them() {
        let (names, mut g, mut fast) = (names(), Gen(0x2545f4914f6cdd1d), 0);
        for _ in 0..20_000 {
            let changed = g.one_in(2);
            let rec = record(&mut g, changed);
            let table = table_of(&rec, &mut g);
            // a line as export writes it, or one edited
            let text = format!("{{\"table\":{table},\"record\":{}}}", object(&rec, &mut g));
            let Ok((mut line, _)) = export::general_entry(&text, &names) else {
                continue;
            };
            match g.next() % 6 {
                0 => line = line.replacen("\"changes\":[]", "\"changes\":[\"1\"]", 1),
                1 => line = line.replacen("\"changes\":[\"", "\"changes\":[\"9\",\"", 1),
                2 => {
                    line =
                        line.replacen("\"table\":\"public.item\"", "\"table\":\"public.other\"", 1)
                }
                3 => line = line.replacen(":1,", ":1.0,", 1),
                _ => {}
            }
            if super::verified_entry(&line, &names).is_some() {
                fast += 1;
            }
            assert_eq!(
                verify::parse_entry(1, &line, &names),
                verify::general_entry(1, &line, &names),
                "{line}"
            );
        }
        assert!(fast > 1_000, "the fast path took {fast}");
    }
}
