//! koherent: a provenance-aware audit trail for PostgreSQL.
//!
//! This crate is the thin SQL-facing layer. Token verification lives in the pure-Rust
//! `koherent-token` crate; the history machinery (track/untrack, per-table history tables and
//! triggers, views, DDL event triggers) is SQL in `sql/`; this crate holds the per-backend
//! verified state ([`context`]), the key and token caches ([`verify`]), the settings ([`guc`])
//! and the mapping of errors to SQLSTATEs ([`error`]).

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB, Uuid};

mod context;
mod error;
mod guc;
mod verify;
mod writer;

use error::{KoherentError, OrRaise};

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/history.sql", name = "history", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    context::init();
    verify::init();
    writer::init();
}

/// Verify a provenance token and make it the current transaction's task. Returns its claims.
#[pg_extern(name = "set_task", volatile, parallel_unsafe)]
fn set_task(token: &str) -> context::FlatJsonb {
    context::set_task(token, None)
}

/// As set_task(token), and refuse the token unless its `ahs` is the hash of `args`.
#[pg_extern(name = "set_task", volatile, parallel_unsafe)]
fn set_task_with_args(token: &str, args: Option<JsonB>) -> context::FlatJsonb {
    context::set_task(token, Some(args))
}

/// Verify a provenance token without using it; returns its claims or raises the refusal.
#[pg_extern(volatile, parallel_unsafe)]
fn verify_token(token: &str) -> context::FlatJsonb {
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

/// Add free-form metadata (a JSON object, merged) to the current transaction's auth context.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_context(metadata: JsonB) {
    context::set_context(metadata)
}

/// Internal: called by history triggers once per statement.
#[pg_extern(volatile, parallel_unsafe)]
fn _write_context(require_task: bool, relid: pg_sys::Oid) -> Uuid {
    context::write_context(require_task, relid)
}

/// Internal: summarize the complete, unsummarized BRIN ranges of a history table (readers call
/// it before a BRIN lookup; see writer::summarize_history).
#[pg_extern(volatile, parallel_unsafe)]
fn _summarize(history_table: pg_sys::Oid) {
    unsafe { writer::summarize_history(history_table) }
}

/// The `sha256-canonical-v1` canonical JSON text of task arguments.
#[pg_extern(immutable, parallel_safe)]
fn canonical_args(args: JsonB) -> String {
    koherent_token::canonical_json(&args.0)
}

/// The `sha256-canonical-v1` hash of task arguments (what a token's `ahs` claim holds).
#[pg_extern(immutable, parallel_safe)]
fn args_hash(args: Option<JsonB>) -> String {
    koherent_token::args_hash(args.as_ref().map(|a| &a.0))
}

/// Internal: parse a public key (JWK JSON or SPKI PEM) into (kid, raw 32 bytes).
#[pg_extern(immutable, parallel_safe)]
fn _parse_public_key(
    public_key: &str,
) -> TableIterator<'static, (name!(kid, Option<String>), name!(x, Vec<u8>))> {
    let (kid, key) = koherent_token::keys::parse_public_key(public_key)
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::once((kid, key.as_bytes().to_vec()))
}

/// Internal: parse a JWKS into (kid, raw 32 bytes) rows.
#[pg_extern(immutable, parallel_safe)]
fn _parse_jwks(jwks: JsonB) -> TableIterator<'static, (name!(kid, String), name!(x, Vec<u8>))> {
    let keys = koherent_token::keys::parse_jwks(&jwks.0)
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::new(
        keys.into_iter()
            .map(|(kid, k)| (kid, k.as_bytes().to_vec())),
    )
}

/// Internal: called by the key table's trigger; every backend drops its key and token caches.
#[pg_extern(volatile, parallel_unsafe)]
fn _invalidate_keys(key_table: pg_sys::Oid) {
    verify::invalidate_keys(key_table)
}

/// Benchmark helper: microseconds of one verification with the caches bypassed.
#[pg_extern(volatile, parallel_unsafe)]
fn _cold_verify_micros(token: &str, iterations: i32) -> f64 {
    verify::cold_verify_micros(token, iterations)
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
