"""expose() and unexpose(): the functions a GraphQL layer reads (<table>_provenance,
<table>_by_provenance, _provenance, an entry's effective changes and task), their comments, who
may execute them, and the tables expose() refuses."""

import psycopg
import pytest

from conftest import APP_ROLE, mint, write


def test_expose_creates_the_graphql_functions(item):
    item.sql("SELECT koherent.expose('item')")
    item.sql("SELECT koherent.expose('item')")  # idempotent
    write(item, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("t-1"))
    write(item, "UPDATE item SET qty = 10 WHERE id = 1", mint("t-2"))
    write(item, "DELETE FROM item WHERE id = 2")
    rows = item.sql("SELECT kind, task_id FROM item_provenance((SELECT i FROM item i WHERE id = 1))")
    assert rows == [("CREATE", "t-1"), ("UPDATE", "t-2")]
    assert item.sql("SELECT kind FROM _provenance((SELECT i FROM item i WHERE id = 1))") == [("CREATE",), ("UPDATE",)]
    assert item.sql("SELECT id FROM item_by_provenance(task_id => 't-1')") == [(1,)]
    assert item.sql("SELECT id FROM item_by_provenance(task_id => 't-1', kind => 'UPDATE')") == []
    assert item.sql("SELECT id FROM item_by_provenance(task_id => 't-2', kind => 'UPDATE', "
                    "changed_since => now() - interval '1 hour', changed_before => now() + interval '1 hour')") == [(1,)]
    assert item.sql("SELECT id FROM item_by_provenance(agent_client_id => 'agent-client-9', "
                    "changed_by => 'agent-user-3', issuer => 'rekuest') ORDER BY 1") == [(1,)]
    entry = "(SELECT e FROM item_provenance((SELECT i FROM item i WHERE id = 1)) e OFFSET 1)"
    assert item.sql(f"SELECT field, old_value, new_value FROM koherent.provenance_entry_effective_changes({entry})") == [
        ("qty", 1, 10)]
    assert item.one(f"SELECT (koherent.provenance_entry_task({entry})).task_id") == "t-2"
    comments = item.sql("SELECT p.proname, obj_description(p.oid) FROM pg_proc p WHERE p.proname IN "
                        "('item_provenance', 'item_by_provenance', '_provenance') ORDER BY 1")
    assert [c[0] for c in comments] == ["_provenance", "item_by_provenance", "item_provenance"]
    assert comments[0][1] == "@omit" and comments[1][1].startswith("koherent:")
    assert "primary_key_columns" in item.one("SELECT obj_description('koherent.provenance_entry'::regclass)")
    item.sql("SELECT koherent.unexpose('item')")
    assert item.one("SELECT count(*) FROM pg_proc WHERE proname IN ('item_provenance', 'item_by_provenance')") == 0


def test_exposed_history_is_readable_only_when_granted(item):
    item.sql("SELECT koherent.expose('item')")
    write(item, "INSERT INTO item (id) VALUES (1)")
    with item.app() as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM item_provenance((SELECT i FROM item i WHERE id = 1))")
        assert e.value.sqlstate == "42501"
    item.sql(f"SELECT koherent.expose('item', '{APP_ROLE}')")
    with item.app() as c:
        assert c.execute("SELECT kind FROM item_provenance((SELECT i FROM item i WHERE id = 1))").fetchall() == [("CREATE",)]
        assert c.execute("SELECT id FROM item_by_provenance(kind => 'CREATE')").fetchall() == [(1,)]


def test_expose_refuses_untracked(db):
    db.sql("CREATE TABLE loose (id int PRIMARY KEY)")
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.expose('loose')")
    assert e.value.sqlstate == "55000"


def test_graphql_types_live_in_koherent_graphql(item):
    """The types PostGraphile sees are koherent_graphql's (no extension member: its defaults show
    them), owned by koherent's owner, with the readers' checks behind their computed columns."""
    item.sql(f"SELECT koherent.expose('item', '{APP_ROLE}')")
    assert item.sql("SELECT pg_get_function_result('item_provenance(item)'::regprocedure)") == [
        ("SETOF koherent_graphql.provenance_entry",)]
    members = item.one("SELECT count(*) FROM pg_depend d JOIN pg_namespace n ON d.objid = n.oid "
                       "WHERE d.classid = 'pg_namespace'::regclass AND n.nspname = 'koherent_graphql' AND d.deptype = 'e'")
    assert members == 0
    owners = item.sql("SELECT DISTINCT pg_get_userbyid(t.typowner) FROM pg_type t "
                      "WHERE t.typnamespace = 'koherent_graphql'::regnamespace AND t.typtype = 'c' "
                      "UNION SELECT pg_get_userbyid(p.proowner) FROM pg_proc p "
                      "WHERE p.pronamespace = 'koherent_graphql'::regnamespace")
    assert owners == [("postgres",)]
    write(item, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("t-gql"))
    write(item, "UPDATE item SET qty = 5 WHERE id = 1")
    item.sql(f"CREATE POLICY only_one ON item FOR SELECT TO {APP_ROLE} USING (id = 1)")
    item.sql("ALTER TABLE item ENABLE ROW LEVEL SECURITY")
    with item.app() as c:
        entries = "(SELECT e FROM item_provenance((SELECT i FROM item i WHERE id = 1)) e ORDER BY history_id"
        assert c.execute(f"SELECT (koherent_graphql.provenance_entry_task(e)).task_id, "
                         f"(SELECT array_agg(ARRAY[x.field, x.old_value::text, x.new_value::text] ORDER BY x.field) "
                         f"   FROM koherent_graphql.provenance_entry_effective_changes(e) x) "
                         f"FROM {entries}) s(e)").fetchall() == [
            ("t-gql", [["id", None, "1"], ["name", None, None], ["note", None, None], ["price", None, None],
                       ["qty", None, "1"], ["updated", None, '"2026-01-01T00:00:00+00:00"']]),
            (None, [["qty", "1", "5"]])]
        # a made-up entry of row 2 (which the role may not read) gets nothing
        forged = c.execute("SELECT task_id FROM koherent_graphql.provenance_entry_task(NULL)").fetchall()
        assert forged == [(None,)]
        other = item.one("SELECT max(history_id) FROM koherent_history.item WHERE id = 2")
        fake = (f"ROW({other}, 'item'::regclass, NULL, 'CREATE', now(), NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
                f"NULL, NULL, NULL, NULL)::koherent_graphql.provenance_entry")
        assert c.execute(f"SELECT koherent_graphql.provenance_entry_task({fake}) IS NULL, "
                         f"(SELECT count(*) FROM koherent_graphql.provenance_entry_effective_changes({fake}))"
                         ).fetchall() == [(True, 0)]
        # and nobody but koherent's owner creates in that schema
        with pytest.raises(psycopg.Error) as e:
            c.execute("CREATE FUNCTION koherent_graphql.provenance_entry_x(e koherent_graphql.provenance_entry) "
                      "RETURNS text LANGUAGE sql AS 'SELECT ''forged'''")
        assert e.value.sqlstate == "42501"


def test_expose_refuses_a_koherent_graphql_schema_of_someone_else(item):
    """A role that may create schemas could make koherent_graphql first and put its own
    provenance_entry_task there (a forged task shown to every GraphQL reader): expose() refuses
    to use a schema it does not own, and creates nothing."""
    item.sql(f"GRANT CREATE ON DATABASE {item.name} TO {APP_ROLE}")
    with item.app() as c:
        c.execute("CREATE SCHEMA koherent_graphql")
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.expose('item')")
    assert e.value.sqlstate == "42501"
    assert "koherent_graphql belongs to role" in e.value.diag.message_primary
    assert item.one("SELECT count(*) FROM pg_proc WHERE proname IN ('item_provenance', '_provenance', 'item_by_provenance')") == 0


def test_expose_remakes_a_provenance_function_of_an_earlier_release(item):
    """Before 0.7.0, <table>_provenance returned koherent.provenance_entry (the extension's view,
    hidden from PostGraphile's defaults): expose() makes it again with koherent_graphql's type and
    keeps the grants it had."""
    item.sql("CREATE ROLE koherent_old_reader")
    try:
        item.sql("CREATE FUNCTION item_provenance(rec item) RETURNS SETOF koherent.provenance_entry "
                 "LANGUAGE sql STABLE SECURITY DEFINER AS 'SELECT * FROM koherent.provenance_entry WHERE false'")
        item.sql("GRANT EXECUTE ON FUNCTION item_provenance(item) TO koherent_old_reader WITH GRANT OPTION")
        item.sql("SELECT koherent.expose('item')")
        assert item.one("SELECT pg_get_function_result('item_provenance(item)'::regprocedure)") == \
            "SETOF koherent_graphql.provenance_entry"
        assert item.one("SELECT has_function_privilege('koherent_old_reader', 'item_provenance(item)', "
                        "'EXECUTE WITH GRANT OPTION')")
        assert item.one("SELECT has_function_privilege('koherent_old_reader', "
                        "'koherent_graphql.provenance_entry_task(koherent_graphql.provenance_entry)', 'EXECUTE')")
        write(item, "INSERT INTO item (id) VALUES (1)", mint("t-old"))
        assert item.sql("SELECT kind, task_id FROM item_provenance((SELECT i FROM item i))") == [("CREATE", "t-old")]
    finally:
        item.sql("DROP OWNED BY koherent_old_reader")
        item.sql("DROP ROLE koherent_old_reader")


def test_expose_does_not_take_over_a_function_another_role_made(item):
    """A role with CREATE on the table's schema makes item_provenance(item) first (any return
    type) and grants it to a role of its own: expose() refuses (42501) instead of replacing it
    and copying those grants onto koherent's reader."""
    item.sql(f"GRANT SELECT ON item TO {APP_ROLE}")
    with item.app() as c:
        c.execute("CREATE FUNCTION item_provenance(rec item) RETURNS int LANGUAGE sql AS 'SELECT 1'")
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.expose('item')")
    assert e.value.sqlstate == "42501"
    assert "belongs to role" in e.value.diag.message_primary
    assert item.one("SELECT pg_get_function_result('item_provenance(item)'::regprocedure)") == "integer"
    assert item.one("SELECT count(*) FROM pg_proc WHERE proname IN ('_provenance', 'item_by_provenance')") == 0
    # the same for the other names expose() makes
    item.sql("DROP FUNCTION item_provenance(item)")
    with item.app() as c:
        c.execute("CREATE FUNCTION item_as_of(at timestamptz) RETURNS SETOF item LANGUAGE sql AS 'SELECT * FROM item'")
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.expose('item')")
    assert e.value.sqlstate == "42501"
    with item.app() as c:
        c.execute("DROP FUNCTION item_as_of(timestamptz)")
    item.sql("SELECT koherent.expose('item')")
    assert item.one("SELECT pg_get_function_result('item_provenance(item)'::regprocedure)") == \
        "SETOF koherent_graphql.provenance_entry"


def test_koherent_graphql_takes_no_one_elses_objects(item):
    """Default privileges that give others CREATE on new schemas are taken back when expose()
    makes koherent_graphql; CREATE granted later, or an object of another role in it, makes
    expose() refuse (42501)."""
    item.sql(f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE, CREATE ON SCHEMAS TO {APP_ROLE}")
    try:
        item.sql("SELECT koherent.expose('item')")
    finally:
        item.sql(f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE USAGE, CREATE ON SCHEMAS FROM {APP_ROLE}")
    assert item.one(f"SELECT has_schema_privilege('{APP_ROLE}', 'koherent_graphql', 'CREATE')") is False
    assert item.one("SELECT has_schema_privilege('public', 'koherent_graphql', 'USAGE')") is True
    item.sql(f"GRANT CREATE ON SCHEMA koherent_graphql TO {APP_ROLE}")
    with item.app() as c:
        c.execute("CREATE FUNCTION koherent_graphql.provenance_entry_verified_by(e koherent_graphql.provenance_entry) "
                  "RETURNS text LANGUAGE sql STABLE AS $$SELECT 'security-team (signed)'$$")
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.expose('item')")
    assert e.value.sqlstate == "42501" and APP_ROLE in e.value.diag.message_primary
    item.sql(f"REVOKE CREATE ON SCHEMA koherent_graphql FROM {APP_ROLE}")
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.expose('item')")
    assert e.value.sqlstate == "42501"
    assert "provenance_entry_verified_by" in e.value.diag.message_primary
    item.sql("DROP FUNCTION koherent_graphql.provenance_entry_verified_by(koherent_graphql.provenance_entry)")
    item.sql("SELECT koherent.expose('item')")


def test_drop_extension_cascade_takes_the_exposed_readers_along(item):
    """The readers expose() made run with koherent's rights: DROP EXTENSION koherent CASCADE
    drops them (through koherent_graphql.provenance_entry, a view over koherent's),
    so no reader outlives the extension to read a later install's history."""
    item.sql(f"SELECT koherent.expose('item', '{APP_ROLE}')")
    with pytest.raises(psycopg.Error) as e:
        item.sql("DROP EXTENSION koherent")
    assert e.value.sqlstate == "2BP01"
    item.sql("DROP EXTENSION koherent CASCADE")
    assert item.one("SELECT count(*) FROM pg_proc WHERE proname IN ('item_provenance', '_provenance')") == 0
    assert item.one("SELECT count(*) FROM pg_proc WHERE pronamespace = 'koherent_graphql'::regnamespace") == 0
    item.sql("CREATE EXTENSION koherent")
    item.sql("SELECT koherent.track('item')")
    item.sql(f"SELECT koherent.expose('item', '{APP_ROLE}')")
    write(item, "INSERT INTO item (id) VALUES (1)")
    with item.app() as c:
        assert c.execute("SELECT kind FROM item_provenance((SELECT i FROM item i))").fetchall() == [("CREATE",)]


def test_concurrent_first_exposes_wait_for_each_other(item):
    import threading

    item.sql("CREATE TABLE other (id int PRIMARY KEY)")
    item.sql("SELECT koherent.track('other')")
    errors = []

    def expose(t):
        try:
            with item.conn() as c:
                c.execute(f"SELECT koherent.expose('{t}')")
        except psycopg.Error as ex:  # pragma: no cover - the failure this test is about
            errors.append(ex)

    for _ in range(3):
        item.sql("DROP SCHEMA IF EXISTS koherent_graphql CASCADE")
        threads = [threading.Thread(target=expose, args=(t,)) for t in ("item", "other")]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert item.one("SELECT count(*) FROM pg_proc WHERE proname IN ('item_provenance', 'other_provenance')") == 2
