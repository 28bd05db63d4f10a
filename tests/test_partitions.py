"""Partitioned tables, tracked through the parent: partitions created after track(), writes into
a partition directly, rows moved across partitions, TRUNCATE, a partition whose columns sit in
another order than its parent's, NULLs."""


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


def test_a_writable_with_query_moving_rows_between_partitions_is_recorded(db):
    """A data-modifying WITH query that its main query does not read runs to completion while
    the statement finishes: the partition guard knows which statement moves its rows then (not
    a MERGE), so the move is recorded, under a main INSERT, DELETE or SELECT alike."""
    db.sql("CREATE TABLE pq (id int, r text, v int, PRIMARY KEY (id, r)) PARTITION BY LIST (r)")
    db.sql("CREATE TABLE pq_a PARTITION OF pq FOR VALUES IN ('a')")
    db.sql("CREATE TABLE pq_b PARTITION OF pq FOR VALUES IN ('b')")
    db.sql("SELECT koherent.track('pq')")
    db.sql("INSERT INTO pq VALUES (1, 'a', 1), (3, 'a', 3), (5, 'a', 5)")
    with db.conn() as c:
        c.execute("SELECT koherent.current_context_id()")   # koherent is loaded in this session
        c.execute("WITH u AS (UPDATE pq SET r = 'b' WHERE id = 1 RETURNING *) INSERT INTO pq VALUES (2, 'a', 2)")
        c.execute("WITH u AS (UPDATE pq SET r = 'b' WHERE id = 3 RETURNING *) DELETE FROM pq WHERE id = 5")
        c.execute("WITH u AS (UPDATE pq SET r = 'a' WHERE id = 1 RETURNING *) SELECT 1")
    assert db.sql("SELECT id, r, v FROM pq ORDER BY id") == [(1, "a", 1), (2, "a", 2), (3, "b", 3)]
    got = db.sql("SELECT kind, (row_key->>'id')::int, row_key->>'r' FROM koherent.provenance_entry "
                 "ORDER BY history_id OFFSET 3")   # (after the first INSERT's three)
    assert sorted(got) == sorted([("UPDATE", 1, "b"), ("CREATE", 2, "a"), ("UPDATE", 3, "b"), ("DELETE", 5, "a"),
                                  ("UPDATE", 1, "a")]), got


def test_partitions_attached_detached_or_dropped_are_recorded(db):
    """ATTACH PARTITION adds a partition's rows to a tracked table, DETACH PARTITION and DROP
    TABLE of a partition remove them, with no row trigger firing: the rows are recorded before
    the statement runs, as CREATE (attached) or TRUNCATE (detached, dropped) entries of its
    transaction and task, so the table as of any moment is what it was (the rows were missing
    from history, or never left it). A require_task table needs a task for it (nothing changes
    without); the table's owner does it under its own name and cannot record rows itself; the
    ledger verifies."""
    import psycopg
    import pytest

    from conftest import APP_ROLE, mint, write

    db.sql("CREATE TABLE pp (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)")
    db.sql("CREATE TABLE pp1 PARTITION OF pp FOR VALUES FROM (0) TO (10)")
    db.sql("CREATE TABLE pp2 PARTITION OF pp FOR VALUES FROM (10) TO (20)")
    db.sql("SELECT koherent.track('pp')")
    for t in ("pp", "pp1", "pp2"):
        db.sql(f"ALTER TABLE {t} OWNER TO {APP_ROLE}")
    write(db, "INSERT INTO pp VALUES (1, 1, 'a'), (2, 5, 'b'), (3, 15, 'c')", mint("t-seed"), user=APP_ROLE)
    with db.conn(user=APP_ROLE) as c:
        c.execute("CREATE TABLE pp3 (id int, k int, v text, PRIMARY KEY (id, k))")
        c.execute("INSERT INTO pp3 VALUES (4, 25, 'd'), (5, 26, 'e')")   # not tracked: no history
    t0 = db.one("SELECT clock_timestamp()")
    write(db, "ALTER TABLE pp ATTACH PARTITION pp3 FOR VALUES FROM (20) TO (30)", mint("t-attach"), user=APP_ROLE)
    t1 = db.one("SELECT clock_timestamp()")
    write(db, "ALTER TABLE pp DETACH PARTITION pp1", mint("t-detach"), user=APP_ROLE)
    t2 = db.one("SELECT clock_timestamp()")
    write(db, "DROP TABLE pp2", mint("t-drop"), user=APP_ROLE)
    got = db.sql("SELECT kind, row_key->>'id', task_id, effective_role FROM koherent.provenance_entry "
                 "WHERE table_name = 'pp'::regclass AND task_id <> 't-seed' ORDER BY history_id")
    assert got == [("CREATE", "4", "t-attach", APP_ROLE), ("CREATE", "5", "t-attach", APP_ROLE),
                   ("TRUNCATE", "1", "t-detach", APP_ROLE), ("TRUNCATE", "2", "t-detach", APP_ROLE),
                   ("TRUNCATE", "3", "t-drop", APP_ROLE)]
    as_of = lambda t: db.sql("SELECT id, k, v FROM koherent.as_of(NULL::pp, %s) ORDER BY id", [t])  # noqa: E731
    assert as_of(t0) == [(1, 1, "a"), (2, 5, "b"), (3, 15, "c")]
    assert as_of(t1) == [(1, 1, "a"), (2, 5, "b"), (3, 15, "c"), (4, 25, "d"), (5, 26, "e")]
    assert as_of(t2) == [(3, 15, "c"), (4, 25, "d"), (5, 26, "e")]
    assert as_of(db.one("SELECT clock_timestamp()")) == db.sql("SELECT id, k, v FROM pp ORDER BY id")
    # the detached table is not pp's any more: its writes are not pp's history
    before = db.one("SELECT count(*) FROM koherent.provenance_entry WHERE table_name = 'pp'::regclass")
    write(db, "UPDATE pp1 SET v = 'outside'", user=APP_ROLE)
    assert db.one("SELECT count(*) FROM koherent.provenance_entry WHERE table_name = 'pp'::regclass") == before
    # the owner cannot record rows itself
    with db.conn(user=APP_ROLE) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SELECT koherent._record_partition_rows('pp'::regclass, 'pp3'::regclass, 'TRUNCATE')")
    # require_task: a detach needs a task, and without one nothing changes
    db.sql("SELECT koherent.track('pp', require_task => true)")
    with db.conn(user=APP_ROLE) as c, pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        c.execute("ALTER TABLE pp DETACH PARTITION pp3")
    assert db.one("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'pp3'::regclass") == 1
    db.sql("SELECT koherent.seal()")
    assert db.sql("SELECT problem FROM koherent.verify_history()") == []


def test_partition_moves_wait_for_writers_and_drops_by_schema_or_owner_are_recorded(db):
    """A transaction writing a partition when it is attached or detached: the statement waits
    for it (the rows are recorded under the statement's locks), so what it wrote is recorded as
    added or removed (it was recorded before the lock: a row attached with no CREATE, a row
    detached with no TRUNCATE). DETACH ... CONCURRENTLY of a tracked table is refused (0A000
    detach_concurrently). DROP SCHEMA ... CASCADE and DROP OWNED of a partition record its rows
    as DROP TABLE does. A renamed history trigger is still koherent's."""
    import threading

    import psycopg
    import pytest

    from conftest import APP_ROLE, wait_for_lock, write

    db.sql("CREATE TABLE pw (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)")
    db.sql("CREATE TABLE pw1 PARTITION OF pw FOR VALUES FROM (0) TO (10)")
    db.sql("SELECT koherent.track('pw')")
    db.sql("CREATE TABLE pw2 (id int, k int, PRIMARY KEY (id, k))")
    db.sql("INSERT INTO pw2 VALUES (10, 15)")
    db.sql(f"GRANT ALL ON pw, pw1, pw2 TO {APP_ROLE}")

    def racing(writer_sql, ddl):
        w = db.conn(user=APP_ROLE, autocommit=False)
        w.execute(writer_sql)
        done = {}

        def run():
            with db.conn() as c:
                c.execute(ddl)
                done["ok"] = True

        t = threading.Thread(target=run)
        t.start()
        wait_for_lock(db, ddl[:25] + "%", t)
        w.commit()
        w.close()
        t.join(10)
        assert done == {"ok": True}

    racing("INSERT INTO pw2 VALUES (11, 16)", "ALTER TABLE pw ATTACH PARTITION pw2 FOR VALUES FROM (10) TO (20)")
    racing("INSERT INTO pw VALUES (12, 3)", "ALTER TABLE pw DETACH PARTITION pw1")
    got = db.sql("SELECT kind, row_key->>'id' FROM koherent.provenance_entry WHERE table_name = 'pw'::regclass "
                 "ORDER BY history_id")
    assert got == [("CREATE", "10"), ("CREATE", "11"), ("CREATE", "12"), ("TRUNCATE", "12")]
    with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        db.sql("ALTER TABLE pw DETACH PARTITION pw2 CONCURRENTLY")
    assert e.value.diag.message_detail == "reason: detach_concurrently"
    # DROP SCHEMA ... CASCADE and DROP OWNED BY take partitions with them
    db.sql("CREATE SCHEMA s1")
    db.sql("CREATE TABLE s1.pw3 PARTITION OF pw FOR VALUES FROM (20) TO (30)")
    db.sql("CREATE ROLE koherent_test_pw_owner")
    try:
        db.sql("CREATE TABLE pw4 PARTITION OF pw FOR VALUES FROM (30) TO (40)")
        db.sql("ALTER TABLE pw4 OWNER TO koherent_test_pw_owner")
        write(db, "INSERT INTO pw VALUES (20, 25), (30, 35)")
        db.sql("DROP SCHEMA s1 CASCADE")
        db.sql("DROP OWNED BY koherent_test_pw_owner")
    finally:
        db.sql("DROP ROLE koherent_test_pw_owner")
    assert db.sql("SELECT kind, row_key->>'id' FROM koherent.provenance_entry WHERE table_name = 'pw'::regclass "
                  "AND row_key->>'id' IN ('20', '30') ORDER BY history_id") == [
        ("CREATE", "20"), ("CREATE", "30"), ("TRUNCATE", "20"), ("TRUNCATE", "30")]
    # a renamed history trigger is still koherent's: a rewrite stays refused
    db.sql("ALTER TRIGGER koherent_history_update ON pw RENAME TO renamed")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.sql("ALTER TABLE pw ALTER COLUMN id TYPE bigint USING id * 7")
    # and the next ALTER TABLE puts the triggers back once (the renamed one goes): one entry
    db.sql("ALTER TABLE pw ADD COLUMN note text")
    before = db.one("SELECT count(*) FROM koherent.provenance_entry WHERE table_name = 'pw'::regclass")
    write(db, "UPDATE pw SET note = 'x' WHERE id = 10")
    assert db.one("SELECT count(*) FROM koherent.provenance_entry WHERE table_name = 'pw'::regclass") == before + 1
    db.sql("SELECT koherent.seal()")
    assert db.sql("SELECT problem FROM koherent.verify_history()") == []
