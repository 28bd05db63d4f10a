"""pg_graphql (when it is installed on the machine; Debian 12's registry has none, so this is
skipped here): the README's setup and query work as written, with inflected names on koherent's
own objects."""

import json

import pytest

from conftest import mint, write

README_QUERY = """{ itemCollection(filter: {id: {eq: 1}}) { edges { node { id name
    provenance { edges { node { historyId kind taskId agentClientId
      effectiveChanges { edges { node { field oldValue newValue } } } } } } } } } }"""


def test_koherent_marks_its_schema_for_inflection(db):
    comment = db.one("SELECT obj_description('koherent'::regnamespace, 'pg_namespace')")
    assert '@graphql({"inflect_names": true})' in comment


def test_the_readme_query_works_as_written(item):
    if not item.sql("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_graphql'"):
        pytest.skip("pg_graphql is not installed on this machine (not in Debian 12's registry): "
                    "install it into this PostgreSQL to run this test")
    item.sql("CREATE EXTENSION pg_graphql")
    item.sql("""COMMENT ON SCHEMA public IS e'@graphql({"inflect_names": true})'""")
    item.sql("SELECT koherent.expose('item')")
    write(item, ["INSERT INTO item (id, name, qty) VALUES (1, 'gear', 3)", "UPDATE item SET qty = 4"],
          mint("t-gql"))
    out = item.one("SELECT graphql.resolve(%s)", [README_QUERY])
    assert "errors" not in out, out
    node = out["data"]["itemCollection"]["edges"][0]["node"]
    kinds = [e["node"]["kind"] for e in node["provenance"]["edges"]]
    assert kinds == ["CREATE", "UPDATE"] and {e["node"]["taskId"] for e in node["provenance"]["edges"]} == {"t-gql"}
    changes = node["provenance"]["edges"][1]["node"]["effectiveChanges"]["edges"]
    print(json.dumps(changes))
    assert [c["node"]["field"] for c in changes] == ["qty"]
