//! Lookups in the catalogs: koherent's own relations (cached until an invalidation), relation
//! names for messages, columns by name, and reading a koherent table at the latest snapshot.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::cell::Cell;
use std::ffi::{CStr, CString};

use crate::error::{KoherentError, OrRaise};

/// The relations every history write uses, by oid.
#[derive(Clone, Copy)]
pub struct KoherentOids {
    /// Schema `koherent_history`, where the history tables live.
    pub history_schema: pg_sys::Oid,
    /// `koherent.history_id_seq`.
    pub history_id_seq: pg_sys::Oid,
    /// `koherent.transaction_auth_context`.
    pub context_table: pg_sys::Oid,
}

thread_local! {
    static OIDS: Cell<Option<KoherentOids>> = const { Cell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid
        || OIDS
            .with(|n| n.get())
            .is_some_and(|o| o.history_id_seq == relid || o.context_table == relid)
    {
        OIDS.with(|n| n.set(None));
    }
}

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
}

/// koherent's relations (cached; a relcache invalidation of the sequence or the context table
/// forgets them, as dropping the extension does).
pub unsafe fn koherent_oids() -> KoherentOids {
    if let Some(n) = OIDS.with(|n| n.get()) {
        return n;
    }
    let koherent = pg_sys::get_namespace_oid(c"koherent".as_ptr(), false);
    let n = KoherentOids {
        history_schema: pg_sys::get_namespace_oid(c"koherent_history".as_ptr(), false),
        history_id_seq: relation_oid("history_id_seq", koherent).or_raise(),
        context_table: relation_oid("transaction_auth_context", koherent).or_raise(),
    };
    OIDS.with(|c| c.set(Some(n)));
    n
}

/// A type of PostgreSQL's own (a domain by its base type): only a superuser can define a cast
/// between two of them.
pub fn is_builtin_type(typ: pg_sys::Oid) -> bool {
    unsafe { pg_sys::getBaseType(typ).to_u32() < pg_sys::FirstNormalObjectId }
}

/// The oid of relation `name` in schema `nsp`, or `HistoryOutOfSync` when it is missing.
pub unsafe fn relation_oid(name: &str, nsp: pg_sys::Oid) -> Result<pg_sys::Oid, KoherentError> {
    let c =
        CString::new(name).map_err(|_| KoherentError::Internal("NUL in a relation name".into()))?;
    let oid = pg_sys::get_relname_relid(c.as_ptr(), nsp);
    if oid == pg_sys::InvalidOid {
        return Err(KoherentError::HistoryOutOfSync(format!(
            "relation \"{name}\" is missing"
        )));
    }
    Ok(oid)
}

/// The oid of relation `koherent.<name>`, or InvalidOid when it does not exist (an older schema
/// under this library, or no extension).
pub unsafe fn koherent_relid(name: &std::ffi::CStr) -> pg_sys::Oid {
    let nsp = pg_sys::get_namespace_oid(c"koherent".as_ptr(), true);
    if nsp == pg_sys::InvalidOid {
        return pg_sys::InvalidOid;
    }
    pg_sys::get_relname_relid(name.as_ptr(), nsp)
}

/// `schema.name` of a relation, for messages (its oid when it no longer exists).
pub fn rel_name(relid: pg_sys::Oid) -> String {
    unsafe {
        let ns = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        let n = pg_sys::get_rel_name(relid);
        if n.is_null() {
            return format!("{}", relid.to_u32());
        }
        let name = std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned();
        if ns.is_null() {
            name
        } else {
            format!(
                "{}.{}",
                std::ffi::CStr::from_ptr(ns).to_string_lossy(),
                name
            )
        }
    }
}

pub unsafe fn att_name(att: &pg_sys::FormData_pg_attribute) -> &str {
    CStr::from_ptr(att.attname.data.as_ptr())
        .to_str()
        .unwrap_or("")
}

/// Whether `att` is named `name`: its NUL-padded NameData compared as bytes (no strlen, no
/// UTF-8 check: this runs for every column of the context row each transaction).
pub fn att_is_named(att: &pg_sys::FormData_pg_attribute, name: &str) -> bool {
    let (data, name) = (&att.attname.data, name.as_bytes());
    name.len() < data.len()
        && data[name.len()] == 0
        && data.iter().zip(name).all(|(&a, &b)| a as u8 == b)
}

/// The 0-based index of live column `name` in `desc`.
pub unsafe fn find_att(desc: &PgTupleDesc, name: &str) -> Option<usize> {
    (0..desc.len()).find(|&i| {
        let a = desc.get(i).expect("in range");
        !a.attisdropped && att_is_named(a, name)
    })
}

/// Read every row of table `oid` with a snapshot taken after accepting pending invalidations
/// (see verify::keys: a statement's snapshot may predate a revocation), handing `f` the values of `columns`, in that order.
pub unsafe fn scan_latest(
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
