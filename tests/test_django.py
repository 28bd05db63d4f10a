"""The Django integration (koherent_pg.django): TaskMiddleware and the database hook attribute
every write of a request carrying Rekuest-Task (autocommit, atomic blocks, ATOMIC_REQUESTS),
nothing leaks into the next request on a persistent connection, a refused token writes nothing;
provenance_of() reads a model's history in one query. A tiny project (tests/djangoapp: Author,
Book with a foreign key) against the real server, through Django's test client."""

import json
import uuid

import psycopg
import pytest

from conftest import APP_ROLE, AUDIENCE, HOST, PORT, connect, mint

django = pytest.importorskip("django")


def entries(dbname):
    with connect(dbname) as c:
        return c.execute("SELECT table_name::text, kind, task_id, context_id FROM koherent.provenance_entry "
                         "WHERE kind <> 'TRUNCATE' ORDER BY history_id").fetchall()


def post(client, token=None, **body):
    headers = {"Rekuest-Task": token} if token else {}
    r = client.post("/books/", data=json.dumps(body), content_type="application/json", headers=headers)
    assert r.status_code == 200, r.content
    return r.json()


@pytest.mark.parametrize("atomic_requests", [False, True])
def test_every_write_of_a_request_is_attributed(project, atomic_requests):
    from django.db import connections
    from django.test import Client

    connections["default"].settings_dict["ATOMIC_REQUESTS"] = atomic_requests
    post(Client(), mint("t-django"), title="Dune", author="Frank", atomic=True)
    got = entries(project)
    assert [(t, k, task) for t, k, task, _ in got] == [
        ("djangoapp_author", "CREATE", "t-django"), ("djangoapp_book", "CREATE", "t-django"),
        ("djangoapp_book", "UPDATE", "t-django"), ("djangoapp_author", "UPDATE", "t-django")]
    contexts = [ctx for *_, ctx in got]
    if atomic_requests:
        assert len(set(contexts)) == 1           # the request is one transaction
    else:
        assert len(set(contexts)) == 3           # two autocommit statements, then the atomic block
        assert contexts[2] == contexts[3]


def test_nothing_leaks_into_the_next_request_on_a_persistent_connection(project):
    from django.db import connection
    from django.test import Client

    client = Client()
    post(client, mint("t-first"), title="A", author="X")
    pid = connection.connection.info.backend_pid
    post(client, None, title="B", author="Y")
    assert connection.connection.info.backend_pid == pid   # CONN_MAX_AGE kept the connection
    assert [(t, task) for t, _, task, _ in entries(project)] == [
        ("djangoapp_author", "t-first"), ("djangoapp_book", "t-first"),
        ("djangoapp_author", None), ("djangoapp_book", None)]


@pytest.mark.parametrize("atomic_requests", [False, True])
def test_a_refused_token_fails_the_write_and_writes_nothing(project, atomic_requests):
    from django.db import DatabaseError, connections
    from django.test import Client

    connections["default"].settings_dict["ATOMIC_REQUESTS"] = atomic_requests
    with pytest.raises(DatabaseError) as e:
        post(Client(), mint("t-bad", exp=1_000_000_000), title="C", author="Z")
    assert isinstance(e.value.__cause__, psycopg.errors.InvalidAuthorizationSpecification)
    assert "reason: expired" in e.value.__cause__.diag.message_detail
    with connect(project) as c:
        assert c.execute("SELECT count(*) FROM djangoapp_book").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM djangoapp_author").fetchone() == (0,)
    assert entries(project) == []
    post(Client(), None, title="D", author="W")   # the connection is usable afterwards
    assert len(entries(project)) == 2


def test_the_token_is_never_in_the_query_text(project):
    """Django binds its own parameters on the client; the hook's set_task goes out with the
    token as a bind parameter: no Parse or Query message (what pg_stat_activity shows other
    sessions) carries it."""
    import tempfile

    from django.db import connection
    from psycopg import pq

    from djangoapp.models import Author
    from koherent_pg.django import using_task

    token = mint("t-hidden")
    connection.ensure_connection()
    raw = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        raw.trace(trace.fileno())
        raw.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            with using_task(token):
                Author.objects.create(name="hidden")
        finally:
            raw.untrace()
        trace.seek(0)
        sent = [line.split("\t", 3) for line in trace.read().splitlines() if line.startswith("F")]
    texts = [m[3] for m in sent if len(m) > 3 and m[2] in ("Parse", "Query")]
    assert any("koherent.set_task($1)" in t for t in texts), texts
    assert any("INSERT INTO" in t and "hidden" in t for t in texts), texts
    assert all(token not in t for t in texts)
    assert any(m[2] == "Bind" and token in m[3] for m in sent if len(m) > 3)
    assert [task for _, _, task, _ in entries(project)] == ["t-hidden"]


def test_provenance_of_an_instance_and_of_a_queryset_in_one_query(project):
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from djangoapp.models import Book
    from koherent_pg.django import effective_changes_of, provenance_of

    client = Client()
    b1 = post(client, mint("t-read"), title="One", author="P", atomic=True)["book"]
    post(client, mint("t-read2"), title="Two", author="Q")
    r = client.get(f"/books/{b1}/provenance")
    assert r.json() == {"entries": [{"kind": "CREATE", "task_id": "t-read", "title": "One"},
                                    {"kind": "UPDATE", "task_id": "t-read", "title": "One (edited)"}]}
    with CaptureQueriesContext(connection) as q:
        many = provenance_of(Book.objects.all())
    assert len(q.captured_queries) == 1
    assert [(e.row_key["id"], e.kind, e.task_id) for e in many] == [
        (b1, "CREATE", "t-read"), (b1, "UPDATE", "t-read"), (b1 + 1, "CREATE", "t-read2")]
    changes = effective_changes_of(Book.objects.get(pk=b1))
    assert [(c.field, c.old_value, c.new_value) for c in changes if c.field == "title"] == [
        ("title", None, "One"), ("title", "One", "One (edited)")]


def test_the_header_name_is_a_setting(project):
    from django.test import Client, override_settings

    with override_settings(KOHERENT_PG_HEADER="X-Task-Token"):
        client = Client()
        r = client.post("/books/", data=json.dumps({"title": "H", "author": "I"}), content_type="application/json",
                        headers={"X-Task-Token": mint("t-header")})
        assert r.status_code == 200
    assert {task for _, _, task, _ in entries(project)} == {"t-header"}


def org_of(request):
    """The application's own word on the request's organization (here a header the test trusts)."""
    return request.headers.get("X-Test-Org")


@pytest.mark.parametrize("atomic_requests", [False, True])
def test_the_requests_organization_and_user_go_with_it(project, atomic_requests):
    from django.db import DatabaseError, connections
    from django.test import Client, override_settings

    connections["default"].settings_dict["ATOMIC_REQUESTS"] = atomic_requests
    with override_settings(KOHERENT_PG_ORGANIZATION="test_django.org_of",
                           KOHERENT_PG_APP_USER=lambda r: r.headers.get("X-Test-User")):
        client = Client()
        for i, (token, org, user) in enumerate(((mint("t-acme"), "acme", "ana"), (None, "globex", "gus"),
                                                 (None, None, None))):
            headers = {k: v for k, v in (("Rekuest-Task", token), ("X-Test-Org", org), ("X-Test-User", user)) if v}
            r = client.post("/books/", data=json.dumps({"title": "T", "author": f"A{i}"}),
                            content_type="application/json", headers=headers)
            assert r.status_code == 200, r.content
        # acme's task from globex: refused (28000), nothing written
        before = len(entries(project))
        with pytest.raises(DatabaseError) as e:
            client.post("/books/", data=json.dumps({"title": "X", "author": "Y"}), content_type="application/json",
                        headers={"Rekuest-Task": mint("t-acme"), "X-Test-Org": "globex"})
        assert e.value.__cause__.sqlstate == "28000"
        assert e.value.__cause__.diag.message_detail == "reason: organization_mismatch"
        assert len(entries(project)) == before
    with connect(project) as c:
        got = c.execute("SELECT task_id, organization, app_user FROM koherent.provenance_entry "
                        "WHERE kind = 'CREATE' ORDER BY history_id").fetchall()
    assert got == [("t-acme", "acme", "ana")] * 2 + [(None, "globex", "gus")] * 2 + [(None, None, None)] * 2


def test_a_transaction_begun_before_the_middleware_is_attributed_too(project):
    """A middleware listed before TaskMiddleware opens a transaction and queries: the request's
    writes still run under its task (set in that transaction at the first statement the token
    is active for)."""
    from django.db import connection, transaction

    from djangoapp.models import Author
    from koherent_pg.django import using_task

    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        with using_task(mint("t-late")):
            Author.objects.create(name="late")
    assert [(t, task) for t, _, task, _ in entries(project)] == [("djangoapp_author", "t-late")]


@pytest.mark.parametrize("atomic_requests", [False, True])
def test_through_pgbouncer_in_transaction_mode_nothing_leaks(project, atomic_requests):
    """Django on a persistent connection to a real PgBouncer in transaction mode, one server
    connection for everyone: an attributed request, then an unattributed one, then a raw client
    of the same pool in between; each write has exactly its own request's task (a task lives as
    long as its transaction, and the pooler hands the server connection on between them)."""
    from django.db import connections
    from django.test import Client

    from test_reliability import pgbouncer_for

    settings = connections["default"].settings_dict
    with pgbouncer_for(project) as port:
        saved = (settings["HOST"], settings["PORT"], settings["ATOMIC_REQUESTS"])
        connections.close_all()
        settings.update(HOST="127.0.0.1", PORT=port, ATOMIC_REQUESTS=atomic_requests)
        try:
            client = Client()
            post(client, mint("t-pooled"), title="A", author="X")
            other = psycopg.connect(host="127.0.0.1", port=port, dbname=project, user=APP_ROLE, autocommit=True,
                                    prepare_threshold=None)
            try:
                other.execute("INSERT INTO djangoapp_author (name) VALUES ('raw')")
            finally:
                other.close()
            post(client, None, title="B", author="Y")
            post(client, mint("t-pooled-2"), title="C", author="Z", atomic=True)
            post(client, None, title="D", author="W", atomic=True)
        finally:
            connections.close_all()
            settings["HOST"], settings["PORT"], settings["ATOMIC_REQUESTS"] = saved
    got = [(t, k, task) for t, k, task, _ in entries(project)]
    assert got == [
        ("djangoapp_author", "CREATE", "t-pooled"), ("djangoapp_book", "CREATE", "t-pooled"),
        ("djangoapp_author", "CREATE", None),
        ("djangoapp_author", "CREATE", None), ("djangoapp_book", "CREATE", None),
        ("djangoapp_author", "CREATE", "t-pooled-2"), ("djangoapp_book", "CREATE", "t-pooled-2"),
        ("djangoapp_book", "UPDATE", "t-pooled-2"), ("djangoapp_author", "UPDATE", "t-pooled-2"),
        ("djangoapp_author", "CREATE", None), ("djangoapp_book", "CREATE", None),
        ("djangoapp_book", "UPDATE", None), ("djangoapp_author", "UPDATE", None)]


def test_savepoints_rolled_back_keep_the_hooks_state_as_the_servers(project):
    """ROLLBACK TO SAVEPOINT undoes a set_task made after the savepoint on the server; the hook
    follows: a task set inside a savepoint that was rolled back is set again for the next write
    (the write was attributed to the task outside the savepoint, or to none), and a savepoint
    rolled back under another token than it was made under runs as it is."""
    from django.db import connection, transaction

    from djangoapp.models import Author
    from koherent_pg.django import using_task

    # 1. a nested atomic block under a token fails; the next write under the same token, in
    #    the outer transaction begun with no token
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        with pytest.raises(ValueError):
            with transaction.atomic(), using_task(mint("t-batch")):
                Author.objects.create(name="lost")
                raise ValueError
        with using_task(mint("t-batch")):
            Author.objects.create(name="kept")
    # 2. under t-outer, a savepoint; t-inner inside it, rolled back; the next write is t-inner's
    with using_task(mint("t-outer")):
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("SELECT 1")
            sid = transaction.savepoint()
            with using_task(mint("t-inner")):
                Author.objects.create(name="rolled back")
                transaction.savepoint_rollback(sid)
                Author.objects.create(name="inner")
    # 3. a write under t-one; a savepoint made and rolled back under another token: the
    #    rollback itself sets nothing (set_task would fail there: the transaction wrote under
    #    t-one); the next write under t-one stays in its context
    with using_task(mint("t-one")):
        with transaction.atomic():
            Author.objects.create(name="one")
            sid = transaction.savepoint()
            with using_task(mint("t-two")):
                transaction.savepoint_rollback(sid)
            Author.objects.create(name="one again")
    with connect(project) as c:
        got = c.execute("SELECT e.row_data->>'name', e.task_id FROM koherent.provenance_entry e "
                        "WHERE table_name = 'djangoapp_author'::regclass ORDER BY history_id").fetchall()
    assert got == [("kept", "t-batch"), ("inner", "t-inner"), ("one", "t-one"), ("one again", "t-one")]


def test_copy_through_djangos_cursor_runs_under_the_task(project):
    """cursor.copy() bypasses Django's execute wrappers: the hook puts it under the task all the
    same, in autocommit (a transaction of its own) and in an atomic block; a refused COPY is
    Django's DatabaseError with the SQLSTATE on its cause, nothing written."""
    from django.db import DatabaseError, connection, transaction

    from koherent_pg.django import using_task

    with using_task(mint("t-copy")):
        with connection.cursor() as cur:
            with cur.copy("COPY djangoapp_author (name) FROM STDIN") as cp:
                cp.write_row(["auto"])
        with transaction.atomic():
            with connection.cursor() as cur:
                with cur.copy("COPY djangoapp_author (name) FROM STDIN") as cp:
                    cp.write_row(["atomic"])
            with connection.cursor() as cur:
                cur.execute("INSERT INTO djangoapp_author (name) VALUES ('after')")
    with connect(project) as c:
        got = c.execute("SELECT e.row_data->>'name', e.task_id FROM koherent.provenance_entry e "
                        "WHERE table_name = 'djangoapp_author'::regclass ORDER BY history_id").fetchall()
        ctxs = c.execute("SELECT count(DISTINCT context_id) FROM koherent.provenance_entry").fetchone()[0]
    assert got == [("auto", "t-copy"), ("atomic", "t-copy"), ("after", "t-copy")] and ctxs == 2
    with using_task(mint("t-copy-bad", exp=1_000_000_000)):
        with pytest.raises(DatabaseError) as e:
            with connection.cursor() as cur:
                with cur.copy("COPY djangoapp_author (name) FROM STDIN") as cp:
                    cp.write_row(["refused"])
    assert e.value.__cause__.sqlstate == "28000"
    with connect(project) as c:
        assert c.execute("SELECT count(*) FROM djangoapp_author WHERE name = 'refused'").fetchone()[0] == 0
