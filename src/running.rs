//! Which statement is executing now, at any nesting depth, and when each statement began.
//!
//! The partition guard must know whether the statement moving a row between partitions is a
//! MERGE (PostgreSQL 15 hands a MERGE's statement trigger no rows for the rows it moves, so
//! such a move would escape history). A BEFORE ROW trigger is told the event, not the command,
//! and the active portal names only the top-level statement: a MERGE inside a function, a DO
//! block, a prepared statement or EXPLAIN ANALYZE looks like something else there.
//!
//! An `ExecutorRun` hook keeps a stack of the statements being executed: the command type of
//! each and when it began. Row triggers of a statement fire inside its own `ExecutorRun`
//! (nested statements have returned by then, and popped themselves on their way out, errors
//! included), so the guard reads the command of the statement whose row it sees.
//!
//! History dates ([`statement_date`]): every statement, nested ones included, gets its own
//! start time when it begins (a `ProcessUtility` hook covers COPY and other utilities),
//! strictly increasing within a backend. The history writer fires in its statement's
//! ExecutorFinish, after the statement's run: it takes the date of the last statement that
//! began at its depth, which is its own. So the entries of one statement share a date, a nested
//! statement's entries (written before the statement that fired it finishes) carry a later
//! date than that statement's, and the statements of one multi-statement message are told
//! apart: within a transaction, history dates order statements as they happened.
//!
//! The hook sees only the runs that began after this library was loaded. A backend that loads
//! koherent while a statement runs (its first call of any koherent function is the guard of
//! that statement) cannot know what that statement, or one of its callers, is:
//! [`current`] then says [`Running::Unknown`] and the guard decides from the top-level portal,
//! and that statement's history date is its statement start timestamp.
//! `session_preload_libraries = 'koherent'` loads it before any statement.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

#[derive(Default)]
struct Statements {
    /// The open hooked runs, innermost last: command type and start date.
    open: Vec<(pg_sys::CmdType::Type, pg_sys::TimestampTz)>,
    /// Per depth (the number of runs open around it): the start date of the last statement
    /// that began there.
    last: Vec<pg_sys::TimestampTz>,
    /// The last date handed out (dates strictly increase).
    issued: pg_sys::TimestampTz,
}

thread_local! {
    static STATEMENTS: RefCell<Statements> = RefCell::new(Statements::default());
}

static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// What is executing now, as far as this backend can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// The innermost statement being executed, of this command type.
    Command(pg_sys::CmdType::Type),
    /// Every statement running began before this library was loaded.
    Unknown,
}

pub fn current() -> Running {
    STATEMENTS.with(|s| match s.borrow().open.last() {
        Some(&(cmd, _)) => Running::Command(cmd),
        None => Running::Unknown,
    })
}

/// The history date of the statement whose history trigger fires now (see the module).
pub fn statement_date() -> pg_sys::TimestampTz {
    let known = STATEMENTS.with(|s| {
        let s = s.borrow();
        s.last.get(s.open.len()).copied().filter(|&d| d != 0)
    });
    known.unwrap_or_else(|| unsafe { pg_sys::GetCurrentStatementStartTimestamp() })
}

/// The history date of the innermost statement executing now (what SQL that records history
/// itself, the TRUNCATE copy, calls during its INSERT).
pub fn running_date() -> pg_sys::TimestampTz {
    let known = STATEMENTS.with(|s| s.borrow().open.last().map(|&(_, d)| d));
    known.unwrap_or_else(statement_date)
}

/// A new statement begins at the current depth: its date.
fn begin() -> pg_sys::TimestampTz {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        let date = now.max(s.issued + 1);
        s.issued = date;
        let depth = s.open.len();
        if s.last.len() <= depth {
            s.last.resize(depth + 1, 0);
        }
        s.last[depth] = date;
        date
    })
}

pub fn init() {
    unsafe {
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    let date = begin();
    let depth = STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        s.open.push(((*query).operation, date));
        s.open.len() - 1
    });
    PgTryBuilder::new(|| match PREV_EXECUTOR_RUN {
        Some(prev) => {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev(query, direction, count, execute_once))
        }
        None => pg_sys::standard_ExecutorRun(query, direction, count, execute_once),
    })
    .finally(|| {
        STATEMENTS.with(|s| {
            let mut s = s.borrow_mut();
            s.open.truncate(depth);
            // this statement's triggers fire next, at this depth: the date is its own
            if s.last.len() <= depth {
                s.last.resize(depth + 1, 0);
            }
            s.last[depth] = date;
        })
    })
    .execute()
}

/// Utilities (COPY among them) begin a statement too: the history COPY records carries the
/// COPY's date.
#[cfg(not(feature = "pg13"))]
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    begin();
    match PREV_PROCESS_UTILITY {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
            prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            )
        }),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
}

#[cfg(feature = "pg13")]
#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    begin();
    match PREV_PROCESS_UTILITY {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
            prev(pstmt, query_string, context, params, query_env, dest, qc)
        }),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query_string,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
}
