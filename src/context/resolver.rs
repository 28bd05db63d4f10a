//! The local user resolver (`koherent.set_user_resolver`): called once when a task row is made,
//! to find the local user of the task's assigner (rcb). It runs as its own owner, never with
//! koherent's rights (the history writer runs as the extension owner), under a security-
//! restricted operation, in a subtransaction: an error or a null is no user, a WARNING says why,
//! and the write goes on. A cancel (statement_timeout, pg_cancel_backend) is not an error of the
//! resolver: it ends the statement, as PL/pgSQL's `WHEN OTHERS` lets it.
//!
//! While it runs it cannot change the transaction koherent is writing: its tracked writes and
//! its calls of set_task, set_context_id, set_context fail inside its subtransaction
//! ([`resolving`]), and settings it changes (`set_config(..., false)` included) are undone when
//! it returns.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use serde_json::Value;

use crate::datum::text_datum;
use std::cell::Cell;

thread_local! {
    static RESOLVING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a user resolver is running (koherent's state-changing entry points refuse then).
pub fn resolving() -> bool {
    RESOLVING.with(|r| r.get())
}

/// The resolver as `koherent.user_resolver` names it: (oid, owner, name, pins search_path).
fn configured() -> Option<(pg_sys::Oid, pg_sys::Oid, String, bool)> {
    let found = Spi::connect(|c| {
        let rows = c.select(
            // (every name and operator with its schema)
            "SELECT r.resolver::pg_catalog.oid, p.proowner, r.resolver::pg_catalog.text, p.oid IS NOT NULL,
                    EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) x
                             WHERE x OPERATOR(pg_catalog.~~) 'search_path=%')
               FROM koherent.user_resolver r
               LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) r.resolver::pg_catalog.oid",
            Some(1),
            &[],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = rows.first();
        Ok(Some((
            row.get::<pg_sys::Oid>(1)?,
            row.get::<pg_sys::Oid>(2)?,
            row.get::<String>(3)?.unwrap_or_default(),
            row.get::<bool>(4)?.unwrap_or(false),
            row.get::<bool>(5)?.unwrap_or(false),
        )))
    })
    .ok()
    .flatten()?;
    let (Some(oid), owner, name, exists, pinned) = found else {
        return None;
    };
    if !exists {
        warn(&format!(
            "the user resolver {} no longer exists (koherent.set_user_resolver names another)",
            oid.to_u32()
        ));
        return None;
    }
    Some((oid, owner.unwrap_or(pg_sys::InvalidOid), name, pinned))
}

fn warn(what: &str) {
    pgrx::warning!("koherent: {what}; the task's assigner_user stays null");
}

/// The local user of `sub` (issuer `issuer`), as the configured resolver finds it; None when no
/// resolver is set, it finds none (SQL or JSON null), or it fails.
pub fn resolve(issuer: &str, sub: &str) -> Option<Value> {
    let (oid, owner, name, pinned) = configured()?;
    if !pinned {
        // (set_user_resolver refuses such a function; ALTER FUNCTION ... RESET could come after)
        warn(&format!(
            "the user resolver {name} does not pin its search_path"
        ));
        return None;
    }
    match unsafe { call(oid, owner, issuer, sub) } {
        Ok(Some(Value::Null)) | Ok(None) => None,
        Ok(Some(v)) => Some(v),
        Err(message) => {
            warn(&format!("the user resolver {name} failed: {message}"));
            None
        }
    }
}

/// Call the resolver as `owner`, in a subtransaction that an error rolls back.
unsafe fn call(
    oid: pg_sys::Oid,
    owner: pg_sys::Oid,
    issuer: &str,
    sub: &str,
) -> Result<Option<Value>, String> {
    let context = pg_sys::CurrentMemoryContext;
    let resowner = pg_sys::CurrentResourceOwner;
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
    pg_sys::BeginInternalSubTransaction(std::ptr::null());
    pg_sys::MemoryContextSwitchTo(context);
    let (issuer, sub) = (issuer.to_string(), sub.to_string());
    PgTryBuilder::new(|| {
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        // settings it changes are undone when it returns (as a function's SET clause is)
        let guc = pg_sys::NewGUCNestLevel();
        RESOLVING.with(|r| r.set(true));
        let result = invoke(oid, &issuer, &sub);
        RESOLVING.with(|r| r.set(false));
        pg_sys::AtEOXact_GUC(false, guc);
        pg_sys::SetUserIdAndSecContext(user, sec);
        pg_sys::ReleaseCurrentSubTransaction();
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = resowner;
        Ok(result)
    })
    .catch_others(|e| {
        // (the rollback restores the user id, security context and settings the subtransaction
        // began with)
        RESOLVING.with(|r| r.set(false));
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = resowner;
        let cancelled = match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                r.sql_error_code() == PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            }
            CaughtError::RustPanic { .. } => false,
        };
        if cancelled {
            e.rethrow();
        }
        Err(match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
            CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
        })
    })
    .execute()
}

/// The function by its oid (no name lookup), two text arguments; its jsonb result as a value.
unsafe fn invoke(oid: pg_sys::Oid, issuer: &str, sub: &str) -> Option<Value> {
    let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
    pg_sys::fmgr_info(oid, &mut flinfo);
    let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
        + 2 * std::mem::size_of::<pg_sys::NullableDatum>();
    let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
    (*fcinfo).flinfo = &mut flinfo;
    (*fcinfo).nargs = 2;
    (*fcinfo).fncollation = pg_sys::DEFAULT_COLLATION_OID;
    let args = (*fcinfo).args.as_mut_slice(2);
    args[0] = pg_sys::NullableDatum {
        value: text_datum(issuer),
        isnull: false,
    };
    args[1] = pg_sys::NullableDatum {
        value: text_datum(sub),
        isnull: false,
    };
    let f = flinfo.fn_addr.expect("fmgr_info gives a function");
    // (an ERROR raised in it becomes a Rust panic here, which the caller's catch takes)
    let d = pg_sys::ffi::pg_guard_ffi_boundary(|| f(fcinfo));
    if (*fcinfo).isnull {
        return None;
    }
    pgrx::JsonB::from_polymorphic_datum(d, false, pg_sys::JSONBOID).map(|j| j.0)
}
