//! `koherent`: keygen, mint, verify and jwks over the koherent-token crate.

use koherent_token::keys::{
    parse_jwks, parse_private_jwk, parse_public_key, private_jwk, public_jwk, public_pem,
};
use koherent_token::{args_hash, decode, mint, KeySet, Policy, ARGS_HASH_ALGORITHM};
use serde_json::{json, Value};
use std::collections::HashMap;
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
      prints the verified claims, or the refusal reason (exit 1)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            println!("{out}");
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
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
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
                .map(|a| serde_json::from_str(a).map_err(|e| format!("--args: {e}")))
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
                    serde_json::from_str(extra).map_err(|e| format!("--claims: {e}"))?;
                let Value::Object(extra) = extra else {
                    return Err("--claims must be a JSON object".into());
                };
                for (k, val) in extra {
                    claims[k] = val;
                }
            }
            Ok(mint(&key, &kid, o.get("alg").unwrap_or("Ed25519"), &claims))
        }
        "verify" => {
            let o = Opts::parse(rest, &["accept-eddsa"])?;
            let jwks = read_json(o.req("jwks")?)?;
            let iss = o.req("iss")?;
            let mut keys = KeySet::new();
            for (kid, key) in parse_jwks(&jwks).map_err(|e| e.to_string())? {
                keys.insert(iss, &kid, key);
            }
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
                let a: Value = serde_json::from_str(a).map_err(|e| format!("--args: {e}"))?;
                claims.check_args(Some(&a)).map_err(refuse)?;
            }
            Ok(pretty(&Value::Object(claims.payload)))
        }
        "-h" | "--help" | "help" => Ok(USAGE.to_string()),
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}
