//! The trusted issuer keys, cached per backend from `koherent.issuer_key_store`.

use koherent_token::{Alg, KeyBinding, KeySet};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::catalog::{koherent_relid, scan_latest};
use crate::error::KoherentError;

thread_local! {
    static KEYS: RefCell<Option<Rc<KeySet>>> = const { RefCell::new(None) };
    pub(super) static KEY_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

pub(super) fn forget() {
    KEYS.with(|k| *k.borrow_mut() = None);
}

/// Tell every backend (at commit) that the keys changed.
pub fn invalidate_keys(table: pg_sys::Oid) {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(table) };
    super::clear();
}

/// The trusted keys, read from the latest committed state of the key table.
///
/// Not from the statement's snapshot: a statement (or a REPEATABLE READ transaction) whose
/// snapshot predates a revocation would otherwise cache the revoked key after the invalidation
/// was processed, and trust it until the next change of the key table. Invalidations are
/// accepted first, and a committing transaction's invalidation is sent only after it became
/// visible: so every revocation whose invalidation this backend processed is in what it reads.
pub fn load_keys() -> Result<Rc<KeySet>, KoherentError> {
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
