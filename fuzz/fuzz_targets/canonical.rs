//! Any JSON to the sha256-canonical-v1 canonicalizer: no panic, and the canonical text is a
//! fixed point (canonicalizing it again gives the same text).
#![no_main]
use koherent_token::{canonical_json_str, args_hash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(canon) = canonical_json_str(text) else { return };
    // Infinity/NaN are what Python writes for out-of-range floats, but they are not JSON.
    if canon.contains("Infinity") || canon.contains("NaN") {
        return;
    }
    let again = canonical_json_str(&canon).expect("canonical text is JSON");
    assert_eq!(canon, again);
    // blank text counts as absent arguments ({}), everything else must parse
    let v: Option<serde_json::Value> = (!text.trim().is_empty()).then(|| serde_json::from_str(text).unwrap());
    assert_eq!(args_hash(v.as_ref()).len(), 64);
});
