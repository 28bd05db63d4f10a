"""Fixtures and shared helpers for koherent's client tests.

scripts/test.sh starts a throwaway PostgreSQL 15 cluster with the built extension installed and
exports KOHERENT_TEST_HOST / KOHERENT_TEST_PORT. Every test gets a fresh database cloned from a
template that has the extension, the test issuer's key and an application role ready.
Tokens are minted with joserfc, the library the real issuer uses.
"""

import os
import re
import time
import uuid

import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

HOST = os.environ.get("KOHERENT_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("KOHERENT_TEST_PORT", "5498"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The koherent test key from shared/provenance-token.md.
TEST_PRIVATE_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4",
    "d": "PQ_Y54LpnaQZ24wKvkroJ3feOo4FJ2YcvKRmv8l9C5E",
    "kid": "koherent-test-key",
}
TEST_PUBLIC_JWK = {k: v for k, v in TEST_PRIVATE_JWK.items() if k != "d"}
TEST_KEY = OKPKey.import_key(TEST_PRIVATE_JWK)
ISSUER = "rekuest"
AUDIENCE = "koherent"
APP_ROLE = "koherent_app"
TEMPLATE = "koherent_tpl"

# {"x": 1} hashed with sha256-canonical-v1
AHS_X1 = "5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22"


def connect(dbname="postgres", user="postgres", autocommit=True, **kw):
    return psycopg.connect(
        host=HOST, port=PORT, dbname=dbname, user=user, autocommit=autocommit, **kw
    )


def claims(tsk="task-1", **over):
    now = int(time.time())
    c = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": "user-7",
        "act": {"sub": "agent-user-3", "cid": "agent-client-9"},
        "iat": now - 10,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
        "tsk": tsk,
        "ptk": None,
        "rtk": tsk,
        "rcb": "user-1",
        "ahs": AHS_X1,
        "aha": "sha256-canonical-v1",
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not ...}


def mint(tsk="task-1", key=TEST_KEY, kid="koherent-test-key", alg="Ed25519", header=None, **over):
    """A token minted by joserfc. Pass claim=... to drop a claim."""
    h = {"typ": "JWT", "alg": alg, "kid": kid}
    if header is not None:
        h = header
    return jwt.encode(h, claims(tsk, **over), key, algorithms=[h.get("alg", alg)])


class Db:
    def __init__(self, name):
        self.name = name

    def conn(self, user="postgres", autocommit=True, **kw):
        return connect(self.name, user=user, autocommit=autocommit, **kw)

    def sql(self, query, params=None):
        """Run one statement as superuser in its own transaction; rows (or [])."""
        with self.conn() as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    def one(self, query, params=None):
        rows = self.sql(query, params)
        assert len(rows) == 1, rows
        return rows[0][0] if len(rows[0]) == 1 else rows[0]

    def app(self, autocommit=True):
        return self.conn(user=APP_ROLE, autocommit=autocommit)

    def count(self, rel):
        return self.one(f"SELECT count(*) FROM {rel}")

    def state_counts(self):
        """(history entries, context rows, task rows)."""
        return (
            self.count("koherent.provenance_entry"),
            self.count("koherent.transaction_auth_context"),
            self.count("koherent.task"),
        )


@pytest.fixture(scope="session")
def template():
    with connect() as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [TEMPLATE]
        )
        c.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        c.execute(f"CREATE DATABASE {TEMPLATE}")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
            c.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
    with connect(TEMPLATE) as c:
        c.execute("CREATE EXTENSION koherent")
        c.execute(
            "SELECT koherent.add_issuer_jwks(%s, %s::jsonb)",
            [ISSUER, psycopg.types.json.Jsonb({"keys": [TEST_PUBLIC_JWK]})],
        )
        c.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {APP_ROLE}")
    return TEMPLATE


@pytest.fixture
def db(template, request):
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    with connect() as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        c.execute(f"ALTER DATABASE {name} SET koherent.audience = '{AUDIENCE}'")
    d = Db(name)
    yield d
    with connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


ITEM_DDL = """
CREATE TABLE item (
    id bigint PRIMARY KEY,
    name text,
    qty integer,
    price numeric,
    note text,
    updated timestamptz DEFAULT '2026-01-01 00:00:00+00'
);
"""


@pytest.fixture
def item(db):
    """A tracked table `item`, writable by the application role."""
    db.sql(ITEM_DDL)
    db.sql("SELECT koherent.track('item')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON item TO {APP_ROLE}")
    return db


def wait_for_lock(db, pattern, thread, state=None, may_finish=False):
    """Wait (10 s at most) until a backend whose query is LIKE `pattern` waits for a lock, the
    `thread` that runs it alive all along (`state` shown when not); with `may_finish`, the
    thread ending without having waited ends the wait too. Whether it waited."""
    deadline = time.time() + 10
    while db.one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                 [pattern]) == 0:
        if may_finish and not thread.is_alive():
            return False
        assert time.time() < deadline and thread.is_alive(), state
        time.sleep(0.05)
    return True


def sqlstate(excinfo):
    return excinfo.value.sqlstate


def entries(db, table="item"):
    """A table's history entries in order: (kind, row_key, row_data without `updated`)."""
    return db.sql(
        "SELECT kind, row_key, row_data - 'updated' FROM koherent.provenance_entry "
        "WHERE table_name = %s::regclass ORDER BY history_id",
        [table],
    )


def changes(db, history_id):
    """One entry's effective changes but `updated`, by field: (field, old_value, new_value)."""
    return db.sql(
        "SELECT field, old_value, new_value FROM koherent.effective_change "
        "WHERE history_id = %s AND field <> 'updated' ORDER BY field",
        [history_id],
    )


def ids(db):
    """Every history id, in order."""
    return [r[0] for r in db.sql("SELECT history_id FROM koherent.provenance_entry ORDER BY history_id")]


def write(db, statements, token=None, user="postgres"):
    """Run one statement (a str) or several (a list) in one transaction as `user`, under
    koherent.set_task(token) first when a token is given; commit."""
    with db.conn(user=user, autocommit=False) as c:
        if token is not None:
            c.execute("SELECT koherent.set_task(%s)", [token])
        for s in [statements] if isinstance(statements, str) else statements:
            c.execute(s)
        c.commit()


# --- the Django project of test_django.py and test_strawberry.py (tests/djangoapp) ---------------

@pytest.fixture(scope="session")
def django_db(template):
    """A database with djangoapp's tables tracked and exposed to the application role, and Django
    configured for it (once per session: Django's settings are global)."""
    import django

    name = f"t_django_{uuid.uuid4().hex[:8]}"
    with connect() as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        c.execute(f"ALTER DATABASE {name} SET koherent.audience = '{AUDIENCE}'")
    with connect(name) as c:
        c.execute("CREATE TABLE djangoapp_author (id bigserial PRIMARY KEY, name text NOT NULL)")
        c.execute("CREATE TABLE djangoapp_book (id bigserial PRIMARY KEY, title text NOT NULL, "
                  "author_id bigint NOT NULL REFERENCES djangoapp_author (id))")
        for t in ("djangoapp_author", "djangoapp_book"):
            c.execute(f"SELECT koherent.track('{t}')")
            c.execute(f"SELECT koherent.expose('{t}', '{APP_ROLE}')")
            c.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {APP_ROLE}")
            c.execute(f"GRANT USAGE ON SEQUENCE {t}_id_seq TO {APP_ROLE}")
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": APP_ROLE,
                                   "HOST": HOST, "PORT": PORT, "CONN_MAX_AGE": 600, "ATOMIC_REQUESTS": False}},
            INSTALLED_APPS=["koherent_pg.django", "djangoapp"],
            MIDDLEWARE=["koherent_pg.django.TaskMiddleware"],
            ROOT_URLCONF="djangoapp.urls", ALLOWED_HOSTS=["*"], USE_TZ=True, SECRET_KEY="test",
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
        django.setup()
    yield name
    from django.db import connections

    connections.close_all()
    with connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def project(django_db):
    from django.db import connections

    connections.close_all()   # a test before may have restarted the server (test_reliability)

    with connect(django_db) as c:
        c.execute("TRUNCATE djangoapp_book, djangoapp_author")
        c.execute("TRUNCATE koherent_history.djangoapp_book, koherent_history.djangoapp_author")
    connections["default"].settings_dict["ATOMIC_REQUESTS"] = False
    yield django_db



