"""Issue 2: complete per-table history, read through provenance_entry, effective_change and the
typed history tables."""

import subprocess

import psycopg
import pytest

from conftest import APP_ROLE, HOST, ITEM_DDL, PORT


def entries(db, table="item"):
    return db.sql(
        "SELECT kind, row_key, row_data - 'updated' FROM koherent.provenance_entry "
        "WHERE table_name = %s::regclass ORDER BY history_id",
        [table],
    )


def changes(db, history_id):
    return db.sql(
        "SELECT field, old_value, new_value FROM koherent.effective_change "
        "WHERE history_id = %s AND field <> 'updated' ORDER BY field",
        [history_id],
    )


def ids(db):
    return [r[0] for r in db.sql("SELECT history_id FROM koherent.provenance_entry ORDER BY history_id")]


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


def test_track_is_idempotent_and_applies_changed_exclude(item):
    item.sql("SELECT koherent.track('item')")
    assert item.sql("SELECT table_name::text, exclude, require_task FROM koherent.tracked_table") == [("item", [], False)]
    assert item.count("koherent.tracked_config") == 1
    item.sql("INSERT INTO item (id, name, note) VALUES (1, 'a', 'secret')")
    item.sql("SELECT koherent.track('item', '{note}')")
    assert item.sql("SELECT exclude FROM koherent.tracked_table") == [(["note"],)]
    item.sql("INSERT INTO item (id, name, note) VALUES (2, 'b', 'secret')")
    # an update of the excluded column only is not a change
    item.sql("UPDATE item SET note = 'other'")
    rows = item.sql("SELECT row_key, row_data->'note' FROM koherent.provenance_entry ORDER BY history_id")
    assert rows == [({"id": 1}, "secret"), ({"id": 2}, None)]
    # the excluded field is not listed as an effective change of the later entry
    last = ids(item)[-1]
    assert "note" not in [r[0] for r in changes(item, last)]


def test_exclude_at_track_time(db):
    db.sql(ITEM_DDL)
    db.sql("SELECT koherent.track('item', exclude => '{note,price}')")
    db.sql("INSERT INTO item (id, name, note, price) VALUES (1, 'a', 'n', 3)")
    db.sql("UPDATE item SET note = 'm', price = 4")
    assert entries(db) == [("CREATE", {"id": 1}, {"id": 1, "name": "a", "qty": None})]
    cols = [r[0] for r in db.sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'koherent_history.item'::regclass AND attnum > 0")]
    assert "note" not in cols and "price" not in cols


def test_first_update_of_row_that_existed_before_tracking(db):
    db.sql(ITEM_DDL)
    db.sql("INSERT INTO item (id, name, qty) VALUES (1, 'a', 1)")
    db.sql("SELECT koherent.track('item')")
    db.sql("UPDATE item SET qty = 2, name = 'b'")
    (h,) = ids(db)
    assert changes(db, h) == [("name", "a", "b"), ("qty", 1, 2)]


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


def test_partitioned_table(db):
    db.sql("""
        CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
        CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
    """)
    db.sql("SELECT koherent.track('m')")
    db.sql("CREATE TABLE m_asia PARTITION OF m FOR VALUES IN ('asia')")  # created after track
    db.sql("INSERT INTO m VALUES (1, 'eu', 1), (2, 'us', 2), (3, 'asia', 3)")
    db.sql("INSERT INTO m_eu VALUES (4, 'eu', 4)")  # directly into a partition
    db.sql("UPDATE m SET v = v * 10")
    db.sql("UPDATE m SET region = 'us' WHERE id = 1")  # moves across partitions
    db.sql("DELETE FROM m_us WHERE id = 2")
    db.sql("TRUNCATE m")
    rows = db.sql("SELECT kind, row_key, (row_data->>'v')::int FROM koherent.provenance_entry ORDER BY history_id")
    kinds = [r[0] for r in rows]
    assert kinds.count("CREATE") == 4 and kinds.count("UPDATE") == 5
    assert ("UPDATE", {"id": 1, "region": "us"}, 10) in rows
    assert ("DELETE", {"id": 2, "region": "us"}, 20) in rows
    assert sorted(r[1]["id"] for r in rows if r[0] == "TRUNCATE") == [1, 3, 4]
    assert len(rows) == 13


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


def test_alter_table_keeps_writes_and_history(item):
    item.sql("INSERT INTO item (id, name, qty, note) VALUES (1, 'a', 1, 'n')")
    item.sql("ALTER TABLE item ADD COLUMN color text")
    item.sql("INSERT INTO item (id, name, color) VALUES (2, 'b', 'red')")
    item.sql("ALTER TABLE item RENAME COLUMN name TO title")
    item.sql("UPDATE item SET title = 'A' WHERE id = 1")
    item.sql("ALTER TABLE item DROP COLUMN note")
    item.sql("UPDATE item SET qty = 5 WHERE id = 2")
    item.sql("ALTER TABLE item ALTER COLUMN qty TYPE bigint")
    item.sql("UPDATE item SET qty = 10000000000 WHERE id = 2")
    item.sql("ALTER TABLE item ALTER COLUMN price TYPE text USING price::text")
    item.sql("UPDATE item SET price = 'cheap' WHERE id = 1")
    h = ids(item)
    assert len(h) == 6
    # earlier history readable under the new names and types
    assert item.sql("SELECT title, qty FROM koherent_history.item ORDER BY history_id") == [
        ("a", 1), ("b", None), ("A", 1), ("b", 5), ("b", 10000000000), ("A", 1)]
    assert item.one("SELECT note FROM koherent_history.item WHERE history_id = %s", [h[0]]) == "n"
    assert changes(item, h[1]) == [("color", None, "red"), ("id", None, 2), ("note", None, None),
                                   ("price", None, None), ("qty", None, None), ("title", None, "b")]
    assert changes(item, h[2]) == [("title", "a", "A")]
    assert changes(item, h[4]) == [("qty", 5, 10000000000)]
    assert changes(item, h[5]) == [("price", None, "cheap")]
    # a CREATE lists the fields that existed then: the dropped note, not the later color
    assert [r[0] for r in changes(item, h[0])] == ["id", "note", "price", "qty", "title"]


def test_a_long_lived_session_follows_ddl_and_track_changes(item):
    """The writer keeps what it learned of a trigger's tables per backend: DDL and track() changes
    made by other sessions, and by the writing session itself, must reach a session that wrote
    before them."""
    with item.conn() as w:
        w.execute("INSERT INTO item (id, name, qty, note) VALUES (1, 'a', 1, 'n')")
        item.sql("ALTER TABLE item ADD COLUMN color text")
        w.execute("INSERT INTO item (id, name, color) VALUES (2, 'b', 'red')")
        item.sql("ALTER TABLE item RENAME COLUMN name TO title")
        w.execute("UPDATE item SET title = 'A' WHERE id = 1")
        item.sql("ALTER TABLE item DROP COLUMN note")
        w.execute("UPDATE item SET qty = 5 WHERE id = 2")
        item.sql("SELECT koherent.track('item', exclude => '{qty}')")
        w.execute("UPDATE item SET qty = 6, color = 'blue' WHERE id = 2")
        w.execute("UPDATE item SET qty = 7 WHERE id = 2")  # only an excluded column: no entry
        w.execute("ALTER TABLE item ALTER COLUMN price TYPE text USING price::text")
        w.execute("UPDATE item SET price = 'cheap' WHERE id = 1")
        item.sql("SELECT koherent.untrack('item')")
        w.execute("UPDATE item SET price = 'free' WHERE id = 1")  # not tracked: not recorded
        item.sql("SELECT koherent.track('item', exclude => '{qty}')")
        w.execute("DELETE FROM item WHERE id = 2")
        # the history table itself changed under the session (no trigger changed): seen at once
        item.sql("ALTER TABLE koherent_history.item ADD COLUMN reviewed text")
        w.execute("INSERT INTO item (id, title) VALUES (3, 'c')")
        w.execute("UPDATE item SET title = 'cc' WHERE id = 3")  # the UPDATE trigger's plan is kept
        item.sql('ALTER TABLE koherent_history.item RENAME COLUMN "old:title" TO archived')
        with pytest.raises(psycopg.Error) as e:  # loud, not written into the renamed column
            w.execute("UPDATE item SET title = 'C' WHERE id = 3")
        assert 'history column "old:title" is missing' in str(e.value)
    assert item.sql("SELECT history_kind, id, title, color, qty, price FROM koherent_history.item "
                    "ORDER BY history_id") == [
        ("CREATE", 1, "a", None, 1, None),
        ("CREATE", 2, "b", "red", None, None),
        ("UPDATE", 1, "A", None, 1, None),
        ("UPDATE", 2, "b", "red", 5, None),
        ("UPDATE", 2, "b", "blue", None, None),
        ("UPDATE", 1, "A", None, None, "cheap"),
        ("DELETE", 2, "b", "blue", None, None),
        ("CREATE", 3, "c", None, None, None),
        ("UPDATE", 3, "cc", None, None, None)]
    assert item.sql("SELECT reviewed FROM koherent_history.item WHERE id = 3") == [(None,), (None,)]
    h = ids(item)
    assert changes(item, h[4]) == [("color", "red", "blue")]


def test_extension_recreated_under_a_writing_session(item):
    # What a backend keeps of koherent's objects (oids of the history schema, sequence, context
    # table, per-trigger plans) must not outlive them.
    with item.conn() as w:
        w.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
        w.execute("UPDATE item SET qty = 2")
        w.execute("DROP EXTENSION koherent CASCADE")
        w.execute("CREATE EXTENSION koherent")
        w.execute("SELECT koherent.track('item')")
        w.execute("UPDATE item SET qty = 3")
        w.execute("INSERT INTO item (id, qty) VALUES (2, 1)")
    assert item.sql("SELECT kind, row_key->>'id', row_data->>'qty' FROM koherent.provenance_entry "
                    "ORDER BY history_id") == [("UPDATE", "1", "3"), ("CREATE", "2", "1")]
    assert item.count("koherent.transaction_auth_context") == 2


def test_alter_type_that_does_not_convert_keeps_old_values(item):
    item.sql("INSERT INTO item (id, name) VALUES (1, 'not a number')")
    item.sql("UPDATE item SET name = NULL")
    item.sql("ALTER TABLE item ALTER COLUMN name TYPE integer USING 7")
    item.sql("UPDATE item SET name = 8")
    cols = [r[0] for r in item.sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'koherent_history.item'::regclass "
        "AND attnum > 0 AND NOT attisdropped AND attname LIKE 'name%' ORDER BY 1")]
    assert cols[0] == "name" and cols[1].startswith("name@")
    assert item.one(f'SELECT "{cols[1]}" FROM koherent_history.item ORDER BY history_id LIMIT 1') == "not a number"
    assert item.one("SELECT name FROM koherent_history.item ORDER BY history_id DESC LIMIT 1") == 8


def test_drop_table_keeps_history_readable(item):
    item.sql("INSERT INTO item (id, name) VALUES (1, 'a')")
    oid = item.one("SELECT 'item'::regclass::oid")
    item.sql("DROP TABLE item")
    rows = item.sql("SELECT kind, row_key, row_data->>'name', table_ident, table_name::oid FROM koherent.provenance_entry")
    assert rows == [("CREATE", {"id": 1}, "a", "public.item", oid)]
    assert item.count("koherent.tracked_table") == 0
    assert item.one("SELECT count(*) FROM koherent.effective_change") == 6
    # a new table of the same name can be tracked again, with a history of its own
    item.sql(ITEM_DDL)
    item.sql("SELECT koherent.track('item')")
    item.sql("INSERT INTO item (id) VALUES (1)")
    assert item.count("koherent.provenance_entry") == 2
    assert item.one("SELECT history_table::text FROM koherent.tracked_table") != "koherent_history.item"


def test_untrack_stops_recording_and_keeps_history(item):
    item.sql("INSERT INTO item (id) VALUES (1)")
    item.sql("SELECT koherent.untrack('item')")
    item.sql("INSERT INTO item (id) VALUES (2)")
    assert item.count("koherent.tracked_table") == 0
    assert [r[1] for r in entries(item)] == [{"id": 1}]
    assert item.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'item'::regclass") == 0
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.untrack('item')")
    assert e.value.sqlstate == "55000"
    item.sql("SELECT koherent.track('item')")
    item.sql("INSERT INTO item (id) VALUES (3)")
    assert [r[1] for r in entries(item)] == [{"id": 1}, {"id": 3}]


@pytest.mark.parametrize(
    "setup, target, state, fragment",
    [
        ("CREATE VIEW v AS SELECT 1 AS id", "v", "42809", "is not a table"),
        ("", "no_such_table", "42P01", "does not exist"),
        ("", "pg_class", "0A000", "system"),
        ("CREATE TABLE nopk (a int)", "nopk", "42P16", "no primary key"),
        ("CREATE SEQUENCE s", "s", "42809", "is not a table"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1 AS id", "mv", "42809", "is not a table"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(db, setup, target, state, fragment):
    if setup:
        db.sql(setup)
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.track(%s)", [target])
    assert e.value.sqlstate == state
    assert fragment in str(e.value)
    assert db.count("koherent.tracked_config") == 0
    assert db.one("SELECT count(*) FROM pg_class WHERE relnamespace = 'koherent_history'::regnamespace") == 0


def test_bad_exclude_is_refused(item):
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.track('item', '{nope}')")
    assert e.value.sqlstate == "42703"
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.track('item', '{id}')")
    assert e.value.sqlstate == "22023"
    assert item.sql("SELECT exclude FROM koherent.tracked_table") == [([],)]


def test_reserved_column_names_are_refused(db):
    db.sql("CREATE TABLE r (id int PRIMARY KEY, history_kind text)")
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.track('r')")
    assert e.value.sqlstate == "42701"


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


def test_nulls_and_partition_with_other_column_order(db):
    db.sql("CREATE TABLE m (id int, k text, v numeric, PRIMARY KEY (id, k)) PARTITION BY LIST (k)")
    db.sql("CREATE TABLE m_a PARTITION OF m FOR VALUES IN ('a')")
    # a partition whose columns sit in another order (and one dropped column) than its parent's
    db.sql("CREATE TABLE m_b (v numeric, junk int, k text NOT NULL, id int NOT NULL)")
    db.sql("ALTER TABLE m_b DROP COLUMN junk")
    db.sql("ALTER TABLE m ATTACH PARTITION m_b FOR VALUES IN ('b')")
    db.sql("SELECT koherent.track('m')")
    db.sql("INSERT INTO m VALUES (1, 'a', NULL), (2, 'b', 2.5)")
    db.sql("UPDATE m SET v = NULL WHERE id = 2")
    db.sql("UPDATE m_b SET v = 7 WHERE id = 2")  # the partition written directly
    db.sql("UPDATE m SET v = v")  # no change at all
    assert db.sql("SELECT history_kind, id, k, v, \"old:v\" FROM koherent_history.m ORDER BY history_id") == [
        ("CREATE", 1, "a", None, None), ("CREATE", 2, "b", 2.5, None),
        ("UPDATE", 2, "b", None, 2.5), ("UPDATE", 2, "b", 7, None)]


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


def test_row_index_is_added_on_request_or_by_expose(item):
    def row_index():
        return item.one("SELECT row_index FROM koherent.tracked_table")

    def btrees():
        return item.sql("SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c "
                        "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                        "WHERE i.indrelid = 'koherent_history.item'::regclass AND a.amname = 'btree'")

    def uses_row_index():
        with item.conn() as c:
            c.execute("SET enable_seqscan = off")
            body = "\n".join(r[0] for r in c.execute(
                "EXPLAIN (COSTS OFF) SELECT * FROM koherent_history.item h WHERE h.id = 1").fetchall())
        return "item_id_history_id_idx" in body

    # a new history table has no row index: bulk writes pay no btree descent per entry
    assert row_index() is False and btrees() == []
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1)")
    item.sql("UPDATE item SET qty = 2")
    item.sql("SELECT koherent.track('item')")  # idempotent, and the default leaves it as it is
    assert btrees() == []
    item.sql("SELECT koherent.track('item', row_index => true)")
    assert row_index() is True and len(btrees()) == 1 and "(id, history_id)" in btrees()[0][0]
    assert uses_row_index()
    item.sql("SELECT koherent.track('item')")  # still idempotent: the index stays
    assert row_index() is True and len(btrees()) == 1
    item.sql("SELECT koherent.track('item', row_index => false)")
    assert row_index() is False and btrees() == []
    # expose() serves <table>_provenance(row), a lookup by key: it adds the row index
    item.sql("SELECT koherent.expose('item')")
    assert row_index() is True and len(btrees()) == 1 and uses_row_index()
    item.sql("SELECT koherent.expose('item')")  # a second expose() adds nothing
    assert len(btrees()) == 1
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
