//! Inserting tuples into koherent's tables without SQL, the way COPY does: [`Sink`] buffers
//! tuples and writes them in batches with `table_multi_insert` (one WAL record per page, not per
//! row), then their index entries ([`index`]). [`row`] inserts one row by column name.

pub mod index;
pub mod row;

use pgrx::pg_sys;

/// Rows buffered per `table_multi_insert` call (COPY uses 1000 too).
pub const BATCH: usize = 1000;

/// The history table, its indexes and the slots of the batch being written.
pub struct Sink {
    pub rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    batch_cxt: pg_sys::MemoryContext,
    bistate: pg_sys::BulkInsertState,
    cid: pg_sys::CommandId,
}

impl Sink {
    /// `rel`: the table, opened with RowExclusiveLock (closed by `close`).
    pub unsafe fn open(rel: pg_sys::Relation, bulk: bool) -> Sink {
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
    pub unsafe fn push(&mut self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
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
        index::insert_index_entries(self.rri, &self.slots[..self.used], self.estate);
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

    pub unsafe fn close(mut self) {
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
