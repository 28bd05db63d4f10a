//! Any JSON to the sha256-canonical-v1 canonicalizer: no panic, and the canonical text is a
//! fixed point (canonicalizing it again gives the same text). And the ledger's canonical text,
//! written as the text is read (`ledger::canonical_text`), is the canonical text of the value
//! the text spells (`ledger::canonical`).
#![no_main]
use koherent_token::json::{parse, parse_with, Options};
use koherent_token::ledger;
use koherent_token::{args_hash, canonical_json_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(v) = parse_with(text, Options::STRICT) {
        let mut streamed = String::new();
        ledger::canonical_text(text, &mut streamed).expect("what the reader reads, the ledger reads");
        assert_eq!(streamed, ledger::canonical(&v));
    }
    let Ok(canon) = canonical_json_str(text) else { return };
    // Infinity/NaN are what Python writes for out-of-range floats, but they are not JSON.
    if canon.contains("Infinity") || canon.contains("NaN") {
        return;
    }
    let again = canonical_json_str(&canon).expect("canonical text is JSON");
    assert_eq!(canon, again);
    // blank text counts as absent arguments ({}), everything else must parse
    let v = (!text.trim().is_empty()).then(|| parse(text).unwrap());
    assert_eq!(args_hash(v.as_ref()).len(), 64);
});
