//! The ledger's hashing, for `sql/ledger.sql`: records are built in SQL (entries as JSON text, the rest as jsonb) and hashed
//! here with the `koherent-ledger-v1` encoding of the koherent-token crate (the one the CLI
//! uses to verify audit packages offline), so the two can never disagree.

pub mod record;
pub mod sealer;

use koherent_token::ledger::{self, Hash};
use pgrx::JsonB;

use crate::error::KoherentError;

/// `koherent._ledger_hash(kind, record)`: the SHA-256 of a record of this kind.
pub fn hash(kind: &str, record: &JsonB) -> Vec<u8> {
    ledger::record_hash(kind, &record.0).to_vec()
}

/// `koherent._ledger_hash_text(kind, record)`: the same for a record as JSON text (numbers as
/// written, as the jsonb of that text keeps them).
pub fn hash_text(kind: &str, record: &str) -> Result<Vec<u8>, KoherentError> {
    let v: serde_json::Value = serde_json::from_str(record)
        .map_err(|e| KoherentError::Internal(format!("a ledger record that is not JSON: {e}")))?;
    Ok(ledger::record_hash(kind, &v).to_vec())
}

/// `koherent._ledger_merkle(hashes)`: the RFC 6962 Merkle root of a list of hashes.
pub fn merkle(hashes: impl Iterator<Item = Option<Vec<u8>>>) -> Result<Vec<u8>, KoherentError> {
    let mut leaves: Vec<Hash> = Vec::new();
    for h in hashes {
        let h = h.ok_or_else(|| KoherentError::Internal("a null hash in a Merkle tree".into()))?;
        let h: Hash = h.as_slice().try_into().map_err(|_| {
            KoherentError::Internal(format!("a Merkle leaf of {} bytes, not 32", h.len()))
        })?;
        leaves.push(h);
    }
    Ok(ledger::merkle_root(&leaves).to_vec())
}
