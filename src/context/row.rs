//! The transaction's context row (and its task row, the first time a task writes): written once
//! per transaction by the first tracked write. A task not yet known to this backend goes through
//! one prepared statement that inserts both rows ([`ContextStatements`]); otherwise the context
//! row alone is inserted directly ([`insert_context_row`]), without planning a statement.

use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, Spi};
use pgrx::{JsonB, PgOid};
use std::cell::RefCell;
use std::rc::Rc;

use crate::catalog::koherent_oids;
use crate::datum::{palloc_copy, text_datum, varlena_bytes};
use crate::error::{KoherentError, OrRaise};
use crate::security::outer_role_name;
use crate::verify::Task;

/// What the context row records of who the transaction writes for: its organization and the
/// application's user (0.7.0's columns).
#[derive(Default, Clone)]
pub struct Identity {
    pub organization: Option<String>,
    pub app_user: Option<String>,
}

thread_local! {
    /// `'{}'::jsonb` as a flat varlena: the metadata of nearly every context row.
    static EMPTY_METADATA: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    static STATEMENTS: RefCell<Option<Rc<ContextStatements>>> = const { RefCell::new(None) };
    /// inet_client_addr() of this backend (null for a Unix socket), as a flat varlena.
    static CLIENT_ADDR: RefCell<Option<Option<Vec<u8>>>> = const { RefCell::new(None) };
}

/// The statements prepared once per backend (kept across transactions).
pub struct ContextStatements {
    /// Whether the context table has effective_role (0.4.0 on; a 0.3.0 schema under the new
    /// library, before ALTER EXTENSION UPDATE, has not).
    pub effective_role: bool,
    /// Whether the task and context tables have 0.7.0's organization, assigner_user and
    /// app_user columns.
    pub identity: bool,
    /// The task row (if missing) and the context row, in one statement: see [`CONTEXT_INSERT_SQL`].
    /// It returns whether it made the task row.
    pub context_with_task: OwnedPreparedStatement,
    /// `metadata = metadata || $2` of a context row already written.
    pub metadata: OwnedPreparedStatement,
    /// A task row's organization ($1 issuer, $2 task id): a row when the task is recorded.
    pub task_organization: OwnedPreparedStatement,
}

/// The context row's INSERT. Its parameters: $1 id, $2 task id, $3 issuer, $4 changed_by
/// (act.sub), $5 client id (act.cid), $6 metadata, $16 effective role, $17 organization, $18
/// app user; $7..$15 and $19 (assigner_user) are the task row's (see
/// [`ContextStatements::prepare`]). The rest comes from the session.
const CONTEXT_INSERT_SQL: &str = "INSERT INTO koherent.transaction_auth_context
   (id, txid, task_id, issuer, changed_by, client_id, db_role, effective_role, application_name,
    client_addr, backend_pid, created_at, metadata, organization, app_user)
 VALUES ($1, pg_catalog.pg_current_xact_id(), $2, $3, $4, $5, pg_catalog.session_user(), $16,
    pg_catalog.current_setting('application_name'), pg_catalog.inet_client_addr(),
    pg_catalog.pg_backend_pid(), pg_catalog.now(), $6, $17, $18)";

fn has_column(relid: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    unsafe { pg_sys::get_attnum(relid, name.as_ptr()) != pg_sys::InvalidAttrNumber as i16 }
}

/// Whether the context table has the effective_role column (see [`ContextStatements`]).
pub fn context_has_effective_role() -> bool {
    has_column(unsafe { koherent_oids() }.context_table, c"effective_role")
}

/// Whether the context table has 0.7.0's identity columns (see [`ContextStatements`]).
pub fn has_identity_columns() -> bool {
    has_column(unsafe { koherent_oids() }.context_table, c"app_user")
}

/// The prepared statements, made on first use and again when the schema changed under them.
pub fn statements() -> Rc<ContextStatements> {
    let effective_role = context_has_effective_role();
    let identity = has_identity_columns();
    if let Some(p) = STATEMENTS.with(|p| p.borrow().clone()) {
        if p.effective_role == effective_role && p.identity == identity {
            return p;
        }
    }
    let text = PgOid::from_untagged(pg_sys::TEXTOID);
    let uuid = PgOid::from_untagged(pg_sys::UUIDOID);
    let jsonb = PgOid::from_untagged(pg_sys::JSONBOID);
    let mut context_insert = CONTEXT_INSERT_SQL.to_string();
    if !effective_role {
        context_insert = context_insert
            .replace(" effective_role,", "")
            .replace(" $16,", "");
    }
    if !identity {
        context_insert = context_insert
            .replace(", organization, app_user)", ")")
            .replace(", $17, $18)", ")");
    }
    let (task_cols, task_vals) = if identity {
        (", organization, assigner_user", ", $17, $19")
    } else {
        ("", "")
    };
    let with_task = format!(
        "WITH t AS (
           INSERT INTO koherent.task (issuer, task_id, parent_task_id, root_task_id, assigner_sub,
             caller_sub, agent_sub, agent_client_id, token_id, args_hash, args_hash_algorithm,
             claims, token{task_cols})
           VALUES ($3, $2, $7, $8, $9, $10, $4, $5, $11, $12, $13, $14, $15{task_vals})
           ON CONFLICT (issuer, task_id) DO NOTHING RETURNING 1)
         {context_insert} RETURNING (SELECT pg_catalog.count(*) FROM t)"
    );
    let statements = Spi::connect(|c| -> Result<ContextStatements, pgrx::spi::Error> {
        // The parameter types, by number: $1 uuid (context id), $2..$5 text (task id, issuer,
        // changed_by, client id), $6 jsonb (metadata); the task row's $7..$13 text (parent,
        // root, assigner, caller, token id, args hash, its algorithm), $14 jsonb (claims),
        // $15 text (token); $16 text (effective role), $17 text (organization), $18 text (app
        // user), $19 jsonb (assigner_user); a parameter the schema has no column for is unused.
        let mut types = vec![uuid, text, text, text, text, jsonb];
        types.extend([text; 7]);
        types.extend([jsonb, text, text, text, text, jsonb]);
        let context_with_task = c.prepare_mut(with_task.as_str(), &types)?.keep();
        let metadata = c
            .prepare_mut(
                // (operators named with their schema: prepared once, whatever search_path)
                "UPDATE koherent.transaction_auth_context SET metadata = metadata OPERATOR(pg_catalog.||) $2 \
                 WHERE id OPERATOR(pg_catalog.=) $1",
                &[uuid, jsonb],
            )?
            .keep();
        let task_organization = c
            .prepare_mut(
                if identity {
                    TASK_ORGANIZATION_SQL
                } else {
                    "SELECT NULL::pg_catalog.text FROM koherent.task \
                     WHERE issuer OPERATOR(pg_catalog.=) $1 AND task_id OPERATOR(pg_catalog.=) $2"
                },
                &[text, text],
            )?
            .keep();
        Ok(ContextStatements {
            effective_role,
            identity,
            context_with_task,
            metadata,
            task_organization,
        })
    })
    .map_err(|e| KoherentError::Internal(e.to_string()))
    .or_raise();
    let statements = Rc::new(statements);
    STATEMENTS.with(|p| *p.borrow_mut() = Some(statements.clone()));
    statements
}

/// A task's organization (every name and operator with its schema).
const TASK_ORGANIZATION_SQL: &str = "SELECT organization FROM koherent.task \
     WHERE issuer OPERATOR(pg_catalog.=) $1 AND task_id OPERATOR(pg_catalog.=) $2";

/// [`recorded_organization`] for a caller outside the history writer (set_task, with the
/// client's rights): looked up as the owner of koherent's tables (the extension owner), under a
/// security-restricted operation, by a one-off statement that names every object and operator
/// with its schema (none of the caller's can run). Nothing of it reaches the client but
/// set_task's verdict on its own verified token.
pub fn recorded_organization_as_owner(issuer: &str, task_id: &str) -> Option<Option<String>> {
    if !has_identity_columns() {
        return Some(None);
    }
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as _,
            pg_sys::Datum::from(koherent_oids().context_table),
        );
        if tup.is_null() {
            return None;
        }
        let owner = (*(pg_sys::GETSTRUCT(tup) as pg_sys::Form_pg_class)).relowner;
        pg_sys::ReleaseSysCache(tup);
        let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        // (an ERROR ends the transaction, whose abort restores the user)
        let found = Spi::connect(|c| -> Result<Option<Option<String>>, pgrx::spi::Error> {
            let rows = c.select(
                TASK_ORGANIZATION_SQL,
                Some(1),
                &[issuer.into(), task_id.into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(Some(rows.first().get::<String>(1)?))
        })
        .map_err(|e| KoherentError::Internal(e.to_string()))
        .or_raise();
        pg_sys::SetUserIdAndSecContext(user, sec);
        found
    }
}

/// A task's recorded organization: None when it has no row, Some(None) when it has none.
pub fn recorded_organization(issuer: &str, task_id: &str) -> Option<Option<String>> {
    let statements = statements();
    Spi::connect(|c| -> Result<Option<Option<String>>, pgrx::spi::Error> {
        let rows = c.select(
            &statements.task_organization,
            Some(1),
            &[issuer.into(), task_id.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(rows.first().get::<String>(1)?))
    })
    .map_err(|e| KoherentError::Internal(e.to_string()))
    .or_raise()
}

unsafe fn client_addr() -> Option<pg_sys::Datum> {
    let cached = CLIENT_ADDR.with(|c| c.borrow().clone());
    let addr = match cached {
        Some(a) => a,
        None => {
            // inet_client_addr() takes no arguments and reads only MyProcPort.
            let fcinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>())
                as pg_sys::FunctionCallInfo;
            let d = pg_sys::inet_client_addr(fcinfo);
            let a = (!(*fcinfo).isnull).then(|| varlena_bytes(d));
            CLIENT_ADDR.with(|c| *c.borrow_mut() = Some(a.clone()));
            a
        }
    };
    addr.map(|a| palloc_copy(&a))
}

/// The context row, inserted directly (see insert::row): what [`CONTEXT_INSERT_SQL`] writes,
/// without planning and executing a statement per transaction.
pub fn insert_context_row(id: [u8; 16], task: Option<&Task>, metadata: JsonB, identity: &Identity) {
    unsafe {
        let relid = koherent_oids().context_table;
        let cl = task.map(|t| &t.claims);
        let role = pg_sys::GetUserNameFromId(pg_sys::GetSessionUserId(), false);
        let app = if pg_sys::application_name.is_null() {
            c"".as_ptr()
        } else {
            pg_sys::application_name.cast_const()
        };
        let columns = [
            ("id", Some(palloc_copy(&id))),
            (
                "txid",
                Some(pg_sys::Datum::from(
                    pg_sys::GetTopFullTransactionId().value as i64,
                )),
            ),
            ("task_id", cl.map(|c| text_datum(&c.tsk))),
            ("issuer", cl.map(|c| text_datum(&c.iss))),
            ("changed_by", cl.map(|c| text_datum(&c.act.sub))),
            ("client_id", cl.map(|c| text_datum(&c.act.cid))),
            (
                "db_role",
                Some(pg_sys::Datum::from(pg_sys::cstring_to_text(role))),
            ),
            (
                "effective_role",
                context_has_effective_role().then(|| text_datum(&outer_role_name())),
            ),
            (
                "application_name",
                Some(pg_sys::Datum::from(pg_sys::cstring_to_text(app))),
            ),
            ("client_addr", client_addr()),
            ("backend_pid", Some(pg_sys::Datum::from(pg_sys::MyProcPid))),
            (
                "created_at",
                Some(pg_sys::Datum::from(
                    pg_sys::GetCurrentTransactionStartTimestamp(),
                )),
            ),
            ("metadata", Some(metadata_datum(metadata))),
            (
                "organization",
                identity.organization.as_deref().map(text_datum),
            ),
            ("app_user", identity.app_user.as_deref().map(text_datum)),
        ];
        crate::insert::row::insert_row(relid, &columns);
    }
}

/// The context row's metadata as a jsonb datum (palloc'd). The empty object, which nearly every
/// transaction records, is copied from bytes made once per backend: pgrx makes a jsonb by
/// printing the value and parsing the text (about 1.3 us of a single-row write).
fn metadata_datum(metadata: JsonB) -> pg_sys::Datum {
    use pgrx::IntoDatum;
    let empty = matches!(&metadata.0, serde_json::Value::Object(m) if m.is_empty());
    if !empty {
        return metadata.into_datum().expect("a jsonb datum");
    }
    EMPTY_METADATA.with(|e| unsafe {
        let mut e = e.borrow_mut();
        let bytes =
            e.get_or_insert_with(|| varlena_bytes(metadata.into_datum().expect("a jsonb datum")));
        palloc_copy(bytes)
    })
}

/// Whether a context row with this id is recorded (visible to the writer, the tables' owner).
/// Asked only of an id the client chose with set_context_id.
pub fn context_recorded(id: [u8; 16]) -> bool {
    Spi::connect(|c| -> Result<bool, pgrx::spi::Error> {
        let rows = c.select(
            "SELECT 1 FROM koherent.transaction_auth_context \
             WHERE id OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[pgrx::Uuid::from_bytes(id).into()],
        )?;
        Ok(!rows.is_empty())
    })
    .map_err(|e| KoherentError::Internal(e.to_string()))
    .or_raise()
}
