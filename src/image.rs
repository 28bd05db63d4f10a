//! `koherent._jsonb_object(VARIADIC "any") RETURNS jsonb`: `jsonb_build_object` for history
//! images, with each value's conversion looked up once per call site and the jsonb written
//! directly in its on-disk form.
//!
//! The readers build every entry's `row_data` (task_changes, the views, revert's restored and
//! current images, as_of, the audit export) as a jsonb object of the entry's columns.
//! `jsonb_build_object` finds each argument's type and its category again for every row, turns
//! integers and numerics into text and parses them back (`numeric_in`), calls output functions
//! through `OidOutputFunctionCall` (a function lookup per value), then builds the object value by
//! value (`pushJsonbValue`, whose keys are sorted with `qsort_arg`) and serializes it
//! (`JsonbValueToJsonb`). This function resolves the argument types once per call site
//! (`fn_extra`), takes a numeric as it is and writes an integer's numeric itself (the format
//! `int64_to_numeric` makes), reads short text in place, and writes the object's bytes itself:
//! the same bytes PostgreSQL writes (keys sorted by length, then bytes, the last of equal keys
//! kept; every 32nd entry an offset; numerics int-aligned; tested byte for byte against
//! jsonb_build_object). What it still calls PostgreSQL for: `JsonEncodeDateTime` for dates and
//! timestamps, output functions, `numeric_in` for floats, detoasting of compressed or
//! out-of-line values, and the one palloc of the result. Per row of revert_plan's current image
//! of a six-column row this is about half the time of building it value by value (most of that
//! time was the guard pgrx puts around every call into PostgreSQL, and the sort).
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
    /// the call's pairs (kept to reuse their space)
    items: Vec<Item>,
    /// the numerics written for the call's integers (`Val::Written` ranges)
    written: Vec<u8>,
    /// the object's bytes before they are copied into the result
    buf: Vec<u8>,
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
    Site {
        pairs,
        numeric_in,
        items: Vec::new(),
        written: Vec::new(),
        buf: Vec::new(),
    }
}

/// A value of the object being built. The bytes it points at live until the object is written
/// (the call's arguments, or what the call palloc'd).
#[derive(Clone, Copy)]
enum Val {
    Null,
    Bool(bool),
    /// a string's bytes
    Str(*const u8, usize),
    /// a numeric's bytes after its varlena header
    Num(*const u8, usize),
    /// a numeric written by this call: its bytes after the varlena header, in `Site::written`
    Written(usize, usize),
}

/// One key/value pair: the key's bytes, the value, the pair's place among the arguments.
struct Item {
    key: *const u8,
    key_len: usize,
    val: Val,
    arg: usize,
}

impl Item {
    fn key(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.key, self.key_len) }
    }
}

/// The bytes of a varlena datum after its header: read in place unless the datum is
/// compressed or stored out of line (then detoasted, palloc'd).
///
/// # Safety
/// `d` is a varlena datum that lives as long as the bytes are used.
unsafe fn varlena_data<'a>(d: pg_sys::Datum) -> &'a [u8] {
    use pgrx::varlena::{
        varatt_is_1b, varatt_is_1b_e, varatt_is_4b_u, vardata_any, varsize_any_exhdr,
    };
    let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
    if !(varatt_is_4b_u(p) || (varatt_is_1b(p) && !varatt_is_1b_e(p))) {
        p = pg_sys::pg_detoast_datum_packed(p);
    }
    std::slice::from_raw_parts(vardata_any(p) as *const u8, varsize_any_exhdr(p))
}

/// A C string's bytes.
unsafe fn cstr<'a>(c: *const std::ffi::c_char) -> &'a [u8] {
    std::ffi::CStr::from_ptr(c).to_bytes()
}

fn str_val(b: &[u8]) -> Val {
    Val::Str(b.as_ptr(), b.len())
}

// numeric's header (src/backend/utils/adt/numeric.c): the first 16 bits after the varlena header
const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_SPECIAL: u16 = 0xC000;
const NUMERIC_EXT_SIGN_MASK: u16 = 0xF000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NBASE: u64 = 10000;

/// A numeric's bytes (after the varlena header) as a jsonb value: a number, or its output text
/// as a string for NaN and the infinities (as to_jsonb writes them).
fn numeric_val(b: &[u8]) -> Val {
    let header = if b.len() >= 2 {
        u16::from_ne_bytes([b[0], b[1]])
    } else {
        0
    };
    if header & NUMERIC_SIGN_MASK != NUMERIC_SPECIAL {
        return Val::Num(b.as_ptr(), b.len());
    }
    str_val(match header & NUMERIC_EXT_SIGN_MASK {
        NUMERIC_PINF => b"Infinity",
        NUMERIC_NINF => b"-Infinity",
        _ => b"NaN",
    })
}

/// Appends to `out` the bytes after the varlena header of the numeric `int64_to_numeric(v)`
/// makes: the short format (display scale 0), base-10000 digits from the most significant,
/// trailing zero digits left out (their weight says where the digits stand), zero without
/// digits.
fn write_int_numeric(v: i64, out: &mut Vec<u8>) {
    let mut u = v.unsigned_abs();
    let mut digits = [0u16; 5]; // least significant first; 10000^5 > 2^64
    let mut n = 0;
    while u > 0 {
        digits[n] = (u % NBASE) as u16;
        u /= NBASE;
        n += 1;
    }
    let weight = n.saturating_sub(1) as u16;
    let lowest = digits[..n].iter().position(|&d| d != 0).unwrap_or(n);
    let mut header = NUMERIC_SHORT | (weight & NUMERIC_SHORT_WEIGHT_MASK);
    if v < 0 {
        header |= NUMERIC_SHORT_SIGN_MASK;
    }
    out.extend_from_slice(&header.to_ne_bytes());
    for &d in digits[lowest..n].iter().rev() {
        out.extend_from_slice(&(d as i16).to_ne_bytes());
    }
}

/// The float's output text as a number, unless it is NaN or an infinity (to_jsonb's test: an
/// `N` or `n` in the text), then the text as a string.
unsafe fn float_val(numeric_in: &mut pg_sys::FmgrInfo, c: *mut std::ffi::c_char) -> Val {
    let b = cstr(c);
    if b.iter().any(|&x| x == b'N' || x == b'n') {
        return str_val(b);
    }
    numeric_val(varlena_data(pg_sys::InputFunctionCall(
        numeric_in,
        c,
        pg_sys::InvalidOid,
        -1,
    )))
}

/// Writes the jsonb object of `items` (sorted by key, no key twice) into `buf`: the varlena
/// header, the container header, the keys' then the values' entries, the keys' then the values'
/// bytes (src/backend/utils/adt/jsonb_util.c, convertJsonbObject).
fn write_object(items: &[Item], written: &[u8], buf: &mut Vec<u8>) -> Result<(), &'static str> {
    let n = items.len();
    if n as u64 > pg_sys::JB_CMASK as u64 {
        return Err("number of jsonb object pairs exceeds the maximum allowed");
    }
    buf.clear();
    buf.resize(4 + 4 + 8 * n, 0);
    buf[4..8].copy_from_slice(&((n as u32) | pg_sys::JB_FOBJECT).to_ne_bytes());
    let mut total: usize = 0;
    let mut entry =
        |buf: &mut Vec<u8>, i: usize, typ: u32, len: usize| -> Result<(), &'static str> {
            total += len;
            if total > pg_sys::JENTRY_OFFLENMASK as usize {
                return Err("total size of jsonb object elements exceeds the maximum");
            }
            let meta = if i.is_multiple_of(pg_sys::JB_OFFSET_STRIDE as usize) {
                typ | total as u32 | pg_sys::JENTRY_HAS_OFF
            } else {
                typ | len as u32
            };
            buf[8 + 4 * i..12 + 4 * i].copy_from_slice(&meta.to_ne_bytes());
            Ok(())
        };
    for (i, item) in items.iter().enumerate() {
        buf.extend_from_slice(item.key());
        entry(buf, i, pg_sys::JENTRY_ISSTRING, item.key_len)?;
    }
    for (i, item) in items.iter().enumerate() {
        let (typ, len) = match item.val {
            Val::Null => (pg_sys::JENTRY_ISNULL, 0),
            Val::Bool(true) => (pg_sys::JENTRY_ISBOOL_TRUE, 0),
            Val::Bool(false) => (pg_sys::JENTRY_ISBOOL_FALSE, 0),
            Val::Str(p, len) => {
                buf.extend_from_slice(unsafe { std::slice::from_raw_parts(p, len) });
                (pg_sys::JENTRY_ISSTRING, len)
            }
            Val::Num(..) | Val::Written(..) => {
                let bytes = match item.val {
                    Val::Num(p, len) => unsafe { std::slice::from_raw_parts(p, len) },
                    Val::Written(at, len) => &written[at..at + len],
                    _ => unreachable!(),
                };
                // int-aligned from the start of the datum, the padding counted in the entry;
                // the numeric with a 4-byte varlena header
                let pad = (4 - buf.len() % 4) % 4;
                buf.resize(buf.len() + pad, 0);
                let size = 4 + bytes.len();
                let mut header = [0u8; 4];
                unsafe { pgrx::varlena::set_varsize_4b(header.as_mut_ptr().cast(), size as i32) };
                buf.extend_from_slice(&header);
                buf.extend_from_slice(bytes);
                (pg_sys::JENTRY_ISNUMERIC, pad + size)
            }
        };
        entry(buf, n + i, typ, len)?;
    }
    if buf.len() > pg_sys::JENTRY_OFFLENMASK as usize {
        return Err("total size of jsonb object elements exceeds the maximum");
    }
    let size = buf.len() as i32;
    unsafe { pgrx::varlena::set_varsize_4b(buf.as_mut_ptr().cast(), size) };
    Ok(())
}

/// # Safety
/// Called by PostgreSQL as a version-1 C function (`koherent._jsonb_object`).
#[no_mangle]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_jsonb_object(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let s = site(fcinfo);
    s.items.clear();
    s.written.clear();
    for (i, (untyped, kind, finfo)) in s.pairs.iter_mut().enumerate() {
        let Some(k) = pgrx::fcinfo::pg_getarg_datum(fcinfo, 2 * i) else {
            continue; // a null key leaves its pair out (jsonb_build_object refuses it)
        };
        let key = if *untyped {
            cstr(k.cast_mut_ptr())
        } else {
            varlena_data(k)
        };
        let val = match pgrx::fcinfo::pg_getarg_datum(fcinfo, 2 * i + 1) {
            None => Val::Null,
            Some(d) => match *kind {
                Kind::Bool => Val::Bool(d.value() != 0),
                Kind::Int(t) => {
                    let v = match t {
                        pg_sys::INT2OID => d.value() as i16 as i64,
                        pg_sys::INT4OID => d.value() as i32 as i64,
                        _ => d.value() as i64,
                    };
                    let at = s.written.len();
                    write_int_numeric(v, &mut s.written);
                    Val::Written(at, s.written.len() - at)
                }
                Kind::Numeric => numeric_val(varlena_data(d)),
                Kind::FloatText => {
                    float_val(&mut s.numeric_in, pg_sys::OutputFunctionCall(finfo, d))
                }
                Kind::DateTime(t) => str_val(cstr(pg_sys::JsonEncodeDateTime(
                    std::ptr::null_mut(),
                    d,
                    t,
                    std::ptr::null(),
                ))),
                Kind::Text => str_val(varlena_data(d)),
                Kind::Cstring => str_val(cstr(d.cast_mut_ptr())),
                Kind::Output => str_val(cstr(pg_sys::OutputFunctionCall(finfo, d))),
            },
        };
        s.items.push(Item {
            key: key.as_ptr(),
            key_len: key.len(),
            val,
            arg: i,
        });
    }
    // jsonb's key order: by length, then bytes; of equal keys the last argument's pair is
    // kept (as jsonb_build_object: sorted first here, then the others dropped)
    s.items.sort_by(|a, b| {
        a.key_len
            .cmp(&b.key_len)
            .then_with(|| a.key().cmp(b.key()))
            .then_with(|| b.arg.cmp(&a.arg))
    });
    s.items.dedup_by(|later, first| later.key() == first.key());
    if let Err(e) = write_object(&s.items, &s.written, &mut s.buf) {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, e);
    }
    crate::datum::palloc_copy(&s.buf)
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_jsonb_object() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}
