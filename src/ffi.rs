//! C functions of PostgreSQL that pgrx does not bind (or binds only as Rust wrappers), in one
//! place. Calls go through `pg_guard_ffi_boundary` where they can raise an ERROR.

use pgrx::pg_sys;
extern "C-unwind" {
    // utils/elog.h: raise again the error being handled (PG_RE_THROW), untouched. Declared
    // here so that the call is not wrapped by pgrx (which would catch it and raise a copy with
    // fewer fields).
    pub fn pg_re_throw() -> !;
    // executor/executor.h and tcop/utility.h, unwrapped for the same reason: the executor hooks
    // (src/running.rs) call them inside their own PG_TRY.
    pub fn standard_ExecutorStart(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int);
    pub fn standard_ExecutorRun(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
        execute_once: bool,
    );
    pub fn standard_ExecutorFinish(query: *mut pg_sys::QueryDesc);
    pub fn standard_ExecutorEnd(query: *mut pg_sys::QueryDesc);
    #[cfg(not(feature = "pg13"))]
    pub fn standard_ProcessUtility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
    #[cfg(feature = "pg13")]
    pub fn standard_ProcessUtility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
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
