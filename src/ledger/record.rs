//! `koherent._ledger_fields(keys text, VARIADIC "any") RETURNS text`: the members of a history
//! entry's image as the ledger records them (docs/ledger.md, "Values"), as JSON text without
//! the braces: `"1":7,"2":"name 7",...` for keys `1,2` and the values that follow.
//!
//! It is what `koherent._ledger_value_expr` spelt per column in SQL (a cast, `to_json`, a
//! `coalesce` and two concatenations per value): the same text, built in one call per image,
//! with each argument's type looked up once per call site (measured on a 6-column table, 200k
//! entries: the records in 0.74 s before, see bench/README.md for after). The values are JSON
//! text; the hash canonicalizes them (`koherent._ledger_hash_text`), so only what the text
//! says counts, not how it is spelt.
//!
//! Per value, by the argument's exact type (a domain is not its base type, as in SQL):
//! `smallint`, `integer`, `bigint`, `jsonb`: their output text; `boolean`: `true`/`false`;
//! `numeric`: its output text, a JSON string for `NaN` and the infinities; `uuid`: a JSON
//! string; `text`, `varchar`: the value as a JSON string; the `reg*` types: the oid; any other
//! type: its output function's text as a JSON string (output functions are C, written by
//! superusers: no user-defined code runs). A null is `null`.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// How an argument's values are written.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// the output text as it is (integers, jsonb)
    Raw,
    Bool,
    /// the output text, quoted when it is not a number
    Numeric,
    /// the output text, quoted (no escapes needed: uuid)
    Quoted,
    /// the text itself, escaped as a JSON string
    Text,
    /// the oid
    Oid,
    /// the output text, escaped as a JSON string
    Output,
}

fn kind_of(typ: pg_sys::Oid) -> Kind {
    match typ {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID | pg_sys::JSONBOID => Kind::Raw,
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::NUMERICOID => Kind::Numeric,
        pg_sys::UUIDOID => Kind::Quoted,
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Kind::Text,
        pg_sys::REGCLASSOID
        | pg_sys::REGTYPEOID
        | pg_sys::REGPROCOID
        | pg_sys::REGPROCEDUREOID
        | pg_sys::REGOPEROID
        | pg_sys::REGOPERATOROID
        | pg_sys::REGNAMESPACEOID
        | pg_sys::REGROLEOID
        | pg_sys::REGCONFIGOID
        | pg_sys::REGDICTIONARYOID
        | pg_sys::REGCOLLATIONOID => Kind::Oid,
        _ => Kind::Output,
    }
}

/// What one call site knows of its arguments (kept in `fn_extra`, dropped with `fn_mcxt`).
struct Site {
    /// `"<key>":` per value argument
    keys: Vec<Vec<u8>>,
    /// the keys argument they were made from (refreshed when it is not a constant)
    keys_text: Vec<u8>,
    args: Vec<(Kind, pg_sys::FmgrInfo)>,
    out: Vec<u8>,
}

/// Appends `s` as the contents of a JSON string: `"` and `\` escaped, the control characters
/// as `\b \f \n \r \t` or `\u00xx` (what PostgreSQL's escape_json writes).
/// What one text may hold (MaxAllocSize less its header): past it the image is refused
/// before it is written (a value of control characters grows six times when escaped).
const LIMIT: usize = 0x3fff_ffff - 4;

fn too_long() -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        "koherent: a history entry's image is too large for the ledger (more than 1 GB as JSON)"
    );
}

fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    if out.len() + s.len() > LIMIT {
        too_long();
    }
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if out.len() > LIMIT {
            too_long();
        }
        if esc.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

fn parse_keys(text: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = text
        .split(|&b| b == b',')
        .filter(|k| !k.is_empty())
        .map(|k| {
            let mut m = Vec::with_capacity(k.len() + 3);
            m.push(b'"');
            escape_into(&mut m, k);
            m.extend_from_slice(b"\":");
            m
        })
        .collect();
    if keys.len() != n {
        error!(
            "koherent._ledger_fields: {} keys for {n} values",
            keys.len()
        );
    }
    keys.shrink_to_fit();
    keys
}

/// # Safety
/// Called by PostgreSQL as a version-1 C function.
unsafe fn site(fcinfo: pg_sys::FunctionCallInfo) -> &'static mut Site {
    crate::datum::call_site(fcinfo, "koherent._ledger_fields", |flinfo| unsafe {
        build_site(fcinfo, flinfo)
    })
}

/// # Safety
/// On the first call of a call site (`site`).
unsafe fn build_site(fcinfo: pg_sys::FunctionCallInfo, flinfo: *mut pg_sys::FmgrInfo) -> Site {
    let n = (*fcinfo).nargs as usize - 1;
    let mut args = Vec::with_capacity(n);
    for i in 1..=n {
        let typ = pg_sys::get_fn_expr_argtype(flinfo, i as i32);
        if typ == pg_sys::InvalidOid {
            error!("koherent._ledger_fields: the type of argument {i} is not known");
        }
        let kind = kind_of(typ);
        let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
        if !matches!(kind, Kind::Bool | Kind::Oid | Kind::Text) {
            let mut func = pg_sys::InvalidOid;
            let mut varlena = false;
            pg_sys::getTypeOutputInfo(typ, &mut func, &mut varlena);
            pg_sys::fmgr_info_cxt(func, &mut finfo, (*flinfo).fn_mcxt);
        }
        args.push((kind, finfo));
    }
    Site {
        keys: Vec::new(),
        keys_text: Vec::new(),
        args,
        out: Vec::with_capacity(256),
    }
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_ledger_fields() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// # Safety
/// Called by PostgreSQL as a version-1 C function (`koherent._ledger_fields`).
#[no_mangle]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_ledger_fields(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let s = site(fcinfo);
    let Some(keys) = pgrx::fcinfo::pg_getarg_datum(fcinfo, 0) else {
        error!("koherent._ledger_fields: null keys");
    };
    let keys =
        pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(keys.cast_mut_ptr()));
    if s.keys_text != keys || (s.keys.is_empty() && !s.args.is_empty()) {
        s.keys = parse_keys(keys, s.args.len());
        s.keys_text = keys.to_vec();
    }
    let out = &mut s.out;
    out.clear();
    for (i, (kind, finfo)) in s.args.iter_mut().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&s.keys[i]);
        let Some(d) = pgrx::fcinfo::pg_getarg_datum(fcinfo, i + 1) else {
            out.extend_from_slice(b"null");
            continue;
        };
        match kind {
            Kind::Bool => out.extend_from_slice(if d.value() != 0 { b"true" } else { b"false" }),
            Kind::Oid => out.extend_from_slice(d.value().to_string().as_bytes()),
            Kind::Text => {
                let t = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                out.push(b'"');
                escape_into(out, pgrx::varlena::varlena_to_byte_slice(t));
                out.push(b'"');
                if t != d.cast_mut_ptr() {
                    pg_sys::pfree(t.cast());
                }
            }
            _ => {
                let c = pg_sys::OutputFunctionCall(finfo, d);
                let text = std::ffi::CStr::from_ptr(c).to_bytes();
                match kind {
                    _ if out.len() + text.len() > LIMIT => too_long(),
                    Kind::Raw => out.extend_from_slice(text),
                    Kind::Numeric if !matches!(text, b"NaN" | b"Infinity" | b"-Infinity") => {
                        out.extend_from_slice(text)
                    }
                    Kind::Quoted | Kind::Numeric => {
                        out.push(b'"');
                        out.extend_from_slice(text);
                        out.push(b'"');
                    }
                    _ => {
                        out.push(b'"');
                        escape_into(out, text);
                        out.push(b'"');
                    }
                }
                pg_sys::pfree(c.cast());
            }
        }
    }
    if out.len() > LIMIT {
        too_long();
    }
    let text =
        pg_sys::cstring_to_text_with_len(out.as_ptr() as *const std::ffi::c_char, out.len() as i32);
    if out.capacity() > 1 << 20 {
        *out = Vec::with_capacity(256); // (one huge value does not stay for the rest of the query)
    }
    pg_sys::Datum::from(text)
}
