//! Every reason a token or a key is refused, as one typed error.
//!
//! The extension maps these to SQLSTATEs (`src/error.rs`); the CLI prints them. Messages never
//! contain the token itself; values taken from the token (kid, iss, alg) are shortened.

use thiserror::Error;

/// Which part of a compact JWS a size or encoding problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    Payload,
    Signature,
    /// The whole compact JWS (only the size limit applies to it).
    Token,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
            Part::Token => "token",
        })
    }
}

/// Whether a refusal is about the shape of the input (SQLSTATE class 22) or about trust
/// (SQLSTATE class 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Malformed,
    Unauthorized,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// A segment (or the whole token) is longer than its limit, counted in characters of the
    /// base64url text as received, before anything is decoded.
    #[error("provenance token is too large: {part} exceeds {limit} characters")]
    TooLarge { part: Part, limit: usize },
    #[error("provenance token is malformed: expected 3 dot-separated segments, found {0}")]
    Segments(usize),
    #[error("provenance token is malformed: {part} is not valid unpadded base64url")]
    Base64 { part: Part },
    #[error("provenance token is malformed: {part} is not a JSON object ({why})")]
    Json { part: Part, why: String },
    #[error("provenance token is malformed: {part} has duplicate member \"{key}\"")]
    DuplicateKey { part: Part, key: String },
    #[error("provenance token is malformed: {part} contains a NUL character (U+0000), which PostgreSQL text cannot hold")]
    NulCharacter { part: Part },
    #[error("provenance token header member \"{0}\" is not allowed")]
    HeaderMember(String),
    #[error("provenance token header is invalid: {0}")]
    Header(String),
    #[error("provenance token algorithm \"{0}\" is not accepted")]
    Algorithm(String),
    #[error("provenance token issuer \"{0}\" is not trusted")]
    UntrustedIssuer(String),
    #[error("provenance token key \"{kid}\" is not known for issuer \"{iss}\"")]
    UnknownKey { iss: String, kid: String },
    #[error("provenance token key \"{kid}\" of issuer \"{iss}\" is not for signatures (its JWK \"use\" or \"key_ops\" says so)")]
    KeyUse { iss: String, kid: String },
    #[error("provenance token key \"{kid}\" is bound to alg \"{key_alg}\", the token says \"{token_alg}\"")]
    KeyAlgorithm {
        kid: String,
        key_alg: &'static str,
        token_alg: &'static str,
    },
    #[error("provenance token signature is invalid")]
    BadSignature,
    #[error("provenance token claim \"{claim}\" is invalid: {why}")]
    Claim { claim: &'static str, why: String },
    #[error("provenance token claim \"{claim}\" is out of range: {why}")]
    TimeOutOfRange { claim: &'static str, why: String },
    #[error("provenance token has expired")]
    Expired { exp: i64, now: i64 },
    #[error("provenance token is not valid yet")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("provenance token was issued in the future")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("provenance token is not meant for this audience")]
    Audience { expected: String },
    #[error("no audience is configured, so no provenance token can be accepted")]
    AudienceNotConfigured,
    #[error("task arguments do not match the provenance token's args hash")]
    ArgsMismatch { expected: String, actual: String },
    #[error("provenance token args hash algorithm \"{0}\" is not known")]
    ArgsAlgorithm(String),
}

/// Shorten a value taken from an untrusted token before it goes into a message.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if clean.chars().count() > MAX {
        let mut t: String = clean.chars().take(MAX).collect();
        t.push('…');
        t
    } else {
        clean
    }
}

impl TokenError {
    /// A stable, machine-readable reason code (used as the DETAIL of SQL errors and by the CLI).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "too_large",
            TokenError::Segments(_) => "malformed_segments",
            TokenError::Base64 { .. } => "malformed_base64",
            TokenError::Json { .. } => "malformed_json",
            TokenError::DuplicateKey { .. } => "duplicate_member",
            TokenError::NulCharacter { .. } => "nul_character",
            TokenError::HeaderMember(_) => "header_member_not_allowed",
            TokenError::Header(_) => "invalid_header",
            TokenError::Algorithm(_) => "algorithm_not_accepted",
            TokenError::UntrustedIssuer(_) => "untrusted_issuer",
            TokenError::UnknownKey { .. } => "unknown_key",
            TokenError::KeyUse { .. } => "key_use_not_sig",
            TokenError::KeyAlgorithm { .. } => "key_alg_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Claim { .. } => "invalid_claim",
            TokenError::TimeOutOfRange { .. } => "time_out_of_range",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::IssuedInFuture { .. } => "issued_in_future",
            TokenError::Audience { .. } => "wrong_audience",
            TokenError::AudienceNotConfigured => "audience_not_configured",
            TokenError::ArgsMismatch { .. } => "args_mismatch",
            TokenError::ArgsAlgorithm(_) => "args_algorithm_unknown",
        }
    }

    pub fn class(&self) -> Class {
        match self {
            TokenError::TooLarge { .. }
            | TokenError::Segments(_)
            | TokenError::Base64 { .. }
            | TokenError::Json { .. }
            | TokenError::DuplicateKey { .. }
            | TokenError::NulCharacter { .. }
            | TokenError::HeaderMember(_)
            | TokenError::Header(_)
            | TokenError::Claim { .. }
            | TokenError::TimeOutOfRange { .. } => Class::Malformed,
            _ => Class::Unauthorized,
        }
    }

    /// A human-readable detail naming the reason; never contains the token.
    pub fn detail(&self) -> String {
        match self {
            TokenError::Expired { exp, now } => {
                format!("reason: expired; exp {exp} is not after now {now} (leeway included)")
            }
            TokenError::NotYetValid { nbf, now } => {
                format!("reason: not_yet_valid; nbf {nbf} is after now {now} (leeway included)")
            }
            TokenError::IssuedInFuture { iat, now } => {
                format!("reason: issued_in_future; iat {iat} is after now {now} (leeway included)")
            }
            TokenError::Audience { expected } => {
                format!(
                    "reason: wrong_audience; \"{}\" is not in aud",
                    shown(expected)
                )
            }
            TokenError::ArgsMismatch { expected, actual } => format!(
                "reason: args_mismatch; token ahs {}, arguments hash to {actual}",
                shown(expected)
            ),
            other => format!("reason: {}", other.reason()),
        }
    }
}

/// Why a public key given to koherent was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key is not valid JSON: {0}")]
    Json(String),
    #[error("key is not an Ed25519 public key: {0}")]
    NotEd25519(String),
    #[error("key contains private material (\"d\"); give only the public key")]
    Private,
    #[error("key is a weak (small-order) or non-canonical Ed25519 point")]
    Weak,
    #[error("key has no \"kid\"")]
    MissingKid,
    #[error("JWKS has two keys with kid \"{0}\"")]
    DuplicateKid(String),
    #[error("key is neither a JWK nor an SPKI PEM: {0}")]
    Format(String),
}
