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
    // catalog/partition.h (not in pgrx's bindings): a partition's parent
    #[cfg(not(feature = "pg13"))]
    pub fn get_partition_parent(relid: pg_sys::Oid, even_if_detached: bool) -> pg_sys::Oid;
    #[cfg(feature = "pg13")]
    pub fn get_partition_parent(relid: pg_sys::Oid) -> pg_sys::Oid;
    // utils/guc.h and executor/spi.h, unwrapped: koherent._as_caller calls them inside its own
    // PG_TRY (src/revert/mod.rs), so that an error reaches the client untouched.
    pub fn NewGUCNestLevel() -> std::ffi::c_int;
    pub fn AtEOXact_GUC(is_commit: bool, nest_level: std::ffi::c_int);
    pub fn set_config_option(
        name: *const std::ffi::c_char,
        value: *const std::ffi::c_char,
        context: pg_sys::GucContext::Type,
        source: pg_sys::GucSource::Type,
        action: pg_sys::GucAction::Type,
        change_val: bool,
        elevel: std::ffi::c_int,
        is_reload: bool,
    ) -> std::ffi::c_int;
    pub fn SPI_connect() -> std::ffi::c_int;
    pub fn SPI_finish() -> std::ffi::c_int;
    pub fn SPI_execute_with_args(
        src: *const std::ffi::c_char,
        nargs: std::ffi::c_int,
        argtypes: *mut pg_sys::Oid,
        values: *mut pg_sys::Datum,
        nulls: *const std::ffi::c_char,
        read_only: bool,
        tcount: std::ffi::c_long,
    ) -> std::ffi::c_int;
    pub fn SPI_getbinval(
        tuple: pg_sys::HeapTuple,
        desc: pg_sys::TupleDesc,
        fnumber: std::ffi::c_int,
        isnull: *mut bool,
    ) -> pg_sys::Datum;
    pub fn SPI_datumTransfer(
        value: pg_sys::Datum,
        typ_by_val: bool,
        typ_len: std::ffi::c_int,
    ) -> pg_sys::Datum;
    // executor/execPartition.h; not in pgrx's bindings (the writer routes history to its
    // partitions as COPY does: src/insert/mod.rs)
    #[cfg(not(feature = "pg13"))]
    pub fn ExecSetupPartitionTupleRouting(
        estate: *mut pg_sys::EState,
        rel: pg_sys::Relation,
    ) -> *mut pg_sys::PartitionTupleRouting;
    #[cfg(feature = "pg13")]
    pub fn ExecSetupPartitionTupleRouting(
        estate: *mut pg_sys::EState,
        mtstate: *mut pg_sys::ModifyTableState,
        rel: pg_sys::Relation,
    ) -> *mut pg_sys::PartitionTupleRouting;
    pub fn ExecFindPartition(
        mtstate: *mut pg_sys::ModifyTableState,
        root: *mut pg_sys::ResultRelInfo,
        proute: *mut pg_sys::PartitionTupleRouting,
        slot: *mut pg_sys::TupleTableSlot,
        estate: *mut pg_sys::EState,
    ) -> *mut pg_sys::ResultRelInfo;
    // catalog/pg_inherits.h; not in pgrx's bindings
    pub fn find_inheritance_children(
        parent: pg_sys::Oid,
        lockmode: pg_sys::LOCKMODE,
    ) -> *mut pg_sys::List;
    pub fn ExecCleanupTupleRouting(
        mtstate: *mut pg_sys::ModifyTableState,
        proute: *mut pg_sys::PartitionTupleRouting,
    );
    // commands/sequence.h; not in pgrx's bindings.
    pub fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
    // access/brin.h; pgrx binds a Rust wrapper, DirectFunctionCall needs the C symbol.
    pub fn brin_summarize_range(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    // utils/numeric.h, the C symbols (src/planner.rs reads a jsonb number as text and back).
    pub fn numeric_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    pub fn numeric_out(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
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

/// PG_TRY { f } PG_FINALLY { cleanup } PG_END_TRY: `f` calls into PostgreSQL and may raise an
/// ERROR (a longjmp to the buffer set here); `cleanup` runs either way, and the error, still
/// PostgreSQL's own (nothing copied, nothing flushed), is raised again to the caller's handler.
pub unsafe fn pg_try(f: impl FnOnce(), cleanup: impl FnOnce()) {
    let prev_stack = pg_sys::PG_exception_stack;
    let prev_context = pg_sys::error_context_stack;
    let mut f = Some(f);
    let jumped = cee_scape::call_with_sigsetjmp(false, |jbuf| {
        pg_sys::PG_exception_stack =
            jbuf as *const cee_scape::SigJmpBufFields as *mut pg_sys::sigjmp_buf;
        if let Some(f) = f.take() {
            f();
        }
        0
    });
    pg_sys::PG_exception_stack = prev_stack;
    pg_sys::error_context_stack = prev_context;
    cleanup();
    if jumped != 0 {
        pg_re_throw();
    }
}
