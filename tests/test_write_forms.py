"""Write forms: every way a client changes a tracked table's rows is recorded, one entry per row
with its row images, read through provenance_entry, effective_change and the typed history
table: INSERT, UPDATE, DELETE, INSERT ... ON CONFLICT, MERGE, COPY, TRUNCATE, writes from
functions and other triggers, rollbacks and savepoints, key changes, toasted values, statements
larger than a batch or than work_mem, a psql script."""

import subprocess

import psycopg
import pytest

from conftest import APP_ROLE, HOST, PORT, changes, entries, ids


def test_insert_update_delete_are_recorded_with_row_images(item):
    item.sql("INSERT INTO item (id, name, qty, price) VALUES (1, 'a', 1, 1.5), (2, 'b', 2, 2.5)")
    item.sql("UPDATE item SET qty = qty + 10 WHERE id = 1")
    item.sql("DELETE FROM item WHERE id = 2")
    assert entries(item) == [
        ("CREATE", {"id": 1}, {"id": 1, "name": "a", "qty": 1, "price": 1.5, "note": None}),
        ("CREATE", {"id": 2}, {"id": 2, "name": "b", "qty": 2, "price": 2.5, "note": None}),
        ("UPDATE", {"id": 1}, {"id": 1, "name": "a", "qty": 11, "price": 1.5, "note": None}),
        ("DELETE", {"id": 2}, {"id": 2, "name": "b", "qty": 2, "price": 2.5, "note": None}),
    ]
    h = ids(item)
    assert h == sorted(h) and len(set(h)) == 4
    # one context per transaction, session user recorded, no task
    rows = item.sql(
        "SELECT DISTINCT context_id IS NOT NULL, db_role, task_id, agent_client_id, issuer, changed_by "
        "FROM koherent.provenance_entry"
    )
    assert rows == [(True, "postgres", None, None, None, None)]
    assert item.count("koherent.transaction_auth_context") == 3
    assert changes(item, h[0]) == [
        ("id", None, 1), ("name", None, "a"), ("note", None, None), ("price", None, 1.5), ("qty", None, 1)
    ]
    assert changes(item, h[2]) == [("qty", 1, 11)]
    assert changes(item, h[3]) == [
        ("id", 2, None), ("name", "b", None), ("note", None, None), ("price", 2.5, None), ("qty", 2, None)
    ]


def test_history_ids_are_unique_across_tables(item):
    item.sql("CREATE TABLE other (k text PRIMARY KEY, v int)")
    item.sql("SELECT koherent.track('other')")
    item.sql("INSERT INTO item (id) VALUES (1)")
    item.sql("INSERT INTO other VALUES ('x', 1)")
    item.sql("INSERT INTO item (id) VALUES (2)")
    rows = item.sql("SELECT table_name::text, row_key FROM koherent.provenance_entry ORDER BY history_id")
    assert rows == [("item", {"id": 1}), ("other", {"k": "x"}), ("item", {"id": 2})]
    assert len(set(ids(item))) == 3


def test_typed_history_relation(item):
    item.sql("INSERT INTO item (id, qty) VALUES (7, 1)")
    item.sql("UPDATE item SET qty = 2 WHERE id = 7")
    item.sql("UPDATE item SET qty = 5 WHERE id = 7")
    assert item.sql("SELECT qty FROM koherent_history.item WHERE id = 7 ORDER BY history_id") == [(1,), (2,), (5,)]
    assert item.sql('SELECT "old:qty", history_kind FROM koherent_history.item WHERE id = 7 ORDER BY history_id') == [
        (None, "CREATE"), (1, "UPDATE"), (2, "UPDATE")
    ]
    # the same column types as the source table
    types = item.sql(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'koherent_history.item'::regclass AND attname IN ('id', 'qty', 'price', 'updated') ORDER BY 1"
    )
    assert types == [("id", "bigint"), ("price", "numeric"), ("qty", "integer"), ("updated", "timestamp with time zone")]


def test_update_without_change_writes_nothing(item):
    item.sql("INSERT INTO item (id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2)")
    before = item.state_counts()
    item.sql("UPDATE item SET qty = qty")
    item.sql("UPDATE item SET name = 'a' WHERE id = 1")
    assert item.state_counts() == before
    # a multi-row update where only one row really changes: one entry
    item.sql("UPDATE item SET qty = 5")
    item.sql("UPDATE item SET qty = CASE id WHEN 1 THEN 6 ELSE qty END")
    assert [r[0] for r in entries(item)] == ["CREATE", "CREATE", "UPDATE", "UPDATE", "UPDATE"]


def test_multi_row_statement_one_entry_per_row(item):
    item.sql("INSERT INTO item (id, qty) SELECT g, g FROM generate_series(1, 500) g")
    item.sql("UPDATE item SET qty = qty + 1 WHERE id % 2 = 0")
    item.sql("DELETE FROM item WHERE id > 400")
    assert item.sql("SELECT kind, count(*) FROM koherent.provenance_entry GROUP BY 1 ORDER BY 1") == [
        ("CREATE", 500), ("DELETE", 100), ("UPDATE", 250)
    ]
    # every UPDATE entry pairs the right old and new image
    assert item.one('SELECT count(*) FROM koherent_history.item WHERE history_kind = \'UPDATE\' '
                    'AND (qty <> "old:qty" + 1 OR id <> "old:id")') == 0
    assert item.count("koherent.transaction_auth_context") == 3


def test_insert_on_conflict_records_what_happened(item):
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1)")
    item.sql(
        "INSERT INTO item (id, qty) VALUES (1, 10), (2, 20) "
        "ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty"
    )
    item.sql("INSERT INTO item (id, qty) VALUES (2, 20) ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty")
    item.sql("INSERT INTO item (id, qty) VALUES (2, 99) ON CONFLICT DO NOTHING")
    rows = item.sql("SELECT kind, row_key, row_data->'qty' FROM koherent.provenance_entry ORDER BY history_id")
    assert sorted(rows[1:], key=str) == sorted([("UPDATE", {"id": 1}, 10), ("CREATE", {"id": 2}, 20)], key=str)
    assert len(rows) == 3


def test_merge(item):
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1), (2, 2), (3, 3)")
    item.sql("""
        MERGE INTO item t USING (VALUES (1, 100), (2, 0), (4, 4)) AS s(id, qty) ON t.id = s.id
        WHEN MATCHED AND s.qty = 0 THEN DELETE
        WHEN MATCHED THEN UPDATE SET qty = s.qty
        WHEN NOT MATCHED THEN INSERT (id, qty) VALUES (s.id, s.qty)
    """)
    rows = item.sql("SELECT kind, row_key, row_data->'qty' FROM koherent.provenance_entry "
                    "ORDER BY history_id OFFSET 3")
    assert sorted(rows, key=str) == sorted(
        [("UPDATE", {"id": 1}, 100), ("DELETE", {"id": 2}, 2), ("CREATE", {"id": 4}, 4)], key=str)


def test_copy_from(item):
    with item.conn() as c:
        with c.cursor().copy("COPY item (id, name, qty) FROM STDIN") as cp:
            for i in range(1, 101):
                cp.write_row((i, f"n{i}", i))
    assert item.one("SELECT count(*) FROM koherent.provenance_entry WHERE kind = 'CREATE'") == 100
    assert item.one("SELECT row_data->>'name' FROM koherent.provenance_entry WHERE row_key = '{\"id\": 42}'") == "n42"


def test_writes_from_functions_and_other_triggers(item):
    item.sql("""
        CREATE TABLE audit_source (id int PRIMARY KEY, item_id bigint);
        CREATE FUNCTION bump(i bigint) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN UPDATE item SET qty = coalesce(qty, 0) + 1 WHERE id = i; END $$;
        CREATE FUNCTION on_source() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO item (id, name) VALUES (NEW.item_id, 'from trigger'); RETURN NEW; END $$;
        CREATE TRIGGER t AFTER INSERT ON audit_source FOR EACH ROW EXECUTE FUNCTION on_source();
    """)
    item.sql("INSERT INTO audit_source VALUES (1, 50), (2, 51)")
    item.sql("SELECT bump(50)")
    item.sql("SELECT bump(id) FROM item")
    rows = item.sql("SELECT kind, row_key, row_data->'qty' FROM koherent.provenance_entry ORDER BY history_id")
    assert rows[:3] == [
        ("CREATE", {"id": 50}, None),
        ("CREATE", {"id": 51}, None),
        ("UPDATE", {"id": 50}, 1),
    ]
    assert sorted(rows[3:], key=str) == [("UPDATE", {"id": 50}, 2), ("UPDATE", {"id": 51}, 1)]


def test_truncate_keeps_every_removed_row(item):
    item.sql("INSERT INTO item (id, name) SELECT g, 'n' || g FROM generate_series(1, 25) g")
    item.sql("TRUNCATE item")
    rows = item.sql("SELECT row_key, row_data->>'name' FROM koherent.provenance_entry WHERE kind = 'TRUNCATE' ORDER BY history_id")
    assert sorted(r[0]["id"] for r in rows) == list(range(1, 26))
    assert all(r[1] == f"n{r[0]['id']}" for r in rows)
    h = item.one("SELECT min(history_id) FROM koherent.provenance_entry WHERE kind = 'TRUNCATE'")
    assert [r[0] for r in changes(item, h)] == ["id", "name", "note", "price", "qty"]
    assert all(r[2] is None for r in changes(item, h))


def test_rollback_and_savepoints_leave_nothing(item):
    with item.conn(autocommit=False) as c:
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.rollback()
    assert item.state_counts() == (0, 0, 0)
    with item.conn(autocommit=False) as c:
        c.execute("INSERT INTO item (id) VALUES (2)")
        c.execute("SAVEPOINT s")
        c.execute("INSERT INTO item (id) VALUES (3)")
        c.execute("UPDATE item SET qty = 1 WHERE id = 2")
        c.execute("ROLLBACK TO SAVEPOINT s")
        c.execute("UPDATE item SET qty = 2 WHERE id = 2")
        c.commit()
    assert [(r[0], r[1]) for r in entries(item)] == [("CREATE", {"id": 2}), ("UPDATE", {"id": 2})]
    # the context row written inside the rolled-back savepoint is rewritten, not dangling
    assert item.one(
        "SELECT count(*) FROM koherent.provenance_entry e LEFT JOIN koherent.transaction_auth_context c "
        "ON c.id = e.context_id WHERE c.id IS NULL") == 0
    assert item.count("koherent.transaction_auth_context") == 1


def test_savepoint_rollback_of_first_write(item):
    with item.conn(autocommit=False) as c:
        c.execute("SAVEPOINT a")
        c.execute("INSERT INTO item (id) VALUES (1)")  # writes the context row inside `a`
        c.execute("ROLLBACK TO SAVEPOINT a")
        c.execute("INSERT INTO item (id) VALUES (2)")
        c.commit()
    assert item.one("SELECT count(*) FROM koherent.provenance_entry WHERE db_role = 'postgres'") == 1
    assert item.count("koherent.transaction_auth_context") == 1


def test_primary_key_change_keeps_history_connected(item):
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1)")
    item.sql("UPDATE item SET id = 100 WHERE id = 1")
    item.sql("UPDATE item SET qty = 2 WHERE id = 100")
    h = ids(item)
    assert changes(item, h[1]) == [("id", 1, 100)]
    assert item.sql('SELECT id, "old:id" FROM koherent_history.item ORDER BY history_id') == [
        (1, None), (100, 1), (100, 100)]


def test_psql_session(item):
    """psql as a real client: a script with a transaction, read back as text."""
    script = """
\\set ON_ERROR_STOP 1
BEGIN;
INSERT INTO item (id, name, qty) VALUES (1, 'bolt', 5);
UPDATE item SET qty = 4 WHERE id = 1;
COMMIT;
SELECT kind, row_key->>'id' AS id, row_data->>'qty' AS qty FROM koherent.provenance_entry ORDER BY history_id;
"""
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-h", HOST, "-p", str(PORT), "-U", APP_ROLE, "-d", item.name],
        input=script, capture_output=True, text=True,
    )
    # the application role may write the table but not read history
    assert "permission denied for view provenance_entry" in out.stderr
    item.sql(f"GRANT SELECT ON koherent.provenance_entry TO {APP_ROLE}")
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-h", HOST, "-p", str(PORT), "-U", APP_ROLE, "-d", item.name,
         "-c", "SELECT kind, row_key->>'id', row_data->>'qty', db_role FROM koherent.provenance_entry ORDER BY history_id"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.split() == ["CREATE|1|5|koherent_app", "UPDATE|1|4|koherent_app"]


def test_history_keeps_its_own_copy_of_toasted_values(db):
    # The transition tables of an UPDATE carry unchanged wide values as pointers into the source
    # table's TOAST; the writer must store the values, not the pointers.
    db.sql("CREATE TABLE doc (id int PRIMARY KEY, body text, n int)")
    db.sql("ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL")
    db.sql("SELECT koherent.track('doc')")
    body = "".join(chr(0x41 + (i * 7919) % 26) for i in range(200_000))
    db.sql("INSERT INTO doc VALUES (1, %s, 0)", [body])
    db.sql("UPDATE doc SET n = 1")
    db.sql("UPDATE doc SET body = body || 'x'")
    db.sql("DELETE FROM doc")
    db.sql("VACUUM doc")
    rows = db.sql("SELECT history_kind, md5(body), length(body), n, md5(\"old:body\") "
                  "FROM koherent_history.doc ORDER BY history_id")
    h, hx = db.one("SELECT md5(%s)", [body]), db.one("SELECT md5(%s)", [body + "x"])
    assert rows == [("CREATE", h, 200_000, 0, None), ("UPDATE", h, 200_000, 1, h),
                    ("UPDATE", hx, 200_001, 1, h), ("DELETE", hx, 200_001, 1, None)]
    # only the second UPDATE changed body; the first changed n alone
    assert db.sql("SELECT e.kind, c.field FROM koherent.provenance_entry e "
                  "JOIN koherent.effective_change c USING (history_id) "
                  "WHERE e.kind = 'UPDATE' ORDER BY e.history_id") == [("UPDATE", "n"), ("UPDATE", "body")]


def test_large_statements_spill_and_pair_correctly(item):
    # More rows than one batch (1000) and than work_mem holds: transition tables go to disk.
    item.sql("SET work_mem = '64kB'")
    item.sql("INSERT INTO item (id, name, qty) SELECT g, repeat('n', g % 50), g FROM generate_series(1, 25000) g")
    item.sql("UPDATE item SET qty = qty * 2, id = id + 100000 WHERE id % 3 <> 0")
    assert item.sql("SELECT history_kind, count(*), count(DISTINCT history_id) FROM koherent_history.item "
                    "GROUP BY 1 ORDER BY 1") == [("CREATE", 25000, 25000), ("UPDATE", 16667, 16667)]
    assert item.one('SELECT count(*) FROM koherent_history.item WHERE history_kind = \'UPDATE\' '
                    'AND (qty <> "old:qty" * 2 OR id <> "old:id" + 100000 OR name IS DISTINCT FROM "old:name")') == 0
    # ids follow the order rows were recorded, one context for the whole transaction
    assert item.one("SELECT count(DISTINCT history_context) FROM koherent_history.item "
                    "WHERE history_kind = 'UPDATE'") == 1


def test_large_statement_reserves_one_block_of_ids(item):
    item.sql("INSERT INTO item (id, qty) VALUES (0, 0)")  # one row: one nextval
    item.sql("INSERT INTO item (id, qty) SELECT g, g FROM generate_series(1, 500) g")
    item.sql("UPDATE item SET qty = -1 WHERE id = 0")
    ids = [r[0] for r in item.sql("SELECT history_id FROM koherent_history.item ORDER BY history_id")]
    block = ids[1:501]
    assert block == list(range(block[0], block[0] + 500))  # consecutive, in row order
    assert item.sql("SELECT id FROM koherent_history.item WHERE history_kind = 'CREATE' AND id > 0 "
                    "ORDER BY history_id") == [(g,) for g in range(1, 501)]
    assert ids[0] < block[0] and ids[-1] > block[-1]  # recorded before and after the block
    # an UPDATE reserves for every row it touched; rows it did not change leave a gap
    item.sql("UPDATE item SET qty = CASE WHEN id <= 100 THEN qty + 1 ELSE qty END WHERE id > 0")
    upd = [r[0] for r in item.sql("SELECT history_id FROM koherent_history.item "
                                  "WHERE history_kind = 'UPDATE' AND id > 0 ORDER BY history_id")]
    assert len(upd) == 100 and upd == list(range(upd[0], upd[0] + 100))
    item.sql("INSERT INTO item (id, qty) VALUES (1000, 0)")
    assert item.one("SELECT max(history_id) FROM koherent_history.item") >= upd[0] + 500


def test_errors_keep_every_field_through_koherents_hooks(item):
    """koherent's executor hooks catch an error only to put their statement stacks back, and
    raise the same error again: its SQLSTATE (also one of the application's own), CONTEXT,
    constraint and table names reach the client as PostgreSQL raised them."""
    db = item
    db.sql("CREATE FUNCTION fail_custom() RETURNS void LANGUAGE plpgsql AS "
           "$$ BEGIN RAISE EXCEPTION 'app says no' USING ERRCODE = 'U0001', HINT = 'a hint'; END $$")
    with db.conn() as c:
        c.execute("SELECT koherent.current_context_id()")  # the library is loaded: hooks on
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT fail_custom()")
        assert e.value.sqlstate == "U0001"
        assert e.value.diag.message_hint == "a hint"
        assert "fail_custom" in e.value.diag.context
        c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
        with pytest.raises(psycopg.errors.UniqueViolation) as e:
            c.execute("INSERT INTO item (id, qty) VALUES (1, 2)")
        assert (e.value.diag.constraint_name, e.value.diag.table_name) == ("item_pkey", "item")
        # after errors inside savepoints, the statement stacks are in step: writes are recorded
        # with increasing dates
        c.execute("BEGIN")
        c.execute("UPDATE item SET qty = 3 WHERE id = 1")
        for _ in range(3):
            c.execute("SAVEPOINT s")
            with pytest.raises(psycopg.Error):
                c.execute("INSERT INTO item (id, qty) VALUES (1, 9)")
            c.execute("ROLLBACK TO SAVEPOINT s")
        c.execute("UPDATE item SET qty = 4 WHERE id = 1")
        c.execute("COMMIT")
    rows = db.sql("SELECT kind, row_data->>'qty', date FROM koherent.provenance_entry ORDER BY history_id")
    assert [(k, q) for k, q, _ in rows] == [("CREATE", "1"), ("UPDATE", "3"), ("UPDATE", "4")]
    assert rows[0][2] < rows[1][2] < rows[2][2]


def test_context_ids_are_distinct_uuidv7_across_backends(item):
    """Context ids are UUIDv7 (time, then random bits drawn from PostgreSQL's strong random
    source in 4 KiB blocks per backend): distinct within a backend past a block's end, across
    backends, and ordered by time in their first 48 bits."""
    import uuid
    with item.conn() as c:  # one backend: 600 transactions, more than one 4 KiB block (409 ids)
        for i in range(600):
            c.execute("INSERT INTO item (id) VALUES (%s)", [i])
    for i in range(20):  # other backends
        item.sql(f"INSERT INTO item (id) VALUES ({1000 + i})")
    ids = [r[0] for r in item.sql("SELECT id FROM koherent.transaction_auth_context ORDER BY created_at, id")]
    assert len(ids) == 620 and len(set(ids)) == 620
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    ms = [int.from_bytes(u.bytes[:6], "big") for u in ids]
    assert ms == sorted(ms)
    # the random part differs everywhere (no block handed out twice)
    assert len({u.bytes[6:] for u in ids}) == 620
