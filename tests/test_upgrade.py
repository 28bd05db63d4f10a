"""Upgrading from earlier releases: CREATE EXTENSION koherent VERSION '0.1.0' ... '0.6.0' (their
install scripts, tests/fixtures/koherent--<version>.sql, as that release's `cargo pgrx install`
wrote them), history written by that release, then ALTER EXTENSION koherent UPDATE (through every
upgrade script in between). The result must match a fresh install of the current version, keep
the old history, and record new writes with the current writer."""

import json
import os
import shutil
import subprocess
import uuid

import pytest

from conftest import APP_ROLE, AUDIENCE, ISSUER, ITEM_DDL, ROOT, TEST_PUBLIC_JWK, Db, connect, mint, write

RELEASES = ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0"]


def current_version():
    for line in open(os.path.join(ROOT, "Cargo.toml")):
        if line.startswith("version"):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


@pytest.fixture
def old_db():
    sharedir = subprocess.run(["pg_config", "--sharedir"], capture_output=True, text=True,
                              check=True).stdout.strip()
    for release in RELEASES:
        target = os.path.join(sharedir, "extension", f"koherent--{release}.sql")
        shutil.copy(os.path.join(ROOT, "tests", "fixtures", f"koherent--{release}.sql"), target)
    dbs = [f"t_upgrade_{uuid.uuid4().hex[:8]}", f"t_fresh_{uuid.uuid4().hex[:8]}"]
    with connect() as c:
        for name in dbs:
            c.execute(f"CREATE DATABASE {name}")
            c.execute(f"ALTER DATABASE {name} SET koherent.audience = '{AUDIENCE}'")
    yield Db(dbs[0]), Db(dbs[1])
    with connect() as c:
        for name in dbs:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def members(db):
    """The extension's objects, and the definitions of its functions."""
    objs = db.sql("SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend d "
                  "JOIN pg_extension e ON e.oid = d.refobjid "
                  "WHERE e.extname = 'koherent' AND d.deptype = 'e' ORDER BY 1")
    defs = db.sql("SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), "
                  "coalesce(p.proacl::text, '') FROM pg_proc p "
                  "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'koherent' "
                  "AND p.prokind = 'f' ORDER BY 1")
    return objs, defs


def history_indexes(db, table="item"):
    """(access method, whether a bloom index, whether partial) of a history table's indexes."""
    return db.sql("SELECT a.amname, pg_get_indexdef(i.indexrelid) ~ 'uuid_bloom_ops', i.indpred IS NOT NULL "
                  "FROM pg_index i "
                  "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                  f"WHERE i.indrelid = 'koherent_history.{table}'::regclass ORDER BY 1, 2")


def trigger_functions(db, table="item"):
    return db.sql("SELECT p.proname, count(*)::int FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                  f"WHERE t.tgrelid = '{table}'::regclass GROUP BY 1 ORDER BY 1")


def install_release(old, fresh, release, tables):
    """`old` gets koherent `release` with the test key and `item` tracked; both databases get
    the tables (DDL) and the application role's grants on them."""
    old.sql(f"CREATE EXTENSION koherent VERSION '{release}'")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == release
    if not old.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]):
        old.sql(f"CREATE ROLE {APP_ROLE} LOGIN")
    for d in (old, fresh):
        for name, ddl in tables.items():
            d.sql(ddl)
            d.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {APP_ROLE}")
    old.sql("SELECT koherent.add_issuer_jwks(%s, %s::jsonb)", [ISSUER, json.dumps({"keys": [TEST_PUBLIC_JWK]})])
    old.sql("SELECT koherent.track('item')")


READER = "koherent_upgrade_reader"


def install_exposed(old, fresh, release):
    """install_release with `item` tracked with require_task and exposed to a reader role, which
    may read `item`; returns the reader's name."""
    with connect() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
            c.execute(f"CREATE ROLE {READER} LOGIN")
    install_release(old, fresh, release, {"item": ITEM_DDL})
    old.sql("SELECT koherent.track('item', require_task => true)")
    old.sql(f"SELECT koherent.expose('item', '{READER}')")
    old.sql(f"GRANT SELECT ON item TO {READER}")
    return READER


def test_upgrade_from_0_1_0(old_db):
    old, fresh = old_db
    install_release(old, fresh, "0.1.0", {"item": ITEM_DDL})
    # 0.1.0 wrote history with generated PL/pgSQL triggers and a btree on history_context
    assert not old.sql("SELECT 1 FROM pg_proc WHERE proname = '_history_trigger'")
    assert trigger_functions(old) == [("_trg_1", 4)]
    assert ("btree", False, False) in history_indexes(old) and len(history_indexes(old)) == 3
    write(old, ["INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", "UPDATE item SET qty = 10 WHERE id = 1"],
          mint("before-upgrade"), user=APP_ROLE)

    old.sql("ALTER EXTENSION koherent UPDATE")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == current_version()
    # the table now runs the Rust writer and has the new indexes
    assert trigger_functions(old) == [("_history_trigger", 3), ("_truncate_copy_1", 1)]
    assert history_indexes(old) == [("brin", False, False), ("brin", True, False), ("btree", False, False), ("btree", False, True)]
    write(old, ["UPDATE item SET qty = 20 WHERE id = 1", "DELETE FROM item WHERE id = 2"],
          mint("after-upgrade"), user=APP_ROLE)
    assert old.sql("SELECT kind, row_key->>'id', task_id FROM koherent.provenance_entry ORDER BY history_id") == [
        ("CREATE", "1", "before-upgrade"), ("CREATE", "2", "before-upgrade"),
        ("UPDATE", "1", "before-upgrade"), ("UPDATE", "1", "after-upgrade"), ("DELETE", "2", "after-upgrade")]
    assert old.sql("SELECT field, old_value, new_value FROM koherent.effective_change c "
                   "JOIN koherent.provenance_entry e USING (history_id) "
                   "WHERE e.task_id = 'after-upgrade' AND e.kind = 'UPDATE'") == [("qty", 10, 20)]
    assert old.one("SELECT count(*) FROM koherent.task_changes('before-upgrade')") == 3
    assert old.one("SELECT count(*) FROM koherent.task") == 2

    # the upgraded schema is the fresh install's: same objects, same function definitions and
    # grants; the table keeps the row index it had (a fresh track() adds it only when asked)
    fresh.sql("CREATE EXTENSION koherent")
    fresh.sql("SELECT koherent.track('item', row_index => true)")
    assert members(old) == members(fresh)
    assert history_indexes(old) == history_indexes(fresh)


def test_upgrade_from_0_2_0(old_db):
    old, fresh = old_db
    install_release(old, fresh, "0.2.0",
                    {"item": ITEM_DDL, "other": "CREATE TABLE other (k text PRIMARY KEY, v int)"})
    # 0.2.0 gave every tracked table the row index
    assert history_indexes(old) == [("brin", True, False), ("btree", False, False)]
    assert old.one("SELECT row_index FROM koherent.tracked_table") is True
    write(old, ["INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", "UPDATE item SET qty = 10 WHERE id = 1"],
          mint("before-upgrade"), user=APP_ROLE)

    old.sql("ALTER EXTENSION koherent UPDATE")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == current_version()
    # nothing was dropped, and track() with the new default leaves the index as it is
    old.sql("SELECT koherent.track('item')")
    assert history_indexes(old) == [("brin", False, False), ("brin", True, False), ("btree", False, False), ("btree", False, True)]
    # a table tracked now gets the row index (0.7.0's default); expose() adds nothing more
    old.sql("SELECT koherent.track('other')")
    assert history_indexes(old, "other") == [("brin", False, False), ("brin", True, False), ("btree", False, False), ("btree", False, True)]
    assert old.sql("SELECT table_name::text, row_index FROM koherent.tracked_table ORDER BY 1") == [
        ("item", True), ("other", True)]
    old.sql("SELECT koherent.expose('other')")
    assert history_indexes(old, "other") == [("brin", False, False), ("brin", True, False), ("btree", False, False), ("btree", False, True)]
    write(old, ["UPDATE item SET qty = 20 WHERE id = 1", "DELETE FROM item WHERE id = 2",
                "INSERT INTO other VALUES ('a', 1)"], mint("after-upgrade"), user=APP_ROLE)
    write(old, ["UPDATE other SET v = 2"], mint("after-upgrade"), user=APP_ROLE)  # a known task: direct context row
    assert old.sql("SELECT table_name::text, kind, row_key::text, task_id FROM koherent.provenance_entry "
                   "ORDER BY history_id") == [
        ("item", "CREATE", '{"id": 1}', "before-upgrade"), ("item", "CREATE", '{"id": 2}', "before-upgrade"),
        ("item", "UPDATE", '{"id": 1}', "before-upgrade"), ("item", "UPDATE", '{"id": 1}', "after-upgrade"),
        ("item", "DELETE", '{"id": 2}', "after-upgrade"), ("other", "CREATE", '{"k": "a"}', "after-upgrade"),
        ("other", "UPDATE", '{"k": "a"}', "after-upgrade")]
    assert old.one("SELECT count(*) FROM koherent.transaction_auth_context WHERE task_id = 'after-upgrade'") == 2
    assert old.sql("SELECT kind FROM other_provenance((SELECT o FROM other o WHERE k = 'a'))") == [
        ("CREATE",), ("UPDATE",)]

    fresh.sql("CREATE EXTENSION koherent")
    fresh.sql("SELECT koherent.track('item', row_index => true)")
    fresh.sql("SELECT koherent.track('other')")
    fresh.sql("SELECT koherent.expose('other')")
    assert members(old) == members(fresh)
    for t in ("item", "other"):
        assert history_indexes(old, t) == history_indexes(fresh, t)



def test_upgrade_from_0_3_0(old_db):
    """0.4.0's hardening reaches existing installations: the TRUNCATE copy and the exposed
    functions are generated again (grants kept), views are cast-free, context rows get
    effective_role, and old history stays readable."""
    old, fresh = old_db
    reader = install_exposed(old, fresh, "0.3.0")
    write(old, ["INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", "UPDATE item SET qty = 10 WHERE id = 1"],
          mint("before-upgrade"), user=APP_ROLE)
    # 0.3.0's exposed function trusted the row value it was given
    with old.conn(user=reader) as c:
        assert c.execute("SELECT count(*) FROM item_provenance(row(2, null, null, null, null, null)::item)").fetchone()[0] == 1

    old.sql("ALTER EXTENSION koherent UPDATE")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == current_version()
    assert old.one("SELECT prosrc ~ '_require_task' FROM pg_proc WHERE proname = '_truncate_copy_1'") is True
    assert old.one("SELECT count(*) FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid "
                   "WHERE d.deptype = 'e' AND p.proname IN ('_truncate_copy_1', 'item_provenance', '_filter_keys_1')") == 0
    old.sql("ALTER TABLE item ENABLE ROW LEVEL SECURITY")
    old.sql(f"CREATE POLICY only_one ON item FOR SELECT TO {reader} USING (id = 1)")
    old.sql(f"CREATE POLICY app ON item TO {APP_ROLE} USING (true) WITH CHECK (true)")
    with old.conn(user=reader) as c:
        # the grant survived; the function now checks the caller's own view of the row
        assert c.execute("SELECT count(*) FROM item_provenance(row(2, null, null, null, null, null)::item)").fetchone()[0] == 0
        assert c.execute("SELECT kind FROM item_provenance((SELECT i FROM item i)) ORDER BY history_id").fetchall() == [
            ("CREATE",), ("UPDATE",)]
    write(old, ["UPDATE item SET qty = 20 WHERE id = 1"], mint("after-upgrade"), user=APP_ROLE)
    assert old.sql("SELECT task_id, effective_role FROM koherent.provenance_entry ORDER BY history_id") == [
        ("before-upgrade", None), ("before-upgrade", None), ("before-upgrade", None), ("after-upgrade", APP_ROLE)]
    old.sql(f"GRANT TRUNCATE ON item TO {APP_ROLE}")
    with old.app() as c:
        with pytest.raises(Exception) as e:
            c.execute("TRUNCATE item")
        assert e.value.sqlstate == "28000"

    fresh.sql("CREATE EXTENSION koherent")
    fresh.sql("SELECT koherent.track('item', require_task => true)")
    fresh.sql(f"SELECT koherent.expose('item', '{reader}')")
    assert members(old) == members(fresh)
    assert history_indexes(old) == history_indexes(fresh)


def test_upgrade_from_0_4_0(old_db):
    """0.5.0 renames every table's generated functions (koherent._trg_<id> ->
    _truncate_copy_<id>, koherent._keys_<id> -> _filter_keys_<id>) and internal helpers: the
    old ones are gone, the new ones work for the roles granted before, and old history stays
    readable."""
    old, fresh = old_db
    reader = install_exposed(old, fresh, "0.4.0")
    old.sql(f"GRANT TRUNCATE ON item TO {APP_ROLE}")
    assert old.sql("SELECT proname FROM pg_proc WHERE proname IN ('_trg_1', '_keys_1', '_sync', '_cold_verify_micros') "
                   "ORDER BY 1") == [("_cold_verify_micros",), ("_keys_1",), ("_sync",), ("_trg_1",)]
    write(old, ["INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", "UPDATE item SET qty = 10 WHERE id = 1"],
          mint("before-upgrade"), user=APP_ROLE)

    old.sql("ALTER EXTENSION koherent UPDATE")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == current_version()
    assert old.sql("SELECT proname FROM pg_proc WHERE proname IN ('_trg_1', '_keys_1', '_sync', '_free_name', "
                   "'_cold_verify_micros', '_truncate_copy_1', '_filter_keys_1', '_sync_history_columns') "
                   "ORDER BY 1") == [("_filter_keys_1",), ("_sync_history_columns",), ("_truncate_copy_1",)]
    assert trigger_functions(old) == [("_history_trigger", 3), ("_truncate_copy_1", 1)]
    with old.conn(user=reader) as c:
        assert c.execute("SELECT kind FROM item_provenance((SELECT i FROM item i WHERE id = 1)) "
                         "ORDER BY history_id").fetchall() == [("CREATE",), ("UPDATE",)]
        assert c.execute("SELECT id FROM item_by_provenance(task_id => 'before-upgrade') ORDER BY id").fetchall() == [
            (1,), (2,)]
    write(old, ["UPDATE item SET qty = 20 WHERE id = 1", "TRUNCATE item"], mint("after-upgrade"), user=APP_ROLE)
    entries = old.sql("SELECT kind, row_key->>'id', task_id FROM koherent.provenance_entry ORDER BY history_id")
    assert entries[:4] == [("CREATE", "1", "before-upgrade"), ("CREATE", "2", "before-upgrade"),
                           ("UPDATE", "1", "before-upgrade"), ("UPDATE", "1", "after-upgrade")]
    assert sorted(entries[4:]) == [("TRUNCATE", "1", "after-upgrade"), ("TRUNCATE", "2", "after-upgrade")]
    with old.app() as c:   # require_task still holds for the TRUNCATE copy
        with pytest.raises(Exception) as e:
            c.execute("TRUNCATE item")
        assert e.value.sqlstate == "28000"

    fresh.sql("CREATE EXTENSION koherent")
    fresh.sql("SELECT koherent.track('item', require_task => true)")
    fresh.sql(f"SELECT koherent.expose('item', '{reader}')")
    assert members(old) == members(fresh)
    assert history_indexes(old) == history_indexes(fresh)


def test_upgrade_from_0_5_0(old_db):
    """0.6.0 adds revert and as-of: history written by 0.5.0 can be reverted and looked back at,
    an exposed table gets <table>_as_of for the roles granted before, and every history table's
    lookup index history_date."""
    old, fresh = old_db
    reader = install_exposed(old, fresh, "0.5.0")
    assert history_indexes(old) == [("brin", True, False), ("btree", False, False), ("btree", False, True)]
    write(old, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("before-upgrade"), user=APP_ROLE)
    at = old.one("SELECT clock_timestamp()")
    write(old, ["UPDATE item SET qty = 10 WHERE id = 1", "DELETE FROM item WHERE id = 2"], mint("bad-run"),
          user=APP_ROLE)

    old.sql("ALTER EXTENSION koherent UPDATE")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == current_version()
    assert history_indexes(old) == [("brin", False, False), ("brin", True, False), ("btree", False, False), ("btree", False, True)]
    assert old.one("SELECT pg_get_indexdef(i.indexrelid) ~ 'history_date' FROM pg_index i JOIN pg_class c "
                   "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                   "WHERE i.indrelid = 'koherent_history.item'::regclass AND a.amname = 'brin' "
                   "AND pg_get_indexdef(i.indexrelid) ~ 'bloom'") is True
    with old.conn(user=reader) as c:
        assert c.execute("SELECT id, qty FROM item_as_of(%s) ORDER BY id", [at]).fetchall() == [(1, 1), (2, 2)]
    old.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_task(text, boolean, text) TO {APP_ROLE}")
    with old.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("the-fix")])
        assert c.execute("SELECT koherent.revert_task('bad-run')").fetchone()[0] == {
            "deleted": 0, "inserted": 1, "updated": 1, "skipped": 0, "conflicts": []}
        c.commit()
    assert old.sql("SELECT id, qty FROM item ORDER BY id") == [(1, 1), (2, 2)]

    fresh.sql("CREATE EXTENSION koherent")
    fresh.sql("SELECT koherent.track('item', require_task => true)")
    fresh.sql(f"SELECT koherent.expose('item', '{reader}')")
    fresh.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_task(text, boolean, text) TO {APP_ROLE}")
    assert members(old) == members(fresh)
    assert history_indexes(old) == history_indexes(fresh)


def test_upgrade_from_0_6_0(old_db):
    """0.7.0 adds the ledger: history written by 0.6.0 (and a column renamed there) is sealed
    and verifies; tracked columns get their column_id, new ones continue the numbers."""
    old, fresh = old_db
    install_release(old, fresh, "0.6.0", {"item": ITEM_DDL})
    write(old, "INSERT INTO item (id, qty, price) VALUES (1, 1, 1.50), (2, 2, 2)", mint("before-upgrade"), user=APP_ROLE)
    old.sql("ALTER TABLE item RENAME COLUMN note TO remark")
    write(old, "UPDATE item SET qty = 10, remark = 'r' WHERE id = 1", mint("second"), user=APP_ROLE)

    old.sql("ALTER EXTENSION koherent UPDATE")
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'koherent'") == current_version()
    assert old.one("SELECT count(DISTINCT column_id) = count(*) AND bool_and(column_id IS NOT NULL) "
                   "FROM koherent.tracked_column") is True
    d = old.one("SELECT koherent.seal()")
    assert (d["block"], d["contexts"], d["entries"]) == (1, 2, 3)
    assert old.sql("SELECT * FROM koherent.verify_history(%s)", [json.dumps([d])]) == []
    # tasks and contexts from before keep null organizations and users; such a task keeps
    # taking writes, from an organization or none (#16)
    assert old.sql("SELECT task_id, organization, assigner_user FROM koherent.task ORDER BY 1") == [
        ("before-upgrade", None, None), ("second", None, None)]
    assert old.sql("SELECT DISTINCT organization, app_user FROM koherent.provenance_entry") == [(None, None)]
    with old.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT set_config('koherent.organization', 'acme', true), set_config('koherent.app_user', 'ana', true)")
        c.execute("SELECT koherent.set_task(%s)", [mint("second")])
        c.execute("UPDATE item SET qty = 11 WHERE id = 1")
        c.commit()
    write(old, "UPDATE item SET qty = 12 WHERE id = 1", mint("second"), user=APP_ROLE)
    assert old.sql("SELECT task_id, organization, app_user FROM koherent.provenance_entry ORDER BY history_id DESC LIMIT 2") == [
        ("second", None, None), ("second", "acme", "ana")]
    assert old.sql("SELECT organization FROM koherent.task WHERE task_id = 'second'") == [(None,)]
    old.sql("ALTER TABLE item ADD COLUMN extra int")
    assert old.one("SELECT max(column_id) > 6 FROM koherent.tracked_column") is True
    write(old, "UPDATE item SET extra = 1 WHERE id = 2", mint("after"), user=APP_ROLE)
    assert old.one("SELECT koherent.seal()->>'block'") == "2"
    assert old.sql("SELECT problem FROM koherent.verify_history()") == []
    old.sql("ALTER TABLE item DROP COLUMN extra")
    # 0.6.0 tracked item without the row index and the upgrade leaves it so; a table tracked
    # after it gets the index, and the README's statement gives it to the tables without
    assert old.sql("SELECT table_name::text, row_index FROM koherent.tracked_table") == [("item", False)]
    assert history_indexes(old) == [("brin", False, False), ("brin", True, False)]
    old.sql("CREATE TABLE later (id int PRIMARY KEY)")
    old.sql("SELECT koherent.track('later')")
    assert old.sql("SELECT table_name::text, row_index FROM koherent.tracked_table ORDER BY 1") == [
        ("item", False), ("later", True)]
    old.sql("SELECT koherent.track(table_name, exclude, require_task, row_index => true) "
            "FROM koherent.tracked_table WHERE NOT row_index")
    assert old.sql("SELECT table_name::text, row_index FROM koherent.tracked_table ORDER BY 1") == [
        ("item", True), ("later", True)]
    assert history_indexes(old) == [("brin", False, False), ("brin", True, False), ("btree", False, False), ("btree", False, True)]
    with old.conn() as c:
        c.execute("SET enable_seqscan = off")
        assert c.execute("SELECT history_kind FROM koherent_history.item WHERE id = 1 ORDER BY history_id"
                         ).fetchall() == [("CREATE",), ("UPDATE",), ("UPDATE",), ("UPDATE",)]
    old.sql("SELECT koherent.untrack('later')")
    old.sql("DROP TABLE later")

    fresh.sql("CREATE EXTENSION koherent")
    fresh.sql("SELECT koherent.track('item')")
    for ddl in ("ALTER TABLE item RENAME COLUMN note TO remark", "ALTER TABLE item ADD COLUMN extra int",
                "ALTER TABLE item DROP COLUMN extra"):
        fresh.sql(ddl)
    assert members(old) == members(fresh)
    assert history_indexes(old) == history_indexes(fresh)
    # the history of an upgraded table partitioned: the old table becomes the first partition,
    # and everything sealed before still verifies
    n = old.one("SELECT count(*) FROM koherent.provenance_entry")
    r = old.one("SELECT koherent.set_retention('item', NULL, '1 month')")
    assert r["partitions_made"] == 3 and r["partitions"][0]["from"] is None
    assert old.one("SELECT relkind FROM pg_class WHERE oid = 'koherent_history.item'::regclass") == "p"
    write(old, "UPDATE item SET qty = 20 WHERE id = 2", mint("partitioned"), user=APP_ROLE)
    assert old.one("SELECT count(*) FROM koherent.provenance_entry") == n + 1
    assert old.sql("SELECT kind FROM koherent.provenance_entry WHERE row_key = '{\"id\": 2}' ORDER BY history_id") == [
        ("CREATE",), ("UPDATE",), ("UPDATE",)]
    old.sql("SELECT koherent.seal()")
    assert old.sql("SELECT problem FROM koherent.verify_history()") == []


def test_upgrade_from_0_6_0_keeps_the_graphql_grants(old_db):
    """0.7.0 makes pg_graphql's effectiveChanges give values as JSON text (a new return type for
    koherent._effective_changes): the roles expose() granted it before keep their grant, and the
    values come back as JSON text (the string "1" and the number 1 told apart)."""
    old, fresh = old_db
    reader = install_exposed(old, fresh, "0.6.0")
    write(old, "INSERT INTO item (id, name, qty) VALUES (1, '1', 1)", mint("before-upgrade"))
    fn = "koherent._effective_changes(koherent.provenance_entry)"
    assert old.one(f"SELECT has_function_privilege('{reader}', '{fn}', 'EXECUTE')") is True
    # renamed after expose(): its functions keep the names expose() gave them
    old.sql("ALTER TABLE item RENAME TO goods")
    old.sql("ALTER EXTENSION koherent UPDATE")
    prov = "public._provenance(goods)"
    assert old.one(f"SELECT prorettype::regtype::text FROM pg_proc WHERE oid = '{prov}'::regprocedure") == \
        "koherent.provenance_entry_node"
    assert old.one(f"SELECT has_function_privilege('{reader}', '{prov}', 'EXECUTE')") is True
    assert old.one(f"SELECT has_function_privilege('{APP_ROLE}', '{prov}', 'EXECUTE')") is False
    # pg_graphql's task field (new in 0.7.0) for the same readers
    assert old.one(f"SELECT has_function_privilege('{reader}', 'koherent._task(koherent.provenance_entry_node)', "
                   "'EXECUTE')") is True
    assert old.one(f"SELECT has_function_privilege('{APP_ROLE}', 'koherent._task(koherent.provenance_entry_node)', "
                   "'EXECUTE')") is False
    assert old.one(f"SELECT count(*) FROM pg_depend WHERE objid = '{prov}'::regprocedure AND deptype = 'e'") == 0
    assert old.one(f"SELECT proowner::regrole::text FROM pg_proc WHERE oid = '{prov}'::regprocedure") == "postgres"
    # (the functions expose() made name the table as it was then: named so again to be read)
    old.sql("ALTER TABLE goods RENAME TO item")
    assert old.one(f"SELECT has_function_privilege('{reader}', '{fn}', 'EXECUTE')") is True
    assert old.one(f"SELECT has_function_privilege('{APP_ROLE}', '{fn}', 'EXECUTE')") is False
    assert old.one(f"SELECT prorettype::regtype::text FROM pg_proc WHERE oid = '{fn}'::regprocedure") == \
        "koherent.effective_change_json"
    with old.conn(user=reader) as c:
        got = c.execute("SELECT ch.field, ch.new_value FROM item i, item_provenance(i) e, koherent._effective_changes(e) ch "
                        "WHERE i.id = 1 AND ch.field IN ('name', 'qty') ORDER BY 1").fetchall()
        assert got == [("name", '"1"'), ("qty", "1")]
        # pg_graphql's path: _provenance(row) -> provenance_entry_node -> _effective_changes
        got = c.execute("SELECT ch.field, ch.new_value FROM item i, _provenance(i) e, koherent._effective_changes(e) ch "
                        "WHERE i.id = 1 AND ch.field = 'qty'").fetchall()
        assert got == [("qty", "1")]
    # the functions made before 0.7.0 honour row-level security on the contexts (README,
    # "Organizations"): the entry from before (no organization) is nobody's under the policy
    old.sql("ALTER TABLE koherent.transaction_auth_context ENABLE ROW LEVEL SECURITY; "
            "CREATE POLICY own ON koherent.transaction_auth_context FOR SELECT "
            "USING (coalesce(organization, '') = coalesce(current_setting('koherent.organization', true), ''))")
    old.sql(f"GRANT SELECT ON koherent.transaction_auth_context TO {reader}")
    for org, n in ((None, 1), ("acme", 0)):
        with old.conn(user=reader) as c:
            if org:
                c.execute("SELECT set_config('koherent.organization', %s, false)", [org])
            assert c.execute("SELECT count(*) FROM item i, item_provenance(i) e WHERE i.id = 1").fetchone()[0] == n
            assert c.execute("SELECT count(*) FROM item_by_provenance(task_id => 'before-upgrade')").fetchone()[0] == n
    old.sql("ALTER TABLE koherent.transaction_auth_context DISABLE ROW LEVEL SECURITY")
    # expose() again (README, "Upgrading"): <table>_provenance returns koherent_graphql's type
    # (PostGraphile's default options show it), the reader keeps every field
    assert old.one("SELECT prorettype::regtype::text FROM pg_proc WHERE oid = 'item_provenance(item)'::regprocedure") == \
        "koherent.provenance_entry"
    old.sql("SELECT koherent.expose('item')")
    assert old.one("SELECT prorettype::regtype::text FROM pg_proc WHERE oid = 'item_provenance(item)'::regprocedure") == \
        "koherent_graphql.provenance_entry"
    with old.conn(user=reader) as c:
        got = c.execute("SELECT (koherent_graphql.provenance_entry_task(e)).task_id, ch.new_value "
                        "FROM item i, item_provenance(i) e, koherent_graphql.provenance_entry_effective_changes(e) ch "
                        "WHERE i.id = 1 AND ch.field = 'qty'").fetchall()
        assert got == [("before-upgrade", 1)]
        got = c.execute("SELECT ch.new_value FROM item i, _provenance(i) e, koherent._effective_changes(e) ch "
                        "WHERE i.id = 1 AND ch.field = 'qty'").fetchall()
        assert got == [("1",)]
