//! The history writer: one C-level statement trigger for every tracked table.
//!
//! `koherent._history_trigger` fires AFTER INSERT / UPDATE / DELETE FOR EACH STATEMENT with
//! the statement's transition tables. It reads them straight from their tuplestores, forms one
//! history tuple per changed row and inserts them the way COPY does: in batches with
//! `table_multi_insert` (one WAL record per page, not per row), then index entries per tuple.
//! No SQL is planned or executed on this path, except the statement that writes the task row
//! the first time a task writes in this backend (see `context::row`).
//!
//! The rooms: [`plan`] (the trigger arguments, what each history column takes, the plan cache),
//! [`transition`] (reading transition tables, comparing values), [`ids`] (history id blocks),
//! [`partition_guard`] (rows moved between partitions); tuples go out through `crate::insert`.

mod ids;
mod partition_guard;
mod plan;
mod transition;

pub use ids::reserve_ids;
pub use plan::init;

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::rc::Rc;

use crate::catalog::{koherent_oids, rel_name, relation_oid};
use crate::context;
use crate::datum::palloc_copy;
use crate::error::{KoherentError, OrRaise};
use crate::insert::{Sink, BATCH};
use ids::IdBlock;
use plan::{build_plan, trigger_args, ColumnSource, PLANS};
use transition::{same_image, TransitionReader};

fn protocol(msg: impl Into<String>) -> ! {
    KoherentError::TriggerProtocol(msg.into()).raise()
}

/// The TriggerData of a call, or a trigger protocol error when `name` was not called as a trigger.
pub(crate) unsafe fn trigger_data(
    fcinfo: pg_sys::FunctionCallInfo,
    name: &str,
) -> *mut pg_sys::TriggerData {
    let td = (*fcinfo).context as *mut pg_sys::TriggerData;
    if td.is_null() || (*(td as *mut pg_sys::Node)).type_ != pg_sys::NodeTag::T_TriggerData {
        protocol(format!("{name} must be called as a trigger"));
    }
    td
}

/// The statement trigger that records history. See the module documentation.
#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_history_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_history_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let td = trigger_data(fcinfo, "koherent._history_trigger");
    let event = (*td).tg_event;
    if event & (pg_sys::TRIGGER_EVENT_ROW | pg_sys::TRIGGER_EVENT_BEFORE) != 0 {
        protocol("koherent._history_trigger must fire AFTER ... FOR EACH STATEMENT");
    }
    record(td, event & pg_sys::TRIGGER_EVENT_OPMASK);
    pg_sys::Datum::from(0usize)
}

unsafe fn record(td: *mut pg_sys::TriggerData, op: u32) {
    let (kind, image_store, old_store) = match op {
        pg_sys::TRIGGER_EVENT_INSERT => (c"CREATE", (*td).tg_newtable, std::ptr::null_mut()),
        pg_sys::TRIGGER_EVENT_DELETE => (c"DELETE", (*td).tg_oldtable, std::ptr::null_mut()),
        pg_sys::TRIGGER_EVENT_UPDATE => (c"UPDATE", (*td).tg_newtable, (*td).tg_oldtable),
        _ => protocol("koherent._history_trigger handles INSERT, UPDATE and DELETE"),
    };
    if image_store.is_null() || (op == pg_sys::TRIGGER_EVENT_UPDATE && old_store.is_null()) {
        protocol("koherent._history_trigger needs the statement's transition tables");
    }
    let rows = pg_sys::tuplestore_tuple_count(image_store);
    let srcrel = (*td).tg_relation;
    let relid = (*srcrel).rd_id;
    if op == pg_sys::TRIGGER_EVENT_UPDATE {
        // Old and new images are paired by position. They line up unless a row moved to another
        // partition and a BEFORE INSERT trigger there dropped it: its old image then has no new
        // one, and every later pair would be shifted. Refuse rather than record a lie.
        let old_rows = pg_sys::tuplestore_tuple_count(old_store);
        if old_rows != rows {
            KoherentError::UnpairedUpdate {
                table: rel_name(relid),
                old: old_rows,
                new: rows,
            }
            .raise();
        }
    }
    if rows == 0 {
        return;
    }
    let key = ((*(*td).tg_trigger).tgoid, op);
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // Find the plan, and lock the history table it writes to, without trusting a plan made
    // before the last DDL. Invalidations are only applied when a lock is taken, so: open the
    // history table the kept plan names (if any) with its lock, which applies every
    // invalidation sent before; if the plan survived that, it is current. Otherwise read the
    // trigger's arguments, look the history table up by name, lock that one (closing a wrong
    // one), and loop once more if that lock brought a current plan back; else build the plan
    // from the locked tables and keep it.
    let cached = PLANS.with(|p| p.borrow().get(&key).map(|t| t.hist));
    let mut rel = match cached {
        Some(oid) => pg_sys::try_table_open(oid, lock),
        None => std::ptr::null_mut(),
    };
    let tp = loop {
        // Locking the history table applied every invalidation sent before: a plan still kept
        // now is current.
        if !rel.is_null() {
            if let Some(tp) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
                if tp.hist == (*rel).rd_id {
                    break tp;
                }
            }
        }
        let args = trigger_args((*td).tg_trigger);
        if args.len() < 2 {
            protocol("koherent._history_trigger: missing arguments");
        }
        let histoid = relation_oid(&args[0], koherent_oids().history_schema).or_raise();
        if rel.is_null() || (*rel).rd_id != histoid {
            if !rel.is_null() {
                pg_sys::table_close(rel, lock);
            }
            rel = pg_sys::table_open(histoid, lock);
            if PLANS.with(|p| p.borrow().get(&key).is_some_and(|t| t.hist == histoid)) {
                continue;
            }
        }
        let tp = Rc::new(build_plan(srcrel, rel, op, &args));
        PLANS.with(|p| p.borrow_mut().insert(key, tp.clone()));
        break tp;
    };
    if tp.require_task {
        // Every write needs a task, also one whose changes record nothing (an UPDATE of excluded
        // columns only, or one that changes no value).
        context::require_task(relid);
    }
    let mut sink = Sink::open(rel, rows >= BATCH as i64);
    sink.set_kind(kind);
    let (sources, compared) = (&tp.sources, &tp.compared);

    let kind = pg_sys::Datum::from(pg_sys::cstring_to_text(kind.as_ptr()));
    let date = pg_sys::Datum::from(crate::running::statement_date());
    let mut context: Option<pg_sys::Datum> = None;
    let mut values = vec![pg_sys::Datum::from(0usize); sources.len()];
    let mut nulls = vec![true; sources.len()];
    let mut image = TransitionReader::new(image_store, (*srcrel).rd_att);
    let mut old =
        (!old_store.is_null()).then(|| TransitionReader::new(old_store, (*srcrel).rd_att));
    let mut ids = IdBlock {
        seqoid: tp.seq,
        rows,
        next: 0,
        left: 0,
    };

    while image.next() {
        if let Some(old) = old.as_mut() {
            // Old and new images are appended pairwise, so position pairs them, also when
            // the primary key changes.
            if !old.next() {
                KoherentError::Internal("transition tables of an UPDATE differ in length".into())
                    .raise();
            }
            let changed = compared.iter().any(|c| {
                let (a, an) = old.value(c.att);
                let (b, bn) = image.value(c.att);
                an != bn || (!an && !same_image(a, b, c))
            });
            if !changed {
                continue;
            }
        }
        let ctx = *context.get_or_insert_with(|| {
            let id = context::write_context(tp.require_task, relid);
            palloc_copy(id.as_bytes())
        });
        for (i, src) in sources.iter().enumerate() {
            let (v, n) = match *src {
                ColumnSource::Null => (pg_sys::Datum::from(0usize), true),
                ColumnSource::HistoryId => (pg_sys::Datum::from(ids.take()), false),
                ColumnSource::Kind => (kind, false),
                ColumnSource::Date => (date, false),
                ColumnSource::Context => (ctx, false),
                ColumnSource::Image(a) => image.value(a),
                ColumnSource::Old(a) => old.as_ref().expect("update").value(a),
            };
            values[i] = v;
            nulls[i] = n;
        }
        sink.push(&mut values, &mut nulls);
    }
    pg_sys::ExecDropSingleTupleTableSlot(image.slot);
    if let Some(o) = old {
        pg_sys::ExecDropSingleTupleTableSlot(o.slot);
    }
    sink.close();
}
