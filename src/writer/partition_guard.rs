//! The partition guard: a BEFORE UPDATE row trigger on the partitions of a tracked partitioned
//! table, for the moves between partitions that history would otherwise not see.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::ffi::CStr;

use super::plan::trigger_args;
use super::transition::{same_image, ComparedColumn};
use super::trigger_data;
use crate::catalog::{find_att, rel_name};
use crate::context;
use crate::error::KoherentError;
use crate::running::{self, Running};

/// What kind of statement moves a row, as the partition guard sees it.
#[derive(PartialEq, Eq)]
enum Mover {
    Merge,
    Other,
    /// The statement began before koherent was loaded in this backend (see [`running`]), and
    /// the top-level statement is neither a MERGE nor an UPDATE.
    Unknown,
}

/// The mover when [`running`] cannot tell. A statement nested in another (run by a PL/pgSQL or
/// SQL function, SPI, a foreign key's action) executes below an error context callback that its
/// caller pushed; the top-level statement's executor pushes none. So: with a callback on the
/// stack, the row is moved by a nested statement, which may be a MERGE whatever the top-level
/// statement is; without one, by the top-level statement itself, whose command the portal
/// names (MERGE, or UPDATE: anything else moving rows directly, such as EXPLAIN ANALYZE,
/// counts as unknown).
unsafe fn top_level_mover() -> Mover {
    if !pg_sys::error_context_stack.is_null() {
        return Mover::Unknown;
    }
    let portal = pg_sys::ActivePortal;
    if portal.is_null() {
        return Mover::Unknown;
    }
    match (*portal).commandTag {
        pg_sys::CommandTag::CMDTAG_MERGE => Mover::Merge,
        pg_sys::CommandTag::CMDTAG_UPDATE => Mover::Other,
        _ => Mover::Unknown,
    }
}

/// The name of an enabled BEFORE UPDATE row trigger of the guard's partition that fires after
/// the guard (triggers fire in name order): it could change the partition key of a row the
/// guard saw stay in place.
unsafe fn later_before_update_trigger(td: *mut pg_sys::TriggerData) -> Option<String> {
    let desc = (*(*td).tg_relation).trigdesc;
    if desc.is_null() {
        return None;
    }
    let me = (*td).tg_trigger;
    let my_name = CStr::from_ptr((*me).tgname);
    let wanted = (pg_sys::TRIGGER_TYPE_ROW
        | pg_sys::TRIGGER_TYPE_BEFORE
        | pg_sys::TRIGGER_TYPE_UPDATE) as i16;
    (0..(*desc).numtriggers as usize)
        .map(|i| (*desc).triggers.add(i))
        .find(|&t| {
            (*t).tgoid != (*me).tgoid
                && (*t).tgtype & wanted == wanted
                && (*t).tgenabled as u8 != pg_sys::TRIGGER_DISABLED
                && CStr::from_ptr((*t).tgname) > my_name
        })
        .map(|t| CStr::from_ptr((*t).tgname).to_string_lossy().into_owned())
}

/// A row trigger (BEFORE UPDATE FOR EACH ROW) on the partitions of a tracked partitioned table:
/// refuses a MERGE (at any depth: see [`running`]) that changes a partition key column.
/// PostgreSQL 15 gives the statement trigger of a MERGE that moves rows between partitions
/// empty transition tables, so such a move would be neither recorded nor checked for
/// require_task. An owner's BEFORE UPDATE trigger that fires after the guard could still move
/// the row: with one on the partition, every MERGE update of its rows is refused. Plain UPDATEs
/// that move rows are recorded, and left alone. A row moved by any statement of a table tracked
/// with require_task needs a task. Trigger arguments: `t`/`f` for require_task, then the
/// partition key columns of every level (`*`: a key has expressions, so any change of the row
/// counts).
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_merge_guard() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_merge_guard(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let td = trigger_data(fcinfo, "koherent._merge_guard");
    let new = (*td).tg_newtuple;
    let mover = match running::current() {
        Running::Command(pg_sys::CmdType::CMD_MERGE) => Mover::Merge,
        Running::Command(_) => Mover::Other,
        Running::Unknown => top_level_mover(),
    };
    let all_args = trigger_args((*td).tg_trigger);
    let require_task = all_args.first().is_some_and(|a| a == "t");
    if mover != Mover::Other && !new.is_null() {
        if let Some(trigger) = later_before_update_trigger(td) {
            let table = rel_name((*(*td).tg_relation).rd_id);
            match mover {
                Mover::Merge => KoherentError::MergeBehindTrigger { table, trigger }.raise(),
                _ => KoherentError::MoverUnknown { table }.raise(),
            }
        }
    }
    if (mover != Mover::Other || require_task) && !new.is_null() {
        let old = (*td).tg_trigtuple;
        let rel = (*td).tg_relation;
        let desc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let moved = all_args.iter().skip(1).any(|col| {
            if col == "*" {
                return true;
            }
            let Some(i) = find_att(&desc, col) else {
                return true;
            };
            let a = desc.get(i).expect("in range");
            let c = ComparedColumn {
                att: i,
                byval: a.attbyval,
                len: a.attlen,
            };
            let mut on = false;
            let mut nn = false;
            let attnum = (i + 1) as i32;
            let ov = pg_sys::heap_getattr(old, attnum, (*rel).rd_att, &mut on);
            let nv = pg_sys::heap_getattr(new, attnum, (*rel).rd_att, &mut nn);
            on != nn || (!on && !same_image(ov, nv, &c))
        });
        if moved && mover == Mover::Merge {
            KoherentError::MergeMovesRows {
                table: rel_name((*rel).rd_id),
            }
            .raise();
        }
        if moved && mover == Mover::Unknown {
            KoherentError::MoverUnknown {
                table: rel_name((*rel).rd_id),
            }
            .raise();
        }
        if moved && require_task {
            context::require_task((*rel).rd_id);
        }
    }
    pg_sys::Datum::from(new)
}
