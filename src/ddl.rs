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
//!
//! Partitions attached, detached or dropped change a tracked table's rows with no row trigger
//! firing: `ATTACH PARTITION` adds the partition's rows, `DETACH PARTITION` and `DROP TABLE` of
//! a partition remove them. Before such a statement runs, the rows are recorded in the tracked
//! table's history as `CREATE` (attached) or `TRUNCATE` (detached, dropped) entries of the
//! transaction, as TRUNCATE's copy records the rows it removes (`koherent._record_partition_rows`,
//! run as the extension owner: history is not the client's to write). A statement that then
//! fails takes them with it.

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
/// expression other than the column or its plain cast to the new type; record the rows of
/// partitions it attaches, detaches or drops.
unsafe fn check(stmt: *mut pg_sys::Node) {
    if stmt.is_null() {
        return;
    }
    if (*stmt).type_ == pg_sys::NodeTag::T_DropStmt {
        return dropped_partitions(stmt as *mut pg_sys::DropStmt);
    }
    if (*stmt).type_ != pg_sys::NodeTag::T_AlterTableStmt {
        return;
    }
    let at = stmt as *mut pg_sys::AlterTableStmt;
    if (*at).relation.is_null() {
        return;
    }
    let cmds = PgList::<pg_sys::AlterTableCmd>::from_pg((*at).cmds);
    for cmd in cmds.iter_ptr() {
        let kind = match (*cmd).subtype {
            pg_sys::AlterTableType::AT_AttachPartition => c"CREATE",
            pg_sys::AlterTableType::AT_DetachPartition => c"TRUNCATE",
            _ => continue,
        };
        let pc = (*cmd).def as *mut pg_sys::PartitionCmd;
        if pc.is_null() || (*pc).name.is_null() {
            continue;
        }
        let parent = relation((*at).relation);
        if parent == pg_sys::InvalidOid || !tracked(parent) {
            continue;
        }
        let part = relation((*pc).name);
        if part != pg_sys::InvalidOid {
            record_partition_rows(parent, part, kind);
        }
    }
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
    let relid = relation((*at).relation);
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

/// The relation a name names now, or InvalidOid (the statement itself reports a missing one).
unsafe fn relation(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    pg_sys::RangeVarGetRelidExtended(
        rv,
        pg_sys::NoLock as _,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    )
}

/// `DROP TABLE` of partitions of a tracked table: their rows, as TRUNCATE entries.
unsafe fn dropped_partitions(drop: *mut pg_sys::DropStmt) {
    if (*drop).removeType != pg_sys::ObjectType::OBJECT_TABLE {
        return;
    }
    let objects = PgList::<pg_sys::List>::from_pg((*drop).objects);
    for names in objects.iter_ptr() {
        let rv = pg_sys::makeRangeVarFromNameList(names);
        let relid = relation(rv);
        if relid != pg_sys::InvalidOid && pg_sys::get_rel_relispartition(relid) && tracked(relid) {
            record_partition_rows(relid, relid, c"TRUNCATE");
        }
    }
}

/// Run `koherent._record_partition_rows(parent, part, kind)` as the extension owner.
unsafe fn record_partition_rows(parent: pg_sys::Oid, part: pg_sys::Oid, kind: &CStr) {
    let owner = extension_owner();
    let mut user = pg_sys::InvalidOid;
    let mut sec = 0;
    pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
    // (an error here aborts the (sub)transaction, which puts the user back)
    pg_sys::SetUserIdAndSecContext(owner, sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
        KoherentError::Internal("SPI_connect failed".into()).raise();
    }
    let mut types = [pg_sys::OIDOID, pg_sys::OIDOID, pg_sys::TEXTOID];
    let mut values = [
        pg_sys::Datum::from(parent),
        pg_sys::Datum::from(part),
        pg_sys::Datum::from(pg_sys::cstring_to_text(kind.as_ptr())),
    ];
    let nulls = [b' ' as std::ffi::c_char; 3];
    let rc = pg_sys::SPI_execute_with_args(
        c"SELECT koherent._record_partition_rows($1, $2, $3)".as_ptr(),
        3,
        types.as_mut_ptr(),
        values.as_mut_ptr(),
        nulls.as_ptr(),
        false,
        0,
    );
    pg_sys::SPI_finish();
    pg_sys::SetUserIdAndSecContext(user, sec);
    if rc != pg_sys::SPI_OK_SELECT as i32 {
        KoherentError::Internal(format!(
            "koherent._record_partition_rows: SPI failed ({rc})"
        ))
        .raise();
    }
}

/// The owner of the koherent extension (who owns history).
unsafe fn extension_owner() -> pg_sys::Oid {
    let ext = pg_sys::get_extension_oid(c"koherent".as_ptr(), false);
    let rel = pg_sys::table_open(pg_sys::ExtensionRelationId, pg_sys::AccessShareLock as _);
    let mut key = pg_sys::ScanKeyData::default();
    pg_sys::ScanKeyInit(
        &mut key,
        pg_sys::Anum_pg_extension_oid as _,
        pg_sys::BTEqualStrategyNumber as _,
        pg_sys::RegProcedure::from(pg_sys::F_OIDEQ),
        pg_sys::Datum::from(ext),
    );
    let scan = pg_sys::systable_beginscan(
        rel,
        pg_sys::Oid::from(pg_sys::ExtensionOidIndexId),
        true,
        std::ptr::null_mut(),
        1,
        &mut key,
    );
    let tuple = pg_sys::systable_getnext(scan);
    let owner = if tuple.is_null() {
        pg_sys::InvalidOid
    } else {
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_extension>(tuple);
        (*form).extowner
    };
    pg_sys::systable_endscan(scan);
    pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    if owner == pg_sys::InvalidOid {
        KoherentError::Internal("the koherent extension has no owner".into()).raise();
    }
    owner
}
