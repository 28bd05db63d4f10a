//! Index entries for a batch of tuples already in the heap, with a shortcut for BRIN.

use pgrx::pg_sys;

use crate::brin::{block_of, range_has_summary, revmap_close, revmap_open};

/// Index entries for a batch of history tuples already in the heap.
///
/// PostgreSQL 15: per index, per tuple, as `ExecInsertIndexTuples` would, except that a BRIN
/// index is not called for tuples whose block range has no summary yet: `brininsert` would
/// only look that up and return (paying a revmap initialization per tuple), so it is looked up
/// once per range and batch here. This is safe because the tuples are already in the heap: a
/// summarization that has not placed its placeholder in the revmap when we look will scan
/// them; one that has is seen as a summary, and then its tuples are inserted as usual.
#[cfg(feature = "pg15")]
pub unsafe fn insert_index_entries(
    rri: *mut pg_sys::ResultRelInfo,
    slots: &[*mut pg_sys::TupleTableSlot],
    estate: *mut pg_sys::EState,
) {
    // A unique or exclusion index (an admin's: koherent makes none) takes the executor's
    // general path, which checks constraints. Partial indexes (koherent's index of key-changing
    // UPDATEs, an admin's) stay here: their predicate is evaluated per tuple, as the executor
    // does.
    let plain = (0..(*rri).ri_NumIndices as usize).all(|i| {
        let info = *(*rri).ri_IndexRelationInfo.add(i);
        !(*info).ii_Unique && (*info).ii_ExclusionOps.is_null()
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
            if !predicate_holds(info, estate, econtext) {
                continue;
            }
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

/// Whether the tuple in `econtext`'s scan slot belongs in a partial index (always, for an index
/// without a predicate): `ExecQual` of the index predicate, prepared once per batch's IndexInfo.
#[cfg(feature = "pg15")]
unsafe fn predicate_holds(
    info: *mut pg_sys::IndexInfo,
    estate: *mut pg_sys::EState,
    econtext: *mut pg_sys::ExprContext,
) -> bool {
    if (*info).ii_Predicate.is_null() {
        return true;
    }
    if (*info).ii_PredicateState.is_null() {
        (*info).ii_PredicateState = pg_sys::ExecPrepareQual((*info).ii_Predicate, estate);
    }
    let state = (*info).ii_PredicateState;
    let Some(eval) = (*state).evalfunc else {
        return true;
    };
    let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
    let mut isnull = false;
    let d = pg_sys::ffi::pg_guard_ffi_boundary(|| eval(state, econtext, &mut isnull));
    pg_sys::MemoryContextSwitchTo(old);
    // a qual's null is false (ExecQual)
    !isnull && d.value() != 0
}

/// Other versions: `ExecInsertIndexTuples` per tuple.
#[cfg(not(feature = "pg15"))]
pub unsafe fn insert_index_entries(
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
