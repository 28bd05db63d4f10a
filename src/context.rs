//! The transaction's verified state, in backend memory only.
//!
//! `set_task` (or a token arriving by setting) puts a verified task here; the history triggers
//! ask [`write_context`] once per statement for the transaction's context id, and the first
//! such call writes the task row (once per task id) and the context row. Transaction callbacks
//! clear everything at commit, abort and prepare, and undo what a rolled-back savepoint did, so
//! nothing leaks into the next transaction on the same connection (poolers included).
//!
//! No GUC, table or function a client can reach writes this state: `set_task` only stores what
//! it verified, and a token given by setting is verified before it is used.

use koherent_token::Claims;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, Spi};
use pgrx::{JsonB, PgOid, Uuid};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use crate::error::{KoherentError, OrRaise};
use crate::{guc, verify};

/// A verified task: its claims and the signed token they came from.
#[derive(Debug)]
pub struct Task {
    pub claims: Claims,
    pub token: String,
    /// The key that verified it: (kid, public key), checked again at every write.
    pub kid: String,
    pub key: [u8; 32],
    /// The claims as a flat jsonb value, made on first use (set_task returns it every time).
    claims_jsonb: std::cell::OnceCell<Rc<[u8]>>,
}

/// A jsonb value already in its on-disk form: returning it is one palloc and copy, where
/// returning a `JsonB` serializes the JSON to text and parses it again (`jsonb_in`), every call.
pub struct FlatJsonb(Rc<[u8]>);

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

impl Task {
    pub fn new(claims: Claims, token: String, kid: String, key: [u8; 32]) -> Task {
        Task {
            claims,
            token,
            kid,
            key,
            claims_jsonb: std::cell::OnceCell::new(),
        }
    }

    /// The claims as jsonb, flattened once per verified token.
    pub fn claims_jsonb(&self) -> FlatJsonb {
        use pgrx::IntoDatum;
        let bytes = self.claims_jsonb.get_or_init(|| unsafe {
            let d = claims_json(self)
                .into_datum()
                .expect("jsonb_in returns a value");
            let p = d.cast_mut_ptr::<pg_sys::varlena>();
            let flat = pg_sys::pg_detoast_datum(p);
            let bytes: Rc<[u8]> =
                std::slice::from_raw_parts(flat as *const u8, pgrx::varsize_any(flat)).into();
            bytes
        });
        FlatJsonb(bytes.clone())
    }
}

impl Task {
    fn label(&self) -> String {
        format!(
            "task \"{}\" of issuer \"{}\"",
            self.claims.tsk, self.claims.iss
        )
    }
    fn key(&self) -> (String, String) {
        (self.claims.iss.clone(), self.claims.tsk.clone())
    }
    fn same_as(&self, other: &Task) -> bool {
        self.claims.tsk == other.claims.tsk && self.claims.iss == other.claims.iss
    }
}

/// The context row, once written in this transaction.
struct Written {
    subid: pg_sys::SubTransactionId,
    task: Option<Rc<Task>>,
}

#[derive(Default)]
struct Xact {
    /// Set by set_task.
    task: Option<Rc<Task>>,
    /// (subtransaction that called set_task, task before it), to undo on ROLLBACK TO.
    task_undo: Vec<(pg_sys::SubTransactionId, Option<Rc<Task>>)>,
    context_id: Option<[u8; 16]>,
    written: Option<Written>,
    metadata: Map<String, Value>,
}

struct Plans {
    /// Whether the context table has effective_role (0.4.0 on; a 0.3.0 schema under the new
    /// library, before ALTER EXTENSION UPDATE, has not).
    effective_role: bool,
    context_with_task: OwnedPreparedStatement,
    metadata: OwnedPreparedStatement,
}

/// Tasks whose row this backend saw committed, by (issuer, task id). Their later transactions
/// write only the context row: the task row exists (task rows are never deleted). Bounded.
const KNOWN_TASKS_MAX: usize = 10_000;

thread_local! {
    static XACT: RefCell<Xact> = RefCell::new(Xact::default());
    static KNOWN_TASKS: RefCell<HashSet<(String, String)>> = RefCell::new(HashSet::new());
    static PLANS: RefCell<Option<Rc<Plans>>> = const { RefCell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT) {
        let written = XACT.with(|x| {
            x.borrow()
                .written
                .as_ref()
                .and_then(|w| w.task.as_ref().map(|t| t.key()))
        });
        if let Some(key) = written {
            KNOWN_TASKS.with(|k| {
                let mut k = k.borrow_mut();
                if k.len() >= KNOWN_TASKS_MAX {
                    k.clear();
                }
                k.insert(key);
            });
        }
    }
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        XACT.with(|x| *x.borrow_mut() = Xact::default());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        return;
    }
    // Subtransaction ids only grow, and whatever was started after `my_subid` while it was open
    // is its descendant: so everything done at a subid >= my_subid is rolled back now.
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        if x.written.as_ref().is_some_and(|w| w.subid >= my_subid) {
            x.written = None;
        }
        while x.task_undo.last().is_some_and(|(s, _)| *s >= my_subid) {
            let (_, prev) = x.task_undo.pop().expect("checked");
            x.task = prev;
        }
    });
}

pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

fn in_transaction_block() -> bool {
    unsafe { pg_sys::IsTransactionBlock() }
}

fn warn_outside_block(what: &str) {
    if !in_transaction_block() {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            format!("koherent: {what} outside a transaction block has no lasting effect"),
            "koherent",
        )
        .set_detail("The transaction it applies to ends with this statement.")
        .set_hint("Call it after BEGIN, or use set_config('koherent.task_token', token, true) in the same transaction.")
        .report(PgLogLevel::WARNING);
    }
}

fn claims_json(task: &Task) -> JsonB {
    JsonB(Value::Object(task.claims.payload.clone()))
}

fn parse_args(args: Option<JsonB>) -> Option<Value> {
    args.map(|a| a.0)
}

/// `koherent.set_task(token)`: verify and make it the transaction's task.
pub fn set_task(token: &str, args: Option<Option<JsonB>>) -> FlatJsonb {
    let task = verify::verify_token(token).or_raise();
    verify::check_presenter(&task).or_raise();
    if let Some(args) = args {
        task.claims
            .check_args(parse_args(args).as_ref())
            .map_err(KoherentError::from)
            .or_raise();
    }
    let fixed = XACT.with(|x| {
        let x = x.borrow();
        x.written.as_ref().map(|w| w.task.clone())
    });
    if let Some(current) = fixed {
        match current {
            Some(c) if c.same_as(&task) => {}
            Some(c) => KoherentError::TaskAlreadyFixed { current: c.label() }.raise(),
            None => KoherentError::TaskAlreadyFixed {
                current: "no task".into(),
            }
            .raise(),
        }
    }
    let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let out = task.claims_jsonb();
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        let prev = x.task.replace(task);
        x.task_undo.push((subid, prev));
    });
    warn_outside_block("koherent.set_task");
    out
}

/// The task this transaction writes under: set_task's, else a token given by setting.
fn resolve_task() -> Option<Rc<Task>> {
    if let Some(t) = XACT.with(|x| x.borrow().task.clone()) {
        return Some(t);
    }
    let token = guc::task_token().or_else(guc::request_header_token)?;
    Some(verify::verify_token(&token).or_raise())
}

pub fn current_task_claims() -> Option<JsonB> {
    let written = XACT.with(|x| x.borrow().written.as_ref().map(|w| w.task.clone()));
    let task = match written {
        Some(t) => t,
        None => resolve_task(),
    };
    task.map(|t| {
        let mut v = claims_json(&t).0;
        v["__token"] = Value::String(t.token.clone());
        JsonB(v)
    })
}

/// A UUIDv7 (RFC 9562: 48-bit Unix milliseconds, then random bits) from PostgreSQL's strong
/// random source (OpenSSL's generator, in user space; the uuid crate asks the kernel each time).
fn new_context_id() -> [u8; 16] {
    let mut b = [0u8; 16];
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    if !unsafe { pg_sys::pg_strong_random(b[6..].as_mut_ptr().cast(), 10) } {
        return *uuid::Uuid::now_v7().as_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x70; // version 7
    b[8] = (b[8] & 0x3f) | 0x80; // RFC variant
    b
}

fn context_id() -> [u8; 16] {
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        *x.context_id.get_or_insert_with(new_context_id)
    })
}

pub fn current_context_id() -> Uuid {
    Uuid::from_bytes(context_id())
}

pub fn set_context_id(id: Uuid) {
    let bytes: [u8; 16] = *id.as_bytes();
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        if x.written.is_some() {
            let current = x.context_id.expect("written implies an id");
            if current != bytes {
                drop(x);
                KoherentError::ContextAlreadyWritten {
                    current: uuid::Uuid::from_bytes(current).to_string(),
                }
                .raise();
            }
        }
        x.context_id = Some(bytes);
    });
    warn_outside_block("koherent.set_context_id");
}

pub fn set_context(metadata: JsonB) {
    let Value::Object(m) = metadata.0 else {
        KoherentError::InvalidArgument("context metadata must be a JSON object".into()).raise()
    };
    let written = XACT.with(|x| {
        let mut x = x.borrow_mut();
        for (k, v) in m.iter() {
            x.metadata.insert(k.clone(), v.clone());
        }
        x.written
            .is_some()
            .then(|| x.context_id.expect("written implies an id"))
    });
    if let Some(id) = written {
        let plans = plans();
        Spi::connect_mut(|c| {
            c.update(
                &plans.metadata,
                None,
                &[Uuid::from_bytes(id).into(), JsonB(Value::Object(m)).into()],
            )
            .map(|_| ())
        })
        .map_err(|e| KoherentError::Internal(e.to_string()))
        .or_raise();
    }
    warn_outside_block("koherent.set_context");
}

const CONTEXT_COLUMNS: &str = "INSERT INTO koherent.transaction_auth_context
   (id, txid, task_id, issuer, changed_by, client_id, db_role, effective_role, application_name,
    client_addr, backend_pid, created_at, metadata)
 VALUES ($1, pg_catalog.pg_current_xact_id(), $2, $3, $4, $5, pg_catalog.session_user(), $16,
    pg_catalog.current_setting('application_name'), pg_catalog.inet_client_addr(),
    pg_catalog.pg_backend_pid(), pg_catalog.now(), $6)";

/// Whether the context table has the effective_role column (see [`Plans`]).
fn context_has_effective_role() -> bool {
    unsafe {
        let relid = crate::writer::names().2;
        pg_sys::get_attnum(relid, c"effective_role".as_ptr()) != pg_sys::InvalidAttrNumber as i16
    }
}

fn plans() -> Rc<Plans> {
    let effective_role = context_has_effective_role();
    if let Some(p) = PLANS.with(|p| p.borrow().clone()) {
        if p.effective_role == effective_role {
            return p;
        }
    }
    let text = PgOid::from_untagged(pg_sys::TEXTOID);
    let uuid = PgOid::from_untagged(pg_sys::UUIDOID);
    let jsonb = PgOid::from_untagged(pg_sys::JSONBOID);
    let context_insert = if effective_role {
        CONTEXT_COLUMNS.to_string()
    } else {
        CONTEXT_COLUMNS
            .replace(" effective_role,", "")
            .replace(" $16,", "")
    };
    let with_task = format!(
        "WITH t AS (
           INSERT INTO koherent.task (issuer, task_id, parent_task_id, root_task_id, assigner_sub,
             caller_sub, agent_sub, agent_client_id, token_id, args_hash, args_hash_algorithm,
             claims, token)
           VALUES ($3, $2, $7, $8, $9, $10, $4, $5, $11, $12, $13, $14, $15)
           ON CONFLICT (issuer, task_id) DO NOTHING)
         {context_insert}"
    );
    let plans = Spi::connect(|c| -> Result<Plans, pgrx::spi::Error> {
        let mut types = vec![uuid, text, text, text, text, jsonb];
        types.extend([text; 7]);
        types.extend([jsonb, text]);
        if effective_role {
            types.push(text);
        }
        let context_with_task = c.prepare_mut(with_task.as_str(), &types)?.keep();
        let metadata = c
            .prepare_mut(
                "UPDATE koherent.transaction_auth_context SET metadata = metadata || $2 WHERE id = $1",
                &[uuid, jsonb],
            )?
            .keep();
        Ok(Plans {
            effective_role,
            context_with_task,
            metadata,
        })
    })
    .map_err(|e| KoherentError::Internal(e.to_string()))
    .or_raise();
    let plans = Rc::new(plans);
    PLANS.with(|p| *p.borrow_mut() = Some(plans.clone()));
    plans
}

thread_local! {
    /// inet_client_addr() of this backend (null for a Unix socket), as a flat varlena.
    static CLIENT_ADDR: RefCell<Option<Option<Vec<u8>>>> = const { RefCell::new(None) };
}

fn text_datum(s: &str) -> pg_sys::Datum {
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr().cast(),
            s.len() as i32,
        ))
    }
}

/// A datum pointing at a palloc'd copy of `bytes` (a flat varlena, a uuid).
pub(crate) unsafe fn palloc_copy(bytes: &[u8]) -> pg_sys::Datum {
    let p = pg_sys::palloc(bytes.len()) as *mut u8;
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
    pg_sys::Datum::from(p)
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
            let a = (!(*fcinfo).isnull).then(|| {
                let p = d.cast_mut_ptr::<pg_sys::varlena>();
                let len = pgrx::varsize_any(p);
                std::slice::from_raw_parts(p as *const u8, len).to_vec()
            });
            CLIENT_ADDR.with(|c| *c.borrow_mut() = Some(a.clone()));
            a
        }
    };
    addr.map(|a| palloc_copy(&a))
}

/// The context row, inserted directly (see writer::insert_row): what the SQL insert of
/// CONTEXT_COLUMNS writes, without planning and executing a statement per transaction.
fn insert_context_row(id: [u8; 16], task: Option<&Task>, metadata: JsonB) {
    use pgrx::IntoDatum;
    unsafe {
        let relid = crate::writer::names().2;
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
                context_has_effective_role().then(|| text_datum(&effective_role())),
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
            ("metadata", metadata.into_datum()),
        ];
        crate::writer::insert_row(relid, &columns);
    }
}

/// The role the client acts as: `SET ROLE`'s (the history writer itself runs as the extension
/// owner, so current_user inside it says nothing of the client).
pub(crate) fn effective_role() -> String {
    unsafe {
        let r = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if r.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(r).to_string_lossy().into_owned()
        }
    }
}

pub(crate) fn rel_name(relid: pg_sys::Oid) -> String {
    unsafe {
        let ns = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        let n = pg_sys::get_rel_name(relid);
        if n.is_null() {
            return format!("{}", relid.to_u32());
        }
        let name = std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned();
        if ns.is_null() {
            name
        } else {
            format!(
                "{}.{}",
                std::ffi::CStr::from_ptr(ns).to_string_lossy(),
                name
            )
        }
    }
}

/// The task of this transaction's writes: the one its context row was written with, else the
/// one set_task or a setting gives now. Checked again (time, audience, key) on every call.
fn write_task() -> Option<Rc<Task>> {
    let written = XACT.with(|x| x.borrow().written.as_ref().map(|w| w.task.clone()));
    let task = match written {
        Some(t) => t,
        None => resolve_task(),
    };
    if let Some(t) = task.as_deref() {
        verify::recheck(t).or_raise();
    }
    task
}

/// Called by the history writer for a statement that changed rows of a table tracked with
/// require_task, before anything is recorded: fail unless the write has a valid task.
pub fn require_task(relid: pg_sys::Oid) {
    if write_task().is_none() {
        KoherentError::TaskRequired {
            table: rel_name(relid),
        }
        .raise();
    }
}

/// Called by the history triggers once per statement: the transaction's context id, writing
/// the task and context rows on the first tracked write. Every statement checks the task's
/// token again (see verify::recheck): a token that expired or whose key was revoked since the
/// transaction began fails the write.
pub fn write_context(require_task: bool, relid: pg_sys::Oid) -> Uuid {
    let fast = XACT.with(|x| {
        let x = x.borrow();
        x.written
            .as_ref()
            .map(|w| (x.context_id.expect("written implies an id"), w.task.clone()))
    });
    if let Some((id, task)) = fast {
        match task.as_deref() {
            Some(t) => verify::recheck(t).or_raise(),
            None if require_task => KoherentError::TaskRequired {
                table: rel_name(relid),
            }
            .raise(),
            None => {}
        }
        return Uuid::from_bytes(id);
    }

    let task = write_task();
    if require_task && task.is_none() {
        KoherentError::TaskRequired {
            table: rel_name(relid),
        }
        .raise();
    }
    let id = context_id();
    let metadata = XACT.with(|x| JsonB(Value::Object(x.borrow().metadata.clone())));
    let uuid = Uuid::from_bytes(id);
    let known = task
        .as_ref()
        .is_some_and(|t| KNOWN_TASKS.with(|k| k.borrow().contains(&t.key())));
    match task.as_deref() {
        // A task not yet known to exist: one statement inserts its row (if missing) and the
        // context row. $1..$6 and $16: the context row; $7..$15: the task row.
        Some(t) if !known => {
            let plans = plans();
            let cl = &t.claims;
            let mut args: Vec<pgrx::datum::DatumWithOid> = vec![
                uuid.into(),
                cl.tsk.clone().into(),
                cl.iss.clone().into(),
                cl.act.sub.clone().into(),
                cl.act.cid.clone().into(),
                metadata.into(),
                cl.ptk.clone().into(),
                cl.rtk.clone().into(),
                cl.rcb.clone().into(),
                cl.sub.clone().into(),
                cl.jti.clone().into(),
                cl.ahs.clone().into(),
                cl.aha.clone().into(),
                claims_json(t).into(),
                t.token.clone().into(),
            ];
            if plans.effective_role {
                args.push(effective_role().into());
            }
            Spi::connect_mut(|c| c.update(&plans.context_with_task, None, &args).map(|_| ()))
                .map_err(|e| KoherentError::Internal(e.to_string()))
                .or_raise();
        }
        t => insert_context_row(id, t, metadata),
    }
    let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    XACT.with(|x| {
        x.borrow_mut().written = Some(Written { subid, task });
    });
    uuid
}
