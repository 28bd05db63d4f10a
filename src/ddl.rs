//! DDL on a tracked table that koherent refuses before it runs: the C function of the event
//! trigger `koherent_ddl_start` (ddl_command_start, sql/ddl.sql), which sees the statement's
//! parse tree in every backend (a ProcessUtility hook would see it only where the library was
//! loaded before). What DDL does to history is the event triggers' at ddl_command_end.
//!
//! `ALTER TABLE ... ALTER COLUMN c TYPE t USING <expression>` rewrites every row's value of `c`
//! with the expression, and no history trigger fires: the rows' new values would be recorded
//! nowhere, and history's values of `c` are converted by a plain cast (`c::t`), so history and
//! the table would disagree unnoticed (`as_of` mixing both). On a tracked table the expression
//! must be the column itself or that plain cast; any other is refused (0A000 before anything
//! runs): change the values with UPDATE first (recorded), then change the type.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::CStr;

use crate::error::KoherentError;

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_koherent_on_ddl_start() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `koherent._on_ddl_start() RETURNS event_trigger`: [`check`] the statement about to run.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn koherent_on_ddl_start(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let data = (*fcinfo).context;
    if !data.is_null() && (*data).type_ == pg_sys::NodeTag::T_EventTriggerData {
        check((*(data as *mut pg_sys::EventTriggerData)).parsetree);
    }
    pg_sys::Datum::from(0usize)
}

/// Refuse `stmt` when it is an ALTER TABLE of a tracked table that retypes a column with an
/// expression other than the column or its plain cast to the new type.
unsafe fn check(stmt: *mut pg_sys::Node) {
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_AlterTableStmt {
        return;
    }
    let at = stmt as *mut pg_sys::AlterTableStmt;
    if (*at).relation.is_null() {
        return;
    }
    let cmds = PgList::<pg_sys::AlterTableCmd>::from_pg((*at).cmds);
    let rewrite = cmds.iter_ptr().find(|&cmd| {
        (*cmd).subtype == pg_sys::AlterTableType::AT_AlterColumnType
            && !(*cmd).def.is_null()
            && !(*cmd).name.is_null()
            && {
                let def = (*cmd).def as *mut pg_sys::ColumnDef;
                !(*def).raw_default.is_null()
                    && !plain(
                        (*def).raw_default,
                        CStr::from_ptr((*cmd).name),
                        (*def).typeName,
                    )
            }
    });
    let Some(cmd) = rewrite else { return };
    let relid = pg_sys::RangeVarGetRelidExtended(
        (*at).relation,
        pg_sys::NoLock as _,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    );
    if relid == pg_sys::InvalidOid || !tracked(relid) {
        return;
    }
    KoherentError::UnrecordedRewrite {
        table: crate::catalog::rel_name(relid),
        column: CStr::from_ptr((*cmd).name).to_string_lossy().into_owned(),
    }
    .raise();
}

/// `expr` is column `name` itself, or `name::<type>` with the ALTER's own type.
unsafe fn plain(expr: *mut pg_sys::Node, name: &CStr, typ: *mut pg_sys::TypeName) -> bool {
    match (*expr).type_ {
        pg_sys::NodeTag::T_ColumnRef => is_column(expr, name),
        pg_sys::NodeTag::T_TypeCast => {
            let cast = expr as *mut pg_sys::TypeCast;
            !(*cast).arg.is_null()
                && (*(*cast).arg).type_ == pg_sys::NodeTag::T_ColumnRef
                && is_column((*cast).arg, name)
                && !typ.is_null()
                && same_type((*cast).typeName, typ)
        }
        _ => false,
    }
}

/// Both names name the same type and modifier (`int8` and `bigint`, `varchar(9)` twice).
unsafe fn same_type(a: *mut pg_sys::TypeName, b: *mut pg_sys::TypeName) -> bool {
    let (mut ta, mut ma, mut tb, mut mb) = (pg_sys::InvalidOid, -1, pg_sys::InvalidOid, -1);
    pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), a, &mut ta, &mut ma);
    pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), b, &mut tb, &mut mb);
    ta == tb && ma == mb
}

unsafe fn is_column(expr: *mut pg_sys::Node, name: &CStr) -> bool {
    let fields = PgList::<pg_sys::Node>::from_pg((*(expr as *mut pg_sys::ColumnRef)).fields);
    if fields.len() != 1 {
        return false;
    }
    let field = fields.get_ptr(0).expect("one field");
    field_name(field).is_some_and(|f| f == name)
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
unsafe fn field_name<'a>(field: *mut pg_sys::Node) -> Option<&'a CStr> {
    ((*field).type_ == pg_sys::NodeTag::T_String)
        .then(|| CStr::from_ptr((*(field as *mut pg_sys::Value)).val.str_))
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
unsafe fn field_name<'a>(field: *mut pg_sys::Node) -> Option<&'a CStr> {
    ((*field).type_ == pg_sys::NodeTag::T_String)
        .then(|| CStr::from_ptr((*(field as *mut pg_sys::String)).sval))
}

/// The relation has koherent's history triggers (it, or the partitioned table it belongs to,
/// is tracked): its trigger `koherent_history_update` runs a function of schema koherent.
unsafe fn tracked(relid: pg_sys::Oid) -> bool {
    let koherent = pg_sys::get_namespace_oid(c"koherent".as_ptr(), true);
    if koherent == pg_sys::InvalidOid {
        return false;
    }
    let rel = pg_sys::RelationIdGetRelation(relid);
    if rel.is_null() {
        return false;
    }
    let desc = (*rel).trigdesc;
    let found = !desc.is_null()
        && (0..(*desc).numtriggers as usize).any(|i| {
            let t = &*(*desc).triggers.add(i);
            CStr::from_ptr(t.tgname) == c"koherent_history_update"
                && pg_sys::get_func_namespace(t.tgfoid) == koherent
        });
    pg_sys::RelationClose(rel);
    found
}
