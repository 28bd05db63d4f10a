#!/usr/bin/env bash
# Fuzz the token parser/verifier and the args canonicalizer with cargo-fuzz (libFuzzer).
#   fuzz/run.sh [SECONDS_PER_TARGET]      default 30; scripts/test.sh runs it with 30
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version =0.13.2 --locked
for t in token canonical; do
    mkdir -p "corpus/$t"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=0 2>&1 |
        grep -E "^Done|panicked|SUMMARY|ERROR" || true
    if [ -d "artifacts/$t" ] && [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
        echo "fuzz: $t found a failing input in fuzz/artifacts/$t" >&2
        exit 1
    fi
done
echo "fuzz: token, canonical: ${secs}s each, no failure"
