"""koherent.task_changes: the changes a task made across tracked tables, with or without those of
its subtasks."""

import json
import re
import time

import psycopg
import pytest

from conftest import APP_ROLE, mint, write


def test_task_changes_with_subtasks(item):
    item.sql("CREATE TABLE other (k text PRIMARY KEY)")
    item.sql("SELECT koherent.track('other')")
    write(item, "INSERT INTO item (id) VALUES (1)", mint("root"))
    write(item, "INSERT INTO other VALUES ('a')", mint("child", ptk="root", rtk="root"))
    write(item, "UPDATE item SET qty = 3", mint("grandchild", ptk="child", rtk="root"))
    write(item, "INSERT INTO item (id) VALUES (2)", mint("unrelated"))
    assert item.sql("SELECT table_name::text, kind FROM koherent.task_changes('root')") == [("item", "CREATE")]
    assert item.sql("SELECT task_id, table_name::text, kind FROM koherent.task_changes('root', include_subtasks => true)") == [
        ("root", "item", "CREATE"), ("child", "other", "CREATE"), ("grandchild", "item", "UPDATE")]
    assert item.sql("SELECT task_id FROM koherent.task_changes('child', true)") == [("child",), ("grandchild",)]
    assert item.sql("SELECT * FROM koherent.task_changes('nope')") == []


ORACLE = ("SELECT history_id, table_name::text, kind, row_key, task_id FROM koherent.provenance_entry "
          "WHERE task_id = ANY (%s) ORDER BY history_id")
CHANGES = "SELECT history_id, table_name::text, kind, row_key, task_id FROM koherent.task_changes(%s, %s)"


def test_sealed_contexts_are_read_by_their_ledger_ranges(item):
    """Sealed contexts are looked up by the history id ranges the ledger lists for each table,
    through the range index (what the task wrote, not all history); unsealed ones by context.
    Every mix gives the same entries as a scan of all history for the task."""
    item.sql("CREATE TABLE other (k text PRIMARY KEY, v int)")
    item.sql("SELECT koherent.track('other')")
    # a task writing two tables in one transaction, then much unrelated history, then the same
    # task again (a second context, far away in id space), then a subtask
    write(item, ["INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 50) g",
                 "INSERT INTO other VALUES ('a', 1), ('b', 2)"], mint("run"))
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1000, 60999) g")
    write(item, ["UPDATE item SET qty = 5 WHERE id <= 10", "DELETE FROM other WHERE k = 'a'"], mint("run"))
    write(item, "UPDATE item SET qty = 6 WHERE id BETWEEN 20 AND 24", mint("sub", ptk="run", rtk="run"))
    expected = item.sql(ORACLE, [["run"]])
    expected_tree = item.sql(ORACLE, [["run", "sub"]])
    assert len(expected) == 50 + 2 + 10 + 1 and len(expected_tree) == len(expected) + 5
    # nothing sealed: the lookup by context
    assert item.sql(CHANGES, ["run", False]) == expected
    # everything sealed: by the ledger's ranges
    item.sql("SELECT koherent.seal()")
    ctx = [r[0] for r in item.sql("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'run' "
                                  "ORDER BY created_at")]
    ranges = item.sql("SELECT t.table_name::text, r.lo, r.hi FROM koherent._sealed_ranges(%s::uuid[]) r "
                      "JOIN koherent.tracked_table t ON t.config_id = r.config_id ORDER BY 1, 2", [ctx])
    # item: the two contexts' spans are 60000 ids apart, more than a 32nd of item's span: two ranges
    assert [r[0] for r in ranges] == ["item", "item", "other", "other"], ranges
    ids = {t: [h for h, tn, *_ in expected if tn == t] for t in ("item", "other")}
    assert ranges[0][1] == min(ids["item"]) and ranges[1][2] == max(ids["item"])
    assert item.sql(CHANGES, ["run", False]) == expected
    assert item.sql(CHANGES, ["run", True]) == expected_tree
    # a mix: a third context of the task, not sealed yet
    write(item, "INSERT INTO other VALUES ('c', 3)", mint("run"))
    mixed = item.sql(ORACLE, [["run"]])
    assert len(mixed) == len(expected) + 1
    assert item.sql(CHANGES, ["run", False]) == mixed
    item.sql("SELECT koherent.seal()")
    assert item.sql(CHANGES, ["run", False]) == mixed
    # the sealed lookup reads the range index and the blocks of the ranges, not the table
    item.sql("VACUUM ANALYZE koherent_history.item")
    lo, hi = ranges[1][1], ranges[1][2]
    analyzed = "\n".join(r[0] for r in item.sql(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM koherent_history.item h "
        "WHERE (h.history_context = ANY (%s::uuid[])) IS TRUE AND h.history_id BETWEEN %s AND %s", [ctx, lo, hi]))
    assert "Bitmap Index Scan on item_history_id_history_date_idx" in analyzed, analyzed
    blocks = int(re.search(r"Heap Blocks: lossy=(\d+)", analyzed).group(1))
    assert blocks <= 256 and item.one("SELECT pg_relation_size('koherent_history.item') / 8192") > 600, analyzed


def test_sealed_ranges_stay_few(item):
    """A task with a context every few thousand ids across all of history gets at most 33 ranges
    per table, and all its entries."""
    for i in range(40):
        write(item, f"INSERT INTO item (id, qty) VALUES ({i}, 0)", mint("spread"))
        item.sql(f"INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series({100000 + i * 2000}, {100000 + i * 2000 + 1999}) g")
    item.sql("SELECT koherent.seal()")
    n = item.one("SELECT count(*) FROM koherent._sealed_ranges(ARRAY(SELECT id FROM koherent.transaction_auth_context "
                 "WHERE task_id = 'spread'))")
    assert 1 <= n <= 33
    assert item.sql(CHANGES, ["spread", False]) == item.sql(ORACLE, [["spread"]])
    assert len(item.sql(CHANGES, ["spread", False])) == 40


def test_revert_plan_as_of_task_and_export_read_sealed_tasks_alike(item):
    """The other readers by task take the ledger's ranges for sealed contexts too: the same
    plan, the same table as of the task, the same package rows, before and after sealing."""
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 100) g")
    write(item, ["UPDATE item SET qty = 9 WHERE id <= 20", "DELETE FROM item WHERE id > 95",
                 "INSERT INTO item (id, qty) VALUES (500, 5)"], mint("bad"))
    item.sql("INSERT INTO item (id, qty) SELECT g, 1 FROM generate_series(1000, 30999) g")
    write(item, "UPDATE item SET qty = 10 WHERE id = 3", mint("bad"))
    plan = "SELECT table_name::text, row_key, action, restored_data, conflict FROM koherent.revert_plan('bad') ORDER BY 2"
    as_of = "SELECT id, qty FROM koherent.as_of_task(NULL::item, 'bad') WHERE id < 1000 ORDER BY id"
    before_plan, before_as_of = item.sql(plan), item.sql(as_of)
    assert len(before_plan) == 20 + 5 + 1 and before_as_of == [(i, 0) for i in range(1, 101)]
    item.sql("SELECT koherent.seal()")
    assert item.sql(plan) == before_plan
    assert item.sql(as_of) == before_as_of
    # and as the application role (the ledger is not its to read: the helpers read it for it)
    item.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean) TO {APP_ROLE}")
    with item.app() as c:
        assert c.execute(plan).fetchall() == before_plan
        assert c.execute(as_of).fetchall() == before_as_of
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM koherent._sealed_ranges('{}'::uuid[])")
    # how they find the entries: by context while a context is unsealed, by the ranges once all
    # are, nothing in a table the sealed task did not write
    item.sql("CREATE TABLE other (k text PRIMARY KEY)")
    item.sql("SELECT koherent.track('other')")
    ctx = [r[0] for r in item.sql("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'bad'")]
    cfg = dict(item.sql("SELECT table_name::text, config_id FROM koherent.tracked_table"))
    f = "SELECT koherent._context_filter(%s, %s::uuid[], '$1')"
    assert item.one(f, [cfg["item"], ctx]).startswith("(h.history_context = ANY ($1)) IS TRUE AND (h.history_id BETWEEN ")
    assert item.one(f, [cfg["other"], ctx]) == "false"
    write(item, "INSERT INTO other VALUES ('x')", mint("bad"))
    ctx = [r[0] for r in item.sql("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'bad'")]
    # unsealed: by context (the lookup index), dated at or after the oldest of them began
    since = item.one("SELECT to_char(min(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') "
                     "FROM koherent.transaction_auth_context WHERE task_id = 'bad'")
    assert item.one(f, [cfg["item"], ctx]) == f"h.history_context = ANY ($1) AND (h.history_date >= '{since}+00'::timestamptz) IS TRUE"
    assert len(item.sql(plan)) == len(before_plan) + 1


def test_readers_by_task_do_not_read_all_history_without_statistics(item):
    """A task written after the last ANALYZE of its history (or before any: the usual case) lies
    beyond what the statistics know, and no btree on history_id lets the planner look further:
    task_changes and revert_plan must still read the ranges the ledger lists, not every entry
    (no sequential scan of a history table), and not read a table the sealed task did not write
    at all. Checked by the tables' scan counters."""
    item.sql("CREATE TABLE other (k int PRIMARY KEY, v int)")
    item.sql("SELECT koherent.track('other')")
    for t in ("item", "other"):
        item.sql(f"ALTER TABLE koherent_history.{t} SET (autovacuum_enabled = false)")
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 20000) g")
    item.sql("INSERT INTO other SELECT g, 0 FROM generate_series(1, 20000) g")
    write(item, "UPDATE item SET qty = 7 WHERE id BETWEEN 100 AND 104", mint("small"))
    item.sql("SELECT koherent.seal()")
    assert item.one("SELECT count(*) FROM pg_stats WHERE schemaname = 'koherent_history'") == 0

    def scans():
        return dict((r[0], (r[1], r[2])) for r in item.sql(
            "SELECT relname, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE schemaname = 'koherent_history' AND relname IN ('item', 'other')"))

    # (the first reader summarizes the new BRIN ranges, a scan of each range; and the counters of
    # the backends that wrote, sealed and summarized reach the shared statistics when those exit:
    # wait until they stand still)
    assert item.one("SELECT count(*) FROM koherent.task_changes('small')") == 5
    before, still = scans(), 0
    for _ in range(50):
        time.sleep(0.2)
        now = scans()
        still = still + 1 if now == before else 0
        if still == 3:
            break
        before = now
    with item.conn() as c:
        changes = c.execute("SELECT kind, row_key FROM koherent.task_changes('small')").fetchall()
        plan = c.execute("SELECT action, row_key, restored_data FROM koherent.revert_plan('small') "
                         "ORDER BY row_key").fetchall()
        c.execute("SELECT pg_stat_force_next_flush()")
    assert changes == [("UPDATE", {"id": i}) for i in range(100, 105)]
    assert plan == [("UPDATE", {"id": i}, {"qty": 0}) for i in range(100, 105)]
    for _ in range(50):  # (the counters reach the shared statistics once the backend flushed them)
        after = scans()
        if after["item"][1] > before["item"][1]:
            break
        time.sleep(0.1)
    assert after["item"][1] > before["item"][1]  # read through the range index
    assert after["item"][0] == before["item"][0]  # no sequential scan
    assert after["other"] == before["other"]  # not read


def test_a_context_committed_after_a_seal_inside_a_sealed_range_comes_once(item):
    """A transaction of the task still open while a seal runs commits afterwards with ids inside
    the range of the task's sealed contexts: read once, by context, not again by the range."""
    token = mint("overlap")
    write(item, "INSERT INTO item (id) VALUES (1)", token)
    with item.conn(autocommit=False) as open_tx:
        open_tx.execute("SELECT koherent.set_task(%s)", [token])
        open_tx.execute("INSERT INTO item (id) VALUES (2)")
        write(item, "INSERT INTO item (id) VALUES (3)", token)
        item.sql("SELECT koherent.seal()")
        open_tx.commit()
    expected = item.sql(ORACLE, [["overlap"]])
    assert [r[3] for r in expected] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert item.sql(CHANGES, ["overlap", False]) == expected
    with item.conn(autocommit=False) as c:
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        c.read_only = True
        rows = c.execute("SELECT kind, data FROM koherent.audit_export('overlap')").fetchall()
        cursor = [d for k, d in rows if k == "entries"][0]
        entries = c.execute(f'FETCH ALL FROM "{cursor}"').fetchall()
        assert len(entries) == 3, entries
        c.rollback()
    item.sql("SELECT koherent.seal()")
    assert item.sql(CHANGES, ["overlap", False]) == expected


def test_unsealed_tasks_recent_by_the_range_index_old_by_the_lookup_index(item):
    """An unsealed task's entries are dated at or after its first transaction began. When the
    history since then is a short tail of a large history table (koherent._recent_history: the
    last 1/128 of 16384 blocks or more), the readers by task read that tail through the range
    index by date alone; otherwise (an older task, a small table) they look the contexts up in the lookup
    index's bloom filters. Either way the same entries as a scan of all history: task_changes,
    revert_plan, as_of_task and the audit export."""
    item.sql("CREATE TABLE wide (id int PRIMARY KEY, pad text)")
    item.sql("SELECT koherent.track('wide')")
    item.sql("ALTER TABLE koherent_history.wide SET (autovacuum_enabled = false)")
    hist = "koherent_history.wide"
    item.sql("INSERT INTO wide SELECT g, repeat('x', 1000) FROM generate_series(1, 10) g")
    write(item, "UPDATE wide SET pad = 'old' WHERE id <= 3", mint("old-task"))
    # small yet: no guess, the bloom filters (the lookup index is small)
    since = item.one("SELECT koherent._contexts_since(koherent._task_contexts('old-task', false))")
    assert item.one("SELECT koherent._recent_history(%s, %s)", [hist, since]) is False
    item.sql("INSERT INTO wide SELECT g, repeat('x', 1000) FROM generate_series(11, 125000) g")
    blocks = item.one(f"SELECT pg_relation_size('{hist}') / 8192")
    assert blocks > 16384, blocks
    write(item, "UPDATE wide SET pad = 'new' WHERE id BETWEEN 500 AND 504", mint("new-task"))
    write(item, "DELETE FROM wide WHERE id = 124999", mint("new-task"))
    item.sql("SELECT koherent._summarize(%s::regclass::oid)", [hist])

    range_index = item.one("SELECT koherent._range_index(%s)::text", [hist])
    lookup_index = item.one("SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                            "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'brin' "
                            "AND i.indexrelid <> koherent._range_index(%s)", [hist, hist])
    for task, recent, index, n in (("new-task", True, range_index, 6), ("old-task", False, lookup_index, 3)):
        ctx = item.one("SELECT koherent._task_contexts(%s, false)", [task])
        since = item.one("SELECT koherent._contexts_since(%s)", [ctx])
        assert item.one("SELECT koherent._recent_history(%s, %s)", [hist, since]) is recent, task
        with item.conn() as c:  # (its own planner settings: TIDs looked up, never a scan)
            c.execute("SET enable_tidscan = off")
            assert c.execute("SELECT koherent._recent_history(%s, %s)", [hist, since]).fetchone()[0] is recent
        with item.app() as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT koherent._recent_history(%s, %s)", [hist, since])
        cond = item.one("SELECT koherent._unsealed_condition(%s, %s, %s, %s)",
                        [hist, "'" + "{" + ",".join(str(u) for u in ctx) + "}'::uuid[]", since,
                         f"'{since.isoformat()}'::timestamptz"])
        assert cond.startswith("(h.history_context = ANY") is recent and cond.endswith(") IS TRUE") is not recent, cond
        with item.conn() as c:
            c.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in c.execute(f"EXPLAIN (COSTS OFF) SELECT * FROM {hist} h WHERE {cond}"))
        assert f"Bitmap Index Scan on {index.split('.')[-1]}" in plan, plan
        assert item.sql(CHANGES, [task, False]) == item.sql(ORACLE, [[task]])
        assert len(item.sql(CHANGES, [task, False])) == n
        plan_rows = item.sql("SELECT action, row_key FROM koherent.revert_plan(%s) ORDER BY row_key->>'id'", [task])
        if task == "new-task":
            assert sorted(plan_rows, key=lambda r: r[1]["id"]) == (
                [("UPDATE", {"id": i}) for i in range(500, 505)] + [("INSERT", {"id": 124999})])
        else:
            assert sorted(plan_rows, key=lambda r: r[1]["id"]) == [("UPDATE", {"id": i}) for i in (1, 2, 3)]
        with item.conn(autocommit=False) as c:
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor = dict(c.execute("SELECT kind, data FROM koherent.audit_export(%s)", [task]).fetchall())["entries"]
            exported = [json.loads(d) for (_, d) in c.execute(f'FETCH ALL FROM "{cursor}"').fetchall()]
        assert sorted(e["record"]["id"] for e in exported) == [r[0] for r in item.sql(ORACLE, [[task]])]
    # and as the application role (revert_plan granted to it; as_of_task is everyone's): the
    # helpers that choose the way run for it
    item.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean) TO {APP_ROLE}")
    item.sql(f"GRANT SELECT ON wide TO {APP_ROLE}")
    with item.app() as c:
        rows = c.execute("SELECT action, row_key FROM koherent.revert_plan('new-task')").fetchall()
        assert sorted(rows, key=lambda r: r[1]["id"]) == (
            [("UPDATE", {"id": i}) for i in range(500, 505)] + [("INSERT", {"id": 124999})])
        assert c.execute("SELECT id, pad FROM koherent.as_of_task(NULL::wide, 'new-task') WHERE id = 500").fetchall() == [
            (500, "x" * 1000)]
    # the moment reads back the same whatever the session's DateStyle and TimeZone (a zone
    # abbreviation such as IST would be read as another zone's)
    for tz in ("Asia/Kolkata", "Asia/Manila", "Pacific/Guam"):
        with item.conn() as c:
            c.execute(f"SET TimeZone = '{tz}'")
            c.execute("SET DateStyle = 'SQL, DMY'")
            assert c.execute("SELECT count(*) FROM koherent.revert_plan('new-task')").fetchone()[0] == 6, tz
            assert c.execute("SELECT pad FROM koherent.as_of_task(NULL::wide, 'new-task') WHERE id = 500").fetchall() == [
                ("x" * 1000,)], tz
            assert c.execute("SELECT koherent._timestamptz_literal('-infinity')").fetchone()[0] == "'-infinity'::timestamptz"
    # as of before the new task: its rows as they were
    assert item.sql("SELECT id, pad FROM koherent.as_of_task(NULL::wide, 'new-task') "
                    "WHERE id IN (500, 124999) ORDER BY id") == [(500, "x" * 1000), (124999, "x" * 1000)]
    assert item.sql("SELECT pad FROM koherent.as_of_task(NULL::wide, 'old-task') WHERE id = 1") == [("x" * 1000,)]


def test_task_changes_row_keys_equal_the_views_for_every_kind_of_key(item):
    """task_changes builds row_key with koherent._object_expr (not the views' jsonb_build_object
    form, which the planner hook reads): the same jsonb for keys of built-in types that
    _jsonb_object takes, of ones it leaves to jsonb_build_object, and of a user's type."""
    item.sql("CREATE TYPE mood AS ENUM ('sad', 'ok')")
    item.sql("CREATE TABLE multi (a text, b uuid, c numeric, d timestamptz, e int4range, f mood, g boolean, "
             "v int, PRIMARY KEY (a, b, c, d, e, f, g))")
    item.sql("SELECT koherent.track('multi')")
    write(item, ["INSERT INTO multi VALUES ('x\"y', '00000000-0000-0000-0000-00000000000a', 1.50, "
                 "'2026-01-01 00:00:00+00', '[1,5)', 'ok', true, 1)",
                 "INSERT INTO multi VALUES ('é', '00000000-0000-0000-0000-00000000000b', -0.0, "
                 "'infinity', 'empty', 'sad', false, 2)",
                 "UPDATE multi SET v = v + 1"], mint("keys"))
    got = item.sql("SELECT history_id, row_key::text FROM koherent.task_changes('keys')")
    want = item.sql("SELECT history_id, row_key::text FROM koherent.provenance_entry WHERE task_id = 'keys' ORDER BY 1")
    assert got == want and len(got) == 4
    assert item.sql("SELECT row_key FROM koherent.task_changes('keys') ORDER BY history_id LIMIT 1") == [(
        {"a": 'x"y', "b": "00000000-0000-0000-0000-00000000000a", "c": 1.50, "d": "2026-01-01T00:00:00+00:00",
         "e": "[1,5)", "f": "ok", "g": True},)]


def test_readers_keep_to_the_indexes_when_the_session_turns_bitmap_scans_off(item):
    """BRIN indexes are read by bitmap scans only: a session with enable_bitmapscan = off (a
    tuning left on, a pooler's default) must not turn koherent's readers by task and by moment
    into sequential scans of all history. Each pins the planner setting itself; checked by the
    transaction's own scan counters of the history table, before and after a seal."""
    item.sql("ALTER TABLE koherent_history.item SET (autovacuum_enabled = false)")
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 30000) g")
    item.sql("SELECT koherent.seal()")
    moment = item.one("SELECT clock_timestamp()")
    write(item, "UPDATE item SET qty = 7 WHERE id BETWEEN 100 AND 104", mint("bitmap-off"))
    item.sql("ANALYZE koherent_history.item")
    blocks = item.one("SELECT pg_relation_size('koherent_history.item') / 8192")
    assert blocks > 200
    readers = [
        ("SELECT count(*) FROM koherent.task_changes('bitmap-off')", 5),
        ("SELECT count(*) FROM koherent.revert_plan('bitmap-off')", 5),
        ("SELECT count(*) FILTER (WHERE qty = 0) FROM koherent.as_of_task(NULL::item, 'bitmap-off')", 30000),
        ("SELECT count(*) FILTER (WHERE qty = 0) FROM koherent.as_of(NULL::item, %s)", 30000),
        ("SELECT data FROM koherent.audit_export('bitmap-off') WHERE kind = 'entries'", 5),  # a cursor
        ("SELECT ((koherent.revert_task('bitmap-off'))->>'updated')::int", 5),
        ("SELECT count(*) FROM koherent.revert_context_plan(%s)", 5),
        ("SELECT ((koherent.revert_context(%s))->>'updated')::int", 5),
    ]
    ctx = item.one("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'bitmap-off'")
    for sealed in (False, True):
        # (the first reader summarizes the BRIN ranges written since: scans of those ranges)
        assert item.one("SELECT count(*) FROM koherent.task_changes('bitmap-off')") == 5
        if sealed:
            readers.insert(0, ("SELECT (koherent.seal())->'contexts'", 2))  # the chain's: the INSERT's, the task's
        for query, expected in readers:
            with item.conn(autocommit=False) as c:
                if "audit_export" in query:
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                c.execute("SET LOCAL enable_bitmapscan = off")
                arg = None if "%s" not in query else [moment] if "as_of" in query else [ctx]
                got = c.execute(query, arg).fetchone()[0]
                if "audit_export" in query:  # the entries' cursor, planned inside the function
                    got = len(c.execute(f'FETCH ALL FROM "{got}"').fetchall())
                seq, fetched = c.execute(
                    "SELECT seq_scan, pg_stat_get_xact_blocks_fetched(relid) FROM pg_stat_xact_user_tables "
                    "WHERE relid = 'koherent_history.item'::regclass").fetchone()
                c.commit() if "seal" in query else c.rollback()
            assert got == expected, (query, sealed, got)
            # (at most the range index's last, unsummarized 128 pages and a few: not all history)
            assert seq == 0 and fetched < blocks / 2, (query, sealed, seq, fetched, blocks)
