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

//! [`row`] writes the context row (and the task row).

mod resolver;
mod row;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::catalog::rel_name;
use crate::datum::FlatJsonb;
use crate::error::{KoherentError, OrRaise};
use crate::guc;
use crate::security::{outer_role_name, role_name};
use crate::verify::{self, Task};
use row::{
    insert_context_row, recorded_organization, recorded_organization_as_owner, statements, Identity,
};

/// The context row, once written in this transaction.
struct Written {
    subid: pg_sys::SubTransactionId,
    task: Option<Rc<Task>>,
    /// The organization its task row records (for [`KNOWN_TASKS`]).
    task_organization: Option<String>,
    /// What the context row took from the session at the first write.
    inputs: Inputs,
}

/// What a context row takes from the session besides the task: the role `SET ROLE` chose
/// (`effective_role`), and the application's `koherent.app_user` and `koherent.organization`.
/// A transaction has one context, so a later write under others would be recorded under the
/// first write's: refused instead ([`Inputs::check`]).
#[derive(PartialEq)]
struct Inputs {
    outer_user: pg_sys::Oid,
    app_user: Option<String>,
    organization: Option<String>,
}

impl Inputs {
    fn now() -> Inputs {
        Inputs {
            outer_user: unsafe { pg_sys::GetOuterUserId() },
            app_user: guc::app_user(),
            organization: guc::organization(),
        }
    }

    /// Raise `context_changed` unless `now` is what the context row recorded.
    fn check(&self, now: &Inputs) {
        if self == now {
            return;
        }
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let role = |oid: pg_sys::Oid| role_name(oid).unwrap_or_else(|| u32::from(oid).to_string());
        let (what, recorded, given) = if self.outer_user != now.outer_user {
            ("role", role(self.outer_user), role(now.outer_user))
        } else if self.app_user != now.app_user {
            (
                "koherent.app_user",
                shown(&self.app_user),
                shown(&now.app_user),
            )
        } else {
            (
                "koherent.organization",
                shown(&self.organization),
                shown(&now.organization),
            )
        };
        KoherentError::ContextChanged {
            what,
            recorded,
            given,
        }
        .raise()
    }
}

#[derive(Default)]
struct Xact {
    /// Set by set_task.
    task: Option<Rc<Task>>,
    /// (subtransaction that called set_task, task before it), to undo on ROLLBACK TO.
    task_undo: Vec<(pg_sys::SubTransactionId, Option<Rc<Task>>)>,
    context_id: Option<[u8; 16]>,
    /// Whether `context_id` came from set_context_id (else koherent made it).
    context_id_chosen: bool,
    written: Option<Written>,
    metadata: Map<String, Value>,
    /// The subtransaction whose revert wrote `metadata.reverts`: rolled back with it.
    revert_subid: Option<pg_sys::SubTransactionId>,
}

/// Tasks whose row this backend saw committed, by (issuer, task id), with the organization the
/// row records. Their later transactions write only the context row: the task row exists (task
/// rows are never deleted, and never change). Bounded.
const KNOWN_TASKS_MAX: usize = 10_000;

thread_local! {
    static XACT: RefCell<Xact> = RefCell::new(Xact::default());
    static KNOWN_TASKS: RefCell<HashMap<(String, String), Option<String>>> = RefCell::new(HashMap::new());
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT) {
        let written = XACT.with(|x| {
            x.borrow().written.as_ref().and_then(|w| {
                w.task
                    .as_ref()
                    .map(|t| (t.key(), w.task_organization.clone()))
            })
        });
        if let Some((key, organization)) = written {
            KNOWN_TASKS.with(|k| {
                let mut k = k.borrow_mut();
                if k.len() >= KNOWN_TASKS_MAX {
                    k.clear();
                }
                k.insert(key, organization);
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
        // a revert rolled back is no revert (the UPDATE of a written context row that recorded
        // it is rolled back with it)
        if x.revert_subid.is_some_and(|s| s >= my_subid) {
            x.revert_subid = None;
            x.metadata.remove(REVERTS_KEY);
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
    // (a procedure or DO block run outside a transaction block writes in transactions it ends
    // with COMMIT: the call applies until then)
    if !in_transaction_block() && !unsafe { pg_sys::SPI_inside_nonatomic_context() } {
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

/// Refuse a change of the transaction's task, context or writes while a user resolver runs.
fn not_inside_resolver() {
    if resolver::resolving() {
        KoherentError::InsideResolver.raise();
    }
}

/// `koherent.set_task(token)`: verify and make it the transaction's task.
pub fn set_task(token: &str, args: Option<Option<JsonB>>) -> FlatJsonb {
    not_inside_resolver();
    let task = verify::verify_token(token).or_raise();
    verify::check_presenter(&task).or_raise();
    if let Some(args) = args {
        task.claims
            .check_args(args.map(|a| a.0).as_ref())
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
    // a task recorded in another organization is refused now, not only at the first write
    if let Some(org) = write_organization(Some(&task)).or_raise() {
        let known = KNOWN_TASKS.with(|k| k.borrow().get(&task.key()).cloned());
        let recorded = known
            .or_else(|| recorded_organization_as_owner(&task.claims.iss, &task.claims.tsk))
            .flatten();
        if recorded.is_some_and(|r| r != org) {
            KoherentError::OrganizationMismatch {
                task: task.label(),
                given: org,
            }
            .raise();
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

/// The organization this transaction writes in: the one its task's token names (the claim
/// `koherent.organization_claim` names: a string, or a number as written), else the
/// application's `koherent.organization` setting. Both given and different: refused.
fn write_organization(task: Option<&Task>) -> Result<Option<String>, KoherentError> {
    let setting = guc::organization();
    let mut claim = None;
    if let (Some(t), Some(name)) = (task, guc::organization_claim()) {
        claim = match t.claims.payload.get(&name) {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            // present and not an organization: refused, not taken for none
            Some(_) => return Err(KoherentError::OrganizationClaimInvalid { claim: name }),
        };
    }
    match (claim, setting) {
        (Some(c), Some(s)) if c != s => Err(KoherentError::OrganizationConflict {
            claim: c,
            setting: s,
        }),
        (Some(c), _) => Ok(Some(c)),
        (None, s) => Ok(s),
    }
}

/// Refuse a write in organization `given` to a task recorded in another.
fn check_organization(task: &Task, recorded: &Option<String>, given: &Option<String>) {
    if let (Some(r), Some(g)) = (recorded, given) {
        if r != g {
            KoherentError::OrganizationMismatch {
                task: task.label(),
                given: g.clone(),
            }
            .raise();
        }
    }
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
        let mut v = t.claims_json().0;
        v["__token"] = Value::String(t.token.clone());
        JsonB(v)
    })
}

/// Random bytes from PostgreSQL's strong random source (OpenSSL's generator), drawn 4 KiB at a
/// time: one RAND_bytes call costs about as much as 4 KiB of output (it was 2.8% of a single-row
/// tracked UPDATE's backend time, for 10 bytes). Filled on first use in each backend, never in
/// the postmaster, so no two processes share bytes; each byte is handed out once.
struct RandomPool {
    bytes: [u8; 4096],
    next: usize,
}

thread_local! {
    static RANDOM: RefCell<RandomPool> = const { RefCell::new(RandomPool { bytes: [0; 4096], next: 4096 }) };
}

/// `out.len()` (<= 4096) random bytes, or false when the source fails.
fn random_bytes(out: &mut [u8]) -> bool {
    RANDOM.with(|r| {
        let mut r = r.borrow_mut();
        if r.next + out.len() > r.bytes.len() {
            if !unsafe { pg_sys::pg_strong_random(r.bytes.as_mut_ptr().cast(), r.bytes.len()) } {
                return false;
            }
            r.next = 0;
        }
        let at = r.next;
        out.copy_from_slice(&r.bytes[at..at + out.len()]);
        r.next += out.len();
        true
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
    if !random_bytes(&mut b[6..]) {
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
    not_inside_resolver();
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
        x.context_id_chosen = true;
    });
    warn_outside_block("koherent.set_context_id");
}

/// The metadata key a revert writes (koherent.revert_task / revert_context): no client sets it.
pub const REVERTS_KEY: &str = "reverts";

pub fn set_context(metadata: JsonB) {
    not_inside_resolver();
    let Value::Object(m) = metadata.0 else {
        KoherentError::InvalidArgument("context metadata must be a JSON object".into()).raise()
    };
    if m.contains_key(REVERTS_KEY) {
        KoherentError::InvalidArgument(format!(
            "context metadata key \"{REVERTS_KEY}\" is koherent's own: only a revert records it"
        ))
        .raise()
    }
    merge_metadata(m);
    warn_outside_block("koherent.set_context");
}

/// Record what this transaction reverts: `metadata.reverts`, once per transaction.
pub fn mark_revert(what: JsonB) {
    not_inside_resolver();
    let already = XACT.with(|x| x.borrow().metadata.contains_key(REVERTS_KEY));
    if already {
        KoherentError::RevertTwice.raise();
    }
    let mut m = Map::new();
    m.insert(REVERTS_KEY.to_string(), what.0);
    merge_metadata(m);
    let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    XACT.with(|x| x.borrow_mut().revert_subid = Some(subid));
}

fn merge_metadata(m: Map<String, Value>) {
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
        let statements = statements();
        Spi::connect_mut(|c| {
            c.update(
                &statements.metadata,
                None,
                &[Uuid::from_bytes(id).into(), JsonB(Value::Object(m)).into()],
            )
            .map(|_| ())
        })
        .map_err(|e| KoherentError::Internal(e.to_string()))
        .or_raise();
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
    not_inside_resolver();
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
        // (after the token's own checks: a role leaving a bound agent's is that refusal first)
        let now = Inputs::now();
        XACT.with(|x| {
            if let Some(w) = x.borrow().written.as_ref() {
                w.inputs.check(&now)
            }
        });
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
    let uuid = Uuid::from_bytes(id);
    if XACT.with(|x| x.borrow().context_id_chosen) && row::context_recorded(id) {
        // (a clear refusal rather than the primary key's; two transactions racing with the
        // same new id still meet the key)
        KoherentError::ContextIdTaken {
            id: uuid.to_string(),
        }
        .raise();
    }
    let metadata = XACT.with(|x| JsonB(Value::Object(x.borrow().metadata.clone())));
    let inputs = Inputs::now();
    let organization = write_organization(task.as_deref()).or_raise();
    let mut identity = Identity {
        organization: organization.clone(),
        app_user: inputs.app_user.clone(),
    };
    let mut task_organization = None;
    match task.as_deref() {
        Some(t) => {
            // the task's row: known to this backend, else looked up (the writer runs as the
            // extension owner)
            let known = KNOWN_TASKS.with(|k| k.borrow().get(&t.key()).cloned());
            let recorded = known.or_else(|| recorded_organization(&t.claims.iss, &t.claims.tsk));
            match recorded {
                Some(recorded) => {
                    check_organization(t, &recorded, &organization);
                    // (a task recorded in an organization writes in it)
                    identity.organization = recorded.clone().or(organization);
                    task_organization = recorded;
                    insert_context_row(id, Some(t), metadata, &identity);
                }
                // A task not recorded yet: one statement inserts its row (if still missing) and
                // the context row. $1..$6, $16..$18: the context row; $7..$15, $17, $19: the
                // task row.
                None => {
                    let statements = statements();
                    let assigner_user = if statements.identity {
                        resolver::resolve(&t.claims.iss, &t.claims.rcb).map(JsonB)
                    } else {
                        None
                    };
                    let cl = &t.claims;
                    let args: Vec<pgrx::datum::DatumWithOid> = vec![
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
                        t.claims_json().into(),
                        t.token.clone().into(),
                        outer_role_name().into(),
                        identity.organization.clone().into(),
                        identity.app_user.clone().into(),
                        assigner_user.into(),
                    ];
                    let made = Spi::connect_mut(|c| {
                        let rows = c.update(&statements.context_with_task, None, &args)?;
                        rows.first().get::<i64>(1)
                    })
                    .map_err(|e| KoherentError::Internal(e.to_string()))
                    .or_raise();
                    task_organization = organization.clone();
                    if made != Some(1) {
                        // made meanwhile by another transaction (which committed first): its
                        // organization decides
                        let recorded = recorded_organization(&cl.iss, &cl.tsk).unwrap_or(None);
                        check_organization(t, &recorded, &organization);
                        task_organization = recorded;
                    }
                }
            }
        }
        None => insert_context_row(id, None, metadata, &identity),
    }
    let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    XACT.with(|x| {
        x.borrow_mut().written = Some(Written {
            subid,
            task,
            task_organization,
            inputs,
        });
    });
    uuid
}
