//! Inserting tuples into koherent's tables without SQL, the way COPY does: [`Sink`] buffers
//! tuples and writes them in batches with `table_multi_insert` (one WAL record per page, not per
//! row), then their index entries ([`index`]). [`row`] inserts one row by column name.

pub mod index;
pub mod row;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::ffi::CStr;

use crate::catalog::{att_name, find_att, rel_name};
use crate::error::KoherentError;

/// Rows buffered per `table_multi_insert` call (COPY uses 1000 too).
pub const BATCH: usize = 1000;

/// The history table, its indexes and the slots of the batch being written.
pub struct Sink {
    /// The table tuples go into: the one opened, or the partition a partitioned history table
    /// routes the batch to.
    pub rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    batch_cxt: pg_sys::MemoryContext,
    bistate: pg_sys::BulkInsertState,
    cid: pg_sys::CommandId,
    route: Option<Route>,
    /// The `history_kind` of every tuple, when the caller said (`set_kind`).
    kind: Option<&'static CStr>,
}

/// Per attribute of a partition: the root's attribute it takes; and the buffers of one tuple's
/// values and nulls in the partition's order.
type Remap = (Vec<Option<usize>>, Vec<pg_sys::Datum>, Vec<bool>);

/// A partitioned history table (koherent.set_retention): its tuples go to the partition of
/// their `history_date`, found as COPY finds it (`ExecFindPartition`). Every entry of one
/// statement has the statement's date, so one sink (one statement) routes once, at its first
/// tuple, and writes one partition with one buffer.
struct Route {
    root: pg_sys::Relation,
    root_rri: *mut pg_sys::ResultRelInfo,
    mtstate: *mut pg_sys::ModifyTableState,
    proute: *mut pg_sys::PartitionTupleRouting,
    routed: bool,
    /// Per attribute of the partition, the root's attribute it takes, when their layouts differ
    /// (a partition made before a column of the root was dropped, or attached with another
    /// column order), with buffers for the values in the partition's order.
    map: Option<Remap>,
}

impl Sink {
    /// `rel`: the table, opened with RowExclusiveLock (closed by `close`).
    pub unsafe fn open(rel: pg_sys::Relation, bulk: bool) -> Sink {
        let estate = pg_sys::CreateExecutorState();
        let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
            as *mut pg_sys::ResultRelInfo;
        (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
        let partitioned =
            (*(*rel).rd_rel).relkind == pg_sys::RELKIND_PARTITIONED_TABLE as std::ffi::c_char;
        let route = if partitioned {
            // what COPY FROM sets up for a partitioned target (copyfrom.c)
            let mtstate = pg_sys::palloc0(std::mem::size_of::<pg_sys::ModifyTableState>())
                as *mut pg_sys::ModifyTableState;
            (*mtstate).ps.type_ = pg_sys::NodeTag::T_ModifyTableState;
            (*mtstate).ps.plan = std::ptr::null_mut();
            (*mtstate).ps.state = estate;
            (*mtstate).operation = pg_sys::CmdType::CMD_INSERT;
            #[cfg(not(feature = "pg13"))]
            {
                (*mtstate).mt_nrels = 1;
            }
            #[cfg(feature = "pg13")]
            {
                (*mtstate).mt_nplans = 1;
            }
            (*mtstate).resultRelInfo = rri;
            (*mtstate).rootResultRelInfo = rri;
            #[cfg(not(feature = "pg13"))]
            let proute = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                crate::ffi::ExecSetupPartitionTupleRouting(estate, rel)
            });
            #[cfg(feature = "pg13")]
            let proute = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                crate::ffi::ExecSetupPartitionTupleRouting(estate, mtstate, rel)
            });
            Some(Route {
                root: rel,
                root_rri: rri,
                mtstate,
                proute,
                routed: false,
                map: None,
            })
        } else {
            pg_sys::ExecOpenIndices(rri, false);
            None
        };
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
            route,
            kind: None,
        }
    }

    /// Every tuple this sink writes has `history_kind = kind` (a history trigger's statement):
    /// partial indexes whose predicate rules it out are left alone (`index::insert_index_entries`).
    pub fn set_kind(&mut self, kind: &'static CStr) {
        self.kind = Some(kind);
    }

    /// Find the partition for a tuple of the root's layout (`values` / `nulls`) and make it
    /// the sink's table.
    unsafe fn route_to(&mut self, values: &[pg_sys::Datum], nulls: &[bool]) {
        let r = self.route.as_mut().expect("routed sink");
        let desc = (*r.root).rd_att;
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
        pg_sys::ExecClearTuple(slot);
        for i in 0..values.len() {
            *(*slot).tts_values.add(i) = values[i];
            *(*slot).tts_isnull.add(i) = nulls[i];
        }
        pg_sys::ExecStoreVirtualTuple(slot);
        let (mtstate, root_rri, proute, estate) = (r.mtstate, r.root_rri, r.proute, self.estate);
        let root = r.root;
        let leaf = PgTryBuilder::new(move || {
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                crate::ffi::ExecFindPartition(mtstate, root_rri, proute, slot, estate)
            })
        })
        .catch_when(PgSqlErrorCode::ERRCODE_CHECK_VIOLATION, |_| {
            KoherentError::NoHistoryPartition {
                table: rel_name((*root).rd_id),
            }
            .raise()
        })
        .execute();
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        r.routed = true;
        self.rel = (*leaf).ri_RelationDesc;
        self.rri = leaf;
        r.map = layout_map((*r.root).rd_att, (*self.rel).rd_att).map(|m| {
            let n = m.len();
            (m, vec![pg_sys::Datum::from(0usize); n], vec![true; n])
        });
    }

    /// Form a tuple from `values` / `nulls` and buffer it; writes the batch when full.
    pub unsafe fn push(&mut self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        if self.route.as_ref().is_some_and(|r| !r.routed) {
            self.route_to(values, nulls);
        }
        let (values, nulls) = match self.route.as_mut().and_then(|r| r.map.as_mut()) {
            Some((map, v, n)) => {
                for (i, src) in map.iter().enumerate() {
                    (v[i], n[i]) = match *src {
                        Some(a) => (values[a], nulls[a]),
                        None => (pg_sys::Datum::from(0usize), true),
                    };
                }
                (&mut v[..], &mut n[..])
            }
            None => (values, nulls),
        };
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
        index::insert_index_entries(self.rri, &self.slots[..self.used], self.estate, self.kind);
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
        let rel = match self.route.take() {
            Some(r) => {
                // closes the partitions routed to and their indexes
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    crate::ffi::ExecCleanupTupleRouting(r.mtstate, r.proute)
                });
                r.root
            }
            None => {
                pg_sys::ExecCloseIndices(self.rri);
                self.rel
            }
        };
        pg_sys::FreeExecutorState(self.estate);
        pg_sys::MemoryContextDelete(self.batch_cxt);
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as _);
    }
}

/// Per attribute of `leaf`, the attribute of `root` with its name (None: a dropped one), or
/// None when both have the same layout.
unsafe fn layout_map(
    root: pg_sys::TupleDesc,
    leaf: pg_sys::TupleDesc,
) -> Option<Vec<Option<usize>>> {
    let r = PgTupleDesc::from_pg_unchecked(root);
    let l = PgTupleDesc::from_pg_unchecked(leaf);
    let same = r.len() == l.len()
        && (0..r.len()).all(|i| {
            let (a, b) = (r.get(i).expect("in range"), l.get(i).expect("in range"));
            a.attisdropped == b.attisdropped
                && (a.attisdropped || (att_name(a) == att_name(b) && a.atttypid == b.atttypid))
        });
    if same {
        return None;
    }
    Some(
        (0..l.len())
            .map(|i| {
                let b = l.get(i).expect("in range");
                if b.attisdropped {
                    None
                } else {
                    find_att(&r, att_name(b))
                }
            })
            .collect(),
    )
}
