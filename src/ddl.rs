//! DDL on a tracked table that koherent refuses before it runs: the C function of the event
//! trigger `koherent_ddl_start` (ddl_command_start, sql/ddl.sql), which sees the statement's
//! parse tree in every backend (a ProcessUtility hook would see it only where the library was
//! loaded before). What DDL does to history is the event triggers' at ddl_command_end.
//!
//! `ALTER TABLE ... ALTER COLUMN c TYPE t USING <expression>` rewrites every row's value of `c`
//! with the expression, and no history trigger fires: the rows' new values would be recorded
//! nowhere, and history's values of `c` are converted by a plain cast (`c::t`), so history and
//! the table would disagree unnoticed (`as_of` mixing both). On a tracked table the expression
//! must be the column itself or that plain cast, and the change must be between PostgreSQL's
//! own types (a cast to or from another type may be a function of the type's owner, which
//! history does not run); anything else is refused (0A000 before anything runs): change the
//! values with UPDATE first (recorded), then change the type. `ALTER TYPE ... RENAME VALUE` of
//! an enum that history holds would relabel every recorded value: refused too.
//!
//! Partitions attached, detached or dropped change a tracked table's rows with no row trigger
//! firing: `ATTACH PARTITION` adds the partition's rows, `DETACH PARTITION` and `DROP TABLE` of
//! a partition (also through `DROP SCHEMA ... CASCADE` and `DROP OWNED`) remove them. Before
//! such a statement runs, under the locks it takes (so every transaction that wrote the
//! partition has ended), the rows are recorded in the tracked
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
    if (*stmt).type_ == pg_sys::NodeTag::T_AlterEnumStmt {
        return renamed_enum_value(stmt as *mut pg_sys::AlterEnumStmt);
    }
    if (*stmt).type_ == pg_sys::NodeTag::T_DropOwnedStmt {
        return dropped_owned(stmt as *mut pg_sys::DropOwnedStmt);
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
        let attach = match (*cmd).subtype {
            pg_sys::AlterTableType::AT_AttachPartition => true,
            pg_sys::AlterTableType::AT_DetachPartition => false,
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
        if part == pg_sys::InvalidOid {
            continue;
        }
        if !attach && (*pc).concurrent {
            // (its rows would be recorded in its first transaction, and writes that began
            // before it may still reach the partition until it finishes in its second)
            KoherentError::DetachConcurrently {
                table: crate::catalog::rel_name(parent),
            }
            .raise();
        }
        // the statement's own locks first (PostgreSQL's order: the parent, then the partition),
        // so that every transaction that wrote the partition has ended: what is recorded is
        // what the statement adds or removes
        let parent_lock = if attach {
            pg_sys::ShareUpdateExclusiveLock
        } else {
            pg_sys::AccessExclusiveLock
        };
        pg_sys::LockRelationOid(parent, parent_lock as _);
        pg_sys::LockRelationOid(part, pg_sys::AccessExclusiveLock as _);
        record_partition_rows(parent, part, if attach { c"CREATE" } else { c"TRUNCATE" });
    }
    let retypes: Vec<*mut pg_sys::AlterTableCmd> = cmds
        .iter_ptr()
        .filter(|&cmd| {
            (*cmd).subtype == pg_sys::AlterTableType::AT_AlterColumnType
                && !(*cmd).def.is_null()
                && !(*cmd).name.is_null()
        })
        .collect();
    if retypes.is_empty() {
        return;
    }
    let relid = relation((*at).relation);
    if relid == pg_sys::InvalidOid || !tracked(relid) {
        return;
    }
    for cmd in retypes {
        let def = (*cmd).def as *mut pg_sys::ColumnDef;
        let name = CStr::from_ptr((*cmd).name);
        let by_expression = !(*def).raw_default.is_null()
            && !plain((*def).raw_default, name, (*def).typeName, (*at).relation);
        if by_expression || owners_cast(relid, name, (*def).typeName) {
            KoherentError::UnrecordedRewrite {
                table: crate::catalog::rel_name(relid),
                column: name.to_string_lossy().into_owned(),
            }
            .raise();
        }
    }
}

/// A type change of column `name` to or from a type that is not PostgreSQL's own (domains by
/// their base type): its values are converted by casts the type's owner may define (a function
/// of its own), which history does not run (it keeps the old values under a retired column).
/// Between PostgreSQL's own types only a superuser can define a cast.
unsafe fn owners_cast(relid: pg_sys::Oid, name: &CStr, typ: *mut pg_sys::TypeName) -> bool {
    if typ.is_null() {
        return false;
    }
    let attnum = pg_sys::get_attnum(relid, name.as_ptr());
    if attnum == 0 {
        return false; // (PostgreSQL reports the missing column)
    }
    let old = pg_sys::get_atttype(relid, attnum);
    let (mut new, mut typmod) = (pg_sys::InvalidOid, -1);
    pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), typ, &mut new, &mut typmod);
    let builtin = crate::catalog::is_builtin_type;
    old != new && !(builtin(old) && builtin(new))
}

/// `expr` is column `name` itself (also qualified by the table's name as the ALTER gives it),
/// or `name::<type>` with the ALTER's own type, either under a COLLATE (which changes no value).
unsafe fn plain(
    expr: *mut pg_sys::Node,
    name: &CStr,
    typ: *mut pg_sys::TypeName,
    rv: *mut pg_sys::RangeVar,
) -> bool {
    match (*expr).type_ {
        pg_sys::NodeTag::T_ColumnRef => is_column(expr, name, rv),
        pg_sys::NodeTag::T_CollateClause => {
            let arg = (*(expr as *mut pg_sys::CollateClause)).arg;
            !arg.is_null() && plain(arg, name, typ, rv)
        }
        pg_sys::NodeTag::T_TypeCast => {
            let cast = expr as *mut pg_sys::TypeCast;
            !(*cast).arg.is_null()
                && matches!(
                    (*(*cast).arg).type_,
                    pg_sys::NodeTag::T_ColumnRef | pg_sys::NodeTag::T_CollateClause
                )
                && plain((*cast).arg, name, std::ptr::null_mut(), rv)
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

unsafe fn is_column(expr: *mut pg_sys::Node, name: &CStr, rv: *mut pg_sys::RangeVar) -> bool {
    let fields = PgList::<pg_sys::Node>::from_pg((*(expr as *mut pg_sys::ColumnRef)).fields);
    let names: Vec<Option<&CStr>> = fields.iter_ptr().map(|f| field_name(f)).collect();
    let given = |p: *mut std::ffi::c_char| (!p.is_null()).then(|| CStr::from_ptr(p));
    match names.as_slice() {
        [Some(c)] => *c == name,
        [Some(t), Some(c)] => *c == name && given((*rv).relname) == Some(*t),
        [Some(n), Some(t), Some(c)] => {
            *c == name && given((*rv).relname) == Some(*t) && given((*rv).schemaname) == Some(*n)
        }
        _ => false,
    }
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

/// The relation has koherent's history writer among its triggers (it, or the partitioned
/// table it belongs to, is tracked): a trigger running `koherent._history_trigger`, whatever
/// the trigger is named (an owner may rename it).
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
            pg_sys::get_func_namespace(t.tgfoid) == koherent && {
                let name = pg_sys::get_func_name(t.tgfoid);
                !name.is_null() && CStr::from_ptr(name) == c"_history_trigger"
            }
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

/// `DROP SCHEMA ... CASCADE`: the partitions of tracked tables in the schemas (whose tracked
/// table is not: that one goes whole, its history kept), as `DROP TABLE` of each.
unsafe fn dropped_schemas(drop: *mut pg_sys::DropStmt) {
    if (*drop).behavior != pg_sys::DropBehavior::DROP_CASCADE {
        return;
    }
    let mut schemas = Vec::new();
    for name in PgList::<pg_sys::Node>::from_pg((*drop).objects).iter_ptr() {
        if let Some(n) = field_name(name) {
            let nsp = pg_sys::get_namespace_oid(n.as_ptr(), true);
            if nsp != pg_sys::InvalidOid {
                schemas.push(nsp);
            }
        }
    }
    doomed_partitions(c"c.relnamespace", &schemas);
}

/// `DROP OWNED BY ...`: the partitions of tracked tables the roles own (whose tracked table
/// they do not), as `DROP TABLE` of each.
unsafe fn dropped_owned(drop: *mut pg_sys::DropOwnedStmt) {
    let mut roles = Vec::new();
    for role in PgList::<pg_sys::RoleSpec>::from_pg((*drop).roles).iter_ptr() {
        let oid = pg_sys::get_rolespec_oid(role, true);
        if oid != pg_sys::InvalidOid {
            roles.push(oid);
        }
    }
    doomed_partitions(c"c.relowner", &roles);
}

/// Record the rows of every partition of a tracked table whose `column` (of pg_class `c`) is
/// one of `oids` while its tracked table's is not, before they go.
unsafe fn doomed_partitions(column: &CStr, oids: &[pg_sys::Oid]) {
    if oids.is_empty()
        || pg_sys::get_namespace_oid(c"koherent".as_ptr(), true) == pg_sys::InvalidOid
    {
        return;
    }
    let list = oids
        .iter()
        .map(|o| o.to_u32().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let col = column.to_str().expect("ascii");
    let query = std::ffi::CString::new(format!(
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relispartition AND {col} IN ({list}) \
         AND (SELECT {rcol} FROM pg_catalog.pg_class r WHERE r.oid = pg_catalog.pg_partition_root(c.oid)) \
             NOT IN ({list})",
        rcol = col.replace("c.", "r."),
    ))
    .expect("no NUL");
    let parts: Vec<pg_sys::Oid> = spi(&query, &[], true)
        .into_iter()
        .flatten()
        .map(|d| pg_sys::Oid::from(d.value() as u32))
        .filter(|&part| tracked(part))
        .collect();
    for part in parts {
        dropped_partition(part);
    }
}

/// `DROP TABLE` of partitions of a tracked table: their rows, as TRUNCATE entries.
unsafe fn dropped_partitions(drop: *mut pg_sys::DropStmt) {
    if (*drop).removeType == pg_sys::ObjectType::OBJECT_SCHEMA {
        return dropped_schemas(drop);
    }
    if (*drop).removeType != pg_sys::ObjectType::OBJECT_TABLE {
        return;
    }
    let objects = PgList::<pg_sys::List>::from_pg((*drop).objects);
    for names in objects.iter_ptr() {
        let rv = pg_sys::makeRangeVarFromNameList(names);
        let relid = relation(rv);
        if relid != pg_sys::InvalidOid && pg_sys::get_rel_relispartition(relid) && tracked(relid) {
            dropped_partition(relid);
        }
    }
}

/// A partition of a tracked table about to be dropped: its rows, as TRUNCATE entries.
unsafe fn dropped_partition(relid: pg_sys::Oid) {
    // (DROP's own locks first, in its order: the parent, then the partition)
    #[cfg(not(feature = "pg13"))]
    let parent =
        pg_sys::ffi::pg_guard_ffi_boundary(|| crate::ffi::get_partition_parent(relid, false));
    #[cfg(feature = "pg13")]
    let parent = pg_sys::ffi::pg_guard_ffi_boundary(|| crate::ffi::get_partition_parent(relid));
    pg_sys::LockRelationOid(parent, pg_sys::AccessExclusiveLock as _);
    pg_sys::LockRelationOid(relid, pg_sys::AccessExclusiveLock as _);
    record_partition_rows(relid, relid, c"TRUNCATE");
}

/// Run `koherent._record_partition_rows(parent, part, kind)` as the extension owner.
unsafe fn record_partition_rows(parent: pg_sys::Oid, part: pg_sys::Oid, kind: &CStr) {
    let _as_owner = crate::security::AsRole::enter(extension_owner());
    spi(
        c"SELECT koherent._record_partition_rows($1, $2, $3)",
        &[
            (pg_sys::OIDOID, pg_sys::Datum::from(parent)),
            (pg_sys::OIDOID, pg_sys::Datum::from(part)),
            (
                pg_sys::TEXTOID,
                pg_sys::Datum::from(pg_sys::cstring_to_text(kind.as_ptr())),
            ),
        ],
        false,
    );
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

/// `ALTER TYPE ... RENAME VALUE` of an enum that history holds values of (the type, an array or
/// a domain of it, in a history table): every recorded value would read as the new label, and a
/// tracked table's rows would change with no entry. Refused.
unsafe fn renamed_enum_value(stmt: *mut pg_sys::AlterEnumStmt) {
    if (*stmt).oldVal.is_null() {
        return; // ADD VALUE: nothing recorded changes
    }
    let typ = pg_sys::typenameTypeId(
        std::ptr::null_mut(),
        pg_sys::makeTypeNameFromNameList((*stmt).typeName),
    );
    if pg_sys::get_namespace_oid(c"koherent_history".as_ptr(), true) == pg_sys::InvalidOid {
        return;
    }
    let used = !spi(
        c"SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
          WHERE c.relnamespace = 'koherent_history'::pg_catalog.regnamespace AND NOT a.attisdropped \
          AND (t.oid = $1 OR t.typelem = $1 OR t.typbasetype = $1) LIMIT 1",
        &[(pg_sys::OIDOID, pg_sys::Datum::from(typ))],
        true,
    )
    .is_empty();
    if used {
        KoherentError::EnumRenamed {
            typ: CStr::from_ptr(pg_sys::format_type_be(typ))
                .to_string_lossy()
                .into_owned(),
        }
        .raise();
    }
}

/// Run `query` with parameters (type, value) through SPI: the first column of each row it
/// returns (None for a null; by-value types only, read after SPI is finished).
unsafe fn spi(
    query: &CStr,
    args: &[(pg_sys::Oid, pg_sys::Datum)],
    read_only: bool,
) -> Vec<Option<pg_sys::Datum>> {
    if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
        KoherentError::Internal("SPI_connect failed".into()).raise();
    }
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
    let nulls = vec![b' ' as std::ffi::c_char; args.len()];
    let rc = pg_sys::SPI_execute_with_args(
        query.as_ptr(),
        args.len() as _,
        types.as_mut_ptr(),
        values.as_mut_ptr(),
        nulls.as_ptr(),
        read_only,
        0,
    );
    let mut rows = Vec::new();
    if rc == pg_sys::SPI_OK_SELECT as i32 {
        let table = pg_sys::SPI_tuptable;
        for i in 0..pg_sys::SPI_processed as usize {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(*(*table).vals.add(i), (*table).tupdesc, 1, &mut isnull);
            rows.push((!isnull).then_some(d));
        }
    }
    pg_sys::SPI_finish();
    if rc != pg_sys::SPI_OK_SELECT as i32 {
        KoherentError::Internal(format!("SPI failed ({rc}): {}", query.to_string_lossy())).raise();
    }
    rows
}
