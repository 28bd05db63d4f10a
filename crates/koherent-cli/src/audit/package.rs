//! The audit package format `koherent-audit-v1` (docs/audit-package.md): file names, the shape
//! of each kind of line, and what export and verify both derive from the lines (effective
//! changes, the evidence graph), so that the two cannot disagree.

use koherent_token::ledger::{self, Hash};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

pub const KIND: &str = "koherent-audit-package";
pub const FORMAT: &str = "koherent-audit-v1";
pub const GRAPH_FORMAT: &str = "koherent-audit-graph-v1";

pub const TASKS: &str = "tasks.jsonl";
pub const CONTEXTS: &str = "contexts.jsonl";
pub const ENTRIES: &str = "entries.jsonl";
pub const SCHEMA: &str = "schema.jsonl";
pub const KEYS: &str = "keys.json";
pub const LEDGER: &str = "ledger.jsonl";
pub const GRAPH: &str = "graph.json";
pub const MANIFEST: &str = "manifest.json";

/// Every file a package holds besides its manifest, in the manifest's order.
pub const FILES: [&str; 7] = [TASKS, CONTEXTS, ENTRIES, SCHEMA, KEYS, LEDGER, GRAPH];

/// The fields of an entry line that are its ledger record (the rest, `table` and `changes`,
/// are derived and checked).
pub const ENTRY_FIELDS: [&str; 7] = ["config", "id", "kind", "date", "context", "row", "old"];

pub fn hex32(v: &Value) -> Option<Hash> {
    let s = v.as_str()?;
    let b = hex::decode(s).ok()?;
    b.try_into().ok()
}

pub fn hex8(v: &Value) -> Option<[u8; 8]> {
    let s = v.as_str()?;
    let b = hex::decode(s).ok()?;
    b.try_into().ok()
}

/// An entry's effective changes: for an UPDATE, the column ids (as the images key them, in
/// numeric order) whose value differs between `old` and `row`; none for the other kinds (a
/// CREATE lists no changes, as the original koherent's effective changes do).
pub fn changes(record: &Map<String, Value>) -> Value {
    if record.get("kind").and_then(Value::as_str) != Some("UPDATE") {
        return json!([]);
    }
    let (Some(row), Some(old)) = (
        record.get("row").and_then(Value::as_object),
        record.get("old").and_then(Value::as_object),
    ) else {
        return json!([]);
    };
    let mut ids: Vec<&String> = row
        .iter()
        // (equal values have the same canonical text and the other way round: numbers compare
        // as written, as canonical writes them)
        .filter(|(k, v)| Some(*v) != old.get(k.as_str()).or(Some(&Value::Null)))
        .map(|(k, _)| k)
        .collect();
    ids.sort_by_key(|k| (k.len(), k.as_str().to_string()));
    Value::Array(ids.into_iter().map(|k| Value::from(k.as_str())).collect())
}

/// A tracked column: (column_id, name, live_from, live_until).
pub type Column = (i64, String, i64, Option<i64>);

/// What schema.jsonl names: tables by config, columns by id with their epochs.
#[derive(Default)]
pub struct Names {
    /// config -> (qualified table name, key column names)
    pub tables: BTreeMap<i64, (String, Vec<String>)>,
    /// config -> columns (column_id, name, live_from, live_until)
    pub columns: HashMap<i64, Vec<Column>>,
}

impl Names {
    pub fn add(&mut self, line: &Value) {
        match line.get("line").and_then(Value::as_str) {
            Some("table") => {
                let config = line["config"].as_i64().unwrap_or(-1);
                let name = line["name"].as_str().unwrap_or("").to_string();
                let key = line["key"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                self.tables.insert(config, (name, key));
            }
            Some("column") => {
                self.columns
                    .entry(line["config"].as_i64().unwrap_or(-1))
                    .or_default()
                    .push((
                        line["column_id"].as_i64().unwrap_or(-1),
                        line["name"].as_str().unwrap_or("").to_string(),
                        line["live_from"].as_i64().unwrap_or(0),
                        line["live_until"].as_i64(),
                    ));
            }
            _ => {}
        }
    }

    /// The column id that `name` had in table `config` at history id `id`.
    pub fn column_at(&self, config: i64, name: &str, id: i64) -> Option<i64> {
        self.columns
            .get(&config)?
            .iter()
            .find_map(|(cid, n, from, until)| {
                (n == name && *from <= id && until.is_none_or(|u| id < u)).then_some(*cid)
            })
    }

    /// The name of column `column_id` (its name now).
    pub fn column_name(&self, config: i64, column_id: &str) -> String {
        self.columns
            .get(&config)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.0.to_string() == column_id)
                    .map(|c| c.1.clone())
            })
            .unwrap_or_else(|| format!("#{column_id}"))
    }

    /// An entry's row key, by the table's key column names: from its row image, or from its
    /// old image where the row image has none (null).
    pub fn row_key(&self, record: &Map<String, Value>) -> Value {
        let config = record.get("config").and_then(Value::as_i64).unwrap_or(-1);
        let id = record.get("id").and_then(Value::as_i64).unwrap_or(0);
        let img = |k: &str, cid: &str| record.get(k).and_then(|i| i.get(cid)).cloned();
        let mut key = Map::new();
        if let Some((_, cols)) = self.tables.get(&config) {
            for name in cols {
                let v = self
                    .column_at(config, name, id)
                    .map(|cid| {
                        let cid = cid.to_string();
                        match img("row", &cid) {
                            Some(v) if !v.is_null() => v,
                            _ => img("old", &cid).unwrap_or(Value::Null),
                        }
                    })
                    .unwrap_or(Value::Null);
                key.insert(name.clone(), v);
            }
        }
        Value::Object(key)
    }

    /// A table's name as schema.jsonl gives it (`config N` when it gives none).
    pub fn table(&self, config: i64) -> std::borrow::Cow<'_, str> {
        match self.tables.get(&config) {
            Some(t) => t.0.as_str().into(),
            None => format!("config {config}").into(),
        }
    }
}

/// An entry's graph elements, as their lines (without the separating comma): its node, the
/// `wrote` edge from its transaction, its row's id and node, the `changed` edge to the row.
#[derive(Debug, PartialEq)]
pub struct EntryElements {
    node: String,
    wrote: Option<String>,
    row: String,
    row_node: String,
    changed: String,
}

impl EntryElements {
    /// (written as serde_json writes the objects, keys in order: a 4th of verify's time went
    /// into building and writing them as `Value`s)
    pub fn of(table: &Value, e: &Map<String, Value>, names: &Names) -> EntryElements {
        let json = |v: &Value| serde_json::to_string(v).expect("JSON");
        let config = e.get("config").and_then(Value::as_i64).unwrap_or(-1);
        let id = format!("entry:{}/{}", config, e.get("id").unwrap_or(&Value::Null));
        let key = names.row_key(e);
        EntryElements::from_texts(
            &json(e.get("date").unwrap_or(&Value::Null)),
            &id,
            &json(e.get("kind").unwrap_or(&Value::Null)),
            &json(table),
            e.get("context").and_then(Value::as_str),
            table.as_str().unwrap_or(""),
            &ledger::canonical(&key),
            &json(&key),
        )
    }

    /// The elements of an entry given as texts: its date, kind and table as JSON, its entry id,
    /// context id (a string's), table name, and row key as canonical JSON (the row's id) and
    /// as serde_json writes it (the row node's `key`).
    #[allow(clippy::too_many_arguments)]
    pub fn from_texts(
        date: &str,
        id: &str,
        kind: &str,
        table: &str,
        context: Option<&str>,
        table_name: &str,
        key_canonical: &str,
        key: &str,
    ) -> EntryElements {
        fn put(out: &mut Vec<u8>, v: &str) {
            serde_json::to_writer(&mut *out, v).expect("JSON");
        }
        let text = |b: Vec<u8>| String::from_utf8(b).expect("JSON is UTF-8");
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(b"{\"date\":");
        b.extend_from_slice(date.as_bytes());
        b.extend_from_slice(b",\"group\":\"node\",\"id\":");
        put(&mut b, id);
        b.extend_from_slice(b",\"kind\":");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b",\"table\":");
        b.extend_from_slice(table.as_bytes());
        b.extend_from_slice(b",\"type\":\"entry\"}");
        let node = text(b);
        let edge = |from: &str, to: &str, kind: &str| {
            let mut b = Vec::with_capacity(128);
            b.extend_from_slice(b"{\"from\":");
            put(&mut b, from);
            b.extend_from_slice(b",\"group\":\"edge\",\"to\":");
            put(&mut b, to);
            b.extend_from_slice(b",\"type\":");
            put(&mut b, kind);
            b.push(b'}');
            text(b)
        };
        let wrote = context.map(|ctx| edge(&format!("context:{ctx}"), id, "wrote"));
        let row = format!("row:{table_name}:{key_canonical}");
        let changed = edge(id, &row, "changed");
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(b"{\"group\":\"node\",\"id\":");
        put(&mut b, row.as_str());
        b.extend_from_slice(b",\"key\":");
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(b",\"table\":");
        b.extend_from_slice(table.as_bytes());
        b.extend_from_slice(b",\"type\":\"row\"}");
        let row_node = text(b);
        EntryElements {
            node,
            wrote,
            row,
            row_node,
            changed,
        }
    }
}

/// The evidence graph (graph.json), written one element per line as the package's lines are
/// read, in the order the package's files list them: a task node (and a `subtask` edge from its
/// parent), a transaction node (and a `ran` edge from its task), per entry an entry node, a
/// `wrote` edge from its transaction, its row's node (the first time the row appears) and a
/// `changed` edge to it; last the package node. Export writes it; verify produces it again and
/// compares line by line, so neither holds the graph in memory.
pub struct Graph<'a> {
    sink: &'a mut dyn FnMut(&str) -> Result<(), String>,
    rows: HashSet<String>,
    elements: u64,
    buf: String,
}

fn task_node(issuer: &str, task: &str) -> String {
    format!("task:{issuer}/{task}")
}

impl<'a> Graph<'a> {
    pub fn new(sink: &'a mut dyn FnMut(&str) -> Result<(), String>) -> Result<Graph<'a>, String> {
        let head = json!({
            "format": GRAPH_FORMAT,
            "layout": {"tree": {"root": "task", "edges": ["subtask", "ran", "wrote", "changed"]},
                       "timeline": {"nodes": ["context", "entry"], "time": ["created_at", "date"]}},
        });
        let head = serde_json::to_string(&head).expect("JSON");
        // the head object, left open for its elements
        sink(&format!("{},\"elements\":[", &head[..head.len() - 1]))?;
        Ok(Graph {
            sink,
            rows: HashSet::new(),
            elements: 0,
            buf: String::new(),
        })
    }

    fn element(&mut self, v: Value) -> Result<(), String> {
        self.line(&serde_json::to_string(&v).expect("JSON"))
    }

    pub fn task(&mut self, t: &Value) -> Result<(), String> {
        let issuer = t["issuer"].as_str().unwrap_or("");
        let id = t["task_id"].as_str().unwrap_or("");
        self.element(json!({"group": "node", "id": task_node(issuer, id), "type": "task", "issuer": issuer,
                            "task_id": id, "agent": t["agent_client_id"], "assigner": t["assigner_sub"],
                            "created_at": t["created_at"]}))?;
        if let Some(p) = t["parent_task_id"].as_str() {
            self.element(json!({"group": "edge", "from": task_node(issuer, p), "to": task_node(issuer, id), "type": "subtask"}))?;
        }
        Ok(())
    }

    pub fn context(&mut self, c: &Value) -> Result<(), String> {
        let f = &c["fields"];
        let id = format!("context:{}", c["id"].as_str().unwrap_or(""));
        self.element(
            json!({"group": "node", "id": id, "type": "context", "created_at": f["created_at"],
                            "db_role": f["db_role"], "block": c["block"], "entries": c["entries"]}),
        )?;
        if let (Some(issuer), Some(task)) = (f["issuer"].as_str(), f["task_id"].as_str()) {
            self.element(
                json!({"group": "edge", "from": task_node(issuer, task), "to": id, "type": "ran"}),
            )?;
        }
        Ok(())
    }

    /// An entry's elements, made beforehand (by another thread): the row's node goes out the
    /// first time its row appears.
    pub fn entry_elements(&mut self, el: &EntryElements) -> Result<(), String> {
        self.line(&el.node)?;
        if let Some(w) = &el.wrote {
            self.line(w)?;
        }
        if !self.rows.contains(&el.row) {
            self.rows.insert(el.row.clone());
            self.line(&el.row_node)?;
        }
        self.line(&el.changed)
    }

    fn line(&mut self, text: &str) -> Result<(), String> {
        self.elements += 1;
        self.buf.clear();
        self.buf.push_str(text);
        self.buf.push(',');
        (self.sink)(&self.buf)
    }

    /// The package node, last, and the end of the document.
    pub fn finish(self, manifest_counts: Value) -> Result<(), String> {
        let last = json!({"group": "node", "id": "package", "type": "package", "counts": manifest_counts,
                          "rows": self.rows.len(), "elements": self.elements + 1});
        (self.sink)(&serde_json::to_string(&last).expect("JSON"))?;
        (self.sink)("]}")
    }
}

/// How deep the values of a package may nest: far beyond what PostgreSQL's jsonb holds at
/// its largest `max_stack_depth` (a jsonb column's value is written into the package as it
/// is), within what the CLI's threads' stacks take (`STACK`: serde_json drops, compares and
/// writes values by recursion).
pub const MAX_DEPTH: usize = 100_000;

/// The stack of the CLI's threads: enough for values [`MAX_DEPTH`] deep (a level takes a few
/// hundred bytes of stack at most); reserved, not used, until something is that deep.
const STACK: usize = 512 << 20;

/// A thread with a [`STACK`]-sized stack, for anything that holds a package's values.
pub fn deep_thread() -> std::thread::Builder {
    std::thread::Builder::new().stack_size(STACK)
}

/// A JSON value of a package parsed strictly, by koherent's reader (`koherent_token::json`):
/// an object with a member named twice is refused (serde_json keeps the last, another reader
/// may keep the first: the record hashed would not be the one read), numbers keep their text,
/// and an object is an object, whatever its members are called (serde_json's own reader takes
/// `{"$serde_json::private::Number":"5"}` for the number 5).
pub fn parse_strict(text: &str) -> Result<Value, String> {
    koherent_token::json::parse_with(
        text,
        koherent_token::json::Options {
            max_depth: MAX_DEPTH,
            duplicates: koherent_token::json::Duplicates::Refuse,
        },
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{parse_strict, MAX_DEPTH};

    #[test]
    fn strict_parsing_keeps_numbers_and_refuses_ambiguity() {
        let v = parse_strict(r#"{"a":1.50,"b":[-0,12345678901234567890.5]}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"a":1.50,"b":[-0,12345678901234567890.5]}"#
        );
        assert!(parse_strict(r#"{"a":1,"a":1}"#)
            .unwrap_err()
            .contains("twice"));
        // an object named like serde_json's private number is an object (serde_json's reader,
        // with arbitrary_precision, takes it for the number; this one does not)
        for (spelt, inner) in [
            (r#"{"x":{"$serde_json::private::Number":"5"}}"#, "5"),
            (
                r#"{"x":{"\u0024serde_json::private::Number":"abc"}}"#,
                "abc",
            ),
            (r#"{"x":{"a":1,"$serde_json::private::Number":"5"}}"#, "5"),
        ] {
            let v = parse_strict(spelt).unwrap();
            assert_eq!(v["x"]["$serde_json::private::Number"], inner, "{spelt}");
        }
        // deep values are read (PostgreSQL's jsonb holds thousands of levels)
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(parse_strict(&deep).is_ok());
        assert!(
            parse_strict(&("[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1)))
                .unwrap_err()
                .contains("deeper than")
        );
    }
}
