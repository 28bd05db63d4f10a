//! Per-backend caches of issuer keys and of verified tokens.
//!
//! Keys are read from `koherent.issuer_key_store` once and kept until that table changes: every
//! change to it (through the key functions or directly) sends a relcache invalidation for the
//! table, which every backend receives at the changing transaction's commit and answers by
//! dropping both caches. A token already verified is not verified again (its signature cannot
//! change); its time and audience are checked on every use.

use koherent_token::{decode, Alg, KeySet, Policy, TokenError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::context::Task;
use crate::error::KoherentError;
use crate::guc;

const TOKEN_CACHE_MAX: usize = 1024;

/// sha256(token) -> the verified task and the alg it was signed with.
type TokenCache = HashMap<[u8; 32], (Rc<Task>, Alg)>;

thread_local! {
    static KEYS: RefCell<Option<Rc<KeySet>>> = const { RefCell::new(None) };
    static KEY_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static TOKENS: RefCell<TokenCache> = RefCell::new(HashMap::new());
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let key_table = KEY_TABLE.with(|k| k.get());
    if relid == pg_sys::InvalidOid || (key_table != pg_sys::InvalidOid && relid == key_table) {
        clear();
    }
}

fn clear() {
    KEYS.with(|k| *k.borrow_mut() = None);
    TOKENS.with(|t| t.borrow_mut().clear());
}

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
}

/// Tell every backend (at commit) that the keys changed.
pub fn invalidate_keys(table: pg_sys::Oid) {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(table) };
    clear();
}

fn load_keys() -> Result<Rc<KeySet>, KoherentError> {
    if let Some(k) = KEYS.with(|k| k.borrow().clone()) {
        return Ok(k);
    }
    let rows = Spi::connect(|c| -> Result<_, pgrx::spi::Error> {
        let oid = c
            .select(
                "SELECT 'koherent.issuer_key_store'::pg_catalog.regclass::pg_catalog.oid",
                None,
                &[],
            )?
            .first()
            .get_one::<pg_sys::Oid>()?;
        let mut keys = vec![];
        for row in c.select(
            "SELECT issuer, kid, public_key FROM koherent.issuer_key_store WHERE revoked_at IS NULL",
            None,
            &[],
        )? {
            keys.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<Vec<u8>>(3)?.unwrap_or_default(),
            ));
        }
        Ok((oid, keys))
    })
    .map_err(|e| KoherentError::Internal(e.to_string()))?;
    let (oid, rows) = rows;
    let mut set = KeySet::new();
    for (iss, kid, bytes) in rows {
        // Keys were checked when added; a row that no longer parses is skipped, not trusted.
        if let Ok(k) = koherent_token::keys::checked_key(&bytes) {
            set.insert(&iss, &kid, k);
        }
    }
    let set = Rc::new(set);
    if let Some(oid) = oid {
        KEY_TABLE.with(|k| k.set(oid));
    }
    KEYS.with(|k| *k.borrow_mut() = Some(set.clone()));
    Ok(set)
}

fn policy() -> Policy {
    Policy {
        audience: guc::audience(),
        leeway: guc::CLOCK_SKEW.get() as i64,
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        accept_eddsa: guc::ACCEPT_EDDSA.get(),
    }
}

/// Verify a token (cached), then check its time and audience against the current settings.
pub fn verify_token(token: &str) -> Result<Rc<Task>, KoherentError> {
    let policy = policy();
    if policy.audience.is_none() {
        return Err(TokenError::AudienceNotConfigured.into());
    }
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some((task, alg)) = TOKENS.with(|t| t.borrow().get(&digest).cloned()) {
        if alg == Alg::EdDsa && !policy.accept_eddsa {
            return Err(TokenError::Algorithm("EdDSA".into()).into());
        }
        task.claims.check(&policy)?;
        return Ok(task);
    }
    let decoded = decode(token)?;
    let alg = decoded.alg;
    let keys = load_keys()?;
    let claims = decoded.verify(&keys, policy.accept_eddsa)?;
    claims.check(&policy)?;
    let task = Rc::new(Task::new(claims, token.to_string()));
    TOKENS.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= TOKEN_CACHE_MAX {
            t.clear();
        }
        t.insert(digest, (task.clone(), alg));
    });
    Ok(task)
}

/// Cold verification cost in microseconds (decode + strict Ed25519 verify + claims), for the
/// benchmark: `iterations` runs with the caches bypassed.
pub fn cold_verify_micros(token: &str, iterations: i32) -> f64 {
    let policy = policy();
    let keys = match load_keys() {
        Ok(k) => k,
        Err(e) => e.raise(),
    };
    let n = iterations.max(1);
    let start = std::time::Instant::now();
    for _ in 0..n {
        if let Err(e) = koherent_token::verify(token, &keys, &policy) {
            KoherentError::from(e).raise();
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}
