//! Datums koherent builds by hand: text, palloc'd byte copies, and jsonb values kept flat; and
//! the state a version-1 C function keeps per call site.

use pgrx::pg_sys;
use std::rc::Rc;

/// A jsonb value already in its on-disk form: returning it is one palloc and copy, where
/// returning a `JsonB` serializes the JSON to text and parses it again (`jsonb_in`), every call.
pub struct FlatJsonb(pub(crate) Rc<[u8]>);

/// `jsonb` in SQL, as an argument and as a result.
macro_rules! sql_jsonb {
    ($($t:ident),*) => {$(
        unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for $t {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!($t);
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
    )*};
}
sql_jsonb!(FlatJsonb, JsonbText);

unsafe impl pgrx::callconv::BoxRet for FlatJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(palloc_copy(&self.0)) }
    }
}

/// A jsonb argument (or SPI result) read as it is stored: a copy of its bytes, untouched. What
/// koherent passes through (as-of lookups' keys and images) must come out as it went in; pgrx's
/// `JsonB` reads a value through serde_json, which takes an object named like serde_json's
/// private number (`{"$serde_json::private::Number":"5"}`) for a number, and refuses nesting
/// beyond 128 levels.
impl pgrx::FromDatum for FlatJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<FlatJsonb> {
        if is_null {
            return None;
        }
        // (with a 4-byte header: the form a returned datum may have)
        Some(unsafe {
            with_detoasted(datum, |flat| {
                FlatJsonb(std::slice::from_raw_parts(flat as *const u8, pgrx::varsize(flat)).into())
            })
        })
    }
}

/// `f` of a varlena datum detoasted (and decompressed, with a 4-byte header), freed after when
/// that made a copy.
unsafe fn with_detoasted<R>(datum: pg_sys::Datum, f: impl FnOnce(*mut pg_sys::varlena) -> R) -> R {
    unsafe {
        let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
        let flat = pg_sys::pg_detoast_datum(raw);
        let r = f(flat);
        if flat != raw {
            pg_sys::pfree(flat.cast());
        }
        r
    }
}

impl pgrx::IntoDatum for FlatJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(unsafe { palloc_copy(&self.0) })
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// A jsonb argument as its text (`jsonb_out`), for koherent's own JSON reader
/// (`koherent_token::json`) instead of pgrx's `JsonB` and serde_json (see [`FlatJsonb`]).
pub struct JsonbText(pub String);

impl pgrx::FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        Some(unsafe {
            with_detoasted(datum, |flat| {
                let cstr = pgrx::direct_function_call::<&std::ffi::CStr>(
                    pg_sys::jsonb_out,
                    &[Some(pg_sys::Datum::from(flat))],
                )
                .expect("jsonb_out gives text");
                let text = cstr
                    .to_str()
                    .expect("jsonb's text is UTF-8 (the database's encoding)")
                    .to_owned();
                pg_sys::pfree(cstr.as_ptr() as *mut std::ffi::c_void);
                JsonbText(text)
            })
        })
    }
}

impl JsonbText {
    /// The value the text spells (at most 128 levels deep: 22023 beyond, as any malformed
    /// argument).
    pub fn value(&self) -> serde_json::Value {
        parse_json(&self.0)
    }
}

/// JSON text (an argument, jsonb's output) as a value, by koherent's reader: at most 128
/// levels, a member named twice kept last (as jsonb keeps it); anything it refuses is 22023,
/// never a panic.
pub fn parse_json(text: &str) -> serde_json::Value {
    use crate::error::{KoherentError, OrRaise};
    koherent_token::json::parse(text)
        .map_err(KoherentError::from)
        .or_raise()
}

macro_rules! argument_by_from_datum {
    ($($t:ty),*) => {$(
        unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for $t {
            unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
                let index = arg.index();
                unsafe {
                    arg.unbox_arg_using_from_datum()
                        .unwrap_or_else(|| panic!("argument {index} must not be null"))
                }
            }
            unsafe fn unbox_nullable_arg(arg: pgrx::callconv::Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<Self> {
                unsafe { arg.unbox_arg_using_from_datum().into() }
            }
        }
    )*};
}
argument_by_from_datum!(FlatJsonb, JsonbText);

/// A text datum (palloc'd) of `s`.
pub fn text_datum(s: &str) -> pg_sys::Datum {
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr().cast(),
            s.len() as i32,
        ))
    }
}

/// The bytes of a flat (not toasted) varlena datum, header included: what [`palloc_copy`] makes
/// a datum of again.
///
/// # Safety
/// `d` points at a flat varlena.
pub unsafe fn varlena_bytes(d: pg_sys::Datum) -> Vec<u8> {
    let p = d.cast_mut_ptr::<pg_sys::varlena>();
    std::slice::from_raw_parts(p as *const u8, pgrx::varsize_any(p)).to_vec()
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
