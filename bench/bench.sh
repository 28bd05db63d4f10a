#!/usr/bin/env bash
# koherent benchmark: builds and installs the extension (release), starts a throwaway cluster on
# port 5497 with synchronous_commit = off, and prints tracked/untracked ratios measured in the
# same run (bulk INSERT/UPDATE/DELETE, pgbench single-row UPDATE with and without set_task), the
# cost of one cold token verification, the lookups among >= 1M history entries, and revert_plan /
# revert_task / as_of / row_as_of against the statements they compare with, the write path again
# with the background sealer sealing every second, and the ledger's and audit packages' throughput. Usage: bench/bench.sh
# bench/bench.sh --scale: history grown to 2M and 20M entries (BENCH_SCALE_SIZES) and the lookups
# at each size (row history, task_changes of 10 and 10k changes, row_as_of, as_of, audit export).
# bench/bench.sh --ledger: the ledger's and audit packages' lines alone.
source "$(dirname "$0")/../scripts/lib.sh"
ensure_apt
ensure_pgrx
ensure_python
install_extension
build_cli

BENCH_DIR="$ROOT/.tmp/bench"
stop_cluster "$BENCH_DIR"
as_root rm -rf "$BENCH_DIR"
export BENCH_PORT=${BENCH_PORT:-5497}
start_cluster "$BENCH_DIR" "$BENCH_PORT" "synchronous_commit = off" "shared_buffers = 512MB" \
    "max_wal_size = 4GB" "checkpoint_timeout = 30min" "autovacuum = off" \
    "shared_preload_libraries = 'koherent'" "koherent.seal_databases = 'bench'" "koherent.seal_interval = 0"
trap 'stop_cluster "$BENCH_DIR"' EXIT

KEY="$ROOT/tests/fixtures/test-key.private.jwk"
export BENCH_JWKS=$("$KOHERENT" jwks --key "$KEY")
export BENCH_TOKEN=$("$KOHERENT" mint --key "$KEY" --tsk bench-task --ttl 86400 --args '{"x":1}')
export BENCH_LOOKUP_TOKEN=$("$KOHERENT" mint --key "$KEY" --tsk lookup-task --ttl 86400)
# the task whose UPDATE revert_plan / revert_task undo, and the task that reverts it
export BENCH_REVERT_TOKEN=$("$KOHERENT" mint --key "$KEY" --tsk revert-task --ttl 86400)
export BENCH_REVERTER_TOKEN=$("$KOHERENT" mint --key "$KEY" --tsk revert-by --ttl 86400)
export PATH="$PG_BIN:$PATH"
if [ "${1:-}" = "--scale" ]; then
    # scale mode: history grown to BENCH_SCALE_SIZES entries, a 10- and a 10k-change task at each
    export BENCH_SCALE_SIZES=${BENCH_SCALE_SIZES:-2000000,20000000}
    tokens="{"
    for size in ${BENCH_SCALE_SIZES//,/ }; do
        for n in 10 10k; do
            tokens="$tokens\"$size-$n\": \"$("$KOHERENT" mint --key "$KEY" --tsk "scale-$size-$n" --ttl 86400)\", "
        done
    done
    export BENCH_SCALE_TOKENS="${tokens%, }}"
    "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" --scale
    exit
fi
# bench/bench.sh --ledger: only the ledger's and audit packages' lines (seal, verify_history,
# audit export and verify)
"$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" ${1:+"$1"}
