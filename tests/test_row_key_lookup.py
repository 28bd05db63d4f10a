"""`koherent.provenance_entry WHERE row_key = '{...}'` as an index lookup (src/planner.rs): the
planner hook derives the key condition (`h.id = 7`) that the view's jsonb row_key implies, so the
row index answers it, and leaves out history tables whose key can never equal the constant.
Every result is checked against the plan without the hook (`koherent.row_key_lookup = off`),
for well-formed, odd and impossible constants alike; plans in fresh sessions (the view loads
the library), for an auditor, for prepared statements, with the row index dropped."""

import json

import pytest

from conftest import APP_ROLE

AUDITOR = "koherent_rk_auditor"

TABLES = {
    "item": "CREATE TABLE item (id bigint PRIMARY KEY, qty int)",
    "small": "CREATE TABLE small (id int PRIMARY KEY, qty int)",
    "tk": "CREATE TABLE tk (code text PRIMARY KEY, v int)",
    "uk": "CREATE TABLE uk (u uuid PRIMARY KEY, v int)",
    "nk": "CREATE TABLE nk (n numeric PRIMARY KEY, v int)",
    "ck": "CREATE TABLE ck (a int, b text, v int, PRIMARY KEY (a, b))",
    "dk": "CREATE TABLE dk (d date PRIMARY KEY, v int)",
}
UUID5 = "e4da3b7f-bbce-2345-d777-2b0674a318d5"  # md5('5')::uuid


@pytest.fixture
def keyed(db):
    for t, ddl in TABLES.items():
        db.sql(ddl)
        db.sql(f"SELECT koherent.track('{t}')")
    db.sql("INSERT INTO item SELECT g, 0 FROM generate_series(1, 20000) g")
    db.sql("UPDATE item SET qty = 1 WHERE id % 10 = 0")
    db.sql("INSERT INTO small SELECT g, 0 FROM generate_series(1, 5000) g")
    db.sql("INSERT INTO tk SELECT 'c' || g, 0 FROM generate_series(1, 5000) g")
    db.sql("INSERT INTO uk SELECT md5(g::text)::uuid, 0 FROM generate_series(1, 5000) g")
    db.sql("INSERT INTO nk SELECT g, 0 FROM generate_series(1, 5000) g")
    db.sql("UPDATE nk SET n = 7.5 WHERE n = 8")  # a key change: 7.5 is a key now
    db.sql("INSERT INTO nk VALUES ('NaN', 0), ('Infinity', 0), ('-Infinity', 0)")  # to_jsonb: strings
    db.sql("INSERT INTO ck SELECT g, 'b' || g, 0 FROM generate_series(1, 5000) g")
    db.sql("INSERT INTO dk SELECT date '2026-01-01' + g, 0 FROM generate_series(1, 2000) g")
    db.sql("ANALYZE")
    return db


def plan(c, q, params=None):
    return "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + q, params).fetchall())


def scanned(p):
    """The history tables a plan reads (by their alias-free names in 'on <table> h...')."""
    out = set()
    for line in p.splitlines():
        for kind in ("Index Scan using", "Seq Scan on", "Bitmap Heap Scan on", "Index Only Scan using"):
            if kind in line:
                words = line.split()
                name = words[words.index("on") + 1] if "on" in words else None
                out.add(name)
    return out - {"transaction_auth_context", None}


def rows(c, q, params=None, hook=True):
    c.execute(f"SET koherent.row_key_lookup = {'on' if hook else 'off'}")
    try:
        return c.execute(q, params).fetchall()
    finally:
        c.execute("RESET koherent.row_key_lookup")


Q = ("SELECT history_id, table_name::text, kind, row_key FROM koherent.provenance_entry "
     "WHERE row_key = %s::jsonb ORDER BY history_id")
QT = ("SELECT history_id, kind, row_key FROM koherent.provenance_entry "
      "WHERE table_name = %s::regclass AND row_key = %s::jsonb ORDER BY history_id")


def test_the_natural_query_is_an_index_lookup_in_a_fresh_session(keyed):
    # nothing else has run in this session: planning the view loads the library (koherent._relid)
    with keyed.conn() as c:
        assert c.execute("SELECT count(*) FROM pg_settings WHERE name = 'koherent.row_key_lookup'").fetchone()[0] == 0
        p = plan(c, "SELECT * FROM koherent.provenance_entry WHERE table_name = 'item'::regclass "
                    "AND row_key = '{\"id\": 70}'")
        assert "Index Scan using item_id_history_id_idx on item h" in p and "Index Cond: (id = '70'::bigint)" in p
        assert scanned(p) == {"item"}, p
        assert c.execute("SELECT current_setting('koherent.row_key_lookup')").fetchone()[0] == "on"
        assert [r[1:3] for r in rows(c, QT, ["item", '{"id": 70}'])] == [
            ("CREATE", {"id": 70}), ("UPDATE", {"id": 70})]
    # the estimate follows the key condition: two entries, not a two-hundredth of the table
    with keyed.conn() as c:
        est = c.execute("EXPLAIN (FORMAT JSON) SELECT * FROM koherent.provenance_entry "
                        "WHERE table_name = 'item'::regclass AND row_key = '{\"id\": 70}'").fetchone()[0]
        assert est[0]["Plan"]["Plan Rows"] <= 5
    # the same for every key type handled, and for a composite key in either order
    with keyed.conn() as c:
        for table, key, cond in (("small", '{"id": 7}', "(id = 7)"), ("tk", '{"code": "c7"}', "(code = 'c7'::text)"),
                                 ("uk", json.dumps({"u": UUID5}), f"(u = '{UUID5}'::uuid)"),
                                 ("nk", '{"n": 7.5}', "(n = 7.5)"),
                                 ("ck", '{"b": "b5", "a": 5}', "((a = 5) AND (b = 'b5'::text))")):
            p = plan(c, "SELECT * FROM koherent.provenance_entry WHERE table_name = %s::regclass "
                        "AND row_key = %s::jsonb", [table, key])
            assert f"Index Scan using {table}_" in p and f"Index Cond: {cond}" in p, p
            assert rows(c, QT, [table, key]) == rows(c, QT, [table, key], hook=False) != []
    # a key type not handled (date): no derivation, PostgreSQL's own plan, same rows
    with keyed.conn() as c:
        key = '{"d": "2026-01-05"}'
        assert "Seq Scan on dk" in plan(c, "SELECT * FROM koherent.provenance_entry WHERE table_name = 'dk'::regclass "
                                           "AND row_key = %s::jsonb", [key])
        assert len(rows(c, QT, ["dk", key])) == 1


def test_without_table_name_only_tables_whose_key_can_match_are_read(keyed):
    with keyed.conn() as c:
        # {"id": 7}: the two tables keyed by an integer id, each by its index; the others left out
        p = plan(c, "SELECT * FROM koherent.provenance_entry WHERE row_key = '{\"id\": 7}'")
        assert scanned(p) == {"item", "small"} and "Seq Scan on item" not in p and "Seq Scan on small" not in p, p
        assert [r[1] for r in rows(c, Q, ['{"id": 7}'])] == ["item", "small"]
        p = plan(c, "SELECT * FROM koherent.provenance_entry WHERE row_key = '{\"code\": \"c7\"}'")
        assert scanned(p) == {"tk"}, p
        assert rows(c, Q, ['{"code": "c7"}']) == rows(c, Q, ['{"code": "c7"}'], hook=False)


# constants that match nothing anywhere, or only entries the hook cannot derive a key for (and the
# numeric keys NaN and the infinities, whose jsonb is a string): each
# gives PostgreSQL's answer, with no error
ODD = ['{"id": "7"}', '{"id": 7.5}', '{"id": 1e30}', '{"id": 2147483648}', '{"id": 9223372036854775808}',
       '{"id": -9223372036854775809}', '{"id": true}', '{"id": [7]}', '{"id": {"a": 1}}', '{"id": 7, "x": 1}',
       '{"ID": 7}', '{}', '[]', '[7]', '7', '"7"', 'null', '{"id": null}', '{"n": 7}', '{"n": 7.50}',
       '{"n": "7"}', '{"u": "E4DA3B7F-BBCE-2345-D777-2B0674A318D5"}', '{"u": "e4da3b7fbbce2345d7772b0674a318d5"}',
       '{"u": 5}', '{"code": 7}', '{"code": ""}', '{"a": 5}', '{"a": 5, "b": 5}', '{"a": "5", "b": "b5"}',
       '{"a": 5.0, "b": "b5"}', '{"id": 7.000}', '{"id": -0}', '{"id": 0.0}', '{"d": "2026-01-05"}',
       '{"id": 20000}', '{"small": 1}', '{"id": 1e3}', '{"n": "NaN"}', '{"n": "Infinity"}', '{"n": "-Infinity"}',
       '{"n": "nan"}', '{"id": "NaN"}']


def test_results_equal_the_plan_without_the_hook(keyed):
    with keyed.conn() as c:
        for key in ODD:
            assert rows(c, Q, [key]) == rows(c, Q, [key], hook=False), key
            for t in ("item", "small", "nk", "uk", "ck"):
                assert rows(c, QT, [t, key]) == rows(c, QT, [t, key], hook=False), (t, key)
        # numbers in any spelling PostgreSQL's jsonb equality accepts
        assert len(rows(c, Q, ['{"id": 7.000}'])) == 2 and len(rows(c, Q, ['{"id": 1e3}'])) == 3
        assert [r[1] for r in rows(c, Q, ['{"n": 7.50}'])] == ["nk"]
        for special in ("NaN", "Infinity", "-Infinity"):  # numeric keys whose jsonb is a string
            assert [r[1] for r in rows(c, Q, [json.dumps({"n": special})])] == ["nk"], special
        # an expression that repeats a key (jsonb_build_object keeps the last) is not a key
        # expression: nothing derived, nothing left out
        q = ("SELECT count(*) FROM koherent_history.ck h "
             "WHERE jsonb_build_object('a', to_jsonb(h.a), 'a', to_jsonb(h.b)) = '{\"a\": \"b5\"}'")
        assert rows(c, q) == rows(c, q, hook=False) == [(1,)]
        # an impossible constant leaves the table out of the plan altogether
        for key in ('{"id": "7"}', '{"id": 7.5}', '{"id": 2147483648}', '[7]', '{"ID": 7}'):
            p = plan(c, "SELECT * FROM koherent.provenance_entry WHERE table_name = 'small'::regclass "
                        "AND row_key = %s::jsonb", [key])
            assert scanned(p) == set(), (key, p)


def test_switch_off_prepared_statements_no_row_index_and_other_tables(keyed):
    key = '{"id": 70}'
    nat = ("SELECT * FROM koherent.provenance_entry WHERE table_name = 'item'::regclass AND row_key = "
           "'{\"id\": 70}'")
    with keyed.conn() as c:
        c.execute("SET koherent.row_key_lookup = off")
        assert "Seq Scan on item h" in plan(c, nat)
        c.execute("RESET koherent.row_key_lookup")
        # a prepared statement: the custom plans see the parameter as a constant, and the generic
        # plan (a scan) is never chosen over them
        c.execute("PREPARE q(jsonb) AS SELECT history_id FROM koherent.provenance_entry "
                  "WHERE table_name = 'item'::regclass AND row_key = $1 ORDER BY 1")
        for _ in range(8):
            assert len(c.execute(f"EXECUTE q('{key}')").fetchall()) == 2
        assert "Index Cond: (id = '70'::bigint)" in plan(c, f"EXECUTE q('{key}')")
        # psycopg's server-side binding, repeated
        for _ in range(7):
            assert len(c.execute(QT, ["item", key], prepare=True).fetchall()) == 2
        # an ordinary table with the same expression: not a history table, not touched
        c.execute("CREATE TEMP TABLE plain (id bigint PRIMARY KEY)")
        c.execute("INSERT INTO plain SELECT generate_series(1, 1000)")
        c.execute("ANALYZE plain")
        p = plan(c, "SELECT * FROM plain WHERE jsonb_build_object('id', to_jsonb(id)) = '{\"id\": 7}'")
        assert "Index" not in p and "Seq Scan on plain" in p
    # without the row index the derived condition filters a scan: same rows
    keyed.sql("SELECT koherent.track('item', row_index => false)")
    with keyed.conn() as c:
        p = plan(c, nat)
        assert "Seq Scan on item h" in p and "(id = '70'::bigint)" in p
        assert rows(c, QT, ["item", key]) == rows(c, QT, ["item", key], hook=False) and len(rows(c, QT, ["item", key])) == 2
    keyed.sql("SELECT koherent.track('item', row_index => true)")
    with keyed.conn() as c:
        assert "Index Scan using item_id_history_id_idx" in plan(c, nat)


def test_an_auditor_and_the_application_role(keyed):
    with keyed.conn() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [AUDITOR]).fetchone():
            c.execute(f"CREATE ROLE {AUDITOR} LOGIN")
    keyed.sql(f"GRANT SELECT ON koherent.provenance_entry, koherent.transaction_auth_context TO {AUDITOR}")
    try:
        # a fresh auditor session: the view loads the library with the auditor's rights (EXECUTE
        # on koherent._relid is public; it only returns its argument)
        with keyed.conn(user=AUDITOR) as c:
            p = plan(c, "SELECT * FROM koherent.provenance_entry WHERE table_name = 'item'::regclass "
                        "AND row_key = '{\"id\": 70}'")
            assert "Index Scan using item_id_history_id_idx" in p
            assert len(rows(c, QT, ["item", '{"id": 70}'])) == 2
            # the switch is the session's own and changes plans, never answers
            assert rows(c, Q, ['{"id": 7}']) == rows(c, Q, ['{"id": 7}'], hook=False)
        # the application role may not read the view: the hook gives it nothing
        with keyed.conn(user=APP_ROLE) as c:
            with pytest.raises(Exception) as e:
                c.execute("SELECT * FROM koherent.provenance_entry WHERE row_key = '{\"id\": 7}'")
            assert e.value.sqlstate == "42501"
    finally:
        keyed.sql(f"REVOKE ALL ON koherent.provenance_entry, koherent.transaction_auth_context FROM {AUDITOR}")
