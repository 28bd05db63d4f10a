//! `koherent audit show`: a package summarized for a person (nothing is verified here: run
//! `koherent audit verify` for that).

use super::package::{self as pkg, Names};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

fn read_lines(dir: &Path, name: &str) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| pkg::parse_strict(l).map_err(|e| format!("{name}:{}: {e}", i + 1)))
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `row`: `table:key`, the key a JSON object (`inventory:{"id": 1}`) or, for a table keyed by
/// one column, its value (`inventory:1`).
pub fn show(dir: &str, row: Option<&str>) -> Result<String, String> {
    let dir = Path::new(dir);
    let manifest: Value = pkg::parse_strict(
        &std::fs::read_to_string(dir.join(pkg::MANIFEST))
            .map_err(|e| format!("{}: {e}", pkg::MANIFEST))?,
    )
    .map_err(|e| format!("{}: {e}", pkg::MANIFEST))?;
    let tasks = read_lines(dir, pkg::TASKS)?;
    let contexts = read_lines(dir, pkg::CONTEXTS)?;
    let entries = read_lines(dir, pkg::ENTRIES)?;
    let mut names = Names::default();
    for l in read_lines(dir, pkg::SCHEMA)? {
        names.add(&l);
    }
    let mut out = String::new();
    let d = &manifest["digest"];
    let _ = writeln!(
        out,
        "audit package {} of database {} ({}), exported {}",
        manifest["format"].as_str().unwrap_or(""),
        s(&manifest["database"]["name"]),
        s(&manifest["database"]["id"]),
        s(&manifest["created_at"])
    );
    let _ = writeln!(out, "selection: {}", manifest["selection"]);
    let _ = writeln!(
        out,
        "digest: block {} {} (sealed {})",
        d["block"],
        s(&d["hash"]),
        s(&d["sealed_at"])
    );

    // the task tree
    let _ = writeln!(out, "\ntasks ({}):", tasks.len());
    let ids: std::collections::HashSet<(String, String)> = tasks
        .iter()
        .map(|t| (s(&t["issuer"]).to_string(), s(&t["task_id"]).to_string()))
        .collect();
    fn walk(
        out: &mut String,
        tasks: &[Value],
        issuer: &str,
        parent: Option<&str>,
        depth: usize,
        ids: &std::collections::HashSet<(String, String)>,
    ) {
        for t in tasks {
            let p = t["parent_task_id"].as_str();
            let is_root = parent.is_none()
                && (p.is_none()
                    || !ids.contains(&(s(&t["issuer"]).to_string(), p.unwrap_or("").to_string())));
            if s(&t["issuer"]) == issuer && ((parent.is_some() && p == parent) || is_root) {
                let _ = writeln!(
                    out,
                    "{}{} (issuer {}, agent {}, assigned by {}, at {})",
                    "  ".repeat(depth + 1),
                    s(&t["task_id"]),
                    issuer,
                    s(&t["agent_client_id"]),
                    s(&t["assigner_sub"]),
                    s(&t["created_at"])
                );
                walk(out, tasks, issuer, Some(s(&t["task_id"])), depth + 1, ids);
            }
        }
    }
    let mut issuers: Vec<&str> = tasks.iter().map(|t| s(&t["issuer"])).collect();
    issuers.dedup();
    for iss in issuers {
        walk(&mut out, &tasks, iss, None, 0, &ids);
    }

    // counts per table
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for e in &entries {
        *counts
            .entry(s(&e["table"]).to_string())
            .or_default()
            .entry(s(&e["kind"]).to_string())
            .or_default() += 1;
    }
    let _ = writeln!(out, "\nchanges per table:");
    for (t, k) in &counts {
        let parts: Vec<String> = k.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(out, "  {t}: {}", parts.join(", "));
    }

    // the timeline of transactions
    let mut timeline: Vec<&Value> = contexts.iter().collect();
    timeline.sort_by(|a, b| s(&a["fields"]["created_at"]).cmp(s(&b["fields"]["created_at"])));
    let _ = writeln!(out, "\ntransactions ({}), in time:", contexts.len());
    for c in timeline {
        let f = &c["fields"];
        let _ = writeln!(
            out,
            "  {}  {}  task {}  as {}  {} entries  (block {})",
            s(&f["created_at"]),
            s(&c["id"]),
            f["task_id"].as_str().unwrap_or("-"),
            s(&f["db_role"]),
            c["entries"],
            c["block"]
        );
    }

    if let Some(row) = row {
        let (table, key) = row.split_once(':').ok_or("--row is table:key")?;
        let key: Value = koherent_token::json::parse(key).unwrap_or_else(|_| Value::from(key));
        let _ = writeln!(out, "\nchanges of {row}:");
        let mut found = 0;
        for e in &entries {
            let config = e["config"].as_i64().unwrap_or(-1);
            let t = names.table(config);
            if t != table && t.rsplit_once('.').map(|x| x.1) != Some(table) {
                continue;
            }
            let k = e.as_object().map(|m| names.row_key(m)).unwrap_or_default();
            let matches = match &key {
                Value::Object(_) => k == key,
                v => k
                    .as_object()
                    .is_some_and(|m| m.len() == 1 && m.values().next().is_some_and(|x| x == v)),
            };
            if !matches {
                continue;
            }
            found += 1;
            let mut what = vec![];
            if s(&e["kind"]) == "UPDATE" {
                for c in e["changes"].as_array().into_iter().flatten() {
                    let c = s(c);
                    what.push(format!(
                        "{}: {} -> {}",
                        names.column_name(config, c),
                        e["old"][c],
                        e["row"][c]
                    ));
                }
            } else {
                let img = &e["row"];
                let mut cols: Vec<(&String, &Value)> =
                    img.as_object().into_iter().flatten().collect();
                cols.sort_by_key(|c| c.0.parse::<i64>().unwrap_or(0));
                for (c, v) in cols {
                    what.push(format!("{}={}", names.column_name(config, c), v));
                }
            }
            let ctx = contexts.iter().find(|c| c["id"] == e["context"]);
            let task = ctx
                .and_then(|c| c["fields"]["task_id"].as_str())
                .unwrap_or("-");
            let _ = writeln!(
                out,
                "  {} {:<8} task {:<12} {}",
                s(&e["date"]),
                s(&e["kind"]),
                task,
                what.join(", ")
            );
        }
        if found == 0 {
            let _ = writeln!(out, "  (no entry of that row in this package)");
        }
    }
    Ok(out.trim_end().to_string())
}
