//! Revert and as-of: who they act for, and what runs with that role's rights.
//!
//! The revert and as-of functions (`sql/revert.sql`, `sql/as_of.sql`) read history, which clients
//! cannot, with SECURITY DEFINER helpers. Who they act for is decided in C, never taken from the
//! client: the public functions are SECURITY INVOKER and first call `koherent._acting()`, which
//! records the role executing them (`GetUserId()`: the client, or the owner of a SECURITY DEFINER
//! function that calls them) and its search_path under a random capability id, valid until the
//! transaction ends. The helpers take that id and act for that role: privilege and visibility
//! checks, and everything done to the role's tables (reading current rows, locks, the writes
//! that undo a task) through `koherent._as_caller(acting, query, arg, callers_path)`, which runs
//! one statement as that role (under its search_path for the writes, `pg_catalog, pg_temp` for
//! the reads and checks); GUC changes made by the code it runs (triggers, policies) are undone
//! when it returns, so none reaches the helpers. The revert's mark on its context is the
//! context module's (`context::mark_revert`). Inside a
//! security-restricted operation (ANALYZE, REFRESH MATERIALIZED VIEW, index expressions, which
//! run as a table's owner on behalf of someone else) neither is allowed.

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::Value;
use std::cell::RefCell;
use std::ffi::{CStr, CString};

use crate::error::KoherentError;
use crate::ffi;

pub mod kept;

struct Acting {
    id: [u8; 16],
    role: pg_sys::Oid,
    search_path: CString,
}

thread_local! {
    /// The capabilities handed out in this transaction.
    static ACTING: RefCell<Vec<Acting>> = const { RefCell::new(Vec::new()) };
}

fn refuse_if_restricted() {
    if unsafe { pg_sys::InSecurityRestrictedOperation() } {
        KoherentError::Restricted.raise();
    }
}

/// `koherent._acting()`: a capability for the role executing the caller (see the module).
pub fn acting() -> Uuid {
    refuse_if_restricted();
    let role = unsafe { pg_sys::GetUserId() };
    let search_path = unsafe {
        let p = pg_sys::GetConfigOption(c"search_path".as_ptr(), false, false);
        if p.is_null() {
            CString::default()
        } else {
            CStr::from_ptr(p).to_owned()
        }
    };
    let id = *uuid::Uuid::new_v4().as_bytes();
    ACTING.with(|a| {
        let mut a = a.borrow_mut();
        if a.len() >= 10_000 {
            a.remove(0);
        }
        a.push(Acting {
            id,
            role,
            search_path,
        })
    });
    Uuid::from_bytes(id)
}

fn lookup(id: &Uuid) -> (pg_sys::Oid, CString) {
    let bytes: [u8; 16] = *id.as_bytes();
    ACTING
        .with(|a| {
            a.borrow()
                .iter()
                .rev()
                .find(|x| x.id == bytes)
                .map(|x| (x.role, x.search_path.clone()))
        })
        .unwrap_or_else(|| {
            KoherentError::InvalidArgument(
                "unknown acting capability (koherent._acting() gives one)".into(),
            )
            .raise()
        })
}

/// `koherent._acting_role(acting)`: the role a capability acts for.
pub fn acting_role(id: Uuid) -> pg_sys::Oid {
    refuse_if_restricted();
    lookup(&id).0
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        ACTING.with(|a| a.borrow_mut().clear());
    }
}

pub fn init() {
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

/// `koherent._as_caller(acting uuid, query text, arg jsonb, callers_path boolean) RETURNS jsonb`:
/// run `query` as the capability's role with one jsonb parameter `$1`, under that role's
/// search_path when `callers_path` (the revert's writes: the triggers they fire see what the
/// role sees) and else under `pg_catalog, pg_temp` (the reads and checks, whose functions and
/// operators no role may shadow). A query that returns
/// rows gives the first column of its first row (jsonb, or null); any other gives the number of
/// rows it processed as a jsonb number. The result stays a datum (copied out of SPI's memory).
/// An error raised by the statement reaches the client untouched (`ffi::pg_try`).
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
    refuse_if_restricted();
    let args = (*fcinfo).args.as_slice(4);
    if args[0].isnull || args[1].isnull || args[3].isnull {
        KoherentError::NullArgument("acting, query and callers_path").raise();
    }
    let id = Uuid::from_datum(args[0].value, false).expect("a uuid");
    let (role, callers) = lookup(&id);
    let search_path = if args[3].value.value() != 0 {
        callers
    } else {
        CString::from(c"pg_catalog, pg_temp")
    };
    let query = pg_sys::text_to_cstring(args[1].value.cast_mut_ptr());
    let q: CString = CStr::from_ptr(query).to_owned();
    let mut values = [args[2].value];
    let nulls = [if args[2].isnull { b'n' } else { b' ' } as std::ffi::c_char];
    let mut argtypes = [pg_sys::JSONBOID];

    let mut user = pg_sys::InvalidOid;
    let mut sec = 0;
    pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
    let mut processed: u64 = 0;
    let mut result: Option<pg_sys::Datum> = None;
    let mut returned_rows = false;
    let mut bad_type = false;
    let mut rc = 0;
    // everything between here and the restore is PostgreSQL C, inside a PG_TRY of our own: an
    // error puts the user back and is raised again as it is
    ffi::pg_try(
        || {
            pg_sys::SetUserIdAndSecContext(role, sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
            let level = ffi::NewGUCNestLevel();
            ffi::set_config_option(
                c"search_path".as_ptr(),
                search_path.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            if ffi::SPI_connect() == pg_sys::SPI_OK_CONNECT as i32 {
                rc = ffi::SPI_execute_with_args(
                    q.as_ptr(),
                    1,
                    argtypes.as_mut_ptr(),
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    false,
                    0,
                );
                processed = pg_sys::SPI_processed;
                let table = pg_sys::SPI_tuptable;
                if rc >= 0 && !table.is_null() && (*(*table).tupdesc).natts >= 1 {
                    returned_rows = true;
                    let desc = (*table).tupdesc;
                    if (*(*desc).attrs.as_ptr()).atttypid != pg_sys::JSONBOID {
                        bad_type = true;
                    } else if processed > 0 {
                        let mut isnull = false;
                        let d = ffi::SPI_getbinval(*(*table).vals, desc, 1, &mut isnull);
                        if !isnull {
                            result = Some(ffi::SPI_datumTransfer(d, false, -1));
                        }
                    }
                }
                ffi::SPI_finish();
            } else {
                rc = -1;
            }
            // GUCs set by the code the statement ran (a trigger's set_config) end here
            ffi::AtEOXact_GUC(false, level);
        },
        || pg_sys::SetUserIdAndSecContext(user, sec),
    );
    if rc < 0 {
        KoherentError::Internal(format!("koherent._as_caller: SPI failed ({rc})")).raise();
    }
    if bad_type {
        KoherentError::Internal("koherent._as_caller: a query must return jsonb".into()).raise();
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
