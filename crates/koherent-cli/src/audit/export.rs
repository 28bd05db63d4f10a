//! `koherent audit export`: one REPEATABLE READ, read-only transaction over
//! `koherent.audit_export()`, written as a package directory (docs/audit-package.md).

use super::package::{self as pkg, Names};
use super::plain;
use super::progress::Progress;
use koherent_token::ledger::{self, Hash};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct Selection {
    pub task: Option<String>,
    pub include_subtasks: bool,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// A package file being written: its lines, their SHA-256 and count.
struct Out {
    name: &'static str,
    w: BufWriter<File>,
    sha: Sha256,
    lines: u64,
}

impl Out {
    fn create(dir: &Path, name: &'static str) -> Result<Out, String> {
        let path = dir.join(name);
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Out {
            name,
            w: BufWriter::with_capacity(1 << 20, f),
            sha: Sha256::new(),
            lines: 0,
        })
    }
    fn line(&mut self, v: &Value) -> Result<(), String> {
        let mut text = serde_json::to_string(v).map_err(|e| e.to_string())?;
        text.push('\n');
        self.write(text.as_bytes())?;
        self.lines += 1;
        Ok(())
    }
    fn raw_line(&mut self, text: &str) -> Result<(), String> {
        self.write(text.as_bytes())?;
        self.write(b"\n")?;
        self.lines += 1;
        Ok(())
    }
    fn whole(&mut self, v: &Value) -> Result<(), String> {
        let mut text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
        text.push('\n');
        self.lines = text.lines().count() as u64;
        self.write(text.as_bytes())
    }
    fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.sha.update(b);
        self.w
            .write_all(b)
            .map_err(|e| format!("{}: {e}", self.name))
    }
    fn finish(mut self) -> Result<(&'static str, Value), String> {
        self.w.flush().map_err(|e| format!("{}: {e}", self.name))?;
        Ok((
            self.name,
            json!({"sha256": hex::encode(self.sha.finalize()), "lines": self.lines}),
        ))
    }
}

pub fn export(url: &str, sel: &Selection, dir: &str) -> Result<String, String> {
    let dir = PathBuf::from(dir);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{}: not empty (a package is written into a new or empty directory)",
            dir.display()
        ));
    }
    let existed = dir.exists();
    let done = write_package(url, sel, &dir);
    if done.is_err() {
        // no half-written package is left behind (the directory was new or empty)
        for name in pkg::FILES.iter().chain([&pkg::MANIFEST]) {
            let _ = std::fs::remove_file(dir.join(name));
        }
        if !existed {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    done
}

fn write_package(url: &str, sel: &Selection, dir: &Path) -> Result<String, String> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| e.to_string())?;
    let params: [&(dyn postgres::types::ToSql + Sync); 4] =
        [&sel.task, &sel.include_subtasks, &sel.since, &sel.until];
    // (all rows but the entries, which come from the cursor named by the 'entries' row)
    let rows = tx
        .query(
            "SELECT kind, data::text FROM koherent.audit_export($1, $2, $3::text::timestamptz, $4::text::timestamptz)",
            &params,
        )
        .map_err(db_error)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let mut tasks = Out::create(dir, pkg::TASKS)?;
    let mut contexts = Out::create(dir, pkg::CONTEXTS)?;
    let mut entries = Out::create(dir, pkg::ENTRIES)?;
    let mut schema = Out::create(dir, pkg::SCHEMA)?;
    let mut ledger_out = Out::create(dir, pkg::LEDGER)?;
    let mut meta = Value::Null;
    let mut names = Names::default();
    let mut keys: Map<String, Value> = Map::new();
    let mut graph_out = Out::create(dir, pkg::GRAPH)?;
    let mut graph_sink = |l: &str| graph_out.raw_line(l);
    let mut graph = pkg::Graph::new(&mut graph_sink)?;
    // the selected contexts' hashes, by block, for the proofs
    let mut sealed: HashMap<i64, Vec<(String, usize)>> = HashMap::new();
    let (mut n_tasks, mut n_contexts, mut n_entries, mut n_blocks) = (0u64, 0u64, 0u64, 0u64);
    let (mut first_block, mut last_block) = (None::<i64>, None::<i64>);
    let mut progress = Progress::new("export");

    for row in &rows {
        let kind: &str = row.get(0);
        let text: &str = row.get(1);
        if kind == "entries" {
            // fetched in batches by a thread of its own: the database makes the next batch
            // while this one is written
            let fetch = format!("FETCH 2000 FROM \"{}\"", text.replace('"', "\"\""));
            // the rows are rendered as they are fetched: under the search_path seal renders
            // with (an output function names objects by it: a regclass[] value), which
            // audit_export's own cannot set for the transaction
            tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
                .map_err(db_error)?;
            let tx = &mut tx;
            std::thread::scope(|s| -> Result<(), String> {
                let (send, batches) = std::sync::mpsc::sync_channel::<Vec<String>>(4);
                let fetcher = s.spawn(move || -> Result<(), String> {
                    loop {
                        let rows = tx.query(fetch.as_str(), &[]).map_err(db_error)?;
                        if rows.is_empty() {
                            return Ok(());
                        }
                        let batch = rows
                            .iter()
                            .map(|r| {
                                r.try_get::<_, String>(1)
                                    .map_err(|e| format!("an entry row without its data: {e}"))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        if send.send(batch).is_err() {
                            return Ok(()); // (the writer stopped: its error is reported)
                        }
                    }
                });
                // (on an error the batches are dropped: the fetcher's next send fails and it stops)
                let write = || -> Result<(), String> {
                    for text in batches.into_iter().flatten() {
                        entry(&text, &mut graph, &names, &mut entries)?;
                        n_entries += 1;
                        progress.tick(n_entries);
                    }
                    Ok(())
                };
                write()?;
                fetcher
                    .join()
                    .map_err(|_| "the fetching thread failed".to_string())?
            })?;
            continue;
        }
        let data: Value = pkg::parse_strict(text).map_err(|e| format!("{kind}: {e}"))?;
        match kind {
            "meta" => {
                let unsealed = data["unsealed"].as_i64().unwrap_or(0);
                if unsealed > 0 {
                    return Err(format!(
                        "{unsealed} of the {} selected transactions are not sealed yet: seal them first \
                         (SELECT koherent.seal(), as the extension owner, or wait for the sealer: koherent.seal_interval)",
                        data["contexts"]
                    ));
                }
                if data["contexts"].as_i64() == Some(0) {
                    return Err("nothing selected: no transaction wrote tracked rows under that task or in that window".into());
                }
                meta = data;
            }
            "schema" => {
                let line = if data.get("record").is_some() {
                    json!({"line": "ledger_schema", "record": data["record"]})
                } else if data.get("column_id").is_some() {
                    let mut m = data.as_object().cloned().unwrap_or_default();
                    m.insert("line".into(), "column".into());
                    Value::Object(m)
                } else {
                    let mut m = data.as_object().cloned().unwrap_or_default();
                    m.insert("line".into(), "table".into());
                    Value::Object(m)
                };
                names.add(&line);
                schema.line(&line)?;
            }
            "key" => {
                let issuer = data["issuer"].as_str().unwrap_or("").to_string();
                let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": data["x"], "kid": data["kid"],
                                     "use": "sig", "added_at": data["added_at"], "revoked_at": data["revoked_at"]});
                if let Some(alg) = data["alg"].as_str() {
                    jwk["alg"] = alg.into();
                }
                keys.entry(issuer).or_insert_with(|| json!({"keys": []}))["keys"]
                    .as_array_mut()
                    .expect("keys is an array")
                    .push(jwk);
            }
            "task" => {
                tasks.line(&data["record"])?;
                graph.task(&data["record"])?;
                n_tasks += 1;
            }
            "context" => {
                let mut c = data;
                // the entry index as the block keeps it (sent as text: configs and ids
                // comma-separated, the prefixes as one hex text)
                let numbers = |v: &Value| -> Result<Vec<Value>, String> {
                    let t = v.as_str().unwrap_or("");
                    t.split(',')
                        .filter(|x| !x.is_empty())
                        .map(|x| {
                            x.parse::<serde_json::Number>()
                                .map(Value::Number)
                                .map_err(|e| e.to_string())
                        })
                        .collect()
                };
                let prefixes = c["prefixes"].as_str().unwrap_or("");
                if !prefixes.len().is_multiple_of(16) || !prefixes.is_ascii() {
                    return Err("a context's hash prefixes that are not 8-byte hex".into());
                }
                let index = json!({"configs": numbers(&c["configs"])?, "ids": numbers(&c["ids"])?,
                                   "prefixes": (0..prefixes.len() / 16).map(|i| &prefixes[i * 16..i * 16 + 16]).collect::<Vec<_>>()});
                let obj = c.as_object_mut().expect("a context is an object");
                for k in ["configs", "ids", "prefixes"] {
                    obj.remove(k);
                }
                obj.insert("index".into(), index);
                progress.total += c["entries"].as_u64().unwrap_or(0);
                let block = c["block"].as_i64().unwrap_or(0);
                sealed.entry(block).or_default().push((
                    c["id"].as_str().unwrap_or("").to_string(),
                    c["position"].as_u64().unwrap_or(0) as usize,
                ));
                contexts.line(&c)?;
                graph.context(&c)?;
                n_contexts += 1;
            }
            "block" => {
                let record = &data["record"];
                let block = record["block"].as_i64().unwrap_or(0);
                first_block.get_or_insert(block);
                last_block = Some(block);
                ledger_out.line(&json!({"line": "block", "block": block, "record": record, "hash": data["hash"]}))?;
                n_blocks += 1;
                if let (Some(leaves), Some(mine)) = (data["leaves"].as_array(), sealed.get(&block))
                {
                    let leaves: Vec<Hash> = leaves.iter().filter_map(pkg::hex32).collect();
                    let mut mine = mine.clone();
                    mine.sort_by_key(|m| m.1);
                    for (ctx, pos) in mine {
                        // positions count from 1, Merkle leaves from 0
                        let path = ledger::inclusion_proof(&leaves, pos - 1);
                        ledger_out.line(&json!({"line": "proof", "context": ctx, "block": block,
                                                "position": pos, "size": leaves.len(),
                                                "path": path.iter().map(hex::encode).collect::<Vec<_>>()}))?;
                    }
                }
            }
            other => {
                return Err(format!(
                    "unexpected row kind {other:?} from koherent.audit_export"
                ))
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    progress.done(n_entries);

    let counts =
        json!({"tasks": n_tasks, "contexts": n_contexts, "entries": n_entries, "blocks": n_blocks});
    graph.finish(counts.clone())?;
    let mut keys_out = Out::create(dir, pkg::KEYS)?;
    keys_out.whole(&json!({"issuers": keys}))?;

    let mut files = Map::new();
    for out in [
        tasks, contexts, entries, schema, keys_out, ledger_out, graph_out,
    ] {
        let (name, v) = out.finish()?;
        files.insert(name.into(), v);
    }
    let manifest = json!({
        "kind": pkg::KIND,
        "format": pkg::FORMAT,
        "ledger_format": ledger::FORMAT,
        "database": {"id": meta["database"], "name": meta["database_name"]},
        "extension_version": meta["extension_version"],
        "created_at": meta["exported_at"],
        "selection": meta["selection"],
        "counts": counts,
        "blocks": {"first": first_block, "last": last_block},
        "digest": meta["digest"],
        "files": files,
    });
    let path = dir.join(pkg::MANIFEST);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&manifest).expect("JSON") + "\n",
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!(
        "{}: {n_tasks} tasks, {n_contexts} transactions, {n_entries} entries, blocks {}..{} (digest block {}, {})",
        dir.display(),
        first_block.unwrap_or(0),
        last_block.unwrap_or(0),
        meta["digest"]["block"],
        meta["digest"]["hash"].as_str().unwrap_or("")
    ))
}

/// One entry row (`{"table", "record"}`): its line in entries.jsonl and its graph elements.
fn entry(
    text: &str,
    graph: &mut pkg::Graph,
    names: &Names,
    entries: &mut Out,
) -> Result<(), String> {
    let (line, elements) = match plain::export_entry(text, names) {
        Some(done) => done,
        None => general_entry(text, names)?,
    };
    graph.entry_elements(&elements)?;
    entries.raw_line(&line)
}

/// An entry row's line and graph elements, by way of `Value`s (any entry: `plain` takes the
/// plain ones faster, to the same bytes).
pub(super) fn general_entry(
    text: &str,
    names: &Names,
) -> Result<(String, pkg::EntryElements), String> {
    let data: Value = pkg::parse_strict(text).map_err(|e| format!("entry: {e}"))?;
    let Value::Object(mut data) = data else {
        return Err("an entry that is not an object".into());
    };
    let table = data.remove("table").unwrap_or(Value::Null);
    let Some(Value::Object(record)) = data.remove("record") else {
        return Err("an entry without its record".into());
    };
    let elements = pkg::EntryElements::of(&table, &record, names);
    let changes = pkg::changes(&record);
    let mut line = record;
    line.insert("table".into(), table);
    line.insert("changes".into(), changes);
    let line = serde_json::to_string(&Value::Object(line)).map_err(|e| e.to_string())?;
    Ok((line, elements))
}

fn db_error(e: postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} (SQLSTATE {})", d.message(), d.code().code());
            if let Some(h) = d.hint() {
                s.push_str(&format!("\nhint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}
