"""The Python client package (clients/python, `koherent_pg`): psycopg 3's task() and atask(),
SQLAlchemy 2's hook, against the real server; attribution, one round trip, no leak into the next
transaction, refused tokens writing nothing."""

import asyncio
import os
import tempfile

import psycopg
import pytest
from psycopg import pq
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import Session

import koherent_pg
from koherent_pg.sqlalchemy import attribute, current_token
from conftest import APP_ROLE, HOST, PORT, mint
from test_reliability import pgbouncer  # noqa: F401  (the fixture)


def attribution(db):
    return db.sql("SELECT row_key->>'id', task_id FROM koherent.provenance_entry ORDER BY history_id")


@pytest.mark.parametrize("autocommit", [True, False])
def test_task_attributes_the_block_and_restores_the_connection(item, autocommit):
    with item.conn(user=APP_ROLE, autocommit=autocommit) as c:
        with koherent_pg.task(c, mint("t-py")) as conn:
            assert conn is c
            c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
            c.execute("UPDATE item SET qty = 2 WHERE id = 1")
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
        assert c.autocommit is autocommit
        c.execute("INSERT INTO item (id, qty) VALUES (2, 1)")   # after the block: no task
        if not autocommit:
            c.commit()
    assert attribution(item) == [("1", "t-py"), ("1", "t-py"), ("2", None)]


def test_task_sends_begin_and_set_task_in_one_round_trip(item):
    with item.conn(user=APP_ROLE) as c, tempfile.TemporaryFile("w+") as trace:
        c.pgconn.trace(trace.fileno())
        c.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        with koherent_pg.task(c, mint("t-trip")):
            c.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t") for line in trace.read().splitlines() if line.startswith("F")]
            c.execute("INSERT INTO item (id) VALUES (1)")
    messages = [m[2].split(" ")[0] for m in sent]
    assert messages.count("Sync") == 1, messages
    assert any("BEGIN" in " ".join(m) for m in sent) and any("koherent.set_task" in " ".join(m) for m in sent)
    token_text = [m for m in sent if m[2].startswith("Parse")]
    assert all("eyJ" not in " ".join(m) for m in token_text)   # the token is a parameter
    assert attribution(item) == [("1", "t-trip")]


def test_the_token_is_a_bind_parameter_not_in_pg_stat_activity(item):
    token = mint("t-hidden")
    with item.conn(user=APP_ROLE) as c, item.conn() as watcher:
        with koherent_pg.task(c, token):
            pid = c.info.backend_pid
            query = watcher.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]
            assert "koherent.set_task" in query and token not in query and "$1" in query


@pytest.mark.parametrize("bad", ["forged", "expired", "garbage"])
def test_a_refused_token_writes_nothing_and_leaves_the_connection_idle(item, bad):
    token = {"forged": mint("t-bad")[:-4] + "AAAA", "expired": mint("t-bad", exp=1_000_000_000),
             "garbage": "not a token"}[bad]
    ran = []
    with item.conn(user=APP_ROLE) as c:
        with pytest.raises((psycopg.errors.InvalidAuthorizationSpecification, psycopg.errors.InvalidParameterValue)):
            with koherent_pg.task(c, token):
                ran.append(True)
                c.execute("INSERT INTO item (id) VALUES (1)")
        assert ran == [] and c.info.transaction_status == pq.TransactionStatus.IDLE
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert item.count("item") == 0 and attribution(item) == []


def test_an_error_in_the_block_rolls_everything_back(item):
    with item.conn(user=APP_ROLE) as c:
        with pytest.raises(ZeroDivisionError):
            with koherent_pg.task(c, mint("t-boom")):
                c.execute("INSERT INTO item (id) VALUES (1)")
                1 / 0
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
    assert item.count("item") == 0 and attribution(item) == []


def test_task_refuses_a_connection_inside_a_transaction(item):
    with item.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT 1")
        with pytest.raises(koherent_pg.TaskError, match="already in one"):
            with koherent_pg.task(c, mint("t-late")):
                pass
        with pytest.raises(koherent_pg.TaskError):
            with koherent_pg.task(c, ""):
                pass


def test_task_checks_the_arguments_against_the_tokens_hash(item):
    with item.conn(user=APP_ROLE) as c:
        with koherent_pg.task(c, mint("t-args"), args={"x": 1}):
            c.execute("INSERT INTO item (id) VALUES (1)")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
            with koherent_pg.task(c, mint("t-args2"), args={"x": 2}):
                c.execute("INSERT INTO item (id) VALUES (2)")
        assert "args_mismatch" in e.value.diag.message_detail
    assert attribution(item) == [("1", "t-args")]


def test_atask_is_the_same_for_async_connections(item):
    async def run():
        conninfo = f"host={HOST} port={PORT} dbname={item.name} user={APP_ROLE}"
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as c:
            async with koherent_pg.atask(c, mint("t-async")):
                await c.execute("INSERT INTO item (id) VALUES (1)")
            assert c.info.transaction_status == pq.TransactionStatus.IDLE
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                async with koherent_pg.atask(c, mint("t-async", exp=1_000_000_000)):
                    await c.execute("INSERT INTO item (id) VALUES (2)")
            await c.execute("INSERT INTO item (id) VALUES (3)")
    asyncio.run(run())
    assert attribution(item) == [("1", "t-async"), ("3", None)]


def engine_for(db):
    url = sqlalchemy.engine.URL.create("postgresql+psycopg", username=APP_ROLE, host=HOST, port=PORT,
                                       database=db.name)
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)
    attribute(engine)
    attribute(engine)   # idempotent: one set_task per transaction
    return engine


def test_sqlalchemy_transactions_run_under_the_current_token(item):
    engine = engine_for(item)
    try:
        reset = current_token.set(mint("t-sa"))
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO item (id, qty) VALUES (1, 1)"))
            conn.execute(text("UPDATE item SET qty = 2 WHERE id = 1"))
        with Session(engine) as s, s.begin():
            s.execute(text("INSERT INTO item (id) VALUES (2)"))
        current_token.reset(reset)
        # the same pooled connection, no token now: nothing carries over
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO item (id) VALUES (3)"))
        assert engine.pool.checkedin() == 1
    finally:
        engine.dispose()
    assert attribution(item) == [("1", "t-sa"), ("1", "t-sa"), ("2", "t-sa"), ("3", None)]
    assert item.one("SELECT count(DISTINCT context_id) FROM koherent.provenance_entry WHERE task_id = 't-sa'") == 2


def test_sqlalchemy_refused_token_writes_nothing(item):
    engine = engine_for(item)
    try:
        reset = current_token.set(mint("t-sa-bad", exp=1_000_000_000))
        with pytest.raises(sqlalchemy.exc.DBAPIError) as e:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO item (id) VALUES (1)"))
        assert e.value.orig.sqlstate == "28000"
        current_token.reset(reset)
        with engine.begin() as conn:   # the pool's connection is usable afterwards
            assert conn.execute(text("SELECT count(*) FROM item")).scalar() == 0
    finally:
        engine.dispose()
    assert attribution(item) == []


def test_sqlalchemy_autocommit_two_phase_and_async_engines(item):
    """A connection in AUTOCOMMIT with a token set is refused at its begin (each statement would
    be a transaction of its own, which the task does not reach: the writes were unattributed),
    nothing written; a two-phase transaction runs under the token; an AsyncEngine is attributed
    through its sync_engine."""
    from koherent_pg import TaskError

    engine = engine_for(item)
    auto = sqlalchemy.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    attribute(auto)
    try:
        reset = current_token.set(mint("t-sa-auto"))
        with pytest.raises(TaskError, match="AUTOCOMMIT"):
            with auto.begin() as conn:
                conn.execute(text("INSERT INTO item (id) VALUES (1)"))
        with pytest.raises(TaskError, match="AUTOCOMMIT"):
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                with conn.begin():
                    conn.execute(text("INSERT INTO item (id) VALUES (2)"))
        # (max_prepared_transactions may be 0: the transaction is rolled back before PREPARE)
        with engine.connect() as conn:
            tx = conn.begin_twophase()
            assert conn.execute(text("SELECT (koherent.current_task()).task_id")).scalar() == "t-sa-auto"
            conn.execute(text("INSERT INTO item (id) VALUES (3)"))
            ctx = conn.execute(text("SELECT koherent.current_context_id()")).scalar()
            tx.rollback()
        assert ctx is not None
        current_token.reset(reset)
        # without a token, AUTOCOMMIT is used as ever
        with auto.connect() as conn:
            conn.execute(text("INSERT INTO item (id) VALUES (4)"))
    finally:
        engine.dispose()
        auto.dispose()
    assert attribution(item) == [("4", None)]

    from sqlalchemy.ext.asyncio import create_async_engine

    async def run():
        aengine = create_async_engine(engine.url, pool_size=1, max_overflow=0)
        attribute(aengine)
        try:
            reset = current_token.set(mint("t-sa-async"))
            async with aengine.begin() as conn:
                await conn.execute(text("INSERT INTO item (id) VALUES (5)"))
            current_token.reset(reset)
        finally:
            await aengine.dispose()

    asyncio.run(run())
    assert attribution(item) == [("4", None), ("5", "t-sa-async")]


def test_savepoints_inside_and_misuse_of_the_block(item):
    with item.conn(user=APP_ROLE) as c:
        with koherent_pg.task(c, mint("t-sp")):
            c.execute("INSERT INTO item (id) VALUES (1)")
            with pytest.raises(psycopg.errors.UniqueViolation):
                with c.transaction():   # a savepoint: its failure is rolled back alone
                    c.execute("INSERT INTO item (id) VALUES (1)")
            c.execute("INSERT INTO item (id) VALUES (2)")
        with pytest.raises(koherent_pg.TaskError, match="failed inside"):
            with koherent_pg.task(c, mint("t-caught")):
                c.execute("INSERT INTO item (id) VALUES (3)")
                try:
                    c.execute("INSERT INTO item (id) VALUES (3)")
                except psycopg.errors.UniqueViolation:
                    pass   # swallowed: the transaction is aborted, and must not look committed
        with pytest.raises(koherent_pg.TaskError, match="ended inside"):
            with koherent_pg.task(c, mint("t-ended")):
                c.execute("COMMIT")
        assert c.info.transaction_status == pq.TransactionStatus.IDLE and c.autocommit is True
    assert attribution(item) == [("1", "t-sp"), ("2", "t-sp")]


def test_task_through_pgbouncer_transaction_pooling_never_leaks(item, pgbouncer):
    a = psycopg.connect(host="127.0.0.1", port=pgbouncer, dbname=item.name, user=APP_ROLE,
                        autocommit=True, prepare_threshold=None)
    b = psycopg.connect(host="127.0.0.1", port=pgbouncer, dbname=item.name, user=APP_ROLE,
                        autocommit=False, prepare_threshold=None)
    try:
        expected = []
        for i in range(10):
            if i % 2 == 0:
                with koherent_pg.task(a, mint("pooled-py")):
                    a.execute("INSERT INTO item (id) VALUES (%s)", [i])
                expected.append((str(i), "pooled-py"))
            else:
                b.execute("INSERT INTO item (id) VALUES (%s)", [i])
                b.commit()
                expected.append((str(i), None))
    finally:
        a.close()
        b.close()
    assert attribution(item) == expected


def test_a_session_setting_left_on_a_pooled_server_connection_is_refused(item, pgbouncer):
    """Through PgBouncer in transaction mode, client A sets koherent.app_user, organization and
    task_token for the session (the server connection keeps them); client B's write on that
    server connection is refused (55000 setting_carried_over), nothing written under A's
    settings; once B resets them (or sets its own in its transaction) it writes as itself."""
    a = psycopg.connect(host="127.0.0.1", port=pgbouncer, dbname=item.name, user=APP_ROLE,
                        autocommit=True, prepare_threshold=None)
    b = psycopg.connect(host="127.0.0.1", port=pgbouncer, dbname=item.name, user=APP_ROLE,
                        autocommit=True, prepare_threshold=None)
    try:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute("SET koherent.app_user = 'alice'")
        a.execute("SELECT set_config('koherent.task_token', %s, false)", [mint("t-alice")])
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid   # the same server connection
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            b.execute("INSERT INTO item (id) VALUES (1)")
        assert e.value.diag.message_detail.startswith("reason: setting_carried_over")
        b.execute("RESET ALL")
        with koherent_pg.task(b, mint("t-bob")):
            b.execute("INSERT INTO item (id) VALUES (2)")
    finally:
        a.close()
        b.close()
    assert item.sql("SELECT row_key->>'id', task_id, app_user FROM koherent.provenance_entry") == [("2", "t-bob", None)]
