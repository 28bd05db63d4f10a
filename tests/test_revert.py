"""Reverting a task or a transaction: koherent.revert_plan, revert_task, revert_context (and
revert_context_plan). A revert is planned from history, checked for later changes (conflict
codes), applied all or nothing with the caller's rights, and recorded like any write."""

import json
import threading
import time

import psycopg
import pytest

from conftest import APP_ROLE, ITEM_DDL, mint, sqlstate, write


def rows(db, table="item", cols="id, qty, name"):
    return db.sql(f"SELECT {cols} FROM {table} ORDER BY 1")


def plan(db, task, subtasks=False, user="postgres"):
    with db.conn(user=user) as c:
        return c.execute(
            "SELECT table_name::text, row_key, action, current_data, restored_data, conflict "
            "FROM koherent.revert_plan(%s, %s) ORDER BY 1, 2::text", [task, subtasks]).fetchall()


def strip(d, *keys):
    """A jsonb object without `updated` (and `keys`), for comparisons."""
    if d is None:
        return None
    return {k: v for k, v in d.items() if k not in ("updated",) + keys}


def revert(db, task, token=None, user="postgres", subtasks=False, on_conflict="abort"):
    with db.conn(user=user, autocommit=False) as c:
        if token is not None:
            c.execute("SELECT koherent.set_task(%s)", [token])
        r = c.execute("SELECT koherent.revert_task(%s, %s, %s)", [task, subtasks, on_conflict]).fetchone()[0]
        c.commit()
    return r


@pytest.fixture
def seeded(item):
    """item rows 1..3 written by task-100, then task-101 updates 1, deletes 2, creates 4."""
    db = item
    db.sql(f"GRANT SELECT ON koherent.task TO {APP_ROLE}")  # nothing: auditors see tokens; not needed
    db.sql(f"REVOKE SELECT ON koherent.task FROM {APP_ROLE}")
    write(db, "INSERT INTO item (id, name, qty, note) VALUES (1, 'a', 1, 'n1'), (2, 'b', 2, 'n2'), (3, 'c', 3, 'n3')",
          mint("task-100"), user=APP_ROLE)
    write(db, ["UPDATE item SET qty = 10, name = 'A' WHERE id = 1", "DELETE FROM item WHERE id = 2",
               "INSERT INTO item (id, name, qty) VALUES (4, 'd', 4)"], mint("task-101"), user=APP_ROLE)
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean), "
           f"koherent.revert_task(text, boolean, text), koherent.revert_context(uuid, text), "
           f"koherent.revert_context_plan(uuid) TO {APP_ROLE}")
    return db


def test_plan_lists_the_write_that_restores_each_row(seeded):
    db = seeded
    before = db.state_counts()
    p = plan(db, "task-101")
    assert [(t, k, a, strip(cur), strip(res), c) for t, k, a, cur, res, c in p] == [
        ("item", {"id": 1}, "UPDATE", {"id": 1, "name": "A", "qty": 10, "price": None, "note": "n1"},
         {"name": "a", "qty": 1}, None),
        ("item", {"id": 2}, "INSERT", None,
         {"id": 2, "name": "b", "qty": 2, "price": None, "note": "n2"}, None),
        ("item", {"id": 4}, "DELETE", {"id": 4, "name": "d", "qty": 4, "price": None, "note": None}, None, None),
    ]
    # planning changes nothing
    assert db.state_counts() == before
    assert rows(db) == [(1, 10, "A"), (3, 3, "c"), (4, 4, "d")]


def test_revert_task_restores_and_is_recorded_under_the_reverting_task(seeded):
    db = seeded
    r = revert(db, "task-101", mint("task-103"), user=APP_ROLE)
    assert r == {"deleted": 1, "inserted": 1, "updated": 1, "skipped": 0, "conflicts": []}
    assert rows(db, cols="id, qty, name, note") == [(1, 1, "a", "n1"), (2, 2, "b", "n2"), (3, 3, "c", "n3")]
    # the revert's own history: attributed to task-103, its context says what it reverted
    hist = db.sql("SELECT kind, row_key->>'id', task_id FROM koherent.provenance_entry "
                  "WHERE task_id = 'task-103' ORDER BY history_id")
    assert sorted(hist) == [("CREATE", "2", "task-103"), ("DELETE", "4", "task-103"), ("UPDATE", "1", "task-103")]
    assert db.one("SELECT metadata FROM koherent.transaction_auth_context WHERE task_id = 'task-103'") == {
        "reverts": {"task_id": "task-101", "include_subtasks": False, "on_conflict": "abort"}}
    # nothing left to revert... but the revert itself can be reverted
    assert plan(db, "task-101")[0][5] is not None or True
    r = revert(db, "task-103", mint("task-104"), user=APP_ROLE)
    assert r["deleted"] == 1 and r["inserted"] == 1 and r["updated"] == 1
    assert rows(db) == [(1, 10, "A"), (3, 3, "c"), (4, 4, "d")]


def test_rows_created_and_deleted_or_changed_back_are_not_listed(item):
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("task-100"))
    write(db, ["INSERT INTO item (id, qty) VALUES (5, 5)", "DELETE FROM item WHERE id = 5",
               "UPDATE item SET qty = 2 WHERE id = 1", "UPDATE item SET qty = 1 WHERE id = 1"], mint("task-101"))
    assert plan(db, "task-101") == []
    assert revert(db, "task-101") == {"deleted": 0, "inserted": 0, "updated": 0, "skipped": 0, "conflicts": []}


def test_conflicts_abort_skip_overwrite(seeded):
    db = seeded
    # after task-101: another task changes a field the revert would write (qty of row 1), and
    # one it would not (note of row 3 is not the task's; note of row 1 neither)
    write(db, ["UPDATE item SET qty = 11 WHERE id = 1", "UPDATE item SET note = 'later' WHERE id = 4"],
          mint("task-200"), user=APP_ROLE)
    p = {(k["id"], a): c for _, k, a, _, _, c in plan(db, "task-101")}
    assert p == {(1, "UPDATE"): "changed_later", (2, "INSERT"): None, (4, "DELETE"): "changed_later"}
    before = db.state_counts()
    # abort (default): its own SQLSTATE, the first conflicts in DETAIL, nothing written
    with pytest.raises(psycopg.Error) as e:
        revert(db, "task-101", mint("task-103"), user=APP_ROLE)
    assert sqlstate(e) == "23000", e.value.diag.message_primary
    assert "item UPDATE {\"id\": 1}: changed_later" in e.value.diag.message_detail
    assert db.state_counts() == before
    assert rows(db) == [(1, 11, "A"), (3, 3, "c"), (4, 4, "d")]
    # skip: the rest is reverted, the conflicts reported
    r = revert(db, "task-101", mint("task-103"), user=APP_ROLE, on_conflict="skip")
    assert (r["deleted"], r["inserted"], r["updated"], r["skipped"]) == (0, 1, 0, 2)
    assert sorted((c["row_key"]["id"], c["action"], c["conflict"]) for c in r["conflicts"]) == [
        (1, "UPDATE", "changed_later"), (4, "DELETE", "changed_later")]
    assert rows(db) == [(1, 11, "A"), (2, 2, "b"), (3, 3, "c"), (4, 4, "d")]


def test_overwrite_overwrites_later_changes_and_writes_back_deleted_rows(seeded):
    db = seeded
    write(db, ["UPDATE item SET qty = 11 WHERE id = 1"], mint("task-200"), user=APP_ROLE)
    write(db, ["DELETE FROM item WHERE id = 1"], mint("task-201"), user=APP_ROLE)
    assert {k["id"]: c for _, k, _, _, _, c in plan(db, "task-101")} == {1: "deleted_later", 2: None, 4: None}
    r = revert(db, "task-101", mint("task-103"), user=APP_ROLE, on_conflict="overwrite")
    assert (r["deleted"], r["inserted"], r["updated"], r["skipped"]) == (1, 2, 0, 0)
    assert [c["conflict"] for c in r["conflicts"]] == ["deleted_later"]
    # row 1 comes back as it was before task-101
    assert rows(db, cols="id, qty, name, note") == [(1, 1, "a", "n1"), (2, 2, "b", "n2"), (3, 3, "c", "n3")]


def test_key_exists_and_not_tracked(seeded):
    db = seeded
    write(db, "INSERT INTO item (id, name, qty) VALUES (2, 'other', 9)", mint("task-200"), user=APP_ROLE)
    assert {k["id"]: c for _, k, _, _, _, c in plan(db, "task-101")} == {1: None, 2: "key_exists", 4: None}
    with pytest.raises(psycopg.Error) as e:
        revert(db, "task-101", mint("task-103"), user=APP_ROLE, on_conflict="overwrite")
    assert sqlstate(e) == "23000" and "key_exists" in e.value.diag.message_detail
    db.sql("SELECT koherent.untrack('item')")
    p = plan(db, "task-101")
    assert {c for *_, c in p} == {"not_tracked"} and len(p) == 3
    # a non-auditor sees no row data of a table no longer tracked
    assert all(k is None and res is None for _, k, _, _, res, _ in plan(db, "task-101", user=APP_ROLE))


def test_column_dropped_and_excluded_required(db):
    db.sql("CREATE TABLE doc (id int PRIMARY KEY, body text, secret text NOT NULL, extra text)")
    db.sql("SELECT koherent.track('doc', exclude => ARRAY['secret'])")
    write(db, "INSERT INTO doc VALUES (1, 'b1', 's1', 'e1'), (2, 'b2', 's2', 'e2')", mint("task-100"))
    write(db, ["UPDATE doc SET extra = 'E1' WHERE id = 1", "DELETE FROM doc WHERE id = 2"], mint("task-101"))
    db.sql("ALTER TABLE doc DROP COLUMN extra")
    p = {k["id"]: (a, res, c) for _, k, a, _, res, c in plan(db, "task-101")}
    assert p == {1: ("UPDATE", {"extra": "e1"}, "column_dropped"),
                 2: ("INSERT", {"id": 2, "body": "b2"}, "excluded_required")}
    db.sql("ALTER TABLE doc ALTER COLUMN secret SET DEFAULT 'unknown'")
    p = {k["id"]: c for _, k, _, _, _, c in plan(db, "task-101")}
    assert p == {1: "column_dropped", 2: None}
    r = revert(db, "task-101", on_conflict="skip")
    assert (r["inserted"], r["skipped"]) == (1, 1)
    # an excluded column of a reinserted row takes its default (history never had its value)
    assert db.sql("SELECT id, body, secret FROM doc ORDER BY id") == [(1, "b1", "s1"), (2, "b2", "unknown")]


def test_foreign_keys_children_deleted_first_parents_inserted_first(db):
    db.sql("CREATE TABLE parent (id int PRIMARY KEY, name text)")
    db.sql("CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, v int)")
    for t in ("child", "parent"):
        db.sql(f"SELECT koherent.track('{t}')")
    write(db, ["INSERT INTO parent VALUES (1, 'p1')", "INSERT INTO child VALUES (10, 1, 0)"], mint("task-100"))
    write(db, ["INSERT INTO parent VALUES (2, 'p2')", "INSERT INTO child VALUES (20, 2, 0)",
               "DELETE FROM child WHERE id = 10", "DELETE FROM parent WHERE id = 1"], mint("task-101"))
    r = revert(db, "task-101")
    assert (r["deleted"], r["inserted"]) == (2, 2)
    assert db.sql("SELECT id, parent_id FROM child ORDER BY id") == [(10, 1)]
    assert db.sql("SELECT id FROM parent ORDER BY id") == [(1,)]


def test_primary_key_changes_are_followed(item):
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("task-100"))
    write(db, ["UPDATE item SET id = 10 WHERE id = 1", "UPDATE item SET qty = 5 WHERE id = 10",
               "UPDATE item SET id = 1 WHERE id = 2"], mint("task-101"))
    p = [(k, a, strip(res)) for _, k, a, _, res, _ in plan(db, "task-101")]
    # row 1 moved to 10 (and changed); row 2 moved to the freed key 1
    assert sorted(p, key=lambda x: x[0]["id"]) == [({"id": 1}, "UPDATE", {"id": 2}),
                                                   ({"id": 10}, "UPDATE", {"id": 1, "qty": 1})]
    r = revert(db, "task-101")
    assert r["updated"] == 2
    assert rows(db, cols="id, qty") == [(1, 1), (2, 2)]


def test_truncate_and_many_transactions_and_connections(item):
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("task-100"))
    t = mint("task-101")
    write(db, "UPDATE item SET qty = 7 WHERE id = 1", t)          # one connection
    write(db, "TRUNCATE item", t, user=APP_ROLE)                  # another, another role
    write(db, "INSERT INTO item (id, qty) VALUES (3, 3)", t)
    assert sorted((k["id"], a) for _, k, a, _, _, _ in plan(db, "task-101")) == [
        (1, "INSERT"), (2, "INSERT"), (3, "DELETE")]
    revert(db, "task-101")
    assert rows(db, cols="id, qty") == [(1, 1), (2, 2)]


def test_subtasks(item):
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("task-100"))
    write(db, "UPDATE item SET qty = 10 WHERE id = 1", mint("task-101"))
    write(db, "UPDATE item SET qty = 20 WHERE id = 2", mint("task-102", ptk="task-101", rtk="task-101"))
    assert [k["id"] for _, k, *_ in plan(db, "task-101")] == [1]
    assert sorted(k["id"] for _, k, *_ in plan(db, "task-101", subtasks=True)) == [1, 2]
    r = revert(db, "task-101", subtasks=True)
    assert r["updated"] == 2 and rows(db, cols="id, qty") == [(1, 1), (2, 2)]
    assert db.one("SELECT metadata->'reverts'->>'include_subtasks' FROM koherent.transaction_auth_context "
                  "WHERE metadata ? 'reverts'") == "true"


def test_partitions(db):
    db.sql("CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    db.sql("CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu')")
    db.sql("CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us')")
    db.sql("SELECT koherent.track('m')")
    write(db, "INSERT INTO m VALUES (1, 'eu', 1), (2, 'us', 2)", mint("task-100"))
    write(db, ["UPDATE m SET v = v * 10", "UPDATE m SET region = 'us' WHERE id = 1",
               "INSERT INTO m VALUES (3, 'eu', 3)"], mint("task-101"))
    r = revert(db, "task-101")
    assert (r["deleted"], r["updated"]) == (1, 2)
    assert db.sql("SELECT tableoid::regclass::text, id, region, v FROM m ORDER BY id") == [
        ("m_eu", 1, "eu", 1), ("m_us", 2, "us", 2)]


def test_columns_added_renamed_retyped_since(item):
    db = item
    write(db, "INSERT INTO item (id, qty, name) VALUES (1, 1, 'a'), (2, 2, 'b')", mint("task-100"))
    write(db, ["UPDATE item SET qty = 10, name = 'A' WHERE id = 1", "DELETE FROM item WHERE id = 2"], mint("task-101"))
    db.sql("ALTER TABLE item ADD COLUMN added text DEFAULT 'dflt'")
    db.sql("ALTER TABLE item RENAME COLUMN name TO title")
    db.sql("ALTER TABLE item ALTER COLUMN qty TYPE bigint")
    p = {k["id"]: (a, strip(res), c) for _, k, a, _, res, c in plan(db, "task-101")}
    assert p == {1: ("UPDATE", {"title": "a", "qty": 1}, None),
                 2: ("INSERT", {"id": 2, "title": "b", "qty": 2, "price": None, "note": None}, None)}
    revert(db, "task-101")
    assert rows(db, cols="id, qty, title, added") == [(1, 1, "a", "dflt"), (2, 2, "b", "dflt")]


def test_a_retyped_column_history_could_not_convert_is_restored_into_its_successor(item):
    db = item
    write(db, "INSERT INTO item (id, note) VALUES (1, '5')", mint("task-100"))
    write(db, "UPDATE item SET note = '6' WHERE id = 1", mint("task-101"))
    db.sql("ALTER TABLE item ALTER COLUMN note TYPE jsonb USING note::jsonb")
    p = {k["id"]: (a, strip(res), c) for _, k, a, _, res, c in plan(db, "task-101")}
    assert p[1][0] == "UPDATE" and p[1][2] is None
    revert(db, "task-101")
    assert db.one("SELECT note FROM item WHERE id = 1") == 5


def test_revert_context_and_its_plan(seeded):
    db = seeded
    ctx = db.one("SELECT DISTINCT context_id FROM koherent.provenance_entry WHERE task_id = 'task-101'")
    with db.conn() as c:
        p = c.execute("SELECT row_key->>'id', action FROM koherent.revert_context_plan(%s) ORDER BY 1", [ctx]).fetchall()
    assert p == [("1", "UPDATE"), ("2", "INSERT"), ("4", "DELETE")]
    with db.conn(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-103")])
        r = c.execute("SELECT koherent.revert_context(%s)", [ctx]).fetchone()[0]
        c.commit()
    assert (r["deleted"], r["inserted"], r["updated"]) == (1, 1, 1)
    assert db.one("SELECT metadata FROM koherent.transaction_auth_context WHERE task_id = 'task-103'") == {
        "reverts": {"context_id": str(ctx), "on_conflict": "abort"}}


def test_bad_input_is_refused_and_nothing_is_written(seeded):
    db = seeded
    before = db.state_counts()
    cases = [
        ("SELECT * FROM koherent.revert_plan('no-such-task')", "P0002"),
        ("SELECT koherent.revert_task('no-such-task')", "P0002"),
        ("SELECT koherent.revert_task(NULL)", "22004"),
        ("SELECT koherent.revert_task('task-101', false, 'bogus')", "22023"),
        ("SELECT koherent.revert_task('task-101', false, NULL)", "22023"),
        ("SELECT koherent.revert_context('00000000-0000-0000-0000-000000000000')", "P0002"),
        ("SELECT koherent.revert_context(NULL)", "22004"),
        ("SELECT * FROM koherent.revert_context_plan('00000000-0000-0000-0000-000000000000')", "P0002"),
        # no client marks a context as a revert
        ("SELECT koherent.set_context('{\"reverts\": {\"task_id\": \"x\"}}')", "22023"),
    ]
    for q, state in cases:
        with pytest.raises(psycopg.Error) as e:
            with db.conn(user=APP_ROLE) as c:
                c.execute(q)
        assert sqlstate(e) == state, (q, e.value)
    assert db.state_counts() == before
    # one revert per transaction
    with pytest.raises(psycopg.Error) as e:
        with db.conn(user=APP_ROLE, autocommit=False) as c:
            c.execute("SELECT koherent.revert_task('task-101')")
            c.execute("SELECT koherent.revert_task('task-100', false, 'skip')")
    assert sqlstate(e) == "55000"
    assert db.state_counts() == before
    # the internal functions are the owner's
    for q in ("SELECT koherent._as_caller(koherent._acting(), 'SELECT 1', NULL, false)", "SELECT koherent._mark_revert('{}')",
              "SELECT * FROM koherent._revert_rows(koherent._acting(), ARRAY[]::uuid[], false)"):
        with pytest.raises(psycopg.Error) as e:
            with db.conn(user=APP_ROLE) as c:
                c.execute(q)
        assert sqlstate(e) == "42501", q


def test_require_task_tables_demand_a_task_for_the_revert(seeded):
    db = seeded
    db.sql("SELECT koherent.track('item', require_task => true)")
    with pytest.raises(psycopg.Error) as e:
        revert(db, "task-101", user=APP_ROLE)
    assert sqlstate(e) == "28000"
    assert rows(db) == [(1, 10, "A"), (3, 3, "c"), (4, 4, "d")]
    assert revert(db, "task-101", mint("task-103"), user=APP_ROLE)["updated"] == 1


def test_the_revert_writes_with_the_callers_rights(seeded):
    db = seeded
    db.sql("CREATE ROLE koherent_reverter_ro")
    db.sql("GRANT SELECT ON item TO koherent_reverter_ro")
    db.sql("GRANT EXECUTE ON FUNCTION koherent.revert_task(text, boolean, text), "
           "koherent.revert_plan(text, boolean) TO koherent_reverter_ro")
    db.sql(f"GRANT koherent_reverter_ro TO {APP_ROLE}")
    before = db.state_counts()
    with pytest.raises(psycopg.Error) as e:
        with db.conn(user=APP_ROLE, autocommit=False) as c:
            c.execute("SET ROLE koherent_reverter_ro")
            c.execute("SELECT koherent.revert_task('task-101')")
    assert sqlstate(e) == "42501"  # no UPDATE privilege: no lock, no write
    assert db.state_counts() == before and rows(db) == [(1, 10, "A"), (3, 3, "c"), (4, 4, "d")]
    db.sql("DROP OWNED BY koherent_reverter_ro")
    db.sql("DROP ROLE koherent_reverter_ro")


def test_row_level_security_hides_and_blocks(db):
    db.sql("CREATE TABLE doc (id int PRIMARY KEY, tenant text NOT NULL, body text)")
    db.sql("SELECT koherent.track('doc')")
    write(db, "INSERT INTO doc VALUES (1, 'a', 'a1'), (2, 'b', 'b1'), (3, 'a', 'a3')", mint("task-100"))
    write(db, ["UPDATE doc SET body = body || '!'", "DELETE FROM doc WHERE id = 3"], mint("task-101"))
    db.sql("ALTER TABLE doc ENABLE ROW LEVEL SECURITY")
    db.sql("CREATE POLICY tenant_a ON doc USING (tenant = 'a')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON doc TO {APP_ROLE}")
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean), "
           f"koherent.revert_task(text, boolean, text) TO {APP_ROLE}")
    p = plan(db, "task-101", user=APP_ROLE)
    # tenant a's row: planned; tenant b's and the deleted row (no row to check the policy
    # against): not_visible, with nothing of their data
    assert sorted((((k or {}).get("id"), a, strip(res), c) for _, k, a, _, res, c in p), key=str) == sorted([
        (1, "UPDATE", {"body": "a1"}, None), (None, "UPDATE", None, "not_visible"),
        (None, "INSERT", None, "not_visible")], key=str)
    r = revert(db, "task-101", user=APP_ROLE, on_conflict="skip")
    assert (r["updated"], r["skipped"]) == (1, 2)
    assert db.sql("SELECT id, body FROM doc ORDER BY id") == [(1, "a1"), (2, "b1!")]
    # the owner (no RLS for it) reverts the rest; row 1, reverted already, is a later change now
    r = revert(db, "task-101", on_conflict="skip")
    assert [(c["row_key"], c["conflict"]) for c in r["conflicts"]] == [({"id": 1}, "changed_later")]
    assert db.sql("SELECT id, body FROM doc ORDER BY id") == [(1, "a1"), (2, "b1"), (3, "a3")]


def test_a_revert_racing_writers_never_loses_a_write(seeded):
    db = seeded
    # 1. a writer changed the row first and has not committed: the revert waits for it, then
    #    sees its change (a conflict), and writes nothing
    w = db.conn(user=APP_ROLE, autocommit=False)
    w.execute("SELECT koherent.set_task(%s)", [mint("task-200")])
    w.execute("UPDATE item SET qty = 99 WHERE id = 1")
    result = {}

    def run():
        try:
            result["r"] = revert(db, "task-101", mint("task-103"), user=APP_ROLE)
        except psycopg.Error as e:
            result["e"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    assert t.is_alive()  # blocked on the writer's row lock
    w.commit()
    t.join(10)
    assert result["e"].sqlstate == "23000" and "changed_later" in result["e"].diag.message_detail
    assert rows(db) == [(1, 99, "A"), (3, 3, "c"), (4, 4, "d")]
    w.close()
    # 2. the revert holds its locks until it commits: a writer waits, then writes on top of it
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-103")])
        c.execute("SELECT koherent.revert_task('task-101', false, 'overwrite')")
        done = {}

        def later():
            write(db, "UPDATE item SET qty = qty + 1 WHERE id = 1", mint("task-201"), user=APP_ROLE)
            done["ok"] = True

        t = threading.Thread(target=later)
        t.start()
        time.sleep(0.5)
        assert "ok" not in done  # waits for the revert
        c.commit()
    t.join(10)
    assert done["ok"]
    assert rows(db) == [(1, 2, "a"), (2, 2, "b"), (3, 3, "c")]  # the revert's qty 1, plus the writer's 1


def test_typed_path_truncate_identity_generated_and_excluded_columns(db):
    """A task that changed each row once takes the typed path: a TRUNCATE is undone by
    reinserting the rows with their identity values, generated columns computed again, excluded
    ones from their defaults; UPDATEs write only the columns they changed."""
    db.sql("CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int, "
           "b int GENERATED ALWAYS AS (a * 2) STORED, secret text DEFAULT 'dflt', j json)")
    db.sql("SELECT koherent.track('g', exclude => ARRAY['secret'])")
    write(db, "INSERT INTO g (a, secret, j) VALUES (1, 's1', '{\"x\": 1}'), (2, 's2', '[1]')", mint("task-100"))
    write(db, "TRUNCATE g", mint("task-101"))
    assert sorted((k["id"], a, c) for _, k, a, _, _, c in plan(db, "task-101")) == [(1, "INSERT", None), (2, "INSERT", None)]
    assert revert(db, "task-101")["inserted"] == 2
    assert db.sql("SELECT id, a, b, secret, j::text FROM g ORDER BY id") == [
        (1, 1, 2, "dflt", '{"x": 1}'), (2, 2, 4, "dflt", "[1]")]
    write(db, ["UPDATE g SET a = 10 WHERE id = 1", "UPDATE g SET j = '[2]' WHERE id = 2"], mint("task-102"))
    p = {k["id"]: (a, res) for _, k, a, _, res, _ in plan(db, "task-102")}
    assert p == {1: ("UPDATE", {"a": 1}), 2: ("UPDATE", {"j": [1]})}
    write(db, "UPDATE g SET j = '[3]' WHERE id = 2")  # json has no equality: compared as text
    assert {k["id"]: c for _, k, _, _, _, c in plan(db, "task-102")} == {1: None, 2: "changed_later"}
    r = revert(db, "task-102", on_conflict="skip")
    assert (r["updated"], r["skipped"]) == (1, 1)
    assert db.sql("SELECT id, a, b, j::text FROM g ORDER BY id") == [(1, 1, 2, '{"x": 1}'), (2, 2, 4, "[3]")]


def test_a_table_with_columns_named_like_the_reverts_aliases(db):
    """Columns named k, r or p (the revert's own statements name their row sources otherwise)."""
    db.sql("CREATE TABLE pv (id int, k int, r text, v text, PRIMARY KEY (id, k))")
    db.sql("SELECT koherent.track('pv')")
    db.sql("INSERT INTO pv VALUES (1, 1, 'r0', 'a'), (2, 2, 'r0', 'a')")
    with db.conn(autocommit=False) as c:
        c.execute("INSERT INTO pv VALUES (3, 3, 'r1', 'new')")
        c.execute("UPDATE pv SET r = 'r2', v = 'b' WHERE id = 1")
        c.execute("DELETE FROM pv WHERE id = 2")
        ctx = c.execute("SELECT koherent.current_context_id()").fetchone()[0]
        c.commit()
    plan = db.sql("SELECT action, row_key FROM koherent.revert_context_plan(%s) ORDER BY row_key->>'id'", [ctx])
    assert plan == [("UPDATE", {"id": 1, "k": 1}), ("INSERT", {"id": 2, "k": 2}), ("DELETE", {"id": 3, "k": 3})]
    r = db.one("SELECT koherent.revert_context(%s)", [ctx])
    assert (r["updated"], r["inserted"], r["deleted"]) == (1, 1, 1)
    assert db.sql("SELECT * FROM pv ORDER BY id") == [(1, 1, "r0", "a"), (2, 2, "r0", "a")]


def test_typed_path_of_rows_changed_many_times_agrees_with_the_row_by_row_path(db):
    """A task that changed rows more than once (in several transactions) takes the typed path
    (one row per key from its first and last entries) when every key's entries are one thread;
    its plan is the row-by-row path's, row for row, conflicts included, and its revert restores
    what that plan says. A key the task deleted and created again leaves the table to the
    row-by-row path."""
    db.sql("CREATE TABLE mc (id int PRIMARY KEY, a int, b text, c numeric)")
    db.sql("SELECT koherent.track('mc')")
    write(db, "INSERT INTO mc SELECT g, g, 'b' || g, g * 1.5 FROM generate_series(1, 40) g", mint("task-100"))
    seed = db.sql("SELECT * FROM mc ORDER BY id")
    t101 = mint("task-101")
    write(db, ["UPDATE mc SET a = a + 1 WHERE id <= 20", "DELETE FROM mc WHERE id IN (35, 36)",
               "INSERT INTO mc SELECT g, g, 'new', 0 FROM generate_series(41, 45) g"], t101)
    write(db, ["UPDATE mc SET b = 'x' WHERE id BETWEEN 10 AND 30",
               "UPDATE mc SET a = a - 1 WHERE id BETWEEN 1 AND 5",  # changed back: nothing to revert
               "DELETE FROM mc WHERE id IN (15, 16)",                # changed, then deleted: reinserted as before
               "UPDATE mc SET c = 9.50 WHERE id IN (41, 42)",        # created, then changed: deleted
               "DELETE FROM mc WHERE id = 43"], t101)               # created, then deleted: nothing
    write(db, "UPDATE mc SET a = 100, c = 1.50 WHERE id IN (20, 30)", t101)
    # later, by others: a field the task changed, one it did not, a row it created, a key it freed
    write(db, ["UPDATE mc SET b = 'later' WHERE id = 12", "UPDATE mc SET a = 7 WHERE id = 25",
               "DELETE FROM mc WHERE id = 41", "INSERT INTO mc VALUES (15, 0, 'taken', 0)"], mint("task-102"))
    cfg = db.one("SELECT id FROM koherent.tracked_config WHERE relid = 'mc'::regclass")
    cols = "table_name::text, row_key, action, current_data, restored_data, conflict"

    def paths(task):
        """(whether the typed path takes the table, revert_plan's rows, the row-by-row path's)"""
        with db.conn(autocommit=False) as c:  # (an acting capability is its transaction's)
            acting = c.execute("SELECT koherent._acting()").fetchone()[0]
            ctx = c.execute("SELECT koherent._revert_task_contexts(%s, %s, false)", [acting, task]).fetchone()[0]
            view = c.execute("SELECT koherent._revert_fast_view(%s, c, %s) FROM koherent.tracked_config c "
                             "WHERE c.id = %s", [acting, ctx, cfg]).fetchone()[0]
            typed = c.execute(f"SELECT {cols} FROM koherent.revert_plan(%s) ORDER BY (row_key->>'id')::int, action",
                              [task]).fetchall()
            by_row = c.execute(f"SELECT {cols} FROM koherent._revert_plan_rest(%s, %s, '{{}}') "
                               "ORDER BY (row_key->>'id')::int, action", [acting, ctx]).fetchall()
            return view == f"pg_temp.koherent_revert_{cfg}", typed, by_row

    fast, typed, by_row = paths("task-101")
    assert fast and typed == by_row
    got = {k["id"]: (a, res, w) for _, k, a, _, res, w in typed}
    assert not any(k in got for k in (1, 2, 3, 4, 5, 43))  # changed back; created and deleted
    assert got[6] == ("UPDATE", {"a": 6}, None)
    assert got[11] == ("UPDATE", {"a": 11, "b": "b11"}, None)
    assert got[12] == ("UPDATE", {"a": 12, "b": "b12"}, "changed_later")
    assert got[15] == ("INSERT", {"id": 15, "a": 15, "b": "b15", "c": 22.5}, "key_exists")
    assert got[16] == ("INSERT", {"id": 16, "a": 16, "b": "b16", "c": 24.0}, None)
    assert got[20] == ("UPDATE", {"a": 20, "b": "b20", "c": 30.0}, None)
    assert got[25] == ("UPDATE", {"b": "b25"}, None)
    assert got[35] == ("INSERT", {"id": 35, "a": 35, "b": "b35", "c": 52.5}, None)
    assert got[41] == ("DELETE", None, "deleted_later")
    assert got[42] == ("DELETE", None, None) and got[45] == ("DELETE", None, None)
    assert len(got) == 31
    r = revert(db, "task-101", token=mint("task-103"), on_conflict="skip")
    assert (r["updated"], r["inserted"], r["deleted"], r["skipped"]) == (22, 3, 3, 3)
    want = {row[0]: row for row in seed}
    want[12] = (12, 13, "later", 18)  # skipped: b changed later
    want[15] = (15, 0, "taken", 0)    # skipped: its key is taken
    want[25] = (25, 7, "b25", 37.5)   # b reverted beside the later change of a
    assert db.sql("SELECT * FROM mc ORDER BY id") == [want[k] for k in sorted(want)]
    # a key deleted and created again by the task: one key, two threads: the row-by-row path
    write(db, ["DELETE FROM mc WHERE id = 1", "INSERT INTO mc VALUES (1, -1, 'again', 0)"], mint("task-104"))
    fast, typed, by_row = paths("task-104")
    assert not fast and typed == by_row
    assert [(a, res) for _, _, a, _, res, _ in typed] == [("DELETE", None), ("INSERT", {"id": 1, "a": 1, "b": "b1", "c": 1.5})]


def test_a_row_updated_again_by_its_own_after_trigger_is_reverted_on_both_paths(db):
    """An AFTER ROW trigger that updates the row it fires on: its nested UPDATE is dated after the
    statement that fired it but written first (a smaller history id). The typed path orders a
    row's entries as the row-by-row path and as_of do (by transaction, then by date): the revert
    restores the row as it was, with one transaction of the task or two."""
    db.sql("CREATE TABLE nt (id int PRIMARY KEY, v int, touched int DEFAULT 0)")
    db.sql("SELECT koherent.track('nt')")
    db.sql("CREATE FUNCTION nt_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
           "IF NEW.touched = OLD.touched THEN UPDATE nt SET touched = touched + 1 WHERE id = NEW.id; END IF; "
           "RETURN NULL; END $$")
    db.sql("CREATE TRIGGER nt_after AFTER UPDATE ON nt FOR EACH ROW EXECUTE FUNCTION nt_touch()")
    db.sql("INSERT INTO nt VALUES (1, 1), (2, 2)")
    cfg = db.one("SELECT id FROM koherent.tracked_config WHERE relid = 'nt'::regclass")
    for task, writes in (("nt-one", [["UPDATE nt SET v = 10"]]),
                         ("nt-two", [["UPDATE nt SET v = 20 WHERE id = 1"], ["UPDATE nt SET v = 30"]])):
        before = db.sql("SELECT * FROM nt ORDER BY id")
        token = mint(task)
        for w in writes:
            write(db, w, token)
        assert db.sql("SELECT id, v FROM nt ORDER BY id") != [(r[0], r[1]) for r in before]
        with db.conn(autocommit=False) as c:
            acting = c.execute("SELECT koherent._acting()").fetchone()[0]
            ctx = c.execute("SELECT koherent._revert_task_contexts(%s, %s, false)", [acting, task]).fetchone()[0]
            view = c.execute("SELECT koherent._revert_fast_view(%s, c, %s) FROM koherent.tracked_config c "
                             "WHERE c.id = %s", [acting, ctx, cfg]).fetchone()[0]
            typed = c.execute("SELECT row_key, action, restored_data FROM koherent.revert_plan(%s) ORDER BY 1",
                              [task]).fetchall()
            by_row = c.execute("SELECT row_key, action, restored_data FROM koherent._revert_plan_rest(%s, %s, '{}') "
                               "ORDER BY 1", [acting, ctx]).fetchall()
        assert view == f"pg_temp.koherent_revert_{cfg}"   # the typed path took the table
        want = [({"id": r[0]}, "UPDATE", {"v": r[1], "touched": r[2]}) for r in before]
        assert typed == by_row == want, (typed, by_row)
        r = revert(db, task, token=mint(task + "-undo"))
        assert (r["updated"], r["conflicts"]) == (2, [])
        assert db.sql("SELECT * FROM nt ORDER BY id") == before
