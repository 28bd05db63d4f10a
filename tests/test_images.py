"""History images as jsonb (koherent._jsonb_object, src/image.rs): the same object as
jsonb_build_object, byte for byte, for every type it takes, under the settings that change how
values are written; what it refuses; and the readers' images built with it."""

import psycopg
import pytest

from conftest import APP_ROLE, mint, sqlstate, write

# (type, values): each value a SQL literal of that type
VALUES = [
    ("boolean", ["true", "false"]),
    ("smallint", ["0", "-32768", "32767"]),
    ("integer", ["0", "-2147483648", "2147483647", "7"]),
    ("bigint", ["0", "-9223372036854775808", "9223372036854775807"]),
    ("numeric", ["0", "1.50", "-0.000001", "123456789012345678901234567890.123456789", "1e-30",
                 "'NaN'", "'Infinity'", "'-Infinity'", "1e100", "-0"]),
    ("numeric(10,3)", ["1.5", "-2"]),
    ("real", ["0", "1.5", "-0", "3.4028235e38", "'NaN'", "'Infinity'", "'-Infinity'", "1e-45"]),
    ("double precision", ["0.1", "-0", "1.7976931348623157e308", "'NaN'", "'-Infinity'", "5e-324", "1e21"]),
    ("date", ["'2026-12-03'", "'infinity'", "'-infinity'", "'4713-01-01 BC'", "'5874897-12-31'"]),
    ("timestamp", ["'2026-12-03 10:11:12.123456'", "'infinity'", "'1999-01-08 04:05:06 BC'"]),
    ("timestamptz", ["'2026-12-03 10:11:12.5+05:30'", "'-infinity'", "'2026-06-01 00:00:00+00'"]),
    ("text", ["''", "'plain'", "E'quote \" backslash \\\\ newline \\n tab \\t bell \\x07'", "'ünïcødé 😀'",
              "repeat('x', 100000)"]),
    ("varchar(5)", ["'abc'"]),
    ("char(5)", ["'ab'"]),
    ('"char"', ["'a'"]),
    ("name", ["'a name'"]),
    ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"]),
    ("interval", ["'1 day 02:03:04.5'", "'-1 year'"]),
    ("time", ["'10:11:12.5'"]),
    ("timetz", ["'10:11:12+02'"]),
    ("bytea", ["'\\x00ff10'"]),
    ("inet", ["'192.168.0.1/24'", "'::1'"]),
    ("cidr", ["'10.0.0.0/8'"]),
    ("macaddr", ["'08:00:2b:01:02:03'"]),
    ("macaddr8", ["'08:00:2b:01:02:03:04:05'"]),
    ("money", ["12.34"]),
    ("bit(3)", ["B'101'"]),
    ("varbit", ["B'1'"]),
]

# settings that change how values are written (to_jsonb follows them, so must the function)
SETTINGS = [
    {},
    {"TimeZone": "Asia/Kathmandu", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
     "extra_float_digits": "0", "bytea_output": "escape", "lc_monetary": "C"},
    {"TimeZone": "America/St_Johns", "DateStyle": "German", "IntervalStyle": "postgres_verbose",
     "extra_float_digits": "-15"},
]


def same(c, keys_values):
    """jsonb_send of both functions over the same (key, SQL value) pairs."""
    args = ", ".join(f"{k}::text, {v}" for k, v in keys_values)
    return c.execute(f"SELECT jsonb_send(koherent._jsonb_object({args})) = jsonb_send(jsonb_build_object({args})), "
                     f"koherent._jsonb_object({args})::text, jsonb_build_object({args})::text").fetchone()


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "odd settings", "more settings"])
def test_the_same_object_as_jsonb_build_object(db, settings):
    with db.conn() as c:
        for k, v in settings.items():
            c.execute(f"SET {k} = '{v}'")
        for typ, values in VALUES:
            assert c.execute("SELECT koherent._jsonb_object_takes(%s::regtype)", [typ]).fetchone()[0], typ
            for v in values:
                eq, ours, theirs = same(c, [("'v'", f"({v})::{typ}"), ("'n'", f"NULL::{typ}")])
                assert eq, (typ, v, ours, theirs)
            # all values of a type in one object
            eq, ours, theirs = same(c, [(f"'{i}'", f"({v})::{typ}") for i, v in enumerate(values)])
            assert eq, (typ, ours, theirs)
        # one value of every type in one object
        eq, ours, theirs = same(c, [(f"'{t}'", f"({vs[0]})::{t}") for t, vs in VALUES])
        assert eq, (ours, theirs)
        assert len(c.execute(f"SELECT koherent._jsonb_object({', '.join(f'{i}::text, {i}' for i in range(50))})")
                   .fetchone()[0]) == 50


def test_the_same_bytes_as_jsonb_build_object(db):
    """The object is written directly in jsonb's on-disk form: the stored bytes (read off the
    heap page with pageinspect) are jsonb_build_object's, for every value of every type, integers
    at the edges of numeric's base-10000 digits, and objects of many pairs (every 32nd entry an
    offset, numerics int-aligned after keys and strings of every length)."""
    with db.conn() as c:
        c.execute("CREATE EXTENSION pageinspect")
        c.execute("CREATE TABLE jb (a jsonb)")
        c.execute("ALTER TABLE jb ALTER a SET STORAGE plain")  # (never compressed)

        def stored(args):
            c.execute("TRUNCATE jb")
            c.execute(f"INSERT INTO jb VALUES (koherent._jsonb_object({args})), (jsonb_build_object({args}))")
            rows = c.execute("SELECT t_data FROM heap_page_items(get_raw_page('jb', 0)) ORDER BY lp").fetchall()
            assert len(rows) == 2
            return rows[0][0], rows[1][0]

        checked = 0
        for typ, values in VALUES:
            small = [v for v in values if "repeat" not in v]  # (the 100 kB text would not fit a page)
            for v in small:
                ours, theirs = stored(f"'v'::text, ({v})::{typ}, 'n'::text, NULL::{typ}")
                assert ours == theirs, (typ, v, bytes(ours), bytes(theirs))
                checked += 1
            ours, theirs = stored(", ".join(f"'{i}'::text, ({v})::{typ}" for i, v in enumerate(small)))
            assert ours == theirs, (typ, bytes(ours), bytes(theirs))
        for x in [0, 1, -1, 9999, 10000, 10001, 99990000, 100000000, -100000000, 123456789012, 2**31 - 1,
                  -2**31, 2**63 - 1, -2**63, 10**18, -(10**16), 5 * 10**12]:
            for typ in ("smallint", "integer", "bigint"):
                if typ == "smallint" and not -2**15 <= x < 2**15 or typ == "integer" and not -2**31 <= x < 2**31:
                    continue
                ours, theirs = stored(f"'v'::text, ({x})::{typ}")
                assert ours == theirs, (typ, x, bytes(ours), bytes(theirs))
                checked += 1
        # 49 pairs (98 entries: offsets at 0, 32, 64, 96), keys of many lengths, numerics after
        # strings of odd lengths (padding), repeated keys (the last kept), a null key left out
        many = [(f"'{'k' * (i % 7)}{i}'::text", f"{i * 7919}") for i in range(45)]
        many += [("'x'::text", "'abc'::text"), ("'y'::text", "1.5::numeric"), ("'x'::text", "2.25::numeric"),
                 ("NULL::text", "3")]
        ours, theirs = stored(", ".join(f"{k}, {v}" for k, v in many).replace("NULL::text, 3", "'z'::text, 3"))
        assert ours == theirs
        ours = c.execute(f"SELECT koherent._jsonb_object({', '.join(f'{k}, {v}' for k, v in many)})").fetchone()[0]
        assert ours["x"] == 2.25 and "z" not in ours and len(ours) == 47
        # the empty object (every key null)
        c.execute("TRUNCATE jb")
        c.execute("INSERT INTO jb VALUES (koherent._jsonb_object(NULL::text, 1)), (jsonb_build_object())")
        rows = c.execute("SELECT t_data FROM heap_page_items(get_raw_page('jb', 0)) ORDER BY lp").fetchall()
        assert rows[0][0] == rows[1][0] and c.execute("SELECT a = '{}' FROM jb").fetchall() == [(True,), (True,)]
        assert checked > 100


def test_keys_values_and_refusals(db):
    with db.conn() as c:
        one = lambda q: c.execute(q).fetchone()[0]  # noqa: E731
        # a value of a domain is converted as its base type's, as to_jsonb does
        c.execute("CREATE DOMAIN qty AS integer CHECK (VALUE >= 0)")
        assert one("SELECT koherent._jsonb_object('q'::text, 7::qty)") == {"q": 7}
        assert one("SELECT jsonb_send(koherent._jsonb_object('q'::text, 7::qty)) = jsonb_send(jsonb_build_object('q', 7::qty))")
        # untyped literals as keys and values, repeated keys (the last wins, as jsonb_build_object)
        assert one("SELECT koherent._jsonb_object('a', 'x', 'a', 'y')") == {"a": "y"}
        assert one("SELECT koherent._jsonb_object('a', 'x', 'a', 'y') = jsonb_build_object('a', 'x', 'a', 'y')")
        # a null key leaves its pair out (jsonb_build_object would refuse it)
        assert one("SELECT koherent._jsonb_object(NULL::text, 1, 'b'::text, 2)") == {"b": 2}
        assert one("SELECT koherent._jsonb_object(CASE WHEN false THEN 'a' END, 1)") == {}
        refused = [
            ("SELECT koherent._jsonb_object('a'::text)", "22023"),
            ("SELECT koherent._jsonb_object(1, 2)", "42804"),
            ("SELECT koherent._jsonb_object('a'::text, '{1}'::int[])", "0A000"),
            ("SELECT koherent._jsonb_object('a'::text, '{}'::jsonb)", "0A000"),
            ("SELECT koherent._jsonb_object('a'::text, ROW(1, 2))", "0A000"),
            ("SELECT koherent._jsonb_object('a'::text, 1::oid)", "0A000"),
            ("SELECT koherent._jsonb_object(VARIADIC ARRAY['a', 'b'])", "0A000"),
        ]
        for q, state in refused:
            with pytest.raises(psycopg.Error) as e:
                c.execute(q)
            assert sqlstate(e) == state, q
        for t, takes in [("integer", True), ("qty", True), ("jsonb", False), ("json", False), ("int[]", False),
                         ("oid", False), ("regclass", False), ("point", False), ("xml", False)]:
            assert one(f"SELECT koherent._jsonb_object_takes('{t}'::regtype)") is takes, t
    # the readers' images: every column type a history table may hold, with a type of the
    # user's own (shown as its output text) and a jsonb and an array column (jsonb_build_object)
    db.sql("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    db.sql("""CREATE TABLE wide (id integer PRIMARY KEY, b boolean, s smallint, n numeric, r real, f float8,
              d date, ts timestamp, tz timestamptz, t text, v varchar(9), c char(4), u uuid, i interval,
              m mood, j jsonb, a int[], x bytea)""")
    db.sql("SELECT koherent.track('wide')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON wide TO {APP_ROLE}")
    write(db, ["""INSERT INTO wide VALUES (1, true, 2, 'NaN', 1.5, 'Infinity', '2026-12-03', '2026-12-03 01:02:03',
                  '2026-12-03 01:02:03+00', E'a\\nb', 'v', 'c', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day',
                  'happy', '{"k": [1, 2.50]}', '{1,NULL,3}', '\\x01')""",
               "INSERT INTO wide (id) VALUES (2)",
               "UPDATE wide SET n = 2.5, t = NULL WHERE id = 1"], token=mint("images"))
    expected = db.sql("""SELECT to_jsonb(w) FROM (SELECT id, true AS b, 2::smallint AS s, 'NaN'::numeric AS n,
                           1.5::real AS r, 'Infinity'::float8 AS f, '2026-12-03'::date AS d,
                           '2026-12-03 01:02:03'::timestamp AS ts, '2026-12-03 01:02:03+00'::timestamptz AS tz,
                           E'a\\nb' AS t, 'v'::varchar(9) AS v, 'c'::char(4) AS c,
                           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '1 day'::interval AS i,
                           'happy' AS m, '{"k": [1, 2.50]}'::jsonb AS j, '{1,NULL,3}'::int[] AS a,
                           '\\x01'::bytea AS x FROM (VALUES (1)) v(id)) w""")[0][0]
    rows = db.sql("SELECT kind, row_key, row_data FROM koherent.task_changes('images') ORDER BY history_id")
    assert [(k, key) for k, key, _ in rows] == [("CREATE", {"id": 1}), ("CREATE", {"id": 2}), ("UPDATE", {"id": 1})]
    assert rows[0][2] == expected
    assert rows[1][2] == {k: (2 if k == "id" else None) for k in expected}
    assert rows[2][2] == {**expected, "n": 2.5, "t": None}
    # the same through the view and the exposed row_data built by jsonb_build_object before
    assert db.sql("SELECT row_data FROM koherent.provenance_entry WHERE table_name = 'wide'::regclass "
                  "ORDER BY history_id") == [(r[2],) for r in rows]


def test_effective_changes_are_the_fields_whose_values_differ_as_the_writer_compares_them(db):
    """An UPDATE is recorded when a tracked column's value is not the same (binary image): its
    effective changes list those fields, also where the values' JSON is equal (float 0 to -0, a
    json value's spacing, a numeric's scale); a field set to the same value is not listed."""
    db.sql("CREATE TABLE ec (id int PRIMARY KEY, f float8, j json, n numeric, t text, a int[])")
    db.sql("SELECT koherent.track('ec')")
    write(db, "INSERT INTO ec VALUES (1, 0, '{\"a\":1}', 1.0, 'x', '{1}')")
    write(db, "UPDATE ec SET f = '-0', t = 'x', a = '{1}'")
    write(db, "UPDATE ec SET j = '{\"a\": 1}', n = 1.00")
    write(db, "UPDATE ec SET t = 'y', a = '[0:0]={1}'")
    hids = [r[0] for r in db.sql("SELECT history_id FROM koherent.provenance_entry WHERE kind = 'UPDATE' "
                                 "ORDER BY history_id")]
    assert len(hids) == 3  # each UPDATE changed something
    got = [db.sql("SELECT field, old_value, new_value FROM koherent.effective_change WHERE history_id = %s "
                  "ORDER BY field", [h]) for h in hids]
    # (jsonb keeps no -0, spacing or array bounds: the values shown are equal where only those differ)
    assert got == [[("f", 0, 0)],
                   [("j", {"a": 1}, {"a": 1}), ("n", 1.0, 1.0)],
                   [("a", [1], [1]), ("t", "x", "y")]]
