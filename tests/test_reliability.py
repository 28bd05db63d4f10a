"""Reliability under load and failure: pgbench clients mixing tasks, unattributed writes and
rollbacks (history equals what committed), PgBouncer transaction pooling (attribution never
leaks to the next client), a backend killed mid-transaction, an immediate shutdown mid-write."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import psycopg
import pytest

from conftest import APP_ROLE, HOST, PORT, connect, mint

PGDATA = os.environ.get("KOHERENT_TEST_PGDATA")
PG_BIN = "/usr/lib/postgresql/15/bin"
SOAK_SECONDS = int(os.environ.get("KOHERENT_SOAK_SECONDS", "10"))


def consistency(db):
    """Every entry points at a context row; every context row has entries; every task row is used."""
    return (
        db.one("SELECT count(*) FROM koherent.provenance_entry e LEFT JOIN koherent.transaction_auth_context c "
               "ON c.id = e.context_id WHERE c.id IS NULL"),
        db.one("SELECT count(*) FROM koherent.transaction_auth_context c WHERE NOT EXISTS "
               "(SELECT 1 FROM koherent.provenance_entry e WHERE e.context_id = c.id)"),
        db.one("SELECT count(*) FROM koherent.task t WHERE NOT EXISTS (SELECT 1 FROM "
               "koherent.transaction_auth_context c WHERE c.task_id = t.task_id AND c.issuer = t.issuer)"),
    )


def test_pgbench_mix_history_equals_committed_changes(item):
    """8 clients, three tokens, unattributed writes and rollbacks; then an exact check."""
    item.sql("CREATE TABLE ledger (id bigint PRIMARY KEY, expect text)")
    item.sql("CREATE SEQUENCE ledger_seq")
    item.sql("CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
    item.sql("INSERT INTO counter SELECT g, 0 FROM generate_series(0, 3) g")
    item.sql("SELECT koherent.track('ledger'), koherent.track('counter')")
    tokens = {i: mint(f"bench-{i}", ptk=None) for i in (1, 2, 3)}
    script = (
        "\\set r random(1, 10)\n\\set t random(1, 3)\n"
        "BEGIN;\n"
        "\\if :r <= 6\n"
        "SELECT koherent.set_task(CASE :t WHEN 1 THEN '%s' WHEN 2 THEN '%s' ELSE '%s' END);\n"
        "INSERT INTO ledger VALUES (nextval('ledger_seq'), 'bench-' || :t);\n"
        "UPDATE counter SET n = n + 1 WHERE id = :t;\n"
        "\\else\n"
        "INSERT INTO ledger VALUES (nextval('ledger_seq'), NULL);\n"
        "UPDATE counter SET n = n + 1 WHERE id = 0;\n"
        "\\endif\n"
        "\\if :r = 10\nROLLBACK;\n\\else\nCOMMIT;\n\\endif\n"
    ) % (tokens[1], tokens[2], tokens[3])
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    out = subprocess.run(
        ["pgbench", "-n", "-h", HOST, "-p", str(PORT), "-U", "postgres", "-c", "8", "-j", "2",
         "-T", str(SOAK_SECONDS), "-f", f.name, item.name],
        capture_output=True, text=True)
    os.unlink(f.name)
    assert out.returncode == 0, out.stderr
    done = int(next(l for l in out.stdout.splitlines() if "transactions actually processed" in l).split()[-1])
    committed = item.count("ledger")
    assert done > 100 and 0 < committed < done
    # one CREATE per committed ledger row, attributed exactly as the transaction intended
    assert item.one(
        "SELECT count(*) FROM ledger l JOIN koherent.provenance_entry e ON e.table_name = 'ledger'::regclass "
        "AND e.row_key = jsonb_build_object('id', l.id) AND e.kind = 'CREATE' "
        "AND e.task_id IS NOT DISTINCT FROM l.expect") == committed
    assert item.one("SELECT count(*) FROM koherent.provenance_entry WHERE table_name = 'ledger'::regclass") == committed
    # one UPDATE entry per committed increment, on the right task's counter
    assert item.one("SELECT sum(n) FROM counter") == committed
    rows = item.sql("SELECT (row_key->>'id')::int, count(*), count(DISTINCT coalesce(task_id, '-')), "
                    "min(coalesce(task_id, '-')) FROM koherent.provenance_entry "
                    "WHERE table_name = 'counter'::regclass GROUP BY 1 ORDER BY 1")
    counts = dict(item.sql("SELECT id, n FROM counter"))
    for cid, n, distinct, task in rows:
        assert n == counts[cid] and distinct == 1
        assert task == ("-" if cid == 0 else f"bench-{cid}")
    assert consistency(item) == (0, 0, 0)
    assert item.sql("SELECT task_id FROM koherent.task ORDER BY 1") == [("bench-1",), ("bench-2",), ("bench-3",)]
    print(f"pgbench mix: {done} transactions, {committed} committed, checked exactly")


@contextlib.contextmanager
def pgbouncer_for(dbname):
    """A real PgBouncer in transaction mode in front of database `dbname`, one server connection
    for all clients (so every client shares it); yields its port."""
    if not shutil.which("pgbouncer") and not os.path.exists("/usr/sbin/pgbouncer"):
        pytest.fail("pgbouncer is not installed (scripts/test.sh installs it)")
    d = tempfile.mkdtemp(prefix="koherent-pgb-")
    os.chmod(d, 0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(f"{d}/userlist.txt", "w") as f:
        f.write(f'"{APP_ROLE}" ""\n"postgres" ""\n')
    with open(f"{d}/pgbouncer.ini", "w") as f:
        f.write(f"""[databases]
{dbname} = host={HOST} port={PORT} dbname={dbname}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 50
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
""")
    proc = subprocess.Popen(["runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", f"{d}/pgbouncer.ini"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pgbouncer(item):
    with pgbouncer_for(item.name) as port:
        yield port


def bouncer_conn(db, port):
    return psycopg.connect(host="127.0.0.1", port=port, dbname=db.name, user=APP_ROLE,
                           autocommit=False, prepare_threshold=None)


def test_pgbouncer_transaction_pooling_never_leaks_attribution(item, pgbouncer):
    a, b = bouncer_conn(item, pgbouncer), bouncer_conn(item, pgbouncer)
    ta = mint("pooled-a")
    expected = []
    for i in range(20):
        if i % 2 == 0:
            a.execute("SELECT koherent.set_task(%s)", [ta])
            a.execute("INSERT INTO item (id) VALUES (%s)", [i])
            a.commit()
            expected.append((i, "pooled-a"))
        else:
            if i % 4 == 1:
                b.execute("SELECT set_config('koherent.task_token', %s, true)", [mint("pooled-b")])
                b.execute("INSERT INTO item (id) VALUES (%s)", [i])
                expected.append((i, "pooled-b"))
            else:
                b.execute("INSERT INTO item (id) VALUES (%s)", [i])
                expected.append((i, None))
            b.commit()
        # a rolled-back attributed transaction leaves nothing for the next client either
        a.execute("SELECT koherent.set_task(%s)", [ta])
        a.rollback()
    a.close()
    b.close()
    rows = item.sql("SELECT (row_key->>'id')::int, task_id FROM koherent.provenance_entry ORDER BY history_id")
    assert rows == expected
    # all of it went through one server connection
    assert item.one("SELECT count(DISTINCT backend_pid) FROM koherent.transaction_auth_context") == 1


def test_pgbouncer_set_task_outside_a_transaction_is_a_warning_and_no_effect(item, pgbouncer):
    notices = []
    with psycopg.connect(host="127.0.0.1", port=pgbouncer, dbname=item.name, user=APP_ROLE,
                         autocommit=True, prepare_threshold=None) as c:
        c.add_notice_handler(lambda d: notices.append(d.severity))
        c.execute("SELECT koherent.set_task(%s)", [mint("lost")])
        c.execute("INSERT INTO item (id) VALUES (1)")
    assert notices == ["WARNING"]
    assert item.sql("SELECT task_id FROM koherent.provenance_entry") == [(None,)]


def wait_for_server(timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with connect() as c:
                c.execute("SELECT 1")
                return
        except psycopg.Error:
            time.sleep(0.2)
    raise AssertionError("server did not come back")


needs_pgdata = pytest.mark.skipif(not PGDATA, reason="needs KOHERENT_TEST_PGDATA (scripts/test.sh sets it)")


@needs_pgdata
def test_backend_killed_mid_transaction(item):
    item.sql("INSERT INTO item (id) VALUES (1)")
    c = item.app(autocommit=False)
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    c.execute("SELECT koherent.set_task(%s)", [mint("killed")])
    c.execute("INSERT INTO item (id) SELECT g FROM generate_series(100, 1099) g")
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    wait_for_server()
    assert item.count("item") == 1
    assert item.count("koherent.provenance_entry") == 1
    assert item.count("koherent.task") == 0
    assert consistency(item) == (0, 0, 0)
    with item.app(autocommit=False) as c2:
        c2.execute("SELECT koherent.set_task(%s)", [mint("after")])
        c2.execute("INSERT INTO item (id) VALUES (2)")
        c2.commit()
    assert item.sql("SELECT task_id FROM koherent.provenance_entry ORDER BY history_id") == [(None,), ("after",)]


@needs_pgdata
def test_immediate_shutdown_during_bulk_write(item):
    for i in range(5):
        with item.app(autocommit=False) as c:
            c.execute("SELECT koherent.set_task(%s)", [mint(f"pre-{i}")])
            c.execute("INSERT INTO item (id) VALUES (%s)", [i])
            c.commit()
    started = threading.Event()

    def bulk():
        try:
            with item.app(autocommit=False) as c:
                c.execute("SELECT koherent.set_task(%s)", [mint("bulk")])
                started.set()
                c.execute("INSERT INTO item (id) SELECT g FROM generate_series(1000, 400999) g")
                c.commit()
        except psycopg.Error:
            pass

    t = threading.Thread(target=bulk)
    t.start()
    started.wait(10)
    time.sleep(0.5)
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", PGDATA, "-m", "immediate",
                    "-w", "stop"], check=True, capture_output=True)
    t.join(30)
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", PGDATA, "-l",
                    f"{PGDATA}/server.log", "-w", "start"], check=True, capture_output=True)
    wait_for_server()
    committed = item.count("item")
    assert committed in (5, 400005)
    assert item.count("koherent.provenance_entry") == committed
    assert consistency(item) == (0, 0, 0)
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("after-restart")])
        c.execute("UPDATE item SET qty = 1 WHERE id = 0")
        c.commit()
    assert item.one("SELECT task_id FROM koherent.provenance_entry WHERE kind = 'UPDATE'") == "after-restart"
