"""The tamper-evident ledger: koherent.seal(), digest(), verify_history(digests). Every tamper
case is made as a superuser with triggers bypassed (session_replication_role = replica) or by
direct DML on koherent's tables, and must be reported with its location."""

import hashlib
import json
import threading

import psycopg
import pytest

from conftest import APP_ROLE, ISSUER, mint, sqlstate, write, wait_for_lock


def verify(db, digests=None):
    with db.conn() as c:
        return c.execute("SELECT problem, table_name, history_id, context_id::text, detail "
                         "FROM koherent.verify_history(%s)",
                         [None if digests is None else psycopg.types.json.Jsonb(digests)]).fetchall()


def problems(db, digests=None):
    return sorted({(p, h) for p, _, h, _, _ in verify(db, digests)}, key=str)


def seal(db):
    return db.one("SELECT koherent.seal()")


def tamper(db, *statements):
    with db.conn(autocommit=False) as c:
        c.execute("SET session_replication_role = replica")
        for s in statements:
            c.execute(s)
        c.commit()


@pytest.fixture
def ledger(item):
    """item with two blocks sealed: task-1 (three rows, an update), then task-2 (a delete, an
    insert) and an unattributed update."""
    db = item
    write(db, ["INSERT INTO item (id, name, qty, price) VALUES (1, 'a', 1, 1.50), (2, 'b', 2, 2.5), (3, 'c', 3, 0.1)",
               "UPDATE item SET qty = 10 WHERE id = 1"], mint("task-1"))
    first = seal(db)
    write(db, ["DELETE FROM item WHERE id = 2", "INSERT INTO item (id, name, qty) VALUES (4, 'd', 4)"], mint("task-2"))
    write(db, "UPDATE item SET note = 'n' WHERE id = 3")
    second = seal(db)
    assert (first["block"], first["sealed"], first["sealed_entries"]) == (1, 1, 4)
    assert (second["block"], second["sealed"], second["sealed_entries"], second["entries"], second["contexts"]) == (2, 2, 3, 7, 3)
    assert verify(db) == []
    db.digests = [first, second]
    return db


def hid(db, kind, key):
    return db.one(f"SELECT history_id FROM koherent_history.item WHERE history_kind = '{kind}' AND id = {key} "
                  "ORDER BY history_id LIMIT 1")


def ctx_of(db, task):
    return db.one("SELECT id::text FROM koherent.transaction_auth_context WHERE task_id = %s", [task])


def test_seal_digest_and_unsealed_entries(item):
    db = item
    assert db.one("SELECT koherent.digest()") is None
    assert seal(db) == {"sealed": 0}
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("task-1"))
    # written after the last seal: reported as unsealed, not as intact
    [(p, table, h, ctx, detail)] = verify(db)
    assert (p, table, h, detail) == ("unsealed", "public.item", None, "1 entries not sealed yet")
    # a transaction still open is not sealed; it is after it commits
    open_tx = db.conn(autocommit=False)
    open_tx.execute("INSERT INTO item (id, qty) VALUES (2, 2)")
    d = seal(db)
    assert (d["block"], d["sealed"], d["contexts"], d["entries"]) == (1, 1, 1, 1)
    assert d["format"] == "koherent-ledger-v1" and len(d["hash"]) == 64 and d["sealed_at"].endswith("Z")
    assert d["database"] == db.one("SELECT database_id::text FROM koherent.ledger_meta")
    assert db.one("SELECT koherent.digest()") == {k: v for k, v in d.items() if k not in ("sealed", "sealed_entries")}
    open_tx.commit()
    open_tx.close()
    assert [r[0] for r in verify(db)] == ["unsealed"]
    d2 = seal(db)
    assert (d2["block"], d2["contexts"], d2["entries"]) == (2, 2, 2)
    assert verify(db, [d, d2]) == []
    # nothing new: no block
    assert seal(db)["sealed"] == 0 and db.one("SELECT count(*) FROM koherent.ledger_block") == 2


def test_the_first_seal_gives_the_database_its_identity(item):
    """Not CREATE EXTENSION (a database copied from a template would share it, a restored dump
    would bring a second one): the first seal, one row."""
    db = item
    assert db.one("SELECT count(*) FROM koherent.ledger_meta") == 0
    write(db, "INSERT INTO item (id) VALUES (1)")
    d = seal(db)
    assert db.sql("SELECT database_id::text FROM koherent.ledger_meta") == [(d["database"],)]
    with pytest.raises(psycopg.Error) as e:
        db.sql("INSERT INTO koherent.ledger_meta (database_id) VALUES (gen_random_uuid())")
    assert sqlstate(e) == "23505"


def test_a_restored_dump_verifies_against_the_digests_kept(ledger, tmp_path):
    import subprocess
    import uuid

    from conftest import HOST, PORT, connect

    db = ledger
    dump = tmp_path / "dump.sql"
    subprocess.run(["pg_dump", "-h", HOST, "-p", str(PORT), "-U", "postgres", "-f", str(dump), db.name], check=True)
    name = f"t_restored_{uuid.uuid4().hex[:8]}"
    with connect() as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(PORT), "-U", "postgres",
                        "-d", name, "-f", str(dump)], check=True, capture_output=True)
        from conftest import Db
        restored = Db(name)
        assert restored.one("SELECT count(*) FROM koherent.ledger_meta") == 1
        assert restored.one("SELECT koherent.digest()")["hash"] == db.digests[1]["hash"]
        assert verify(restored, db.digests) == []
    finally:
        with connect() as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_seal_refuses_an_older_snapshot(ledger):
    with ledger.conn(autocommit=False) as c:
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.seal()")
        assert sqlstate(e) == "25000"


def test_values_whose_json_would_hide_a_change(db):
    """json text, array bounds, float -0, an era, the old: columns of a CREATE: each change is
    an entry_changed (their JSON alone would not show it)."""
    db.sql("CREATE TABLE odd (id int PRIMARY KEY, j json, arr int[], f float8, ts timestamptz, r regclass)")
    db.sql("SELECT koherent.track('odd')")
    write(db, "INSERT INTO odd VALUES (1, '{\"a\": 1, \"b\": 2}', '{1,2}', 0, '2020-01-01', 'odd')")
    seal(db)
    assert verify(db) == []
    h = db.one("SELECT history_id FROM koherent_history.odd")
    for change in ("j = '{\"b\": 2, \"a\": 1}'", "j = '{\"a\": 0, \"a\": 1, \"b\": 2}'", "arr = '[5:6]={1,2}'",
                   "f = '-0'", "ts = ts - interval '4040 years'", "\"old:id\" = 9", "r = 'pg_class'"):
        with db.conn(autocommit=False) as c:
            c.execute("SET session_replication_role = replica")
            c.execute(f"UPDATE koherent_history.odd SET {change}")
            got = c.execute("SELECT problem, history_id FROM koherent.verify_history()").fetchall()
            c.rollback()
        assert got == [("entry_changed", h)], change
    # renaming what a regclass names is no change to the entry
    db.sql("ALTER TABLE odd RENAME TO odd2")
    assert verify(db) == []


CASES = {
    # history rows
    "changed value": (lambda db: [f"UPDATE koherent_history.item SET qty = 99 WHERE history_id = {hid(db, 'CREATE', 3)}"],
                      lambda db: {("entry_changed", hid(db, "CREATE", 3))}),
    "changed old value": (lambda db: [f"UPDATE koherent_history.item SET \"old:qty\" = 5 WHERE history_id = {hid(db, 'UPDATE', 1)}"],
                          lambda db: {("entry_changed", hid(db, "UPDATE", 1))}),
    "changed kind": (lambda db: [f"UPDATE koherent_history.item SET history_kind = 'DELETE' WHERE history_id = {hid(db, 'CREATE', 4)}"],
                     lambda db: {("entry_changed", hid(db, "CREATE", 4))}),
    "changed date": (lambda db: [f"UPDATE koherent_history.item SET history_date = history_date - interval '1 hour' "
                                 f"WHERE history_id = {hid(db, 'CREATE', 1)}"],
                     lambda db: {("entry_changed", hid(db, "CREATE", 1))}),
    "changed price scale": (lambda db: [f"UPDATE koherent_history.item SET price = 1.5 WHERE history_id = {hid(db, 'CREATE', 1)}"],
                            lambda db: {("entry_changed", hid(db, "CREATE", 1))}),
    "deleted entry": (lambda db: [f"DELETE FROM koherent_history.item WHERE history_id = {hid(db, 'DELETE', 2)}"],
                      lambda db: {("entry_missing", hid(db, "DELETE", 2))}),
    "inserted entry": (lambda db: ["INSERT INTO koherent_history.item (history_id, history_kind, history_date, history_context, id, qty) "
                                   f"SELECT 10000, 'CREATE', now(), '{ctx_of(db, 'task-1')}', 9, 9"],
                       lambda db: {("entry_added", 10000)}),
    "inserted entry, new context": (lambda db: ["INSERT INTO koherent_history.item (history_id, history_kind, history_date, history_context, id) "
                                                "SELECT 10001, 'CREATE', now(), gen_random_uuid(), 9"],
                                    lambda db: {("unsealed", None)}),
    "entry moved": (lambda db: [f"UPDATE koherent_history.item SET history_context = '{ctx_of(db, 'task-2')}' "
                                f"WHERE history_id = {hid(db, 'CREATE', 3)}"],
                    lambda db: {("entry_moved", hid(db, "CREATE", 3))}),
    "entry moved to an unsealed context": (lambda db: ["UPDATE koherent_history.item SET history_context = gen_random_uuid() "
                                                       f"WHERE history_id = {hid(db, 'CREATE', 3)}"],
                                           lambda db: {("entry_moved", hid(db, "CREATE", 3))}),
    # contexts and tasks
    "changed context field": (lambda db: [f"UPDATE koherent.transaction_auth_context SET changed_by = 'someone' WHERE id = '{ctx_of(db, 'task-1')}'"],
                              lambda db: {("context_changed", None)}),
    "changed context metadata": (lambda db: ["UPDATE koherent.transaction_auth_context SET metadata = '{\"x\": 1}' "
                                             f"WHERE id = '{ctx_of(db, 'task-2')}'"],
                                 lambda db: {("context_changed", None)}),
    "changed context role": (lambda db: ["UPDATE koherent.transaction_auth_context SET db_role = 'admin' WHERE task_id IS NULL"],
                             lambda db: {("context_changed", None)}),
    "deleted context with its entries": (lambda db: [f"DELETE FROM koherent_history.item WHERE history_context = '{ctx_of(db, 'task-2')}'",
                                                     f"DELETE FROM koherent.transaction_auth_context WHERE id = '{ctx_of(db, 'task-2')}'"],
                                         lambda db: {("context_missing", None), ("entry_missing", hid(db, "DELETE", 2)),
                                                     ("entry_missing", hid(db, "CREATE", 4))}),
    "changed task field": (lambda db: ["UPDATE koherent.task SET agent_sub = 'other-agent' WHERE task_id = 'task-1'"],
                           lambda db: {("task_changed", None)}),
    "changed task claims": (lambda db: ["UPDATE koherent.task SET claims = claims || '{\"tsk\": \"x\"}' WHERE task_id = 'task-2'"],
                            lambda db: {("task_changed", None)}),
    "task token replaced by another valid token": (lambda db: [f"UPDATE koherent.task SET token = '{mint('task-1')}' WHERE task_id = 'task-1'"],
                                                   lambda db: {("task_changed", None)}),
    "deleted task": (lambda db: ["DELETE FROM koherent.task WHERE task_id = 'task-2'"],
                     lambda db: {("task_missing", None)}),
    "truncated history": (lambda db: ["TRUNCATE koherent_history.item"],
                          lambda db: {("entry_missing", h) for h in db.ids}),
    # the ledger itself
    "deleted block": (lambda db: ["DELETE FROM koherent.ledger_block WHERE block = 1"],
                      lambda db: {("block_missing", None)}),
    "edited block": (lambda db: ["UPDATE koherent.ledger_block SET sealed_at = sealed_at + interval '1 second' WHERE block = 1"],
                     lambda db: {("block_changed", None)}),
    "edited block count": (lambda db: ["UPDATE koherent.ledger_block SET entries = entries + 1 WHERE block = 2"],
                           lambda db: {("block_changed", None)}),
    "reordered blocks": (lambda db: ["UPDATE koherent.ledger_block SET block = -block",
                                     "UPDATE koherent.ledger_block SET block = CASE block WHEN -1 THEN 2 ELSE 1 END",
                                     "UPDATE koherent.ledger_context SET block = -block",
                                     "UPDATE koherent.ledger_context SET block = CASE block WHEN -1 THEN 2 ELSE 1 END"],
                         lambda db: {("block_changed", None), ("chain_broken", None)}),
    "edited context hash": (lambda db: [f"UPDATE koherent.ledger_context SET hash = sha256(hash) WHERE context_id = '{ctx_of(db, 'task-1')}'"],
                            lambda db: {("block_changed", None), ("context_changed", None)}),
    "context dropped from its block": (lambda db: [f"DELETE FROM koherent.ledger_context WHERE context_id = '{ctx_of(db, 'task-1')}'"],
                                       lambda db: {("block_changed", None), ("unsealed", None)}),
    "entry deleted with its place in the index": (
        lambda db: [f"DELETE FROM koherent_history.item WHERE history_id = {hid(db, 'DELETE', 2)}",
                    "UPDATE koherent.ledger_context SET entry_ids = '{}', entry_configs = '{}', entry_hashes = '' "
                    f"WHERE context_id = '{ctx_of(db, 'task-2')}'"],
        lambda db: {("context_changed", None), ("entry_added", hid(db, "CREATE", 4))}),
    "tracked column retyped": (lambda db: ["UPDATE koherent.tracked_column SET type_sql = 'bigint' WHERE column_name = 'qty'"],
                               lambda db: {("schema_changed", None)}),
    "tracked column removed": (lambda db: ["DELETE FROM koherent.tracked_column WHERE column_name = 'note'"],
                               lambda db: {("schema_changed", None), *{("entry_changed", h) for h in db.ids}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_reported_where_it_is(ledger, case):
    db = ledger
    db.ids = [r[0] for r in db.sql("SELECT history_id FROM koherent_history.item ORDER BY history_id")]
    make, expected = CASES[case]
    want = expected(db)  # (located before the change)
    tamper(db, *make(db))
    got = set(problems(db))
    assert got == want, (case, verify(db))
    # each problem names its place: entries their table and id, the rest their context or block
    for p, table, h, ctx, detail in verify(db):
        if p.startswith("entry_"):
            assert table == "public.item" and h is not None and ctx is not None
        if p in ("context_changed", "context_missing", "task_changed", "task_missing"):
            assert ctx is not None
        assert detail


def test_a_chain_rewritten_from_scratch_is_caught_by_a_digest_kept_outside(ledger):
    db = ledger
    kept = db.digests
    tamper(db, f"UPDATE koherent_history.item SET qty = 1000 WHERE history_id = {hid(db, 'CREATE', 3)}",
           "DELETE FROM koherent.ledger_context", "DELETE FROM koherent.ledger_block")
    seal(db)  # a consistent new chain over the changed history
    assert verify(db) == []  # intact in itself
    got = verify(db, kept)
    assert {(p, d) for p, _, _, _, d in got} == {
        ("digest_mismatch", "digest of block 1: another database's"),
        ("digest_mismatch", "digest of block 2: another database's")}
    # the same with the database's identity put back and the block hashed again by koherent's own
    # function: consistent in itself, but not the chain the digests were taken of
    tamper(db, f"UPDATE koherent.ledger_meta SET database_id = '{kept[0]['database']}'",
           "UPDATE koherent.ledger_block b SET hash = koherent._ledger_block_hash(b)")
    assert verify(db) == []
    got = {(p, d) for p, _, _, _, d in verify(db, kept)}
    assert got == {("digest_mismatch", "digest of block 1: the block's hash is not the digest's"),
                   ("digest_mismatch", "digest of block 2: no such block")}


def test_the_last_block_deleted_is_caught_by_its_digest(ledger):
    db = ledger
    tamper(db, "DELETE FROM koherent.ledger_context WHERE block = 2", "DELETE FROM koherent.ledger_block WHERE block = 2")
    assert {p for p, *_ in verify(db)} == {"unsealed"}  # without a digest: only unsealed now
    assert ("digest_mismatch", None) in problems(db, db.digests)


def test_verify_runs_read_only(ledger):
    """One read-only statement: a read-only transaction (an auditor's, a standby's) verifies."""
    with ledger.conn(autocommit=False) as c:
        c.execute("BEGIN READ ONLY")
        assert c.execute("SELECT count(*) FROM koherent.verify_history(%s)",
                         [psycopg.types.json.Jsonb(ledger.digests)]).fetchone()[0] == 0
        with pytest.raises(psycopg.Error) as e:  # (the transaction is read-only indeed)
            c.execute("CREATE TEMP TABLE x (i int)")
        assert sqlstate(e) == "25006"
    tamper(ledger, f"UPDATE koherent_history.item SET qty = 5 WHERE history_id = {hid(ledger, 'CREATE', 3)}")
    with ledger.conn(autocommit=False) as c:
        c.execute("BEGIN READ ONLY")
        assert c.execute("SELECT problem FROM koherent.verify_history()").fetchall() == [("entry_changed",)]


def test_digests_bad_input(ledger):
    with pytest.raises(psycopg.Error) as e:
        ledger.sql("SELECT * FROM koherent.verify_history('{\"block\": 1}')")
    assert sqlstate(e) == "22023"


def test_schema_changes_after_sealing_are_no_tampering(ledger):
    """Renames, new, dropped and retyped columns and a change of session settings keep what was
    sealed verifiable; a retype with a block sealed keeps the recorded values (a new column)."""
    db = ledger
    db.sql("ALTER TABLE item RENAME COLUMN name TO title")
    db.sql("ALTER TABLE item ADD COLUMN extra int")
    db.sql("ALTER TABLE item DROP COLUMN note")
    db.sql("ALTER TABLE item ALTER COLUMN qty TYPE bigint")
    write(db, "UPDATE item SET qty = 7, title = 't', extra = 1 WHERE id = 1")
    with db.conn() as c:
        c.execute("SET TimeZone = 'Asia/Kathmandu'")
        c.execute("SET DateStyle = 'German'")
        c.execute("SET extra_float_digits = 0")
        assert c.execute("SELECT problem FROM koherent.verify_history()").fetchall() == [("unsealed",)]
        c.execute("SELECT koherent.seal()")
        assert c.execute("SELECT * FROM koherent.verify_history()").fetchall() == []
    assert verify(db, db.digests) == []
    # the values recorded before the retype are the ones sealed
    assert db.one("SELECT qty FROM koherent.row_as_of(NULL::item, '{\"id\": 1}', %s)",
                  [db.digests[0]["sealed_at"]]) == 10


def test_an_independent_implementation_gets_the_same_hashes(ledger):
    """The format is a contract: the entry and block hashes recomputed here in Python from the
    documented record layout (docs/ledger.md) match the extension's."""
    db = ledger

    class Raw(str):
        pass

    def canon(v):
        if isinstance(v, Raw):
            return str(v)
        if isinstance(v, dict):
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canon(v[k]) for k in sorted(v)) + "}"
        if isinstance(v, list):
            return "[" + ",".join(canon(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)

    def parse(text):
        return json.loads(text, parse_float=Raw, parse_int=Raw)

    def h(kind, record):
        return hashlib.sha256(f"koherent-ledger-v1 {kind}\n".encode() + canon(record).encode()).hexdigest()

    def merkle(leaves):
        if not leaves:
            return hashlib.sha256(b"").digest()
        if len(leaves) == 1:
            return hashlib.sha256(b"\x00" + leaves[0]).digest()
        k = 1
        while k * 2 < len(leaves):
            k *= 2
        return hashlib.sha256(b"\x01" + merkle(leaves[:k]) + merkle(leaves[k:])).digest()

    cols = dict(db.sql("SELECT column_name, column_id FROM koherent.tracked_column"))
    cfg = db.one("SELECT id FROM koherent.tracked_config")
    with db.conn() as c:
        c.execute("SET TimeZone = 'UTC'")
        c.execute("SET DateStyle = 'ISO, YMD'")
        # (to_jsonb for bigint, text, integer, numeric; a timestamptz as its output text)
        rows = c.execute("SELECT history_id, history_kind, to_char(history_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
                         "history_context::text, (to_jsonb(h) || jsonb_build_object('updated', updated::text, "
                         "'old:updated', \"old:updated\"::text))::text FROM koherent_history.item h ORDER BY history_id").fetchall()
    ctx1 = ctx_of(db, "task-1")
    leaves = []
    for hid_, kind, date, ctx, img in rows:
        img = parse(img)
        row = {str(cols[c]): img[c] for c in cols}
        old = {str(cols[c]): img["old:" + c] for c in cols}
        e = {"config": Raw(str(cfg)), "id": Raw(str(hid_)), "kind": kind, "date": date, "context": ctx, "row": row, "old": old}
        if ctx == ctx1:
            leaves.append(bytes.fromhex(h("entry", e)))
    assert len(leaves) == 4
    assert merkle(leaves).hex() == db.one(f"SELECT encode(entries_root, 'hex') FROM koherent.ledger_context WHERE context_id = '{ctx1}'")
    # the first block, from its stored fields
    b = db.sql("SELECT format, encode(contexts_root, 'hex'), contexts, entries, encode(schema_hash, 'hex'), "
               "to_char(sealed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), encode(hash, 'hex') "
               "FROM koherent.ledger_block WHERE block = 1")[0]
    record = {"format": b[0], "database": db.digests[0]["database"], "block": Raw("1"), "prev": None,
              "contexts_root": b[1], "contexts": Raw(str(b[2])), "entries": Raw(str(b[3])), "schema": b[4], "sealed_at": b[5]}
    assert h("block", record) == b[6] == db.digests[0]["hash"]


def test_roles_cannot_seal_or_write_the_ledger(ledger):
    db = ledger
    db.sql(f"CREATE ROLE owner_l LOGIN")
    db.sql("CREATE TABLE own (id int PRIMARY KEY)")
    db.sql("ALTER TABLE own OWNER TO owner_l")
    for user in (APP_ROLE, "owner_l"):
        with db.conn(user=user) as c:
            for q in ("SELECT koherent.seal()", "SELECT * FROM koherent.verify_history()", "SELECT koherent.digest()",
                      "INSERT INTO koherent.ledger_block SELECT * FROM koherent.ledger_block",
                      "DELETE FROM koherent.ledger_context", "UPDATE koherent.ledger_meta SET database_id = gen_random_uuid()",
                      "SELECT * FROM koherent.ledger_block", "SELECT koherent._ledger_hash('entry', '{}')"):
                with pytest.raises(psycopg.Error) as e:
                    c.execute(q)
                assert sqlstate(e) == "42501", (user, q)
    # an auditor the administrator grants them to may digest and verify
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.digest(), koherent.verify_history(jsonb) TO {APP_ROLE}")
    with db.conn(user=APP_ROLE) as c:
        assert c.execute("SELECT koherent.digest()->>'block'").fetchone()[0] == "2"
        assert c.execute("SELECT count(*) FROM koherent.verify_history()").fetchone()[0] == 0
    assert verify(db) == []
    db.sql("DROP TABLE own")
    db.sql("DROP ROLE owner_l")


def test_the_cli_signs_a_digest_and_verifies_it(ledger, tmp_path):
    """A digest signed by a key that never enters the database (the CLI, a C2SP-style signed
    checkpoint) verifies with the public key only, gives back the digest, and that digest
    verifies the chain; a changed note, another key or another name do not verify."""
    import os
    import subprocess

    from conftest import ROOT, TEST_PRIVATE_JWK, TEST_PUBLIC_JWK

    cli = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))
    db = ledger
    priv, pub, other = tmp_path / "k.json", tmp_path / "pub.json", tmp_path / "other.json"
    priv.write_text(json.dumps(TEST_PRIVATE_JWK))
    pub.write_text(json.dumps(TEST_PUBLIC_JWK))
    other.write_text(subprocess.run([cli, "keygen"], capture_output=True, text=True, check=True).stdout)
    digest = db.one("SELECT koherent.digest()")
    signed = subprocess.run([cli, "digest", "sign", "--key", str(priv), "--name", "ops.example/ledger"],
                            input=json.dumps(digest), capture_output=True, text=True, check=True).stdout
    lines = signed.splitlines()
    assert lines[0] == f"koherent-ledger-v1 {digest['database']}" and lines[1] == "2"
    assert lines[-2] == "" and lines[-1].startswith("\u2014 ops.example/ledger ")
    note = tmp_path / "note"
    note.write_text(signed)
    ok = subprocess.run([cli, "digest", "verify", "--key", str(pub), "--name", "ops.example/ledger", "--note", str(note)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    back = json.loads(ok.stdout)
    assert back == {k: v for k, v in digest.items() if k != "database_name"}
    assert verify(db, [back]) == []
    for changed, key, name in ((signed.replace("\n2\n", "\n3\n", 1), pub, "ops.example/ledger"),
                               (signed, other, "ops.example/ledger"), (signed, pub, "someone")):
        note.write_text(changed)
        bad = subprocess.run([cli, "digest", "verify", "--key", str(key), "--name", name, "--note", str(note)],
                             capture_output=True, text=True)
        assert bad.returncode == 1 and bad.stderr.startswith("koherent: ") and bad.stdout == "", bad


def test_every_kind_of_value_is_recorded_as_documented(item):
    """The record of one entry holding every kind of value docs/ledger.md names (what
    koherent._ledger_fields writes): integers, numerics (and NaN, the infinities), booleans,
    uuids, jsonb as to_jsonb gives them; text with quotes, backslashes and control characters as
    JSON strings; reg* values as their oid; every other type (json, arrays, floats, bytea,
    timestamps, a domain over an integer) as its output text; nulls as null. And a table of 120
    columns (more than one call takes) seals and verifies."""
    db = item
    db.sql("CREATE DOMAIN small_int AS integer CHECK (VALUE < 100)")
    db.sql("CREATE TABLE kinds (id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric, nn numeric, ni numeric, "
           "b boolean, u uuid, jb jsonb, t text, v varchar(20), r regclass, rt regtype, j json, a int[], "
           "f float8, bt bytea, ts timestamptz, d small_int, z text)")
    db.sql("SELECT koherent.track('kinds')")
    db.sql("INSERT INTO kinds VALUES (1, -2, 9007199254740993, 1.50, 'NaN', '-Infinity', true, "
           "'01a237ac-6b7f-7529-a7b5-f7f4e3749ef2', '{\"b\": [1, 2.50], \"a\": null}', "
           "E'q\"b\\\\c\\nd\\x01é\\t', 'v', 'pg_class', 'int4', '{\"b\": 1,  \"b\": 2}', '[2:3]={4,5}', "
           "'-0', '\\x0102', '2026-01-02 03:04:05.5+00', 7, NULL)")
    seal(db)
    assert verify(db) == []
    cols = dict(db.sql("SELECT column_name, column_id FROM koherent.tracked_column c JOIN koherent.tracked_config g "
                       "ON g.id = c.config_id WHERE g.table_name = 'kinds'"))
    with db.conn() as c:
        c.execute("SET TimeZone = 'UTC'")
        c.execute("SET DateStyle = 'ISO, YMD'")
        c.execute("SET extra_float_digits = 1")
        sql = c.execute("SELECT koherent._ledger_records_sql(g, 'true') FROM koherent.tracked_config g "
                        "WHERE g.table_name = 'kinds'").fetchone()[0]
        (text,) = c.execute(f"SELECT record FROM ({sql}) r").fetchone()
    record = json.loads(text, parse_float=str, parse_int=str)
    row = {name: record["row"][str(cid)] for name, cid in cols.items()}
    assert row == {
        "id": "1", "i2": "-2", "i8": "9007199254740993", "n": "1.50", "nn": "NaN", "ni": "-Infinity", "b": True,
        "u": "01a237ac-6b7f-7529-a7b5-f7f4e3749ef2", "jb": {"a": None, "b": ["1", "2.50"]},
        "t": 'q"b\\c\nd\x01é\t', "v": "v",
        "r": db.one("SELECT 'pg_class'::regclass::oid::text"), "rt": "23",
        "j": '{"b": 1,  "b": 2}', "a": "[2:3]={4,5}", "f": "-0", "bt": "\\x0102",
        "ts": "2026-01-02 03:04:05.5+00", "d": "7", "z": None}
    assert set(record["old"].values()) == {None} and len(record["old"]) == len(cols) == 20
    # the numbers as written (a JSON reader that kept floats would lose 1.50's scale)
    assert '"1.50"' not in text and ":1.50" in text and ":9007199254740993" in text

    # a wide table: the image is made by several calls (at most 90 values each)
    db.sql("CREATE TABLE wide (id int PRIMARY KEY, " + ", ".join(f"c{i} int" for i in range(119)) + ")")
    db.sql("SELECT koherent.track('wide')")
    db.sql("INSERT INTO wide VALUES (1, " + ", ".join(str(i) for i in range(119)) + ")")
    db.sql("UPDATE wide SET c118 = -1, c0 = -2")
    seal(db)
    assert verify(db) == []
    with db.conn() as c:
        sql = c.execute("SELECT koherent._ledger_records_sql(g, 'true') FROM koherent.tracked_config g "
                        "WHERE g.table_name = 'wide'").fetchone()[0]
        texts = [r for (r,) in c.execute(f"SELECT record FROM ({sql}) r ORDER BY history_id")]
    upd = json.loads(texts[1])
    assert len(upd["row"]) == len(upd["old"]) == 120
    wcols = dict(db.sql("SELECT column_name, column_id FROM koherent.tracked_column c JOIN koherent.tracked_config g "
                        "ON g.id = c.config_id WHERE g.table_name = 'wide'"))
    assert upd["row"][str(wcols["c118"])] == -1 and upd["old"][str(wcols["c118"])] == 118
    assert upd["row"][str(wcols["c0"])] == -2 and upd["row"][str(wcols["c117"])] == 117


def test_an_entry_written_in_a_procedure_after_its_commit_is_dated_in_its_own_transaction(item):
    """A session that has not loaded koherent yet, and whose first tracked write runs in a
    procedure after a COMMIT: the write's statement start is the CALL's, before the transaction
    that writes (and its context row) began. Its entry is dated at its transaction's start, so
    the readers by task find it, the seal seals it, verify_history finds history intact."""
    item.sql("CREATE PROCEDURE write_after_commit(tok text) LANGUAGE plpgsql AS $$ BEGIN "
             "PERFORM pg_sleep(0.2); COMMIT; PERFORM set_config('koherent.task_token', tok, true); "
             "INSERT INTO item (id, qty) VALUES (11, 1); END $$")
    item.sql(f"GRANT EXECUTE ON PROCEDURE write_after_commit(text) TO {APP_ROLE}")
    with item.conn(user=APP_ROLE) as c:   # a new backend: koherent is loaded by the INSERT's trigger
        assert c.execute("SELECT count(*) FROM pg_settings WHERE name = 'koherent.row_key_lookup'").fetchone()[0] == 0
        c.execute("CALL write_after_commit(%s)", [mint("task-proc")])
    date, created = item.sql("SELECT e.date, c.created_at FROM koherent.provenance_entry e "
                             "JOIN koherent.transaction_auth_context c ON c.id = e.context_id WHERE e.task_id = 'task-proc'")[0]
    assert date >= created
    assert item.sql("SELECT kind, row_key FROM koherent.task_changes('task-proc')") == [("CREATE", {"id": 11})]
    assert item.one("SELECT count(*) FROM koherent.revert_plan('task-proc')") == 1
    sealed = item.one("SELECT koherent.seal()")
    assert sealed["sealed_entries"] == 1
    assert item.sql("SELECT * FROM koherent.verify_history()") == []
    assert item.sql("SELECT kind, row_key FROM koherent.task_changes('task-proc')") == [("CREATE", {"id": 11})]


@pytest.mark.parametrize("ddl", ["ALTER TABLE it ALTER COLUMN qty TYPE bigint",
                                 "ALTER TABLE it RENAME COLUMN note TO memo",
                                 "ALTER TABLE it ADD COLUMN extra int"])
def test_seal_and_verify_wait_for_a_change_of_columns_in_progress(db, ddl):
    """A seal or verify_history started while another transaction changes a tracked table's
    columns (its history table's columns retyped, renamed or retired) waits for it and reads
    the columns as they are then: the seal hashes the entries' values (it hashed the retired
    column's successor, empty, and verify reported entry_changed forever; a rename failed with
    42703), and verify reports nothing (it reported entry_changed, or failed, while the change
    was in progress)."""
    db.sql("CREATE TABLE it (id int PRIMARY KEY, qty int, note text)")
    db.sql("SELECT koherent.track('it')")
    write(db, "INSERT INTO it VALUES (1, 1, 'n')")
    db.sql("SELECT koherent.seal()")              # with a block sealed, a type change retires the column
    write(db, ["UPDATE it SET qty = 42 WHERE id = 1", "INSERT INTO it VALUES (2, 7, 'm')"])
    for what in ("SELECT koherent.seal()", "SELECT count(*) FROM koherent.verify_history()"):
        a = db.conn(autocommit=False)
        a.execute(ddl)
        result = {}

        def run():
            try:
                with db.conn() as c:
                    result["r"] = c.execute(what).fetchone()[0]
            except psycopg.Error as e:
                result["e"] = e

        t = threading.Thread(target=run)
        t.start()
        pattern = "%koherent.seal()%" if "seal" in what else "%verify_history%"
        # (it waits where the change locked the history table: a column added or dropped
        # leaves the history table's columns as they are)
        waited = wait_for_lock(db, pattern, t, result, may_finish=True)
        assert waited or "DROP" in ddl or "ADD" in ddl, (ddl, what, result)
        a.commit()
        a.close()
        t.join(10)
        assert "e" not in result, result
        if "seal" in what:
            assert result["r"]["sealed_entries"] == 2
        else:
            assert result["r"] == 0
        assert db.sql("SELECT problem, history_id, detail FROM koherent.verify_history()") == []
        if "seal" in what:
            ddl = {"ALTER TABLE it ALTER COLUMN qty TYPE bigint": "ALTER TABLE it ALTER COLUMN qty TYPE numeric",
                   "ALTER TABLE it RENAME COLUMN note TO memo": "ALTER TABLE it RENAME COLUMN memo TO note",
                   "ALTER TABLE it ADD COLUMN extra int": "ALTER TABLE it DROP COLUMN extra"}[ddl]


def test_a_seal_waiting_for_one_altered_table_holds_no_other(db):
    """A transaction alters one tracked table, a seal starts (and waits for that table's
    history), then the transaction alters a second tracked table: the seal holds no lock on the
    second while it waits, so both go through (it deadlocked: 40P01, the seal failed)."""
    db.sql("CREATE TABLE d1 (id int PRIMARY KEY)")
    db.sql("CREATE TABLE d2 (id int PRIMARY KEY)")
    db.sql("SELECT koherent.track('d1'), koherent.track('d2')")
    write(db, ["INSERT INTO d1 VALUES (1)", "INSERT INTO d2 VALUES (1)"])
    a = db.conn(autocommit=False)
    a.execute("ALTER TABLE d2 ADD COLUMN x int")
    result = {}

    def seal():
        try:
            with db.conn() as c:
                result["r"] = c.execute("SELECT koherent.seal()").fetchone()[0]
        except psycopg.Error as e:
            result["e"] = e

    t = threading.Thread(target=seal)
    t.start()
    wait_for_lock(db, "%koherent.seal()%", t, result)
    a.execute("SET lock_timeout = '5s'")
    a.execute("ALTER TABLE d1 ADD COLUMN y int")   # (its history table is not the seal's)
    a.commit()
    a.close()
    t.join(10)
    assert "e" not in result, result
    assert result["r"]["sealed_entries"] == 2
    assert db.sql("SELECT problem FROM koherent.verify_history()") == []
