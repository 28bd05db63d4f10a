"""Revert and as-of attacked as a table owner, an application role and a reader under RLS
would (the review of 0.6.0): no code a non-superuser writes runs with koherent's rights, and the
answers stay right in the cases the review found wrong."""

import threading
import uuid

import psycopg
import pytest

from conftest import APP_ROLE, connect, mint, write, wait_for_lock

ESCALATE = """CREATE FUNCTION {s}.evil(x anyelement) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'owner code ran as a superuser';
    END IF;
    RETURN true; END $$"""


@pytest.fixture
def owner(db):
    """A non-superuser role owning schema `hs`, whose tables a superuser tracks."""
    name = "koherent_owner_" + uuid.uuid4().hex[:6]
    db.sql(f"CREATE ROLE {name} LOGIN")
    db.sql(f"CREATE SCHEMA hs AUTHORIZATION {name}")
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean), "
           f"koherent.revert_task(text, boolean, text) TO {name}")
    yield name
    # (the database goes first: the role owns objects in it only)
    with connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")
        c.execute(f"DROP ROLE {name}")


def as_role(db, role, statements, token=None):
    with db.conn(autocommit=False) as c:
        c.execute(f"SET ROLE {role}")
        if token:
            c.execute("SELECT koherent.set_task(%s)", [token])
        out = []
        for s in statements:
            cur = c.execute(s)
            out.append(cur.fetchall() if cur.description else None)
        c.commit()
    return out


def test_an_array_of_domain_key_runs_no_check_as_the_extension_owner(db, owner):
    db.sql(f"SET ROLE {owner}; " + ESCALATE.format(s="hs") + "; CREATE DOMAIN hs.d AS int CHECK (hs.evil(VALUE)); "
           "CREATE TABLE hs.t (k hs.d[] PRIMARY KEY, v int); RESET ROLE")
    db.sql("SELECT koherent.track('hs.t', row_index => true)")
    as_role(db, owner, ["INSERT INTO hs.t VALUES (ARRAY[1], 1)"])
    at = db.one("SELECT clock_timestamp()")
    as_role(db, owner, ["UPDATE hs.t SET v = 3"])
    with db.conn() as c:
        c.execute(f"SET ROLE {owner}")
        assert c.execute("SELECT (koherent.row_as_of(NULL::hs.t, '{\"k\": [1]}', %s)).v", [at]).fetchone()[0] == 1
        assert c.execute("SELECT v FROM koherent.as_of(NULL::hs.t, %s)", [at]).fetchall() == [(1,)]


def test_a_search_path_set_by_the_callers_code_does_not_reach_koherents_code(db, owner):
    db.sql(f"SET ROLE {owner}; " + ESCALATE.format(s="hs") + "; "
           "CREATE FUNCTION hs.setpath() RETURNS boolean LANGUAGE plpgsql AS "
           "$$ BEGIN PERFORM set_config('search_path', 'hs, pg_catalog', false); RETURN true; END $$; "
           "CREATE FUNCTION hs.to_jsonb(x anyelement) RETURNS jsonb LANGUAGE sql AS "
           "$$ SELECT CASE WHEN hs.evil(1) THEN pg_catalog.to_jsonb(x) END $$; "
           "CREATE TABLE hs.r (id int PRIMARY KEY, v int); "
           "ALTER TABLE hs.r ENABLE ROW LEVEL SECURITY; ALTER TABLE hs.r FORCE ROW LEVEL SECURITY; "
           "CREATE POLICY p ON hs.r USING (hs.setpath()) WITH CHECK (hs.setpath()); RESET ROLE")
    db.sql("SELECT koherent.track('hs.r')")
    as_role(db, owner, ["INSERT INTO hs.r VALUES (1, 1), (2, 2)"])
    at = db.one("SELECT clock_timestamp()")
    as_role(db, owner, ["UPDATE hs.r SET v = v * 10"], mint("task-hs"))
    with db.conn() as c:
        c.execute(f"SET ROLE {owner}")
        assert sorted(c.execute("SELECT id, v FROM koherent.as_of(NULL::hs.r, %s)", [at]).fetchall()) == [(1, 1), (2, 2)]
        assert c.execute("SELECT count(*) FROM koherent.revert_plan('task-hs')").fetchone()[0] == 2
    r = as_role(db, owner, ["SELECT koherent.revert_task('task-hs')"], mint("task-fix"))[0][0][0]
    assert r["updated"] == 2
    assert db.sql("SELECT id, v FROM hs.r ORDER BY id") == [(1, 1), (2, 2)]


def test_no_acting_for_anyone_inside_a_security_restricted_operation(db, owner):
    """ANALYZE and CREATE INDEX run a table owner's index expressions as that owner on behalf
    of whoever started them: koherent refuses to act for anyone there (42501)."""
    db.sql(f"SET ROLE {owner}; CREATE TABLE hs.x (id int PRIMARY KEY, w int); "
           "CREATE FUNCTION hs.idx(w int) RETURNS int LANGUAGE sql IMMUTABLE AS "
           "$$ SELECT count(*)::int FROM koherent.revert_plan('task-x') $$; RESET ROLE")
    db.sql("SELECT koherent.track('hs.x')")
    as_role(db, owner, ["INSERT INTO hs.x VALUES (1, 1)"], mint("task-x"))
    with pytest.raises(psycopg.Error) as e:
        db.sql("CREATE INDEX ON hs.x (hs.idx(w))")  # run by the superuser
    assert e.value.sqlstate == "42501" and "security_restricted" in (e.value.diag.message_detail or "")


def test_a_key_swap_and_a_shift_in_one_statement(item):
    db = item
    db.sql("CREATE TABLE sh (id int PRIMARY KEY DEFERRABLE, a text)")
    db.sql("SELECT koherent.track('sh')")
    write(db, "INSERT INTO sh VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    at = db.one("SELECT clock_timestamp()")
    write(db, "UPDATE sh SET id = id + 1", mint("task-shift"))
    assert db.sql("SELECT id, a FROM koherent.as_of(NULL::sh, %s) ORDER BY id", [at]) == [(1, "a"), (2, "b"), (3, "c")]
    with db.conn() as c:
        assert c.execute("SELECT (koherent.row_as_of(NULL::sh, '{\"id\": 2}', %s)).a", [at]).fetchone()[0] == "b"
    with db.conn(autocommit=False) as c:
        c.execute("SET CONSTRAINTS ALL DEFERRED")
        assert c.execute("SELECT koherent.revert_task('task-shift')").fetchone()[0]["updated"] == 3
        c.commit()
    assert db.sql("SELECT id, a FROM sh ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    write(db, "UPDATE sh SET id = CASE id WHEN 1 THEN 2 WHEN 2 THEN 1 ELSE id END WHERE id < 3", mint("task-swap"))
    with db.conn(autocommit=False) as c:
        c.execute("SET CONSTRAINTS ALL DEFERRED")
        c.execute("SELECT koherent.revert_task('task-swap')")
        c.commit()
    assert db.sql("SELECT id, a FROM sh ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    # a swap and a 3-cycle in which the rows restore different columns: one statement per cycle
    # (matched at their keys before any moves), each row writing back only what it restores
    db.sql("CREATE TABLE sw (id int, v text, w text, CONSTRAINT sw_pk PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED)")
    db.sql("SELECT koherent.track('sw')")
    write(db, "INSERT INTO sw VALUES (1, 'one', 'x1'), (2, 'two', 'x2'), (11, 'a', 'y1'), (12, 'b', 'y2'), (13, 'c', 'y3')")
    seed = db.sql("SELECT * FROM sw ORDER BY id")
    write(db, ["UPDATE sw SET id = 3 - id, v = CASE WHEN id = 1 THEN 'ONE' ELSE v END WHERE id < 3",
               "UPDATE sw SET id = CASE id WHEN 11 THEN 12 WHEN 12 THEN 13 ELSE 11 END, "
               "w = CASE WHEN id = 12 THEN 'changed' ELSE w END WHERE id > 10"], mint("task-cycles"))
    assert db.sql("SELECT * FROM sw ORDER BY id") == [(1, "two", "x2"), (2, "ONE", "x1"), (11, "c", "y3"),
                                                      (12, "a", "y1"), (13, "b", "changed")]
    r = db.one("SELECT koherent.revert_task('task-cycles')")
    assert (r["updated"], r["conflicts"]) == (5, []), r
    assert db.sql("SELECT * FROM sw ORDER BY id") == seed


def test_odd_column_names_and_values_equal_but_not_the_same(db):
    db.sql('CREATE TABLE cm (id int PRIMARY KEY, "x,y" text, x text, y text, iv interval, n numeric, c char(3))')
    db.sql("SELECT koherent.track('cm')")
    write(db, "INSERT INTO cm VALUES (1, 'orig', 'x0', 'y0', '1 day', 1.0, 'x')")
    write(db, "UPDATE cm SET \"x,y\" = 'task', iv = '24 hours', n = 1.00", mint("task-cm"))
    write(db, "UPDATE cm SET x = 'later-x'")
    assert db.one("SELECT restored_data FROM koherent.revert_plan('task-cm')") == {
        "x,y": "orig", "iv": "1 day", "n": 1.0}
    r = db.one("SELECT koherent.revert_task('task-cm')")
    assert (r["updated"], r["conflicts"]) == (1, [])
    assert db.sql("SELECT \"x,y\", x, y, iv::text, n::text FROM cm") == [("orig", "later-x", "y0", "1 day", "1.0")]


def test_a_key_used_again_does_not_show_the_deleted_row_under_rls(db):
    db.sql("CREATE TABLE sec (id int PRIMARY KEY, owner text NOT NULL, body text)")
    db.sql("SELECT koherent.track('sec')")
    write(db, "INSERT INTO sec VALUES (3, 'alice', 'secret')")
    at = db.one("SELECT clock_timestamp()")
    write(db, "DELETE FROM sec WHERE id = 3")
    db.sql("ALTER TABLE sec ENABLE ROW LEVEL SECURITY")
    db.sql("CREATE POLICY mine ON sec USING (owner = current_user) WITH CHECK (owner = current_user)")
    db.sql(f"GRANT SELECT, INSERT ON sec TO {APP_ROLE}")
    with db.app() as c:
        c.execute(f"INSERT INTO sec VALUES (3, '{APP_ROLE}', 'mine')")
        assert c.execute("SELECT * FROM koherent.as_of(NULL::sec, %s)", [at]).fetchall() == []
        assert c.execute("SELECT koherent.row_as_of(NULL::sec, '{\"id\": 3}', %s)", [at]).fetchone()[0] is None


def test_a_revert_rolled_back_to_a_savepoint_leaves_no_mark(item):
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)")
    write(db, "UPDATE item SET qty = 5 WHERE id = 1", mint("task-t2"))
    with db.conn(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-t1")])
        c.execute("SAVEPOINT s")
        c.execute("SELECT koherent.revert_task('task-t2')")
        c.execute("ROLLBACK TO SAVEPOINT s")
        c.execute("UPDATE item SET qty = 9 WHERE id = 2")
        c.commit()
    assert db.one("SELECT metadata FROM koherent.transaction_auth_context WHERE task_id = 'task-t1'") == {}
    assert db.sql("SELECT id, qty FROM item ORDER BY id") == [(1, 5), (2, 9)]


def test_the_callers_triggers_run_with_its_search_path(item):
    db = item
    db.sql("CREATE TABLE trig_log (id int)")
    db.sql("CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS "
           "$$ BEGIN INSERT INTO trig_log VALUES (NEW.id); RETURN NEW; END $$")
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)")
    write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("task-tr"))
    db.sql("CREATE TRIGGER log_it AFTER UPDATE ON item FOR EACH ROW EXECUTE FUNCTION log_it()")
    assert db.one("SELECT koherent.revert_task('task-tr')")["updated"] == 1
    assert db.sql("SELECT id FROM trig_log") == [(1,)]


def test_a_key_of_the_owners_own_type_is_converted_by_the_caller(db, owner):
    """A key of a type outside pg_catalog (here a domain with the owner's CHECK over the owner's
    enum) is converted from JSON by the acting role's own statement, never as the extension
    owner; the helpers take JSON, not values of a type the client chooses."""
    db.sql(f"SET ROLE {owner}; " + ESCALATE.format(s="hs") + "; CREATE TYPE hs.color AS ENUM ('red', 'blue'); "
           "CREATE DOMAIN hs.checked AS hs.color CHECK (hs.evil(VALUE)); "
           "CREATE TABLE hs.e (c hs.checked PRIMARY KEY, v int); RESET ROLE")
    db.sql("SELECT koherent.track('hs.e', row_index => true)")
    as_role(db, owner, ["INSERT INTO hs.e VALUES ('red', 1), ('blue', 2)"])
    at = db.one("SELECT clock_timestamp()")
    as_role(db, owner, ["UPDATE hs.e SET v = v * 10"])
    with db.conn() as c:
        c.execute(f"SET ROLE {owner}")
        assert c.execute("SELECT (koherent.row_as_of(NULL::hs.e, '{\"c\": \"blue\"}', %s)).v", [at]).fetchone()[0] == 2
        assert sorted(c.execute("SELECT c::text, v FROM koherent.as_of(NULL::hs.e, %s)", [at]).fetchall()) == [
            ("blue", 2), ("red", 1)]
    # (as the superuser the owner's CHECK would raise: it must not have run as one)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        with db.conn() as c:
            c.execute("SELECT koherent._as_of_rows(koherent._acting(), 'hs.e'::regtype, now(), NULL, '{}', ROW(1))")


def test_a_readers_own_operators_and_functions_see_no_hidden_history(db):
    """Under row-level security, a reader who puts its own schema first in search_path, with an
    `=` that is always true and a jsonb_array_elements that prints its argument, learns nothing
    of the rows it may not read: koherent's checks run under pg_catalog and get keys only."""
    db.sql("CREATE TABLE items (id int PRIMARY KEY, owner text NOT NULL, secret text)")
    db.sql("SELECT koherent.track('items')")
    write(db, f"INSERT INTO items VALUES (1, '{APP_ROLE}', 'mine'), (2, 'victim', 'TOPSECRET-v1')")
    at = db.one("SELECT clock_timestamp()")
    write(db, "UPDATE items SET secret = secret || '!'", mint("task-leak"))
    db.sql("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
    db.sql("CREATE POLICY mine ON items USING (owner = current_user)")
    db.sql(f"GRANT SELECT, UPDATE ON items TO {APP_ROLE}")
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean) TO {APP_ROLE}")
    db.sql(f"CREATE SCHEMA evil AUTHORIZATION {APP_ROLE}")
    with db.app() as c:
        c.execute("CREATE FUNCTION evil.eq_true(int4, int4) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT true'")
        c.execute("CREATE OPERATOR evil.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.eq_true)")
        c.execute("CREATE FUNCTION evil.jsonb_array_elements(j jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE NOTICE 'LEAK: %', j; RETURN QUERY SELECT pg_catalog.jsonb_array_elements(j); END $$")
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SET search_path = evil, pg_catalog, public")
        got = c.execute("SELECT id, secret FROM koherent.as_of(NULL::public.items, %s) ORDER BY id", [at]).fetchall()
        plan = c.execute("SELECT row_key, restored_data, conflict FROM koherent.revert_plan('task-leak')").fetchall()
    assert got == [(1, "mine")]
    assert all("TOPSECRET" not in n for n in notices), notices
    assert sorted(plan, key=str) == sorted([({"id": 1}, {"secret": "mine"}, None), (None, None, "not_visible")], key=str)


def test_columns_named_like_the_readers_aliases(db):
    """A table whose columns are named a to z: the SQL koherent builds for as_of (typed and by
    images, after a column change), as_of_task, row_as_of, revert_plan and revert_task (row by
    row, after a key change) names its own aliases, never a column of the caller's table."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    db.sql("CREATE TABLE letters (id int PRIMARY KEY, " + ", ".join(f"{x} int" for x in letters) + ")")
    db.sql("SELECT koherent.track('letters')")
    cols = "id, " + ", ".join(letters)
    db.sql(f"INSERT INTO letters ({cols}) SELECT g, " + ", ".join(f"g * {i + 1}" for i in range(26))
           + " FROM generate_series(1, 3) g")
    seed = db.sql("SELECT * FROM letters ORDER BY id")
    moment = db.one("SELECT clock_timestamp()")
    write(db, ["UPDATE letters SET id = 20, c = -1 WHERE id = 2", "UPDATE letters SET x = -2, k = -3, p = -4 WHERE id = 1"],
          mint("letters-task"))
    for tail in ("", "ALTER TABLE letters ADD COLUMN zz int"):  # typed paths; then images (a column added since)
        if tail:
            db.sql(tail)
        width = len(seed[0]) if not tail else len(seed[0]) + 1
        pad = () if not tail else (None,)
        assert db.sql("SELECT * FROM koherent.as_of(NULL::letters, %s) ORDER BY id", [moment]) == [r + pad for r in seed]
        assert db.sql("SELECT * FROM koherent.as_of_task(NULL::letters, 'letters-task') ORDER BY id") == \
            [r + pad for r in seed]
        for key in (1, 2):
            got = db.one("SELECT koherent.row_as_of(NULL::letters, %s, %s)::text",
                         [psycopg.types.json.Jsonb({"id": key}), moment])
            assert got is not None and got.count(",") == width - 1 and got.startswith(f"({key},"), got
        assert db.one("SELECT koherent.row_as_of(NULL::letters, '{\"id\": 20}', %s)", [moment]) is None
        plan = db.sql("SELECT row_key->>'id', action FROM koherent.revert_plan('letters-task') ORDER BY 1, 2")
        assert plan == [("1", "UPDATE"), ("20", "UPDATE")], plan  # (20 moves back to 2)
        assert db.one("SELECT count(*) FROM koherent.task_changes('letters-task')") == 2
    with db.conn(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("letters-revert")])
        r = c.execute("SELECT koherent.revert_task('letters-task')").fetchone()[0]
        c.commit()
    assert (r["updated"], r["inserted"], r["deleted"], r["conflicts"]) == (2, 0, 0, []), r
    assert db.sql(f"SELECT {cols} FROM letters ORDER BY id") == seed


def test_a_parents_key_moved_back_through_on_update_cascade_into_the_childrens_keys(db):
    """A child table whose primary key holds a foreign key with ON UPDATE CASCADE: the task's
    key change of the parent moved the children's keys too (recorded under the task). The revert
    moves the parent back, which moves the children back through the cascade: they are then as
    the revert restores them, and it is done (was 42501 'could update only 0 of 2 rows' with a
    row-level security hint)."""
    db.sql("CREATE TABLE cp (id int PRIMARY KEY, name text)")
    db.sql("CREATE TABLE cc (pid int REFERENCES cp ON UPDATE CASCADE, n int, v text, PRIMARY KEY (pid, n))")
    db.sql("SELECT koherent.track('cp'), koherent.track('cc')")
    write(db, ["INSERT INTO cp VALUES (1, 'one'), (5, 'five')",
               "INSERT INTO cc VALUES (1, 1, 'a'), (1, 2, 'b'), (5, 1, 'x')"], mint("task-seed"))
    seed = (db.sql("SELECT * FROM cp ORDER BY id"), db.sql("SELECT * FROM cc ORDER BY pid, n"))
    write(db, "UPDATE cp SET id = 2, name = 'two' WHERE id = 1", mint("task-move"))
    assert db.sql("SELECT * FROM cc ORDER BY pid, n") == [(2, 1, "a"), (2, 2, "b"), (5, 1, "x")]
    assert sorted(((t, k) for t, k, *_ in plan_of(db, "task-move")), key=str) == [
        ("cc", {"n": 1, "pid": 2}), ("cc", {"n": 2, "pid": 2}), ("cp", {"id": 2})]
    r = db.one("SELECT koherent.revert_task('task-move')")
    assert (r["updated"], r["conflicts"]) == (3, []), r
    assert (db.sql("SELECT * FROM cp ORDER BY id"), db.sql("SELECT * FROM cc ORDER BY pid, n")) == seed
    # the children's moves back are recorded once, under the revert's context (the cascade's)
    ctx = db.one("SELECT id FROM koherent.transaction_auth_context WHERE metadata ? 'reverts'")
    assert db.sql("SELECT table_name::text, kind, row_key FROM koherent.provenance_entry WHERE context_id = %s "
                  "ORDER BY 1, 3::text", [ctx]) == [
        ("cc", "UPDATE", {"n": 1, "pid": 1}), ("cc", "UPDATE", {"n": 2, "pid": 1}), ("cp", "UPDATE", {"id": 1})]
    # a child changed since in a column the task did not change: that later work is kept
    write(db, "UPDATE cp SET id = 3 WHERE id = 1", mint("task-move2"))
    write(db, "UPDATE cc SET v = 'later' WHERE pid = 3 AND n = 2", mint("task-later"))
    r = db.one("SELECT koherent.revert_task('task-move2')")
    assert (r["updated"], r["conflicts"]) == (3, []), r
    assert db.sql("SELECT * FROM cc ORDER BY pid, n") == [(1, 1, "a"), (1, 2, "later"), (5, 1, "x")]
    # a child hidden from the reverting role by a row-level security policy: the plan's
    # not_visible (the cascade would move it all the same: foreign key actions bypass row-level
    # security), nothing written
    write(db, "UPDATE cp SET id = 4 WHERE id = 1", mint("task-move3"))
    db.sql("ALTER TABLE cc ENABLE ROW LEVEL SECURITY")
    db.sql("CREATE POLICY hide ON cc USING (n <> 2)")
    db.sql(f"GRANT SELECT, UPDATE ON cp, cc TO {APP_ROLE}")
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_task(text, boolean, text) TO {APP_ROLE}")
    with db.conn(user=APP_ROLE) as c, pytest.raises(psycopg.Error) as e:
        c.execute("SELECT koherent.revert_task('task-move3')")
    assert e.value.sqlstate == "23000" and e.value.diag.message_detail == "public.cc UPDATE (hidden): not_visible"
    assert db.sql("SELECT * FROM cc ORDER BY pid, n") == [(4, 1, "a"), (4, 2, "later"), (5, 1, "x")]


def plan_of(db, task):
    return db.sql("SELECT table_name::text, row_key, action, conflict FROM koherent.revert_plan(%s)", [task])


@pytest.mark.parametrize("path", ["typed", "row by row"])
def test_a_key_taken_by_a_concurrent_insert_while_the_revert_waits_is_key_exists(db, path):
    """The revert reinserts a row the task deleted (typed path) or moves a row back to the key
    the task moved it from (row-by-row path) while another transaction's INSERT of that key is
    not committed: the revert waits for it, and when it commits, fails as the plan's conflicts
    do (23000, key_exists in the detail, a hint to run it again), under abort and under skip;
    nothing is written. Run again, the plan shows the conflict, and skip reverts the rest."""
    db.sql("CREATE TABLE kx (id int PRIMARY KEY, v text)")
    db.sql("SELECT koherent.track('kx')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON kx TO {APP_ROLE}")
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_task(text, boolean, text) TO {APP_ROLE}")
    write(db, "INSERT INTO kx VALUES (1, 'a'), (2, 'b'), (3, 'c')", mint("task-seed"), user=APP_ROLE)
    change = "DELETE FROM kx WHERE id = 2" if path == "typed" else "UPDATE kx SET id = 20 WHERE id = 2"
    write(db, [change, "UPDATE kx SET v = 'C' WHERE id = 3"], mint("task-bad"), user=APP_ROLE)
    after = db.sql("SELECT * FROM kx ORDER BY id")
    for mode in ("abort", "skip"):
        other = db.conn(user=APP_ROLE, autocommit=False)
        other.execute("SELECT koherent.set_task(%s)", [mint("task-other")])
        other.execute("INSERT INTO kx VALUES (2, 'other')")
        result = {}

        def run():
            try:
                with db.conn(user=APP_ROLE) as c:
                    result["r"] = c.execute("SELECT koherent.revert_task('task-bad', false, %s)", [mode]).fetchone()[0]
            except psycopg.Error as e:
                result["e"] = e

        t = threading.Thread(target=run)
        t.start()
        wait_for_lock(db, "%revert_task%", t, result)
        other.commit()
        other.close()
        t.join(10)
        e = result["e"]
        assert e.sqlstate == "23000", (e.sqlstate, str(e))
        assert e.diag.message_primary == "koherent: the revert has 1 conflict(s); nothing was written"
        assert "public.kx" in e.diag.message_detail and "(id)=(2): key_exists" in e.diag.message_detail
        assert "again" in e.diag.message_hint
        assert db.sql("SELECT * FROM kx ORDER BY id") == sorted(after + [(2, "other")])
        assert db.one("SELECT count(*) FROM koherent.transaction_auth_context WHERE metadata ? 'reverts'") == 0
        write(db, "DELETE FROM kx WHERE id = 2", mint("task-cleanup"), user=APP_ROLE)
    # run again with the row there: the plan's key_exists; skip reverts the other row
    write(db, "INSERT INTO kx VALUES (2, 'other')", mint("task-other"), user=APP_ROLE)
    assert ("kx", "key_exists") in [(t, c) for t, _, _, c in plan_of(db, "task-bad")]
    r = db.one("SELECT koherent.revert_task('task-bad', false, 'skip')")
    assert r["skipped"] == 1 and r["updated"] == 1, r
    assert db.one("SELECT v FROM kx WHERE id = 3") == "c"
