//! Revert and as-of: what runs with the client's rights, and the revert's mark on its context.
//!
//! The revert and as-of functions (`sql/revert.sql`, `sql/as_of.sql`) are SECURITY DEFINER so
//! that they can read history, which clients cannot. Everything they do to the client's own
//! tables (reading current rows, taking row locks, the writes that undo a task) goes through
//! `koherent._as_caller(query, arg)`, which runs one statement as the client (SET ROLE's role):
//! its GRANTs, the tables' row-level security and the rights triggers run with are the
//! client's, as if it had sent the statement itself. Only the extension owner may call it
//! (REVOKEd from PUBLIC): a client gains nothing by it, and an owner's function gains nothing
//! it should not have.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;
use std::ffi::CString;

use crate::context;
use crate::error::KoherentError;
use crate::security::AsCaller;

/// `koherent._as_caller(query text, arg jsonb) RETURNS jsonb`: run `query` as the client with
/// one jsonb parameter `$1`. A query that returns rows gives the first column of its first row
/// (jsonb, or null); any other gives the number of rows it processed as a jsonb number. The
/// result stays a datum (copied out of SPI's memory), never converted through Rust values: a
/// revert passes whole plans through here.
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_as_caller() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_as_caller(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let args = (*fcinfo).args.as_slice(2);
    if args[0].isnull {
        KoherentError::NullArgument("query").raise();
    }
    let query = pg_sys::text_to_cstring(args[0].value.cast_mut_ptr());
    let q: CString = std::ffi::CStr::from_ptr(query).to_owned();
    let mut values = [args[1].value];
    let nulls = [if args[1].isnull { b'n' } else { b' ' } as std::ffi::c_char];
    let mut argtypes = [pg_sys::JSONBOID];
    let processed;
    let mut result: Option<pg_sys::Datum> = None;
    let mut returned_rows = false;
    {
        let _as_caller = AsCaller::enter();
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            KoherentError::Internal("SPI_connect failed".into()).raise();
        }
        let rc = pg_sys::SPI_execute_with_args(
            q.as_ptr(),
            1,
            argtypes.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            false,
            0,
        );
        if rc < 0 {
            pg_sys::SPI_finish();
            KoherentError::Internal(format!("SPI_execute_with_args failed: {rc}")).raise();
        }
        processed = pg_sys::SPI_processed;
        let table = pg_sys::SPI_tuptable;
        if !table.is_null() && (*(*table).tupdesc).natts >= 1 {
            returned_rows = true;
            if processed > 0 {
                let desc = (*table).tupdesc;
                if (*(*desc).attrs.as_ptr()).atttypid != pg_sys::JSONBOID {
                    pg_sys::SPI_finish();
                    KoherentError::Internal(
                        "koherent._as_caller: a query must return jsonb".into(),
                    )
                    .raise();
                }
                let mut isnull = false;
                let d = pg_sys::SPI_getbinval(*(*table).vals, desc, 1, &mut isnull);
                if !isnull {
                    result = Some(pg_sys::SPI_datumTransfer(d, false, -1));
                }
            }
        }
        pg_sys::SPI_finish();
    }
    if !returned_rows {
        return JsonB(Value::from(processed))
            .into_datum()
            .expect("a jsonb datum");
    }
    match result {
        Some(d) => d,
        None => {
            (*fcinfo).isnull = true;
            pg_sys::Datum::from(0usize)
        }
    }
}

/// Record in this transaction's context what it reverts (`metadata.reverts`); once per
/// transaction.
pub fn mark_revert(what: JsonB) {
    context::mark_revert(what)
}
