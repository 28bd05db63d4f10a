"""DDL around tracked tables: track() and untrack() (idempotent, exclude lists, rows that existed
before tracking), ALTER TABLE (columns added, renamed, dropped, retyped), DROP TABLE, a writing
session that outlives DDL and track() changes, the extension dropped and created again under a
writing session, and the input track() refuses."""

import psycopg
import pytest

from conftest import ITEM_DDL, changes, entries, ids


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


def test_alter_type_that_does_not_convert_keeps_old_values(item):
    item.sql("INSERT INTO item (id, name) VALUES (1, 'not a number')")
    item.sql("UPDATE item SET name = NULL")
    item.sql("ALTER TABLE item ALTER COLUMN name TYPE integer USING name::integer")
    item.sql("UPDATE item SET name = 8")
    cols = [r[0] for r in item.sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'koherent_history.item'::regclass "
        "AND attnum > 0 AND NOT attisdropped AND attname LIKE 'name%' ORDER BY 1")]
    assert cols[0] == "name" and cols[1].startswith("name@")
    assert item.one(f'SELECT "{cols[1]}" FROM koherent_history.item ORDER BY history_id LIMIT 1') == "not a number"
    assert item.one("SELECT name FROM koherent_history.item ORDER BY history_id DESC LIMIT 1") == 8


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


def test_history_out_of_step_is_a_clear_error(item):
    """A history table changed by hand (here: a column renamed by a superuser) makes the writer
    fail with 55000 and a hint to run track() again, not an internal error; nothing is written."""
    item.sql("ALTER TABLE koherent_history.item RENAME COLUMN qty TO qty_by_hand")
    with item.conn() as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
        assert "reason: history_out_of_sync" in e.value.diag.message_detail
        assert 'history column "qty" is missing' in e.value.diag.message_primary
        assert "koherent.track" in e.value.diag.message_hint
    assert item.count("item") == 0 and item.count("koherent.provenance_entry") == 0


def test_a_type_change_that_rewrites_values_with_an_expression_is_refused(db):
    """ALTER COLUMN ... TYPE ... USING <expression> rewrites every row's value with no history
    trigger firing (history's values are converted by a plain cast): on a tracked table only the
    column itself or its plain cast to the new type (however the type is spelled) go through;
    any other expression is refused (0A000 unrecorded_rewrite) before anything runs, also for
    the table's owner and through a partitioned table; an untracked table is not koherent's."""
    from conftest import APP_ROLE, write

    db.sql(f'CREATE TABLE rw (id int PRIMARY KEY, qty int, "Note" text)')
    db.sql("SELECT koherent.track('rw')")
    db.sql(f"ALTER TABLE rw OWNER TO {APP_ROLE}")
    write(db, "INSERT INTO rw VALUES (1, 5, 'x'), (2, 7, 'yy')")
    refused = ["ALTER TABLE rw ALTER COLUMN qty TYPE bigint USING qty * 10",
               'ALTER TABLE rw ALTER COLUMN "Note" TYPE int USING length("Note")',
               "ALTER TABLE rw ALTER COLUMN qty TYPE numeric USING qty::bigint",   # a cast to another type
               "ALTER TABLE rw ALTER COLUMN qty TYPE text USING 'forged'",
               "ALTER TABLE rw ADD COLUMN extra int, ALTER COLUMN qty TYPE bigint USING id",
               "ALTER TABLE rw ALTER COLUMN qty TYPE bigint USING other.qty::bigint"]
    for statement in refused:
        for user in ("postgres", APP_ROLE):
            with db.conn(user=user) as c, pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                c.execute(statement)
            assert e.value.diag.message_detail.startswith("reason: unrecorded_rewrite"), statement
            assert "public.rw" in e.value.diag.message_primary and "UPDATE first" in e.value.diag.message_hint
    assert db.sql('SELECT id, qty, "Note" FROM rw ORDER BY id') == [(1, 5, "x"), (2, 7, "yy")]
    assert db.one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'rw'::regclass "
                  "AND attname = 'qty'") == "integer"
    # the column, its plain cast however spelled, no USING: the values are what history converts
    for statement in ["ALTER TABLE rw ALTER COLUMN qty TYPE bigint USING qty::int8",
                      "ALTER TABLE rw ALTER COLUMN qty TYPE numeric(12,2) USING qty::numeric(12, 2)",
                      "ALTER TABLE rw ALTER COLUMN qty TYPE numeric(12,2) USING (qty)",
                      'ALTER TABLE rw ALTER COLUMN "Note" TYPE varchar(9) USING "Note"::character varying(9)',
                      'ALTER TABLE rw ALTER COLUMN "Note" TYPE text USING rw."Note" COLLATE "C"',
                      "ALTER TABLE public.rw ALTER COLUMN qty TYPE numeric(14,2) USING public.rw.qty::numeric(14,2)",
                      "ALTER TABLE rw ALTER COLUMN qty TYPE bigint"]:
        with db.conn(user=APP_ROLE) as c:
            c.execute(statement)
    assert db.sql('SELECT id, qty, "Note" FROM rw ORDER BY id') == [(1, 5, "x"), (2, 7, "yy")]
    # through a partitioned table
    db.sql("CREATE TABLE rp (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)")
    db.sql("CREATE TABLE rp1 PARTITION OF rp FOR VALUES FROM (0) TO (10)")
    db.sql("SELECT koherent.track('rp')")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("ALTER TABLE rp ALTER COLUMN id TYPE bigint USING id + 1")
    # not tracked (any more): PostgreSQL's own rules
    db.sql("SELECT koherent.untrack('rw')")
    db.sql("ALTER TABLE rw ALTER COLUMN qty TYPE bigint USING qty * 10")
    assert db.sql("SELECT qty FROM rw ORDER BY id") == [(50,), (70,)]


def test_a_recorded_enum_label_cannot_be_renamed(db):
    """ALTER TYPE ... RENAME VALUE relabels every value of the enum in place: history's
    recorded values would read as the new label and the tracked table's rows change with no
    entry. Refused (0A000 enum_renamed) for an enum history holds (also as an array or a domain
    of it); ADD VALUE, and a rename of an enum no history holds, go through."""
    import pytest as _pytest

    db.sql("CREATE TYPE st AS ENUM ('approved', 'rejected')")
    db.sql("CREATE TYPE other AS ENUM ('x')")
    db.sql("CREATE DOMAIN st_d AS st")
    db.sql("CREATE TABLE e1 (id int PRIMARY KEY, s st)")
    db.sql("CREATE TABLE e2 (id int PRIMARY KEY, s st_d[])")
    db.sql("SELECT koherent.track('e1')")
    db.sql("INSERT INTO e1 VALUES (1, 'rejected')")
    db.sql("UPDATE e1 SET s = 'approved'")
    with _pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        db.sql("ALTER TYPE st RENAME VALUE 'approved' TO 'denied'")
    assert e.value.diag.message_detail.startswith("reason: enum_renamed") and "ADD VALUE" in e.value.diag.message_hint
    db.sql("ALTER TYPE st ADD VALUE 'pending'")
    db.sql("ALTER TYPE other RENAME VALUE 'x' TO 'y'")
    assert [r[0] for r in db.sql("SELECT row_data->>'s' FROM koherent.provenance_entry ORDER BY history_id")] == [
        "rejected", "approved"]
    db.sql("SELECT koherent.untrack('e1')")
    db.sql("SELECT koherent.track('e2')")   # (history of e1 is kept: still refused)
    with _pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("ALTER TYPE st RENAME VALUE 'approved' TO 'denied'")
