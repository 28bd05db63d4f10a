"""pg_graphql (when it is installed on the machine; Debian 12's registry has none, so this is
skipped here): the README's setup and query work as written, with inflected names on koherent's
own objects."""

import json

import psycopg
import pytest

from conftest import mint, write

README_QUERY = """{ itemCollection(filter: {id: {eq: 1}}) { edges { node { id name
    provenance { edges { node { historyId kind taskId agentClientId task { taskId agentClientId token }
      effectiveChanges { edges { node { field oldValue newValue } } } } } } } } } }"""


def test_koherent_marks_its_schema_for_inflection(db):
    comment = db.one("SELECT obj_description('koherent'::regnamespace, 'pg_namespace')")
    assert '@graphql({"inflect_names": true})' in comment


def test_the_readme_query_works_as_written(item):
    if not item.sql("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_graphql'"):
        pytest.skip("pg_graphql is not installed on this machine (not in Debian 12's registry): "
                    "install it into this PostgreSQL to run this test")
    item.sql("CREATE EXTENSION pg_graphql")
    # the README's setup: the table's schema and koherent on the search_path (pg_graphql reflects
    # only those: koherent's view types the provenance field), names inflected
    item.sql(f"ALTER DATABASE {item.name} SET search_path = public, koherent")
    item.sql("""COMMENT ON SCHEMA public IS e'@graphql({"inflect_names": true})'""")
    item.sql("SELECT koherent.expose('item')")
    write(item, ["INSERT INTO item (id, name, qty) VALUES (1, 'gear', 3)", "UPDATE item SET qty = 4"],
          mint("t-gql"))
    out = item.one("SELECT graphql.resolve(%s)", [README_QUERY])
    assert "errors" not in out, out
    node = out["data"]["itemCollection"]["edges"][0]["node"]
    kinds = [e["node"]["kind"] for e in node["provenance"]["edges"]]
    assert kinds == ["CREATE", "UPDATE"] and {e["node"]["taskId"] for e in node["provenance"]["edges"]} == {"t-gql"}
    # the task field (a to-one relation: koherent._task returns a koherent.task_node row); the
    # signed token only for auditors (this superuser is one; the reader below is not)
    token = item.one("SELECT token FROM koherent.task WHERE task_id = 't-gql'")
    assert [e["node"]["task"] for e in node["provenance"]["edges"]] == [
        {"taskId": "t-gql", "agentClientId": "agent-client-9", "token": token}] * 2
    changes = node["provenance"]["edges"][1]["node"]["effectiveChanges"]["edges"]
    print(json.dumps(out))
    assert [c["node"] for c in changes] == [{"field": "qty", "oldValue": "3", "newValue": "4"}]
    # the values are JSON text: the string "1" and the number 1 told apart, null a null
    created = {c["node"]["field"]: c["node"] for c in node["provenance"]["edges"][0]["node"]["effectiveChanges"]["edges"]}
    assert created["name"] == {"field": "name", "oldValue": None, "newValue": '"gear"'}
    assert created["qty"] == {"field": "qty", "oldValue": None, "newValue": "3"}
    write(item, "UPDATE item SET name = '1', qty = 1", mint("t-gql-2"))
    write(item, "UPDATE item SET qty = 2")  # no task: task is null
    out = item.one("SELECT graphql.resolve(%s)", [README_QUERY])
    hist = out["data"]["itemCollection"]["edges"][0]["node"]["provenance"]["edges"]
    assert (hist[-1]["node"]["taskId"], hist[-1]["node"]["task"]) == (None, None)
    last = hist[-2]["node"]
    assert {c["node"]["field"]: json.loads(c["node"]["newValue"]) for c in last["effectiveChanges"]["edges"]} == \
        {"name": "1", "qty": 1}


def test_a_reader_sees_the_history_of_the_rows_it_may_read(item):
    """pg_graphql shows a type's fields only to a role that may SELECT its columns: the reader
    expose() grants gets provenance through koherent.provenance_entry_node (no rows, readable by
    all), the rows from <table>_provenance, only for rows row-level security lets it read."""
    if not item.sql("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_graphql'"):
        pytest.skip("pg_graphql is not installed on this machine (not in Debian 12's registry): "
                    "install it into this PostgreSQL to run this test")
    reader = f"gql_reader_{item.name[-8:]}"
    item.sql(f"CREATE ROLE {reader} LOGIN")
    try:
        item.sql("CREATE EXTENSION pg_graphql")
        item.sql(f"GRANT USAGE ON SCHEMA graphql TO {reader}")
        item.sql(f"ALTER DATABASE {item.name} SET search_path = public, koherent")
        item.sql("""COMMENT ON SCHEMA public IS e'@graphql({"inflect_names": true})'""")
        item.sql(f"SELECT koherent.expose('item', '{reader}')")
        item.sql(f"GRANT SELECT ON item TO {reader}")
        item.sql("ALTER TABLE item ENABLE ROW LEVEL SECURITY")
        item.sql(f"CREATE POLICY one ON item FOR SELECT TO {reader} USING (id = 1)")
        write(item, ["INSERT INTO item (id, name, qty) VALUES (1, 'gear', 3), (2, 'bolt', 5)",
                     "UPDATE item SET qty = qty + 1"], mint("t-gql"))
        with item.conn(user=reader) as c:
            out = c.execute("SELECT graphql.resolve(%s)", [README_QUERY.replace("(filter: {id: {eq: 1}})", "")]).fetchone()[0]
            assert "errors" not in out, out
            nodes = [e["node"] for e in out["data"]["itemCollection"]["edges"]]
            assert [n["id"] for n in nodes] == ["1"]
            hist = [e["node"] for e in nodes[0]["provenance"]["edges"]]
            assert [(h["kind"], h["taskId"], h["task"]) for h in hist] == [
                ("CREATE", "t-gql", {"taskId": "t-gql", "agentClientId": "agent-client-9", "token": None}),
                ("UPDATE", "t-gql", {"taskId": "t-gql", "agentClientId": "agent-client-9", "token": None})]
            assert [c["node"] for c in hist[1]["effectiveChanges"]["edges"]] == [
                {"field": "qty", "oldValue": "3", "newValue": "4"}]
            # the type's own collection never has a row; koherent's history itself stays unreadable
            out = c.execute("SELECT graphql.resolve('{ provenanceEntryNodeCollection { edges { node { historyId } } } }')"
                            ).fetchone()[0]
            assert out == {"data": {"provenanceEntryNodeCollection": {"edges": []}}}, out
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM koherent.provenance_entry")
    finally:
        item.sql(f"DROP OWNED BY {reader}")
        item.sql(f"DROP ROLE {reader}")
