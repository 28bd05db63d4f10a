"""A tracked table as it was: koherent.as_of, as_of_task, row_as_of, and the exposed
<table>_as_of. A change counts at its history date (its statement's start time)."""

import time

import psycopg
import pytest

from conftest import APP_ROLE, mint, sqlstate, write


def moment(db):
    return db.one("SELECT clock_timestamp()")


def as_of(db, at, user="postgres", table="item"):
    with db.conn(user=user) as c:
        return c.execute(f"SELECT id, qty, name FROM koherent.as_of(NULL::{table}, %s) ORDER BY id", [at]).fetchall()


def test_as_of_rolls_back_every_later_change(item):
    db = item
    t0 = moment(db)
    write(db, "INSERT INTO item (id, qty, name) VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c')", mint("task-100"))
    t1 = moment(db)
    write(db, ["UPDATE item SET qty = 10 WHERE id = 1", "DELETE FROM item WHERE id = 2",
               "INSERT INTO item (id, qty, name) VALUES (4, 4, 'd')", "UPDATE item SET id = 30 WHERE id = 3"],
          mint("task-101"))
    t2 = moment(db)
    write(db, "UPDATE item SET qty = 11, name = 'A' WHERE id = 1")
    assert as_of(db, t0) == []
    assert as_of(db, t1) == [(1, 1, "a"), (2, 2, "b"), (3, 3, "c")]
    assert as_of(db, t2) == [(1, 10, "a"), (4, 4, "d"), (30, 3, "c")]
    assert as_of(db, moment(db)) == [(1, 11, "A"), (4, 4, "d"), (30, 3, "c")]
    # the table's own types: a row of item
    assert db.one("SELECT pg_typeof(x)::text FROM koherent.as_of(NULL::item, now()) x LIMIT 1") == "item"
    # as_of_task: just before the task's first change
    with db.conn() as c:
        assert c.execute("SELECT id, qty FROM koherent.as_of_task(NULL::item, 'task-101') ORDER BY id").fetchall() == [
            (1, 1), (2, 2), (3, 3)]
        assert c.execute("SELECT id FROM koherent.as_of_task(NULL::item, 'task-100') ORDER BY id").fetchall() == []
    # row_as_of: one row, followed through nothing else
    with db.conn() as c:
        one = lambda k, at: c.execute("SELECT (r).id, (r).qty FROM (SELECT koherent.row_as_of(NULL::item, %s, %s) r) x",
                                      [psycopg.types.json.Jsonb(k), at]).fetchone()
        assert one({"id": 1}, t1) == (1, 1)
        assert one({"id": 1}, t2) == (1, 10)
        assert one({"id": 2}, t1) == (2, 2)
        assert one({"id": 2}, t2) == (None, None)
        assert one({"id": 30}, t1) == (None, None)
        assert one({"id": 3}, t1) == (3, 3)
        assert one({"id": 4}, moment(db)) == (4, 4)  # unchanged since: the row as it is


@pytest.mark.parametrize("row_index", [True, False])
def test_row_as_of_agrees_with_as_of_for_every_key_and_moment(db, row_index):
    """row_as_of (its own index lookup with a plan kept per session) gives, for every key and
    moment, the row as_of gives: through key moves and swaps within one statement, deletes and
    re-creates of a key, several changes in one transaction, a column added since (a new plan),
    and with or without the row index."""
    db.sql("CREATE TABLE kv (id int PRIMARY KEY DEFERRABLE, qty int, name text)")  # swaps within a statement
    db.sql(f"SELECT koherent.track('kv', row_index => {str(row_index).lower()})")
    moments = [moment(db)]
    steps = [
        ["INSERT INTO kv VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c')"],
        ["UPDATE kv SET qty = qty + 10"],
        ["UPDATE kv SET id = CASE id WHEN 1 THEN 2 WHEN 2 THEN 1 ELSE id END WHERE id IN (1, 2)"],  # a swap
        ["DELETE FROM kv WHERE id = 3", "INSERT INTO kv VALUES (3, 33, 'c2')"],  # one transaction
        ["UPDATE kv SET id = 4 WHERE id = 1", "UPDATE kv SET qty = 44 WHERE id = 4"],
        ["UPDATE kv SET id = id + 1 WHERE id >= 3"],  # a shift: 3 -> 4 and 4 -> 5 at once
        ["ALTER TABLE kv ADD COLUMN note text", "UPDATE kv SET note = 'n', qty = qty + 1 WHERE id = 2"],
        ["DELETE FROM kv WHERE id = 2"],
    ]
    with db.conn() as c:  # one session: its kept plans serve every call after the first
        def row(k, at):
            return c.execute("SELECT (r).id, (r).qty, (r).name FROM (SELECT koherent.row_as_of(NULL::kv, %s, %s) r) x",
                             [psycopg.types.json.Jsonb({"id": k}), at]).fetchone()
        for step in steps:
            write(db, step)
            moments.append(moment(db))
            for i, at in enumerate(moments):
                whole = {r[0]: r for r in c.execute("SELECT id, qty, name FROM koherent.as_of(NULL::kv, %s)", [at]).fetchall()}
                for k in range(1, 7):
                    assert row(k, at) == whole.get(k, (None, None, None)), (step, i, k)
        # the answers checked against a few known values, not only against as_of
        assert row(1, moments[1]) == (1, 1, "a")
        assert row(1, moments[3]) == (1, 12, "b")   # after the swap, id 1 holds b's row
        assert row(5, moments[6]) == (5, 44, "b")
        assert row(2, moments[-1]) == (None, None, None)
        assert row(2, moments[-2]) == (2, 12, "a")


def test_row_as_of_reads_the_row_index_alone(item):
    """row_as_of finds one row's entries by the row index: the moment's test is taken by no
    index, so the BRIN of history_date (every summary of the table) is not read beside it.
    Checked by the indexes' scan counters; the value is the row's at the moment."""
    # (1.1M entries, half of them after the moment, analyzed: where the planner took the BRIN too)
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 100000) g")
    for i in range(1, 11):
        item.sql("UPDATE item SET qty = %s", [i])
        if i == 5:
            at = item.one("SELECT clock_timestamp()")
    item.sql("ANALYZE koherent_history.item")
    q = "SELECT (r).qty FROM (SELECT koherent.row_as_of(NULL::item, '{\"id\": 777}', %s) r) x"
    assert item.one(q, [at]) == 5  # (first call: keeps its plan, summarizes nothing)

    def scans():
        return dict(item.sql("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
                             "WHERE schemaname = 'koherent_history' AND relname = 'item'"))
    before, still = scans(), 0
    for _ in range(50):  # (other backends' counters arrive when they exit: wait until still)
        time.sleep(0.2)
        now = scans()
        still = still + 1 if now == before else 0
        if still == 3:
            break
        before = now
    assert item.one(q, [at]) == 5
    row_index = "item_id_history_id_idx"
    lookup = next(n for n in before if "history_context" in n)
    for _ in range(50):
        after = scans()
        if after[row_index] > before[row_index]:
            break
        time.sleep(0.1)
    assert after[row_index] > before[row_index]
    assert after[lookup] == before[lookup]


def test_excluded_columns_show_what_the_table_has_now(db):
    db.sql("CREATE TABLE doc (id int PRIMARY KEY, body text, secret text)")
    db.sql("SELECT koherent.track('doc', exclude => ARRAY['secret'])")
    write(db, "INSERT INTO doc VALUES (1, 'b1', 's1'), (2, 'b2', 's2')")
    t1 = moment(db)
    write(db, ["UPDATE doc SET body = 'B1', secret = 'S1' WHERE id = 1", "DELETE FROM doc WHERE id = 2"])
    assert db.sql("SELECT * FROM koherent.as_of(NULL::doc, %s) ORDER BY id", [t1]) == [
        (1, "b1", "S1"), (2, "b2", None)]


def test_what_counts_as_before_a_moment_is_the_statement_start(item):
    """A transaction whose statement began before `at` counts as before it, even when it
    committed after; one that began after does not, even if `at` is earlier than its commit."""
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)")
    c = db.conn(autocommit=False)
    c.execute("UPDATE item SET qty = 2 WHERE id = 1")   # dated now, committed later
    at = moment(db)
    c.commit()
    c.close()
    assert as_of(db, at) == [(1, 2, None)]
    before = db.one("SELECT max(date) FROM koherent.provenance_entry") - __import__("datetime").timedelta(microseconds=1)
    assert as_of(db, before) == [(1, 1, None)]


def test_row_level_security_and_privileges(db):
    db.sql("CREATE TABLE doc (id int PRIMARY KEY, tenant text NOT NULL, body text)")
    db.sql("SELECT koherent.track('doc')")
    write(db, "INSERT INTO doc VALUES (1, 'a', 'a1'), (2, 'b', 'b1'), (3, 'a', 'a3')")
    t1 = moment(db)
    write(db, ["UPDATE doc SET body = body || '!'", "DELETE FROM doc WHERE id = 3"])
    with pytest.raises(psycopg.Error) as e:
        with db.conn(user=APP_ROLE) as c:
            c.execute("SELECT * FROM koherent.as_of(NULL::doc, %s)", [t1])
    assert sqlstate(e) == "42501"  # no SELECT on doc
    db.sql("ALTER TABLE doc ENABLE ROW LEVEL SECURITY")
    db.sql("CREATE POLICY tenant_a ON doc USING (tenant = 'a')")
    db.sql(f"GRANT SELECT ON doc TO {APP_ROLE}")
    with db.conn(user=APP_ROLE) as c:
        got = c.execute("SELECT id, body FROM koherent.as_of(NULL::doc, %s) ORDER BY id", [t1]).fetchall()
        # tenant a's row as it was; not tenant b's; not the deleted row (no row to check the
        # policy against: only an auditor sees deleted rows under row-level security)
        assert got == [(1, "a1")]
        assert c.execute("SELECT koherent.row_as_of(NULL::doc, '{\"id\": 2}', %s)", [t1]).fetchone()[0] is None
    db.sql(f"GRANT SELECT (token) ON koherent.task TO {APP_ROLE}")  # an auditor
    with db.conn(user=APP_ROLE) as c:
        got = c.execute("SELECT id, body FROM koherent.as_of(NULL::doc, %s) ORDER BY id", [t1]).fetchall()
        # as_of reads the table as the caller: an auditor under row-level security too (the rows
        # untouched since come from the table under its policies)
        assert got == [(1, "a1")]


def test_bad_input(item):
    db = item
    db.sql("CREATE TABLE plain (id int PRIMARY KEY)")
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("task-100"))
    cases = [
        ("SELECT * FROM koherent.as_of(NULL::plain, now())", "55000"),
        ("SELECT * FROM koherent.as_of(NULL::int, now())", "42809"),
        ("SELECT * FROM koherent.as_of(NULL::item, NULL)", "22004"),
        ("SELECT * FROM koherent.as_of(NULL::item, '2000-01-01')", "22023"),
        ("SELECT * FROM koherent.as_of_task(NULL::item, 'no-such-task')", "P0002"),
        ("SELECT * FROM koherent.as_of_task(NULL::item, NULL)", "22004"),
        ("SELECT koherent.row_as_of(NULL::item, '{\"nope\": 1}', now())", "22023"),
        ("SELECT koherent.row_as_of(NULL::item, '[1]', now())", "22023"),
        ("SELECT koherent.row_as_of(NULL::item, NULL, now())", "22004"),
        ("SELECT koherent.row_as_of(NULL::item, '{\"id\": null}', now())", "22004"),  # a key with a null column
    ]
    for q, state in cases:
        with pytest.raises(psycopg.Error) as e:
            db.sql(q)
        assert sqlstate(e) == state, (q, e.value)


def test_exposed_table_as_of(item):
    db = item
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)")
    t1 = moment(db)
    write(db, "UPDATE item SET qty = 2 WHERE id = 1")
    db.sql(f"SELECT koherent.expose('item', '{APP_ROLE}')")
    with db.conn(user=APP_ROLE) as c:
        assert c.execute("SELECT id, qty FROM item_as_of(%s)", [t1]).fetchall() == [(1, 1)]
    db.sql("SELECT koherent.unexpose('item')")
    assert db.sql("SELECT 1 FROM pg_proc WHERE proname = 'item_as_of'") == []
