"""JSON values are read, hashed and given back as what they are: an object with a member named
like serde_json's private number (`$serde_json::private::Number`: serde_json with the
arbitrary_precision feature, which koherent uses to keep numbers' text, reads such an object as
a number, or refuses it), and values nested deeper than serde_json's 128 levels. In a tracked
jsonb column written by the application role: sealed, verified, tampered with, exported and
verified offline, read as of a moment, reverted. In task arguments and context metadata: hashed
as Python's json.dumps writes them."""

import hashlib
import json
import os
import subprocess

import psycopg
import pytest

from conftest import APP_ROLE, HOST, PORT, ROOT, mint, write

CLI = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))
M = "$serde_json::private::Number"


def nested(n):
    """JSON text n levels deep: arrays and objects in turn, with an object named like the
    private number at the bottom."""
    return '{"k":[' * (n // 2) + json.dumps({M: "7", "a": 1}) + "]}" * (n // 2)


# id -> the value's JSON text
VALUES = {
    1: json.dumps({M: "5"}),
    2: json.dumps({"a": 1, M: "abc"}),
    3: json.dumps({M: "1", "z": [{M: "2"}, {M: 3}]}),
    4: nested(200),
    5: nested(4000),
}


def canonical(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture
def doc(db):
    db.sql("CREATE TABLE doc (id int PRIMARY KEY, body jsonb)")
    db.sql("SELECT koherent.track('doc')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON doc TO {APP_ROLE}")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-1")])
        for k, v in VALUES.items():
            c.execute("INSERT INTO doc VALUES (%s, %s::jsonb)", [k, v])
        c.commit()
    db.t1 = db.one("SELECT clock_timestamp()")
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-2")])
        c.execute("UPDATE doc SET body = %s::jsonb WHERE id = 1", [json.dumps({M: "6"})])
        c.execute("UPDATE doc SET body = %s::jsonb WHERE id = 5", [nested(4002)])
        c.commit()
    return db


def body_text(db, table, key):
    """PostgreSQL's own text of a stored value, to compare with what came back."""
    return db.one(f"SELECT body::text FROM {table} WHERE id = %s ORDER BY 1 LIMIT 1", [key])


def test_values_are_stored_as_written(doc):
    db = doc
    for k in (2, 3, 4):
        assert db.one("SELECT body = %s::jsonb FROM doc WHERE id = %s", [VALUES[k], k]) is True
    assert db.one("SELECT body FROM doc WHERE id = 1") == {M: "6"}
    # the history's images are the values written
    assert db.one("SELECT body FROM koherent_history.doc WHERE id = 1 AND history_kind = 'CREATE'") == {M: "5"}
    assert db.one("SELECT body = %s::jsonb FROM koherent_history.doc WHERE id = 5 AND history_kind = 'CREATE'",
                  [VALUES[5]]) is True
    assert db.one("SELECT jsonb_typeof(body) FROM doc WHERE id = 2") == "object"


def test_sealed_verified_and_a_value_changed_into_the_number_it_spells_is_caught(doc):
    db = doc
    s = db.one("SELECT koherent.seal()")
    assert s["sealed_entries"] == 7
    assert db.sql("SELECT * FROM koherent.verify_history()") == []
    first = db.one("SELECT history_id FROM koherent_history.doc WHERE id = 1 AND history_kind = 'CREATE'")
    deep = db.one("SELECT history_id FROM koherent_history.doc WHERE id = 5 AND history_kind = 'CREATE'")
    for hid, value in [(first, "5"), (first, json.dumps({M: 5})), (first, json.dumps({M: "5", "x": None})),
                       (deep, nested(4000).replace('"7"', '"8"')), (deep, nested(3998))]:
        with db.conn(autocommit=False) as c:
            c.execute("SET session_replication_role = replica")
            c.execute("UPDATE koherent_history.doc SET body = %s::jsonb WHERE history_id = %s", [value, hid])
            got = c.execute("SELECT problem, history_id FROM koherent.verify_history()").fetchall()
            c.rollback()
        assert got == [("entry_changed", hid)], value[:60]
    assert db.sql("SELECT * FROM koherent.verify_history()") == []


def test_the_audit_package_holds_them_and_verifies_offline(doc, tmp_path):
    db = doc
    db.one("SELECT koherent.seal()")
    out = str(tmp_path / "pkg")
    url = f"host={HOST} port={PORT} user=postgres dbname={db.name}"
    r = subprocess.run([CLI, "audit", "export", "--db", url, "--task", "task-1", "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([CLI, "audit", "verify", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = open(os.path.join(out, "entries.jsonl")).read().splitlines()
    bodies = {}
    for line in lines:
        if '"row":{' in line and len(line) < 10000:
            e = json.loads(line)
            bodies[e["row"]["1"]] = e["row"]["2"]
    assert bodies[1] == {M: "5"} and bodies[2] == {"a": 1, M: "abc"}
    assert bodies[3] == json.loads(VALUES[3])
    # the package's value changed into the number it spells: reported
    path = os.path.join(out, "entries.jsonl")
    text = open(path).read()
    assert text.count(json.dumps({M: "5"}, separators=(",", ":"))) == 1
    open(path, "w").write(text.replace(json.dumps({M: "5"}, separators=(",", ":")), "5"))
    r = subprocess.run([CLI, "audit", "verify", out], capture_output=True, text=True)
    assert r.returncode != 0
    assert "entries.jsonl" in r.stdout + r.stderr


def test_as_of_and_revert_give_them_back_unchanged(doc):
    db = doc
    with db.app() as c:
        got = c.execute("SELECT (r).body::text FROM (SELECT koherent.row_as_of(NULL::doc, '{\"id\": 1}', %s) r) x",
                        [db.t1]).fetchone()[0]
        assert json.loads(got) == {M: "5"}
        got = c.execute("SELECT (r).body = %s::jsonb FROM (SELECT koherent.row_as_of(NULL::doc, '{\"id\": 5}', %s) r) x",
                        [VALUES[5], db.t1]).fetchone()[0]
        assert got is True
        rows = c.execute("SELECT id, body::text FROM koherent.as_of(NULL::doc, %s) ORDER BY id", [db.t1]).fetchall()
    assert [k for k, _ in rows] == [1, 2, 3, 4, 5]
    assert json.loads(rows[0][1]) == {M: "5"} and json.loads(rows[1][1]) == {"a": 1, M: "abc"}
    with db.conn(autocommit=False) as c:
        r = c.execute("SELECT koherent.revert_task('task-2')").fetchone()[0]
        c.commit()
    assert (r["updated"], r["inserted"], r["deleted"]) == (2, 0, 0)
    assert db.one("SELECT body FROM doc WHERE id = 1") == {M: "5"}
    assert db.one("SELECT body = %s::jsonb FROM doc WHERE id = 5", [VALUES[5]]) is True


def test_context_metadata_with_the_member(doc):
    db = doc
    meta = {"trace": {M: "1"}, M: "2"}
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-3")])
        c.execute("SELECT koherent.set_context(%s::jsonb)", [json.dumps(meta)])
        c.execute("UPDATE doc SET body = '1' WHERE id = 2")
        c.commit()
    assert db.one("SELECT metadata FROM koherent.transaction_auth_context WHERE task_id = 'task-3'") == meta
    db.one("SELECT koherent.seal()")
    assert db.sql("SELECT * FROM koherent.verify_history()") == []


def test_task_arguments_with_the_member(db):
    args = {"b": [{M: "5"}], M: "x", "a": 1}
    want = canonical(args)
    assert want.startswith('{"' + M)
    with db.app(autocommit=False) as c:
        assert c.execute("SELECT koherent.canonical_args(%s::jsonb)", [json.dumps(args)]).fetchone()[0] == want
        assert c.execute("SELECT koherent.args_hash(%s::jsonb)", [json.dumps(args)]).fetchone()[0] == \
            hashlib.sha256(want.encode()).hexdigest()
        # a token whose args hash is Python's hash of these arguments takes them
        tok = mint("task-m", ahs=hashlib.sha256(want.encode()).hexdigest())
        assert c.execute("SELECT koherent.set_task(%s, %s::jsonb) ->> 'tsk'", [tok, json.dumps(args)]).fetchone()[0] == "task-m"
        assert c.execute("SELECT (koherent.current_task()).task_id").fetchone()[0] == "task-m"
        c.rollback()
    # the number the member spells is a different value, with a different hash
    tok = mint("task-n", ahs=hashlib.sha256(want.encode()).hexdigest())
    with db.app(autocommit=False) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.set_task(%s, %s::jsonb)", [tok, json.dumps({"b": [5], M: "x", "a": 1})])
        assert e.value.sqlstate == "28000" and "args_mismatch" in e.value.diag.message_detail
