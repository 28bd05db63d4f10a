//! Which statement is executing now, at any nesting depth, and when each statement began.
//!
//! The partition guard must know whether the statement moving a row between partitions is a
//! MERGE (PostgreSQL 15 hands a MERGE's statement trigger no rows for the rows it moves, so
//! such a move would escape history). A BEFORE ROW trigger is told the event, not the command,
//! and the active portal names only the top-level statement: a MERGE inside a function, a DO
//! block, a prepared statement or EXPLAIN ANALYZE looks like something else there.
//!
//! An `ExecutorRun` hook (and `ExecutorFinish`, where a data-modifying WITH query its main query
//! did not read to the end runs) keeps a stack of the statements being executed: the command
//! type of each and when it began. Row triggers of a statement fire inside its own `ExecutorRun`
//! (nested statements have returned by then, and popped themselves on their way out, errors
//! included), so the guard reads the command of the statement whose row it sees.
//!
//! History dates ([`statement_date`]): every statement, nested ones included, gets its own
//! start time at its first ExecutorRun (a `ProcessUtility` hook covers COPY and other utilities),
//! strictly increasing within a backend. The history writer fires in its statement's
//! ExecutorFinish; the hook keeps a stack of the statements finishing, so the writer takes its
//! own statement's date even after that statement's triggers ran nested statements. So the
//! entries of one statement share a date, a nested statement's entries (written before the
//! statement that fired it finishes) carry a later date than that statement's, and the
//! statements of one multi-statement message are told apart: within a transaction, history
//! dates order statements as they happened.
//!
//! The hook sees only the runs that began after this library was loaded. A backend that loads
//! koherent while a statement runs (its first call of any koherent function is the guard of
//! that statement) cannot know what that statement, or one of its callers, is:
//! [`current`] then says [`Running::Unknown`] and the guard decides from the top-level portal,
//! and that statement's history date is its statement start timestamp (or the transaction's
//! start, when later: a procedure's statement after its COMMIT).
//! `session_preload_libraries = 'koherent'` loads it before any statement.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

use crate::ffi;

#[derive(Default)]
struct Statements {
    /// The open hooked runs, innermost last: command type and start date.
    open: Vec<(pg_sys::CmdType::Type, pg_sys::TimestampTz)>,
    /// The statements (executor queries and utilities) finishing now, innermost last: their
    /// dates. History triggers fire while their statement is on top.
    finishing: Vec<pg_sys::TimestampTz>,
    /// Each started query's date, until ExecutorEnd (or the transaction's end).
    started: Vec<(usize, pg_sys::TimestampTz)>,
    /// The last date handed out (dates strictly increase).
    issued: pg_sys::TimestampTz,
}

thread_local! {
    static STATEMENTS: RefCell<Statements> = RefCell::new(Statements::default());
}

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
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
    let known = STATEMENTS.with(|s| s.borrow().finishing.last().copied());
    known.unwrap_or_else(unhooked_date)
}

/// The date of a statement whose start the hooks did not see: the client statement's start,
/// but never before the transaction began. Inside a procedure, after a COMMIT, the client
/// statement (the CALL) began before the transaction now writing, whose context row is dated at
/// that transaction's start: every entry must be dated at or after its context began (the
/// ledger's seal and the readers by task look unsealed contexts' entries up from there).
fn unhooked_date() -> pg_sys::TimestampTz {
    unsafe {
        pg_sys::GetCurrentStatementStartTimestamp()
            .max(pg_sys::GetCurrentTransactionStartTimestamp())
    }
}

/// The history date of the innermost statement executing now (what SQL that records history
/// itself, the TRUNCATE copy, calls during its INSERT).
pub fn running_date() -> pg_sys::TimestampTz {
    let known = STATEMENTS.with(|s| s.borrow().open.last().map(|&(_, d)| d));
    known.unwrap_or_else(statement_date)
}

/// A new date, later than every one handed out before.
fn next_date() -> pg_sys::TimestampTz {
    STATEMENTS.with(|s| s.borrow_mut().issue())
}

impl Statements {
    fn issue(&mut self) -> pg_sys::TimestampTz {
        let date = unsafe { pg_sys::GetCurrentTimestamp() }.max(self.issued + 1);
        self.issued = date;
        date
    }
}

/// The date of a query: taken at its first run (when its changes begin; ExecutorStart can come
/// long before, for a portal bound early). A query whose start this backend did not see (the
/// library was loaded while it ran) is dated at the client statement's start (or its
/// transaction's, when later: [`unhooked_date`]), not after any date handed out since.
fn date_of(query: *mut pg_sys::QueryDesc) -> pg_sys::TimestampTz {
    let key = query as usize;
    STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        match s.started.iter().rposition(|(q, _)| *q == key) {
            Some(i) if s.started[i].1 != 0 => s.started[i].1,
            Some(i) => {
                let d = s.issue();
                s.started[i].1 = d;
                d
            }
            None => {
                let d = unhooked_date();
                s.started.push((key, d));
                d
            }
        }
    })
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
        STATEMENTS.with(|s| {
            let mut s = s.borrow_mut();
            s.started.clear();
            s.finishing.clear();
        });
    }
}

pub fn init() {
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
    }
}

// The hooks call the previous hook (or PostgreSQL's standard function) inside a PG_TRY of their
// own (`ffi::pg_try`): an ERROR raised below them is caught, the hook's stacks are put back, and the
// same error is raised again with PG_RE_THROW, every field intact (SQLSTATE, CONTEXT, position,
// constraint and table names). pgrx's guard would catch it too, but raise a copy with only its
// SQLSTATE (if pgrx knows it), message, detail and hint. So the hooks are not #[pg_guard]: their
// bodies hold no Rust value with a destructor across the call and do not panic.

unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    // a new statement (replacing whatever an aborted query at this address left); dated at
    // its first run
    STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        s.started.retain(|(q, _)| *q != query as usize);
        s.started.push((query as usize, 0));
    });
    ffi::pg_try(
        || match PREV_EXECUTOR_START {
            Some(prev) => prev(query, eflags),
            None => ffi::standard_ExecutorStart(query, eflags),
        },
        || {},
    )
}

unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    STATEMENTS.with(|s| s.borrow_mut().started.retain(|(q, _)| *q != query as usize));
    ffi::pg_try(
        || match PREV_EXECUTOR_END {
            Some(prev) => prev(query),
            None => ffi::standard_ExecutorEnd(query),
        },
        || {},
    )
}

unsafe extern "C-unwind" fn executor_finish(query: *mut pg_sys::QueryDesc) {
    let date = date_of(query);
    // (a statement still executes while it finishes: a data-modifying WITH query that its main
    // query did not read to the end runs to completion here, and the partition guard asks which
    // statement moves its rows)
    as_open(query, date, || {
        as_finishing(date, || match PREV_EXECUTOR_FINISH {
            Some(prev) => prev(query),
            None => ffi::standard_ExecutorFinish(query),
        })
    })
}

unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    as_open(query, date_of(query), || match PREV_EXECUTOR_RUN {
        Some(prev) => prev(query, direction, count, execute_once),
        None => ffi::standard_ExecutorRun(query, direction, count, execute_once),
    })
}

/// Run `f` with `query` (its command type, dated `date`) on top of the stack of statements
/// executing, popped on the way out, errors included.
unsafe fn as_open(query: *mut pg_sys::QueryDesc, date: pg_sys::TimestampTz, f: impl FnOnce()) {
    let depth = STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        s.open.push(((*query).operation, date));
        s.open.len() - 1
    });
    ffi::pg_try(f, || {
        STATEMENTS.with(|s| s.borrow_mut().open.truncate(depth))
    })
}

/// Utilities (COPY among them) are statements too: the history COPY records carries the
/// COPY's date.
#[cfg(not(feature = "pg13"))]
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
    as_finishing(next_date(), || match PREV_PROCESS_UTILITY {
        Some(prev) => prev(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
        None => ffi::standard_ProcessUtility(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    });
}

#[cfg(feature = "pg13")]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    as_finishing(next_date(), || match PREV_PROCESS_UTILITY {
        Some(prev) => prev(pstmt, query_string, context, params, query_env, dest, qc),
        None => {
            ffi::standard_ProcessUtility(pstmt, query_string, context, params, query_env, dest, qc)
        }
    });
}

/// Run `f` with `date` on top of the finishing stack: the history triggers it fires record that
/// date (a query's ExecutorFinish; a utility such as COPY, which fires its triggers itself).
unsafe fn as_finishing(date: pg_sys::TimestampTz, f: impl FnOnce()) {
    let depth = STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        s.finishing.push(date);
        s.finishing.len() - 1
    });
    ffi::pg_try(f, || {
        STATEMENTS.with(|s| s.borrow_mut().finishing.truncate(depth))
    })
}
