//! History id reservation.

use pgrx::pg_sys;

use crate::ffi;

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
pub struct IdBlock {
    pub seqoid: pg_sys::Oid,
    /// Rows the statement may record: the size of the first block reserved.
    pub rows: i64,
    pub next: i64,
    pub left: i64,
}

/// The allocation lock (see [`IdBlock`]), released on drop. An ERROR unwinding past it leaves the
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
pub unsafe fn reserve_ids(seqoid: pg_sys::Oid, n: i64) -> i64 {
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

impl IdBlock {
    pub unsafe fn take(&mut self) -> i64 {
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
