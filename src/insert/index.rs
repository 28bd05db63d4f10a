//! Index entries for a batch of tuples already in the heap, with a shortcut for BRIN.

use pgrx::pg_sys;
#[cfg(feature = "pg15")]
use pgrx::PgTupleDesc;
use std::ffi::CStr;

use crate::brin::{block_of, range_has_summary, revmap_close, revmap_open};
#[cfg(feature = "pg15")]
use crate::catalog::att_is_named;
#[cfg(feature = "pg15")]
use crate::nodes::{list_len, list_ptr, tag};

/// Index entries for a batch of history tuples already in the heap.
///
/// PostgreSQL 15: per index, per tuple, as `ExecInsertIndexTuples` would, except that a BRIN
/// index is not called for tuples whose block range has no summary yet: `brininsert` would
/// only look that up and return (paying a revmap initialization per tuple), so it is looked up
/// once per range and batch here. This is safe because the tuples are already in the heap: a
/// summarization that has not placed its placeholder in the revmap when we look will scan
/// them; one that has is seen as a summary, and then its tuples are inserted as usual.
///
/// `kind`: the `history_kind` every tuple of the batch has (a statement's entries are all of
/// one kind), when the caller knows it: a partial index whose predicate rules that kind out is
/// skipped without preparing or evaluating its predicate ([`predicate_excludes`]).
#[cfg(feature = "pg15")]
pub unsafe fn insert_index_entries(
    rri: *mut pg_sys::ResultRelInfo,
    slots: &[*mut pg_sys::TupleTableSlot],
    estate: *mut pg_sys::EState,
    kind: Option<&CStr>,
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
        if let Some(kind) = kind {
            if predicate_excludes((*info).ii_Predicate, heap, kind) {
                continue;
            }
        }
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

/// Whether a partial index's predicate (an implicit AND, as `IndexInfo` keeps it) leaves out
/// every tuple whose `history_kind` is `kind`: one of its conjuncts is `history_kind = '<other
/// kind>'`, text equality under a deterministic collation (the database default, C or POSIX),
/// on the column of that name of `heap`. koherent's index of key-changing UPDATEs
/// (`history_kind = 'UPDATE' AND ...`) for an INSERT or DELETE statement: 0.1 us per entry and
/// the predicate's preparation per statement. Any other shape answers false, and the predicate
/// is evaluated per tuple as before; so an index is skipped only when no tuple could be in it.
#[cfg(feature = "pg15")]
unsafe fn predicate_excludes(pred: *mut pg_sys::List, heap: pg_sys::Relation, kind: &CStr) -> bool {
    let desc = PgTupleDesc::from_pg_unchecked((*heap).rd_att);
    (0..list_len(pred)).any(|i| {
        let c = list_ptr::<pg_sys::Node>(pred, i);
        if tag(c) != pg_sys::NodeTag::T_OpExpr {
            return false;
        }
        let op = c as *mut pg_sys::OpExpr;
        let deterministic = [
            pg_sys::DEFAULT_COLLATION_OID,
            pg_sys::C_COLLATION_OID,
            pg_sys::POSIX_COLLATION_OID,
        ]
        .contains(&(*op).inputcollid);
        if (*op).opfuncid != pg_sys::Oid::from(pg_sys::F_TEXTEQ)
            || !deterministic
            || list_len((*op).args) != 2
        {
            return false;
        }
        let (a, b) = (
            list_ptr::<pg_sys::Node>((*op).args, 0),
            list_ptr::<pg_sys::Node>((*op).args, 1),
        );
        let (var, value) = match (tag(a), tag(b)) {
            (pg_sys::NodeTag::T_Var, pg_sys::NodeTag::T_Const) => (a, b),
            (pg_sys::NodeTag::T_Const, pg_sys::NodeTag::T_Var) => (b, a),
            _ => return false,
        };
        let (var, value) = (var as *mut pg_sys::Var, value as *mut pg_sys::Const);
        if (*var).varlevelsup != 0 || (*var).varattno < 1 {
            return false;
        }
        let Some(att) = desc.get((*var).varattno as usize - 1) else {
            return false;
        };
        if att.attisdropped
            || att.atttypid != pg_sys::TEXTOID
            || !att_is_named(att, "history_kind")
            || (*value).constisnull
            || (*value).consttype != pg_sys::TEXTOID
        {
            return false;
        }
        let t = pg_sys::pg_detoast_datum_packed((*value).constvalue.cast_mut_ptr());
        let other = std::slice::from_raw_parts(
            pgrx::vardata_any(t) as *const u8,
            pgrx::varsize_any_exhdr(t),
        );
        other != kind.to_bytes()
    })
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
    _kind: Option<&CStr>,
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
