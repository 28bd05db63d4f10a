//! Datums koherent builds by hand: text, palloc'd byte copies, and jsonb values kept flat; and
//! the state a version-1 C function keeps per call site.

use pgrx::pg_sys;
use std::rc::Rc;

/// A jsonb value already in its on-disk form: returning it is one palloc and copy, where
/// returning a `JsonB` serializes the JSON to text and parses it again (`jsonb_in`), every call.
pub struct FlatJsonb(pub(crate) Rc<[u8]>);

unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for FlatJsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(FlatJsonb);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef::One(
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"),
    ));
}

unsafe impl pgrx::callconv::BoxRet for FlatJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(palloc_copy(&self.0)) }
    }
}

/// A text datum (palloc'd) of `s`.
pub fn text_datum(s: &str) -> pg_sys::Datum {
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr().cast(),
            s.len() as i32,
        ))
    }
}

/// A datum pointing at a palloc'd copy of `bytes` (a flat varlena, a uuid).
pub unsafe fn palloc_copy(bytes: &[u8]) -> pg_sys::Datum {
    let p = pg_sys::palloc(bytes.len()) as *mut u8;
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
    pg_sys::Datum::from(p)
}

/// The state a version-1 C function taking `VARIADIC "any"` keeps for its call site: made by
/// `build` on the first call (in `fn_extra`, dropped with `fn_mcxt`), the same on later calls.
/// Refuses a VARIADIC array (its argument types are what `build` reads). `name` names the
/// function in the error.
///
/// # Safety
/// `fcinfo` is the call's; the state must not outlive `fn_mcxt` (it is dropped with it).
pub unsafe fn call_site<T>(
    fcinfo: pg_sys::FunctionCallInfo,
    name: &str,
    build: impl FnOnce(*mut pg_sys::FmgrInfo) -> T,
) -> &'static mut T {
    let flinfo = (*fcinfo).flinfo;
    if !(*flinfo).fn_extra.is_null() {
        return &mut *((*flinfo).fn_extra as *mut T);
    }
    if pg_sys::get_fn_expr_variadic(flinfo) {
        pgrx::ereport!(
            ERROR,
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{name} takes its values as arguments, not as a VARIADIC array")
        );
    }
    let state = build(flinfo);
    let p = pgrx::PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(state);
    (*flinfo).fn_extra = p as *mut std::ffi::c_void;
    &mut *p
}
