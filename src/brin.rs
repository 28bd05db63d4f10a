//! BRIN access for history tables: revmap lookups (whether a block range has a summary yet) and
//! summarization of complete ranges.
//!
//! Why koherent handles BRIN itself, once: a history table's lookup index is one BRIN index
//! (history_id min-max, history_context bloom, history_date min-max), which costs a bulk write nothing per row while a
//! block range fills. The writer leaves ranges unsummarized (summarizing reads a range again: a
//! quarter of what history costs a bulk INSERT) and skips index calls for rows in unsummarized
//! ranges (`insert::index`); readers that look history up by BRIN summarize the complete ranges
//! first ([`summarize_history`]), VACUUM does the rest.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;

use crate::ffi;

thread_local! {
    /// Per BRIN index of a history table: the block up to which this backend found every range
    /// summarized.
    static SUMMARIZED: RefCell<HashMap<pg_sys::Oid, u32>> = RefCell::new(HashMap::new());
}

/// brin.h's BrinOptions (the parsed reloptions of a BRIN index).
#[cfg(not(feature = "pg15"))]
#[repr(C)]
struct BrinOptions {
    vl_len: i32,
    pages_per_range: u32,
    autosummarize: bool,
}

/// Summarize the BRIN ranges of a history table that are complete (the table has grown past
/// them) and have no summary yet (the writer never does: see the module documentation). The
/// readers that look history up by BRIN (`koherent.task_changes`) call this first, so that they
/// never scan a long unsummarized tail. Each backend remembers up to where it found every range
/// summarized (ranges stay summarized), so a call with nothing new costs a revmap lookup or
/// two. Skipped, not waited for, while VACUUM or another backend holds the summarization lock,
/// and on a standby or in a read-only transaction: the BRIN index then answers as always, with
/// the unsummarized ranges read whole. The range still being filled is left alone: summarizing
/// it would make every later insert into it rewrite its summary.
pub unsafe fn summarize_history(heap: pg_sys::Oid) {
    if pg_sys::RecoveryInProgress() || pg_sys::XactReadOnly {
        return;
    }
    let rel = pg_sys::try_table_open(heap, pg_sys::AccessShareLock as _);
    if rel.is_null() {
        return;
    }
    if (*(*rel).rd_rel).relkind == pg_sys::RELKIND_PARTITIONED_TABLE as std::ffi::c_char {
        // a partitioned history table (koherent.set_retention): each partition has its own
        // BRIN indexes; the ones before the last are complete and summarized once
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        let parts = pg_sys::ffi::pg_guard_ffi_boundary(|| {
            crate::ffi::find_inheritance_children(heap, pg_sys::AccessShareLock as _)
        });
        for k in 0..if parts.is_null() { 0 } else { (*parts).length } {
            summarize_history(pg_sys::list_nth_oid(parts, k));
        }
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

pub unsafe fn block_of(slot: *mut pg_sys::TupleTableSlot) -> u32 {
    let b = (*slot).tts_tid.ip_blkid;
    (u32::from(b.bi_hi) << 16) | u32::from(b.bi_lo)
}

/// A BRIN index's revmap, and its pages per range (from the index's metapage).
#[cfg(feature = "pg15")]
pub unsafe fn revmap_open(index: pg_sys::Relation) -> (*mut std::ffi::c_void, pg_sys::BlockNumber) {
    let mut ppr: pg_sys::BlockNumber = 0;
    let revmap = pg_sys::ffi::pg_guard_ffi_boundary(|| {
        ffi::brinRevmapInitialize(index, &mut ppr, std::ptr::null_mut())
    });
    (revmap, ppr)
}

#[cfg(feature = "pg15")]
pub unsafe fn revmap_close(revmap: *mut std::ffi::c_void) {
    pg_sys::ffi::pg_guard_ffi_boundary(|| ffi::brinRevmapTerminate(revmap));
}

/// Other versions (their brin_revmap.h is not declared here): every complete range is handed
/// to brin_summarize_range, which returns at once for a range that has a summary (a backend's
/// first call walks the whole index that way; later calls start where it stopped).
#[cfg(not(feature = "pg15"))]
pub unsafe fn revmap_open(index: pg_sys::Relation) -> (*mut std::ffi::c_void, pg_sys::BlockNumber) {
    let opts = (*index).rd_options as *const BrinOptions;
    let ppr = if opts.is_null() {
        128
    } else {
        (*opts).pages_per_range.max(1)
    };
    (std::ptr::NonNull::dangling().as_ptr(), ppr)
}

#[cfg(not(feature = "pg15"))]
pub unsafe fn revmap_close(_revmap: *mut std::ffi::c_void) {}

#[cfg(not(feature = "pg15"))]
pub unsafe fn range_has_summary(_revmap: *mut std::ffi::c_void, _start: u32) -> bool {
    false
}

/// Whether the BRIN range starting at `start` has a summary (or a summarization's placeholder).
#[cfg(feature = "pg15")]
pub unsafe fn range_has_summary(revmap: *mut std::ffi::c_void, start: u32) -> bool {
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
