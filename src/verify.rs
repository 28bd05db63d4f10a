//! Per-backend caches of issuer keys and of verified tokens.
//!
//! Keys are read from `koherent.issuer_key_store` once and kept until that table changes: every
//! change to it (through the key functions or directly) sends a relcache invalidation for the
//! table, which every backend receives at the changing transaction's commit and answers by
//! dropping both caches. A token already verified is not verified again (its signature cannot
//! change); its time and audience are checked on every use.

use koherent_token::{decode, Alg, KeyBinding, KeySet, Policy, TokenError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
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
type Bindings = HashMap<(String, String), Vec<String>>;

thread_local! {
    static KEYS: RefCell<Option<Rc<KeySet>>> = const { RefCell::new(None) };
    static KEY_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// (issuer, agent client id) -> the roles that may present its tokens (see [`check_presenter`]).
    static BINDINGS: RefCell<Option<Rc<Bindings>>> = const { RefCell::new(None) };
    static BINDING_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static TOKENS: RefCell<TokenCache> = RefCell::new(HashMap::new());
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let key_table = KEY_TABLE.with(|k| k.get());
    let binding_table = BINDING_TABLE.with(|k| k.get());
    if relid == pg_sys::InvalidOid
        || (key_table != pg_sys::InvalidOid && relid == key_table)
        || (binding_table != pg_sys::InvalidOid && relid == binding_table)
    {
        clear();
    }
}

fn clear() {
    KEYS.with(|k| *k.borrow_mut() = None);
    BINDINGS.with(|b| *b.borrow_mut() = None);
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

/// The trusted keys, read from the latest committed state of the key table.
///
/// Not from the statement's snapshot: a statement (or a REPEATABLE READ transaction) whose
/// snapshot predates a revocation would otherwise cache the revoked key after the invalidation
/// was processed, and trust it until the next change of the key table. Invalidations are
/// accepted first, and a committing transaction's invalidation is sent only after it became
/// visible: so every revocation whose invalidation this backend processed is in what it reads.
fn load_keys() -> Result<Rc<KeySet>, KoherentError> {
    if let Some(k) = KEYS.with(|k| k.borrow().clone()) {
        return Ok(k);
    }
    let rows = unsafe { read_key_table() }?;
    let mut set = KeySet::new();
    for (iss, kid, bytes, alg) in rows {
        // Keys were checked when added; a row that no longer parses is skipped, not trusted.
        if let Ok(k) = koherent_token::keys::checked_key(&bytes) {
            let alg = match alg.as_deref() {
                Some("Ed25519") => Some(Alg::Ed25519),
                Some("EdDSA") => Some(Alg::EdDsa),
                Some(_) => continue,
                None => None,
            };
            set.insert_bound(&iss, &kid, k, KeyBinding { alg, sig: true });
        }
    }
    let set = Rc::new(set);
    KEYS.with(|k| *k.borrow_mut() = Some(set.clone()));
    Ok(set)
}

type KeyRow = (String, String, Vec<u8>, Option<String>);

/// (issuer, kid, public key, the JWK's alg) of every key not revoked, read with a fresh
/// snapshot. (A 0.3.0 schema under this library, before ALTER EXTENSION UPDATE, has no alg.)
unsafe fn read_key_table() -> Result<Vec<KeyRow>, KoherentError> {
    use pgrx::FromDatum;
    let rel = koherent_relid(c"issuer_key_store");
    if rel == pg_sys::InvalidOid {
        return Err(KoherentError::Internal(
            "koherent.issuer_key_store is missing".into(),
        ));
    }
    let has_alg = pg_sys::get_attnum(rel, c"alg".as_ptr()) != pg_sys::InvalidAttrNumber as i16;
    let columns: &[&str] = if has_alg {
        &["issuer", "kid", "public_key", "revoked_at", "alg"]
    } else {
        &["issuer", "kid", "public_key", "revoked_at"]
    };
    let mut out = vec![];
    scan_latest(rel, columns, &KEY_TABLE, |v, n| {
        if n[3] {
            let text = |i: usize| String::from_datum(v[i], n[i]).unwrap_or_default();
            let bytes = Vec::<u8>::from_datum(v[2], n[2]).unwrap_or_default();
            let alg = if has_alg {
                String::from_datum(v[4], n[4])
            } else {
                None
            };
            out.push((text(0), text(1), bytes, alg));
        }
    })?;
    Ok(out)
}

/// The oid of relation `koherent.<name>`, or InvalidOid when it does not exist (an older schema
/// under this library, or no extension).
unsafe fn koherent_relid(name: &std::ffi::CStr) -> pg_sys::Oid {
    let nsp = pg_sys::get_namespace_oid(c"koherent".as_ptr(), true);
    if nsp == pg_sys::InvalidOid {
        return pg_sys::InvalidOid;
    }
    pg_sys::get_relname_relid(name.as_ptr(), nsp)
}

/// Read every row of table `oid` with a snapshot taken after accepting pending invalidations
/// (see [`load_keys`]), handing `f` the values of `columns`, in that order.
unsafe fn scan_latest(
    oid: pg_sys::Oid,
    columns: &[&str],
    remember: &'static std::thread::LocalKey<Cell<pg_sys::Oid>>,
    mut f: impl FnMut(&[pg_sys::Datum], &[bool]),
) -> Result<(), KoherentError> {
    remember.with(|k| k.set(oid));
    let rel = pg_sys::table_open(oid, pg_sys::AccessShareLock as _);
    // The lock accepted pending invalidations; now take the snapshot.
    pg_sys::AcceptInvalidationMessages();
    let desc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
    let mut idx = Vec::with_capacity(columns.len());
    for name in columns {
        let i = (0..desc.len()).find(|&i| {
            let a = desc.get(i).expect("in range");
            !a.attisdropped && a.name() == *name
        });
        match i {
            Some(i) => idx.push(i),
            None => {
                pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
                return Err(KoherentError::Internal(format!(
                    "koherent table {} lacks {name}",
                    oid.to_u32()
                )));
            }
        }
    }
    let natts = desc.len();
    drop(desc);
    let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
    let scan = pg_sys::systable_beginscan(
        rel,
        pg_sys::InvalidOid,
        false,
        snapshot,
        0,
        std::ptr::null_mut(),
    );
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    let mut v = vec![pg_sys::Datum::from(0usize); idx.len()];
    let mut n = vec![true; idx.len()];
    loop {
        let tuple = pg_sys::systable_getnext(scan);
        if tuple.is_null() {
            break;
        }
        pg_sys::heap_deform_tuple(
            tuple,
            (*rel).rd_att,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        for (k, &i) in idx.iter().enumerate() {
            v[k] = values[i];
            n[k] = nulls[i];
        }
        f(&v, &n);
    }
    pg_sys::systable_endscan(scan);
    pg_sys::UnregisterSnapshot(snapshot);
    pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    Ok(())
}

fn load_bindings() -> Result<Rc<Bindings>, KoherentError> {
    use pgrx::FromDatum;
    if let Some(b) = BINDINGS.with(|b| b.borrow().clone()) {
        return Ok(b);
    }
    let mut map = Bindings::new();
    unsafe {
        let rel = koherent_relid(c"agent_binding_store");
        if rel == pg_sys::InvalidOid {
            // an older schema under this library (before ALTER EXTENSION UPDATE): no bindings,
            // and nothing cached, so the table is found once the update creates it
            return Ok(Rc::new(map));
        }
        scan_latest(
            rel,
            &["issuer", "client_id", "role_name"],
            &BINDING_TABLE,
            |v, n| {
                let text = |i: usize| String::from_datum(v[i], n[i]).unwrap_or_default();
                map.entry((text(0), text(1))).or_default().push(text(2));
            },
        )?;
    }
    let map = Rc::new(map);
    BINDINGS.with(|b| *b.borrow_mut() = Some(map.clone()));
    Ok(map)
}

/// A token bound to roles (koherent.bind_agent) may be presented only by those roles, or by
/// roles that have their privileges: the presenting role is the one the client acts as (SET
/// ROLE's, else the session user). An agent with no binding: any role, as before.
pub fn check_presenter(task: &Task) -> Result<(), KoherentError> {
    let bindings = load_bindings()?;
    let key = (task.claims.iss.clone(), task.claims.act.cid.clone());
    let Some(roles) = bindings.get(&key) else {
        return Ok(());
    };
    let presenter = unsafe { pg_sys::GetOuterUserId() };
    let allowed = roles.iter().any(|r| unsafe {
        let c = std::ffi::CString::new(r.as_str()).unwrap_or_default();
        let oid = pg_sys::get_role_oid(c.as_ptr(), true);
        oid != pg_sys::InvalidOid && pg_sys::has_privs_of_role(presenter, oid)
    });
    if allowed {
        Ok(())
    } else {
        Err(KoherentError::PresenterNotBound {
            client_id: task.claims.act.cid.clone(),
            role: crate::context::effective_role(),
        })
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
