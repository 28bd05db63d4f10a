//! `koherent-ledger-v1`: the bytes koherent's ledger hashes, and how hashes combine.
//!
//! Every record is hashed as SHA-256 of a domain tag (`koherent-ledger-v1 <kind>\n`) followed by
//! the record's canonical JSON: object keys sorted by code point at every level, no whitespace,
//! strings escaped as Python's `json.dumps(..., ensure_ascii=False)` escapes them (`"`, `\`, and
//! the control characters below U+0020 only; `\n \r \t \b \f` short, others `\u00xx`), numbers
//! exactly as written (PostgreSQL writes numerics without exponent: `1.10` stays `1.10`), `null`,
//! `true`, `false`. Hashes inside records are lowercase hex. Lists of hashes combine into a
//! Merkle tree as RFC 6962 (Certificate Transparency) defines it: the root of no leaves is
//! SHA-256 of nothing, a leaf is SHA-256(0x00 || hash), a node SHA-256(0x01 || left || right),
//! split at the largest power of two smaller than the count. docs/ledger.md has the record
//! fields and test vectors; this module is what the extension and the CLI both use.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::json::{Event, JsonError, Problem, Reader};

/// The format name, recorded in every block.
pub const FORMAT: &str = "koherent-ledger-v1";

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Canonical JSON of a value (see the module): numbers as written.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // (arbitrary_precision: a number is its text, written as it was read)
        Value::Number(n) => out.push_str(n.as_str()),
        Value::String(s) => crate::canonical::write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        // (serde_json's map keeps its keys in order unless a crate turns on its
        // `preserve_order` feature: sorted here only when they are not)
        Value::Object(map) if map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                crate::canonical::write_string(k, out);
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                crate::canonical::write_string(k, out);
                out.push(':');
                write(&map[k.as_str()], out);
            }
            out.push('}');
        }
    }
}

// The canonical text of the record being hashed: one buffer per thread (a record's text is made
// and hashed 200k times a second).
thread_local! {
    static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The hash of a record of kind `kind` (`entry`, `task`, `context`, `block`).
pub fn record_hash(kind: &str, record: &Value) -> Hash {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        write(record, &mut b);
        tagged_hash(kind, b.as_bytes())
    })
}

/// The canonical JSON (see the module) of a JSON text, appended to `out`: the same text as
/// [`canonical`] of the value the text spells, read by [`crate::json::Reader`] and written as it
/// is read, without building the value: any nesting (a jsonb column's value is as deep as
/// PostgreSQL let it be, and the ledger must hash what it holds), no recursion. A member named
/// twice in one object is refused (two readers could keep different ones).
///
/// Members are written in the order they come; an object whose names are not in order (jsonb
/// writes keys shortest first) is noted with its members' places, and the text is then written
/// once more with each such object's members in order: every byte is copied twice at most,
/// however deep the objects out of order are nested.
pub fn canonical_text(text: &str, out: &mut String) -> Result<(), JsonError> {
    use crate::canonical::write_string;
    // an open object: where its members start in `out`, where its members' entries start in
    // `members`, whether its names came in order so far
    struct Object {
        start: usize,
        first_member: usize,
        sorted: bool,
    }
    // a member of an open object: its name in `names`, where its text starts in `out` (after
    // the comma)
    struct Member {
        name: std::ops::Range<usize>,
        at: usize,
    }
    enum Open {
        Array { empty: bool },
        Object(Object),
    }
    // an object out of order: its members' text (after `{`, up to `}`) and their places in
    // the order they must have
    struct Reorder {
        start: usize,
        end: usize,
        order: Vec<std::ops::Range<usize>>,
    }
    let base = out.len();
    let mut r = Reader::new(text, usize::MAX);
    let mut open: Vec<Open> = Vec::new();
    let mut members: Vec<Member> = Vec::new();
    let mut names = String::new();
    let mut reorders: Vec<Reorder> = Vec::new();
    while let Some(ev) = r.next()? {
        // a value's comma in an array (an object's members get theirs with their name)
        if !matches!(ev, Event::Key(_) | Event::EndArray | Event::EndObject) {
            if let Some(Open::Array { empty }) = open.last_mut() {
                if !*empty {
                    out.push(',');
                }
                *empty = false;
            }
        }
        match ev {
            Event::BeginArray => {
                out.push('[');
                open.push(Open::Array { empty: true });
            }
            Event::EndArray => {
                out.push(']');
                open.pop();
            }
            Event::BeginObject => {
                out.push('{');
                open.push(Open::Object(Object {
                    start: out.len(),
                    first_member: members.len(),
                    sorted: true,
                }));
            }
            Event::Key(k) => {
                let Some(Open::Object(o)) = open.last_mut() else {
                    unreachable!("a member name outside an object")
                };
                if members.len() > o.first_member {
                    let last = &members[members.len() - 1];
                    if names[last.name.clone()] >= *k {
                        o.sorted = false;
                    }
                    out.push(',');
                }
                let from = names.len();
                names.push_str(&k);
                members.push(Member {
                    name: from..names.len(),
                    at: out.len(),
                });
                write_string(&k, out);
                out.push(':');
            }
            Event::EndObject => {
                let Some(Open::Object(o)) = open.pop() else {
                    unreachable!("an object's end outside an object")
                };
                let mine = &members[o.first_member..];
                if !o.sorted {
                    let name = |i: usize| &names[mine[i].name.clone()];
                    let mut order: Vec<usize> = (0..mine.len()).collect();
                    order.sort_by(|&a, &b| name(a).cmp(name(b)));
                    if let Some(w) = order.windows(2).find(|w| name(w[0]) == name(w[1])) {
                        return Err(r.error(Problem::Duplicate(name(w[0]).to_string())));
                    }
                    // member i's text: from its start to the next one's comma (or the end)
                    let end = |i: usize| mine.get(i + 1).map_or(out.len(), |m| m.at - 1);
                    reorders.push(Reorder {
                        start: o.start,
                        end: out.len(),
                        order: order.iter().map(|&i| mine[i].at..end(i)).collect(),
                    });
                }
                out.push('}');
                if let Some(first) = members.get(o.first_member) {
                    names.truncate(first.name.start);
                }
                members.truncate(o.first_member);
            }
            Event::Str(s) => write_string(&s, out),
            Event::Num(n) => out.push_str(n),
            Event::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            Event::Null => out.push_str("null"),
        }
    }
    if reorders.is_empty() {
        return Ok(());
    }
    // Written again, each object out of order with its members in order: a stack of pieces of
    // the first text still to copy, and of objects whose members are being written.
    let first = out.split_off(base);
    for ro in &mut reorders {
        ro.start -= base;
        ro.end -= base;
        for m in &mut ro.order {
            *m = m.start - base..m.end - base;
        }
    }
    reorders.sort_unstable_by_key(|ro| ro.start);
    enum Step {
        Copy(std::ops::Range<usize>),
        Members { object: usize, next: usize },
    }
    let mut steps = vec![Step::Copy(0..first.len())];
    while let Some(step) = steps.last_mut() {
        match step {
            Step::Copy(range) => {
                // the first object out of order inside the piece, if any (an object's members
                // start where it does: a piece that is its first member is not inside it)
                let i = reorders.partition_point(|ro| ro.start <= range.start);
                match reorders.get(i) {
                    Some(ro) if ro.start < range.end => {
                        out.push_str(&first[range.start..ro.start]);
                        // (after its members: its `}` and what follows)
                        range.start = ro.end;
                        steps.push(Step::Members { object: i, next: 0 });
                    }
                    _ => {
                        out.push_str(&first[range.clone()]);
                        steps.pop();
                    }
                }
            }
            Step::Members { object, next } => {
                let ro = &reorders[*object];
                if *next < ro.order.len() {
                    if *next > 0 {
                        out.push(',');
                    }
                    let m = ro.order[*next].clone();
                    *next += 1;
                    steps.push(Step::Copy(m));
                } else {
                    steps.pop();
                }
            }
        }
    }
    Ok(())
}

/// The hash of a record of kind `kind` given as JSON text: [`record_hash`] of the value the
/// text spells, by [`canonical_text`].
pub fn record_hash_text(kind: &str, record: &str) -> Result<Hash, JsonError> {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        canonical_text(record, &mut b)?;
        Ok(tagged_hash(kind, b.as_bytes()))
    })
}

/// The hash of a record of kind `kind` given as its canonical JSON: the caller has made the
/// text canonical (the CLI's fast path for plain entries, which writes their text in order).
pub fn record_hash_canonical(kind: &str, canonical: &[u8]) -> Hash {
    tagged_hash(kind, canonical)
}

fn tagged_hash(kind: &str, canonical: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(b" ");
    h.update(kind.as_bytes());
    h.update(b"\n");
    h.update(canonical);
    h.finalize().into()
}

/// The Merkle tree hash (RFC 6962) of a list of leaf hashes.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(leaves[0]);
            h.finalize().into()
        }
        n => {
            let k = split(n);
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(merkle_root(&leaves[..k]));
            h.update(merkle_root(&leaves[k..]));
            h.finalize().into()
        }
    }
}

/// The largest power of two smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The audit path of leaf `index` (RFC 6962 section 2.1.1): the sibling hashes from the leaf up.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    proof(leaves, index, &mut path);
    path
}

fn proof(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        proof(&leaves[..k], index, path);
        path.push(merkle_root(&leaves[k..]));
    } else {
        proof(&leaves[k..], index - k, path);
        path.push(merkle_root(&leaves[..k]));
    }
}

/// Whether `path` proves leaf `leaf` at `index` of `size` leaves under `root` (RFC 9162 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: usize,
    size: usize,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r: Hash = {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(leaf);
        h.finalize().into()
    };
    for p in path {
        if s_n == 0 {
            return false;
        }
        let mut h = Sha256::new();
        h.update([1u8]);
        if f_n % 2 == 1 || f_n == s_n {
            h.update(p);
            h.update(r);
            r = h.finalize().into();
            if f_n % 2 == 0 {
                while f_n % 2 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            h.update(r);
            h.update(p);
            r = h.finalize().into();
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && &r == root
}

/// A history entry's record: `config` (the tracked table's config id), `id` (history id),
/// `kind`, `date` (RFC 3339, UTC, microseconds), `context` (uuid text or null), `row` and `old`
/// (the row image and an UPDATE's old image, as history shows them; null where there is none).
pub fn entry_record(
    config: i32,
    id: i64,
    kind: &str,
    date: &str,
    context: Option<&str>,
    row: Value,
    old: Value,
) -> Value {
    let mut m = Map::new();
    m.insert("config".into(), Value::from(config));
    m.insert("id".into(), Value::from(id));
    m.insert("kind".into(), Value::from(kind));
    m.insert("date".into(), Value::from(date));
    m.insert("context".into(), context.map_or(Value::Null, Value::from));
    m.insert("row".into(), row);
    m.insert("old".into(), old);
    Value::Object(m)
}

/// A context's record: its fields (an object, see docs/ledger.md), its task's hash (null without
/// a task), the Merkle root of its entries' hashes (in config, then history id order), their
/// count, and the hash of its entry index ([`index_hash`]).
pub fn context_record(
    fields: Value,
    task: Option<&Hash>,
    entries_root: &Hash,
    entries: i64,
    index: &str,
) -> Value {
    let mut m = Map::new();
    m.insert("fields".into(), fields);
    m.insert(
        "task".into(),
        task.map_or(Value::Null, |h| Value::from(hex::encode(h))),
    );
    m.insert(
        "entries_root".into(),
        Value::from(hex::encode(entries_root)),
    );
    m.insert("entries".into(), Value::from(entries));
    m.insert("index".into(), Value::from(index));
    Value::Object(m)
}

/// The hash of a context's entry index: hex SHA-256 of `<configs>|<ids>|<prefixes>`, the
/// entries' config ids and history ids comma-separated and the first 8 bytes of each entry's
/// hash in hex, all in the order the entries were combined.
pub fn index_hash(entries: &[(i32, i64, Hash)]) -> String {
    let configs: Vec<i32> = entries.iter().map(|e| e.0).collect();
    let ids: Vec<i64> = entries.iter().map(|e| e.1).collect();
    let prefixes: Vec<[u8; 8]> = entries.iter().map(|e| prefix(&e.2)).collect();
    index_hash_of(&configs, &ids, &prefixes)
}

/// [`index_hash`] from the index as a block keeps it: config ids, history ids and each entry's
/// hash prefix (its first 8 bytes), in the entries' order.
pub fn index_hash_of(configs: &[i32], ids: &[i64], prefixes: &[[u8; 8]]) -> String {
    let configs: Vec<String> = configs.iter().map(|c| c.to_string()).collect();
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let prefixes: String = prefixes.iter().map(hex::encode).collect();
    let text = format!("{}|{}|{}", configs.join(","), ids.join(","), prefixes);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The first 8 bytes of a hash: what an entry index keeps of each entry's hash.
pub fn prefix(h: &Hash) -> [u8; 8] {
    h[..8].try_into().expect("a hash has 32 bytes")
}

/// A block's record.
#[allow(clippy::too_many_arguments)]
pub fn block_record(
    database: &str,
    block: i64,
    prev: Option<&Hash>,
    contexts_root: &Hash,
    contexts: i64,
    entries: i64,
    schema: &Hash,
    sealed_at: &str,
) -> Value {
    let mut m = Map::new();
    m.insert("format".into(), Value::from(FORMAT));
    m.insert("database".into(), Value::from(database));
    m.insert("block".into(), Value::from(block));
    m.insert(
        "prev".into(),
        prev.map_or(Value::Null, |h| Value::from(hex::encode(h))),
    );
    m.insert(
        "contexts_root".into(),
        Value::from(hex::encode(contexts_root)),
    );
    m.insert("contexts".into(), Value::from(contexts));
    m.insert("entries".into(), Value::from(entries));
    m.insert("schema".into(), Value::from(hex::encode(schema)));
    m.insert("sealed_at".into(), Value::from(sealed_at));
    Value::Object(m)
}

/// A digest (what `koherent.digest()` returns) as the body of a C2SP-style checkpoint note:
/// `koherent-ledger-v1 <database>`, the block number, the block hash in standard base64, then
/// `contexts <n>`, `entries <n>`, `sealed_at <moment>` (one per line, each ending in a newline).
pub fn checkpoint_body(digest: &Value) -> Result<String, String> {
    let field = |k: &str| {
        digest
            .get(k)
            .ok_or_else(|| format!("the digest has no {k}"))
    };
    let text = |k: &str| -> Result<String, String> {
        let v = field(k)?;
        let t = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(format!("the digest's {k} is neither a string nor a number")),
        };
        if t.is_empty() || t.contains(['\n', ' ']) {
            return Err(format!(
                "the digest's {k} is empty or has spaces or newlines"
            ));
        }
        Ok(t)
    };
    let hash =
        hex::decode(text("hash")?).map_err(|_| "the digest's hash is not hex".to_string())?;
    if hash.len() != 32 {
        return Err("the digest's hash is not 32 bytes".into());
    }
    use base64::Engine;
    Ok(format!(
        "{FORMAT} {}\n{}\n{}\ncontexts {}\nentries {}\nsealed_at {}\n",
        text("database")?,
        text("block")?,
        base64::engine::general_purpose::STANDARD.encode(&hash),
        text("contexts")?,
        text("entries")?,
        text("sealed_at")?
    ))
}

/// The digest a checkpoint body names (the inverse of [`checkpoint_body`]).
pub fn checkpoint_digest(body: &str) -> Result<Value, String> {
    use base64::Engine;
    let lines: Vec<&str> = body
        .strip_suffix('\n')
        .ok_or("the note's body does not end in a newline")?
        .split('\n')
        .collect();
    let [origin, block, hash, contexts, entries, sealed_at] = lines[..] else {
        return Err("a koherent checkpoint has six lines".into());
    };
    let database = origin
        .strip_prefix(&format!("{FORMAT} "))
        .ok_or("not a koherent-ledger-v1 checkpoint")?;
    let hash = base64::engine::general_purpose::STANDARD
        .decode(hash)
        .map_err(|_| "the hash line is not base64")?;
    let tagged = |line: &str, tag: &str| -> Result<String, String> {
        line.strip_prefix(&format!("{tag} "))
            .map(str::to_string)
            .ok_or_else(|| format!("no {tag} line"))
    };
    let int = |t: &str| -> Result<Value, String> {
        t.parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{t:?} is not a number"))
    };
    Ok(serde_json::json!({
        "format": FORMAT, "database": database, "block": int(block)?, "hash": hex::encode(hash),
        "contexts": int(&tagged(contexts, "contexts")?)?, "entries": int(&tagged(entries, "entries")?)?,
        "sealed_at": tagged(sealed_at, "sealed_at")?,
    }))
}

fn note_key_hash(name: &str, key: &ed25519_dalek::VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([0x01]); // Ed25519
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A signed note (C2SP signed-note): the body, a blank line, and `— <name> <base64(key hash ||
/// signature)>`, the Ed25519 signature over the body's bytes.
pub fn sign_note(
    body: &str,
    name: &str,
    key: &ed25519_dalek::SigningKey,
) -> Result<String, String> {
    use base64::Engine;
    use ed25519_dalek::Signer;
    if name.is_empty() || name.contains([' ', '\n', '+']) {
        return Err("a note key name has no spaces, newlines or plus signs".into());
    }
    let sig = key.sign(body.as_bytes());
    let mut blob = note_key_hash(name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&sig.to_bytes());
    Ok(format!(
        "{body}\n\u{2014} {name} {}\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    ))
}

/// The body of a signed note if `key` (named `name`) signed it; an error naming what is wrong.
pub fn verify_note(
    note: &str,
    name: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<String, String> {
    use base64::Engine;
    let split = note
        .rfind("\n\n")
        .ok_or("not a signed note (no blank line before the signatures)")?;
    let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
    let want = note_key_hash(name, key);
    for line in sigs.lines() {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            return Err(format!("not a signature line: {line:?}"));
        };
        let Some((n, b64)) = rest.split_once(' ') else {
            return Err(format!("not a signature line: {line:?}"));
        };
        if n != name {
            continue;
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "a signature that is not base64")?;
        if blob.len() != 68 || blob[..4] != want {
            continue;
        }
        let sig = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|e| e.to_string())?;
        return key
            .verify_strict(body.as_bytes(), &sig)
            .map(|_| body.to_string())
            .map_err(|_| format!("the signature of {name} does not verify: the note was changed or signed by another key"));
    }
    Err(format!("no signature of key {name} with this public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        Sha256::digest(s.as_bytes()).into()
    }

    #[test]
    fn canonical_keeps_numbers_and_sorts_keys() {
        let v: Value = serde_json::from_str(
            r#"{"b": 1.10, "a": [1, 12345678901234567890.123, "é\n"], "c": null}"#,
        )
        .unwrap();
        assert_eq!(
            canonical(&v),
            "{\"a\":[1,12345678901234567890.123,\"é\\n\"],\"b\":1.10,\"c\":null}"
        );
    }

    #[test]
    fn canonical_text_is_canonical_of_the_value() {
        let m = "$serde_json::private::Number";
        for t in [
            r#"{"b": 1.10, "a": [1, 12345678901234567890.123, "é\n"], "c": null}"#.to_string(),
            r#"{"zz":{"y":[{"b":2,"a":1},[],{}],"x":"\u0001"},"a":true,"":false}"#.to_string(),
            r#"{"\u0001":1,"A":2,"a":3,"\"":4,"\\":5,"é":6,"😀":7,"\uffff":8}"#.to_string(),
            r#"{"a":{"c":1,"b":2},"b":[{"d":1,"c":[3,{"f":1,"e":2}]}]}"#.to_string(),
            format!(r#"{{"a":1,"{m}":"1"}}"#),
            format!(r#"{{"{m}":"abc"}}"#),
            "[]".into(),
            "{}".into(),
            "5".into(),
            "\"x\"".into(),
            "[[],[[]],{}]".into(),
        ] {
            let v = crate::json::parse(&t).unwrap();
            let mut out = String::new();
            canonical_text(&t, &mut out).unwrap();
            assert_eq!(out, canonical(&v), "{t}");
            assert_eq!(
                record_hash_text("entry", &t).unwrap(),
                record_hash("entry", &v)
            );
        }
        let mut out = String::new();
        assert_eq!(
            canonical_text(r#"{"a":{"b":1,"c":2,"b":3}}"#, &mut out)
                .unwrap_err()
                .problem,
            Problem::Duplicate("b".into())
        );
        out.clear();
        assert!(canonical_text(r#"{"a":1,"a":1}"#, &mut out).is_err());
        // the member spelt like a serde_json number is an object, not the number 5
        assert_ne!(
            record_hash_text("entry", &format!(r#"{{"row":{{"1":{{"{m}":"5"}}}}}}"#)).unwrap(),
            record_hash_text("entry", r#"{"row":{"1":5}}"#).unwrap()
        );
        // docs/ledger.md, test vector 5
        let v5 = r#"{"config":1,"context":null,"date":"2026-12-07T00:00:00.000000Z","id":1,"kind":"CREATE","old":null,"row":{"1":1,"2":{"$serde_json::private::Number":"5"}}}"#;
        assert_eq!(
            hex::encode(record_hash_text("entry", v5).unwrap()),
            "9f1aeceb84418dc51729fd9fe3112110ce3b16a73486c7c1f717bcbbd10368f7"
        );
        assert_eq!(
            hex::encode(
                record_hash_text(
                    "entry",
                    &v5.replace(r#"{"$serde_json::private::Number":"5"}"#, "5")
                )
                .unwrap()
            ),
            "9e134c4ae0d03dd0ece99d3f11fc9e688e91c405827c4741898b35a52aa330ad"
        );
        // any depth, no recursion
        let n = 200_000;
        let deep = "[{\"b\":1,\"a\":".repeat(n) + "0" + &"}]".repeat(n);
        out.clear();
        canonical_text(&deep, &mut out).unwrap();
        assert_eq!(out, "[{\"a\":".repeat(n) + "0" + &",\"b\":1}]".repeat(n));
    }

    #[test]
    fn merkle_matches_rfc6962_shapes() {
        let l: Vec<Hash> = (0..7).map(|i| h(&i.to_string())).collect();
        // three leaves: (0, 1) and 2
        let leaf = |x: &Hash| -> Hash {
            let mut s = Sha256::new();
            s.update([0u8]);
            s.update(x);
            s.finalize().into()
        };
        let node = |a: &Hash, b: &Hash| -> Hash {
            let mut s = Sha256::new();
            s.update([1u8]);
            s.update(a);
            s.update(b);
            s.finalize().into()
        };
        assert_eq!(
            merkle_root(&l[..3]),
            node(&node(&leaf(&l[0]), &leaf(&l[1])), &leaf(&l[2]))
        );
        assert_eq!(merkle_root(&[]), <Hash>::from(Sha256::digest([])));
        for n in 1..=7 {
            let root = merkle_root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(&l[..n], i);
                assert!(verify_inclusion(&l[i], i, n, &p, &root), "n={n} i={i}");
                assert!(!verify_inclusion(&h("x"), i, n, &p, &root), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn checkpoint_notes_round_trip_and_refuse_changes() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let d = serde_json::json!({"format": FORMAT, "database": "f4585043-3a44-4ef8-8beb-95d95fa797d9", "block": 2,
            "hash": "ae4508800a12199ccaf000b80231d46c0cd464e6b747359b9b52b52d07de56a8", "contexts": 3, "entries": 7,
            "sealed_at": "2026-12-02T08:20:09.123456Z", "database_name": "app"});
        let body = checkpoint_body(&d).unwrap();
        assert_eq!(
            body.lines().next().unwrap(),
            "koherent-ledger-v1 f4585043-3a44-4ef8-8beb-95d95fa797d9"
        );
        let note = sign_note(&body, "ops.example/ledger", &key).unwrap();
        let back = verify_note(&note, "ops.example/ledger", &key.verifying_key()).unwrap();
        let mut want = d.clone();
        want.as_object_mut().unwrap().remove("database_name");
        assert_eq!(checkpoint_digest(&back).unwrap(), want);
        let changed = note.replacen("\n2\n", "\n3\n", 1);
        assert!(
            verify_note(&changed, "ops.example/ledger", &key.verifying_key())
                .unwrap_err()
                .contains("does not verify")
        );
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        assert!(verify_note(&note, "ops.example/ledger", &other.verifying_key()).is_err());
        assert!(verify_note(&note, "someone-else", &key.verifying_key()).is_err());
    }

    #[test]
    fn record_hash_vector() {
        // docs/ledger.md, vector 1
        let e = entry_record(
            1,
            7,
            "UPDATE",
            "2026-12-02T08:05:39.666776Z",
            Some("01a235c1-adf9-7fd8-ab67-b28e7bc50ba4"),
            serde_json::from_str(r#"{"id": 7, "qty": 2, "price": 1.50}"#).unwrap(),
            serde_json::from_str(r#"{"id": 7, "qty": 1, "price": 1.50}"#).unwrap(),
        );
        assert_eq!(
            canonical(&e),
            r#"{"config":1,"context":"01a235c1-adf9-7fd8-ab67-b28e7bc50ba4","date":"2026-12-02T08:05:39.666776Z","id":7,"kind":"UPDATE","old":{"id":7,"price":1.50,"qty":1},"row":{"id":7,"price":1.50,"qty":2}}"#
        );
        let hash = record_hash("entry", &e);
        assert_eq!(
            hex::encode(hash),
            "7a4dda9ecfae5005f0111699ffeec646da41587640f2be6b8009b1f8218439d4"
        );
        // vector 2: a context of that one entry, without a task
        let root = merkle_root(&[hash]);
        assert_eq!(
            hex::encode(root),
            "edae8a62be83e9a460a362ccf34d45530e2972dc7b8c7ce4b46c6bc12c636fcd"
        );
        let fields = serde_json::json!({"id": "01a235c1-adf9-7fd8-ab67-b28e7bc50ba4"});
        let index = index_hash(&[(1, 7, hash)]);
        assert_eq!(
            index,
            "5fe6c0385592e24033ed4ddffcb7546244ff59bbee2efe916c19939aa7a4c1bd"
        );
        let c = context_record(fields, None, &root, 1, &index);
        assert_eq!(
            hex::encode(record_hash("context", &c)),
            "0df5f88b28cb2d2a7e841b051020396b2d5c26206b20c4148d9db0acb41fa3dc"
        );
        // vector 6: that context in an organization, with the application's user (0.7.0's
        // fields, present only when set)
        let fields = serde_json::json!({"id": "01a235c1-adf9-7fd8-ab67-b28e7bc50ba4",
                                        "organization": "acme", "app_user": "ana@acme"});
        let c = context_record(fields, None, &root, 1, &index);
        assert_eq!(
            hex::encode(record_hash("context", &c)),
            "9a3eb314363bb298e973c113a17bedfeaec5f32a910844aa8d7e4de16171e280"
        );
        // vector 3: Merkle roots of none and of three leaves
        assert_eq!(
            hex::encode(merkle_root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(merkle_root(&[h("a"), h("b"), h("c")])),
            "cac3d448d4e20a2ad5eae1f500e63c2a7f9217cd14572ba7fd22e26dc1ec2648"
        );
        // vector 4 (docs/audit-package.md): the proof of leaf 1 of those three
        let leaves = [h("a"), h("b"), h("c")];
        let path = inclusion_proof(&leaves, 1);
        assert_eq!(
            path.iter().map(hex::encode).collect::<Vec<_>>(),
            [
                "a23bd5b06da9048238a65b3f1d9d0b9e15fae3dde262688e6489aa4c763d1820",
                "6a3fc11b79f836bda340e75c8906e961b8adf4d6a08a2b992e3f38cd6ff38ebf"
            ]
        );
        assert!(verify_inclusion(
            &leaves[1],
            1,
            3,
            &path,
            &merkle_root(&leaves)
        ));
        assert!(!verify_inclusion(
            &leaves[1],
            2,
            3,
            &path,
            &merkle_root(&leaves)
        ));
        // the index hash from an index as a block keeps it is the one from the hashes
        let e = [(1, 7, h("x")), (2, 9, h("y"))];
        let prefixes: Vec<[u8; 8]> = e.iter().map(|x| prefix(&x.2)).collect();
        assert_eq!(index_hash(&e), index_hash_of(&[1, 2], &[7, 9], &prefixes));
    }
}
