"""Partitioned history and retention: koherent.set_retention partitions a history table by date
(an existing one becomes its first partition), partitions are made ahead, the writer routes
each statement's entries to its partition, every reader works across partitions, prune() drops
whole partitions older than keep under concurrent writes and records retention events that the
ledger seals, and verify_history reports the dropped entries as pruned, never as tampering."""

import datetime
import hashlib
import json
import os
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import APP_ROLE, HOST, PORT, ROOT, entries, mint, sqlstate, write, wait_for_lock

CLI = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))


def partitions(db, hist="koherent_history.item"):
    return db.sql("SELECT part::text, lo, hi FROM koherent._partitions(%s) ORDER BY hi", [hist])


def where(db, hist="koherent_history.item"):
    """Per partition (by name), the kinds of the entries in it."""
    return db.sql(f"SELECT tableoid::regclass::text, history_kind, count(*) FROM {hist} GROUP BY 1, 2 ORDER BY 1, 2")


def sleep_past(t):
    """Sleep until the server clock (this machine's) has passed t (an aware datetime)."""
    left = (t - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if left > 0:
        time.sleep(left + 0.05)


def test_an_existing_history_becomes_the_first_partition(item):
    db = item
    write(db, ["INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", "UPDATE item SET qty = 3 WHERE id = 1"],
          mint("before"), user=APP_ROLE)
    before = entries(db)
    # a column an administrator added to the history table and dropped again: the old table
    # keeps a dropped attribute that the new one has not, so the writer maps the columns of
    # what it routes there
    db.sql("ALTER TABLE koherent_history.item ADD COLUMN junk int")
    db.sql("ALTER TABLE koherent_history.item DROP COLUMN junk")
    r = db.one("SELECT koherent.set_retention('item', '1 year', '1 day', 3)")
    assert (r["keep"], r["partition"], r["ahead"], r["partitions_made"]) == ("1 year", "1 day", 3, 3)
    assert db.one("SELECT relkind FROM pg_class WHERE oid = 'koherent_history.item'::regclass") == "p"
    parts = partitions(db)
    # the old table, from MINVALUE to the end of today (UTC), then three days made ahead
    today = db.one("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
    day = datetime.timedelta(days=1)
    assert [(lo, hi) for _, lo, hi in parts] == [(None, today + day), (today + day, today + 2 * day),
                                                  (today + 2 * day, today + 3 * day), (today + 3 * day, today + 4 * day)]
    cfg = db.one("SELECT id FROM koherent.tracked_config WHERE table_name = 'item'")
    assert parts[0][0] == f"koherent_history.item_{cfg}_p0"
    assert parts[1][0] == f"koherent_history.item_{cfg}_p{(today + day).strftime('%Y%m%d_%H%M%S')}"
    assert r["partitions"][0]["partition"] == parts[0][0] and len(r["partitions"]) == 4
    assert entries(db) == before
    # every partition has the history table's indexes (the old one's own were attached)
    idx = db.sql("SELECT c.relname::text, count(*), count(*) FILTER (WHERE x.reloptions @> '{pages_per_range=128}') "
                 "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_index ix ON ix.indrelid = c.oid "
                 "JOIN pg_class x ON x.oid = ix.indexrelid "
                 "WHERE i.inhparent = 'koherent_history.item'::regclass GROUP BY 1 ORDER BY 1")
    parent = db.one("SELECT count(*) FROM pg_index WHERE indrelid = 'koherent_history.item'::regclass")
    assert parent == 4 and [(n, k) for _, n, k in idx] == [(4, 1)] * 4
    # nothing new: create_partitions makes none, set_retention again changes keep only
    assert db.one("SELECT koherent.create_partitions()") == 0
    assert db.one("SELECT koherent.set_retention('item', '2 years', '1 day', 3)")["partitions_made"] == 0
    assert db.one("SELECT keep::text FROM koherent.retention") == "2 years"
    # writes go on (today's entries into the first partition), readers read across
    write(db, ["UPDATE item SET qty = 4 WHERE id = 2", "DELETE FROM item WHERE id = 1"], mint("after"), user=APP_ROLE)
    assert db.sql("SELECT count(*) FILTER (WHERE attisdropped), count(*) FILTER (WHERE attnum > 0) FROM pg_attribute "
                  "WHERE attrelid = %s::regclass GROUP BY attrelid", [parts[0][0]]) == [(1, 17)]
    assert db.one("SELECT count(*) FROM pg_attribute WHERE attrelid = 'koherent_history.item'::regclass "
                  "AND attnum > 0") == 16
    assert [k for k, _, _ in entries(db)] == ["CREATE", "CREATE", "UPDATE", "UPDATE", "DELETE"]
    assert [d for _, _, d in entries(db)][3:] == [{"id": 2, "qty": 4, "name": None, "note": None, "price": None},
                                                   {"id": 1, "qty": 3, "name": None, "note": None, "price": None}]
    assert db.sql("SELECT \"old:qty\", qty FROM koherent_history.item WHERE history_kind = 'UPDATE' "
                  "ORDER BY history_id") == [(1, 3), (2, 4)]
    assert where(db) == [(parts[0][0], "CREATE", 2), (parts[0][0], "DELETE", 1), (parts[0][0], "UPDATE", 2)]
    assert db.sql("SELECT kind FROM koherent.provenance_entry WHERE table_name = 'item'::regclass "
                  "AND row_key = '{\"id\": 2}' ORDER BY history_id") == [("CREATE",), ("UPDATE",)]
    assert db.one("SELECT count(*) FROM koherent.task_changes('after')") == 2
    assert db.sql("SELECT action, row_key FROM koherent.revert_plan('after') ORDER BY row_key") == [
        ("INSERT", {"id": 1}), ("UPDATE", {"id": 2})]
    # a column added to the table comes to every partition (the old one gets it after its
    # dropped attribute: mapped by name)
    db.sql("ALTER TABLE item ADD COLUMN extra int")
    write(db, "UPDATE item SET extra = 5 WHERE id = 2", mint("ddl"), user=APP_ROLE)
    assert entries(db)[-1] == ("UPDATE", {"id": 2}, {"id": 2, "qty": 4, "name": None, "note": None, "price": None,
                                                     "extra": 5})
    assert db.sql("SELECT count(*) FROM pg_attribute a JOIN koherent._partitions('koherent_history.item') p "
                  "ON a.attrelid = p.part WHERE a.attname IN ('extra', 'old:extra')") == [(8,)]
    d = db.one("SELECT koherent.seal()")
    assert d["entries"] == 6
    assert db.sql("SELECT * FROM koherent.verify_history(%s)", [json.dumps([d])]) == []


def test_bad_settings_and_roles(item):
    db = item
    for args, state in ((("'item'", "'1 year'", "'1 mon 2 days'"), "22023"), (("'item'", "'1 year'", "'0.5 s'"), "22023"),
                        (("'item'", "'1 day'", "'1 month'"), "22023"), (("'item'", "'-1 day'", "'1 day'"), "22023"),
                        (("NULL", "'1 year'", "'1 day'"), "22004")):
        with pytest.raises(psycopg.Error) as e:
            db.sql(f"SELECT koherent.set_retention({', '.join(args)})")
        assert sqlstate(e) == state, args
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.set_retention('item', '1 year', '1 day', 0)")
    assert sqlstate(e) == "22023"
    db.sql("CREATE TABLE plain (id int PRIMARY KEY)")
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.set_retention('plain', '1 year')")
    assert sqlstate(e) == "55000"
    # nothing was changed by any of them
    assert db.sql("SELECT * FROM koherent.retention") == []
    assert db.one("SELECT relkind FROM pg_class WHERE oid = 'koherent_history.item'::regclass") == "r"
    db.sql("SELECT koherent.set_retention('item', '1 year')")
    # the application role and a table owner may neither set retention nor prune, nor drop or
    # write a partition, nor forge a retention event
    db.sql("CREATE ROLE owner_r LOGIN")
    db.sql("ALTER TABLE plain OWNER TO owner_r")
    part = partitions(db)[-1][0]
    for user in (APP_ROLE, "owner_r"):
        with db.conn(user=user) as c:
            for q in ("SELECT koherent.set_retention('item', '1 month')", "SELECT koherent.prune()",
                      "SELECT koherent.create_partitions()", f"DROP TABLE {part}",
                      f"ALTER TABLE koherent_history.item DETACH PARTITION {part}",
                      f"INSERT INTO {part} (history_id, history_kind, history_date) VALUES (1, 'CREATE', now())",
                      "INSERT INTO koherent.retention_event (config_id, partition_name, range_to, entries, id_ranges, "
                      "dropped_at, dropped_by) VALUES (1, 'x', now(), 0, '{}', now(), 'x')",
                      "UPDATE koherent.retention SET keep = '1 month'"):
                with pytest.raises(psycopg.Error) as e:
                    c.execute(q)
                assert sqlstate(e) == "42501", (user, q)
    assert db.one("SELECT keep::text FROM koherent.retention") == "1 year"
    assert len(partitions(db)) == 4
    db.sql("DROP TABLE plain")
    db.sql("DROP ROLE owner_r")


def test_writes_across_partition_boundaries(db):
    """Seconds-wide partitions: a transaction whose statements fall on both sides of a boundary,
    and one statement that runs across one (its entries all carry its start, so they go to one
    partition); every reader across the partitions; a write with no partition for its date."""
    db.sql("CREATE TABLE ev (id int PRIMARY KEY, v int)")
    db.sql("SELECT koherent.track('ev')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ev TO {APP_ROLE}")
    db.sql("SELECT koherent.set_retention('ev', NULL, '2 seconds', 5)")
    parts = partitions(db, "koherent_history.ev")
    assert len(parts) == 6 and all((hi - lo).total_seconds() == 2 for _, lo, hi in parts[1:])
    assert all(hi.timestamp() % 2 == 0 for _, _, hi in parts)
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("span")])
        c.execute("INSERT INTO ev SELECT g, 0 FROM generate_series(1, 300) g")
        first = c.execute("SELECT statement_timestamp()").fetchone()[0]
        # the next boundary after this statement
        boundary = next(hi for _, _, hi in parts if hi > first)
        sleep_past(boundary)
        c.execute("UPDATE ev SET v = 1")
        c.commit()
    # a statement starting just before a boundary and running past it
    boundary = next(hi for _, _, hi in partitions(db, "koherent_history.ev")
                    if hi > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.5))
    sleep_past(boundary - datetime.timedelta(seconds=0.4))
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("long")])
        start = c.execute("SELECT statement_timestamp()").fetchone()[0]
        c.execute("UPDATE ev SET v = 2 WHERE id <= 80 AND pg_sleep(0.01) IS NOT NULL")
        end = c.execute("SELECT statement_timestamp()").fetchone()[0]
        c.commit()
    assert start < boundary < end
    # per statement (its date): one partition each, the one its start falls in
    rows = db.sql("SELECT h.history_kind, count(*), count(DISTINCT h.tableoid), min(h.tableoid::regclass::text), "
                  "h.history_date FROM koherent_history.ev h GROUP BY h.history_kind, h.history_date "
                  "ORDER BY min(h.history_id)")
    assert [(k, n, p) for k, n, p, _, _ in rows] == [("CREATE", 300, 1), ("UPDATE", 300, 1), ("UPDATE", 80, 1)]
    bounds = {p: (lo, hi) for p, lo, hi in partitions(db, "koherent_history.ev")}
    assert all((bounds[p][0] or d) <= d < bounds[p][1] for _, _, _, p, d in rows)
    assert rows[0][3] != rows[1][3] and start <= rows[2][4] < boundary and bounds[rows[2][3]][1] == boundary
    # readers across partitions: a row's history, a task's changes, the table as of a moment,
    # the revert plan and the revert itself
    assert db.sql("SELECT kind, row_data->>'v' FROM koherent.provenance_entry WHERE table_name = 'ev'::regclass "
                  "AND row_key = '{\"id\": 7}' ORDER BY history_id") == [("CREATE", "0"), ("UPDATE", "1"), ("UPDATE", "2")]
    with db.conn() as c:
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN (COSTS OFF) SELECT * FROM koherent.provenance_entry WHERE table_name = 'ev'::regclass "
            "AND row_key = '{\"id\": 7}'").fetchall())
    assert plan.count("Index Cond: (id = 7)") >= 2 and "Seq Scan on ev" not in plan, plan
    assert db.one("SELECT count(*) FROM koherent.task_changes('span')") == 600
    assert db.one("SELECT count(*) FROM koherent.as_of(NULL::ev, %s)", [first]) == 300
    assert db.one("SELECT sum(v) FROM koherent.as_of(NULL::ev, %s)", [first]) == 0
    assert db.one("SELECT count(*) FROM koherent.revert_plan('span')") == 300
    d = db.one("SELECT koherent.seal()")
    assert d["entries"] == 680
    with db.conn(user="postgres", autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("undo")])
        r = c.execute("SELECT koherent.revert_task('span', on_conflict => 'overwrite')").fetchone()[0]
        c.commit()
    assert (r["deleted"], r["inserted"], r["updated"]) == (300, 0, 0)
    assert db.one("SELECT count(*) FROM ev") == 0
    db.sql("SELECT koherent.seal()")
    assert db.sql("SELECT * FROM koherent.verify_history(%s)", [json.dumps([d])]) == []

    # past the partitions made ahead (nothing makes more here: no sealer, no prune): the write
    # fails with koherent's error and writes nothing; create_partitions() makes the next ones
    last = partitions(db, "koherent_history.ev")[-1][2]
    sleep_past(last)
    n = db.count("koherent_history.ev")
    with pytest.raises(psycopg.Error) as e:
        write(db, "INSERT INTO ev VALUES (1000, 0)", mint("late"), user=APP_ROLE)
    assert sqlstate(e) == "23514"
    assert "has no partition for this statement's date" in str(e.value)
    assert "create_partitions" in e.value.diag.message_hint
    assert db.count("ev") == 0 and db.count("koherent_history.ev") == n
    assert db.one("SELECT count(*) FROM koherent.task WHERE task_id = 'late'") == 0
    assert db.one("SELECT koherent.create_partitions()") == 6
    write(db, "INSERT INTO ev VALUES (1000, 0)", mint("late"), user=APP_ROLE)
    assert db.one("SELECT count(*) FROM koherent.task_changes('late')") == 1


def test_prune_under_concurrent_writes(db, tmp_path):
    """Writers insert all the time while prune() drops what is older than keep (3 s of 1 s
    partitions): no writer fails, every entry younger than keep is there, and the entries
    dropped are exactly what the retention events count. The ledger reports them as pruned."""
    db.sql("CREATE TABLE lg (id bigint PRIMARY KEY, w int)")
    db.sql("SELECT koherent.track('lg')")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON lg TO {APP_ROLE}")
    db.sql("SELECT koherent.set_retention('lg', '3 seconds', '1 second', 3)")
    write(db, "INSERT INTO lg VALUES (0, 0)", mint("first"), user=APP_ROLE)
    db.sql("SELECT koherent.seal()")
    pkg = str(tmp_path / "pkg")
    r = subprocess.run([CLI, "audit", "export", "--db", f"host={HOST} port={PORT} user=postgres dbname={db.name}",
                        "--task", "first", "--out", pkg], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    stop = threading.Event()
    written = {1: [], 2: []}
    errors = []

    def writer(w):
        n = 0
        try:
            with db.conn(user=APP_ROLE, autocommit=False) as c:
                while not stop.is_set():
                    n += 1
                    t0 = datetime.datetime.now(datetime.timezone.utc)
                    c.execute("SELECT koherent.set_task(%s)", [mint(f"w{w}")])
                    c.execute("INSERT INTO lg SELECT %s * 1000000 + %s * 10 + g, %s FROM generate_series(0, 4) g",
                              [w, n, w])
                    c.commit()
                    written[w].append((t0, n))
                    time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    results = []
    try:
        deadline = time.time() + 8
        while time.time() < deadline:
            with db.conn() as c:
                x = c.execute("SELECT koherent.prune()").fetchone()[0]
                results.append((datetime.datetime.now(datetime.timezone.utc), x))
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    total = 5 * sum(len(v) for v in written.values()) + 1
    assert sum(len(x["dropped"]) for _, x in results) >= 3
    dropped = sum(x["entries_dropped"] for _, x in results)
    events = db.one("SELECT coalesce(sum(entries), 0) FROM koherent.retention_event")
    assert dropped == events > 0
    left = db.count("koherent_history.lg")
    assert left + events == total
    # every entry younger than keep at the last prune is there (its end: prune's now() is earlier)
    last = results[-1][0]
    keep = datetime.timedelta(seconds=3)
    for w, rows in written.items():
        young = [n for t0, n in rows if t0 >= last - keep]
        assert young, w
        have = {r[0] for r in db.sql("SELECT id FROM koherent_history.lg WHERE id BETWEEN %s AND %s",
                                     [w * 1000000, w * 1000000 + 999999])}
        assert all(w * 1000000 + n * 10 + g in have for n in young for g in range(5)), w
    # retention events: sealed, and verify_history names them as pruned, nothing else
    d = db.one("SELECT koherent.seal()")
    assert db.one("SELECT count(*) FILTER (WHERE block IS NULL) FROM koherent.retention_event") == 0
    problems = db.sql("SELECT problem, table_name, detail FROM koherent.verify_history(%s)", [json.dumps([d])])
    n_events = db.one("SELECT count(*) FROM koherent.retention_event")
    assert len(problems) == n_events and {p for p, _, _ in problems} == {"pruned"}
    assert all(t == "public.lg" for _, t, _ in problems)
    sealed_dropped = sum(int(x.split(" entries, ")[1].split(" ")[0]) for _, _, x in problems)
    assert 0 < sealed_dropped <= events
    # the blocks' schema records with their "pruned" member hash as docs/ledger.md says
    # (recomputed here), and the documented test vector
    def canon(v):
        if isinstance(v, dict):
            return "{" + ",".join(json.dumps(k) + ":" + canon(v[k]) for k in sorted(v)) + "}"
        if isinstance(v, list):
            return "[" + ",".join(canon(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)
    blocks = db.sql("SELECT schema, encode(schema_hash, 'hex') FROM koherent.ledger_block WHERE schema ? 'pruned'")
    assert blocks and sum(len(b["pruned"]) for b, _ in blocks) == n_events
    for schema, hashed in blocks:
        assert hashlib.sha256(b"koherent-ledger-v1 schema\n" + canon(schema).encode()).hexdigest() == hashed
        assert all(set(e) == {"id", "config", "partition", "from", "to", "entries", "ids", "dropped_at", "dropped_by"}
                   for e in schema["pruned"])
    vector = ('{"columns":[],"configs":[{"history_table":"lg","id":1,"tracked_since":"2026-12-03T08:16:35.000000Z"}],'
              '"pruned":[{"config":1,"dropped_at":"2026-12-03T08:16:40.250030Z","dropped_by":"postgres","entries":1,'
              '"from":null,"id":1,"ids":[[2,2]],"partition":"lg_1_p0","to":"2026-12-03T08:16:37.000000Z"}]}')
    assert db.one("SELECT encode(koherent._ledger_hash('schema', %s::jsonb), 'hex')", [vector]) == \
        "ec73832dafbec9e8981aff85bbba037a621e66182f75ff782dfdce1bf77894a2"
    # the package exported before pruning still verifies offline
    r = subprocess.run([CLI, "audit", "verify", pkg], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    # tampering stays visible beside pruning: a kept entry deleted, an event forged or edited
    with db.conn() as c:
        c.execute("SET session_replication_role = replica")
        kept = c.execute("SELECT history_id FROM koherent_history.lg h WHERE EXISTS (SELECT 1 FROM koherent.ledger_context l "
                         "WHERE l.context_id = h.history_context) ORDER BY history_id LIMIT 1").fetchone()[0]
        c.execute("DELETE FROM koherent_history.lg WHERE history_id = %s", [kept])
        c.execute("UPDATE koherent.retention_event SET entries = entries + 1 WHERE id = (SELECT min(id) FROM koherent.retention_event)")
        c.execute("INSERT INTO koherent.retention_event (config_id, partition_name, range_to, entries, id_ranges, dropped_at, "
                  "dropped_by) SELECT config_id, 'forged', now(), 1, ARRAY[int8range(%s, %s, '[]')], now(), 'x' "
                  "FROM koherent.retention_event LIMIT 1", [kept, kept])
    problems = db.sql("SELECT problem, history_id FROM koherent.verify_history() WHERE problem <> 'pruned'")
    assert sorted(p for p, _ in problems) == ["pruned_unsealed", "retention_changed"]
    # the forged, unsealed event covers the deleted entry: reported as pruned but unsealed, the
    # one place an auditor must look; without the forgery it is a missing entry
    db.sql("DELETE FROM koherent.retention_event WHERE partition_name = 'forged'")
    problems = db.sql("SELECT problem, history_id FROM koherent.verify_history() WHERE problem <> 'pruned'")
    assert sorted(problems) == [("entry_missing", kept), ("retention_changed", None)]


def pruned_table(db, name="pt", keep="1 second", width="1 second"):
    db.sql(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    db.sql(f"SELECT koherent.track('{name}')")
    db.sql(f"SELECT koherent.set_retention('{name}', '{keep}', '{width}', 5)")


def test_tampering_behind_retention_is_caught(db):
    """A superuser who deletes a kept entry and hides it behind a retention event: edited and
    sealed again, forged and sealed, or swallowed by an honest prune of an interleaved range."""
    pruned_table(db)
    write(db, "INSERT INTO pt VALUES (1, 'a')", mint("old"))
    db.sql("SELECT koherent.seal()")
    time.sleep(2.2)
    write(db, "INSERT INTO pt VALUES (2, 'b'), (3, 'c')", mint("new"))
    r = db.one("SELECT koherent.prune()")
    assert r["entries_dropped"] == 1 and r["skipped"] == []
    assert {p for p, in db.sql("SELECT problem FROM koherent.verify_history()")} == {"pruned"}
    kept = db.one("SELECT min(history_id) FROM koherent_history.pt")
    ev = db.one("SELECT id FROM koherent.retention_event WHERE entries = 1")
    with db.conn() as c:
        c.execute("SET session_replication_role = replica")
        c.execute("DELETE FROM koherent_history.pt WHERE history_id = %s", [kept])
    assert db.sql("SELECT problem, history_id FROM koherent.verify_history() WHERE problem <> 'pruned'") == [
        ("entry_missing", kept)]
    # 1. the event widened to cover it, marked unsealed and sealed again
    db.sql("UPDATE koherent.retention_event SET id_ranges = id_ranges || int8range(%s, %s, '[]'), entries = 2, "
           "block = NULL WHERE id = %s", [kept, kept, ev])
    db.sql("SELECT koherent.seal()")
    assert db.one("SELECT count(*) FROM koherent.ledger_block WHERE schema ? 'pruned'") == 1  # not sealed twice
    # (the entry's transaction began after the partition ended, so no event covers it either)
    assert sorted(db.sql("SELECT problem FROM koherent.verify_history() WHERE problem <> 'pruned'")) == [
        ("entry_missing",), ("retention_changed",)]
    db.sql("UPDATE koherent.retention_event SET id_ranges = id_ranges[1:1], entries = 1, "
           "block = (SELECT block FROM koherent.ledger_block WHERE schema ? 'pruned') WHERE id = %s", [ev])
    assert db.sql("SELECT problem FROM koherent.verify_history() WHERE problem <> 'pruned'") == [("entry_missing",)]
    # 2. a forged event of a range long before the entry's transaction began, sealed
    db.sql("INSERT INTO koherent.retention_event (config_id, partition_name, range_from, range_to, entries, id_ranges, "
           "dropped_at, dropped_by) SELECT config_id, 'pt_1_p20000101_000000', '2000-01-01', '2000-01-01 00:00:01', 1, "
           "ARRAY[int8range(%s, %s, '[]')], now(), 'postgres' FROM koherent.retention_event LIMIT 1", [kept, kept])
    db.sql("SELECT koherent.seal()")
    assert db.sql("SELECT problem, history_id FROM koherent.verify_history() WHERE problem <> 'pruned'") == [
        ("entry_missing", kept)]
    # ... or of a range that a partition still attached covers (and that was not over when
    # "dropped": prune() could not have written it, so it explains nothing)
    db.sql("INSERT INTO koherent.retention_event (config_id, partition_name, range_from, range_to, entries, id_ranges, "
           "dropped_at, dropped_by) SELECT config_id, 'forged', now() - interval '1 hour', now() + interval '1 hour', 1, "
           "ARRAY[int8range(%s, %s, '[]')], now(), 'postgres' FROM koherent.retention_event LIMIT 1", [kept, kept])
    db.sql("SELECT koherent.seal()")
    assert sorted(db.sql("SELECT problem, history_id FROM koherent.verify_history() WHERE problem <> 'pruned'")) == [
        ("entry_missing", kept), ("pruned_mismatch", None)]
    # 3. a forged event of a range beyond the partitions made ahead (in the future when "dropped")
    db.sql("INSERT INTO koherent.retention_event (config_id, partition_name, range_from, range_to, entries, id_ranges, "
           "dropped_at, dropped_by) SELECT config_id, 'pt_1_p20991201_000000', '2099-12-01', '2100-01-01', 1, "
           "ARRAY[int8range(%s, %s, '[]')], now(), 'postgres' FROM koherent.retention_event LIMIT 1", [kept, kept])
    db.sql("SELECT koherent.seal()")
    problems = db.sql("SELECT problem, history_id, detail FROM koherent.verify_history() WHERE problem <> 'pruned'")
    assert sorted(p[:2] for p in problems) == [
        ("entry_missing", kept), ("pruned_mismatch", None), ("pruned_mismatch", None)], problems
    assert any("pt_1_p20991201_000000" in p[2] for p in problems if p[0] == "pruned_mismatch")


def test_a_forged_retention_event_hides_nothing_of_a_table_without_retention(item):
    """A superuser deletes a sealed entry of a table whose history is not partitioned and forges a
    retention event for it, sealed by the next block (also against an outside digest kept before):
    prune() never wrote such an event, so the entry is entry_missing and the event pruned_mismatch."""
    write(item, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("task-a"))
    write(item, "UPDATE item SET qty = 99 WHERE id = 1", mint("task-b"))
    item.sql("SELECT koherent.seal()")
    digest = item.one("SELECT koherent.digest()")
    victim = item.one("SELECT max(history_id) FROM koherent_history.item")
    with item.conn() as c:
        c.execute("SET session_replication_role = replica")
        c.execute("DELETE FROM koherent_history.item WHERE history_id = %s", [victim])
    # a future range, then one from MINVALUE to now (over when "dropped", holding the entry's
    # transaction and its seal): on a table whose history is not partitioned either way
    for n, (range_from, range_to) in enumerate((("2099-12-01", "2100-01-01"), (None, None))):
        range_to = range_to or item.one("SELECT now()")
        item.sql("INSERT INTO koherent.retention_event (config_id, partition_name, range_from, range_to, entries, "
                 "id_ranges, dropped_at, dropped_by) SELECT id, 'item_1_p', %s, %s, 1, ARRAY[int8range(%s, %s, '[]')], "
                 "now(), 'postgres' FROM koherent.tracked_config", [range_from, range_to, victim, victim])
        assert sorted(item.sql("SELECT problem, history_id FROM koherent.verify_history()")) == sorted(
            [("entry_missing", victim), ("pruned_unsealed", None)] + [("pruned_mismatch", None)] * n)
        item.sql("SELECT koherent.seal()")
        problems = item.sql("SELECT problem, history_id FROM koherent.verify_history(%s)",
                            [psycopg.types.json.Jsonb([digest])])
        assert sorted(problems) == sorted([("entry_missing", victim)] + [("pruned_mismatch", None)] * (n + 1)), problems


def test_an_honest_prune_does_not_swallow_an_entry_deleted_before(db):
    """A statement that began in one partition's second and reserved its ids after a write of
    the next second: the dropped partition's id span holds a kept entry's id. Deleted before the
    prune, that entry is inside the event's ranges; its transaction began after the partition
    ended, so the event cannot have held it: entry_missing. (Had it begun before, the event
    would cover more sealed entries than it dropped: pruned_mismatch.)"""
    pruned_table(db)
    parts = partitions(db, "koherent_history.pt")
    s = next(lo for _, lo, _ in parts if lo and lo > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.2))
    sleep_past(s)
    write(db, "INSERT INTO pt VALUES (1, 'a')")                     # second s: the smallest id
    long = threading.Thread(target=write, args=(db, "INSERT INTO pt SELECT 3, 'c' FROM pg_sleep(1.4)"))
    long.start()                                                      # second s, ids at its end
    sleep_past(s + datetime.timedelta(seconds=1.1))
    write(db, "INSERT INTO pt VALUES (2, 'b')")                       # second s + 1: an id between
    long.join()
    rows = db.sql("SELECT id, history_id, tableoid::regclass::text FROM koherent_history.pt ORDER BY history_id")
    assert [r[0] for r in rows] == [1, 2, 3] and rows[0][2] == rows[2][2] != rows[1][2]
    db.sql("SELECT koherent.seal()")
    with db.conn() as c:
        c.execute("SET session_replication_role = replica")
        c.execute("DELETE FROM koherent_history.pt WHERE id = 2")
    sleep_past(s + datetime.timedelta(seconds=2.05))
    r = db.one("SELECT koherent.prune()")
    assert [d["entries"] for d in r["dropped"] if d["entries"]] == [2]
    assert db.sql("SELECT problem FROM koherent.verify_history() WHERE problem <> 'pruned'") == [("entry_missing",)]
    assert db.one("SELECT id_ranges::text FROM koherent.retention_event WHERE entries = 2") == \
        f"{{\"[{rows[0][1]},{rows[2][1] + 1})\"}}"


def test_readers_refuse_what_was_pruned_and_settings_do_not_move_partitions(db):
    pruned_table(db)
    with db.conn(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("gone")])
        c.execute("INSERT INTO pt VALUES (1, 'a')")
        before = c.execute("SELECT statement_timestamp()").fetchone()[0]
        c.commit()
    time.sleep(2.2)
    write(db, "UPDATE pt SET v = 'b'", mint("later"))
    assert db.one("SELECT koherent.prune()")["entries_dropped"] == 1
    # the table as of a moment whose later changes were dropped, the row, a revert of a task
    # whose entries were dropped: refused, nothing written
    for q in ("SELECT count(*) FROM koherent.as_of(NULL::pt, %s)",
              "SELECT koherent.row_as_of(NULL::pt, '{\"id\": 1}', %s)"):
        with pytest.raises(psycopg.Error) as e:
            db.sql(q, [before])
        assert sqlstate(e) == "22023" and "was pruned" in str(e.value), q
    for q in ("SELECT count(*) FROM koherent.revert_plan('gone')",
              "SELECT koherent.revert_task('gone', on_conflict => 'overwrite')"):
        with pytest.raises(psycopg.Error) as e:
            db.sql(q)
        assert sqlstate(e) == "55000" and "reason: history_pruned" in e.value.diag.message_detail, q
    assert db.sql("SELECT * FROM pt") == [(1, "b")]
    assert db.one("SELECT count(*) FROM koherent.revert_plan('later')") == 1   # work since: fine
    # a session's DateStyle and TimeZone abbreviations do not move partition bounds; prune leaves
    # the caller's lock_timeout as it was
    bounds = ("SELECT part::text, extract(epoch FROM lo), extract(epoch FROM hi) "
              "FROM koherent._partitions('koherent_history.pt') ORDER BY hi")
    want = db.sql(bounds)
    with db.conn() as c:
        c.execute("SET TimeZone = 'Asia/Kolkata'")
        c.execute("SET DateStyle = 'SQL, DMY'")
        c.execute("SET lock_timeout = '7s'")
        assert c.execute(bounds).fetchall() == want
        c.execute("BEGIN")
        c.execute("SELECT koherent.prune()")
        assert c.execute("SHOW lock_timeout").fetchone()[0] == "7s"
        c.execute("COMMIT")
        assert c.execute("SELECT koherent.create_partitions()").fetchone()[0] >= 0
        assert {hi % 1 for _, _, hi in c.execute(bounds).fetchall()} == {0}


def test_names_in_bytes_and_tracking_again(db):
    name = "ж" * 30  # 60 bytes
    db.sql(f'CREATE TABLE "{name}" (id int PRIMARY KEY)')
    db.sql(f"""SELECT koherent.track('"{name}"')""")
    r = db.one(f"""SELECT koherent.set_retention('"{name}"', NULL, '1 day', 2)""")
    names = [p["partition"] for p in r["partitions"]]
    assert len(names) == 3 and len(set(names)) == 3 and all(len(n.encode()) <= 63 + 20 for n in names)
    db.sql(f"""INSERT INTO "{name}" VALUES (1)""")
    # untracked, partitions are not made; tracked again, they are there before the next write
    db.sql("CREATE TABLE rt (id int PRIMARY KEY)")
    db.sql("SELECT koherent.track('rt')")
    db.sql("SELECT koherent.set_retention('rt', NULL, '1 second', 1)")
    db.sql("SELECT koherent.untrack('rt')")
    time.sleep(2.5)
    assert db.one("SELECT koherent.create_partitions()") == 0
    db.sql("SELECT koherent.track('rt')")
    db.sql("INSERT INTO rt VALUES (1)")
    assert db.one("SELECT count(*) FROM koherent_history.rt") == 1
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.set_retention('rt', NULL, '1000 years', 1000)")
    assert sqlstate(e) == "22023"


def test_prune_seals_what_commits_while_it_waits_and_counts_after_its_locks(db):
    """A transaction that wrote into an expired partition commits while prune() waits for that
    partition's lock (after prune's first seal): prune seals it before dropping the partition
    (it was dropped unsealed, no hash kept). The event's id ranges are read after the history
    table's lock: a transaction that wrote the next partition with an id inside the dropped
    one's span (a statement dated in the old partition took its id later) and commits while
    prune waits is not counted as pruned (it was, and its entry could then be deleted
    unnoticed). verify_history reports only `pruned`; deleting the kept entry is entry_missing."""
    pruned_table(db, keep="2 seconds", width="2 seconds")
    db.sql("CREATE TABLE other (id int PRIMARY KEY)")
    db.sql("SELECT koherent.track('other')")
    # the start of the next partition
    start = db.one("SELECT min(hi) FROM koherent._partitions('koherent_history.pt') WHERE hi > clock_timestamp()")
    sleep_past(start)
    w1 = db.conn(autocommit=False)
    w1.execute("INSERT INTO pt VALUES (1, 'a')")      # dated in partition P, left open
    w1.execute("INSERT INTO other VALUES (1)")
    ctx1 = w1.execute("SELECT koherent.current_context_id()").fetchone()[0]

    def slow():   # dated in P, its id taken at its end, in P+1's time
        with db.conn() as c:
            c.execute("INSERT INTO pt SELECT 4, 'd' FROM pg_sleep(2.4)")

    t3 = threading.Thread(target=slow)
    t3.start()
    sleep_past(start + datetime.timedelta(seconds=2.1))
    w2 = db.conn(autocommit=False)
    w2.execute("INSERT INTO pt VALUES (2, 'b')")      # dated in P+1 (kept), left open
    t3.join(10)
    sleep_past(start + datetime.timedelta(seconds=4.1))   # P has expired
    result = {}

    def prune():
        with db.conn() as c:
            result["r"] = c.execute("SELECT koherent.prune()").fetchone()[0]

    t = threading.Thread(target=prune)
    t.start()
    wait_for_lock(db, "%koherent.prune()%", t, result)
    w1.commit()   # while prune waits for P's lock
    w1.close()
    time.sleep(0.5)
    w2.commit()   # while prune waits for the history table's
    w2.close()
    t.join(20)
    assert [d["entries"] for d in result["r"]["dropped"] if d["entries"] > 0] == [2], result
    # the first writer's context is sealed with both of its entries
    assert db.one("SELECT entries FROM koherent.ledger_context WHERE context_id = %s", [ctx1]) == 2
    kept = db.one("SELECT history_id FROM koherent_history.pt WHERE id = 2")
    ranges = db.one("SELECT id_ranges::text FROM koherent.retention_event WHERE entries > 0")
    assert not db.one("SELECT bool_or(%s::bigint <@ r) FROM koherent.retention_event, unnest(id_ranges) r", [kept]), ranges
    db.sql("SELECT koherent.seal()")
    pruned = ["pruned"] * len(result["r"]["dropped"])   # (one row per partition dropped)
    assert [p for p, *_ in db.sql("SELECT * FROM koherent.verify_history()")] == pruned
    with db.conn() as c:
        c.execute("SET session_replication_role = replica")
        c.execute("DELETE FROM koherent_history.pt WHERE history_id = %s", [kept])
    got = db.sql("SELECT problem, history_id FROM koherent.verify_history() WHERE problem <> 'pruned'")
    assert got == [("entry_missing", kept)]
