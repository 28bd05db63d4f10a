//! Per-backend caches of issuer keys and of verified tokens.
//!
//! Keys are read from `koherent.issuer_key_store` once and kept until that table changes: every
//! change to it (through the key functions or directly) sends a relcache invalidation for the
//! table, which every backend receives at the changing transaction's commit and answers by
//! dropping both caches. A token already verified is not verified again (its signature cannot
//! change); its time and audience are checked on every use.

//! Submodules: [`keys`] (trusted keys), [`bindings`] (agent-to-role bindings), [`task`] (what
//! verification produces).

mod bindings;
mod keys;
mod task;

pub use bindings::check_presenter;
pub use keys::invalidate_keys;
pub use task::Task;

use koherent_token::{decode, Alg, KeySet, Policy, TokenError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::KoherentError;
use crate::guc;
use keys::load_keys;

const TOKEN_CACHE_MAX: usize = 1024;

/// sha256(token) -> the verified task and the alg it was signed with.
type TokenCache = HashMap<[u8; 32], (Rc<Task>, Alg)>;

thread_local! {
    static TOKENS: RefCell<TokenCache> = RefCell::new(HashMap::new());
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let key_table = keys::KEY_TABLE.with(|k| k.get());
    let binding_table = bindings::BINDING_TABLE.with(|k| k.get());
    if relid == pg_sys::InvalidOid
        || (key_table != pg_sys::InvalidOid && relid == key_table)
        || (binding_table != pg_sys::InvalidOid && relid == binding_table)
    {
        clear();
    }
}

fn clear() {
    keys::forget();
    bindings::forget();
    TOKENS.with(|t| t.borrow_mut().clear());
}

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
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
    // A revocation committed since this backend last looked is honoured now, not at its next
    // lock acquisition.
    unsafe { pg_sys::AcceptInvalidationMessages() };
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
    let kid = decoded.kid.clone();
    let keys = load_keys()?;
    let claims = decoded.verify(&keys, policy.accept_eddsa)?;
    claims.check(&policy)?;
    let key = key_bytes(&keys, &claims.iss, &kid).unwrap_or_default();
    let task = Rc::new(Task::new(claims, token.to_string(), kid, key));
    TOKENS.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= TOKEN_CACHE_MAX {
            t.clear();
        }
        t.insert(digest, (task.clone(), alg));
    });
    Ok(task)
}

fn key_bytes(keys: &KeySet, iss: &str, kid: &str) -> Option<[u8; 32]> {
    keys.get(iss, kid).map(|k| k.to_bytes())
}

/// Check again, at a write, a task verified earlier in the transaction: its token must still
/// be within its time (exp, nbf, iat, with `koherent.clock_skew`), for the configured audience,
/// and signed by a key still trusted. The transaction is not the unit of verification: each
/// tracked write statement is. Cheap: a clock read, the settings, and a hash lookup in the key
/// cache (refilled only after the key table changed).
pub fn recheck(task: &Task) -> Result<(), KoherentError> {
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let policy = policy();
    if policy.audience.is_none() {
        return Err(TokenError::AudienceNotConfigured.into());
    }
    task.claims.check(&policy)?;
    check_presenter(task)?;
    let keys = load_keys()?;
    if key_bytes(&keys, &task.claims.iss, &task.kid) != Some(task.key) {
        return Err(KoherentError::KeyRevoked {
            issuer: task.claims.iss.clone(),
            kid: task.kid.clone(),
        });
    }
    Ok(())
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
