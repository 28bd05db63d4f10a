"""Issue 5 (SQL side): expose, task_changes, index lookups; and the koherent CLI against joserfc."""

import json
import os
import re
import subprocess
import time

import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from conftest import APP_ROLE, ROOT, TEST_KEY, mint

CLI = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))
KEY_FILE = os.path.join(ROOT, "tests/fixtures/test-key.private.jwk")


def write_as(db, token, stmt):
    with db.conn(autocommit=False) as c:
        if token:
            c.execute("SELECT koherent.set_task(%s)", [token])
        c.execute(stmt)
        c.commit()


def test_expose_creates_the_graphql_functions(item):
    item.sql("SELECT koherent.expose('item')")
    item.sql("SELECT koherent.expose('item')")  # idempotent
    write_as(item, mint("t-1"), "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)")
    write_as(item, mint("t-2"), "UPDATE item SET qty = 10 WHERE id = 1")
    write_as(item, None, "DELETE FROM item WHERE id = 2")
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
    write_as(item, None, "INSERT INTO item (id) VALUES (1)")
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


def test_task_changes_with_subtasks(item):
    item.sql("CREATE TABLE other (k text PRIMARY KEY)")
    item.sql("SELECT koherent.track('other')")
    write_as(item, mint("root"), "INSERT INTO item (id) VALUES (1)")
    write_as(item, mint("child", ptk="root", rtk="root"), "INSERT INTO other VALUES ('a')")
    write_as(item, mint("grandchild", ptk="child", rtk="root"), "UPDATE item SET qty = 3")
    write_as(item, mint("unrelated"), "INSERT INTO item (id) VALUES (2)")
    assert item.sql("SELECT table_name::text, kind FROM koherent.task_changes('root')") == [("item", "CREATE")]
    assert item.sql("SELECT task_id, table_name::text, kind FROM koherent.task_changes('root', include_subtasks => true)") == [
        ("root", "item", "CREATE"), ("child", "other", "CREATE"), ("grandchild", "item", "UPDATE")]
    assert item.sql("SELECT task_id FROM koherent.task_changes('child', true)") == [("child",), ("grandchild",)]
    assert item.sql("SELECT * FROM koherent.task_changes('nope')") == []


def plan(db, query):
    return "\n".join(r[0] for r in db.sql("EXPLAIN (COSTS OFF) " + query))


def test_row_provenance_and_task_changes_are_index_lookups(item):
    item.sql("SELECT koherent.expose('item')")
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 200000) g")
    item.sql("UPDATE item SET qty = 1 WHERE id % 2 = 0")
    write_as(item, mint("needle"), "UPDATE item SET qty = 7 WHERE id = 4242")
    item.sql("ANALYZE koherent_history.item; ANALYZE koherent.transaction_auth_context")
    p = plan(item, "SELECT * FROM item_provenance(ROW(4242, null, null, null, null, null)::item)")
    # the function is inlined only when not SECURITY DEFINER; look at its body's plan instead
    body = plan(item, "SELECT * FROM koherent_history.item h WHERE h.id = 4242")
    assert "Index" in body and "Seq Scan" not in body, body
    ctx = item.one("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'needle'")
    tc = plan(item, f"SELECT * FROM koherent_history.item h WHERE h.history_context = ANY (ARRAY['{ctx}']::uuid[])")
    assert "Bitmap Index Scan on item_history_id_history_context_idx" in tc and "Seq Scan" not in tc, tc
    # The writer does not summarize BRIN ranges (no VACUUM ran here either): a lookup straight
    # after the writes reads the whole unsummarized table, with the right answer. task_changes
    # summarizes the complete ranges first; from then on the lookup reads one 8-page range (plus
    # at most the range still being filled), not the ~5000-page table.
    def lossy():
        analyzed = "\n".join(r[0] for r in item.sql(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM koherent_history.item h "
            f"WHERE h.history_context = ANY (ARRAY['{ctx}']::uuid[])"))
        assert "(actual rows=1 " in analyzed, analyzed
        return int(re.search(r"Heap Blocks: lossy=(\d+)", analyzed).group(1)), analyzed

    assert lossy()[0] > 3000
    with item.conn(autocommit=False) as c:  # a read-only transaction reads, summarizes nothing
        c.execute("SET TRANSACTION READ ONLY")
        assert c.execute("SELECT count(*) FROM koherent.task_changes('needle')").fetchone()[0] == 1
    assert lossy()[0] > 3000
    assert item.one("SELECT count(*) FROM koherent.task_changes('needle')") == 1
    blocks, analyzed = lossy()
    assert 0 < blocks <= 48, analyzed
    assert item.one("SELECT pg_relation_size('koherent_history.item') / 8192") > 3000
    # rows written after the summaries: found, and summarized by the next reader
    write_as(item, mint("needle-2"), "INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(300001, 330000) g")
    assert item.one("SELECT count(*) FROM koherent.task_changes('needle-2')") == 30000
    assert lossy()[0] <= 48
    # by hand, for one history table (what task_changes calls for each)
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(400001, 430000) g")
    assert lossy()[0] > 48
    item.sql("SELECT koherent._summarize('koherent_history.item'::regclass::oid)")
    assert lossy()[0] <= 48
    assert item.one("SELECT count(*) FROM koherent.task_changes('needle')") == 1
    assert item.sql("SELECT kind FROM item_provenance((SELECT i FROM item i WHERE id = 4242))") == [
        ("CREATE",), ("UPDATE",), ("UPDATE",)]
    assert p  # the statement plans


def test_cli_tokens_verify_with_joserfc_and_back(tmp_path):
    token = subprocess.run([CLI, "mint", "--key", KEY_FILE, "--tsk", "cli-task", "--args", '{"x": 1}'],
                           capture_output=True, text=True, check=True).stdout.strip()
    decoded = jwt.decode(token, TEST_KEY, algorithms=["Ed25519"])
    assert decoded.header == {"alg": "Ed25519", "kid": "koherent-test-key", "typ": "JWT"}
    assert decoded.claims["tsk"] == "cli-task"
    assert decoded.claims["ahs"] == "5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22"
    jwks = subprocess.run([CLI, "jwks", "--key", KEY_FILE], capture_output=True, text=True, check=True).stdout
    assert json.loads(jwks)["keys"][0]["x"] == "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4"
    (tmp_path / "jwks.json").write_text(jwks)
    joserfc_token = mint("from-joserfc")
    out = subprocess.run([CLI, "verify", "--jwks", str(tmp_path / "jwks.json"), "--iss", "rekuest",
                          "--token", joserfc_token], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["tsk"] == "from-joserfc"
    expired = mint("old", exp=int(time.time()) - 10)
    out = subprocess.run([CLI, "verify", "--jwks", str(tmp_path / "jwks.json"), "--iss", "rekuest",
                          "--token", expired], capture_output=True, text=True)
    assert out.returncode == 1 and "reason: expired" in out.stderr
    keys = json.loads(subprocess.run([CLI, "keygen", "--kid", "fresh"], capture_output=True, text=True,
                                     check=True).stdout)
    assert keys["public_jwk"]["kid"] == "fresh" and keys["public_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    fresh = OKPKey.import_key(keys["private_jwk"])
    assert fresh.as_dict(private=False)["x"] == keys["public_jwk"]["x"]
    assert KeySet.import_key_set({"keys": [keys["public_jwk"]]}).keys[0].kid == "fresh"


def test_rows_written_into_summarized_ranges_are_found(item):
    # History is append-only, but free space in early pages (here: made by hand) sends new
    # history tuples into block ranges that are already summarized; their summaries must then
    # take the new values, or a BRIN lookup would miss them.
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 5000) g")
    item.sql("DELETE FROM koherent_history.item WHERE id <= 1000")
    item.sql("VACUUM koherent_history.item")
    write_as(item, mint("late"), "INSERT INTO item (id, qty) SELECT g, 1 FROM generate_series(10001, 10300) g")
    ctx = item.one("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'late'")
    blocks = item.one("SELECT max((ctid::text::point)[0])::int FROM koherent_history.item "
                      "WHERE history_context = %s", [ctx])
    assert blocks < 8, "the new rows did not land in the first (summarized) ranges"
    with item.conn() as c:
        c.execute("SET enable_seqscan = off")
        q = f"SELECT count(*) FROM koherent_history.item WHERE history_context = '{ctx}'"
        plan = "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + q).fetchall())
        assert "Bitmap Index Scan" in plan, plan
        assert c.execute(q).fetchone()[0] == 300
    assert item.one("SELECT count(*) FROM koherent.task_changes('late')") == 300
