"""Indexes of history tables: the row index (by default; track(row_index => ...), added by expose()),
lookups by row and by task planned as index scans, the BRIN index on history_context whose
ranges task_changes summarizes before it reads (and rows written into ranges already
summarized), indexes an administrator adds to a history table."""

import re
import time

import psycopg
import pytest

from conftest import mint, write


def test_row_index_by_default_dropped_on_request_added_by_expose(item):
    def row_index():
        return item.one("SELECT row_index FROM koherent.tracked_table")

    def btrees():
        return item.sql("SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c "
                        "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                        "WHERE i.indrelid = 'koherent_history.item'::regclass AND a.amname = 'btree' "
                        "AND i.indpred IS NULL")

    def key_change_index():
        """The partial btree of key-changing UPDATEs that comes and goes with the row index."""
        return item.sql("SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
                        "WHERE i.indrelid = 'koherent_history.item'::regclass AND i.indpred IS NOT NULL")

    def uses_row_index():
        with item.conn() as c:
            c.execute("SET enable_seqscan = off")
            body = "\n".join(r[0] for r in c.execute(
                "EXPLAIN (COSTS OFF) SELECT * FROM koherent_history.item h WHERE h.id = 1").fetchall())
        return "item_id_history_id_idx" in body

    # a new history table has the row index (and the key-change index that comes with it)
    assert row_index() is True and len(btrees()) == 1 and "(id, history_id)" in btrees()[0][0]
    assert len(key_change_index()) == 1 and '("old:id", history_id) WHERE' in key_change_index()[0][0]
    assert uses_row_index()
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1)")
    item.sql("UPDATE item SET qty = 2")
    item.sql("SELECT koherent.track('item')")  # idempotent: the index stays
    assert row_index() is True and len(btrees()) == 1
    # row_index => false drops both for a write-mostly table ...
    item.sql("SELECT koherent.track('item', row_index => false)")
    assert row_index() is False and btrees() == [] and key_change_index() == []
    item.sql("SELECT koherent.track('item')")  # ... and the default does not bring them back
    assert row_index() is False and btrees() == []
    item.sql("SELECT koherent.untrack('item')")  # nor does tracking again after untrack
    item.sql("SELECT koherent.track('item')")
    assert row_index() is False and btrees() == []
    item.sql("SELECT koherent.track('item', row_index => true)")
    assert row_index() is True and len(btrees()) == 1 and len(key_change_index()) == 1
    item.sql("SELECT koherent.track('item', row_index => false)")
    assert row_index() is False and btrees() == [] and key_change_index() == []
    # a lookup index dropped by hand comes back with the next track() that changes something,
    # also beside the range index (the other BRIN)
    brins = ("SELECT count(*) FILTER (WHERE pg_get_indexdef(i.indexrelid) ~ 'bloom'), count(*) FROM pg_index i "
             "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
             "WHERE i.indrelid = 'koherent_history.item'::regclass AND a.amname = 'brin'")
    assert item.sql(brins) == [(1, 2)]
    item.sql("DROP INDEX koherent_history.item_history_id_history_context_history_date_idx")
    assert item.sql(brins) == [(0, 1)]
    item.sql("SELECT koherent.track('item', row_index => true)")
    assert item.sql(brins) == [(1, 2)]
    item.sql("SELECT koherent.track('item', row_index => false)")
    # expose() serves <table>_provenance(row), a lookup by key: it adds the row index
    item.sql("SELECT koherent.expose('item')")
    assert row_index() is True and len(btrees()) == 1 and uses_row_index()
    item.sql("SELECT koherent.expose('item')")  # a second expose() adds nothing
    assert len(btrees()) == 1 and len(key_change_index()) == 1
    # without the index a row's provenance is found by a scan: same answer
    item.sql("SELECT koherent.track('item', row_index => false)")
    assert item.sql("SELECT kind FROM item_provenance((SELECT i FROM item i WHERE id = 1))") == [
        ("CREATE",), ("UPDATE",)]
    item.sql("SELECT koherent.track('item', row_index => true)")
    assert item.sql("SELECT kind FROM item_provenance((SELECT i FROM item i WHERE id = 1))") == [
        ("CREATE",), ("UPDATE",)]
    # entries written while the index was absent are in it (it is built from the table)
    item.sql("DELETE FROM item")
    with item.conn() as c:
        c.execute("SET enable_seqscan = off")
        assert c.execute("SELECT history_kind FROM koherent_history.item WHERE id = 1 "
                         "ORDER BY history_id").fetchall() == [("CREATE",), ("UPDATE",), ("DELETE",)]


def plan(db, query):
    return "\n".join(r[0] for r in db.sql("EXPLAIN (COSTS OFF) " + query))


def test_row_provenance_and_task_changes_are_index_lookups(item):
    item.sql("SELECT koherent.expose('item')")
    # (no autovacuum VACUUM of the history: it summarizes every BRIN range, which the test needs
    # unsummarized at first; seen once in a full run, lossy=2)
    item.sql("ALTER TABLE koherent_history.item SET (autovacuum_enabled = off)")
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 200000) g")
    item.sql("UPDATE item SET qty = 1 WHERE id % 2 = 0")
    write(item, "UPDATE item SET qty = 7 WHERE id = 4242", mint("needle"))
    item.sql("ANALYZE koherent_history.item; ANALYZE koherent.transaction_auth_context")
    p = plan(item, "SELECT * FROM item_provenance(ROW(4242, null, null, null, null, null)::item)")
    # the function is inlined only when not SECURITY DEFINER; look at its body's plan instead
    body = plan(item, "SELECT * FROM koherent_history.item h WHERE h.id = 4242")
    assert "Index" in body and "Seq Scan" not in body, body
    ctx = item.one("SELECT id FROM koherent.transaction_auth_context WHERE task_id = 'needle'")
    tc = plan(item, f"SELECT * FROM koherent_history.item h WHERE h.history_context = ANY (ARRAY['{ctx}']::uuid[])")
    assert "Bitmap Index Scan on item_history_id_history_context_history_date_idx" in tc and "Seq Scan" not in tc, tc
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
    # (task_changes skips summarizing, rather than wait, while autovacuum's BRIN work item holds
    # the summarization lock: then the next call, or autovacuum itself, has done it)
    for _ in range(20):
        assert item.one("SELECT count(*) FROM koherent.task_changes('needle')") == 1
        blocks, analyzed = lossy()
        if blocks <= 48:
            break
        time.sleep(0.25)
    assert 0 < blocks <= 48, analyzed
    assert item.one("SELECT pg_relation_size('koherent_history.item') / 8192") > 3000
    # rows written after the summaries: found, and summarized by the next reader
    write(item, "INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(300001, 330000) g", mint("needle-2"))
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


def test_rows_written_into_summarized_ranges_are_found(item):
    # History is append-only, but free space in early pages (here: made by hand) sends new
    # history tuples into block ranges that are already summarized; their summaries must then
    # take the new values, or a BRIN lookup would miss them.
    item.sql("INSERT INTO item (id, qty) SELECT g, 0 FROM generate_series(1, 5000) g")
    item.sql("DELETE FROM koherent_history.item WHERE id <= 1000")
    item.sql("VACUUM koherent_history.item")
    write(item, "INSERT INTO item (id, qty) SELECT g, 1 FROM generate_series(10001, 10300) g", mint("late"))
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


BRIN_OF = ("SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
           "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'brin' ORDER BY 1")


def test_a_new_history_tables_first_range_has_no_summary(db):
    """A BRIN index built on an empty table summarizes its first range; koherent removes that
    summary from a new history table and from each partition it makes, so that the first entries
    cost no summary updates (koherent._unsummarize_empty). Lookups find them all the same."""
    db.sql("CREATE TABLE item (id int PRIMARY KEY, qty int)")
    db.sql("SELECT koherent.track('item')")
    db.sql("CREATE TABLE logs (id int PRIMARY KEY, qty int)")
    db.sql("SELECT koherent.track('logs')")
    db.sql("SELECT koherent.set_retention('logs', NULL, '1 month')")
    part = db.one("SELECT inhrelid::regclass::text FROM pg_inherits "
                  "WHERE inhparent = 'koherent_history.logs'::regclass ORDER BY inhrelid DESC LIMIT 1")
    for table in ("item", "logs"):
        write(db, f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 50) g", mint(f"first-{table}"))
        assert db.one(f"SELECT count(*) FROM koherent.task_changes('first-{table}')") == 50
    # a partition made ahead (empty): its revmap points nowhere for the first range (an invalid
    # item pointer, offset 0; the build's summary is item 1 of page 2)
    db.sql("CREATE EXTENSION IF NOT EXISTS pageinspect")
    for ix in [r[0] for r in db.sql(BRIN_OF, [part])]:
        assert db.one("SELECT pages::text FROM brin_revmap_data(get_raw_page(%s, 1)) LIMIT 1", [ix]).endswith(",0)"), ix
    # tables written since: the range had no summary (one left by the build would make it 0)
    for hist in ("koherent_history.item", "koherent_history.logs"):
        leaf = db.one("SELECT coalesce((SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass "
                      "ORDER BY inhrelid LIMIT 1), %s)", [hist, hist])
        brins = [r[0] for r in db.sql(BRIN_OF, [leaf])]
        assert len(brins) == 2, brins  # the lookup index and the range index
        for ix in brins:
            assert db.one("SELECT brin_summarize_range(%s::regclass, 0)", [ix]) == 1, ix
    # the partitioned history table itself and a non-empty table are left alone
    db.sql("SELECT koherent._unsummarize_empty('koherent_history.logs'::regclass)")
    db.sql("SELECT koherent._unsummarize_empty('koherent_history.item'::regclass)")
    for ix in [r[0] for r in db.sql(BRIN_OF, ["koherent_history.item"])]:
        assert db.one("SELECT brin_summarize_range(%s::regclass, 0)", [ix]) == 0, ix
    for table in ("item", "logs"):
        assert db.one(f"SELECT count(*) FROM koherent.task_changes('first-{table}')") == 50


def test_indexes_an_admin_adds_to_a_history_table_are_maintained(item):
    # koherent's own indexes take a fast path; a partial or unique index must see the same
    # checks the executor makes.
    item.sql("CREATE INDEX big_qty ON koherent_history.item (id) WHERE qty > 100")
    item.sql("CREATE UNIQUE INDEX one_create ON koherent_history.item (id) WHERE history_kind = 'CREATE'")
    item.sql("INSERT INTO item (id, qty) VALUES (1, 5), (2, 500)")
    with item.conn() as c:
        c.execute("SET enable_seqscan = off")
        c.execute("SET enable_bitmapscan = off")
        q = "SELECT id FROM koherent_history.item WHERE qty > 100 AND id > 0"
        assert "big_qty" in "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + q).fetchall())
        assert c.execute(q).fetchall() == [(2,)]
    item.sql("DELETE FROM item WHERE id = 1")
    with pytest.raises(psycopg.errors.UniqueViolation):
        item.sql("INSERT INTO item (id, qty) VALUES (1, 6)")
    assert item.count("item") == 1


def test_partial_indexes_by_kind_hold_every_entry_of_their_kind(item):
    """The writer leaves out a partial index whose predicate rules out its statement's kind
    (`history_kind = '<other kind>'` under a deterministic collation: koherent's key-change
    index for an INSERT or DELETE) and evaluates every other predicate per entry: each index
    holds exactly the entries its predicate selects (amcheck's heapallindexed finds any entry
    missing), whatever the shape of the predicate and its collation."""
    item.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    item.sql("CREATE COLLATION IF NOT EXISTS koherent_test_ci "
             "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
    h = "koherent_history.item"
    indexes = {  # name: (predicate, the kinds it selects)
        "p_deletes": ("history_kind = 'DELETE'", {"DELETE"}),
        "p_creates_c": ("history_kind = 'CREATE' COLLATE \"C\"", {"CREATE"}),
        "p_updates_const_first": ("'UPDATE' = history_kind AND qty IS NOT NULL", {"UPDATE"}),
        "p_not_update": ("history_kind <> 'UPDATE'", {"CREATE", "DELETE"}),
        "p_deletes_ci": ("history_kind = 'delete' COLLATE koherent_test_ci", {"DELETE"}),
        "p_kinds_in": ("history_kind IN ('CREATE', 'DELETE')", {"CREATE", "DELETE"}),
    }
    for name, (pred, _) in indexes.items():
        item.sql(f"CREATE INDEX {name} ON {h} (id) WHERE {pred}")
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1), (2, 2), (3, 3)")            # single batch
    item.sql("INSERT INTO item (id, qty) SELECT g, g FROM generate_series(10, 2509) g")  # bulk, 3 batches
    item.sql("UPDATE item SET qty = qty + 1 WHERE id <= 1500")
    item.sql("UPDATE item SET id = id + 10000 WHERE id IN (1, 2)")                  # key changes
    item.sql("DELETE FROM item WHERE id = 3 OR id BETWEEN 100 AND 1299")
    item.sql(f"ANALYZE {h}")
    kinds = dict(item.sql(f"SELECT history_kind, count(*) FROM {h} GROUP BY 1"))
    assert kinds == {"CREATE": 2503, "UPDATE": 1496, "DELETE": 1201}, kinds
    all_ix = item.sql(f"SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                      f"JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = '{h}'::regclass AND a.amname = 'btree'")
    assert len(all_ix) == len(indexes) + 2  # with the row index and the key-change index
    for (ix,) in all_ix:
        item.sql("SELECT bt_index_check(%s::regclass, heapallindexed => true)", [ix])  # raises if one is missing
    with item.conn() as c:
        c.execute("SET enable_seqscan = off")
        c.execute("SET enable_bitmapscan = off")
        for name, (pred, selects) in indexes.items():
            q = f"SELECT count(*) FROM {h} WHERE {pred}"
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + q).fetchall())
            assert name in plan, plan
            assert c.execute(q).fetchone()[0] == sum(kinds[k] for k in selects), name
        q = (f"SELECT count(*) FROM {h} WHERE history_kind = 'UPDATE' "
             f"AND ROW(\"old:id\") IS DISTINCT FROM ROW(id)")
        assert "old:id_history_id_idx" in "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + q).fetchall())
        assert c.execute(q).fetchone()[0] == 2   # the key-change index: the two key-changing UPDATEs only
    size = item.one("SELECT pg_relation_size(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    f"WHERE i.indrelid = '{h}'::regclass AND c.relname LIKE '%%old:id%%'")
    assert size <= 16384   # the metapage and one leaf: no INSERT or DELETE entry went in


def test_a_rows_provenance_is_an_index_lookup_after_key_changes(item):
    """The life check of a row's provenance (a DELETE, TRUNCATE or key-changing UPDATE ends a
    key's history) is two index lookups: the row index and the key-change index, which holds
    only the UPDATEs that changed a key."""
    item.sql("SELECT koherent.expose('item')")
    item.sql("INSERT INTO item (id, qty) SELECT g, g FROM generate_series(1, 1000) g")
    item.sql("UPDATE item SET qty = qty + 1")
    item.sql("UPDATE item SET id = 5000 WHERE id = 7")   # 7's history ends here; 5000's begins
    item.sql("ANALYZE koherent_history.item")
    assert item.one("SELECT count(*) FROM koherent_history.item WHERE history_kind = 'UPDATE' "
                    "AND \"old:id\" IS DISTINCT FROM id") == 1
    size = item.one("SELECT pg_relation_size(i.indexrelid) FROM pg_index i "
                    "WHERE i.indrelid = 'koherent_history.item'::regclass AND i.indpred IS NOT NULL")
    assert size <= 16384   # two pages: the metapage and one leaf
    assert item.sql("SELECT kind, row_key->>'id' FROM item_provenance((SELECT i FROM item i WHERE id = 5000)) "
                    "ORDER BY history_id") == [("UPDATE", "5000")]
    assert item.sql("SELECT kind FROM item_provenance((SELECT i FROM item i WHERE id = 8)) "
                    "ORDER BY history_id") == [("CREATE",), ("UPDATE",)]
    life = item.one("SELECT koherent._current_life(c, 'h', 'h') FROM koherent.tracked_config c")
    with item.conn() as c:
        c.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.execute(
            f"EXPLAIN (COSTS OFF) SELECT * FROM koherent_history.item h WHERE h.id = 8 AND {life}").fetchall())
    assert "item_id_history_id_idx" in plan and '"item_old:id_history_id_idx"' in plan, plan
    assert "Seq Scan" not in plan, plan
