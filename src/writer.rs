//! The history writer: one C-level statement trigger for every tracked table.
//!
//! `koherent._history_trigger` fires AFTER INSERT / UPDATE / DELETE FOR EACH STATEMENT with
//! the statement's transition tables. It reads them straight from their tuplestores, forms one
//! history tuple per changed row and inserts them the way COPY does: in batches with
//! `table_multi_insert` (one WAL record per page, not per row), then index entries per tuple.
//! No SQL is planned or executed on this path except the transaction's context row, which
//! [`context::write_context`] writes once per transaction.
//!
//! Trigger arguments (written by `koherent._install_triggers`, rewritten on every DDL that
//! changes the table): the history table's name in schema `koherent_history`, `t`/`f` for
//! require_task, then the names of the live (recorded) columns. History columns are found by
//! name, so partitions whose column order differs from their parent's are handled.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::rc::Rc;

use crate::context;
use crate::error::KoherentError;
use crate::running::{self, Running};

thread_local! {
    /// Per BRIN index of a history table: the block up to which this backend found every range
    /// summarized.
    static SUMMARIZED: RefCell<HashMap<pg_sys::Oid, u32>> = RefCell::new(HashMap::new());
    /// Per (trigger, event): what the writer needs to know of its tables. See [`TriggerPlan`].
    static PLANS: RefCell<HashMap<(pg_sys::Oid, u32), Rc<TriggerPlan>>> =
        RefCell::new(HashMap::new());
    /// The oids of schema koherent_history, koherent.history_id_seq and
    /// koherent.transaction_auth_context, when known.
    static NAMES: Cell<Option<(pg_sys::Oid, pg_sys::Oid, pg_sys::Oid)>> = const { Cell::new(None) };
}

/// What one history trigger needs on every statement: the history table, the sequence, and
/// where each history column's value comes from. Built on the trigger's first statement in a
/// backend (name lookups, column matching by name) and kept until a relcache invalidation of
/// the tracked table (any DDL, and every change of its triggers, whose arguments carry the
/// recorded columns), of the history table or of the sequence. A plan is only used after the
/// history table is locked, so invalidations that came before are already applied.
struct TriggerPlan {
    src: pg_sys::Oid,
    hist: pg_sys::Oid,
    seq: pg_sys::Oid,
    require_task: bool,
    plan: Vec<Source>,
    compared: Vec<Compared>,
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
    if relid == pg_sys::InvalidOid
        || NAMES
            .with(|n| n.get())
            .is_some_and(|(_, seq, ctx)| seq == relid || ctx == relid)
    {
        NAMES.with(|n| n.set(None));
    }
}

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
}

/// Rows buffered per `table_multi_insert` call (COPY uses 1000 too).
const BATCH: usize = 1000;

const TRIGGER_EVENT_OPMASK: u32 = 0x3;
const TRIGGER_EVENT_INSERT: u32 = 0x0;
const TRIGGER_EVENT_DELETE: u32 = 0x1;
const TRIGGER_EVENT_UPDATE: u32 = 0x2;
const TRIGGER_EVENT_ROW: u32 = 0x4;
const TRIGGER_EVENT_BEFORE: u32 = 0x8;

/// Where a history column's value comes from.
#[derive(Clone, Copy)]
enum Source {
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

/// A recorded source column: index and the facts needed to compare two values of it.
struct Compared {
    att: usize,
    byval: bool,
    len: i16,
}

fn internal(msg: impl Into<String>) -> ! {
    KoherentError::Internal(msg.into()).raise()
}

unsafe fn att_name(att: &pg_sys::FormData_pg_attribute) -> &str {
    CStr::from_ptr(att.attname.data.as_ptr())
        .to_str()
        .unwrap_or("")
}

unsafe fn find_att(desc: &PgTupleDesc, name: &str) -> Option<usize> {
    (0..desc.len()).find(|&i| {
        let a = desc.get(i).expect("in range");
        !a.attisdropped && att_name(a) == name
    })
}

/// Binary equality of two non-null values of one type (what `record_image_eq` compares).
unsafe fn image_eq(a: pg_sys::Datum, b: pg_sys::Datum, c: &Compared) -> bool {
    if c.byval {
        return a == b;
    }
    if a == b {
        return true;
    }
    match c.len {
        -1 => {
            let (pa, pb) = (a.cast_mut_ptr::<pg_sys::varlena>(), b.cast_mut_ptr());
            if pg_sys::toast_raw_datum_size(a) != pg_sys::toast_raw_datum_size(b) {
                return false;
            }
            let (da, db) = (
                pg_sys::pg_detoast_datum_packed(pa),
                pg_sys::pg_detoast_datum_packed(pb),
            );
            let (la, lb) = (pgrx::varsize_any_exhdr(da), pgrx::varsize_any_exhdr(db));
            la == lb
                && std::slice::from_raw_parts(pgrx::vardata_any(da) as *const u8, la)
                    == std::slice::from_raw_parts(pgrx::vardata_any(db) as *const u8, lb)
        }
        -2 => CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr()),
        n => {
            let n = n as usize;
            std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), n)
                == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), n)
        }
    }
}

/// A reader over a transition table (its own read pointer, from the start).
struct Reader {
    store: *mut pg_sys::Tuplestorestate,
    ptr: i32,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Reader {
    unsafe fn new(store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc) -> Reader {
        let ptr = pg_sys::tuplestore_alloc_read_pointer(store, 0);
        pg_sys::tuplestore_select_read_pointer(store, ptr);
        pg_sys::tuplestore_rescan(store);
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
        Reader { store, ptr, slot }
    }

    /// The next row, deformed (valid until the next call).
    unsafe fn next(&mut self) -> bool {
        pg_sys::tuplestore_select_read_pointer(self.store, self.ptr);
        if !pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot) {
            return false;
        }
        pg_sys::slot_getallattrs(self.slot);
        true
    }

    unsafe fn value(&self, att: usize) -> (pg_sys::Datum, bool) {
        (
            *(*self.slot).tts_values.add(att),
            *(*self.slot).tts_isnull.add(att),
        )
    }
}

/// The history table, its indexes and the slots of the batch being written.
struct Sink {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    batch_cxt: pg_sys::MemoryContext,
    bistate: pg_sys::BulkInsertState,
    cid: pg_sys::CommandId,
}

/// brin.h's BrinOptions (the parsed reloptions of a BRIN index).
#[cfg(not(feature = "pg15"))]
#[repr(C)]
struct BrinOptions {
    vl_len: i32,
    pages_per_range: u32,
    autosummarize: bool,
}

impl Sink {
    /// `rel`: the table, opened with RowExclusiveLock (closed by `close`).
    unsafe fn open(rel: pg_sys::Relation, bulk: bool) -> Sink {
        let estate = pg_sys::CreateExecutorState();
        let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
            as *mut pg_sys::ResultRelInfo;
        (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(rri, false);
        let batch_cxt = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"koherent history batch".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as _,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as _,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as _,
        );
        Sink {
            rel,
            estate,
            rri,
            slots: Vec::new(),
            used: 0,
            batch_cxt,
            bistate: if bulk {
                pg_sys::GetBulkInsertState()
            } else {
                std::ptr::null_mut()
            },
            cid: pg_sys::GetCurrentCommandId(true),
        }
    }

    /// Form a tuple from `values` / `nulls` and buffer it; writes the batch when full.
    unsafe fn push(&mut self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        if self.used == self.slots.len() {
            self.slots.push(pg_sys::MakeSingleTupleTableSlot(
                (*self.rel).rd_att,
                &pg_sys::TTSOpsHeapTuple,
            ));
        }
        let old = pg_sys::MemoryContextSwitchTo(self.batch_cxt);
        let tuple =
            pg_sys::heap_form_tuple((*self.rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::MemoryContextSwitchTo(old);
        // The slot owns the tuple (freed when the batch's slots are cleared, before the
        // batch context is reset): heap_multi_insert then finds it materialized, no copy.
        pg_sys::ExecStoreHeapTuple(tuple, self.slots[self.used], true);
        self.used += 1;
        if self.used == BATCH {
            self.flush();
        }
    }

    unsafe fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        pg_sys::table_multi_insert(
            self.rel,
            self.slots.as_mut_ptr(),
            self.used as _,
            self.cid,
            0,
            self.bistate,
        );
        insert_index_entries(self.rri, &self.slots[..self.used], self.estate);
        for &slot in &self.slots[..self.used] {
            pg_sys::ExecClearTuple(slot);
        }
        let econtext = (*self.estate).es_per_tuple_exprcontext;
        if !econtext.is_null() {
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
        }
        pg_sys::MemoryContextReset(self.batch_cxt);
        self.used = 0;
    }

    unsafe fn close(mut self) {
        self.flush();
        for &slot in &self.slots {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        if !self.bistate.is_null() {
            pg_sys::FreeBulkInsertState(self.bistate);
        }
        pg_sys::ExecCloseIndices(self.rri);
        pg_sys::FreeExecutorState(self.estate);
        pg_sys::MemoryContextDelete(self.batch_cxt);
        pg_sys::table_close(self.rel, pg_sys::RowExclusiveLock as _);
    }
}

/// Insert one row into a table of the extension without SQL: no plan, no executor start and no
/// permission check (the caller is the extension, in its SECURITY DEFINER trigger). Values are
/// given by column name; a column not given is null, and a NOT NULL column not given is an
/// internal error. Index entries go through `ExecInsertIndexTuples`, which checks unique and
/// partial indexes.
pub(crate) unsafe fn insert_row(relid: pg_sys::Oid, columns: &[(&str, Option<pg_sys::Datum>)]) {
    let mut sink = Sink::open(
        pg_sys::table_open(relid, pg_sys::RowExclusiveLock as _),
        false,
    );
    let desc = PgTupleDesc::from_pg_unchecked((*sink.rel).rd_att);
    let mut values = vec![pg_sys::Datum::from(0usize); desc.len()];
    let mut nulls = vec![true; desc.len()];
    for &(name, value) in columns {
        let Some(i) = find_att(&desc, name) else {
            if value.is_none() {
                continue; // a column the table's (older) schema does not have, and no value
            }
            internal(format!("column {name} is missing"))
        };
        if let Some(v) = value {
            values[i] = v;
            nulls[i] = false;
        }
    }
    for (i, null) in nulls.iter().enumerate() {
        let a = desc.get(i).expect("in range");
        if *null && a.attnotnull && !a.attisdropped {
            internal(format!("no value for NOT NULL column {}", att_name(a)));
        }
    }
    drop(desc);
    sink.push(&mut values, &mut nulls);
    sink.close();
}

/// Summarize the BRIN ranges of a history table that are complete (the table has grown past
/// them) and have no summary yet. The writer never does this: summarizing reads every tuple of
/// a range again (a quarter of what history costs a bulk INSERT), so it is left to VACUUM
/// (autovacuum's insert-driven runs summarize new ranges in the background) and to the readers
/// that look history up by BRIN (`koherent.task_changes`), which call this first so that they
/// never scan a long unsummarized tail. Each backend remembers up to where it found every range
/// summarized (ranges stay summarized), so a call with nothing new costs a revmap lookup or
/// two. Skipped, not waited for, while VACUUM or another backend holds the summarization lock,
/// and on a standby or in a read-only transaction: the BRIN index then answers as always, with
/// the unsummarized ranges read whole. The range still being filled is left alone: summarizing
/// it would make every later insert into it rewrite its summary.
pub(crate) unsafe fn summarize_history(heap: pg_sys::Oid) {
    if pg_sys::RecoveryInProgress() || pg_sys::XactReadOnly {
        return;
    }
    let rel = pg_sys::try_table_open(heap, pg_sys::AccessShareLock as _);
    if rel.is_null() {
        return;
    }
    // brin_summarize_range wants the index's owner (task_changes runs as the extension's)
    if !pg_sys::superuser() && (*(*rel).rd_rel).relowner != pg_sys::GetUserId() {
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        return;
    }
    let nblocks = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
    let list = pg_sys::RelationGetIndexList(rel);
    let mut locked = false;
    let n = if list.is_null() { 0 } else { (*list).length };
    for k in 0..n {
        let ioid = pg_sys::list_nth_oid(list, k);
        let index = pg_sys::index_open(ioid, pg_sys::AccessShareLock as _);
        if (*(*index).rd_rel).relam == pg_sys::BRIN_AM_OID {
            locked = summarize_index(heap, index, nblocks, locked);
        }
        pg_sys::index_close(index, pg_sys::AccessShareLock as _);
    }
    if locked {
        pg_sys::UnlockRelationOid(heap, pg_sys::ShareUpdateExclusiveLock as _);
    }
    pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
}

/// summarize_history for one BRIN index of `heap` (`nblocks` long); `locked`: whether this
/// backend already holds the summarization lock. Returns whether it holds it now.
unsafe fn summarize_index(
    heap: pg_sys::Oid,
    index: pg_sys::Relation,
    nblocks: pg_sys::BlockNumber,
    mut locked: bool,
) -> bool {
    let ioid = (*index).rd_id;
    let (revmap, ppr) = revmap_open(index);
    if nblocks > ppr {
        let mut start = match SUMMARIZED
            .with(|m| m.borrow().get(&ioid).copied())
            .filter(|&d| d < nblocks)
        {
            Some(d) => d,
            None => {
                // This backend's first look: VACUUM and earlier readers summarize from the
                // start, so what is left is a tail. Find where it begins, walking back from the
                // last complete range. (A range left behind earlier, when the lock was busy, is
                // VACUUM's; it costs lookups time, never answers.)
                let last = (nblocks - 1) / ppr * ppr - ppr;
                let mut s = last as i64;
                while s >= 0 && !range_has_summary(revmap, s as u32) {
                    s -= i64::from(ppr);
                }
                (s + i64::from(ppr)) as u32
            }
        };
        while start + ppr < nblocks {
            if !range_has_summary(revmap, start) {
                if !locked {
                    if !pg_sys::ConditionalLockRelationOid(
                        heap,
                        pg_sys::ShareUpdateExclusiveLock as _,
                    ) {
                        break;
                    }
                    locked = true;
                }
                pg_sys::DirectFunctionCall2Coll(
                    Some(ffi::brin_summarize_range),
                    pg_sys::InvalidOid,
                    pg_sys::Datum::from(ioid),
                    pg_sys::Datum::from(i64::from(start)),
                );
            }
            start += ppr;
            SUMMARIZED.with(|m| m.borrow_mut().insert(ioid, start));
        }
    }
    revmap_close(revmap);
    locked
}

unsafe fn block_of(slot: *mut pg_sys::TupleTableSlot) -> u32 {
    let b = (*slot).tts_tid.ip_blkid;
    (u32::from(b.bi_hi) << 16) | u32::from(b.bi_lo)
}

/// Index entries for a batch of history tuples already in the heap.
///
/// PostgreSQL 15: per index, per tuple, as `ExecInsertIndexTuples` would, except that a BRIN
/// index is not called for tuples whose block range has no summary yet: `brininsert` would
/// only look that up and return (paying a revmap initialization per tuple), so it is looked up
/// once per range and batch here. This is safe because the tuples are already in the heap: a
/// summarization that has not placed its placeholder in the revmap when we look will scan
/// them; one that has is seen as a summary, and then its tuples are inserted as usual.
#[cfg(feature = "pg15")]
unsafe fn insert_index_entries(
    rri: *mut pg_sys::ResultRelInfo,
    slots: &[*mut pg_sys::TupleTableSlot],
    estate: *mut pg_sys::EState,
) {
    // Indexes koherent does not make (an admin's partial, unique or exclusion index) take the
    // executor's general path, which checks predicates and constraints.
    let plain = (0..(*rri).ri_NumIndices as usize).all(|i| {
        let info = *(*rri).ri_IndexRelationInfo.add(i);
        (*info).ii_Predicate.is_null() && !(*info).ii_Unique && (*info).ii_ExclusionOps.is_null()
    });
    if !plain {
        return exec_insert_index_tuples(rri, slots, estate);
    }
    let heap = (*rri).ri_RelationDesc;
    let econtext = pg_sys::MakePerTupleExprContext(estate);
    let mut values = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
    let mut isnull = [false; pg_sys::INDEX_MAX_KEYS as usize];
    for i in 0..(*rri).ri_NumIndices as usize {
        let index = *(*rri).ri_IndexRelationDescs.add(i);
        let info = *(*rri).ri_IndexRelationInfo.add(i);
        let brin = (*(*index).rd_rel).relam == pg_sys::BRIN_AM_OID;
        let mut revmap: Option<(*mut std::ffi::c_void, pg_sys::BlockNumber)> = None;
        let mut ranges: Vec<(u32, bool)> = Vec::new();
        for &slot in slots {
            if brin {
                let (map, ppr) = *revmap.get_or_insert_with(|| revmap_open(index));
                let start = block_of(slot) / ppr * ppr;
                let summarized = match ranges.iter().find(|(s, _)| *s == start) {
                    Some(&(_, known)) => known,
                    None => {
                        let known = range_has_summary(map, start);
                        ranges.push((start, known));
                        known
                    }
                };
                if !summarized {
                    continue;
                }
            }
            (*econtext).ecxt_scantuple = slot;
            pg_sys::FormIndexDatum(info, slot, estate, values.as_mut_ptr(), isnull.as_mut_ptr());
            pg_sys::index_insert(
                index,
                values.as_mut_ptr(),
                isnull.as_mut_ptr(),
                &mut (*slot).tts_tid,
                heap,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO,
                false,
                info,
            );
        }
        if let Some((map, _)) = revmap {
            revmap_close(map);
        }
    }
}

/// A BRIN index's revmap, and its pages per range (from the index's metapage).
#[cfg(feature = "pg15")]
unsafe fn revmap_open(index: pg_sys::Relation) -> (*mut std::ffi::c_void, pg_sys::BlockNumber) {
    let mut ppr: pg_sys::BlockNumber = 0;
    let revmap = pg_sys::ffi::pg_guard_ffi_boundary(|| {
        ffi::brinRevmapInitialize(index, &mut ppr, std::ptr::null_mut())
    });
    (revmap, ppr)
}

#[cfg(feature = "pg15")]
unsafe fn revmap_close(revmap: *mut std::ffi::c_void) {
    pg_sys::ffi::pg_guard_ffi_boundary(|| ffi::brinRevmapTerminate(revmap));
}

/// Other versions (their brin_revmap.h is not declared here): every complete range is handed
/// to brin_summarize_range, which returns at once for a range that has a summary (a backend's
/// first call walks the whole index that way; later calls start where it stopped).
#[cfg(not(feature = "pg15"))]
unsafe fn revmap_open(index: pg_sys::Relation) -> (*mut std::ffi::c_void, pg_sys::BlockNumber) {
    let opts = (*index).rd_options as *const BrinOptions;
    let ppr = if opts.is_null() {
        128
    } else {
        (*opts).pages_per_range.max(1)
    };
    (std::ptr::NonNull::dangling().as_ptr(), ppr)
}

#[cfg(not(feature = "pg15"))]
unsafe fn revmap_close(_revmap: *mut std::ffi::c_void) {}

#[cfg(not(feature = "pg15"))]
unsafe fn range_has_summary(_revmap: *mut std::ffi::c_void, _start: u32) -> bool {
    false
}

/// Whether the BRIN range starting at `start` has a summary (or a summarization's placeholder).
#[cfg(feature = "pg15")]
unsafe fn range_has_summary(revmap: *mut std::ffi::c_void, start: u32) -> bool {
    let mut buf: pg_sys::Buffer = 0;
    let mut off: pg_sys::OffsetNumber = 0;
    let tuple = pg_sys::ffi::pg_guard_ffi_boundary(|| {
        ffi::brinGetTupleForHeapBlock(
            revmap,
            start,
            &mut buf,
            &mut off,
            std::ptr::null_mut(),
            pg_sys::BUFFER_LOCK_SHARE as _,
            std::ptr::null_mut(),
        )
    });
    if !tuple.is_null() {
        pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_UNLOCK as _);
    }
    if buf != 0 {
        pg_sys::ReleaseBuffer(buf);
    }
    !tuple.is_null()
}

/// Other versions: `ExecInsertIndexTuples` per tuple.
#[cfg(not(feature = "pg15"))]
unsafe fn insert_index_entries(
    rri: *mut pg_sys::ResultRelInfo,
    slots: &[*mut pg_sys::TupleTableSlot],
    estate: *mut pg_sys::EState,
) {
    exec_insert_index_tuples(rri, slots, estate)
}

/// `ExecInsertIndexTuples` per tuple (its signature differs per version).
unsafe fn exec_insert_index_tuples(
    rri: *mut pg_sys::ResultRelInfo,
    slots: &[*mut pg_sys::TupleTableSlot],
    estate: *mut pg_sys::EState,
) {
    for &slot in slots {
        #[cfg(feature = "pg13")]
        {
            (*estate).es_result_relation_info = rri;
            pg_sys::ExecInsertIndexTuples(
                slot,
                estate,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        pg_sys::ExecInsertIndexTuples(
            rri,
            slot,
            estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        #[cfg(any(feature = "pg16", feature = "pg17"))]
        pg_sys::ExecInsertIndexTuples(
            rri,
            slot,
            estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            false,
        );
    }
}

mod ffi {
    use pgrx::pg_sys;
    extern "C-unwind" {
        // commands/sequence.h; not in pgrx's bindings.
        pub fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
        // access/brin.h; pgrx binds a Rust wrapper, DirectFunctionCall needs the C symbol.
        pub fn brin_summarize_range(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
        // commands/sequence.h, the C symbol of setval(regclass, bigint).
        pub fn setval_oid(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
        // access/brin_revmap.h (PostgreSQL 15 signatures; BrinRevmap is opaque).
        #[cfg(feature = "pg15")]
        pub fn brinRevmapInitialize(
            idxrel: pg_sys::Relation,
            pages_per_range: *mut pg_sys::BlockNumber,
            snapshot: pg_sys::Snapshot,
        ) -> *mut std::ffi::c_void;
        #[cfg(feature = "pg15")]
        pub fn brinRevmapTerminate(revmap: *mut std::ffi::c_void);
        #[cfg(feature = "pg15")]
        pub fn brinGetTupleForHeapBlock(
            revmap: *mut std::ffi::c_void,
            heap_blk: pg_sys::BlockNumber,
            buf: *mut pg_sys::Buffer,
            off: *mut pg_sys::OffsetNumber,
            size: *mut pg_sys::Size,
            mode: std::ffi::c_int,
            snapshot: pg_sys::Snapshot,
        ) -> *mut std::ffi::c_void;
    }
}

/// History ids from `koherent.history_id_seq`, in the order rows are recorded. A statement
/// reserves the block of consecutive ids it needs at once (nextval, then setval to the block's
/// end) instead of paying one nextval per row; rows that do not change (UPDATE) leave gaps: ids
/// are unique and increasing, never dense.
///
/// Every allocation of history ids, here and from SQL (`koherent._next_history_id()`), happens
/// under [`IdLock`]: a ShareUpdateExclusiveLock on the sequence held for the few microseconds
/// of the nextval/setval pair. That mode conflicts with itself (so no other allocation can fall
/// inside a block between its nextval and its setval) and not with the RowExclusiveLock that
/// nextval leaves on the sequence until the end of its transaction: a reservation never waits
/// for another transaction, however long it stays open.
struct Ids {
    seqoid: pg_sys::Oid,
    rows: i64,
    next: i64,
    left: i64,
}

/// The allocation lock (see [`Ids`]), released on drop. An ERROR unwinding past it leaves the
/// lock to the transaction's abort, which releases every lock.
struct IdLock(pg_sys::Oid);

impl IdLock {
    unsafe fn take(seqoid: pg_sys::Oid) -> IdLock {
        pg_sys::LockRelationOid(seqoid, pg_sys::ShareUpdateExclusiveLock as _);
        IdLock(seqoid)
    }
}

impl Drop for IdLock {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            unsafe { pg_sys::UnlockRelationOid(self.0, pg_sys::ShareUpdateExclusiveLock as _) };
        }
    }
}

/// Reserve `n` (>= 1) consecutive history ids under the allocation lock; returns the first.
pub(crate) unsafe fn reserve_ids(seqoid: pg_sys::Oid, n: i64) -> i64 {
    let _lock = IdLock::take(seqoid);
    // (no permission check: the writer is the extension)
    let first = pg_sys::ffi::pg_guard_ffi_boundary(|| ffi::nextval_internal(seqoid, false));
    if n > 1 {
        pg_sys::DirectFunctionCall2Coll(
            Some(ffi::setval_oid),
            pg_sys::InvalidOid,
            pg_sys::Datum::from(seqoid),
            pg_sys::Datum::from(first + n - 1),
        );
    }
    first
}

impl Ids {
    unsafe fn take(&mut self) -> i64 {
        if self.left == 0 {
            let n = self.rows.max(1);
            self.next = reserve_ids(self.seqoid, n);
            self.left = n;
            self.rows = 0;
        }
        let id = self.next;
        self.next += 1;
        self.left -= 1;
        id
    }
}

/// The oids of schema koherent_history, koherent.history_id_seq and
/// koherent.transaction_auth_context (cached; a relcache invalidation of either table forgets
/// them, as dropping the extension does).
pub(crate) unsafe fn names() -> (pg_sys::Oid, pg_sys::Oid, pg_sys::Oid) {
    if let Some(n) = NAMES.with(|n| n.get()) {
        return n;
    }
    let koherent = namespace_oid(c"koherent");
    let n = (
        namespace_oid(c"koherent_history"),
        relation_oid("history_id_seq", koherent),
        relation_oid("transaction_auth_context", koherent),
    );
    NAMES.with(|c| c.set(Some(n)));
    n
}

/// Match the history table's columns to their sources by name.
unsafe fn build_plan(
    srcrel: pg_sys::Relation,
    histrel: pg_sys::Relation,
    op: u32,
    args: &[String],
) -> TriggerPlan {
    let srcdesc = PgTupleDesc::from_pg_unchecked((*srcrel).rd_att);
    let histdesc = PgTupleDesc::from_pg_unchecked((*histrel).rd_att);
    let mut plan = vec![Source::Null; histdesc.len()];
    for (name, src) in [
        ("history_id", Source::HistoryId),
        ("history_kind", Source::Kind),
        ("history_date", Source::Date),
        ("history_context", Source::Context),
    ] {
        let i = find_att(&histdesc, name)
            .unwrap_or_else(|| internal(format!("history table lacks {name}")));
        plan[i] = src;
    }
    let mut compared = Vec::with_capacity(args.len() - 2);
    for col in &args[2..] {
        let s = find_att(&srcdesc, col).unwrap_or_else(|| {
            internal(format!(
                "recorded column \"{col}\" is missing from the table; run koherent.track() again"
            ))
        });
        let h = find_att(&histdesc, col)
            .unwrap_or_else(|| internal(format!("history column \"{col}\" is missing")));
        plan[h] = Source::Image(s);
        if op == TRIGGER_EVENT_UPDATE {
            let o = find_att(&histdesc, &format!("old:{col}"))
                .unwrap_or_else(|| internal(format!("history column \"old:{col}\" is missing")));
            plan[o] = Source::Old(s);
        }
        let a = srcdesc.get(s).expect("in range");
        compared.push(Compared {
            att: s,
            byval: a.attbyval,
            len: a.attlen,
        });
    }
    TriggerPlan {
        src: (*srcrel).rd_id,
        hist: (*histrel).rd_id,
        seq: names().1,
        require_task: args[1] == "t",
        plan,
        compared,
    }
}

unsafe fn trigger_args(trigger: *const pg_sys::Trigger) -> Vec<String> {
    (0..(*trigger).tgnargs as usize)
        .map(|i| {
            CStr::from_ptr(*(*trigger).tgargs.add(i))
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

unsafe fn namespace_oid(name: &CStr) -> pg_sys::Oid {
    pg_sys::get_namespace_oid(name.as_ptr(), false)
}

unsafe fn relation_oid(name: &str, nsp: pg_sys::Oid) -> pg_sys::Oid {
    let c = CString::new(name).unwrap_or_else(|_| internal("bad relation name"));
    let oid = pg_sys::get_relname_relid(c.as_ptr(), nsp);
    if oid == pg_sys::InvalidOid {
        internal(format!(
            "history relation \"{name}\" is missing; run koherent.track() on the table again"
        ));
    }
    oid
}

/// The TriggerData of a call, or an internal error when `name` was not called as a trigger.
unsafe fn trigger_data(fcinfo: pg_sys::FunctionCallInfo, name: &str) -> *mut pg_sys::TriggerData {
    let td = (*fcinfo).context as *mut pg_sys::TriggerData;
    if td.is_null() || (*(td as *mut pg_sys::Node)).type_ != pg_sys::NodeTag::T_TriggerData {
        internal(format!("{name} must be called as a trigger"));
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
    if event & (TRIGGER_EVENT_ROW | TRIGGER_EVENT_BEFORE) != 0 {
        internal("koherent._history_trigger must fire AFTER ... FOR EACH STATEMENT");
    }
    record(td, event & TRIGGER_EVENT_OPMASK);
    pg_sys::Datum::from(0usize)
}

unsafe fn record(td: *mut pg_sys::TriggerData, op: u32) {
    let (kind, image_store, old_store) = match op {
        TRIGGER_EVENT_INSERT => (c"CREATE", (*td).tg_newtable, std::ptr::null_mut()),
        TRIGGER_EVENT_DELETE => (c"DELETE", (*td).tg_oldtable, std::ptr::null_mut()),
        TRIGGER_EVENT_UPDATE => (c"UPDATE", (*td).tg_newtable, (*td).tg_oldtable),
        _ => internal("koherent._history_trigger handles INSERT, UPDATE and DELETE"),
    };
    if image_store.is_null() || (op == TRIGGER_EVENT_UPDATE && old_store.is_null()) {
        internal("koherent._history_trigger needs the statement's transition tables");
    }
    let rows = pg_sys::tuplestore_tuple_count(image_store);
    let srcrel = (*td).tg_relation;
    let relid = (*srcrel).rd_id;
    if op == TRIGGER_EVENT_UPDATE {
        // Old and new images are paired by position. They line up unless a row moved to another
        // partition and a BEFORE INSERT trigger there dropped it: its old image then has no new
        // one, and every later pair would be shifted. Refuse rather than record a lie.
        let old_rows = pg_sys::tuplestore_tuple_count(old_store);
        if old_rows != rows {
            KoherentError::UnpairedUpdate {
                table: context::rel_name(relid),
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
    // The history table: as the kept plan knows it, else by name.
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
            internal("koherent._history_trigger: missing arguments");
        }
        let histoid = relation_oid(&args[0], names().0);
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
    let (plan, compared) = (&tp.plan, &tp.compared);

    let kind = pg_sys::Datum::from(pg_sys::cstring_to_text(kind.as_ptr()));
    let date = pg_sys::Datum::from(pg_sys::GetCurrentStatementStartTimestamp());
    let mut context: Option<pg_sys::Datum> = None;
    let mut values = vec![pg_sys::Datum::from(0usize); plan.len()];
    let mut nulls = vec![true; plan.len()];
    let mut image = Reader::new(image_store, (*srcrel).rd_att);
    let mut old = (!old_store.is_null()).then(|| Reader::new(old_store, (*srcrel).rd_att));
    let mut ids = Ids {
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
                internal("transition tables of an UPDATE differ in length");
            }
            let changed = compared.iter().any(|c| {
                let (a, an) = old.value(c.att);
                let (b, bn) = image.value(c.att);
                an != bn || (!an && !image_eq(a, b, c))
            });
            if !changed {
                continue;
            }
        }
        let ctx = *context.get_or_insert_with(|| {
            let id = context::write_context(tp.require_task, relid);
            context::palloc_copy(id.as_bytes())
        });
        for (i, src) in plan.iter().enumerate() {
            let (v, n) = match *src {
                Source::Null => (pg_sys::Datum::from(0usize), true),
                Source::HistoryId => (pg_sys::Datum::from(ids.take()), false),
                Source::Kind => (kind, false),
                Source::Date => (date, false),
                Source::Context => (ctx, false),
                Source::Image(a) => image.value(a),
                Source::Old(a) => old.as_ref().expect("update").value(a),
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

/// What kind of statement moves a row, as the partition guard sees it.
#[derive(PartialEq, Eq)]
enum Mover {
    Merge,
    Other,
    /// The statement began before koherent was loaded in this backend (see [`running`]), and
    /// the top-level statement is neither a MERGE nor an UPDATE.
    Unknown,
}

/// The mover when [`running`] cannot tell: the top-level statement, if it is a MERGE or an
/// UPDATE, moves the row itself; anything else (a DO block, a CALL, a SELECT of a function,
/// EXPLAIN ANALYZE) runs a statement that may be a MERGE.
unsafe fn top_level_mover() -> Mover {
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

/// A row trigger (BEFORE UPDATE FOR EACH ROW) on the partitions of a tracked partitioned table:
/// refuses a MERGE (at any depth: see [`running`]) that changes a partition key column.
/// PostgreSQL 15 gives the statement trigger of a MERGE that moves rows between partitions
/// empty transition tables, so such a move would be neither recorded nor checked for
/// require_task. Plain UPDATEs that move rows are recorded, and left alone. A row moved by any
/// statement of a table tracked with require_task needs a task. Trigger arguments: `t`/`f` for require_task, then the partition key columns of every
/// level (`*`: a key has expressions, so any change of the row counts).
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
            let c = Compared {
                att: i,
                byval: a.attbyval,
                len: a.attlen,
            };
            let mut on = false;
            let mut nn = false;
            let attnum = (i + 1) as i32;
            let ov = pg_sys::heap_getattr(old, attnum, (*rel).rd_att, &mut on);
            let nv = pg_sys::heap_getattr(new, attnum, (*rel).rd_att, &mut nn);
            on != nn || (!on && !image_eq(ov, nv, &c))
        });
        if moved && mover == Mover::Merge {
            KoherentError::MergeMovesRows {
                table: context::rel_name((*rel).rd_id),
            }
            .raise();
        }
        if moved && mover == Mover::Unknown {
            KoherentError::MoverUnknown {
                table: context::rel_name((*rel).rd_id),
            }
            .raise();
        }
        if moved && require_task {
            context::require_task((*rel).rd_id);
        }
    }
    pg_sys::Datum::from(new)
}
