//! koherent: a provenance-aware audit trail for PostgreSQL.
//!
//! One room per concern; layers point down only (a module uses only those listed after it):
//!
//! | module | concern |
//! |---|---|
//! | [`api`] | the SQL-facing functions written in Rust (thin wrappers) |
//! | [`legacy`] | C entry points that earlier releases' install scripts declare |
//! | [`revert`] | revert and as-of: who they act for, statements run with that role's rights, kept plans |
//! | [`ledger`] | the ledger's hashes (koherent-ledger-v1 records and Merkle roots) |
//! | [`planner`] | `row_key = '{...}'` on a history table as an index lookup (a set_rel_pathlist hook) |
//! | [`writer`] | the history trigger: plans, transition tables, id blocks, the partition guard |
//! | [`context`] | the transaction's verified task and its context row |
//! | [`verify`] | token verification, the key and binding caches, [`verify::Task`] |
//! | [`insert`] | tuples into koherent's tables without SQL (batches, index entries, one row) |
//! | [`brin`] | BRIN revmap access and summarization (the writer's shortcut, the readers) |
//! | [`running`] | which statement is executing (an ExecutorRun hook) |
//! | [`security`] | running a check with the client's rights; the client's role |
//! | [`catalog`] | oid lookups of koherent's relations and their invalidation, columns by name |
//! | [`image`] | history images as jsonb objects (`koherent._jsonb_object`) |
//! | [`datum`] | text, byte copies and flat jsonb datums |
//! | [`ffi`] | PostgreSQL C functions pgrx does not bind |
//! | [`guc`] | the settings |
//! | [`error`] | typed errors and their SQLSTATEs, details and hints |
//!
//! Token parsing and checking is the pure-Rust `koherent-token` crate (shared with the CLI).
//! The SQL half (track/untrack, history tables and triggers, views, readers, DDL follow-up,
//! keys, GraphQL objects, grants) is in `sql/`, one file per concern, loaded in the order below.

use pgrx::prelude::*;

mod api;
mod brin;
mod catalog;
mod context;
mod datum;
mod ddl;
mod error;
mod ffi;
mod guc;
mod image;
mod insert;
mod ledger;
mod legacy;
mod nodes;
mod planner;
mod revert;
mod running;
mod security;
mod verify;
mod writer;

::pgrx::pg_module_magic!(name, version);

// The SQL half, in dependency order. `columns` comes after every Rust function the SQL calls
// (listed); each later file after the one before it; `grants` last, over everything.
extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/columns.sql",
    name = "columns",
    requires = [
        api::set_task,
        api::_set_task_args,
        api::verify_token,
        api::_current_task_claims,
        api::current_context_id,
        api::set_context_id,
        api::_set_context,
        api::_write_context,
        api::_summarize,
        api::_canonical_args,
        api::_args_hash,
        api::_require_task,
        api::_next_history_id,
        api::_history_date,
        api::_text_out,
        api::_relid,
        api::_is_builtin_type,
        api::_base_type,
        api::_jsonb_object_takes,
        api::_caller,
        api::_visible_to_caller,
        api::_base_type_sql,
        api::_parse_public_key_bound,
        api::_parse_jwks_text,
        api::_invalidate_keys,
        api::_mark_revert,
        api::_acting,
        api::_acting_role,
        api::_kept,
        api::_keep,
        api::_kept_lookup,
        api::_ledger_hash,
        api::_ledger_merkle,
        api::_entry_spans,
    ]
);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires = ["columns"]
);
extension_sql_file!(
    "../sql/indexes.sql",
    name = "indexes",
    requires = ["triggers"]
);
extension_sql_file!("../sql/views.sql", name = "views", requires = ["indexes"]);
extension_sql_file!("../sql/readers.sql", name = "readers", requires = ["views"]);
extension_sql_file!("../sql/track.sql", name = "track", requires = ["readers"]);
extension_sql_file!("../sql/ddl.sql", name = "ddl", requires = ["track"]);
extension_sql_file!("../sql/tasks.sql", name = "tasks", requires = ["ddl"]);
extension_sql_file!("../sql/keys.sql", name = "keys", requires = ["tasks"]);
extension_sql_file!("../sql/revert.sql", name = "revert", requires = ["keys"]);
extension_sql_file!("../sql/as_of.sql", name = "as_of", requires = ["revert"]);
extension_sql_file!("../sql/graphql.sql", name = "graphql", requires = ["as_of"]);
extension_sql_file!("../sql/ledger.sql", name = "ledger", requires = ["graphql"]);
extension_sql_file!("../sql/audit.sql", name = "audit", requires = ["ledger"]);
extension_sql_file!(
    "../sql/retention.sql",
    name = "retention",
    requires = ["audit"]
);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // A panic's report never carries a Rust backtrace to a client, whatever RUST_BACKTRACE the
    // server was started with (std reads RUST_LIB_BACKTRACE first, once).
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    guc::init();
    catalog::init();
    context::init();
    verify::init();
    writer::init();
    running::init();
    revert::init();
    planner::init();
    ledger::sealer::init();
}
