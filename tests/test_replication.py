"""History replicates: logical replication of a tracked table and of koherent's history, context
and task tables from one cluster to another (two clusters of their own, scripts/lib.sh's
start_cluster). The subscriber shows the same provenance; its own history triggers stay silent
while the apply worker writes (no double history); its ledger seals and verifies what arrived;
a local write there is recorded by its own triggers, under ids apart from the publisher's."""

import os
import shutil
import subprocess
import time

import psycopg
import pytest

from conftest import AUDIENCE, HOST, ISSUER, ITEM_DDL, ROOT, TEST_PUBLIC_JWK, mint

PUB_PORT = int(os.environ.get("KOHERENT_REPL_PUB_PORT", "5492"))
SUB_PORT = int(os.environ.get("KOHERENT_REPL_SUB_PORT", "5491"))
PUB_DIR = os.path.join(ROOT, ".tmp", "test-repl-pub")
SUB_DIR = os.path.join(ROOT, ".tmp", "test-repl-sub")
DB = "koherent_repl"

# what the README's "Replication" section publishes: the tracked tables as the application
# needs them, and koherent's history, context and task tables, inserts only (history is never
# updated; a context or task row is written once)
PUBLICATIONS = [
    "CREATE PUBLICATION app_pub FOR TABLE item",
    "CREATE PUBLICATION koherent_pub FOR TABLE koherent_history.item, koherent.transaction_auth_context, "
    "koherent.task WITH (publish = 'insert')",
]

PROVENANCE = ("SELECT history_id, table_name::text, kind, row_key::text, task_id, changed_by, db_role "
              "FROM koherent.provenance_entry ORDER BY history_id")


def lib(command):
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh && {command}"], check=True, cwd=ROOT)


def connect(port, dbname=DB, autocommit=True):
    return psycopg.connect(host=HOST, port=port, dbname=dbname, user="postgres", autocommit=autocommit)


def setup(port):
    """The database with koherent, the test key and `item` tracked: the same DDL on both sides
    (logical replication carries rows, not schema)."""
    with connect(port, "postgres") as c:
        c.execute(f"CREATE DATABASE {DB}")
        c.execute(f"ALTER DATABASE {DB} SET koherent.audience = '{AUDIENCE}'")
    with connect(port) as c:
        c.execute("CREATE EXTENSION koherent")
        c.execute("SELECT koherent.add_issuer_jwks(%s, %s::jsonb)",
                  [ISSUER, psycopg.types.json.Jsonb({"keys": [TEST_PUBLIC_JWK]})])
        c.execute(ITEM_DDL)
        c.execute("SELECT koherent.track('item')")


@pytest.fixture
def clusters():
    if os.geteuid() != 0 or not os.path.exists("/usr/lib/postgresql/15/bin/initdb"):
        pytest.skip("needs root and PostgreSQL 15's initdb to start clusters of its own")
    for d, port, extra in ((PUB_DIR, PUB_PORT, "\"wal_level = logical\""), (SUB_DIR, SUB_PORT, "")):
        lib(f"stop_cluster {d}")
        shutil.rmtree(d, ignore_errors=True)
        lib(f"start_cluster {d} {port} {extra}")
    yield
    for d in (SUB_DIR, PUB_DIR):
        lib(f"stop_cluster {d}")
        shutil.rmtree(d, ignore_errors=True)


def wait_for(check, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"replication: {what} did not arrive within {timeout} s")


def write(port, statements, token=None):
    with connect(port, autocommit=False) as c:
        if token:
            c.execute("SELECT koherent.set_task(%s)", [token])
        for s in statements:
            c.execute(s)
        c.commit()


def test_history_replicates_and_the_subscriber_records_no_second_history(clusters):
    setup(PUB_PORT)
    setup(SUB_PORT)
    # history written before the subscription exists: the initial copy brings it
    write(PUB_PORT, ["INSERT INTO item (id, qty) SELECT g, g FROM generate_series(1, 100) g"], mint("run-1"))
    with connect(PUB_PORT) as c:
        for p in PUBLICATIONS:
            c.execute(p)
    with connect(SUB_PORT) as c:
        c.execute(f"CREATE SUBSCRIPTION koherent_sub CONNECTION 'host={HOST} port={PUB_PORT} dbname={DB} "
                  "user=postgres' PUBLICATION app_pub, koherent_pub")
    # ... and everything after it streams: an attributed UPDATE and DELETE, an unattributed
    # write, a TRUNCATE (the subscriber's truncate trigger must stay silent too)
    write(PUB_PORT, ["UPDATE item SET qty = qty + 1", "DELETE FROM item WHERE id > 90"], mint("run-2"))
    write(PUB_PORT, ["UPDATE item SET note = 'by hand' WHERE id = 7"])
    write(PUB_PORT, ["TRUNCATE item"], mint("run-3"))
    write(PUB_PORT, ["INSERT INTO item (id, qty) VALUES (1000, 1)"], mint("run-3"))

    with connect(PUB_PORT) as p, connect(SUB_PORT) as s:
        expected = p.execute(PROVENANCE).fetchall()
        assert len(expected) == 100 + 100 + 10 + 1 + 90 + 1
        wait_for(lambda: s.execute("SELECT count(*) FROM koherent.provenance_entry").fetchone()[0]
                 >= len(expected) and s.execute("SELECT count(*) FROM item").fetchone()[0] == 1,
                 "the publisher's history")
        time.sleep(1)  # anything a subscriber trigger wrote would be there by now
        # the same provenance, entry for entry: ids, kinds, keys, tasks, agents, roles
        assert s.execute(PROVENANCE).fetchall() == expected
        assert s.execute("SELECT count(*) FROM koherent_history.item").fetchone()[0] == len(expected)
        assert s.execute("SELECT id, qty FROM item").fetchall() == [(1000, 1)]
        # the task lookups of the subscriber's own readers answer from the replicated rows
        assert s.execute("SELECT task_id, count(*)::int FROM koherent.task_changes('run-2') GROUP BY 1"
                         ).fetchall() == [("run-2", 110)]
        assert s.execute("SELECT count(*)::int FROM koherent.task_changes('run-3')").fetchone()[0] == 91
        tasks = "SELECT task_id, issuer, root_task_id, token FROM koherent.task ORDER BY 1"
        assert s.execute(tasks).fetchall() == p.execute(tasks).fetchall()
        assert [r[0] for r in s.execute(tasks).fetchall()] == ["run-1", "run-2", "run-3"]
        ctx = "SELECT id, txid::text, task_id, db_role FROM koherent.transaction_auth_context ORDER BY created_at, id"
        assert s.execute(ctx).fetchall() == p.execute(ctx).fetchall()
        # the effective change of the unattributed write, read on the subscriber
        assert s.execute("SELECT c.field, c.new_value FROM koherent.effective_change c "
                         "JOIN koherent.provenance_entry e USING (history_id) "
                         "WHERE e.task_id IS NULL AND e.kind = 'UPDATE'").fetchall() == [("note", "by hand")]

        # each side keeps a ledger of its own, and the subscriber's covers what arrived
        sub_digest = s.execute("SELECT koherent.seal()").fetchone()[0]
        assert (sub_digest["block"], sub_digest["entries"]) == (1, len(expected))
        assert s.execute("SELECT problem FROM koherent.verify_history()").fetchall() == []
        pub_digest = p.execute("SELECT koherent.seal()").fetchone()[0]
        assert pub_digest["entries"] == len(expected)
        assert pub_digest["database"] != sub_digest["database"]

        # a write on the subscriber itself (not replicated back) is recorded by its own
        # triggers; its ids come from its own sequence, moved past the publisher's range
        s.execute("SELECT setval('koherent.history_id_seq', 1000000000)")
        s.execute("UPDATE item SET qty = 2 WHERE id = 1000")
        local = s.execute("SELECT history_id, kind, task_id FROM koherent.provenance_entry "
                          "WHERE history_id > 1000000000").fetchall()
        assert len(local) == 1 and local[0][1:] == ("UPDATE", None)
        assert p.execute("SELECT count(*) FROM koherent.provenance_entry WHERE history_id > 1000000000"
                         ).fetchone()[0] == 0
        s.execute("DROP SUBSCRIPTION koherent_sub")
