"""Hardening: the holes a hostile tester found in 0.3.0, each attacked again (with variants) as
the role that found it: a non-superuser table owner, an application role, a GraphQL reader
under row-level security. Every test here fails on 0.3.0."""

import json
import os
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from conftest import APP_ROLE, ISSUER, PORT, HOST, Db, claims, connect, mint, sqlstate

OWNER = "koherent_owner"
READER = "koherent_gql"
AUDITOR = "koherent_auditor"


def ensure_role(name, *opts):
    with connect() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
            c.execute(f"CREATE ROLE {name} LOGIN {' '.join(opts)}")


@pytest.fixture
def owner_schema(db):
    """Schema ts owned by a non-superuser table owner, with a log its functions write into."""
    ensure_role(OWNER)
    db.sql(f"CREATE SCHEMA ts AUTHORIZATION {OWNER}")
    with db.conn(user=OWNER) as c:
        c.execute("CREATE TABLE ts.log (who text, what text)")
        c.execute("GRANT INSERT, SELECT ON ts.log TO PUBLIC")
    return db


def log(db):
    return db.sql("SELECT who, what FROM ts.log ORDER BY 1, 2")


# --- 1. no code a non-superuser defines runs with koherent's rights (or a reader's) -----------

def test_owner_cast_in_ddl_follow_up_never_runs_as_superuser(owner_schema):
    """A type change of a tracked column to a type of the owner's, whose cast is the owner's
    function: history never runs that cast (as the extension owner or at all), and the change
    itself is refused, since the function would rewrite the rows' values with no history
    (0A000 unrecorded_rewrite; it ran as the owner and history kept only the old values, so the
    table as of before showed values that never were)."""
    db = owner_schema
    with db.conn(user=OWNER) as c:
        c.execute("CREATE TABLE ts.t (id int PRIMARY KEY, v int)")
        c.execute("INSERT INTO ts.t VALUES (1, 10)")
    db.sql("SELECT koherent.track('ts.t')")
    with db.conn(user=OWNER) as c:
        c.execute("UPDATE ts.t SET v = 11")
        c.execute("CREATE TYPE ts.comp AS (x int)")
        c.execute("""CREATE FUNCTION ts.to_comp(i int) RETURNS ts.comp LANGUAGE plpgsql AS $$
                     BEGIN INSERT INTO ts.log VALUES (current_user, 'to_comp'); RETURN row(i * 1000)::ts.comp; END $$""")
        c.execute("CREATE CAST (int AS ts.comp) WITH FUNCTION ts.to_comp(int) AS ASSIGNMENT")
        c.execute("CREATE TABLE ts.u (id int PRIMARY KEY, w text)")
    db.sql("SELECT koherent.track('ts.u')")
    with db.conn(user=OWNER) as c:
        c.execute("INSERT INTO ts.u VALUES (1, '5')")
        c.execute("CREATE FUNCTION ts.txt_comp(t text) RETURNS ts.comp LANGUAGE plpgsql AS $$"
                  " BEGIN INSERT INTO ts.log VALUES (current_user, 'txt_comp'); RETURN row(t::int)::ts.comp; END $$")
        c.execute("CREATE CAST (text AS ts.comp) WITH FUNCTION ts.txt_comp(text) AS ASSIGNMENT")
    for statement in ("ALTER TABLE ts.t ALTER COLUMN v TYPE ts.comp USING v::ts.comp",
                      "ALTER TABLE ts.t ALTER COLUMN v TYPE ts.comp",
                      "ALTER TABLE ts.u ALTER COLUMN w TYPE ts.comp USING w::ts.comp"):
        with db.conn(user=OWNER) as c, pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(statement)
        assert e.value.diag.message_detail.startswith("reason: unrecorded_rewrite"), statement
    assert log(db) == []   # no cast ran, as anyone
    assert db.sql("SELECT v FROM ts.t") == [(11,)] and db.sql("SELECT w FROM ts.u") == [("5",)]
    rows = db.sql("SELECT kind, row_data FROM koherent.provenance_entry "
                  "WHERE table_name = 'ts.t'::regclass ORDER BY history_id")
    assert [k for k, _ in rows] == ["UPDATE"] and rows[0][1]["v"] == 11


def test_owner_cast_to_json_never_runs_in_readers(owner_schema, item):
    db = owner_schema
    ensure_role(READER)
    with db.conn(user=OWNER) as c:
        c.execute("CREATE TYPE ts.e AS ENUM ('a', 'b')")
        c.execute("CREATE TYPE ts.pair AS (l ts.e, n int)")
        c.execute("CREATE TABLE ts.t (id ts.e PRIMARY KEY, v ts.e, p ts.pair, arr ts.e[])")
        for fn, typ in (("e_json", "ts.e"), ("pair_json", "ts.pair")):
            c.execute(f"""CREATE FUNCTION ts.{fn}(x {typ}) RETURNS json LANGUAGE plpgsql AS $$
                          BEGIN INSERT INTO ts.log VALUES (current_user, '{fn}'); RETURN '"pwned"'::json; END $$""")
            c.execute(f"CREATE CAST ({typ} AS json) WITH FUNCTION ts.{fn}({typ})")
        c.execute("CREATE FUNCTION ts.e_text(x ts.e) RETURNS text LANGUAGE plpgsql AS $$"
                  " BEGIN INSERT INTO ts.log VALUES (current_user, 'e_text'); RETURN 'pwned'; END $$")
        c.execute("CREATE CAST (ts.e AS text) WITH FUNCTION ts.e_text(ts.e)")
        c.execute(f"GRANT USAGE ON SCHEMA ts TO {READER}")
        c.execute(f"GRANT SELECT ON ts.t TO {READER}")
    db.sql("SELECT koherent.track('ts.t')")
    db.sql(f"SELECT koherent.expose('ts.t', '{READER}')")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-enum")])
        db.sql(f"GRANT INSERT, UPDATE ON ts.t TO {APP_ROLE}; GRANT USAGE ON SCHEMA ts TO {APP_ROLE}")
        c.execute("INSERT INTO ts.t VALUES ('a', 'b', row('a', 1), ARRAY['a','b']::ts.e[])")
        c.execute("UPDATE ts.t SET v = 'a'")
        c.commit()
    assert log(db) == []
    # every reader: the views, task_changes, effective_change, the exposed functions
    rows = db.sql("SELECT row_key, row_data FROM koherent.provenance_entry WHERE table_name = 'ts.t'::regclass "
                  "ORDER BY history_id")
    assert rows[0] == ({"id": "a"}, {"id": "a", "v": "b", "p": "(a,1)", "arr": "{a,b}"})
    assert db.one("SELECT count(*) FROM koherent.task_changes('t-enum')") == 2
    assert db.sql("SELECT field, old_value, new_value FROM koherent.effective_change c "
                  "JOIN koherent.provenance_entry e USING (history_id) WHERE e.kind = 'UPDATE'") == [("v", "b", "a")]
    with db.conn(user=READER) as c:
        got = c.execute("SELECT kind, row_data->>'v' FROM ts.t_provenance((SELECT t FROM ts.t t)) ORDER BY history_id").fetchall()
        assert got == [("CREATE", "b"), ("UPDATE", "a")]
        e = c.execute("SELECT e FROM ts.t_provenance((SELECT t FROM ts.t t)) e LIMIT 1").fetchone()[0]
        assert c.execute("SELECT count(*) FROM ts.t_by_provenance(task_id => 't-enum')").fetchone()[0] == 1
    assert log(db) == []


SPY = """CREATE FUNCTION ts.spy(what text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ts.log VALUES (current_user, what); RETURN true; END $$"""


def test_domain_of_a_domain_never_checks_as_superuser(owner_schema):
    db = owner_schema
    with db.conn(user=OWNER) as c:
        c.execute("CREATE TABLE ts.t (id int PRIMARY KEY, v int)")
    db.sql("SELECT koherent.track('ts.t')")
    with db.conn(user=OWNER) as c:
        c.execute("INSERT INTO ts.t VALUES (1, 1), (2, 2)")
        c.execute(SPY)
        c.execute("CREATE DOMAIN ts.d0 AS int CHECK (ts.spy('check'))")
        c.execute("CREATE DOMAIN ts.d1 AS ts.d0")
        c.execute("ALTER TABLE ts.t ADD COLUMN w ts.d1")           # history column: int, not ts.d0
        c.execute("ALTER TABLE ts.t ALTER COLUMN v TYPE ts.d1")     # converted in place: int to int
        c.execute("UPDATE ts.t SET w = 5")
        c.execute("TRUNCATE ts.t")                                  # the copy into history
    assert {w for w, _ in log(db)} <= {OWNER}
    assert db.sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                  "'koherent_history.ts__t'::regclass AND attname IN ('v', 'w') ORDER BY attname") == [
        ("integer",), ("integer",)]
    assert db.one("SELECT count(*) FROM koherent.provenance_entry WHERE kind = 'TRUNCATE'") == 2


@pytest.mark.parametrize("keytype", ["composite", "array"])
def test_key_values_run_no_domain_check_as_superuser(owner_schema, keytype):
    db = owner_schema
    ensure_role(READER)
    with db.conn(user=OWNER) as c:
        c.execute(SPY)
        c.execute("CREATE DOMAIN ts.d AS int CHECK (ts.spy('check'))")
        if keytype == "composite":
            c.execute("CREATE TYPE ts.k AS (a int, b ts.d)")
            c.execute("CREATE TABLE ts.t (k ts.k PRIMARY KEY, v text)")
            c.execute("INSERT INTO ts.t VALUES (row(1, 1), 'x')")
        else:
            c.execute("CREATE TABLE ts.t (k ts.d[] PRIMARY KEY, v text)")
            c.execute("INSERT INTO ts.t VALUES (ARRAY[1]::ts.d[], 'x')")
        c.execute(f"GRANT USAGE ON SCHEMA ts TO {READER}; GRANT SELECT ON ts.t TO {READER}")
    db.sql("SELECT koherent.track('ts.t')")
    db.sql(f"SELECT koherent.expose('ts.t', '{READER}')")
    with db.conn(user=OWNER) as c:
        c.execute("UPDATE ts.t SET v = 'y'")
        c.execute("DELETE FROM ts.log")
    with db.conn(user=READER) as c:
        assert c.execute("SELECT kind FROM ts.t_provenance((SELECT t FROM ts.t t))").fetchall() == [("UPDATE",)]
        assert c.execute("SELECT count(*) FROM ts.t_by_provenance()").fetchone()[0] == 1
        hid = db.one("SELECT max(history_id) FROM koherent_history.ts__t")
        assert c.execute(f"SELECT count(*) FROM koherent.provenance_entry_effective_changes({fabricated(hid, 'ts.t')})").fetchone()[0] == 1
    assert {w for w, _ in log(db)} <= {READER, OWNER}
    assert "postgres" not in {w for w, _ in log(db)}


def test_reader_search_path_never_picks_an_owner_operator(owner_schema):
    db = owner_schema
    ensure_role(READER)
    with db.conn(user=OWNER) as c:
        c.execute(SPY)
        c.execute("CREATE TYPE ts.e AS ENUM ('x', 'y')")
        c.execute("CREATE TABLE ts.et (k ts.e PRIMARY KEY, v int)")
        c.execute(f"GRANT USAGE ON SCHEMA ts TO {READER}; GRANT SELECT ON ts.et TO {READER}")
    db.sql("SELECT koherent.track('ts.et')")
    db.sql(f"SELECT koherent.expose('ts.et', '{READER}')")
    db.sql("INSERT INTO ts.et VALUES ('x', 1), ('y', 2)")
    with db.conn(user=OWNER) as c:
        c.execute("CREATE FUNCTION ts.eqf(ts.e, ts.e) RETURNS boolean LANGUAGE plpgsql AS $$"
                  " BEGIN PERFORM ts.spy('op'); RETURN $1::text = $2::text; END $$")
        c.execute("CREATE OPERATOR ts.= (leftarg = ts.e, rightarg = ts.e, function = ts.eqf)")
    with db.conn(user=READER) as c:
        c.execute("SET search_path = ts, public")
        assert sorted(c.execute("SELECT k::text FROM ts.et_by_provenance()").fetchall()) == [("x",), ("y",)]
        assert c.execute("SELECT count(*) FROM ts.et_provenance((SELECT e FROM ts.et e WHERE k::text = 'x'))").fetchone()[0] == 1
    assert log(db) == []


def test_analyze_of_history_runs_no_owner_range_function(owner_schema):
    """ANALYZE of a history table runs as the extension owner; a range's subtype_diff is owner code."""
    db = owner_schema
    with db.conn(user=OWNER) as c:
        c.execute(SPY)
        c.execute("CREATE FUNCTION ts.diff(a int, b int) RETURNS float8 LANGUAGE plpgsql IMMUTABLE AS"
                  " $$ BEGIN PERFORM ts.spy('diff'); RETURN (a - b)::float8; END $$")
        c.execute("CREATE TYPE ts.ir AS RANGE (subtype = int4, subtype_diff = ts.diff)")
        c.execute("CREATE TABLE ts.rg (id int PRIMARY KEY, r ts.ir)")
    db.sql("SELECT koherent.track('ts.rg')")
    with db.conn(user=OWNER) as c:
        c.execute("INSERT INTO ts.rg SELECT g, ts.ir(g, g + 10) FROM generate_series(1, 200) g")
        c.execute("UPDATE ts.rg SET r = ts.ir(1, 2) WHERE id < 50")
        c.execute("DELETE FROM ts.log")
    db.sql("ANALYZE koherent_history.ts__rg")
    db.sql("ALTER TABLE ts.rg ADD COLUMN r2 ts.ir")     # new columns too
    db.sql("INSERT INTO ts.rg VALUES (1000, NULL, ts.ir(1, 5))")
    db.sql("ANALYZE koherent_history.ts__rg")
    assert "postgres" not in {w for w, _ in log(db)}


# --- 2. a GraphQL reader sees the history of exactly the rows it may see, and no token --------

@pytest.fixture
def tenants(db):
    ensure_role(READER)
    ensure_role(AUDITOR)
    db.sql("CREATE TABLE tdoc (id int PRIMARY KEY, tenant text NOT NULL, body text)")
    db.sql("SELECT koherent.track('tdoc')")
    db.sql(f"SELECT koherent.expose('tdoc', '{READER}')")
    db.sql(f"GRANT SELECT ON tdoc TO {READER}, {AUDITOR}")
    db.sql("ALTER TABLE tdoc ENABLE ROW LEVEL SECURITY")
    db.sql("CREATE POLICY own ON tdoc FOR SELECT USING (tenant = current_setting('app.tenant', true))")
    db.sql(f"GRANT INSERT, UPDATE, SELECT ON tdoc TO {APP_ROLE}")
    db.sql(f"CREATE POLICY app ON tdoc TO {APP_ROLE} USING (true) WITH CHECK (true)")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-a")])
        c.execute("INSERT INTO tdoc VALUES (1, 'a', 'mine'), (2, 'b', 'secret of b')")
        c.execute("UPDATE tdoc SET body = 'secret of b, v2' WHERE id = 2")
        c.commit()
    # the auditor: a role an administrator granted the tokens (SELECT on koherent.task)
    db.sql(f"GRANT SELECT ON koherent.task TO {AUDITOR}")
    db.sql(f"GRANT EXECUTE ON FUNCTION tdoc_provenance(tdoc), koherent.provenance_entry_task(koherent.provenance_entry), "
           f"koherent.provenance_entry_effective_changes(koherent.provenance_entry) TO {AUDITOR}")
    return db


def as_reader(db, tenant, role=READER):
    c = db.conn(user=role, autocommit=False)
    c.execute("SELECT set_config('app.tenant', %s, false)", [tenant])
    return c


def fabricated(hid, table="tdoc", key='{"id": 1}'):
    return (f"ROW({hid}::bigint, '{table}'::regclass, '{key}'::jsonb, 'CREATE', now(), "
            "NULL::uuid, NULL, NULL::jsonb, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::koherent.provenance_entry")


def test_reader_gets_history_only_of_rows_it_can_see(tenants):
    db = tenants
    hid_b = db.one("SELECT max(history_id) FROM koherent_history.tdoc WHERE id = 2")
    hid_a = db.one("SELECT max(history_id) FROM koherent_history.tdoc WHERE id = 1")
    keys_fn = db.one("SELECT format('koherent._filter_keys_%s', config_id) FROM koherent.tracked_table "
                     "WHERE table_name = 'tdoc'::regclass")
    with as_reader(db, "a") as c:
        assert c.execute("SELECT id FROM tdoc").fetchall() == [(1,)]
        # a row value made up for a row RLS hides: nothing
        assert c.execute("SELECT count(*) FROM tdoc_provenance(row(2, null, null)::tdoc)").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM tdoc_provenance(row(2, 'a', 'x')::tdoc)").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM _provenance(row(2, 'a', null)::tdoc)").fetchone()[0] == 0
        # its own row: its history
        assert c.execute("SELECT kind, row_data->>'body' FROM tdoc_provenance((SELECT t FROM tdoc t))").fetchall() == [
            ("CREATE", "mine")]
        # the filter and its internal key function give only visible keys
        assert c.execute("SELECT id FROM tdoc_by_provenance(task_id => 't-a')").fetchall() == [(1,)]
        assert c.execute(f"SELECT * FROM {keys_fn}(NULL, NULL, NULL, NULL, NULL, NULL, NULL)").fetchall() == [(1,)]
        # fabricated entries: another tenant's entry, an entry claimed for the wrong table
        assert c.execute(f"SELECT count(*) FROM koherent.provenance_entry_effective_changes({fabricated(hid_b)})").fetchone()[0] == 0
        assert c.execute(f"SELECT koherent.provenance_entry_task({fabricated(hid_b)}) IS NULL").fetchone()[0]
        # a real, visible entry: its changes, its task without the token
        assert c.execute(f"SELECT count(*) FROM koherent.provenance_entry_effective_changes({fabricated(hid_a)})").fetchone()[0] == 3
        t = c.execute(f"SELECT (koherent.provenance_entry_task({fabricated(hid_a)})).*").fetchone()
        cols = [d.name for d in c.execute(f"SELECT (koherent.provenance_entry_task({fabricated(hid_a)})).*").description]
        task = dict(zip(cols, t))
        assert task["task_id"] == "t-a" and task["token"] is None
        # no direct read of tokens or history
        for q in ("SELECT token FROM koherent.task", "SELECT * FROM koherent_history.tdoc",
                  "SELECT * FROM koherent.provenance_entry"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(q)
            c.rollback()
            c.execute("SELECT set_config('app.tenant', 'a', false)")
    with as_reader(db, "b") as c:
        got = c.execute("SELECT kind, row_data->>'body' FROM tdoc_provenance((SELECT t FROM tdoc t)) ORDER BY history_id").fetchall()
        assert got == [("CREATE", "secret of b"), ("UPDATE", "secret of b, v2")]
    # the auditor sees tokens
    with as_reader(db, "a", AUDITOR) as c:
        tok = c.execute(f"SELECT (koherent.provenance_entry_task({fabricated(hid_a)})).token").fetchone()[0]
        assert tok and tok.count(".") == 2


def test_float_keys_are_compared_exactly(owner_schema):
    db = owner_schema
    ensure_role(READER)
    with db.conn(user=OWNER) as c:
        c.execute("CREATE TABLE ts.fl (k float8 PRIMARY KEY, tenant text, secret text)")
        c.execute("ALTER TABLE ts.fl ENABLE ROW LEVEL SECURITY")
        c.execute("CREATE POLICY p ON ts.fl USING (tenant = current_user)")
        c.execute(f"GRANT USAGE ON SCHEMA ts TO {READER}; GRANT SELECT ON ts.fl TO {READER}")
    db.sql("SELECT koherent.track('ts.fl')")
    db.sql(f"SELECT koherent.expose('ts.fl', '{READER}')")
    db.sql(f"INSERT INTO ts.fl VALUES (0.1, '{READER}', 'visible'), (0.10000000000000002, 'other', 'SECRET')")
    with db.conn(user=READER) as c:
        for digits in (1, 0, -15):
            c.execute(f"SET extra_float_digits = {digits}")
            assert c.execute("SELECT count(*) FROM ts.fl_provenance(row(0.10000000000000002, null, null)::ts.fl)").fetchone()[0] == 0
        assert c.execute("SELECT row_data->>'secret' FROM ts.fl_provenance((SELECT f FROM ts.fl f))").fetchall() == [("visible",)]


def test_no_error_oracle_and_no_earlier_life_of_a_key(tenants):
    db = tenants
    db.sql("CREATE TABLE secret (id int PRIMARY KEY, v text)")
    db.sql("SELECT koherent.track('secret')")
    db.sql("INSERT INTO secret VALUES (1, 's')")
    hid = db.one("SELECT max(history_id) FROM koherent_history.secret")
    with as_reader(db, "a") as c:
        # no privilege on secret: nothing, not a permission error, for ids that exist and not
        for h in (hid, hid + 1000, 1):
            assert c.execute(f"SELECT count(*) FROM koherent.provenance_entry_effective_changes({fabricated(h, 'secret')})").fetchone()[0] == 0
    # tenant b's row 2 is deleted; tenant a gets a new row with key 2
    db.sql("DELETE FROM tdoc WHERE id = 2")
    old = db.one("SELECT min(history_id) FROM koherent_history.tdoc WHERE id = 2")
    db.sql("INSERT INTO tdoc VALUES (2, 'a', 'new life')")
    with as_reader(db, "a") as c:
        got = c.execute("SELECT kind, row_data->>'body' FROM tdoc_provenance((SELECT t FROM tdoc t WHERE id = 2))").fetchall()
        assert got == [("CREATE", "new life")]
        assert c.execute(f"SELECT count(*) FROM koherent.provenance_entry_effective_changes({fabricated(old, 'tdoc', '{}')})").fetchone()[0] == 0
        assert c.execute("SELECT id FROM tdoc_by_provenance(task_id => 't-a') ORDER BY id").fetchall() == [(1,)]


def test_key_moved_by_update_ends_its_life(tenants):
    db = tenants
    db.sql("INSERT INTO tdoc VALUES (7, 'b', 'SECRET of b')")
    db.sql("UPDATE tdoc SET id = 700 WHERE id = 7")
    db.sql("INSERT INTO tdoc VALUES (7, 'a', 'mine')")
    hid_b = db.one("SELECT min(history_id) FROM koherent_history.tdoc WHERE id = 7")
    with as_reader(db, "a") as c:
        assert c.execute("SELECT kind, row_data->>'body' FROM tdoc_provenance((SELECT t FROM tdoc t WHERE id = 7))").fetchall() == [
            ("CREATE", "mine")]
        assert c.execute(f"SELECT count(*) FROM koherent.provenance_entry_effective_changes({fabricated(hid_b)})").fetchone()[0] == 0
    with as_reader(db, "b") as c:   # the moved row keeps its history from the move on
        assert c.execute("SELECT kind FROM tdoc_provenance((SELECT t FROM tdoc t WHERE id = 700))").fetchall() == [("UPDATE",)]


def test_a_keys_life_follows_statements_not_history_ids(db):
    """A trigger's nested statement writes its history before the statement that fired it, and
    a key swap writes both moves at once: history ids do not order one statement's entries. A
    reader of a key used again sees only the new row's life, and every row of a shift or swap of
    keys sees the entry that moved it there."""
    ensure_role(READER)
    db.sql("CREATE TABLE tk (k int PRIMARY KEY, v text, closed boolean DEFAULT false)")
    db.sql("CREATE FUNCTION tk_close() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
           "IF NEW.closed THEN DELETE FROM tk WHERE k = NEW.k; END IF; RETURN NULL; END $$")
    db.sql("CREATE TRIGGER tk_autoclose AFTER UPDATE ON tk FOR EACH ROW EXECUTE FUNCTION tk_close()")
    for t in ("tk", "s2", "w2"):
        if t != "tk":
            db.sql(f"CREATE TABLE {t} (k int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text)")
        db.sql(f"SELECT koherent.track('{t}')")
        db.sql(f"SELECT koherent.expose('{t}', '{READER}')")
        db.sql(f"GRANT SELECT ON {t} TO {READER}")
        db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {APP_ROLE}")
    with db.app() as c:
        c.execute("INSERT INTO tk VALUES (5, 'tenant1 public')")
        c.execute("UPDATE tk SET v = 'tenant1 SECRET', closed = true WHERE k = 5")   # deleted by the trigger
        c.execute("INSERT INTO tk VALUES (5, 'tenant2 row')")
        c.execute("INSERT INTO s2 VALUES (1, 'A'), (2, 'B'), (3, 'C')")
        c.execute("UPDATE s2 SET k = k + 1")
        c.execute("INSERT INTO w2 VALUES (1, 'A'), (2, 'B')")
        c.execute("UPDATE w2 SET k = 3 - k")
    # the nested DELETE was recorded before the UPDATE that fired it
    assert db.sql("SELECT history_kind, v FROM koherent_history.tk ORDER BY history_id") == [
        ("CREATE", "tenant1 public"), ("DELETE", "tenant1 SECRET"), ("UPDATE", "tenant1 SECRET"),
        ("CREATE", "tenant2 row")]
    with db.conn(user=READER) as c:
        assert c.execute("SELECT e.kind, e.row_data->>'v' FROM tk, tk_provenance(tk) e").fetchall() == [
            ("CREATE", "tenant2 row")]
        assert c.execute("SELECT count(*) FROM tk, tk_provenance(tk) e, "
                         "koherent.provenance_entry_effective_changes(e) x WHERE x.new_value::text ~ 'SECRET'"
                         ).fetchone() == (0,)
        assert c.execute("SELECT k FROM tk_by_provenance(kind => 'UPDATE')").fetchall() == []
        for t, rows in (("s2", [(2, "A"), (3, "B"), (4, "C")]), ("w2", [(1, "B"), (2, "A")])):
            got = c.execute(f"SELECT t.k, e.kind, e.row_data->>'v' FROM {t} t, {t}_provenance(t) e "
                            "ORDER BY t.k").fetchall()
            assert got == [(k, "UPDATE", v) for k, v in rows], (t, got)


def test_statements_of_one_message_and_nested_statements_are_ordered(db):
    """Several statements sent in one simple-query message share a transaction and a statement
    timestamp; a trigger's nested statement is recorded before the statement that fired it:
    each statement records its own start time, so a key's life still ends where it ended, and
    a reader of the key's new row sees only that row's entries. TRUNCATE too."""
    ensure_role(READER)
    db.sql("CREATE TABLE mt (id int PRIMARY KEY, tenant text, secret text)")
    db.sql("SELECT koherent.track('mt')")
    db.sql(f"SELECT koherent.expose('mt', '{READER}')")
    db.sql(f"GRANT SELECT ON mt TO {READER}")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON mt TO {APP_ROLE}")
    db.sql("ALTER TABLE mt ENABLE ROW LEVEL SECURITY")
    db.sql(f"CREATE POLICY b_only ON mt FOR SELECT TO {READER} USING (tenant = 'B')")
    db.sql(f"CREATE POLICY app ON mt TO {APP_ROLE} USING (true) WITH CHECK (true)")
    with db.app() as c:
        c.execute("INSERT INTO mt VALUES (1, 'A', 'a-public'), (3, 'A', 'a3')")
        c.execute("UPDATE mt SET secret = 'A-SECRET' WHERE id = 1; DELETE FROM mt WHERE id = 1; "
                  "INSERT INTO mt VALUES (1, 'B', 'b-row')")
        c.execute("UPDATE mt SET secret = 'A3-SECRET' WHERE id = 3; TRUNCATE mt; "
                  "INSERT INTO mt VALUES (3, 'B', 'b3'), (1, 'B', 'b1')")
    dates = db.sql("SELECT history_kind, history_date FROM koherent_history.mt ORDER BY history_id")
    # one date per statement: INSERT (2 rows); UPDATE, DELETE, INSERT; UPDATE, TRUNCATE (2 rows), INSERT (2)
    assert len({d for _, d in dates}) == 7 and len(dates) == 10
    with db.conn(user=READER) as c:
        got = c.execute("SELECT t.id, e.kind, e.row_data->>'secret' FROM mt t, mt_provenance(t) e ORDER BY 1, 2").fetchall()
        assert got == [(1, "CREATE", "b1"), (3, "CREATE", "b3")]
        assert c.execute("SELECT id FROM mt_by_provenance(kind => 'UPDATE')").fetchall() == []
        secret = c.execute("SELECT count(*) FROM mt t, mt_provenance(t) e, koherent.provenance_entry_effective_changes(e) x "
                           "WHERE x.new_value::text ~ 'SECRET'").fetchone()
        assert secret == (0,)


def test_a_trigger_that_deletes_and_recreates_a_row_ends_its_life(db):
    """An AFTER UPDATE trigger deletes the updated row and inserts another tenant's row under
    the same key, all in one statement: the UPDATE's entry is dated before the trigger's
    statements (its own start), so the new row's reader sees only the new row's entry."""
    ensure_role(READER)
    db.sql("CREATE TABLE rt (k int PRIMARY KEY, tenant text, v text)")
    db.sql("CREATE FUNCTION rt_hand_over() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
           "IF NEW.v = 'hand over' THEN DELETE FROM rt WHERE k = NEW.k; "
           "INSERT INTO rt VALUES (NEW.k, 'B', 'b-row'); END IF; RETURN NULL; END $$")
    db.sql("CREATE TRIGGER a_hand_over AFTER UPDATE ON rt FOR EACH ROW EXECUTE FUNCTION rt_hand_over()")
    db.sql("SELECT koherent.track('rt')")
    db.sql(f"SELECT koherent.expose('rt', '{READER}')")
    db.sql(f"GRANT SELECT ON rt TO {READER}")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON rt TO {APP_ROLE}")
    with db.app() as c:
        c.execute("INSERT INTO rt VALUES (1, 'A', 'a-public')")
        c.execute("UPDATE rt SET v = 'hand over', tenant = 'A' WHERE k = 1")
    kinds = db.sql("SELECT history_kind FROM koherent_history.rt ORDER BY history_date, history_id")
    assert kinds == [("CREATE",), ("UPDATE",), ("DELETE",), ("CREATE",)]   # dates order what happened
    with db.conn(user=READER) as c:
        assert c.execute("SELECT e.kind, e.row_data->>'v' FROM rt t, rt_provenance(t) e").fetchall() == [
            ("CREATE", "b-row")]


HANDOVER_TRIGGERS = {
    # an AFTER DELETE row trigger that re-creates the key for tenant B
    "after_delete": ("CREATE FUNCTION ho() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF OLD.v = 'reborn' THEN INSERT INTO ho VALUES (OLD.k, 'B', 'b-row'); "
                     "PERFORM count(*) FROM pg_class; END IF; RETURN NULL; END $$",
                     "CREATE TRIGGER a_ho AFTER DELETE ON ho FOR EACH ROW EXECUTE FUNCTION ho()",
                     ["INSERT INTO ho VALUES (1, 'A', 'reborn')", "DELETE FROM ho WHERE k = 1"]),
    # a user AFTER STATEMENT trigger sorting before koherent's
    "after_statement": ("CREATE FUNCTION ho() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF EXISTS (SELECT 1 FROM ho WHERE k = 1 AND v = 'st') THEN DELETE FROM ho WHERE k = 1; "
                        "INSERT INTO ho VALUES (1, 'B', 'b-row'); END IF; RETURN NULL; END $$",
                        "CREATE TRIGGER a_ho AFTER UPDATE ON ho FOR EACH STATEMENT EXECUTE FUNCTION ho()",
                        ["INSERT INTO ho VALUES (1, 'A', 'A-secret')", "UPDATE ho SET v = 'st' WHERE k = 1"]),
    # a BEFORE ROW trigger of a multi-row INSERT (the first koherent code of a fresh session)
    "before_row_insert": ("CREATE FUNCTION ho() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.k = 2 THEN DELETE FROM ho WHERE k = 1; INSERT INTO ho VALUES (1, 'B', 'b-row'); "
                          "END IF; RETURN NEW; END $$",
                          "CREATE TRIGGER a_ho BEFORE INSERT ON ho FOR EACH ROW EXECUTE FUNCTION ho()",
                          ["INSERT INTO ho VALUES (1, 'A', 'A-secret'), (2, 'X', 'x')"]),
    # the same during COPY
    "before_row_copy": ("CREATE FUNCTION ho() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF NEW.k = 2 THEN DELETE FROM ho WHERE k = 1; INSERT INTO ho VALUES (1, 'B', 'b-row'); "
                        "END IF; RETURN NEW; END $$",
                        "CREATE TRIGGER a_ho BEFORE INSERT ON ho FOR EACH ROW EXECUTE FUNCTION ho()",
                        ["COPY"]),
}


@pytest.mark.parametrize("case", sorted(HANDOVER_TRIGGERS))
def test_a_statements_entries_are_dated_before_its_triggers_statements(db, case):
    """Whatever trigger runs the nested statements (AFTER ROW, AFTER STATEMENT sorting before
    koherent's, BEFORE ROW, during COPY; in a session that loads koherent mid-statement too),
    a statement's own entries carry its own date, earlier than the nested ones: tenant B's
    reader of the key never sees tenant A's entries, and sees B's CREATE."""
    ensure_role(READER)
    fn, trigger, statements = HANDOVER_TRIGGERS[case]
    db.sql("CREATE TABLE ho (k int PRIMARY KEY, tenant text, v text)")
    db.sql(fn)
    db.sql(trigger)
    db.sql("SELECT koherent.track('ho')")
    db.sql(f"SELECT koherent.expose('ho', '{READER}')")
    db.sql(f"GRANT SELECT ON ho TO {READER}")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ho TO {APP_ROLE}")
    db.sql("ALTER TABLE ho ENABLE ROW LEVEL SECURITY")
    db.sql(f"CREATE POLICY b_only ON ho FOR SELECT TO {READER} USING (tenant = 'B')")
    db.sql(f"CREATE POLICY app ON ho TO {APP_ROLE} USING (true) WITH CHECK (true)")
    # a fresh session: koherent loads during the first statement (COPY FROM as the owner: RLS
    # refuses it to others)
    with (db.conn() if statements == ["COPY"] else db.app()) as c:
        for st in statements:
            if st == "COPY":
                with c.cursor().copy("COPY ho FROM STDIN") as cp:
                    cp.write_row((1, "A", "A-secret"))
                    cp.write_row((2, "X", "x"))
            else:
                c.execute(st)
    with db.conn(user=READER) as c:
        got = c.execute("SELECT t.k, e.kind, e.row_data->>'tenant' FROM ho t, ho_provenance(t) e").fetchall()
    assert got == [(1, "CREATE", "B")], (case, db.sql(
        "SELECT history_kind, k, tenant, history_date FROM koherent_history.ho ORDER BY history_id"))


# --- 3. a key verifies only as published, never once revoked; each write checks its token -----

@pytest.fixture
def k3(db):
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "k3"})
    db.sql("SELECT koherent.add_issuer_jwks(%s, %s::jsonb)",
           [ISSUER, json.dumps({"keys": [key.as_dict(private=False)]})])
    return key


def test_key_revoked_during_a_statement_is_not_cached(db, k3):
    tok = mint("t-k3", key=k3, kid="k3")
    with db.conn() as a:
        assert a.execute("SELECT koherent.verify_token(%s)->>'tsk'", [tok]).fetchone()[0] == "t-k3"
        # a statement whose snapshot predates the revocation; the cache is emptied first by
        # another key change, so this statement reloads the keys
        db.sql("SELECT koherent.add_issuer_key(%s, 'k4', %s)", [ISSUER, json.dumps(
            OKPKey.generate_key("Ed25519").as_dict(private=False))])

        def revoke():
            time.sleep(0.7)
            db.sql("SELECT koherent.revoke_issuer_key(%s, 'k3')", [ISSUER])

        t = threading.Thread(target=revoke)
        t.start()
        # the revocation committed during the sleep: seen by the verification after it (0.3.0
        # accepted here, cached the revoked key, and accepted it in every later transaction)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            a.execute("SELECT s.x, koherent.verify_token(%s) FROM (SELECT pg_sleep(1.5)::text x OFFSET 0) s", [tok])
        t.join()
        for _ in range(3):
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                a.execute("SELECT koherent.verify_token(%s)", [tok])


def test_key_revoked_under_repeatable_read(db, k3):
    tok = mint("t-k3rr", key=k3, kid="k3")
    with db.conn(autocommit=False) as a:
        a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        a.execute("SELECT count(*) FROM koherent.issuer_key")  # the snapshot is taken
        db.sql("SELECT koherent.revoke_issuer_key(%s, 'k3')", [ISSUER])
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            a.execute("SELECT koherent.verify_token(%s)", [tok])
        a.rollback()
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            a.execute("SELECT koherent.verify_token(%s)", [tok])


def test_each_write_checks_the_token_again(item, k3):
    db = item
    tok = mint("t-recheck", key=k3, kid="k3")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [tok])
        c.execute("INSERT INTO item (id) VALUES (1)")
        db.sql("SELECT koherent.revoke_issuer_key(%s, 'k3')", [ISSUER])
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
            c.execute("INSERT INTO item (id) VALUES (2)")
        assert "reason: key_revoked" in e.value.diag.message_detail
        c.rollback()
    now = int(time.time())
    tok = mint("t-expiring", iat=now - 5, exp=now + 2)
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [tok])
        c.execute("INSERT INTO item (id) VALUES (3)")
        time.sleep(3.2)  # whole seconds past exp, whatever the rounding
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
            c.execute("UPDATE item SET qty = 1 WHERE id = 3")
        assert "reason: expired" in e.value.diag.message_detail
        c.rollback()
    assert db.count("koherent.provenance_entry") == 0


def test_stored_jwk_alg_binds_the_key(db):
    """A JWK whose alg says EdDSA verifies no token whose header says Ed25519, and the other way
    round (the key's alg is kept in koherent.issuer_key_store)."""
    k_eddsa = OKPKey.generate_key("Ed25519", parameters={"kid": "k-eddsa"})
    k_ed = OKPKey.generate_key("Ed25519", parameters={"kid": "k-ed"})
    # the issuer publishes each key bound to one alg (joserfc signs with unbound private keys)
    jwks = {"keys": [{**k_eddsa.as_dict(private=False), "alg": "EdDSA"},
                     {**k_ed.as_dict(private=False), "alg": "Ed25519"}]}
    db.sql("SELECT koherent.add_issuer_jwks(%s, %s::jsonb)", [ISSUER, json.dumps(jwks)])
    assert db.sql("SELECT kid, jwk->>'alg' FROM koherent.issuer_key WHERE kid LIKE 'k-%' ORDER BY kid") == [
        ("k-ed", "Ed25519"), ("k-eddsa", "EdDSA")]
    db.sql(f"ALTER DATABASE {db.name} SET koherent.accept_eddsa_alg = on")
    cases = [("k-eddsa", k_eddsa, "Ed25519", "key_alg_mismatch"), ("k-ed", k_ed, "EdDSA", "key_alg_mismatch"),
             ("k-eddsa", k_eddsa, "EdDSA", None), ("k-ed", k_ed, "Ed25519", None)]
    with db.app() as c:
        for kid, key, alg, reason in cases:
            tok = mint("t-alg", key=key, kid=kid, alg=alg)
            if reason is None:
                assert c.execute("SELECT koherent.verify_token(%s)->>'tsk'", [tok]).fetchone()[0] == "t-alg"
            else:
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
                    c.execute("SELECT koherent.verify_token(%s)", [tok])
                assert f"reason: {reason}" in e.value.diag.message_detail, (kid, alg)


# --- 4. reserving history ids never waits for another transaction -----------------------------

def test_idle_transaction_does_not_stall_bulk_writes(item):
    db = item
    with db.app(autocommit=False) as idle, db.app(autocommit=False) as other:
        idle.execute("INSERT INTO item (id) VALUES (1)")          # took a history id, stays open
        other.execute("SET lock_timeout = '3s'")
        other.execute("INSERT INTO item (id) SELECT g FROM generate_series(100, 200) g")  # 101 rows
        other.commit()
        # the deadlock of 0.3.0: each holds a nextval, then reserves a block
        other.execute("SET lock_timeout = '3s'")
        other.execute("INSERT INTO item (id) VALUES (2)")
        idle.execute("SET lock_timeout = '3s'")
        idle.execute("INSERT INTO item (id) SELECT g FROM generate_series(300, 400) g")
        other.execute("INSERT INTO item (id) SELECT g FROM generate_series(500, 600) g")
        idle.commit()
        other.commit()
    assert db.one("SELECT count(*), count(DISTINCT history_id) FROM koherent_history.item") == (305, 305)


def test_concurrent_reservations_and_single_ids_never_overlap(item):
    db = item
    errors = []

    def work(n):
        try:
            with db.app() as c:
                for i in range(30):
                    base = n * 100000 + i * 1000
                    rows = 1 if i % 2 else 70
                    c.execute("INSERT INTO item (id) SELECT g FROM generate_series(%s::int, %s::int) g", [base, base + rows - 1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    total = 4 * (15 * 70 + 15)
    assert db.one("SELECT count(*), count(DISTINCT history_id) FROM koherent_history.item") == (total, total)


# --- 5. history never pairs the wrong images --------------------------------------------------

def test_cross_partition_update_with_dropped_row_fails(db):
    db.sql("CREATE TABLE pt (id int, part text, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part)")
    db.sql("CREATE TABLE pt_a PARTITION OF pt FOR VALUES IN ('a')")
    db.sql("CREATE TABLE pt_b PARTITION OF pt FOR VALUES IN ('b')")
    db.sql("CREATE FUNCTION skip_it() RETURNS trigger LANGUAGE plpgsql AS $$"
           " BEGIN IF NEW.v = 'skip' THEN RETURN NULL; END IF; RETURN NEW; END $$")
    db.sql("CREATE TRIGGER skip BEFORE INSERT ON pt_b FOR EACH ROW EXECUTE FUNCTION skip_it()")
    db.sql("SELECT koherent.track('pt')")
    db.sql("INSERT INTO pt VALUES (1, 'a', 'x'), (2, 'a', 'y'), (3, 'a', 'z')")
    before = db.count("koherent.provenance_entry")
    with pytest.raises(psycopg.errors.TriggeredDataChangeViolation) as e:
        db.sql("UPDATE pt SET part = 'b', v = CASE id WHEN 1 THEN 'skip' ELSE v || '!' END")
    assert "reason: unpaired_update" in e.value.diag.message_detail
    assert db.count("koherent.provenance_entry") == before
    assert db.sql("SELECT id, part, v FROM pt ORDER BY id") == [(1, "a", "x"), (2, "a", "y"), (3, "a", "z")]
    # every row skipped: still refused (no silent deletion)
    with pytest.raises(psycopg.errors.TriggeredDataChangeViolation):
        db.sql("UPDATE pt SET part = 'b', v = 'skip' WHERE id = 1")
    # a move that keeps every row is recorded pair by pair
    db.sql("UPDATE pt SET part = 'b', v = v || '!'")
    assert db.sql("SELECT row_key, row_data->>'v' FROM koherent.provenance_entry WHERE kind = 'UPDATE' "
                  "ORDER BY row_key->>'id'") == [({"id": 1, "part": "b"}, "x!"), ({"id": 2, "part": "b"}, "y!"),
                                                 ({"id": 3, "part": "b"}, "z!")]


# --- 6. require_task means every write --------------------------------------------------------

def test_require_task_covers_every_write(db):
    db.sql("CREATE TABLE rt (id int PRIMARY KEY, v int, secret text)")
    db.sql("INSERT INTO rt VALUES (1, 1, 's')")
    db.sql("SELECT koherent.track('rt', exclude => '{secret}', require_task => true)")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON rt TO {APP_ROLE}")
    db.sql("CREATE TABLE rt_empty (id int PRIMARY KEY)")
    db.sql("SELECT koherent.track('rt_empty', require_task => true)")
    db.sql(f"GRANT TRUNCATE ON rt_empty TO {APP_ROLE}")
    with db.app() as c:
        for q in ("UPDATE rt SET secret = 'changed'",     # only excluded columns
                  "UPDATE rt SET v = v",                   # no value changes
                  "TRUNCATE rt_empty"):                    # nothing to copy
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
                c.execute(q)
            assert "reason: task_required" in e.value.diag.message_detail
    assert db.one("SELECT secret FROM rt") == "s"
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-rt")])
        c.execute("UPDATE rt SET secret = 'changed'")
        c.execute("TRUNCATE rt_empty")
        c.commit()
    assert db.one("SELECT secret FROM rt") == "changed"


# --- 7. no write escapes history: inheritance, ATTACH/DETACH, MERGE across partitions ---------

def test_inheritance_children_are_refused(item):
    db = item
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("CREATE TABLE item_child (extra int) INHERITS (item)")
    db.sql("CREATE TABLE loose (LIKE item INCLUDING ALL)")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("ALTER TABLE loose INHERIT item")
    assert db.one("SELECT count(*) FROM pg_inherits WHERE inhparent = 'item'::regclass") == 0
    # nor may a tracked table become a child: writes through the parent would escape history
    db.sql("CREATE TABLE grandparent (LIKE item)")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("ALTER TABLE item INHERIT grandparent")
    assert db.one("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'item'::regclass") == 0
    db.sql("CREATE TABLE par (id int PRIMARY KEY)")
    db.sql("CREATE TABLE kid () INHERITS (par)")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        db.sql("SELECT koherent.track('par')")
    assert "inheritance" in str(e.value)
    assert db.one("SELECT count(*) FROM koherent.tracked_table WHERE table_name = 'par'::regclass") == 0


def test_attach_and_detach_never_let_writes_escape(item):
    db = item
    db.sql("CREATE TABLE wrap (LIKE item INCLUDING ALL) PARTITION BY RANGE (id)")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("ALTER TABLE wrap ATTACH PARTITION item FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
    assert db.one("SELECT relispartition FROM pg_class WHERE oid = 'item'::regclass") is False
    db.sql("CREATE TABLE pp (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part)")
    db.sql("CREATE TABLE pp1 PARTITION OF pp FOR VALUES IN (1)")
    db.sql("CREATE TABLE pp2 PARTITION OF pp FOR VALUES IN (2)")
    db.sql("SELECT koherent.track('pp')")
    db.sql("INSERT INTO pp VALUES (1, 1, 'a'), (2, 2, 'b')")
    db.sql("ALTER TABLE pp DETACH PARTITION pp2")
    assert db.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pp2'::regclass AND tgname LIKE 'koherent\\_history%'") == 0
    assert db.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pp1'::regclass AND tgname LIKE 'koherent%'") == 5  # and the MERGE guard
    db.sql("INSERT INTO pp2 VALUES (3, 2, 'detached'); UPDATE pp2 SET v = 'upd' WHERE id = 2")
    # (the detach itself recorded pp2's row leaving pp; nothing written into pp2 since is pp's)
    assert db.sql("SELECT kind, row_key FROM koherent.provenance_entry WHERE table_name = 'pp'::regclass "
                  "ORDER BY history_id") == [("CREATE", {"id": 1, "part": 1}), ("CREATE", {"id": 2, "part": 2}),
                                             ("TRUNCATE", {"id": 2, "part": 2})]


def test_merge_moving_rows_between_partitions_is_refused(db):
    """PostgreSQL 15 gives the statement trigger of such a MERGE no rows: it was neither recorded
    nor checked for require_task."""
    db.sql("CREATE TABLE rp (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part)")
    db.sql("CREATE TABLE rp1 PARTITION OF rp FOR VALUES IN (1)")
    db.sql("CREATE TABLE rp2 PARTITION OF rp FOR VALUES IN (2)")
    db.sql("INSERT INTO rp VALUES (1, 1, 'a'), (2, 1, 'b')")
    db.sql("SELECT koherent.track('rp', require_task => true)")
    db.sql("CREATE TABLE src (id int, part int, v text)")
    db.sql("INSERT INTO src VALUES (1, 2, 'moved'), (2, 1, 'stays')")
    db.sql(f"GRANT ALL ON rp, src TO {APP_ROLE}")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-merge")])
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute("MERGE INTO rp t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v")
        assert "reason: merge_moves_rows" in e.value.diag.message_detail
        c.rollback()
    with db.app() as c:   # no task: refused too, nothing moved
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("MERGE INTO rp t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v")
    assert db.sql("SELECT id, part, v FROM rp ORDER BY id") == [(1, 1, "a"), (2, 1, "b")]
    # inside a DO block: refused the same way
    with db.app() as c:
        c.execute("SELECT koherent.current_context_id()")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("DO $$ BEGIN MERGE INTO rp t USING src s ON t.id = s.id "
                      "WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v; END $$")
    assert db.sql("SELECT id, part, v FROM rp ORDER BY id") == [(1, 1, "a"), (2, 1, "b")]
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-merge")])
        # a MERGE that keeps rows in their partition is recorded; an UPDATE that moves one too
        c.execute("MERGE INTO rp t USING src s ON t.id = s.id AND s.part = t.part WHEN MATCHED THEN UPDATE SET v = s.v")
        c.execute("UPDATE rp SET part = 2 WHERE id = 1")
        c.commit()
    assert db.sql("SELECT kind, row_key, row_data->>'v', task_id FROM koherent.provenance_entry ORDER BY history_id") == [
        ("UPDATE", {"id": 2, "part": 1}, "stays", "t-merge"), ("UPDATE", {"id": 1, "part": 2}, "a", "t-merge")]


def _moving_partitions(db):
    db.sql("CREATE TABLE mp (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part)")
    db.sql("CREATE TABLE mp1 PARTITION OF mp FOR VALUES IN (1)")
    db.sql("CREATE TABLE mp2 PARTITION OF mp FOR VALUES IN (2)")
    db.sql("INSERT INTO mp VALUES (1, 1, 'a'), (2, 1, 'b')")
    db.sql("SELECT koherent.track('mp')")
    db.sql("CREATE TABLE msrc (id int, part int, v text)")
    db.sql("INSERT INTO msrc VALUES (1, 2, 'moved')")
    db.sql(f"GRANT ALL ON mp, msrc TO {APP_ROLE}")
    db.sql("CREATE FUNCTION merge_in_plpgsql() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
           "MERGE INTO mp t USING msrc s ON t.id = s.id WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v; END $$")
    db.sql("CREATE FUNCTION merge_in_sql() RETURNS void LANGUAGE sql AS $$ "
           "MERGE INTO mp t USING msrc s ON t.id = s.id WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v $$")
    db.sql("CREATE FUNCTION move_by_update() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
           "UPDATE mp SET part = 2, v = 'by update' WHERE id = 2; RETURN 2; END $$")


MERGE_MOVE = "MERGE INTO mp t USING msrc s ON t.id = s.id WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v"


def test_merge_moving_rows_is_refused_at_any_depth(db):
    """Variants of a MERGE that moves rows between partitions of a table tracked without
    require_task: inside a DO block, a PL/pgSQL or SQL function, a prepared statement, EXPLAIN
    ANALYZE. Each is refused (0A000) and moves nothing. An UPDATE that a MERGE's source runs
    moves its row, recorded."""
    _moving_partitions(db)
    variants = [f"DO $$ BEGIN {MERGE_MOVE}; END $$", "SELECT merge_in_plpgsql()", "SELECT merge_in_sql()",
                f"EXPLAIN (ANALYZE, COSTS OFF) {MERGE_MOVE}", "EXECUTE m"]
    with db.app() as c:
        c.execute("SELECT koherent.current_context_id()")   # koherent is loaded in this session
        c.execute(f"PREPARE m AS {MERGE_MOVE}")
        for v in variants:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                c.execute(v)
            assert "reason: merge_moves_rows" in e.value.diag.message_detail, v
            assert "mp1" in str(e.value), v
        # the innermost statement decides: an UPDATE run by a MERGE's source moves its row
        c.execute("MERGE INTO msrc t USING (SELECT move_by_update() AS id) s ON t.id = s.id "
                  "WHEN NOT MATCHED THEN INSERT VALUES (s.id, 0, 'x')")
    assert db.sql("SELECT id, part, v FROM mp ORDER BY id") == [(1, 1, "a"), (2, 2, "by update")]
    assert db.sql("SELECT kind, row_key, row_data->>'v' FROM koherent.provenance_entry ORDER BY history_id") == [
        ("UPDATE", {"id": 2, "part": 2}, "by update")]


def test_merge_behind_an_owner_trigger_that_moves_rows_is_refused(db):
    """A BEFORE UPDATE trigger that fires after the guard (triggers fire in name order) could
    change the partition key of a row the guard saw stay in place: MERGE updates of such a
    partition are refused; a trigger that fires before the guard is seen through; a plain UPDATE
    moved by the trigger is recorded."""
    _moving_partitions(db)
    db.sql("CREATE FUNCTION route() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
           "IF NEW.v LIKE 'to2%' THEN NEW.part := 2; END IF; RETURN NEW; END $$")
    db.sql("CREATE TRIGGER z_route BEFORE UPDATE ON mp FOR EACH ROW EXECUTE FUNCTION route()")
    merge = ("MERGE INTO mp t USING (VALUES (1)) s(id) ON t.id = s.id "
             "WHEN MATCHED THEN UPDATE SET v = 'to2 by merge'")
    with db.app() as c:
        c.execute("SELECT koherent.current_context_id()")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(merge)
        assert "reason: merge_behind_trigger" in e.value.diag.message_detail
        assert '"z_route"' in e.value.diag.message_primary and "name order" in e.value.diag.message_hint
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute(f"DO $$ BEGIN {merge}; END $$")
    assert db.sql("SELECT id, part, v FROM mp ORDER BY id") == [(1, 1, "a"), (2, 1, "b")]
    db.sql("ALTER TRIGGER z_route ON mp RENAME TO a_route")   # fires before the guard now
    with db.app() as c:
        c.execute("SELECT koherent.current_context_id()")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(merge)
        assert "reason: merge_moves_rows" in e.value.diag.message_detail
        c.execute("MERGE INTO mp t USING (VALUES (2)) s(id) ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 'stays'")
        c.execute("UPDATE mp SET v = 'to2 by update' WHERE id = 1")
    assert db.sql("SELECT id, part, v FROM mp ORDER BY id") == [(1, 2, "to2 by update"), (2, 1, "stays")]
    assert db.sql("SELECT kind, row_key, row_data->>'v' FROM koherent.provenance_entry ORDER BY history_id") == [
        ("UPDATE", {"id": 2, "part": 1}, "stays"), ("UPDATE", {"id": 1, "part": 2}, "to2 by update")]


def test_merge_moving_rows_in_a_session_that_had_not_loaded_koherent(db):
    """The first koherent code a session runs can be the partition guard of a statement already
    running, which the executor hook never saw: a MERGE at the top is refused as such, a plain
    UPDATE moves and is recorded, anything else that moves rows fails with 55000 (nothing moved)
    and succeeds or is refused correctly when run again."""
    _moving_partitions(db)
    loaded = "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()"   # loads nothing
    with db.app() as c:
        c.execute(loaded)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(MERGE_MOVE)
        assert "reason: merge_moves_rows" in e.value.diag.message_detail
    with db.app() as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            c.execute(f"DO $$ BEGIN {MERGE_MOVE}; END $$")
        assert "reason: mover_unknown" in e.value.diag.message_detail
        assert "session_preload_libraries" in e.value.diag.message_hint
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:   # again: now it is seen
            c.execute(f"DO $$ BEGIN {MERGE_MOVE}; END $$")
        assert "reason: merge_moves_rows" in e.value.diag.message_detail
    with db.app() as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("SELECT move_by_update()")
        assert c.execute("SELECT move_by_update()").fetchone() == (2,)
    assert db.sql("SELECT id, part, v FROM mp ORDER BY id") == [(1, 1, "a"), (2, 2, "by update")]
    with db.app() as c:
        c.execute("UPDATE mp SET part = 2, v = 'top' WHERE id = 1")
    assert db.sql("SELECT kind, row_key, row_data->>'v' FROM koherent.provenance_entry ORDER BY history_id") == [
        ("UPDATE", {"id": 2, "part": 2}, "by update"), ("UPDATE", {"id": 1, "part": 2}, "top")]
    # a nested MERGE under a top-level UPDATE of another table, and a nested UPDATE under a
    # top-level MERGE: the portal's command says nothing of a nested statement, so both are
    # unknown (nothing moved); run again, each is judged as what it is
    db.sql("CREATE TABLE other (x int)")
    db.sql("INSERT INTO other VALUES (1)")
    db.sql(f"GRANT ALL ON other TO {APP_ROLE}")
    db.sql("CREATE FUNCTION merge_returning_one() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
           "MERGE INTO mp t USING msrc s ON t.id = s.id WHEN MATCHED THEN UPDATE SET part = s.part, v = s.v; "
           "RETURN 1; END $$")
    db.sql("UPDATE msrc SET part = 1")   # would move row 1 back to partition 1
    with db.app() as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            c.execute("UPDATE other SET x = merge_returning_one()")
        assert "reason: mover_unknown" in e.value.diag.message_detail
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("UPDATE other SET x = merge_returning_one()")
    db.sql("UPDATE mp SET part = 1, v = 'back' WHERE id = 2")
    with db.app() as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("MERGE INTO other o USING (SELECT move_by_update() AS x) s ON o.x = s.x "
                      "WHEN NOT MATCHED THEN INSERT VALUES (s.x)")
        c.execute("MERGE INTO other o USING (SELECT move_by_update() AS x) s ON o.x = s.x "
                  "WHEN NOT MATCHED THEN INSERT VALUES (s.x)")
    assert db.sql("SELECT id, part, v FROM mp ORDER BY id") == [(1, 2, "top"), (2, 2, "by update")]
    assert db.sql("SELECT row_key, row_data->>'v' FROM koherent.provenance_entry ORDER BY history_id")[-1] == (
        {"id": 2, "part": 2}, "by update")
    # loaded when a session starts, the hook sees every statement: no 55000, the MERGE refused
    db.sql(f"ALTER DATABASE {db.name} SET session_preload_libraries = 'koherent'")
    db.sql("UPDATE msrc SET part = 1")
    with db.app() as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(f"DO $$ BEGIN {MERGE_MOVE}; END $$")
        assert "reason: merge_moves_rows" in e.value.diag.message_detail


# --- 8. a dump restored elsewhere keeps its history readable and keeps recording --------------

@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_dump_and_restore_keeps_tracking(item, fmt):
    db = item
    db.sql(f"SELECT koherent.expose('item', '{APP_ROLE}')")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-dump")])
        c.execute("INSERT INTO item (id, qty) SELECT g, g FROM generate_series(1, 100) g")
        c.execute("UPDATE item SET qty = 0 WHERE id <= 3")
        c.commit()
    before = db.sql("SELECT history_id, table_name::text, row_key, kind, row_data, task_id "
                    "FROM koherent.provenance_entry ORDER BY 1")
    bindir = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
    dump = subprocess.run([os.path.join(bindir, "pg_dump"), "-h", HOST, "-p", str(PORT), "-U", "postgres",
                           "-d", db.name] + (["-Fc"] if fmt == "custom" else []),
                          capture_output=True, check=True).stdout
    target = Db("t_restored_" + uuid.uuid4().hex[:8])
    with connect() as c:
        # other oids: objects created in between
        c.execute(f"CREATE DATABASE {target.name}")
        c.execute(f"ALTER DATABASE {target.name} SET koherent.audience = 'koherent'")
    try:
        target.sql("CREATE TABLE filler (a int); CREATE TABLE filler2 (a int); DROP TABLE filler, filler2")
        if fmt == "plain":
            cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        else:
            cmd = [os.path.join(bindir, "pg_restore"), "--exit-on-error"]
        r = subprocess.run(cmd + ["-h", HOST, "-p", str(PORT), "-U", "postgres", "-d", target.name],
                           input=dump, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        assert target.one("SELECT relid = 'item'::regclass::oid FROM koherent.tracked_config") is True
        after = target.sql("SELECT history_id, table_name::text, row_key, kind, row_data, task_id "
                           "FROM koherent.provenance_entry ORDER BY 1")
        assert after == before and len(after) == 103
        # keeps recording, with ids after the old ones; DDL follow-up works
        with target.app(autocommit=False) as c:
            c.execute("SELECT koherent.set_task(%s)", [mint("t-after")])
            c.execute("UPDATE item SET qty = 7 WHERE id = 1")
            c.commit()
        target.sql("ALTER TABLE item ADD COLUMN extra text")
        target.sql("UPDATE item SET extra = 'e' WHERE id = 2")
        new = target.sql("SELECT history_id, kind, task_id, row_data->>'extra' FROM koherent.provenance_entry "
                         "WHERE history_id > %s ORDER BY 1", [before[-1][0]])
        assert [(k, t, e) for _, k, t, e in new] == [("UPDATE", "t-after", None), ("UPDATE", None, "e")]
        assert target.one("SELECT count(*) FROM koherent.task_changes('t-dump')") == 103
        with target.app() as c:
            assert c.execute("SELECT count(*) FROM item_provenance((SELECT i FROM item i WHERE id = 1))").fetchone()[0] == 3
    finally:
        with connect() as c:
            c.execute(f"DROP DATABASE IF EXISTS {target.name} WITH (FORCE)")


# --- 9. the role presenting a token: recorded through SET ROLE, bound by bind_agent -----------

def test_effective_role_records_set_role(item):
    db = item
    ensure_role("koherent_app_admin")
    db.sql(f"GRANT {APP_ROLE} TO koherent_app_admin")
    with db.conn(user="koherent_app_admin", autocommit=False) as c:
        c.execute(f"SET ROLE {APP_ROLE}")
        c.execute("SELECT koherent.set_task(%s)", [mint("t-role")])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    assert db.one("SELECT db_role || '/' || effective_role FROM koherent.provenance_entry") == f"koherent_app_admin/{APP_ROLE}"
    assert db.one("SELECT effective_role FROM koherent.transaction_auth_context") == APP_ROLE


def test_agent_binding_refuses_a_token_presented_by_another_role(item):
    db = item
    agent_role = "koherent_agent_role"
    ensure_role(agent_role)
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON item TO {agent_role}")
    tok = mint("t-bound")   # act.cid = agent-client-9
    # without a binding: anyone presents it (as before)
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [tok])
        c.rollback()
    db.sql("SELECT koherent.bind_agent('rekuest', 'agent-client-9', %s)", [agent_role])
    assert db.sql("SELECT issuer, client_id, role_name FROM koherent.agent_binding") == [
        ("rekuest", "agent-client-9", agent_role)]
    before = db.state_counts()
    with db.app(autocommit=False) as c:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as e:
            c.execute("SELECT koherent.set_task(%s)", [tok])
        assert "reason: presenter_not_bound" in e.value.diag.message_detail
        c.rollback()
        # by setting, at the write
        c.execute("SELECT set_config('koherent.task_token', %s, true)", [tok])
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            c.execute("INSERT INTO item (id) VALUES (1)")
        c.rollback()
    assert db.state_counts() == before
    # the bound role presents it; so does a login role acting as it (SET ROLE)
    with db.conn(user=agent_role, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [tok])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    db.sql(f"GRANT {agent_role} TO {APP_ROLE}")
    with db.app(autocommit=False) as c:
        c.execute(f"SET ROLE {agent_role}")
        c.execute("SELECT koherent.set_task(%s)", [tok])
        c.execute("INSERT INTO item (id) VALUES (2)")
        # leaving the role inside the transaction: the next write presents the token as another role
        c.execute("RESET ROLE")
        db.sql(f"REVOKE {agent_role} FROM {APP_ROLE}")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            c.execute("INSERT INTO item (id) VALUES (3)")
        c.rollback()
    # other agents are not affected; unbinding restores the old behaviour
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-other", act={"sub": "u", "cid": "other-agent"})])
        c.rollback()
    assert db.one("SELECT koherent.unbind_agent('rekuest', 'agent-client-9')") == 1
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [tok])
        c.execute("INSERT INTO item (id) VALUES (4)")
        c.commit()
    assert db.sql("SELECT row_key->>'id', task_id FROM koherent.provenance_entry ORDER BY history_id") == [
        ("1", "t-bound"), ("4", "t-bound")]
    # application roles cannot bind
    with db.app() as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"SELECT koherent.bind_agent('rekuest', 'agent-client-9', '{APP_ROLE}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"INSERT INTO koherent.agent_binding_store VALUES ('rekuest', 'x', '{APP_ROLE}')")


# --- 10. hostile input fails cleanly (its SQLSTATE, no backtrace) or is kept as data ----------

def deep(n):
    return "[" * n + "]" * n


@pytest.mark.parametrize("call", ["SELECT koherent.set_context(%s::jsonb)", "SELECT koherent.args_hash(%s::jsonb)",
                                  "SELECT koherent.canonical_args(%s::jsonb)"])
def test_deep_json_is_22023_without_backtrace(db, call):
    with db.app(autocommit=False) as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(call, [json.dumps({"a": json.loads(deep(300))})])
        text = " ".join(filter(None, [e.value.diag.message_primary, e.value.diag.message_detail,
                                      e.value.diag.message_hint, e.value.diag.context]))
        assert e.value.diag.message_primary.startswith("koherent: JSON nested deeper than 128 levels")
        assert "backtrace" not in text and ".rs:" not in text
        c.rollback()
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SELECT koherent.set_task(%s, %s::jsonb)", [mint("t-deep"), deep(200)])


def test_null_token_is_22004_not_internal(db):
    with db.app() as c:
        for q in ("SELECT koherent.set_task(NULL, '{\"x\": 1}'::jsonb)", "SELECT koherent._set_task_args(NULL, NULL)"):
            with pytest.raises(psycopg.errors.NullValueNotAllowed):
                c.execute(q)


def test_errors_inside_the_writer_carry_no_backtrace(item):
    """0.3.0 attached a Rust backtrace to the DETAIL of PostgreSQL errors raised in the writer."""
    db = item
    with db.conn(autocommit=False) as holder, db.app() as c:
        holder.execute("LOCK TABLE koherent_history.item IN ACCESS EXCLUSIVE MODE")
        c.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable) as e:
            c.execute("INSERT INTO item (id) VALUES (1)")
        text = " ".join(filter(None, [e.value.diag.message_primary, e.value.diag.message_detail,
                                      e.value.diag.message_hint]))
        assert "lock timeout" in text
        assert "backtrace" not in text and "koherent::" not in text and "pgrx" not in text


def test_percent_in_column_names_keeps_truncate_working(item):
    db = item
    db.sql('ALTER TABLE item ADD COLUMN "c%1$s" text')
    db.sql('INSERT INTO item (id, "c%1$s") VALUES (1, \'x\')')
    db.sql("TRUNCATE item")
    assert db.sql("SELECT kind, row_data->>'c%1$s' FROM koherent.provenance_entry ORDER BY history_id") == [
        ("CREATE", "x"), ("TRUNCATE", "x")]
