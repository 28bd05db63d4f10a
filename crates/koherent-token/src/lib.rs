//! koherent-token: the security-critical core of koherent, without PostgreSQL.
//!
//! * [`token`]: compact JWS provenance tokens (Ed25519), decoded, verified and checked in the
//!   order the specification gives, with every refusal a [`TokenError`].
//! * [`keys`]: issuer keys from JWK, JWKS or SPKI PEM.
//! * [`canonical`]: `sha256-canonical-v1` arguments hashing, byte-identical to Python's
//!   `json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
//!
//! The extension and the `koherent` CLI both use this crate, so they can never disagree about
//! what a valid token is.

pub mod canonical;
pub mod error;
pub mod json;
pub mod keys;
pub mod ledger;
pub mod token;

pub use canonical::{args_hash, canonical_json, canonical_json_str, ARGS_HASH_ALGORITHM};
pub use error::{Class, KeyError, Part, TokenError};
pub use keys::{KeyBinding, KeySet};
pub use token::{decode, mint, verify, Actor, Alg, Claims, Decoded, Policy};
