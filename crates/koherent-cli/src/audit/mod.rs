//! `koherent audit export | verify | show`: audit packages (format `koherent-audit-v1`,
//! docs/audit-package.md), built on the ledger records of koherent-token's `ledger` module.

pub mod export;
pub mod package;
mod plain;
mod progress;
pub mod show;
pub mod verify;
