//! The history trigger's plan per (trigger, event): which history table, and where each history
//! column's value comes from. Cached per backend, forgotten on relcache invalidations.
//!
//! The trigger's arguments, written by `koherent._install_triggers` (and rewritten on every DDL
//! that changes the table): the history table's name in schema `koherent_history`, `t`/`f` for
//! require_task, then the names of the recorded (live) columns. History columns are found by
//! name, so partitions whose column order differs from their parent's are handled.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

use super::transition::ComparedColumn;
use crate::catalog::{find_att, koherent_oids};
use crate::error::KoherentError;

thread_local! {
    /// Per (trigger, event): the plan. See [`HistoryPlan`].
    pub static PLANS: RefCell<HashMap<(pg_sys::Oid, u32), Rc<HistoryPlan>>> =
        RefCell::new(HashMap::new());
}

/// What one history trigger needs on every statement: the history table, the sequence, and
/// where each history column's value comes from. Built on the trigger's first statement in a
/// backend (name lookups, column matching by name) and kept until a relcache invalidation of
/// the tracked table (any DDL, and every change of its triggers, whose arguments carry the
/// recorded columns), of the history table or of the sequence. A plan is only used after the
/// history table is locked, so invalidations that came before are already applied.
pub struct HistoryPlan {
    /// The tracked table (or partition) the trigger is on.
    pub src: pg_sys::Oid,
    /// Its history table.
    pub hist: pg_sys::Oid,
    /// koherent.history_id_seq.
    pub seq: pg_sys::Oid,
    pub require_task: bool,
    /// Per history column, in the history table's order: where its value comes from.
    pub sources: Vec<ColumnSource>,
    /// The recorded columns, compared to find the rows an UPDATE changed.
    pub compared: Vec<ComparedColumn>,
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    PLANS.with(|p| {
        let mut p = p.borrow_mut();
        if relid == pg_sys::InvalidOid {
            p.clear();
        } else {
            p.retain(|_, t| t.src != relid && t.hist != relid && t.seq != relid);
        }
    });
}

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
}

fn out_of_sync(what: String) -> ! {
    KoherentError::HistoryOutOfSync(what).raise()
}

/// Where a history column's value comes from.
#[derive(Clone, Copy)]
pub enum ColumnSource {
    Null,
    HistoryId,
    Kind,
    Date,
    Context,
    /// The row image (after the change; before it for DELETE), source attribute index (0-based).
    Image(usize),
    /// The row before an UPDATE.
    Old(usize),
}

/// Match the history table's columns to their sources by name.
pub unsafe fn build_plan(
    srcrel: pg_sys::Relation,
    histrel: pg_sys::Relation,
    op: u32,
    args: &[String],
) -> HistoryPlan {
    let srcdesc = PgTupleDesc::from_pg_unchecked((*srcrel).rd_att);
    let histdesc = PgTupleDesc::from_pg_unchecked((*histrel).rd_att);
    let mut sources = vec![ColumnSource::Null; histdesc.len()];
    for (name, src) in [
        ("history_id", ColumnSource::HistoryId),
        ("history_kind", ColumnSource::Kind),
        ("history_date", ColumnSource::Date),
        ("history_context", ColumnSource::Context),
    ] {
        let i = find_att(&histdesc, name)
            .unwrap_or_else(|| out_of_sync(format!("the history table lacks column {name}")));
        sources[i] = src;
    }
    let mut compared = Vec::with_capacity(args.len() - 2);
    for col in &args[2..] {
        let s = find_att(&srcdesc, col).unwrap_or_else(|| {
            out_of_sync(format!(
                "recorded column \"{col}\" is missing from the table"
            ))
        });
        let h = find_att(&histdesc, col)
            .unwrap_or_else(|| out_of_sync(format!("history column \"{col}\" is missing")));
        sources[h] = ColumnSource::Image(s);
        if op == pg_sys::TRIGGER_EVENT_UPDATE {
            let o = find_att(&histdesc, &format!("old:{col}"))
                .unwrap_or_else(|| out_of_sync(format!("history column \"old:{col}\" is missing")));
            sources[o] = ColumnSource::Old(s);
        }
        let a = srcdesc.get(s).expect("in range");
        compared.push(ComparedColumn {
            att: s,
            byval: a.attbyval,
            len: a.attlen,
        });
    }
    HistoryPlan {
        src: (*srcrel).rd_id,
        hist: (*histrel).rd_id,
        seq: koherent_oids().history_id_seq,
        require_task: args[1] == "t",
        sources,
        compared,
    }
}

/// A trigger's arguments as strings.
pub unsafe fn trigger_args(trigger: *const pg_sys::Trigger) -> Vec<String> {
    (0..(*trigger).tgnargs as usize)
        .map(|i| {
            CStr::from_ptr(*(*trigger).tgargs.add(i))
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}
