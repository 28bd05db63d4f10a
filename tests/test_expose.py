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
