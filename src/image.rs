//! `koherent._jsonb_object(VARIADIC "any") RETURNS jsonb`: `jsonb_build_object` for history
//! images, with each value's conversion looked up once per call site.
//!
//! The readers build every entry's `row_data` (task_changes, the views, revert's restored and
//! current images, as_of, the audit export) as a jsonb object of the entry's columns.
//! `jsonb_build_object` finds each argument's type and its category again for every row, turns
//! integers and numerics into text and parses them back (`numeric_in`), and calls output
//! functions through `OidOutputFunctionCall` (a function lookup per value). This function makes
//! the same object with the same PostgreSQL routines (`pushJsonbValue`, `JsonbValueToJsonb`,
//! `JsonEncodeDateTime`), the argument types resolved once per call site (`fn_extra`), integers
//! converted directly (`int64_to_numeric`), a numeric taken as it is, text without a copy.
//!
//! It takes only the types whose conversion it spells here ([`takes`], asked by the SQL
//! generator through `koherent._jsonb_object_takes`); `koherent._object_expr` gives any other
//! type to `jsonb_build_object`. Per value, by the base type (domains resolved, as to_jsonb
//! does): a null is null; `boolean` true/false; `smallint`, `integer`, `bigint` a number;
//! `numeric` a number, its output text as a string for NaN and the infinities; `real`, `double
//! precision` their output text as a number, as a string when it is NaN or an infinity (the
//! test to_jsonb makes: an `N` or `n` in the text); `date`, `timestamp`, `timestamptz` the
//! ISO 8601 string `JsonEncodeDateTime` writes; `text`, `varchar` and untyped literals the
//! string itself; a listed scalar type (uuid, char(n), name, interval, ...) the string of its
//! output function's text. Keys are `text` (or untyped literals); where jsonb_build_object
//! refuses a null key, this function leaves the pair out, so that an image of only the columns
//! that changed is one call (`CASE WHEN <changed> THEN 'col' END, value, ...`).

use pgrx::pg_sys;
use pgrx::prelude::*;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Bool,
    /// int2/int4/int8: a number, converted directly
    Int(pg_sys::Oid),
    Numeric,
    /// float4/float8: the output text, a number unless it says NaN or Infinity
    FloatText,
    DateTime(pg_sys::Oid),
    /// text/varchar: the string itself
    Text,
    /// an untyped literal (a C string)
    Cstring,
    /// the output function's text as a string
    Output,
}

/// How a value of type `typ` (domains by their base type) is converted, or None when this
/// function does not take the type.
///
/// # Safety
/// Reads the catalog (getBaseType).
unsafe fn kind_of(typ: pg_sys::Oid) -> Option<Kind> {
    if typ == pg_sys::UNKNOWNOID {
        return Some(Kind::Cstring);
    }
    let base = pg_sys::getBaseType(typ);
    Some(match base {
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => Kind::Int(base),
        pg_sys::NUMERICOID => Kind::Numeric,
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => Kind::FloatText,
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Kind::DateTime(base),
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Kind::Text,
        // built-in scalar types that to_jsonb writes as their output text (its "other" category)
        pg_sys::UUIDOID
        | pg_sys::BPCHAROID
        | pg_sys::NAMEOID
        | pg_sys::CHAROID
        | pg_sys::INTERVALOID
        | pg_sys::TIMEOID
        | pg_sys::TIMETZOID
        | pg_sys::BYTEAOID
        | pg_sys::INETOID
        | pg_sys::CIDROID
        | pg_sys::MACADDROID
        | pg_sys::MACADDR8OID
        | pg_sys::MONEYOID
        | pg_sys::BITOID
        | pg_sys::VARBITOID => Kind::Output,
        _ => return None,
    })
}

/// Whether `koherent._jsonb_object` takes values of type `typ` (as to_jsonb converts them).
pub fn takes(typ: pg_sys::Oid) -> bool {
    typ != pg_sys::UNKNOWNOID && unsafe { kind_of(typ) }.is_some()
}

/// What one call site knows of its arguments (kept in `fn_extra`, dropped with `fn_mcxt`):
/// per key/value pair, whether the key is an untyped literal, and the value's kind and output
/// function.
struct Site {
    pairs: Vec<(bool, Kind, pg_sys::FmgrInfo)>,
    numeric_in: pg_sys::FmgrInfo,
}

/// # Safety
/// Called by PostgreSQL as a version-1 C function.
unsafe fn site(fcinfo: pg_sys::FunctionCallInfo) -> &'static mut Site {
    crate::datum::call_site(fcinfo, "koherent._jsonb_object", |flinfo| unsafe {
        build_site(fcinfo, flinfo)
    })
}

/// # Safety
/// On the first call of a call site (`site`).
unsafe fn build_site(fcinfo: pg_sys::FunctionCallInfo, flinfo: *mut pg_sys::FmgrInfo) -> Site {
    let n = (*fcinfo).nargs as usize;
    if !n.is_multiple_of(2) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "koherent._jsonb_object: an even number of arguments is required (keys and values)"
        );
    }
    let mut pairs = Vec::with_capacity(n / 2);
    for i in (0..n).step_by(2) {
        let key = pg_sys::get_fn_expr_argtype(flinfo, i as i32);
        let typ = pg_sys::get_fn_expr_argtype(flinfo, i as i32 + 1);
        if key != pg_sys::TEXTOID && key != pg_sys::UNKNOWNOID {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("koherent._jsonb_object: key {} is not text", i / 2 + 1)
            );
        }
        let untyped = key == pg_sys::UNKNOWNOID;
        // an untyped argument's datum is a C string only as a constant (or a stable parameter)
        for (j, t) in [(i, key), (i + 1, typ)] {
            if t == pg_sys::UNKNOWNOID && !pg_sys::get_fn_expr_arg_stable(flinfo, j as i32) {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INDETERMINATE_DATATYPE,
                    format!("koherent._jsonb_object: argument {} has no type", j + 1)
                );
            }
        }
        let Some(kind) = kind_of(typ) else {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "koherent._jsonb_object does not take values of type {}",
                    std::ffi::CStr::from_ptr(pg_sys::format_type_be(typ)).to_string_lossy()
                ),
                "koherent._object_expr gives such values to jsonb_build_object"
            );
        };
        let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
        if matches!(kind, Kind::Output | Kind::FloatText) {
            let mut func = pg_sys::InvalidOid;
            let mut varlena = false;
            pg_sys::getTypeOutputInfo(typ, &mut func, &mut varlena);
            pg_sys::fmgr_info_cxt(func, &mut finfo, (*flinfo).fn_mcxt);
        }
        pairs.push((untyped, kind, finfo));
    }
    let mut numeric_in: pg_sys::FmgrInfo = std::mem::zeroed();
    pg_sys::fmgr_info_cxt(
        pg_sys::Oid::from(pg_sys::F_NUMERIC_IN),
        &mut numeric_in,
        (*flinfo).fn_mcxt,
    );
    Site { pairs, numeric_in }
}

/// A jsonb string value of `len` bytes at `ptr` (which lives until the object is built).
fn string(ptr: *const std::ffi::c_char, len: usize) -> pg_sys::JsonbValue {
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvString;
    v.val.string.len = len as i32;
    v.val.string.val = ptr as *mut std::ffi::c_char;
    v
}

fn number(n: pg_sys::Numeric) -> pg_sys::JsonbValue {
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvNumeric;
    v.val.numeric = n;
    v
}

/// A C string as a jsonb string.
unsafe fn cstring(c: *const std::ffi::c_char) -> pg_sys::JsonbValue {
    string(c, std::ffi::CStr::from_ptr(c).to_bytes().len())
}

/// A text datum (possibly short-header or toasted) as a jsonb string.
unsafe fn text(d: pg_sys::Datum) -> pg_sys::JsonbValue {
    let t = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
    let b = pgrx::varlena::varlena_to_byte_slice(t);
    string(b.as_ptr() as *const std::ffi::c_char, b.len())
}

/// The output text of a number (float4/float8): a number unless it is NaN or an infinity
/// (to_jsonb's test: an `N` or `n` in the text), then the text as a string.
unsafe fn number_text(
    numeric_in: &mut pg_sys::FmgrInfo,
    c: *mut std::ffi::c_char,
) -> pg_sys::JsonbValue {
    let b = std::ffi::CStr::from_ptr(c).to_bytes();
    if b.iter().any(|&x| x == b'N' || x == b'n') {
        return string(c, b.len());
    }
    let n = pg_sys::InputFunctionCall(numeric_in, c, pg_sys::InvalidOid, -1);
    number(n.cast_mut_ptr())
}

#[cfg(not(feature = "pg13"))]
unsafe fn int(_numeric_in: &mut pg_sys::FmgrInfo, v: i64) -> pg_sys::JsonbValue {
    number(pg_sys::int64_to_numeric(v))
}

#[cfg(feature = "pg13")]
unsafe fn int(numeric_in: &mut pg_sys::FmgrInfo, v: i64) -> pg_sys::JsonbValue {
    let s = std::ffi::CString::new(v.to_string()).unwrap();
    number_text(numeric_in, pg_sys::pstrdup(s.as_ptr()))
}

/// NaN or an infinity (written as strings).
#[cfg(not(feature = "pg13"))]
unsafe fn special(n: pg_sys::Numeric) -> bool {
    pg_sys::numeric_is_nan(n) || pg_sys::numeric_is_inf(n)
}

#[cfg(feature = "pg13")]
unsafe fn special(n: pg_sys::Numeric) -> bool {
    pg_sys::numeric_is_nan(n)
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_jsonb_object() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// # Safety
/// Called by PostgreSQL as a version-1 C function (`koherent._jsonb_object`).
#[no_mangle]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_jsonb_object(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    use pg_sys::JsonbIteratorToken::{WJB_BEGIN_OBJECT, WJB_END_OBJECT, WJB_KEY, WJB_VALUE};
    let s = site(fcinfo);
    let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
    pg_sys::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
    let numeric_in = &mut s.numeric_in;
    for (i, (untyped, kind, finfo)) in s.pairs.iter_mut().enumerate() {
        let Some(k) = pgrx::fcinfo::pg_getarg_datum(fcinfo, 2 * i) else {
            continue; // a null key leaves its pair out (jsonb_build_object refuses it)
        };
        let mut key = if *untyped {
            cstring(k.cast_mut_ptr())
        } else {
            text(k)
        };
        pg_sys::pushJsonbValue(&mut state, WJB_KEY, &mut key);
        let mut v = match pgrx::fcinfo::pg_getarg_datum(fcinfo, 2 * i + 1) {
            None => {
                let mut v: pg_sys::JsonbValue = std::mem::zeroed();
                v.type_ = pg_sys::jbvType::jbvNull;
                v
            }
            Some(d) => match *kind {
                Kind::Bool => {
                    let mut v: pg_sys::JsonbValue = std::mem::zeroed();
                    v.type_ = pg_sys::jbvType::jbvBool;
                    v.val.boolean = d.value() != 0;
                    v
                }
                Kind::Int(t) => int(
                    numeric_in,
                    match t {
                        pg_sys::INT2OID => d.value() as i16 as i64,
                        pg_sys::INT4OID => d.value() as i32 as i64,
                        _ => d.value() as i64,
                    },
                ),
                Kind::Numeric => {
                    let n = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as pg_sys::Numeric;
                    if special(n) {
                        cstring(pg_sys::OidOutputFunctionCall(
                            pg_sys::Oid::from(pg_sys::F_NUMERIC_OUT),
                            pg_sys::Datum::from(n),
                        ))
                    } else {
                        number(n)
                    }
                }
                Kind::FloatText => number_text(numeric_in, pg_sys::OutputFunctionCall(finfo, d)),
                Kind::DateTime(t) => cstring(pg_sys::JsonEncodeDateTime(
                    std::ptr::null_mut(),
                    d,
                    t,
                    std::ptr::null(),
                )),
                Kind::Text => text(d),
                Kind::Cstring => cstring(d.cast_mut_ptr()),
                Kind::Output => cstring(pg_sys::OutputFunctionCall(finfo, d)),
            },
        };
        pg_sys::pushJsonbValue(&mut state, WJB_VALUE, &mut v);
    }
    let res = pg_sys::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
    pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(res))
}
