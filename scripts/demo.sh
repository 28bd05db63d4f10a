#!/usr/bin/env bash
# The koherent demo: a throwaway cluster under .tmp/demo (port 5433), the extension installed,
# a tracked table written by two verified tasks and by plain psql, the attributed history printed,
# a PostGraphile server (GraphiQL) left running on port 5678, and last, task-102 reverted by a
# third task (its plan, the table before and after, the revert's own history).
#   scripts/demo.sh         run the demo (installs what is missing)
#   scripts/demo.sh stop    stop the demo's PostGraphile server and cluster
source "$(dirname "$0")/lib.sh"

DEMO_DIR="$ROOT/.tmp/demo"
DEMO_PORT=5433
GQL_PORT=5678
DB=koherent_demo
PIDFILE="$ROOT/.tmp/demo-graphql.pid"

stop_demo() {
    if [ -f "$PIDFILE" ]; then
        kill "$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
    fi
    stop_cluster "$DEMO_DIR"
}

if [ "${1:-}" = "stop" ]; then
    stop_demo
    say "demo stopped (data stays in $DEMO_DIR; remove it with: rm -rf $DEMO_DIR)"
    exit 0
fi

ensure_apt
ensure_pgrx
ensure_node
install_extension
build_cli

stop_demo
start_cluster "$DEMO_DIR" "$DEMO_PORT"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$DEMO_PORT" -U postgres)

say "creating database $DB with the koherent extension"
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" \
    -c "ALTER DATABASE $DB SET koherent.audience = 'koherent'"
"${PSQL[@]}" -d postgres -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'koherent_gql') THEN CREATE ROLE koherent_gql LOGIN; END IF; END \$\$"

say "an issuer key (koherent keygen) and its JWKS registered as issuer 'rekuest'"
KEY="$ROOT/.tmp/demo-issuer-key.json"
[ -f "$KEY" ] || "$KOHERENT" keygen --kid demo-key > "$KEY"
JWKS=$("$KOHERENT" jwks --key "$KEY")
"${PSQL[@]}" -d "$DB" <<SQL
CREATE EXTENSION koherent;
SELECT koherent.add_issuer_jwks('rekuest', '$JWKS') AS keys_added;
CREATE TABLE inventory (
    id serial PRIMARY KEY,
    name text NOT NULL,
    qty integer NOT NULL,
    location text
);
SELECT koherent.track('inventory');
SELECT koherent.expose('inventory', 'koherent_gql');
GRANT SELECT, INSERT, UPDATE, DELETE ON inventory TO koherent_gql;
GRANT USAGE ON SEQUENCE inventory_id_seq TO koherent_gql;
-- no SELECT on koherent.task or the views: exposed functions show what the role may see (SECURITY.md)
SQL

say "task-101 (agent client 'inventory-bot') stocks the shelves"
T1=$("$KOHERENT" mint --key "$KEY" --tsk task-101 --sub alice --act-sub bot-7 --cid inventory-bot --rcb alice --args '{"shelf": "A"}')
"${PSQL[@]}" -d "$DB" <<SQL
BEGIN;
SELECT koherent.set_task('$T1', '{"shelf": "A"}') ->> 'tsk' AS task;
INSERT INTO inventory (name, qty, location) VALUES ('bolt', 100, 'A1'), ('nut', 250, 'A2'), ('washer', 80, 'A3');
UPDATE inventory SET qty = 90 WHERE name = 'bolt';
COMMIT;
SQL

say "task-102, a subtask of task-101, moves and sells"
T2=$("$KOHERENT" mint --key "$KEY" --tsk task-102 --ptk task-101 --rtk task-101 --sub bot-7 --act-sub bot-7 --cid inventory-bot --rcb alice)
"${PSQL[@]}" -d "$DB" <<SQL
BEGIN;
SELECT koherent.set_task('$T2') ->> 'tsk' AS task;
UPDATE inventory SET location = 'B1', qty = qty - 5 WHERE name = 'nut';
DELETE FROM inventory WHERE name = 'washer';
COMMIT;
SQL

say "a person fixes a count with plain psql (no token: recorded, unattributed)"
"${PSQL[@]}" -d "$DB" -c "UPDATE inventory SET qty = 91 WHERE name = 'bolt'"

say "a forged token is refused and nothing is written"
"${PSQL[@]}" -d "$DB" -c "BEGIN" -c "SELECT koherent.set_task('${T1%?????}AAAAA')" 2>&1 | sed 's/^/    /' || true

say "koherent.provenance_entry"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "
SELECT history_id, table_name, row_key, kind, to_char(date, 'HH24:MI:SS') AS at, task_id,
       agent_client_id, changed_by, db_role
  FROM koherent.provenance_entry ORDER BY history_id"

say "koherent.effective_change"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "
SELECT c.history_id, e.kind, e.row_key, c.field, c.old_value, c.new_value
  FROM koherent.effective_change c JOIN koherent.provenance_entry e USING (history_id)
 ORDER BY c.history_id, c.field"

say "koherent.task_changes('task-101', include_subtasks => true)"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "
SELECT history_id, task_id, kind, row_key FROM koherent.task_changes('task-101', include_subtasks => true)"

say "starting PostGraphile (GraphiQL) on port $GQL_PORT"
(cd "$ROOT/graphql" && DATABASE_URL="postgres://koherent_gql@127.0.0.1:$DEMO_PORT/$DB" PORT=$GQL_PORT \
    exec nohup node server.mjs > "$ROOT/.tmp/demo-graphql.log" 2>&1 < /dev/null) &
echo $! > "$PIDFILE"
for _ in $(seq 1 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$GQL_PORT/graphiql" 2>/dev/null && break
    sleep 0.2
done
QUERY='{ inventoryById(id: 1) { name qty provenance { nodes { kind changedBy taskId agentClientId task { taskId parentTaskId } effectiveChanges { nodes { field oldValue newValue } } } } } }'
echo "query: $QUERY"
curl -fsS "http://127.0.0.1:$GQL_PORT/graphql" -H 'content-type: application/json' \
    -d "$(printf '{"query": %s}' "$(printf '%s' "$QUERY" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')")" |
    python3 -m json.tool

say "koherent.revert_plan('task-102'): what reverting task-102 would write (changes nothing)"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "
SELECT table_name, row_key, action, restored_data, conflict FROM koherent.revert_plan('task-102')"

say "inventory before the revert"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "SELECT * FROM inventory ORDER BY id"

say "task-103 (alice, through the agent client 'ops-console') reverts task-102"
T3=$("$KOHERENT" mint --key "$KEY" --tsk task-103 --sub alice --act-sub alice --cid ops-console --rcb alice)
"${PSQL[@]}" -d "$DB" -P pager=off -v t3="$T3" <<'SQL'
BEGIN;
SELECT koherent.set_task(:'t3') ->> 'tsk' AS task;
SELECT koherent.revert_task('task-102') AS reverted;
COMMIT;
SQL

say "inventory after the revert (the nut back on A2 with 250, the washer back; the bolt keeps the later fix)"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "SELECT * FROM inventory ORDER BY id"

say "the revert is history like any write: task-103's entries and its context's metadata"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "
SELECT history_id, table_name, row_key, kind, to_char(date, 'HH24:MI:SS') AS at, task_id,
       agent_client_id, changed_by
  FROM koherent.provenance_entry WHERE task_id = 'task-103' ORDER BY history_id" -c "
SELECT c.id AS context_id, c.task_id, c.client_id, c.metadata
  FROM koherent.transaction_auth_context c WHERE c.task_id = 'task-103'"

say "the ledger: koherent.seal() closes a block over every committed transaction; keep the digest outside"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -At -c "SELECT jsonb_pretty(koherent.seal())" | tee "$ROOT/.tmp/demo-digest.json"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -c "
SELECT count(*) AS problems FROM koherent.verify_history()"

say "someone with superuser rights edits one history entry with triggers off; verify_history names it"
psql -X -h 127.0.0.1 -p "$DEMO_PORT" -U postgres -d "$DB" -P pager=off -v digest="$(cat "$ROOT/.tmp/demo-digest.json")" <<'SQL'
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE koherent_history.inventory SET qty = qty + 1000
 WHERE history_id = (SELECT min(history_id) FROM koherent_history.inventory);
SELECT * FROM koherent.verify_history(jsonb_build_array(:'digest'::jsonb));
ROLLBACK;
SQL

say "task-101's audit package: exported in one snapshot, verified offline against the digest kept and the issuer's key"
PKG="$ROOT/.tmp/demo-audit-task-101"
rm -rf "$PKG"
"$KOHERENT" jwks --key "$KEY" > "$ROOT/.tmp/demo-issuer-jwks.json"
"$KOHERENT" audit export --db "host=127.0.0.1 port=$DEMO_PORT user=postgres dbname=$DB" --task task-101 --out "$PKG"
"$KOHERENT" audit verify "$PKG" --jwks "$ROOT/.tmp/demo-issuer-jwks.json" --digest "$ROOT/.tmp/demo-digest.json"
"$KOHERENT" audit show "$PKG" --row inventory:1

say "someone edits one line of the package (bolt's first count: 100 -> 1000); verify names the file and line"
python3 - "$PKG/entries.jsonl" <<'PY'
import sys
path = sys.argv[1]
lines = open(path).read().splitlines(keepends=True)
lines[0] = lines[0].replace(":100,", ":1000,", 1)
open(path, "w").write("".join(lines))
PY
if "$KOHERENT" audit verify "$PKG" --jwks "$ROOT/.tmp/demo-issuer-jwks.json" --digest "$ROOT/.tmp/demo-digest.json"; then
    echo "the edited package verified: that is a bug" >&2
    exit 1
fi

cat <<EOF

The demo is running.
  psql:      psql -h 127.0.0.1 -p $DEMO_PORT -U postgres $DB
  GraphiQL:  http://127.0.0.1:$GQL_PORT/graphiql   (GraphQL endpoint: http://127.0.0.1:$GQL_PORT/graphql)
  a mutation as a task: curl http://127.0.0.1:$GQL_PORT/graphql -H 'content-type: application/json' \\
      -H "Rekuest-Task: \$(target/release/koherent mint --key .tmp/demo-issuer-key.json --tsk task-104)" \\
      -d '{"query": "mutation { createInventory(input: {inventory: {name: \\"gear\\", qty: 3}}) { inventory { id } } }"}'
  stop:      scripts/demo.sh stop
EOF
