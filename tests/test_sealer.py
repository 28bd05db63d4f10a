"""The background sealer: with koherent in shared_preload_libraries and a database named in
koherent.seal_databases, koherent.seal() runs every koherent.seal_interval seconds without anyone
calling it. On a cluster of its own (scripts/lib.sh's start_cluster): the main test cluster does
not preload koherent, since other tests need sessions that have not loaded it."""

import os
import shutil
import subprocess
import time

import psycopg
import pytest

from conftest import HOST, ISSUER, ROOT, TEST_PUBLIC_JWK, mint

DB = "koherent_sealer"
PORT = int(os.environ.get("KOHERENT_SEALER_TEST_PORT", "5495"))
DIR = os.path.join(ROOT, ".tmp", "test-sealer")


def lib(command):
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh && {command}"], check=True, cwd=ROOT)


@pytest.fixture
def cluster():
    if os.geteuid() != 0 or not os.path.exists("/usr/lib/postgresql/15/bin/initdb"):
        pytest.skip("needs root and PostgreSQL 15's initdb to start a cluster of its own")
    lib(f"stop_cluster {DIR}")
    shutil.rmtree(DIR, ignore_errors=True)
    lib(f"start_cluster {DIR} {PORT} \"shared_preload_libraries = 'koherent'\" "
        f"\"koherent.seal_databases = '{DB}'\" \"koherent.seal_interval = 1\" "
        # (the sealer runs READ COMMITTED, which seal() needs, whatever the server's default)
        f"\"default_transaction_isolation = 'repeatable read'\"")
    yield
    lib(f"stop_cluster {DIR}")
    shutil.rmtree(DIR, ignore_errors=True)


def connect(dbname="postgres", autocommit=True):
    return psycopg.connect(host=HOST, port=PORT, dbname=dbname, user="postgres", autocommit=autocommit)


def test_changes_are_sealed_without_anyone_calling_seal(cluster):
    with connect() as c:
        assert c.execute("SELECT current_setting('koherent.seal_databases')").fetchone()[0] == DB
        assert c.execute("SHOW default_transaction_isolation").fetchone()[0] == "repeatable read"
        assert c.execute("SELECT current_setting('koherent.seal_interval')").fetchone()[0] == "1s"
        c.execute(f"CREATE DATABASE {DB}")
    with connect(DB) as c:
        c.execute("CREATE EXTENSION koherent")
        c.execute("SELECT koherent.add_issuer_jwks(%s, %s::jsonb)",
                  [ISSUER, psycopg.types.json.Jsonb({"keys": [TEST_PUBLIC_JWK]})])
        c.execute("CREATE TABLE sealed_item (id int PRIMARY KEY, qty int)")
        c.execute("SELECT koherent.track('sealed_item')")
        before = 0
    with connect(DB, autocommit=False) as c:
        c.execute("SET koherent.audience = 'koherent'")
        c.execute("SELECT koherent.set_task(%s)", [mint("task-sealed")])
        c.execute("INSERT INTO sealed_item SELECT g, g FROM generate_series(1, 10) g")
        c.commit()
    committed = time.monotonic()
    with connect(DB) as c:
        # the worker connects within its restart time (10 s) and then seals every second
        deadline = committed + 40
        while True:
            d = c.execute("SELECT koherent.digest()").fetchone()[0]
            if d and d["entries"] >= before + 10:
                break
            assert time.monotonic() < deadline, d
            time.sleep(0.2)
        assert c.execute("SELECT count(*) FROM koherent.verify_history()").fetchone()[0] == 0
        [(kind, db)] = c.execute("SELECT backend_type, datname FROM pg_stat_activity "
                                 "WHERE backend_type = 'koherent sealer'").fetchall()
        assert (kind, db) == ("koherent sealer", DB)
        # the context is in a block, sealed by the worker (no client called seal())
        assert c.execute("SELECT count(*) FROM koherent.ledger_context l JOIN koherent.transaction_auth_context x "
                         "ON x.id = l.context_id WHERE x.task_id = 'task-sealed'").fetchone()[0] >= 1

        # the worker also makes history partitions ahead (koherent.set_retention): with
        # one-second partitions and two ahead, writes go on for longer than the partitions
        # set_retention made, without anyone calling create_partitions()
        c.execute("SELECT koherent.set_retention('sealed_item', NULL, '1 second', 2)")
        made = c.execute("SELECT max(hi) FROM koherent._partitions('koherent_history.sealed_item')").fetchone()[0]
        for i in range(6):
            with connect(DB, autocommit=False) as w:
                w.execute("SET koherent.audience = 'koherent'")
                w.execute("SELECT koherent.set_task(%s)", [mint("task-partitioned")])
                w.execute("UPDATE sealed_item SET qty = qty + 1 WHERE id = 1")
                w.commit()
            time.sleep(1)
        assert c.execute("SELECT max(hi) > %s AND max(hi) > now() FROM koherent._partitions('koherent_history.sealed_item')",
                         [made]).fetchone()[0] is True
        assert c.execute("SELECT count(*) FROM koherent.task_changes('task-partitioned')").fetchone()[0] == 6
        assert c.execute("SELECT count(DISTINCT tableoid) FROM koherent_history.sealed_item "
                         "WHERE history_kind = 'UPDATE'").fetchone()[0] >= 5
