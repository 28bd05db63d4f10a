//! `koherent audit verify`: a package checked offline, with nothing of the database: file
//! hashes, every entry, context and block hash and proof, the chain up to a digest, every
//! token's signature and claims. One problem per line: `file:line: what`.

use super::package::{self as pkg, Names};
use super::progress::Progress;
use koherent_token::ledger::{self, Hash};
use koherent_token::{decode, KeySet};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.what),
            None => write!(f, "{}: {}", self.file, self.what),
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, file: &str, line: Option<usize>, what: impl Into<String>) {
        self.0.push(Problem {
            file: file.to_string(),
            line,
            what: what.into(),
        });
    }
}

/// The lines of a JSON-lines file, numbered from 1 (a line that is not a JSON object is a
/// problem, and skipped).
fn lines(files: &mut Files, name: &'static str, p: &mut Problems) -> Vec<(usize, Value)> {
    let bytes = files.bytes(name);
    let text = utf8(name, &bytes, p);
    let mut out = vec![];
    for (i, l) in text.lines().enumerate() {
        match pkg::parse_strict(l) {
            Ok(v) if v.is_object() => out.push((i + 1, v)),
            Ok(_) => p.add(name, Some(i + 1), "not a JSON object"),
            Err(e) => p.add(name, Some(i + 1), format!("not a JSON object: {e}")),
        }
    }
    out
}

/// A package file's text ("" when it could not be read, or with a problem when it is not
/// UTF-8).
fn utf8<'a>(name: &str, bytes: &'a Option<Arc<Vec<u8>>>, p: &mut Problems) -> &'a str {
    let Some(b) = bytes else {
        return ""; // (named by the manifest check)
    };
    std::str::from_utf8(b).unwrap_or_else(|e| {
        let at = b[..e.valid_up_to()].iter().filter(|c| **c == b'\n').count() + 1;
        p.add(name, Some(at), "not UTF-8");
        ""
    })
}

/// A file's text, "" when it could not be read or is not UTF-8 (for the files whose problems
/// are reported otherwise: keys.json as not JSON, graph.json as not the package's graph).
fn text_or_empty(bytes: &Option<Arc<Vec<u8>>>) -> &str {
    bytes
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or_default()
}

/// The package's files, each read once: by the thread that hashes them, in the order verify
/// needs them (the small ones first), handed over as they are read.
struct Files {
    rx: std::sync::mpsc::Receiver<(&'static str, Option<Arc<Vec<u8>>>)>,
    got: HashMap<&'static str, Option<Arc<Vec<u8>>>>,
}

/// The order the file thread reads the package's files in: the order verify reads them.
const READ_ORDER: [&str; 7] = [
    pkg::SCHEMA,
    pkg::TASKS,
    pkg::KEYS,
    pkg::CONTEXTS,
    pkg::LEDGER,
    pkg::GRAPH,
    pkg::ENTRIES,
];

impl Files {
    /// A file's bytes (None when it cannot be read), waiting for the file thread to read it.
    fn bytes(&mut self, name: &str) -> Option<Arc<Vec<u8>>> {
        loop {
            if let Some(b) = self.got.remove(name) {
                return b;
            }
            match self.rx.recv() {
                Ok((n, b)) => {
                    self.got.insert(n, b);
                }
                Err(_) => return None,
            }
        }
    }
}

/// Whether a line holds exactly these fields (what else it held would be covered by no hash).
fn exact_fields(v: &Value, fields: &[&str]) -> bool {
    v.as_object()
        .is_some_and(|m| m.len() == fields.len() && fields.iter().all(|f| m.contains_key(*f)))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The line of `text` where `needle` first occurs (1-based).
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

pub struct Verified {
    pub problems: Vec<Problem>,
    pub summary: String,
}

/// An entries.jsonl line as a parsing thread leaves it: where it belongs, what is wrong with it
/// on its own, its hash.
#[derive(Debug, PartialEq)]
pub(super) struct Parsed {
    line: usize,
    /// (none when the line is not a JSON object)
    at: Option<Place>,
    problems: Vec<String>,
    hash: Hash,
}

/// What the entry says of where it belongs: (config, history id, context), and its graph
/// elements.
#[derive(Debug, PartialEq)]
struct Place {
    config: i64,
    id: i64,
    context: String,
    graph: pkg::EntryElements,
}

pub(super) fn parse_entry(line: usize, text: &str, names: &Names) -> Parsed {
    if let Some((config, id, context, graph, hash)) = super::plain::verified_entry(text, names) {
        return Parsed {
            line,
            at: Some(Place {
                config,
                id,
                context,
                graph,
            }),
            problems: vec![],
            hash,
        };
    }
    general_entry(line, text, names)
}

/// An entries.jsonl line checked by way of `Value`s (any line: `plain` takes the plain ones
/// faster, to the same result).
pub(super) fn general_entry(line: usize, text: &str, names: &Names) -> Parsed {
    let mut e = Parsed {
        line,
        at: None,
        problems: vec![],
        hash: [0; 32],
    };
    let mut record = match pkg::parse_strict(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            e.problems.push("not a JSON object".into());
            return e;
        }
        Err(err) => {
            e.problems.push(format!("not a JSON object: {err}"));
            return e;
        }
    };
    // the line is the entry's record, its table and its changes: nothing else (what is not in
    // the record is not covered by its hash)
    let table = record.remove("table").unwrap_or(Value::Null);
    let changes = record.remove("changes");
    let config = record.get("config").and_then(Value::as_i64).unwrap_or(-1);
    if record.len() != pkg::ENTRY_FIELDS.len()
        || !pkg::ENTRY_FIELDS.iter().all(|f| record.contains_key(*f))
    {
        e.problems.push(format!(
            "its fields are not {}",
            pkg::ENTRY_FIELDS.join(", ")
        ));
    }
    if s(&table) != names.table(config) {
        e.problems.push(format!("its table is given as {table}"));
    }
    if changes.as_ref() != Some(&pkg::changes(&record)) {
        e.problems
            .push("its changes are not the columns its images differ in".into());
    }
    e.at = Some(Place {
        config,
        id: record.get("id").and_then(Value::as_i64).unwrap_or(-1),
        context: record
            .get("context")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        graph: pkg::EntryElements::of(&table, &record, names),
    });
    e.hash = ledger::record_hash("entry", &Value::Object(record));
    e
}

pub fn verify(dir: &str, jwks: Option<&str>, digest: Option<&str>) -> Result<Verified, String> {
    let dir = Path::new(dir);
    let mut p = Problems::default();
    let mtext = std::fs::read_to_string(dir.join(pkg::MANIFEST))
        .map_err(|e| format!("{}: {e}", dir.join(pkg::MANIFEST).display()))?;
    let manifest: Value =
        pkg::parse_strict(&mtext).map_err(|e| format!("{}: not JSON: {e}", pkg::MANIFEST))?;
    if s(&manifest["kind"]) != pkg::KIND || s(&manifest["format"]) != pkg::FORMAT {
        return Err(format!(
            "{}: not a {} package (kind {}, format {})",
            pkg::MANIFEST,
            pkg::FORMAT,
            manifest["kind"],
            manifest["format"]
        ));
    }

    // 1. the files, as the manifest lists them: read once and hashed by a thread of its own
    // while the rest is checked (their SHA-256 is a sixth of the work; its problems come
    // first, in the manifest's order of files), which hands each file over as it reads it
    let listed = manifest["files"].as_object().cloned().unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut files = Files {
        rx,
        got: HashMap::new(),
    };
    let file_check = {
        let (dir, mtext) = (dir.to_path_buf(), mtext.clone());
        // (its own big stack: the manifest's values, dropped here, are as deep as a package's)
        pkg::deep_thread()
            .spawn(move || {
                // (each file's problems kept apart, reported in the manifest's order of files)
                let mut per_file: Vec<Problems> =
                    pkg::FILES.iter().map(|_| Problems::default()).collect();
                for name in READ_ORDER {
                    let p = &mut per_file[pkg::FILES.iter().position(|f| *f == name).expect("a file")];
                    let read = std::fs::read(dir.join(name)).map(Arc::new);
                    let _ = tx.send((name, read.as_ref().ok().cloned()));
                    let at = line_of(&mtext, &format!("\"{name}\""));
                    let Some(f) = listed.get(name) else {
                        p.add(pkg::MANIFEST, at, format!("{name} is not listed"));
                        continue;
                    };
                    match read {
                        Err(e) => p.add(name, None, format!("cannot be read: {e}")),
                        Ok(bytes) => {
                            let sha = hex::encode(Sha256::digest(&bytes[..]));
                            let n = bytes.iter().filter(|b| **b == b'\n').count() as u64;
                            if sha != s(&f["sha256"]) {
                                p.add(
                                pkg::MANIFEST,
                                at,
                                format!("{name}: its SHA-256 is not the manifest's (the file was changed)"),
                            );
                            }
                            if Some(n) != f["lines"].as_u64() {
                                p.add(
                                    pkg::MANIFEST,
                                    at,
                                    format!("{name}: {n} lines, the manifest says {}", f["lines"]),
                                );
                            }
                        }
                    }
                }
                let mut p = Problems(per_file.into_iter().flat_map(|p| p.0).collect());
                for name in listed.keys() {
                    if !pkg::FILES.contains(&name.as_str()) {
                        p.add(
                            pkg::MANIFEST,
                            line_of(&mtext, &format!("\"{name}\"")),
                            format!("lists {name}, which is no part of the format"),
                        );
                    }
                }
                p.0
            })
            .map_err(|e| format!("a thread to check the files: {e}"))?
    };
    let database = s(&manifest["database"]["id"]).to_string();

    // 2. names (schema.jsonl)
    let schema = lines(&mut files, pkg::SCHEMA, &mut p);
    let mut names = Names::default();
    let mut ledger_schema: Option<(usize, Value)> = None;
    for (n, l) in &schema {
        match s(&l["line"]) {
            "ledger_schema" => ledger_schema = Some((*n, l["record"].clone())),
            "table" | "column" => names.add(l),
            other => p.add(pkg::SCHEMA, Some(*n), format!("unknown line {other:?}")),
        }
    }

    // (tasks.jsonl is read here: a plain JWKS is trusted for the issuers its tasks name)
    let tasks = lines(&mut files, pkg::TASKS, &mut p);

    // 3. keys: the package's, or the auditor's own JWKS alone
    let keys_bytes = files.bytes(pkg::KEYS);
    let keys_text = text_or_empty(&keys_bytes);
    let package_keys: Value = pkg::parse_strict(keys_text).unwrap_or_else(|_| {
        p.add(pkg::KEYS, None, "not JSON");
        Value::Null
    });
    let mut revoked: HashMap<(String, String), String> = HashMap::new();
    let mut keyset = KeySet::new();
    let own: Option<Value> = jwks
        .map(|f| {
            std::fs::read_to_string(f)
                .map_err(|e| format!("{f}: {e}"))
                .and_then(|t| pkg::parse_strict(&t).map_err(|e| format!("{f}: not JSON: {e}")))
        })
        .transpose()?;
    let issuers_of = |v: &Value| -> Vec<(String, Value)> {
        v["issuers"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    // a plain JWKS ({"keys": [...]}) is trusted for every issuer the package names
    let package_issuers: Vec<String> = issuers_of(&package_keys).into_iter().map(|x| x.0).collect();
    for (iss, set) in issuers_of(&package_keys) {
        for k in set["keys"].as_array().into_iter().flatten() {
            if let Some(r) = k["revoked_at"].as_str() {
                revoked.insert((iss.clone(), s(&k["kid"]).to_string()), r.to_string());
            }
        }
    }
    match &own {
        Some(own) if own.get("keys").is_some() => {
            let mut issuers: HashSet<String> = package_issuers.iter().cloned().collect();
            for (_, t) in &tasks {
                issuers.insert(s(&t["issuer"]).to_string());
            }
            for iss in issuers {
                keyset
                    .insert_jwks(&iss, own)
                    .map_err(|e| format!("{}: {e}", jwks.unwrap_or("")))?;
            }
        }
        Some(own) => {
            for (iss, set) in issuers_of(own) {
                keyset
                    .insert_jwks(&iss, &set)
                    .map_err(|e| format!("{}: issuer {iss}: {e}", jwks.unwrap_or("")))?;
            }
        }
        None => {
            for (iss, set) in issuers_of(&package_keys) {
                if let Err(e) = keyset.insert_jwks(&iss, &set) {
                    p.add(
                        pkg::KEYS,
                        line_of(keys_text, &format!("\"{iss}\"")),
                        format!("issuer {iss}: {e}"),
                    );
                }
            }
        }
    }
    let key_line = |iss: &str, kid: &str| -> Option<usize> {
        if own.is_some() {
            return None;
        }
        let at = line_of(keys_text, &format!("\"kid\": \"{kid}\""));
        at.or_else(|| line_of(keys_text, &format!("\"{iss}\"")))
    };

    // 4. tasks: signatures, claims against the row, the hash their transactions were sealed with
    let mut task_hash: HashMap<(String, String), (Hash, usize)> = HashMap::new();
    let mut prev: Option<(String, String)> = None;
    for (n, t) in &tasks {
        let key = (s(&t["issuer"]).to_string(), s(&t["task_id"]).to_string());
        if prev.as_ref().is_some_and(|p| *p >= key) {
            p.add(
                pkg::TASKS,
                Some(*n),
                format!(
                    "task {} out of order (tasks are sorted by issuer, then task id) or repeated",
                    key.1
                ),
            );
        }
        prev = Some(key.clone());
        task_hash.insert(key.clone(), (ledger::record_hash("task", t), *n));
        check_task(t, *n, &keyset, own.is_some(), &revoked, &key_line, &mut p);
    }

    // 5. contexts: their hashes from their fields, their task's hash and their entry index
    let contexts = lines(&mut files, pkg::CONTEXTS, &mut p);
    struct Ctx {
        line: usize,
        block: i64,
        position: i64,
        hash: Hash,
        index: Vec<(i64, i64, [u8; 8])>,
        root: Option<Hash>,
        entries: i64,
        got: Vec<(i64, i64, Hash, usize)>,
        proven: bool,
    }
    let mut ctxs: HashMap<String, Ctx> = HashMap::new();
    let mut order: HashMap<String, usize> = HashMap::new();
    let mut used_tasks: HashSet<(String, String)> = HashSet::new();
    let mut bad_tasks: HashSet<(String, String)> = HashSet::new();
    let mut prev_place = (0i64, 0i64);
    for (i, (n, c)) in contexts.iter().enumerate() {
        let id = s(&c["id"]).to_string();
        if ctxs.contains_key(&id) {
            p.add(
                pkg::CONTEXTS,
                Some(*n),
                format!("transaction {id} is listed twice"),
            );
            continue;
        }
        if !exact_fields(
            c,
            &[
                "id",
                "block",
                "position",
                "fields",
                "task",
                "entries_root",
                "entries",
                "index",
            ],
        ) {
            p.add(pkg::CONTEXTS, Some(*n), format!("transaction {id}: its fields are not id, block, position, fields, task, entries_root, entries, index"));
        }
        let f = &c["fields"];
        let place = (
            c["block"].as_i64().unwrap_or(0),
            c["position"].as_i64().unwrap_or(0),
        );
        if place <= prev_place {
            p.add(
                pkg::CONTEXTS,
                Some(*n),
                format!(
                    "transaction {id} out of order (sorted by block, then position) or repeated"
                ),
            );
        }
        prev_place = place;
        if s(&f["id"]) != id {
            p.add(
                pkg::CONTEXTS,
                Some(*n),
                format!("transaction {id}: its fields name {}", f["id"]),
            );
        }
        let sealed_task = pkg::hex32(&c["task"]);
        match (f["task_id"].as_str(), f["issuer"].as_str()) {
            (Some(task), Some(iss)) => {
                let key = (iss.to_string(), task.to_string());
                used_tasks.insert(key.clone());
                match task_hash.get(&key) {
                    None => p.add(
                        pkg::CONTEXTS,
                        Some(*n),
                        format!(
                            "transaction {id}: its task {task} (issuer {iss}) is not in {}",
                            pkg::TASKS
                        ),
                    ),
                    Some((h, tl)) if Some(*h) != sealed_task && bad_tasks.insert(key.clone()) => {
                        p.add(pkg::TASKS, Some(*tl), format!("task {task}: its record (claims, token or a field) is not the one its transactions were sealed with"));
                    }
                    _ => {}
                }
            }
            _ if sealed_task.is_some() => p.add(
                pkg::CONTEXTS,
                Some(*n),
                format!("transaction {id}: sealed with a task, its fields name none"),
            ),
            _ => {}
        }
        let idx = &c["index"];
        let list = |k: &str| idx[k].as_array().map(Vec::as_slice).unwrap_or_default();
        let (configs, ids, prefixes) = (list("configs"), list("ids"), list("prefixes"));
        let entries = c["entries"].as_i64().unwrap_or(-1);
        let mut index = vec![];
        if configs.len() != ids.len() || ids.len() != prefixes.len() || ids.len() as i64 != entries
        {
            p.add(
                pkg::CONTEXTS,
                Some(*n),
                format!("transaction {id}: its entry index does not list {entries} entries"),
            );
        } else {
            for k in 0..ids.len() {
                index.push((
                    configs[k].as_i64().unwrap_or(-1),
                    ids[k].as_i64().unwrap_or(-1),
                    pkg::hex8(&prefixes[k]).unwrap_or_default(),
                ));
            }
        }
        let root = pkg::hex32(&c["entries_root"]);
        let index_hash = ledger::index_hash_of(
            &index.iter().map(|e| e.0 as i32).collect::<Vec<_>>(),
            &index.iter().map(|e| e.1).collect::<Vec<_>>(),
            &index.iter().map(|e| e.2).collect::<Vec<_>>(),
        );
        let record = ledger::context_record(
            f.clone(),
            sealed_task.as_ref(),
            &root.unwrap_or_default(),
            entries,
            &index_hash,
        );
        order.insert(id.clone(), i);
        ctxs.insert(
            id,
            Ctx {
                line: *n,
                block: place.0,
                position: place.1,
                hash: ledger::record_hash("context", &record),
                index,
                root,
                entries,
                got: vec![],
                proven: false,
            },
        );
    }
    for (n, t) in &tasks {
        let key = (s(&t["issuer"]).to_string(), s(&t["task_id"]).to_string());
        if !used_tasks.contains(&key) {
            p.add(
                pkg::TASKS,
                Some(*n),
                format!("task {}: no exported transaction ran under it", key.1),
            );
        }
    }

    // (ledger.jsonl is read here: the graph's package node counts its blocks)
    let ledger_lines = lines(&mut files, pkg::LEDGER, &mut p);

    // 6. entries (streamed: the package's bulk), and the graph produced again as they are read
    let mut progress = Progress::new("verify");
    progress.total = ctxs.values().map(|c| c.entries.max(0) as u64).sum();
    let mut n_entries = 0u64;
    let mut last_line = 0usize;
    let gbytes = files.bytes(pkg::GRAPH);
    let gtext = text_or_empty(&gbytes);
    let mut glines = gtext.lines();
    let (mut gline, mut gdiff) = (0usize, None::<usize>);
    {
        let mut sink = |want: &str| -> Result<(), String> {
            gline += 1;
            if glines.next() != Some(want) && gdiff.is_none() {
                gdiff = Some(gline);
            }
            Ok(())
        };
        let mut graph = pkg::Graph::new(&mut sink)?;
        for (_, t) in &tasks {
            graph.task(t)?;
        }
        for (_, c) in &contexts {
            graph.context(c)?;
        }
        let ebytes = files.bytes(pkg::ENTRIES);
        let text = utf8(pkg::ENTRIES, &ebytes, &mut p);
        let all: Vec<&str> = text.lines().collect();
        let mut prev: Option<(usize, i64, i64)> = None;
        // each line parsed, checked and hashed by a thread of its own, a batch at a time, while
        // this one produces the graph again and places the entries in their transactions
        std::thread::scope(|sc| -> Result<(), String> {
            // (two threads, taking the batches in turn; each batch goes back to be freed by
            // the thread that made it: glibc's malloc frees another thread's memory under a lock
            // the threads then fight over)
            const BATCH: usize = 1024;
            const THREADS: usize = 2;
            let mut from = vec![];
            let mut back = vec![];
            for w in 0..THREADS {
                let (send, batches) = std::sync::mpsc::sync_channel::<Vec<Parsed>>(4);
                let (done, used) = std::sync::mpsc::channel::<Vec<Parsed>>();
                from.push(batches);
                back.push(done);
                let all = &all;
                let names = &names;
                pkg::deep_thread()
                    .spawn_scoped(sc, move || {
                        for (c, chunk) in all.chunks(BATCH).enumerate().skip(w).step_by(THREADS) {
                            while let Ok(b) = used.try_recv() {
                                drop(b);
                            }
                            let batch = chunk
                                .iter()
                                .enumerate()
                                .map(|(i, l)| parse_entry(c * BATCH + i + 1, l, names))
                                .collect();
                            if send.send(batch).is_err() {
                                return;
                            }
                        }
                    })
                    .map_err(|e| format!("a thread to check entries: {e}"))?;
            }
            let batches = (0..all.len().div_ceil(BATCH))
                .map_while(|c| from[c % THREADS].recv().ok().map(|b| (c % THREADS, b)));
            for (w, batch) in batches {
                for e in &batch {
                    let n = e.line;
                    last_line = n;
                    let Some(at) = &e.at else {
                        p.add(pkg::ENTRIES, Some(n), e.problems.join("; "));
                        continue;
                    };
                    n_entries += 1;
                    progress.tick(n_entries);
                    let (config, id) = (at.config, at.id);
                    let what = || format!("entry {} #{id}", names.table(config));
                    for problem in &e.problems {
                        p.add(pkg::ENTRIES, Some(n), format!("{}: {problem}", what()));
                    }
                    graph.entry_elements(&at.graph)?;
                    let ctx_id = at.context.as_str();
                    let Some(&ord) = order.get(ctx_id) else {
                        p.add(
                            pkg::ENTRIES,
                            Some(n),
                            format!(
                                "{}: its transaction {ctx_id} is not in {}",
                                what(),
                                pkg::CONTEXTS
                            ),
                        );
                        continue;
                    };
                    let here = (ord, config, id);
                    if prev.is_some_and(|p| p >= here) {
                        p.add(pkg::ENTRIES, Some(n), format!("{}: out of order (by transaction as contexts.jsonl lists them, then table, then history id) or repeated", what()));
                    }
                    prev = Some(here);
                    ctxs.get_mut(ctx_id)
                        .expect("known")
                        .got
                        .push((config, id, e.hash, n));
                }
                let _ = back[w].send(batch);
            }
            Ok(())
        })?;
        let counts = serde_json::json!({"tasks": tasks.len(), "contexts": contexts.len(), "entries": n_entries,
                                        "blocks": ledger_lines.iter()
                                                      .filter(|l| s(&l.1["line"]) == "block").count()});
        graph.finish(counts)?;
    }
    if glines.next().is_some() && gdiff.is_none() {
        gdiff = Some(gline + 1);
    }
    if let Some(at) = gdiff {
        p.add(
            pkg::GRAPH,
            Some(at),
            "not the evidence graph of the package's tasks, transactions and entries",
        );
    }
    progress.done(n_entries);

    // each transaction's entries against the index it was sealed with
    let mut ctx_list: Vec<(&String, &mut Ctx)> = ctxs.iter_mut().collect();
    ctx_list.sort_by_key(|c| c.1.line);
    for (id, c) in ctx_list {
        let mut got = std::mem::take(&mut c.got);
        got.sort_by_key(|g| (g.0, g.1));
        let mut bad = false;
        let (mut a, mut b) = (0, 0);
        while a < c.index.len() || b < got.len() {
            let sealed = c.index.get(a);
            let have = got.get(b);
            match (sealed, have) {
                (Some(s_), Some(h)) if (s_.0, s_.1) == (h.0, h.1) => {
                    if s_.2 != ledger::prefix(&h.2) {
                        p.add(pkg::ENTRIES, Some(h.3), format!("entry {} #{}: its values are not the ones sealed (transaction {id}, block {})", names.table(h.0), h.1, c.block));
                        bad = true;
                    }
                    a += 1;
                    b += 1;
                }
                (Some(s_), h) if h.is_none_or(|h| (s_.0, s_.1) < (h.0, h.1)) => {
                    let at = h
                        .map(|h| h.3)
                        .or_else(|| got.last().map(|g| g.3 + 1))
                        .unwrap_or(last_line + 1);
                    p.add(
                        pkg::ENTRIES,
                        Some(at),
                        format!(
                            "entry {} #{} of transaction {id} (sealed in block {}) is missing",
                            names.table(s_.0),
                            s_.1,
                            c.block
                        ),
                    );
                    bad = true;
                    a += 1;
                }
                (_, Some(h)) => {
                    p.add(
                        pkg::ENTRIES,
                        Some(h.3),
                        format!(
                            "entry {} #{}: not one of the entries transaction {id} sealed",
                            names.table(h.0),
                            h.1
                        ),
                    );
                    bad = true;
                    b += 1;
                }
                _ => unreachable!(),
            }
        }
        if !bad {
            let hashes: Vec<Hash> = got.iter().map(|g| g.2).collect();
            if Some(ledger::merkle_root(&hashes)) != c.root {
                p.add(
                    pkg::CONTEXTS,
                    Some(c.line),
                    format!(
                        "transaction {id}: its entries combine to another root than the one sealed"
                    ),
                );
            }
        }
    }

    // 7. the ledger: blocks chained by hash, each exported transaction proven in its block
    let mut blocks: BTreeMap<i64, (usize, Value, Hash)> = BTreeMap::new();
    let mut prev_block: Option<(i64, Hash)> = None;
    let mut current: Option<(i64, Value)> = None;
    for (n, l) in &ledger_lines {
        match s(&l["line"]) {
            "block" => {
                let r = &l["record"];
                let num = r["block"].as_i64().unwrap_or(-1);
                if !exact_fields(l, &["line", "block", "record", "hash"]) {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("block {num}: its fields are not line, block, record, hash"),
                    );
                }
                let h = ledger::record_hash("block", r);
                if Some(h) != pkg::hex32(&l["hash"]) || l["block"].as_i64() != Some(num) {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("block {num}: its hash does not match its fields"),
                    );
                }
                if s(&r["format"]) != ledger::FORMAT {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("block {num}: unknown format {}", r["format"]),
                    );
                }
                if s(&r["database"]) != database {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!(
                            "block {num}: of database {}, the manifest names {database}",
                            r["database"]
                        ),
                    );
                }
                match prev_block {
                    None if num != 1 => p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("the chain starts at block {num}, not 1"),
                    ),
                    None if !r["prev"].is_null() => {
                        p.add(pkg::LEDGER, Some(*n), "block 1 names a previous block")
                    }
                    Some((pn, _)) if Some(num) != pn.checked_add(1) => p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("block {num} follows block {pn}"),
                    ),
                    Some((pn, ph)) if pkg::hex32(&r["prev"]) != Some(ph) => p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("block {num} does not name block {pn}'s hash: the chain is broken"),
                    ),
                    _ => {}
                }
                prev_block = Some((num, h));
                blocks.insert(num, (*n, r.clone(), h));
                current = Some((num, r.clone()));
            }
            "proof" => {
                let ctx = s(&l["context"]).to_string();
                let Some((num, r)) = current
                    .as_ref()
                    .filter(|c| l["block"].as_i64() == Some(c.0))
                else {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("proof of transaction {ctx}: not after its block's line"),
                    );
                    continue;
                };
                let Some(c) = ctxs.get_mut(&ctx) else {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!(
                            "proof of transaction {ctx}, which is not in {}",
                            pkg::CONTEXTS
                        ),
                    );
                    continue;
                };
                let raw = l["path"].as_array().cloned().unwrap_or_default();
                let path: Vec<Hash> = raw.iter().filter_map(pkg::hex32).collect();
                if path.len() != raw.len()
                    || !exact_fields(l, &["line", "context", "block", "position", "size", "path"])
                {
                    p.add(pkg::LEDGER, Some(*n), format!("proof of transaction {ctx}: not a proof line (fields line, context, block, position, size, path of hex hashes)"));
                }
                let size = l["size"].as_u64().unwrap_or(0) as usize;
                let ok = c.block == *num
                    && l["position"].as_i64() == Some(c.position)
                    && r["contexts"].as_u64() == Some(size as u64)
                    && c.position >= 1
                    && pkg::hex32(&r["contexts_root"]).is_some_and(|root| {
                        ledger::verify_inclusion(
                            &c.hash,
                            (c.position - 1) as usize,
                            size,
                            &path,
                            &root,
                        )
                    });
                if c.proven {
                    p.add(
                        pkg::LEDGER,
                        Some(*n),
                        format!("a second proof of transaction {ctx}"),
                    );
                } else if !ok {
                    p.add(pkg::CONTEXTS, Some(c.line), format!("transaction {ctx} is not the one block {num} sealed at position {} (its fields, task, entry index or its proof, {}:{n}, changed)", c.position, pkg::LEDGER));
                }
                c.proven = true;
            }
            other => p.add(pkg::LEDGER, Some(*n), format!("unknown line {other:?}")),
        }
    }
    let mut unproven: Vec<&Ctx> = ctxs.values().filter(|c| !c.proven).collect();
    unproven.sort_by_key(|c| c.line);
    for c in unproven {
        p.add(
            pkg::CONTEXTS,
            Some(c.line),
            format!(
                "no proof in {} ties this transaction to block {}",
                pkg::LEDGER,
                c.block
            ),
        );
    }
    let last = blocks.iter().next_back().map(|(k, v)| (*k, v.clone()));
    match (&ledger_schema, &last) {
        (Some((n, rec)), Some((num, (_, r, _)))) => {
            if pkg::hex32(&r["schema"]) != Some(ledger::record_hash("schema", rec)) {
                p.add(
                    pkg::SCHEMA,
                    Some(*n),
                    format!("the tracked columns' record is not the one block {num} sealed"),
                );
            }
            // the names given agree with what was sealed of each column (names are not sealed:
            // a rename changes nothing)
            let sealed: HashMap<i64, &Value> = rec["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["column_id"].as_i64().unwrap_or(-1), c))
                .collect();
            let configs: HashMap<i64, &Value> = rec["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["id"].as_i64().unwrap_or(-1), c))
                .collect();
            let mut seen: HashSet<i64> = HashSet::new();
            let mut seen_configs: HashSet<i64> = HashSet::new();
            for (ln, l) in &schema {
                if s(&l["line"]) == "table" {
                    let config = l["config"].as_i64().unwrap_or(-1);
                    let ok = configs.get(&config).is_some_and(|c| {
                        c["history_table"] == l["history_table"]
                            && c["tracked_since"] == l["tracked_since"]
                    });
                    if !ok || !seen_configs.insert(config) {
                        p.add(pkg::SCHEMA, Some(*ln), format!("table {}: not a tracked table the ledger recorded (config {config}), or listed twice", l["name"]));
                    }
                }
                if s(&l["line"]) == "column" {
                    let cid = l["column_id"].as_i64().unwrap_or(-1);
                    let same = sealed.get(&cid).is_some_and(|c| {
                        c["config"] == l["config"]
                            && c["type"] == l["type"]
                            && c["live_from"] == l["live_from"]
                            && c["live_until"] == l["live_until"]
                    });
                    if !sealed.contains_key(&cid) || !seen.insert(cid) {
                        p.add(pkg::SCHEMA, Some(*ln), format!("column {cid}: not a tracked column the ledger recorded, or listed twice"));
                    } else if !same {
                        p.add(
                            pkg::SCHEMA,
                            Some(*ln),
                            format!("column {cid}: its type or epochs are not the ones sealed"),
                        );
                    }
                }
            }
            let mut missing: Vec<&i64> = sealed.keys().filter(|c| !seen.contains(c)).collect();
            missing.sort();
            for cid in missing {
                p.add(
                    pkg::SCHEMA,
                    None,
                    format!("column {cid}, which the ledger recorded, has no column line"),
                );
            }
        }
        (None, _) => p.add(pkg::SCHEMA, None, "no ledger_schema line"),
        _ => {}
    }

    // 8. the digest: the package's own, or the one the auditor kept (then that one counts)
    let (dfile, d) = match digest {
        Some(f) => {
            let t = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
            let v: Value = pkg::parse_strict(&t).map_err(|e| format!("{f}: not JSON: {e}"))?;
            // a signed checkpoint is checked with `koherent digest verify`, which prints this
            (f.to_string(), v)
        }
        None => (pkg::MANIFEST.to_string(), manifest["digest"].clone()),
    };
    let dline = if digest.is_none() {
        line_of(&mtext, "\"digest\"")
    } else {
        None
    };
    let dblock = d["block"].as_i64().unwrap_or(-1);
    if s(&d["database"]) != database {
        p.add(
            &dfile,
            dline,
            format!(
                "the digest is of database {}, the package of {database}",
                s(&d["database"])
            ),
        );
    } else if let Some((_, _, h)) = blocks.get(&dblock) {
        if pkg::hex32(&d["hash"]) != Some(*h) {
            p.add(
                &dfile,
                dline,
                format!("block {dblock}'s hash is not the digest's: the chain was rewritten"),
            );
        }
    } else {
        p.add(
            &dfile,
            dline,
            format!(
                "the package's chain (blocks {}..{}) does not reach the digest's block {dblock}",
                blocks.keys().next().unwrap_or(&0),
                last.as_ref().map_or(0, |l| l.0)
            ),
        );
    }

    // what the digest given does not cover: transactions sealed in later blocks (their blocks
    // are only as good as the package that holds them)
    if digest.is_some() {
        let mut later: Vec<(&String, &Ctx)> = ctxs.iter().filter(|c| c.1.block > dblock).collect();
        later.sort_by_key(|c| c.1.line);
        for (id, c) in later {
            p.add(pkg::CONTEXTS, Some(c.line), format!("transaction {id} is sealed in block {}, after the digest's block {dblock}: the digest given does not cover it (bring a later digest)", c.block));
        }
    }

    // what was selected: every transaction is one the selection names
    let sel = &manifest["selection"];
    let tree: HashSet<String> = if let Some(root) = sel["task_id"].as_str() {
        let mut t: HashSet<String> = [root.to_string()].into();
        if sel["include_subtasks"] == Value::Bool(true) {
            loop {
                let before = t.len();
                for (_, x) in &tasks {
                    if [&x["parent_task_id"], &x["root_task_id"]]
                        .iter()
                        .any(|p| p.as_str().is_some_and(|p| t.contains(p)))
                    {
                        t.insert(s(&x["task_id"]).to_string());
                    }
                }
                if t.len() == before {
                    break;
                }
            }
        }
        t
    } else {
        HashSet::new()
    };
    for (n, c) in &contexts {
        let f = &c["fields"];
        let inside = match (
            sel["task_id"].as_str(),
            sel["since"].as_str(),
            sel["until"].as_str(),
        ) {
            (Some(_), _, _) => f["task_id"].as_str().is_some_and(|t| tree.contains(t)),
            (None, Some(a), Some(b)) => s(&f["created_at"]) >= a && s(&f["created_at"]) < b,
            _ => false,
        };
        if !inside {
            p.add(
                pkg::CONTEXTS,
                Some(*n),
                format!(
                    "transaction {}: not one the selection {sel} names",
                    s(&c["id"])
                ),
            );
        }
    }
    if contexts.is_empty() {
        p.add(
            pkg::CONTEXTS,
            None,
            "no transaction: a package holds at least one",
        );
    }
    let bounds = (
        blocks.keys().next().copied(),
        blocks.keys().next_back().copied(),
    );
    if manifest["blocks"]["first"].as_i64() != bounds.0
        || manifest["blocks"]["last"].as_i64() != bounds.1
    {
        p.add(
            pkg::MANIFEST,
            line_of(&mtext, "\"blocks\""),
            format!(
                "blocks {}..{}, the package holds {:?}..{:?}",
                manifest["blocks"]["first"], manifest["blocks"]["last"], bounds.0, bounds.1
            ),
        );
    }

    // 10. the counts the manifest gives
    let counts = &manifest["counts"];
    for (k, n) in [
        ("tasks", tasks.len() as u64),
        ("contexts", contexts.len() as u64),
        ("entries", n_entries),
        ("blocks", blocks.len() as u64),
    ] {
        if counts[k].as_u64() != Some(n) {
            p.add(
                pkg::MANIFEST,
                line_of(&mtext, &format!("\"{k}\"")),
                format!("counts {k} {}, the package holds {n}", counts[k]),
            );
        }
    }

    let summary = format!(
        "{} tasks, {} transactions, {n_entries} entries, blocks {}..{}; chain checked up to block {dblock} ({}); tokens checked against {}",
        tasks.len(), contexts.len(), blocks.keys().next().unwrap_or(&0), last.as_ref().map_or(0, |l| l.0),
        if digest.is_some() { "the digest given" } else { "the package's own digest: give --digest to check against one kept outside" },
        if own.is_some() { "the JWKS given" } else { "the package's keys: give --jwks to trust only your own" },
    );
    let mut problems = file_check
        .join()
        .map_err(|_| "the thread hashing the files failed".to_string())?;
    problems.extend(p.0);
    Ok(Verified { problems, summary })
}

#[allow(clippy::too_many_arguments)]
fn check_task(
    t: &Value,
    n: usize,
    keys: &KeySet,
    own_keys: bool,
    revoked: &HashMap<(String, String), String>,
    key_line: &dyn Fn(&str, &str) -> Option<usize>,
    p: &mut Problems,
) {
    let task = s(&t["task_id"]);
    let decoded = match decode(s(&t["token"])) {
        Ok(d) => d,
        Err(e) => {
            return p.add(
                pkg::TASKS,
                Some(n),
                format!("task {task}: its token does not decode: {e}"),
            )
        }
    };
    let (iss, kid) = (decoded.iss.clone(), decoded.kid.clone());
    let claims = match decoded.verify(keys, true) {
        Ok(c) => c,
        Err(e) => {
            let whose = if own_keys {
                "the JWKS given".to_string()
            } else {
                format!(
                    "{}{}",
                    pkg::KEYS,
                    key_line(&iss, &kid)
                        .map(|l| format!(":{l}"))
                        .unwrap_or_default()
                )
            };
            return p.add(pkg::TASKS, Some(n), format!("task {task}: its token's signature does not verify under {whose} (issuer {iss}, kid {kid}): {e}"));
        }
    };
    if let Some(r) = revoked.get(&(iss.clone(), kid.clone())) {
        if r.as_str() <= s(&t["created_at"]) {
            p.add(pkg::TASKS, Some(n), format!("task {task}: signed by key {kid}, revoked at {r}, before the task was recorded at {}", t["created_at"]));
        }
    }
    let want: [(&str, Value); 11] = [
        ("issuer", claims.iss.clone().into()),
        ("task_id", claims.tsk.clone().into()),
        (
            "parent_task_id",
            claims.ptk.clone().map_or(Value::Null, Value::from),
        ),
        ("root_task_id", claims.rtk.clone().into()),
        ("assigner_sub", claims.rcb.clone().into()),
        ("caller_sub", claims.sub.clone().into()),
        ("agent_sub", claims.act.sub.clone().into()),
        ("agent_client_id", claims.act.cid.clone().into()),
        ("token_id", claims.jti.clone().into()),
        ("args_hash", claims.ahs.clone().into()),
        ("args_hash_algorithm", claims.aha.clone().into()),
    ];
    for (field, v) in want {
        if t[field] != v {
            p.add(
                pkg::TASKS,
                Some(n),
                format!("task {task}: {field} is {}, its token says {v}", t[field]),
            );
        }
    }
    if !same_json(&t["claims"], &Value::Object(claims.payload.clone())) {
        p.add(
            pkg::TASKS,
            Some(n),
            format!("task {task}: its claims are not its token's"),
        );
    }
}

/// JSON equality with numbers compared by value (the database writes `1.5e9` as `1500000000`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| x == y)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
