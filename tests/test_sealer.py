"""The background sealer: with koherent in shared_preload_libraries and a database named in
koherent.seal_databases, koherent.seal() runs every koherent.seal_interval seconds without anyone
calling it (the test cluster runs with koherent.seal_databases = 'koherent_sealer' and
koherent.seal_interval = 1: scripts/test.sh)."""

import time

import psycopg
import pytest

from conftest import ISSUER, TEST_PUBLIC_JWK, connect, mint

DB = "koherent_sealer"


def test_changes_are_sealed_without_anyone_calling_seal():
    with connect() as c:
        if DB not in (c.execute("SELECT current_setting('koherent.seal_databases', true)").fetchone()[0] or ""):
            pytest.skip("the cluster runs no sealer (koherent.seal_databases)")
        assert c.execute("SELECT current_setting('koherent.seal_interval')").fetchone()[0] == "1s"
        # (never dropped: DROP DATABASE ... FORCE would end the database's sealer until a restart)
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone():
            c.execute(f"CREATE DATABASE {DB}")
    with connect(DB) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS koherent")
        c.execute("ALTER DATABASE koherent_sealer SET koherent.audience = 'koherent'")
        c.execute("DELETE FROM koherent.issuer_key_store")
        c.execute("SELECT koherent.add_issuer_jwks(%s, %s::jsonb)",
                  [ISSUER, psycopg.types.json.Jsonb({"keys": [TEST_PUBLIC_JWK]})])
        c.execute("DROP TABLE IF EXISTS sealed_item")
        c.execute("CREATE TABLE sealed_item (id int PRIMARY KEY, qty int)")
        c.execute("SELECT koherent.track('sealed_item')")
        before = c.execute("SELECT coalesce((koherent.digest()->>'entries')::bigint, 0)").fetchone()[0]
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
