#!/usr/bin/env bash
# Every test of koherent, from a fresh machine: installs what is missing, builds and installs
# the extension, starts a throwaway PostgreSQL 15 cluster on port 5498 (under .tmp/test), runs
#   0. cargo fmt --check and cargo clippy,
#   1. cargo test for the pure-Rust crates (token verification, args hashing, CLI),
#   2. the client tests (pytest: psycopg, psql, pgbench, PgBouncer; tokens minted by joserfc;
#      the differential test against authentikate, in its own Python 3.12 venv),
#   3. the GraphQL end-to-end tests (node --test: a real PostGraphile server, node-postgres),
#   4. a short cargo-fuzz run of the token parser and the args canonicalizer,
# and stops the cluster. Exits non-zero when any test fails.
# Extra arguments go to pytest (e.g. scripts/test.sh -k history).
source "$(dirname "$0")/lib.sh"

ensure_apt
ensure_pgrx
ensure_python
ensure_authentikate_venv
ensure_node

say "lint (cargo fmt --check, cargo clippy -D warnings)"
(cd "$ROOT" && cargo fmt --all --check && cargo clippy -q --workspace --all-targets -- -D warnings)

say "cargo test (koherent-token, koherent-cli)"
(cd "$ROOT" && cargo test -q -p koherent-token -p koherent-cli)

install_extension
build_cli

TEST_DIR="$ROOT/.tmp/test"
TEST_PORT=5498
stop_cluster "$TEST_DIR"
as_root rm -rf "$TEST_DIR"
start_cluster "$TEST_DIR" "$TEST_PORT" "max_connections = 200" "shared_preload_libraries = 'pg_stat_statements'"
trap 'stop_cluster "$TEST_DIR"' EXIT

export KOHERENT_TEST_HOST=127.0.0.1 KOHERENT_TEST_PORT=$TEST_PORT KOHERENT_TEST_PGDATA=$TEST_DIR
export KOHERENT_CLI="$KOHERENT" PATH="$PG_BIN:$PATH"

say "client tests (pytest)"
(cd "$ROOT/tests" && "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@")

if [ $# -eq 0 ]; then
    say "GraphQL end-to-end tests (node --test: PostGraphile, node-postgres)"
    (cd "$ROOT/graphql" && node --test --test-concurrency=1 ./*.test.mjs)
fi
if [ $# -eq 0 ]; then
    say "fuzzing (cargo fuzz: token parser/verifier, args canonicalizer; ${KOHERENT_FUZZ_SECONDS:-30}s each)"
    "$ROOT/fuzz/run.sh" "${KOHERENT_FUZZ_SECONDS:-30}"
fi
say "all tests passed"
