//! C functions of PostgreSQL that pgrx does not bind (or binds only as Rust wrappers), in one
//! place. Calls go through `pg_guard_ffi_boundary` where they can raise an ERROR.

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
