//! `row_key = '{"id": 7}'` as an index lookup (docs/design-row-key-lookup.md).
//!
//! The views give each history entry its key as `jsonb_build_object('id', to_jsonb(h.id))`.
//! PostgreSQL pushes `row_key = <jsonb constant>` into each history table's branch, where it is
//! a condition on a function of `h.id`: no index matches it, so the natural query
//! (`koherent.provenance_entry WHERE table_name = 'item'::regclass AND row_key = '{"id": 7}'`)
//! scans the whole history table. A `set_rel_pathlist_hook` finds that condition on a history
//! table and adds the key condition it implies (`h.id = 7`), then lets PostgreSQL estimate the
//! table again and build its index paths: the row index `(id, history_id)` answers it.
//!
//! Correctness: the added condition is implied by the original (whenever `row_key = C` holds,
//! `h.id = C.id` holds), and the original stays, ANDed. So the rows are the same with or without
//! it; the worst a mistake here could do is make an index usable, never change an answer. What
//! this derives (v1): equality with a non-null jsonb constant (a literal, or a bound parameter
//! of a custom plan), key columns of types int2/int4/int8, numeric, text, uuid and bool. Any
//! other shape, type or value derives nothing and the plan is PostgreSQL's own. It never
//! raises: it reads the constant with the jsonb C API and parses numbers and uuids itself.
//!
//! The hook exists in a backend once koherent's library is loaded; the views name each table
//! through `koherent._relid(oid)`, an IMMUTABLE C function PostgreSQL folds while planning, so
//! planning a view loads the library before the rel's paths are built.
//! `SET koherent.row_key_lookup = off` turns it off.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::nodes::{list_len, list_ptr, tag};
use crate::{ffi, guc};

static mut PREV_SET_REL_PATHLIST: pg_sys::set_rel_pathlist_hook_type = None;

pub fn init() {
    unsafe {
        PREV_SET_REL_PATHLIST = pg_sys::set_rel_pathlist_hook;
        pg_sys::set_rel_pathlist_hook = Some(set_rel_pathlist);
    }
}

// Not #[pg_guard]: the previous hook's errors pass through untouched; ours runs guarded (it
// raises nothing itself, but the catalog lookups it makes could in theory).
unsafe extern "C-unwind" fn set_rel_pathlist(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
    rte: *mut pg_sys::RangeTblEntry,
) {
    if guc::row_key_lookup() {
        derive_key_conditions(root, rel, rti, rte);
    }
    if let Some(prev) = PREV_SET_REL_PATHLIST {
        prev(root, rel, rti, rte);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn derive_key_conditions(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
    rte: *mut pg_sys::RangeTblEntry,
) {
    if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION
        || (*rte).inh
        || (*rel).reloptkind == pg_sys::RelOptKind::RELOPT_UPPER_REL
        || (*rel).indexlist.is_null()
        || pg_sys::is_dummy_rel(rel)
    {
        return;
    }
    // the cheap gate first: a jsonb = jsonb condition among the rel's own
    let rinfos = (*rel).baserestrictinfo;
    let n = list_len(rinfos);
    let candidates: Vec<*mut pg_sys::RestrictInfo> = (0..n)
        .map(|i| list_ptr::<pg_sys::RestrictInfo>(rinfos, i))
        .filter(|&r| {
            let c = (*r).clause as *mut pg_sys::Node;
            tag(c) == pg_sys::NodeTag::T_OpExpr
                && (*(c as *mut pg_sys::OpExpr)).opfuncid == pg_sys::Oid::from(pg_sys::F_JSONB_EQ)
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    let nsp = pg_sys::get_namespace_oid(c"koherent_history".as_ptr(), true);
    if nsp == pg_sys::InvalidOid || pg_sys::get_rel_namespace((*rte).relid) != nsp {
        return;
    }
    let mut added = 0;
    for r in candidates {
        let op = (*r).clause as *mut pg_sys::OpExpr;
        if list_len((*op).args) != 2 {
            continue;
        }
        let (a, b) = (
            list_ptr::<pg_sys::Node>((*op).args, 0),
            list_ptr::<pg_sys::Node>((*op).args, 1),
        );
        let (build, value) = if tag(b) == pg_sys::NodeTag::T_Const {
            (a, b as *mut pg_sys::Const)
        } else if tag(a) == pg_sys::NodeTag::T_Const {
            (b, a as *mut pg_sys::Const)
        } else {
            continue;
        };
        if (*value).constisnull || (*value).consttype != pg_sys::JSONBOID {
            continue;
        }
        let Some(pairs) = key_pairs(build, rti) else {
            continue;
        };
        let jb = pg_sys::pg_detoast_datum((*value).constvalue.cast_mut_ptr::<pg_sys::varlena>())
            as *mut pg_sys::Jsonb;
        // an object equals the key object only with the same keys: a scalar, an array or an
        // object of other keys matches no entry of this table (the branch is left out)
        let header = (*jb).root.header;
        if header & pg_sys::JB_FOBJECT == 0 || (header & pg_sys::JB_CMASK) as usize != pairs.len() {
            impossible(root, rel, rti);
            return;
        }
        let mut derived = 0;
        for (key, var) in pairs {
            let mut res = std::mem::zeroed::<pg_sys::JsonbValue>();
            let v = pg_sys::getKeyJsonValueFromContainer(
                &mut (*jb).root,
                key.as_ptr() as *const std::ffi::c_char,
                key.len() as std::ffi::c_int,
                &mut res,
            );
            if v.is_null() {
                impossible(root, rel, rti);
                return;
            }
            let c = match key_const(var, v) {
                Key::Value(c) => c,
                Key::Unknown => continue,
                Key::Impossible => {
                    impossible(root, rel, rti);
                    return;
                }
            };
            let Some(clause) = equality(var, c) else {
                continue;
            };
            let ri = make_rinfo(root, clause, (*r).security_level);
            (*rel).baserestrictinfo = pg_sys::lappend((*rel).baserestrictinfo, ri.cast());
            derived += 1;
        }
        if derived > 0 {
            // the key conditions now carry the selectivity (as orclauses.c does for the OR
            // conditions it derives): the original counts as always true
            (*r).norm_selec = 1.0;
            (*r).outer_selec = 1.0;
            added += derived;
        }
    }
    if added == 0 {
        return;
    }
    let before = (*rel).rows;
    pg_sys::set_baserel_size_estimates(root, rel);
    pg_sys::create_index_paths(root, rel);
    move_parent_rows(root, rel, rti, (*rel).rows - before);
}

/// A condition no entry of this rel can meet: the rel becomes empty (as PostgreSQL makes a
/// branch whose table_name differs), its parents' rows move by what it had.
unsafe fn impossible(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
) {
    let before = (*rel).rows;
    pg_sys::mark_dummy_rel(rel);
    move_parent_rows(root, rel, rti, -before);
}

/// An appendrel member (a branch of the views' UNION ALL): its parents' rows were summed from
/// the members' before any path existed; move them by the member's change.
unsafe fn move_parent_rows(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
    delta: f64,
) {
    let mut child = rel;
    let mut child_rti = rti;
    while (*child).reloptkind == pg_sys::RelOptKind::RELOPT_OTHER_MEMBER_REL
        && !(*root).append_rel_array.is_null()
    {
        let info = *(*root).append_rel_array.add(child_rti as usize);
        if info.is_null() {
            break;
        }
        let parent = pg_sys::find_base_rel(root, (*info).parent_relid as std::ffi::c_int);
        (*parent).rows = ((*parent).rows + delta).max(1.0);
        (*parent).tuples = ((*parent).tuples + delta).max(1.0);
        child = parent;
        child_rti = (*info).parent_relid;
    }
}

/// The (key, Var) pairs of `jsonb_build_object('k1', to_jsonb(h.k1), ...)` over rel `rti`, or
/// None when `node` is anything else.
unsafe fn key_pairs(
    node: *mut pg_sys::Node,
    rti: pg_sys::Index,
) -> Option<Vec<(Vec<u8>, *mut pg_sys::Var)>> {
    if tag(node) != pg_sys::NodeTag::T_FuncExpr {
        return None;
    }
    let f = node as *mut pg_sys::FuncExpr;
    if (*f).funcid != pg_sys::Oid::from(pg_sys::F_JSONB_BUILD_OBJECT_ANY) || (*f).funcvariadic {
        return None;
    }
    let n = list_len((*f).args);
    if n == 0 || !n.is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(n / 2);
    for i in (0..n).step_by(2) {
        let k = list_ptr::<pg_sys::Node>((*f).args, i);
        let v = list_ptr::<pg_sys::Node>((*f).args, i + 1);
        if tag(k) != pg_sys::NodeTag::T_Const || (*(k as *mut pg_sys::Const)).constisnull {
            return None;
        }
        let kc = k as *mut pg_sys::Const;
        let key = match (*kc).consttype {
            pg_sys::TEXTOID => {
                let t = pg_sys::pg_detoast_datum_packed((*kc).constvalue.cast_mut_ptr());
                pgrx::varlena::varlena_to_byte_slice(t).to_vec()
            }
            pg_sys::UNKNOWNOID => std::ffi::CStr::from_ptr((*kc).constvalue.cast_mut_ptr())
                .to_bytes()
                .to_vec(),
            _ => return None,
        };
        if tag(v) != pg_sys::NodeTag::T_FuncExpr {
            return None;
        }
        let tj = v as *mut pg_sys::FuncExpr;
        if (*tj).funcid != pg_sys::Oid::from(pg_sys::F_TO_JSONB) || list_len((*tj).args) != 1 {
            return None;
        }
        let var = list_ptr::<pg_sys::Node>((*tj).args, 0);
        if tag(var) != pg_sys::NodeTag::T_Var {
            return None;
        }
        let var = var as *mut pg_sys::Var;
        if (*var).varno as pg_sys::Index != rti || (*var).varlevelsup != 0 || (*var).varattno <= 0 {
            return None;
        }
        if out.iter().any(|(k, _)| *k == key) {
            return None; // jsonb_build_object keeps the last of repeated keys: not a key expression
        }
        out.push((key, var));
    }
    Some(out)
}

/// What a key column's JSON value in the constant says about the column.
enum Key {
    /// `to_jsonb(col)` equals the value exactly when col = this constant (of col's type).
    Value(*mut pg_sys::Const),
    /// Nothing derived (a JSON null, a type not handled): the original condition decides.
    Unknown,
    /// `to_jsonb(col)` never equals the value (a string for an int, 7.5 for an int, an int
    /// out of range, a uuid not spelled as to_jsonb writes it).
    Impossible,
}

/// The constant of `var`'s type that a JSON value equals when `to_jsonb(var)` equals it.
unsafe fn key_const(var: *mut pg_sys::Var, v: *mut pg_sys::JsonbValue) -> Key {
    let typ = (*var).vartype;
    let coll = (*var).varcollid;
    let make = |len: i32, value: pg_sys::Datum, byval: bool| {
        Key::Value(pg_sys::makeConst(typ, -1, coll, len, value, false, byval))
    };
    let jt = (*v).type_;
    if jt == pg_sys::jbvType::jbvNull {
        return Key::Unknown; // matches entries whose key column is NULL (not derived in v1)
    }
    if typ == pg_sys::NUMERICOID && jt == pg_sys::jbvType::jbvString {
        return Key::Unknown; // to_jsonb writes NaN and the infinities as strings
    }
    let expected = match typ {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID | pg_sys::NUMERICOID => {
            pg_sys::jbvType::jbvNumeric
        }
        pg_sys::TEXTOID | pg_sys::UUIDOID => pg_sys::jbvType::jbvString,
        pg_sys::BOOLOID => pg_sys::jbvType::jbvBool,
        _ => return Key::Unknown,
    };
    if jt != expected {
        return Key::Impossible;
    }
    match typ {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
            let Some(i) = integral(&numeric_text((*v).val.numeric)) else {
                return Key::Impossible;
            };
            match typ {
                pg_sys::INT2OID => {
                    i16::try_from(i).map_or(Key::Impossible, |i| make(2, i.into(), true))
                }
                pg_sys::INT4OID => {
                    i32::try_from(i).map_or(Key::Impossible, |i| make(4, i.into(), true))
                }
                _ => make(8, i.into(), true),
            }
        }
        pg_sys::NUMERICOID => {
            // a copy of the value through numeric_in of numeric_out's text (cannot fail)
            let Ok(text) = std::ffi::CString::new(numeric_text((*v).val.numeric)) else {
                return Key::Unknown;
            };
            let d = pg_sys::DirectFunctionCall3Coll(
                Some(ffi::numeric_in),
                pg_sys::InvalidOid,
                pg_sys::Datum::from(text.as_ptr()),
                pg_sys::Datum::from(pg_sys::InvalidOid),
                pg_sys::Datum::from(-1i32),
            );
            make(-1, d, false)
        }
        pg_sys::TEXTOID => {
            let s = (*v).val.string;
            let t = pg_sys::cstring_to_text_with_len(s.val, s.len);
            make(-1, pg_sys::Datum::from(t), false)
        }
        pg_sys::UUIDOID => {
            let s = (*v).val.string;
            let bytes = std::slice::from_raw_parts(s.val as *const u8, s.len as usize);
            let Some(u) = parse_uuid(bytes) else {
                return Key::Impossible;
            };
            let p = pg_sys::palloc(16) as *mut u8;
            std::ptr::copy_nonoverlapping(u.as_ptr(), p, 16);
            make(16, pg_sys::Datum::from(p), false)
        }
        _ => make(1, (*v).val.boolean.into(), true),
    }
}

unsafe fn numeric_text(n: pg_sys::Numeric) -> String {
    let d = pg_sys::DirectFunctionCall1Coll(
        Some(ffi::numeric_out),
        pg_sys::InvalidOid,
        pg_sys::Datum::from(n),
    );
    let s = std::ffi::CStr::from_ptr(d.cast_mut_ptr::<std::ffi::c_char>())
        .to_string_lossy()
        .into_owned();
    pg_sys::pfree(d.cast_mut_ptr());
    s
}

/// A numeric's text (as numeric_out writes it) as an i64 when it is a whole number: "7", "-7",
/// "7.000". None for fractions, NaN and numbers outside i64.
fn integral(text: &str) -> Option<i64> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if !frac.bytes().all(|b| b == b'0') {
        return None;
    }
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

/// A uuid in the form to_jsonb writes it (8-4-4-4-12 lowercase hex); any other spelling never
/// equals a uuid's jsonb, so it derives nothing.
fn parse_uuid(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut j = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if s[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[j] = (hex(s[i])? << 4) | hex(s[i + 1])?;
        j += 1;
        i += 2;
    }
    Some(out)
}

/// `var = c` with the type's default btree equality operator.
unsafe fn equality(var: *mut pg_sys::Var, c: *mut pg_sys::Const) -> Option<*mut pg_sys::Expr> {
    let tc = pg_sys::lookup_type_cache((*var).vartype, pg_sys::TYPECACHE_EQ_OPR as i32);
    if tc.is_null() || (*tc).eq_opr == pg_sys::InvalidOid {
        return None;
    }
    let left = pg_sys::copyObjectImpl(var.cast()) as *mut pg_sys::Expr;
    let e = pg_sys::make_opclause(
        (*tc).eq_opr,
        pg_sys::BOOLOID,
        false,
        left,
        c.cast(),
        pg_sys::InvalidOid,
        (*var).varcollid,
    ) as *mut pg_sys::OpExpr;
    pg_sys::set_opfuncid(e);
    Some(e.cast())
}

#[cfg(any(feature = "pg14", feature = "pg15"))]
unsafe fn make_rinfo(
    root: *mut pg_sys::PlannerInfo,
    clause: *mut pg_sys::Expr,
    security_level: pg_sys::Index,
) -> *mut pg_sys::RestrictInfo {
    pg_sys::make_restrictinfo(
        root,
        clause,
        true,
        false,
        false,
        security_level,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
}

#[cfg(feature = "pg13")]
unsafe fn make_rinfo(
    _root: *mut pg_sys::PlannerInfo,
    clause: *mut pg_sys::Expr,
    security_level: pg_sys::Index,
) -> *mut pg_sys::RestrictInfo {
    pg_sys::make_restrictinfo(
        clause,
        true,
        false,
        false,
        security_level,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
}

#[cfg(any(feature = "pg16", feature = "pg17"))]
unsafe fn make_rinfo(
    root: *mut pg_sys::PlannerInfo,
    clause: *mut pg_sys::Expr,
    security_level: pg_sys::Index,
) -> *mut pg_sys::RestrictInfo {
    pg_sys::make_restrictinfo(
        root,
        clause,
        true,
        false,
        false,
        false,
        security_level,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
}
