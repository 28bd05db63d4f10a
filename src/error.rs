//! The one place where koherent's typed errors become SQL errors with a SQLSTATE, detail and hint.

use koherent_token::{Class, KeyError, TokenError};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KoherentError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("invalid issuer key: {0}")]
    Key(#[from] KeyError),
    #[error("table {table} requires a verified task: this write has none")]
    TaskRequired { table: String },
    #[error(
        "the transaction already wrote tracked rows under {current}; its task cannot change now"
    )]
    TaskAlreadyFixed { current: String },
    #[error("the transaction's context {current} is already written; its id cannot change now")]
    ContextAlreadyWritten { current: String },
    #[error("this transaction's context records {what} \"{recorded}\", taken at its first tracked write; this write is under \"{given}\"")]
    ContextChanged {
        what: &'static str,
        recorded: String,
        given: String,
    },
    #[error(
        "{name} was not set by this transaction (a session's SET of an earlier transaction, or a role's or database's default); koherent takes it only from the transaction that writes"
    )]
    SettingCarriedOver { name: &'static str },
    #[error(
        "ALTER COLUMN {column} TYPE ... would rewrite the values of tracked table {table} without history (by an expression, or by a cast to or from a type that is not PostgreSQL's own)"
    )]
    UnrecordedRewrite { table: String, column: String },
    #[error("ALTER TYPE {typ} RENAME VALUE would change values history recorded")]
    EnumRenamed { typ: String },
    #[error("DETACH PARTITION CONCURRENTLY of tracked table {table} could not record the rows it removes")]
    DetachConcurrently { table: String },
    #[error("the context id {id} given to koherent.set_context_id is already recorded by another transaction")]
    ContextIdTaken { id: String },
    #[error("the key \"{kid}\" of issuer \"{issuer}\" that signed this transaction's token is no longer trusted")]
    KeyRevoked { issuer: String, kid: String },
    #[error("tokens of agent \"{client_id}\" may not be presented by role \"{role}\"")]
    PresenterNotBound { client_id: String, role: String },
    #[error(
        "an UPDATE of {table} has {old} old and {new} new row images: a row moved to another partition was dropped by a trigger there, and history cannot pair the images"
    )]
    UnpairedUpdate { table: String, old: i64, new: i64 },
    #[error("a MERGE may not change the partition key of rows of {table}: PostgreSQL 15 gives koherent's history trigger no rows for rows a MERGE moves between partitions")]
    MergeMovesRows { table: String },
    #[error("a MERGE may not update rows of {table}: its BEFORE UPDATE trigger \"{trigger}\" fires after koherent's partition guard and could move them between partitions, which PostgreSQL 15 would not show history")]
    MergeBehindTrigger { table: String, trigger: String },
    #[error("a statement that began before koherent was loaded in this session moves rows of {table} between partitions, and koherent cannot tell whether it is a MERGE (whose moves PostgreSQL 15 does not show history)")]
    MoverUnknown { table: String },
    #[error("the history table {table} has no partition for this statement's date")]
    NoHistoryPartition { table: String },
    #[error("the history of a tracked table is out of step with the table: {0}")]
    HistoryOutOfSync(String),
    #[error("{0}")]
    TriggerProtocol(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// JSON text an argument spells that koherent's reader refuses
    #[error("{}", json_message(.0))]
    Json(#[from] koherent_token::json::JsonError),
    #[error("this transaction already reverted a task or context; one revert per transaction")]
    RevertTwice,
    #[error("koherent cannot act for a role inside a security-restricted operation (ANALYZE, REFRESH MATERIALIZED VIEW, an index expression)")]
    Restricted,
    /// (the task's own organization is not named: the writer is of another one)
    #[error("{task} is recorded in another organization than \"{given}\"")]
    OrganizationMismatch { task: String, given: String },
    #[error("the token names organization \"{claim}\", the transaction's koherent.organization \"{setting}\"")]
    OrganizationConflict { claim: String, setting: String },
    #[error(
        "a user resolver may not write tracked tables or change the transaction's task or context"
    )]
    InsideResolver,
    #[error("the token's claim \"{claim}\" (koherent.organization_claim) is not an organization: a non-empty string or a number")]
    OrganizationClaimInvalid { claim: String },
    #[error("{0} must not be null")]
    NullArgument(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

fn json_message(e: &koherent_token::json::JsonError) -> String {
    match e.problem {
        koherent_token::json::Problem::TooDeep(n) => {
            format!("JSON nested deeper than {n} levels is not accepted")
        }
        _ => format!("malformed JSON: {e}"),
    }
}

impl KoherentError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            KoherentError::Token(t) => match t.class() {
                Class::Malformed => ERRCODE_INVALID_PARAMETER_VALUE,
                Class::Unauthorized => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            },
            KoherentError::Key(_) | KoherentError::InvalidArgument(_) | KoherentError::Json(_) => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            KoherentError::TaskRequired { .. }
            | KoherentError::KeyRevoked { .. }
            | KoherentError::PresenterNotBound { .. }
            | KoherentError::OrganizationMismatch { .. }
            | KoherentError::OrganizationConflict { .. } => {
                ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
            }
            KoherentError::UnpairedUpdate { .. } => ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION,
            KoherentError::ContextIdTaken { .. } => ERRCODE_UNIQUE_VIOLATION,
            KoherentError::MergeMovesRows { .. }
            | KoherentError::MergeBehindTrigger { .. }
            | KoherentError::UnrecordedRewrite { .. }
            | KoherentError::DetachConcurrently { .. }
            | KoherentError::EnumRenamed { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            KoherentError::TaskAlreadyFixed { .. }
            | KoherentError::ContextAlreadyWritten { .. }
            | KoherentError::ContextChanged { .. }
            | KoherentError::SettingCarriedOver { .. }
            | KoherentError::MoverUnknown { .. }
            | KoherentError::RevertTwice => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            KoherentError::HistoryOutOfSync(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            KoherentError::NoHistoryPartition { .. } => ERRCODE_CHECK_VIOLATION,
            KoherentError::TriggerProtocol(_) => ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            KoherentError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            KoherentError::Restricted | KoherentError::InsideResolver => {
                ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            KoherentError::OrganizationClaimInvalid { .. } => {
                ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
            }
            KoherentError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            KoherentError::Token(t) => Some(t.detail()),
            KoherentError::TaskRequired { .. } => Some("reason: task_required".into()),
            KoherentError::KeyRevoked { .. } => Some("reason: key_revoked".into()),
            KoherentError::PresenterNotBound { .. } => Some("reason: presenter_not_bound".into()),
            KoherentError::UnpairedUpdate { .. } => Some("reason: unpaired_update".into()),
            KoherentError::MergeMovesRows { .. } => Some("reason: merge_moves_rows".into()),
            KoherentError::MergeBehindTrigger { .. } => Some("reason: merge_behind_trigger".into()),
            KoherentError::MoverUnknown { .. } => Some("reason: mover_unknown".into()),
            KoherentError::DetachConcurrently { .. } => {
                Some("reason: detach_concurrently".into())
            }
            KoherentError::EnumRenamed { .. } => Some(
                "reason: enum_renamed (history holds values of this type; every recorded value would read as the new label, the tracked tables' rows change with no entry)".into(),
            ),
            KoherentError::UnrecordedRewrite { .. } => Some(
                "reason: unrecorded_rewrite (no history trigger fires for a table rewrite; history's values of the column are converted by a plain cast)".into(),
            ),
            KoherentError::HistoryOutOfSync(_) => Some("reason: history_out_of_sync".into()),
            KoherentError::NoHistoryPartition { .. } => Some("reason: no_history_partition".into()),
            KoherentError::RevertTwice => Some("reason: revert_twice".into()),
            KoherentError::ContextChanged { .. } => Some("reason: context_changed".into()),
            KoherentError::SettingCarriedOver { .. } => Some(
                "reason: setting_carried_over (behind a transaction pooler a session's setting or a default reaches the transactions of other clients)".into(),
            ),
            KoherentError::ContextIdTaken { .. } => Some("reason: context_id_taken".into()),
            KoherentError::OrganizationMismatch { .. } => {
                Some("reason: organization_mismatch".into())
            }
            KoherentError::OrganizationConflict { .. } => {
                Some("reason: organization_conflict".into())
            }
            KoherentError::OrganizationClaimInvalid { .. } => {
                Some("reason: organization_claim_invalid".into())
            }
            KoherentError::InsideResolver => Some("reason: inside_resolver".into()),
            KoherentError::Restricted => Some("reason: security_restricted".into()),
            _ => None,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            KoherentError::Token(t) => match t.reason() {
                "audience_not_configured" => Some(
                    "A superuser sets it: ALTER DATABASE ... SET koherent.audience = 'koherent' (or '*' for any).",
                ),
                "untrusted_issuer" | "unknown_key" => Some(
                    "Register the issuer's public keys with koherent.add_issuer_jwks(issuer, jwks).",
                ),
                "expired" | "not_yet_valid" | "issued_in_future" => Some(
                    "Check the clocks of the issuer and the database; koherent.clock_skew allows leeway.",
                ),
                "algorithm_not_accepted" => Some(
                    "Tokens must be signed with Ed25519; koherent.accept_eddsa_alg admits alg EdDSA.",
                ),
                _ => None,
            },
            KoherentError::TaskRequired { .. } => Some(
                "Call koherent.set_task(token) at the start of the transaction, or set koherent.task_token.",
            ),
            KoherentError::KeyRevoked { .. } => Some(
                "Each tracked write checks its token again; start a new transaction with a token signed by a trusted key.",
            ),
            KoherentError::PresenterNotBound { .. } => Some(
                "koherent.agent_binding lists the roles that may present this agent's tokens (koherent.bind_agent).",
            ),
            KoherentError::MergeMovesRows { .. } => Some(
                "Move such rows with UPDATE (recorded), or with DELETE and INSERT.",
            ),
            KoherentError::UnrecordedRewrite { .. } => Some(
                "Change the values with UPDATE first (recorded), then ALTER COLUMN ... TYPE ... with no USING, or USING the column's plain cast to the new type; to or from a type that is not PostgreSQL's own: add a column of the new type, fill it with UPDATE, drop the old one.",
            ),
            KoherentError::EnumRenamed { .. } => Some(
                "Add the new label (ALTER TYPE ... ADD VALUE), move the rows to it with UPDATE (recorded); the old label stays in the type.",
            ),
            KoherentError::DetachConcurrently { .. } => Some(
                "Use DETACH PARTITION (its rows are recorded as it removes them): rows written through the table while a concurrent detach runs would escape history.",
            ),
            KoherentError::MergeBehindTrigger { .. } => Some(
                "Triggers fire in name order: rename the trigger so that its name sorts before koherent_merge_guard, or update these rows with UPDATE.",
            ),
            KoherentError::NoHistoryPartition { .. } => Some(
                "History partitions are made ahead by koherent.create_partitions() (run by the sealer worker, by koherent.prune() and by koherent.set_retention()); run it, or schedule koherent.prune(). A statement that began before its date's partition expired and was dropped by koherent.prune() fails so too: run it again.",
            ),
            KoherentError::HistoryOutOfSync(_) => Some(
                "Run koherent.track(<table>) again: it brings the history table and the triggers in line with the table.",
            ),
            KoherentError::MoverUnknown { .. } => Some(
                "koherent is loaded now: run the statement again. session_preload_libraries = 'koherent' loads it when a session starts.",
            ),
            KoherentError::UnpairedUpdate { .. } => Some(
                "Move such rows with DELETE and INSERT, or let the destination partition's BEFORE INSERT trigger keep them.",
            ),
            KoherentError::TaskAlreadyFixed { .. } => {
                Some("Call koherent.set_task(token) before the transaction's first tracked write.")
            }
            KoherentError::OrganizationConflict { .. } => Some(
                "The application's koherent.organization must name the organization the token's claim names.",
            ),
            KoherentError::OrganizationMismatch { .. } => Some(
                "A task id belongs to the organization it was first recorded in (the token's koherent.organization_claim, else koherent.organization): write it from that organization.",
            ),
            KoherentError::SettingCarriedOver { .. } => Some(
                "Set it in the transaction that writes: SET LOCAL, or set_config(name, value, true). RESET clears a session's value; ALTER ROLE/DATABASE ... RESET a default.",
            ),
            KoherentError::RevertTwice => Some(
                "Commit, then revert the next task in a transaction of its own: each revert's context records what it reverted.",
            ),
            KoherentError::ContextAlreadyWritten { .. } => Some(
                "Call koherent.set_context_id(uuid) before the transaction's first tracked write.",
            ),
            KoherentError::ContextChanged { .. } => Some(
                "A transaction has one context: SET ROLE, koherent.app_user and koherent.organization take effect when set before its first tracked write; write under others in a new transaction.",
            ),
            KoherentError::ContextIdTaken { .. } => Some(
                "A context id names one transaction: give koherent.set_context_id a new uuid, or let koherent choose one.",
            ),
            _ => None,
        }
    }

    /// Raise as a PostgreSQL ERROR (never returns).
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), format!("koherent: {self}"), "koherent");
        if let Some(d) = self.detail() {
            report = report.set_detail(d);
        }
        if let Some(h) = self.hint() {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// Unwrap a koherent result at the SQL boundary.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Into<KoherentError>> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().raise(),
        }
    }
}
