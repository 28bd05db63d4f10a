//! Running a reader's check with the reader's rights.
//!
//! koherent's history readers (the exposed `<table>_provenance`, `<table>_by_provenance`, the
//! entry functions) are SECURITY DEFINER: readers hold no privilege on history tables. Before
//! they show anything of a row, they ask whether the client could read that row itself, by
//! running a generated `SELECT 1 FROM <table> WHERE <primary key> = $n` as the client: its
//! privileges and the table's row-level security decide, not the row value it passed in.

use pgrx::pg_sys;
use std::ffi::CString;

use crate::error::{KoherentError, OrRaise};

/// Restores the user id and security context on drop (also when an ERROR unwinds through it;
/// the transaction's abort would restore them as well).
struct AsCaller {
    user: pg_sys::Oid,
    context: i32,
}

impl AsCaller {
    unsafe fn enter() -> AsCaller {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::GetOuterUserId(),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        AsCaller { user, context }
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

pub fn visible_to_caller(query: &str, key: &[Option<String>], types: &[pg_sys::Oid]) -> bool {
    if key.len() != types.len() {
        KoherentError::Internal("key and types differ in length".into()).raise();
    }
    unsafe {
        // Key values arrive as text made by output functions; input functions (C, written by
        // superusers) turn them back into values: no cast runs.
        let mut values = Vec::with_capacity(key.len());
        let mut nulls = Vec::with_capacity(key.len());
        for (k, &t) in key.iter().zip(types) {
            match k {
                None => {
                    values.push(pg_sys::Datum::from(0usize));
                    nulls.push(b'n' as std::ffi::c_char);
                }
                Some(text) => {
                    let c = CString::new(text.as_str())
                        .map_err(|_| KoherentError::InvalidArgument("NUL in a key value".into()))
                        .or_raise();
                    let mut func = pg_sys::InvalidOid;
                    let mut ioparam = pg_sys::InvalidOid;
                    pg_sys::getTypeInputInfo(t, &mut func, &mut ioparam);
                    values.push(pg_sys::OidInputFunctionCall(
                        func,
                        c.as_ptr() as *mut _,
                        ioparam,
                        -1,
                    ));
                    nulls.push(b' ' as std::ffi::c_char);
                }
            }
        }
        if nulls.contains(&(b'n' as std::ffi::c_char)) {
            return false; // a primary key is never null
        }
        let q = CString::new(query)
            .map_err(|_| KoherentError::Internal("NUL in a query".into()))
            .or_raise();
        let mut argtypes = types.to_vec();
        let _as_caller = AsCaller::enter();
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            KoherentError::Internal("SPI_connect failed".into()).raise();
        }
        let rc = pg_sys::SPI_execute_with_args(
            q.as_ptr(),
            argtypes.len() as i32,
            argtypes.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true,
            1,
        );
        let found = rc == pg_sys::SPI_OK_SELECT as i32 && pg_sys::SPI_processed > 0;
        pg_sys::SPI_finish();
        found
    }
}
