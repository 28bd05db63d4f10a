//! Running a reader's check with the reader's rights; the role a client acts as.
//!
//! koherent's history readers (the exposed `<table>_provenance`, `<table>_by_provenance`, the
//! entry functions) are SECURITY DEFINER: readers hold no privilege on history tables. Before
//! they show anything of a row, they ask whether the client could read that row itself, by
//! running a generated `SELECT 1 FROM <table> WHERE <primary key> = $n` as the client: its
//! privileges and the table's row-level security decide, not the row value it passed in.
//!
//! The key values arrive as one composite value (`ROW(k1, k2, ...)`) and are bound as
//! parameters of their own types, as they are: no input or output function, no cast and no
//! domain check runs, and no value is rounded through text.

use pgrx::pg_sys;
use std::ffi::CString;

use crate::error::{KoherentError, OrRaise};

/// Acts as another role until dropped: restores the user id and security context on drop
/// (also when an ERROR unwinds through it; the transaction's abort would restore them as well).
pub struct AsRole {
    user: pg_sys::Oid,
    context: i32,
}

impl AsRole {
    pub unsafe fn enter(role: pg_sys::Oid) -> AsRole {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        AsRole { user, context }
    }
}

impl Drop for AsRole {
    fn drop(&mut self) {
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// `key`: a composite datum of type `typoid` whose fields are the key values, in the order of
/// the query's parameters.
pub unsafe fn visible_to_caller(query: &str, key: pg_sys::Datum, typoid: pg_sys::Oid) -> bool {
    let header = pg_sys::pg_detoast_datum(key.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
    let (typ, typmod) = if typoid == pg_sys::RECORDOID {
        (
            (*header).t_choice.t_datum.datum_typeid,
            (*header).t_choice.t_datum.datum_typmod,
        )
    } else {
        (typoid, -1)
    };
    let desc = pg_sys::lookup_rowtype_tupdesc(typ, typmod);
    let natts = (*desc).natts as usize;
    let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
    tuple.t_len = pgrx::varsize_any(header as *const pg_sys::varlena) as u32;
    tuple.t_data = header;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut isnull = vec![true; natts];
    pg_sys::heap_deform_tuple(&mut tuple, desc, values.as_mut_ptr(), isnull.as_mut_ptr());
    let mut argtypes: Vec<pg_sys::Oid> = (0..natts)
        .map(|i| (*(*desc).attrs.as_ptr().add(i)).atttypid)
        .collect();
    pg_sys::DecrTupleDescRefCount(desc);
    if isnull.iter().any(|&n| n) {
        return false; // a primary key is never null
    }
    let nulls = vec![b' ' as std::ffi::c_char; natts];
    let q = CString::new(query)
        .map_err(|_| KoherentError::Internal("NUL in a query".into()))
        .or_raise();
    if pg_sys::InSecurityRestrictedOperation() {
        // ANALYZE, REFRESH MATERIALIZED VIEW and index expressions run as a table's owner for
        // someone else: the client's role is not who runs this
        KoherentError::Restricted.raise();
    }
    let _as_caller = AsRole::enter(pg_sys::GetOuterUserId());
    // GUCs the check's code sets (a policy function's set_config) end with it
    let level = pg_sys::NewGUCNestLevel();
    if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
        KoherentError::Internal("SPI_connect failed".into()).raise();
    }
    let rc = pg_sys::SPI_execute_with_args(
        q.as_ptr(),
        natts as i32,
        argtypes.as_mut_ptr(),
        values.as_mut_ptr(),
        nulls.as_ptr(),
        true,
        1,
    );
    let found = rc == pg_sys::SPI_OK_SELECT as i32 && pg_sys::SPI_processed > 0;
    pg_sys::SPI_finish();
    pg_sys::AtEOXact_GUC(false, level);
    found
}

/// The role the client acts as: `SET ROLE`'s (the history writer itself runs as the extension
/// owner, so current_user inside it says nothing of the client).
pub fn outer_role_name() -> String {
    role_name(unsafe { pg_sys::GetOuterUserId() }).unwrap_or_default()
}

/// A role's name, or None for a role that no longer exists.
pub fn role_name(oid: pg_sys::Oid) -> Option<String> {
    unsafe {
        let r = pg_sys::GetUserNameFromId(oid, true);
        (!r.is_null()).then(|| std::ffi::CStr::from_ptr(r).to_string_lossy().into_owned())
    }
}
