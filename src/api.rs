//! The SQL-facing functions written in Rust: thin wrappers over the rooms below. Their SQL
//! companions (the functions users call, taking jsonb; the views) are in `sql/`.

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB, Uuid};

use crate::datum::{parse_json, FlatJsonb};
use crate::error::{KoherentError, OrRaise};
use crate::{brin, catalog, context, security, verify, writer};

/// Verify a provenance token and make it the current transaction's task. Returns its claims.
/// (Its search_path pinned: what it runs, also as the extension owner, names no object of the
/// caller's.)
#[pg_extern(name = "set_task", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_task(token: &str) -> FlatJsonb {
    context::set_task(token, None)
}

/// Internal: set_task(token, args jsonb) (sql/tasks.sql passes args as jsonb's text).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _set_task_args(token: Option<&str>, args: Option<&str>) -> FlatJsonb {
    let Some(token) = token else {
        KoherentError::NullArgument("token").raise()
    };
    context::set_task(token, Some(args.map(|a| JsonB(parse_json(a)))))
}

/// Verify a provenance token without using it; returns its claims or raises the refusal.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn verify_token(token: &str) -> FlatJsonb {
    verify::verify_token(token).or_raise().claims_jsonb()
}

#[pg_extern(volatile, parallel_unsafe)]
fn _current_task_claims() -> Option<JsonB> {
    context::current_task_claims()
}

/// The id of the current transaction's auth context (allocated now if none yet).
#[pg_extern(volatile, parallel_unsafe)]
fn current_context_id() -> Uuid {
    context::current_context_id()
}

/// Give the current transaction's auth context a caller-chosen id.
#[pg_extern(volatile, parallel_unsafe)]
fn set_context_id(id: Uuid) {
    context::set_context_id(id)
}

/// Internal: set_context(metadata jsonb): add free-form metadata (a JSON object, merged) to the
/// current transaction's auth context.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _set_context(metadata: &str) {
    context::set_context(JsonB(parse_json(metadata)))
}

/// Internal: called once per statement by a table's TRUNCATE copy
/// (`koherent._truncate_copy_<id>`); the Rust writer calls `context::write_context` itself.
#[pg_extern(volatile, parallel_unsafe)]
fn _write_context(require_task: bool, relid: pg_sys::Oid) -> Uuid {
    context::write_context(require_task, relid)
}

/// Internal: summarize the complete, unsummarized BRIN ranges of a history table (readers call
/// it before a BRIN lookup; see brin::summarize_history).
#[pg_extern(volatile, parallel_unsafe)]
fn _summarize(history_table: pg_sys::Oid) {
    unsafe { brin::summarize_history(history_table) }
}

/// Internal: canonical_args(jsonb), the `sha256-canonical-v1` canonical JSON text.
#[pg_extern(immutable, parallel_safe)]
fn _canonical_args(args: &str) -> String {
    koherent_token::canonical_json(&parse_json(args))
}

/// Internal: args_hash(jsonb), the `sha256-canonical-v1` hash (a token's `ahs`).
#[pg_extern(immutable, parallel_safe)]
fn _args_hash(args: Option<&str>) -> String {
    koherent_token::args_hash(args.map(parse_json).as_ref())
}

/// Internal: called by the TRUNCATE copy of a table tracked with require_task, before it
/// copies anything (an empty table's TRUNCATE is a write too).
#[pg_extern(volatile, parallel_unsafe)]
fn _require_task(relid: pg_sys::Oid) {
    context::require_task(relid)
}

/// Internal: one history id, allocated as the writer allocates them (see writer::reserve_ids).
#[pg_extern(volatile, parallel_unsafe)]
fn _next_history_id() -> i64 {
    unsafe { writer::reserve_ids(catalog::koherent_oids().history_id_seq, 1) }
}

/// Internal: the history date of the statement running now (see running::running_date): the
/// TRUNCATE copy records its entries with it, as the writer does.
#[pg_extern(volatile, parallel_unsafe)]
fn _history_date() -> pgrx::datum::TimestampWithTimeZone {
    pgrx::datum::TimestampWithTimeZone::try_from(crate::running::running_date())
        .map_err(|e| KoherentError::Internal(e.to_string()))
        .or_raise()
}

/// Internal: its argument. The views name each history table's relation as
/// `koherent._relid(<oid>)::regclass`: PostgreSQL folds this IMMUTABLE C call while planning,
/// which loads koherent's library (and its planner hook, src/planner.rs) in a backend that had
/// not loaded it yet, before any path of the history table is built.
#[pg_extern(immutable, parallel_safe, strict)]
fn _relid(relid: pg_sys::Oid) -> pg_sys::Oid {
    relid
}

/// Internal: a value's text by its type's output function, never by a cast. Casts (to text, to
/// json) can be defined by whoever owns a type; output functions are C, written by superusers.
#[pg_extern(stable, parallel_safe, strict)]
fn _text_out(value: pgrx::AnyElement) -> String {
    unsafe {
        let mut func = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(value.oid(), &mut func, &mut varlena);
        let c = pg_sys::OidOutputFunctionCall(func, value.datum());
        std::ffi::CStr::from_ptr(c).to_string_lossy().into_owned()
    }
}

/// Internal: whether a type (domains by their base type) is one of PostgreSQL's own, so that
/// to_jsonb and casts of it run only built-in code.
#[pg_extern(stable, parallel_safe, strict)]
fn _is_builtin_type(typ: pg_sys::Oid) -> bool {
    crate::catalog::is_builtin_type(typ)
}

/// Internal: a type's base type (domains, also of domains, resolved).
#[pg_extern(stable, parallel_safe, strict)]
fn _base_type(typ: pg_sys::Oid) -> pg_sys::Oid {
    unsafe { pg_sys::getBaseType(typ) }
}

/// Internal: whether `koherent._jsonb_object` takes values of a type (domains by their base
/// type; src/image.rs): the SQL that builds images gives other types to jsonb_build_object.
#[pg_extern(stable, parallel_safe, strict)]
fn _jsonb_object_takes(typ: pg_sys::Oid) -> bool {
    crate::image::takes(typ)
}

/// Internal: the role the client acts as (SET ROLE's), also inside SECURITY DEFINER functions.
#[pg_extern(stable, parallel_safe)]
fn _caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// Internal: run `query` (`SELECT 1 FROM <table> WHERE <key> = $1...`, generated by koherent)
/// with the rights of the client (SET ROLE's role), its parameters the fields of `key` (a
/// composite, `ROW(k1, ...)`), bound as they are; whether it returns a row. The history readers
/// call it so that a reader sees the history of exactly the rows it may see (privileges and
/// row-level security), whatever row value it passes.
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _visible_to_caller(query: &str, key: pgrx::AnyElement) -> bool {
    unsafe { security::visible_to_caller(query, key.datum(), key.oid()) }
}

/// Internal: a type's base type and typmod as SQL text (domains, also of domains, resolved).
#[pg_extern(stable, parallel_safe, strict)]
fn _base_type_sql(typ: pg_sys::Oid, typmod: i32) -> String {
    unsafe {
        let mut m = typmod;
        let base = pg_sys::getBaseTypeAndTypmod(typ, &mut m);
        let c = pg_sys::format_type_with_typemod(base, m);
        std::ffi::CStr::from_ptr(c).to_string_lossy().into_owned()
    }
}

/// Internal: parse a public key (JWK JSON or SPKI PEM) into (kid, raw 32 bytes, the JWK's alg).
#[pg_extern(immutable, parallel_safe, name = "_parse_public_key")]
fn _parse_public_key_bound(
    public_key: &str,
) -> TableIterator<
    'static,
    (
        name!(kid, Option<String>),
        name!(x, Vec<u8>),
        name!(alg, Option<String>),
    ),
> {
    let (kid, key) = koherent_token::keys::parse_public_key(public_key)
        .map_err(KoherentError::from)
        .or_raise();
    // a JWK's alg binds the key to tokens of that alg (a PEM carries none)
    let alg =
        koherent_token::json::parse_with(public_key.trim(), koherent_token::json::Options::STRICT)
            .ok()
            .filter(|v| v.is_object())
            .and_then(|v| koherent_token::keys::parse_public_jwk_bound(&v).ok())
            .and_then(|(_, _, b)| b.alg.map(|a| a.as_str().to_string()));
    TableIterator::once((kid, key.as_bytes().to_vec(), alg))
}

/// Internal: parse a JWKS into (kid, raw 32 bytes, the JWK's alg) rows.
#[pg_extern(immutable, parallel_safe, name = "_parse_jwks")]
fn _parse_jwks_text(
    jwks: &str,
) -> TableIterator<
    'static,
    (
        name!(kid, String),
        name!(x, Vec<u8>),
        name!(alg, Option<String>),
    ),
> {
    let v = parse_json(jwks);
    // refuses keys that verify nothing (use other than sig), as it always did
    koherent_token::keys::parse_jwks(&v)
        .map_err(KoherentError::from)
        .or_raise();
    let keys = koherent_token::keys::parse_jwks_bound(&v)
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::new(keys.into_iter().map(|(kid, k, b)| {
        (
            kid,
            k.as_bytes().to_vec(),
            b.alg.map(|a| a.as_str().to_string()),
        )
    }))
}

/// Internal: called by the key table's trigger; every backend drops its key and token caches.
#[pg_extern(volatile, parallel_unsafe)]
fn _invalidate_keys(key_table: pg_sys::Oid) {
    verify::invalidate_keys(key_table)
}

/// Benchmark helper: microseconds of one verification with the caches bypassed. Not part of
/// what CREATE EXTENSION installs: bench/bench.sh declares it (C symbol
/// `_cold_verify_micros_wrapper`) in its own database.
#[pg_extern(sql = false)]
fn _cold_verify_micros(token: &str, iterations: i32) -> f64 {
    verify::cold_verify_micros(token, iterations)
}

/// Internal: record in this transaction's context what it reverts (`metadata.reverts`). Called
/// by koherent.revert_task / revert_context (SECURITY DEFINER) after their writes; REVOKEd from
/// PUBLIC, so that no client marks a transaction as a revert.
#[pg_extern(volatile, parallel_unsafe)]
fn _mark_revert(what: crate::datum::JsonbText) {
    context::mark_revert(JsonB(what.value()))
}

/// Internal: a capability for the role executing the caller, for the revert and as-of helpers
/// (src/revert/mod.rs). Anyone may take one: it acts only for the role that took it.
#[pg_extern(volatile, parallel_unsafe)]
fn _acting() -> Uuid {
    crate::revert::acting()
}

/// Internal: whether a plan is kept under this name (the as-of lookups; owner only,
/// src/revert/kept.rs).
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _kept(name: &str) -> bool {
    crate::revert::kept::is_kept(name)
}

/// Internal: plan a statement and keep the plan under a name (owner only).
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _keep(name: &str, query: &str) {
    crate::revert::kept::keep(name, query)
}

/// Internal: the first jsonb of the statement kept under a name, run with these parameters
/// (owner only).
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _kept_lookup(
    name: &str,
    at: pgrx::datum::TimestampWithTimeZone,
    at_too: bool,
    key: FlatJsonb,
) -> Option<FlatJsonb> {
    crate::revert::kept::lookup(name, at, at_too, key)
}

/// Internal: the role a capability from koherent._acting() acts for (owner only).
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _acting_role(acting: Uuid) -> pg_sys::Oid {
    crate::revert::acting_role(acting)
}

/// Internal: the ledger hash of a record (koherent-ledger-v1, src/ledger/mod.rs).
#[pg_extern(immutable, parallel_safe, strict)]
fn _ledger_hash(kind: &str, record: crate::datum::JsonbText) -> Vec<u8> {
    crate::ledger::hash_text(kind, &record.0).or_raise()
}

/// Internal: the ledger hash of a record given as JSON text (entries: built as text, cheaper
/// than jsonb; the same hash as the jsonb of that text).
#[pg_extern(immutable, parallel_safe, strict)]
fn _ledger_hash_text(kind: &str, record: &str) -> Vec<u8> {
    crate::ledger::hash_text(kind, record).or_raise()
}

/// Internal: the RFC 6962 Merkle root of a list of 32-byte hashes.
#[pg_extern(immutable, parallel_safe, strict)]
fn _ledger_merkle(hashes: pgrx::Array<&[u8]>) -> Vec<u8> {
    crate::ledger::merkle(hashes.iter().map(|h| h.map(|b| b.to_vec()))).or_raise()
}

/// Internal: each table's span of a sealed context's entries, from the ledger's index of it
/// (`entry_configs`, `entry_ids`): (config id, lowest history id, highest). Null elements are
/// left out, as min/max leave them.
#[pg_extern(immutable, parallel_safe, strict)]
fn _entry_spans(
    configs: pgrx::Array<i32>,
    ids: pgrx::Array<i64>,
) -> TableIterator<'static, (name!(cfg, i32), name!(lo, i64), name!(hi, i64))> {
    let pairs = configs
        .iter()
        .zip(ids.iter())
        .filter_map(|(c, i)| Some((c?, i?)));
    TableIterator::new(crate::ledger::spans(pairs))
}
