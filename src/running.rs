//! Which statement is executing now, at any nesting depth.
//!
//! The partition guard must know whether the statement moving a row between partitions is a
//! MERGE (PostgreSQL 15 hands a MERGE's statement trigger no rows for the rows it moves, so
//! such a move would escape history). A BEFORE ROW trigger is told the event, not the command,
//! and the active portal names only the top-level statement: a MERGE inside a function, a DO
//! block, a prepared statement or EXPLAIN ANALYZE looks like something else there.
//!
//! An `ExecutorRun` hook keeps the command type of the innermost statement being executed.
//! Row triggers of a statement fire inside its own `ExecutorRun` (nested statements have
//! returned by then, and restored the outer value on their way out, errors included), so the
//! guard reads the command of the statement whose row it sees.
//!
//! The hook sees only the runs that began after this library was loaded. A backend that loads
//! koherent while a statement runs (its first call of any koherent function is the guard of
//! that statement) cannot know what that statement, or one of its callers, is:
//! [`current`] then says [`Running::Unknown`] and the guard decides from the top-level portal.
//! `session_preload_libraries = 'koherent'` loads it before any statement.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The command type of the innermost statement in a hooked `ExecutorRun`, and how many
    /// hooked runs are open.
    static INNERMOST: Cell<(pg_sys::CmdType::Type, u32)> =
        const { Cell::new((pg_sys::CmdType::CMD_UNKNOWN, 0)) };
}

static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;

/// What is executing now, as far as this backend can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// The innermost statement being executed, of this command type.
    Command(pg_sys::CmdType::Type),
    /// Every statement running began before this library was loaded.
    Unknown,
}

pub fn current() -> Running {
    let (cmd, depth) = INNERMOST.with(|c| c.get());
    if depth == 0 {
        Running::Unknown
    } else {
        Running::Command(cmd)
    }
}

pub fn init() {
    unsafe {
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    let outer = INNERMOST.with(|c| c.get());
    INNERMOST.with(|c| c.set(((*query).operation, outer.1 + 1)));
    PgTryBuilder::new(|| match PREV_EXECUTOR_RUN {
        Some(prev) => {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev(query, direction, count, execute_once))
        }
        None => pg_sys::standard_ExecutorRun(query, direction, count, execute_once),
    })
    .finally(|| INNERMOST.with(|c| c.set(outer)))
    .execute()
}
