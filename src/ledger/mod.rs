//! The ledger's hashing, for `sql/ledger.sql`: records are built in SQL (entries as JSON text, the rest as jsonb) and hashed
//! here with the `koherent-ledger-v1` encoding of the koherent-token crate (the one the CLI
//! uses to verify audit packages offline), so the two can never disagree.

pub mod record;
pub mod sealer;

use koherent_token::ledger::{self, Hash};

use crate::error::KoherentError;

/// `koherent._ledger_hash(kind, record)` (the record as jsonb, read as its text) and
/// `koherent._ledger_hash_text(kind, record)` (entries, built as JSON text: cheaper than
/// jsonb): the SHA-256 of a record of this kind, numbers as written. The text is canonicalized
/// as it is read (`ledger::canonical_text`): no value is built, so a jsonb value of any depth,
/// or an object named like serde_json's private number member, hashes as what it is.
pub fn hash_text(kind: &str, record: &str) -> Result<Vec<u8>, KoherentError> {
    ledger::record_hash_text(kind, record)
        .map(|h| h.to_vec())
        .map_err(|e| KoherentError::Internal(format!("a ledger record that is not JSON: {e}")))
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

/// Each table's span of one context's sealed entries: per config id (ascending), the lowest and
/// the highest history id among `(config id, history id)` pairs (the ledger's index of a
/// context, `ledger_context.entry_configs/entry_ids`). What `min`/`max` over `unnest` of both
/// arrays grouped by config gives, without a row per entry.
pub fn spans(pairs: impl Iterator<Item = (i32, i64)>) -> Vec<(i32, i64, i64)> {
    let mut out: Vec<(i32, i64, i64)> = Vec::new();
    for (cfg, id) in pairs {
        match out.iter_mut().find(|s| s.0 == cfg) {
            Some(s) => {
                s.1 = s.1.min(id);
                s.2 = s.2.max(id);
            }
            None => out.push((cfg, id, id)),
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod spans_tests {
    #[test]
    fn spans_per_config() {
        assert_eq!(super::spans([].into_iter()), vec![]);
        let pairs = [(2, 50), (1, 7), (2, 9), (1, 3), (2, 70), (3, 1)];
        assert_eq!(
            super::spans(pairs.into_iter()),
            vec![(1, 3, 7), (2, 9, 70), (3, 1, 1)]
        );
    }
}
