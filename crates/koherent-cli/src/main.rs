//! `koherent`: keygen, mint, verify, jwks, signed ledger digests and audit packages over the
//! koherent-token crate.

mod audit;

use koherent_token::keys::{
    parse_private_jwk, parse_public_key, private_jwk, public_jwk, public_pem,
};
use koherent_token::{args_hash, decode, mint, Class, KeySet, Policy, ARGS_HASH_ALGORITHM};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
koherent: provenance tokens for the koherent PostgreSQL extension

usage:
  koherent keygen [--kid KID]
      new Ed25519 key: prints {private_jwk, public_jwk, public_pem} as JSON
  koherent jwks --key PRIVATE_OR_PUBLIC_JWK_FILE
      the public JWKS of a key ({\"keys\":[...]})
  koherent mint --key PRIVATE_JWK_FILE --tsk TASK [--iss rekuest] [--aud koherent]
                [--sub 1] [--act-sub 1] [--cid static] [--ptk P] [--rtk R] [--rcb 1]
                [--args JSON] [--ttl 3600] [--iat SECS] [--jti ID] [--alg Ed25519]
                [--claims JSON]
      a signed token; --claims sets or overrides any claim (a JSON object)
  koherent verify --jwks JWKS_FILE --iss ISSUER --token TOKEN [--audience koherent]
                  [--leeway 0] [--now SECS] [--accept-eddsa] [--args JSON]
      prints the verified claims, or the refusal reason (exit 1); the JWKS keys' alg and
      use bind them (a key with alg EdDSA verifies only EdDSA tokens, use enc nothing)
  koherent verify-batch [--now SECS] [--audience koherent] [--leeway 0] [--accept-eddsa]
      verifies many tokens: reads JSON lines from stdin, each
        {\"id\": ..., \"token\": \"...\", \"issuers\": {\"ISSUER\": JWKS, ...},
         \"now\"?, \"audience\"?, \"leeway\"?, \"accept_eddsa\"?, \"args\"?}
      (missing members take the flags' values), and writes one JSON line per input:
        {\"id\": ..., \"verdict\": \"accept\"|\"refuse\", \"reason\": ..., \"class\": ..., \"message\": ...}
      a JWKS that is refused refuses the token with reason key_refused
  koherent digest sign --key PRIVATE_JWK_FILE --name NAME [--digest FILE]
      a ledger digest (what koherent.digest() returns; stdin without --digest) as a signed
      checkpoint note (C2SP signed-note, Ed25519), signed by a key that never enters the database
  koherent digest verify --key PUBLIC_JWK_FILE --name NAME [--note FILE]
      checks a signed checkpoint (stdin without --note) and prints the digest it names, to pass
      to koherent.verify_history(); exit 1 with the reason when it does not verify
  koherent audit export --db URL (--task T [--include-subtasks] | --since T1 --until T2) --out DIR
      an audit package (docs/audit-package.md) of a task's changes (with its subtasks: the task
      tree) or of the transactions begun in [T1, T2), read in one REPEATABLE READ snapshot by
      koherent.audit_export() (the extension owner's, or granted to an auditor); every selected
      transaction must be sealed
  koherent audit verify DIR [--jwks FILE] [--digest FILE]
      checks a package offline: file hashes, every entry, transaction and block hash and proof,
      the chain up to the digest (the one given, else the package's), every token's signature
      (against the JWKS given alone, else the package's keys) and claims; exit 0 when all holds,
      else 1 and one line per problem: file:line: what
  koherent audit show DIR [--row TABLE:KEY]
      a readable summary: the task tree, changes per table, the transactions in time, and one
      row's changes (KEY: a JSON object of the key columns, or the value of a one-column key)
";

fn audit_cmd(args: &[String]) -> Result<String, String> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(USAGE.to_string());
    };
    match sub.as_str() {
        "export" => {
            let o = Opts::parse(rest, &["include-subtasks"])?;
            let sel = audit::export::Selection {
                task: o.get("task").map(String::from),
                include_subtasks: o.flag("include-subtasks"),
                since: o.get("since").map(String::from),
                until: o.get("until").map(String::from),
            };
            if sel.task.is_some() == (sel.since.is_some() || sel.until.is_some()) {
                return Err(format!("give --task, or --since and --until\n\n{USAGE}"));
            }
            audit::export::export(o.req("db")?, &sel, o.req("out")?)
        }
        "verify" => {
            let (dir, rest) = rest
                .split_first()
                .ok_or_else(|| format!("audit verify needs a package directory\n\n{USAGE}"))?;
            let o = Opts::parse(rest, &[])?;
            let v = audit::verify::verify(dir, o.get("jwks"), o.get("digest"))?;
            if v.problems.is_empty() {
                Ok(format!("{dir}: intact: {}", v.summary))
            } else {
                // the problems on stdout, one per line; the verdict on stderr, exit 1
                for p in &v.problems {
                    println!("{p}");
                }
                Err(format!(
                    "{dir}: {} problems ({})",
                    v.problems.len(),
                    v.summary
                ))
            }
        }
        "show" => {
            let (dir, rest) = rest
                .split_first()
                .ok_or_else(|| format!("audit show needs a package directory\n\n{USAGE}"))?;
            let o = Opts::parse(rest, &[])?;
            audit::show::show(dir, o.get("row"))
        }
        other => Err(format!("unknown audit command {other:?}\n\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // (on a thread whose stack takes values as deep as a package may hold: serde_json drops,
    // compares and writes values by recursion)
    let ran = audit::package::deep_thread()
        .spawn(move || run(&args))
        .expect("a thread for the command")
        .join();
    let Ok(ran) = ran else {
        // (the panic has been printed)
        return ExitCode::FAILURE;
    };
    match ran {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("koherent: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Opts {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], flags: &[&str]) -> Result<Opts, String> {
        let mut values = HashMap::new();
        let mut seen_flags = vec![];
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}\n\n{USAGE}"))?;
            if flags.contains(&name) {
                seen_flags.push(name.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                values.insert(name.to_string(), v.clone());
            }
        }
        Ok(Opts {
            values,
            flags: seen_flags,
        })
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(String::as_str)
    }
    fn req(&self, k: &str) -> Result<&str, String> {
        self.get(k)
            .ok_or_else(|| format!("--{k} is required\n\n{USAGE}"))
    }
    fn int(&self, k: &str) -> Result<Option<i64>, String> {
        self.get(k)
            .map(|v| v.parse().map_err(|_| format!("--{k} must be an integer")))
            .transpose()
    }
    fn flag(&self, k: &str) -> bool {
        self.flags.iter().any(|f| f == k)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read_json(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    koherent_token::json::parse_with(&text, koherent_token::json::Options::STRICT)
        .map_err(|e| format!("{path}: {e}"))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON serializes")
}

fn run(args: &[String]) -> Result<String, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(USAGE.to_string());
    };
    match cmd.as_str() {
        "keygen" => {
            let o = Opts::parse(rest, &[])?;
            let kid = o.get("kid").unwrap_or("koherent-key");
            let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
            Ok(pretty(&json!({
                "private_jwk": private_jwk(kid, &key),
                "public_jwk": public_jwk(kid, &key.verifying_key()),
                "public_pem": public_pem(&key.verifying_key()),
            })))
        }
        "digest" => digest_cmd(rest),
        "audit" => audit_cmd(rest),
        "jwks" => {
            let o = Opts::parse(rest, &[])?;
            let v = read_json(o.req("key")?)?;
            let v = v.get("private_jwk").cloned().unwrap_or(v);
            let (kid, key) = if v.get("d").is_some() {
                let (kid, k) = parse_private_jwk(&v).map_err(|e| e.to_string())?;
                (kid, k.verifying_key())
            } else {
                parse_public_key(&v.to_string()).map_err(|e| e.to_string())?
            };
            let kid = kid.ok_or("the key has no kid")?;
            Ok(pretty(&json!({"keys": [public_jwk(&kid, &key)]})))
        }
        "mint" => {
            let o = Opts::parse(rest, &[])?;
            let v = read_json(o.req("key")?)?;
            let v = v.get("private_jwk").cloned().unwrap_or(v);
            let (kid, key) = parse_private_jwk(&v).map_err(|e| e.to_string())?;
            let kid = o
                .get("kid")
                .map(str::to_string)
                .or(kid)
                .ok_or("the key has no kid; pass --kid")?;
            let tsk = o.req("tsk")?;
            let iat = o.int("iat")?.unwrap_or_else(now);
            let ttl = o.int("ttl")?.unwrap_or(3600);
            let task_args: Option<Value> = o
                .get("args")
                .map(|a| koherent_token::json::parse(a).map_err(|e| format!("--args: {e}")))
                .transpose()?;
            let mut claims = json!({
                "iss": o.get("iss").unwrap_or("rekuest"),
                "aud": [o.get("aud").unwrap_or("koherent")],
                "sub": o.get("sub").unwrap_or("1"),
                "act": {"sub": o.get("act-sub").unwrap_or("1"), "cid": o.get("cid").unwrap_or("static")},
                "iat": iat,
                "exp": iat + ttl,
                "jti": o.get("jti").map(str::to_string).unwrap_or_else(|| format!("{:x}{:x}", iat, std::process::id())),
                "tsk": tsk,
                "ptk": o.get("ptk"),
                "rtk": o.get("rtk").unwrap_or(tsk),
                "rcb": o.get("rcb").unwrap_or("1"),
                "ahs": args_hash(task_args.as_ref()),
                "aha": ARGS_HASH_ALGORITHM,
            });
            if let Some(extra) = o.get("claims") {
                let extra: Value =
                    koherent_token::json::parse_with(extra, koherent_token::json::Options::STRICT)
                        .map_err(|e| format!("--claims: {e}"))?;
                let Value::Object(extra) = extra else {
                    return Err("--claims must be a JSON object".into());
                };
                for (k, val) in extra {
                    claims[k] = val;
                }
            }
            Ok(mint(&key, &kid, o.get("alg").unwrap_or("Ed25519"), &claims))
        }
        "verify-batch" => {
            let o = Opts::parse(rest, &["accept-eddsa"])?;
            let defaults = Policy {
                audience: Some(o.get("audience").unwrap_or("koherent").to_string()),
                leeway: o.int("leeway")?.unwrap_or(0),
                now: o.int("now")?.unwrap_or_else(now),
                accept_eddsa: o.flag("accept-eddsa"),
            };
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut n = 0usize;
            for (i, line) in stdin.lock().lines().enumerate() {
                let line = line.map_err(|e| format!("stdin: {e}"))?;
                if line.trim().is_empty() {
                    continue;
                }
                let case: Value =
                    koherent_token::json::parse_with(&line, koherent_token::json::Options::STRICT)
                        .map_err(|e| format!("stdin line {}: {e}", i + 1))?;
                let verdict = batch_one(&case, &defaults)
                    .map_err(|e| format!("stdin line {}: {e}", i + 1))?;
                writeln!(out, "{verdict}").map_err(|e| e.to_string())?;
                n += 1;
            }
            out.flush().map_err(|e| e.to_string())?;
            drop(out);
            eprintln!("koherent: verified {n} tokens");
            Ok(String::new())
        }
        "verify" => {
            let o = Opts::parse(rest, &["accept-eddsa"])?;
            let jwks = read_json(o.req("jwks")?)?;
            let iss = o.req("iss")?;
            let mut keys = KeySet::new();
            keys.insert_jwks(iss, &jwks).map_err(|e| e.to_string())?;
            let policy = Policy {
                audience: Some(o.get("audience").unwrap_or("koherent").to_string()),
                leeway: o.int("leeway")?.unwrap_or(0),
                now: o.int("now")?.unwrap_or_else(now),
                accept_eddsa: o.flag("accept-eddsa"),
            };
            let refuse = |e: koherent_token::TokenError| format!("refused: {e} ({})", e.detail());
            let claims = decode(o.req("token")?)
                .and_then(|d| d.verify(&keys, policy.accept_eddsa))
                .map_err(refuse)?;
            claims.check(&policy).map_err(refuse)?;
            if let Some(a) = o.get("args") {
                let a: Value =
                    koherent_token::json::parse(a).map_err(|e| format!("--args: {e}"))?;
                claims.check_args(Some(&a)).map_err(refuse)?;
            }
            Ok(pretty(&Value::Object(claims.payload)))
        }
        "-h" | "--help" | "help" => Ok(USAGE.to_string()),
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

/// One `verify-batch` case: its verdict as a JSON object.
fn batch_one(case: &Value, defaults: &Policy) -> Result<Value, String> {
    let id = case.get("id").cloned().unwrap_or(Value::Null);
    let token = case
        .get("token")
        .and_then(Value::as_str)
        .ok_or("\"token\" must be a string")?;
    let int = |k: &str, d: i64| -> Result<i64, String> {
        match case.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v.as_i64().ok_or(format!("\"{k}\" must be an integer")),
        }
    };
    let policy = Policy {
        audience: match case.get("audience") {
            None => defaults.audience.clone(),
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("\"audience\" must be a string or null".into()),
        },
        leeway: int("leeway", defaults.leeway)?,
        now: int("now", defaults.now)?,
        accept_eddsa: match case.get("accept_eddsa") {
            None | Some(Value::Null) => defaults.accept_eddsa,
            Some(v) => v.as_bool().ok_or("\"accept_eddsa\" must be a boolean")?,
        },
    };
    let refuse = |reason: &str, class: &str, message: String| json!({"id": id, "verdict": "refuse", "reason": reason, "class": class, "message": message});
    let mut keys = KeySet::new();
    if let Some(issuers) = case.get("issuers") {
        let issuers = issuers
            .as_object()
            .ok_or("\"issuers\" must be an object of issuer -> JWKS")?;
        for (iss, jwks) in issuers {
            if let Err(e) = keys.insert_jwks(iss, jwks) {
                return Ok(refuse("key_refused", "key", format!("issuer {iss:?}: {e}")));
            }
        }
    }
    let result =
        koherent_token::verify(token, &keys, &policy).and_then(|claims| match case.get("args") {
            Some(a) => claims.check_args(Some(a)),
            None => Ok(()),
        });
    Ok(match result {
        Ok(()) => json!({"id": id, "verdict": "accept"}),
        Err(e) => refuse(
            e.reason(),
            match e.class() {
                Class::Malformed => "malformed",
                Class::Unauthorized => "unauthorized",
            },
            e.to_string(),
        ),
    })
}

fn read_input(path: Option<&str>) -> Result<String, String> {
    match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}")),
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| format!("stdin: {e}"))?;
            Ok(s)
        }
    }
}

fn digest_cmd(args: &[String]) -> Result<String, String> {
    use koherent_token::ledger;
    let Some((sub, rest)) = args.split_first() else {
        return Err(USAGE.to_string());
    };
    let o = Opts::parse(rest, &[])?;
    let key = read_json(o.req("key")?)?;
    let key = key.get("private_jwk").cloned().unwrap_or(key);
    let name = o.req("name")?;
    match sub.as_str() {
        "sign" => {
            let (_, k) = parse_private_jwk(&key).map_err(|e| e.to_string())?;
            let digest: Value = koherent_token::json::parse_with(
                &read_input(o.get("digest"))?,
                koherent_token::json::Options::STRICT,
            )
            .map_err(|e| format!("the digest: {e}"))?;
            let note = ledger::sign_note(&ledger::checkpoint_body(&digest)?, name, &k)?;
            Ok(note.trim_end_matches('\n').to_string())
        }
        "verify" => {
            let k = if key.get("d").is_some() {
                parse_private_jwk(&key)
                    .map_err(|e| e.to_string())?
                    .1
                    .verifying_key()
            } else {
                parse_public_key(&key.to_string())
                    .map_err(|e| e.to_string())?
                    .1
            };
            let mut note = read_input(o.get("note"))?;
            if !note.ends_with('\n') {
                note.push('\n');
            }
            let body = ledger::verify_note(&note, name, &k)?;
            Ok(pretty(&ledger::checkpoint_digest(&body)?))
        }
        _ => Err(USAGE.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZDI1NTE5Iiwia2lkIjoia29oZXJlbnQtdGVzdC1rZXkifQ.eyJpc3MiOiJyZWt1ZXN0IiwiYXVkIjpbImtvaGVyZW50Il0sInN1YiI6IjEiLCJhY3QiOnsic3ViIjoiMSIsImNpZCI6InN0YXRpYyJ9LCJpYXQiOjE3NTAwMDAwMDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYiLCJ0c2siOiJ0YXNrLTEiLCJwdGsiOm51bGwsInJ0ayI6InRhc2stMSIsInJjYiI6IjEiLCJhaHMiOiI1MDQxYmYxZjcxM2RmMjA0Nzg0MzUzZTgyZjZhNGE1MzU5MzFjYjY0ZjFmNGI0YTVhZWFmZmNiNzIwOTE4YjIyIiwiYWhhIjoic2hhMjU2LWNhbm9uaWNhbC12MSJ9.RAv1yYmX2V5GBDCwO-Yo-7YPcmGnDnh2QFNHDF_JjbrTnc-WGaSUlznI4wfmkZHtWQ7sgx6dgimFjNGk_iHMCg";

    fn jwk(extra: Value) -> Value {
        let mut v = json!({"kty": "OKP", "crv": "Ed25519", "kid": "koherent-test-key",
                           "x": "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    fn verdict(case: Value) -> Value {
        let defaults = Policy {
            audience: Some("koherent".into()),
            leeway: 0,
            now: 1_750_001_000,
            accept_eddsa: false,
        };
        batch_one(&case, &defaults).unwrap()
    }

    #[test]
    fn verify_batch_gives_one_verdict_per_case() {
        let issuers = |k: Value| json!({"rekuest": {"keys": [k]}});
        let v = verdict(json!({"id": 1, "token": SPEC_TOKEN, "issuers": issuers(jwk(json!({})))}));
        assert_eq!(v, json!({"id": 1, "verdict": "accept"}));
        let v = verdict(
            json!({"id": "late", "token": SPEC_TOKEN, "now": 1_750_003_600,
                               "issuers": issuers(jwk(json!({})))}),
        );
        assert_eq!(
            (v["verdict"].as_str(), v["reason"].as_str()),
            (Some("refuse"), Some("expired"))
        );
        assert_eq!(v["class"], "unauthorized");
        let v = verdict(json!({"id": 2, "token": SPEC_TOKEN,
                               "issuers": issuers(jwk(json!({"alg": "EdDSA"})))}));
        assert_eq!(v["reason"], "key_alg_mismatch");
        let v = verdict(json!({"id": 3, "token": SPEC_TOKEN,
                               "issuers": issuers(jwk(json!({"use": "enc"})))}));
        assert_eq!(v["reason"], "key_use_not_sig");
        let v = verdict(json!({"id": 4, "token": SPEC_TOKEN,
                               "issuers": issuers(jwk(json!({"x": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})))}));
        assert_eq!(
            (v["reason"].as_str(), v["class"].as_str()),
            (Some("key_refused"), Some("key"))
        );
        let v = verdict(json!({"id": 5, "token": "a.b", "audience": "*"}));
        assert_eq!(
            (v["reason"].as_str(), v["class"].as_str()),
            (Some("malformed_segments"), Some("malformed"))
        );
        let v = verdict(json!({"id": 6, "token": SPEC_TOKEN, "audience": null,
                               "issuers": issuers(jwk(json!({})))}));
        assert_eq!(v["reason"], "audience_not_configured");
        assert!(batch_one(
            &json!({"id": 7}),
            &Policy {
                audience: None,
                leeway: 0,
                now: 0,
                accept_eddsa: false
            }
        )
        .is_err());
    }
}
